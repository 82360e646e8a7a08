//! Indices of the per-CPU `LOSS` counters.
//!
//! Security records lost (the security ring full) are also counted per
//! identity with their time range ([`SecurityLoss`]).

/// `bpf_ringbuf_reserve` failed for an exec event.
pub const RINGBUF_EXEC: u32 = 0;
pub const RINGBUF_EXIT: u32 = 1;
pub const RINGBUF_CONNECT: u32 = 2;
/// The process table was full at fork/exec (attribution lost for a process).
pub const PROC_TABLE_FULL: u32 = 3;
/// argv read at `sys_enter_execve[at]` could not be stored because the
/// `EXEC_ARGS` insert failed (table full). A fault reading argv is not
/// counted here: the argv read so far is stored, marked neither truncated
/// nor missing.
pub const EXEC_ARGS: u32 = 4;
/// `bpf_ringbuf_reserve` failed for the report of an aggregation key
/// evicted from its slot (the key stays; the new attempt is folded into
/// its identity's counts, `policy::IdentityBudget`).
pub const AGG_EVICT: u32 = 5;
/// `bpf_ringbuf_reserve` failed for a guard event (the call was still
/// refused or the process killed; only the record is lost).
pub const RINGBUF_GUARD: u32 = 6;
/// `bpf_ringbuf_reserve` failed for a Unix-socket event (the decision
/// was still enforced and counted).
pub const RINGBUF_UNIX: u32 = 7;
/// `bpf_ringbuf_reserve` failed for a file event (the decision was still
/// enforced; the key's next event reports the attempts since its last).
pub const RINGBUF_FILE: u32 = 8;
/// `bpf_ringbuf_output` failed for a batch of syscall telemetry (its
/// calls are missing from the thread's sequence).
pub const RINGBUF_SYSCALLS: u32 = 9;
pub const COUNT: u32 = 10;
pub const NAMES: [&str; COUNT as usize] = [
    "ringbuf_exec",
    "ringbuf_exit",
    "ringbuf_connect",
    "proc_table_full",
    "exec_args",
    "ringbuf_agg_evict",
    "ringbuf_guard",
    "ringbuf_unix",
    "ringbuf_file",
    "ringbuf_syscalls",
];

/// Security records of one identity lost on one CPU: the security ring
/// was full (`SECURITY_LOSS`). Times are `CLOCK_BOOTTIME` ns, like events'.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecurityLoss {
    pub count: u64,
    /// The first and the last loss on this CPU (0: none yet).
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(size_of::<SecurityLoss>() == 24);

/// The `SECURITY_LOSS` element of an identity: its id (1..=MAX_IDENTITIES),
/// `MAX_IDENTITIES + 1` for pending processes, 0 for none or out of range.
#[inline(always)]
pub const fn identity_slot(identity: u32) -> u32 {
    match identity {
        crate::PENDING_IDENTITY => crate::maps::MAX_IDENTITIES + 1,
        id if id <= crate::maps::MAX_IDENTITIES => id,
        _ => 0,
    }
}

/// The identity a `SECURITY_LOSS` element counts (inverse of [`identity_slot`]).
pub const fn slot_identity(slot: u32) -> u32 {
    if slot == crate::maps::MAX_IDENTITIES + 1 { crate::PENDING_IDENTITY } else { slot }
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_slots_round_trip() {
        for id in [0, 1, crate::maps::MAX_IDENTITIES, crate::PENDING_IDENTITY] {
            assert_eq!(super::slot_identity(super::identity_slot(id)), id);
        }
        assert_eq!(super::identity_slot(crate::maps::MAX_IDENTITIES + 5), 0);
        assert!(super::identity_slot(crate::PENDING_IDENTITY) < crate::maps::SECURITY_LOSS_CAPACITY);
    }

    #[test]
    fn one_name_per_counter() {
        assert_eq!(super::NAMES.len(), super::COUNT as usize);
    }
}

//! Ring buffer records: the common [`EventHeader`] and the exec, exit and
//! connect records behind it, plus the argv scratch value of `EXEC_ARGS`.
use crate::policy;

/// Event kinds (first field of every ring buffer record).
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const CONNECT: u32 = 3;
    /// A [`crate::guard::GuardEvent`].
    pub const GUARD: u32 = 4;
    /// A [`crate::unix::UnixEvent`].
    pub const UNIX: u32 = 5;
    /// An [`AggEvictEvent`].
    pub const AGG_EVICT: u32 = 6;
    /// A [`crate::path_policy::FileEvent`].
    pub const FILE: u32 = 7;
    /// A [`crate::syscalls::SyscallBatch`].
    pub const SYSCALLS: u32 = 8;
}

/// Common prefix of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Identity at the time of the event.
    pub identity: u32,
    /// `CLOCK_BOOTTIME` ns of the event.
    pub time_ns: u64,
    /// [`crate::ProcInfo::start_ns`] of the process (0 when not in the table).
    pub start_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub gid: u32,
}
const _: () = assert!(size_of::<EventHeader>() == 48);

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;
/// Bytes of argv kept per exec (NUL-separated, truncated beyond).
pub const ARGS_LEN: usize = 1024;
/// Arguments read per exec at most by the `sys_enter_execve[at]` fallback
/// (argv read from `mm` is bounded by [`ARGS_LEN`] only).
pub const MAX_ARGS: u32 = 32;

/// argv captured at `sys_enter_execve*`, keyed by tid in `EXEC_ARGS`.
///
/// The buffer is twice [`ARGS_LEN`] so the eBPF side can write up to
/// `ARGS_LEN` bytes at any masked offset below `ARGS_LEN` (the verifier
/// needs a provable bound); only the first `len` bytes are meaningful.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs {
    /// Meaningful bytes in `buf` (<= ARGS_LEN).
    pub len: u32,
    /// Arguments read.
    pub argc: u32,
    /// 1 when the argv bytes did not fit in [`ARGS_LEN`]. Arguments beyond
    /// [`MAX_ARGS`] are dropped without setting it.
    pub truncated: u32,
    pub _pad: u32,
    pub buf: [u8; 2 * ARGS_LEN],
}
const _: () = assert!(size_of::<ExecArgs>() == 16 + 2 * ARGS_LEN);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub ppid: u32,
    /// tid that called execve (differs from tgid when a thread exec'd).
    pub old_tid: u32,
    /// Bytes of `filename` before its NUL.
    pub filename_len: u32,
    /// Bytes of `args` that are meaningful (NUL-separated argv).
    pub args_len: u32,
    /// Arguments read by the `sys_enter_execve[at]` fallback; 0 when argv
    /// came from `mm` (count the NULs in `args` instead).
    pub argc: u32,
    /// [`args_flags`]: 1 when argv was truncated, 2 when argv was not captured at all.
    pub args_flags: u32,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
    pub args: [u8; ARGS_LEN],
}
const _: () = assert!(size_of::<ExecEvent>() == 48 + 24 + 16 + 256 + 1024);

/// [`ExecEvent::args_flags`] values.
pub mod args_flags {
    pub const TRUNCATED: u32 = 1;
    pub const MISSING: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub ppid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ExitEvent>() == 48 + 8 + 16);

/// Address family values in [`ConnectEvent::family`] (Linux `AF_*`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// Socket type (`SOCK_STREAM` = 1, `SOCK_DGRAM` = 2).
    pub sock_type: u32,
    /// The socket's IP protocol (6 tcp, 17 udp, 262 mptcp, ...); when the
    /// socket has none, the socket type's (tcp for `SOCK_STREAM`, udp for
    /// `SOCK_DGRAM`), else 0. Policy matched
    /// [`policy::match_proto`]`(protocol)`, which is tcp for mptcp.
    pub protocol: u32,
    /// The policy's verdict (see [`policy::Verdict`]).
    pub verdict: policy::Verdict,
    /// Generation of the policy that decided (0: none applied yet).
    pub generation: u32,
    /// Which hook: [`hook`].
    pub hook: u32,
    /// CPU that decided (aggregation totals are per CPU).
    pub cpu: u32,
    /// Attempts of this process to this (identity, destination, port,
    /// protocol, decision, policy generation) counted on this CPU so far,
    /// this one included. See [`policy::AggSlot`].
    pub repeats_total: u64,
    /// Destination as an IPv6 address in network byte order; IPv4 as
    /// `::ffff:a.b.c.d` (the address in the last 4 bytes).
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// The socket's network namespace (`bpf_get_netns_cookie`): 127.0.0.1
    /// in one namespace is not 127.0.0.1 in another.
    pub netns_cookie: u64,
}
const _: () = assert!(size_of::<ConnectEvent>() == 48 + 12 + 8 + 4 + 8 + 8 + 16 + 16 + 8);

/// An aggregation key evicted from its slot by another key (see
/// [`policy::AggSlot`]): its attempts on `cpu` up to the eviction, so user
/// space reports those no event carried. The header is the evicting
/// attempt's process; the key names the evicted one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggEvictEvent {
    pub header: EventHeader,
    pub key: policy::AggKey,
    /// The evicted key's attempts in the slot ([`policy::AggSlot::total`]).
    pub total: u64,
    pub cpu: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AggEvictEvent>() == 48 + 32 + 16);

/// [`ConnectEvent::hook`] values.
pub mod hook {
    pub const CONNECT4: u32 = 0;
    pub const CONNECT6: u32 = 1;
    pub const SENDMSG4: u32 = 2;
    pub const SENDMSG6: u32 = 3;
    /// [`crate::unix::UnixEvent::hook`] values.
    pub const CONNECT_UNIX: u32 = 4;
    pub const SENDMSG_UNIX: u32 = 5;
    pub const NAMES: [&str; 6] = ["connect4", "connect6", "sendmsg4", "sendmsg6", "connect_unix", "sendmsg_unix"];
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    /// The layout the eBPF side writes and user space reads, field by field.
    #[test]
    fn event_layout() {
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(offset_of!(EventHeader, time_ns), 16);
        assert_eq!(offset_of!(EventHeader, cgroup_id), 32);
        assert_eq!(offset_of!(EventHeader, gid), 44);
        assert_eq!(size_of::<ExecEvent>(), 1368);
        assert_eq!(offset_of!(ExecEvent, comm), 72);
        assert_eq!(offset_of!(ExecEvent, filename), 88);
        assert_eq!(offset_of!(ExecEvent, args), 344);
        assert_eq!(size_of::<ExitEvent>(), 72);
        assert_eq!(size_of::<ConnectEvent>(), 128);
        assert_eq!(offset_of!(ConnectEvent, verdict), 60);
        assert_eq!(offset_of!(ConnectEvent, hook), 72);
        assert_eq!(offset_of!(ConnectEvent, repeats_total), 80);
        assert_eq!(offset_of!(ConnectEvent, addr), 88);
        assert_eq!(size_of::<ExecArgs>(), 2064);
        // Ring buffer records must be 8-byte alignable.
        for a in [align_of::<ExecEvent>(), align_of::<ExitEvent>(), align_of::<ConnectEvent>()] {
            assert!(8 % a == 0);
        }
        // The eBPF side masks argv offsets with ARGS_LEN - 1.
        assert!(ARGS_LEN.is_power_of_two());
    }
}

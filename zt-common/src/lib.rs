//! The kernel/user ABI of zt-agent: every type that crosses the boundary
//! between `zt-ebpf` (kernel) and `zt-agent` (user space).
//!
//! # Layout
//! - [`maps`]: map names and capacities, shared by both sides.
//! - [`ProcInfo`]: the value of the in-kernel process table (keyed by tgid).
//! - [`EventHeader`] and the records behind it ([`ExecEvent`], [`ExitEvent`],
//!   [`ConnectEvent`]), written to the one ring buffer.
//! - [`Config`]: run-time switches user space writes into the `CONFIG` map.
//! - [`loss`]: indices of the per-CPU loss counters.
//!
//! Rules for every type here: `#[repr(C)]`, `Copy`, explicit padding fields so
//! there is no implicit padding (the kernel verifier and `aya::Pod` both need
//! every byte initialised), `u32` flags instead of `bool`, and a
//! `const _: () = assert!(size_of::<T>() == N)` so that layout drift fails
//! the build instead of corrupting events.
#![no_std]

use core::mem::size_of;

/// Map names (the symbol names in `zt-ebpf/src/maps.rs`) and capacities.
pub mod maps {
    /// tgid -> [`crate::ProcInfo`].
    pub const PROC_TABLE: &str = "PROC_TABLE";
    pub const PROC_TABLE_CAPACITY: u32 = 65_536;
    /// cgroup v2 id -> identity id (cgroups user space resolved to an identity).
    pub const CGROUP_IDENTITY: &str = "CGROUP_IDENTITY";
    pub const CGROUP_IDENTITY_CAPACITY: u32 = 16_384;
    /// tid -> argv captured at `sys_enter_execve`, consumed at `sched_process_exec`.
    pub const EXEC_ARGS: &str = "EXEC_ARGS";
    pub const EXEC_ARGS_CAPACITY: u32 = 4_096;
    /// The one ring buffer of events.
    pub const EVENTS: &str = "EVENTS";
    /// Default ring buffer size in bytes (power of two, multiple of the page size).
    pub const EVENTS_DEFAULT_BYTES: u32 = 8 << 20;
    /// Per-CPU array of loss counters, indexed by [`crate::loss`].
    pub const LOSS: &str = "LOSS";
    /// Array with one [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// LPM trie `(slot, identity, addr)` -> [`crate::policy::NetRuleList`].
    pub const NET_RULES: &str = "NET_RULES";
    /// Both slots together (double buffering).
    pub const NET_RULES_CAPACITY: u32 = 65_536;
    /// `(slot, identity)` -> [`crate::policy::IdentityPolicy`].
    pub const IDENTITY_POLICY: &str = "IDENTITY_POLICY";
    pub const IDENTITY_POLICY_CAPACITY: u32 = 2 * 1024;
    /// Array with one [`crate::policy::ActivePolicy`].
    pub const POLICY_ACTIVE: &str = "POLICY_ACTIVE";
    /// Array indexed by pid (tgid or tid) -> identity id: the socket hooks'
    /// fast path (an inlined array access instead of a hash lookup). Sized
    /// to `/proc/sys/kernel/pid_max` at load; pids beyond it use `PROC_TABLE`.
    pub const PID_IDENTITY: &str = "PID_IDENTITY";
    pub const PID_IDENTITY_DEFAULT_CAPACITY: u32 = 4_194_304;
    /// Per-CPU array indexed by identity id -> [`crate::policy::IdentityCounters`].
    pub const IDENTITY_COUNTERS: &str = "IDENTITY_COUNTERS";
    /// Identity ids are 1..=this (id 0 is "none").
    pub const MAX_IDENTITIES: u32 = 1024;
    /// [`crate::policy::AggKey`] -> per-CPU [`crate::policy::AggValue`]: a
    /// per-CPU hash (no atomics needed, never evicts silently); a full table
    /// is counted and the attempt reported unaggregated. User space removes
    /// idle, fully reported keys.
    pub const EGRESS_AGG: &str = "EGRESS_AGG";
    pub const EGRESS_AGG_CAPACITY: u32 = 16_384;
}

/// Program names (the function names in `zt-ebpf`).
pub mod programs {
    pub const FORK: &str = "sched_process_fork";
    pub const EXEC: &str = "sched_process_exec";
    pub const EXIT: &str = "sched_process_exit";
    pub const EXECVE_ARGS: &str = "sys_enter_execve";
    pub const EXECVEAT_ARGS: &str = "sys_enter_execveat";
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const SENDMSG6: &str = "sendmsg6";
    /// Tiny programs loaded only by `zt-agent probe`.
    pub const PROBE_TRACEPOINT: &str = "probe_tracepoint";
    pub const PROBE_RAW_TRACEPOINT: &str = "probe_raw_tracepoint";
    pub const PROBE_SEND_SIGNAL: &str = "probe_send_signal";
    pub const PROBE_LSM: &str = "probe_lsm_file_open";
    pub const PROBE_FENTRY: &str = "probe_fentry";
    pub const PROBE_KPROBE: &str = "probe_kprobe";
    pub const PROBE_SOCK_ADDR: &str = "probe_sock_addr";

    /// Every program the object must contain (checked by the ELF test).
    pub const ALL: &[&str] = &[
        FORK,
        EXEC,
        EXIT,
        EXECVE_ARGS,
        EXECVEAT_ARGS,
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        PROBE_TRACEPOINT,
        PROBE_RAW_TRACEPOINT,
        PROBE_SEND_SIGNAL,
        PROBE_LSM,
        PROBE_FENTRY,
        PROBE_KPROBE,
        PROBE_SOCK_ADDR,
    ];
}

/// Names of the read-only globals user space sets at load time: tracepoint
/// field offsets read from tracefs `format` files, because the layouts differ
/// between kernels (e.g. `sched_process_fork` switched its comm fields to
/// `__data_loc` strings, moving `child_pid` from offset 44 to 20).
pub mod globals {
    pub const FORK_PARENT_PID: &str = "FORK_PARENT_PID_OFF";
    pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID_OFF";
    pub const EXEC_FILENAME: &str = "EXEC_FILENAME_OFF";
    pub const EXEC_OLD_PID: &str = "EXEC_OLD_PID_OFF";
    /// Offset of `group_dead` in `sched_process_exit`, or [`ABSENT`] on
    /// kernels whose tracepoint lacks the field.
    pub const EXIT_GROUP_DEAD: &str = "EXIT_GROUP_DEAD_OFF";
    /// Offsets of `task_struct.mm`, `mm_struct.arg_start` and
    /// `mm_struct.arg_end` from kernel BTF, or [`ABSENT`]: then argv comes
    /// from the `sys_enter_execve[at]` programs instead.
    pub const TASK_MM: &str = "TASK_MM_OFF";
    pub const MM_ARG_START: &str = "MM_ARG_START_OFF";
    pub const MM_ARG_END: &str = "MM_ARG_END_OFF";
    pub const ABSENT: u32 = u32::MAX;
}

/// Identity id 0: the process belongs to no identity (the fast path).
pub const NO_IDENTITY: u32 = 0;

/// Value of the process table, keyed by tgid.
///
/// `start_ns` makes an entry one process incarnation: the kernel overwrites the
/// entry at every fork of that pid, and user space only updates an entry whose
/// `start_ns` still equals the one it resolved, so a recycled pid never
/// inherits a dead process's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// `CLOCK_BOOTTIME` ns at fork (kernel) or from `/proc/<pid>/stat` (seeded).
    pub start_ns: u64,
    /// cgroup v2 id at fork or last exec.
    pub cgroup_id: u64,
    /// Parent tgid at fork (0 when unknown).
    pub ppid: u32,
    /// Identity of this process, [`NO_IDENTITY`] when none.
    pub identity: u32,
    /// Identity given to this process's descendants ("descendant of"
    /// selectors): a child of this process gets it at fork.
    pub child_identity: u32,
    /// [`proc_flags`] bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<ProcInfo>() == 32);

pub mod proc_flags {
    /// Entry was created at exec of a process the table did not know.
    pub const SEEN_AT_EXEC: u32 = 1 << 0;
    /// Entry was seeded by user space from /proc.
    pub const SEEDED: u32 = 1 << 1;
    /// Identity was set by user space (selector match), not inherited.
    pub const RESOLVED: u32 = 1 << 2;
}

/// Event kinds (first field of every ring buffer record).
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const EXIT: u32 = 2;
    pub const CONNECT: u32 = 3;
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
    /// [`ProcInfo::start_ns`] of the process (0 when not in the table).
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
/// Arguments read per exec at most.
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
    /// 1 when argv was longer than what was kept.
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
    pub argc: u32,
    /// 1 when argv was truncated, 2 when argv was not captured at all.
    pub args_flags: u32,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
    pub args: [u8; ARGS_LEN],
}
const _: () = assert!(size_of::<ExecEvent>() == 48 + 24 + 16 + 256 + 1024);

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
    /// IP protocol (6 tcp, 17 udp; 0 when the socket left it implicit).
    pub protocol: u32,
    /// The policy's verdict (see [`Verdict`]).
    pub verdict: policy::Verdict,
    /// Generation of the policy that decided (0: none applied yet).
    pub generation: u32,
    /// Which hook: [`hook`].
    pub hook: u32,
    /// CPU that decided (aggregation totals are per CPU).
    pub cpu: u32,
    /// Attempts to this (identity, destination, port, protocol, decision,
    /// policy generation) counted on this CPU so far, this one included; 0 when the attempt
    /// could not be aggregated (table full). See [`policy::AggKey`].
    pub repeats_total: u64,
    /// Destination address in network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<ConnectEvent>() == 48 + 12 + 8 + 4 + 8 + 8 + 16 + 16);

/// [`ConnectEvent::hook`] values.
pub mod hook {
    pub const CONNECT4: u32 = 0;
    pub const CONNECT6: u32 = 1;
    pub const SENDMSG4: u32 = 2;
    pub const SENDMSG6: u32 = 3;
    pub const NAMES: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
}

/// Policy decisions: the compiled form the kernel evaluates, and the one
/// decision function both the kernel programs and `zt-agent policy explain`
/// run (so an explanation can never disagree with the kernel).
pub mod policy {
    use core::mem::size_of;

    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
    pub const ENFORCE: u8 = 0;
    pub const AUDIT: u8 = 1;
    /// `NetRule::proto` matching any protocol.
    pub const PROTO_ANY: u8 = 0;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    /// `Verdict::rule` when the identity's default action decided.
    pub const RULE_DEFAULT: u32 = u32::MAX;
    /// `Verdict::rule` when the identity has no policy entry (fail closed).
    pub const RULE_NO_POLICY: u32 = u32::MAX - 1;
    /// `Verdict::rule` when no policy has been applied yet.
    pub const RULE_NONE_APPLIED: u32 = u32::MAX - 2;

    /// Matching rules kept per prefix (its own and its covering prefixes').
    pub const NET_RULES_PER_PREFIX: usize = 16;
    /// Bits of `NetKeyData` before the address (slot + identity).
    pub const NET_KEY_FIXED_BITS: u32 = 64;

    /// LPM trie key data: `(slot, identity)` always fully matched, then the
    /// destination as IPv6 (IPv4 as `::ffff:a.b.c.d`), so IPv4-mapped IPv6
    /// destinations match IPv4 rules.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct NetKeyData {
        pub slot: u32,
        pub identity: u32,
        pub addr: [u8; 16],
    }
    const _: () = assert!(size_of::<NetKeyData>() == 24);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct NetRule {
        pub port_lo: u16,
        pub port_hi: u16,
        pub proto: u8,
        pub action: u8,
        /// Effective mode (the identity's audit mode already folded in).
        pub mode: u8,
        pub _pad: u8,
        /// Index of the rule in the compiled bundle (for events and explain).
        pub rule: u32,
    }
    const _: () = assert!(size_of::<NetRule>() == 12);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct NetRuleList {
        pub count: u32,
        pub _pad: u32,
        pub rules: [NetRule; NET_RULES_PER_PREFIX],
    }
    const _: () = assert!(size_of::<NetRuleList>() == 8 + 12 * NET_RULES_PER_PREFIX);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct IdentityKey {
        pub slot: u32,
        pub identity: u32,
    }
    const _: () = assert!(size_of::<IdentityKey>() == 8);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct IdentityPolicy {
        pub default_egress: u8,
        pub default_files: u8,
        pub default_exec: u8,
        /// The identity's mode (rules carry their effective mode themselves).
        pub mode: u8,
        pub _pad: u32,
    }
    const _: () = assert!(size_of::<IdentityPolicy>() == 8);

    /// Aggregation of repeated egress attempts: one event per key per
    /// [`AGG_WINDOW_NS`], the kernel counting every attempt in between, so a
    /// flood cannot blind the pipeline and nothing goes uncounted.
    pub const AGG_WINDOW_NS: u64 = 1_000_000_000;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct AggKey {
        pub identity: u32,
        pub port: u16,
        pub proto: u8,
        /// The policy's decision (`ALLOW`/`DENY`).
        pub decided: u8,
        /// The policy generation that decided: a policy switch starts new
        /// keys, so its first decisions are always reported.
        pub generation: u32,
        pub addr: [u8; 16],
    }
    const _: () = assert!(size_of::<AggKey>() == 28);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AggValue {
        /// Attempts so far on this CPU.
        pub total: u64,
        /// When an event for this key was last emitted.
        pub last_emit_ns: u64,
        /// When the last attempt happened.
        pub last_seen_ns: u64,
    }
    const _: () = assert!(size_of::<AggValue>() == 24);

    /// Per-identity decision counters (per CPU; user space sums them).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IdentityCounters {
        pub allowed: u64,
        pub denied: u64,
        /// Allowed, but the policy would deny (audit mode).
        pub audited: u64,
    }
    const _: () = assert!(size_of::<IdentityCounters>() == 24);

    /// The single entry of the `POLICY_ACTIVE` array: which slot programs
    /// read. Read once per decision, so a decision sees one whole policy.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ActivePolicy {
        pub slot: u32,
        /// 0 until a policy is applied; then increments with every switch.
        pub generation: u32,
    }
    const _: () = assert!(size_of::<ActivePolicy>() == 8);

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Verdict {
        /// What the kernel does: [`ALLOW`] or [`DENY`] (EPERM).
        pub action: u8,
        /// What the policy said; `DENY` with `action == ALLOW` is an audit "would deny".
        pub decided: u8,
        pub mode: u8,
        pub _pad: u8,
        /// Rule index, or [`RULE_DEFAULT`], [`RULE_NO_POLICY`], [`RULE_NONE_APPLIED`].
        pub rule: u32,
    }
    const _: () = assert!(size_of::<Verdict>() == 8);

    impl Verdict {
        #[inline(always)]
        pub const fn new(decided: u8, mode: u8, rule: u32) -> Self {
            let action = if decided == DENY && mode == ENFORCE { DENY } else { ALLOW };
            Verdict { action, decided, mode, _pad: 0, rule }
        }
    }

    /// The egress decision: among the rules of the longest matching prefix
    /// (which include those of every covering prefix), a matching deny wins,
    /// else a matching allow, else the identity's default.
    #[inline(always)]
    pub fn decide_net(policy: &IdentityPolicy, list: Option<&NetRuleList>, proto: u8, port: u16) -> Verdict {
        let mut allow: Option<&NetRule> = None;
        if let Some(list) = list {
            let mut i = 0;
            while i < NET_RULES_PER_PREFIX {
                if i as u32 >= list.count {
                    break;
                }
                let r = &list.rules[i];
                if (r.proto == PROTO_ANY || r.proto == proto) && r.port_lo <= port && port <= r.port_hi {
                    if r.action == DENY {
                        return Verdict::new(DENY, r.mode, r.rule);
                    }
                    if allow.is_none() {
                        allow = Some(r);
                    }
                }
                i += 1;
            }
        }
        match allow {
            Some(r) => Verdict::new(ALLOW, r.mode, r.rule),
            None => Verdict::new(policy.default_egress, policy.mode, RULE_DEFAULT),
        }
    }
}

/// File and exec rules, compiled for the file/exec enforcement issue (the
/// programs that load them come with it); `zt-agent policy explain --open /
/// --exec` decides with [`policy::decide_path`] over these entries today.
pub mod path_policy {
    use core::mem::size_of;

    use crate::policy::{RULE_DEFAULT, Verdict};

    pub const PATH_LEN: usize = 256;
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const CREATE: u32 = 4;
    pub const DELETE: u32 = 8;
    pub const EXEC: u32 = 16;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct PathRule {
        pub identity: u32,
        pub rule: u32,
        /// Access bits the rule covers.
        pub access: u32,
        pub action: u8,
        pub mode: u8,
        /// 1: `path` is a directory prefix (ends with '/'); 0: exact file.
        pub prefix: u8,
        pub _pad: u8,
        pub len: u32,
        pub path: [u8; PATH_LEN],
    }
    const _: () = assert!(size_of::<PathRule>() == 16 + 4 + PATH_LEN);

    impl PathRule {
        #[inline(always)]
        pub fn matches(&self, path: &[u8]) -> bool {
            let len = self.len as usize;
            if len > PATH_LEN || path.len() < len {
                return false;
            }
            let same = self.path[..len] == path[..len];
            if self.prefix == 1 { same } else { same && path.len() == len }
        }
    }

    /// Deny wins among matching rules covering `access`; then allow; then
    /// the identity's default (exec default for `EXEC`, else files default).
    pub fn decide_path<'a>(
        policy: &crate::policy::IdentityPolicy,
        rules: impl Iterator<Item = &'a PathRule>,
        identity: u32,
        path: &[u8],
        access: u32,
    ) -> Verdict {
        let mut allow: Option<&PathRule> = None;
        for r in rules {
            if r.identity != identity || r.access & access == 0 || !r.matches(path) {
                continue;
            }
            if r.action == crate::policy::DENY {
                return Verdict::new(crate::policy::DENY, r.mode, r.rule);
            }
            allow.get_or_insert(r);
        }
        match allow {
            Some(r) => Verdict::new(crate::policy::ALLOW, r.mode, r.rule),
            None => {
                let d = if access & EXEC != 0 { policy.default_exec } else { policy.default_files };
                Verdict::new(d, policy.mode, RULE_DEFAULT)
            }
        }
    }
}

/// Run-time switches, the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Ring buffer fill level (bytes) above which a submit wakes the consumer;
    /// below it records are submitted without a wakeup and the consumer polls.
    pub wakeup_bytes: u32,
}
const _: () = assert!(size_of::<Config>() == 8);

pub mod config_flags {
    /// Emit connect events for processes without an identity too.
    pub const OBSERVE_ALL_CONNECTS: u32 = 1 << 0;
    /// Emit exec/exit events for processes without an identity too.
    pub const OBSERVE_ALL_PROCESSES: u32 = 1 << 1;
}

/// Indices of the per-CPU `LOSS` counters.
pub mod loss {
    /// `bpf_ringbuf_reserve` failed for an exec event.
    pub const RINGBUF_EXEC: u32 = 0;
    pub const RINGBUF_EXIT: u32 = 1;
    pub const RINGBUF_CONNECT: u32 = 2;
    /// The process table was full at fork/exec (attribution lost for a process).
    pub const PROC_TABLE_FULL: u32 = 3;
    /// argv could not be stashed (EXEC_ARGS full or read fault).
    pub const EXEC_ARGS: u32 = 4;
    /// The egress aggregation table was full (the attempt was reported
    /// without aggregation, so this is not a lost event).
    pub const AGG_FULL: u32 = 5;
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] =
        ["ringbuf_exec", "ringbuf_exit", "ringbuf_connect", "proc_table_full", "exec_args", "egress_agg_full"];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], Copy, contain only integers and byte arrays,
    // and have no implicit padding (checked by the size asserts above).
    unsafe impl aya::Pod for ProcInfo {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ExecArgs {}
    unsafe impl aya::Pod for policy::NetKeyData {}
    unsafe impl aya::Pod for policy::NetRuleList {}
    unsafe impl aya::Pod for policy::IdentityKey {}
    unsafe impl aya::Pod for policy::IdentityPolicy {}
    unsafe impl aya::Pod for policy::ActivePolicy {}
    unsafe impl aya::Pod for policy::IdentityCounters {}
    unsafe impl aya::Pod for policy::AggKey {}
    unsafe impl aya::Pod for policy::AggValue {}
}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, offset_of, size_of};

    use super::*;

    /// The layout the eBPF side writes and user space reads, field by field.
    #[test]
    fn abi_layout() {
        assert_eq!((size_of::<ProcInfo>(), align_of::<ProcInfo>()), (32, 8));
        assert_eq!(offset_of!(ProcInfo, ppid), 16);
        assert_eq!(offset_of!(ProcInfo, flags), 28);
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(offset_of!(EventHeader, time_ns), 16);
        assert_eq!(offset_of!(EventHeader, cgroup_id), 32);
        assert_eq!(offset_of!(EventHeader, gid), 44);
        assert_eq!(size_of::<ExecEvent>(), 1368);
        assert_eq!(offset_of!(ExecEvent, comm), 72);
        assert_eq!(offset_of!(ExecEvent, filename), 88);
        assert_eq!(offset_of!(ExecEvent, args), 344);
        assert_eq!(size_of::<ExitEvent>(), 72);
        assert_eq!(size_of::<ConnectEvent>(), 120);
        assert_eq!(offset_of!(ConnectEvent, verdict), 60);
        assert_eq!(offset_of!(ConnectEvent, hook), 72);
        assert_eq!(offset_of!(ConnectEvent, repeats_total), 80);
        assert_eq!(offset_of!(ConnectEvent, addr), 88);
        assert_eq!(size_of::<policy::AggKey>(), 28);
        assert_eq!(size_of::<policy::AggValue>(), 24);
        assert_eq!(size_of::<policy::NetRuleList>(), 200);
        assert_eq!(size_of::<ExecArgs>(), 2064);
        // Ring buffer records must be 8-byte alignable.
        for a in [align_of::<ExecEvent>(), align_of::<ExitEvent>(), align_of::<ConnectEvent>()] {
            assert!(8 % a == 0);
        }
        // The eBPF side masks argv offsets with ARGS_LEN - 1.
        assert!(ARGS_LEN.is_power_of_two());
        assert_eq!(loss::NAMES.len(), loss::COUNT as usize);
    }

    #[test]
    fn decide_net_deny_wins_then_allow_then_default() {
        use policy::*;
        let rule = |lo, hi, proto, action, mode, rule| NetRule { port_lo: lo, port_hi: hi, proto, action, mode, _pad: 0, rule };
        let mut list = NetRuleList::default();
        list.rules[0] = rule(443, 443, PROTO_TCP, ALLOW, ENFORCE, 0);
        list.rules[1] = rule(0, 65535, PROTO_ANY, DENY, AUDIT, 1);
        list.rules[2] = rule(22, 22, PROTO_TCP, DENY, ENFORCE, 2);
        list.count = 3;
        let pol = IdentityPolicy { default_egress: DENY, mode: ENFORCE, ..Default::default() };
        // 443/tcp: allow rule 0 matches, but audit deny rule 1 matches too: deny wins, audited.
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443), Verdict::new(DENY, AUDIT, 1));
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443).action, ALLOW);
        list.rules[1] = rule(1000, 2000, PROTO_UDP, DENY, AUDIT, 1);
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443), Verdict::new(ALLOW, ENFORCE, 0));
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 22), Verdict { action: DENY, decided: DENY, mode: ENFORCE, _pad: 0, rule: 2 });
        assert_eq!(decide_net(&pol, Some(&list), PROTO_UDP, 53), Verdict::new(DENY, ENFORCE, RULE_DEFAULT));
        assert_eq!(decide_net(&pol, None, PROTO_TCP, 443).rule, RULE_DEFAULT);
        // count bounds the scan: rule 2 is invisible with count 2.
        list.count = 2;
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 22).rule, RULE_DEFAULT);
        let audit = IdentityPolicy { mode: AUDIT, ..pol };
        assert_eq!(decide_net(&audit, None, PROTO_TCP, 1).action, ALLOW);
    }

    #[test]
    fn every_program_named_once() {
        for (i, a) in programs::ALL.iter().enumerate() {
            assert!(!programs::ALL[i + 1..].contains(a), "{a} twice");
        }
    }
}

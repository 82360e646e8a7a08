//! Map names (the symbol names in `zt-ebpf/src/maps.rs`) and capacities.
//!
//! [`ALL`] lists every map of the object; the ELF test in
//! `zt-agent/src/bpf/mod.rs` checks that the object's `maps` section holds
//! exactly these names.

/// tgid -> [`crate::ProcInfo`].
pub const PROC_TABLE: &str = "PROC_TABLE";
pub const PROC_TABLE_CAPACITY: u32 = 65_536;
/// cgroup v2 id -> identity id (cgroups user space resolved to an identity).
pub const CGROUP_IDENTITY: &str = "CGROUP_IDENTITY";
pub const CGROUP_IDENTITY_CAPACITY: u32 = 16_384;
/// Selectors decided in the kernel at exec (see `ExecKey`).
pub const EXEC_SELECT: &str = "EXEC_SELECT";
pub const EXEC_SELECT_CAPACITY: u32 = 4096;
/// [`crate::DigestKey`] -> [`crate::ExecPick`]: `exeDigest` verdicts per
/// executable file, filled by user space as it hashes files (cleared when
/// the policy changes; cleared too when full).
pub const DIGEST_VERDICT: &str = "DIGEST_VERDICT";
pub const DIGEST_VERDICT_CAPACITY: u32 = 16_384;
/// tid -> argv captured at `sys_enter_execve`, consumed at `sched_process_exec`.
pub const EXEC_ARGS: &str = "EXEC_ARGS";
pub const EXEC_ARGS_CAPACITY: u32 = 4_096;
/// Per-CPU array with one [`crate::ExecArgs`]: the scratch space
/// `sys_enter_execve` builds an entry of `EXEC_ARGS` in (it is larger than
/// the 512-byte eBPF stack). Kernel-only; user space never opens it.
pub const ARGS_SCRATCH: &str = "ARGS_SCRATCH";
/// The ring buffer of telemetry: exec, exit, allowed connects.
pub const EVENTS: &str = "EVENTS";
/// Default ring buffer size in bytes (power of two, multiple of the page size).
pub const EVENTS_DEFAULT_BYTES: u32 = 8 << 20;
/// The ring buffer of security records: denials and would-denies (connect,
/// Unix), guard kills and refusals. A telemetry flood cannot crowd them out:
/// they never share space with telemetry, and user space drains this ring
/// first, into a queue that never drops.
pub const SECURITY_EVENTS: &str = "SECURITY_EVENTS";
pub const SECURITY_EVENTS_DEFAULT_BYTES: u32 = 2 << 20;
/// Per-CPU array indexed by [`crate::loss::identity_slot`] ->
/// [`crate::loss::SecurityLoss`]: security records the kernel could not put
/// in `SECURITY_EVENTS`, per identity, with their time range.
pub const SECURITY_LOSS: &str = "SECURITY_LOSS";
pub const SECURITY_LOSS_CAPACITY: u32 = MAX_IDENTITIES + 2;
/// Per-CPU array of loss counters, indexed by [`crate::loss`].
pub const LOSS: &str = "LOSS";
/// Array with one [`crate::Config`].
pub const CONFIG: &str = "CONFIG";
/// LPM trie `(slot, identity, addr)` -> [`crate::policy::NetRuleList`].
pub const NET_RULES: &str = "NET_RULES";
/// Both slots together (double buffering).
pub const NET_RULES_CAPACITY: u32 = 65_536;
/// LPM trie `(slot, identity, name)` -> [`crate::policy::NetRuleList`]:
/// the Unix-socket rules (see [`crate::unix`]).
pub const UNIX_RULES: &str = "UNIX_RULES";
/// Both slots together.
pub const UNIX_RULES_CAPACITY: u32 = 8_192;
/// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`): the identity that
/// created an inet socket (`sock_create`), so the packet guard at cgroup
/// skb egress knows a packet's owner. The kernel frees it with the socket:
/// no release hook, and no entry an agent could evict by making sockets.
pub const AGENT_SOCKETS: &str = "AGENT_SOCKETS";
/// Array: [`crate::policy::identity_index`]`(slot, identity)` ->
/// [`crate::policy::IdentityPolicy`].
pub const IDENTITY_POLICY: &str = "IDENTITY_POLICY";
pub const IDENTITY_POLICY_CAPACITY: u32 = 2 * crate::policy::IDENTITY_SLOT_STRIDE;
/// Array with one [`crate::policy::ActivePolicy`].
pub const POLICY_ACTIVE: &str = "POLICY_ACTIVE";
/// Array indexed by pid (tgid or tid) -> identity id: the socket hooks'
/// fast path (an inlined array access instead of a hash lookup). Sized
/// to `/proc/sys/kernel/pid_max` at load; pids beyond it use `PROC_TABLE`.
pub const PID_IDENTITY: &str = "PID_IDENTITY";
pub const PID_IDENTITY_DEFAULT_CAPACITY: u32 = 4_194_304;
/// Array with one u32: the tgid of the running daemon, which settles
/// pending processes (0 while none runs; cleared by the kernel at its exit).
/// While none runs, the guards leave pending processes alone (their egress
/// stays refused): nobody could settle them, and a new daemon binary is
/// one of them.
pub const SETTLER: &str = "SETTLER";
/// Per-CPU array indexed by identity id -> [`crate::policy::IdentityCounters`].
pub const IDENTITY_COUNTERS: &str = "IDENTITY_COUNTERS";
/// Identity ids are 1..=this (id 0 is "none").
pub const MAX_IDENTITIES: u32 = 1024;
/// Per-CPU array of [`crate::policy::AGG_SLOTS`] [`crate::policy::AggSlot`]s:
/// the egress aggregation cache (no atomics needed; never full: a key
/// evicts another with a report of its unreported attempts).
pub const EGRESS_AGG: &str = "EGRESS_AGG";
/// Per-CPU array indexed by [`crate::loss::identity_slot`] ->
/// [`crate::policy::IdentityBudget`]: event budgets and folded attempts.
pub const IDENTITY_BUDGET: &str = "IDENTITY_BUDGET";
/// Hash `(slot, identity, device, inode)` ->
/// [`crate::path_policy::ObjectRules`]: file and exec rules by the object
/// their path resolved to.
pub const FILE_RULES: &str = "FILE_RULES";
/// Both slots together.
pub const FILE_RULES_CAPACITY: u32 = 65_536;
/// Per-CPU LRU hash [`crate::path_policy::FileAggKey`] ->
/// [`crate::path_policy::FileAggValue`]: one file event per (process,
/// object, access, decision) per window.
pub const FILE_AGG: &str = "FILE_AGG";
pub const FILE_AGG_CAPACITY: u32 = 16_384;
/// Per-CPU scratch space to build a [`crate::path_policy::FileEvent`]'s path.
pub const PATH_SCRATCH: &str = "PATH_SCRATCH";
/// Per-CPU array of [`crate::path_policy::OPEN_CACHE_SLOTS`]
/// [`crate::path_policy::OpenDecision`]s: `file_open`'s decision cache.
pub const OPEN_CACHE: &str = "OPEN_CACHE";
/// Array with one u64: renames since the programs loaded (each bumps it
/// when it returns), part of every `OPEN_CACHE` entry's key.
pub const FILE_EPOCH: &str = "FILE_EPOCH";
/// Array indexed by identity id -> u32, 1: record the identity's syscalls
/// (`sys_telemetry`).
pub const TELEMETRY: &str = "TELEMETRY";
/// Per-CPU array with one [`crate::syscalls::SyscallBatch`]: the batch
/// being filled on each CPU.
pub const SYSCALL_BATCH: &str = "SYSCALL_BATCH";
/// The ring buffer of kernel log records. Not declared in
/// `zt-ebpf/src/maps.rs`: aya-log-ebpf defines it, and it is in the object
/// because `zt-ebpf/src/lineage.rs` logs with `warn!`; user space reads it
/// through `aya_log::EbpfLogger`.
pub const AYA_LOGS: &str = "AYA_LOGS";

/// Every map of the object, each name once.
pub const ALL: &[&str] = &[
    PROC_TABLE,
    CGROUP_IDENTITY,
    EXEC_SELECT,
    DIGEST_VERDICT,
    EXEC_ARGS,
    ARGS_SCRATCH,
    EVENTS,
    SECURITY_EVENTS,
    SECURITY_LOSS,
    LOSS,
    CONFIG,
    NET_RULES,
    UNIX_RULES,
    AGENT_SOCKETS,
    IDENTITY_POLICY,
    POLICY_ACTIVE,
    PID_IDENTITY,
    SETTLER,
    IDENTITY_COUNTERS,
    EGRESS_AGG,
    IDENTITY_BUDGET,
    FILE_RULES,
    FILE_AGG,
    PATH_SCRATCH,
    OPEN_CACHE,
    FILE_EPOCH,
    TELEMETRY,
    SYSCALL_BATCH,
    AYA_LOGS,
];

/// The maps that are not pinned: the log channel, per-CPU scratch space
/// and the syscall telemetry (not enforcement: it starts with a daemon
/// to read it). Every other map holds enforcement state and is pinned, so
/// enforcement outlives the daemon and a restarted one continues where it
/// was ([`pinned`]).
pub const NOT_PINNED: &[&str] = &[ARGS_SCRATCH, PATH_SCRATCH, TELEMETRY, SYSCALL_BATCH, AYA_LOGS];

/// The pinned maps, in [`ALL`]'s order.
pub fn pinned() -> impl Iterator<Item = &'static str> {
    ALL.iter().copied().filter(|m| !NOT_PINNED.contains(m))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_unpinned_map_is_a_map() {
        assert!(super::NOT_PINNED.iter().all(|m| super::ALL.contains(m)));
        assert_eq!(super::pinned().count(), super::ALL.len() - super::NOT_PINNED.len());
    }

    #[test]
    fn every_map_named_once() {
        for (i, a) in super::ALL.iter().enumerate() {
            assert!(!super::ALL[i + 1..].contains(a), "{a} twice");
        }
    }
}

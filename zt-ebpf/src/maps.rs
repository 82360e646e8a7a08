//! Every map of ours, and the load-time globals. (The object holds one more
//! map, aya-log-ebpf's `AYA_LOGS`; `zt_common::maps::ALL` lists all.)
//!
//! Names and capacities come from `zt_common::maps`; user space opens the maps
//! by the same names (`zt-agent/src/bpf/maps.rs`).
use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use zt_common::{
    Config, DigestKey, ExecArgs, ExecKey, ExecPick, ProcInfo,
    loss::{self, SecurityLoss},
    maps,
    path_policy::{FILE_PATH_LEN, FileAggKey, FileAggValue, OPEN_CACHE_SLOTS, ObjectKey, ObjectRules, OpenDecision},
    policy::{AGG_SLOTS, ActivePolicy, AggSlot, IdentityBudget, IdentityCounters, IdentityPolicy, NetKeyData, NetRuleList, identity_index},
    syscalls::SyscallBatch,
    unix::UnixKeyData,
};

#[map]
pub static PROC_TABLE: HashMap<u32, ProcInfo> = HashMap::with_max_entries(maps::PROC_TABLE_CAPACITY, 0);

#[map]
pub static CGROUP_IDENTITY: HashMap<u64, u32> = HashMap::with_max_entries(maps::CGROUP_IDENTITY_CAPACITY, 0);

#[map]
pub static EXEC_SELECT: HashMap<ExecKey, ExecPick> = HashMap::with_max_entries(maps::EXEC_SELECT_CAPACITY, 0);

#[map]
pub static DIGEST_VERDICT: HashMap<DigestKey, ExecPick> = HashMap::with_max_entries(maps::DIGEST_VERDICT_CAPACITY, 0);

/// LRU: an execve that fails never reaches `sched_process_exec`, so its entry
/// is never consumed; LRU eviction bounds the leftovers.
#[map]
pub static EXEC_ARGS: LruHashMap<u32, ExecArgs> = LruHashMap::with_max_entries(maps::EXEC_ARGS_CAPACITY, 0);

/// Scratch space to build an `ExecArgs` (2 KiB, far over the 512-byte stack).
#[map]
pub static ARGS_SCRATCH: PerCpuArray<ExecArgs> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(maps::EVENTS_DEFAULT_BYTES, 0);

#[map]
pub static SECURITY_EVENTS: RingBuf = RingBuf::with_byte_size(maps::SECURITY_EVENTS_DEFAULT_BYTES, 0);

#[map]
pub static SECURITY_LOSS: PerCpuArray<SecurityLoss> = PerCpuArray::with_max_entries(maps::SECURITY_LOSS_CAPACITY, 0);

#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(loss::COUNT, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Compiled egress rules of both policy slots (see `zt_common::policy`).
#[map]
pub static NET_RULES: LpmTrie<NetKeyData, NetRuleList> = LpmTrie::with_max_entries(maps::NET_RULES_CAPACITY, 0);

/// Compiled Unix-socket rules of both slots (see `zt_common::unix`).
#[map]
pub static UNIX_RULES: LpmTrie<UnixKeyData, NetRuleList> = LpmTrie::with_max_entries(maps::UNIX_RULES_CAPACITY, 0);

/// Socket-local storage: freed with its socket, never evicted (a BTF map
/// definition: the kernel requires one for this map type). Read and
/// written through [`record_socket_owner`] and [`socket_owner`] (aya's
/// wrapper takes only a sock_addr context).
#[btf_map]
static AGENT_SOCKETS: SkStorage<u32> = SkStorage::new();

/// Records `identity` as the owner of `sk`, the context socket of a
/// cgroup `sock_create` program (the argument the helper takes there);
/// false when the kernel had no memory for the storage.
#[inline(always)]
pub fn record_socket_owner(sk: *mut bpf_sock, identity: u32) -> bool {
    let mut owner = identity;
    // SAFETY: the map pointer is our socket-storage map's definition (what
    // the loader relocates), `sk` the program's context socket, and `owner`
    // a u32, the map's value size, copied in only when the storage is created.
    let stored = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&AGENT_SOCKETS).cast_mut().cast(),
            sk.cast(),
            (&raw mut owner).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    };
    !stored.is_null()
}

/// The identity recorded for `sk`, a full socket (`bpf_sk_fullsock`).
#[inline(always)]
pub fn socket_owner(sk: *mut bpf_sock) -> Option<u32> {
    // SAFETY: the map pointer is our socket-storage map's definition, `sk`
    // a full socket the verifier tracks; no value is passed (lookup only).
    let stored = unsafe { bpf_sk_storage_get(core::ptr::from_ref(&AGENT_SOCKETS).cast_mut().cast(), sk.cast(), core::ptr::null_mut(), 0) };
    // SAFETY: non-null storage of this map holds a u32 (its value type),
    // valid for the run.
    (!stored.is_null()).then(|| unsafe { *stored.cast::<u32>() })
}

#[map]
pub static IDENTITY_POLICY: Array<IdentityPolicy> = Array::with_max_entries(maps::IDENTITY_POLICY_CAPACITY, 0);

/// Which slot is in force; flipped by user space after filling the other.
#[map]
pub static POLICY_ACTIVE: Array<ActivePolicy> = Array::with_max_entries(1, 0);

/// pid -> identity, the socket hooks' fast path (kept in step with
/// PROC_TABLE by lineage.rs and user space). Resized to pid_max at load.
#[map]
pub static PID_IDENTITY: Array<u32> = Array::with_max_entries(maps::PID_IDENTITY_DEFAULT_CAPACITY, 0);

#[map]
pub static EGRESS_AGG: PerCpuArray<AggSlot> = PerCpuArray::with_max_entries(AGG_SLOTS, 0);

#[map]
pub static IDENTITY_BUDGET: PerCpuArray<IdentityBudget> = PerCpuArray::with_max_entries(maps::SECURITY_LOSS_CAPACITY, 0);

/// File and exec rules by object (see `zt_common::path_policy`).
#[map]
pub static FILE_RULES: HashMap<ObjectKey, ObjectRules> = HashMap::with_max_entries(maps::FILE_RULES_CAPACITY, 0);

#[map]
pub static FILE_AGG: LruPerCpuHashMap<FileAggKey, FileAggValue> = LruPerCpuHashMap::with_max_entries(maps::FILE_AGG_CAPACITY, 0);

/// `file_open`'s decision cache (see `zt_common::path_policy::OpenDecision`).
#[map]
pub static OPEN_CACHE: PerCpuArray<OpenDecision> = PerCpuArray::with_max_entries(OPEN_CACHE_SLOTS, 0);

/// Renames since the programs loaded (`rename_exit`).
#[map]
pub static FILE_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// Identity id -> 1 when its syscalls are recorded (`telemetry.rs`).
#[map]
pub static TELEMETRY: Array<u32> = Array::with_max_entries(maps::MAX_IDENTITIES + 1, 0);

/// Each CPU's batch of syscall telemetry being filled.
#[map]
pub static SYSCALL_BATCH: PerCpuArray<SyscallBatch> = PerCpuArray::with_max_entries(1, 0);

/// Where a file event's path is built, back to front (twice
/// `FILE_PATH_LEN`, so every masked write is provably in bounds).
#[map]
pub static PATH_SCRATCH: PerCpuArray<[u8; 2 * FILE_PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

/// The tgid of the running daemon, which settles pending processes; 0
/// while none runs (user space writes it once it has settled itself;
/// `sched_process_exit` clears it when that process dies).
#[map]
static SETTLER: Array<u32> = Array::with_max_entries(1, 0);

/// The running daemon's tgid; 0 when none runs.
#[inline(always)]
pub fn daemon_tgid() -> u32 {
    SETTLER.get(0).copied().unwrap_or(0)
}

/// Whether a daemon runs that will settle pending processes.
#[inline(always)]
pub fn settler_running() -> bool {
    SETTLER.get(0).is_some_and(|t| *t != 0)
}

/// Clears the daemon's record when `tgid` is the daemon (its whole thread
/// group is dying).
#[inline(always)]
pub fn settler_exited(tgid: u32) {
    if let Some(t) = SETTLER.get_ptr_mut(0) {
        // SAFETY: the lookup's pointer to the array's single element, valid
        // and aligned for the run; user space writes whole u32s too.
        unsafe {
            if *t == tgid {
                *t = 0;
            }
        }
    }
}

#[map]
pub static IDENTITY_COUNTERS: PerCpuArray<IdentityCounters> = PerCpuArray::with_max_entries(maps::MAX_IDENTITIES + 1, 0);

/// The identity of process `tgid`: one array read (the fast path every
/// process without an identity takes), the table for a tgid beyond it.
#[inline(always)]
pub fn identity_of(tgid: u32) -> u32 {
    match PID_IDENTITY.get(tgid) {
        Some(id) => *id,
        // SAFETY: a preallocated hash map may reuse a removed element for
        // another key while we read (why `get` is unsafe); ProcInfo is all
        // integers, so a race shows other but valid values, copied out here.
        None => match unsafe { PROC_TABLE.get(tgid) } {
            Some(p) => p.identity,
            None => zt_common::NO_IDENTITY,
        },
    }
}

/// The policy slot in force, and `identity`'s policy in it (`None`: the
/// policy in force does not know it). Generation 0: no policy applied yet.
#[inline(always)]
pub fn identity_policy(identity: u32) -> (ActivePolicy, Option<IdentityPolicy>) {
    let active = match POLICY_ACTIVE.get(0) {
        Some(a) => *a,
        None => Default::default(),
    };
    let pol = match identity_index(active.slot, identity) {
        Some(i) => IDENTITY_POLICY.get(i).copied().filter(|p| p.defined != 0),
        None => None,
    };
    (active, pol)
}

/// Records `identity` for `pid` in the fast-path array (pids beyond its
/// size are left to PROC_TABLE).
#[inline(always)]
pub fn set_pid_identity(pid: u32, identity: u32) {
    if let Some(p) = PID_IDENTITY.get_ptr_mut(pid) {
        // SAFETY: the lookup checked `pid` against the array's size and
        // returned a pointer to its element, valid and aligned for the run.
        // Other writers (lineage programs on other CPUs, user space) store
        // whole aligned u32s too, so a race leaves one of the values.
        unsafe { *p = identity };
    }
}

/// Tracepoint field offsets, overridden by user space from tracefs `format`
/// files (see `zt_common::globals`). Defaults are Linux 6.18's.
/// `FORK_PARENT_PID_OFF` is set but read by no program (see `try_fork`).
///
/// `no_mangle` (on each global here): user space finds them by these
/// symbol names, and nothing else in the object defines a symbol so named.
#[unsafe(no_mangle)]
pub static FORK_PARENT_PID_OFF: u32 = 12;
#[unsafe(no_mangle)]
pub static FORK_CHILD_PID_OFF: u32 = 20;
#[unsafe(no_mangle)]
pub static EXEC_FILENAME_OFF: u32 = 8;
#[unsafe(no_mangle)]
pub static EXEC_OLD_PID_OFF: u32 = 16;
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFF: u32 = 32;
#[unsafe(no_mangle)]
pub static ATTACH_DST_ROOT_OFF: u32 = 8;
#[unsafe(no_mangle)]
pub static ATTACH_DST_ID_OFF: u32 = 16;
#[unsafe(no_mangle)]
pub static ATTACH_PID_OFF: u32 = 24;
/// Kernel struct offsets from BTF (see `zt_common::globals::TASK_MM`);
/// `u32::MAX` (absent) unless user space sets them.
#[unsafe(no_mangle)]
pub static TASK_MM_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MM_ARG_START_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MM_ARG_END_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static SEL_TASK_MM_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MM_EXE_FILE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FILE_INODE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static INODE_INO_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static INODE_SB_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static SB_DEV_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FILE_DENTRY_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static DENTRY_PARENT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static DENTRY_INODE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static TASK_CHILDREN_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static INODE_CTIME_SEC_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static INODE_CTIME_NSEC_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static URING_REQ_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static URING_OPCODE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static IO_SOCKET_DOMAIN_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static IO_SOCKET_TYPE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static IO_SOCKET_PROTOCOL_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static SOCK_ADDR_UADDR_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static SOCK_ADDR_UADDRLEN_OFF: u32 = u32::MAX;
/// What the file programs read (see `zt_common::globals::FILE_MNT`).
#[unsafe(no_mangle)]
pub static FILE_MNT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FILE_MODE_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FILE_FLAGS_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static PATH_MNT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static PATH_DENTRY_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MOUNT_MNT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MOUNT_PARENT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static MOUNT_MOUNTPOINT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static VFSMOUNT_ROOT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static DENTRY_NAME_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static DENTRY_NAME_LEN_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static BPRM_FILE_OFF: u32 = u32::MAX;
/// See `zt_common::globals::TASK_FILES`.
#[unsafe(no_mangle)]
pub static TASK_FILES_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FILES_FDT_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FDTABLE_FD_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static FDTABLE_MAX_FDS_OFF: u32 = u32::MAX;
/// See `zt_common::globals::TASK_TGID`.
#[unsafe(no_mangle)]
pub static TASK_TGID_OFF: u32 = u32::MAX;
#[unsafe(no_mangle)]
pub static LSM_BPF_RET_ARG: u32 = u32::MAX;

/// Reads a global through a volatile load so the compiler cannot fold the
/// default value in; the verifier then sees the frozen `.rodata` value.
#[inline(always)]
pub fn global(g: &'static u32) -> u32 {
    // SAFETY: `g` is a shared reference to a `static`, so the pointer is
    // valid, aligned and initialised for the read. Volatile only keeps the
    // compiler from folding in the default: the loader rewrites `.rodata`.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
pub fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

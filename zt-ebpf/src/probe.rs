//! Tiny programs of each kind the agent may use. `zt-agent probe` loads (and
//! where harmless attaches) each one to learn what this kernel really runs:
//! reading `/sys/kernel/security/lsm` is not enough (it can list `bpf` while
//! BPF LSM programs are refused).
use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::{cgroup_sock_addr, fentry, kprobe, lsm, raw_tracepoint, tracepoint},
    programs::{FEntryContext, LsmContext, ProbeContext, RawTracePointContext, SockAddrContext, TracePointContext},
};

#[tracepoint]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Loaded, never attached: the load succeeds only if the verifier allows
/// `bpf_send_signal` for tracepoint programs (signal 0 would be a no-op).
#[tracepoint]
pub fn probe_send_signal(_ctx: TracePointContext) -> u32 {
    // SAFETY: the helper takes a signal number and has no memory arguments;
    // this program is only loaded (for the verifier's answer), never
    // attached, so the call never runs.
    unsafe { bpf_send_signal(0) };
    0
}

#[lsm(hook = "file_open")]
pub fn probe_lsm_file_open(_ctx: LsmContext) -> i32 {
    0
}

#[fentry(function = "vfs_read")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[cgroup_sock_addr(connect4)]
pub fn probe_sock_addr(_ctx: SockAddrContext) -> i32 {
    1
}

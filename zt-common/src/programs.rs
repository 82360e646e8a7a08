//! Program names (the function names in `zt-ebpf`).

pub const FORK: &str = "sched_process_fork";
pub const EXEC: &str = "sched_process_exec";
pub const EXIT: &str = "sched_process_exit";
pub const CGROUP_ATTACH: &str = "cgroup_attach_task";
pub const EXECVE_ARGS: &str = "sys_enter_execve";
pub const EXECVEAT_ARGS: &str = "sys_enter_execveat";
pub const CONNECT4: &str = "connect4";
pub const CONNECT6: &str = "connect6";
pub const SENDMSG4: &str = "sendmsg4";
pub const SENDMSG6: &str = "sendmsg6";
/// Loaded by `zt-agent/src/bpf/unix.rs`, not by aya (see there).
pub const CONNECT_UNIX: &str = "connect_unix";
pub const SENDMSG_UNIX: &str = "sendmsg_unix";
pub const SOCK_CREATE: &str = "sock_create";
pub const GUARD_ROUTE: &str = "guard_route";
pub const GUARD_SOCKET: &str = "guard_socket";
pub const GUARD_PTRACE: &str = "guard_ptrace";
pub const GUARD_PROCESS_VM: &str = "guard_process_vm";
pub const GUARD_PIDFD_GETFD: &str = "guard_pidfd_getfd";
pub const GUARD_BPF: &str = "guard_bpf";
/// At `io_uring/io_uring_submit_req` (not a syscall tracepoint: attached
/// whatever `--syscall-guards` says).
pub const GUARD_URING: &str = "guard_uring";
/// Signals to the daemon (raw tracepoint `signal_generate`; not a syscall
/// tracepoint, so attached whatever `--syscall-guards` says).
pub const GUARD_SIGNAL: &str = "guard_signal";
/// Each guard tracepoint program and the `syscalls` tracepoints it
/// attaches to.
pub const GUARD_TRACEPOINTS: &[(&str, &[&str])] = &[
    (GUARD_SOCKET, &["sys_enter_socket", "sys_enter_socketpair"]),
    (GUARD_PTRACE, &["sys_enter_ptrace"]),
    (GUARD_PROCESS_VM, &["sys_enter_process_vm_readv", "sys_enter_process_vm_writev"]),
    (GUARD_PIDFD_GETFD, &["sys_enter_pidfd_getfd"]),
    (GUARD_BPF, &["sys_enter_bpf"]),
];
/// The BPF LSM guards (`zt-ebpf/src/guard.rs`): program, hook, and the
/// tracepoint guards it stands in for where it attaches (no syscall
/// tracepoint is then needed for those calls).
pub const LSM_GUARDS: &[(&str, &str, &[&str])] = &[
    (GUARD_LSM_SOCKET, "socket_create", &[GUARD_SOCKET, GUARD_URING]),
    (GUARD_LSM_PTRACE, "ptrace_access_check", &[GUARD_PTRACE, GUARD_PROCESS_VM, GUARD_PIDFD_GETFD]),
    (GUARD_LSM_BPF, "bpf", &[GUARD_BPF]),
    (GUARD_LSM_SIGNAL, "task_kill", &[GUARD_SIGNAL]),
];
pub const GUARD_LSM_SOCKET: &str = "guard_lsm_socket";
pub const GUARD_LSM_PTRACE: &str = "guard_lsm_ptrace";
pub const GUARD_LSM_BPF: &str = "guard_lsm_bpf";
pub const GUARD_LSM_SIGNAL: &str = "guard_lsm_signal";
/// The BPF LSM file and exec programs (`zt-ebpf/src/file.rs`), each
/// named after its hook.
pub const LSM_FILE_HOOKS: &[&str] = &[
    "file_open",
    "bprm_check_security",
    "path_unlink",
    "path_rmdir",
    "path_rename",
    "path_truncate",
    "path_link",
    "path_mkdir",
    "path_mknod",
    "path_symlink",
];
/// File rules of identities whose files default to deny, where BPF LSM
/// does not load (`zt-ebpf/src/file.rs`): at the return of each open
/// syscall of [`OPEN_EXIT_TRACEPOINTS`].
pub const OPEN_EXIT: &str = "open_exit";
pub const OPEN_EXIT_TRACEPOINTS: &[&str] =
    &["sys_exit_open", "sys_exit_openat", "sys_exit_openat2", "sys_exit_creat", "sys_exit_open_by_handle_at"];
/// fexit of `vfs_rename`: counts renames into `FILE_EPOCH`, which
/// invalidates `file_open`'s decision cache. Attached with `file_open`.
pub const RENAME_EXIT: &str = "rename_exit";
pub const RENAME_EXIT_FUNCTION: &str = "vfs_rename";
/// Raw tracepoint `sys_enter`: the syscalls of identities with telemetry
/// on (`TELEMETRY`), batched for the anomaly model. Attached only while
/// one has it on; not pinned.
pub const SYS_TELEMETRY: &str = "sys_telemetry";
/// At `io_uring/io_uring_submit_req`: io_uring submissions of the same
/// identities as pseudo-calls. Attached with [`SYS_TELEMETRY`].
pub const URING_TELEMETRY: &str = "uring_telemetry";
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
    CGROUP_ATTACH,
    EXECVE_ARGS,
    EXECVEAT_ARGS,
    CONNECT4,
    CONNECT6,
    SENDMSG4,
    SENDMSG6,
    CONNECT_UNIX,
    SENDMSG_UNIX,
    SOCK_CREATE,
    GUARD_ROUTE,
    GUARD_SOCKET,
    GUARD_PTRACE,
    GUARD_PROCESS_VM,
    GUARD_PIDFD_GETFD,
    GUARD_BPF,
    GUARD_URING,
    GUARD_SIGNAL,
    OPEN_EXIT,
    RENAME_EXIT,
    SYS_TELEMETRY,
    URING_TELEMETRY,
    PROBE_TRACEPOINT,
    PROBE_RAW_TRACEPOINT,
    PROBE_SEND_SIGNAL,
    PROBE_LSM,
    PROBE_FENTRY,
    PROBE_KPROBE,
    PROBE_SOCK_ADDR,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_program_named_once() {
        let all = || super::ALL.iter().chain(super::LSM_FILE_HOOKS).chain(super::LSM_GUARDS.iter().map(|g| &g.0));
        for (i, a) in all().enumerate() {
            assert!(!all().skip(i + 1).any(|b| b == a), "{a} twice");
        }
    }
}

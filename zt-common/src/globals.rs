//! Names of the read-only globals user space sets at load time: tracepoint
//! field offsets read from tracefs `format` files, because the layouts differ
//! between kernels (e.g. `sched_process_fork` switched its comm fields to
//! `__data_loc` strings, moving `child_pid` from offset 44 to 20), and kernel
//! struct member offsets read from BTF.

pub const FORK_PARENT_PID: &str = "FORK_PARENT_PID_OFF";
pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID_OFF";
pub const EXEC_FILENAME: &str = "EXEC_FILENAME_OFF";
pub const EXEC_OLD_PID: &str = "EXEC_OLD_PID_OFF";
/// Offset of `group_dead` in `sched_process_exit`, or [`ABSENT`] on
/// kernels whose tracepoint lacks the field.
pub const EXIT_GROUP_DEAD: &str = "EXIT_GROUP_DEAD_OFF";
/// Offsets of `dst_root`, `dst_id` and `pid` in `cgroup_attach_task`.
pub const ATTACH_DST_ROOT: &str = "ATTACH_DST_ROOT_OFF";
pub const ATTACH_DST_ID: &str = "ATTACH_DST_ID_OFF";
pub const ATTACH_PID: &str = "ATTACH_PID_OFF";
/// Offsets of `task_struct.mm`, `mm_struct.arg_start` and
/// `mm_struct.arg_end` from kernel BTF, or [`ABSENT`]: then argv comes
/// from the `sys_enter_execve[at]` programs instead.
pub const TASK_MM: &str = "TASK_MM_OFF";
pub const MM_ARG_START: &str = "MM_ARG_START_OFF";
pub const MM_ARG_END: &str = "MM_ARG_END_OFF";
/// Offsets of `task_struct.mm` (again: argv capture may be off while exec
/// selection is on), `mm_struct.exe_file`, `file.f_inode`, `inode.i_ino`,
/// `inode.i_sb` and `super_block.s_dev` from BTF, or [`ABSENT`]: then no
/// selector is decided in the kernel at exec.
pub const SEL_TASK_MM: &str = "SEL_TASK_MM_OFF";
pub const MM_EXE_FILE: &str = "MM_EXE_FILE_OFF";
pub const FILE_INODE: &str = "FILE_INODE_OFF";
pub const INODE_INO: &str = "INODE_INO_OFF";
pub const INODE_SB: &str = "INODE_SB_OFF";
pub const SB_DEV: &str = "SB_DEV_OFF";
/// Offsets of `file.f_path.dentry`, `dentry.d_parent` and
/// `dentry.d_inode`: the exec program walks up the exec'd file's
/// directories for `exe` globs.
pub const FILE_DENTRY: &str = "FILE_DENTRY_OFF";
pub const DENTRY_PARENT: &str = "DENTRY_PARENT_OFF";
pub const DENTRY_INODE: &str = "DENTRY_INODE_OFF";
/// Offsets of `inode.i_ctime_sec` and `inode.i_ctime_nsec` (Linux >= 6.6),
/// or [`ABSENT`]: then `exeDigest` selectors are decided in user space
/// after exec.
pub const INODE_CTIME_SEC: &str = "INODE_CTIME_SEC_OFF";
pub const INODE_CTIME_NSEC: &str = "INODE_CTIME_NSEC_OFF";
/// Offset of `task_struct.children` (the exit program keeps the entry of a
/// process that leaves children), or [`ABSENT`].
pub const TASK_CHILDREN: &str = "TASK_CHILDREN_OFF";
/// Offsets of `uaddr` and `uaddrlen` in `struct bpf_sock_addr_kern` (what
/// a sock_addr program's context really points to), or [`ABSENT`]: then
/// the Unix-socket programs are not loaded.
pub const SOCK_ADDR_UADDR: &str = "SOCK_ADDR_UADDR_OFF";
pub const SOCK_ADDR_UADDRLEN: &str = "SOCK_ADDR_UADDRLEN_OFF";
/// Offsets of `req` and `opcode` in `io_uring_submit_req`, and of `domain`,
/// `type` and `protocol` in the request's `struct io_socket` (BTF; the
/// request's command data starts the `io_kiocb`), or [`ABSENT`]: then
/// sockets made through io_uring are not guarded.
pub const URING_REQ: &str = "URING_REQ_OFF";
pub const URING_OPCODE: &str = "URING_OPCODE_OFF";
pub const IO_SOCKET_DOMAIN: &str = "IO_SOCKET_DOMAIN_OFF";
pub const IO_SOCKET_TYPE: &str = "IO_SOCKET_TYPE_OFF";
pub const IO_SOCKET_PROTOCOL: &str = "IO_SOCKET_PROTOCOL_OFF";
pub const ABSENT: u32 = u32::MAX;
/// Offsets the file programs read (`zt-ebpf/src/file.rs`), or [`ABSENT`]:
/// `file.f_path.mnt`, `file.f_mode`, `path.mnt`, `path.dentry`,
/// `mount.mnt` (the `vfsmount` inside a `struct mount`), `mount.mnt_parent`,
/// `mount.mnt_mountpoint`, `vfsmount.mnt_root`, `dentry.d_name.name`,
/// `dentry.d_name.len`, `linux_binprm.file`. Without them no file or exec
/// rule is enforced (said by `status`).
pub const FILE_MNT: &str = "FILE_MNT_OFF";
pub const FILE_MODE: &str = "FILE_MODE_OFF";
/// `file.f_flags`: an exec's open carries `__FMODE_EXEC` there (the mode
/// need not have `FMODE_EXEC`).
pub const FILE_FLAGS: &str = "FILE_FLAGS_OFF";
pub const PATH_MNT: &str = "PATH_MNT_OFF";
pub const PATH_DENTRY: &str = "PATH_DENTRY_OFF";
pub const MOUNT_MNT: &str = "MOUNT_MNT_OFF";
pub const MOUNT_PARENT: &str = "MOUNT_PARENT_OFF";
pub const MOUNT_MOUNTPOINT: &str = "MOUNT_MOUNTPOINT_OFF";
pub const VFSMOUNT_ROOT: &str = "VFSMOUNT_ROOT_OFF";
pub const DENTRY_NAME: &str = "DENTRY_NAME_OFF";
pub const DENTRY_NAME_LEN: &str = "DENTRY_NAME_LEN_OFF";
pub const BPRM_FILE: &str = "BPRM_FILE_OFF";
/// For [`crate::programs::OPEN_EXIT`], or [`ABSENT`]: the file an open
/// returned, from the descriptor table (`task_struct.files`,
/// `files_struct.fdt`, `fdtable.fd`, `fdtable.max_fds`). Without them
/// default-deny file identities are not held where BPF LSM does not load.
pub const TASK_FILES: &str = "TASK_FILES_OFF";
pub const FILES_FDT: &str = "FILES_FDT_OFF";
pub const FDTABLE_FD: &str = "FDTABLE_FD_OFF";
pub const FDTABLE_MAX_FDS: &str = "FDTABLE_MAX_FDS_OFF";
/// For the BPF LSM guards (`zt-ebpf/src/guard.rs`), or [`ABSENT`]:
/// `task_struct.tgid` (whose process `ptrace_access_check` is asked
/// about), and which argument of the LSM `bpf` hook holds the earlier
/// LSMs' verdict (3 before Linux 6.14, 4 since it gained a `kernel` flag),
/// from the hook's prototype in BTF. Without them the syscall tracepoints
/// guard those calls instead.
pub const TASK_TGID: &str = "TASK_TGID_OFF";
pub const LSM_BPF_RET_ARG: &str = "LSM_BPF_RET_ARG";

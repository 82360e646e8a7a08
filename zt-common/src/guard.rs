//! Guards around the egress hooks: what an agent identity may not do to get
//! around them. Socket kinds are policy ([`sock_kind`], the identity's
//! `sockets` mask in [`crate::policy::IdentityPolicy`]); taking over a
//! process outside the identity (ptrace, its memory, its descriptors) and
//! `bpf(2)` are never allowed.
//!
//! Where a hook can refuse (cgroup `sock_create` for the inet families),
//! the call fails with EPERM; at a syscall tracepoint, which cannot refuse,
//! the process is killed (`bpf_send_signal(SIGKILL)`, delivered before the
//! call returns to user space). Either way a [`GuardEvent`] is written; in
//! audit mode only the event.
use crate::{COMM_LEN, EventHeader};

/// Socket kinds, one bit each (the `sockets` mask).
pub mod sock_kind {
    pub const TCP: u32 = 1 << 0;
    pub const UDP: u32 = 1 << 1;
    pub const UNIX: u32 = 1 << 2;
    pub const NETLINK: u32 = 1 << 3;
    /// ICMP/ICMPv6 datagram ("ping") sockets.
    pub const ICMP: u32 = 1 << 4;
    pub const RAW: u32 = 1 << 5;
    pub const PACKET: u32 = 1 << 6;
    /// Every other family, type or protocol (SCTP, UDP-Lite, AF_XDP, ...).
    pub const OTHER: u32 = 1 << 7;
    /// What an identity may create unless its policy says otherwise.
    pub const DEFAULT: u32 = TCP | UDP | UNIX | NETLINK;
    /// Policy names, by bit.
    pub const NAMES: [&str; 8] = ["tcp", "udp", "unix", "netlink", "icmp", "raw", "packet", "other"];
}

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;
pub const AF_PACKET: u32 = 17;

/// The [`sock_kind`] bit of a socket (`type` may carry `SOCK_NONBLOCK` and
/// `SOCK_CLOEXEC`, as the syscall's argument does).
#[inline(always)]
pub fn classify_socket(family: u32, sock_type: u32, protocol: u32) -> u32 {
    const SOCK_STREAM: u32 = 1;
    const SOCK_DGRAM: u32 = 2;
    const SOCK_RAW: u32 = 3;
    match family {
        AF_UNIX => sock_kind::UNIX,
        AF_NETLINK => sock_kind::NETLINK,
        AF_PACKET => sock_kind::PACKET,
        AF_INET | AF_INET6 => match (sock_type & 0xf, protocol) {
            (SOCK_RAW, _) => sock_kind::RAW,
            // 262: MPTCP, TCP subflows (the egress hooks treat it as TCP).
            (SOCK_STREAM, 0 | 6 | 262) => sock_kind::TCP,
            (SOCK_DGRAM, 0 | 17) => sock_kind::UDP,
            (SOCK_DGRAM, 1 | 58) => sock_kind::ICMP,
            _ => sock_kind::OTHER,
        },
        _ => sock_kind::OTHER,
    }
}

/// What was guarded ([`GuardEvent::op`]).
pub mod op {
    /// A socket refused at creation (cgroup `sock_create`, inet families).
    pub const SOCKET: u32 = 1;
    /// A `socket`/`socketpair` call of a family no hook refuses.
    pub const SOCKET_SYSCALL: u32 = 2;
    /// `ptrace` attach/seize of a process outside the identity.
    pub const PTRACE: u32 = 3;
    /// `process_vm_readv`/`process_vm_writev` on a process outside the identity.
    pub const PROCESS_VM: u32 = 4;
    /// `pidfd_getfd`: taking another process's descriptor.
    pub const PIDFD_GETFD: u32 = 5;
    /// `bpf(2)`.
    pub const BPF: u32 = 6;
    // 7 is retired: route options refused at a cgroup `setsockopt` hook
    // (now `ROUTE`, which sees the packet). Its name stays for old records.
    /// A packet of an agent identity's socket carrying IPv4 options or an
    /// IPv6 routing header (set with `setsockopt` or given per message as
    /// `sendmsg` ancillary data), dropped at the cgroup skb egress hook.
    pub const ROUTE: u32 = 8;
    /// An io_uring `IORING_OP_SOCKET` of a family no hook refuses, seen at
    /// the `io_uring_submit_req` tracepoint (the `socket` syscall is never
    /// made).
    pub const SOCKET_URING: u32 = 9;
    /// Attach-mode access to a process outside the identity, refused at the
    /// BPF LSM `ptrace_access_check` hook: ptrace attach/seize,
    /// `process_vm_readv`/`writev`, `pidfd_getfd`, opening `/proc/PID/mem`
    /// (the hook does not say which call it was).
    pub const PROCESS_ACCESS: u32 = 10;
    /// An io_uring `IORING_OP_OPENAT`/`OPENAT2` of an identity whose files
    /// default to deny, where BPF LSM does not load: what it would open is
    /// not known at submission, and no open syscall is made.
    pub const OPEN_URING: u32 = 11;
    /// A signal to the daemon's process (any of its threads, by any call:
    /// `kill`, `tgkill`, `pidfd_send_signal`, a process group, `kill(-1)`):
    /// refused at the BPF LSM `task_kill` hook; else seen at the
    /// `signal_generate` raw tracepoint, where the signal is already
    /// queued, and the sender killed. Signal 0 (is it alive?) passes.
    pub const SIGNAL: u32 = 12;
    pub const NAMES: [&str; 13] = [
        "",
        "socket",
        "socket",
        "ptrace",
        "process_vm",
        "pidfd_getfd",
        "bpf",
        "setsockopt",
        "route",
        "io_uring_socket",
        "process_access",
        "io_uring_open",
        "signal",
    ];
}

/// `IORING_OP_SOCKET`, `IORING_OP_OPENAT`, `IORING_OP_OPENAT2`
/// (`include/uapi/linux/io_uring.h`).
pub const IORING_OP_SOCKET: u8 = 45;
pub const IORING_OP_OPENAT: u8 = 18;
pub const IORING_OP_OPENAT2: u8 = 28;

/// IPv6 extension headers that may precede a routing header (hop-by-hop
/// options, destination options), and the routing header itself.
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_ROUTING: u8 = 43;

/// What happened ([`GuardEvent::action`]).
pub mod action {
    /// The call failed with EPERM.
    pub const DENIED: u32 = 1;
    /// The process was sent SIGKILL.
    pub const KILLED: u32 = 2;
    /// Audit mode: it would have been denied or killed.
    pub const AUDITED: u32 = 3;
    pub const NAMES: [&str; 4] = ["", "denied", "killed", "audited"];
}

/// One guarded call by an agent identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardEvent {
    pub header: EventHeader,
    /// [`op`].
    pub op: u32,
    /// [`action`].
    pub action: u32,
    /// The call's arguments: (family, type, protocol) for sockets,
    /// (request, pid) for ptrace, (pid) for process_vm, (pidfd, fd) for
    /// pidfd_getfd, (cmd) for bpf.
    pub args: [u64; 3],
    /// The target process (ptrace, process_vm), else 0.
    pub target_pid: u32,
    /// Its identity (0: none).
    pub target_identity: u32,
    /// The [`sock_kind`] bit for sockets, else 0.
    pub sock_kind: u32,
    /// The syscall number (0 at the `sock_create` hook).
    pub syscall: u32,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<GuardEvent>() == 48 + 8 + 24 + 16 + 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_classified_as_policy_names_them() {
        const NONBLOCK_CLOEXEC: u32 = 0o4000 | 0o2000000;
        assert_eq!(classify_socket(AF_INET, 1, 0), sock_kind::TCP);
        assert_eq!(classify_socket(AF_INET6, 1 | NONBLOCK_CLOEXEC, 6), sock_kind::TCP);
        assert_eq!(classify_socket(AF_INET, 1, 262), sock_kind::TCP);
        assert_eq!(classify_socket(AF_INET, 1, 132), sock_kind::OTHER, "SCTP");
        assert_eq!(classify_socket(AF_INET, 2, 0), sock_kind::UDP);
        assert_eq!(classify_socket(AF_INET, 2, 136), sock_kind::OTHER, "UDP-Lite");
        assert_eq!(classify_socket(AF_INET, 2, 1), sock_kind::ICMP);
        assert_eq!(classify_socket(AF_INET6, 2, 58), sock_kind::ICMP);
        assert_eq!(classify_socket(AF_INET, 3, 17), sock_kind::RAW);
        assert_eq!(classify_socket(AF_INET, 5, 0), sock_kind::OTHER, "SOCK_SEQPACKET");
        assert_eq!(classify_socket(AF_UNIX, 1, 0), sock_kind::UNIX);
        assert_eq!(classify_socket(AF_NETLINK, 3, 0), sock_kind::NETLINK);
        assert_eq!(classify_socket(AF_PACKET, 3, 0x300), sock_kind::PACKET);
        assert_eq!(classify_socket(44, 3, 0), sock_kind::OTHER, "AF_XDP");
        assert_eq!(sock_kind::NAMES.len(), 8);
    }

    #[test]
    fn guard_event_layout() {
        assert_eq!(core::mem::offset_of!(GuardEvent, op), 48);
        assert_eq!(core::mem::offset_of!(GuardEvent, args), 56);
        assert_eq!(core::mem::offset_of!(GuardEvent, comm), 96);
        assert_eq!(op::NAMES.len(), 13);
        assert_eq!(action::NAMES.len(), 4);
    }
}

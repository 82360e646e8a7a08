//! Guards around the egress hooks (see `zt_common::guard`): what an agent
//! identity may not do to get around them.
//!
//! - `sock_create` (cgroup, at the v2 root): an inet socket of a kind the
//!   identity's policy does not allow (raw, ICMP "ping", SCTP, ...) fails
//!   with EPERM at creation.
//! - `guard_route` (cgroup skb egress, at the v2 root): a packet of an
//!   agent identity's socket with IPv4 options or an IPv6 routing header
//!   (which can send it via a first hop other than the destination the
//!   egress hooks decided on) is dropped, and the send fails with EPERM:
//!   whether the options were set with `setsockopt` (`IP_OPTIONS`,
//!   `IPV6_RTHDR`) or given per message (`sendmsg` ancillary data). The
//!   socket's owner is in `AGENT_SOCKETS`, socket-local storage that
//!   `sock_create` writes and the kernel frees with the socket. Every other
//!   packet costs one header byte read (IPv6: two). No `setsockopt` hook:
//!   at the cgroup root the kernel copies every option of every process
//!   for it (+50% on a `setsockopt` call), and the packet is what counts.
//! - Syscall tracepoints, which cannot refuse a call, so the caller is
//!   killed (`bpf_send_signal(SIGKILL)`, delivered before the call returns
//!   to user space; the call itself has run):
//!   `guard_socket` (`socket`/`socketpair` of a non-inet family the policy
//!   does not allow: packet, XDP, ...), `guard_ptrace` (attach/seize of a
//!   process outside the identity), `guard_process_vm`
//!   (`process_vm_readv`/`writev` on a process outside the identity),
//!   `guard_pidfd_getfd` (any: the target behind a pidfd is not known
//!   here), `guard_bpf` (any `bpf(2)`); and at `io_uring_submit_req`,
//!   `guard_uring` (`IORING_OP_SOCKET` of a family the policy does not
//!   allow, which makes no `socket` syscall); and at the raw tracepoint
//!   `signal_generate`, `guard_signal` (a signal to the daemon, by any
//!   call, to any of its threads: queued already, so the sender is killed
//!   and the daemon gets it).
//!
//! - BPF LSM, where it loads (then the syscall tracepoints above are not
//!   attached, and no syscall pays for them): `guard_lsm_socket`
//!   (`socket_create`: every family, so also socketpair and io_uring),
//!   `guard_lsm_ptrace` (`ptrace_access_check` in attach mode: ptrace
//!   attach/seize, `process_vm_readv`/`writev`, `pidfd_getfd`, opening
//!   `/proc/PID/mem`, on a process outside the identity),
//!   `guard_lsm_bpf` (any `bpf(2)`) and `guard_lsm_signal` (`task_kill`: a
//!   signal to the daemon) refuse the call with EPERM before it runs.
//!
//! Processes without an identity pay one array read and return, and so do
//! pending ones (an undecided `exeDigest` selection) while no daemon runs
//! to settle them (`SETTLER`): a new daemon binary is one of them. An
//! identity in audit mode only gets the event. Before the first policy is
//! applied nothing is refused (as for egress).
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_ktime_get_boot_ns, bpf_send_signal, bpf_sk_fullsock},
    },
    macros::{cgroup_skb, cgroup_sock, lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, SkBuffContext, SockContext, TracePointContext},
};
use zt_common::{
    EventHeader, NO_IDENTITY, PENDING_IDENTITY,
    globals::ABSENT,
    guard::{
        AF_INET, AF_INET6, GuardEvent, IORING_OP_OPENAT, IORING_OP_OPENAT2, IORING_OP_SOCKET, IPV6_DSTOPTS, IPV6_HOPOPTS, IPV6_ROUTING,
        action, classify_socket, op,
    },
    kind, loss,
    policy::AUDIT,
};

use crate::{
    events::{Ring, reserve, submit},
    file::{arg, field, unless_refused},
    maps::{
        IO_SOCKET_DOMAIN_OFF, IO_SOCKET_PROTOCOL_OFF, IO_SOCKET_TYPE_OFF, LSM_BPF_RET_ARG, TASK_TGID_OFF, URING_OPCODE_OFF, URING_REQ_OFF,
        config, daemon_tgid, global, identity_of, identity_policy, record_socket_owner, settler_running, socket_owner,
    },
};

const SIGKILL: u32 = 9;
const EPERM: i32 = -1;
/// `PTRACE_MODE_ATTACH` (`include/linux/ptrace.h`): the access that can
/// change the process or take what it holds (read mode is `ps`, `/proc`).
const PTRACE_MODE_ATTACH: u32 = 0x02;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
/// Offsets in every `syscalls/sys_enter_*` record: the syscall number, then
/// each argument as 8 bytes (checked against tracefs at load).
const NR_OFF: usize = 8;
const ARG_OFF: usize = 16;

/// The caller's identity, or `None` for a process without one.
#[inline(always)]
fn caller() -> Option<u32> {
    let identity = identity_of((bpf_get_current_pid_tgid() >> 32) as u32);
    (identity != NO_IDENTITY).then_some(identity)
}

/// Whether `identity` runs in audit mode, and the socket kinds it may
/// create; `None` before the first policy (nothing is refused then), and
/// for a pending process while no daemon runs: nobody could settle it, and
/// the program that will, a new daemon binary not hashed yet, is one of
/// them (it needs `bpf(2)`). Its egress stays refused (the network hooks
/// do not ask here). An identity the policy in force does not know gets
/// the defaults of none: enforce, no socket kind (fail closed, as for
/// egress).
#[inline(always)]
fn policy_of(identity: u32) -> Option<(bool, u32)> {
    let (active, pol) = identity_policy(identity);
    if active.generation == 0 {
        return None;
    }
    let decided = match pol {
        Some(p) => (p.mode == AUDIT, p.sockets),
        None => (false, 0),
    };
    // Checked last: placed first, the code LLVM made for the lookup read
    // a register the verifier saw unset ("R1 !read_ok").
    if identity == PENDING_IDENTITY && !settler_running() {
        return None;
    }
    Some(decided)
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    let Some(identity) = caller() else { return 1 };
    // SAFETY: the context pointer the kernel passed to this program, valid
    // for the run; the verifier checks each field read at this attach point.
    let sk = unsafe { &*ctx.sock };
    let (family, sock_type, protocol) = (sk.family, sk.type_, sk.protocol);
    if family != AF_INET && family != AF_INET6 {
        return 1;
    }
    let kind_bit = classify_socket(family, sock_type, protocol);
    if let Some((audit, allowed)) = policy_of(identity)
        && allowed & kind_bit == 0
    {
        let act = if audit { action::AUDITED } else { action::DENIED };
        emit(identity, op::SOCKET, act, 0, [family as u64, sock_type as u64, protocol as u64], 0, NO_IDENTITY, kind_bit);
        if !audit {
            return 0;
        }
    }
    // The packet guard needs this socket's owner (whatever the policy in
    // force says now: a later one may refuse its packets). A socket whose
    // owner cannot be recorded (no memory for the storage) is refused: its
    // packets could not be attributed.
    if record_socket_owner(ctx.sock, identity) { 1 } else { 0 }
}

/// A packet whose IPv4 options or IPv6 routing header can send it via a
/// first hop other than the destination `connect4/6`/`sendmsg4/6` decided.
#[cgroup_skb(egress)]
pub fn guard_route(ctx: SkBuffContext) -> i32 {
    // cgroup skb programs see the packet from its network header.
    let Ok(first) = ctx.load::<u8>(0) else { return 1 };
    let (rerouted, detail) = match first >> 4 {
        4 => (first & 0x0f > 5, first as u64),
        6 => {
            // Up to two option headers may come before a routing header.
            let mut next = ctx.load::<u8>(6).unwrap_or(IPV6_ROUTING);
            let mut off = 40usize;
            let mut hops = 0;
            while (next == IPV6_HOPOPTS || next == IPV6_DSTOPTS) && hops < 2 {
                // A header that cannot be read counts as a routing header.
                next = ctx.load::<u8>(off).unwrap_or(IPV6_ROUTING);
                off += (ctx.load::<u8>(off + 1).unwrap_or(0) as usize + 1) * 8;
                hops += 1;
            }
            (next == IPV6_ROUTING, next as u64)
        }
        _ => (false, 0),
    };
    if !rerouted {
        return 1;
    }
    // SAFETY: the packet's socket as the kernel gives it (the verifier
    // checks the field read).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    // SAFETY: a non-null socket of the packet; the helper returns null for
    // request and time-wait sockets, which never carry our storage.
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() {
        return 1;
    }
    let Some(identity) = socket_owner(sk) else { return 1 };
    let Some((audit, _)) = policy_of(identity) else { return 1 };
    let act = if audit { action::AUDITED } else { action::DENIED };
    // No current task here: at cgroup skb egress it need not be the
    // socket's owner (a retransmit runs in softirq), and older kernels
    // refuse cgroup skb programs its pid (Linux 6.1) and credentials and
    // name (6.12). The event names the identity (the socket's storage),
    // not the process.
    let header = EventHeader {
        kind: kind::GUARD,
        identity,
        // SAFETY: an argument-less helper with no preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        ..Default::default()
    };
    emit_with(header, [0; 16], op::ROUTE, act, 0, [(first >> 4) as u64, detail, 0], 0, NO_IDENTITY, 0);
    if audit { 1 } else { 0 }
}

/// `socket`/`socketpair` of a family the `sock_create` hook does not see.
#[tracepoint]
pub fn guard_socket(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let args = syscall_args(&ctx);
    let family = args[0] as u32;
    if family == AF_INET || family == AF_INET6 {
        // Refused (with EPERM) by `sock_create`, which sees the real protocol.
        return 0;
    }
    let kind_bit = classify_socket(family, args[1] as u32, args[2] as u32);
    let Some((audit, allowed)) = policy_of(identity) else { return 0 };
    if allowed & kind_bit == 0 {
        kill_or_audit(&ctx, identity, op::SOCKET_SYSCALL, audit, args, 0, NO_IDENTITY, kind_bit);
    }
    0
}

/// An io_uring open by an identity whose files default to deny, where the
/// `file_open` LSM program is not attached (this tracepoint is attached
/// only there): killed, as `open_exit` kills a denied open, since what it
/// would open is not known yet and no open syscall follows.
#[inline(never)]
fn uring_open(identity: u32) {
    let (active, pol) = identity_policy(identity);
    let Some(pol) = pol else { return };
    if active.generation == 0 || pol.default_files != zt_common::policy::DENY || config().flags & zt_common::config_flags::FILE_LSM != 0 {
        return;
    }
    let audit = pol.mode == AUDIT;
    if !audit {
        // SAFETY: as in `kill_or_audit`.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let act = if audit { action::AUDITED } else { action::KILLED };
    emit(identity, op::OPEN_URING, act, 0, [0; 3], 0, NO_IDENTITY, 0);
}

/// A socket made through io_uring (`IORING_OP_SOCKET`): the same decision
/// as `guard_socket`, read from the prepared request (inet families meet
/// `sock_create` when the request runs). The kill reaches the submitter
/// (with `IORING_SETUP_SQPOLL`, the polling thread's process) before it
/// returns to user space; requests linked after it in the same submission
/// may still run.
#[tracepoint]
pub fn guard_uring(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let (req_off, opcode_off) = (global(&URING_REQ_OFF), global(&URING_OPCODE_OFF));
    if req_off == ABSENT || opcode_off == ABSENT || global(&IO_SOCKET_PROTOCOL_OFF) == ABSENT {
        return 0;
    }
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not
    // a fault, on a bad offset); the offsets are this tracepoint's, from tracefs.
    let (Ok(opcode), Ok(req)) = (unsafe { ctx.read_at::<u8>(opcode_off as usize) }, unsafe { ctx.read_at::<u64>(req_off as usize) }) else {
        return 0;
    };
    if opcode == IORING_OP_OPENAT || opcode == IORING_OP_OPENAT2 {
        uring_open(identity);
        return 0;
    }
    if opcode != IORING_OP_SOCKET {
        return 0;
    }
    let field = |off: u32| {
        // SAFETY: a checked kernel read at a BTF offset into the request;
        // any 4 bytes are a valid i32.
        unsafe { bpf_probe_read_kernel((req as *const u8).wrapping_add(off as usize) as *const i32) }.unwrap_or(-1) as u32
    };
    let (family, sock_type, protocol) =
        (field(global(&IO_SOCKET_DOMAIN_OFF)), field(global(&IO_SOCKET_TYPE_OFF)), field(global(&IO_SOCKET_PROTOCOL_OFF)));
    if family == AF_INET || family == AF_INET6 {
        return 0;
    }
    let kind_bit = classify_socket(family, sock_type, protocol);
    let Some((audit, allowed)) = policy_of(identity) else { return 0 };
    if allowed & kind_bit == 0 {
        if !audit {
            // SAFETY: as in `kill_or_audit`.
            unsafe { bpf_send_signal(SIGKILL) };
        }
        let act = if audit { action::AUDITED } else { action::KILLED };
        emit(identity, op::SOCKET_URING, act, 0, [family as u64, sock_type as u64, protocol as u64], 0, NO_IDENTITY, kind_bit);
    }
    0
}

#[tracepoint]
pub fn guard_ptrace(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let args = syscall_args(&ctx);
    if args[0] != PTRACE_ATTACH && args[0] != PTRACE_SEIZE {
        // Every other request needs an attach first (or is PTRACE_TRACEME,
        // which hands the caller to its parent, not the other way round).
        return 0;
    }
    across_identities(&ctx, identity, op::PTRACE, args, args[1] as u32);
    0
}

#[tracepoint]
pub fn guard_process_vm(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let args = syscall_args(&ctx);
    across_identities(&ctx, identity, op::PROCESS_VM, args, args[0] as u32);
    0
}

#[tracepoint]
pub fn guard_pidfd_getfd(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let Some((audit, _)) = policy_of(identity) else { return 0 };
    kill_or_audit(&ctx, identity, op::PIDFD_GETFD, audit, syscall_args(&ctx), 0, NO_IDENTITY, 0);
    0
}

#[tracepoint]
pub fn guard_bpf(ctx: TracePointContext) -> u32 {
    let Some(identity) = caller() else { return 0 };
    let Some((audit, _)) = policy_of(identity) else { return 0 };
    kill_or_audit(&ctx, identity, op::BPF, audit, syscall_args(&ctx), 0, NO_IDENTITY, 0);
    0
}

/// `signal_generate(sig, info, task, group, result)`: a signal an agent
/// identity sends to the daemon's process. The signal is queued as this
/// runs (a tracepoint cannot refuse), so the sender is killed and the
/// event says so; where BPF LSM loads, `guard_lsm_signal` refuses it
/// instead and this is not attached.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn guard_signal(ctx: RawTracePointContext) -> i32 {
    let Some(identity) = caller() else { return 0 };
    let sig = ctx.arg::<u64>(0) as u32;
    let Some(daemon) = signals_the_daemon(ctx.arg::<*const u8>(2)) else { return 0 };
    let Some((audit, _)) = policy_of(identity) else { return 0 };
    if !audit {
        // SAFETY: as in `kill_or_audit`: the sender is the current task.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    emit(identity, op::SIGNAL, if audit { action::AUDITED } else { action::KILLED }, 0, [sig as u64, 0, 0], daemon, NO_IDENTITY, 0);
    0
}

/// `task_kill(task, info, sig, cred)`: a signal to the daemon's process
/// from an agent identity fails with EPERM (signal 0, which only asks
/// whether it is alive, passes).
#[lsm(hook = "task_kill")]
pub fn guard_lsm_signal(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 4, |ctx| {
        let sig = ctx.arg::<i32>(2);
        if sig == 0 {
            return 0;
        }
        let Some(identity) = caller() else { return 0 };
        let Some(daemon) = signals_the_daemon(arg(ctx, 0)) else { return 0 };
        let Some((audit, _)) = policy_of(identity) else { return 0 };
        refuse_or_audit(identity, op::SIGNAL, audit, [sig as u64, 0, 0], daemon, NO_IDENTITY, 0)
    })
}

/// The daemon's tgid when kernel task `task` is one of its threads.
#[inline(always)]
fn signals_the_daemon(task: *const u8) -> Option<u32> {
    let daemon = daemon_tgid();
    let target: u32 = field(task, global(&TASK_TGID_OFF))?;
    (daemon != 0 && target == daemon).then_some(daemon)
}

/// `socket_create(family, type, protocol, kern)`: a socket of a family
/// `sock_create` does not see (inet sockets are decided there, with the
/// real protocol), by any call that makes one: `socket`, `socketpair`,
/// io_uring's `IORING_OP_SOCKET`. Sockets the kernel makes for itself pass.
#[lsm(hook = "socket_create")]
pub fn guard_lsm_socket(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 4, |ctx| {
        let (family, sock_type, protocol, kern) = (ctx.arg::<u32>(0), ctx.arg::<u32>(1), ctx.arg::<u32>(2), ctx.arg::<u32>(3));
        if kern != 0 || family == AF_INET || family == AF_INET6 {
            return 0;
        }
        let Some(identity) = caller() else { return 0 };
        let kind_bit = classify_socket(family, sock_type, protocol);
        let Some((audit, allowed)) = policy_of(identity) else { return 0 };
        if allowed & kind_bit != 0 {
            return 0;
        }
        refuse_or_audit(identity, op::SOCKET_SYSCALL, audit, [family as u64, sock_type as u64, protocol as u64], 0, NO_IDENTITY, kind_bit)
    })
}

/// `ptrace_access_check(child, mode)`: attach-mode access to a process
/// outside the caller's identity. The target is known by its kernel task,
/// so a pid namespace changes nothing here.
#[lsm(hook = "ptrace_access_check")]
pub fn guard_lsm_ptrace(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 2, |ctx| {
        let mode = ctx.arg::<u32>(1);
        if mode & PTRACE_MODE_ATTACH == 0 {
            return 0;
        }
        let Some(identity) = caller() else { return 0 };
        // An unreadable task counts as outside the identity: fail closed.
        let target: u32 = field(arg(ctx, 0), global(&TASK_TGID_OFF)).unwrap_or(0);
        let target_identity = identity_of(target);
        if target_identity == identity {
            return 0;
        }
        let Some((audit, _)) = policy_of(identity) else { return 0 };
        refuse_or_audit(identity, op::PROCESS_ACCESS, audit, [mode as u64, 0, 0], target, target_identity, 0)
    })
}

/// `bpf(cmd, attr, size[, kernel])`: any `bpf(2)` of an agent identity.
/// Where the earlier LSMs' verdict sits depends on the kernel (see
/// `zt_common::globals::LSM_BPF_RET_ARG`); the branch not taken is pruned
/// by the verifier, the global being read-only.
#[lsm(hook = "bpf")]
pub fn guard_lsm_bpf(ctx: LsmContext) -> i32 {
    let decide = |ctx: &LsmContext| {
        let Some(identity) = caller() else { return 0 };
        let Some((audit, _)) = policy_of(identity) else { return 0 };
        refuse_or_audit(identity, op::BPF, audit, [ctx.arg::<u32>(0) as u64, 0, 0], 0, NO_IDENTITY, 0)
    };
    if global(&LSM_BPF_RET_ARG) == 4 { unless_refused(&ctx, 4, decide) } else { unless_refused(&ctx, 3, decide) }
}

/// An LSM guard's answer: EPERM (the event says denied) or, in audit mode,
/// allowed with an audited event.
#[inline(always)]
fn refuse_or_audit(identity: u32, what: u32, audit: bool, args: [u64; 3], target: u32, target_identity: u32, kind_bit: u32) -> i32 {
    emit(identity, what, if audit { action::AUDITED } else { action::DENIED }, 0, args, target, target_identity, kind_bit);
    if audit { 0 } else { EPERM }
}

/// A call on process `target` (a pid as the caller names it): allowed only
/// within the caller's own identity. A pid the tables do not know (another
/// pid namespace, a thread id) counts as outside: fail closed.
#[inline(always)]
fn across_identities(ctx: &TracePointContext, identity: u32, what: u32, args: [u64; 3], target: u32) {
    let target_identity = identity_of(target);
    if target_identity == identity {
        return;
    }
    let Some((audit, _)) = policy_of(identity) else { return };
    kill_or_audit(ctx, identity, what, audit, args, target, target_identity, 0);
}

/// The first three arguments of a `syscalls/sys_enter_*` record.
#[inline(always)]
fn syscall_args(ctx: &TracePointContext) -> [u64; 3] {
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not
    // a fault, on a bad offset); every sys_enter record holds at least
    // three 8-byte argument slots from ARG_OFF (these syscalls all take 3+).
    unsafe {
        [
            ctx.read_at::<u64>(ARG_OFF).unwrap_or(0),
            ctx.read_at::<u64>(ARG_OFF + 8).unwrap_or(0),
            ctx.read_at::<u64>(ARG_OFF + 16).unwrap_or(0),
        ]
    }
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of the GuardEvent, written in place into the ring buffer")]
fn kill_or_audit(
    ctx: &TracePointContext,
    identity: u32,
    what: u32,
    audit: bool,
    args: [u64; 3],
    target: u32,
    target_identity: u32,
    kind_bit: u32,
) {
    if !audit {
        // SAFETY: the helper takes a signal number and no memory; it
        // signals the current task, which is what we mean.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    // SAFETY: as in `syscall_args`: a checked copy from the record.
    let nr = unsafe { ctx.read_at::<i32>(NR_OFF) }.unwrap_or(-1) as u32;
    emit(identity, what, if audit { action::AUDITED } else { action::KILLED }, nr, args, target, target_identity, kind_bit);
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of the GuardEvent, written in place into the ring buffer")]
fn emit(identity: u32, what: u32, act: u32, nr: u32, args: [u64; 3], target: u32, target_identity: u32, kind_bit: u32) {
    let header = crate::lineage::current_process_header(kind::GUARD, identity);
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit_with(header, comm, what, act, nr, args, target, target_identity, kind_bit);
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of the GuardEvent, written in place into the ring buffer")]
fn emit_with(
    header: zt_common::EventHeader,
    comm: [u8; 16],
    what: u32,
    act: u32,
    nr: u32,
    args: [u64; 3],
    target: u32,
    target_identity: u32,
    kind_bit: u32,
) {
    let Some(mut entry) = reserve::<GuardEvent>(Ring::Security, loss::RINGBUF_GUARD, header.identity) else { return };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for a GuardEvent
    // (its size, 8-byte aligned) that only this program sees until
    // `submit`: the field writes are in bounds and unaliased.
    unsafe {
        (*ev).header = header;
        (*ev).op = what;
        (*ev).action = act;
        (*ev).args = args;
        (*ev).target_pid = target;
        (*ev).target_identity = target_identity;
        (*ev).sock_kind = kind_bit;
        (*ev).syscall = nr;
        (*ev).comm = comm;
    }
    submit(Ring::Security, entry);
}

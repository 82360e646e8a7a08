//! Syscall telemetry for the anomaly model (see `zt_common::syscalls`).
//!
//! - [`sys_telemetry`] (raw tracepoint `sys_enter`): every syscall of a
//!   process whose identity has telemetry on, into its CPU's batch. A
//!   process without an identity pays one array read (`PID_IDENTITY`).
//! - [`uring_telemetry`] (`io_uring/io_uring_submit_req`): each io_uring
//!   submission as the pseudo-call `IORING_BASE + opcode`.
//! - [`flush_thread`]: called at a thread's exit (lineage.rs), sends its
//!   CPU's batch if it holds that thread's calls.
//!
//! The batch is per-CPU and these programs run with migration disabled,
//! not always with preemption disabled: a task preempting one of them on
//! the same CPU can interleave its calls into the batch or send it early.
//! Nothing unsafe follows; a sequence can show a foreign call or break.
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use zt_common::{
    EventHeader, NO_IDENTITY, kind, loss,
    syscalls::{BATCH_CALLS, BATCH_MAX_AGE_NS, IORING_BASE, SyscallBatch},
};

use crate::{
    events::count_loss,
    maps::{EVENTS, PROC_TABLE, SYSCALL_BATCH, TELEMETRY, URING_OPCODE_OFF, global, identity_of},
};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_telemetry(ctx: RawTracePointContext) -> i32 {
    let Some((tgid, tid, identity)) = recorded_caller() else { return 0 };
    let nr: i64 = ctx.arg(1);
    if (0..i64::from(IORING_BASE)).contains(&nr) {
        record(tgid, tid, identity, nr as u16);
    }
    0
}

#[tracepoint]
pub fn uring_telemetry(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid, identity)) = recorded_caller() else { return 0 };
    let off = global(&URING_OPCODE_OFF);
    if off == u32::MAX {
        return 0;
    }
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not
    // a fault, on a bad offset); the offset is this tracepoint's, from tracefs.
    if let Ok(opcode) = unsafe { ctx.read_at::<u8>(off as usize) } {
        record(tgid, tid, identity, IORING_BASE + u16::from(opcode));
    }
    0
}

/// The calling thread's (tgid, tid, identity) when its identity has
/// telemetry on.
#[inline(always)]
fn recorded_caller() -> Option<(u32, u32, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let identity = identity_of(tgid);
    if identity == NO_IDENTITY || TELEMETRY.get(identity).is_none_or(|on| *on == 0) {
        return None;
    }
    Some((tgid, pid_tgid as u32, identity))
}

#[inline(always)]
fn record(tgid: u32, tid: u32, identity: u32, call: u16) {
    let Some(b) = SYSCALL_BATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's element of a per-CPU array, valid and aligned for
    // the run; plain integers (see the module comment on preemption).
    let b = unsafe { &mut *b };
    // SAFETY: an argument-less helper with no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if b.count > 0 && (b.header.tid != tid || now.saturating_sub(b.header.time_ns) > BATCH_MAX_AGE_NS) {
        send(b);
    }
    if b.count == 0 {
        // The process incarnation (start time, cgroup), so user space finds
        // what it learnt of it at exec: one lookup per batch.
        // SAFETY: as in `identity_of`: integers copied out of a
        // preallocated element, possibly another process's if it is reused.
        let (start_ns, cgroup_id) = match unsafe { PROC_TABLE.get(tgid) } {
            Some(p) => (p.start_ns, p.cgroup_id),
            None => (0, 0),
        };
        b.header = EventHeader { kind: kind::SYSCALLS, tgid, tid, identity, time_ns: now, start_ns, cgroup_id, ..Default::default() };
    }
    let i = b.count as usize;
    if i < BATCH_CALLS {
        b.calls[i] = call;
        b.count += 1;
    }
    if b.count as usize >= BATCH_CALLS {
        send(b);
    }
}

/// Sends this CPU's batch if it holds calls of thread `tid`.
#[inline(always)]
pub fn flush_thread(tid: u32) {
    let Some(b) = SYSCALL_BATCH.get_ptr_mut(0) else { return };
    // SAFETY: as in `record`.
    let b = unsafe { &mut *b };
    if b.count > 0 && b.header.tid == tid {
        send(b);
    }
}

#[inline(always)]
fn send(b: &mut SyscallBatch) {
    // No wakeup: telemetry waits for the consumer's poll.
    if EVENTS.output::<SyscallBatch>(&*b, BPF_RB_NO_WAKEUP as u64).is_err() {
        count_loss(loss::RINGBUF_SYSCALLS);
    }
    b.count = 0;
}

//! Ring buffer output with batched wakeups, and loss accounting.
//!
//! A wakeup per record costs 5-10 us on these VMs (irq_work + self-IPI, see
//! `shared/docs/limits.md`), so records are submitted with `BPF_RB_NO_WAKEUP`
//! and user space polls on a short timer. Only when the ring holds at least
//! `Config::wakeup_bytes` (and that is not 0) does a submit force a wakeup, so
//! a burst is drained before it overflows. A record user space must act on
//! at once (a process held at exec) wakes it ([`submit_now`]).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::ring_buf::RingBufEntry,
};

use crate::maps::{EVENTS, LOSS, config};

/// Counts one lost record of the given `zt_common::loss` index.
#[inline(always)]
pub fn count_loss(index: u32) {
    if let Some(c) = LOSS.get_ptr_mut(index) {
        // SAFETY: the lookup returned this CPU's slot of the per-CPU array,
        // valid and aligned for a u64 for the whole run. The add is not
        // atomic: tracepoint programs run with preemption disabled, but the
        // cgroup socket programs only with migration disabled
        // (kernel/bpf/cgroup.c `bpf_prog_run_array_cg`), so on a fully
        // preemptible kernel a task preempting one of them on this CPU can
        // count into the same slot in between and an increment is lost. The
        // slot stays a valid u64; the counter can only undercount.
        unsafe { *c += 1 };
    }
}

/// Reserves a record of type `T`, counting a loss at `loss_index` on failure.
#[inline(always)]
pub fn reserve<T: 'static>(loss_index: u32) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_loss(loss_index);
    }
    entry
}

/// Submits a record, waking the consumer only when the ring is filling up.
#[inline(always)]
pub fn submit<T>(entry: RingBufEntry<T>) {
    let threshold = config().wakeup_bytes as u64;
    let flags = if threshold != 0 && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(flags as u64);
}

/// Submits a record and wakes the consumer at once: for a record user space
/// must act on without delay (a process held until it decides).
#[inline(always)]
pub fn submit_now<T>(entry: RingBufEntry<T>) {
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

//! Ring buffer output with batched wakeups, and loss accounting.
//!
//! Two rings ([`Ring`]): telemetry (`EVENTS`) and security records
//! (`SECURITY_EVENTS`: denials, would-denies, guard actions), so a telemetry
//! flood never takes the space of a security record. A security record that
//! still finds its ring full is counted per identity with its time range
//! (`SECURITY_LOSS`), as well as in `LOSS`.
//!
//! A wakeup per record costs 5-10 us on these VMs (irq_work + self-IPI, see
//! `shared/docs/limits.md`), so records are submitted with `BPF_RB_NO_WAKEUP`
//! and user space polls on a short timer. Only when the ring holds at least
//! `Config::wakeup_bytes` (`security_wakeup_bytes`) does a
//! submit force a wakeup, so a burst is drained before it overflows. A record
//! user space must act on at once (a process held at exec) wakes it
//! ([`submit_now`]).
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_boot_ns,
    maps::ring_buf::RingBufEntry,
};
use zt_common::loss;

use crate::maps::{EVENTS, LOSS, SECURITY_EVENTS, SECURITY_LOSS, config};

/// Which ring a record goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    Telemetry,
    Security,
}

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

/// Counts one lost security record of `identity`, with its time.
#[inline(always)]
fn count_security_loss(identity: u32) {
    if let Some(l) = SECURITY_LOSS.get_ptr_mut(loss::identity_slot(identity)) {
        // SAFETY: an argument-less helper with no preconditions.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        // SAFETY: this CPU's element, valid for the run; plain integers
        // (preemption can lose one count, as in `count_loss`).
        let l = unsafe { &mut *l };
        l.count += 1;
        if l.first_ns == 0 {
            l.first_ns = now;
        }
        l.last_ns = now;
    }
}

/// Reserves a record of type `T` in `ring`, counting a loss at
/// `loss_index` (and, for a security record, against `identity`) on failure.
#[inline(always)]
pub fn reserve<T: 'static>(ring: Ring, loss_index: u32, identity: u32) -> Option<RingBufEntry<T>> {
    let entry = match ring {
        Ring::Telemetry => EVENTS.reserve::<T>(0),
        Ring::Security => SECURITY_EVENTS.reserve::<T>(0),
    };
    if entry.is_none() {
        count_loss(loss_index);
        if ring == Ring::Security {
            count_security_loss(identity);
        }
    }
    entry
}

/// Submits a record, waking the consumer only when its ring is filling up.
#[inline(always)]
pub fn submit<T>(ring: Ring, entry: RingBufEntry<T>) {
    let (avail, threshold) = match ring {
        Ring::Telemetry => (EVENTS.query(BPF_RB_AVAIL_DATA as u64), config().wakeup_bytes as u64),
        Ring::Security => (SECURITY_EVENTS.query(BPF_RB_AVAIL_DATA as u64), config().security_wakeup_bytes as u64),
    };
    let flags = if threshold != 0 && avail >= threshold { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    entry.submit(flags as u64);
}

/// Submits a record and wakes the consumer at once: for a record user space
/// must act on without delay (a process held until it decides).
#[inline(always)]
pub fn submit_now<T>(entry: RingBufEntry<T>) {
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

//! The pipeline's tasks (how each one stops is in the module map of
//! [`super`]).
//!
//! # Layout
//! - [`read`]: the rings -> decoded records -> the enrich queue (security
//!   records first and never dropped).
//! - [`report_loss`]: kernel counters -> `Stats`, and a `loss` event when
//!   any loss counter moved.
//! - [`enrich`]: the queue -> events -> outputs; aggregation flushes, cgroup
//!   rescans and table GC on their timers.
use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use super::{
    Input, Stats, decode,
    enrich::Enricher,
    event::{Body, Event, LossReport, SecurityRecordsLost},
    output::Outputs,
    source::{AggregateTable, EventRing, KernelCounters, Ring},
};
use crate::{
    host::{boottime_ns, wall_time},
    identity::attribution::{self, Tables},
};

/// Inputs the enrich task takes from its queue at once.
const INPUT_BATCH: usize = 256;

/// Malformed records are logged at most this often (each one is counted).
const DECODE_WARN_EVERY: Duration = Duration::from_secs(10);

/// Drains the rings into the enrich queue. Security records are never
/// dropped: only what the queue has room for is taken from their ring (the
/// rest waits there, and what the ring itself cannot hold the kernel counts
/// per identity). Telemetry takes what room is left beyond the reserve kept
/// for security records ([`super::telemetry_has_room`]); the rest is dropped and counted
/// (`queue_overflow`). What one pass takes from both rings is queued in
/// time order, so a process's exec (telemetry) is enriched before its
/// denied connect (security) and the denial names its executable.
pub async fn read<R: EventRing>(mut ring: R, tx: mpsc::Sender<Input>, mut stop: watch::Receiver<bool>, poll: Duration, stats: Arc<Stats>) {
    let mut last_decode_warn: Option<Instant> = None;
    let mut decoded = |bytes: &[u8], stats: &Stats| -> Option<decode::RawEvent> {
        stats.records.fetch_add(1, Relaxed);
        match decode::decode(bytes) {
            Ok(raw) => Some(raw),
            Err(e) => {
                stats.decode_errors.fetch_add(1, Relaxed);
                if last_decode_warn.is_none_or(|t| t.elapsed() > DECODE_WARN_EVERY) {
                    last_decode_warn = Some(Instant::now());
                    tracing::warn!("dropping malformed ring buffer record: {e}");
                }
                None
            }
        }
    };
    let mut more = false;
    loop {
        let stopping = if more {
            tokio::task::yield_now().await;
            *stop.borrow()
        } else {
            tokio::select! {
                _ = stop.changed() => true,
                _ = ring.wait(poll) => false,
            }
        };
        // (security, record), merged by time below.
        let mut batch: Vec<(bool, decode::RawEvent)> = Vec::new();
        let room = tx.capacity();
        more = ring.drain(Ring::Security, room, &mut |bytes| batch.extend(decoded(bytes, &stats).map(|r| (true, r)))) == room;
        // The places left once this pass's records are queued.
        let mut free = room.saturating_sub(batch.len());
        ring.drain(Ring::Telemetry, usize::MAX, &mut |bytes| {
            if !super::telemetry_has_room(free, tx.max_capacity()) {
                stats.records.fetch_add(1, Relaxed);
                stats.queue_overflow.fetch_add(1, Relaxed);
            } else if let Some(raw) = decoded(bytes, &stats) {
                free -= 1;
                batch.push((false, raw));
            }
        });
        batch.sort_by_key(|(_, raw)| raw.header().time_ns);
        for (security, raw) in batch {
            match tx.try_send(Input::Raw(raw)) {
                Ok(()) => {}
                // The room was there when counted; another sender (the
                // policy manager) may have taken some: wait rather than drop.
                Err(mpsc::error::TrySendError::Full(input)) if security => {
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(_) => {
                    stats.queue_overflow.fetch_add(1, Relaxed);
                }
            }
        }
        if stopping && !more {
            break;
        }
    }
}

pub async fn report_loss<C: KernelCounters>(
    counters: C,
    tx: mpsc::Sender<Input>,
    mut stop: watch::Receiver<bool>,
    every: Duration,
    node: Arc<str>,
    stats: Arc<Stats>,
) {
    let mut reported = stats.loss_totals();
    // Per identity: security records lost so far, and the last one's time.
    let mut reported_security: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    let mut tick = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            _ = tick.tick() => false,
        };
        match counters.loss() {
            Ok(k) => *stats.kernel_loss.lock().expect("poisoned") = k,
            Err(e) => tracing::warn!("{}", crate::error::Chain(&e)),
        }
        match counters.decisions() {
            Ok(d) => *stats.decisions.lock().expect("poisoned") = d,
            Err(e) => tracing::warn!("{}", crate::error::Chain(&e)),
        }
        let per_identity = counters.security_loss().unwrap_or_else(|e| {
            tracing::warn!("{}", crate::error::Chain(&e));
            Vec::new()
        });
        // What each identity lost since the last report, between its last
        // loss then (or its first ever) and its last loss now.
        let security_records: Vec<SecurityRecordsLost> = per_identity
            .iter()
            .filter_map(|(id, l)| {
                let (count, last) = reported_security.get(id).copied().unwrap_or((0, l.first_ns));
                (l.count > count).then(|| SecurityRecordsLost {
                    identity_id: *id,
                    identity: None,
                    lost: l.count - count,
                    from: wall_time(last),
                    to: wall_time(l.last_ns),
                })
            })
            .collect();
        let totals = stats.loss_totals();
        if totals != reported || !security_records.is_empty() {
            let delta = totals.iter().map(|(k, v)| (*k, v - reported.get(k).copied().unwrap_or(0))).collect();
            let ev = Event {
                time: wall_time(boottime_ns()),
                node: node.clone(),
                body: Body::Loss { loss: LossReport { totals: totals.clone(), delta, security_records } },
            };
            tracing::warn!("events lost: {totals:?}");
            // On a full queue, keep `reported`: the next tick reports the totals again.
            if tx.try_send(Input::Emit(Box::new(ev))).is_ok() {
                reported = totals;
                reported_security.extend(per_identity.iter().map(|(id, l)| (*id, (l.count, l.last_ns))));
            }
        }
        if stopping {
            break;
        }
    }
}

/// What the enrich task owns.
pub struct Enrich<A> {
    pub enricher: Enricher,
    pub tables: Tables,
    pub aggregates: A,
    pub outputs: Outputs,
}

/// The enrich task's periodic upkeep of the kernel tables.
pub struct Upkeep {
    pub rescan: Duration,
    /// Rescans between two garbage collections of the process table.
    pub gc_every: u32,
    pub cgroup2: PathBuf,
}

pub async fn enrich<A: AggregateTable>(mut e: Enrich<A>, mut rx: mpsc::Receiver<Input>, upkeep: Upkeep, stats: Arc<Stats>) {
    stats.heartbeat_ns.store(crate::host::boottime_ns(), Relaxed);
    let mut rescan = tokio::time::interval(upkeep.rescan);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u32 = 0;
    let mut exited = std::collections::HashSet::new();
    let exe_watch = |e: &Enrich<A>| crate::dirwatch::watch(&e.enricher.resolver().exec_watch_dirs(), "exe selector files");
    let mut exe_files = exe_watch(&e);
    // Inputs are taken in batches: one pass through the `select!` (and its
    // timers) per batch, not per event.
    let mut batch = Vec::with_capacity(INPUT_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, INPUT_BATCH) => {
                if n == 0 {
                    break;
                }
                for input in batch.drain(..) {
                    match input {
                        Input::Raw(raw) => {
                            if let Some(ev) = e.enricher.process(raw, &mut e.tables) {
                                stats.enriched.fetch_add(1, Relaxed);
                                e.outputs.send(ev);
                            }
                        }
                        Input::Emit(mut ev) => {
                            e.enricher.name_identities(&mut ev);
                            e.outputs.send(*ev)
                        }
                        Input::Identities(cfg) => {
                            e.enricher.set_identities(cfg, &mut e.tables);
                            exe_files = exe_watch(&e);
                        }
                        Input::Rescan => {
                            attribution::rescan_cgroups(e.enricher.resolver(), &mut e.tables, &upkeep.cgroup2);
                            e.enricher.learn_workload_cgroups();
                        }
                    }
                }
                for ev in e.enricher.take_pending() {
                    e.outputs.send(ev);
                }
                stats.assigned.store(e.enricher.assigned, Relaxed);
            }
            _ = flush.tick() => {
                stats.heartbeat_ns.store(crate::host::boottime_ns(), Relaxed);
                flush_aggregates(&mut e, false);
                e.enricher.anomaly_tick();
                for ev in e.enricher.take_pending() {
                    e.outputs.send(ev);
                }
            }
            // A file an `exe` selector names was replaced: its new inode
            // goes to the kernel now, not at the next rescan.
            _ = crate::dirwatch::changed(&exe_files) => {
                attribution::sync_exec_selectors(e.enricher.resolver(), &mut e.tables);
            }
            _ = rescan.tick() => {
                attribution::rescan_cgroups(e.enricher.resolver(), &mut e.tables, &upkeep.cgroup2);
                e.enricher.learn_workload_cgroups();
                e.enricher.settle_pending(&mut e.tables);
                // The GC walks the whole table; it also yields the entry count.
                if ticks.is_multiple_of(upkeep.gc_every) {
                    let (removed, remaining) = attribution::gc_stale_entries(e.tables.procs.as_mut(), e.enricher.resolver().proc_root(), &mut exited);
                    stats.stale_entries_removed.fetch_add(removed as u64, Relaxed);
                    stats.proc_table_entries.store(remaining as u64, Relaxed);
                }
                ticks = ticks.wrapping_add(1);
            }
        }
    }
    // Shutdown: report every attempt still only counted, then drain the outputs.
    flush_aggregates(&mut e, true);
    e.outputs.close().await;
}

/// Reports attempts the kernel only counted: per key, and folded per
/// identity. `force`: at shutdown.
fn flush_aggregates<A: AggregateTable>(e: &mut Enrich<A>, force: bool) {
    let slots = match e.aggregates.slots() {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!("{}", crate::error::Chain(&err));
            return;
        }
    };
    let now = crate::host::monotonic_coarse_ns();
    let mut events = e.enricher.flush_aggregates(&slots, now, force);
    match e.aggregates.folded(&e.enricher.identity_ids()) {
        Ok(folded) => events.extend(e.enricher.flush_folded(&folded, now)),
        Err(err) => tracing::warn!("{}", crate::error::Chain(&err)),
    }
    for ev in events {
        e.outputs.send(ev);
    }
}

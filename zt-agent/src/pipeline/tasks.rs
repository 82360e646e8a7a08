//! The pipeline's tasks (how each one stops is in the module map of
//! [`super`]).
//!
//! # Layout
//! - [`read`]: ring buffer -> decoded records -> the enrich queue.
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
use zt_common::policy::AggValue;

use super::{
    Input, Stats, decode,
    enrich::Enricher,
    event::{Body, Event, LossReport},
    output::Outputs,
    source::{AggregateTable, EventRing, KernelCounters},
};
use crate::{
    host::{boottime_ns, wall_time},
    identity::attribution::{self, Tables},
};

/// Aggregation keys idle this long, with every attempt reported, are pruned.
const AGG_IDLE_NS: u64 = 30_000_000_000;

/// Malformed records are logged at most this often (each one is counted).
const DECODE_WARN_EVERY: Duration = Duration::from_secs(10);

pub async fn read<R: EventRing>(mut ring: R, tx: mpsc::Sender<Input>, mut stop: watch::Receiver<bool>, poll: Duration, stats: Arc<Stats>) {
    let mut last_decode_warn: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            _ = ring.wait(poll) => false,
        };
        ring.drain(&mut |bytes| {
            stats.records.fetch_add(1, Relaxed);
            match decode::decode(bytes) {
                Ok(raw) => {
                    if tx.try_send(Input::Raw(raw)).is_err() {
                        stats.queue_overflow.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => {
                    stats.decode_errors.fetch_add(1, Relaxed);
                    if last_decode_warn.is_none_or(|t| t.elapsed() > DECODE_WARN_EVERY) {
                        last_decode_warn = Some(Instant::now());
                        tracing::warn!("dropping malformed ring buffer record: {e}");
                    }
                }
            }
        });
        if stopping {
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
        let totals = stats.loss_totals();
        if totals != reported {
            let delta = totals.iter().map(|(k, v)| (*k, v - reported.get(k).copied().unwrap_or(0))).collect();
            let ev = Event {
                time: wall_time(boottime_ns()),
                node: node.clone(),
                body: Body::Loss { loss: LossReport { totals: totals.clone(), delta } },
            };
            tracing::warn!("events lost: {totals:?}");
            // On a full queue, keep `reported`: the next tick reports the totals again.
            if tx.try_send(Input::Emit(Box::new(ev))).is_ok() {
                reported = totals;
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
    let mut rescan = tokio::time::interval(upkeep.rescan);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u32 = 0;
    let mut exited = std::collections::HashSet::new();
    let exe_watch = |e: &Enrich<A>| crate::dirwatch::watch(&e.enricher.resolver().exec_watch_dirs(), "exe selector files");
    let mut exe_files = exe_watch(&e);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Input::Raw(raw)) => {
                    if let Some(ev) = e.enricher.process(raw, &mut e.tables) {
                        stats.enriched.fetch_add(1, Relaxed);
                        e.outputs.send(&ev);
                    }
                    stats.assigned.store(e.enricher.assigned, Relaxed);
                }
                Some(Input::Emit(ev)) => e.outputs.send(&ev),
                Some(Input::Identities(cfg)) => {
                    e.enricher.set_identities(cfg, &mut e.tables, &upkeep.cgroup2);
                    exe_files = exe_watch(&e);
                }
                None => break,
            },
            _ = flush.tick() => flush_aggregates(&mut e, false),
            // A file an `exe` selector names was replaced: its new inode
            // goes to the kernel now, not at the next rescan.
            _ = crate::dirwatch::changed(&exe_files) => {
                attribution::sync_exec_selectors(e.enricher.resolver(), &mut e.tables);
            }
            _ = rescan.tick() => {
                attribution::rescan_cgroups(e.enricher.resolver(), &mut e.tables, &upkeep.cgroup2);
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

/// Reports attempts the kernel only counted, and prunes idle keys (re-read
/// first: an attempt since the snapshot keeps the key). `force`: at shutdown.
fn flush_aggregates<A: AggregateTable>(e: &mut Enrich<A>, force: bool) {
    let entries = e.aggregates.entries();
    let (events, prune) = e.enricher.flush_aggregates(&entries, crate::host::monotonic_coarse_ns(), AGG_IDLE_NS, force);
    let totals = |v: &[AggValue]| v.iter().map(|x| x.total).collect::<Vec<_>>();
    for k in prune {
        let seen = entries.iter().find(|(e, _)| *e == k).map(|(_, v)| totals(v));
        if e.aggregates.get(&k).ok().flatten().map(|v| totals(&v)) == seen
            && let Err(err) = e.aggregates.remove(&k)
        {
            tracing::warn!("{}", crate::error::Chain(&err));
        }
    }
    for ev in &events {
        e.outputs.send(ev);
    }
}

//! The event pipeline: kernel ring buffer -> decode -> enrich -> outputs,
//! with every drop counted.
//!
//! # Layout
//! - [`decode`]: records -> `RawEvent` (length-checked, no panics).
//! - [`enrich`]: identity resolution + /proc enrichment -> [`event::Event`].
//! - [`event`]: the output schema.
//! - [`output`]: JSON lines writer.
//! - [`spawn`]: the tasks and how each one stops.
//!
//! # Tasks and shutdown
//! - `reader`: drains the ring on a short timer (the kernel submits without
//!   wakeups) into a bounded queue; stops on the shutdown signal after a last
//!   drain, dropping its queue sender.
//! - `loss`: reads the kernel loss counters (and the per-identity decision
//!   counters, for `status`) every second and emits a `loss` event when any
//!   loss counter moved; stops on the shutdown signal.
//! - `enrich`: owns the kernel tables it writes; ends when every queue sender
//!   is gone (reader, loss, and the agent's own handle), dropping the output
//!   senders.
//! - one task per output: ends when its queue closes, after a final flush.
//!
//! So a shutdown drains everything already read before the process exits.
pub mod decode;
pub mod enrich;
pub mod event;
pub mod output;

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use zt_common::{NO_IDENTITY, ProcInfo, loss};

use crate::{
    bpf::maps::{Assign, CgroupIdentities, EgressAggregates, EventSource, IdentityCounterMap, LossCounters, ProcTable},
    identity::{Classification, procfs},
};
use enrich::{Enricher, Tables};
use event::{Body, Event, LossReport};

/// Counters of the user-space side; the kernel's are in `kernel_loss`.
#[derive(Default, Debug)]
pub struct Stats {
    pub records: AtomicU64,
    pub decode_errors: AtomicU64,
    pub queue_overflow: AtomicU64,
    pub output_overflow: AtomicU64,
    pub output_errors: AtomicU64,
    /// Security events the audit log's queue had no room for.
    pub audit_overflow: AtomicU64,
    pub written: AtomicU64,
    pub enriched: AtomicU64,
    pub assigned: AtomicU64,
    /// Counted by the table GC (every `gc_every` rescans).
    pub proc_table_entries: AtomicU64,
    /// Table entries of processes that no longer exist, removed by the GC.
    pub stale_entries_removed: AtomicU64,
    pub kernel_loss: Mutex<[u64; loss::COUNT as usize]>,
    /// Egress decisions per identity id (from the kernel's per-CPU counters).
    pub decisions: Mutex<Vec<(u32, zt_common::policy::IdentityCounters)>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub records: u64,
    pub decode_errors: u64,
    pub queue_overflow: u64,
    pub output_overflow: u64,
    pub output_errors: u64,
    pub audit_overflow: u64,
    pub written: u64,
    pub enriched: u64,
    pub identities_assigned: u64,
    pub proc_table_entries: u64,
    pub stale_entries_removed: u64,
    pub kernel_loss: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let k = *self.kernel_loss.lock().expect("poisoned");
        StatsSnapshot {
            records: self.records.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            queue_overflow: self.queue_overflow.load(Relaxed),
            output_overflow: self.output_overflow.load(Relaxed),
            output_errors: self.output_errors.load(Relaxed),
            audit_overflow: self.audit_overflow.load(Relaxed),
            written: self.written.load(Relaxed),
            enriched: self.enriched.load(Relaxed),
            identities_assigned: self.assigned.load(Relaxed),
            proc_table_entries: self.proc_table_entries.load(Relaxed),
            stale_entries_removed: self.stale_entries_removed.load(Relaxed),
            kernel_loss: loss::NAMES.iter().copied().zip(k).collect(),
        }
    }

    /// Every loss counter, kernel and user space, by name.
    fn loss_totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let s = self.snapshot();
        let mut m = s.kernel_loss;
        m.insert("decode_errors", s.decode_errors);
        m.insert("queue_overflow", s.queue_overflow);
        m.insert("output_overflow", s.output_overflow);
        m.insert("audit_overflow", s.audit_overflow);
        m
    }
}

/// What flows into the enrich task.
pub enum Input {
    Raw(decode::RawEvent),
    /// An already-built event (loss, agent life cycle); boxed so a raw
    /// kernel event (the common case) stays small in the queue.
    Emit(Box<Event>),
    /// A new policy's identities (from the policy manager).
    Identities(Arc<crate::identity::IdentityConfig>),
}

pub struct Options {
    pub poll_interval: Duration,
    pub loss_interval: Duration,
    pub rescan_interval: Duration,
    /// Rescans between two garbage collections of the process table.
    pub gc_every: u32,
    pub cgroup2: PathBuf,
}

/// The kernel tables the enricher writes, over the real maps.
pub struct MapTables {
    pub procs: ProcTable,
    pub cgroups: CgroupIdentities,
    pub aggregates: EgressAggregates,
}

/// Aggregation keys idle this long, with every attempt reported, are pruned.
const AGG_IDLE_NS: u64 = 30_000_000_000;

impl Tables for MapTables {
    fn assign(&mut self, tgid: u32, start_ns: u64, c: Classification) -> anyhow::Result<Assign> {
        Ok(self.procs.assign(tgid, start_ns, c)?)
    }
    fn entries(&self) -> Vec<(u32, ProcInfo)> {
        self.procs.entries()
    }
    fn set_cgroup(&mut self, cgroup_id: u64, identity: u32) -> anyhow::Result<()> {
        Ok(self.cgroups.set(cgroup_id, identity)?)
    }
    fn cgroup_known(&self, cgroup_id: u64) -> bool {
        matches!(self.cgroups.get(cgroup_id), Ok(Some(_)))
    }
    fn replace_cgroups(&mut self, wanted: &std::collections::HashMap<u64, u32>) -> anyhow::Result<()> {
        for k in self.cgroups.keys() {
            if !wanted.contains_key(&k) {
                self.cgroups.remove(k)?;
            }
        }
        for (k, v) in wanted {
            self.cgroups.set(*k, *v)?;
        }
        Ok(())
    }
}

pub struct Running {
    pub input: mpsc::Sender<Input>,
    shutdown: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Running {
    /// Signals every task to stop and waits until all queued events are out.
    pub async fn shutdown(self) {
        let Running { input, shutdown, handles } = self;
        drop(input);
        let _ = shutdown.send(true);
        for h in handles {
            let _ = h.await;
        }
    }
}

/// Spawns the tasks; `input` is the enrich queue (created by the caller so
/// the policy manager can send to it before the pipeline starts).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    input: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
    mut events: EventSource,
    (loss_counters, identity_counters): (LossCounters, IdentityCounterMap),
    tables: MapTables,
    enricher: Enricher,
    outputs: Vec<(Box<dyn Write + Send>, output::Show)>,
    audit: Option<crate::audit::writer::Sink>,
    opts: Options,
    stats: Arc<Stats>,
) -> Running {
    let (shutdown, _) = watch::channel(false);
    let (tx, rx) = input;
    let mut handles = Vec::new();

    let mut out_txs = Vec::new();
    for (w, show) in outputs {
        let (otx, orx) = mpsc::channel::<Event>(tx.max_capacity());
        out_txs.push(otx);
        handles.push(tokio::spawn(output::json_lines(orx, w, show, stats.clone())));
    }
    // Every output, then the audit log if the event is security-relevant.
    let fan_out = {
        let stats = stats.clone();
        move |ev: Event| {
            if let Some(a) = &audit
                && crate::audit::writer::wants(&ev)
                && !a.try_send(&ev)
            {
                stats.audit_overflow.fetch_add(1, Relaxed);
            }
            for o in &out_txs {
                if o.try_send(ev.clone()).is_err() {
                    stats.output_overflow.fetch_add(1, Relaxed);
                }
            }
        }
    };

    // reader
    {
        let tx = tx.clone();
        let stats = stats.clone();
        let mut stop = shutdown.subscribe();
        let poll = opts.poll_interval;
        handles.push(tokio::spawn(async move {
            let mut last_decode_warn = std::time::Instant::now() - Duration::from_secs(60);
            loop {
                let stopping = tokio::select! {
                    _ = stop.changed() => true,
                    _ = events.wait(poll) => false,
                };
                events.drain(|bytes| {
                    stats.records.fetch_add(1, Relaxed);
                    match decode::decode(bytes) {
                        Ok(raw) => {
                            if tx.try_send(Input::Raw(raw)).is_err() {
                                stats.queue_overflow.fetch_add(1, Relaxed);
                            }
                        }
                        Err(e) => {
                            stats.decode_errors.fetch_add(1, Relaxed);
                            if last_decode_warn.elapsed() > Duration::from_secs(10) {
                                last_decode_warn = std::time::Instant::now();
                                tracing::warn!("dropping malformed ring buffer record: {e}");
                            }
                        }
                    }
                });
                if stopping {
                    break;
                }
            }
        }));
    }

    // loss reporter
    {
        let tx = tx.clone();
        let stats = stats.clone();
        let mut stop = shutdown.subscribe();
        let every = opts.loss_interval;
        let node: Arc<str> = enricher_node(&enricher);
        handles.push(tokio::spawn(async move {
            let mut reported = stats.loss_totals();
            let mut tick = tokio::time::interval(every);
            loop {
                let stopping = tokio::select! {
                    _ = stop.changed() => true,
                    _ = tick.tick() => false,
                };
                match loss_counters.read() {
                    Ok(k) => *stats.kernel_loss.lock().expect("poisoned") = k,
                    Err(e) => tracing::warn!("{e:#}"),
                }
                match identity_counters.read() {
                    Ok(d) => *stats.decisions.lock().expect("poisoned") = d,
                    Err(e) => tracing::warn!("{e:#}"),
                }
                let totals = stats.loss_totals();
                if totals != reported {
                    let delta = totals.iter().map(|(k, v)| (*k, v - reported.get(k).copied().unwrap_or(0))).collect();
                    let ev = Event {
                        time: Enricher::wall_time(crate::host::boottime_ns()),
                        node: node.clone(),
                        body: Body::Loss { loss: LossReport { totals: totals.clone(), delta } },
                    };
                    tracing::warn!("events lost: {:?}", totals);
                    // On a full queue, keep `reported`: the next tick reports the totals again.
                    if tx.try_send(Input::Emit(Box::new(ev))).is_ok() {
                        reported = totals;
                    }
                }
                if stopping {
                    break;
                }
            }
        }));
    }

    // enrich
    {
        let stats = stats.clone();
        let mut enricher = enricher;
        let mut tables = tables;
        let cgroup2 = opts.cgroup2.clone();
        let every = opts.rescan_interval;
        let gc_every = opts.gc_every.max(1);
        handles.push(tokio::spawn(async move {
            let mut rx = rx;
            let mut rescan = tokio::time::interval(every);
            let mut flush = tokio::time::interval(Duration::from_secs(1));
            let mut ticks: u32 = 0;
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let ev = match msg {
                            Some(Input::Raw(raw)) => match enricher.process(raw, &mut tables) {
                                Some(ev) => {
                                    stats.enriched.fetch_add(1, Relaxed);
                                    ev
                                }
                                None => continue,
                            },
                            Some(Input::Emit(ev)) => *ev,
                            Some(Input::Identities(cfg)) => {
                                enricher.set_identities(cfg, &mut tables, &cgroup2);
                                continue;
                            }
                            None => {
                                // Shutdown: report every attempt still only counted.
                                let entries = tables.aggregates.entries();
                                let (events, _) = enricher.flush_aggregates(&entries, crate::host::boottime_ns(), AGG_IDLE_NS, true);
                                events.into_iter().for_each(&fan_out);
                                break;
                            }
                        };
                        fan_out(ev);
                        stats.assigned.store(enricher.assigned, Relaxed);
                    }
                    _ = flush.tick() => {
                        let entries = tables.aggregates.entries();
                        let (events, prune) = enricher.flush_aggregates(&entries, crate::host::boottime_ns(), AGG_IDLE_NS, false);
                        for k in prune {
                            // Re-read: an attempt since the snapshot keeps the key.
                            let totals = |v: &Vec<zt_common::policy::AggValue>| v.iter().map(|x| x.total).collect::<Vec<_>>();
                            let unchanged = entries.iter().find(|(e, _)| *e == k).map(|(_, v)| totals(v));
                            if tables.aggregates.get(&k).ok().flatten().map(|v| totals(&v)) == unchanged
                                && let Err(e) = tables.aggregates.remove(&k)
                            {
                                tracing::warn!("{e:#}");
                            }
                        }
                        events.into_iter().for_each(&fan_out);
                    }
                    _ = rescan.tick() => {
                        rescan_cgroups(&mut enricher, &mut tables, &cgroup2);
                        // The GC walks the whole table; it also yields the entry count.
                        if ticks.is_multiple_of(gc_every) {
                            let (removed, remaining) = gc_stale_entries(&mut tables, enricher.resolver_mut().proc_root());
                            stats.stale_entries_removed.fetch_add(removed as u64, Relaxed);
                            stats.proc_table_entries.store(remaining as u64, Relaxed);
                        }
                        ticks = ticks.wrapping_add(1);
                    }
                }
            }
        }));
    }

    Running { input: tx, shutdown, handles }
}

fn enricher_node(e: &Enricher) -> Arc<str> {
    e.event(String::new(), Body::Loss { loss: LossReport::default() }).node
}

/// Finds cgroups created since the last scan that a kernel-only selector
/// matches, teaches the kernel their identity, and attributes processes that
/// were moved into them without exec'ing (which no hook would have seen).
pub fn rescan_cgroups(enricher: &mut Enricher, tables: &mut MapTables, cgroup2: &std::path::Path) {
    let found = enricher.resolver_mut().cgroup_assignments(cgroup2);
    for (cgid, rel, identity) in found {
        if tables.cgroup_known(cgid) {
            continue;
        }
        if let Err(e) = tables.set_cgroup(cgid, identity) {
            tracing::warn!("{e:#}");
            continue;
        }
        tracing::debug!("cgroup {rel} (id {cgid}) -> identity {identity}");
        attribute_cgroup_members(tables, cgroup2, &rel, identity);
    }
}

/// Removes table entries whose process no longer exists. The kernel removes
/// entries at exit; leftovers come from a thread that exec'd (its old tid's
/// entry is never exited). `/proc/<tid>` exists for live threads too, so
/// thread entries stay. An entry is removed only if it still has the
/// `start_ns` seen in the snapshot, so a pid reused meanwhile is kept.
/// Returns (entries removed, entries left).
pub fn gc_stale_entries(tables: &mut MapTables, proc_root: &std::path::Path) -> (usize, usize) {
    let mut removed = 0;
    let entries = tables.procs.entries();
    let total = entries.len();
    for (pid, info) in entries {
        let gone = || !proc_root.join(pid.to_string()).exists();
        if gone()
            && matches!(tables.procs.get(pid), Ok(Some(now)) if now.start_ns == info.start_ns)
            && gone()
            && tables.procs.remove(pid).is_ok()
        {
            removed += 1;
        }
    }
    (removed, total - removed)
}

/// Gives `identity` to unattributed processes listed in a cgroup's
/// `cgroup.procs` (and their descendants).
pub fn attribute_cgroup_members(tables: &mut MapTables, cgroup2: &std::path::Path, rel: &str, identity: u32) {
    let procs_file = cgroup2.join(rel.trim_start_matches('/')).join("cgroup.procs");
    let Ok(text) = std::fs::read_to_string(&procs_file) else { return };
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if let Ok(Some(info)) = tables.procs.get(pid)
            && info.identity == NO_IDENTITY
            && matches!(tables.procs.assign(pid, info.start_ns, Classification { identity, child_identity: 0 }), Ok(Assign::Updated))
        {
            enrich::propagate(tables, pid, identity);
        }
    }
}

/// Seeds the kernel table from /proc (processes that started before the
/// agent), then fixes entries the kernel created meanwhile whose parent was
/// seeded with an identity. Returns (seeded, attributed).
pub fn seed(enricher: &mut Enricher, tables: &mut MapTables, cgroup2: &std::path::Path) -> (usize, usize) {
    for (cgid, _rel, identity) in enricher.resolver_mut().cgroup_assignments(cgroup2) {
        if let Err(e) = tables.set_cgroup(cgid, identity) {
            tracing::warn!("{e:#}");
        }
    }
    let plan = enricher.resolver_mut().seed_plan();
    let root = enricher.resolver_mut().proc_root().to_path_buf();
    let (mut seeded, mut attributed) = (0, 0);
    for p in &plan {
        let cgroup_id = procfs::cgroup_v2(&root, p.pid)
            .and_then(|rel| std::fs::metadata(cgroup2.join(rel.trim_start_matches('/'))).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let info = ProcInfo {
            start_ns: p.start_ns,
            cgroup_id,
            ppid: p.ppid,
            identity: p.classification.identity,
            child_identity: p.classification.child_identity,
            flags: zt_common::proc_flags::SEEDED,
        };
        match tables.procs.seed(p.pid, info) {
            Ok(true) => {
                seeded += 1;
                if info.identity != NO_IDENTITY {
                    attributed += 1;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
    // Forks that happened between attaching and seeding copied an empty parent.
    for p in plan.iter().filter(|p| p.classification.identity != NO_IDENTITY) {
        enrich::propagate(tables, p.pid, p.classification.identity);
    }
    (seeded, attributed)
}

//! The event pipeline: kernel ring buffers -> decode -> enrich -> outputs,
//! with every drop counted. Security records are never dropped for
//! telemetry: every queue keeps [`telemetry_has_room`]'s reserve for them.
//!
//! # Layout
//! - [`source`]: what the pipeline reads from the kernel, as traits.
//! - [`decode`]: records -> `RawEvent` (length-checked, no panics).
//! - [`enrich`]: identity resolution + /proc enrichment -> [`event::Event`].
//! - [`event`]: the output schema.
//! - [`output`]: the [`output::Output`] trait, the fan-out, JSON lines.
//! - [`tasks`]: the reader, loss reporter and enricher tasks.
//! - [`spawn`]: starts the tasks; [`Running::shutdown`] stops them in order.
//!
//! # Tasks and shutdown
//! - `reader`: drains the rings on a short timer (the kernel submits without
//!   wakeups) into a bounded queue; stops on the shutdown signal after a last
//!   drain, dropping its queue sender.
//! - `loss`: reads the kernel loss counters (and the per-identity decision
//!   counters, for `status`) every second and emits a `loss` event when any
//!   loss counter moved; stops on the shutdown signal.
//! - `enrich`: owns the kernel tables it writes and the outputs; ends when
//!   every queue sender is gone (reader, loss, the agent's own handle and
//!   the policy manager's, so stop the manager first), then closes every
//!   output, which writes what it holds.
//!
//! So a shutdown drains everything already read before the process exits.
pub mod decode;
pub mod enrich;
pub mod event;
pub mod output;
pub mod source;
mod tasks;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use zt_common::loss;

use crate::identity::{IdentityConfig, attribution::Tables};
use enrich::Enricher;
use event::Event;
use output::{Output, OutputCounters, Outputs};
use source::{AggregateTable, EventRing, KernelCounters};

/// Counters of the user-space side; the kernel's are in `kernel_loss`.
#[derive(Default, Debug)]
pub struct Stats {
    pub records: AtomicU64,
    pub decode_errors: AtomicU64,
    pub queue_overflow: AtomicU64,
    pub output_errors: AtomicU64,
    /// Events each output dropped (full queue, output gone), by counter name.
    pub outputs: OutputCounters,
    pub written: AtomicU64,
    pub enriched: AtomicU64,
    pub assigned: AtomicU64,
    /// Counted by the table GC (every `gc_every` rescans).
    pub proc_table_entries: AtomicU64,
    /// Table entries of processes that no longer exist, removed by the GC.
    pub stale_entries_removed: AtomicU64,
    /// The kernel's loss counters, per CPU.
    pub kernel_loss: Mutex<Vec<source::LossArray>>,
    /// When the enrich task last went round its loop (boot-time ns): a
    /// stalled pipeline fails `/healthz`.
    pub heartbeat_ns: AtomicU64,
    /// Egress decisions per identity id (from the kernel's per-CPU counters).
    pub decisions: Mutex<Vec<(u32, zt_common::policy::IdentityCounters)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub records: u64,
    pub decode_errors: u64,
    pub queue_overflow: u64,
    pub output_errors: u64,
    pub written: u64,
    pub enriched: u64,
    pub identities_assigned: u64,
    pub proc_table_entries: u64,
    pub stale_entries_removed: u64,
    pub kernel_loss: BTreeMap<String, u64>,
    /// Milliseconds since the enrich task last went round its loop (it
    /// does at least once a second; `/healthz` fails past 10 s).
    #[serde(default)]
    pub heartbeat_age_ms: u64,
    /// Per output: `output_overflow`, `audit_overflow`, `*_closed`, ...
    #[serde(flatten)]
    pub outputs: BTreeMap<String, u64>,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let k = self.kernel_loss_total();
        StatsSnapshot {
            records: self.records.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            queue_overflow: self.queue_overflow.load(Relaxed),
            output_errors: self.output_errors.load(Relaxed),
            written: self.written.load(Relaxed),
            enriched: self.enriched.load(Relaxed),
            identities_assigned: self.assigned.load(Relaxed),
            proc_table_entries: self.proc_table_entries.load(Relaxed),
            stale_entries_removed: self.stale_entries_removed.load(Relaxed),
            kernel_loss: loss::NAMES.iter().map(|n| n.to_string()).zip(k).collect(),
            heartbeat_age_ms: crate::host::boottime_ns().saturating_sub(self.heartbeat_ns.load(Relaxed)) / 1_000_000,
            outputs: self.outputs.snapshot().into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
        }
    }

    /// The kernel's loss counters, summed over CPUs.
    pub fn kernel_loss_total(&self) -> source::LossArray {
        let per_cpu = self.kernel_loss.lock().expect("poisoned");
        let mut sum = [0u64; loss::COUNT as usize];
        for cpu in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(cpu) {
                *s += v;
            }
        }
        sum
    }

    /// Every loss counter, kernel and user space, by name.
    fn loss_totals(&self) -> BTreeMap<&'static str, u64> {
        let k = self.kernel_loss_total();
        let mut m: BTreeMap<&'static str, u64> = loss::NAMES.iter().copied().zip(k).collect();
        m.insert("decode_errors", self.decode_errors.load(Relaxed));
        m.insert("queue_overflow", self.queue_overflow.load(Relaxed));
        m.extend(self.outputs.snapshot());
        m
    }
}

/// Whether a queue of `capacity` with `free` places left may take one
/// more telemetry record: a quarter of every queue is kept for security
/// records and the agent's own events.
pub(crate) fn telemetry_has_room(free: usize, capacity: usize) -> bool {
    free > capacity / 4
}

/// Buckets of [`FairShares`] (bucket 0: events without an identity).
const SHARE_BUCKETS: usize = 256;

/// Telemetry records each identity has in one queue, by a hash of its
/// name, so one identity's flood cannot take the whole telemetry part of a
/// slow consumer's queue from the others: past [`telemetry_has_room`],
/// the eighth of the queue above the security reserve still takes the
/// records of an identity that holds less than a 64th of the queue (two
/// identities sharing a bucket share that allowance). The security
/// records keep the last eighth to themselves.
pub(crate) struct FairShares([AtomicU64; SHARE_BUCKETS]);

impl FairShares {
    pub fn new() -> Self {
        FairShares(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    /// The bucket of `identity` (a name; `None`: no identity).
    pub fn bucket(identity: Option<&str>) -> usize {
        // FNV-1a: cheap, and enough to spread identity names.
        identity.map_or(0, |name| {
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
            1 + (h % (SHARE_BUCKETS as u64 - 1)) as usize
        })
    }

    /// Whether a telemetry record of `bucket` may take one of `free`
    /// places of a queue of `capacity`; if so it is counted until
    /// [`FairShares::release`].
    pub fn admit(&self, bucket: usize, free: usize, capacity: usize) -> bool {
        let held = self.0[bucket].load(Relaxed);
        let ok = telemetry_has_room(free, capacity) || (free > capacity / 8 && held < (capacity / 64) as u64);
        if ok {
            self.0[bucket].fetch_add(1, Relaxed);
        }
        ok
    }

    /// A record of `bucket` left the queue (written, or not queued after all).
    pub fn release(&self, bucket: usize) {
        let _ = self.0[bucket].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }
}

/// What flows into the enrich task.
pub enum Input {
    Raw(decode::RawEvent),
    /// An already-built event (loss, agent life cycle); boxed so a raw
    /// kernel event (the common case) stays small in the queue.
    Emit(Box<Event>),
    /// A new policy's identities (from the policy manager).
    Identities(Arc<IdentityConfig>),
    /// The pod metadata changed: cgroups are matched against `k8s`
    /// selectors again now, not at the next periodic rescan.
    Rescan,
}

pub struct Options {
    pub poll_interval: Duration,
    pub loss_interval: Duration,
    pub rescan_interval: Duration,
    /// Rescans between two garbage collections of the process table.
    pub gc_every: u32,
    pub cgroup2: PathBuf,
}

/// What the pipeline reads from and writes to in the kernel.
pub struct Kernel<R, C, A> {
    pub ring: R,
    pub counters: C,
    pub aggregates: A,
    pub tables: Tables,
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
pub fn spawn<R, C, A>(
    input: (mpsc::Sender<Input>, mpsc::Receiver<Input>),
    kernel: Kernel<R, C, A>,
    enricher: Enricher,
    outputs: Vec<Box<dyn Output>>,
    opts: Options,
    stats: Arc<Stats>,
) -> Running
where
    R: EventRing + 'static,
    C: KernelCounters + 'static,
    A: AggregateTable + 'static,
{
    let (shutdown, _) = watch::channel(false);
    let (tx, rx) = input;
    // Registered before the loss reporter's first reading, so a counter
    // appearing is never mistaken for a loss.
    let outputs = Outputs::new(outputs, &stats.outputs);
    let node = enricher.node();
    let handles = vec![
        tokio::spawn(tasks::read(kernel.ring, tx.clone(), shutdown.subscribe(), opts.poll_interval, stats.clone())),
        tokio::spawn(tasks::report_loss(kernel.counters, tx.clone(), shutdown.subscribe(), opts.loss_interval, node, stats.clone())),
        tokio::spawn(tasks::enrich(
            tasks::Enrich { enricher, tables: kernel.tables, aggregates: kernel.aggregates, outputs },
            rx,
            tasks::Upkeep { rescan: opts.rescan_interval, gc_every: opts.gc_every.max(1), cgroup2: opts.cgroup2 },
            stats,
        )),
    ];
    Running { input: tx, shutdown, handles }
}

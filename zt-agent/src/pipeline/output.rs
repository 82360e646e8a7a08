//! Outputs: where schema events go. Each output runs behind its own bounded
//! queue; a slow or dead output loses its own events (counted), never the
//! pipeline's.
//!
//! # Layout
//! - [`Output`]: what every destination implements: the JSON-lines writer
//!   here, the audit log (`audit::writer`), and next the syslog
//!   destinations and the anomaly scorer.
//! - [`Outputs`]: the fan-out: every event to every output that wants it,
//!   each drop counted under the output's own counter names.
//! - [`JsonLines`]: JSON lines to stdout or a file, on its own thread.
//! - [`Show`]: which events the JSON-lines output shows.
//! - [`spawn_thread`] -> [`ThreadEnd`]: an output's thread, and a bounded
//!   wait for it at close: a destination that blocks (a pipe nobody reads,
//!   a hung disk) never holds up the pipeline, the runtime or shutdown.
use std::{
    future::Future,
    io::Write,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    FairShares, Stats,
    event::{Body, Event},
};

/// Why an output did not take an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its queue is full.
    Full,
    /// It is gone (its task or thread ended).
    Closed,
}

/// A future an output returns from [`Output::close`].
pub type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long [`ThreadEnd::close_within`] waits by default.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Resolves when an output's thread ends (also by a panic).
pub struct ThreadEnd(oneshot::Receiver<()>);

/// Runs `body` on a named thread; its [`ThreadEnd`] resolves when it ends.
pub fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<ThreadEnd> {
    let (done, end) = oneshot::channel();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        body();
        let _ = done.send(());
    })?;
    Ok(ThreadEnd(end))
}

impl ThreadEnd {
    /// Waits for the thread at most `limit`; past that, says so and lets
    /// it be (it holds nothing the rest of the agent waits for).
    pub fn close_within(self, what: &'static str, limit: Duration) -> Closing {
        Box::pin(async move {
            if tokio::time::timeout(limit, self.0).await.is_err() {
                tracing::error!("{what} did not finish within {limit:?} (its destination blocks); stopping without it");
            }
        })
    }
}

/// Loss counter names of one output (in `status` and `loss` events).
#[derive(Debug, Clone, Copy)]
pub struct LossNames {
    /// Events dropped because the output's queue was full.
    pub full: &'static str,
    /// Events dropped because the output was gone.
    pub closed: &'static str,
}

pub trait Output: Send {
    fn loss_names(&self) -> LossNames;
    /// Whether this output records `event` at all.
    fn wants(&self, event: &Event) -> bool;
    /// Queues `event` without blocking (the outputs share one copy).
    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped>;
    /// Closes the queue and resolves once everything queued is written.
    fn close(self: Box<Self>) -> Closing;
}

/// Per-output drop counters, registered with [`Stats`] so `status` and the
/// loss reporter see them.
#[derive(Debug, Default)]
pub struct OutputCounters(Mutex<Vec<(&'static str, Arc<AtomicU64>)>>);

impl OutputCounters {
    pub(crate) fn register(&self, name: &'static str) -> Arc<AtomicU64> {
        let mut v = self.0.lock().expect("poisoned");
        if let Some((_, c)) = v.iter().find(|(n, _)| *n == name) {
            return c.clone();
        }
        let c = Arc::new(AtomicU64::new(0));
        v.push((name, c.clone()));
        c
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0.lock().expect("poisoned").iter().map(|(n, c)| (*n, c.load(Relaxed))).collect()
    }
}

struct Registered {
    output: Box<dyn Output>,
    full: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    /// Logged once: an output that is gone stays gone.
    closed_logged: bool,
}

/// Every output of the agent, fed in order.
pub struct Outputs(Vec<Registered>);

impl Outputs {
    pub fn new(outputs: Vec<Box<dyn Output>>, counters: &OutputCounters) -> Self {
        Outputs(
            outputs
                .into_iter()
                .map(|output| {
                    let names = output.loss_names();
                    Registered {
                        full: counters.register(names.full),
                        closed: counters.register(names.closed),
                        output,
                        closed_logged: false,
                    }
                })
                .collect(),
        )
    }

    pub fn send(&mut self, event: Event) {
        let event = Arc::new(event);
        for r in &mut self.0 {
            if !r.output.wants(&event) {
                continue;
            }
            match r.output.try_send(&event) {
                Ok(()) => {}
                Err(Dropped::Full) => {
                    r.full.fetch_add(1, Relaxed);
                }
                Err(Dropped::Closed) => {
                    r.closed.fetch_add(1, Relaxed);
                    if !std::mem::replace(&mut r.closed_logged, true) {
                        tracing::error!("output {} is gone: its events are dropped and counted", r.output.loss_names().closed);
                    }
                }
            }
        }
    }

    /// Closes every output and waits until each has written what it holds.
    pub async fn close(self) {
        for r in self.0 {
            r.output.close().await;
        }
    }
}

/// Which events an output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    /// Events of processes with an identity, plus loss, agent and policy events.
    Attributed,
    /// Every event.
    All,
}

impl Show {
    pub fn wants(self, e: &Event) -> bool {
        match self {
            Show::All => true,
            Show::Attributed => {
                e.body.identity().is_some() || matches!(e.body, Body::Loss { .. } | Body::Agent { .. } | Body::Policy { .. })
            }
        }
    }
}

/// JSON lines to a writer (stdout, a file, a pipe), written by its own
/// thread: a write that blocks holds up only this output (its queue fills
/// and its drops are counted).
pub struct JsonLines {
    tx: mpsc::Sender<Arc<Event>>,
    show: Show,
    end: ThreadEnd,
    /// Queued telemetry per identity (the writer releases what it wrote).
    shares: Arc<FairShares>,
}

impl JsonLines {
    pub fn spawn(out: Box<dyn Write + Send>, show: Show, capacity: usize, stats: Arc<Stats>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(capacity);
        let shares = Arc::new(FairShares::new());
        let written = shares.clone();
        let end = spawn_thread("zt-events", move || write_json_lines(rx, out, &stats, &written))?;
        Ok(JsonLines { tx, show, end, shares })
    }
}

/// The [`FairShares`] bucket of a telemetry event (`None`: a security
/// record, which the shares do not count).
fn telemetry_bucket(e: &Event) -> Option<usize> {
    (!e.body.is_security()).then(|| FairShares::bucket(e.body.identity().map(|i| &*i.name)))
}

impl Output for JsonLines {
    fn loss_names(&self) -> LossNames {
        LossNames { full: "output_overflow", closed: "output_closed" }
    }
    fn wants(&self, event: &Event) -> bool {
        self.show.wants(event)
    }
    /// Telemetry leaves the queue's reserve to security records, and one
    /// identity's telemetry cannot take all of the rest ([`FairShares`]),
    /// so a flood crowds out neither.
    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped> {
        let bucket = telemetry_bucket(event);
        if let Some(b) = bucket
            && !self.shares.admit(b, self.tx.capacity(), self.tx.max_capacity())
        {
            return Err(Dropped::Full);
        }
        self.tx.try_send(event.clone()).map_err(|e| {
            if let Some(b) = bucket {
                self.shares.release(b);
            }
            match e {
                mpsc::error::TrySendError::Full(_) => Dropped::Full,
                mpsc::error::TrySendError::Closed(_) => Dropped::Closed,
            }
        })
    }
    fn close(self: Box<Self>) -> Closing {
        let JsonLines { tx, end, .. } = *self;
        drop(tx);
        end.close_within("the event stream writer", CLOSE_WITHIN)
    }
}

/// Writes JSON lines, flushing whenever the queue runs empty (one write
/// syscall per burst, not per event). Each line is serialised into a
/// reused buffer first and handed over in one piece: serde_json's many
/// small writes straight into the boxed writer cost a quarter of the
/// writer's time. Returns when the sender side closes.
fn write_json_lines(mut rx: mpsc::Receiver<Arc<Event>>, mut out: Box<dyn Write + Send>, stats: &Stats, shares: &FairShares) {
    let mut line = Vec::with_capacity(2048);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(e) = next {
            if let Some(b) = telemetry_bucket(&e) {
                shares.release(b);
            }
            line.clear();
            let ok = serde_json::to_writer(&mut line, &e).is_ok() && {
                line.push(b'\n');
                out.write_all(&line).is_ok()
            };
            let counter = if ok { &stats.written } else { &stats.output_errors };
            counter.fetch_add(1, Relaxed);
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            stats.output_errors.fetch_add(1, Relaxed);
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::LossReport;

    /// Takes one event, then reports full, then closed.
    struct Picky(std::sync::Mutex<u32>);

    impl Output for Picky {
        fn loss_names(&self) -> LossNames {
            LossNames { full: "picky_overflow", closed: "picky_closed" }
        }
        fn wants(&self, e: &Event) -> bool {
            e.body.kind() == "loss"
        }
        fn try_send(&self, _: &Arc<Event>) -> Result<(), Dropped> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            match *n {
                1 => Ok(()),
                2 => Err(Dropped::Full),
                _ => Err(Dropped::Closed),
            }
        }
        fn close(self: Box<Self>) -> Closing {
            Box::pin(async {})
        }
    }

    /// Past the shared telemetry room, a flooder that holds much of the
    /// queue is refused while a quiet identity still gets in, and the last
    /// eighth stays for security records.
    #[test]
    fn a_flooder_cannot_take_the_telemetry_room_from_a_quiet_identity() {
        let s = FairShares::new();
        let cap = 1024;
        let (flood, quiet) = (FairShares::bucket(Some("a")), FairShares::bucket(Some("b")));
        assert_ne!(flood, quiet);
        let mut free = cap;
        while s.admit(flood, free, cap) {
            free -= 1;
        }
        assert_eq!(free, cap / 4, "the flooder fills the shared telemetry room and no more");
        assert!(s.admit(quiet, free, cap), "the quiet identity still gets in");
        assert!(!s.admit(quiet, cap / 8, cap), "the last eighth is the security records'");
        for _ in 0..cap - cap / 4 {
            s.release(flood);
        }
        assert!(s.admit(flood, cap, cap), "released shares admit again");
        assert_eq!(FairShares::bucket(None), 0);
    }

    #[test]
    fn every_drop_is_counted_by_cause() {
        let counters = OutputCounters::default();
        let mut outs = Outputs::new(vec![Box::new(Picky(Default::default()))], &counters);
        let ev = Event { time: crate::host::wall_time(0), node: "n".into(), body: Body::Loss { loss: LossReport::default() } };
        for _ in 0..4 {
            outs.send(ev.clone());
        }
        assert_eq!(counters.snapshot(), vec![("picky_overflow", 1), ("picky_closed", 2)]);
    }
}

//! The agent's audit thread: security-relevant events -> [`AuditLog`].
//!
//! # Layout
//! - [`spawn`] -> [`Writer`]: the thread. It owns the log, appends what
//!   arrives, runs the checkpoint cadence every 100 ms, serves key
//!   rotations, and writes a final checkpoint when every sender is gone.
//! - [`Writer`] is a pipeline [`Output`]: it records denials and
//!   would-denials, policy changes, agent life cycle and losses; a full
//!   queue is counted as `audit_overflow`, a dead thread as `audit_closed`,
//!   and the next `loss` record reports both.
//! - [`Control`]: the control socket's side (key rotation, [`Status`]).
//! - [`Queue`]: the way in, bounded like a `sync_channel` but holding
//!   memory only for what waits in it.
//! - A thread that dies (a panic) is loud: logged, `failed` in [`Status`],
//!   and [`Writer::failure`] fires so the agent stops with an error.
//! - A log that cannot write (a full disk) is `unwritable` in [`Status`]
//!   with what it holds and what it lost; errors are logged at a bounded
//!   rate ([`Throttle`]), and the return to normal once.
//!
//! A blocking thread, not a task: `fdatasync` blocks, and the cadence must
//! not depend on the async runtime's load.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SendError, Sender, TrySendError},
    },
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::log::{AuditLog, Fault, LogError};
use crate::pipeline::{
    event::Event,
    output::{CLOSE_WITHIN, Closing, Dropped, LossNames, Output, ThreadEnd, spawn_thread},
};

/// Security records ([`crate::pipeline::event::Body::is_security`]).
pub fn wants(e: &Event) -> bool {
    e.body.is_security()
}

enum Item {
    Event(Arc<Event>),
    /// Replies with the new verifier key and the end of the overlap.
    RotateKey {
        overlap: Duration,
        reply: oneshot::Sender<Result<KeyRotated, RotateError>>,
    },
    /// Makes the thread panic, holding the status lock (tests of the failure path).
    #[cfg(test)]
    Panic,
}

/// A key rotation that took effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    pub new_key: String,
    /// RFC 3339: when the old key retires.
    pub overlap_until: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the audit log is closed")]
    Closed,
    #[error("rotating the audit key")]
    Log(#[from] LogError),
}

/// The queue to the audit thread. A `sync_channel` of the same bound
/// allocates every slot up front (2 MiB for 65,536 items, resident for the
/// agent's life); this one grows and shrinks with what waits in it (the
/// standard channel's blocks of 31 items).
#[derive(Clone)]
struct Queue {
    tx: Sender<Item>,
    /// Items sent and not yet taken by the thread.
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl Queue {
    /// An event: refused when `capacity` items wait already.
    fn try_send(&self, item: Item) -> Result<(), TrySendError<Item>> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(item));
        }
        self.push(item).map_err(|SendError(item)| TrySendError::Disconnected(item))
    }

    /// A control request: never refused for a full queue (there are few).
    fn send(&self, item: Item) -> Result<(), SendError<Item>> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.push(item)
    }

    /// Sends an item already counted in `waiting`.
    fn push(&self, item: Item) -> Result<(), SendError<Item>> {
        self.tx.send(item).inspect_err(|_| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// The thread's side: one item taken.
    fn taken(waiting: &AtomicUsize) {
        waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The control socket's handle on the audit thread.
#[derive(Clone)]
pub struct Control {
    tx: Queue,
    pub status: Arc<Mutex<Status>>,
}

impl Control {
    /// Starts a key rotation; `overlap` must not exceed [`MAX_KEY_OVERLAP`]
    /// (the log checks it too).
    pub async fn rotate_key(&self, overlap: Duration) -> Result<KeyRotated, RotateError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Item::RotateKey { overlap, reply }).map_err(|_| RotateError::Closed)?;
        rx.await.map_err(|_| RotateError::Closed)?
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub dir: String,
    pub origin: String,
    pub records: u64,
    pub signed_size: u64,
    pub signed_root: String,
    pub verifier_keys: Vec<String>,
    pub rotation_overlap_until: Option<String>,
    pub write_errors: u64,
    pub last_error: Option<String>,
    /// Set while the log cannot write (a full disk): records wait in
    /// memory or are counted as lost until it can.
    pub unwritable: Option<Fault>,
    /// Set when the audit thread died: nothing more is recorded.
    pub failed: Option<String>,
}

pub struct Writer {
    tx: Queue,
    status: Arc<Mutex<Status>>,
    end: ThreadEnd,
    failure: watch::Receiver<Option<String>>,
}

impl Writer {
    pub fn control(&self) -> Control {
        Control { tx: self.tx.clone(), status: self.status.clone() }
    }

    /// Turns `Some(reason)` if the audit thread dies.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }
}

impl Output for Writer {
    fn loss_names(&self) -> LossNames {
        LossNames { full: "audit_overflow", closed: "audit_closed" }
    }
    fn wants(&self, event: &Event) -> bool {
        wants(event)
    }
    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped> {
        self.tx.try_send(Item::Event(event.clone())).map_err(|e| match e {
            TrySendError::Full(_) => Dropped::Full,
            TrySendError::Disconnected(_) => Dropped::Closed,
        })
    }
    /// Waits for the final checkpoint (once every [`Control`] is dropped
    /// too), at most [`CLOSE_WITHIN`]: a hung disk does not hold up the
    /// stop (the next start adopts the unsigned tail with a `recovery`
    /// record).
    fn close(self: Box<Self>) -> Closing {
        let Writer { tx, end, .. } = *self;
        drop(tx);
        end.close_within("the audit log's final checkpoint", CLOSE_WITHIN)
    }
}

/// The status lock, also after a panic while it was held (the thread's
/// panic is caught and reported; `status` must still answer).
fn lock(st: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    st.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Copies the log's figures into the status; computed before the lock is
/// taken, so nothing that could panic runs under it.
fn refresh(log: &AuditLog, st: &Mutex<Status>) {
    let records = log.size();
    let signed = log.last_checkpoint().map(|c| (c.size, B64.encode(c.root)));
    let verifier_keys = log.verifier_keys().iter().map(|k| k.to_string()).collect();
    let rotation_overlap_until = log.overlap_until().map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let unwritable = log.fault();
    let mut s = lock(st);
    s.unwritable = unwritable;
    s.records = records;
    if let Some((size, root)) = signed {
        s.signed_size = size;
        s.signed_root = root;
    }
    s.verifier_keys = verifier_keys;
    s.rotation_overlap_until = rotation_overlap_until;
}

/// Error lines at a bounded rate: the first one, then at most one per
/// [`Throttle::EVERY`] with how many were not logged in between.
#[derive(Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn record(&mut self, st: &Mutex<Status>, e: LogError) {
        let text = crate::error::chain(&e);
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            let more = if self.suppressed > 0 { format!(" ({} more errors since the last line)", self.suppressed) } else { String::new() };
            tracing::error!("audit log: {text}{more}");
            self.last = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        let mut s = lock(st);
        s.write_errors += 1;
        s.last_error = Some(text);
    }
}

/// Starts the audit thread; `capacity` bounds the queue.
pub fn spawn(log: AuditLog, dir: &std::path::Path, capacity: usize) -> std::io::Result<Writer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Queue { tx, waiting: Arc::new(AtomicUsize::new(0)), capacity };
    let waiting = tx.waiting.clone();
    let status = Arc::new(Mutex::new(Status { dir: dir.display().to_string(), origin: log.origin().to_string(), ..Status::default() }));
    refresh(&log, &status);
    let (fail_tx, failure) = watch::channel(None);
    let st = status.clone();
    let end = spawn_thread("zt-audit", move || {
        // The log and the queue move into the closure: a panic drops both,
        // so every later send sees a disconnected queue (counted as loss).
        let run = std::panic::AssertUnwindSafe(|| serve(log, rx, &waiting, &st));
        if let Err(panic) = std::panic::catch_unwind(run) {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("audit log thread died: {why}; security events are no longer recorded");
            lock(&st).failed = Some(why.clone());
            let _ = fail_tx.send(Some(why));
        }
    })?;
    Ok(Writer { tx, status, end, failure })
}

/// The thread's loop: until every sender is gone, then a final checkpoint.
fn serve(mut log: AuditLog, rx: Receiver<Item>, waiting: &AtomicUsize, st: &Mutex<Status>) {
    let mut errors = Throttle::default();
    let take = |item| {
        Queue::taken(waiting);
        item
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(item) => {
                handle(&mut log, take(item), st, &mut errors);
                while let Ok(item) = rx.try_recv() {
                    handle(&mut log, take(item), st, &mut errors);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let r = log.tick();
        refresh(&log, st);
        if let Err(e) = r {
            errors.record(st, e);
        }
    }
    let size = log.size();
    let fault = log.fault();
    match log.close() {
        Ok(cp) => tracing::info!("audit log closed: {size} records, final checkpoint at size {}", cp.size),
        Err(e) => {
            let unwritten = fault.map(|f| format!(" ({} records unwritten, {} refused since {})", f.buffered, f.lost_records(), f.since));
            tracing::error!("audit log: final checkpoint failed: {}{}", crate::error::Chain(&e), unwritten.unwrap_or_default())
        }
    }
}

fn handle(log: &mut AuditLog, item: Item, st: &Mutex<Status>, errors: &mut Throttle) {
    match item {
        Item::Event(ev) => {
            let r = serde_json::to_value(&*ev).map_err(LogError::Encode).and_then(|v| log.append(ev.body.kind(), v));
            if let Err(e) = r {
                errors.record(st, e);
            }
        }
        Item::RotateKey { overlap, reply } => {
            let r = log.rotate_key(overlap).map_err(RotateError::from).map(|k| KeyRotated {
                new_key: k.to_string(),
                overlap_until: log.overlap_until().map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_default(),
            });
            let _ = reply.send(r);
        }
        #[cfg(test)]
        // The worst place: while the status lock is held (poisoning it).
        Item::Panic => {
            let _held = lock(st);
            panic!("injected")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::log::MAX_KEY_OVERLAP, *};
    use crate::pipeline::event::{Body, LossReport};

    fn loss_event() -> Arc<Event> {
        Arc::new(Event { time: crate::host::wall_time(0), node: "n".into(), body: Body::Loss { loss: LossReport::default() } })
    }

    /// A writer over a new log in `dir`.
    fn writer(dir: &std::path::Path) -> Writer {
        let cfg = super::super::log::Config::new(dir.join("log"), dir.join("key"), "test/origin".into());
        let (log, _) = AuditLog::open(cfg).unwrap();
        spawn(log, dir, 16).unwrap()
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_waits() {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = Queue { tx, waiting: Arc::new(AtomicUsize::new(0)), capacity: 2 };
        let ev = || Item::Event(loss_event());
        assert!(q.try_send(ev()).is_ok() && q.try_send(ev()).is_ok());
        assert!(matches!(q.try_send(ev()), Err(TrySendError::Full(_))));
        // Control requests pass a full queue.
        assert!(q.send(ev()).is_ok());
        assert_eq!(q.waiting.load(Ordering::Acquire), 3);
        for _ in 0..3 {
            rx.recv().unwrap();
            Queue::taken(&q.waiting);
        }
        assert!(q.try_send(ev()).is_ok());
        drop(rx);
        assert!(matches!(q.try_send(ev()), Err(TrySendError::Disconnected(_))));
        assert_eq!(q.waiting.load(Ordering::Acquire), 1, "a refused item is not counted");
    }

    #[tokio::test]
    async fn a_dead_thread_is_loud_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        let mut failure = w.failure();
        assert_eq!(w.try_send(&loss_event()), Ok(()));
        w.tx.send(Item::Panic).unwrap();
        tokio::time::timeout(Duration::from_secs(5), failure.wait_for(Option::is_some)).await.unwrap().unwrap();
        assert_eq!(w.control().status().failed.as_deref(), Some("injected"));
        assert_eq!(w.try_send(&loss_event()), Err(Dropped::Closed), "a dead sink is a loss, not a success");
        assert!(matches!(w.control().rotate_key(Duration::from_secs(1)).await, Err(RotateError::Closed)));
    }

    #[tokio::test]
    async fn overlap_beyond_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(dir.path());
        // 10000 years: once a panic in the audit thread (RFC 3339 beyond 9999).
        let err = w.control().rotate_key(Duration::from_secs(10_000 * 365 * 86_400)).await.unwrap_err();
        assert!(matches!(err, RotateError::Log(LogError::OverlapTooLong { .. })), "{err:?}");
        assert!(w.control().status().failed.is_none());
        assert!(w.control().rotate_key(MAX_KEY_OVERLAP).await.is_ok());
        Box::new(w).close().await;
    }
}

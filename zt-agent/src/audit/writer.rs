//! The agent's audit thread: security-relevant events -> [`AuditLog`].
//!
//! # Layout
//! - [`wants`]: which pipeline events are recorded.
//! - [`Sink`]: the pipeline's side (a bounded queue; a full queue is counted
//!   as `audit_overflow`, which the next `loss` record reports).
//! - [`spawn`]: the thread. It owns the log, appends what arrives, runs the
//!   checkpoint cadence every 100 ms, serves key rotations, and writes a
//!   final checkpoint when every sender is gone.
//! - [`Status`]: what `zt-agent status` shows.
//!
//! A blocking thread, not a task: `fdatasync` blocks, and the cadence must
//! not depend on the async runtime's load.
use std::{
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::Serialize;
use tokio::sync::oneshot;

use super::log::AuditLog;
use crate::pipeline::event::{Body, Event};

/// Security-relevant events: denials and would-denials, policy changes,
/// agent life cycle, losses (and, later, anomaly alerts).
pub fn wants(e: &Event) -> bool {
    match &e.body {
        Body::Connect { connect, .. } => connect.action != "allowed",
        Body::ConnectSummary { connect_summary, .. } => connect_summary.decision == "deny",
        Body::Loss { .. } | Body::Agent { .. } | Body::Policy { .. } => true,
        Body::Exec { .. } | Body::Exit { .. } => false,
    }
}

pub enum Item {
    Event(Box<Event>),
    /// Replies with the new verifier key and the end of the overlap.
    RotateKey {
        overlap: Duration,
        reply: oneshot::Sender<Result<(String, String), String>>,
    },
}

#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Item>,
}

impl Sink {
    /// Queues an event; false when the queue is full (the caller counts it).
    pub fn try_send(&self, e: &Event) -> bool {
        !matches!(self.tx.try_send(Item::Event(Box::new(e.clone()))), Err(TrySendError::Full(_)))
    }

    pub async fn rotate_key(&self, overlap: Duration) -> Result<(String, String), String> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || tx.send(Item::RotateKey { overlap, reply }))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the audit log is closed".to_string())?;
        rx.await.map_err(|_| "the audit log is closed".to_string())?
    }
}

#[derive(Debug, Clone, Default, Serialize)]
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
}

pub struct Writer {
    pub sink: Sink,
    pub status: Arc<Mutex<Status>>,
    join: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Waits for the final checkpoint (after every [`Sink`] is dropped).
    pub async fn finish(self) {
        let Writer { sink, join, .. } = self;
        drop(sink);
        let _ = tokio::task::spawn_blocking(move || join.join()).await;
    }
}

fn refresh(log: &AuditLog, s: &mut Status) {
    s.records = log.size();
    if let Some(c) = log.last_checkpoint() {
        s.signed_size = c.size;
        s.signed_root = B64.encode(c.root);
    }
    s.verifier_keys = log.verifier_keys().iter().map(|k| k.to_string()).collect();
    s.rotation_overlap_until = log.overlap_until().map(|t| humantime::format_rfc3339_seconds(t).to_string());
}

fn record_error(st: &Mutex<Status>, e: anyhow::Error) {
    tracing::error!("audit log: {e:#}");
    let mut s = st.lock().expect("poisoned");
    s.write_errors += 1;
    s.last_error = Some(format!("{e:#}"));
}

/// Starts the audit thread; `capacity` bounds the queue.
pub fn spawn(mut log: AuditLog, dir: &std::path::Path, capacity: usize) -> Writer {
    let (tx, rx): (SyncSender<Item>, Receiver<Item>) = std::sync::mpsc::sync_channel(capacity);
    let status = Arc::new(Mutex::new(Status { dir: dir.display().to_string(), origin: log.origin().to_string(), ..Status::default() }));
    refresh(&log, &mut status.lock().expect("poisoned"));
    let st = status.clone();
    let join = std::thread::Builder::new()
        .name("zt-audit".into())
        .spawn(move || {
            let handle = |log: &mut AuditLog, item: Item| match item {
                Item::Event(ev) => {
                    let r = serde_json::to_value(&*ev).map_err(anyhow::Error::from).and_then(|v| log.append(ev.body.kind(), v));
                    if let Err(e) = r {
                        record_error(&st, e);
                    }
                }
                Item::RotateKey { overlap, reply } => {
                    let r = log
                        .rotate_key(overlap)
                        .map(|k| {
                            (
                                k.to_string(),
                                log.overlap_until().map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_default(),
                            )
                        })
                        .map_err(|e| format!("{e:#}"));
                    let _ = reply.send(r);
                }
            };
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(item) => {
                        handle(&mut log, item);
                        while let Ok(item) = rx.try_recv() {
                            handle(&mut log, item);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                let r = log.tick();
                refresh(&log, &mut st.lock().expect("poisoned"));
                if let Err(e) = r {
                    record_error(&st, e);
                }
            }
            let size = log.size();
            match log.close() {
                Ok(cp) => tracing::info!("audit log closed: {size} records, final checkpoint at size {}", cp.size),
                Err(e) => tracing::error!("audit log: final checkpoint failed: {e:#}"),
            }
        })
        .expect("spawning the audit thread");
    Writer { sink: Sink { tx }, status, join }
}

//! Security records to the SIEM over syslog: every record of the audit log
//! to each destination from its own cursor (at least once, across
//! outages), telemetry best effort where asked for.
//!
//! # Layout
//! - [`config`]: a destination from its URL (`udp|tcp|tls://HOST:PORT?...`).
//! - [`record`]: what is sent (an audit record with its place in the log,
//!   or a telemetry event) and how severe each kind is.
//! - [`ocsf`], [`cef`]: message bodies (pure).
//! - [`rfc5424`]: RFC 5424 messages and octet-counted framing (pure).
//! - [`transport`]: UDP, TCP and TLS (rustls, ring) connections.
//! - [`deliver`]: a destination's thread: cursor, backoff, drain at stop.
//! - [`Siem`]: every destination, as one pipeline output (telemetry in,
//!   the delivery threads stopped after the audit log's final checkpoint).
pub mod cef;
pub mod config;
pub mod deliver;
pub mod ocsf;
pub mod record;
pub mod rfc5424;
pub mod transport;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
    mpsc::{SyncSender, TrySendError},
};

use crate::pipeline::{
    event::Event,
    output::{CLOSE_WITHIN, Closing, Dropped, LossNames, Output, ThreadEnd, spawn_thread},
};
pub use config::Destination;
pub use deliver::{Context, Status};

/// Telemetry events queued per destination.
const TELEMETRY_QUEUE: usize = 16_384;

struct Handle {
    status: Arc<Mutex<Status>>,
    telemetry: Option<SyncSender<Arc<Event>>>,
    stop: Arc<AtomicBool>,
    end: ThreadEnd,
}

/// Every SIEM destination.
pub struct Siem(Vec<Handle>);

impl Siem {
    /// Starts a thread per destination. A TLS destination whose CA bundle
    /// or client certificate cannot be read is an error here, before the
    /// agent runs.
    pub fn start(destinations: &[Destination], ctx: Context) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let ctx = Arc::new(ctx);
        let mut names = std::collections::BTreeSet::new();
        let mut handles = Vec::new();
        for d in destinations {
            anyhow::ensure!(names.insert(d.name.clone()), "two SIEM destinations are named {:?} (set name= on one)", d.name);
            let transport = match d.scheme {
                config::Scheme::Udp => transport::Transport::Udp,
                config::Scheme::Tcp => transport::Transport::Tcp,
                config::Scheme::Tls => transport::Transport::tls(
                    d.ca.as_deref().expect("tls destinations have a CA (config)"),
                    d.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                    &d.server_name,
                )
                .with_context(|| format!("SIEM destination {}", d.name))?,
            };
            let status = Arc::new(Mutex::new(Status { name: d.name.clone(), url: d.url.clone(), ..Status::default() }));
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::sync_channel(if d.telemetry { TELEMETRY_QUEUE } else { 0 });
            let (dest, ctx, st, stop2) = (d.clone(), ctx.clone(), status.clone(), stop.clone());
            let end = spawn_thread(&format!("zt-siem-{}", d.name), move || deliver::run(dest, transport, ctx, st, rx, stop2))
                .context("starting a SIEM thread")?;
            handles.push(Handle { status, telemetry: d.telemetry.then_some(tx), stop, end });
        }
        Ok(Siem(handles))
    }

    /// Each destination's status, for `status`.
    pub fn statuses(&self) -> Vec<Arc<Mutex<Status>>> {
        self.0.iter().map(|h| h.status.clone()).collect()
    }
}

impl Output for Siem {
    fn loss_names(&self) -> LossNames {
        LossNames { full: "siem_telemetry_overflow", closed: "siem_telemetry_closed" }
    }
    /// Telemetry only: security records reach the destinations through
    /// the audit log.
    fn wants(&self, event: &Event) -> bool {
        !event.body.is_security() && self.0.iter().any(|h| h.telemetry.is_some())
    }
    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped> {
        let mut result = Ok(());
        for h in &self.0 {
            let Some(tx) = &h.telemetry else { continue };
            if let Err(e) = tx.try_send(event.clone()) {
                h.status.lock().expect("poisoned").telemetry_dropped += 1;
                result = Err(match e {
                    TrySendError::Full(_) => Dropped::Full,
                    TrySendError::Disconnected(_) => Dropped::Closed,
                });
            }
        }
        result
    }
    /// Stops every destination once what the log holds went out (the
    /// audit log closes before this output: its final checkpoint is sent).
    fn close(self: Box<Self>) -> Closing {
        for h in &self.0 {
            h.stop.store(true, Ordering::Relaxed);
        }
        let ends: Vec<Closing> = self.0.into_iter().map(|h| h.end.close_within("a SIEM destination", CLOSE_WITHIN)).collect();
        Box::pin(async move {
            for end in ends {
                end.await;
            }
        })
    }
}

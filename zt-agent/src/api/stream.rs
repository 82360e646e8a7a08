//! The live event stream (`GET /v1/events`): a pipeline output that hands
//! every event to the streams open at that moment.
//!
//! Nothing here blocks the pipeline: each stream reads from a
//! [`tokio::sync::broadcast`] ring of [`CAPACITY`] events; a client too
//! slow to keep up loses the oldest ones, and its stream then carries a
//! `stream_lost` line with how many (also counted as `api_stream_lagged`
//! with the pipeline's other losses).
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use http_body_util::channel::{Channel, Sender};
use hyper::body::Bytes;
use tokio::sync::{broadcast, watch};

use crate::pipeline::{
    event::Event,
    output::{Closing, Dropped, LossNames, Output, OutputCounters, Show},
};

/// The loss counter of events streams lost.
const LAGGED: &str = "api_stream_lagged";

/// Events a stream may fall behind before it loses the oldest.
pub const CAPACITY: usize = 4096;

/// Frames queued towards one client's connection.
const FRAMES: usize = 16;

/// The fan-out to open streams; cloning shares it.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    /// Events streams lost by lagging behind, since start.
    lost: Arc<AtomicU64>,
}

impl Hub {
    pub fn new(counters: &OutputCounters) -> Self {
        Hub { tx: broadcast::channel(CAPACITY).0, lost: counters.register(LAGGED) }
    }

    pub fn open_streams(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A new stream of the events `show` wants, from now until the client
    /// goes away or `stop` turns true.
    pub fn subscribe(&self, show: Show, mut stop: watch::Receiver<bool>) -> Channel<Bytes> {
        let mut rx = self.tx.subscribe();
        let (mut tx, body) = Channel::new(FRAMES);
        let lost = self.lost.clone();
        tokio::spawn(async move {
            loop {
                let line = tokio::select! {
                    _ = stop.changed() => break,
                    r = rx.recv() => match r {
                        Ok(ev) if show.wants(&ev) => serde_json::to_vec(&*ev).expect("events serialise"),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            lost.fetch_add(n, Relaxed);
                            format!(r#"{{"kind":"stream_lost","lost":{n}}}"#).into_bytes()
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                };
                if !send_line(&mut tx, line, &mut stop).await {
                    break;
                }
            }
        });
        body
    }
}

/// False when the client is gone or the agent stops.
async fn send_line(tx: &mut Sender<Bytes>, mut line: Vec<u8>, stop: &mut watch::Receiver<bool>) -> bool {
    line.push(b'\n');
    tokio::select! {
        _ = stop.changed() => false,
        r = tx.send_data(Bytes::from(line)) => r.is_ok(),
    }
}

impl Output for Hub {
    fn loss_names(&self) -> LossNames {
        // The hub never refuses an event: a slow stream loses its own.
        LossNames { full: LAGGED, closed: LAGGED }
    }

    fn wants(&self, _: &Event) -> bool {
        self.tx.receiver_count() > 0
    }

    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped> {
        // An error only says that no stream is open (nobody to lose it).
        let _ = self.tx.send(event.clone());
        Ok(())
    }

    fn close(self: Box<Self>) -> Closing {
        Box::pin(async {})
    }
}

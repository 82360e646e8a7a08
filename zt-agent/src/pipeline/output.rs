//! Outputs: where schema events go. First output: JSON lines to stdout or a
//! file. Each output runs as its own task behind a bounded queue; a slow
//! output overflows its own queue (counted), never the pipeline.
use std::io::Write;

use tokio::sync::mpsc;

use super::{Stats, event::Event};

/// Which events an output shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
            Show::Attributed => e.body.identity().is_some() || matches!(e.body.kind(), "loss" | "agent" | "policy"),
        }
    }
}

/// Writes JSON lines, flushing whenever the queue runs empty (one write
/// syscall per burst, not per event). Returns when the sender side closes.
pub async fn json_lines(mut rx: mpsc::Receiver<Event>, mut out: Box<dyn Write + Send>, show: Show, stats: std::sync::Arc<Stats>) {
    loop {
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        while let Some(e) = next {
            if show.wants(&e) {
                let ok = serde_json::to_writer(&mut out, &e).is_ok() && out.write_all(b"\n").is_ok();
                if ok {
                    stats.written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    stats.output_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().is_err() {
            stats.output_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = out.flush();
}

//! The manager task: what makes the policy change, and when it stops.
//!
//! # Layout
//! - [`run`]: the loop: inotify on the policy paths' directories
//!   (debounced), SIGHUP, control-socket [`Command`]s, and a periodic
//!   re-evaluation of rule conditions. Ends when `stop` turns true.
//! - [`watch_dirs`]: what to watch (a file's parent directory, so editors'
//!   rename-over and Kubernetes ConfigMap `..data` swaps are seen; the
//!   watching itself is `crate::dirwatch`).
use std::{path::PathBuf, time::Duration};

use tokio::sync::{mpsc, watch};

use super::{Command, Manager};
use crate::pipeline::event::PolicyAction;

/// Editors and ConfigMap updates write in several steps: wait this long
/// after the first change before reading.
const DEBOUNCE: Duration = Duration::from_millis(25);

/// How often the file and exec rule paths are looked up again (a path
/// created, removed or replaced since the policy was compiled).
pub const RULE_PATHS_EVERY: Duration = Duration::from_secs(2);

/// Directories to watch for the policy paths (a file's parent, so editors'
/// rename-over and Kubernetes ConfigMap `..data` swaps are seen).
fn watch_dirs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })
                    .unwrap_or_else(|| PathBuf::from("/"))
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Resolves on SIGHUP (never when the handler could not be installed).
async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) {
    match hup.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// The manager task. Ends when `stop` turns true or every command sender is gone.
pub async fn run(mut m: Manager, mut commands: mpsc::Receiver<Command>, mut stop: watch::Receiver<bool>, reevaluate_every: Duration) {
    let inotify = crate::dirwatch::watch(&watch_dirs(&m.paths), "policy files");
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("SIGHUP reload off: {e}"))
        .ok();
    let mut tick = tokio::time::interval(reevaluate_every);
    tick.tick().await;
    let mut paths_tick = tokio::time::interval(RULE_PATHS_EVERY);
    paths_tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = crate::dirwatch::changed(&inotify) => {
                tokio::time::sleep(DEBOUNCE).await;
                crate::dirwatch::drain(&inotify);
                let _ = m.reload("inotify").await;
            }
            _ = hangup(&mut hup) => { let _ = m.reload("SIGHUP").await; }
            _ = tick.tick() => m.reevaluate().await,
            _ = paths_tick.tick() => m.recheck_rule_paths().await,
            cmd = commands.recv() => match cmd {
                Some(Command::Reload { source, reply }) => { let _ = reply.send(m.reload(&source).await); }
                Some(Command::Rollback { version, reply }) => { let _ = reply.send(m.rollback(version).await); }
                Some(Command::Push { bundle, source, reply }) => {
                    let _ = reply.send(m.apply_and_report(bundle, &source, PolicyAction::Applied).await);
                }
                Some(Command::History { reply }) => { let _ = reply.send(m.history()); }
                Some(Command::Quarantine { identity, on, reason, reply }) => {
                    let r = m.quarantine(&identity, on, &reason).await;
                    if let Some(reply) = reply { let _ = reply.send(r); }
                }
                Some(Command::Reevaluate) => m.reevaluate().await,
                Some(Command::CheckMaps { reply }) => { let _ = reply.send(m.check_maps()); }
                Some(Command::Reinstall { reply }) => { let _ = reply.send(m.reinstall().await); }
                None => break,
            },
        }
    }
}

//! The manager task: what makes the policy change, and when it stops.
//!
//! # Layout
//! - [`run`]: the loop: inotify on the policy paths' directories
//!   (debounced), SIGHUP, control-socket [`Command`]s, and a periodic
//!   re-evaluation of rule conditions. Ends when `stop` turns true.
//! - [`watch_policy_dirs`]: the inotify set-up (a file's parent directory,
//!   so editors' rename-over and Kubernetes ConfigMap `..data` swaps are seen).
use std::{path::PathBuf, time::Duration};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use super::{Command, Manager};

/// Editors and ConfigMap updates write in several steps: wait this long
/// after the first change before reading.
const DEBOUNCE: Duration = Duration::from_millis(25);

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

/// nix's `Inotify` offers `AsFd`; tokio's `AsyncFd` wants `AsRawFd`.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches the directories of `paths`; `None` (logged) when inotify fails.
fn watch_policy_dirs(paths: &[PathBuf]) -> Option<AsyncFd<InotifyFd>> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    if paths.is_empty() {
        return None;
    }
    let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(ino) => ino,
        Err(e) => {
            tracing::warn!("policy file watching off: inotify: {e}");
            return None;
        }
    };
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM;
    for d in watch_dirs(paths) {
        if let Err(e) = ino.add_watch(&d, flags) {
            tracing::warn!("cannot watch {} for policy changes: {e}", d.display());
        }
    }
    // SAFETY: the Inotify owns its fd for as long as the AsyncFd owns it.
    match unsafe { AsyncFd::register(InotifyFd(ino)) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("policy file watching off: {e}");
            None
        }
    }
}

/// Resolves when a watched directory changed (never without a watch).
async fn changed(inotify: &Option<AsyncFd<InotifyFd>>) {
    let Some(fd) = inotify else { return std::future::pending().await };
    match fd.readable().await {
        Ok(mut g) => {
            let _ = g.get_inner().0.read_events();
            g.clear_ready();
        }
        Err(_) => std::future::pending().await,
    }
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
    let inotify = watch_policy_dirs(&m.paths);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("SIGHUP reload off: {e}"))
        .ok();
    let mut tick = tokio::time::interval(reevaluate_every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = changed(&inotify) => {
                tokio::time::sleep(DEBOUNCE).await;
                if let Some(fd) = &inotify {
                    while fd.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
                }
                let _ = m.reload("inotify").await;
            }
            _ = hangup(&mut hup) => { let _ = m.reload("SIGHUP").await; }
            _ = tick.tick() => m.reevaluate().await,
            cmd = commands.recv() => match cmd {
                Some(Command::Reload { source, reply }) => { let _ = reply.send(m.reload(&source).await); }
                Some(Command::Rollback { version, reply }) => { let _ = reply.send(m.rollback(version).await); }
                Some(Command::History { reply }) => { let _ = reply.send(m.history()); }
                None => break,
            },
        }
    }
}

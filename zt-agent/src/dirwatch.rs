//! Directory watching with inotify on the tokio runtime, shared by the
//! policy manager (policy files) and the enrich task (the files `exe`
//! selectors name).
//!
//! - [`DirWatch::new`]: watches directories for entries created, written,
//!   renamed in or out, or deleted; `None` (logged) when inotify fails.
//! - [`changed`]: resolves when a watched directory changed (never without
//!   a watch), reading the events; [`drain`]: drops the events queued since.
use std::path::PathBuf;

use tokio::io::unix::AsyncFd;

/// nix's `Inotify` offers `AsFd`; tokio's `AsyncFd` wants `AsRawFd`.
pub struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

pub type DirWatch = AsyncFd<InotifyFd>;

/// Watches `dirs` (`what` names the purpose in log lines).
pub fn watch(dirs: &[PathBuf], what: &str) -> Option<DirWatch> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    if dirs.is_empty() {
        return None;
    }
    let ino = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(ino) => ino,
        Err(e) => {
            tracing::warn!("{what}: watching off: inotify: {e}");
            return None;
        }
    };
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM;
    for d in dirs {
        if let Err(e) = ino.add_watch(d, flags) {
            tracing::warn!("{what}: cannot watch {}: {e}", d.display());
        }
    }
    // SAFETY: the Inotify owns its fd for as long as the AsyncFd owns it.
    match unsafe { AsyncFd::register(InotifyFd(ino)) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("{what}: watching off: {e}");
            None
        }
    }
}

/// Resolves when a watched directory changed (never without a watch).
pub async fn changed(watch: &Option<DirWatch>) {
    let Some(fd) = watch else { return std::future::pending().await };
    match fd.readable().await {
        Ok(mut g) => {
            let _ = g.get_inner().0.read_events();
            g.clear_ready();
        }
        Err(_) => std::future::pending().await,
    }
}

/// Drops every event queued now (after a debounce: one change is often
/// several events).
pub fn drain(watch: &Option<DirWatch>) {
    if let Some(fd) = watch {
        while fd.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
    }
}

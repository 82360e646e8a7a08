//! Crash-safe file replacement, shared by the policy history and the audit log.
//!
//! - [`write_atomic`]: temp file, fsync, rename, fsync of the directory.
//! - [`sync_parent`]: fsync of the directory holding a path (makes a
//!   create, rename or delete in it durable).
//! - [`FsError`], [`at`]: which step failed on which path, with the OS error
//!   as source (every file error of the agent's libraries).
use std::{
    fs::File,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// `map_err(at("reading", path))`: an OS error with its step and path.
pub fn at<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError { op, path: path.to_path_buf(), source }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// content, never a mix: `<path>.tmp` written and fsynced, renamed over
/// `path`, then the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(at("creating", &tmp))?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all()).map_err(at("writing", &tmp));
    let renamed = written.and_then(|_| std::fs::rename(&tmp, path).map_err(at("renaming over", path)));
    if renamed.is_err() {
        // A full disk must not leave half a file behind (the target is untouched).
        let _ = std::fs::remove_file(&tmp);
    }
    renamed?;
    sync_parent(path)
}

/// fsync of the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<(), FsError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(at("fsync of directory", dir))
}

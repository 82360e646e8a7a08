//! Crash-safe file replacement, shared by the policy history and the audit log.
//!
//! - [`write_atomic`]: temp file, fsync, rename, fsync of the directory.
//! - [`sync_parent`]: fsync of the directory holding a path (makes a
//!   create, rename or delete in it durable).
use std::{fs::File, io::Write as _, path::Path};

use anyhow::Context as _;

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// content, never a mix: `<path>.tmp` written and fsynced, renamed over
/// `path`, then the directory fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// fsync of the directory holding `path`.
pub fn sync_parent(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync of directory {}", dir.display()))
}

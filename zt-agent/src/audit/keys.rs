//! Signing keys on disk: Ed25519 PKCS#8 files, created on first start with
//! mode 0400, refused when anyone but the owner can read them.
//!
//! # Layout
//! - [`load_or_create`]: the key at a path (a file we generate or a mounted
//!   secret); [`next_path`]: where a rotation keeps the incoming key.
//! - [`write_new`]: generates a key file atomically (`O_EXCL`, fsync, dir fsync).
//! - [`append_verifier_key`]: the public `verifier-keys` list in the log dir.
use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::note::{NoteError, Signer, VerifierKey};
use crate::fsutil::FsError;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "audit key {} has mode {mode:03o}: group or others may access it; it must be 0400 or 0600 (for a Kubernetes secret volume set defaultMode: 0400)",
        path.display()
    )]
    LooseMode { path: PathBuf, mode: u32 },
    #[error("audit key {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("generating an audit key: {0}")]
    Generate(String),
    #[error("{}:{line}", path.display())]
    VerifierKey {
        path: PathBuf,
        line: usize,
        #[source]
        source: NoteError,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KeyError + 'a {
    move |e| KeyError::Fs(crate::fsutil::at(op, path)(e))
}

/// The incoming key during a rotation: `<key>.next`.
pub fn next_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// Reads the key at `path`; creates it if missing. Returns the signer and
/// whether it was created now.
pub fn load_or_create(path: &Path, name: &str) -> Result<(Signer, bool), KeyError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok((load(path, name)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((write_new(path, name)?, true)),
        Err(e) => Err(io("reading audit key", path)(e)),
    }
}

/// Reads an existing key, refusing group/other access (a secret must be
/// mounted with `defaultMode: 0400`).
pub fn load(path: &Path, name: &str) -> Result<Signer, KeyError> {
    let meta = std::fs::metadata(path).map_err(io("reading audit key", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LooseMode { path: path.to_path_buf(), mode });
    }
    let der = std::fs::read(path).map_err(io("reading audit key", path))?;
    Signer::from_pkcs8(name, &der).map_err(|reason| KeyError::Invalid { path: path.to_path_buf(), reason })
}

/// Generates a new key at `path` (which must not exist), mode 0400.
pub fn write_new(path: &Path, name: &str) -> Result<Signer, KeyError> {
    let der = Signer::generate_pkcs8().map_err(KeyError::Generate)?;
    let signer = Signer::from_pkcs8(name, &der).map_err(KeyError::Generate)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o400).open(path).map_err(io("creating audit key", path))?;
    f.write_all(&der).and_then(|_| f.sync_all()).map_err(io("writing audit key", path))?;
    crate::fsutil::sync_parent(path)?;
    Ok(signer)
}

/// The file listing every verifier key the log has used (public data).
pub fn verifier_keys_path(dir: &Path) -> PathBuf {
    dir.join("verifier-keys")
}

/// Adds `key` to the log's `verifier-keys` file unless it is there.
pub fn append_verifier_key(dir: &Path, key: &VerifierKey) -> Result<(), KeyError> {
    let path = verifier_keys_path(dir);
    let line = key.to_string();
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    if existing.lines().any(|l| l == line) {
        return Ok(());
    }
    let mut f = OpenOptions::new().create(true).append(true).mode(0o644).open(&path).map_err(io("opening", &path))?;
    writeln!(f, "{line}").and_then(|_| f.sync_all()).map_err(io("writing", &path))?;
    Ok(())
}

/// The keys in a `verifier-keys` file (or any file of verifier keys, one per line).
pub fn read_verifier_keys(path: &Path) -> Result<Vec<VerifierKey>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            VerifierKey::parse(l.trim()).map_err(|source| KeyError::VerifierKey { path: path.to_path_buf(), line: i + 1, source })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0400_reloaded_and_loose_modes_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let path = d.join("sub/audit.key");
        let (a, created) = load_or_create(&path, "zt-agent/n").unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o400);
        let (b, created) = load_or_create(&path, "zt-agent/n").unwrap();
        assert!(!created);
        assert_eq!(a.verifier_key(), b.verifier_key());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load(&path, "zt-agent/n").err().unwrap().to_string();
        assert!(e.contains("mode 640") && e.contains("defaultMode: 0400"), "{e}");
        assert!(write_new(&path, "zt-agent/n").is_err(), "never overwrites a key");
        append_verifier_key(d, &a.verifier_key()).unwrap();
        append_verifier_key(d, &a.verifier_key()).unwrap();
        assert_eq!(read_verifier_keys(&verifier_keys_path(d)).unwrap(), vec![a.verifier_key()]);
    }
}

//! History of applied policy bundles: version, time, source, blake3 digest
//! and the texts themselves (so a rollback re-applies exactly what was in
//! force). Persisted one JSON file per version under the state directory,
//! written atomically (`fsutil::write_atomic`).
//!
//! In memory: every version's [`Version`] (what `policy history` lists) and
//! the current version's texts. Older texts are read back from their file
//! when a rollback asks for them, so 50 versions of a large bundle are not
//! all held (a 10,000-rule bundle is 1.7 MB of text). Without a directory
//! every version is kept in memory.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Bundle;
use crate::fsutil::{FsError, at};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("encoding policy version {version}")]
    Encode {
        version: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("policy history file {path} is not a history record")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Versions kept (older ones are deleted from disk and memory).
pub const KEEP: usize = 50;

/// A version whole: the record of one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub version: u64,
    /// RFC 3339 UTC.
    pub time: String,
    /// What triggered it: "start", "inotify", "SIGHUP", "control", "rollback to vN", "conditions".
    pub source: String,
    pub digest: String,
    pub bundle: Bundle,
}

/// A version as the history lists it (no texts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: u64,
    pub time: String,
    pub source: String,
    pub digest: String,
    /// The bundle's file names.
    pub files: Vec<String>,
}

impl Version {
    fn of(a: &Applied) -> Self {
        Version {
            version: a.version,
            time: a.time.clone(),
            source: a.source.clone(),
            digest: a.digest.clone(),
            files: a.bundle.files.iter().map(|(n, _)| n.clone()).collect(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Store {
    dir: Option<PathBuf>,
    versions: Vec<Version>,
    /// The current version whole (last); without a directory, every version.
    whole: Vec<Applied>,
}

fn file_of(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("policy-{version:08}.json"))
}

fn read(path: &Path) -> Result<Applied, StoreError> {
    let text = std::fs::read_to_string(path).map_err(at("reading", path))?;
    serde_json::from_str(&text).map_err(|source| StoreError::Decode { path: path.to_path_buf(), source })
}

impl Store {
    /// Opens (and loads) the history under `dir`, or an in-memory one.
    pub fn open(dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let mut store = Store { dir, ..Store::default() };
        let Some(d) = store.dir.clone() else { return Ok(store) };
        std::fs::create_dir_all(&d).map_err(at("creating", &d))?;
        let mut newest: Option<Applied> = None;
        for e in std::fs::read_dir(&d).map_err(at("listing", &d))?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match read(&p) {
                    Ok(a) => {
                        store.versions.push(Version::of(&a));
                        if newest.as_ref().is_none_or(|n| n.version < a.version) {
                            newest = Some(a);
                        }
                    }
                    Err(err) => tracing::warn!("ignoring unreadable policy history file {}: {}", p.display(), crate::error::Chain(&err)),
                }
            }
        }
        store.versions.sort_by_key(|v| v.version);
        store.whole.extend(newest);
        Ok(store)
    }

    pub fn list(&self) -> &[Version] {
        &self.versions
    }

    pub fn current(&self) -> Option<&Applied> {
        self.whole.last()
    }

    /// A version whole (read back from its file unless it is in memory);
    /// `None` when the history has no such version.
    pub fn get(&self, version: u64) -> Result<Option<Applied>, StoreError> {
        if let Some(a) = self.whole.iter().find(|a| a.version == version) {
            return Ok(Some(a.clone()));
        }
        match (&self.dir, self.versions.iter().any(|v| v.version == version)) {
            (Some(d), true) => read(&file_of(d, version)).map(Some),
            _ => Ok(None),
        }
    }

    /// The version before the current one (the default rollback target).
    pub fn previous(&self) -> Result<Option<Applied>, StoreError> {
        match self.versions.len().checked_sub(2) {
            Some(i) => self.get(self.versions[i].version),
            None => Ok(None),
        }
    }

    /// Records `bundle` as the new current version; returns its number.
    pub fn record(&mut self, source: String, bundle: Bundle) -> Result<u64, StoreError> {
        let version = self.versions.last().map(|v| v.version + 1).unwrap_or(1);
        let applied = Applied {
            version,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            source,
            digest: bundle.digest().to_hex().to_string(),
            bundle,
        };
        if let Some(d) = &self.dir {
            let json = serde_json::to_vec_pretty(&applied).map_err(|source| StoreError::Encode { version, source })?;
            crate::fsutil::write_atomic(&file_of(d, version), &json)?;
            // The older texts are in their files.
            self.whole.clear();
        }
        self.versions.push(Version::of(&applied));
        self.whole.push(applied);
        while self.versions.len() > KEEP {
            let old = self.versions.remove(0);
            self.whole.retain(|a| a.version != old.version);
            if let Some(d) = &self.dir {
                let _ = std::fs::remove_file(file_of(d, old.version));
            }
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_reloads_in_order() {
        // A directory that does not exist yet: the store creates it.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("history");
        let b = |t: &str| Bundle { files: vec![("p.yaml".into(), t.into())] };
        {
            let mut s = Store::open(Some(dir.clone())).unwrap();
            assert_eq!(s.record("start".into(), b("one")).unwrap(), 1);
            assert_eq!(s.record("SIGHUP".into(), b("two")).unwrap(), 2);
            // Only the current texts stay in memory; the previous come from disk.
            assert_eq!(s.whole.len(), 1);
            assert_eq!(s.previous().unwrap().unwrap().bundle, b("one"));
        }
        let s = Store::open(Some(dir.clone())).unwrap();
        assert_eq!(s.list().iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(s.list()[0].files, ["p.yaml"]);
        assert_eq!(s.current().unwrap().source, "SIGHUP");
        assert_eq!(s.get(1).unwrap().unwrap().digest, b("one").digest().to_hex().to_string());
        assert!(s.get(3).unwrap().is_none());
        // A history file damaged since it was listed: the rollback says which and why.
        std::fs::write(dir.join("policy-00000001.json"), "{").unwrap();
        let e = s.get(1).unwrap_err().to_string();
        assert!(e.contains("policy-00000001.json") && e.contains("not a history record"), "{e}");
    }

    #[test]
    fn in_memory_keeps_every_version_up_to_keep() {
        let mut s = Store::open(None).unwrap();
        for i in 0..KEEP + 2 {
            s.record("control".into(), Bundle { files: vec![("p.yaml".into(), i.to_string())] }).unwrap();
        }
        assert_eq!((s.list().len(), s.whole.len()), (KEEP, KEEP));
        assert_eq!(s.list()[0].version, 3);
        assert_eq!(s.previous().unwrap().unwrap().bundle.files[0].1, (KEEP).to_string());
        assert!(s.get(2).unwrap().is_none());
    }
}

//! History of applied policy bundles: version, time, source, blake3 digest
//! and the texts themselves (so a rollback re-applies exactly what was in
//! force). Persisted one JSON file per version under the state directory,
//! written atomically (`fsutil::write_atomic`).
use std::path::PathBuf;

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
}

/// Versions kept (older ones are deleted from disk and memory).
pub const KEEP: usize = 50;

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

#[derive(Debug, Default)]
pub struct Store {
    dir: Option<PathBuf>,
    entries: Vec<Applied>,
}

impl Store {
    /// Opens (and loads) the history under `dir`, or an in-memory one.
    pub fn open(dir: Option<PathBuf>) -> Result<Self, StoreError> {
        let mut entries = Vec::new();
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(at("creating", d))?;
            for e in std::fs::read_dir(d).map_err(at("listing", d))?.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json") {
                    let text = std::fs::read_to_string(&p).map_err(at("reading", &p))?;
                    match serde_json::from_str::<Applied>(&text) {
                        Ok(a) => entries.push(a),
                        Err(err) => tracing::warn!("ignoring unreadable policy history file {}: {err}", p.display()),
                    }
                }
            }
            entries.sort_by_key(|a: &Applied| a.version);
        }
        Ok(Store { dir, entries })
    }

    pub fn list(&self) -> &[Applied] {
        &self.entries
    }

    pub fn current(&self) -> Option<&Applied> {
        self.entries.last()
    }

    pub fn get(&self, version: u64) -> Option<&Applied> {
        self.entries.iter().find(|a| a.version == version)
    }

    /// The version before the current one (the default rollback target).
    pub fn previous(&self) -> Option<&Applied> {
        self.entries.len().checked_sub(2).map(|i| &self.entries[i])
    }

    pub fn record(&mut self, source: String, bundle: Bundle) -> Result<Applied, StoreError> {
        let version = self.entries.last().map(|a| a.version + 1).unwrap_or(1);
        let applied = Applied {
            version,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            source,
            digest: bundle.digest().to_hex().to_string(),
            bundle,
        };
        if let Some(d) = &self.dir {
            let json = serde_json::to_vec_pretty(&applied).map_err(|source| StoreError::Encode { version, source })?;
            crate::fsutil::write_atomic(&d.join(format!("policy-{version:08}.json")), &json)?;
        }
        self.entries.push(applied.clone());
        while self.entries.len() > KEEP {
            let old = self.entries.remove(0);
            if let Some(d) = &self.dir {
                let _ = std::fs::remove_file(d.join(format!("policy-{:08}.json", old.version)));
            }
        }
        Ok(applied)
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
            assert_eq!(s.record("start".into(), b("one")).unwrap().version, 1);
            assert_eq!(s.record("SIGHUP".into(), b("two")).unwrap().version, 2);
            assert_eq!(s.previous().unwrap().bundle, b("one"));
        }
        let s = Store::open(Some(dir.clone())).unwrap();
        assert_eq!(s.list().len(), 2);
        assert_eq!(s.current().unwrap().source, "SIGHUP");
        assert_eq!(s.get(1).unwrap().digest, b("one").digest().to_hex().to_string());
    }
}

//! The kernel's attribution tables as the domain sees them: traits that
//! `bpf::tables` implements over the real maps and [`mem`] implements in
//! memory for tests, with the same semantics.
//!
//! # Layout
//! - [`ProcessTable`]: tgid -> [`ProcInfo`]: get, assign (sticky, pid-reuse
//!   safe), seed (never over a kernel-made entry), remove, entries.
//! - [`CgroupTable`]: cgroup id -> identity id (decided in the kernel at
//!   fork/exec for cgroup-only selectors).
//! - [`ExecTable`]: (executable, uid) -> identity and its order (decided in
//!   the kernel at exec for `exe`/`uid` selectors), and per file version the
//!   `exeDigest` verdict.
//! - [`Assign`]: what an assignment did.
//! - [`TableError`]: a failed table operation, naming the table and the
//!   operation, with the backend's error as its source.
use std::collections::HashMap;

use zt_common::{DigestKey, ExecKey, ExecPick, NO_IDENTITY, PENDING_IDENTITY, ProcInfo};

use super::Classification;

/// A table operation failed (the kernel map wrapper names its map in `source`).
#[derive(Debug, thiserror::Error)]
#[error("{table}: {op}")]
pub struct TableError {
    pub table: &'static str,
    pub op: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Result of [`ProcessTable::assign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    Updated,
    /// The process already had an identity; it is kept (identities are sticky).
    AlreadyAttributed(u32),
    /// No entry, or an entry of another incarnation of the pid (pid reuse).
    Gone,
}

/// The process table: one entry per live process, keyed by tgid.
pub trait ProcessTable {
    fn get(&self, tgid: u32) -> Result<Option<ProcInfo>, TableError>;

    /// Writes a user-space classification into the entry of the process
    /// incarnation `(tgid, start_ns)`. The entry must exist and carry the
    /// same `start_ns` (a recycled pid never gets a dead process's identity);
    /// an identity already held is never replaced, nor is a `child_identity`
    /// already set; the entry is marked `RESOLVED`.
    fn assign(&mut self, tgid: u32, start_ns: u64, c: Classification) -> Result<Assign, TableError>;

    /// Inserts a seeded entry unless one exists (an entry the kernel made
    /// since the programs were attached is more current than /proc).
    /// Returns whether the entry was inserted.
    fn seed(&mut self, tgid: u32, info: ProcInfo) -> Result<bool, TableError>;

    /// Removes an entry (absent is not an error).
    fn remove(&mut self, tgid: u32) -> Result<(), TableError>;

    /// Snapshot of every entry (GC and status; not for per-event work).
    fn entries(&self) -> Vec<(u32, ProcInfo)>;
}

/// The cgroup id -> identity table the kernel applies at fork and exec.
pub trait CgroupTable {
    fn get(&self, cgroup_id: u64) -> Result<Option<u32>, TableError>;
    fn set(&mut self, cgroup_id: u64, identity: u32) -> Result<(), TableError>;
    fn remove(&mut self, cgroup_id: u64) -> Result<(), TableError>;
    fn keys(&self) -> Vec<u64>;

    /// Makes the table exactly `wanted` (a new policy's cgroups).
    fn replace(&mut self, wanted: &HashMap<u64, u32>) -> Result<(), TableError> {
        for k in self.keys() {
            if !wanted.contains_key(&k) {
                self.remove(k)?;
            }
        }
        for (k, v) in wanted {
            self.set(*k, *v)?;
        }
        Ok(())
    }
}

/// The selectors the kernel decides at exec (`EXEC_SELECT`), and the
/// `exeDigest` verdicts per file version (`DIGEST_VERDICT`).
pub trait ExecTable {
    fn entries(&self) -> Vec<(ExecKey, ExecPick)>;
    fn set(&mut self, key: ExecKey, pick: ExecPick) -> Result<(), TableError>;
    fn remove(&mut self, key: &ExecKey) -> Result<(), TableError>;
    /// Records the verdict for one file version; a full table is cleared
    /// first (a file without a verdict only costs a pending window again).
    fn set_verdict(&mut self, key: DigestKey, pick: ExecPick) -> Result<(), TableError>;
    /// Forgets every verdict (the digests a policy names changed).
    fn clear_verdicts(&mut self) -> Result<(), TableError>;

    /// Makes the table exactly `wanted`, writing only what changed.
    fn replace(&mut self, wanted: &HashMap<ExecKey, ExecPick>) -> Result<(), TableError> {
        let now: HashMap<ExecKey, ExecPick> = self.entries().into_iter().collect();
        for k in now.keys().filter(|k| !wanted.contains_key(k)) {
            self.remove(k)?;
        }
        for (k, v) in wanted.iter().filter(|(k, v)| now.get(*k) != Some(*v)) {
            self.set(*k, *v)?;
        }
        Ok(())
    }
}

/// The assignment rule both implementations share: `Some(new entry)` when
/// `info` (the entry of `start_ns`) takes `c`, else what to answer.
pub fn assigned(info: Option<ProcInfo>, start_ns: u64, c: Classification) -> Result<ProcInfo, Assign> {
    let Some(mut info) = info else { return Err(Assign::Gone) };
    if info.start_ns != start_ns {
        return Err(Assign::Gone);
    }
    // A pending process (see `PENDING_IDENTITY`) is not attributed yet:
    // its classification replaces the placeholder, identity or none.
    if info.identity != NO_IDENTITY && info.identity != PENDING_IDENTITY {
        return Err(Assign::AlreadyAttributed(info.identity));
    }
    info.identity = c.identity;
    if info.child_identity == NO_IDENTITY {
        info.child_identity = c.child_identity;
    }
    info.flags |= zt_common::proc_flags::RESOLVED;
    Ok(info)
}

/// In-memory tables with the kernel tables' semantics, for tests without root.
#[cfg(test)]
pub mod mem {
    use std::collections::HashMap;

    use zt_common::{ExecKey, ExecPick, ProcInfo};

    use super::*;

    #[derive(Debug, Default)]
    pub struct MemProcs(pub HashMap<u32, ProcInfo>);

    impl ProcessTable for MemProcs {
        fn get(&self, tgid: u32) -> Result<Option<ProcInfo>, TableError> {
            Ok(self.0.get(&tgid).copied())
        }
        fn assign(&mut self, tgid: u32, start_ns: u64, c: Classification) -> Result<Assign, TableError> {
            match assigned(self.0.get(&tgid).copied(), start_ns, c) {
                Ok(info) => {
                    self.0.insert(tgid, info);
                    Ok(Assign::Updated)
                }
                Err(a) => Ok(a),
            }
        }
        fn seed(&mut self, tgid: u32, info: ProcInfo) -> Result<bool, TableError> {
            if self.0.contains_key(&tgid) {
                return Ok(false);
            }
            self.0.insert(tgid, info);
            Ok(true)
        }
        fn remove(&mut self, tgid: u32) -> Result<(), TableError> {
            self.0.remove(&tgid);
            Ok(())
        }
        fn entries(&self) -> Vec<(u32, ProcInfo)> {
            self.0.iter().map(|(k, v)| (*k, *v)).collect()
        }
    }

    #[derive(Debug, Default)]
    pub struct MemExecs(pub HashMap<ExecKey, ExecPick>, pub HashMap<DigestKey, ExecPick>);

    impl ExecTable for MemExecs {
        fn set_verdict(&mut self, key: DigestKey, pick: ExecPick) -> Result<(), TableError> {
            self.1.insert(key, pick);
            Ok(())
        }
        fn clear_verdicts(&mut self) -> Result<(), TableError> {
            self.1.clear();
            Ok(())
        }
        fn entries(&self) -> Vec<(ExecKey, ExecPick)> {
            self.0.iter().map(|(k, v)| (*k, *v)).collect()
        }
        fn set(&mut self, key: ExecKey, pick: ExecPick) -> Result<(), TableError> {
            self.0.insert(key, pick);
            Ok(())
        }
        fn remove(&mut self, key: &ExecKey) -> Result<(), TableError> {
            self.0.remove(key);
            Ok(())
        }
    }

    #[derive(Debug, Default)]
    pub struct MemCgroups(pub HashMap<u64, u32>);

    impl CgroupTable for MemCgroups {
        fn get(&self, cgroup_id: u64) -> Result<Option<u32>, TableError> {
            Ok(self.0.get(&cgroup_id).copied())
        }
        fn set(&mut self, cgroup_id: u64, identity: u32) -> Result<(), TableError> {
            self.0.insert(cgroup_id, identity);
            Ok(())
        }
        fn remove(&mut self, cgroup_id: u64) -> Result<(), TableError> {
            self.0.remove(&cgroup_id);
            Ok(())
        }
        fn keys(&self) -> Vec<u64> {
            self.0.keys().copied().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mem::MemProcs, *};

    fn proc(start_ns: u64, identity: u32, child_identity: u32) -> ProcInfo {
        ProcInfo { start_ns, identity, child_identity, ..Default::default() }
    }

    #[test]
    fn assign_is_sticky_incarnation_checked_and_keeps_child_identity() {
        let mut t = MemProcs::default();
        t.0.insert(1, proc(10, 0, 5));
        t.0.insert(2, proc(20, 7, 0));
        let c = Classification { identity: 3, child_identity: 4 };
        assert_eq!(t.assign(1, 11, c).unwrap(), Assign::Gone, "another incarnation");
        assert_eq!(t.assign(9, 10, c).unwrap(), Assign::Gone, "no entry");
        assert_eq!(t.assign(2, 20, c).unwrap(), Assign::AlreadyAttributed(7));
        assert_eq!(t.assign(1, 10, c).unwrap(), Assign::Updated);
        let got = t.get(1).unwrap().unwrap();
        assert_eq!((got.identity, got.child_identity), (3, 5), "a child identity already set is kept (as in the kernel table)");
        assert_ne!(got.flags & zt_common::proc_flags::RESOLVED, 0);
    }

    #[test]
    fn seed_never_overwrites() {
        let mut t = MemProcs::default();
        assert!(t.seed(1, proc(10, 0, 0)).unwrap());
        assert!(!t.seed(1, proc(99, 3, 0)).unwrap());
        assert_eq!(t.get(1).unwrap().unwrap().start_ns, 10);
    }
}

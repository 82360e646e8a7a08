//! blake3 digests of executables, cached by (device, inode, size, mtime,
//! ctime): the change time too, because mtime can be set back with
//! `utimensat` after the content changed, and ctime cannot.
//!
//! The file is opened through `/proc/<pid>/exe`, which yields the very file
//! the process runs even if its path was since replaced or unlinked, so the
//! digest cannot be raced by swapping the file at the path.
use std::{collections::HashMap, fs::File, io, os::unix::fs::MetadataExt, path::Path};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[derive(Default, Debug)]
pub struct DigestCache {
    cache: HashMap<FileKey, blake3::Hash>,
    /// Digests computed (cache misses), for status and tests.
    pub computed: u64,
}

/// Cap on cached entries; the cache is cleared when it is reached (simple and
/// bounded; executables are few).
const MAX_ENTRIES: usize = 4096;

impl DigestCache {
    /// Digest of an open file, from the cache when its identity is unchanged.
    pub fn digest_file(&mut self, file: &File) -> io::Result<blake3::Hash> {
        let m = file.metadata()?;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        let key = FileKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        };
        if let Some(h) = self.cache.get(&key) {
            return Ok(*h);
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(file)?;
        let h = hasher.finalize();
        if self.cache.len() >= MAX_ENTRIES {
            self.cache.clear();
        }
        self.cache.insert(key, h);
        self.computed += 1;
        Ok(h)
    }

    pub fn digest_path(&mut self, path: &Path) -> io::Result<blake3::Hash> {
        self.digest_file(&File::open(path)?)
    }

    /// Digest of the executable of a running process.
    pub fn digest_pid(&mut self, proc_root: &Path, pid: u32) -> io::Result<blake3::Hash> {
        self.digest_path(&proc_root.join(pid.to_string()).join("exe"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn caches_until_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, b"hello").unwrap();
        let mut c = DigestCache::default();
        assert_eq!(c.digest_path(&p).unwrap(), blake3::hash(b"hello"));
        assert_eq!(c.digest_path(&p).unwrap(), blake3::hash(b"hello"));
        assert_eq!(c.computed, 1);
        // Appending changes size (and mtime): recomputed.
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"!").unwrap();
        assert_eq!(c.digest_path(&p).unwrap(), blake3::hash(b"hello!"));
        assert_eq!(c.computed, 2);
        // Same size, and mtime set back afterwards: the change time still
        // moved (past the timestamp granularity), so it is recomputed.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"HELLO!").unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        assert_eq!(c.digest_path(&p).unwrap(), blake3::hash(b"HELLO!"));
    }
}

//! Append-only segment files of framed records, with crash recovery.
//!
//! A frame is `[u32 LE length][u32 LE crc32c(record)][record]`; segments are
//! `seg-<8 digit number>.log` in one directory, filled up to a size limit.
//! Records become durable at [`SegmentWriter::sync`] (`fdatasync`): callers
//! must not sign a checkpoint covering records before that returns.
//!
//! Recovery at open: every segment is scanned; in the **last** segment the
//! first bad frame (short, oversize, or checksum mismatch) is a torn tail
//! from a crash: the file is cut there and the bytes dropped are reported.
//! A bad frame in any earlier segment is corruption, not a crash, and is an
//! error naming the record index, segment, offset and reason.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

/// Largest record (C2SP tiles bundle entries carry a u16 length).
pub const MAX_RECORD: usize = 65_535;
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("record {index} ({path} at byte {offset}): {reason}")]
    Corrupt { index: u64, path: String, offset: u64, reason: String },
    #[error("record of {len} bytes exceeds the {MAX_RECORD}-byte limit")]
    Oversize { len: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.display().to_string(), source }
}

/// What recovery found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub records: Vec<Vec<u8>>,
    /// Bytes cut from the end of the last segment (a torn write), and why.
    pub dropped: Option<(u64, String)>,
}

pub struct SegmentWriter {
    dir: PathBuf,
    file: File,
    number: u64,
    bytes: u64,
    max_bytes: u64,
    next_index: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:08}.log"))
}

fn segments(dir: &Path) -> Result<Vec<u64>, SegmentError> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Parses frames from `buf`; returns records and, at the first bad frame,
/// its offset and the reason.
fn scan(buf: &[u8]) -> (Vec<Vec<u8>>, Option<(usize, String)>) {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        if buf.len() - off < HEADER {
            return (out, Some((off, format!("truncated frame header ({} of {HEADER} bytes)", buf.len() - off))));
        }
        let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(buf[off + 4..off + 8].try_into().expect("4"));
        if len > MAX_RECORD {
            return (out, Some((off, format!("frame length {len} exceeds {MAX_RECORD}"))));
        }
        if buf.len() - off - HEADER < len {
            return (out, Some((off, format!("truncated record ({} of {len} bytes)", buf.len() - off - HEADER))));
        }
        let rec = &buf[off + HEADER..off + HEADER + len];
        if crc32c::crc32c(rec) != crc {
            return (out, Some((off, "checksum mismatch".to_string())));
        }
        out.push(rec.to_vec());
        off += HEADER + len;
    }
    (out, None)
}

impl SegmentWriter {
    /// Opens (creating) the log in `dir`, recovering as described above.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovery), SegmentError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let numbers = segments(dir)?;
        let mut recovery = Recovery::default();
        for (i, &n) in numbers.iter().enumerate() {
            let path = segment_path(dir, n);
            let mut buf = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(io_err(&path))?;
            let (records, bad) = scan(&buf);
            recovery.records.extend(records);
            if let Some((off, reason)) = bad {
                let last = i + 1 == numbers.len();
                if !last {
                    return Err(SegmentError::Corrupt {
                        index: recovery.records.len() as u64,
                        path: path.display().to_string(),
                        offset: off as u64,
                        reason,
                    });
                }
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(off as u64).map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
                recovery.dropped = Some(((buf.len() - off) as u64, reason));
            }
        }
        let number = numbers.last().copied().unwrap_or(1);
        let path = segment_path(dir, number);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let bytes = file.metadata().map_err(io_err(&path))?.len();
        let w = SegmentWriter { dir: dir.to_path_buf(), file, number, bytes, max_bytes, next_index: recovery.records.len() as u64 };
        Ok((w, recovery))
    }

    /// Appends a record (not durable until [`Self::sync`]); returns its index.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, SegmentError> {
        if record.len() > MAX_RECORD {
            return Err(SegmentError::Oversize { len: record.len() });
        }
        if self.bytes > 0 && self.bytes + (HEADER + record.len()) as u64 > self.max_bytes {
            self.rotate()?;
        }
        let mut frame = Vec::with_capacity(HEADER + record.len());
        frame.extend_from_slice(&(record.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
        frame.extend_from_slice(record);
        let path = segment_path(&self.dir, self.number);
        self.file.write_all(&frame).map_err(io_err(&path))?;
        self.bytes += frame.len() as u64;
        self.next_index += 1;
        Ok(self.next_index - 1)
    }

    /// Makes every appended record durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        let path = segment_path(&self.dir, self.number);
        self.file.sync_data().map_err(io_err(&path))
    }

    fn rotate(&mut self) -> Result<(), SegmentError> {
        self.sync()?;
        self.number += 1;
        let path = segment_path(&self.dir, self.number);
        self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        // The new directory entry must be durable too.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        self.bytes = 0;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.next_index
    }

    pub fn is_empty(&self) -> bool {
        self.next_index == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("zt-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn fill(dir: &Path, n: usize, max: u64) -> Vec<Vec<u8>> {
        let (mut w, r) = SegmentWriter::open(dir, max).unwrap();
        assert!(r.records.is_empty());
        let recs: Vec<Vec<u8>> = (0..n).map(|i| format!("{{\"idx\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)).into_bytes()).collect();
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(w.append(r).unwrap(), i as u64);
        }
        w.sync().unwrap();
        recs
    }

    #[test]
    fn reopen_returns_every_record_across_rotation() {
        let d = tmp("reopen");
        let recs = fill(&d, 300, 4096);
        assert!(segments(&d).unwrap().len() > 3, "rotation happened");
        let (mut w, r) = SegmentWriter::open(&d, 4096).unwrap();
        assert_eq!(r.records, recs);
        assert_eq!(r.dropped, None);
        assert_eq!(w.append(b"next").unwrap(), 300);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn torn_tail_is_cut_and_reported() {
        let d = tmp("torn");
        let recs = fill(&d, 20, 1 << 20);
        let last = segment_path(&d, *segments(&d).unwrap().last().unwrap());
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 3).unwrap();
        let (_, r) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!(r.records, recs[..19]);
        let (bytes, reason) = r.dropped.unwrap();
        assert_eq!(bytes as usize, HEADER + recs[19].len() - 3);
        assert!(reason.starts_with("truncated record"), "{reason}");
        // The cut is durable: a second open finds nothing more to drop.
        let (_, r2) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!((r2.records.len(), r2.dropped), (19, None));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flipped_byte_in_last_segment_cuts_there() {
        let d = tmp("flip");
        fill(&d, 10, 1 << 20);
        let last = segment_path(&d, 1);
        let mut buf = std::fs::read(&last).unwrap();
        let off = buf.len() - 5;
        buf[off] ^= 0x40;
        std::fs::write(&last, &buf).unwrap();
        let (_, r) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!(r.records.len(), 9);
        assert_eq!(r.dropped.unwrap().1, "checksum mismatch");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_an_error_with_index() {
        let d = tmp("corrupt");
        fill(&d, 300, 4096);
        let first = segment_path(&d, 1);
        let mut buf = std::fs::read(&first).unwrap();
        buf[HEADER + 2] ^= 1; // inside record 0
        std::fs::write(&first, &buf).unwrap();
        let e = SegmentWriter::open(&d, 4096).err().unwrap().to_string();
        assert_eq!(e, format!("record 0 ({} at byte 0): checksum mismatch", first.display()));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn oversize_record_rejected() {
        let d = tmp("oversize");
        let (mut w, _) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert!(matches!(w.append(&vec![0u8; MAX_RECORD + 1]), Err(SegmentError::Oversize { len }) if len == MAX_RECORD + 1));
        assert_eq!(w.append(&vec![0u8; MAX_RECORD]).unwrap(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

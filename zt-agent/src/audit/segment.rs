//! Append-only segment files of framed records, with crash recovery.
//!
//! A frame is `[u32 LE length][u32 LE crc32c(record)][record]`; segments are
//! `seg-<8 digit number>.log` in one directory, filled up to a size limit.
//! Frames are buffered in memory ([`SegmentWriter::append`]) and written
//! out at [`SegmentWriter::flush`]; records become durable at
//! [`SegmentWriter::sync`] (write + `fdatasync`): callers must not sign a
//! checkpoint covering records before that returns. Rotation to the next
//! segment is the caller's step ([`SegmentWriter::would_overflow`],
//! [`SegmentWriter::rotate`]), so it can record where the segment begins
//! first.
//!
//! A failed write (a full disk) never leaves part of a frame behind: the
//! file is cut back to its last whole frame and the frames stay buffered
//! for the next attempt. If even the cut fails, the next attempt cuts
//! before it writes.
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
/// Callers write buffered frames out beyond this many bytes.
pub const BUF_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{path}")]
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

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io { path: path.display().to_string(), source }
}

/// Opens a segment for appending, never through a symlink (`O_NOFOLLOW`:
/// a segment swapped for a link to another file fails with ELOOP instead
/// of writing records there).
fn open_append(path: &Path) -> Result<File, SegmentError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_err(path))
}

/// Where a scan stopped early: the first bad frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// Index the record at the bad frame would have had.
    pub index: u64,
    pub path: PathBuf,
    pub offset: u64,
    /// Bytes from the bad frame to the end of its segment.
    pub bytes: u64,
    pub reason: String,
}

/// The outcome of [`scan_dir`]: records passed to the callback, and a torn
/// tail in the last segment if there was one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: u64,
    pub segments: Vec<u64>,
    pub torn_tail: Option<BadFrame>,
}

/// What recovery at open did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    /// The torn tail cut from the last segment.
    pub dropped: Option<BadFrame>,
}

pub struct SegmentWriter {
    dir: PathBuf,
    file: File,
    /// Frames not yet written to the file.
    buf: Vec<u8>,
    /// How many frames `buf` holds.
    buffered: u64,
    number: u64,
    /// Length of the file up to its last whole frame.
    file_len: u64,
    /// A failed write may have left part of a frame after `file_len`.
    dirty_tail: bool,
    max_bytes: u64,
    next_index: u64,
}

pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:08}.log"))
}

/// Segment numbers in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>, SegmentError> {
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

/// What starts a buffer of frames.
pub(super) enum Frame<'a> {
    /// A whole frame whose checksum matches: its record.
    Record(&'a [u8]),
    /// Not all of the frame is there (why).
    Short(String),
    /// A length beyond [`MAX_RECORD`] (why).
    Oversize(String),
    /// A whole frame whose checksum does not match.
    Checksum,
}

impl Frame<'_> {
    /// Why the frame is not a record.
    pub(super) fn reason(&self) -> String {
        match self {
            Frame::Short(why) | Frame::Oversize(why) => why.clone(),
            Frame::Checksum => "checksum mismatch".into(),
            Frame::Record(_) => "a whole frame".into(),
        }
    }
}

/// The frame at the start of `buf` (the writer's own scan and `tail`).
pub(super) fn frame(buf: &[u8]) -> Frame<'_> {
    if buf.len() < HEADER {
        return Frame::Short(format!("truncated frame header ({} of {HEADER} bytes)", buf.len()));
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4"));
    if len > MAX_RECORD {
        return Frame::Oversize(format!("frame length {len} exceeds {MAX_RECORD}"));
    }
    if buf.len() - HEADER < len {
        return Frame::Short(format!("truncated record ({} of {len} bytes)", buf.len() - HEADER));
    }
    let rec = &buf[HEADER..HEADER + len];
    if crc32c::crc32c(rec) != crc {
        return Frame::Checksum;
    }
    Frame::Record(rec)
}

/// Bytes a frame of `record` takes.
pub(super) fn frame_len(record: &[u8]) -> usize {
    HEADER + record.len()
}

/// Parses frames from `buf`, calling `f` per record; at the first bad frame
/// returns its offset and the reason.
fn scan<E>(buf: &[u8], mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<Option<(usize, String)>, E> {
    let mut off = 0;
    while off < buf.len() {
        match frame(&buf[off..]) {
            Frame::Record(rec) => {
                f(rec)?;
                off += frame_len(rec);
            }
            bad => return Ok(Some((off, bad.reason()))),
        }
    }
    Ok(None)
}

/// Reads every segment in order, calling `f(index, record)`. A bad frame in
/// the last segment ends the scan and is returned as its torn tail; one in
/// an earlier segment is [`SegmentError::Corrupt`]. Errors from `f` are
/// returned as they are.
pub fn scan_dir<E: From<SegmentError>>(dir: &Path, mut f: impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<Scan, E> {
    let numbers = segments(dir)?;
    let mut out = Scan { segments: numbers.clone(), ..Scan::default() };
    let mut buf = Vec::new();
    for (i, &n) in numbers.iter().enumerate() {
        let path = segment_path(dir, n);
        buf.clear();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(io_err(&path))?;
        let bad = scan(&buf, |rec| {
            f(out.records, rec)?;
            out.records += 1;
            Ok::<(), E>(())
        })?;
        if let Some((off, reason)) = bad {
            let bad = BadFrame { index: out.records, path, offset: off as u64, bytes: (buf.len() - off) as u64, reason };
            if i + 1 != numbers.len() {
                return Err(SegmentError::Corrupt {
                    index: bad.index,
                    path: bad.path.display().to_string(),
                    offset: bad.offset,
                    reason: bad.reason,
                }
                .into());
            }
            out.torn_tail = Some(bad);
        }
    }
    Ok(out)
}

impl SegmentWriter {
    /// Opens (creating) the log in `dir`, cutting a torn tail (see the module
    /// docs). Callers that must check the tail first use [`scan_dir`] and
    /// then [`Self::resume`].
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Self, Recovery), SegmentError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let scan = scan_dir::<SegmentError>(dir, |_, _| Ok(()))?;
        Self::resume(dir, max_bytes, scan)
    }

    /// Continues the log after a [`scan_dir`] of it: cuts its torn tail
    /// durably and opens the last segment for appending.
    pub fn resume(dir: &Path, max_bytes: u64, scan: Scan) -> Result<(Self, Recovery), SegmentError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(bad) = &scan.torn_tail {
            let f = std::os::unix::fs::OpenOptionsExt::custom_flags(OpenOptions::new().write(true), libc::O_NOFOLLOW)
                .open(&bad.path)
                .map_err(io_err(&bad.path))?;
            f.set_len(bad.offset).map_err(io_err(&bad.path))?;
            f.sync_data().map_err(io_err(&bad.path))?;
        }
        let number = scan.segments.last().copied().unwrap_or(1);
        let path = segment_path(dir, number);
        let file = open_append(&path)?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        if scan.segments.is_empty() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        let w = SegmentWriter {
            dir: dir.to_path_buf(),
            file,
            buf: Vec::with_capacity(BUF_BYTES),
            buffered: 0,
            number,
            file_len,
            dirty_tail: false,
            max_bytes,
            next_index: scan.records,
        };
        Ok((w, Recovery { records: scan.records, dropped: scan.torn_tail }))
    }

    /// Buffers a record (written at [`Self::flush`], durable at
    /// [`Self::sync`]); returns its index. Never rotates: see
    /// [`Self::would_overflow`].
    pub fn append(&mut self, record: &[u8]) -> Result<u64, SegmentError> {
        if record.len() > MAX_RECORD {
            return Err(SegmentError::Oversize { len: record.len() });
        }
        self.buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&crc32c::crc32c(record).to_le_bytes());
        self.buf.extend_from_slice(record);
        self.buffered += 1;
        self.next_index += 1;
        Ok(self.next_index - 1)
    }

    /// Whether a record of `len` bytes belongs in the next segment.
    pub fn would_overflow(&self, len: usize) -> bool {
        let bytes = self.file_len + self.buf.len() as u64;
        bytes > 0 && bytes + (HEADER + len) as u64 > self.max_bytes
    }

    /// Bytes buffered, not yet written.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Records buffered, not yet written.
    pub fn buffered_records(&self) -> u64 {
        self.buffered
    }

    /// Writes buffered frames to the file (readable, not yet durable). On
    /// an error the file is cut back to its last whole frame and the frames
    /// stay buffered.
    pub fn flush(&mut self) -> Result<(), SegmentError> {
        let path = segment_path(&self.dir, self.number);
        if self.dirty_tail {
            self.file.set_len(self.file_len).map_err(io_err(&path))?;
            self.dirty_tail = false;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            // A short write left part of the buffer: cut it (appends go to
            // the end of the file, so the next attempt starts there).
            self.dirty_tail = self.file.set_len(self.file_len).is_err();
            return Err(io_err(&path)(e));
        }
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        self.buffered = 0;
        Ok(())
    }

    /// Makes every appended record durable (write + `fdatasync`).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.flush()?;
        let path = segment_path(&self.dir, self.number);
        self.file.sync_data().map_err(io_err(&path))
    }

    /// Makes the current segment durable and starts the next one.
    pub fn rotate(&mut self) -> Result<(), SegmentError> {
        self.sync()?;
        let path = segment_path(&self.dir, self.number + 1);
        self.file = open_append(&path)?;
        self.number += 1;
        self.file_len = 0;
        // The new directory entry must be durable too.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    /// The segment being appended to.
    pub fn segment_number(&self) -> u64 {
        self.number
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

    /// A segment directory that does not exist yet (the writer creates it)
    /// inside a private temporary directory, removed when the guard drops.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let guard = tempfile::Builder::new().prefix(&format!("zt-seg-{name}-")).tempdir().unwrap();
        let d = guard.path().join("log");
        (guard, d)
    }

    fn read(dir: &Path) -> (Vec<Vec<u8>>, Option<BadFrame>) {
        let mut v = Vec::new();
        let s = scan_dir::<SegmentError>(dir, |i, r| {
            assert_eq!(i as usize, v.len());
            v.push(r.to_vec());
            Ok(())
        })
        .unwrap();
        (v, s.torn_tail)
    }

    fn fill(dir: &Path, n: usize, max: u64) -> Vec<Vec<u8>> {
        let (mut w, r) = SegmentWriter::open(dir, max).unwrap();
        assert_eq!(r.records, 0);
        let recs: Vec<Vec<u8>> = (0..n).map(|i| format!("{{\"idx\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 50)).into_bytes()).collect();
        for (i, r) in recs.iter().enumerate() {
            if w.would_overflow(r.len()) {
                w.rotate().unwrap();
            }
            assert_eq!(w.append(r).unwrap(), i as u64);
        }
        w.sync().unwrap();
        recs
    }

    #[test]
    fn reopen_returns_every_record_across_rotation() {
        let (_tmp, d) = tmp("reopen");
        let recs = fill(&d, 300, 4096);
        assert!(segments(&d).unwrap().len() > 3, "rotation happened");
        assert_eq!(read(&d), (recs.clone(), None));
        let (mut w, r) = SegmentWriter::open(&d, 4096).unwrap();
        assert_eq!((r.records, r.dropped), (300, None));
        assert_eq!(w.append(b"next").unwrap(), 300);
    }

    #[test]
    fn torn_tail_is_cut_and_reported() {
        let (_tmp, d) = tmp("torn");
        let recs = fill(&d, 20, 1 << 20);
        let last = segment_path(&d, *segments(&d).unwrap().last().unwrap());
        let len = std::fs::metadata(&last).unwrap().len();
        let f = OpenOptions::new().write(true).open(&last).unwrap();
        f.set_len(len - 3).unwrap();
        let (_, r) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!(r.records, 19);
        let bad = r.dropped.unwrap();
        assert_eq!((bad.index, bad.bytes as usize), (19, HEADER + recs[19].len() - 3));
        assert!(bad.reason.starts_with("truncated record"), "{}", bad.reason);
        // The cut is durable: a second open finds nothing more to drop.
        assert_eq!(read(&d), (recs[..19].to_vec(), None));
        let (_, r2) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!((r2.records, r2.dropped), (19, None));
    }

    #[test]
    fn flipped_byte_in_last_segment_cuts_there() {
        let (_tmp, d) = tmp("flip");
        fill(&d, 10, 1 << 20);
        let last = segment_path(&d, 1);
        let mut buf = std::fs::read(&last).unwrap();
        let off = buf.len() - 5;
        buf[off] ^= 0x40;
        std::fs::write(&last, &buf).unwrap();
        let (_, r) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert_eq!(r.records, 9);
        assert_eq!(r.dropped.unwrap().reason, "checksum mismatch");
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_an_error_with_index() {
        let (_tmp, d) = tmp("corrupt");
        fill(&d, 300, 4096);
        let first = segment_path(&d, 1);
        let mut buf = std::fs::read(&first).unwrap();
        buf[HEADER + 2] ^= 1; // inside record 0
        std::fs::write(&first, &buf).unwrap();
        let e = SegmentWriter::open(&d, 4096).err().unwrap().to_string();
        assert_eq!(e, format!("record 0 ({} at byte 0): checksum mismatch", first.display()));
    }

    #[test]
    fn oversize_record_rejected() {
        let (_tmp, d) = tmp("oversize");
        let (mut w, _) = SegmentWriter::open(&d, 1 << 20).unwrap();
        assert!(matches!(w.append(&vec![0u8; MAX_RECORD + 1]), Err(SegmentError::Oversize { len }) if len == MAX_RECORD + 1));
        assert_eq!(w.append(&vec![0u8; MAX_RECORD]).unwrap(), 0);
    }
}

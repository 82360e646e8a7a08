//! Reading the log from a record index on, while the agent appends to it:
//! the SIEM destinations deliver security records from here, each from its
//! own cursor.
//!
//! A [`Tail`] holds one segment file open and parses whole frames as they
//! appear (a frame still being written is waited for, not an error). At the
//! end of a segment that has a successor it moves on, checking that the
//! next segment starts at the index it expects. A bad frame that stays bad
//! (a checksum mismatch, an impossible length) is an error naming the
//! record index, segment and offset, like the writer's own recovery.
//! Records deleted by retention are reported as the gap they leave.
use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    log::{StartError, read_start},
    segment::{self, Frame, SegmentError},
};

/// Bytes read from the file at a time (a backlog is read in pieces).
const READ_CHUNK: u64 = 1 << 20;
/// How long a complete frame may fail its checksum before it is corruption
/// rather than a write in progress.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("record {index} ({path} at byte {offset}): {reason}")]
    Corrupt { index: u64, path: String, offset: u64, reason: String },
}

pub struct Tail {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Bytes read from `file` and not yet parsed into records.
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Index of the next record.
    next: u64,
    /// Since when the frame at `offset` has been bad.
    bad_since: Option<Instant>,
}

impl Tail {
    /// A reader whose next record is `index`. When retention deleted
    /// records from `index` on, it starts at the oldest one left and
    /// returns the range `[index, oldest)` that is gone.
    pub fn open(dir: &Path, index: u64) -> Result<(Self, Option<(u64, u64)>), TailError> {
        let numbers = segment::segments(dir)?;
        let mut at = None;
        for n in &numbers {
            let start = read_start(dir, *n)?.size();
            if at.is_none() || start <= index {
                at = Some((*n, start));
            }
            if start > index {
                break;
            }
        }
        let (segment, start) = at.unwrap_or((1, 0));
        let path = segment::segment_path(dir, segment);
        let file = File::open(&path).map_err(segment::io_err(&path))?;
        let gap = (index < start).then_some((index, start));
        let mut tail = Tail { dir: dir.to_path_buf(), segment, file, buf: Vec::new(), offset: 0, next: start, bad_since: None };
        // Skip to `index` (records of the segment before it).
        let mut skipped = Vec::new();
        while tail.next < index {
            skipped.clear();
            let want = (index - tail.next).min(1024) as usize;
            if tail.read(want, &mut skipped)? == 0 {
                break;
            }
        }
        Ok((tail, gap))
    }

    /// Index of the next record this reader returns.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Appends up to `max` whole records (index, bytes) to `out`; returns
    /// how many. Zero: nothing new yet.
    pub fn read(&mut self, max: usize, out: &mut Vec<(u64, Vec<u8>)>) -> Result<usize, TailError> {
        let mut n = self.parse(max, out)?;
        if n < max {
            let mut chunk = Vec::new();
            (&mut self.file).take(READ_CHUNK).read_to_end(&mut chunk).map_err(segment::io_err(&self.path()))?;
            self.buf.extend_from_slice(&chunk);
            n += self.parse(max - n, out)?;
        }
        if n == 0 && self.next_segment_exists()? {
            // A finished segment: what is left cannot be a write in progress.
            if !self.buf.is_empty() {
                return Err(self.corrupt(segment::frame(&self.buf).reason()));
            }
            self.advance()?;
            return self.read(max, out);
        }
        Ok(n)
    }

    fn parse(&mut self, max: usize, out: &mut Vec<(u64, Vec<u8>)>) -> Result<usize, TailError> {
        let mut used = 0;
        let mut n = 0;
        while n < max {
            match segment::frame(&self.buf[used..]) {
                Frame::Record(rec) => {
                    self.bad_since = None;
                    out.push((self.next, rec.to_vec()));
                    self.next += 1;
                    used += segment::frame_len(rec);
                    n += 1;
                }
                // A frame still being written.
                Frame::Short(_) => break,
                Frame::Oversize(why) => {
                    self.consume(used);
                    return Err(self.corrupt(why));
                }
                Frame::Checksum => {
                    let since = *self.bad_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < SETTLE {
                        break;
                    }
                    self.consume(used);
                    return Err(self.corrupt(Frame::Checksum.reason()));
                }
            }
        }
        self.consume(used);
        Ok(n)
    }

    fn consume(&mut self, used: usize) {
        self.buf.drain(..used);
        self.offset += used as u64;
    }

    fn path(&self) -> PathBuf {
        segment::segment_path(&self.dir, self.segment)
    }

    fn corrupt(&self, reason: String) -> TailError {
        TailError::Corrupt { index: self.next, path: self.path().display().to_string(), offset: self.offset, reason }
    }

    fn next_segment_exists(&self) -> Result<bool, TailError> {
        Ok(segment::segment_path(&self.dir, self.segment + 1).exists())
    }

    /// Moves to the next segment, which must start where this one ended.
    fn advance(&mut self) -> Result<(), TailError> {
        let n = self.segment + 1;
        let start = read_start(&self.dir, n)?.size();
        if start != self.next {
            return Err(self.corrupt(format!("segment {n} starts at record {start}, but this one ended at {}", self.next)));
        }
        let path = segment::segment_path(&self.dir, n);
        let file = File::open(&path).map_err(segment::io_err(&path))?;
        (self.segment, self.file, self.offset, self.bad_since) = (n, file, 0, None);
        Ok(())
    }
}

//! The audit log writer: canonical records -> framed segments + the Merkle
//! right edge -> signed checkpoints, with recovery at open.
//!
//! # Layout
//! - [`Config`]: directory, key, origin, cadence, segment size, retention.
//! - [`AuditLog::open`]: recovery (see below); [`OpenError::Integrity`] when
//!   the log on disk contradicts its last signed checkpoint.
//! - [`AuditLog::append`], [`AuditLog::tick`] (checkpoint cadence, key
//!   retirement), [`AuditLog::checkpoint`], [`AuditLog::close`].
//! - [`AuditLog::rotate_key`]: a new key; both sign until the overlap ends.
//! - [`Fault`]: the log cannot write (a full disk); see below.
//! - Segment start files and retention ([`read_start`], [`write_start`]).
//!
//! # Files in the log directory
//! - `seg-NNNNNNNN.log`: frames (see [`super::segment`]).
//! - `seg-NNNNNNNN.start`: the tree's size and right edge where that segment
//!   begins, so a verifier can resume after retention deleted older segments.
//! - `checkpoint`: the latest signed checkpoint (replaced atomically).
//! - `verifier-keys`: every public key the log has been signed with.
//! - the directory itself is locked (`flock`) by the one writer; a second
//!   agent on it is refused.
//!
//! # Invariants
//! - A record counts only after `fdatasync`; a checkpoint is signed only
//!   after the records it covers are durable ([`AuditLog::checkpoint`]).
//! - Each checkpoint signs the tree at size S and is then appended as record
//!   S, so every signed tree head is itself in the log.
//! - Cadence: a checkpoint when records are waiting and `checkpoint_interval`
//!   passed or `checkpoint_records` arrived; a heartbeat checkpoint after
//!   `heartbeat` without one (its tree grows by one: the previous checkpoint).
//!
//! # When the disk cannot take a write
//! A failed write, `fdatasync`, start-file or checkpoint-file replace puts
//! the log in a [`Fault`]: the segment is cut back to its last whole frame
//! (see [`super::segment`]), records already in the tree stay buffered in
//! memory (delayed, not lost), nothing is signed, and every record offered
//! meanwhile is refused and counted by kind and time. [`AuditLog::tick`]
//! retries every `retry_interval`; once a sync succeeds the log appends a
//! `loss` record with those counts, signs a checkpoint and leaves the fault.
//! So the tree always equals the frames on disk plus the buffer, and a
//! checkpoint is only ever signed over durable records.
//!
//! # Recovery at open
//! Read the `checkpoint` file (it must verify with our key), scan every
//! segment re-hashing all records and checking each record's `idx` and
//! each checkpoint record against the tree, then: a missing `checkpoint`
//! file while checkpoint records exist, one older than the last of them,
//! a bad frame in an earlier segment, a record missing or altered below the
//! signed size, a root that differs from the signed one, or records missing
//! below the first segment without a signed `retention` record for them is
//! an integrity violation (nothing is cut or written: the evidence stays as found).
//! Otherwise a torn tail after the signed size is cut and a `recovery`
//! record (reason, bytes dropped) is appended.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json};

use super::{
    checkpoint::Checkpoint,
    keys::{self, KeyError},
    merkle::{Edge, Hash, leaf_hash},
    note::{Signer, VerifierKey},
    record::{Envelope, Header, kind},
    segment::{self, BUF_BYTES, BadFrame, MAX_RECORD, SegmentError, SegmentWriter},
};

pub const DEFAULT_DIR: &str = "/var/lib/zt-agent/audit";
pub const DEFAULT_KEY: &str = "/var/lib/zt-agent/audit.key";
pub const CHECKPOINT_FILE: &str = "checkpoint";

#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub key: PathBuf,
    /// Log origin for a new log (an existing log keeps its own); also the key name.
    pub origin: String,
    pub segment_bytes: u64,
    pub checkpoint_interval: Duration,
    pub checkpoint_records: u64,
    pub heartbeat: Duration,
    /// Delete the oldest fully signed segments beyond this many bytes.
    pub retain_bytes: Option<u64>,
    /// Where the log's readers (SIEM destinations) are: retention records
    /// the records it deletes before a reader had them.
    pub readers: Readers,
    /// How often a faulted log tries to write again.
    pub retry_interval: Duration,
}

impl Config {
    pub fn new(dir: PathBuf, key: PathBuf, origin: String) -> Self {
        Config {
            dir,
            key,
            origin,
            segment_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_records: 4096,
            heartbeat: Duration::from_secs(10),
            retain_bytes: None,
            readers: Readers::default(),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// Each reader's position: the index of the first record it does not have.
#[derive(Debug, Clone, Default)]
pub struct Readers(Arc<Mutex<BTreeMap<String, u64>>>);

impl Readers {
    pub fn set(&self, name: &str, next: u64) {
        let mut m = self.0.lock().expect("poisoned");
        match m.get_mut(name) {
            Some(n) => *n = next,
            None => {
                m.insert(name.to_string(), next);
            }
        }
    }

    /// `{destination, from, to}` for each reader that lacks records below `below`.
    fn behind(&self, below: u64) -> Vec<Value> {
        let m = self.0.lock().expect("poisoned");
        m.iter().filter(|(_, next)| **next < below).map(|(name, next)| json!({"destination": name, "from": next, "to": below})).collect()
    }
}

/// The default origin: `zt-agent/<node name>` ([`crate::host::node_name`]).
pub fn default_origin() -> String {
    let host = crate::host::node_name();
    format!("zt-agent/{}", host.replace(|c: char| c.is_whitespace() || c == '+', "-"))
}

/// The longest key-rotation overlap accepted (CLI and daemon): both keys
/// sign for this long at most.
pub const MAX_KEY_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("audit log integrity violation in {dir}: {reason}")]
    Integrity { dir: String, reason: String },
    #[error(transparent)]
    Log(#[from] LogError),
}

impl From<KeyError> for OpenError {
    fn from(e: KeyError) -> Self {
        OpenError::Log(e.into())
    }
}

impl From<SegmentError> for OpenError {
    fn from(e: SegmentError) -> Self {
        OpenError::Log(e.into())
    }
}

/// A failed audit log operation (not an integrity violation).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("audit log {} is in use by another writer", dir.display())]
    Locked {
        dir: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("encoding a record")]
    Encode(#[source] serde_json::Error),
    #[error("a key rotation is already in progress (overlap until {until})")]
    RotationInProgress { until: String },
    #[error("key rotation overlap {} exceeds the maximum {}", humantime::format_duration(*overlap), humantime::format_duration(*max))]
    OverlapTooLong { overlap: Duration, max: Duration },
    #[error("the audit log cannot write since {since} ({error}); the record was counted as lost")]
    Unwritable { since: String, error: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |e| LogError::Fs(crate::fsutil::at(op, path)(e))
}

/// What [`AuditLog::open`] found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub origin: String,
    pub records: u64,
    pub signed_size: u64,
    pub key_created: bool,
    pub verifier_keys: Vec<VerifierKey>,
    /// The torn tail that was cut.
    pub recovered: Option<BadFrame>,
}

pub struct AuditLog {
    /// The exclusive lock on the directory, held while the log is open.
    _lock: nix::fcntl::Flock<std::fs::File>,
    cfg: Config,
    origin: String,
    seg: SegmentWriter,
    edge: Edge,
    /// Current key first; during a rotation also the incoming key.
    signers: Vec<Signer>,
    /// End of the rotation overlap (then the old key retires).
    overlap_until: Option<SystemTime>,
    boot_id: String,
    last_checkpoint: Option<Checkpoint>,
    last_sign: Instant,
    /// Records appended since the last checkpoint (checkpoint records excluded).
    unsigned: u64,
    /// Set while the log cannot write.
    fault: Option<Fault>,
    next_retry: Instant,
}

/// The log cannot write (see "When the disk cannot take a write").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    /// RFC 3339.
    pub since: String,
    /// The latest error, with its causes.
    pub error: String,
    /// Failed attempts (the first write and every retry).
    pub attempts: u64,
    /// Records in the tree, waiting in memory to be written.
    pub buffered: u64,
    /// Records refused, by kind (reported in a `loss` record later).
    pub lost: BTreeMap<String, u64>,
    /// RFC 3339 times of the first and last refused record.
    pub lost_first: Option<String>,
    pub lost_last: Option<String>,
}

impl Fault {
    pub fn lost_records(&self) -> u64 {
        self.lost.values().sum()
    }

    fn count_lost(&mut self, kind: &str) {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        *self.lost.entry(kind.to_string()).or_default() += 1;
        self.lost_first.get_or_insert_with(|| now.clone());
        self.lost_last = Some(now);
    }

    /// The `loss` record's payload, once the log writes again.
    fn loss_payload(&self) -> Value {
        json!({"audit_unwritable": {
            "records": self.lost_records(),
            "kinds": self.lost,
            "first": self.lost_first,
            "last": self.lost_last,
            "since": self.since,
            "until": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "error": self.error,
        }})
    }
}

fn sha(s: &str) -> Result<Hash, String> {
    B64.decode(s).ok().and_then(|v| v.try_into().ok()).ok_or_else(|| format!("{s:?} is not base64 of 32 bytes"))
}

/// The start file of segment `n`.
pub fn start_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:08}.start"))
}

/// A segment start file that cannot be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
}

/// The tree where segment `n` begins. Segment 1 begins empty; a later
/// segment without a start file is an error.
pub fn read_start(dir: &Path, n: u64) -> Result<Edge, StartError> {
    let path = start_path(dir, n);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && n == 1 => return Ok(Edge::new()),
        Err(e) => return Err(crate::fsutil::at("reading", &path)(e).into()),
    };
    let malformed = |what: String| StartError::Malformed { path: path.clone(), what };
    let v: Value = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    let size = v["size"].as_u64().ok_or_else(|| malformed("no size".into()))?;
    let hashes = v["edge"]
        .as_array()
        .ok_or_else(|| malformed("no edge".into()))?
        .iter()
        .map(|h| h.as_str().ok_or("edge entry is not a string".to_string()).and_then(sha))
        .collect::<Result<Vec<_>, _>>()
        .map_err(malformed)?;
    Edge::from_hashes(size, &hashes).ok_or_else(|| malformed(format!("edge does not fit size {size}")))
}

pub fn write_start(dir: &Path, n: u64, edge: &Edge) -> Result<(), crate::fsutil::FsError> {
    let v = json!({"size": edge.size(), "edge": edge.hashes().iter().map(|h| B64.encode(h)).collect::<Vec<_>>()});
    crate::fsutil::write_atomic(&start_path(dir, n), (v.to_string() + "\n").as_bytes())
}

/// The fields of a checkpoint record's payload.
pub fn checkpoint_payload(payload: &Value) -> Result<(u64, Hash, String), String> {
    let size = payload["size"].as_u64().ok_or("checkpoint record without size")?;
    let root = sha(payload["root"].as_str().ok_or("checkpoint record without root")?)?;
    let note = payload["note"].as_str().ok_or("checkpoint record without note")?.to_string();
    Ok((size, root, note))
}

impl AuditLog {
    pub fn open(cfg: Config) -> Result<(Self, OpenReport), OpenError> {
        let dir = cfg.dir.clone();
        let lock = lock_dir(&dir)?;
        let mut signed = read_signed(&cfg)?;
        let scanned = scan_log(&dir, &signed)?;
        let records = scanned.edge.size();
        let (seg, recovery) = SegmentWriter::resume(&dir, cfg.segment_bytes, scanned.scan)?;
        let overlap_until = settle_rotation(&cfg.key, &mut signed.signers, scanned.rotation_until)?;
        let vkeys: Vec<VerifierKey> = signed.signers.iter().map(Signer::verifier_key).collect();
        for k in &vkeys {
            keys::append_verifier_key(&dir, k)?;
        }
        let signed_size = signed.size();
        let mut log = AuditLog {
            _lock: lock,
            origin: signed.origin.clone(),
            seg,
            edge: scanned.edge,
            signers: signed.signers,
            overlap_until,
            boot_id: crate::host::boot_id(),
            last_checkpoint: signed.checkpoint,
            last_sign: Instant::now(),
            unsigned: 0,
            fault: None,
            next_retry: Instant::now(),
            cfg,
        };
        if let Some(payload) = recovery_payload(&scanned.tail, recovery.dropped.as_ref(), records, signed_size) {
            log.append(kind::RECOVERY, payload)?;
        }
        let report = OpenReport {
            origin: signed.origin,
            records,
            signed_size,
            key_created: signed.key_created,
            verifier_keys: vkeys,
            recovered: recovery.dropped,
        };
        Ok((log, report))
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn size(&self) -> u64 {
        self.edge.size()
    }

    pub fn last_checkpoint(&self) -> Option<&Checkpoint> {
        self.last_checkpoint.as_ref()
    }

    pub fn verifier_keys(&self) -> Vec<VerifierKey> {
        self.signers.iter().map(Signer::verifier_key).collect()
    }

    pub fn overlap_until(&self) -> Option<SystemTime> {
        self.overlap_until
    }

    /// Why the log cannot write, if it cannot.
    pub fn fault(&self) -> Option<Fault> {
        self.fault.clone().map(|f| Fault { buffered: self.seg.buffered_records(), ..f })
    }

    /// Appends a record (durable at the next checkpoint); returns its index.
    /// A record larger than the frame limit is replaced by its size and
    /// digest. While the log is in a [`Fault`] the record is refused and
    /// counted ([`LogError::Unwritable`]).
    pub fn append(&mut self, kind: &str, payload: Value) -> Result<u64, LogError> {
        if let Some(f) = &mut self.fault {
            f.count_lost(kind);
            return Err(LogError::Unwritable { since: f.since.clone(), error: f.error.clone() });
        }
        let r = self.append_record(kind, payload);
        match (&r, &mut self.fault) {
            (Ok(_), _) => self.unsigned += 1,
            // The record did not enter the tree.
            (Err(_), Some(f)) => f.count_lost(kind),
            (Err(_), None) => {}
        }
        r
    }

    fn append_record(&mut self, kind: &str, payload: Value) -> Result<u64, LogError> {
        let mut env = Envelope {
            idx: self.edge.size(),
            origin: self.origin.clone(),
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
            boot_id: self.boot_id.clone(),
            mono_ns: crate::host::boottime_ns(),
            kind: kind.to_string(),
            payload,
        };
        let mut bytes = env.encode();
        if bytes.len() > MAX_RECORD {
            let mut full = Vec::new();
            super::record::canonical(&env.payload, &mut full);
            env.payload = json!({"oversize": {"bytes": full.len(), "blake3": blake3::hash(&full).to_hex().to_string()}});
            bytes = env.encode();
        }
        if self.seg.would_overflow(bytes.len()) {
            // The next segment starts at this record: record the tree there
            // before the segment exists.
            let r = self.seg.sync();
            self.guard(r)?;
            let r = write_start(&self.cfg.dir, self.seg.segment_number() + 1, &self.edge);
            self.guard(r)?;
            let r = self.seg.rotate();
            self.guard(r)?;
        }
        self.seg.append(&bytes)?;
        self.edge.push_hash(leaf_hash(&bytes));
        if self.seg.buffered_bytes() >= BUF_BYTES {
            // The record is in the tree either way: a failed write keeps it
            // buffered (delayed, not lost) and faults the log.
            let r = self.seg.flush();
            let _ = self.guard(r);
        }
        Ok(env.idx)
    }

    /// Passes `r` through; an error puts the log in a [`Fault`] (or
    /// updates it).
    fn guard<T, E: Into<LogError>>(&mut self, r: Result<T, E>) -> Result<T, LogError> {
        r.map_err(|e| {
            let e = e.into();
            let error = crate::error::chain(&e);
            let f = self.fault.get_or_insert_with(|| Fault {
                since: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                error: String::new(),
                attempts: 0,
                buffered: 0,
                lost: BTreeMap::new(),
                lost_first: None,
                lost_last: None,
            });
            f.error = error;
            f.attempts += 1;
            self.next_retry = Instant::now() + self.cfg.retry_interval;
            e
        })
    }

    /// Checkpoints when due and retires a rotated-out key when its overlap
    /// ended; in a [`Fault`], retries instead (see [`Self::retry`]).
    /// Returns whether a checkpoint was written.
    pub fn tick(&mut self) -> Result<bool, LogError> {
        if self.fault.is_some() {
            return self.retry();
        }
        // Readers (`audit tail`) see records within a tick; durability comes with the checkpoint.
        let r = self.seg.flush();
        self.guard(r)?;
        if self.overlap_until.is_some_and(|t| SystemTime::now() >= t) {
            self.retire_old_key()?;
            return Ok(true);
        }
        let since = self.last_sign.elapsed();
        let due = (self.unsigned > 0 && (since >= self.cfg.checkpoint_interval || self.unsigned >= self.cfg.checkpoint_records))
            || since >= self.cfg.heartbeat;
        if due {
            self.checkpoint()?;
        }
        Ok(due)
    }

    /// Once `retry_interval` passed: writes what is buffered, appends the
    /// `loss` record for what was refused, signs a checkpoint and leaves the
    /// fault; any step failing keeps the fault (and its counts).
    fn retry(&mut self) -> Result<bool, LogError> {
        if Instant::now() < self.next_retry {
            return Ok(false);
        }
        let r = self.seg.sync();
        self.guard(r)?;
        let lost = self.fault.as_ref().filter(|f| f.lost_records() > 0).map(Fault::loss_payload);
        if let Some(payload) = lost {
            self.append_record(kind::LOSS, payload)?;
            if let Some(f) = &mut self.fault {
                (f.lost, f.lost_first, f.lost_last) = (BTreeMap::new(), None, None);
            }
        }
        self.checkpoint()?;
        if let Some(f) = self.fault.take() {
            tracing::info!("audit log writes again (unwritable since {}, {} failed attempts)", f.since, f.attempts);
        }
        Ok(true)
    }

    /// Makes every appended record durable (`fdatasync`) without signing.
    pub fn sync(&mut self) -> Result<(), LogError> {
        let r = self.seg.sync();
        self.guard(r)
    }

    /// Makes every record durable, signs the tree head, replaces the
    /// `checkpoint` file and appends the checkpoint as a record. Nothing is
    /// signed unless every record in the tree is durable.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, LogError> {
        self.checkpoint_as(false)
    }

    /// A checkpoint; `closed` marks it (and a retention checkpoint after it)
    /// as the log's last: a log that ends otherwise was stopped uncleanly.
    fn checkpoint_as(&mut self, closed: bool) -> Result<Checkpoint, LogError> {
        let cp = self.sign(closed)?;
        Ok(self.apply_retention(closed)?.unwrap_or(cp))
    }

    /// [`Self::checkpoint_as`] without retention.
    fn sign(&mut self, closed: bool) -> Result<Checkpoint, LogError> {
        self.sync()?;
        let cp = Checkpoint { origin: self.origin.clone(), size: self.edge.size(), root: self.edge.root() };
        let signers: Vec<&Signer> = self.signers.iter().collect();
        let note = cp.sign(&signers);
        let r = crate::fsutil::write_atomic(&self.cfg.dir.join(CHECKPOINT_FILE), note.as_bytes());
        self.guard(r)?;
        self.last_checkpoint = Some(cp.clone());
        self.last_sign = Instant::now();
        self.unsigned = 0;
        let mut payload = json!({"size": cp.size, "root": B64.encode(cp.root), "note": note});
        if closed {
            payload["closed"] = json!(true);
        }
        self.append_record(kind::CHECKPOINT, payload)?;
        Ok(cp)
    }

    /// A final checkpoint, durable with its own record.
    /// In a [`Fault`], one last retry first (its `loss` record included).
    pub fn close(mut self) -> Result<Checkpoint, LogError> {
        if self.fault.is_some() {
            self.next_retry = Instant::now();
            self.retry()?;
        }
        let cp = self.checkpoint_as(true)?;
        self.sync()?;
        Ok(cp)
    }

    /// Starts a key rotation: a new key at `<key>.next`, a `key_rotation`
    /// record, and dual-signed checkpoints until `overlap` (at most
    /// [`MAX_KEY_OVERLAP`]) has passed.
    pub fn rotate_key(&mut self, overlap: Duration) -> Result<VerifierKey, LogError> {
        if let Some(f) = &self.fault {
            return Err(LogError::Unwritable { since: f.since.clone(), error: f.error.clone() });
        }
        if self.signers.len() > 1 {
            return Err(LogError::RotationInProgress {
                until: self.overlap_until.map(humantime::format_rfc3339_seconds).map(|t| t.to_string()).unwrap_or_default(),
            });
        }
        let too_long = || LogError::OverlapTooLong { overlap, max: MAX_KEY_OVERLAP };
        if overlap > MAX_KEY_OVERLAP {
            return Err(too_long());
        }
        let until = SystemTime::now().checked_add(overlap).ok_or_else(too_long)?;
        let next = keys::write_new(&keys::next_path(&self.cfg.key), &self.origin)?;
        let (old_v, new_v) = (self.signers[0].verifier_key(), next.verifier_key());
        keys::append_verifier_key(&self.cfg.dir, &new_v)?;
        self.signers.push(next);
        self.overlap_until = Some(until);
        self.append(
            kind::KEY_ROTATION,
            json!({"old_key": old_v.to_string(), "new_key": new_v.to_string(), "overlap_until": humantime::format_rfc3339_seconds(until).to_string()}),
        )?;
        self.checkpoint()?;
        Ok(new_v)
    }

    /// Ends a rotation: the incoming key replaces the old key file, then a
    /// `key_retired` record is appended and signed.
    fn retire_old_key(&mut self) -> Result<(), LogError> {
        // The new key takes the old key's file first (the old private key is
        // gone), then the retirement is recorded and signed by the new key,
        // which verifiers already trust through the signed rotation record.
        std::fs::rename(keys::next_path(&self.cfg.key), &self.cfg.key).map_err(io("replacing", &self.cfg.key))?;
        crate::fsutil::sync_parent(&self.cfg.key)?;
        let old = self.signers.remove(0).verifier_key();
        self.overlap_until = None;
        self.append(kind::KEY_RETIRED, json!({"key": old.to_string()}))?;
        self.checkpoint()?;
        tracing::info!("audit key {old} retired; now signing with {}", self.signers[0].verifier_key());
        Ok(())
    }

    /// Deletes the oldest segments beyond `retain_bytes`, only those whose
    /// every record is covered by the last checkpoint, after appending a
    /// `retention` record that names them and signing it (so every missing
    /// range is covered by a signed record: see [`retention_gap`]). Returns
    /// that checkpoint, if it deleted anything.
    fn apply_retention(&mut self, closed: bool) -> Result<Option<Checkpoint>, LogError> {
        let Some(limit) = self.cfg.retain_bytes else { return Ok(None) };
        let dir = self.cfg.dir.clone();
        let numbers = segment::segments(&dir)?;
        let sizes: Vec<u64> =
            numbers.iter().map(|n| std::fs::metadata(segment::segment_path(&dir, *n)).map(|m| m.len()).unwrap_or(0)).collect();
        let mut total: u64 = sizes.iter().sum();
        let signed = self.last_checkpoint.as_ref().map_or(0, |c| c.size);
        let mut doomed = Vec::new();
        let mut deleted_below = 0;
        for (i, n) in numbers.iter().enumerate().take(numbers.len().saturating_sub(1)) {
            if total <= limit {
                break;
            }
            let (Ok(start), Ok(end)) = (read_start(&dir, *n), read_start(&dir, numbers[i + 1])) else { break };
            if end.size() > signed {
                break;
            }
            doomed.push(
                json!({"segment": format!("seg-{n:08}.log"), "first_index": start.size(), "end_index": end.size(), "bytes": sizes[i]}),
            );
            deleted_below = end.size();
            total -= sizes[i];
        }
        if doomed.is_empty() {
            return Ok(None);
        }
        let count = doomed.len();
        let mut record = json!({"retain_bytes": limit, "deleted": doomed, "deleted_below": deleted_below});
        let undelivered = self.cfg.readers.behind(deleted_below);
        if !undelivered.is_empty() {
            tracing::error!(
                "audit log retention deletes records below {deleted_below} that SIEM destinations do not have: {undelivered:?}"
            );
            record["undelivered"] = Value::Array(undelivered);
        }
        self.append(kind::RETENTION, record)?;
        let cp = self.sign(closed)?;
        for n in &numbers[..count] {
            let path = segment::segment_path(&dir, *n);
            std::fs::remove_file(&path).map_err(io("deleting segment", &path))?;
            let _ = std::fs::remove_file(start_path(&dir, *n));
        }
        crate::fsutil::sync_parent(&dir.join(CHECKPOINT_FILE))?;
        Ok(Some(cp))
    }
}

/// The index ranges `[from, to)` a `retention` record says were deleted:
/// each segment it names, and everything below its `deleted_below`.
pub fn retention_ranges(payload: &Value) -> Vec<(u64, u64)> {
    let segments = payload["deleted"].as_array().into_iter().flatten();
    let mut v: Vec<(u64, u64)> = segments.filter_map(|d| Some((d["first_index"].as_u64()?, d["end_index"].as_u64()?))).collect();
    v.extend(payload["deleted_below"].as_u64().map(|b| (0, b)));
    v
}

/// The first range below `first_index` that no signed retention record
/// covers (records missing without a trace), given the ranges of the
/// retention records the last checkpoint covers.
pub fn retention_gap(first_index: u64, mut ranges: Vec<(u64, u64)>) -> Option<(u64, u64)> {
    ranges.sort_unstable();
    let mut covered = 0;
    for (from, to) in ranges {
        if from > covered {
            return (covered < first_index).then(|| (covered, from.min(first_index)));
        }
        covered = covered.max(to);
    }
    (covered < first_index).then_some((covered, first_index))
}

fn violation(dir: &Path, reason: String) -> OpenError {
    OpenError::Integrity { dir: dir.display().to_string(), reason }
}

/// Creates the directory and takes the one-writer lock on the directory
/// itself (a lock file could be unlinked to let a second writer in; the
/// directory cannot be, while it holds the log).
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, LogError> {
    std::fs::create_dir_all(dir).map_err(io("creating audit dir", dir))?;
    let handle = std::fs::File::open(dir).map_err(io("opening", dir))?;
    nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, source)| LogError::Locked { dir: dir.to_path_buf(), source })
}

/// The log's keys and its last signed checkpoint, as found at open.
struct Signed {
    /// Fixed by the log's first checkpoint (else the configured one).
    origin: String,
    /// Current key first; the incoming key of an unfinished rotation second.
    signers: Vec<Signer>,
    key_created: bool,
    /// The `checkpoint` file, verified with our keys.
    checkpoint: Option<Checkpoint>,
    cp_path: PathBuf,
}

impl Signed {
    fn size(&self) -> u64 {
        self.checkpoint.as_ref().map_or(0, |c| c.size)
    }
}

/// Reads the keys and verifies the `checkpoint` file with them.
fn read_signed(cfg: &Config) -> Result<Signed, OpenError> {
    let dir = &cfg.dir;
    let cp_path = dir.join(CHECKPOINT_FILE);
    let cp_note = match std::fs::read_to_string(&cp_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &cp_path)(e).into()),
    };
    let origin = match cp_note.as_deref().map(|n| Checkpoint::parse_unverified(n).ok()) {
        Some(Some(cp)) => cp.origin,
        Some(None) => return Err(violation(dir, format!("{}: not a checkpoint", cp_path.display()))),
        None => cfg.origin.clone(),
    };
    let (current, key_created) = keys::load_or_create(&cfg.key, &origin)?;
    let mut signers = vec![current];
    let next = keys::next_path(&cfg.key);
    if next.exists() {
        signers.push(keys::load(&next, &origin)?);
    }
    let vkeys: Vec<VerifierKey> = signers.iter().map(Signer::verifier_key).collect();
    let checkpoint = match &cp_note {
        Some(note) => Some(Checkpoint::verify(note, &origin, &vkeys).map_err(|e| {
            let gone = if key_created { " (the audit key was created just now: the log was signed by a key that is gone)" } else { "" };
            violation(dir, format!("{}: {e}{gone}", cp_path.display()))
        })?),
        None => None,
    }
    .map(|(cp, _)| cp);
    Ok(Signed { origin, signers, key_created, checkpoint, cp_path })
}

/// What re-hashing the whole log found.
struct Scanned {
    edge: Edge,
    /// `overlap_until` of a rotation still in progress.
    rotation_until: Option<String>,
    tail: Tail,
    scan: segment::Scan,
}

/// Re-hashes every record, checking each record's `idx` and each
/// checkpoint record against the tree, then the log against the signed
/// checkpoint (see "Recovery at open" above).
fn scan_log(dir: &Path, signed: &Signed) -> Result<Scanned, OpenError> {
    let signed_size = signed.size();
    let first_segment = segment::segments(dir)?.first().copied().unwrap_or(1);
    let mut edge = read_start(dir, first_segment).map_err(|e| violation(dir, crate::error::chain(&e)))?;
    let base = edge.size();
    let mut signed_root: Option<Hash> = (signed_size == base).then(|| edge.root());
    let mut rotation_until: Option<String> = None;
    let mut last_checkpoint_record: Option<u64> = None;
    let mut closed = false;
    let mut retention: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    let mut last_record = Vec::new();
    let scan = segment::scan_dir(dir, |i, rec| {
        let idx = base + i;
        check_record(idx, rec, &edge, &mut rotation_until, (&mut last_checkpoint_record, &mut closed), &mut retention)?;
        last_record.clear();
        last_record.extend_from_slice(rec);
        edge.push_hash(leaf_hash(rec));
        if edge.size() == signed_size {
            signed_root = Some(edge.root());
        }
        Ok(())
    });
    let scan = match scan {
        Ok(s) => s,
        Err(ScanErr::Stop(reason)) => return Err(violation(dir, reason)),
        Err(ScanErr::Segment(e @ SegmentError::Corrupt { .. })) => return Err(violation(dir, e.to_string())),
        Err(ScanErr::Segment(e)) => return Err(e.into()),
    };
    check_against_signed(signed, edge.size(), base, signed_root, last_checkpoint_record, &scan).map_err(|r| violation(dir, r))?;
    let signed_ranges = retention.into_iter().filter(|(i, _)| *i < signed_size).flat_map(|(_, r)| r).collect();
    if let Some((from, to)) = retention_gap(base, signed_ranges) {
        return Err(violation(dir, missing_without_retention(from, to)));
    }
    Ok(Scanned { edge, rotation_until, tail: Tail { base, last_checkpoint_record, closed, last_record }, scan })
}

/// How the scanned log ends.
struct Tail {
    /// Index of the first record on disk (retention deleted older ones).
    base: u64,
    /// Index of the last checkpoint record: a log closed cleanly ends with one.
    last_checkpoint_record: Option<u64>,
    /// That checkpoint was written by a close (`"closed": true`).
    closed: bool,
    /// The last record (its time dates an unclean stop).
    last_record: Vec<u8>,
}

/// What a `recovery` record says, if anything needs saying: a torn tail
/// that was cut, and an unclean stop (the log does not end with a
/// checkpoint record, as a closed log does): the unsigned records adopted
/// and signed from now on, and when the last of them was written.
fn recovery_payload(tail: &Tail, dropped: Option<&BadFrame>, records: u64, signed_size: u64) -> Option<Value> {
    let unclean = records > 0 && !(tail.closed && tail.last_checkpoint_record == Some(records - 1));
    if dropped.is_none() && !unclean {
        return None;
    }
    let mut p = json!({ "signed_size": signed_size, "unclean_stop": unclean });
    if let Some(bad) = dropped {
        p["reason"] = json!(bad.reason);
        p["bytes_dropped"] = json!(bad.bytes);
        p["index"] = json!(tail.base + bad.index);
        p["segment"] = json!(bad.path.display().to_string());
        p["offset"] = json!(bad.offset);
    } else {
        p["reason"] = json!("unclean stop: the log did not end with a checkpoint");
    }
    if unclean {
        // The records after the last signed checkpoint's own record.
        let from = tail.last_checkpoint_record.map_or(signed_size, |k| (k + 1).max(signed_size)).min(records);
        p["adopted"] = json!({ "from": from, "to": records });
        if let Ok(env) = Envelope::decode(&tail.last_record) {
            let gap = humantime::parse_rfc3339(&env.time).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
            p["last_record_time"] = json!(env.time);
            p["gap_ms"] = json!(gap.map(|g| g.as_millis() as u64));
        }
    }
    Some(p)
}

/// The verdict on records missing below the first segment without a signed
/// `retention` record for them (the agent's and the verifier's).
pub fn missing_without_retention(from: u64, to: u64) -> String {
    format!("records {from}..{to} are missing and no signed retention record covers them: segments were deleted outside retention")
}

/// One record during the scan: its `idx`, for checkpoint and key records
/// their payload against the tree so far, and the ranges retention records
/// name.
fn check_record(
    idx: u64,
    rec: &[u8],
    edge: &Edge,
    rotation_until: &mut Option<String>,
    (last_checkpoint_record, closed): (&mut Option<u64>, &mut bool),
    retention: &mut Vec<(u64, Vec<(u64, u64)>)>,
) -> Result<(), ScanErr> {
    let h = Header::parse(rec).map_err(|e| ScanErr::Stop(format!("record {idx}: {e}")))?;
    if h.idx != idx {
        return Err(ScanErr::Stop(format!("record {idx}: its idx field says {} (records were deleted, inserted or reordered)", h.idx)));
    }
    if ![kind::CHECKPOINT, kind::KEY_ROTATION, kind::KEY_RETIRED, kind::RETENTION].contains(&h.kind.as_ref()) {
        return Ok(());
    }
    let env = Envelope::decode(rec).map_err(|e| ScanErr::Stop(format!("record {idx}: {e}")))?;
    match env.kind.as_str() {
        kind::RETENTION => retention.push((idx, retention_ranges(&env.payload))),
        kind::CHECKPOINT => {
            let (size, root, _) = checkpoint_payload(&env.payload).map_err(|e| ScanErr::Stop(format!("record {idx}: {e}")))?;
            if size != idx || root != edge.root() {
                return Err(ScanErr::Stop(format!("record {idx}: checkpoint record does not match the records before it")));
            }
            *last_checkpoint_record = Some(size);
            *closed = env.payload["closed"] == true;
        }
        kind::KEY_ROTATION => *rotation_until = env.payload["overlap_until"].as_str().map(String::from),
        _ => *rotation_until = None,
    }
    Ok(())
}

/// The integrity checks of the scanned log against the signed checkpoint;
/// `Err` is the violation.
fn check_against_signed(
    signed: &Signed,
    records: u64,
    base: u64,
    signed_root: Option<Hash>,
    last_checkpoint_record: Option<u64>,
    scan: &segment::Scan,
) -> Result<(), String> {
    let signed_size = signed.size();
    let cp_path = signed.cp_path.display();
    // The checkpoint file is written before its record is appended, so
    // it is never older than the last checkpoint record.
    if let Some(k) = last_checkpoint_record.filter(|k| signed.checkpoint.is_none() || signed_size < *k) {
        return Err(match &signed.checkpoint {
            None => format!("{cp_path} is missing but record {k} is a signed checkpoint: the checkpoint file was deleted"),
            Some(_) => {
                format!("{cp_path} signs size {signed_size} but record {k} is a later checkpoint: an older checkpoint file was put back")
            }
        });
    }
    if let Some(bad) = scan.torn_tail.as_ref().filter(|b| base + b.index < signed_size) {
        return Err(format!(
            "record {} ({} at byte {}): {}; it is below the last signed checkpoint (size {signed_size}), so signed records were lost or altered",
            base + bad.index,
            bad.path.display(),
            bad.offset,
            bad.reason
        ));
    }
    if records < signed_size {
        return Err(format!(
            "the log has {records} records but its last signed checkpoint covers {signed_size}: records {records}..{signed_size} were removed"
        ));
    }
    if let Some(cp) = &signed.checkpoint
        && signed_root != Some(cp.root)
    {
        return Err(format!("the root at size {} differs from the signed checkpoint: records below {} were altered", cp.size, cp.size));
    }
    Ok(())
}

/// The end of a rotation in progress; an incoming key whose rotation was
/// never recorded (a crash between creating it and recording it) is
/// removed, since no verifier could have learnt it.
fn settle_rotation(key: &Path, signers: &mut Vec<Signer>, rotation_until: Option<String>) -> Result<Option<SystemTime>, LogError> {
    match (signers.len(), rotation_until) {
        (2, Some(t)) => Ok(Some(humantime::parse_rfc3339(&t).unwrap_or(SystemTime::UNIX_EPOCH))),
        (2, None) => {
            signers.pop();
            let next = keys::next_path(key);
            std::fs::remove_file(&next).map_err(io("removing", &next))?;
            tracing::warn!(
                "audit key rotation was interrupted before it was recorded; {} removed, run `zt-agent audit rotate-key` again",
                next.display()
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Why the recovery scan stopped: an integrity violation or a segment error.
enum ScanErr {
    Stop(String),
    Segment(SegmentError),
}
impl From<SegmentError> for ScanErr {
    fn from(e: SegmentError) -> Self {
        ScanErr::Segment(e)
    }
}

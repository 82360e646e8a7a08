//! Full verification of an audit log directory, as a third party runs it
//! (`zt-agent audit verify`). Reads only; trusts only the keys and
//! checkpoints it is given.
//!
//! # What is checked, in one pass over every record
//! - framing and checksums (a bad frame in an earlier segment is corruption;
//!   in the last segment it is a torn tail, allowed only above every signed
//!   size);
//! - each record is an audit record of this log's origin whose `idx` is its
//!   position (deletion, insertion and reordering stop here);
//! - each checkpoint record signs exactly the tree before it, with a trusted
//!   key, and matches it (an altered record stops at the next checkpoint);
//! - keys: a `key_rotation` record makes its new key trusted once a
//!   checkpoint signed by a trusted key covers it; a `key_retired` record
//!   removes the old key the same way;
//! - the `checkpoint` file and every trusted checkpoint: signature, size not
//!   beyond the log (truncation, rollback), the root at their size (a
//!   different root signed at a size the log also signed is fork evidence),
//!   and the `checkpoint` file present and not older than the last
//!   checkpoint record (the verdict the agent gives at start);
//! - records missing below the first segment are covered by signed
//!   `retention` records (the agent gives the same verdict at start).
use std::{collections::BTreeMap, path::Path};

use super::{
    checkpoint::Checkpoint,
    keys,
    log::{self, CHECKPOINT_FILE},
    merkle::{Hash, leaf_hash},
    note::VerifierKey,
    record::{Envelope, Header, kind},
    segment::{self, BadFrame, SegmentError},
};

pub struct Options {
    /// Trusted keys; empty: the log's own `verifier-keys` file (which proves
    /// integrity only against someone without the private key).
    pub keys: Vec<VerifierKey>,
    /// Checkpoints obtained outside this host (SIEM, witness, an earlier
    /// verification): (label, note text).
    pub trusted: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub origin: String,
    /// Index of the first record present (after retention).
    pub first_index: u64,
    pub records: u64,
    pub checkpoints: u64,
    /// The largest signed size and its root.
    pub latest: Option<Checkpoint>,
    pub keys_from_log_dir: bool,
    pub trusted_keys: Vec<String>,
    pub torn_tail: Option<BadFrame>,
    /// Records after the last signed checkpoint.
    pub unsigned: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", index.map(|i| format!("record {i}: ")).unwrap_or_default())]
pub struct Failure {
    pub index: Option<u64>,
    pub reason: String,
}

fn fail<T>(index: impl Into<Option<u64>>, reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure { index: index.into(), reason: reason.into() })
}

impl From<SegmentError> for Failure {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::Corrupt { index, path, offset, reason } => {
                Failure { index: Some(index), reason: format!("{reason} ({path} at byte {offset})") }
            }
            other => Failure { index: None, reason: crate::error::chain(&other) },
        }
    }
}

struct State {
    origin: Option<String>,
    trusted: Vec<VerifierKey>,
    /// Every key trusted at some point of the log (for outside checkpoints
    /// from before a rotation).
    ever_trusted: Vec<VerifierKey>,
    pending_keys: Vec<(u64, VerifierKey)>,
    retiring_keys: Vec<(u64, VerifierKey)>,
    /// Roots signed by checkpoint records, by size.
    signed: BTreeMap<u64, Hash>,
    /// Roots wanted for outside checkpoints, filled when the tree passes their size.
    wanted: BTreeMap<u64, Option<Hash>>,
    edge: super::merkle::Edge,
    checkpoints: u64,
    /// (index, ranges deleted) of every `retention` record.
    retention: Vec<(u64, Vec<(u64, u64)>)>,
}

impl State {
    fn record(&mut self, idx: u64, rec: &[u8]) -> Result<(), Failure> {
        let h = Header::parse(rec).or_else(|e| fail(idx, e))?;
        if h.idx != idx {
            return fail(idx, format!("its idx field says {}: records were deleted, inserted or reordered", h.idx));
        }
        match &self.origin {
            Some(o) if *o != h.origin => return fail(idx, format!("origin {:?}, but the log's origin is {o:?}", h.origin)),
            Some(_) => {}
            None => self.origin = Some(h.origin.to_string()),
        }
        if h.kind == kind::RETENTION {
            let env = Envelope::decode(rec).or_else(|e| fail(idx, e))?;
            self.retention.push((idx, log::retention_ranges(&env.payload)));
        }
        if h.kind == kind::CHECKPOINT || h.kind == kind::KEY_ROTATION || h.kind == kind::KEY_RETIRED {
            let env = Envelope::decode(rec).or_else(|e| fail(idx, e))?;
            let key_field = |name: &str| {
                env.payload[name]
                    .as_str()
                    .ok_or(format!("{} record without {name}", env.kind))
                    .and_then(|s| VerifierKey::parse(s).map_err(|e| e.to_string()))
            };
            match env.kind.as_str() {
                kind::CHECKPOINT => self.checkpoint_record(idx, &env)?,
                kind::KEY_ROTATION => self.pending_keys.push((idx, key_field("new_key").or_else(|e| fail(idx, e))?)),
                _ => self.retiring_keys.push((idx, key_field("key").or_else(|e| fail(idx, e))?)),
            }
        }
        self.edge.push_hash(leaf_hash(rec));
        if let Some(slot) = self.wanted.get_mut(&self.edge.size()) {
            *slot = Some(self.edge.root());
        }
        Ok(())
    }

    fn checkpoint_record(&mut self, idx: u64, env: &Envelope) -> Result<(), Failure> {
        let (size, root, note) = log::checkpoint_payload(&env.payload).or_else(|e| fail(idx, e))?;
        if size != idx {
            return fail(idx, format!("checkpoint record signs size {size} but sits at index {idx}"));
        }
        let origin = self.origin.clone().unwrap_or_default();
        let (cp, _) = Checkpoint::verify(&note, &origin, &self.trusted).or_else(|e| fail(idx, format!("checkpoint: {e}")))?;
        if cp.size != size || cp.root != root {
            return fail(idx, "checkpoint record's size or root differs from its signed note");
        }
        if cp.root != self.edge.root() {
            let prev = self.signed.keys().next_back().copied().unwrap_or(0);
            return fail(idx, format!("the signed root at size {size} does not match the records: a record in {prev}..{size} was altered"));
        }
        self.signed.insert(size, root);
        self.checkpoints += 1;
        // Key changes recorded before this checkpoint are now signed by a trusted key.
        for (_, k) in self.pending_keys.extract_if(.., |(i, _)| *i < idx) {
            if !self.trusted.contains(&k) {
                self.trusted.push(k.clone());
            }
            if !self.ever_trusted.contains(&k) {
                self.ever_trusted.push(k);
            }
        }
        for (_, k) in self.retiring_keys.extract_if(.., |(i, _)| *i < idx) {
            self.trusted.retain(|t| *t != k);
        }
        Ok(())
    }
}

/// Verifies the log in `dir`; see the module docs.
pub fn verify_dir(dir: &Path, opts: &Options) -> Result<Report, Failure> {
    let numbers = segment::segments(dir)?;
    let Some(&first) = numbers.first() else {
        return fail(None, format!("no audit log in {} (no seg-*.log files)", dir.display()));
    };
    let keys_from_log_dir = opts.keys.is_empty();
    let trusted = if keys_from_log_dir {
        keys::read_verifier_keys(&keys::verifier_keys_path(dir))
            .or_else(|e| fail(None, format!("no --vkey given and {}", crate::error::chain(&e))))?
    } else {
        opts.keys.clone()
    };
    // Outside checkpoints: their sizes are needed before the pass.
    let outside = outside_checkpoints(dir, opts)?;

    let edge = log::read_start(dir, first).or_else(|e| fail(None, crate::error::chain(&e)))?;
    let first_index = edge.size();
    let mut st = State {
        origin: outside.first().map(|o| o.body.origin.clone()),
        ever_trusted: trusted.clone(),
        trusted,
        pending_keys: Vec::new(),
        retiring_keys: Vec::new(),
        signed: BTreeMap::new(),
        wanted: outside.iter().map(|o| (o.body.size, None)).collect(),
        edge,
        checkpoints: 0,
        retention: Vec::new(),
    };
    if let Some(slot) = st.wanted.get_mut(&first_index) {
        *slot = Some(st.edge.root());
    }
    let scan = segment::scan_dir(dir, |i, rec| st.record(first_index + i, rec))?;
    let records = st.edge.size();
    let origin = st.origin.clone().unwrap_or_default();

    // A bad frame below any signed size is damage, not a torn tail.
    let last_record_cp = st.signed.keys().next_back().copied();
    let max_signed = outside.iter().map(|o| o.body.size).chain(last_record_cp).max().unwrap_or(0);
    if let Some(bad) = scan.torn_tail.as_ref().filter(|b| first_index + b.index < max_signed) {
        return fail(
            first_index + bad.index,
            format!("{} ({} at byte {}), below the signed size {max_signed}", bad.reason, bad.path.display(), bad.offset),
        );
    }
    // The agent refuses to start on this (a deleted checkpoint file hides
    // truncation); the verifier gives the same verdict.
    if let Some(k) = last_record_cp.filter(|_| !outside.iter().any(|o| o.is_file)) {
        return fail(k, format!("{CHECKPOINT_FILE} is missing but record {k} is a signed checkpoint: the checkpoint file was deleted"));
    }
    for o in &outside {
        check_outside(o, &st, &origin, records, first_index, last_record_cp)?;
    }
    // Records missing below the first segment need a signed retention record.
    let signed_ranges = st.retention.iter().filter(|(i, _)| *i < max_signed).flat_map(|(_, r)| r.iter().copied()).collect();
    if let Some((from, to)) = log::retention_gap(first_index, signed_ranges) {
        return fail(from, log::missing_without_retention(from, to));
    }
    let latest = st.signed.iter().next_back().map(|(s, r)| Checkpoint { origin: origin.clone(), size: *s, root: *r });
    let latest = match outside.iter().map(|o| &o.body).max_by_key(|c| c.size) {
        Some(c) if latest.as_ref().is_none_or(|l| c.size > l.size) => Some(c.clone()),
        _ => latest,
    };
    let unsigned = records - latest.as_ref().map_or(first_index, |c| c.size);
    Ok(Report {
        origin,
        first_index,
        records,
        checkpoints: st.checkpoints,
        latest,
        keys_from_log_dir,
        trusted_keys: st.trusted.iter().map(|k| k.to_string()).collect(),
        torn_tail: scan.torn_tail.map(|mut b| {
            b.index += first_index;
            b
        }),
        unsigned,
    })
}

/// A checkpoint from outside the records: the host's `checkpoint` file or
/// one the caller trusts.
struct Outside {
    label: String,
    note: String,
    /// Parsed, not yet verified (the origin and keys come from the pass).
    body: Checkpoint,
    /// The host's `checkpoint` file (must carry a current key and not be
    /// older than the last checkpoint record).
    is_file: bool,
}

fn outside_checkpoints(dir: &Path, opts: &Options) -> Result<Vec<Outside>, Failure> {
    let cp_path = dir.join(CHECKPOINT_FILE);
    let mut notes: Vec<(String, String, bool)> = Vec::new();
    match std::fs::read_to_string(&cp_path) {
        Ok(t) => notes.push((cp_path.display().to_string(), t, true)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return fail(None, format!("{}: {e}", cp_path.display())),
    }
    notes.extend(opts.trusted.iter().map(|(l, n)| (l.clone(), n.clone(), false)));
    notes
        .into_iter()
        .map(|(label, note, is_file)| {
            let body = Checkpoint::parse_unverified(&note).or_else(|e| fail(None, format!("{label}: {e}")))?;
            Ok(Outside { label, note, body, is_file })
        })
        .collect()
}

/// One outside checkpoint against the records and the checkpoint records.
fn check_outside(
    o: &Outside,
    st: &State,
    origin: &str,
    records: u64,
    first_index: u64,
    last_record_cp: Option<u64>,
) -> Result<(), Failure> {
    let label = &o.label;
    // The host's checkpoint file must carry a current key; a checkpoint
    // kept elsewhere may predate a rotation.
    let keys = if o.is_file { &st.trusted } else { &st.ever_trusted };
    let (cp, _) = Checkpoint::verify(&o.note, origin, keys).or_else(|e| fail(None, format!("{label}: {e}")))?;
    debug_assert_eq!(cp, o.body);
    if cp.size > records {
        return fail(
            records,
            format!("missing: {label} signs {} records but the log has {records}: the log was truncated or rolled back", cp.size),
        );
    }
    if cp.size < first_index {
        return fail(
            None,
            format!("{label} signs size {} but retention removed records below {first_index}; it cannot be checked", cp.size),
        );
    }
    let root = st.wanted.get(&cp.size).copied().flatten().expect("filled during the pass");
    if root != cp.root {
        if st.signed.get(&cp.size).is_some_and(|r| *r != cp.root) {
            return fail(
                cp.size,
                format!("fork: two different roots signed at size {}: {label} and the checkpoint record {}", cp.size, cp.size),
            );
        }
        return fail(None, format!("the log's root at size {} differs from {label}: records below {} were altered", cp.size, cp.size));
    }
    if o.is_file
        && let Some(k) = last_record_cp.filter(|k| cp.size < *k)
    {
        return fail(
            k,
            format!(
                "{label} signs size {} but record {k} is a later checkpoint: an older checkpoint was put back (size regression)",
                cp.size
            ),
        );
    }
    Ok(())
}

/// Human summary of a successful verification.
pub fn render(dir: &Path, r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "audit log {} (origin {}): INTACT", dir.display(), r.origin);
    let _ = writeln!(s, "  records {}..{} ({} checkpoints verified)", r.first_index, r.records, r.checkpoints);
    if let Some(c) = &r.latest {
        let _ = writeln!(
            s,
            "  latest signed size {} root {}",
            c.size,
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c.root)
        );
    }
    if r.unsigned > 0 {
        let _ = writeln!(s, "  {} records after the last checkpoint are not signed yet", r.unsigned);
    }
    if let Some(t) = &r.torn_tail {
        let _ = writeln!(s, "  torn tail at record {}: {} ({} bytes, never signed; cut at the next start)", t.index, t.reason, t.bytes);
    }
    if r.first_index > 0 {
        let _ = writeln!(s, "  records below {} were deleted by retention", r.first_index);
    }
    for k in &r.trusted_keys {
        let _ = writeln!(s, "  trusted key {k}");
    }
    if r.keys_from_log_dir {
        let _ = writeln!(
            s,
            "  WARNING: keys taken from the log directory's verifier-keys file; pass --vkey for a verification independent of this host"
        );
    }
    s
}

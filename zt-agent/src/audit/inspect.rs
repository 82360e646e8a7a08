//! Reading a log for people and other tools: `zt-agent audit proof`,
//! `consistency`, `show` and `tail`.
//!
//! # Layout
//! - [`load`]: every record and the full tree (proofs need every leaf).
//! - [`inclusion`]: RFC 6962 inclusion proof of one record against the
//!   latest checkpoint; [`consistency`]: proof that the latest checkpoint
//!   extends an earlier one. Both verify their own output before returning.
//! - [`summary`]: one human line per record.
use std::path::{Path, PathBuf};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::Serialize;

use super::{
    checkpoint::{Checkpoint, CheckpointError},
    log::{self, CHECKPOINT_FILE, StartError},
    merkle::{self, ProofError, Tree},
    note::VerifierKey,
    record::Envelope,
    segment::{self, SegmentError},
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("no audit log in {} (no seg-*.log files)", .0.display())]
    NoLog(PathBuf),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{}", path.display())]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("records below {0} were deleted by retention; proofs need the whole log (use an archived copy)")]
    Retained(u64),
    #[error("no checkpoint file: nothing is signed yet")]
    Unsigned,
    #[error(
        "record {index} is not covered by the latest checkpoint (size {size}); it is signed within a second, or the log has {records} records"
    )]
    NotCovered { index: u64, size: u64, records: usize },
    #[error("the log does not match its checkpoint; run `zt-agent audit verify`")]
    Mismatch,
    #[error("computing the proof")]
    Proof(#[from] ProofError),
    #[error("the --from checkpoint")]
    From(#[source] CheckpointError),
    #[error("the --from checkpoint (size {old}) is larger than the log's latest (size {new}): the log was rolled back")]
    RolledBack { old: u64, new: u64 },
    #[error("the log's latest checkpoint does not extend the --from checkpoint: the log was rewritten")]
    Rewritten(#[source] ProofError),
}

/// Every record (bytes) and the tree over them.
pub struct Loaded {
    /// Index of the first record present (records below were deleted by retention).
    pub base: u64,
    pub records: Vec<Vec<u8>>,
    pub tree: Tree,
    pub checkpoint: Option<(Checkpoint, String)>,
    /// A bad frame that ended the last segment early (a torn tail, or
    /// damage: `audit verify` tells which); records after it are not read.
    pub bad_frame: Option<segment::BadFrame>,
}

pub fn load(dir: &Path) -> Result<Loaded, InspectError> {
    let numbers = segment::segments(dir)?;
    if numbers.is_empty() {
        return Err(InspectError::NoLog(dir.to_path_buf()));
    }
    let base = log::read_start(dir, numbers[0])?.size();
    let mut records = Vec::new();
    let mut tree = Tree::new();
    let scan = segment::scan_dir::<SegmentError>(dir, |_, r| {
        tree.push(r);
        records.push(r.to_vec());
        Ok(())
    })?;
    let bad_frame = scan.torn_tail.map(|mut b| {
        b.index += base;
        b
    });
    let cp_path = dir.join(CHECKPOINT_FILE);
    let checkpoint = match std::fs::read_to_string(&cp_path) {
        Ok(note) => {
            let cp = Checkpoint::parse_unverified(&note).map_err(|source| InspectError::Checkpoint { path: cp_path.clone(), source })?;
            Some((cp, note))
        }
        Err(_) => None,
    };
    Ok(Loaded { base, records, tree, checkpoint, bad_frame })
}

/// [`load`], refusing a log whose oldest records retention deleted (the
/// tree over the rest would not be the log's tree).
fn load_whole(dir: &Path) -> Result<Loaded, InspectError> {
    let l = load(dir)?;
    if l.base > 0 {
        return Err(InspectError::Retained(l.base));
    }
    Ok(l)
}

fn b64s(hashes: &[merkle::Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

#[derive(Debug, Serialize)]
pub struct InclusionProof {
    pub index: u64,
    pub leaf_hash: String,
    pub tree_size: u64,
    pub root: String,
    /// Sibling hashes, leaf side first (RFC 6962 §2.1.1).
    pub proof: Vec<String>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
    /// The record itself (canonical JSON).
    pub record: String,
}

/// Proves record `index` is in the tree of the latest checkpoint.
pub fn inclusion(dir: &Path, index: u64) -> Result<InclusionProof, InspectError> {
    let l = load_whole(dir)?;
    let (cp, note) = l.checkpoint.ok_or(InspectError::Unsigned)?;
    if index >= cp.size {
        return Err(InspectError::NotCovered { index, size: cp.size, records: l.records.len() });
    }
    if l.tree.size() < cp.size || l.tree.root_at(cp.size)? != cp.root {
        return Err(InspectError::Mismatch);
    }
    let proof = l.tree.inclusion_proof(index, cp.size)?;
    let leaf = l.tree.leaf(index).expect("index below size");
    merkle::verify_inclusion(&leaf, index, cp.size, &proof, &cp.root)?;
    Ok(InclusionProof {
        index,
        leaf_hash: B64.encode(leaf),
        tree_size: cp.size,
        root: B64.encode(cp.root),
        proof: b64s(&proof),
        checkpoint: note,
        record: String::from_utf8_lossy(&l.records[index as usize]).into_owned(),
    })
}

#[derive(Debug, Serialize)]
pub struct ConsistencyProof {
    pub old_size: u64,
    pub old_root: String,
    pub new_size: u64,
    pub new_root: String,
    /// RFC 6962 §2.1.2 PROOF(old_size, D[0..new_size]).
    pub proof: Vec<String>,
    pub checkpoint: String,
}

/// Proves the latest checkpoint extends `from` (a signed checkpoint note,
/// verified with `keys`).
pub fn consistency(dir: &Path, from: &str, keys: &[VerifierKey]) -> Result<ConsistencyProof, InspectError> {
    let l = load_whole(dir)?;
    let (cp, note) = l.checkpoint.ok_or(InspectError::Unsigned)?;
    let (old, _) = Checkpoint::verify(from, &cp.origin, keys).map_err(InspectError::From)?;
    if old.size > cp.size {
        return Err(InspectError::RolledBack { old: old.size, new: cp.size });
    }
    let proof = l.tree.consistency_proof(old.size, cp.size)?;
    merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(InspectError::Rewritten)?;
    Ok(ConsistencyProof {
        old_size: old.size,
        old_root: B64.encode(old.root),
        new_size: cp.size,
        new_root: B64.encode(cp.root),
        proof: b64s(&proof),
        checkpoint: note,
    })
}

/// One line for a person: `idx time kind what`.
pub fn summary(rec: &[u8]) -> String {
    let Ok(e) = Envelope::decode(rec) else { return format!("? {}", String::from_utf8_lossy(rec)) };
    let p = &e.payload;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let what = match e.kind.as_str() {
        "connect" => format!(
            "{} {} {} -> {}:{}/{} rule {} (x{})",
            s(&p["connect"]["action"]),
            s(&p["identity"]["name"]),
            p["process"]["pid"],
            s(&p["connect"]["address"]),
            p["connect"]["port"],
            s(&p["connect"]["protocol"]),
            s(&p["connect"]["rule"]),
            p["connect"]["repeats"]
        ),
        "policy" => {
            format!("{} v{} {} {}", s(&p["policy"]["action"]), p["policy"]["version"], s(&p["policy"]["source"]), s(&p["policy"]["digest"]))
        }
        "agent" => format!("{} {}", s(&p["agent"]["state"]), p["agent"]["reason"].as_str().unwrap_or("")),
        "checkpoint" => format!("size {} root {}", p["size"], s(&p["root"])),
        _ => {
            let mut c = Vec::new();
            super::record::canonical(p, &mut c);
            String::from_utf8_lossy(&c).chars().take(160).collect()
        }
    };
    format!("{:>8} {} {:<16} {}", e.idx, e.time, e.kind, what)
}

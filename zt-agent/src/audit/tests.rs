//! The log end to end, in-process: write, reopen, recover, and the
//! adversarial cases of the audit issue, each failing verification with the
//! index and reason it must.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::json;

use super::{
    log::{AuditLog, CHECKPOINT_FILE, Config, LogError, OpenError},
    merkle::{self, Tree},
    note::{Signer, VerifierKey},
    segment,
    verify::{Failure, Options, Report, verify_dir},
};

const ORIGIN: &str = "zt-agent/test-node";

/// A private directory holding a log directory (created by the log) and its
/// key; removed on drop.
struct Tmp(tempfile::TempDir);
impl Tmp {
    fn new(name: &str) -> Self {
        Tmp(tempfile::Builder::new().prefix(&format!("zt-audit-{name}-")).tempdir().unwrap())
    }
    fn log(&self) -> PathBuf {
        self.0.path().join("log")
    }
    fn key(&self) -> PathBuf {
        self.0.path().join("audit.key")
    }
    fn config(&self) -> Config {
        let mut c = Config::new(self.log(), self.key(), ORIGIN.into());
        // Tests drive checkpoints explicitly.
        c.checkpoint_interval = Duration::from_secs(3600);
        c.heartbeat = Duration::from_secs(3600);
        c
    }
}

/// Appends `n` events with a checkpoint after every `every`; returns the key.
fn write(cfg: &Config, n: u64, every: u64) -> VerifierKey {
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    for i in 0..n {
        log.append("connect", json!({"n": i, "action": "denied", "pad": "x".repeat((i % 40) as usize)})).unwrap();
        if (i + 1) % every == 0 {
            log.checkpoint().unwrap();
        }
    }
    let key = log.verifier_keys()[0].clone();
    log.close().unwrap();
    key
}

fn verify(dir: &Path, key: &VerifierKey) -> Result<Report, Failure> {
    verify_dir(dir, &Options { keys: vec![key.clone()], trusted: vec![] })
}

fn verify_trusting(dir: &Path, key: &VerifierKey, trusted: &str) -> Result<Report, Failure> {
    verify_dir(dir, &Options { keys: vec![key.clone()], trusted: vec![("trusted.cp".into(), trusted.into())] })
}

/// Every record of the log, in order.
fn records(dir: &Path) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    segment::scan_dir::<segment::SegmentError>(dir, |_, r| {
        v.push(r.to_vec());
        Ok(())
    })
    .unwrap();
    v
}

fn frame(rec: &[u8]) -> Vec<u8> {
    let mut f = (rec.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&crc32c::crc32c(rec).to_le_bytes());
    f.extend_from_slice(rec);
    f
}

/// Rewrites the (single-segment) log with these records, framed correctly.
fn rewrite(dir: &Path, recs: &[Vec<u8>]) {
    let bytes: Vec<u8> = recs.iter().flat_map(|r| frame(r)).collect();
    std::fs::write(segment::segment_path(dir, 1), bytes).unwrap();
}

fn index_of(dir: &Path, needle: &str) -> usize {
    records(dir).iter().position(|r| String::from_utf8_lossy(r).contains(needle)).unwrap()
}

#[test]
fn intact_log_verifies_and_reopens() {
    let t = Tmp::new("intact");
    let key = write(&t.config(), 100, 10);
    // 100 events + 10 checkpoints + 1 final checkpoint.
    let r = verify(&t.log(), &key).unwrap();
    assert_eq!((r.records, r.checkpoints, r.unsigned, r.first_index), (111, 11, 1, 0));
    assert_eq!(r.latest.unwrap().size, 110);
    // Reopen: nothing to recover; records continue at 111.
    let (mut log, rep) = AuditLog::open(t.config()).unwrap();
    assert_eq!((rep.records, rep.signed_size, rep.key_created, rep.recovered.is_none()), (111, 110, false, true));
    // One writer per directory.
    let Err(OpenError::Log(e @ LogError::Locked { .. })) = AuditLog::open(t.config()) else { panic!("second writer allowed") };
    assert!(e.to_string().contains("is in use by another writer"), "{e}");
    // Nothing to unlink that would let a second writer in (the directory
    // itself is locked; a `lock` file once was, and `rm` defeated it).
    let _ = std::fs::remove_file(t.log().join("lock"));
    assert!(matches!(AuditLog::open(t.config()), Err(OpenError::Log(LogError::Locked { .. }))), "second writer allowed");
    assert_eq!(log.append("policy", json!({})).unwrap(), 111);
    log.close().unwrap();
    assert_eq!(verify(&t.log(), &key).unwrap().checkpoints, 12);
    // Without --vkey the log's own verifier-keys file is used (and said so).
    let r = verify_dir(&t.log(), &Options { keys: vec![], trusted: vec![] }).unwrap();
    assert!(r.keys_from_log_dir);
}

#[test]
fn records_are_canonical_json_lines_with_the_envelope() {
    let t = Tmp::new("envelope");
    write(&t.config(), 3, 100);
    let recs = records(&t.log());
    let first: serde_json::Value = serde_json::from_slice(&recs[0]).unwrap();
    assert_eq!(first["idx"], 0);
    assert_eq!(first["origin"], ORIGIN);
    assert_eq!(first["kind"], "connect");
    assert_eq!(first["v"], 1);
    assert!(first["mono_ns"].as_u64().unwrap() > 0);
    assert_eq!(first["boot_id"].as_str().unwrap(), crate::host::boot_id());
    let mut canon = Vec::new();
    super::record::canonical(&first, &mut canon);
    assert_eq!(canon, recs[0], "stored bytes are the canonical form");
    let cp: serde_json::Value = serde_json::from_slice(&recs[3]).unwrap();
    assert_eq!((cp["kind"].as_str(), cp["payload"]["size"].as_u64()), (Some("checkpoint"), Some(3)));
    assert!(recs.iter().all(|r| !r.contains(&b'\n')));
}

#[test]
fn flipped_byte_fails_at_its_index() {
    let t = Tmp::new("flip");
    let key = write(&t.config(), 50, 10);
    let victim = index_of(&t.log(), "\"n\":17,");
    let path = segment::segment_path(&t.log(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let off = records(&t.log())[..victim].iter().map(|r| r.len() + 8).sum::<usize>() + 8 + 20;
    bytes[off] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(victim as u64));
    assert!(e.reason.starts_with("checksum mismatch (") && e.reason.ends_with("), below the signed size 55"), "{e}");
    // The agent refuses to continue on it, and leaves the evidence as found.
    let before = std::fs::read(&path).unwrap();
    let Err(OpenError::Integrity { reason, .. }) = AuditLog::open(t.config()) else { panic!("opened a tampered log") };
    assert!(reason.starts_with(&format!("record {victim} (")) && reason.contains("checksum mismatch"), "{reason}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn altered_record_with_valid_checksum_fails_at_the_next_checkpoint() {
    let t = Tmp::new("alter");
    let key = write(&t.config(), 50, 10);
    let mut recs = records(&t.log());
    let victim = index_of(&t.log(), "\"n\":17,");
    recs[victim] = String::from_utf8(recs[victim].clone()).unwrap().replace("denied", "allowd").into_bytes();
    rewrite(&t.log(), &recs);
    let e = verify(&t.log(), &key).unwrap_err();
    // Events 10..19 sit at records 11..20; the checkpoint after them is record 21.
    assert_eq!(e.to_string(), "record 21: the signed root at size 21 does not match the records: a record in 10..21 was altered");
}

#[test]
fn deleted_and_reframed_record_fails_at_its_index() {
    let t = Tmp::new("delete");
    let key = write(&t.config(), 30, 10);
    let mut recs = records(&t.log());
    recs.remove(5);
    rewrite(&t.log(), &recs);
    assert_eq!(
        verify(&t.log(), &key).unwrap_err().to_string(),
        "record 5: its idx field says 6: records were deleted, inserted or reordered"
    );
    assert!(matches!(AuditLog::open(t.config()), Err(OpenError::Integrity { .. })));
}

#[test]
fn swapped_records_fail_at_the_first() {
    let t = Tmp::new("swap");
    let key = write(&t.config(), 30, 10);
    let mut recs = records(&t.log());
    recs.swap(3, 7);
    rewrite(&t.log(), &recs);
    assert_eq!(
        verify(&t.log(), &key).unwrap_err().to_string(),
        "record 3: its idx field says 7: records were deleted, inserted or reordered"
    );
}

#[test]
fn truncation_below_the_last_checkpoint_is_detected() {
    let t = Tmp::new("truncate");
    let key = write(&t.config(), 30, 10);
    let recs = records(&t.log());
    assert_eq!(recs.len(), 34);
    rewrite(&t.log(), &recs[..20]);
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(20));
    assert!(
        e.reason.starts_with(&format!("missing: {} signs 33 records but the log has 20", t.log().join(CHECKPOINT_FILE).display())),
        "{e}"
    );
    let Err(OpenError::Integrity { reason, .. }) = AuditLog::open(t.config()) else { panic!() };
    assert_eq!(reason, "the log has 20 records but its last signed checkpoint covers 33: records 20..33 were removed");
}

#[test]
fn a_log_signed_by_another_key_fails() {
    let t = Tmp::new("otherkey");
    let key = write(&t.config(), 10, 5);
    // The whole log replaced by one with the same origin and another key.
    let other = Tmp::new("otherkey2");
    let mut cfg = other.config();
    cfg.dir = t.log();
    std::fs::remove_dir_all(t.log()).unwrap();
    let other_key = write(&cfg, 10, 5);
    assert_eq!(other_key.name, key.name);
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(5));
    assert_eq!(e.reason, format!("checkpoint: no signature by a trusted key (signed by: {ORIGIN}+{})", hex(&other_key.id)));
}

#[test]
fn a_key_with_the_same_name_but_other_bytes_is_not_trusted() {
    let t = Tmp::new("samename");
    write(&t.config(), 10, 5);
    let impostor = Signer::from_pkcs8(ORIGIN, &Signer::generate_pkcs8().unwrap()).unwrap().verifier_key();
    let e = verify(&t.log(), &impostor).unwrap_err();
    assert_eq!(e.index, Some(5));
    assert!(e.reason.starts_with("checkpoint: no signature by a trusted key (signed by: zt-agent/test-node+"), "{e}");
    // A verifier key string with the name kept and the key bytes swapped does not even parse.
    let real = super::keys::read_verifier_keys(&t.log().join("verifier-keys")).unwrap()[0].to_string();
    let part = |k: &str, i: usize| k.splitn(3, '+').nth(i).unwrap().to_string();
    let swapped = format!("{}+{}+{}", part(&real, 0), part(&real, 1), part(&impostor.to_string(), 2));
    assert!(VerifierKey::parse(&swapped).unwrap_err().to_string().contains("key id does not match"));
}

#[test]
fn an_old_checkpoint_put_back_is_a_size_regression() {
    let t = Tmp::new("replay");
    let cfg = t.config();
    let key = write(&cfg, 10, 5);
    let old = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    log.append("policy", json!({})).unwrap();
    log.close().unwrap();
    std::fs::write(t.log().join(CHECKPOINT_FILE), &old).unwrap();
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(14));
    assert!(
        e.reason.ends_with("signs size 12 but record 14 is a later checkpoint: an older checkpoint was put back (size regression)"),
        "{e}"
    );
    let Err(OpenError::Integrity { reason, .. }) = AuditLog::open(cfg.clone()) else { panic!("opened with a replayed checkpoint") };
    assert!(reason.ends_with("signs size 12 but record 14 is a later checkpoint: an older checkpoint file was put back"), "{reason}");
    // Deleting the checkpoint file (to truncate and continue) is refused as well.
    std::fs::remove_file(t.log().join(CHECKPOINT_FILE)).unwrap();
    let Err(OpenError::Integrity { reason, .. }) = AuditLog::open(cfg) else { panic!("opened without the checkpoint file") };
    assert!(reason.ends_with("is missing but record 14 is a signed checkpoint: the checkpoint file was deleted"), "{reason}");
    // ... and the verifier says the same (it once said INTACT).
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(14));
    assert!(e.reason.ends_with("is missing but record 14 is a signed checkpoint: the checkpoint file was deleted"), "{e}");
}

#[test]
fn a_rolled_back_log_fails_against_a_trusted_checkpoint() {
    let t = Tmp::new("rollback");
    let cfg = t.config();
    let key = write(&cfg, 10, 5);
    let snapshot = Tmp::new("rollback-copy");
    copy_dir(&t.log(), &snapshot.log());
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    for _ in 0..5 {
        log.append("policy", json!({})).unwrap();
    }
    log.close().unwrap();
    // The SIEM kept the newest checkpoint; the host's log is put back to the snapshot.
    let trusted = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    assert!(verify_trusting(&t.log(), &key, &trusted).is_ok());
    let e = verify_trusting(&snapshot.log(), &key, &trusted).unwrap_err();
    assert_eq!(e.index, Some(13));
    assert_eq!(e.reason, "missing: trusted.cp signs 18 records but the log has 13: the log was truncated or rolled back");
}

#[test]
fn two_roots_signed_at_one_size_are_fork_evidence() {
    let t = Tmp::new("fork");
    let cfg = t.config();
    let key = write(&cfg, 10, 5);
    let fork = Tmp::new("fork-b");
    copy_dir(&t.log(), &fork.log());
    let mut cfg_b = cfg.clone();
    cfg_b.dir = fork.log();
    for (c, word) in [(&cfg, "one"), (&cfg_b, "two")] {
        let (mut log, _) = AuditLog::open(c.clone()).unwrap();
        log.append("policy", json!({ "version": word })).unwrap();
        log.close().unwrap();
    }
    let cp_a = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    let cp_b = std::fs::read_to_string(fork.log().join(CHECKPOINT_FILE)).unwrap();
    assert_ne!(cp_a, cp_b);
    let e = verify_trusting(&fork.log(), &key, &cp_a).unwrap_err();
    assert_eq!(e.to_string(), "record 14: fork: two different roots signed at size 14: trusted.cp and the checkpoint record 14");
}

#[test]
fn torn_tail_is_cut_recorded_and_signed_records_survive() {
    let t = Tmp::new("torn");
    let key = write(&t.config(), 10, 5);
    // A crash mid-write: a partial frame after the last checkpoint.
    let path = segment::segment_path(&t.log(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&frame(b"{\"idx\":13}")[..9]);
    std::fs::write(&path, &bytes).unwrap();
    let r = verify(&t.log(), &key).unwrap();
    assert_eq!(r.torn_tail.as_ref().unwrap().index, 13);
    let (log, rep) = AuditLog::open(t.config()).unwrap();
    let cut = rep.recovered.unwrap();
    assert_eq!((cut.index, cut.bytes, cut.reason.as_str()), (13, 9, "truncated record (1 of 10 bytes)"));
    log.close().unwrap();
    let r = verify(&t.log(), &key).unwrap();
    assert!(r.torn_tail.is_none());
    let rec: serde_json::Value = serde_json::from_slice(&records(&t.log())[13]).unwrap();
    assert_eq!(rec["kind"], "recovery");
    assert_eq!(rec["payload"]["bytes_dropped"], 9);
    assert_eq!(rec["payload"]["signed_size"], 12);
}

#[test]
fn oversize_frames_fail_and_oversize_payloads_go_by_digest() {
    let t = Tmp::new("oversize");
    let cfg = t.config();
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    let idx = log.append("policy", json!({"text": "y".repeat(70_000)})).unwrap();
    log.append("policy", json!({})).unwrap();
    let key = log.verifier_keys()[0].clone();
    log.close().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&records(&t.log())[idx as usize]).unwrap();
    assert!(rec["payload"]["oversize"]["bytes"].as_u64().unwrap() > 70_000);
    assert_eq!(rec["payload"]["oversize"]["blake3"].as_str().unwrap().len(), 64);
    verify(&t.log(), &key).unwrap();
    // A frame claiming 70,000 bytes in place of a signed record.
    let recs = records(&t.log());
    let mut recs_bytes = frame(&recs[0]);
    let mut bad = 70_000u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0; 4]);
    recs_bytes.extend_from_slice(&bad);
    recs_bytes.extend_from_slice(&frame(&recs[2]));
    std::fs::write(segment::segment_path(&t.log(), 1), &recs_bytes).unwrap();
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(1));
    assert!(e.reason.starts_with("frame length 70000 exceeds 65535") && e.reason.ends_with("below the signed size 2"), "{e}");
}

#[test]
fn empty_tree() {
    let t = Tmp::new("empty");
    std::fs::create_dir_all(t.log()).unwrap();
    let e = verify_dir(&t.log(), &Options { keys: vec![], trusted: vec![] }).unwrap_err();
    assert_eq!(e.to_string(), format!("no audit log in {} (no seg-*.log files)", t.log().display()));
    // Opened and closed with nothing in it: one checkpoint of the empty tree.
    let (log, _) = AuditLog::open(t.config()).unwrap();
    let key = log.verifier_keys()[0].clone();
    let cp = log.close().unwrap();
    assert_eq!((cp.size, cp.root), (0, merkle::EMPTY_ROOT));
    let r = verify(&t.log(), &key).unwrap();
    assert_eq!((r.records, r.checkpoints), (1, 1));
}

#[test]
fn key_rotation_is_followed_by_a_verifier_that_knows_only_the_old_key() {
    let t = Tmp::new("rotate");
    let cfg = t.config();
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    let old = log.verifier_keys()[0].clone();
    log.append("policy", json!({})).unwrap();
    log.checkpoint().unwrap();
    let before_rotation = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    let new = log.rotate_key(Duration::from_millis(200)).unwrap();
    assert_eq!(log.verifier_keys().len(), 2, "both sign during the overlap");
    let note = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(note.matches('\u{2014}').count(), 2);
    std::thread::sleep(Duration::from_millis(250));
    assert!(log.tick().unwrap());
    assert_eq!(log.verifier_keys(), vec![new.clone()]);
    log.append("policy", json!({})).unwrap();
    log.close().unwrap();
    assert!(!super::keys::next_path(&t.key()).exists());
    let note = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(note.matches('\u{2014}').count(), 1);
    // Trusting only the old key, the verifier learns the new one from the log,
    // and still accepts a checkpoint kept from before the rotation.
    let r = verify_trusting(&t.log(), &old, &before_rotation).unwrap();
    assert_eq!(r.trusted_keys, vec![new.to_string()], "the retired key is no longer trusted");
    // Trusting only the new key, the first checkpoints (old key alone) fail.
    let e = verify(&t.log(), &new).unwrap_err();
    assert_eq!(e.index, Some(1));
    // The agent restarts with the new key in place.
    let (log, rep) = AuditLog::open(cfg).unwrap();
    assert_eq!(rep.verifier_keys, vec![new]);
    log.close().unwrap();
}

#[test]
fn retention_deletes_signed_segments_and_records_it() {
    let t = Tmp::new("retention");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    cfg.retain_bytes = Some(12_000);
    let key = write(&cfg, 400, 20);
    let segs = segment::segments(&t.log()).unwrap();
    assert!(segs[0] > 1, "old segments deleted: {segs:?}");
    let total: u64 = segs.iter().map(|n| std::fs::metadata(segment::segment_path(&t.log(), *n)).unwrap().len()).sum();
    assert!(total <= 12_000 + 4096, "{total}");
    let r = verify(&t.log(), &key).unwrap();
    assert!(r.first_index > 0);
    let retention: Vec<serde_json::Value> = records(&t.log())
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap())
        .filter(|v| v["kind"] == "retention")
        .collect();
    assert!(!retention.is_empty());
    // The latest retention record names the segment just below what is left.
    let deleted = retention.last().unwrap()["payload"]["deleted"].as_array().unwrap().clone();
    let last = deleted.last().unwrap();
    assert_eq!(last["end_index"].as_u64(), Some(r.first_index));
    assert_eq!(last["segment"].as_str().unwrap(), format!("seg-{:08}.log", segs[0] - 1));
    assert!(deleted.iter().all(|d| d["first_index"].as_u64() < d["end_index"].as_u64()));
    // Reopen resumes from the start file of the oldest segment.
    let (log, rep) = AuditLog::open(cfg).unwrap();
    assert_eq!(rep.records, r.records);
    log.close().unwrap();
    verify(&t.log(), &key).unwrap();
}

/// Deleting the oldest segment by hand (or all of them up to some point)
/// leaves a start file that says where the log now begins; without a
/// signed `retention` record for the missing range, the verifier and the
/// agent both call it what it is.
#[test]
fn segments_deleted_outside_retention_are_a_violation() {
    let t = Tmp::new("unretained");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    let key = write(&cfg, 200, 20);
    let segs = segment::segments(&t.log()).unwrap();
    assert!(segs.len() > 3, "{segs:?}");
    verify(&t.log(), &key).unwrap();
    std::fs::remove_file(segment::segment_path(&t.log(), segs[0])).unwrap();
    let first = super::log::read_start(&t.log(), segs[1]).unwrap().size();
    let e = verify(&t.log(), &key).unwrap_err();
    assert_eq!(e.index, Some(0));
    assert_eq!(
        e.reason,
        format!("records 0..{first} are missing and no signed retention record covers them: segments were deleted outside retention")
    );
    let err = AuditLog::open(cfg.clone()).err().expect("the agent refuses it too");
    assert!(err.to_string().contains(&format!("records 0..{first} are missing")), "{err}");

    // With retention, the same shape verifies: each run's record is signed before it deletes.
    let t = Tmp::new("retained");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    cfg.retain_bytes = Some(8192);
    let key = write(&cfg, 400, 20);
    let r = verify(&t.log(), &key).unwrap();
    assert!(r.first_index > 0);
    AuditLog::open(cfg).unwrap();
}

#[test]
fn checkpoints_and_proofs_verify_with_independent_implementations() {
    let t = Tmp::new("independent");
    let key = write(&t.config(), 37, 8);
    let note = std::fs::read_to_string(t.log().join(CHECKPOINT_FILE)).unwrap();
    // The note, by the signed_note crate (C2SP reference semantics).
    signed_note_verifies(&note, &key);
    // The root, by ct-merkle over the same leaves.
    let recs = records(&t.log());
    let cp = super::checkpoint::Checkpoint::verify(&note, ORIGIN, std::slice::from_ref(&key)).unwrap().0;
    let mut ct = ct_merkle::mem_backed_tree::MemoryBackedTree::<sha2::Sha256, Vec<u8>>::new();
    for r in &recs[..cp.size as usize] {
        ct.push(r.clone());
    }
    assert_eq!(ct.root().as_bytes().as_slice(), cp.root);
    let mut tree = Tree::new();
    for r in &recs {
        tree.push(r);
    }
    let proof = tree.inclusion_proof(7, cp.size).unwrap();
    merkle::verify_inclusion(&merkle::leaf_hash(&recs[7]), 7, cp.size, &proof, &cp.root).unwrap();
    let ct_proof = ct.prove_inclusion(7);
    let flat: Vec<u8> = proof.iter().flatten().copied().collect();
    assert_eq!(ct_proof.as_bytes(), flat.as_slice());
}

fn signed_note_verifies(note: &str, key: &VerifierKey) {
    use signed_note::{Note, StandardVerifier, VerifierList};
    let v = StandardVerifier::new(&key.to_string()).unwrap();
    let n = Note::from_bytes(note.as_bytes()).unwrap();
    let (verified, _) = n.verify(&VerifierList::new(vec![Box::new(v)])).unwrap();
    assert_eq!(verified.len(), 1);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn cadence_checkpoints_waiting_records_and_heartbeats_when_idle() {
    let t = Tmp::new("cadence");
    let mut cfg = t.config();
    cfg.checkpoint_interval = Duration::from_millis(50);
    cfg.checkpoint_records = 3;
    cfg.heartbeat = Duration::from_millis(200);
    let (mut log, _) = AuditLog::open(cfg).unwrap();
    assert!(!log.tick().unwrap(), "nothing waiting, heartbeat not due");
    for _ in 0..3 {
        log.append("policy", json!({})).unwrap();
    }
    assert!(log.tick().unwrap(), "N records waiting: checkpoint at once");
    assert_eq!(log.last_checkpoint().unwrap().size, 3);
    log.append("policy", json!({})).unwrap();
    assert!(!log.tick().unwrap(), "one record, interval not over");
    std::thread::sleep(Duration::from_millis(60));
    assert!(log.tick().unwrap(), "interval over");
    assert_eq!(log.last_checkpoint().unwrap().size, 5);
    assert!(!log.tick().unwrap(), "only the checkpoint record waits: no new checkpoint before the heartbeat");
    std::thread::sleep(Duration::from_millis(210));
    assert!(log.tick().unwrap(), "heartbeat");
    assert_eq!(log.last_checkpoint().unwrap().size, 6, "the heartbeat covers the previous checkpoint record");
    let key = log.verifier_keys()[0].clone();
    log.close().unwrap();
    assert_eq!(verify(&t.log(), &key).unwrap().checkpoints, 4);
}

#[test]
fn an_unrecorded_incoming_key_is_dropped_at_start() {
    let t = Tmp::new("rotate-crash");
    let key = write(&t.config(), 3, 10);
    // A crash right after creating `<key>.next`, before the rotation record.
    super::keys::write_new(&super::keys::next_path(&t.key()), ORIGIN).unwrap();
    let (log, rep) = AuditLog::open(t.config()).unwrap();
    assert_eq!(rep.verifier_keys, vec![key.clone()]);
    assert!(!super::keys::next_path(&t.key()).exists());
    log.close().unwrap();
    assert_eq!(super::keys::read_verifier_keys(&t.log().join("verifier-keys")).unwrap(), vec![key.clone()]);
    verify(&t.log(), &key).unwrap();
}

/// A segment swapped for a symlink is never written through.
#[test]
fn segments_are_not_followed_through_symlinks() {
    let t = Tmp::new("symlink-seg");
    let (mut log, _) = AuditLog::open(t.config()).unwrap();
    log.append("policy", json!({})).unwrap();
    log.close().unwrap();
    let seg =
        std::fs::read_dir(t.log()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "log")).max().unwrap();
    let elsewhere = t.log().with_file_name("elsewhere.log");
    std::fs::rename(&seg, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &seg).unwrap();
    let before = std::fs::read(&elsewhere).unwrap();
    assert!(AuditLog::open(t.config()).is_err(), "opened a log whose segment is a symlink");
    assert_eq!(std::fs::read(&elsewhere).unwrap(), before, "nothing written through the link");
}

/// Records adopted from an unsigned tail after an unclean stop (no final
/// checkpoint) are named in a `recovery` record with the time of the last
/// one, instead of being signed as if nothing happened; a clean close
/// leaves no recovery record.
#[test]
fn an_unclean_stop_leaves_a_recovery_record() {
    let t = Tmp::new("unclean");
    let (mut log, _) = AuditLog::open(t.config()).unwrap();
    log.append("policy", json!({})).unwrap();
    log.close().unwrap();
    let (mut log, _) = AuditLog::open(t.config()).unwrap();
    assert!(!records(&t.log()).iter().any(|r| String::from_utf8_lossy(r).contains("\"kind\":\"recovery\"")), "clean close: no recovery");
    log.append("connect", json!({"n": 1})).unwrap();
    log.append("connect", json!({"n": 2})).unwrap();
    log.sync().unwrap();
    drop(log); // as kill -9: durable, never signed
    let (log, rep) = AuditLog::open(t.config()).unwrap();
    assert_eq!((rep.records, rep.signed_size), (4, 1));
    log.close().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&records(&t.log())[4]).unwrap();
    assert_eq!(rec["kind"], "recovery");
    assert_eq!(rec["payload"]["unclean_stop"], true);
    assert_eq!(rec["payload"]["adopted"], json!({"from": 2, "to": 4}), "records 2 and 3 were never signed");
    assert!(rec["payload"]["last_record_time"].is_string(), "{rec}");
}

/// A stop right after a periodic checkpoint is unclean too: only the
/// checkpoint a close writes (`"closed": true`) ends a log cleanly.
#[test]
fn a_stop_right_after_a_periodic_checkpoint_is_unclean() {
    let t = Tmp::new("unclean-cp");
    let (mut log, _) = AuditLog::open(t.config()).unwrap();
    log.append("policy", json!({})).unwrap();
    log.checkpoint().unwrap();
    drop(log); // as kill -9, the log ending with a checkpoint
    let (log, _) = AuditLog::open(t.config()).unwrap();
    log.close().unwrap();
    let recs = records(&t.log());
    let recovery = recs.iter().map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap()).find(|r| r["kind"] == "recovery");
    assert_eq!(recovery.expect("a recovery record")["payload"]["unclean_stop"], true);
    let last: serde_json::Value = serde_json::from_slice(recs.last().unwrap()).unwrap();
    assert_eq!((last["kind"].as_str(), last["payload"]["closed"].as_bool()), (Some("checkpoint"), Some(true)));
}

/// Every record once, in order, from any index, across segments, while the
/// log is still being written.
#[test]
fn a_tail_reads_from_any_index_across_segments_as_records_arrive() {
    use super::tail::Tail;
    let t = Tmp::new("tail");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    write(&cfg, 120, 40);
    let all = records(&t.log());
    assert!(segment::segments(&t.log()).unwrap().len() > 3, "several segments");
    for from in [0, 1, 57, all.len() as u64 - 1, all.len() as u64] {
        let (mut tail, gap) = Tail::open(&t.log(), from).unwrap();
        assert_eq!((gap, tail.next_index()), (None, from));
        let mut got = Vec::new();
        while tail.read(7, &mut got).unwrap() > 0 {}
        assert_eq!(got.len() as u64, all.len() as u64 - from, "from {from}");
        for (i, rec) in &got {
            assert_eq!(rec, &all[*i as usize], "record {i} from {from}");
        }
    }
    // Records appended later (into new segments) are read as they come.
    let (mut tail, _) = Tail::open(&t.log(), all.len() as u64).unwrap();
    let (mut log, _) = AuditLog::open(cfg).unwrap();
    let mut got = Vec::new();
    for i in 0..100 {
        log.append("connect", json!({"later": i, "pad": "y".repeat(100)})).unwrap();
        log.tick().unwrap();
        tail.read(1000, &mut got).unwrap();
    }
    log.close().unwrap();
    while tail.read(1000, &mut got).unwrap() > 0 {}
    let now = records(&t.log());
    assert!(got.len() >= 100, "{}", got.len());
    for (i, rec) in &got {
        assert_eq!(rec, &now[*i as usize], "record {i}");
    }
    assert_eq!(tail.next_index(), now.len() as u64);
}

#[test]
fn a_tail_reports_what_retention_deleted_and_names_corruption() {
    use super::tail::{Tail, TailError};
    let t = Tmp::new("tail-gap");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    cfg.retain_bytes = Some(12_000);
    write(&cfg, 400, 20);
    let first = segment::segments(&t.log()).unwrap()[0];
    let oldest = super::log::read_start(&t.log(), first).unwrap().size();
    assert!(oldest > 0);
    let (tail, gap) = Tail::open(&t.log(), 3).unwrap();
    assert_eq!((gap, tail.next_index()), (Some((3, oldest)), oldest));

    // A flipped byte in a finished segment: an error at its index, not a skip.
    let seg = segment::segment_path(&t.log(), first);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8 + 5] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();
    let (mut tail, _) = Tail::open(&t.log(), oldest).unwrap();
    let started = std::time::Instant::now();
    let err = loop {
        match tail.read(10, &mut Vec::new()) {
            Err(e) => break e,
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(10), "the bad frame was never reported"),
        }
    };
    match err {
        TailError::Corrupt { index, offset, reason, .. } => assert_eq!((index, offset, reason.as_str()), (oldest, 0, "checksum mismatch")),
        e => panic!("{e}"),
    }
}

/// Retention that deletes records a reader (a SIEM destination) has not
/// had says so in its signed record: which reader, which range.
#[test]
fn retention_records_what_a_reader_had_not_received() {
    let t = Tmp::new("retention-readers");
    let mut cfg = t.config();
    cfg.segment_bytes = 4096;
    cfg.retain_bytes = Some(12_000);
    cfg.readers.set("siem-a", 5);
    cfg.readers.set("siem-b", 1_000_000);
    write(&cfg, 400, 20);
    let retention: Vec<serde_json::Value> = records(&t.log())
        .iter()
        .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap())
        .filter(|v| v["kind"] == "retention")
        .collect();
    let first = &retention[0]["payload"];
    let below = first["deleted_below"].as_u64().unwrap();
    assert_eq!(first["undelivered"], json!([{"destination": "siem-a", "from": 5, "to": below}]), "only the reader behind");
}

//! Root tests of the audit log on a full disk (a small tmpfs, filled for
//! real): a write cut short in the middle of a frame, a checkpoint file
//! that cannot be replaced, a segment that cannot be started, and the
//! running agent with denials streaming in. In every case nothing torn is
//! left on disk, nothing is signed that is not durable, every refused
//! record is counted and reported in a `loss` record once space returns,
//! and the log then verifies and reopens without a violation.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use zt_agent::audit::{
    log::{AuditLog, CHECKPOINT_FILE, Config, LogError},
    record::Envelope,
    segment::{self, SegmentError},
    verify,
};
use zt_tests::*;

/// A log in `fs` (its key outside, so a full log cannot cost the key),
/// retrying at once when faulted.
fn config(fs: &Tmpfs, key_dir: &Path) -> Config {
    let mut c = Config::new(fs.path().join("log"), key_dir.join("audit.key"), "test/full-disk".into());
    c.retry_interval = Duration::ZERO;
    c
}

/// About 1 KiB.
fn record(i: usize) -> Value {
    json!({"n": i, "pad": "x".repeat(900)})
}

/// What the segments hold: whole frames, and a torn tail if any.
fn on_disk(dir: &Path) -> segment::Scan {
    segment::scan_dir::<SegmentError>(dir, |_, _| Ok(())).unwrap()
}

fn envelopes(dir: &Path) -> Vec<Envelope> {
    let mut v = Vec::new();
    segment::scan_dir::<SegmentError>(dir, |_, r| {
        v.push(Envelope::decode(r).unwrap());
        Ok(())
    })
    .unwrap();
    v
}

fn verify_intact(dir: &Path) -> verify::Report {
    verify::verify_dir(dir, &verify::Options { keys: vec![], trusted: vec![] }).unwrap_or_else(|f| panic!("verify: {f}"))
}

/// Frees `bytes` of the filler file.
fn free(filler: &Path, bytes: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(filler).unwrap();
    f.set_len(f.metadata().unwrap().len() - bytes).unwrap();
}

fn is_enospc(e: &LogError) -> bool {
    zt_agent::error::chain(e).contains("No space left on device")
}

#[test]
#[ignore = "needs root (mounts a small tmpfs): cargo xtask test runs it"]
fn enospc_mid_frame_leaves_no_torn_bytes_and_the_loss_is_reported() {
    if !require_root("enospc_mid_frame_leaves_no_torn_bytes_and_the_loss_is_reported") {
        return;
    }
    let fs = Tmpfs::mount("audit-midframe", 1 << 20).unwrap();
    let keys = tempdir("audit-midframe-key").unwrap();
    let cfg = config(&fs, keys.path());
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    for i in 0..20 {
        log.append("test", record(i)).unwrap();
    }
    log.checkpoint().unwrap();
    let signed_note = std::fs::read(cfg.dir.join(CHECKPOINT_FILE)).unwrap();

    // Full, then one page free: writing 20 KiB is cut short inside a frame.
    let filler = fs.fill("filler").unwrap();
    free(&filler, 4096);
    for i in 20..40 {
        log.append("test", record(i)).unwrap();
    }
    let err = log.sync().unwrap_err();
    assert!(is_enospc(&err), "{}", zt_agent::error::chain(&err));
    let disk = on_disk(&cfg.dir);
    assert_eq!(disk.torn_tail, None, "a short write left part of a frame on disk");
    let fault = log.fault().expect("the log is faulted");
    assert_eq!(disk.records + fault.buffered, log.size(), "the tree is exactly the frames on disk plus the buffered ones");
    assert!(fault.buffered > 0);

    // Refused meanwhile, and counted; nothing signed; still nothing torn.
    for _ in 0..7 {
        assert!(matches!(log.append("connect", json!({"denied": true})), Err(LogError::Unwritable { .. })));
    }
    assert_eq!(log.fault().unwrap().lost, [("connect".to_string(), 7)].into());
    assert!(log.tick().is_err(), "the retry fails while the disk is full");
    assert!(log.checkpoint().is_err());
    assert_eq!(std::fs::read(cfg.dir.join(CHECKPOINT_FILE)).unwrap(), signed_note, "nothing signed while records are not durable");
    assert_eq!(on_disk(&cfg.dir).torn_tail, None);

    // Space returns: the buffered records, a loss record, a checkpoint.
    std::fs::remove_file(&filler).unwrap();
    assert!(log.tick().unwrap(), "the retry signs a checkpoint");
    assert!(log.fault().is_none());
    let cp = log.close().unwrap();
    let report = verify_intact(&cfg.dir);
    assert_eq!(report.latest.as_ref().map(|c| c.size), Some(cp.size));
    let recs = envelopes(&cfg.dir);
    assert_eq!(recs.iter().filter(|r| r.kind == "test").count(), 40, "every accepted record was written");
    let loss: Vec<&Envelope> = recs.iter().filter(|r| r.kind == "loss").collect();
    assert_eq!(loss.len(), 1);
    let lost = &loss[0].payload["audit_unwritable"];
    assert_eq!((lost["records"].as_u64(), &lost["kinds"]), (Some(7), &json!({"connect": 7})), "{lost}");
    assert!(lost["error"].as_str().unwrap().contains("No space left on device"), "{lost}");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.idx, i as u64, "indices are contiguous (no record written twice under one idx)");
    }
    let (_, reopened) = AuditLog::open(cfg).unwrap();
    assert_eq!(reopened.recovered, None, "a clean close after the fault leaves nothing to recover");
}

#[test]
#[ignore = "needs root (mounts a small tmpfs): cargo xtask test runs it"]
fn enospc_while_replacing_the_checkpoint_file_keeps_the_old_one() {
    if !require_root("enospc_while_replacing_the_checkpoint_file_keeps_the_old_one") {
        return;
    }
    let fs = Tmpfs::mount("audit-cpfile", 1 << 20).unwrap();
    let keys = tempdir("audit-cpfile-key").unwrap();
    let cfg = config(&fs, keys.path());
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    for i in 0..5 {
        log.append("test", record(i)).unwrap();
    }
    log.checkpoint().unwrap();
    for i in 5..10 {
        log.append("test", record(i)).unwrap();
    }
    log.sync().unwrap();
    let before = std::fs::read(cfg.dir.join(CHECKPOINT_FILE)).unwrap();

    // The records are durable; only the checkpoint file's replacement fails.
    let filler = fs.fill("filler").unwrap();
    let err = log.checkpoint().unwrap_err();
    assert!(is_enospc(&err), "{}", zt_agent::error::chain(&err));
    assert_eq!(std::fs::read(cfg.dir.join(CHECKPOINT_FILE)).unwrap(), before, "the old checkpoint file stays");
    assert!(!cfg.dir.join("checkpoint.tmp").exists(), "no half-written temporary file is left");
    assert!(log.fault().is_some());
    assert!(matches!(log.append("connect", json!({})), Err(LogError::Unwritable { .. })));

    std::fs::remove_file(&filler).unwrap();
    assert!(log.tick().unwrap());
    assert_ne!(std::fs::read(cfg.dir.join(CHECKPOINT_FILE)).unwrap(), before);
    log.close().unwrap();
    verify_intact(&cfg.dir);
    let recs = envelopes(&cfg.dir);
    assert_eq!(recs.iter().filter(|r| r.kind == "loss").count(), 1);
    AuditLog::open(cfg).unwrap();
}

#[test]
#[ignore = "needs root (mounts a small tmpfs): cargo xtask test runs it"]
fn enospc_when_a_segment_must_start_never_leaves_a_segment_without_its_start() {
    if !require_root("enospc_when_a_segment_must_start_never_leaves_a_segment_without_its_start") {
        return;
    }
    let fs = Tmpfs::mount("audit-rotate", 1 << 20).unwrap();
    let keys = tempdir("audit-rotate-key").unwrap();
    let mut cfg = config(&fs, keys.path());
    cfg.segment_bytes = 16 << 10;
    let (mut log, _) = AuditLog::open(cfg.clone()).unwrap();
    log.append("test", record(0)).unwrap();
    log.checkpoint().unwrap();
    let filler = fs.fill("filler").unwrap();
    // Appends until one needs a new segment and its start file cannot be
    // written (the segment's own page may still have room for a few).
    let mut accepted = 1;
    let err = loop {
        match log.append("test", record(accepted)) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "no write failed on a full disk");
    };
    assert!(is_enospc(&err), "{}", zt_agent::error::chain(&err));
    for n in segment::segments(&cfg.dir).unwrap().into_iter().skip(1) {
        assert!(zt_agent::audit::log::start_path(&cfg.dir, n).exists(), "segment {n} exists without its start file");
    }
    assert_eq!(log.fault().unwrap().lost_records(), 1, "the record that needed the new segment is counted");
    std::fs::remove_file(&filler).unwrap();
    assert!(log.tick().unwrap());
    for i in 0..30 {
        log.append("test", record(100 + i)).unwrap();
    }
    log.close().unwrap();
    assert!(segment::segments(&cfg.dir).unwrap().len() > 1, "the log went on into new segments");
    verify_intact(&cfg.dir);
    AuditLog::open(cfg).unwrap();
}

fn zt(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin()).args(args).output().expect("running zt-agent")
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups, mounts a tmpfs): cargo xtask test runs it"]
fn the_running_agent_on_a_full_disk_keeps_enforcing_reports_and_recovers() {
    if !require_root("the_running_agent_on_a_full_disk_keeps_enforcing_reports_and_recovers") {
        return;
    }
    let fs = Tmpfs::mount("audit-agent-full", 2 << 20).unwrap();
    let tmp = tempdir("audit-agent-full").unwrap();
    let (dir, key): (PathBuf, PathBuf) = (fs.path().join("audit"), tmp.path().join("audit.key"));
    let cg = TestCgroup::new(&format!("/{}/agent", unique("audit-full"))).unwrap();
    let policy_file = tmp.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        policy("zt.test", &format!("    - name: noisy-agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel)),
    )
    .unwrap();
    let agent = Agent::start(
        "audit-agent-full",
        "",
        &["--policy", policy_file.to_str().unwrap(), "--audit-dir", dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()],
    )
    .unwrap();
    let denials = |n: u32, first_port: u16| {
        let st = cg.command(helper_bin()).args(["udp-connects-spread", &n.to_string(), "127.0.0.1", &first_port.to_string()]).status();
        assert!(st.unwrap().success(), "the denied connects ran (each one refused by the kernel)");
    };
    denials(10, 41000);
    agent.wait_for("the first denials", |e| e["kind"] == "connect" && e["connect"]["port"] == 41009).unwrap();

    // The first write after the disk filled faults the log; those records
    // wait in memory. Denials after that are refused and counted.
    let filler = fs.fill("filler").unwrap();
    denials(10, 41100);
    let faulted = agent.wait_status("the audit log unwritable", |s| !s["audit"]["unwritable"].is_null());
    denials(50, 41200);
    agent.wait_for("denials while the disk is full", |e| e["kind"] == "connect" && e["connect"]["port"] == 41249).unwrap();
    // All 50 sent after the fault are refused; of the 10 before it, those
    // that missed the faulted write are too (how many did depends on how
    // the records were batched to the audit thread).
    let st = agent.wait_status("50 refused denials", |s| s["audit"]["unwritable"]["lost"]["connect"].as_u64() >= Some(50));
    let lost = st["audit"]["unwritable"]["lost"]["connect"].as_u64().unwrap();
    assert!(lost <= 60, "more denials refused than were made after the disk filled: {lost}");
    let unwritable = &st["audit"]["unwritable"];
    assert!(unwritable["error"].as_str().unwrap().contains("No space left on device"), "{unwritable}");
    assert_eq!(st["audit"]["signed_size"], faulted["audit"]["signed_size"], "nothing was signed while records were not on disk");
    let o = zt(&["status", "--socket", agent.socket.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("UNWRITABLE since"), "{}", String::from_utf8_lossy(&o.stdout));
    // Not ready (a rollout stops here), still live (no restart loop).
    let metrics = agent.metrics_addr();
    let (code, body) = http_get(&metrics, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the audit log cannot write since") && body.contains("No space left on device"), "{body}");
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".into()));
    // A full disk costs records, never enforcement: the kernel denied them all.
    agent.wait_status("70 denials by the kernel", |s| s["decisions"].as_array().is_some_and(|d| d.iter().any(|d| d["denied"] == 70)));

    std::fs::remove_file(&filler).unwrap();
    agent.wait_status("the audit log writable again", |s| s["audit"]["unwritable"].is_null());
    let (code, body) = http_get(&metrics, "/readyz");
    assert_eq!(code, 200, "{body}");
    denials(5, 41300);
    agent.wait_for("denials after space returned", |e| e["kind"] == "connect" && e["connect"]["port"] == 41304).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stderr = agent.stderr();
    agent.stop().unwrap();
    let error_lines = stderr.lines().filter(|l| l.contains("ERROR") && l.contains("audit log")).count();
    assert!(error_lines <= 3, "errors are logged at a bounded rate, got {error_lines} lines:\n{stderr}");
    assert!(stderr.contains("audit log writes again"), "{stderr}");

    let o = zt(&["audit", "verify", dir.to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("INTACT"), "{}", String::from_utf8_lossy(&o.stdout));
    let recs = envelopes(&dir);
    let loss: Vec<&Envelope> = recs.iter().filter(|r| r.kind == "loss" && !r.payload["audit_unwritable"].is_null()).collect();
    assert_eq!(loss.len(), 1, "one loss record for the unwritable period");
    // Every denial made while the disk was full is either in the log or
    // counted by the loss record: all 50 after the fault, and those of the
    // 10 before it that missed the faulted write.
    let refused = loss[0].payload["audit_unwritable"]["kinds"]["connect"].as_u64().unwrap_or(0);
    assert!((50..=60).contains(&refused), "{:?}", loss[0].payload);
    assert_eq!(loss[0].payload["audit_unwritable"]["kinds"], json!({"connect": refused}), "{:?}", loss[0].payload);
    let ports: Vec<u64> = recs.iter().filter(|r| r.kind == "connect").filter_map(|r| r.payload["connect"]["port"].as_u64()).collect();
    let written = |range: std::ops::Range<u64>| ports.iter().filter(|p| range.contains(*p)).count() as u64;
    assert_eq!(written(41100..41110), 10 - (refused - 50), "the records waiting in memory were written once space returned");
    assert_eq!(written(41200..41250), 0, "the refused records are the ones the loss record counts");
    assert!(ports.contains(&41304), "the log continues after the fault");
    // The agent starts on it again.
    let again = Agent::start(
        "audit-agent-full-again",
        "",
        &["--policy", policy_file.to_str().unwrap(), "--audit-dir", dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()],
    )
    .unwrap();
    again.stop().unwrap();
}

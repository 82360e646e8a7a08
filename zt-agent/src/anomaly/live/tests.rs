//! The detector on synthetic call streams, without a kernel: learning,
//! calibration, findings and their evidence, persistence, a baseline file
//! that cannot be read, mode learn, and a changed executable.
use std::path::Path;

use super::*;
use crate::identity::{Identity, IdentityConfig};

const ID: u32 = 7;

fn config(mode: AnomalyMode, learn_calls: u64) -> IdentityConfig {
    IdentityConfig {
        name: "p".into(),
        trust_domain: "td".into(),
        identities: vec![Identity {
            id: ID,
            name: "agent".into(),
            spiffe_id: "spiffe://td/agent".into(),
            selectors: vec![],
            anomaly: Some(Anomaly { mode, response: AnomalyResponse::Quarantine, false_positive_rate: 0.01, learn_calls }),
        }],
    }
}

/// A "normal" thread: read/write loops with some variety (openat, fstat,
/// read, write, close; mmap and brk now and then).
fn normal(seed: u32, len: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(len);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(&[257, 5, 0, 0, 1, 3]);
        if i % 3 == 0 {
            out.extend_from_slice(&[9, 12]);
        }
        i += 1;
    }
    out.truncate(len);
    out
}

/// A reverse shell: socket, connect, dup2 x3, execve, then reads and writes.
fn reverse_shell() -> Vec<u16> {
    let mut calls = vec![41, 42, 33, 33, 33, 59];
    calls.extend([0, 1, 61, 0, 1, 61].repeat(20));
    calls
}

/// Feeds one thread's calls in kernel-sized batches; the outcomes.
fn feed(d: &mut Detector, tgid: u32, calls: &[u16]) -> Vec<Outcome> {
    calls.chunks(60).filter_map(|b| d.batch(ID, tgid, tgid, 1_000, b)).collect()
}

fn learnt(d: &mut Detector) -> BaselineNote {
    for t in 0..16 {
        if let Some(Outcome::Baseline { note, .. }) = feed(d, 100 + t, &normal(t, 600)).pop() {
            return note;
        }
    }
    panic!("no baseline after 16 threads");
}

fn detector(dir: Option<&Path>) -> Detector {
    Detector::new(dir.map(Path::to_path_buf), "/nonexistent-proc".into(), Board::default())
}

#[test]
fn an_identity_learns_then_a_reverse_shell_is_a_finding_with_evidence() {
    let mut d = detector(None);
    let (on, off, notes) = d.set_identities(&config(AnomalyMode::Detect, 3000));
    assert_eq!((on, off), (vec![ID], vec![]));
    assert!(matches!(&notes[..], [Outcome::Baseline { note, .. }] if note.state == "learning"));
    assert_eq!(d.board().snapshot()["agent"].phase, "learning");
    let note = learnt(&mut d);
    assert_eq!(note.state, "learnt");
    assert!(note.calls >= 1500 && note.traces >= MIN_TRACES / 2, "{note:?}");
    assert_eq!(d.board().snapshot()["agent"].phase, "detecting");

    // New normal threads: no finding.
    for t in 0..20 {
        assert!(feed(&mut d, 500 + t, &normal(t + 3, 900)).is_empty(), "normal thread {t} alerted");
        assert!(d.exit(500 + t, 2_000).is_none());
    }
    let out = feed(&mut d, 900, &reverse_shell());
    let [Outcome::Detection { identity, tgid, detection, .. }] = &out[..] else { panic!("{out:?}") };
    assert_eq!((*identity, *tgid), (ID, 900));
    assert!(detection.score > detection.threshold);
    assert_eq!(detection.response, "quarantine");
    let seq: Vec<&str> = detection.evidence.sequences.iter().flat_map(|s| s.calls.iter().map(String::as_str)).collect();
    assert!(seq.contains(&"dup2") || seq.contains(&"connect"), "{:?}", detection.evidence);
    let rare = &detection.evidence.syscalls[0];
    assert_eq!(rare.baseline_share, 0.0, "the rarest call was never made in the baseline: {rare:?}");
    assert!(detection.evidence.sequences.iter().all(|s| s.baseline_count == 0));
    assert_eq!(d.board().snapshot()["agent"].risk, 1.0);
    assert_eq!(d.board().snapshot()["agent"].findings, 1);
    assert!(feed(&mut d, 900, &reverse_shell()).is_empty(), "one finding per thread");
}

#[test]
fn a_short_process_is_scored_at_exit_like_an_offline_trace() {
    let mut d = detector(None);
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    learnt(&mut d);
    // Fewer calls than a frequency window; the n-gram window alone did
    // not cross (too short), the whole trace does at exit.
    let shell: Vec<u16> = vec![41, 42, 33, 33, 33, 59, 41, 42, 33, 33, 33, 59];
    assert!(feed(&mut d, 901, &shell).is_empty());
    assert!(matches!(d.exit(901, 5), Some(Outcome::Detection { tgid: 901, .. })));
}

#[test]
fn mode_learn_raises_no_finding_but_the_risk_shows() {
    let mut d = detector(None);
    d.set_identities(&config(AnomalyMode::Learn, 3000));
    learnt(&mut d);
    assert!(feed(&mut d, 900, &reverse_shell()).is_empty());
    let a = &d.board().snapshot()["agent"];
    assert_eq!((a.risk, a.findings), (1.0, 0));
    assert!(a.phase.starts_with("learnt"), "{}", a.phase);
}

#[test]
fn baselines_persist_and_a_bad_file_is_named_and_learnt_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = detector(Some(dir.path()));
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    let note = learnt(&mut d);
    let file = dir.path().join("agent.json");
    assert_eq!(note.file.as_deref(), Some(file.to_str().unwrap()));

    // A restart: the baseline is loaded and detects at once.
    let mut d = detector(Some(dir.path()));
    let (_, _, notes) = d.set_identities(&config(AnomalyMode::Detect, 3000));
    let [Outcome::Baseline { note, .. }] = &notes[..] else { panic!() };
    assert_eq!(note.state, "loaded");
    assert!(matches!(feed(&mut d, 900, &reverse_shell())[..], [Outcome::Detection { .. }]));

    std::fs::write(&file, b"{\"format\":\"zt-anomaly-baseline\",\"version\":1,\"identity\":").unwrap();
    let (_, _, notes) = detector(Some(dir.path())).set_identities(&config(AnomalyMode::Detect, 3000));
    let [Outcome::Baseline { note, .. }] = &notes[..] else { panic!() };
    assert_eq!(note.state, "learning");
    assert!(note.reason.contains("agent.json: not a model file") && note.reason.ends_with("learning a new one"), "{}", note.reason);
    std::fs::write(&file, b"{\"format\":\"zt-anomaly-baseline\",\"version\":9}").unwrap();
    let (_, _, notes) = detector(Some(dir.path())).set_identities(&config(AnomalyMode::Detect, 3000));
    let [Outcome::Baseline { note, .. }] = &notes[..] else { panic!() };
    assert!(note.reason.contains("zt-anomaly-baseline version 9; this agent reads version 1"), "{}", note.reason);
}

#[test]
fn a_learnt_executable_with_a_new_digest_starts_learning_again() {
    let proc_root = tempfile::tempdir().unwrap();
    let bin = proc_root.path().join("agent-bin");
    std::fs::write(&bin, b"version 1").unwrap();
    let pid_link = |pid: u32| {
        std::fs::create_dir_all(proc_root.path().join(pid.to_string())).unwrap();
        std::os::unix::fs::symlink(&bin, proc_root.path().join(pid.to_string()).join("exe")).unwrap();
    };
    let mut d = Detector::new(None, proc_root.path().into(), Board::default());
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    for t in 0..16 {
        pid_link(100 + t);
    }
    learnt(&mut d);
    // The same binary: scored.
    pid_link(300);
    assert!(feed(&mut d, 300, &normal(1, 200)).is_empty());
    // Upgraded: its next process starts a new baseline.
    std::fs::write(&bin, b"version 2").unwrap();
    pid_link(301);
    let out = feed(&mut d, 301, &normal(1, 60));
    let [Outcome::Baseline { note, .. }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(note.state, "learning");
    assert!(note.reason.contains("agent-bin changed (blake3 "), "{}", note.reason);
    assert_eq!(d.board().snapshot()["agent"].phase, "learning");
}

#[test]
fn identities_without_the_block_are_not_watched() {
    let mut d = detector(None);
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    let mut c = config(AnomalyMode::Detect, 3000);
    c.identities[0].anomaly = None;
    let (on, off, _) = d.set_identities(&c);
    assert_eq!((on, off), (vec![], vec![ID]));
    assert!(d.batch(ID, 1, 1, 0, &[1, 2, 3]).is_none());
    assert!(d.board().snapshot().is_empty());
}

#[test]
fn calls_are_named_by_the_x86_64_table() {
    assert_eq!(call_name(42), "connect");
    assert_eq!(call_name(59), "execve");
    assert_eq!(call_name(1024 + 22), "io_uring:22");
    assert_eq!(call_name(999), "999");
}

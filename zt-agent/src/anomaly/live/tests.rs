//! The detector on synthetic call streams, without a kernel: learning,
//! calibration, findings and their evidence, persistence, a baseline file
//! that cannot be read, mode learn, and a changed executable.
use std::path::Path;

use super::*;
use crate::{
    identity::{Identity, IdentityConfig},
    policy::model::AnomalyResponse,
};

const ID: u32 = 7;

fn config(mode: AnomalyMode, learn_calls: u64) -> IdentityConfig {
    IdentityConfig {
        name: "p".into(),
        trust_domain: "td".into(),
        identities: vec![Identity {
            id: ID,
            name: "agent".into(),
            spiffe_id: "spiffe://td/agent".into(),
            selectors: Default::default(),
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
        if i.is_multiple_of(3) {
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
    feed_exe(d, tgid, None, calls)
}

/// The kernel's clock for the batches: a millisecond a batch.
fn now() -> u64 {
    static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    CLOCK.fetch_add(1_000_000, std::sync::atomic::Ordering::Relaxed)
}

/// Feeds the batches, then lets the time pass that scores them.
fn feed_exe(d: &mut Detector, tgid: u32, exe: Option<&Path>, calls: &[u16]) -> Vec<Outcome> {
    let exe: Option<Arc<str>> = exe.map(|p| p.to_str().unwrap().into());
    let mut out: Vec<Outcome> = calls.chunks(60).filter_map(|b| d.batch(ID, tgid, tgid, now(), exe.as_ref(), b)).collect();
    out.extend(d.expire(now() + REORDER_NS));
    out
}

fn learnt(d: &mut Detector) -> BaselineNote {
    learnt_running(d, None)
}

fn learnt_running(d: &mut Detector, exe: Option<&Path>) -> BaselineNote {
    for t in 0..400 {
        if let Some(Outcome::Baseline { note, .. }) = feed_exe(d, 100 + t, exe, &normal(t, 600)).pop() {
            return note;
        }
    }
    panic!("no baseline after 400 threads");
}

fn detector(dir: Option<&Path>) -> Detector {
    Detector::new(dir.map(Path::to_path_buf), Board::default())
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
    assert!(note.calls >= 1500 && note.traces >= min_traces(0.01) / 2, "{note:?}");
    assert_eq!((min_traces(0.01), min_traces(0.5), min_traces(0.0001)), (200, MIN_TRACES, MAX_MIN_TRACES));
    assert_eq!(d.board().snapshot()["agent"].phase, "detecting");

    // New normal threads: no finding.
    for t in 0..20 {
        assert!(feed(&mut d, 500 + t, &normal(t + 3, 900)).is_empty(), "normal thread {t} alerted");
        d.exit(500 + t, now());
        assert!(d.expire(now() + EXIT_GRACE_NS).is_empty());
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
    let t = now();
    d.exit(901, t);
    assert!(d.expire(t + EXIT_GRACE_NS - 1).is_empty(), "late batches may still come");
    assert!(matches!(&d.expire(t + EXIT_GRACE_NS)[..], [Outcome::Detection { tgid: 901, .. }]));
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
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("agent-bin");
    std::fs::write(&bin, b"version 1").unwrap();
    let mut d = detector(None);
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    learnt_running(&mut d, Some(&bin));
    // The same binary: scored; another one, never learnt: scored too.
    assert!(feed_exe(&mut d, 300, Some(&bin), &normal(1, 200)).is_empty());
    assert!(feed_exe(&mut d, 302, Some(Path::new("/bin/sh")), &normal(1, 200)).is_empty());
    // Upgraded: its next process starts a new baseline.
    std::fs::write(&bin, b"version 2").unwrap();
    let out = feed_exe(&mut d, 301, Some(&bin), &normal(1, 60));
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
    assert!(d.batch(ID, 1, 1, 0, None, &[1, 2, 3]).is_none());
    assert!(d.board().snapshot().is_empty());
}

#[test]
fn calls_are_named_by_the_x86_64_table() {
    assert_eq!(call_name(42), "connect");
    assert_eq!(call_name(59), "execve");
    assert_eq!(call_name(1024 + 22), "io_uring:22");
    assert_eq!(call_name(999), "999");
}

#[test]
fn a_threads_batches_are_scored_in_the_order_of_their_calls() {
    let mut d = detector(None);
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    learnt(&mut d);
    // A normal thread whose batches come from two CPUs, the later ones
    // first: in the order they come, the sequence would be new.
    let calls = normal(1, 600);
    let t0 = now();
    let mut out: Vec<Outcome> = Vec::new();
    for (i, b) in calls.chunks(60).enumerate().rev() {
        out.extend(d.batch(ID, 777, 777, t0 + i as u64 * 1000, None, b));
    }
    out.extend(d.expire(t0 + REORDER_NS + 1_000_000));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(d.board().snapshot()["agent"].findings, 0);
}

#[test]
fn a_baseline_that_cannot_be_saved_is_used_and_said_so() {
    // The baseline directory cannot be created (a file is in the way), as
    // on a full or read-only disk: the baseline detects all the same.
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, b"").unwrap();
    let mut d = detector(Some(&blocked.join("anomaly")));
    d.set_identities(&config(AnomalyMode::Detect, 3000));
    let note = learnt(&mut d);
    assert_eq!((note.state, note.file.as_deref()), ("learnt", None));
    assert!(note.reason.contains("not saved (learnt again after a restart): creating "), "{}", note.reason);
    assert!(matches!(feed(&mut d, 900, &reverse_shell())[..], [Outcome::Detection { .. }]));
}

/// Records what the daemon would have done.
#[derive(Default)]
struct Fake {
    calls: std::sync::Mutex<Vec<String>>,
    fail: bool,
}

impl Responder for Fake {
    fn quarantine(&self, identity: &str, _: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("quarantine {identity}"));
        if self.fail { Err("the policy manager did not take the request (full)".into()) } else { Ok(()) }
    }
    fn kill(&self, tgid: u32) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("kill {tgid}"));
        Ok(())
    }
    fn risk_changed(&self) {
        self.calls.lock().unwrap().push("risk".into());
    }
}

impl TelemetrySwitch for Fake {
    fn set(&self, identity: u32, user: TelemetryUser, on: bool) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("telemetry {identity} {user:?} {on}"));
        if self.fail { Err("EPERM".into()) } else { Ok(()) }
    }
    fn unsent(&self, _: u32) -> Vec<(u32, u32, u64, Vec<u16>)> {
        Vec::new()
    }
}

#[test]
fn responses_are_carried_out_and_their_failures_said() {
    let fake = Arc::new(Fake::default());
    let mut w = Watch { detector: detector(None), telemetry: fake.clone(), responder: fake.clone() };
    w.set_identities(&config(AnomalyMode::Detect, 3000));
    learnt(&mut w.detector);
    let [Outcome::Detection { mut detection, .. }] = <[Outcome; 1]>::try_from(feed(&mut w.detector, 900, &reverse_shell())).unwrap() else {
        panic!()
    };
    w.respond("agent", 900, false, &mut detection);
    assert_eq!(detection.outcome, "quarantine requested: egress deny-all until `zt-agent identity release`");
    detection.response = "kill";
    w.respond("agent", 900, false, &mut detection);
    assert_eq!(detection.outcome, "process killed");
    w.respond("agent", 900, true, &mut detection);
    assert_eq!(detection.outcome, "nothing killed: the process had exited", "its pid may be another's by now");
    assert_eq!(*fake.calls.lock().unwrap(), ["telemetry 7 Detector true", "quarantine agent", "risk", "kill 900", "risk", "risk"]);
    w.set_identities(&IdentityConfig { identities: vec![], ..config(AnomalyMode::Detect, 3000) });
    assert_eq!(fake.calls.lock().unwrap().last().unwrap(), "telemetry 7 Detector false");

    // Failures: telemetry that will not turn on is said in a note; a
    // quarantine the manager did not take is said in the finding.
    let failing = Arc::new(Fake { fail: true, ..Default::default() });
    let mut w = Watch { detector: detector(None), telemetry: failing.clone(), responder: failing };
    let notes = w.set_identities(&config(AnomalyMode::Detect, 3000));
    assert!(
        notes.iter().any(|n| matches!(n, Outcome::Baseline { note, .. } if note.state == "not watched" && note.reason.ends_with("EPERM")))
    );
    detection.response = "quarantine";
    w.respond("agent", 1, false, &mut detection);
    assert_eq!(detection.outcome, "quarantine failed: the policy manager did not take the request (full)");
}

//! A flood by one identity never costs another its security records: the
//! attack of the flood issue, as a root test. Identity `flooder` connects a
//! UDP socket to ever-new allowed destinations as fast as one core can
//! (every attempt a distinct event), while identity `quiet` makes 200
//! denied TCP connects at 50 per second, each from its own process (so
//! each is its own event). Every one of the 200 must be in the event
//! stream and in the audit log, and none may reach the listener.
use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

fn audit_records(dir: &std::path::Path) -> Vec<Value> {
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir"]).arg(dir).output().expect("running zt-agent");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The pids of the quiet identity's denied connects among `events`
/// (`payload` for audit records, the event itself in the stream).
fn quiet_denials(events: &[Value], inner: impl Fn(&Value) -> &Value) -> BTreeSet<u64> {
    events
        .iter()
        .map(inner)
        .filter(|e| e["identity"]["name"] == "quiet" && e["connect"]["action"] == "denied")
        .filter_map(|e| e["process"]["pid"].as_u64())
        .collect()
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn a_flood_never_costs_another_identity_its_denials() {
    if !require_root("a_flood_never_costs_another_identity_its_denials") {
        return;
    }
    let base = unique("flood");
    let (a, b) = (TestCgroup::new(&format!("/{base}/a")).unwrap(), TestCgroup::new(&format!("/{base}/b")).unwrap());
    let pol = policy(
        "zt.test",
        &format!(
            "    - name: flooder\n      selectors:\n        - cgroup: {}/**\n    - name: quiet\n      selectors:\n        - cgroup: {}/**\n  \
             rules:\n    - identity: flooder\n      action: allow\n      egress:\n        - to: [10.0.0.0/8]\n",
            a.rel, b.rel
        ),
    );
    let agent = Agent::start("flood", &pol, &[]).unwrap();
    let listener = Listener::new();
    let flooder = a.command(helper_bin()).args(["udp-flood-distinct", "6"]).stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let tmp = tempdir("flood").unwrap();
    let out = tmp.path().join("result");
    let start = Instant::now();
    let mut pids = BTreeSet::new();
    for i in 0..200u32 {
        let mut child = b.command(helper_bin()).args(["try", "tcp", &listener.addr()]).arg(&out).arg("ZTMARK-quiet").spawn().unwrap();
        pids.insert(child.id() as u64);
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "EPERM", "the quiet identity's connect {i} was not denied");
        if let Some(rest) = (Duration::from_millis(20) * (i + 1)).checked_sub(start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let flood = flooder.wait_with_output().unwrap();
    let attempts: u64 = String::from_utf8_lossy(&flood.stdout).trim().parse().unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let in_stream = loop {
        let got = quiet_denials(&agent.events(), |e| e);
        if got.is_superset(&pids) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Fairness: the quiet identity's telemetry (its exec events) is all
    // there too: the flood spent its own budget, not the others'.
    let quiet_execs: BTreeSet<u64> = execs_with(&agent.events(), "ZTMARK-quiet")
        .iter()
        .filter(|e| e["identity"]["name"] == "quiet")
        .filter_map(|e| e["process"]["pid"].as_u64())
        .collect();
    // Every one of the flooder's attempts is accounted for: in connect
    // events, summaries, or counts folded over its budget.
    std::thread::sleep(Duration::from_millis(2500));
    let events = agent.events();
    let of_flooder = |e: &&Value| e["identity"]["name"] == "flooder";
    let sum = |kind: &str, field: &str| -> u64 {
        events.iter().filter(|e| e["kind"] == kind).filter(of_flooder).map(|e| e[kind][field].as_u64().unwrap_or(0)).sum()
    };
    let (evented, summarized, folded) = (sum("connect", "repeats"), sum("connect_summary", "repeats"), sum("connect_folded", "allowed"));
    let status = agent.status();
    let audit_dir = agent.dir.join("audit");
    let in_log = loop {
        let got = quiet_denials(&audit_records(&audit_dir), |r| &r["payload"]);
        if got.is_superset(&pids) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood: {attempts} distinct attempts in 6 s ({:.0}/s): {evented} in connect events, {summarized} in summaries, {folded} folded; \
         the quiet identity's 200 denials: {} in the stream, {} in the audit log; its exec events: {}; counters: {}",
        attempts as f64 / 6.0,
        in_stream.intersection(&pids).count(),
        in_log.intersection(&pids).count(),
        quiet_execs.intersection(&pids).count(),
        status["counters"]
    );
    assert_eq!(in_stream.intersection(&pids).count(), 200, "denials missing from the event stream");
    assert_eq!(in_log.intersection(&pids).count(), 200, "denials missing from the audit log");
    assert_eq!(quiet_execs.intersection(&pids).count(), 200, "the quiet identity's exec events were crowded out");
    assert_eq!(evented + summarized + folded, attempts, "the flooder's attempts do not add up");
    agent.stop().unwrap();
}

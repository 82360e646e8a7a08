//! The exposition, the probes and the tally, from built snapshots and events.
use std::{sync::Arc, time::SystemTime};

use zt_common::policy::{DENY, ENFORCE, Verdict};

use super::{
    exposition::{ProgramStats, Scrape, render},
    health,
    tally::{DecisionKey, MAX_DECISION_SERIES, Tally},
};
use crate::{
    control::protocol::StatusDoc,
    host::WallTime,
    pipeline::event::{Body, ConnectAction, ConnectInfo, Event, GuardInfo, IdentityRef, PolicyAction, PolicyChange, Process},
};

#[test]
fn action_names_are_the_event_names() {
    for a in [ConnectAction::Allowed, ConnectAction::Denied, ConnectAction::Audited] {
        assert_eq!(serde_json::to_value(a).unwrap(), a.name());
    }
    for a in [PolicyAction::Applied, PolicyAction::Rejected, PolicyAction::RolledBack, PolicyAction::Quarantined, PolicyAction::Released] {
        assert_eq!(serde_json::to_value(a).unwrap(), a.name());
    }
}

/// A status as a running agent reports it: policy v3, every egress program
/// attached, one identity with decisions, an audit log, a SIEM destination
/// 2 records behind.
fn status() -> StatusDoc {
    let hook = |p: &str, attached: bool| serde_json::json!({"program": p, "attach_point": "cgroup /", "state": if attached { "attached" } else { "refused" }, "attached": attached});
    serde_json::from_value(serde_json::json!({
        "version": "0.1.0", "pid": 1, "started": "t", "object_blake3": "ab",
        "hooks": [hook("connect4", true), hook("connect6", true), hook("sendmsg4", true), hook("sendmsg6", true), hook("guard_uring", false)],
        "paths": [["network enforcement", "cgroup sock_addr hooks"], ["exec rules", "NOT ENFORCED here"]],
        "cgroup2": "/sys/fs/cgroup",
        "policy": {"version": 3, "digest": "d1", "generation": 2, "name": "p", "trust_domain": "zt.test", "files": [],
                   "identities": [["agent", "spiffe://zt.test/agent"]], "ids": {"1": "agent"}, "quarantined": []},
        "counters": {"records": 10, "decode_errors": 0, "queue_overflow": 1, "output_errors": 0, "written": 9, "enriched": 10,
                     "identities_assigned": 1, "proc_table_entries": 5, "stale_entries_removed": 0,
                     "kernel_loss": {"ringbuf_exec": 0}, "heartbeat_age_ms": 300, "audit_overflow": 2},
        "decisions": [{"identity": "agent", "allowed": 4, "denied": 3, "audited": 0}],
        "audit": {"dir": "/a", "origin": "o", "records": 12, "signed_size": 11, "signed_root": "r", "verifier_keys": [],
                  "rotation_overlap_until": null, "write_errors": 0, "last_error": null, "unwritable": null, "failed": null},
        "siem": [{"name": "s1", "url": "tcp://x", "connected": true, "delivered_below": 10, "backlog": 2,
                  "caught_up_at": "2026-01-01T00:00:00Z", "records_sent": 10, "records_resent": 0, "records_skipped": 0,
                  "telemetry_sent": 0, "telemetry_dropped": 0, "reconnects": 1, "last_error": null, "last_error_at": null, "undelivered": []}],
        "anomaly": {"agent": {"phase": "detecting", "calls": 100, "traces": 20, "threshold": 1.5, "risk": 0.25, "findings": 2}},
        "kubernetes": {"api": "https://10.96.0.1:443/", "node": "n1", "state": "watching", "pods": 7, "resource_version": "5", "lists": 1,
                       "watch_events": 9, "bad_lines": 0, "pods_dropped": 0, "last_error": null, "last_error_at": null},
        "verification": {"every_secs": 5, "passes": 4, "last_pass": "2026-01-01T00:00:00Z", "findings_total": 1,
                         "findings": [{"check": "attachment", "subject": "connect4", "detail": "gone"}]},
        "api": {"listen": "https://127.0.0.1:9443", "grants": 2, "allowed": 5, "refused": 3, "open_streams": 1}
    }))
    .expect("a status document")
}

fn event(body: Body) -> Event {
    Event { time: WallTime(SystemTime::UNIX_EPOCH), node: "n".into(), body }
}

fn agent() -> Option<IdentityRef> {
    Some(IdentityRef { name: "agent".into(), spiffe_id: "spiffe://zt.test/agent".into() })
}

fn denied_connect() -> Event {
    let raw = zt_common::ConnectEvent {
        family: zt_common::AF_INET,
        port: 443,
        sock_type: 1,
        verdict: Verdict::new(DENY, ENFORCE, 0),
        ..Default::default()
    };
    let connect = ConnectInfo::from_raw(&raw, |_, r| (r == 0).then(|| Arc::from("no-metadata")));
    event(Body::Connect { process: Process::default(), identity: agent(), connect })
}

fn guard() -> Event {
    let guard = GuardInfo { call: "ptrace", action: "killed", socket: None, target: None, args: [0; 3], syscall: None };
    event(Body::Guard { process: Process::default(), identity: agent(), guard })
}

fn exposition(st: &StatusDoc, tally: &Tally, programs: Option<&[ProgramStats]>) -> String {
    let loss = [[0u64; zt_common::loss::COUNT as usize], [0, 0, 7, 0, 0, 0, 0, 0, 0, 0]];
    let snap = tally.snapshot();
    let now = humantime::parse_rfc3339("2026-01-01T00:00:30Z").unwrap();
    render(&Scrape { status: st, kernel_loss: &loss, tally: &snap, programs, now }, false).unwrap()
}

#[test]
fn every_family_with_help_type_and_values() {
    let tally = Tally::default();
    for _ in 0..2 {
        tally.count(&denied_connect());
    }
    tally.count(&guard());
    tally.count(&event(Body::Loss { loss: Default::default() }));
    let change = |action| PolicyChange {
        action,
        source: "inotify".into(),
        version: None,
        digest: String::new(),
        generation: None,
        files: vec![],
        errors: vec![],
        warnings: vec![],
    };
    for a in [PolicyAction::Applied, PolicyAction::Applied, PolicyAction::Rejected] {
        tally.count(&event(Body::Policy { policy: change(a) }));
    }
    let programs = [ProgramStats { program: "connect4".into(), run_time_ns: 1_500_000_000, run_count: 9 }];
    let text = exposition(&status(), &tally, Some(&programs));
    for line in [
        "# TYPE zt_agent_egress_decisions_total counter",
        r#"zt_agent_egress_decisions_total{action="denied",identity="agent"} 3"#,
        r#"zt_agent_decision_events_total{action="denied",hook="connect",identity="agent",rule="no-metadata"} 2"#,
        r#"zt_agent_decision_events_total{action="killed",hook="guard",identity="agent",rule="ptrace"} 1"#,
        r#"zt_agent_events_total{kind="connect"} 2"#,
        r#"zt_agent_events_total{kind="loss"} 1"#,
        r#"zt_agent_kernel_dropped_total{cpu="1",reason="ringbuf_connect"} 7"#,
        r#"zt_agent_kernel_dropped_total{cpu="0",reason="ringbuf_connect"} 0"#,
        r#"zt_agent_dropped_total{reason="audit_overflow"} 2"#,
        r#"zt_agent_dropped_total{reason="queue_overflow"} 1"#,
        r#"zt_agent_info{object_blake3="ab",policy_digest="d1",version="0.1.0"} 1"#,
        "zt_agent_policy_version 3",
        r#"zt_agent_policy_changes_total{action="applied"} 2"#,
        r#"zt_agent_policy_changes_total{action="rejected"} 1"#,
        r#"zt_agent_hook_attached{attach_point="cgroup /",program="guard_uring"} 0"#,
        "zt_agent_bpf_stats_enabled 1",
        r#"zt_agent_bpf_program_run_seconds_total{program="connect4"} 1.5"#,
        r#"zt_agent_bpf_program_runs_total{program="connect4"} 9"#,
        "zt_agent_audit_records 12",
        "zt_agent_audit_signed_records 11",
        "zt_agent_audit_writable 1",
        r#"zt_agent_siem_backlog_records{destination="s1"} 2"#,
        r#"zt_agent_siem_lag_seconds{destination="s1"} 30"#,
        r#"zt_agent_anomaly_risk{identity="agent"} 0.25"#,
        r#"zt_agent_anomaly_findings_total{identity="agent"} 2"#,
        "zt_agent_heartbeat_age_seconds 0.3",
        "zt_agent_kube_pods 7",
        "zt_agent_kube_watching 1",
        "zt_agent_kube_watch_events_total 9",
        "zt_agent_verification_passes_total 4",
        "zt_agent_integrity_findings 1",
        "zt_agent_integrity_findings_total 1",
        r#"zt_agent_api_calls_total{outcome="allowed"} 5"#,
        r#"zt_agent_api_calls_total{outcome="refused"} 3"#,
        "zt_agent_api_open_streams 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // Every family has its help and type, once.
    let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
    for f in &families {
        let name = f.split(' ').next().unwrap();
        assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}");
    }
    assert!(families.len() >= 30, "{families:?}");
}

#[test]
fn without_bpf_stats_no_program_families() {
    let text = exposition(&status(), &Tally::default(), None);
    assert!(text.contains("zt_agent_bpf_stats_enabled 0"));
    assert!(!text.contains("zt_agent_bpf_program_runs_total"));
}

#[test]
fn label_values_are_escaped() {
    let mut st = status();
    st.decisions[0].identity = "we\"ird\\name\nx".into();
    let text = exposition(&st, &Tally::default(), None);
    assert!(text.contains(r#"identity="we\"ird\\name\nx""#), "{text}");
}

#[test]
fn the_tally_keeps_a_bounded_number_of_series() {
    let tally = Tally::default();
    for i in 0..MAX_DECISION_SERIES + 10 {
        let mut e = denied_connect();
        if let Body::Connect { identity, .. } = &mut e.body {
            *identity = Some(IdentityRef { name: format!("id{i}").into(), spiffe_id: "s".into() });
        }
        tally.count(&e);
    }
    tally.count(&denied_connect());
    let snap = tally.snapshot();
    assert_eq!(snap.decisions.len(), MAX_DECISION_SERIES);
    assert_eq!(snap.series_overflow, 11, "new label sets past the bound are counted, not kept");
    assert_eq!(snap.events["connect"], MAX_DECISION_SERIES as u64 + 11);
    let first = DecisionKey { identity: "id0".into(), hook: "connect", rule: "no-metadata".into(), action: "denied" };
    assert_eq!(snap.decisions[&first], 1);
}

#[test]
fn ready_live_and_the_reasons_when_not() {
    let st = status();
    let ready = health::readiness(&st).unwrap();
    assert!(ready.starts_with("ready: policy v3") && ready.contains("note: exec rules: NOT ENFORCED here"), "{ready}");
    assert_eq!(health::liveness(&st), Ok("ok\n".into()));

    let mut s = status();
    s.info.hooks.retain(|h| h.program != "connect6");
    let h = s.info.hooks.iter_mut().find(|h| h.program == "sendmsg4").unwrap();
    (h.attached, h.state) = (false, "refused by the verifier".into());
    s.policy.version = 0;
    let why = health::readiness(&s).unwrap_err();
    assert_eq!(
        why,
        "egress program connect6 is not loaded\negress program sendmsg4 is not attached: refused by the verifier\nno policy applied yet\n",
    );
    assert!(health::liveness(&s).is_ok(), "a missing program does not make the agent dead");

    let mut s = status();
    s.audit.as_mut().unwrap().unwritable = Some(crate::audit::log::Fault {
        since: "t0".into(),
        error: "No space left on device".into(),
        attempts: 3,
        buffered: 5,
        lost: Default::default(),
        lost_first: None,
        lost_last: None,
    });
    let why = health::readiness(&s).unwrap_err();
    assert!(why.contains("audit log cannot write since t0: No space left on device (5 records wait in memory)"), "{why}");

    let mut s = status();
    s.counters.heartbeat_age_ms = 11_000;
    s.audit.as_mut().unwrap().failed = Some("disk gone".into());
    let dead = health::liveness(&s).unwrap_err();
    assert_eq!(dead, "the event pipeline has not turned for 11000 ms\nthe audit thread died: disk gone\n");
    assert!(health::readiness(&s).is_err(), "not live is not ready");
}

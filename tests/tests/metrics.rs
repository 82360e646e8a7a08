//! Root tests of the observability endpoint: `/metrics` checked by
//! `promtool` and scraped by a real Prometheus (Debian's, installed by
//! `cargo xtask setup`), `/healthz`, `/readyz`, JSON logs, and an address
//! in use refused before anything loads.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

/// Prometheus running on loopback with its own storage; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second as job `zt-agent`.
    fn start(target: &str) -> Self {
        let dir = tempdir("prometheus").unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: zt-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = zt_tests::siem::free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        Prometheus { child, addr, _dir: dir }
    }

    /// The value of an instant query's first sample, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let encoded: String =
            q.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect();
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}"));
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `q` until `pred` holds of its value (60 s at most).
    fn wait(&self, what: &str, q: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Prometheus may not listen yet: a refused connection is "not yet".
            let v = std::net::TcpStream::connect(&self.addr).ok().and_then(|_| self.query(q));
            if let Some(v) = v.filter(|v| pred(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: `{q}` is {v:?} after 60 s");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn denials(cg: &TestCgroup, addr: &str) -> u64 {
    let out = cg.command(helper_bin()).args(["connect-loop", "200", addr]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let denied: u64 = text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("connect-loop said {text:?}"));
    assert!(denied > 0, "no connect was denied: {text:?}");
    denied
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn prometheus_scrapes_decisions_and_the_probes_answer() {
    if !require_root("prometheus_scrapes_decisions_and_the_probes_answer") {
        return;
    }
    if !have("prometheus") || !have("promtool") {
        skip(
            "prometheus_scrapes_decisions_and_the_probes_answer",
            "Debian's prometheus package is not installed (`cargo xtask setup` installs it)",
        );
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("metrics"))).unwrap();
    let target = Listener::new();
    let agent = Agent::start(
        "metrics",
        &policy("zt.test", &format!("    - name: scraped\n      selectors:\n        - cgroup: {}/**\n", cg.rel)),
        &["--bpf-stats", "--log-format", "json"],
    )
    .unwrap();
    let addr = agent.metrics_addr();

    // The probes, and what is not there.
    let (code, ready) = http_get(&addr, "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(ready.starts_with("ready: policy v1 in force, egress programs attached, audit log writable"), "{ready}");
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    let (code, _) =
        http_request(&addr, &format!("POST /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    assert_eq!(code, 405);

    // promtool accepts the exposition as it is served (lint included).
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");

    // A real Prometheus scrapes it, and sees a decision counter move.
    let prom = Prometheus::start(&addr);
    prom.wait("the agent scraped", r#"up{job="zt-agent"}"#, |v| v == 1.0);
    // No series before the identity's first decision: `or vector(0)`.
    let denied_q = r#"sum(zt_agent_egress_decisions_total{identity="scraped",action="denied"}) or vector(0)"#;
    let before = prom.wait("the scrape's value", denied_q, |_| true);
    let n = denials(&cg, &target.addr());
    let after = prom.wait("the denials scraped", denied_q, |v| v >= before + n as f64);
    assert_eq!(after, before + n as f64, "the kernel's exact count: {n} denied connects");
    prom.wait(
        "decision events by rule",
        r#"zt_agent_decision_events_total{identity="scraped",hook="connect",rule="default",action="denied"}"#,
        |v| v > 0.0,
    );
    prom.wait("connect4 runs (BPF statistics on)", r#"zt_agent_bpf_program_runs_total{program="connect4"}"#, |v| v >= n as f64);
    prom.wait("the policy applied once", r#"zt_agent_policy_changes_total{action="applied"}"#, |v| v == 1.0);
    drop(prom);

    // Every log line is one JSON object.
    let stderr = agent.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() > 5, "{stderr}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string() && v["timestamp"].is_string(), "{l}");
    }

    // A second agent asked for the same address stops before loading anything.
    let dir = tempdir("metrics-in-use").unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--no-pin", "--metrics-addr", &addr, "--socket"])
        .arg(dir.path().join("sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .arg("--audit-key")
        .arg(dir.path().join("key"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("binding the metrics endpoint to {addr}")) && err.contains("in use"), "{err}");
    assert_eq!(http_get(&addr, "/healthz").0, 200, "the first agent is unaffected");
    agent.stop().unwrap();
}

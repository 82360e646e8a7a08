//! Root tests of egress enforcement: the bypass suite (each attempt that
//! the policy denies must fail with EPERM, whatever API or process shape the
//! agent uses), non-agent processes unaffected, audit mode, per-identity
//! counters, and real traffic through a veth pair into a network namespace.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use zt_tests::*;

const TD: &str = "zt.test";

/// test-agent: default deny; TCP and UDP allowed to 127.0.0.1 and ::1 on `allowed` only.
fn policy_allowing(cg: &TestCgroup, allowed: u16, mode: &str) -> String {
    policy(
        TD,
        &format!(
            "    - name: test-agent\n      mode: {mode}\n      selectors:\n        - cgroup: {}/**\n  rules:\n    - name: loopback-allowed-port\n      identity: test-agent\n      action: allow\n      egress:\n        - to: [127.0.0.1/32, \"::1/128\"]\n          ports: [{allowed}]\n",
            cg.rel
        ),
    )
}

/// Result files of helper attempts, in a directory removed on drop.
struct Outcomes {
    dir: tempfile::TempDir,
    n: usize,
}

impl Outcomes {
    fn new(name: &str) -> Self {
        Outcomes { dir: tempdir(name).unwrap(), n: 0 }
    }

    fn next(&mut self) -> PathBuf {
        self.n += 1;
        self.dir.path().join(format!("r{}", self.n))
    }

    /// Waits for a result file (double-forked writers finish after their parent).
    fn read(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(path)
                && !s.is_empty()
            {
                return s;
            }
            assert!(Instant::now() < deadline, "no result in {}", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn io_uring_available() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

/// Every way an agent might reach a denied destination is denied with
/// EPERM; the allowed destination stays reachable; a process outside any
/// identity keeps full access.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn bypass_suite() {
    if !require_root("bypass_suite") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("bypass"))).unwrap();
    let (allowed, denied) = (Listener::new(), Listener::new());
    let agent = Agent::start("bypass", &policy_allowing(&cg, allowed.port, "enforce"), &["--show", "attributed"]).unwrap();
    let helper = helper_bin();
    let h = helper.display().to_string();
    let mut out = Outcomes::new("bypass-out");
    let uring = io_uring_available();
    if !uring {
        skip_variant(
            "bypass_suite",
            "io_uring",
            "io_uring_setup fails on this kernel (disabled or unsupported); the io_uring variant is not run",
        );
    }

    let v4 = |p: u16| format!("127.0.0.1:{p}");
    let v6 = |p: u16| format!("[::1]:{p}");
    let mapped = |p: u16| format!("[::ffff:127.0.0.1]:{p}");
    // (label, shell command prefix running the helper as an agent descendant, mode, address for a port)
    type Case = (String, String, &'static str, Box<dyn Fn(u16) -> String>);
    let mut cases: Vec<Case> = vec![
        ("tcp connect".into(), format!("{h} try"), "tcp", Box::new(v4)),
        ("udp sendto without connect".into(), format!("{h} try"), "udp-sendto", Box::new(v4)),
        ("udp connect".into(), format!("{h} try"), "udp-connect", Box::new(v4)),
        ("ipv6 tcp".into(), format!("{h} try"), "tcp", Box::new(v6)),
        ("ipv6 udp sendto".into(), format!("{h} try"), "udp-sendto", Box::new(v6)),
        ("ipv4-mapped ipv6 tcp".into(), format!("{h} try"), "tcp", Box::new(mapped)),
        ("ipv4-mapped ipv6 udp sendto".into(), format!("{h} try"), "udp-sendto", Box::new(mapped)),
        ("after setsid".into(), format!("setsid {h} try"), "tcp", Box::new(v4)),
        ("after exec of another binary".into(), format!("sh -c 'exec {h} try \"$@\"' sh"), "tcp", Box::new(v4)),
        ("from a second thread".into(), format!("{h} try"), "thread-tcp", Box::new(v4)),
        ("from a double-forked, re-parented descendant".into(), format!("{h} try"), "double-fork-tcp", Box::new(v4)),
    ];
    if uring {
        cases.push(("io_uring IORING_OP_CONNECT (io-wq worker)".into(), format!("{h} try"), "uring-connect", Box::new(v4)));
    }

    let mut script = String::from("set -e\n");
    let mut expect: Vec<(String, PathBuf, &str)> = Vec::new();
    for (label, prefix, mode, addr) in &cases {
        for (port, want) in [(denied.port, "EPERM"), (allowed.port, "OK")] {
            let f = out.next();
            script.push_str(&format!("{prefix} {mode} '{}' {}\n", addr(port), f.display()));
            expect.push((format!("{label} -> port {port}"), f, want));
        }
    }
    let status = cg.command("bash").arg("-c").arg(&script).status().unwrap();
    assert!(status.success());
    for (label, f, want) in &expect {
        assert_eq!(Outcomes::read(f).trim(), *want, "agent: {label}");
    }

    // Outside any identity: the same denied attempts all go out.
    for (label, _, mode, addr) in &cases {
        if mode.contains("fork") {
            continue;
        }
        let f = out.next();
        let st = Command::new(&helper).args(["try", mode, &addr(denied.port)]).arg(&f).status().unwrap();
        assert!(st.success());
        assert_eq!(Outcomes::read(&f).trim(), "OK", "non-agent: {label}");
    }

    // Decision counters are refreshed every second.
    std::thread::sleep(Duration::from_millis(1500));
    let s = agent.status();
    let events = agent.stop().unwrap();
    let d = s["decisions"].as_array().unwrap().iter().find(|d| d["identity"] == "test-agent").expect("decision counters").clone();
    assert!(d["denied"].as_u64().unwrap() >= cases.len() as u64, "{d}");
    assert!(d["allowed"].as_u64().unwrap() >= cases.len() as u64, "{d}");
    // Every denial is an event naming the default, and the hooks involved are the expected ones.
    let denials: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "connect" && e["connect"]["port"] == denied.port && identity_of(e) == Some("test-agent"))
        .collect();
    assert!(denials.iter().all(|e| e["connect"]["action"] == "denied" && e["connect"]["rule"] == "default"));
    for hook in ["connect4", "connect6", "sendmsg4", "sendmsg6"] {
        assert!(denials.iter().any(|e| e["connect"]["hook"] == hook), "no denial seen at {hook}");
    }
}

/// Audit mode: the same denied attempts go out, reported as "audited".
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn audit_mode_allows_and_reports() {
    if !require_root("audit_mode_allows_and_reports") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("audit"))).unwrap();
    let (allowed, denied) = (Listener::new(), Listener::new());
    let agent = Agent::start("audit", &policy_allowing(&cg, allowed.port, "audit"), &[]).unwrap();
    let mut out = Outcomes::new("audit-out");
    let f = out.next();
    let st = cg.command(helper_bin()).args(["try", "tcp", &denied.addr()]).arg(&f).status().unwrap();
    assert!(st.success());
    assert_eq!(Outcomes::read(&f).trim(), "OK");
    agent.wait_for("the audited connect", |e| e["kind"] == "connect" && e["connect"]["port"] == denied.port).unwrap();
    let events = agent.stop().unwrap();
    let c = connects_to(&events, denied.port);
    assert_eq!(c[0]["connect"]["action"], "audited", "{}", c[0]);
    assert_eq!(c[0]["connect"]["decision"], "deny");
    assert_eq!(c[0]["connect"]["mode"], "audit");
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

/// Real traffic: a veth pair into a network namespace holding two test
/// addresses; the agent may reach one of them. The listener in the
/// namespace sees exactly the allowed connections.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn netns_veth_end_to_end() {
    if !require_root("netns_veth_end_to_end") {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        skip("netns_veth_end_to_end", "the `ip` command (iproute2) is missing; `cargo xtask setup` installs it");
        return;
    }
    let ns = format!("ztns{}", std::process::id() % 100_000);
    let (host_if, peer_if) = (format!("ztv{}h", std::process::id() % 10_000), format!("ztv{}p", std::process::id() % 10_000));
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.1]).status();
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone(), host_if.clone());
    assert!(ip(&["netns", "add", &ns]));
    let veth = Command::new("ip").args(["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if]).output().unwrap();
    if String::from_utf8_lossy(&veth.stderr).contains("Unknown device type") {
        // A kernel without the veth driver (the QEMU guest boots one without its modules).
        skip("netns_veth_end_to_end", "this kernel has no veth device (`ip link add type veth`: Unknown device type)");
        return;
    }
    assert!(veth.status.success(), "ip link add veth: {}", String::from_utf8_lossy(&veth.stderr));
    assert!(ip(&["link", "set", &peer_if, "netns", &ns]));
    assert!(ip(&["addr", "add", "10.213.7.1/24", "dev", &host_if]));
    assert!(ip(&["link", "set", &host_if, "up"]));
    for a in ["10.213.7.2/24", "10.213.7.3/24"] {
        assert!(ip(&["-n", &ns, "addr", "add", a, "dev", &peer_if]));
    }
    assert!(ip(&["-n", &ns, "link", "set", &peer_if, "up"]));
    assert!(ip(&["-n", &ns, "link", "set", "lo", "up"]));

    let cg = TestCgroup::new(&format!("/{}/agent", unique("netns"))).unwrap();
    let pol = policy(
        TD,
        &format!(
            "    - name: test-agent\n      selectors:\n        - cgroup: {}/**\n  rules:\n    - name: service\n      identity: test-agent\n      action: allow\n      egress:\n        - to: [10.213.7.2/32]\n          ports: [8080]\n          protocol: tcp\n",
            cg.rel
        ),
    );
    let agent = Agent::start("netns", &pol, &[]).unwrap();
    let helper = helper_bin();
    let listeners: Vec<std::process::Child> = ["10.213.7.2:8080", "10.213.7.3:8080"]
        .iter()
        .map(|a| {
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&helper)
                .args(["listen", a, "4000"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Outcomes::new("netns-out");
    let mut attempt = |addr: &str, as_agent: bool| {
        let f = out.next();
        let mut cmd = if as_agent { cg.command(&helper) } else { Command::new(&helper) };
        assert!(cmd.args(["try", "tcp", addr]).arg(&f).status().unwrap().success());
        Outcomes::read(&f).trim().to_string()
    };
    assert_eq!(attempt("10.213.7.2:8080", true), "OK");
    assert_eq!(attempt("10.213.7.3:8080", true), "EPERM");
    assert_eq!(attempt("10.213.7.2:8080", true), "OK");
    // A process outside any identity reaches both.
    assert_eq!(attempt("10.213.7.3:8080", false), "OK");
    let counts: Vec<u64> =
        listeners.into_iter().map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).trim().parse().unwrap()).collect();
    agent.stop().unwrap();
    assert_eq!(counts, vec![2, 1], "connections accepted at .2 (agent, allowed twice) and .3 (only the non-agent)");
}

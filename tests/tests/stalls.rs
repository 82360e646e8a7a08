//! Root tests that nothing a destination does can stall the agent: an
//! event stream whose reader stopped reading holds up only that output
//! (its queue fills, then its drops are counted), while status answers, denials reach the audit log,
//! and SIGTERM still stops the agent.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::OpenOptionsExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

fn status(socket: &std::path::Path) -> Value {
    let out = Command::new(agent_bin()).args(["status", "--json", "--socket"]).arg(socket).output().unwrap();
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn an_event_reader_that_stops_reading_stalls_nothing() {
    if !require_root("an_event_reader_that_stops_reading_stalls_nothing") {
        return;
    }
    let tmp = tempdir("stall-fifo").unwrap();
    let dir = tmp.path();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("stall"))).unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel)),
    )
    .unwrap();
    let fifo = dir.join("events.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader that opens the pipe and never reads from it.
    let _reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let socket = dir.join("control.sock");
    let mut child = Command::new(agent_bin())
        .arg("run")
        .args(["--policy", dir.join("policy.yaml").to_str().unwrap(), "--state-dir", dir.join("state").to_str().unwrap()])
        .args(["--audit-dir", dir.join("audit").to_str().unwrap(), "--audit-key", dir.join("audit.key").to_str().unwrap()])
        .args(["--events", fifo.to_str().unwrap(), "--show", "all", "--socket", socket.to_str().unwrap(), "--no-pin"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let collect = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        })
    };
    let log = || lines.lock().unwrap().join("\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log().contains("ready:") {
        assert!(child.try_wait().unwrap().is_none(), "the agent exited early:\n{}", log());
        assert!(Instant::now() < deadline, "the agent did not start:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Far more exec/exit events than the pipe (64 KiB) and the queue hold.
    for _ in 0..40 {
        let mut kids: Vec<_> = (0..100).map(|_| Command::new("/bin/true").spawn().unwrap()).collect();
        kids.iter_mut().for_each(|k| {
            k.wait().unwrap();
        });
    }
    // Denials still reach the audit log, and status still answers.
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "5", "127.0.0.1", "42000"]).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = status(&socket);
        let c = &st["counters"];
        // The pipeline went on past the blocked writer (its queue takes
        // 65,536 events; beyond that they would be counted as output_overflow).
        let backlog = c["enriched"].as_u64().unwrap_or(0).saturating_sub(c["written"].as_u64().unwrap_or(0));
        let denied = st["decisions"].as_array().and_then(|d| d.first()).map(|d| d["denied"].clone());
        if backlog > 4000 && denied == Some(5.into()) && st["audit"]["records"].as_u64() >= Some(8) {
            break st;
        }
        assert!(Instant::now() < deadline, "the pipeline stalled or denials are missing: {st}\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["counters"]["audit_overflow"], 0, "{st}");

    // SIGTERM: the stop does not wait forever on the blocked writer.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("SIGTERM did not stop the agent within 40 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    collect.join().unwrap();
    assert!(status.success(), "{status}:\n{}", log());
    assert!(log().contains("the event stream writer did not finish within"), "{}", log());
    let o = Command::new(agent_bin()).args(["audit", "verify", dir.join("audit").to_str().unwrap()]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("INTACT"), "{out}");
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir", dir.join("audit").to_str().unwrap()]).output().unwrap();
    let denials = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"action\":\"denied\"")).count();
    assert_eq!(denials, 5, "every denial is in the signed log");
}

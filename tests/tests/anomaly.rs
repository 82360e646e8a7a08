//! Root tests of the anomaly model's live side: `zt-agent model record`
//! through a running agent records the syscalls of one identity's
//! processes (one trace per thread), and nothing of a process without it.
use std::{path::Path, process::Command, time::Duration};

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
    let record = |out: &Path, duration: &str| {
        Command::new(agent_bin())
            .args(["model", "record", "--identity", "agent", "--duration", duration, "--out"])
            .arg(out)
            .arg("--socket")
            .arg(&agent.socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
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

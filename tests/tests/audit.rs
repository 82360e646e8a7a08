//! Root tests of the signed audit log with the real agent: what gets
//! recorded, verification and proofs by the CLI, tampering found with the
//! exact index, the agent refusing a tampered log (exit 3), and a kill -9
//! loop with torn tails in which no signed record is ever lost.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use zt_tests::*;

const TD: &str = "zt.test";

fn deny_all_policy(cg: &TestCgroup) -> String {
    policy(TD, &format!("    - name: audited-agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel))
}

fn zt(args: &[&str]) -> Output {
    Command::new(agent_bin()).args(args).output().expect("running zt-agent")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The records, exactly as stored (`audit show --json`).
fn records(dir: &Path) -> Vec<Value> {
    let o = zt(&["audit", "show", "--json", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn vkey(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("verifier-keys")).unwrap().lines().next().unwrap().to_string()
}

/// `audit verify DIR --vkey K --trusted-checkpoint F...`.
fn verify_trusting(dir: &Path, trusted: &[PathBuf]) -> Output {
    let mut args = vec!["audit".to_string(), "verify".into(), dir.display().to_string(), "--vkey".into(), vkey(dir)];
    for p in trusted {
        args.extend(["--trusted-checkpoint".to_string(), p.display().to_string()]);
    }
    Command::new(agent_bin()).args(&args).output().expect("running zt-agent")
}

/// Waits until the signed size in the checkpoint file reaches `min`.
fn wait_signed(dir: &Path, min: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(note) = std::fs::read_to_string(dir.join("checkpoint"))
            && note.lines().nth(1).and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= min)
        {
            return note;
        }
        assert!(Instant::now() < deadline, "no checkpoint of size >= {min}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn denials_policy_changes_and_lifecycle_are_signed_and_verifiable() {
    if !require_root("denials_policy_changes_and_lifecycle_are_signed_and_verifiable") {
        return;
    }
    let tmp = tempdir("audit-e2e-files").unwrap();
    let (dir, key) = (tmp.path().join("audit"), tmp.path().join("audit.key"));
    let cg = TestCgroup::new(&format!("/{}/agent", unique("audit"))).unwrap();
    let policy_file = tmp.path().join("policy.yaml");
    std::fs::write(&policy_file, deny_all_policy(&cg)).unwrap();
    let agent = Agent::start(
        "audit-e2e",
        "",
        &["--policy", policy_file.to_str().unwrap(), "--audit-dir", dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()],
    )
    .unwrap();
    assert!(agent.stderr().contains("verifier key: zt-agent/"), "{}", agent.stderr());
    assert_eq!(std::fs::metadata(&key).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap(), 0o400);
    // 20 denied UDP connects to 20 ports: 20 connect records.
    let st = cg.command(helper_bin()).args(["udp-connects-spread", "20", "127.0.0.1", "40100"]).status().unwrap();
    assert!(st.success());
    agent.wait_for("20 denials", |e| e["kind"] == "connect" && e["connect"]["port"] == 40119).unwrap();
    let early = wait_signed(&dir, 1);
    // A rejected reload (broken file), then an applied one.
    std::fs::write(&policy_file, "spec: [broken").unwrap();
    agent.wait_for("rejected", |e| e["kind"] == "policy" && e["policy"]["action"] == "rejected").unwrap();
    std::fs::write(&policy_file, deny_all_policy(&cg) + "\n").unwrap();
    agent
        .wait_for("applied", |e| e["kind"] == "policy" && e["policy"]["action"] == "applied" && e["policy"]["source"] == "inotify")
        .unwrap();
    let status = agent.status();
    assert_eq!(status["audit"]["write_errors"], 0);
    agent.stop().unwrap();

    let recs = records(&dir);
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    let count = |k: &str| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(count("connect"), 20, "{kinds:?}");
    assert!(recs.iter().all(|r| r["kind"] != "connect" || r["payload"]["connect"]["action"] == "denied"));
    let started = recs.iter().find(|r| r["kind"] == "agent" && r["payload"]["agent"]["state"] == "started").expect("start record");
    assert_eq!(started["payload"]["agent"]["object_blake3"].as_str().unwrap().len(), 64);
    assert!(started["payload"]["agent"]["paths"].as_array().is_some_and(|p| !p.is_empty()));
    let stopped = recs.iter().find(|r| r["kind"] == "agent" && r["payload"]["agent"]["state"] == "stopped").expect("stop record");
    assert_eq!(stopped["payload"]["agent"]["reason"], "SIGTERM");
    let actions: Vec<&str> =
        recs.iter().filter(|r| r["kind"] == "policy").map(|r| r["payload"]["policy"]["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["applied", "rejected", "applied"]);
    assert!(count("checkpoint") >= 2);
    assert_eq!(recs.last().unwrap()["kind"], "checkpoint", "the final checkpoint is the last record");
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["idx"], i as u64);
    }

    // Verification, independent of the log directory's own key list.
    let d = dir.to_str().unwrap();
    let vk = vkey(&dir);
    let early_file = tmp.path().join("early.checkpoint");
    std::fs::write(&early_file, &early).unwrap();
    let o = zt(&["audit", "verify", d, "--vkey", &vk, "--trusted-checkpoint", early_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("INTACT"), "{}", text(&o));
    let denied_idx = recs.iter().position(|r| r["kind"] == "connect").unwrap().to_string();
    let o = zt(&["audit", "proof", "--index", &denied_idx, "--dir", d, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let proof: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(proof["index"].to_string(), denied_idx);
    let o = zt(&["audit", "consistency", "--from", early_file.to_str().unwrap(), "--dir", d, "--vkey", &vk]);
    assert!(o.status.success(), "{}", text(&o));
    let o = zt(&["audit", "tail", "-n", "3", "--dir", d]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() == 3, "{}", text(&o));

    // One flipped byte inside a denial record: verify names that record.
    let seg = dir.join("seg-00000001.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = b"\"action\":\"denied\"";
    let at = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    bytes[at + 11] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let o = zt(&["audit", "verify", d, "--vkey", &vk, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["index"].to_string(), denied_idx, "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("checksum mismatch"), "{v}");

    // The agent refuses to continue on a log that contradicts its checkpoint.
    let o = Command::new(agent_bin())
        .args(["run", "--policy", policy_file.to_str().unwrap(), "--audit-dir", d, "--audit-key", key.to_str().unwrap()])
        .args(["--state-dir", tmp.path().join("state").to_str().unwrap(), "--socket", tmp.path().join("sock").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("AUDIT LOG INTEGRITY VIOLATION") && text(&o).contains(&format!("record {denied_idx} (")), "{}", text(&o));
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "the evidence is left as found");
}

/// kill -9 in a loop while denials stream in, each time also tearing the
/// unsynced tail as a power loss would: every restart recovers, and every
/// checkpoint ever published still verifies against the final log.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn kill9_loop_never_loses_a_signed_record() {
    if !require_root("kill9_loop_never_loses_a_signed_record") {
        return;
    }
    let tmp = tempdir("audit-kill9-files").unwrap();
    let (dir, key) = (tmp.path().join("audit"), tmp.path().join("audit.key"));
    let d = dir.to_str().unwrap().to_string();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("kill9"))).unwrap();
    let policy = deny_all_policy(&cg);
    let mut published: Vec<PathBuf> = Vec::new();
    let (mut recoveries, mut tears) = (0, 0);
    for round in 0..5u64 {
        let agent = Agent::start("audit-kill9", &policy, &["--audit-dir", &d, "--audit-key", key.to_str().unwrap()]).unwrap();
        if agent.stderr().contains("audit log recovered after a crash") {
            recoveries += 1;
        }
        let port = (41000 + round * 100).to_string();
        let mut load = cg.command(helper_bin()).args(["udp-connects-spread", "60", "127.0.0.1", &port]).spawn().unwrap();
        // Let at least one checkpoint cover this round's records, and publish it.
        let note = wait_signed(&dir, 1);
        std::thread::sleep(Duration::from_millis(1200 + 150 * round));
        let note = std::fs::read_to_string(dir.join("checkpoint")).unwrap_or(note);
        let f = tmp.path().join(format!("published-{round}.checkpoint"));
        std::fs::write(&f, note).unwrap();
        published.push(f);
        let _ = load.wait();
        drop(agent); // SIGKILL
        // A power loss on top: the unsynced end of the last segment is gone.
        // (Only when the last record is unsigned, as it is unless the kill
        // landed between writing a checkpoint and appending its record.)
        let signed: usize = std::fs::read_to_string(dir.join("checkpoint")).unwrap().lines().nth(1).unwrap().parse().unwrap();
        let tear = records(&dir).len() > signed;
        let last = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        if tear {
            let cut = 1 + (round * 7) % 20;
            std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(len - cut).unwrap();
            tears += 1;
        }
        let o = verify_trusting(&dir, &published);
        assert!(o.status.success(), "round {round}: {}", text(&o));
        assert_eq!(text(&o).contains("torn tail"), tear, "round {round}: {}", text(&o));
    }
    // A final clean run recovers the last tear and closes the log.
    let agent = Agent::start("audit-kill9", &policy, &["--audit-dir", &d, "--audit-key", key.to_str().unwrap()]).unwrap();
    if agent.stderr().contains("audit log recovered after a crash") {
        recoveries += 1;
    }
    agent.stop().unwrap();
    assert!(tears >= 4, "the last record is nearly always unsigned ({tears} of 5)");
    assert_eq!(recoveries, tears, "every torn tail was cut and recorded at the next start");
    let recs = records(&dir);
    // Every torn tail is in a recovery record; every start after a kill that
    // adopted unsigned records is too (an unclean stop, with its range).
    let recovery: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "recovery").collect();
    assert_eq!(recovery.iter().filter(|r| r["payload"]["bytes_dropped"].is_u64()).count(), tears);
    assert!(recovery.len() >= tears && recovery.iter().all(|r| r["payload"]["unclean_stop"].is_boolean()), "{recovery:?}");
    let o = verify_trusting(&dir, &published);
    assert!(o.status.success(), "{}", text(&o));
    println!("kill -9 loop: {} records, {} published checkpoints all consistent", recs.len(), published.len());
}

/// `zt-agent audit rotate-key` on the running agent: both keys sign during
/// the overlap, then only the new one; a verifier holding only the old key
/// follows the rotation.
/// One request line to the control socket, the response line back.
fn raw_request(socket: &Path, line: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn key_rotation_on_the_running_agent() {
    if !require_root("key_rotation_on_the_running_agent") {
        return;
    }
    let tmp = tempdir("audit-rotate-files").unwrap();
    let (dir, key) = (tmp.path().join("audit"), tmp.path().join("audit.key"));
    let cg = TestCgroup::new(&format!("/{}/agent", unique("rotate"))).unwrap();
    let agent =
        Agent::start("audit-rotate", &deny_all_policy(&cg), &["--audit-dir", dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()])
            .unwrap();
    let old = vkey(&dir);
    let sock = agent.socket.to_str().unwrap().to_string();
    // An overlap beyond RFC 3339's year 9999 once panicked the audit thread,
    // after which every security event was dropped uncounted. The CLI
    // refuses it, and so does the agent when it comes over the socket.
    let o = zt(&["audit", "rotate-key", "--overlap", "10000y", "--socket", &sock]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("at most 30days"), "{}", text(&o));
    let reply = raw_request(&agent.socket, r#"{"request":"rotate_audit_key","overlap_secs":315360000000}"#);
    assert!(reply.contains("\"error\"") && reply.contains("exceeds the maximum"), "{reply}");
    let status = agent.status();
    assert!(status["audit"]["failed"].is_null(), "{status}");
    assert_eq!(status["counters"]["audit_closed"], 0, "{status}");
    let o = zt(&["audit", "rotate-key", "--overlap", "2s", "--socket", &sock]);
    assert!(o.status.success(), "{}", text(&o));
    let status = agent.status();
    assert_eq!(status["audit"]["verifier_keys"].as_array().unwrap().len(), 2, "{status}");
    let note = std::fs::read_to_string(dir.join("checkpoint")).unwrap();
    assert_eq!(note.matches('\u{2014}').count(), 2, "dual-signed during the overlap:\n{note}");
    let o = zt(&["audit", "rotate-key", "--socket", &sock]);
    assert!(!o.status.success() && text(&o).contains("already in progress"), "{}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.status()["audit"]["verifier_keys"].as_array().unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "old key never retired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let new = agent.status()["audit"]["verifier_keys"][0].as_str().unwrap().to_string();
    assert_ne!(new, old);
    agent.stop().unwrap();
    let o = zt(&["audit", "verify", dir.to_str().unwrap(), "--vkey", &old, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["trusted_keys"], serde_json::json!([new]));
    let kinds: Vec<String> = records(&dir).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect();
    assert!(kinds.contains(&"key_rotation".to_string()) && kinds.contains(&"key_retired".to_string()), "{kinds:?}");
    // The agent restarts signing with the new key.
    let agent =
        Agent::start("audit-rotate", &deny_all_policy(&cg), &["--audit-dir", dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()])
            .unwrap();
    assert_eq!(agent.status()["audit"]["verifier_keys"], serde_json::json!([new]));
    agent.stop().unwrap();
}

/// `audit show` into a reader that stops early ends quietly (it once
/// panicked on the broken pipe), and a log that ends in a bad frame is
/// reported after the records, exit status 1 (it once exited 0).
#[test]
fn show_survives_a_closed_pipe_and_reports_a_bad_frame() {
    use std::io::{BufRead as _, Write as _};
    let tmp = tempdir("audit-show").unwrap();
    let dir = tmp.path().join("log");
    let cfg = zt_agent::audit::log::Config::new(dir.clone(), tmp.path().join("key"), "zt-test/show".into());
    let (mut log, _) = zt_agent::audit::log::AuditLog::open(cfg).unwrap();
    for i in 0..5000 {
        log.append("connect", serde_json::json!({"n": i, "pad": "x".repeat(64)})).unwrap();
    }
    log.close().unwrap();
    let dir_s = dir.to_str().unwrap();

    let mut child = Command::new(agent_bin())
        .args(["audit", "show", "--dir", dir_s])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("connect"), "{first}");
    assert!(out.status.success(), "exit {:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));

    let seg =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "log")).max().unwrap();
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(b"\x10\x00\x00\x00garbage").unwrap();
    let o = zt(&["audit", "show", "--dir", dir_s]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the log ends early at record"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).lines().count() >= 5000);
}

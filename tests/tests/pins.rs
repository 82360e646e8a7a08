//! Root test of enforcement that outlives the daemon: `kill -9` of the
//! agent leaves egress denied (no window), a restart adopts the pinned
//! state without a gap, a clean stop leaves enforcement in place, and
//! `zt-agent uninstall` removes every program and pin.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
};

use serde_json::Value;
use zt_tests::*;

fn spawn_loop(mut cmd: Command, ms: u64, addr: &str) -> Child {
    cmd.args(["connect-loop", &ms.to_string(), addr]).stdout(Stdio::piped()).spawn().unwrap()
}

fn counts(child: Child) -> (u64, u64) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Names of our loaded programs, each once per loaded copy.
fn ours() -> Vec<String> {
    let mut v = our_loaded_programs();
    v.sort();
    v
}

/// Our loaded programs once they equal `want` (programs are freed after an
/// RCU grace period, not at once), or after 5 s.
fn settled(want: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = ours();
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A private pin directory under bpffs (uninstalled when dropped) and
/// state, audit log and key under a private temp dir: the `run` flags of
/// one pinned agent and its successors.
struct PinnedRun {
    tmp: tempfile::TempDir,
    pin_dir: std::path::PathBuf,
    audit: String,
    flags: Vec<String>,
}

impl PinnedRun {
    fn new(name: &str) -> PinnedRun {
        let tmp = tempdir(name).unwrap();
        let pin_dir = Path::new("/sys/fs/bpf").join(unique(&format!("zt-test-{name}")));
        let d = |n: &str| tmp.path().join(n).display().to_string();
        let audit = d("audit");
        let flags = vec![
            "--pin-dir".into(),
            pin_dir.display().to_string(),
            "--state-dir".into(),
            d("state"),
            "--audit-dir".into(),
            audit.clone(),
            "--audit-key".into(),
            d("audit.key"),
        ];
        PinnedRun { tmp, pin_dir, audit, flags }
    }

    fn args(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }
}

impl Drop for PinnedRun {
    fn drop(&mut self) {
        drop(Uninstall(self.pin_dir.clone()));
    }
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups, pins under bpffs): cargo xtask test runs it"]
fn enforcement_survives_the_daemon_and_a_restart_adopts_it() {
    if !require_root("enforcement_survives_the_daemon_and_a_restart_adopts_it") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("pins"))).unwrap();
    let pol = policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let run = PinnedRun::new("pins");
    let (tmp, pin_dir, audit, args) = (&run.tmp, &run.pin_dir, &run.audit, run.args());
    let listener = Listener::new();
    let addr = listener.addr();
    assert!(ours().is_empty(), "programs of ours loaded before the test: {:?}", ours());

    let mut first = Agent::start("pins-1", &pol, &args).unwrap();
    let programs = ours();
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "denied while the agent runs");

    // kill -9: the programs stay attached and the policy stays in force.
    first.kill9();
    let (denied, allowed) = connect_loop(cg.command(helper_bin()), 500, &addr);
    assert_eq!(allowed, 0, "a connect got out while no agent ran ({denied} denied)");
    assert!(denied > 50);
    let (_, control) = connect_loop(Command::new(helper_bin()), 100, &addr);
    assert!(control > 0, "the control, outside the identity, connects");
    assert_eq!(ours(), programs, "the same programs stay loaded");
    drop(first);

    // A restart adopts the pins: connects from the identity never get out,
    // before, during and after the switch of programs.
    let during = spawn_loop(cg.command(helper_bin()), 4000, &addr);
    let second = Agent::start("pins-2", &pol, &args).unwrap();
    assert!(second.stderr().contains("adopting the pinned state"), "{}", second.stderr());
    let started: Vec<Value> = second.events().into_iter().filter(|e| e["kind"] == "agent" && e["agent"]["state"] == "started").collect();
    assert_eq!(started[0]["agent"]["adopted"]["enforced_generation"], 1, "{started:?}");
    assert_eq!(started[0]["agent"]["pinned"].as_str().map(|p| p.starts_with(pin_dir.to_str().unwrap())), Some(true));
    let st = second.status();
    assert_eq!(st["policy"]["generation"], 2, "the policy generation continues from the pinned slots");
    let when_down =
        st["paths"].as_array().unwrap().iter().find(|p| p[0] == "enforcement when the agent is not running").unwrap()[1].to_string();
    assert!(when_down.contains("pinned at") && when_down.contains("left policy generation 1 in force"), "{when_down}");
    let (denied, allowed) = counts(during);
    assert_eq!(allowed, 0, "a connect got out across the restart ({denied} denied)");
    assert_eq!(settled(&programs), programs, "the previous run's programs were retired: one set loaded");

    // A clean stop leaves enforcement in place too.
    second.stop().unwrap();
    assert_eq!(ours(), programs);
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "denied after a clean stop");

    // uninstall: nothing of ours left, and no enforcement.
    let o = Command::new(agent_bin()).args(["uninstall", "--pin-dir"]).arg(pin_dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("removed "), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(settled(&[]), Vec::<String>::new(), "left after uninstall");
    assert!(!pin_dir.exists());
    assert!(connect_loop(cg.command(helper_bin()), 100, &addr).1 > 0, "no enforcement after uninstall");

    // Pins of another build (another map layout) are refused, not adopted.
    std::fs::create_dir_all(pin_dir.join("0000000000000000")).unwrap();
    std::fs::write(tmp.path().join("policy.yaml"), &pol).unwrap();
    let o = Command::new(agent_bin())
        .arg("run")
        .args(args)
        .args(["--policy", tmp.path().join("policy.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && text.contains("holds pins of another build") && text.contains("zt-agent uninstall --pin-dir"), "{text}");

    // The audit log records the unclean stop at the adopting start, and verifies.
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir", audit]).output().unwrap();
    let recs: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(recs.iter().any(|r| r["kind"] == "recovery" && r["payload"]["unclean_stop"] == true), "no recovery record");
    assert!(recs.iter().any(|r| r["kind"] == "agent" && r["payload"]["agent"]["adopted"]["enforced_generation"] == 1));
    let o = Command::new(agent_bin()).args(["audit", "verify", audit]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

/// An `exeDigest` selector makes every binary no daemon has hashed yet
/// pending. While no daemon runs, such a process keeps its egress refused,
/// but the guards leave it alone: a new agent binary (an upgrade) is one of
/// them, and was killed at its first `bpf(2)` (exit 137), so no daemon
/// could ever come back. Once one runs, it settles them.
#[test]
#[ignore = "needs root (loads eBPF programs, pins under bpffs): cargo xtask test runs it"]
fn a_new_agent_binary_starts_while_digest_pins_hold() {
    if !require_root("a_new_agent_binary_starts_while_digest_pins_hold") {
        return;
    }
    // A digest no file has: it selects nothing, but every binary not
    // hashed yet is pending until a daemon has hashed it.
    let pol = policy("zt.test", &format!("    - name: nothing\n      selectors:\n        - exeDigest: blake3:{}\n", "0".repeat(64)));
    let run = PinnedRun::new("pins-digest");
    let (tmp, args) = (&run.tmp, run.args());
    let listener = Listener::new();
    let addr = listener.addr();
    let out = tmp.path().join("result");

    let mut first = Agent::start("pins-digest-1", &pol, &args).unwrap();
    first.kill9();
    // Copies made now, while no daemon runs: nobody has hashed them.
    let (new_agent, fresh) = (tmp.path().join("zt-agent-new"), tmp.path().join("zt-helper-fresh"));
    std::fs::copy(agent_bin(), &new_agent).unwrap();
    std::fs::copy(helper_bin(), &fresh).unwrap();
    let attempt = || helper_result(Command::new(&fresh), &["try", "tcp", &addr], &out);
    assert_eq!(attempt(), "EPERM", "pending with no daemon to settle it: egress stays refused");
    let r = helper_result(Command::new(&fresh), &["around", "bpf", "-"], &out);
    assert_ne!(r, "KILLED", "pending with no daemon to settle it: not killed at bpf(2)");

    let second = Agent::start_binary(&new_agent, "pins-digest-2", &pol, &args).unwrap();
    assert!(second.stderr().contains("adopting the pinned state"), "{}", second.stderr());
    // Its CLI (the same file) is decided at exec: never held pending, so
    // its connect to the control socket is never refused.
    let o = Command::new(&new_agent).args(["status", "--json", "--socket"]).arg(&second.socket).output().unwrap();
    assert!(o.status.success(), "status: {}", String::from_utf8_lossy(&o.stderr));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths = st["paths"].as_array().unwrap();
    assert!(paths.iter().any(|p| p[0] == "processes pending an exec verdict while the agent is not running"), "{paths:?}");
    // A daemon runs: the fresh binary (no selector names it) is hashed and
    // decided at its next runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match attempt().as_str() {
            "OK" => break,
            "EPERM" if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(100)),
            r => panic!("the fresh binary after a daemon started: {r}"),
        }
    }
    second.stop().unwrap();
}

/// A restarted daemon installs into the slot the previous run left out of
/// force, and clears that run's entries there first: an allow rule the
/// previous run had replaced must not come back with the next policy.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups, pins under bpffs): cargo xtask test runs it"]
fn a_restart_clears_what_the_previous_run_left_in_the_idle_slot() {
    if !require_root("a_restart_clears_what_the_previous_run_left_in_the_idle_slot") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("pins-slots"))).unwrap();
    let listener = Listener::new();
    let addr = listener.addr();
    let ident = format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel);
    let denying = policy("zt.test", &ident);
    let allowing = format!("{denying}  rules:\n    - identity: a\n      action: allow\n      egress:\n        - to: [127.0.0.1/32]\n");
    let tmp = tempdir("pins-slots").unwrap();
    let pin_dir = Path::new("/sys/fs/bpf").join(unique("zt-test-slots"));
    let cleanup = Uninstall(pin_dir.clone());
    let d = |n: &str| tmp.path().join(n).display().to_string();
    let (state, policy_file) = (d("state"), d("policy.yaml"));
    std::fs::write(&policy_file, &allowing).unwrap();
    let args = ["--pin-dir", pin_dir.to_str().unwrap(), "--state-dir", &state, "--policy", &policy_file];

    // Generation 1 (slot 0) allows; generation 2 (slot 1) denies.
    let mut first = Agent::start("slots-1", "", &args).unwrap();
    assert!(connect_loop(cg.command(helper_bin()), 100, &addr).1 > 0, "allowed by generation 1");
    std::fs::write(&policy_file, &denying).unwrap();
    first.wait_status("generation 2", |s| s["policy"]["generation"] == 2);
    assert_eq!(connect_loop(cg.command(helper_bin()), 100, &addr).1, 0, "denied by generation 2");
    first.kill9();
    drop(first);

    // The next run installs the same denying policy into slot 0, where
    // generation 1's allow entry still sits.
    let second = Agent::start("slots-2", "", &args).unwrap();
    assert_eq!(second.status()["policy"]["generation"], 3);
    let (denied, allowed) = connect_loop(cg.command(helper_bin()), 200, &addr);
    assert_eq!(allowed, 0, "a stale allow entry of the previous run decided ({denied} denied)");
    second.stop().unwrap();
    drop(cleanup);
    assert_eq!(settled(&[]), Vec::<String>::new(), "left after uninstall");
}

//! Root test of self-protection (host: fanotify and tracepoints; guest:
//! BPF LSM): an agent identity, root in its cgroup, goes for the agent
//! itself. It appends to a file in the agent's state directory, truncates
//! its policy file, writes into its binary, reads its audit signing key,
//! asks its control socket for status (refused by the Unix-socket hooks,
//! or, where they do not load, by the agent itself) and signals it. Each is refused,
//! checked on the far side (the files' bytes, the key never printed, the
//! agent still running); a signal is refused where BPF LSM loads, and
//! elsewhere its sender is killed (the signal itself is delivered: a
//! harmless one here). A root process without an identity does the same
//! things unhindered (the control).
use std::{path::Path, process::Command};

use serde_json::Value;
use zt_tests::*;

/// `sh -c script` in `cg` (an agent identity) or outside (no identity).
fn sh(cg: Option<&TestCgroup>, script: &str) -> std::process::Output {
    let mut c = match cg {
        Some(cg) => cg.command("sh"),
        None => Command::new("sh"),
    };
    c.args(["-c", script]).output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn digest(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn an_agent_identity_cannot_touch_the_agent() {
    if !require_root("an_agent_identity_cannot_touch_the_agent") {
        return;
    }
    let tmp = tempdir("self-protection").unwrap();
    let dir = tmp.path();
    // The agent runs from a copy: if protection failed, only the copy is hurt.
    let bin = dir.join("bin/zt-agent");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(agent_bin(), &bin).unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let victim = state.join("victim");
    std::fs::write(&victim, "original\n").unwrap();
    let key = dir.join("audit.key");
    let cg = TestCgroup::new(&format!("/{}/coder", unique("selfprot"))).unwrap();
    let pol = policy("zt.test", &format!("    - name: coder\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let audit = dir.join("audit");
    let args = ["--state-dir", state.to_str().unwrap(), "--audit-dir", audit.to_str().unwrap(), "--audit-key", key.to_str().unwrap()];
    let agent = Agent::start_binary(&bin, "self-protection", &pol, &args).unwrap();
    let status = agent.status();
    let lsm = status["hooks"].as_array().unwrap().iter().any(|h| h["program"] == "guard_lsm_signal" && h["attached"] == true);
    let raw_tp = status["hooks"].as_array().unwrap().iter().any(|h| h["program"] == "guard_signal" && h["attached"] == true);
    assert!(lsm || raw_tp, "a signal guard is attached: {}", status["hooks"]);
    let policy_file = agent.dir.join("policy.yaml");
    let (bin_digest, policy_digest) = (digest(&bin), digest(&policy_file));

    // Files: each refused, the bytes unchanged.
    let o = sh(Some(&cg), &format!("echo attack >> {}", victim.display()));
    assert!(!o.status.success(), "append to the state directory: {}", text(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original\n");
    let o = sh(Some(&cg), &format!(": > {}", policy_file.display()));
    assert!(!o.status.success(), "truncate the policy file: {}", text(&o));
    assert_eq!(digest(&policy_file), policy_digest);
    let o = sh(Some(&cg), &format!("echo x >> {}", bin.display()));
    assert!(!o.status.success(), "write into the binary: {}", text(&o));
    assert_eq!(digest(&bin), bin_digest);
    let o = sh(Some(&cg), &format!("cat {}", key.display()));
    assert!(!o.status.success() && o.stdout.is_empty(), "read the audit key: {}", text(&o));

    // The control socket: the identity's connect is refused (Unix-socket
    // hooks, Linux >= 6.7), or the agent refuses to answer it (its
    // process table, any kernel).
    let unix_hook = status["hooks"].as_array().unwrap().iter().any(|h| h["program"] == "connect_unix" && h["attached"] == true);
    let o = sh(Some(&cg), &format!("{} status --socket {}", bin.display(), agent.socket.display()));
    let why = if unix_hook { "not permitted" } else { "answers no agent identity" };
    assert!(!o.status.success() && text(&o).contains(why), "status through the socket: {}", text(&o));

    // A signal: refused (BPF LSM), or the sender killed.
    let pid = agent.pid().unwrap();
    let o = sh(Some(&cg), &format!("kill -WINCH {pid}; echo sent"));
    if lsm {
        assert!(text(&o).contains("not permitted") && text(&o).contains("sent"), "kill refused with EPERM: {}", text(&o));
    } else {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "the sender killed before it returns: {}", text(&o));
    }
    let is_signal = |e: &Value| e["kind"] == "guard" && e["guard"]["call"] == "signal";
    let events = agent.wait_for("the signal guard's event", is_signal).unwrap();
    let g: &Value = &events.iter().find(|e| is_signal(e)).unwrap()["guard"];
    assert_eq!(g["action"], if lsm { "denied" } else { "killed" });
    assert_eq!(g["args"][0], 28, "SIGWINCH");
    assert_eq!(g["target"]["pid"], pid);
    assert!(agent.pid().is_some(), "the agent runs on");

    // The events name the self-protection rule.
    let files = agent.wait_for("file denials by self-protection", |e| {
        e["kind"] == "file" && e["file"]["rule"] == "zt-agent:self-protection:coder" && e["file"]["decision"] == "deny"
    });
    assert!(files.is_ok(), "{:?}", agent.events_where(|l| l.contains("\"kind\":\"file\"")));

    // The control: root without an identity is not hindered.
    let o = sh(None, &format!("echo more >> {} && cat {} > /dev/null && kill -WINCH {pid}", victim.display(), key.display()));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original\nmore\n");
    assert_eq!(agent.status()["policy"]["version"], 1);
    let guards = agent.events().iter().filter(|e| is_signal(e)).count();
    assert_eq!(guards, 1, "the control's signal is no event");
    agent.stop().unwrap();
}

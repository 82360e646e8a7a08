//! The CLI's answers to bad input and missing privileges (no root needed for
//! the policy checks; the privilege test drops to an unprivileged uid).
use std::{os::unix::process::CommandExt, process::Command};

use zt_tests::{agent_bin, require_root, tempdir};

fn check(text: &str) -> (i32, String, String) {
    let dir = tempdir("cli-check").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(agent_bin()).args(["policy", "check"]).arg(&p).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace(&p.display().to_string(), "P"),
        String::from_utf8_lossy(&out.stderr).replace(&p.display().to_string(), "P"),
    )
}

#[test]
fn shipped_policies_check_ok() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let out = Command::new(agent_bin()).args(["policy", "check"]).arg(&p).output().unwrap();
            assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the shipped policies in {}", dir.display());
}

#[test]
fn invalid_policy_names_file_line_column() {
    let (code, _, err) = check("apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: Bad_Domain\n  identities: []\n");
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "P:4:16: invalid trustDomain \"Bad_Domain\": only lowercase letters, digits, '.', '-' and '_' are allowed (hint: e.g. \"prod.example.com\")"
    );
}

#[test]
fn unreadable_policy_is_a_clear_error() {
    let out = Command::new(agent_bin()).args(["policy", "check", "/nonexistent/zt.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("/nonexistent/zt.yaml: cannot read: No such file or directory"), "{err}");
}

#[test]
fn run_with_invalid_policy_exits_nonzero_with_position() {
    let dir = tempdir("cli-run").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(
        &p,
        "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: x\n      selectors: []\n",
    )
    .unwrap();
    let out = Command::new(agent_bin()).args(["run", "--policy"]).arg(&p).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    // Either the privilege check (non-root) or the policy error (root) comes first.
    if nix::unistd::geteuid().is_root() {
        assert!(err.contains("p.yaml:7:18: identity \"x\" has no selectors"), "{err}");
    } else {
        assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
    }
}

#[test]
#[ignore = "needs root (drops to uid 65534): cargo xtask test runs it"]
fn unprivileged_run_names_missing_capabilities() {
    if !require_root("unprivileged_run_names_missing_capabilities") {
        return;
    }
    let out = Command::new(agent_bin()).arg("run").uid(65534).gid(65534).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zt-agent needs CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON"), "{err}");
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn probe_reports_every_feature() {
    if !require_root("probe_reports_every_feature") {
        return;
    }
    let out = Command::new(agent_bin()).args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["features"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for n in [
        "tracepoint",
        "raw_tracepoint",
        "ring_buffer",
        "lpm_trie",
        "cgroup_sock_addr",
        "bpf_lsm",
        "fentry",
        "kprobe",
        "bpf_send_signal",
        "bpffs",
        "cgroup_v2",
    ] {
        assert!(names.contains(&n), "probe lacks {n}: {names:?}");
    }
    // Whatever this kernel says, the probe must have judged by loading: a
    // tracepoint must work on any kernel the agent supports.
    let tp = v["features"].as_array().unwrap().iter().find(|f| f["name"] == "tracepoint").unwrap();
    assert_eq!(tp["available"], true, "{tp}");
}

/// `policy check` on a FIFO or a device answers at once with the rule it
/// broke (it once blocked forever on a FIFO and grew without bound on
/// /dev/zero).
#[test]
fn check_refuses_fifos_and_devices_at_once() {
    let dir = tempdir("cli-fifo").unwrap();
    let fifo = dir.path().join("p.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (path, what) in [(fifo.as_path(), "a FIFO"), (std::path::Path::new("/dev/zero"), "a character device")] {
        let mut child = Command::new(agent_bin())
            .args(["policy", "check"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("`policy check {}` still running after 10 s", path.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim(), format!("{}: cannot read: {what}; policy files must be regular files", path.display()));
    }
}

/// More identities than the kernel tables hold is an invalid policy (exit 1),
/// like every other policy error (it once exited 2 as a tool failure).
#[test]
fn identity_capacity_is_a_policy_error() {
    let mut text = String::from("apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n");
    for i in 0..1025 {
        text.push_str(&format!("    - name: i{i}\n      selectors:\n        - uid: {i}\n"));
    }
    let (code, _, err) = check(&text);
    assert_eq!(code, 1, "{err}");
    // The first identity beyond the capacity, at its line: 5 + 3 * 1024 + 1.
    assert_eq!(err.trim(), "P:3078:13: identity \"i1024\" is number 1025 (over the agent's lifetime, ids are never reused), capacity 1024",);
}

/// A policy with one identity and the given rules (each a YAML list item
/// under `rules:`, indented by 4); the rules start at line 11.
fn with_rules(rules: &str) -> String {
    format!(
        "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata:\n  name: t\nspec:\n  trustDomain: zt.test\n  identities:\n    - name: a\n      selectors:\n        - uid: 4242\n  rules:\n{rules}"
    )
}

fn conditional_rule(action: &str, when: &str) -> String {
    format!("    - identity: a\n      action: {action}\n      when:\n{when}      egress:\n        - to: [10.0.0.0/8]\n")
}

#[test]
fn conditions_that_could_stall_or_fail_open_are_rejected_at_check() {
    // A builtin outside the allowed set (network, unbounded work): named, at its position.
    let (code, _, err) = check(&with_rules(&conditional_rule(
        "deny",
        "        rego: |\n          input.node.name != \"\"\n          http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1:1\"}).status_code == 200\n",
    )));
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("P:17:11: invalid Rego condition: builtin `http.send` is not allowed in a condition"), "{err}");
    // A condition that would run for hours: stopped at its budget, rejected with its position.
    let every_env = (0..8).map(|i| format!("input.env[k{i}]")).collect::<Vec<_>>().join("; ");
    let (code, _, err) = check(&with_rules(&conditional_rule("deny", &format!("        rego: 'count([1 | {every_env}]) > 0'\n"))));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("P:15:15: rule \"a/0\": the Rego condition did not finish within its budget (250 ms per condition"), "{err}");
}

#[test]
fn explain_conditions_says_why_each_rule_is_or_is_not_active() {
    let hour = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600) % 24;
    let (start, end) = ((hour + 2) % 24, (hour + 3) % 24);
    let rules = [
        conditional_rule("allow", &format!("        timeWindow: {{start: \"{start:02}:00\", end: \"{end:02}:00\"}}\n")),
        conditional_rule("allow", "        rego: input.node.labels.zone == \"nowhere\"\n"),
        conditional_rule("deny", "        rego: to_number(\"not a number\") > 1\n"),
    ]
    .concat();
    let dir = tempdir("cli-explain").unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, with_rules(&rules)).unwrap();
    let out = Command::new(agent_bin())
        .args(["policy", "explain", "--identity", "a", "--connect", "10.1.2.3:443", "--conditions", "--policy"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("rule \"a/0\": inactive: outside its time window (now "), "{text}");
    assert!(text.contains("rule \"a/1\": inactive: its Rego condition is false on this host's input"), "{text}");
    assert!(text.contains(&format!("rule \"a/2\": active (fails closed): its Rego condition failed at {}:", p.display())), "{text}");
    assert!(text.starts_with("deny"), "the deny rule whose condition failed stays in force: {text}");
}

#[test]
fn config_check_names_every_error_at_its_place() {
    let dir = tempdir("cli-config").unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, "eventRate: 100\nsyslog:\n  - tls://siem:6514\n").unwrap();
    let out = Command::new(agent_bin()).args(["config", "check"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&p.display().to_string(), "C");
    assert_eq!(out.status.code(), Some(1));
    assert!(err.starts_with("C:3:5: ") && err.contains("needs ca=FILE"), "{err}");
    std::fs::write(&p, "eventRate: 100\npollMillis: 5\n").unwrap();
    let out = Command::new(agent_bin()).args(["config", "check"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&p.display().to_string(), "C");
    assert_eq!(out.status.code(), Some(1));
    assert!(err.starts_with("C:2:1: ") && err.contains("pollMillis"), "an unknown key: {err}");
    std::fs::write(&p, "eventRate: 100\nsyslog: [\"udp://127.0.0.1:514\"]\n").unwrap();
    let out = Command::new(agent_bin()).args(["config", "check"]).arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `run` refuses the bad file before touching the kernel.
    std::fs::write(&p, "eventRate: lots\n").unwrap();
    let out = Command::new(agent_bin()).args(["run", "--config"]).arg(&p).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).replace(&p.display().to_string(), "C");
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("C:1:12: "), "{err}");
}

/// The file sets what the command line does not; the command line wins
/// where both do; `status` says where each value came from.
#[test]
#[ignore = "needs root: loads eBPF programs"]
fn the_command_line_overrides_the_config_file_and_status_says_so() {
    if !require_root("the_command_line_overrides_the_config_file_and_status_says_so") {
        return;
    }
    let dir = tempdir("cli-config-run").unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, "eventRate: 1234\nshow: attributed\n").unwrap();
    let policy = zt_tests::policy("zt.test", "    - name: nobody\n      selectors:\n        - cgroup: /zt-none-such/**\n");
    // Agent::start passes `--show all` on the command line.
    let agent = zt_tests::Agent::start("config-run", &policy, &["--config", p.to_str().unwrap()]).unwrap();
    let config = agent.status()["config"].clone();
    let setting = |key: &str| config.as_array().unwrap().iter().find(|s| s["key"] == key).cloned().unwrap();
    assert_eq!(setting("eventRate")["value"], "1234");
    assert_eq!(setting("eventRate")["source"], format!("{}:1:12", p.display()));
    assert_eq!((setting("show")["value"].as_str(), setting("show")["source"].as_str()), (Some("All"), Some("command line")));
    assert_eq!(setting("pollMs")["source"], "default");
    agent.stop().unwrap();
}

/// `model train` then `model eval --json` on traces in the datasets'
/// format: the figures the issue names are there, a behaviour the normal
/// traces never show is told apart, and a bad token is reported at
/// file:line:column.
#[test]
fn model_train_and_eval_on_trace_directories() {
    let dir = tempdir("cli-model").unwrap();
    let write = |sub: &str, name: &str, calls: &[u32]| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        let text: Vec<String> = calls.iter().map(u32::to_string).collect();
        std::fs::write(d.join(name), text.join(" ") + "\n").unwrap();
    };
    // Normal: a read loop with a varying tail, in train/ and normal/;
    // attack: the same calls in an order never seen, in attack/.
    for i in 0..60u32 {
        let trace: Vec<u32> = [0, 1, 2, 3, i % 4 + 4, 1].repeat(8 + i as usize % 7);
        write(if i % 2 == 0 { "train" } else { "normal/sub" }, &format!("{i}.txt"), &trace);
    }
    for i in 0..10 {
        write("attack", &format!("{i}.txt"), &[59, 33, 33, 33, 2, 0, 1].repeat(5));
    }
    let model = dir.path().join("m.json");
    let run = |args: &[&std::ffi::OsStr]| Command::new(agent_bin()).arg("model").args(args).output().unwrap();
    let train = run(&["train".as_ref(), "--input".as_ref(), dir.path().join("train").as_os_str(), "--out".as_ref(), model.as_os_str()]);
    assert!(train.status.success(), "{}", String::from_utf8_lossy(&train.stderr));
    let said = String::from_utf8_lossy(&train.stdout);
    assert!(said.contains(": 30 traces,") && said.contains("(order 6,"), "{said}");
    let eval = run(&[
        "eval".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--normal".as_ref(),
        dir.path().join("normal").as_os_str(),
        "--attack".as_ref(),
        dir.path().join("attack").as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let e: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    for key in ["auc", "dr_at_1pct", "fpr_at_1pct", "dr_at_5pct", "fpr_at_5pct"] {
        assert!(e[key].is_number(), "{key} in {e}");
    }
    assert_eq!((e["normal_calibration"].as_u64(), e["normal_held_out"].as_u64(), e["attack"].as_u64()), (Some(15), Some(15), Some(10)));
    assert_eq!(e["auc"].as_f64(), Some(1.0), "{e}");
    assert_eq!(e["dr_at_1pct"].as_f64(), Some(1.0), "{e}");
    // A bad token: file:line:column, exit non-zero.
    std::fs::write(dir.path().join("train/bad.txt"), "1 2\n3 4x\n").unwrap();
    let bad = run(&["train".as_ref(), "--input".as_ref(), dir.path().join("train").as_os_str(), "--out".as_ref(), model.as_os_str()]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("train/bad.txt:2:3: \"4x\" is not a syscall number"), "{err}");
}

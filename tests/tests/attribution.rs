//! Root integration tests of in-kernel attribution: the real agent binary,
//! real programs, real cgroups, real processes and loopback connections.
//! Each test needs root (`#[ignore]`d for plain `cargo test`).
use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use zt_tests::*;

const TD: &str = "zt.test";

fn cgroup_policy(cg: &TestCgroup) -> String {
    policy(
        TD,
        &format!("    - name: test-agent\n      spiffeId: spiffe://{TD}/agent/test\n      selectors:\n        - cgroup: {}/**\n", cg.rel),
    )
}

fn assert_agent(e: &serde_json::Value, what: &str) {
    assert_eq!(identity_of(e), Some("test-agent"), "{what} not attributed: {e}");
    assert_eq!(e["identity"]["spiffe_id"], format!("spiffe://{TD}/agent/test"), "{what}: {e}");
}

/// An "agent" shell in an agent cgroup forks, execs other binaries, connects,
/// double-forks, calls setsid, leaves its cgroup, uses a second thread: every
/// exec and connect of every descendant carries the identity; processes
/// outside never do.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn lineage_survives_fork_exec_setsid_double_fork_threads_and_cgroup_escape() {
    if !require_root("lineage_survives_fork_exec_setsid_double_fork_threads_and_cgroup_escape") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("lineage"))).unwrap();
    let agent = Agent::start("lineage", &cgroup_policy(&cg), &["--observe-all-connects"]).unwrap();
    let helper = helper_bin();
    let h = helper.display();
    let root_procs = cgroup2_root().join("cgroup.procs");
    let ports: Vec<Listener> = (0..8).map(|_| Listener::new()).collect();
    let p = |i: usize| ports[i].addr();
    let mark = "ZTMARK-IN";
    let script = format!(
        "set -e
         /bin/true {mark}
         {h} connect {a0} {mark}
         ( {h} connect {a1} {mark} )
         setsid {h} connect {a2} {mark}
         {h} double-fork-connect {a3} {mark}
         {h} thread-connect {a4} {mark}
         {h} escape-connect {procs} {a5} {mark}
         sh -c 'exec {h} connect {a6} {mark}'
         ( echo $BASHPID > {procs}; {h} double-fork-connect {a7} {mark} )
         wait",
        a0 = p(0),
        a1 = p(1),
        a2 = p(2),
        a3 = p(3),
        a4 = p(4),
        a5 = p(5),
        a6 = p(6),
        a7 = p(7),
        procs = root_procs.display(),
    );
    let status = cg.command("bash").arg("-c").arg(&script).status().unwrap();
    assert!(status.success());

    // Outside the cgroup: same binaries, never attributed.
    let outside = Listener::new();
    let st = Command::new(&helper).args(["connect", &outside.addr(), "ZTMARK-OUT"]).status().unwrap();
    assert!(st.success());

    // The last scenario left the agent cgroup before forking: only lineage
    // (not the cgroup) can attribute its descendants.
    let last = ports[7].port;
    let events =
        agent.wait_for("the double-forked grandchild's connect", |e| e["kind"] == "connect" && e["connect"]["port"] == last).unwrap();
    let events = {
        // Let the remaining events drain, then stop (which flushes everything).
        agent.wait_for("the outside connect", |e| e["kind"] == "connect" && e["connect"]["port"] == outside.port).unwrap();
        drop(events);
        agent.stop().unwrap()
    };

    let execs = execs_with(&events, mark);
    // true, 6 helper execs (the subshell and setsid ones included), sh, and the helper sh execs into.
    assert!(execs.len() >= 8, "expected >= 8 marked execs, got {}: {execs:#?}", execs.len());
    for e in &execs {
        assert_agent(e, "exec");
    }
    for (i, l) in ports.iter().enumerate() {
        let c = connects_to(&events, l.port);
        assert!(!c.is_empty(), "no connect event for scenario {i} (port {})", l.port);
        for e in c {
            assert_agent(e, &format!("connect of scenario {i}"));
        }
    }
    let out_execs = execs_with(&events, "ZTMARK-OUT");
    assert!(!out_execs.is_empty(), "outside exec not seen");
    for e in out_execs {
        assert_eq!(identity_of(e), None, "outside exec attributed: {e}");
    }
    let out_conn = connects_to(&events, outside.port);
    assert!(!out_conn.is_empty(), "outside connect not seen (observe-all-connects)");
    for e in out_conn {
        assert_eq!(identity_of(e), None, "outside connect attributed: {e}");
    }
    // The thread's connect names a tid different from the pid.
    let t = connects_to(&events, ports[4].port)[0];
    assert_ne!(t["process"]["pid"], t["process"]["tid"], "thread connect should come from a second thread: {t}");
}

/// A pid recycled after an agent process died must not inherit its identity.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn recycled_pid_does_not_inherit_identity() {
    if !require_root("recycled_pid_does_not_inherit_identity") {
        return;
    }
    let ns_last_pid = "/proc/sys/kernel/ns_last_pid";
    if std::fs::metadata(ns_last_pid).is_err() {
        skip(
            "recycled_pid_does_not_inherit_identity",
            &format!("{ns_last_pid} missing (CONFIG_CHECKPOINT_RESTORE off), cannot force pid reuse"),
        );
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("pidreuse"))).unwrap();
    let agent = Agent::start("pidreuse", &cgroup_policy(&cg), &["--observe-all-connects"]).unwrap();
    let helper = helper_bin();
    let inside = Listener::new();
    let outside = Listener::new();

    let mut reused = None;
    for attempt in 0..50 {
        // An agent process that exits.
        let mut c = cg.command(&helper).args(["connect", &inside.addr(), "ZTMARK-DEAD"]).spawn().unwrap();
        let dead_pid = c.id();
        c.wait().unwrap();
        // Make the next fork take the dead pid, outside the agent cgroup.
        std::fs::write(ns_last_pid, (dead_pid - 1).to_string()).unwrap();
        let mut o = Command::new(&helper).args(["connect", &outside.addr(), &format!("ZTMARK-REUSE-{attempt}")]).spawn().unwrap();
        let pid = o.id();
        o.wait().unwrap();
        if pid == dead_pid {
            reused = Some((pid, attempt));
            break;
        }
    }
    let Some((pid, attempt)) = reused else {
        panic!("could not get a pid recycled in 50 attempts (busy machine?)");
    };
    let marker = format!("ZTMARK-REUSE-{attempt}");
    agent.wait_for("the reused pid's exec", |e| e["kind"] == "exec" && e["exec"]["argv"].to_string().contains(&marker)).unwrap();
    agent
        .wait_for("the reused pid's connect", |e| {
            e["kind"] == "connect" && e["process"]["pid"] == pid && e["connect"]["port"] == outside.port
        })
        .unwrap();
    let events = agent.stop().unwrap();

    let dead: Vec<_> = events.iter().filter(|e| e["process"]["pid"] == pid && identity_of(e) == Some("test-agent")).collect();
    assert!(!dead.is_empty(), "the dead agent process (pid {pid}) was not attributed");
    let reuse_exec = execs_with(&events, &marker);
    assert_eq!(reuse_exec.len(), 1);
    assert_eq!(reuse_exec[0]["process"]["pid"], pid);
    assert_eq!(identity_of(reuse_exec[0]), None, "recycled pid inherited identity: {}", reuse_exec[0]);
    let start_dead = dead[0]["process"]["start_ns"].clone();
    assert_ne!(reuse_exec[0]["process"]["start_ns"], start_dead, "incarnations must differ in start_ns");
    for e in connects_to(&events, outside.port).iter().filter(|e| e["process"]["pid"] == pid) {
        assert_eq!(identity_of(e), None, "recycled pid's connect attributed: {e}");
    }
}

/// Processes started before the agent are seeded from /proc: an agent
/// process already running is attributed once the agent starts.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn processes_running_before_start_are_seeded() {
    if !require_root("processes_running_before_start_are_seeded") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("seed"))).unwrap();
    let l = Listener::new();
    let mut early = cg.command(helper_bin()).args(["stdin-connect", &l.addr(), "ZTMARK-EARLY"]).stdin(Stdio::piped()).spawn().unwrap();
    // Default output filter: only attributed events (and agent/loss events).
    let agent = Agent::start("seed", &cgroup_policy(&cg), &["--show", "attributed"]).unwrap();
    writeln!(early.stdin.as_mut().unwrap()).unwrap();
    early.wait().unwrap();
    agent.wait_for("the early process's connect", |e| e["kind"] == "connect" && e["connect"]["port"] == l.port).unwrap();
    let events = agent.stop().unwrap();
    let c = connects_to(&events, l.port);
    assert_eq!(c.len(), 1);
    assert_agent(c[0], "connect of a process that predates the agent");
    assert_eq!(c[0]["process"]["pid"], early.id());
    // `--show attributed`: nothing unattributed reaches the output.
    for e in &events {
        assert!(
            identity_of(e).is_some() || matches!(e["kind"].as_str(), Some("agent" | "loss" | "policy")),
            "unattributed event shown: {e}"
        );
    }
}

/// Identities decided in user space: by executable path (written into the
/// kernel table after the exec event), and "descendant of" (the anchor's
/// children get the identity in the kernel at fork; the anchor does not).
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn exe_and_descendant_selectors() {
    if !require_root("exe_and_descendant_selectors") {
        return;
    }
    let tmp = tempdir("exe-bins").unwrap();
    let dir = tmp.path();
    let by_exe = dir.join("agent-bin");
    let runner = dir.join("runner-bin");
    std::fs::copy(helper_bin(), &by_exe).unwrap();
    std::fs::copy(helper_bin(), &runner).unwrap();
    let pol = policy(
        TD,
        &format!(
            "    - name: by-exe\n      selectors:\n        - exe: {}\n    - name: kids\n      selectors:\n        - descendantOf:\n            exe: {}\n",
            by_exe.display(),
            runner.display()
        ),
    );
    let agent = Agent::start("exe", &pol, &["--observe-all-connects"]).unwrap();
    let l_exe = Listener::new();
    let l_kid = Listener::new();
    // Sleep first: the identity is written by user space after the exec event.
    assert!(Command::new(&by_exe).args(["sleep-connect", "1000", &l_exe.addr()]).status().unwrap().success());
    assert!(Command::new(&runner).args(["fork-sleep-connect", "1000", &l_kid.addr()]).status().unwrap().success());
    agent.wait_for("the runner child's connect", |e| e["kind"] == "connect" && e["connect"]["port"] == l_kid.port).unwrap();
    let events = agent.stop().unwrap();

    let c = connects_to(&events, l_exe.port);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(identity_of(c[0]), Some("by-exe"), "{}", c[0]);
    assert_eq!(c[0]["identity"]["spiffe_id"], format!("spiffe://{TD}/by-exe"));
    let k = connects_to(&events, l_kid.port);
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(identity_of(k[0]), Some("kids"), "{}", k[0]);
    // The runner itself is not its own descendant.
    let runner_exec =
        events.iter().find(|e| e["kind"] == "exec" && e["process"]["exe"].as_str() == Some(runner.to_str().unwrap())).expect("runner exec");
    assert_eq!(identity_of(runner_exec), None);
}

/// After SIGTERM nothing of ours stays loaded in the kernel.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn stopping_leaves_nothing_attached() {
    if !require_root("stopping_leaves_nothing_attached") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("detach"))).unwrap();
    let agent = Agent::start("detach", &cgroup_policy(&cg), &[]).unwrap();
    let loaded = our_loaded_programs();
    assert!(!loaded.is_empty(), "agent running but none of its programs listed: {:?}", zt_agent::bpf::loaded_program_names());
    let events = agent.stop().unwrap();
    assert!(events.iter().any(|e| e["kind"] == "agent" && e["agent"]["state"] == "stopped"));
    // Program release is asynchronous in the kernel (RCU); give it a moment.
    let mut left = Vec::new();
    for _ in 0..100 {
        left = our_loaded_programs();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(left.is_empty(), "programs still loaded after stop: {left:?}");
}

/// `zt-agent status` talks to the running agent over its control socket.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn status_reports_counters_and_paths() {
    if !require_root("status_reports_counters_and_paths") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("status"))).unwrap();
    let agent = Agent::start("status", &cgroup_policy(&cg), &[]).unwrap();
    let out = Command::new(agent_bin()).arg("status").arg("--json").arg("--socket").arg(&agent.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"]["trust_domain"], TD);
    assert_eq!(v["policy"]["generation"], 1);
    assert!(v["counters"]["kernel_loss"]["ringbuf_exec"].is_u64());
    assert!(v["paths"].as_array().unwrap().iter().any(|p| p[0] == "process attribution"));
    assert!(v["hooks"].as_array().unwrap().iter().any(|h| h["program"] == "sched_process_fork" && h["attached"] == true));
    let human = Command::new(agent_bin()).arg("status").arg("--socket").arg(&agent.socket).output().unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("enforcement paths:"));
    agent.stop().unwrap();
}

/// argv in all three capture modes, including truncation of a long argv and
/// an argument with spaces; the hook table says which path is in force.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn argv_capture_modes() {
    if !require_root("argv_capture_modes") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("argv"))).unwrap();
    let long: Vec<String> = (0..40).map(|i| format!("{i:02}-{}", "a".repeat(37))).collect();
    for mode in ["kernel", "syscalls", "proc"] {
        let agent = Agent::start("argv", &cgroup_policy(&cg), &["--argv-capture", mode]).unwrap();
        let marker = format!("ZTARGV-{mode}");
        assert!(cg.command("/bin/true").args([marker.as_str(), "with space"]).status().unwrap().success());
        let long_marker = format!("ZTLONG-{mode}");
        assert!(cg.command("/bin/true").arg(&long_marker).args(&long).status().unwrap().success());
        agent
            .wait_for("the long exec", |e| {
                e["kind"] == "exec" && e["exec"]["argv"].to_string().contains(&long_marker)
                    || (mode == "proc" && e["kind"] == "exit" && e["process"]["comm"] == "true")
            })
            .unwrap();
        let status = agent.status();
        let events = agent.stop().unwrap();
        let hook = status["hooks"].as_array().unwrap().iter().find(|h| h["program"] == "sys_enter_execve").unwrap().clone();
        match mode {
            "kernel" | "syscalls" => {
                assert_eq!(hook["attached"], mode == "syscalls", "{mode}: {hook}");
                let e = execs_with(&events, &marker);
                assert_eq!(e.len(), 1, "{mode}");
                assert_eq!(e[0]["exec"]["argv"], serde_json::json!(["/bin/true", marker, "with space"]), "{mode}");
                assert_eq!(e[0]["exec"]["argv_source"], "kernel");
                assert_eq!(e[0]["exec"]["argv_truncated"], false);
                assert_agent(e[0], "exec");
                let l = execs_with(&events, &long_marker);
                assert_eq!(l.len(), 1, "{mode}");
                assert_eq!(l[0]["exec"]["argv_truncated"], true, "{mode}: {}", l[0]);
                let argv = l[0]["exec"]["argv"].as_array().unwrap();
                assert_eq!(argv[1], long_marker.as_str());
                assert_eq!(argv[2], long[0].as_str());
                let kept: usize = argv.iter().map(|a| a.as_str().unwrap().len() + 1).sum::<usize>() - 1;
                assert!(kept <= zt_common::ARGS_LEN, "kept {kept} bytes");
            }
            _ => {
                assert_eq!(hook["attached"], false);
                assert!(hook["state"].as_str().unwrap().contains("--argv-capture proc"));
                // /bin/true exits at once: argv from /proc may or may not be there, but never from the kernel.
                for e in events.iter().filter(|e| e["kind"] == "exec" && e["process"]["comm"] == "true") {
                    assert_ne!(e["exec"]["argv_source"], "kernel", "{e}");
                }
            }
        }
    }
}

/// Loss is never silent: with tiny ring buffers and a slow consumer, a
/// burst of denied connects to distinct destinations (more than the
/// aggregation cache has slots) overflows the security ring; the lost
/// records are counted and reported (`loss` event with the identity and
/// time range, status), and because the kernel also counts every attempt
/// per destination, the attempts of lost records still reach the output as
/// `connect_summary` events (from evictions and the flush): the repeats of
/// all connect and summary events add up to exactly the attempts made.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn ring_buffer_overflow_is_counted_and_reported() {
    if !require_root("ring_buffer_overflow_is_counted_and_reported") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("loss"))).unwrap();
    let agent = Agent::start(
        "loss",
        &cgroup_policy(&cg),
        &["--ringbuf-size", "4096", "--security-ringbuf-size", "4096", "--poll-ms", "1000", "--show", "attributed"],
    )
    .unwrap();
    let n: u64 = 10_000;
    let base: u16 = 40_000;
    assert!(
        cg.command(helper_bin()).args(["udp-connects-spread", &n.to_string(), "127.0.0.1", &base.to_string()]).status().unwrap().success()
    );
    agent.wait_for("a loss event", |e| e["kind"] == "loss" && e["loss"]["totals"]["ringbuf_connect"].as_u64() > Some(0)).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let status = agent.status();
    let events = agent.stop().unwrap();
    let c = &status["counters"];
    let lost = c["kernel_loss"]["ringbuf_connect"].as_u64().unwrap();
    assert!(lost > 0, "expected ring buffer loss with a 4 KiB ring: {c}");
    let last_loss = events.iter().rev().find(|e| e["kind"] == "loss").unwrap();
    assert_eq!(last_loss["loss"]["totals"]["ringbuf_connect"].as_u64(), Some(lost), "{last_loss}");
    // Denials are security records: what the security ring lost is known per
    // identity, with its time range, and adds up to the kernel's counters.
    let evict_lost = c["kernel_loss"]["ringbuf_agg_evict"].as_u64().unwrap();
    let per_identity: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "loss")
        .flat_map(|e| e["loss"]["security_records"].as_array().into_iter().flatten())
        .collect();
    assert!(per_identity.iter().all(|r| r["identity"]["name"] == "test-agent" && r["from"].is_string() && r["to"].is_string()));
    let security_lost: u64 = per_identity.iter().map(|r| r["lost"].as_u64().unwrap()).sum();
    assert_eq!(security_lost, lost + evict_lost, "security records lost per identity: {per_identity:?}");
    let in_range = |p: &serde_json::Value| p.as_u64().is_some_and(|p| p >= base as u64 && p < base as u64 + n);
    let written: u64 = events
        .iter()
        .filter(|e| e["kind"] == "connect" && in_range(&e["connect"]["port"]))
        .map(|e| e["connect"]["repeats"].as_u64().unwrap())
        .sum();
    let summarized: u64 = events
        .iter()
        .filter(|e| e["kind"] == "connect_summary" && in_range(&e["connect_summary"]["port"]))
        .map(|e| e["connect_summary"]["repeats"].as_u64().unwrap())
        .sum();
    // Attempts whose eviction report found the ring full are folded into
    // counts for the identity.
    let folded: u64 =
        events.iter().filter(|e| e["kind"] == "connect_folded").map(|e| e["connect_folded"]["denied"].as_u64().unwrap()).sum();
    assert!(written > 0 && summarized > 0, "written {written}, summarized {summarized}");
    assert_eq!(written + summarized + folded, n, "every attempt reported exactly once (lost records: {lost}, folded {folded})");
}

/// A flood to one destination becomes a handful of events whose repeats
/// add up to every attempt.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn repeated_attempts_are_aggregated_not_dropped() {
    if !require_root("repeated_attempts_are_aggregated_not_dropped") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("agg"))).unwrap();
    let agent = Agent::start("agg", &cgroup_policy(&cg), &["--show", "attributed"]).unwrap();
    let target = Listener::new();
    let n: u64 = 20_000;
    assert!(cg.command(helper_bin()).args(["udp-connects", &n.to_string(), &target.addr()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let events = agent.stop().unwrap();
    let conns = connects_to(&events, target.port);
    let summaries: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["kind"] == "connect_summary" && e["connect_summary"]["port"] == target.port).collect();
    let total: u64 = conns.iter().map(|e| e["connect"]["repeats"].as_u64().unwrap()).sum::<u64>()
        + summaries.iter().map(|e| e["connect_summary"]["repeats"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total, n, "{} connect and {} summary events", conns.len(), summaries.len());
    assert!(conns.len() + summaries.len() <= 20, "flood not aggregated: {} events", conns.len() + summaries.len());
    assert!(conns.iter().all(|e| e["connect"]["action"] == "denied"));
}

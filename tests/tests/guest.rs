//! Tests that run inside the QEMU test guest (`cargo xtask vm-test`, also
//! run by `cargo xtask test`): a stock Debian kernel, where BPF LSM loads
//! (this host refuses it). On the host they skip, loudly.
use std::process::Command;

use serde_json::Value;
use zt_tests::{agent_bin, require_root, skip};

/// An identity no process has.
const NOBODY: &str = "    - name: nobody\n      selectors:\n        - cgroup: /zt-nobody/**\n";

/// Set by the guest's init (`zt-guest-init`).
fn in_guest(test: &str) -> bool {
    if std::env::var_os("ZT_GUEST").is_some() {
        return true;
    }
    skip(test, "runs in the QEMU test guest: `cargo xtask vm-test` (part of `cargo xtask test`)");
    false
}

#[test]
#[ignore = "needs root: loads eBPF programs"]
fn bpf_lsm_programs_load_in_the_guest_kernel() {
    let name = "bpf_lsm_programs_load_in_the_guest_kernel";
    if !require_root(name) || !in_guest(name) {
        return;
    }
    let out = Command::new(agent_bin()).args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe: Value = serde_json::from_slice(&out.stdout).unwrap();
    let feature = |n: &str| probe["features"].as_array().unwrap().iter().find(|f| f["name"] == n).cloned().unwrap();
    for f in ["bpf_lsm", "tracepoint", "cgroup_sock_addr", "ring_buffer", "kernel_btf", "bpf_send_signal", "fentry"] {
        assert_eq!(feature(f)["available"], true, "{f} in the guest kernel {}: {}", probe["kernel"], feature(f));
    }
    // And the agent's own programs pass this kernel's verifier: every
    // program it attaches where BPF LSM loads is attached (a verifier
    // rejection is in the hook's state).
    let agent = zt_tests::Agent::start("guest-hooks", &zt_tests::policy("zt.test", NOBODY), &[]).unwrap();
    let status = agent.status();
    let hooks = status["hooks"].as_array().unwrap();
    let lsm_hooks = zt_common::programs::LSM_FILE_HOOKS.iter().chain(zt_common::programs::LSM_GUARDS.iter().map(|g| &g.0));
    for p in lsm_hooks.chain([&zt_common::programs::RENAME_EXIT]) {
        let h = hooks.iter().find(|h| h["program"] == *p).unwrap_or_else(|| panic!("{p} not in status: {hooks:?}"));
        assert_eq!(h["attached"], true, "{h}");
    }
    agent.stop().unwrap();
}

/// Where BPF LSM loads, the process and bpf(2) guards refuse the call
/// itself (EPERM, nothing killed), and the syscall tracepoints, whose cost
/// every syscall of every process pays, are not attached. An agent identity
/// beside a process without one (the control), each on a victim outside
/// the identity: ptrace attach, process_vm_readv, a read of /proc/PID/mem
/// (which the tracepoints never saw), bpf(2), and a packet socket by
/// socket(2) and by io_uring.
#[test]
#[ignore = "needs root: loads eBPF programs"]
fn lsm_guards_refuse_process_takeover_bpf_and_socket_kinds() {
    let name = "lsm_guards_refuse_process_takeover_bpf_and_socket_kinds";
    if !require_root(name) || !in_guest(name) {
        return;
    }
    let base = zt_tests::unique("lsm-guards");
    let cg = zt_tests::TestCgroup::new(&format!("/{base}/agent")).unwrap();
    let policy = zt_tests::policy("zt.test", &format!("    - name: agent\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let agent = zt_tests::Agent::start("lsm-guards", &policy, &[]).unwrap();
    let status = agent.status();
    let line =
        |what: &str| status["paths"].as_array().unwrap().iter().find(|p| p[0] == what).map(|p| p[1].as_str().unwrap().to_string()).unwrap();
    assert!(line("process takeover, bpf(2)").starts_with("BPF LSM ptrace_access_check"), "{}", status["paths"]);
    assert!(!line("process takeover, bpf(2)").contains("DEGRADED"), "{}", status["paths"]);
    assert!(line("socket kinds").contains("other families: BPF LSM socket_create"), "{}", status["paths"]);
    let hooks = status["hooks"].as_array().unwrap();
    let attached = |p: &str| hooks.iter().any(|h| h["program"] == p && h["attached"] == true);
    for p in ["guard_lsm_socket", "guard_lsm_ptrace", "guard_lsm_bpf", "sock_create", "guard_route"] {
        assert!(attached(p), "{p}: {}", status["hooks"]);
    }
    // No syscall tracepoint is attached for these calls.
    for p in ["guard_socket", "guard_ptrace", "guard_process_vm", "guard_pidfd_getfd", "guard_bpf", "guard_uring"] {
        assert!(!hooks.iter().any(|h| h["program"] == p), "{p} is listed: {}", status["hooks"]);
    }

    let tmp = zt_tests::tempdir("lsm-guards-out").unwrap();
    let out = tmp.path().join("result");
    let around = |cmd: Command, mode: &str, target: &str| zt_tests::helper_result(cmd, &["around", mode, target], &out);
    let inside = || cg.command(zt_tests::helper_bin());
    let outside = || Command::new(zt_tests::helper_bin());
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    let vpid = victim.id().to_string();
    // /proc/PID/mem answers any refusal with EACCES (`mm_access`).
    for (mode, refused) in [("ptrace", "EPERM"), ("process-vm-read", "EPERM"), ("proc-mem", "ERR 13")] {
        assert_eq!(around(inside(), mode, &vpid), refused, "{mode} by the agent identity");
        assert_eq!(around(outside(), mode, &vpid), "OK", "{mode} by the control");
    }
    let tracer = std::fs::read_to_string(format!("/proc/{vpid}/status")).unwrap();
    assert!(tracer.contains("TracerPid:\t0"), "the victim is not traced");
    let _ = victim.kill();
    let _ = victim.wait();
    assert_eq!(around(inside(), "bpf", "-"), "EPERM");
    assert_eq!(around(outside(), "bpf", "-"), "OK");
    // Refused before the family is even looked up, so whatever this kernel
    // has of AF_PACKET; the control gets past the guard (OK, or the
    // kernel's own answer where af_packet is a module not loaded).
    for mode in ["packet-udp", "uring-packet"] {
        assert_eq!(around(inside(), mode, "127.0.0.1:9"), "EPERM", "{mode} by the agent identity");
        assert_ne!(around(outside(), mode, "127.0.0.1:9"), "EPERM", "{mode} by the control");
    }
    // Allowed kinds still work.
    assert_eq!(around(inside(), "socketpair", "-"), "OK");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let seen: Vec<(String, String)> = agent
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "guard")
            .map(|e| (e["guard"]["call"].as_str().unwrap().to_string(), e["guard"]["action"].as_str().unwrap().to_string()))
            .collect();
        if seen.len() >= 6 || std::time::Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let count = |call: &str| seen.iter().filter(|s| s.0 == call && s.1 == "denied").count();
    assert_eq!(count("process_access"), 3, "{seen:?}");
    assert_eq!(count("bpf"), 1, "{seen:?}");
    assert_eq!(count("socket"), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.1 == "denied"), "nothing killed: {seen:?}");
    agent.stop().unwrap();
}

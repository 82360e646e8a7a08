//! Root test of continuous verification (`zt-agent verify`, the periodic
//! passes): the attacker here is root on the host going around the hooks.
//! With the agent stopped (SIGSTOP, so no pass runs in between), it
//! detaches the agent's connect4 link through its pin (`BPF_OBJ_GET`,
//! `BPF_LINK_DETACH`): IPv4 TCP enforcement ends (an identity's connects
//! get through: the control that the detach is real). Once the agent runs
//! again, a periodic pass finds it, attaches connect4 again (the identity
//! is denied again) and reports both, once, as `integrity` events. Then
//! the agent's binary is replaced on disk: `zt-agent verify` finds it
//! (exit 1). Every finding and repair is a signed audit record.
//!
//! Second: root changes the policy tables in force through their pins (an
//! identity's default egress turned to allow); the identity's connects get
//! out; a pass finds the tables differ from what was installed, installs
//! the policy again, and the identity is denied again.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use zt_tests::*;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf(BPF_OBJ_GET)` of a pinned object.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let attr = ObjGet { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: bpf(2) reads `attr` and the NUL-terminated path it points to,
    // both alive through the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr, size_of::<ObjGet>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `bpf(BPF_LINK_DETACH)`: the link stays, its program no longer runs.
fn link_detach(link: &OwnedFd) -> std::io::Result<()> {
    #[repr(C)]
    struct Detach {
        link_fd: u32,
    }
    let attr = Detach { link_fd: link.as_raw_fd() as u32 };
    // SAFETY: bpf(2) reads `attr`, alive through the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, &attr, size_of::<Detach>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The pin of our connect4 link under `pin_dir`
/// (`<abi>/links/<run>/connect4-<link id>`).
fn connect4_pin(pin_dir: &Path) -> PathBuf {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), found);
            } else if e.file_name().to_string_lossy().starts_with("connect4-") {
                found.push(e.path());
            }
        }
    }
    let mut found = Vec::new();
    walk(pin_dir, &mut found);
    assert_eq!(found.len(), 1, "one connect4 link pinned: {found:?}");
    found.remove(0)
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// `bpf(BPF_MAP_LOOKUP_ELEM / BPF_MAP_UPDATE_ELEM)` of `key` in `map`.
fn map_elem<K, V>(cmd: libc::c_long, map: &OwnedFd, key: &K, value: &mut V) -> std::io::Result<()> {
    #[repr(C)]
    struct Elem {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Elem { map_fd: map.as_raw_fd() as u32, _pad: 0, key: key as *const K as u64, value: value as *mut V as u64, flags: 0 };
    // SAFETY: bpf(2) reads `attr` and the key, and reads or writes the
    // value, each a live object of the map's key or value size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &attr, size_of::<Elem>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The pin of map `name` under `pin_dir` (`<abi>/maps/<name>`).
fn map_pin(pin_dir: &Path, name: &str) -> PathBuf {
    let abi = std::fs::read_dir(pin_dir).unwrap().flatten().find(|e| e.path().join("maps").is_dir()).expect("an ABI directory");
    abi.path().join("maps").join(name)
}

fn verify(socket: &Path) -> (bool, String) {
    let o = Command::new(agent_bin()).args(["verify", "--socket"]).arg(socket).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn integrity(agent: &Agent, check: &str, state: &str) -> Vec<Value> {
    agent
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "integrity" && e["integrity"]["check"] == check && e["integrity"]["state"] == state)
        .collect()
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups, pins under bpffs): cargo xtask test runs it"]
fn a_detached_program_is_found_and_attached_again_and_a_replaced_binary_is_found() {
    if !require_root("a_detached_program_is_found_and_attached_again_and_a_replaced_binary_is_found") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("verify"))).unwrap();
    let pol = policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let tmp = tempdir("verify").unwrap();
    // The agent runs from a copy, so the test can replace its binary.
    let bin = tmp.path().join("zt-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    let pin_dir = Path::new("/sys/fs/bpf").join(unique("verify"));
    let _cleanup = Uninstall(pin_dir.clone());
    let listener = Listener::new();
    let addr = listener.addr();
    let audit_dir = tmp.path().join("audit");
    let key = tmp.path().join("audit.key");
    let args = [
        "--pin-dir",
        pin_dir.to_str().unwrap(),
        "--verify-every",
        "1",
        "--audit-dir",
        audit_dir.to_str().unwrap(),
        "--audit-key",
        key.to_str().unwrap(),
    ];
    let agent = Agent::start_binary(&bin, "verify", &pol, &args).unwrap();

    // Everything in place: verified, and the identity is denied.
    let (ok, text) = verify(&agent.socket);
    assert!(ok && text.contains("verified:") && text.contains("connect4 attached at"), "{text}");
    assert!(text.contains(&format!("binary {}", bin.display())), "{text}");
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "denied while connect4 is attached");

    // Root detaches connect4 through its pin while the agent is stopped:
    // IPv4 TCP enforcement is gone.
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let link = obj_get(&connect4_pin(&pin_dir)).unwrap();
    link_detach(&link).unwrap();
    let escaped = connect_loop(cg.command(helper_bin()), 200, &addr).1;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(escaped > 0, "the detach is real: the identity's connects get out");
    // A periodic pass finds it and attaches connect4 again.
    agent.wait_for("connect4 repaired", |e| e["kind"] == "integrity" && e["integrity"]["state"] == "repaired").unwrap();
    let found = integrity(&agent, "attachment", "found");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["integrity"]["subject"], "connect4");
    assert!(found[0]["integrity"]["detail"].as_str().unwrap().contains("is no longer attached"), "{found:?}");
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "denied again after the repair");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(integrity(&agent, "attachment", "found").len(), 1, "reported once, not every pass");
    assert_eq!(integrity(&agent, "attachment", "repaired").len(), 1);
    let (ok, text) = verify(&agent.socket);
    assert!(ok, "verified after the repair:\n{text}");
    let st = agent.status();
    assert!(st["verification"]["passes"].as_u64().unwrap() >= 2, "{}", st["verification"]);
    assert_eq!(st["verification"]["findings_total"], 1, "{}", st["verification"]);

    // Root replaces the agent's binary on disk (a rename over it).
    let other = tmp.path().join("other");
    std::fs::copy(helper_bin(), &other).unwrap();
    std::fs::rename(&other, &bin).unwrap();
    let (ok, text) = verify(&agent.socket);
    assert!(!ok && text.contains("FINDING binary") && text.contains("content changed since start"), "{text}");
    agent.wait_for("integrity event for the binary", |e| e["kind"] == "integrity" && e["integrity"]["check"] == "binary").unwrap();

    // Both are signed audit records.
    agent.stop().unwrap();
    let o = Command::new(agent_bin()).args(["audit", "show", "--json", "--dir"]).arg(&audit_dir).output().unwrap();
    let records = String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("\"kind\":\"integrity\"")).count();
    assert_eq!(records, 3, "found and repaired connect4, the binary: in the audit log");
    drop(link);
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups, pins under bpffs): cargo xtask test runs it"]
fn policy_tables_changed_from_outside_are_found_and_installed_again() {
    if !require_root("policy_tables_changed_from_outside_are_found_and_installed_again") {
        return;
    }
    use zt_common::policy::{ALLOW, ActivePolicy, DENY, IdentityPolicy, identity_index};
    let cg = TestCgroup::new(&format!("/{}/agent", unique("verify-maps"))).unwrap();
    let pol = policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let pin_dir = Path::new("/sys/fs/bpf").join(unique("verify-maps"));
    let _cleanup = Uninstall(pin_dir.clone());
    let listener = Listener::new();
    let addr = listener.addr();
    let agent = Agent::start("verify-maps", &pol, &["--pin-dir", pin_dir.to_str().unwrap(), "--verify-every", "1"]).unwrap();
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "no rule: denied");
    let (ok, text) = verify(&agent.socket);
    assert!(ok && text.contains("policy tables in force"), "{text}");
    let id: u32 =
        agent.status()["policy"]["ids"].as_object().unwrap().iter().find(|(_, n)| *n == "a").map(|(id, _)| id.parse().unwrap()).unwrap();

    // Root turns the identity's default egress to allow in the slot in
    // force, while the agent is stopped.
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let active_map = obj_get(&map_pin(&pin_dir, zt_common::maps::POLICY_ACTIVE)).unwrap();
    let mut active = ActivePolicy::default();
    map_elem(BPF_MAP_LOOKUP_ELEM, &active_map, &0u32, &mut active).unwrap();
    let identities = obj_get(&map_pin(&pin_dir, zt_common::maps::IDENTITY_POLICY)).unwrap();
    let index = identity_index(active.slot, id).unwrap();
    let mut p = IdentityPolicy::default();
    map_elem(BPF_MAP_LOOKUP_ELEM, &identities, &index, &mut p).unwrap();
    assert_eq!((p.defined, p.default_egress), (1, DENY));
    p.default_egress = ALLOW;
    map_elem(BPF_MAP_UPDATE_ELEM, &identities, &index, &mut p).unwrap();
    let escaped = connect_loop(cg.command(helper_bin()), 200, &addr).1;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(escaped > 0, "the change is real: the identity's connects get out");

    // A periodic pass finds it and installs the policy again.
    agent.wait_for("tables repaired", |e| e["kind"] == "integrity" && e["integrity"]["state"] == "repaired").unwrap();
    let found = integrity(&agent, "policy_maps", "found");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0]["integrity"]["detail"].as_str().unwrap().contains("does not hold what was installed"), "{found:?}");
    let repaired = integrity(&agent, "policy_maps", "repaired");
    assert!(repaired[0]["integrity"]["detail"].as_str().unwrap().contains("installed again: generation"), "{repaired:?}");
    assert_eq!(connect_loop(cg.command(helper_bin()), 200, &addr).1, 0, "denied again after the repair");
    assert!(agent.status()["policy"]["generation"].as_u64().unwrap() > u64::from(active.generation));
    let (ok, text) = verify(&agent.socket);
    assert!(ok, "verified after the repair:\n{text}");
    agent.stop().unwrap();
}

#[test]
#[ignore = "needs root (loads eBPF programs): cargo xtask test runs it"]
fn an_audit_log_damaged_while_the_agent_runs_is_found() {
    if !require_root("an_audit_log_damaged_while_the_agent_runs_is_found") {
        return;
    }
    let tmp = tempdir("verify-audit").unwrap();
    let audit_dir = tmp.path().join("audit");
    let key = tmp.path().join("audit.key");
    let pol = policy("zt.test", "    - name: a\n      selectors:\n        - exe: /nothing/runs/this\n");
    let agent =
        Agent::start("verify-audit", &pol, &["--audit-dir", audit_dir.to_str().unwrap(), "--audit-key", key.to_str().unwrap()]).unwrap();
    // The start's records signed (a checkpoint within a second of them).
    agent.wait_status("a signed checkpoint", |s| s["audit"]["signed_size"].as_u64().unwrap_or(0) > 0);
    let (ok, text) = verify(&agent.socket);
    assert!(ok && text.contains(&format!("audit log {}: records 0..", audit_dir.display())), "{text}");

    // A byte of the first record changed on disk.
    let seg = std::fs::read_dir(&audit_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[24] ^= 0x20;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, &bytes[24..25], 24).unwrap();
    let (ok, text) = verify(&agent.socket);
    assert!(!ok && text.contains("FINDING audit_log") && text.contains("does not verify: record 0"), "{text}");
    agent.wait_for("the audit log's finding", |e| e["kind"] == "integrity" && e["integrity"]["check"] == "audit_log").unwrap();
    let _ = agent.stop();
}

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn a_binary_replaced_under_a_running_agent_process_is_found() {
    if !require_root("a_binary_replaced_under_a_running_agent_process_is_found") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("verify-exe"))).unwrap();
    let pol = policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel));
    let tmp = tempdir("verify-exe").unwrap();
    let tool = tmp.path().join("tool");
    std::fs::copy("/bin/sleep", &tool).unwrap();
    let agent = Agent::start("verify-exe", &pol, &[]).unwrap();
    let mut child = cg.command(&tool).arg("60").spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, text) = verify(&agent.socket);
        if ok && text.contains("executables of 1 agent processes") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the process is not listed:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Another file renamed over the path the process runs from.
    let other = tmp.path().join("other");
    std::fs::copy("/bin/true", &other).unwrap();
    std::fs::rename(&other, &tool).unwrap();
    let (ok, text) = verify(&agent.socket);
    let subject = format!("FINDING process_binary pid {} (a)", child.id());
    assert!(!ok && text.contains(&subject) && text.contains("replaced on disk while it runs"), "{text}");
    agent.wait_for("the process_binary event", |e| e["kind"] == "integrity" && e["integrity"]["check"] == "process_binary").unwrap();
    // The process gone, so is the finding.
    child.kill().unwrap();
    child.wait().unwrap();
    let (ok, text) = verify(&agent.socket);
    assert!(ok, "{text}");
    agent.stop().unwrap();
}

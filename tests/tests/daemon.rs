//! The daemon started and stopped inside the test process, as a library
//! user would (`zt_agent::run::Agent`): start, run until a future resolves,
//! shut down with that reason; the reason is signed into the audit log and
//! nothing stays loaded. Needs root (`#[ignore]`d for plain `cargo test`).
use std::time::Duration;

use zt_agent::{
    audit,
    bpf::loader::ArgvCapture,
    pipeline::output::Show,
    run::{Agent, RunOptions, StopReason},
};
use zt_tests::*;

#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn started_and_stopped_in_process() {
    if !require_root("started_and_stopped_in_process") {
        return;
    }
    let dir = tempdir("in-process").unwrap();
    let cg = TestCgroup::new(&format!("/{}/agent", unique("in-process"))).unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel)))
        .unwrap();
    let audit_dir = dir.path().join("audit");
    let opts = RunOptions {
        policy: vec![policy_path],
        events: Some(dir.path().join("events.jsonl")),
        show: Show::All,
        observe_all_connects: false,
        ringbuf_bytes: zt_common::maps::EVENTS_DEFAULT_BYTES,
        security_ringbuf_bytes: zt_common::maps::SECURITY_EVENTS_DEFAULT_BYTES,
        event_rate: 20_000,
        poll_interval: Duration::from_millis(10),
        verify_every: Duration::from_secs(5),
        socket: dir.path().join("control.sock"),
        demo: false,
        argv: ArgvCapture::Kernel,
        syscall_guards: true,
        pin_dir: None,
        state_dir: Some(dir.path().join("state")),
        node_labels: Default::default(),
        audit: audit::log::Config::new(audit_dir.clone(), dir.path().join("audit.key"), "zt-test/in-process".into()),
        syslog: Vec::new(),
        settings: Vec::new(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        bpf_stats: true,
        kube: None,
        api: None,
        config_file: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut agent = Agent::start(opts).await.expect("agent starts");
        let reason = agent.run_until(async { "test over".to_string() }).await;
        assert_eq!(reason, StopReason::Requested("test over".into()));
        agent.shutdown(reason).await.expect("clean shutdown");
    });
    drop(rt);
    let log = audit::inspect::load(&audit_dir).unwrap();
    let agent_records: Vec<serde_json::Value> =
        log.records.iter().map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap()).filter(|r| r["kind"] == "agent").collect();
    let states: Vec<&str> = agent_records.iter().map(|r| r["payload"]["agent"]["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["started", "stopped"], "{agent_records:?}");
    assert_eq!(agent_records[1]["payload"]["agent"]["reason"], "test over");
    // Program release is asynchronous (RCU); the subprocess tests wait for
    // it, here one short wait is enough or the list names what is left.
    if !our_loaded_programs().is_empty() {
        std::thread::sleep(Duration::from_millis(500));
        let left = our_loaded_programs();
        assert!(left.is_empty(), "programs still loaded after shutdown: {left:?}");
    }
}

/// The kernel's policy tables behind the domain's `PolicyTarget`: a policy
/// compiled for the slot in force is refused with an error (it once hit an
/// assert), the slot in force stays as it was, and a flip moves readers.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn kernel_policy_target_refuses_the_slot_in_force() {
    use zt_agent::{
        bpf::loader::{Bpf, LoadOptions},
        policy::{
            Bundle, IdRegistry, compile,
            target::{PolicyTarget, TargetError, target_slot},
        },
    };
    if !require_root("kernel_policy_target_refuses_the_slot_in_force") {
        return;
    }
    let tracefs = zt_agent::host::ensure_tracefs().unwrap();
    // The ring buffer registers with tokio when the maps are taken.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _in_runtime = rt.enter();
    let (bpf, maps) = Bpf::load(&LoadOptions {
        tracefs: &tracefs,
        pins: None,
        ringbuf_bytes: (1 << 16, 1 << 16),
        config: zt_common::Config::default(),
        argv: ArgvCapture::Proc,
    })
    .unwrap();
    let mut target = maps.policy;
    let p = Bundle { files: vec![("p.yaml".into(), policy("zt.test", "    - name: a\n      selectors:\n        - uid: 4242\n"))] }
        .parse()
        .unwrap();
    let ids = IdRegistry::for_policy(&p).unwrap();
    let all = vec![true; p.rules.len()];
    assert_eq!(target.active().unwrap().generation, 0);
    let first = compile::compile(&p, &ids, target_slot(target.active().unwrap()), &all).unwrap();
    target.install(&first).unwrap();
    let now = target.flip(first.slot).unwrap();
    assert_eq!((now.slot, now.generation), (0, 1));
    assert_eq!(target.active().unwrap(), now, "the kernel's active slot is what flip returned");
    std::thread::sleep(target.grace_remaining());
    let again = compile::compile(&p, &ids, now.slot, &all).unwrap();
    let err = target.install(&again).unwrap_err();
    assert!(matches!(err, TargetError::SlotInForce { slot: 0, generation: 1 }), "{err:?}");
    assert_eq!(target.active().unwrap(), now, "nothing switched");
    let next = compile::compile(&p, &ids, target_slot(now), &all).unwrap();
    target.install(&next).unwrap();
    assert_eq!(target.flip(next.slot).unwrap().slot, 1);
    drop(bpf);
}

/// A control client that connects and never sends a request (it holds the
/// audit queue open through the server's state) no longer stops the agent
/// from shutting down and writing its final checkpoint.
#[test]
#[ignore = "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it"]
fn an_idle_control_client_does_not_block_shutdown() {
    if !require_root("an_idle_control_client_does_not_block_shutdown") {
        return;
    }
    let cg = TestCgroup::new(&format!("/{}/agent", unique("idle-client"))).unwrap();
    let agent = zt_tests::Agent::start(
        "idle-client",
        &policy("zt.test", &format!("    - name: a\n      selectors:\n        - cgroup: {}/**\n", cg.rel)),
        &[],
    )
    .unwrap();
    let idle = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(agent.stop());
    });
    let events = rx.recv_timeout(Duration::from_secs(30)).expect("the agent did not stop within 30 s").unwrap();
    assert!(events.iter().any(|e| e["kind"] == "agent" && e["agent"]["state"] == "stopped"));
    drop(idle);
}

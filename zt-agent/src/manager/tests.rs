//! The manager over the in-memory policy target: apply, reload, rollback
//! and condition re-evaluation without root.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;

use super::*;
use crate::policy::target::mem::MemTarget;

/// The manager's target, shared so the test can look inside.
#[derive(Clone, Default)]
struct SharedTarget(Arc<Mutex<MemTarget>>);

impl PolicyTarget for SharedTarget {
    fn active(&self) -> Result<zt_common::policy::ActivePolicy, TargetError> {
        self.0.lock().unwrap().active()
    }
    fn install(&mut self, c: &Compiled) -> Result<(), TargetError> {
        self.0.lock().unwrap().install(c)
    }
    fn flip(&mut self, slot: u32) -> Result<zt_common::policy::ActivePolicy, TargetError> {
        self.0.lock().unwrap().flip(slot)
    }
    fn grace_remaining(&self) -> std::time::Duration {
        self.0.lock().unwrap().grace_remaining()
    }
    fn contents(&self, slot: u32) -> Result<blake3::Hash, TargetError> {
        self.0.lock().unwrap().contents(slot)
    }
}

const POLICY: &str = "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: a\n      selectors:\n        - uid: 7\n  rules:\n    - identity: a\n      action: allow\n      egress:\n        - to: [PREFIX]\n";

fn policy(prefix: &str) -> String {
    POLICY.replace("PREFIX", prefix)
}

struct Fixture {
    manager: Manager,
    target: SharedTarget,
    events: mpsc::Receiver<Input>,
    dir: tempfile::TempDir,
    /// The Rego input `input.node.labels.phase` the conditions see.
    phase: Arc<Mutex<String>>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), policy("10.0.0.0/8")).unwrap();
    let (tx, events) = mpsc::channel(64);
    let shared = super::Shared { rulebook: Default::default(), in_force: Default::default(), pipeline: tx, node: "n".into() };
    let target = SharedTarget::default();
    let phase = Arc::new(Mutex::new("day".to_string()));
    let p = phase.clone();
    let inputs: InputsFn =
        Box::new(move || Inputs { node_labels: BTreeMap::from([("phase".to_string(), p.lock().unwrap().clone())]), ..Default::default() });
    let store = store::Store::open(None).unwrap();
    let manager = Manager::new(vec![dir.path().join("p.yaml")], store, Box::new(target.clone()), inputs, shared);
    Fixture { manager, target, events, dir, phase }
}

/// The `policy` events emitted so far: (action, errors).
fn policy_events(rx: &mut mpsc::Receiver<Input>) -> Vec<(PolicyAction, Vec<String>)> {
    let mut out = Vec::new();
    while let Ok(i) = rx.try_recv() {
        if let Input::Emit(e) = i
            && let Body::Policy { policy } = e.body
        {
            out.push((policy.action, policy.errors));
        }
    }
    out
}

fn prefixes(t: &SharedTarget) -> Vec<String> {
    let g = t.0.lock().unwrap();
    let c = g.in_force().expect("a policy in force");
    c.net
        .iter()
        .map(|(len, k, _)| compile::prefix_string(u128::from_be_bytes(k.addr), (len - zt_common::policy::NET_KEY_FIXED_BITS) as u8))
        .collect()
}

#[tokio::test]
async fn reload_applies_changes_and_a_bad_file_changes_nothing() {
    let mut f = fixture();
    let first = f.manager.reload("start").await.unwrap();
    assert_eq!((first.version, first.generation), (1, 1));
    assert_eq!(prefixes(&f.target), ["10.0.0.0/8"]);
    assert_eq!(f.manager.shared.in_force.read().unwrap().generation, 1);

    // Unchanged files: nothing recompiled.
    let same = f.manager.reload("SIGHUP").await.unwrap();
    assert_eq!((same.version, same.generation), (1, 1));

    std::fs::write(f.dir.path().join("p.yaml"), policy("192.168.0.0/16")).unwrap();
    let second = f.manager.reload("inotify").await.unwrap();
    assert_eq!((second.version, second.generation), (2, 2));
    assert_eq!(prefixes(&f.target), ["192.168.0.0/16"]);
    assert_eq!(f.target.0.lock().unwrap().active.slot, 1, "the second policy went to the other slot");

    std::fs::write(f.dir.path().join("p.yaml"), policy("300.0.0.0/8")).unwrap();
    let err = f.manager.reload("inotify").await.unwrap_err();
    assert!(matches!(err, ApplyError::Invalid(_)), "{err:?}");
    assert_eq!(prefixes(&f.target), ["192.168.0.0/16"], "the previous policy stays in force");
    assert_eq!(f.target.0.lock().unwrap().active.generation, 2);

    let events = policy_events(&mut f.events);
    let actions: Vec<PolicyAction> = events.iter().map(|(a, _)| *a).collect();
    assert_eq!(actions, [PolicyAction::Applied, PolicyAction::Applied, PolicyAction::Rejected]);
    assert!(events[2].1.iter().any(|e| e.contains("p.yaml:") && e.contains("300.0.0.0/8")), "{:?}", events[2].1);
}

#[tokio::test]
async fn a_failed_install_keeps_the_policy_in_force() {
    let mut f = fixture();
    f.manager.reload("start").await.unwrap();
    std::fs::write(f.dir.path().join("p.yaml"), policy("172.16.0.0/12")).unwrap();
    f.target.0.lock().unwrap().fail_next_install = true;
    let err = f.manager.reload("inotify").await.unwrap_err();
    assert!(matches!(err, ApplyError::Target(_)), "{err:?}");
    assert_eq!(prefixes(&f.target), ["10.0.0.0/8"]);
    assert_eq!(f.manager.history().len(), 1, "nothing recorded");
    // The next attempt succeeds.
    assert_eq!(f.manager.reload("inotify").await.unwrap().generation, 2);
    assert_eq!(prefixes(&f.target), ["172.16.0.0/12"]);
}

#[tokio::test]
async fn rollback_reapplies_history() {
    let mut f = fixture();
    f.manager.reload("start").await.unwrap();
    std::fs::write(f.dir.path().join("p.yaml"), policy("192.168.0.0/16")).unwrap();
    f.manager.reload("inotify").await.unwrap();
    let back = f.manager.rollback(None).await.unwrap();
    assert_eq!((back.version, back.generation), (3, 3));
    assert_eq!(prefixes(&f.target), ["10.0.0.0/8"]);
    assert!(matches!(f.manager.rollback(Some(99)).await, Err(ApplyError::NoSuchVersion(99))));
    let h = f.manager.history();
    assert_eq!(h.iter().map(|e| (e.version, e.in_force)).collect::<Vec<_>>(), [(1, false), (2, false), (3, true)]);
    assert_eq!(h[2].source, "rollback to v1");
    let actions: Vec<PolicyAction> = policy_events(&mut f.events).into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions.last(), Some(&PolicyAction::RolledBack));
}

#[tokio::test]
async fn conditions_are_reevaluated_when_their_inputs_change() {
    let mut f = fixture();
    let text = format!(
        "{}    - identity: a\n      action: allow\n      when:\n        rego: input.node.labels.phase == \"night\"\n      egress:\n        - to: [172.16.0.0/12]\n",
        policy("10.0.0.0/8")
    );
    std::fs::write(f.dir.path().join("p.yaml"), text).unwrap();
    f.manager.reload("start").await.unwrap();
    assert_eq!(prefixes(&f.target), ["10.0.0.0/8"]);
    f.manager.reevaluate().await;
    assert_eq!(f.target.0.lock().unwrap().active.generation, 1, "nothing changed: no recompile");
    *f.phase.lock().unwrap() = "night".into();
    f.manager.reevaluate().await;
    assert_eq!(f.target.0.lock().unwrap().active.generation, 2);
    let mut got = prefixes(&f.target);
    got.sort();
    assert_eq!(got, ["10.0.0.0/8", "172.16.0.0/12"]);
    assert_eq!(f.manager.history().len(), 1, "re-evaluation is not a new version");
}

#[tokio::test]
async fn quarantine_denies_all_egress_survives_reload_and_restart_and_is_released() {
    let mut f = fixture();
    let qfile = f.dir.path().join("quarantined.json");
    f.manager = std::mem::replace(&mut f.manager, fixture().manager).with_quarantine_file(qfile.clone()).unwrap();
    f.manager.reload("start").await.unwrap();
    assert!(matches!(f.manager.quarantine("nobody", true, "test").await, Err(ApplyError::UnknownIdentity(_))));
    assert!(matches!(f.manager.quarantine("a", false, "test").await, Err(ApplyError::NotQuarantined(_))));
    let q = f.manager.quarantine("a", true, "anomaly: score 9.1 > 2.0").await.unwrap();
    assert!(prefixes(&f.target).is_empty(), "a's allowed destination is gone");
    let again = f.manager.quarantine("a", true, "another finding").await.unwrap();
    assert_eq!(again.generation, q.generation, "already quarantined: nothing recompiled");
    assert_eq!(f.manager.shared.in_force.read().unwrap().quarantined, ["a"]);
    // A new policy version keeps the quarantine.
    std::fs::write(f.dir.path().join("p.yaml"), policy("192.168.0.0/16")).unwrap();
    f.manager.reload("inotify").await.unwrap();
    assert!(prefixes(&f.target).is_empty());
    // So does a restart (the file).
    assert_eq!(std::fs::read_to_string(&qfile).unwrap(), r#"["a"]"#);
    f.manager.quarantine("a", false, "operator").await.unwrap();
    assert_eq!(prefixes(&f.target), ["192.168.0.0/16"]);
    assert_eq!(std::fs::read_to_string(&qfile).unwrap(), "[]");
    let actions: Vec<PolicyAction> = policy_events(&mut f.events).into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions, [PolicyAction::Applied, PolicyAction::Quarantined, PolicyAction::Applied, PolicyAction::Released]);
    // An unreadable file: no start, and the message says what to do.
    std::fs::write(&qfile, "[").unwrap();
    let e = fixture().manager.with_quarantine_file(qfile).err().unwrap().to_string();
    assert!(e.ends_with("remove the file to release every identity"), "{e}");
}

#[tokio::test]
async fn tables_changed_behind_the_manager_are_found_and_installed_again() {
    let mut f = fixture();
    assert_eq!(f.manager.check_maps(), Ok(None), "nothing installed: nothing to compare");
    f.manager.reload("start").await.unwrap();
    assert_eq!(f.manager.check_maps(), Ok(None));

    // An entry's rules changed in the slot in force (an allow for a deny).
    {
        let mut t = f.target.0.lock().unwrap();
        let slot = t.active.slot as usize;
        let c = t.slots[slot].as_mut().unwrap();
        c.net[0].2.rules[0].action ^= 1;
    }
    let differs = f.manager.check_maps().unwrap().expect("a difference");
    assert!(differs.contains("does not hold what was installed"), "{differs}");
    let o = f.manager.reinstall().await.unwrap();
    assert_eq!(o.generation, 2, "written again into the other slot and switched to");
    assert_eq!(f.manager.check_maps(), Ok(None));
    // An entry added (another prefix) is found the same way.
    {
        let mut t = f.target.0.lock().unwrap();
        let slot = t.active.slot as usize;
        let c = t.slots[slot].as_mut().unwrap();
        let extra = c.net[0];
        c.net.push((extra.0 - 1, extra.1, extra.2));
    }
    assert!(f.manager.check_maps().unwrap().is_some(), "an added entry");
    f.manager.reinstall().await.unwrap();

    // The slot switched from outside: another generation in force.
    {
        let mut t = f.target.0.lock().unwrap();
        let other = 1 - t.active.slot;
        t.flip(other).unwrap();
    }
    let differs = f.manager.check_maps().unwrap().expect("another generation");
    assert!(differs.contains("is in force, not generation 3"), "{differs}");
}

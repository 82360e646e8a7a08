//! [`Tally`]: a pipeline output that counts every event by kind, and the
//! decision events (connect, Unix connect, file, guard) by identity, hook,
//! rule and action, and policy changes by action, for `/metrics`. It counts in `try_send` itself (a lock
//! and a hash lookup, no queue), so it never drops an event.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use crate::pipeline::{
    event::{Body, Event, RuleName},
    output::{Closing, Dropped, LossNames, Output},
};

/// Label sets of decision events kept; past this, further new label sets
/// are only counted in [`TallySnapshot::series_overflow`] (a policy with
/// thousands of rules cannot grow the agent's memory without bound).
pub const MAX_DECISION_SERIES: usize = 8192;

/// One label set of `zt_agent_decision_events_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecisionKey {
    pub identity: String,
    /// "connect", "unix_connect", "file" or "guard".
    pub hook: &'static str,
    /// The rule's name (for a guard: the call it refused).
    pub rule: String,
    /// "allowed", "denied", "audited" (a guard also "killed").
    pub action: &'static str,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TallySnapshot {
    pub events: BTreeMap<&'static str, u64>,
    pub decisions: BTreeMap<DecisionKey, u64>,
    /// `policy` events by action: applied (start, reloads), rejected, ...
    pub policy_changes: BTreeMap<&'static str, u64>,
    /// Decision events not counted by label set ([`MAX_DECISION_SERIES`]).
    pub series_overflow: u64,
}

/// Counted in the hot path with shared names (no allocation per event).
#[derive(Hash, PartialEq, Eq)]
struct Key {
    identity: Arc<str>,
    hook: &'static str,
    rule: Rule,
    action: &'static str,
}

#[derive(Hash, PartialEq, Eq)]
enum Rule {
    Named(RuleName),
    Call(&'static str),
}

#[derive(Default)]
struct Counts {
    events: HashMap<&'static str, u64>,
    decisions: HashMap<Key, u64>,
    policy_changes: BTreeMap<&'static str, u64>,
    series_overflow: u64,
}

#[derive(Default, Clone)]
pub struct Tally(Arc<Mutex<Counts>>);

impl Tally {
    pub fn count(&self, event: &Event) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *c.events.entry(event.body.kind()).or_default() += 1;
        if let Body::Policy { policy } = &event.body {
            *c.policy_changes.entry(policy.action.name()).or_default() += 1;
        }
        let Some((key, n)) = decision(event) else { return };
        if let Some(v) = c.decisions.get_mut(&key) {
            *v += n;
        } else if c.decisions.len() < MAX_DECISION_SERIES {
            c.decisions.insert(key, n);
        } else {
            c.series_overflow += n;
        }
    }

    pub fn snapshot(&self) -> TallySnapshot {
        let c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        TallySnapshot {
            events: c.events.iter().map(|(k, v)| (*k, *v)).collect(),
            decisions: c
                .decisions
                .iter()
                .map(|(k, v)| {
                    let rule = match &k.rule {
                        Rule::Named(r) => r.to_string(),
                        Rule::Call(c) => c.to_string(),
                    };
                    (DecisionKey { identity: k.identity.to_string(), hook: k.hook, rule, action: k.action }, *v)
                })
                .collect(),
            policy_changes: c.policy_changes.clone(),
            series_overflow: c.series_overflow,
        }
    }
}

/// The decision an event reports, and how many attempts it stands for.
fn decision(event: &Event) -> Option<(Key, u64)> {
    let identity = event.body.identity()?.name.clone();
    let (hook, rule, action, n) = match &event.body {
        Body::Connect { connect, .. } => ("connect", Rule::Named(connect.rule.clone()), connect.action.name(), 1),
        Body::UnixConnect { unix_connect, .. } => ("unix_connect", Rule::Named(unix_connect.rule.clone()), unix_connect.action.name(), 1),
        Body::File { file, .. } => ("file", Rule::Named(file.rule.clone()), file.action.name(), file.repeats.max(1)),
        Body::Guard { guard, .. } => ("guard", Rule::Call(guard.call), guard.action, 1),
        _ => return None,
    };
    Some((Key { identity, hook, rule, action }, n))
}

impl Output for Tally {
    fn loss_names(&self) -> LossNames {
        // Never used: counting cannot fail.
        LossNames { full: "metrics_overflow", closed: "metrics_closed" }
    }

    fn wants(&self, _: &Event) -> bool {
        true
    }

    fn try_send(&self, event: &Arc<Event>) -> Result<(), Dropped> {
        self.count(event);
        Ok(())
    }

    fn close(self: Box<Self>) -> Closing {
        Box::pin(async {})
    }
}

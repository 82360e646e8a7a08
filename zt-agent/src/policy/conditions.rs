//! Rule conditions: UTC time windows and Rego (regorus).
//!
//! Conditions are evaluated when a policy is compiled and again when their
//! inputs change (the agent re-evaluates every 30 s, which covers time
//! windows), producing the set of active rules that is compiled into maps.
//! Rego never runs per syscall.
//!
//! A Rego condition is a rule body: one or more expressions (one per line,
//! AND-ed) over `input`:
//! - `input.node.name`, `input.node.labels` (from `--node-label k=v`)
//! - `input.env` (the agent's environment)
//! - `input.identity.name`, `input.identity.risk` (0.0 until the anomaly
//!   model exists)
//! - `input.time.unix`, `input.time.weekday` (0 = Monday), `input.time.hour`,
//!   `input.time.minute` (UTC)
use std::collections::{BTreeMap, HashMap};

use super::model::{Policy, TimeWindow};

const PACKAGE: &str = "ztagent.condition";

fn module(body: &str) -> String {
    format!("package {PACKAGE}\nimport rego.v1\ndefault allow := false\nallow if {{\n{body}\n}}\n")
}

/// Compiles a condition body; the error is regorus's, first line.
pub fn check_rego(body: &str) -> Result<(), String> {
    let mut engine = regorus::Engine::new();
    engine.add_policy("condition.rego".into(), module(body)).map(|_| ()).map_err(|e| first_line(&e.to_string()))
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("error").to_string()
}

/// What conditions see.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub now_unix: i64,
    pub node_name: String,
    pub node_labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub risk: HashMap<String, f64>,
}

impl Inputs {
    pub fn current(node_labels: BTreeMap<String, String>) -> Self {
        Inputs {
            now_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0),
            node_name: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            node_labels,
            env: std::env::vars().collect(),
            risk: HashMap::new(),
        }
    }
}

/// (weekday with 0 = Monday, minute of the day), UTC.
fn weekday_minute(unix: i64) -> (u8, u16) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // 1970-01-01 was a Thursday.
    (((days + 3).rem_euclid(7)) as u8, (secs / 60) as u16)
}

pub fn time_active(w: &TimeWindow, unix: i64) -> bool {
    let (day, minute) = weekday_minute(unix);
    if w.start <= w.end {
        w.days & (1 << day) != 0 && w.start <= minute && minute < w.end
    } else {
        // Wraps midnight: the part after midnight belongs to the previous day's window.
        (w.days & (1 << day) != 0 && minute >= w.start) || (w.days & (1 << ((day + 6) % 7)) != 0 && minute < w.end)
    }
}

/// Which rules are active (index = rule index). A Rego error at evaluation
/// (e.g. a type error on this input) makes the rule inactive and is returned
/// as a message so the caller can report it.
pub fn evaluate(policy: &Policy, inputs: &Inputs) -> (Vec<bool>, Vec<String>) {
    let (day, minute) = weekday_minute(inputs.now_unix);
    let mut problems = Vec::new();
    let active = policy
        .rules
        .iter()
        .map(|rule| {
            let Some(cond) = &rule.when else { return true };
            if let Some(w) = &cond.time
                && !time_active(w, inputs.now_unix)
            {
                return false;
            }
            let Some((body, pos)) = &cond.rego else { return true };
            let input = serde_json::json!({
                "node": { "name": inputs.node_name, "labels": inputs.node_labels },
                "env": inputs.env,
                "identity": { "name": rule.identity, "risk": inputs.risk.get(&rule.identity).copied().unwrap_or(0.0) },
                "time": { "unix": inputs.now_unix, "weekday": day, "hour": minute / 60, "minute": minute % 60 },
            });
            match eval_rego(body, &input) {
                Ok(b) => b,
                Err(e) => {
                    problems.push(format!("{pos}: rule {:?}: Rego evaluation failed: {e}", rule.name));
                    false
                }
            }
        })
        .collect();
    (active, problems)
}

fn eval_rego(body: &str, input: &serde_json::Value) -> Result<bool, String> {
    let mut engine = regorus::Engine::new();
    engine.add_policy("condition.rego".into(), module(body)).map_err(|e| first_line(&e.to_string()))?;
    engine.set_input(regorus::Value::from_json_str(&input.to_string()).map_err(|e| e.to_string())?);
    let v = engine.eval_rule(format!("data.{PACKAGE}.allow")).map_err(|e| first_line(&e.to_string()))?;
    Ok(v == regorus::Value::from(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_and_windows() {
        // 2026-11-23 is a Monday; 09:30 UTC.
        let mon_0930 = 1_795_426_200;
        assert_eq!(weekday_minute(mon_0930), (0, 9 * 60 + 30));
        let office = TimeWindow { days: 0b0011111, start: 8 * 60, end: 18 * 60 };
        assert!(time_active(&office, mon_0930));
        assert!(!time_active(&office, mon_0930 + 9 * 3600)); // 18:30
        assert!(!time_active(&office, mon_0930 + 5 * 86_400)); // Saturday
        // 22:00-06:00 on Mondays: Tuesday 01:00 is inside, Monday 01:00 is not.
        let night = TimeWindow { days: 0b1, start: 22 * 60, end: 6 * 60 };
        assert!(time_active(&night, mon_0930 + 12 * 3600 + 30 * 60)); // Mon 22:00
        assert!(time_active(&night, mon_0930 + 86_400 - 8 * 3600 - 30 * 60)); // Tue 01:00
        assert!(!time_active(&night, mon_0930 - 8 * 3600 - 30 * 60)); // Mon 01:00
    }

    #[test]
    fn rego_checks_and_evaluates() {
        assert!(check_rego("input.node.labels.env == \"prod\"").is_ok());
        let e = check_rego("input.node.labels.env == ").unwrap_err();
        assert!(!e.is_empty());
        let input = serde_json::json!({"node": {"labels": {"env": "prod"}}, "identity": {"risk": 0.2}});
        assert_eq!(eval_rego("input.node.labels.env == \"prod\"\ninput.identity.risk < 0.5", &input), Ok(true));
        assert_eq!(eval_rego("input.node.labels.env == \"dev\"", &input), Ok(false));
        assert_eq!(eval_rego("input.missing.field == 1", &input), Ok(false));
    }
}

//! Rule conditions: UTC time windows and Rego (regorus).
//!
//! Conditions are evaluated when a policy is applied and again when their
//! inputs change (the agent re-evaluates every 30 s, which covers time
//! windows), producing the set of active rules that is compiled into maps.
//! Rego never runs per syscall.
//!
//! A Rego condition is a rule body: one or more expressions (one per line,
//! AND-ed) over `input`:
//! - `input.node.name`, `input.node.labels` (from `--node-label k=v`)
//! - `input.env` (the agent's environment)
//! - `input.identity.name`, `input.identity.risk` (the anomaly detector's
//!   live risk, 0 to 1; 0.0 for an identity it does not watch)
//! - `input.time.unix`, `input.time.weekday` (0 = Monday), `input.time.hour`,
//!   `input.time.minute` (UTC)
//!
//! # Layout
//! - [`RegoSource`]: a body and where its lines are in the policy file, so
//!   every Rego message points into the file the operator wrote.
//! - [`check_rego`]: the static check at parse time: one rule body (no
//!   braces closing it early), only [`ALLOWED_BUILTINS`] called (named with
//!   their position otherwise), and regorus's own parse.
//! - [`evaluate`] -> [`Evaluation`]: each rule's state and why
//!   ([`Why`]), under a time budget per condition ([`BUDGET`]) and for the
//!   whole policy ([`TOTAL_BUDGET`]).
//!
//! # Failing closed
//! A condition that cannot be evaluated (a Rego error on this input, or its
//! budget ran out) never widens access: a deny rule stays in force, an
//! allow rule is not granted. A budget overrun also rejects the bundle at
//! load and in `policy check` ([`Evaluation::over_budget`]).
//!
//! Only builtins that do bounded work per call are allowed: the budget is
//! enforced between evaluation steps, so one call that ran for minutes
//! (`numbers.range(1, 1e9)`, `net.cidr_expand("0.0.0.0/0")`) could not be
//! interrupted; network and other side-effecting builtins would make a rule
//! depend on the outside world.
use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::model::{Action, Diagnostic, Policy, Pos, TimeWindow};

const PACKAGE: &str = "ztagent.condition";
/// Lines of [`module`] before the body.
const HEADER_LINES: u32 = 4;

/// Time one condition may take.
pub const BUDGET: Duration = Duration::from_millis(250);
/// Time every condition of a policy may take together.
pub const TOTAL_BUDGET: Duration = Duration::from_secs(2);

/// The builtins a condition may call.
pub const ALLOWED_BUILTINS: &[&str] = &[
    // aggregates
    "count",
    "max",
    "min",
    "product",
    "sort",
    "sum",
    // strings
    "concat",
    "contains",
    "endswith",
    "format_int",
    "indexof",
    "lower",
    "replace",
    "split",
    "startswith",
    "strings.any_prefix_match",
    "strings.any_suffix_match",
    "substring",
    "trim",
    "trim_left",
    "trim_prefix",
    "trim_right",
    "trim_space",
    "trim_suffix",
    "upper",
    // patterns
    "glob.match",
    "regex.is_valid",
    "regex.match",
    // numbers
    "abs",
    "ceil",
    "floor",
    "round",
    "to_number",
    // types
    "is_array",
    "is_boolean",
    "is_null",
    "is_number",
    "is_object",
    "is_set",
    "is_string",
    "type_name",
    // collections
    "array.concat",
    "array.slice",
    "intersection",
    "object.get",
    "object.keys",
    "union",
    // network
    "net.cidr_contains",
    "net.cidr_is_valid",
    // time
    "time.clock",
    "time.date",
    "time.now_ns",
    "time.parse_rfc3339_ns",
    "time.weekday",
];

/// Rego keywords that may precede `(` without being a call.
const KEYWORDS: &[&str] = &["not", "some", "every", "in", "if", "contains", "else", "with", "as", "default", "import", "package"];

fn module(body: &str) -> String {
    format!("package {PACKAGE}\nimport rego.v1\ndefault allow := false\nallow if {{\n{body}\n}}\n")
}

/// A Rego condition as written: the body, the position of its YAML value,
/// and where each body line starts in the file (line, column), if found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoSource {
    pub body: String,
    pub pos: Pos,
    pub lines: Vec<Option<(u64, u64)>>,
}

impl RegoSource {
    /// Locates the body's lines in `file_text`, starting at the value's
    /// line (block scalars, plain and simple quoted scalars); a line that
    /// cannot be found (escapes, folding) maps to the value's position.
    pub fn new(body: String, pos: Pos, file_text: &str) -> Self {
        let file_lines: Vec<&str> = file_text.lines().collect();
        let mut next = pos.line.saturating_sub(1) as usize;
        let mut lines = Vec::new();
        for text in body.lines() {
            let text = text.trim_end();
            let found = if text.is_empty() {
                None
            } else {
                file_lines.iter().enumerate().skip(next).find_map(|(i, l)| l.find(text).map(|c| (i, c)))
            };
            match found {
                Some((i, c)) => {
                    lines.push(Some((i as u64 + 1, c as u64 + 1)));
                    next = i + 1;
                }
                None if text.is_empty() && !lines.is_empty() => {
                    lines.push(Some((next as u64 + 1, 1)));
                    next += 1;
                }
                None => lines.push(None),
            }
        }
        RegoSource { body, pos, lines }
    }

    /// The file position of `line:col` of the body (1-based).
    fn at(&self, line: u32, col: u32) -> Pos {
        match self.lines.get((line as usize).wrapping_sub(1)) {
            Some(&Some((l, c))) => Pos { file: self.pos.file.clone(), line: l, column: c + u64::from(col.saturating_sub(1)) },
            _ => self.pos.clone(),
        }
    }

    /// The file position of `line:col` of the generated module; past the
    /// body (the rule's closing brace), the end of the body's last line.
    fn at_module(&self, line: u32, col: u32) -> Pos {
        let body_lines = self.lines.len() as u32;
        match line.checked_sub(HEADER_LINES) {
            Some(l @ 1..) if l <= body_lines => self.at(l, col),
            Some(_) if body_lines > 0 => {
                let last = self.body.lines().last().unwrap_or_default().trim_end();
                self.at(body_lines, last.chars().count() as u32 + 1)
            }
            _ => self.pos.clone(),
        }
    }

    /// A regorus error as `(position in the file, message)`.
    fn locate(&self, e: &anyhow::Error) -> (Pos, String) {
        let text = format!("{e:#}");
        let at = text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("--> ")?;
            let mut parts = rest.rsplitn(3, ':');
            let col = parts.next()?.parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            Some((line, col))
        });
        let message = text
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("-->")))
            .unwrap_or("error")
            .to_string();
        (at.map_or_else(|| self.pos.clone(), |(l, c)| self.at_module(l, c)), message)
    }
}

/// A condition that fails the static check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegoError {
    pub pos: Pos,
    pub message: String,
}

/// The static check: see the module docs.
pub fn check_rego(src: &RegoSource) -> Result<(), RegoError> {
    scan_body(src)?;
    let mut engine = regorus::Engine::new();
    engine.add_policy("condition.rego".into(), module(&src.body)).map(|_| ()).map_err(|e| {
        let (pos, message) = src.locate(&e);
        RegoError { pos, message }
    })
}

/// Lexes the body with regorus's lexer: brackets must balance without ever
/// closing the rule the body is placed in, and every call must be to an
/// allowed builtin.
fn scan_body(src: &RegoSource) -> Result<(), RegoError> {
    use regorus::unstable::{Lexer, Source, TokenKind};
    let err = |line: u32, col: u32, message: String| RegoError { pos: src.at(line, col), message };
    let source = Source::from_contents("condition.rego".into(), src.body.clone()).map_err(|e| err(1, 1, format!("{e}")))?;
    let mut lexer = Lexer::new(&source);
    let mut depth: i64 = 0;
    // The dotted name being read (`a.b.c`), where it started, and whether
    // the last token was a name part or a dot after one.
    let (mut name, mut start) = (String::new(), (0, 0));
    let (mut after_name, mut after_dot) = (false, false);
    loop {
        let tok = lexer.next_token().map_err(|e| {
            let (pos, message) = src.locate(&e);
            RegoError { pos, message }
        })?;
        let (line, col, text) = (tok.1.line, tok.1.col, tok.1.text());
        match tok.0 {
            TokenKind::Eof => break,
            TokenKind::Ident => {
                if after_dot {
                    name.push('.');
                    name.push_str(text);
                } else {
                    name = text.to_string();
                    start = (line, col);
                }
                (after_name, after_dot) = (true, false);
                continue;
            }
            TokenKind::Symbol if text == "." && after_name => {
                (after_name, after_dot) = (false, true);
                continue;
            }
            TokenKind::Symbol if text == "(" && after_name && !KEYWORDS.contains(&name.as_str()) => {
                if !ALLOWED_BUILTINS.contains(&name.as_str()) {
                    return Err(err(
                        start.0,
                        start.1,
                        format!("builtin `{name}` is not allowed in a condition (allowed: {})", ALLOWED_BUILTINS.join(", ")),
                    ));
                }
                depth += 1;
            }
            TokenKind::Symbol if matches!(text, "(" | "[" | "{") => depth += 1,
            TokenKind::Symbol if matches!(text, ")" | "]" | "}") => {
                depth -= 1;
                if depth < 0 {
                    return Err(err(line, col, format!("unbalanced `{text}`: a condition is the body of one rule")));
                }
            }
            _ => {}
        }
        (after_name, after_dot) = (false, false);
    }
    if depth != 0 {
        return Err(RegoError { pos: src.pos.clone(), message: "unbalanced brackets: a condition is the body of one rule".into() });
    }
    Ok(())
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
            node_name: crate::host::node_name(),
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

/// Why a rule is active or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Why {
    /// No condition.
    Unconditional,
    /// Every condition holds.
    ConditionsHold,
    /// Outside its time window (`now`: weekday and time, UTC).
    OutsideTimeWindow { now: String },
    /// The Rego condition is false (or undefined) on this input.
    RegoFalse,
    /// The Rego condition failed on this input: the rule fails closed.
    RegoError { at: Pos, message: String },
    /// The condition ran out of time: the rule fails closed, and the
    /// bundle is rejected at load.
    OverBudget { at: Pos, message: String },
}

/// The state of every rule (index = rule index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    pub rules: Vec<RuleState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleState {
    pub rule: String,
    pub active: bool,
    #[serde(flatten)]
    pub why: Why,
}

impl RuleState {
    /// One line: active or not, and why.
    pub fn describe(&self) -> String {
        let state = if self.active { "active" } else { "inactive" };
        match &self.why {
            Why::Unconditional => format!("{state}: no condition"),
            Why::ConditionsHold => format!("{state}: its conditions hold"),
            Why::OutsideTimeWindow { now } => format!("{state}: outside its time window (now {now})"),
            Why::RegoFalse => format!("{state}: its Rego condition is false on this host's input"),
            Why::RegoError { at, message } => format!("{state} (fails closed): its Rego condition failed at {at}: {message}"),
            Why::OverBudget { at, message } => format!("{state} (fails closed): at {at}: {message}"),
        }
    }
}

impl Evaluation {
    pub fn active(&self) -> Vec<bool> {
        self.rules.iter().map(|r| r.active).collect()
    }

    fn diagnostics(&self, pick: impl Fn(&Why) -> Option<(&Pos, &str)>) -> Vec<Diagnostic> {
        self.rules
            .iter()
            .filter_map(|r| {
                let (at, message) = pick(&r.why)?;
                let closed = if r.active { "stays in force" } else { "is not granted" };
                let message = format!("rule {:?}: {message}; the rule fails closed (it {closed})", r.rule);
                Some(Diagnostic { pos: at.clone(), message, hint: None })
            })
            .collect()
    }

    /// Conditions that ran out of time: such a bundle is rejected.
    pub fn over_budget(&self) -> Vec<Diagnostic> {
        self.diagnostics(|w| match w {
            Why::OverBudget { at, message } => Some((at, message)),
            _ => None,
        })
    }

    /// Conditions that failed on this input (warnings).
    pub fn errors(&self) -> Vec<Diagnostic> {
        self.diagnostics(|w| match w {
            Why::RegoError { at, message } => Some((at, message)),
            _ => None,
        })
    }
}

/// Evaluates every rule's condition on `inputs`; see the module docs.
pub fn evaluate(policy: &Policy, inputs: &Inputs) -> Evaluation {
    let (day, minute) = weekday_minute(inputs.now_unix);
    let deadline = Instant::now() + TOTAL_BUDGET;
    let rules = policy
        .rules
        .iter()
        .map(|rule| {
            let fail_closed = rule.action == Action::Deny;
            let state = |active: bool, why: Why| RuleState { rule: rule.name.clone(), active, why };
            let Some(cond) = &rule.when else { return state(true, Why::Unconditional) };
            if let Some(w) = &cond.time
                && !time_active(w, inputs.now_unix)
            {
                const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
                return state(
                    false,
                    Why::OutsideTimeWindow { now: format!("{} {:02}:{:02} UTC", DAYS[day as usize], minute / 60, minute % 60) },
                );
            }
            let Some(src) = &cond.rego else { return state(true, Why::ConditionsHold) };
            let input = serde_json::json!({
                "node": { "name": inputs.node_name, "labels": inputs.node_labels },
                "env": inputs.env,
                "identity": { "name": rule.identity, "risk": inputs.risk.get(&*rule.identity).copied().unwrap_or(0.0) },
                "time": { "unix": inputs.now_unix, "weekday": day, "hour": minute / 60, "minute": minute % 60 },
            });
            let budget = BUDGET.min(deadline.saturating_duration_since(Instant::now()));
            match eval_rego(src, &input, budget) {
                Ok(true) => state(true, Why::ConditionsHold),
                Ok(false) => state(false, Why::RegoFalse),
                Err(Failed::OverBudget(message)) => state(fail_closed, Why::OverBudget { at: src.pos.clone(), message }),
                Err(Failed::Error(pos, message)) => state(fail_closed, Why::RegoError { at: pos, message }),
            }
        })
        .collect();
    Evaluation { rules }
}

enum Failed {
    OverBudget(String),
    Error(Pos, String),
}

fn eval_rego(src: &RegoSource, input: &serde_json::Value, budget: Duration) -> Result<bool, Failed> {
    let over = || {
        Failed::OverBudget(format!(
            "the Rego condition did not finish within its budget ({} ms per condition, {} ms per policy)",
            BUDGET.as_millis(),
            TOTAL_BUDGET.as_millis()
        ))
    };
    if budget.is_zero() {
        return Err(over());
    }
    let mut engine = regorus::Engine::new();
    let located = |e: anyhow::Error| {
        let (pos, message) = src.locate(&e);
        Failed::Error(pos, message)
    };
    engine.add_policy("condition.rego".into(), module(&src.body)).map_err(located)?;
    engine.set_input(regorus::Value::from_json_str(&input.to_string()).map_err(located)?);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: budget,
        check_interval: NonZeroU32::new(16).expect("16"),
    });
    match engine.eval_rule(format!("data.{PACKAGE}.allow")) {
        Ok(v) => Ok(v == regorus::Value::from(true)),
        Err(e) if e.downcast_ref::<regorus::LimitError>().is_some() || format!("{e:#}").contains("execution exceeded") => Err(over()),
        Err(e) => Err(located(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(body: &str) -> RegoSource {
        let file = format!("when:\n  rego: |\n{}\n", body.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n"));
        RegoSource::new(body.to_string(), Pos { file: "p.yaml".into(), line: 2, column: 9 }, &file)
    }

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
        assert_eq!(check_rego(&src("input.node.labels.env == \"prod\"")), Ok(()));
        let input = serde_json::json!({"node": {"labels": {"env": "prod"}}, "identity": {"risk": 0.2}});
        let eval = |body: &str| eval_rego(&src(body), &input, BUDGET).map_err(|_| ());
        assert_eq!(eval("input.node.labels.env == \"prod\"\ninput.identity.risk < 0.5"), Ok(true));
        assert_eq!(eval("input.node.labels.env == \"dev\""), Ok(false));
        assert_eq!(eval("input.missing.field == 1"), Ok(false));
        assert_eq!(eval("startswith(input.node.labels.env, \"pr\")\ncount(input.node.labels) == 1"), Ok(true));
    }

    #[test]
    fn errors_point_into_the_policy_file() {
        // Line 2 of the body is line 4 of the file, indented by 4.
        let e = check_rego(&src("input.x == 1\ninput.y == ")).unwrap_err();
        assert_eq!((e.pos.line, &*e.pos.file), (4, "p.yaml"), "{e:?}");
        assert!(e.pos.column > 4, "{e:?}");
        assert!(!e.message.contains("condition.rego") && !e.message.is_empty(), "{e:?}");
    }

    #[test]
    fn disallowed_builtins_are_named_with_their_position() {
        for (body, name, col) in [
            ("http.send({\"method\": \"get\", \"url\": \"http://x\"}).status_code == 200", "http.send", 5),
            ("x := net.lookup_ip_addr(\"example.com\")", "net.lookup_ip_addr", 10),
            ("count(numbers.range(1, 1000000000)) > 0", "numbers.range", 11),
            ("not opa.runtime().env.X", "opa.runtime", 9),
            ("print(\"hi\")", "print", 5),
        ] {
            let e = check_rego(&src(body)).unwrap_err();
            assert!(e.message.starts_with(&format!("builtin `{name}` is not allowed")), "{body}: {e:?}");
            assert_eq!((e.pos.line, e.pos.column), (3, col), "{body}: {e:?}");
        }
        // Strings and comments are not calls; keywords before a parenthesis are not calls.
        assert_eq!(check_rego(&src("input.x == \"http.send(1)\" # print(1)\nnot (input.y == 2)")), Ok(()));
    }

    #[test]
    fn a_body_cannot_close_its_rule_and_define_others() {
        let e = check_rego(&src("true\n}\nallow if {\ntrue")).unwrap_err();
        assert!(e.message.starts_with("unbalanced `}`"), "{e:?}");
        assert_eq!(e.pos.line, 4);
    }

    #[test]
    fn every_allowed_builtin_exists_in_regorus() {
        for name in ALLOWED_BUILTINS {
            assert!(regorus::unstable::BUILTINS.contains_key(name), "{name} is not a regorus builtin in this build");
        }
    }

    #[test]
    fn a_runaway_condition_stops_at_its_budget_and_fails_closed() {
        let env: BTreeMap<String, String> = (0..40).map(|i| (format!("V{i}"), i.to_string())).collect();
        let inputs = Inputs { env, ..Inputs::default() };
        // 40^6 = 4e9 iterations: hours without a budget.
        let body = "count([1 | some a in input.env; some b in input.env; some c in input.env; some d in input.env; some e in input.env; some f in input.env]) > 0";
        let text = format!(
            "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata: {{name: t}}\nspec:\n  trustDomain: t\n  identities:\n    - name: a\n      selectors:\n        - uid: 1\n  rules:\n    - identity: a\n      action: deny\n      when:\n        rego: '{body}'\n      egress:\n        - to: [10.0.0.0/8]\n    - identity: a\n      action: allow\n      when:\n        rego: '{body}'\n      egress:\n        - to: [10.0.0.0/8]\n"
        );
        let policy = crate::policy::Bundle { files: vec![("p.yaml".into(), text)] }.parse().unwrap();
        let started = Instant::now();
        let ev = evaluate(&policy, &inputs);
        assert!(started.elapsed() < Duration::from_secs(30), "evaluation was not bounded");
        assert!(matches!(ev.rules[0].why, Why::OverBudget { .. }), "{ev:?}");
        assert_eq!(ev.active(), [true, false], "the deny rule stays, the allow rule is not granted");
        let over = ev.over_budget();
        assert_eq!(over.len(), 2);
        assert!(over[0].to_string().contains("p.yaml:14:") && over[0].to_string().contains("budget"), "{}", over[0]);
    }
}

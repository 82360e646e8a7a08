//! `/healthz` and `/readyz`, decided from a status snapshot (plain Rust).
//!
//! - **Live** ([`liveness`]): the event pipeline goes round its loop (it
//!   does at least once a second) and the audit thread has not died. A
//!   failing liveness probe restarts the agent; the pinned programs keep
//!   enforcing meanwhile.
//! - **Ready** ([`readiness`]): live, and the egress programs are attached,
//!   a policy is applied, and the audit log can write. A degraded
//!   enforcement path (a hook the kernel refused) is named in the body
//!   but does not make the agent unready: it will not attach on a retry
//!   either, and `status` says what is in force.
use std::time::Duration;

use crate::control::protocol::StatusDoc;

/// The pipeline is stalled when its loop has not turned for this long.
pub const STALL: Duration = Duration::from_secs(10);

/// The programs that enforce egress: the agent is not ready without them.
const EGRESS: [&str; 4] =
    [zt_common::programs::CONNECT4, zt_common::programs::CONNECT6, zt_common::programs::SENDMSG4, zt_common::programs::SENDMSG6];

/// One probe's answer: `Ok(body)` (HTTP 200) or `Err(body)` (HTTP 503),
/// each line of the body one finding.
pub type Verdict = Result<String, String>;

pub fn liveness(st: &StatusDoc) -> Verdict {
    let problems = live_problems(st);
    if problems.is_empty() { Ok("ok\n".into()) } else { Err(lines(&problems)) }
}

pub fn readiness(st: &StatusDoc) -> Verdict {
    let mut problems = live_problems(st);
    for p in EGRESS {
        match st.info.hooks.iter().find(|h| h.program == p) {
            Some(h) if h.attached => {}
            Some(h) => problems.push(format!("egress program {p} is not attached: {}", h.state)),
            None => problems.push(format!("egress program {p} is not loaded")),
        }
    }
    if st.policy.version == 0 {
        problems.push("no policy applied yet".into());
    }
    if let Some(a) = &st.audit
        && let Some(f) = &a.unwritable
    {
        problems.push(format!("the audit log cannot write since {}: {} ({} records wait in memory)", f.since, f.error, f.buffered));
    }
    if !problems.is_empty() {
        return Err(lines(&problems));
    }
    let mut body = format!("ready: policy v{} in force, egress programs attached, audit log writable\n", st.policy.version);
    for (what, how) in st.info.paths.iter().filter(|(_, how)| how.contains("DEGRADED") || how.contains("NOT ENFORCED")) {
        body.push_str(&format!("note: {what}: {how}\n"));
    }
    Ok(body)
}

fn live_problems(st: &StatusDoc) -> Vec<String> {
    let mut problems = Vec::new();
    if Duration::from_millis(st.counters.heartbeat_age_ms) > STALL {
        problems.push(format!("the event pipeline has not turned for {} ms", st.counters.heartbeat_age_ms));
    }
    if let Some(why) = st.audit.as_ref().and_then(|a| a.failed.as_ref()) {
        problems.push(format!("the audit thread died: {why}"));
    }
    problems
}

fn lines(problems: &[String]) -> String {
    problems.iter().map(|p| format!("{p}\n")).collect()
}

//! What a destination sends: an audit record (a security record, with its
//! place in the log) or a telemetry event (best effort, no place), and how
//! severe each kind of record is.
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::Value;

use super::rfc5424::Severity;
use crate::audit::{merkle::leaf_hash, record::Envelope};

/// Where a record stands in the audit log: enough for a SIEM to
/// de-duplicate (origin, index), see gaps (index), and check the record
/// against a checkpoint (leaf hash: base64 of SHA-256 over `0x00 || record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub origin: String,
    pub index: u64,
    pub leaf: String,
}

#[derive(Debug, Clone)]
pub struct Record {
    /// None: telemetry that is not in the log.
    pub place: Option<Place>,
    /// The event kind (`connect`, `exec`, `policy`, ...) or the log's own
    /// (`checkpoint`, `retention`, ...).
    pub kind: String,
    /// RFC 3339 time of the event (of the append for the log's own records).
    pub time: String,
    /// The event as the JSON-lines schema has it, or the log record's payload.
    pub payload: Value,
}

impl Record {
    /// A record read from the audit log.
    pub fn from_log(bytes: &[u8]) -> Result<Self, String> {
        let env = Envelope::decode(bytes)?;
        let time = env.payload["time"].as_str().map(str::to_string).unwrap_or(env.time);
        Ok(Record {
            place: Some(Place { origin: env.origin, index: env.idx, leaf: B64.encode(leaf_hash(bytes)) }),
            kind: env.kind,
            time,
            payload: env.payload,
        })
    }

    /// A telemetry event (its JSON-lines form).
    pub fn telemetry(payload: Value) -> Self {
        let kind = payload["kind"].as_str().unwrap_or("unknown").to_string();
        let time = payload["time"].as_str().unwrap_or_default().to_string();
        Record { place: None, kind, time, payload }
    }

    pub fn severity(&self) -> Severity {
        severity(&self.kind, &self.payload)
    }

    /// The identity's name and SPIFFE ID, when the record has one.
    pub fn identity(&self) -> Option<(&str, &str)> {
        let i = &self.payload["identity"];
        Some((i["name"].as_str()?, i["spiffe_id"].as_str()?))
    }
}

/// How severe a record is: denials warn, would-denies are notices, what an
/// agent identity may do is informational; lost records, a refused policy,
/// a killed process and a damaged log are errors; an integrity finding is
/// critical; a refused remote API call warns, an allowed one is a notice.
pub fn severity(kind: &str, p: &Value) -> Severity {
    use Severity::*;
    let by_action = |action: &Value| match action.as_str() {
        Some("denied") => Warning,
        Some("audited") => Notice,
        Some("killed") => Error,
        _ => Info,
    };
    match kind {
        "connect" => by_action(&p["connect"]["action"]),
        "unix_connect" => by_action(&p["unix_connect"]["action"]),
        "guard" => by_action(&p["guard"]["action"]),
        // A denied exec on the fallback path killed the process.
        "file" if p["file"]["enforcement"] == "exec_kill" && p["file"]["action"] == "denied" => Error,
        "file" => by_action(&p["file"]["action"]),
        "connect_summary" if p["connect_summary"]["decision"] == "deny" => Warning,
        "connect_folded" if p["connect_folded"]["denied"].as_u64().unwrap_or(0) > 0 => Warning,
        "connect_folded" if p["connect_folded"]["audited"].as_u64().unwrap_or(0) > 0 => Notice,
        "policy" => match p["policy"]["action"].as_str() {
            Some("rejected") => Error,
            Some("rolled_back") => Warning,
            _ => Notice,
        },
        "loss" | "recovery" => Error,
        // Something the agent put in place is gone or changed: enforcement
        // may not be what `status` says.
        "integrity" if p["integrity"]["state"] == "found" => Critical,
        "integrity" => Notice,
        "api" if p["api"]["outcome"] == "refused" => Warning,
        "api" => Notice,
        "retention" if p["undelivered"].is_array() => Warning,
        "agent" | "key_rotation" | "key_retired" | "retention" | "siem_undelivered" => Notice,
        _ => Info,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn severities() {
        let connect = |a: &str| json!({"connect": {"action": a}});
        assert_eq!(severity("connect", &connect("denied")), Severity::Warning);
        assert_eq!(severity("connect", &connect("audited")), Severity::Notice);
        assert_eq!(severity("connect", &connect("allowed")), Severity::Info);
        assert_eq!(severity("guard", &json!({"guard": {"action": "killed"}})), Severity::Error);
        assert_eq!(severity("connect_folded", &json!({"connect_folded": {"denied": 0, "audited": 2}})), Severity::Notice);
        assert_eq!(severity("policy", &json!({"policy": {"action": "rejected"}})), Severity::Error);
        assert_eq!(severity("loss", &json!({})), Severity::Error);
        assert_eq!(severity("integrity", &json!({"integrity": {"state": "found"}})), Severity::Critical);
        assert_eq!(severity("integrity", &json!({"integrity": {"state": "cleared"}})), Severity::Notice);
        assert_eq!(severity("api", &json!({"api": {"outcome": "refused"}})), Severity::Warning);
        assert_eq!(severity("api", &json!({"api": {"outcome": "allowed"}})), Severity::Notice);
        assert_eq!(severity("exec", &json!({})), Severity::Info);
    }

    #[test]
    fn a_log_record_carries_its_place() {
        let env = Envelope {
            idx: 9,
            origin: "zt-agent/n".into(),
            time: "2026-12-02T00:00:01Z".into(),
            boot_id: "b".into(),
            mono_ns: 1,
            kind: "connect".into(),
            payload: json!({"kind": "connect", "time": "2026-12-02T00:00:00.5Z", "identity": {"name": "a", "spiffe_id": "spiffe://t/a"}}),
        };
        let bytes = env.encode();
        let r = Record::from_log(&bytes).unwrap();
        let place = r.place.clone().unwrap();
        assert_eq!((place.origin.as_str(), place.index), ("zt-agent/n", 9));
        assert_eq!(B64.decode(&place.leaf).unwrap(), leaf_hash(&bytes));
        assert_eq!(r.time, "2026-12-02T00:00:00.5Z", "the event's time, not the append's");
        assert_eq!(r.identity(), Some(("a", "spiffe://t/a")));
    }
}

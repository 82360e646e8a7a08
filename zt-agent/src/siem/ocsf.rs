//! Records as OCSF events (schema 1.8): the class a SIEM expects for each
//! kind of record, and the same context on every one of them.
//!
//! | record | OCSF class |
//! |---|---|
//! | allowed / would-deny connect, connect summary, folded counts | Network Activity (4001) |
//! | denied connect or Unix-socket connect, guard action, denied summary or folded denials, lost records, an unclean stop or unwritable log | Detection Finding (2004) |
//! | exec / exit | Process Activity (1007): Launch / Terminate |
//! | policy applied, rejected, rolled back; agent start / stop | Application Lifecycle (6002): Update / Start / Stop |
//! | the log's own records (checkpoint, key rotation, retention, ...) | Base Event (0) |
//!
//! Every event carries `metadata` (product, schema version, `uid` =
//! `origin/index`, `sequence` = index, `log_name` = origin, the record's
//! leaf hash in `metadata.extensions`... see [`context`]), `device` (the
//! node), `ai_agent` (the identity: `uid` = its SPIFFE ID; the
//! `ai_operation` profile) and `actor.process` when the record names a
//! process. What OCSF has no attribute for stays under `unmapped`.
use serde_json::{Map, Value, json};

use super::{
    record::{Place, Record},
    rfc5424::Severity,
};

pub const SCHEMA_VERSION: &str = "1.8.0";

/// OCSF `severity_id` and caption for a syslog severity.
fn severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Debug | Severity::Info => (1, "Informational"),
        Severity::Notice => (2, "Low"),
        Severity::Warning => (3, "Medium"),
        Severity::Error => (4, "High"),
        Severity::Critical => (5, "Critical"),
        Severity::Alert | Severity::Emergency => (6, "Fatal"),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (0 if unreadable).
fn epoch_ms(time: &str) -> u64 {
    humantime::parse_rfc3339_weak(time).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64)
}

struct Class {
    uid: u32,
    name: &'static str,
    category: (u32, &'static str),
    activity: (u32, &'static str),
}

fn class(r: &Record) -> Class {
    let p = &r.payload;
    let c = |uid, name, category, activity| Class { uid, name, category, activity };
    let network = |activity| c(4001, "Network Activity", (4, "Network Activity"), activity);
    let finding = || c(2004, "Detection Finding", (2, "Findings"), (1, "Create"));
    let lifecycle = |activity| c(6002, "Application Lifecycle", (6, "Application Activity"), activity);
    match r.kind.as_str() {
        "connect" if p["connect"]["action"] == "denied" => finding(),
        "connect" => network((1, "Open")),
        "connect_summary" if p["connect_summary"]["decision"] == "deny" => finding(),
        "connect_summary" => network((6, "Traffic")),
        "connect_folded" if p["connect_folded"]["denied"].as_u64().unwrap_or(0) > 0 => finding(),
        "connect_folded" => network((6, "Traffic")),
        "unix_connect" | "guard" | "loss" | "recovery" => finding(),
        "exec" => c(1007, "Process Activity", (1, "System Activity"), (1, "Launch")),
        "exit" => c(1007, "Process Activity", (1, "System Activity"), (2, "Terminate")),
        "policy" => lifecycle((8, "Update")),
        "agent" if p["agent"]["state"] == "stopped" => lifecycle((4, "Stop")),
        "agent" => lifecycle((3, "Start")),
        _ => c(0, "Base Event", (0, "Uncategorized"), (99, "Other")),
    }
}

/// `metadata`, `device`, `ai_agent`: the same on every event.
pub struct Context<'a> {
    pub product_version: &'a str,
    pub node: &'a str,
}

/// The OCSF event for `r`.
pub fn event(r: &Record, ctx: &Context) -> Value {
    let p = &r.payload;
    let cl = class(r);
    let sev = r.severity();
    let (severity_id, severity_name) = severity(sev);
    let mut e = Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            e.insert(k.into(), v);
        }
    };
    put("class_uid", json!(cl.uid));
    put("class_name", json!(cl.name));
    put("category_uid", json!(cl.category.0));
    put("category_name", json!(cl.category.1));
    put("activity_id", json!(cl.activity.0));
    put("activity_name", json!(cl.activity.1));
    put("type_uid", json!(cl.uid as u64 * 100 + cl.activity.0 as u64));
    put("time", json!(epoch_ms(&r.time)));
    put("severity_id", json!(severity_id));
    put("severity", json!(severity_name));
    put("message", json!(summary(r)));
    put("metadata", metadata(r.place.as_ref(), &r.kind, ctx));
    put("device", json!({"hostname": p["node"].as_str().unwrap_or(ctx.node), "type_id": 0}));
    if let Some((name, spiffe_id)) = r.identity() {
        put("ai_agent", json!({"uid": spiffe_id, "name": name, "type_id": 0}));
    }
    if p["process"].is_object() {
        let process = process(&p["process"]);
        match r.kind.as_str() {
            // The process launched or ended is the subject; its parent acted.
            "exec" | "exit" => {
                put("process", with_cmd_line(process, &p["exec"]["argv"]));
                put("actor", json!({"process": {"pid": p["process"]["ppid"]}}));
            }
            _ => put("actor", json!({"process": process, "user": {"uid": uid(&p["process"])}})),
        }
    }
    let action = p[r.kind.as_str()]["action"].as_str();
    if let Some(a) = action {
        let (action_id, name, disposition_id, disposition) = match a {
            "denied" | "killed" => (2, "Denied", 2, "Blocked"),
            "audited" => (1, "Allowed", 17, "Logged"),
            _ => (1, "Allowed", 1, "Allowed"),
        };
        put("action_id", json!(action_id));
        put("action", json!(name));
        put("disposition_id", json!(disposition_id));
        put("disposition", json!(disposition));
    }
    let net = network(r);
    match cl.uid {
        4001 => {
            for (k, v) in net {
                put(k, v);
            }
            put("count", count(r));
        }
        2004 => {
            put("finding_info", finding_info(r));
            put("count", count(r));
            if !net.is_empty() {
                put("evidences", json!([Value::Object(net.into_iter().map(|(k, v)| (k.to_string(), v)).collect())]));
            }
        }
        6002 => {
            put("app", json!({"name": "zt-agent", "version": ctx.product_version}));
            if r.kind == "policy" {
                let failed = p["policy"]["action"] == "rejected";
                put("status_id", json!(if failed { 2 } else { 1 }));
                put("status", json!(if failed { "Failure" } else { "Success" }));
                let errors = p["policy"]["errors"].as_array().filter(|a| !a.is_empty());
                put(
                    "status_detail",
                    errors.map_or(Value::Null, |e| json!(e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))),
                );
            }
        }
        _ => {}
    }
    // The kind's own fields (the whole payload for the log's own records).
    let own = &p[r.kind.as_str()];
    put("unmapped", json!({"zt_kind": r.kind, "zt": if own.is_null() { p.clone() } else { own.clone() }}));
    Value::Object(e)
}

fn metadata(place: Option<&Place>, kind: &str, ctx: &Context) -> Value {
    let mut m = json!({
        "version": SCHEMA_VERSION,
        "product": {"name": "zt-agent", "vendor_name": "zt-agent", "version": ctx.product_version},
        "profiles": ["host", "security_control", "ai_operation"],
        "event_code": kind,
    });
    if let Some(pl) = place {
        m["uid"] = json!(format!("{}/{}", pl.origin, pl.index));
        m["log_name"] = json!(pl.origin);
        m["sequence"] = json!(pl.index);
        m["extensions"] = json!([{"name": "zt_audit_leaf", "uid": pl.leaf, "version": "1"}]);
    }
    m
}

fn uid(process: &Value) -> Value {
    process["uid"].as_u64().map_or(Value::Null, |u| json!(u.to_string()))
}

fn process(p: &Value) -> Value {
    let mut out = json!({
        "pid": p["pid"],
        "name": p["comm"],
        "parent_process": {"pid": p["ppid"]},
        "user": {"uid": uid(p)},
    });
    if let Some(exe) = p["exe"].as_str() {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        out["file"] = json!({"path": exe, "name": name, "type_id": 1});
    }
    if let Some(cg) = p["cgroup"].as_str() {
        out["container"] = json!({"uid": p["container_id"], "pod_uuid": p["pod_uid"], "name": cg});
    }
    out
}

fn with_cmd_line(mut process: Value, argv: &Value) -> Value {
    if let Some(a) = argv.as_array() {
        process["cmd_line"] = json!(a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
    }
    process
}

/// `dst_endpoint` and `connection_info` of a connect-like record.
fn network(r: &Record) -> Vec<(&'static str, Value)> {
    let p = &r.payload[r.kind.as_str()];
    match r.kind.as_str() {
        "connect" | "connect_summary" => vec![
            ("dst_endpoint", json!({"ip": p["address"], "port": p["port"]})),
            ("connection_info", json!({"protocol_name": p["protocol"], "direction_id": 2, "direction": "Outbound"})),
        ],
        "unix_connect" => vec![("dst_endpoint", json!({"path": p["address"]}))],
        _ => vec![],
    }
}

fn count(r: &Record) -> Value {
    let p = &r.payload[r.kind.as_str()];
    match r.kind.as_str() {
        "connect" | "connect_summary" => p["repeats"].clone(),
        "connect_folded" => json!(["allowed", "denied", "audited"].iter().map(|k| p[*k].as_u64().unwrap_or(0)).sum::<u64>()),
        _ => Value::Null,
    }
}

fn finding_info(r: &Record) -> Value {
    let uid = r.place.as_ref().map_or(Value::Null, |pl| json!(format!("{}/{}", pl.origin, pl.index)));
    let rule = &r.payload[r.kind.as_str()]["rule"];
    let mut f = json!({"uid": uid, "title": summary(r), "types": [r.kind]});
    if let Some(rule) = rule.as_str() {
        f["analytic"] = json!({"name": rule, "type_id": 1, "type": "Rule"});
    }
    f
}

/// One line a person reads in the SIEM's list.
pub fn summary(r: &Record) -> String {
    let p = &r.payload;
    let who = r.identity().map_or_else(|| "a process without an identity".to_string(), |(n, _)| format!("identity {n}"));
    let k = &p[r.kind.as_str()];
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    match r.kind.as_str() {
        "connect" => format!(
            "{} connect to {}:{}/{} by {who} (rule {})",
            s(&k["action"]),
            s(&k["address"]),
            k["port"],
            s(&k["protocol"]),
            s(&k["rule"])
        ),
        "unix_connect" => format!("{} connect to unix socket {} by {who} (rule {})", s(&k["action"]), s(&k["address"]), s(&k["rule"])),
        "guard" => format!("{} {} call by {who}", s(&k["action"]), s(&k["call"])),
        "connect_summary" => format!("{} more {} attempts to {}:{} by {who}", k["repeats"], s(&k["decision"]), s(&k["address"]), k["port"]),
        "connect_folded" => {
            format!("{who}: {} allowed, {} denied, {} audited attempts folded by its event budget", k["allowed"], k["denied"], k["audited"])
        }
        "exec" => format!("exec {} by {who}", s(&p["process"]["exe"])),
        "exit" => format!("exit of {} ({who})", p["process"]["pid"]),
        "policy" => format!("policy {} ({})", s(&k["action"]), s(&k["source"])),
        "agent" => format!("zt-agent {}", s(&k["state"])),
        "loss" => "records were lost".into(),
        other => format!("audit log: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, payload: Value) -> Record {
        Record {
            place: Some(Place { origin: "zt-agent/n1".into(), index: 42, leaf: "bGVhZg==".into() }),
            kind: kind.into(),
            time: "2026-12-02T10:00:00.250000Z".into(),
            payload,
        }
    }

    const CTX: Context = Context { product_version: "0.1.0", node: "n1" };

    fn denied_connect() -> Value {
        json!({
            "kind": "connect", "time": "2026-12-02T10:00:00.250000Z", "node": "n1",
            "process": {"pid": 7, "ppid": 1, "uid": 1000, "comm": "curl", "exe": "/usr/bin/curl", "cgroup": "/agents/a"},
            "identity": {"name": "coder", "spiffe_id": "spiffe://example.org/coder"},
            "connect": {"address": "10.1.2.3", "port": 22, "protocol": "tcp", "action": "denied", "decision": "deny", "rule": "no-ssh", "repeats": 1}
        })
    }

    #[test]
    fn a_denial_is_a_detection_finding_with_the_connection_as_evidence() {
        let e = event(&record("connect", denied_connect()), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["type_uid"].as_u64(), e["category_uid"].as_u64()), (Some(2004), Some(200401), Some(2)));
        assert_eq!((e["severity_id"].as_u64(), e["action_id"].as_u64(), e["disposition_id"].as_u64()), (Some(3), Some(2), Some(2)));
        assert_eq!(e["time"], 1_796_205_600_250u64);
        assert_eq!(e["ai_agent"], json!({"uid": "spiffe://example.org/coder", "name": "coder", "type_id": 0}));
        assert_eq!(e["evidences"][0]["dst_endpoint"], json!({"ip": "10.1.2.3", "port": 22}));
        assert_eq!(e["finding_info"]["analytic"]["name"], "no-ssh");
        assert_eq!(e["finding_info"]["uid"], "zt-agent/n1/42");
        assert_eq!(e["metadata"]["sequence"], 42);
        assert_eq!(e["metadata"]["extensions"][0]["uid"], "bGVhZg==");
        assert_eq!(e["actor"]["process"]["file"]["path"], "/usr/bin/curl");
        assert_eq!(e["actor"]["user"]["uid"], "1000");
        assert_eq!(e["message"], "denied connect to 10.1.2.3:22/tcp by identity coder (rule no-ssh)");
    }

    #[test]
    fn an_allowed_connect_is_network_activity() {
        let mut p = denied_connect();
        p["connect"]["action"] = json!("allowed");
        p["connect"]["repeats"] = json!(5);
        let e = event(&record("connect", p), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64(), e["severity_id"].as_u64()), (Some(4001), Some(1), Some(1)));
        assert_eq!(e["connection_info"]["direction_id"], 2);
        assert_eq!(e["dst_endpoint"]["port"], 22);
        assert_eq!(e["count"], 5);
    }

    #[test]
    fn exec_policy_agent_and_log_records() {
        let exec =
            json!({"kind": "exec", "process": {"pid": 9, "ppid": 7, "comm": "sh", "exe": "/bin/sh"}, "exec": {"argv": ["sh", "-c", "id"]}});
        let e = event(&record("exec", exec), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64()), (Some(1007), Some(1)));
        assert_eq!(e["process"]["cmd_line"], "sh -c id");
        assert_eq!(e["actor"]["process"]["pid"], 7);
        let rejected =
            json!({"kind": "policy", "policy": {"action": "rejected", "source": "inotify", "errors": ["p.yaml:3:5: unknown key"]}});
        let e = event(&record("policy", rejected), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["status_id"].as_u64(), e["severity_id"].as_u64()), (Some(6002), Some(2), Some(4)));
        assert_eq!(e["status_detail"], "p.yaml:3:5: unknown key");
        let e = event(&record("agent", json!({"agent": {"state": "stopped"}})), &CTX);
        assert_eq!(e["activity_id"], 4);
        let e = event(&record("checkpoint", json!({"size": 10})), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["unmapped"]["zt_kind"].as_str()), (Some(0), Some("checkpoint")));
        assert!(e.get("ai_agent").is_none(), "no identity, no ai_agent");
    }
}

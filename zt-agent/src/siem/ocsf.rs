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
use serde::Serialize;
use serde_json::Value;

use super::{record::Record, rfc5424::Severity};

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
pub(super) fn epoch_ms(time: &str) -> u64 {
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
        "file" if p["file"]["decision"] == "deny" => finding(),
        "file" => c(1001, "File System Activity", (1, "System Activity"), (99, "Other")),
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

// The event as typed structs that borrow from the record: serialised
// straight to text, with no intermediate `Value` (a third of the cost).
// `Option`s that are `None` and `Value`s that are null are left out.

fn absent(v: &&Value) -> bool {
    v.is_null()
}

#[derive(Serialize)]
struct Event<'a> {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    type_uid: u64,
    time: u64,
    severity_id: u8,
    severity: &'static str,
    message: &'a str,
    metadata: Metadata<'a>,
    device: Device<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ai_agent: Option<AiAgent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    action: Option<Action>,
    #[serde(flatten)]
    network: Network<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidences: Option<[Network<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finding_info: Option<FindingInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    app: Option<App<'a>>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    unmapped: Unmapped<'a>,
}

#[derive(Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product<'a>,
    profiles: [&'static str; 3],
    event_code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<[Extension<'a>; 1]>,
}

#[derive(Serialize)]
struct Product<'a> {
    name: &'static str,
    vendor_name: &'static str,
    version: &'a str,
}

#[derive(Serialize)]
struct Extension<'a> {
    name: &'static str,
    uid: &'a str,
    version: &'static str,
}

#[derive(Serialize)]
struct Device<'a> {
    hostname: &'a str,
    type_id: u8,
}

#[derive(Serialize)]
struct AiAgent<'a> {
    uid: &'a str,
    name: &'a str,
    type_id: u8,
}

#[derive(Serialize)]
struct Actor<'a> {
    process: Process<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
}

#[derive(Serialize, Default)]
struct Process<'a> {
    #[serde(skip_serializing_if = "absent")]
    pid: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_process: Option<Parent<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Container<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd_line: Option<String>,
}

#[derive(Serialize)]
struct Parent<'a> {
    pid: &'a Value,
}

#[derive(Serialize)]
struct User {
    uid: String,
}

#[derive(Serialize)]
struct File<'a> {
    path: &'a str,
    name: &'a str,
    type_id: u8,
}

#[derive(Serialize)]
struct Container<'a> {
    uid: &'a Value,
    pod_uuid: &'a Value,
    name: &'a str,
}

#[derive(Serialize)]
struct Action {
    action_id: u8,
    action: &'static str,
    disposition_id: u8,
    disposition: &'static str,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Network<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_endpoint: Option<Endpoint<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_info: Option<ConnectionInfo<'a>>,
}

impl Network<'_> {
    fn is_empty(&self) -> bool {
        self.dst_endpoint.is_none() && self.connection_info.is_none()
    }
}

#[derive(Serialize, Clone, Copy)]
struct Endpoint<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a Value>,
}

#[derive(Serialize, Clone, Copy)]
struct ConnectionInfo<'a> {
    protocol_name: &'a Value,
    direction_id: u8,
    direction: &'static str,
}

#[derive(Serialize)]
struct FindingInfo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
    title: &'a str,
    types: [&'a str; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    analytic: Option<Analytic<'a>>,
}

#[derive(Serialize)]
struct Analytic<'a> {
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct App<'a> {
    name: &'static str,
    version: &'a str,
}

#[derive(Serialize)]
struct Status {
    status_id: u8,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<String>,
}

#[derive(Serialize)]
struct Unmapped<'a> {
    zt_kind: &'a str,
    /// The kind's own fields (the whole payload for the log's own records).
    zt: &'a Value,
}

/// The OCSF event for `r`, as JSON text.
pub fn event(r: &Record, ctx: &Context) -> String {
    let p = &r.payload;
    let own = &p[r.kind.as_str()];
    let cl = class(r);
    let (severity_id, severity_name) = severity(r.severity());
    let title = summary(r);
    let place = r.place.as_ref();
    let process = p["process"].is_object().then(|| process(&p["process"]));
    let (actor, subject) = match (process, r.kind.as_str()) {
        // The process launched or ended is the subject; its parent acted.
        (Some(mut pr), "exec" | "exit") => {
            pr.cmd_line = p["exec"]["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
            (Some(Actor { process: Process { pid: &p["process"]["ppid"], ..Process::default() }, user: None }), Some(pr))
        }
        (Some(pr), _) => (Some(Actor { process: pr, user: uid(&p["process"]) }), None),
        (None, _) => (None, None),
    };
    let action = own["action"].as_str().map(|a| match a {
        "denied" | "killed" => Action { action_id: 2, action: "Denied", disposition_id: 2, disposition: "Blocked" },
        "audited" => Action { action_id: 1, action: "Allowed", disposition_id: 17, disposition: "Logged" },
        _ => Action { action_id: 1, action: "Allowed", disposition_id: 1, disposition: "Allowed" },
    });
    let net = network(r);
    let count = match r.kind.as_str() {
        "connect" | "connect_summary" => own["repeats"].as_u64(),
        "connect_folded" => Some(["allowed", "denied", "audited"].iter().map(|k| own[*k].as_u64().unwrap_or(0)).sum()),
        _ => None,
    };
    let status = (r.kind == "policy").then(|| {
        let failed = own["action"] == "rejected";
        let errors = own["errors"].as_array().filter(|a| !a.is_empty());
        Status {
            status_id: if failed { 2 } else { 1 },
            status: if failed { "Failure" } else { "Success" },
            status_detail: errors.map(|e| e.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; ")),
        }
    });
    let uid = place.map(|pl| format!("{}/{}", pl.origin, pl.index));
    let e = Event {
        class_uid: cl.uid,
        class_name: cl.name,
        category_uid: cl.category.0,
        category_name: cl.category.1,
        activity_id: cl.activity.0,
        activity_name: cl.activity.1,
        type_uid: cl.uid as u64 * 100 + cl.activity.0 as u64,
        time: epoch_ms(&r.time),
        severity_id,
        severity: severity_name,
        message: &title,
        metadata: Metadata {
            version: SCHEMA_VERSION,
            product: Product { name: "zt-agent", vendor_name: "zt-agent", version: ctx.product_version },
            profiles: ["host", "security_control", "ai_operation"],
            event_code: &r.kind,
            uid: uid.clone(),
            log_name: place.map(|pl| pl.origin.as_str()),
            sequence: place.map(|pl| pl.index),
            extensions: place.map(|pl| [Extension { name: "zt_audit_leaf", uid: &pl.leaf, version: "1" }]),
        },
        device: Device { hostname: p["node"].as_str().unwrap_or(ctx.node), type_id: 0 },
        ai_agent: r.identity().map(|(name, uid)| AiAgent { uid, name, type_id: 0 }),
        actor,
        process: subject,
        action,
        network: if cl.uid == 4001 { net } else { Network::default() },
        evidences: (cl.uid == 2004 && !net.is_empty()).then_some([net]),
        finding_info: (cl.uid == 2004).then(|| FindingInfo {
            uid,
            title: &title,
            types: [&r.kind],
            analytic: own["rule"].as_str().map(|name| Analytic { name, type_id: 1, kind: "Rule" }),
        }),
        count: if matches!(cl.uid, 4001 | 2004) { count } else { None },
        app: (cl.uid == 6002).then_some(App { name: "zt-agent", version: ctx.product_version }),
        status,
        unmapped: Unmapped { zt_kind: &r.kind, zt: if own.is_null() { p } else { own } },
    };
    serde_json::to_string(&e).expect("an OCSF event serialises")
}

fn uid(process: &Value) -> Option<User> {
    process["uid"].as_u64().map(|u| User { uid: u.to_string() })
}

fn process(p: &Value) -> Process<'_> {
    Process {
        pid: &p["pid"],
        name: Some(&p["comm"]),
        parent_process: Some(Parent { pid: &p["ppid"] }),
        user: uid(p),
        file: p["exe"].as_str().map(|exe| File { path: exe, name: exe.rsplit('/').next().unwrap_or(exe), type_id: 1 }),
        container: p["cgroup"].as_str().map(|cg| Container { uid: &p["container_id"], pod_uuid: &p["pod_uid"], name: cg }),
        cmd_line: None,
    }
}

/// `dst_endpoint` and `connection_info` of a connect-like record.
fn network(r: &Record) -> Network<'_> {
    let k = &r.payload[r.kind.as_str()];
    match r.kind.as_str() {
        "connect" | "connect_summary" => Network {
            dst_endpoint: Some(Endpoint { ip: Some(&k["address"]), port: Some(&k["port"]), path: None }),
            connection_info: Some(ConnectionInfo { protocol_name: &k["protocol"], direction_id: 2, direction: "Outbound" }),
        },
        "unix_connect" => {
            Network { dst_endpoint: Some(Endpoint { ip: None, port: None, path: Some(&k["address"]) }), connection_info: None }
        }
        _ => Network::default(),
    }
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
        "file" => format!("{} {} of {} by {who} (rule {})", s(&k["action"]), s(&k["op"]), s(&k["path"]), s(&k["rule"])),
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
    use serde_json::json;

    use super::*;
    use crate::siem::record::Place;

    fn record(kind: &str, payload: Value) -> Record {
        Record {
            place: Some(Place { origin: "zt-agent/n1".into(), index: 42, leaf: "bGVhZg==".into() }),
            kind: kind.into(),
            time: "2026-12-02T10:00:00.250000Z".into(),
            payload,
        }
    }

    const CTX: Context = Context { product_version: "0.1.0", node: "n1" };

    fn ev(r: Record, ctx: &Context) -> Value {
        serde_json::from_str(&event(&r, ctx)).unwrap()
    }

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
        let e = ev(record("connect", denied_connect()), &CTX);
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
        let e = ev(record("connect", p), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64(), e["severity_id"].as_u64()), (Some(4001), Some(1), Some(1)));
        assert_eq!(e["connection_info"]["direction_id"], 2);
        assert_eq!(e["dst_endpoint"]["port"], 22);
        assert_eq!(e["count"], 5);
    }

    #[test]
    fn exec_policy_agent_and_log_records() {
        let exec =
            json!({"kind": "exec", "process": {"pid": 9, "ppid": 7, "comm": "sh", "exe": "/bin/sh"}, "exec": {"argv": ["sh", "-c", "id"]}});
        let e = ev(record("exec", exec), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["activity_id"].as_u64()), (Some(1007), Some(1)));
        assert_eq!(e["process"]["cmd_line"], "sh -c id");
        assert_eq!(e["actor"]["process"]["pid"], 7);
        let rejected =
            json!({"kind": "policy", "policy": {"action": "rejected", "source": "inotify", "errors": ["p.yaml:3:5: unknown key"]}});
        let e = ev(record("policy", rejected), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["status_id"].as_u64(), e["severity_id"].as_u64()), (Some(6002), Some(2), Some(4)));
        assert_eq!(e["status_detail"], "p.yaml:3:5: unknown key");
        let e = ev(record("agent", json!({"agent": {"state": "stopped"}})), &CTX);
        assert_eq!(e["activity_id"], 4);
        let e = ev(record("checkpoint", json!({"size": 10})), &CTX);
        assert_eq!((e["class_uid"].as_u64(), e["unmapped"]["zt_kind"].as_str()), (Some(0), Some("checkpoint")));
        assert!(e.get("ai_agent").is_none(), "no identity, no ai_agent");
    }
}

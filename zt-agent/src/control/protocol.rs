//! The control socket's protocol, shared by the daemon and the CLI: one
//! JSON [`Request`] line in, one JSON [`Response`] line out, per connection.
use serde::{Deserialize, Serialize};

use crate::{
    audit::writer::{KeyRotated, Status as AuditStatus},
    manager::{HistoryEntry, InForce, Outcome},
    pipeline::StatsSnapshot,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Re-read the policy files now.
    Reload,
    History,
    /// Re-apply a version (default: the one before the current).
    Rollback {
        version: Option<u64>,
    },
    /// Start an audit key rotation with this overlap.
    RotateAuditKey {
        overlap_secs: u64,
    },
    /// Record an identity's syscalls for `seconds`, one trace per thread
    /// into `dir` (`zt-agent model record`); the reply comes at the end.
    Record {
        identity: String,
        dir: std::path::PathBuf,
        seconds: u64,
    },
    /// Switch an identity's egress to deny-all (`on`) or release it.
    Quarantine {
        identity: String,
        on: bool,
    },
    /// A continuous-verification pass now, the binary hashed in full.
    Verify,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    /// What went wrong, every cause included.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusDoc>),
    /// A reload or rollback: the policy now in force.
    Policy(Outcome),
    History(Vec<HistoryEntry>),
    KeyRotated(KeyRotated),
    Recorded(crate::anomaly::record::RecordSummary),
    Verified(crate::verify::Report),
}

/// What `status` reports besides the live counters and the policy in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticInfo {
    pub version: String,
    pub pid: u32,
    pub started: String,
    pub object_blake3: String,
    pub hooks: Vec<Hook>,
    /// (capability, mechanism in force)
    pub paths: Vec<(String, String)>,
    pub cgroup2: String,
    /// The effective `run` settings and where each came from.
    #[serde(default)]
    pub config: Vec<crate::config::Setting>,
    /// `http://ADDR` of `/metrics`, `/healthz` and `/readyz`; None: off.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Kernel BPF statistics are on (`--bpf-stats`).
    #[serde(default)]
    pub bpf_stats: bool,
}

/// One kernel hook and whether it is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub program: String,
    pub attach_point: String,
    /// "attached", or why not and what is used instead.
    pub state: String,
    pub attached: bool,
}

/// `zt-agent status --json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    #[serde(flatten)]
    pub info: StaticInfo,
    pub policy: InForce,
    pub counters: StatsSnapshot,
    /// Egress decisions per identity since start.
    pub decisions: Vec<Decisions>,
    pub audit: Option<AuditStatus>,
    /// SIEM destinations (`--syslog`).
    #[serde(default)]
    pub siem: Vec<crate::siem::Status>,
    /// The fanotify file-rule fallback (where BPF LSM does not load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanotify: Option<crate::files::Snapshot>,
    /// Identities with anomaly detection: phase, baseline, risk, findings.
    #[serde(default)]
    pub anomaly: std::collections::BTreeMap<String, crate::anomaly::live::IdentityAnomaly>,
    /// The syscall telemetry programs: attached or not, for how many identities.
    #[serde(default)]
    pub syscall_telemetry: String,
    /// The Kubernetes pod watcher: API server, state, pods cached, errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::client::Status>,
    /// Continuous verification: passes, the last one's findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<crate::verify::Status>,
    /// The remote API: where it listens, calls allowed and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<crate::api::Status>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decisions {
    pub identity: String,
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = serde_json::to_string(&Request::Rollback { version: Some(3) }).unwrap();
        assert_eq!(r, r#"{"request":"rollback","version":3}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"request":"status"}"#).unwrap(), Request::Status);
        assert!(serde_json::from_str::<Request>(r#"{"request":"audit-rotate-key 5"}"#).is_err());
        let e = serde_json::to_string(&Response::Error("no".into())).unwrap();
        assert_eq!(e, r#"{"error":"no"}"#);
        let k = Response::Ok(Reply::KeyRotated(KeyRotated { new_key: "k".into(), overlap_until: "t".into() }));
        let back: Response = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
        assert_eq!(back, k);
    }
}

//! The event schema written to outputs (JSON lines). Documented in README.md
//! ("Event schema"); change both together.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339 UTC wall-clock time of the event.
    pub time: String,
    /// Host name of the node.
    pub node: Arc<str>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec { process: Process, identity: Option<IdentityRef>, exec: ExecInfo },
    Exit { process: Process, identity: Option<IdentityRef> },
    Connect { process: Process, identity: Option<IdentityRef>, connect: ConnectInfo },
    /// Something was dropped; counters are totals since start, `delta` since
    /// the previous loss event.
    Loss { loss: LossReport },
    /// Agent life cycle: start (with enforcement paths) and stop.
    Agent { agent: AgentInfo },
}

impl Body {
    pub fn identity(&self) -> Option<&IdentityRef> {
        match self {
            Body::Exec { identity, .. } | Body::Exit { identity, .. } | Body::Connect { identity, .. } => identity.as_ref(),
            Body::Loss { .. } | Body::Agent { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Body::Exec { .. } => "exec",
            Body::Exit { .. } => "exit",
            Body::Connect { .. } => "connect",
            Body::Loss { .. } => "loss",
            Body::Agent { .. } => "agent",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityRef {
    pub name: Arc<str>,
    pub spiffe_id: Arc<str>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    /// Process start, ns since boot: (pid, start_ns) names one incarnation.
    pub start_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecInfo {
    /// Path as passed to execve (may be relative or a symlink; see `process.exe`).
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    /// "kernel" (captured at execve) or "proc" (read later from /proc) or "none".
    pub argv_source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectInfo {
    pub family: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    /// Observed only; enforcement arrives with the network issue.
    pub action: &'static str,
}

impl ConnectInfo {
    pub fn from_raw(family: u16, addr: [u8; 16], port: u16, sock_type: u32, protocol: u32) -> Self {
        let (family_name, address) = if family == zt_common::AF_INET {
            ("ipv4", IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])))
        } else {
            ("ipv6", IpAddr::V6(Ipv6Addr::from(addr)))
        };
        let protocol = match (protocol, sock_type) {
            (6, _) | (0, 1) => "tcp",
            (17, _) | (0, 2) => "udp",
            (1, _) | (58, _) => "icmp",
            _ => "other",
        };
        ConnectInfo { family: family_name, address, port, protocol, action: "observed" }
    }
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Per kernel counter (`zt_common::loss::NAMES`) and user-space counter.
    pub totals: std::collections::BTreeMap<&'static str, u64>,
    pub delta: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub state: &'static str,
    pub version: &'static str,
    pub reason: Option<String>,
    pub object_blake3: Option<String>,
    pub policy: Option<String>,
    pub paths: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_info_formats() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        let c = ConnectInfo::from_raw(zt_common::AF_INET, a, 8080, 1, 0);
        assert_eq!(c.address.to_string(), "127.0.0.1");
        assert_eq!(c.protocol, "tcp");
        let v6 = ConnectInfo::from_raw(zt_common::AF_INET6, Ipv6Addr::LOCALHOST.octets(), 53, 2, 17);
        assert_eq!((v6.family, v6.address.to_string().as_str(), v6.protocol), ("ipv6", "::1", "udp"));
    }

    #[test]
    fn schema_shape() {
        let e = Event {
            time: "2026-01-01T00:00:00Z".into(),
            node: "n".into(),
            body: Body::Exit {
                process: Process { pid: 5, ..Default::default() },
                identity: Some(IdentityRef { name: "a".into(), spiffe_id: "spiffe://t/a".into() }),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["process"]["pid"], 5);
        assert_eq!(v["identity"]["spiffe_id"], "spiffe://t/a");
        assert_eq!(v["node"], "n");
    }
}

//! The event schema written to outputs (JSON lines). Documented in README.md
//! ("Event schema"); change both together.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use serde::Serialize;

pub use crate::{
    anomaly::live::{BaselineNote, Detection},
    host::WallTime,
};

/// Every field of an event is cheap to build and to share: times are
/// formatted and names copied only when serialised, and the strings of a
/// process and its rules are shared (`Arc<str>`) with the caches they come
/// from. An event goes to its outputs behind one `Arc`.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339 UTC wall-clock time of the event.
    pub time: WallTime,
    /// Host name of the node.
    pub node: Arc<str>,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    Exec {
        process: Process,
        identity: Option<IdentityRef>,
        exec: ExecInfo,
    },
    Exit {
        process: Process,
        identity: Option<IdentityRef>,
    },
    Connect {
        process: Process,
        identity: Option<IdentityRef>,
        connect: ConnectInfo,
    },
    /// Something was dropped; counters are totals since start, `delta` since
    /// the previous loss event.
    Loss {
        loss: LossReport,
    },
    /// Agent life cycle: start (with enforcement paths) and stop.
    Agent {
        agent: AgentInfo,
    },
    /// A policy was applied, rejected or rolled back.
    Policy {
        policy: PolicyChange,
    },
    /// Attempts folded into no connect event (the last window of a burst to
    /// one destination), reported once they stopped.
    ConnectSummary {
        identity: Option<IdentityRef>,
        connect_summary: ConnectSummary,
    },
    /// Attempts of an identity the kernel only counted, without their
    /// destinations: it was over its event budget (`--event-rate`), or the
    /// ring had no room to report a key its new destination would evict.
    ConnectFolded {
        identity: Option<IdentityRef>,
        connect_folded: ConnectFolded,
    },
    /// A call an agent identity may not make around the egress hooks was
    /// refused, or its process killed (see `zt_common::guard`).
    Guard {
        process: Process,
        identity: Option<IdentityRef>,
        guard: GuardInfo,
    },
    /// A connect or datagram to a Unix-socket address that the policy
    /// denies (or would deny: audit). Allowed ones are counted, not reported.
    UnixConnect {
        process: Process,
        identity: Option<IdentityRef>,
        unix_connect: UnixInfo,
    },
    /// A file access or exec of an agent identity that a rule named, or
    /// that was denied (or would be: audit), at most one per process,
    /// object, operation, access and decision per second (the attempts in
    /// between folded into `repeats`).
    File {
        process: Process,
        identity: Option<IdentityRef>,
        file: FileInfo,
    },
    /// The anomaly model's finding: a thread of an agent identity did what
    /// the identity's baseline never showed (see `anomaly::live`).
    Detection {
        process: Process,
        identity: Option<IdentityRef>,
        detection: Box<Detection>,
    },
    /// An identity's anomaly baseline was learnt, loaded, or started again.
    Baseline {
        identity: Option<IdentityRef>,
        baseline: BaselineNote,
    },
    /// Continuous verification found a problem, or no longer finds it
    /// (see `crate::verify`).
    Integrity {
        integrity: crate::verify::Integrity,
    },
    /// A call to the remote API (see `crate::api`), allowed or refused,
    /// with the caller's SPIFFE ID.
    Api {
        api: crate::api::ApiCall,
    },
}

impl Body {
    pub fn identity(&self) -> Option<&IdentityRef> {
        match self {
            Body::Exec { identity, .. }
            | Body::Exit { identity, .. }
            | Body::Connect { identity, .. }
            | Body::ConnectSummary { identity, .. }
            | Body::ConnectFolded { identity, .. }
            | Body::Guard { identity, .. }
            | Body::UnixConnect { identity, .. }
            | Body::File { identity, .. }
            | Body::Detection { identity, .. }
            | Body::Baseline { identity, .. } => identity.as_ref(),
            Body::Loss { .. } | Body::Agent { .. } | Body::Policy { .. } | Body::Integrity { .. } | Body::Api { .. } => None,
        }
    }

    /// A security record: a denial or would-deny, a guard action, a policy
    /// change, the agent's life cycle, a loss, an anomaly finding or baseline,
    /// an integrity finding, a call to the remote API.
    /// The audit log keeps these, and no telemetry flood may crowd them out.
    pub fn is_security(&self) -> bool {
        match self {
            Body::Connect { connect, .. } => connect.action != ConnectAction::Allowed,
            Body::ConnectSummary { connect_summary, .. } => connect_summary.decision == Decision::Deny,
            Body::ConnectFolded { connect_folded, .. } => connect_folded.denied + connect_folded.audited > 0,
            Body::Loss { .. }
            | Body::Agent { .. }
            | Body::Policy { .. }
            | Body::Guard { .. }
            | Body::UnixConnect { .. }
            | Body::Detection { .. }
            | Body::Baseline { .. }
            | Body::Integrity { .. }
            | Body::Api { .. } => true,
            Body::File { file, .. } => file.decision == Decision::Deny,
            Body::Exec { .. } | Body::Exit { .. } => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Body::Exec { .. } => "exec",
            Body::Exit { .. } => "exit",
            Body::Connect { .. } => "connect",
            Body::Loss { .. } => "loss",
            Body::Agent { .. } => "agent",
            Body::Policy { .. } => "policy",
            Body::ConnectSummary { .. } => "connect_summary",
            Body::ConnectFolded { .. } => "connect_folded",
            Body::Guard { .. } => "guard",
            Body::UnixConnect { .. } => "unix_connect",
            Body::File { .. } => "file",
            Body::Detection { .. } => "detection",
            Body::Baseline { .. } => "baseline",
            Body::Integrity { .. } => "integrity",
            Body::Api { .. } => "api",
        }
    }
}

/// What a guard saw and did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuardInfo {
    /// "socket", "io_uring_socket", "route", "ptrace", "process_vm",
    /// "pidfd_getfd", "process_access" or "bpf" ("setsockopt" in records
    /// of versions that refused route options at that hook).
    pub call: &'static str,
    /// "denied" (EPERM), "killed" (SIGKILL) or "audited" (audit mode: would be).
    pub action: &'static str,
    /// For sockets: the kind the policy names ("raw", "icmp", "packet", ...),
    /// and family, type and protocol as the call gave them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketInfo>,
    /// For ptrace and process_vm: the target process and its identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<GuardTarget>,
    /// The raw arguments (ptrace request, bpf command, ...).
    pub args: [u64; 3],
    /// The syscall number (absent at the `sock_create` hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<u32>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SocketInfo {
    pub kind: &'static str,
    pub family: u32,
    #[serde(rename = "type")]
    pub sock_type: u32,
    pub protocol: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GuardTarget {
    pub pid: u32,
    /// The target's identity name; None: no identity.
    pub identity: Option<Arc<str>>,
}

impl GuardInfo {
    /// `target_identity` is the target's identity name, looked up by the caller.
    pub fn from_raw(g: &zt_common::guard::GuardEvent, target_identity: Option<Arc<str>>) -> Self {
        use zt_common::guard::{action, op, sock_kind};
        let name = |names: &[&'static str], i: u32| names.get(i as usize).copied().unwrap_or("unknown");
        let is_socket = g.op == op::SOCKET || g.op == op::SOCKET_SYSCALL || g.op == op::SOCKET_URING;
        GuardInfo {
            call: name(&op::NAMES, g.op),
            action: name(&action::NAMES, g.action),
            socket: is_socket.then(|| SocketInfo {
                kind: name(&sock_kind::NAMES, g.sock_kind.trailing_zeros()),
                family: g.args[0] as u32,
                sock_type: g.args[1] as u32,
                protocol: g.args[2] as u32,
            }),
            target: (g.target_pid != 0).then_some(GuardTarget { pid: g.target_pid, identity: target_identity }),
            args: g.args,
            syscall: (g.syscall != 0).then_some(g.syscall),
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
    pub comm: Comm,
    pub exe: Option<Arc<str>>,
    pub cgroup: Option<Arc<str>>,
    pub cgroup_id: u64,
    pub pod_uid: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    /// The pod's namespace, name, uid, labels and service account, where
    /// the agent has Kubernetes pod metadata for the process's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<crate::kube::PodMeta>>,
}

/// A task's command name as the kernel holds it (at most 15 bytes and a
/// NUL), kept inline; shown as text (bytes that are not UTF-8 as U+FFFD).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm([u8; 16]);

impl Comm {
    /// The bytes up to the first NUL (at most 16).
    pub fn new(bytes: &[u8]) -> Self {
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len()).min(16);
        let mut c = [0; 16];
        c[..end].copy_from_slice(&bytes[..end]);
        Comm(c)
    }

    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.0[..end])
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.text().fmt(f)
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
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

/// What the kernel did with a connect or send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectAction {
    Allowed,
    /// Refused with EPERM.
    Denied,
    /// Allowed, but the policy would deny (audit mode).
    Audited,
}

impl ConnectAction {
    /// The name events give it.
    pub fn name(self) -> &'static str {
        match self {
            ConnectAction::Allowed => "allowed",
            ConnectAction::Denied => "denied",
            ConnectAction::Audited => "audited",
        }
    }
}

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn from_kernel(decided: u8) -> Self {
        if decided == zt_common::policy::DENY { Decision::Deny } else { Decision::Allow }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectInfo {
    pub family: &'static str,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    /// What the kernel did: "allowed", "denied" (EPERM) or "audited" (allowed,
    /// but the policy would deny).
    pub action: ConnectAction,
    /// What the policy decided: "allow" or "deny".
    pub decision: Decision,
    pub mode: EnforcementMode,
    pub rule: RuleName,
    pub policy_generation: u32,
    /// The hook that decided: connect4, connect6, sendmsg4 (UDP sendto
    /// without connect), sendmsg6.
    pub hook: &'static str,
    /// Attempts this event stands for (itself and the identical ones the
    /// kernel folded into it since the previous event for the destination).
    pub repeats: u64,
    /// The socket's network namespace cookie (unique per namespace since boot).
    pub netns_cookie: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectSummary {
    /// The process that attempted.
    pub pid: u32,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub decision: Decision,
    pub policy_generation: u32,
    /// Attempts not reported by any connect event.
    pub repeats: u64,
}

/// Attempts folded since the last `connect_folded` event of the identity,
/// by outcome, made after `from` and up to `to`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConnectFolded {
    pub allowed: u64,
    pub denied: u64,
    /// Allowed, but the policy would deny (audit mode).
    pub audited: u64,
    pub from: WallTime,
    pub to: WallTime,
}

/// The rule that decided, shown as its name; "default" (the identity's
/// default), "no-policy" (an identity unknown to the policy in force: fail
/// closed), "none-applied", or `#N` for a rule index of a generation the
/// agent no longer knows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleName {
    Named(Arc<str>),
    Default,
    NoPolicy,
    NoneApplied,
    /// The walk up the object's directories did not reach the root (denied).
    TooDeep,
    Unknown(u32),
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleName::Named(n) => f.write_str(n),
            RuleName::Default => f.write_str("default"),
            RuleName::NoPolicy => f.write_str("no-policy"),
            RuleName::NoneApplied => f.write_str("none-applied"),
            RuleName::TooDeep => f.write_str("too-deep"),
            RuleName::Unknown(i) => write!(f, "#{i}"),
        }
    }
}

impl Serialize for RuleName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RuleName::Named(n) => s.serialize_str(n),
            other => s.collect_str(other),
        }
    }
}

/// Address in the kernel's IPv6 form (IPv4 mapped) back to an `IpAddr`.
pub fn ip_from_mapped(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn protocol_name(proto: u32, sock_type: u32) -> &'static str {
    match (proto, sock_type) {
        (6, _) | (0, 1) => "tcp",
        // Policy matched it as tcp (`zt_common::policy::match_proto`).
        (zt_common::policy::IPPROTO_MPTCP, _) => "mptcp",
        (17, _) | (0, 2) => "udp",
        (1, _) | (58, _) => "icmp",
        (132, _) => "sctp",
        (136, _) => "udplite",
        (255, _) | (_, 3) => "raw",
        _ => "other",
    }
}

impl ConnectInfo {
    /// From a kernel record; `rule_name` resolves a rule index of the record's generation.
    pub fn from_raw(c: &zt_common::ConnectEvent, rule_name: impl Fn(u32, u32) -> Option<Arc<str>>) -> Self {
        let a = c.addr;
        let v6 = Ipv6Addr::from(a);
        let (family_name, address) = if c.family == zt_common::AF_INET {
            ("ipv4", IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)))
        } else {
            ("ipv6", IpAddr::V6(v6))
        };
        let protocol = protocol_name(c.protocol, c.sock_type);
        let (action, decision, mode, rule) = verdict_fields(c.verdict, c.generation, rule_name);
        ConnectInfo {
            family: family_name,
            address,
            port: c.port,
            protocol,
            action,
            decision,
            mode,
            rule,
            policy_generation: c.generation,
            hook: zt_common::hook::NAMES.get(c.hook as usize).copied().unwrap_or("unknown"),
            repeats: 1,
            netns_cookie: c.netns_cookie,
        }
    }
}

/// A kernel verdict as the event fields: action, decision, mode, rule name.
fn verdict_fields(
    v: zt_common::policy::Verdict,
    generation: u32,
    rule_name: impl Fn(u32, u32) -> Option<Arc<str>>,
) -> (ConnectAction, Decision, EnforcementMode, RuleName) {
    use zt_common::policy as kp;
    let action = match (v.action, v.decided) {
        (kp::DENY, _) => ConnectAction::Denied,
        (_, kp::DENY) => ConnectAction::Audited,
        _ => ConnectAction::Allowed,
    };
    let rule = match v.rule {
        kp::RULE_DEFAULT => RuleName::Default,
        kp::RULE_NO_POLICY => RuleName::NoPolicy,
        kp::RULE_NONE_APPLIED => RuleName::NoneApplied,
        zt_common::path_policy::RULE_TOO_DEEP => RuleName::TooDeep,
        r => rule_name(generation, r).map_or(RuleName::Unknown(r), RuleName::Named),
    };
    let mode = if v.mode == kp::AUDIT { EnforcementMode::Audit } else { EnforcementMode::Enforce };
    (action, Decision::from_kernel(v.decided), mode, rule)
}

/// A Unix-socket decision.
#[derive(Debug, Clone, Serialize)]
pub struct UnixInfo {
    /// The path as the caller wrote it (unresolved), or `@name` for an
    /// abstract name (bytes that are not printable ASCII as `\xNN`).
    pub address: String,
    /// "stream", "dgram", "seqpacket" (or the number).
    pub socket_type: String,
    pub action: ConnectAction,
    pub decision: Decision,
    pub mode: EnforcementMode,
    pub rule: RuleName,
    pub policy_generation: u32,
    /// connect_unix, or sendmsg_unix (a datagram sent with an address).
    pub hook: &'static str,
    /// The path had a `.`, `..` or empty component, so no allow rule could
    /// match it.
    pub unnormalized: bool,
}

impl UnixInfo {
    pub fn from_raw(u: &zt_common::unix::UnixEvent, rule_name: impl Fn(u32, u32) -> Option<Arc<str>>) -> Self {
        let (action, decision, mode, rule) = verdict_fields(u.verdict, u.generation, rule_name);
        UnixInfo {
            address: crate::policy::unix::address_text(&u.name),
            socket_type: match u.sock_type {
                1 => "stream".into(),
                2 => "dgram".into(),
                5 => "seqpacket".into(),
                t => t.to_string(),
            },
            action,
            decision,
            mode,
            rule,
            policy_generation: u.generation,
            hook: zt_common::hook::NAMES.get(u.hook as usize).copied().unwrap_or("unknown"),
            unnormalized: u.unnormalized != 0,
        }
    }
}

/// A file or exec decision.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// "open", "exec", "unlink", "rmdir", "rename", "truncate", "link",
    /// "mkdir", "mknod" or "symlink".
    pub op: &'static str,
    /// Requested access: "read", "write", "create", "delete", "exec".
    pub access: Vec<&'static str>,
    /// The object as the process's mount namespace names it, resolved (for
    /// a creation: the directory it is made in).
    pub path: String,
    /// `path` is only the tail of a longer path.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    /// The object: device (`major:minor`) and inode.
    pub device: String,
    pub inode: u64,
    /// "allowed", "denied" (EPERM, or killed: see `enforcement`) or "audited".
    pub action: ConnectAction,
    pub decision: Decision,
    pub mode: EnforcementMode,
    pub rule: RuleName,
    pub policy_generation: u32,
    /// How the decision was carried out: "lsm" (refused before it
    /// happened), "exec_kill" (the exec happened; the process was killed
    /// before its new image ran), "fanotify" (the agent answered the
    /// open's permission event: refused before the open returned) or
    /// "open_kill" (the open happened; the process was killed before it
    /// returned to user space).
    pub enforcement: &'static str,
    /// Attempts of the same key since its previous event, this one included.
    pub repeats: u64,
}

impl FileInfo {
    pub fn from_raw(f: &zt_common::path_policy::FileEvent, rule_name: impl Fn(u32, u32) -> Option<Arc<str>>) -> Self {
        use zt_common::path_policy::{enforcement, file_op};
        let (action, decision, mode, rule) = verdict_fields(f.verdict, f.generation, rule_name);
        let len = (f.path_len as usize).min(f.path.len());
        FileInfo {
            op: file_op::NAMES.get(f.op as usize).copied().unwrap_or("unknown"),
            access: crate::policy::model::access::NAMES.iter().filter(|(_, bit)| f.access as u32 & bit != 0).map(|(n, _)| *n).collect(),
            path: String::from_utf8_lossy(&f.path[..len]).into_owned(),
            path_truncated: f.path_truncated != 0,
            device: format!("{}:{}", f.dev >> 20, f.dev & 0xf_ffff),
            inode: f.ino,
            action,
            decision,
            mode,
            rule,
            policy_generation: f.generation,
            enforcement: enforcement::NAMES.get(f.enforcement as usize).copied().unwrap_or("unknown"),
            repeats: f.folded + 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyChange {
    pub action: PolicyAction,
    /// "start", "inotify", "SIGHUP", "control", "rollback to vN".
    pub source: String,
    pub version: Option<u64>,
    /// blake3 of the bundle (empty when the files could not be read).
    pub digest: String,
    pub generation: Option<u32>,
    pub files: Vec<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    Applied,
    Rejected,
    RolledBack,
    /// An identity's egress switched to deny-all (anomaly response or
    /// `zt-agent identity quarantine`), and back.
    Quarantined,
    Released,
}

impl PolicyAction {
    /// The name events give it.
    pub fn name(self) -> &'static str {
        match self {
            PolicyAction::Applied => "applied",
            PolicyAction::Rejected => "rejected",
            PolicyAction::RolledBack => "rolled_back",
            PolicyAction::Quarantined => "quarantined",
            PolicyAction::Released => "released",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Started,
    Stopped,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Per kernel counter (`zt_common::loss::NAMES`) and user-space counter.
    pub totals: std::collections::BTreeMap<&'static str, u64>,
    pub delta: std::collections::BTreeMap<&'static str, u64>,
    /// Security records the kernel could not queue since the last loss
    /// event (the security ring was full), per identity.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_records: Vec<SecurityRecordsLost>,
}

/// Security records of one identity that were lost: how many, and the
/// time range they fall in (after `from`, up to and including `to`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SecurityRecordsLost {
    /// Named by the enricher (`None`: an identity no policy defined).
    pub identity: Option<IdentityRef>,
    #[serde(skip)]
    pub identity_id: u32,
    pub lost: u64,
    pub from: WallTime,
    pub to: WallTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub state: AgentState,
    pub version: &'static str,
    pub reason: Option<String>,
    pub object_blake3: Option<String>,
    pub policy: Option<String>,
    pub paths: Vec<(String, String)>,
    /// Where the programs are pinned (they outlive the agent); None: they
    /// are detached when it stops.
    pub pinned: Option<String>,
    /// At start: the pinned state of an earlier run was adopted, and the
    /// policy generation that stayed enforced while no agent ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Adopted {
    pub enforced_generation: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_info_formats() {
        use zt_common::policy::{AUDIT, DENY, ENFORCE, RULE_DEFAULT, Verdict};
        let mut c = zt_common::ConnectEvent {
            family: zt_common::AF_INET,
            addr: Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets(),
            port: 8080,
            sock_type: 1,
            verdict: Verdict::new(DENY, AUDIT, 3),
            generation: 7,
            ..Default::default()
        };
        let names = |g: u32, r: u32| (g == 7 && r == 3).then(|| "r3".into());
        let i = ConnectInfo::from_raw(&c, names);
        assert_eq!(i.address.to_string(), "127.0.0.1");
        assert_eq!(
            (i.protocol, i.action, i.decision, i.mode, i.rule.to_string().as_str()),
            ("tcp", ConnectAction::Audited, Decision::Deny, EnforcementMode::Audit, "r3")
        );
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!((v["action"].as_str(), v["decision"].as_str(), v["mode"].as_str()), (Some("audited"), Some("deny"), Some("audit")));
        assert_eq!(v["rule"], "r3");
        c.verdict = Verdict::new(DENY, AUDIT, 4);
        assert_eq!(serde_json::to_value(ConnectInfo::from_raw(&c, names)).unwrap()["rule"], "#4", "a rule no generation names");
        c.verdict = Verdict::new(DENY, ENFORCE, RULE_DEFAULT);
        c.family = zt_common::AF_INET6;
        c.addr = Ipv6Addr::LOCALHOST.octets();
        c.protocol = 17;
        let v6 = ConnectInfo::from_raw(&c, names);
        assert_eq!(
            (v6.family, v6.address.to_string().as_str(), v6.protocol, v6.action, v6.rule.to_string().as_str()),
            ("ipv6", "::1", "udp", ConnectAction::Denied, "default")
        );
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(6, 1), "tcp");
        assert_eq!(protocol_name(0, 1), "tcp");
        assert_eq!(protocol_name(262, 1), "mptcp");
        assert_eq!(protocol_name(17, 2), "udp");
        assert_eq!(protocol_name(0, 2), "udp");
        assert_eq!(protocol_name(1, 2), "icmp");
        assert_eq!(protocol_name(58, 2), "icmp");
        assert_eq!(protocol_name(0, 3), "raw");
        assert_eq!(protocol_name(136, 2), "udplite");
        assert_eq!(protocol_name(132, 1), "sctp");
        assert_eq!(protocol_name(0, 5), "other");
        // A summary names AggKey::proto, the matched protocol: tcp for mptcp.
        assert_eq!(protocol_name(zt_common::policy::match_proto(262).into(), 0), "tcp");
    }

    #[test]
    fn schema_shape() {
        let e = Event {
            time: WallTime(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)),
            node: "n".into(),
            body: Body::Exit {
                process: Process { pid: 5, comm: Comm::new(b"sh\0junk"), ..Default::default() },
                identity: Some(IdentityRef { name: "a".into(), spiffe_id: "spiffe://t/a".into() }),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["time"], "2026-01-01T00:00:00.000000Z");
        assert_eq!(v["kind"], "exit");
        assert_eq!(v["process"]["pid"], 5);
        assert_eq!(v["process"]["comm"], "sh");
        assert_eq!(v["identity"]["spiffe_id"], "spiffe://t/a");
        assert_eq!(v["node"], "n");
    }
}

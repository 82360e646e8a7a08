//! `policy explain` and `policy diff`: decisions and changes computed from
//! the compiled form with zt-common's decision functions (the kernel's),
//! never a second interpreter.
//!
//! # Layout
//! - [`Query`]: what `explain` is asked about (parsed from the CLI).
//! - [`explain`] -> [`Explanation`]: the decision and the rule that made it.
//! - [`diff`]: rule-level changes and map-entry changes.
//! - [`ExplainError`], [`QueryError`]: what can go wrong.
use std::net::IpAddr;

use serde::Serialize;
use zt_common::{
    path_policy,
    policy::{self as kp, Verdict, decide_net},
    unix::decide_unix,
};

use super::{CompileError, Compiled, IdRegistry, Policy, RuleInfo, compile, model::Rule};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown identity {name:?} (known: {})", known.join(", "))]
    UnknownIdentity { name: String, known: Vec<String> },
    #[error("compiling the policy")]
    Compile(#[from] CompileError),
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown protocol {0:?} (tcp or udp)")]
    Protocol(String),
    #[error("{0}")]
    Unix(String),
    #[error("{text:?}: write ADDR:PORT, IPv6 as [ADDR]:PORT, or unix:/path or unix:@name")]
    Address {
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

/// What `explain` is asked about.
#[derive(Debug, Clone)]
pub enum Query {
    Connect {
        addr: IpAddr,
        port: u16,
        proto: u8,
    },
    /// A Unix-socket address, as the kernel keys it.
    ConnectUnix {
        key: [u8; zt_common::unix::NAME_LEN],
    },
    Open {
        path: String,
        write: bool,
    },
    Exec {
        path: String,
    },
}

impl Query {
    /// Parses `10.1.2.3:443/tcp`, `[2001:db8::1]:443/udp` (protocol
    /// optional: tcp), `unix:/run/x.sock` or `unix:@name`.
    pub fn parse_connect(s: &str) -> Result<Query, QueryError> {
        if let Some(addr) = s.strip_prefix("unix:") {
            return super::unix::address_key(addr).map(|key| Query::ConnectUnix { key }).map_err(QueryError::Unix);
        }
        let (hostport, proto) = match s.rsplit_once('/') {
            Some((hp, "tcp")) => (hp, kp::PROTO_TCP),
            Some((hp, "udp")) => (hp, kp::PROTO_UDP),
            Some((_, other)) => return Err(QueryError::Protocol(other.to_string())),
            None => (s, kp::PROTO_TCP),
        };
        let sa: std::net::SocketAddr = hostport.parse().map_err(|source| QueryError::Address { text: hostport.to_string(), source })?;
        Ok(Query::Connect { addr: sa.ip(), port: sa.port(), proto })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub identity: String,
    pub spiffe_id: String,
    /// "allow", "deny", or "allow (audit: would deny)".
    pub decision: String,
    pub verdict_action: &'static str,
    /// The deciding rule, or None when the identity's default decided.
    pub rule: Option<RuleInfo>,
    pub reason: String,
    /// The identity's anomaly detection (`anomaly:`), or None when off.
    pub anomaly: Option<String>,
}

/// Decides `query` for `identity` from the compiled form. File and exec
/// rule paths are resolved with `lookup` and the queried path walked up its
/// directories, as the kernel matches them (see [`super::objects`]).
pub fn explain(
    policy: &Policy,
    identity: &str,
    query: &Query,
    active: &[bool],
    lookup: &dyn super::objects::Lookup,
) -> Result<Explanation, ExplainError> {
    let ident = policy.identity(identity).ok_or_else(|| ExplainError::UnknownIdentity {
        name: identity.to_string(),
        known: policy.identities.iter().map(|i| i.name.clone()).collect(),
    })?;
    let ids = IdRegistry::for_policy(policy)?;
    let mut compiled = compile::compile(policy, &ids, 0, active)?;
    super::objects::resolve(&mut compiled, policy, lookup)?;
    let id = ids.get(identity).expect("assigned");
    let pol = compiled.identities.iter().find(|(k, _)| k.identity == id).map(|(_, p)| *p).expect("compiled");
    let verdict: Verdict = match query {
        Query::Connect { addr, port, proto } => {
            let mapped = match addr {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            decide_net(&pol, compile::lookup(&compiled, id, mapped), *proto, *port)
        }
        Query::ConnectUnix { key } => decide_unix(&pol, super::unix::lookup(&compiled.unix, compiled.slot, id, key), key),
        Query::Open { path, write } => {
            let access = if *write { path_policy::WRITE } else { path_policy::READ };
            super::objects::walk(&compiled, &pol, id, lookup, path.as_ref(), access as u8)
        }
        Query::Exec { path } => super::objects::walk(&compiled, &pol, id, lookup, path.as_ref(), path_policy::EXEC as u8),
    };
    let rule = compiled.rules.get(verdict.rule as usize).cloned();
    let decision = match (verdict.decided, verdict.action) {
        (kp::ALLOW, _) => "allow".to_string(),
        (_, kp::DENY) => "deny".to_string(),
        _ => "allow (audit: would deny)".to_string(),
    };
    let reason = match &rule {
        Some(r) => format!("rule {:?} ({})", r.name, r.pos),
        None => format!("default action of identity {identity:?} ({})", ident.pos),
    };
    Ok(Explanation {
        identity: identity.to_string(),
        spiffe_id: ident.spiffe_id.clone(),
        decision,
        verdict_action: if verdict.action == kp::DENY { "EPERM" } else { "allowed" },
        rule,
        reason,
        anomaly: ident.anomaly.map(|a| a.to_string()),
    })
}

/// `policy diff`: rule-level changes and map-entry changes.
pub fn diff(old: &Policy, new: &Policy) -> Result<Vec<String>, CompileError> {
    let mut out = rule_changes(old, new);
    out.extend(entry_changes(old, new)?);
    Ok(out)
}

/// Rules and identities added, removed or changed (by name).
fn rule_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let fmt_rule = |r: &Rule| {
        format!(
            "identity={} action={:?} mode={:?} when={} egress={:?} files={:?} exec={:?}",
            r.identity,
            r.action,
            r.mode,
            r.when.is_some(),
            r.egress
                .iter()
                .map(|e| (
                    e.to.iter().map(|n| n.to_string()).chain(e.unix.iter().map(|n| n.to_string())).collect::<Vec<_>>(),
                    &e.ports,
                    e.proto
                ))
                .collect::<Vec<_>>(),
            r.files.iter().map(|f| (&f.paths, f.access)).collect::<Vec<_>>(),
            r.exec.iter().map(|f| &f.paths).collect::<Vec<_>>(),
        )
    };
    for r in &old.rules {
        match new.rules.iter().find(|n| n.name == r.name) {
            None => out.push(format!("- rule {} ({})", r.name, fmt_rule(r))),
            Some(n) if fmt_rule(n) != fmt_rule(r) => {
                out.push(format!("~ rule {}\n    old: {}\n    new: {}", r.name, fmt_rule(r), fmt_rule(n)))
            }
            Some(_) => {}
        }
    }
    for n in new.rules.iter().filter(|n| !old.rules.iter().any(|r| r.name == n.name)) {
        out.push(format!("+ rule {} ({})", n.name, fmt_rule(n)));
    }
    for i in &old.identities {
        if new.identity(&i.name).is_none() {
            out.push(format!("- identity {} ({})", i.name, i.spiffe_id));
        }
    }
    for i in new.identities.iter().filter(|i| old.identity(&i.name).is_none()) {
        out.push(format!("+ identity {} ({})", i.name, i.spiffe_id));
    }
    out
}

/// Map entries added, removed or changed, with one registry so the ids of
/// unchanged names agree.
fn entry_changes(old: &Policy, new: &Policy) -> Result<Vec<String>, CompileError> {
    let mut out = Vec::new();
    let mut ids = IdRegistry::default();
    ids.assign(old)?;
    ids.assign(new)?;
    let a = compile::compile(old, &ids, 0, &vec![true; old.rules.len()])?;
    let b = compile::compile(new, &ids, 0, &vec![true; new.rules.len()])?;
    let name_of = |id: u32| ids.ids_by_value(id);
    let net_text = |c: &Compiled, l: &zt_common::policy::NetRuleList| {
        l.rules[..l.count as usize]
            .iter()
            .map(|r| {
                format!(
                    "{} {}{} {}-{} rule={}",
                    if r.action == kp::DENY { "deny" } else { "allow" },
                    match r.proto {
                        kp::PROTO_TCP => "tcp",
                        kp::PROTO_UDP => "udp",
                        _ => "any",
                    },
                    if r.mode == kp::AUDIT { " audit" } else { "" },
                    r.port_lo,
                    r.port_hi,
                    c.rules.get(r.rule as usize).map(|i| i.name.as_str()).unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let entries = |c: &Compiled| -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        for (k, p) in &c.identities {
            m.insert(format!("IDENTITY_POLICY {}", name_of(k.identity)), format!("{p:?}"));
        }
        for (len, k, l) in &c.net {
            let prefix = compile::prefix_string(u128::from_be_bytes(k.addr), (len - kp::NET_KEY_FIXED_BITS) as u8);
            m.insert(format!("NET_RULES {} {prefix}", name_of(k.identity)), net_text(c, l));
        }
        for (len, k, l) in &c.unix {
            m.insert(format!("UNIX_RULES {} {}", name_of(k.identity), super::unix::key_text(&k.name, *len)), net_text(c, l));
        }
        m
    };
    let (ea, eb) = (entries(&a), entries(&b));
    for (k, v) in &ea {
        match eb.get(k) {
            None => out.push(format!("- {k}: {v}")),
            Some(w) if w != v => out.push(format!("~ {k}: {v} -> {w}")),
            Some(_) => {}
        }
    }
    for (k, v) in eb.iter().filter(|(k, _)| !ea.contains_key(*k)) {
        out.push(format!("+ {k}: {v}"));
    }
    Ok(out)
}

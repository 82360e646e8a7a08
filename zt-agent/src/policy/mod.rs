//! Host policy: the language, its compilation to kernel maps, and the tools
//! around it. Everything here is plain Rust, testable without root.
//!
//! # Layout
//! - [`document`]: YAML files -> validated, composed [`Policy`] (errors with
//!   `file:line:col`).
//! - [`lint`]: warnings (shadowed, redundant, overly broad, unmatchable).
//! - [`conditions`]: time windows and Rego conditions -> active rules.
//! - [`compile`]: [`Policy`] -> map entries (pure, byte-for-byte tested).
//! - [`Bundle`]: the files of one policy version, with their blake3 digest.
//! - [`explain`], [`diff`]: decisions and changes computed from the compiled
//!   form, with the kernel's own decision functions from zt-common.
//! - [`store`]: history of applied bundles (persisted) for history/rollback.
pub mod compile;
pub mod conditions;
pub mod document;
pub mod lint;
pub mod store;
#[cfg(test)]
mod tests;

use std::{net::IpAddr, path::Path};

use serde::{Deserialize, Serialize};
use zt_common::{
    path_policy::{self, decide_path},
    policy::{self as kp, Verdict, decide_net},
};

pub use compile::{CompileError, Compiled, IdRegistry, RuleInfo};
pub use document::{Diagnostic, Policy, PolicyErrors};

use crate::identity::{Identity, IdentityConfig};

/// The policy compiled into the binary, used when no `--policy` is given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");

/// The files of one policy version, as applied (texts kept for rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// (name, text) in the order given.
    pub files: Vec<(String, String)>,
}

impl Bundle {
    pub fn embedded_default() -> Self {
        Bundle { files: vec![("<embedded default policy>".into(), DEFAULT_POLICY.into())] }
    }

    /// Reads every file; a directory contributes its `*.yaml`/`*.yml` files
    /// in name order (a Kubernetes ConfigMap mount).
    pub fn read(paths: &[impl AsRef<Path>]) -> Result<Self, PolicyErrors> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let read_err = |p: &Path, e: std::io::Error| Diagnostic {
            pos: document::Pos { file: p.display().to_string(), line: 0, column: 0 },
            message: format!("cannot read: {e}"),
            hint: None,
        };
        for p in paths {
            let p = p.as_ref();
            let list: Vec<std::path::PathBuf> = if p.is_dir() {
                match std::fs::read_dir(p) {
                    Ok(rd) => {
                        let mut v: Vec<_> = rd
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                            .filter(|f| !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                            .collect();
                        v.sort();
                        v
                    }
                    Err(e) => {
                        errors.push(read_err(p, e));
                        continue;
                    }
                }
            } else {
                vec![p.to_path_buf()]
            };
            for f in list {
                match std::fs::read_to_string(&f) {
                    Ok(t) => files.push((f.display().to_string(), t)),
                    Err(e) => errors.push(read_err(&f, e)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Ok(Bundle { files })
    }

    /// blake3 over every (name, text) with length framing.
    pub fn digest(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for (name, text) in &self.files {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        h.finalize()
    }

    pub fn parse(&self) -> Result<Policy, PolicyErrors> {
        let sources: Vec<document::Source<'_>> = self.files.iter().map(|(n, t)| document::Source { name: n, text: t }).collect();
        document::parse_sources(&sources)
    }
}

/// The identity part of a policy, with the registry's ids, as the resolver
/// and enricher use it.
pub fn identity_config(policy: &Policy, ids: &IdRegistry) -> IdentityConfig {
    IdentityConfig {
        name: policy.name.clone(),
        trust_domain: policy.trust_domain.clone(),
        identities: policy
            .identities
            .iter()
            .map(|i| Identity {
                id: ids.get(&i.name).expect("registry assigned every identity"),
                name: i.name.clone(),
                spiffe_id: i.spiffe_id.clone(),
                selectors: i.selectors.clone(),
            })
            .collect(),
    }
}

/// What `explain` is asked about.
#[derive(Debug, Clone)]
pub enum Query {
    Connect { addr: IpAddr, port: u16, proto: u8 },
    Open { path: String, write: bool },
    Exec { path: String },
}

impl Query {
    /// Parses `10.1.2.3:443/tcp`, `[2001:db8::1]:443/udp` (protocol optional: tcp).
    pub fn parse_connect(s: &str) -> Result<Query, String> {
        let (hostport, proto) = match s.rsplit_once('/') {
            Some((hp, "tcp")) => (hp, kp::PROTO_TCP),
            Some((hp, "udp")) => (hp, kp::PROTO_UDP),
            Some((_, other)) => return Err(format!("unknown protocol {other:?} (tcp or udp)")),
            None => (s, kp::PROTO_TCP),
        };
        let sa: std::net::SocketAddr = hostport.parse().map_err(|e| format!("{hostport:?}: {e} (write ADDR:PORT, IPv6 as [ADDR]:PORT)"))?;
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
}

/// Decides `query` for `identity` from the compiled form with zt-common's
/// decision functions (the kernel's), never a second interpreter.
pub fn explain(policy: &Policy, identity: &str, query: &Query, active: &[bool]) -> Result<Explanation, String> {
    let ident = policy.identity(identity).ok_or_else(|| {
        let known: Vec<&str> = policy.identities.iter().map(|i| i.name.as_str()).collect();
        format!("unknown identity {identity:?} (known: {})", known.join(", "))
    })?;
    let ids = IdRegistry::for_policy(policy).map_err(|e| e.to_string())?;
    let compiled = compile::compile(policy, &ids, 0, active).map_err(|e| e.to_string())?;
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
        Query::Open { path, write } => {
            let access = if *write { path_policy::WRITE } else { path_policy::READ };
            decide_path(&pol, compiled.paths.iter(), id, path.as_bytes(), access)
        }
        Query::Exec { path } => decide_path(&pol, compiled.paths.iter(), id, path.as_bytes(), path_policy::EXEC),
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
    })
}

/// `policy diff`: rule-level changes and map-entry changes.
pub fn diff(old: &Policy, new: &Policy) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let fmt_rule = |r: &document::Rule| {
        format!(
            "identity={} action={:?} mode={:?} when={} egress={:?} files={:?} exec={:?}",
            r.identity,
            r.action,
            r.mode,
            r.when.is_some(),
            r.egress.iter().map(|e| (e.to.iter().map(|n| n.to_string()).collect::<Vec<_>>(), &e.ports, e.proto)).collect::<Vec<_>>(),
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

    // Map entries, with one registry so ids of unchanged names agree.
    let mut ids = IdRegistry::default();
    ids.assign(old).map_err(|e| e.to_string())?;
    ids.assign(new).map_err(|e| e.to_string())?;
    let a = compile::compile(old, &ids, 0, &vec![true; old.rules.len()]).map_err(|e| e.to_string())?;
    let b = compile::compile(new, &ids, 0, &vec![true; new.rules.len()]).map_err(|e| e.to_string())?;
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

impl IdRegistry {
    /// The name of an id, for display.
    pub fn ids_by_value(&self, id: u32) -> String {
        self.names().find(|(_, v)| *v == id).map(|(n, _)| n.to_string()).unwrap_or_else(|| format!("#{id}"))
    }
}

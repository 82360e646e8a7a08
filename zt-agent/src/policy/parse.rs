//! Parsing and validation: YAML text -> the raw layer -> a composed
//! [`Policy`], every error a [`Diagnostic`] with `file:line:col`.
//!
//! # Layout
//! - [`parse_sources`]: every file parsed and checked ([`parse_file`]), then
//!   the rules of all files against the identities of all files
//!   ([`compose_rules`]): several files make one bundle (identities in one,
//!   rules in others).
//! - `convert_*`: one raw item -> one validated item, or errors.
//! - `validate_*`, `parse_*`: names, SPIFFE IDs, CIDRs, ports, times.
//!
//! Syntax errors stop the file they are in (the YAML parser cannot go on);
//! every semantic error of every file is reported. Lint warnings are added
//! by the caller (`Bundle::parse`), not here.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use super::{
    conditions::{RegoSource, check_rego},
    model::{
        Action, Anomaly, AnomalyMode, AnomalyResponse, Condition, Defaults, Diagnostic, Egress, IdentityDef, Mode, PathRuleDef, Policy,
        PolicyErrors, Pos, Proto, Rule, TimeWindow, access,
    },
    raw::*,
};
use zt_common::guard::sock_kind;

use crate::identity::selector::{CgroupGlob, ExeMatcher, Selector};

pub const API_VERSION: &str = "zt-agent.io/v1alpha1";
pub const KIND: &str = "HostPolicy";

/// Collects diagnostics for one file.
struct Ctx<'a> {
    /// The file's name, shared by every position in it.
    file: Arc<str>,
    /// The file's text (Rego messages are placed in it).
    text: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn pos(&self, loc: &Location) -> Pos {
        Pos { file: self.file.clone(), line: loc.line(), column: loc.column() }
    }
    fn error(&mut self, loc: &Location, message: impl Into<String>, hint: Option<&str>) {
        let pos = self.pos(loc);
        self.errors.push(Diagnostic { pos, message: message.into(), hint: hint.map(str::to_string) });
    }
}

fn syntax_error(file: &str, e: &serde_saphyr::Error) -> Diagnostic {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // The crate's Display renders a snippet; keep the first line only.
    let text = e.to_string();
    let message = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("invalid YAML").trim_start_matches("error: ");
    // The message may repeat the position ("line 7 column 7: ..."); we print it once.
    let message = match message.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains(" column ") => rest,
        _ => message,
    }
    .to_string();
    let (message, hint) = in_policy_terms(message);
    Diagnostic { pos: Pos { file: file.into(), line, column }, message, hint: hint.map(str::to_string) }
}

/// The parser's messages that name our serde types or its own options, in
/// the policy language instead.
fn in_policy_terms(message: String) -> (String, Option<&'static str>) {
    if message.contains("untagged enum RawDefault") {
        ("invalid defaultAction".into(), Some("use \"allow\" or \"deny\", or a map with egress/files/exec"))
    } else if message.contains("untagged enum RawPort") {
        ("invalid port".into(), Some("a port (443) or an inclusive range (\"8000-8080\")"))
    } else if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(',').next().unwrap_or(rest).trim();
        (format!("duplicate key {key:?}"), Some("each key may appear once in a mapping"))
    } else if message.starts_with("budget breached") {
        ("the document is too large or too deeply nested for a policy file".into(), Some("split it into several files"))
    } else {
        (message, None)
    }
}

/// A source: its name (for positions) and text.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// What the files of a bundle declare, gathered file by file before the
/// rules of all files are checked against the identities of all files.
#[derive(Default)]
struct Declared<'a> {
    names: Vec<String>,
    trust_domain: Option<(String, Pos)>,
    identities: Vec<IdentityDef>,
    /// Identities that had errors: rules naming them are not reported
    /// again as "unknown identity".
    invalid_names: Vec<String>,
    /// (file name, file text, rule).
    raw_rules: Vec<(Arc<str>, &'a str, RawRule)>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// Parses, validates and composes several policy files into one bundle.
pub fn parse_sources(sources: &[Source<'_>]) -> Result<Policy, PolicyErrors> {
    let mut d = Declared::default();
    for src in sources {
        parse_file(&mut d, src);
    }
    let trust_domain = settle_trust_domain(&mut d, sources.first().map(|s| s.name).unwrap_or_default());
    let rules = compose_rules(&mut d);
    if !d.errors.is_empty() {
        return Err(PolicyErrors(d.errors));
    }
    let mut policy = Policy { name: d.names.join("+"), trust_domain, identities: d.identities, rules, warnings: d.warnings };
    policy.shrink_to_fit();
    Ok(policy)
}

/// One file: its header, trust domain and identities; its rules are kept
/// raw for [`compose_rules`].
fn parse_file<'a>(d: &mut Declared<'a>, src: &Source<'a>) {
    let raw: RawDoc = match serde_saphyr::from_str(src.text) {
        Ok(r) => r,
        Err(e) => {
            d.errors.push(syntax_error(src.name, &e));
            return;
        }
    };
    let mut cx = Ctx { file: src.name.into(), text: src.text, errors: Vec::new(), warnings: Vec::new() };
    if raw.api_version.value != API_VERSION {
        cx.error(
            &raw.api_version.referenced,
            format!("unsupported apiVersion {:?}", raw.api_version.value),
            Some(&format!("use {API_VERSION:?}")),
        );
    }
    if raw.kind.value != KIND {
        cx.error(&raw.kind.referenced, format!("unsupported kind {:?}", raw.kind.value), Some("use \"HostPolicy\""));
    }
    d.names.push(raw.metadata.name.clone().unwrap_or_else(|| src.name.to_string()));
    if let Some(td) = &raw.spec.trust_domain {
        if let Err(why) = validate_trust_domain(&td.value) {
            cx.error(&td.referenced, format!("invalid trustDomain {:?}: {why}", td.value), Some("e.g. \"prod.example.com\""));
        } else {
            match &d.trust_domain {
                Some((prev, at)) if *prev != td.value => cx.error(
                    &td.referenced,
                    format!("conflicting trustDomain {:?}: {at} says {prev:?}", td.value),
                    Some("every file of a bundle must name the same trust domain (or none)"),
                ),
                Some(_) => {}
                None => d.trust_domain = Some((td.value.clone(), cx.pos(&td.referenced))),
            }
        }
    }
    for ri in &raw.spec.identities {
        let Some(def) = convert_identity(&mut cx, ri, d.trust_domain.as_ref().map(|t| t.0.as_str())) else {
            d.invalid_names.push(ri.name.value.clone());
            continue;
        };
        if let Some(prev) = d.identities.iter().find(|i| i.name == def.name) {
            // Linear, but identities are few (rules are many: see compose_rules).
            let prev = prev.pos.clone();
            cx.error(&ri.name.referenced, format!("duplicate identity name {:?} (first defined at {prev})", def.name), None);
        } else {
            d.identities.push(def);
        }
    }
    d.raw_rules.extend(raw.spec.rules.into_iter().map(|rr| (cx.file.clone(), src.text, rr)));
    d.errors.append(&mut cx.errors);
    d.warnings.append(&mut cx.warnings);
}

/// The bundle's trust domain (an error if no file names one), and the
/// SPIFFE IDs of identities declared before it was known, derived and
/// checked now.
fn settle_trust_domain(d: &mut Declared, first_file: &str) -> String {
    let Some((trust_domain, _)) = d.trust_domain.clone() else {
        if d.errors.is_empty() {
            d.errors.push(Diagnostic {
                pos: Pos { file: first_file.into(), line: 1, column: 1 },
                message: "no file of the bundle sets spec.trustDomain".into(),
                hint: Some("add `trustDomain: <domain>` under spec".into()),
            });
        }
        return String::new();
    };
    let mut invalid = Vec::new();
    for i in d.identities.iter_mut().filter(|i| i.spiffe_id.is_empty()) {
        i.spiffe_id = derived_spiffe_id(&trust_domain, &i.name);
        if let Err(why) = validate_spiffe_id(&i.spiffe_id, Some(&trust_domain)) {
            d.errors.push(derived_id_error(i.pos.clone(), &i.name, &i.spiffe_id, &why));
            invalid.push(i.name.clone());
        }
    }
    d.identities.retain(|i| !invalid.contains(&i.name));
    d.invalid_names.extend(invalid);
    trust_domain
}

fn derived_spiffe_id(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/{name}")
}

fn derived_id_error(pos: Pos, name: &str, id: &str, why: &str) -> Diagnostic {
    Diagnostic {
        pos,
        message: format!("identity name {name:?} gives the invalid SPIFFE ID {id:?}: {why}"),
        hint: Some("rename the identity, or set `spiffeId` explicitly".into()),
    }
}

/// Every file's rules against every file's identities; rule names unique
/// in the bundle (looked up by hash: a bundle may hold 10,000s of rules).
fn compose_rules(d: &mut Declared) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let known: HashMap<&str, Arc<str>> = d.identities.iter().map(|i| (i.name.as_str(), Arc::from(i.name.as_str()))).collect();
    let invalid: HashSet<&str> = d.invalid_names.iter().map(String::as_str).collect();
    let mut per_file_index: HashMap<(Arc<str>, String), usize> = HashMap::new();
    for (file, text, rr) in &d.raw_rules {
        let mut cx = Ctx { file: file.clone(), text, errors: Vec::new(), warnings: Vec::new() };
        let idx = per_file_index.entry((file.clone(), rr.identity.value.clone())).or_insert(0);
        if let Some(rule) = convert_rule(&mut cx, rr, &known, &d.identities, &invalid, *idx) {
            if let Some(&prev) = by_name.get(&rule.name) {
                let at = rules[prev].pos.clone();
                let loc = rr.name.as_ref().map(|n| n.referenced).unwrap_or(rr.identity.referenced);
                cx.error(
                    &loc,
                    format!("duplicate rule name {:?} (first defined at {at})", rule.name),
                    Some("give each rule a unique `name`"),
                );
            } else {
                by_name.insert(rule.name.clone(), rules.len());
                rules.push(rule);
            }
        }
        *idx += 1;
        d.errors.append(&mut cx.errors);
        d.warnings.append(&mut cx.warnings);
    }
    rules
}

fn parse_action(cx: &mut Ctx<'_>, s: &Spanned<String>) -> Option<Action> {
    match s.value.as_str() {
        "allow" => Some(Action::Allow),
        "deny" => Some(Action::Deny),
        other => {
            cx.error(&s.referenced, format!("invalid action {other:?}"), Some("use \"allow\" or \"deny\""));
            None
        }
    }
}

fn parse_mode(cx: &mut Ctx<'_>, s: &Spanned<String>) -> Option<Mode> {
    match s.value.as_str() {
        "enforce" => Some(Mode::Enforce),
        "audit" => Some(Mode::Audit),
        other => {
            cx.error(&s.referenced, format!("invalid mode {other:?}"), Some("use \"enforce\" or \"audit\""));
            None
        }
    }
}

fn convert_identity(cx: &mut Ctx<'_>, ri: &RawIdentity, trust_domain: Option<&str>) -> Option<IdentityDef> {
    let before = cx.errors.len();
    let name = &ri.name;
    if let Err(why) = validate_name(&name.value) {
        cx.error(&name.referenced, format!("invalid identity name {:?}: {why}", name.value), Some("use letters, digits, '-', '_' and '.'"));
    }
    let spiffe_id = match &ri.spiffe_id {
        None => match trust_domain {
            Some(td) => {
                let id = derived_spiffe_id(td, &name.value);
                if let Err(why) = validate_spiffe_id(&id, Some(td)) {
                    let d = derived_id_error(cx.pos(&name.referenced), &name.value, &id, &why);
                    cx.errors.push(d);
                }
                id
            }
            // Derived once the bundle's trust domain is known.
            None => String::new(),
        },
        Some(s) => {
            if let Err(why) = validate_spiffe_id(&s.value, trust_domain) {
                cx.error(&s.referenced, format!("invalid spiffeId {:?}: {why}", s.value), None);
            }
            s.value.clone()
        }
    };
    if ri.selectors.value.is_empty() {
        cx.error(
            &ri.selectors.referenced,
            format!("identity {:?} has no selectors", name.value),
            Some("add at least one of cgroup, exe, exeDigest, uid, descendantOf"),
        );
    }
    let selectors: std::sync::Arc<[Selector]> =
        ri.selectors.value.iter().filter_map(|rs| convert_selector(cx, rs, &ri.selectors.referenced)).collect();
    let mode = ri.mode.as_ref().and_then(|m| parse_mode(cx, m)).unwrap_or(Mode::Enforce);
    let mut defaults = Defaults::default();
    if let Some(d) = &ri.default_action {
        let mut one = |v: &str| match v {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                cx.error(
                    &d.referenced,
                    format!("invalid defaultAction {other:?}"),
                    Some("use \"allow\" or \"deny\", or a map with egress/files/exec"),
                );
                None
            }
        };
        match &d.value {
            RawDefault::All(v) => {
                if let Some(a) = one(v) {
                    defaults = Defaults { egress: a, files: a, exec: a };
                }
            }
            RawDefault::Each(m) => {
                if let Some(a) = m.egress.as_deref().and_then(&mut one) {
                    defaults.egress = a;
                }
                if let Some(a) = m.files.as_deref().and_then(&mut one) {
                    defaults.files = a;
                }
                if let Some(a) = m.exec.as_deref().and_then(&mut one) {
                    defaults.exec = a;
                }
            }
        }
    }
    let sockets = match &ri.sockets {
        None => sock_kind::DEFAULT,
        Some(kinds) => kinds.iter().fold(0, |mask, k| match sock_kind::NAMES.iter().position(|n| *n == k.value) {
            Some(bit) => mask | 1 << bit,
            None => {
                let hint = format!("one of {}", sock_kind::NAMES.join(", "));
                cx.error(&k.referenced, format!("unknown socket kind {:?}", k.value), Some(&hint));
                mask
            }
        }),
    };
    let anomaly = ri.anomaly.as_ref().map(|a| convert_anomaly(cx, &a.value));
    if cx.errors.len() != before {
        return None;
    }
    Some(IdentityDef { name: name.value.clone(), spiffe_id, selectors, mode, defaults, sockets, anomaly, pos: cx.pos(&name.referenced) })
}

fn convert_anomaly(cx: &mut Ctx<'_>, ra: &super::raw::RawAnomaly) -> Anomaly {
    let mode = match ra.mode.as_ref() {
        None => AnomalyMode::Learn,
        Some(m) => match m.value.as_str() {
            "learn" => AnomalyMode::Learn,
            "detect" => AnomalyMode::Detect,
            other => {
                cx.error(&m.referenced, format!("invalid anomaly mode {other:?}"), Some("use \"learn\" or \"detect\""));
                AnomalyMode::Learn
            }
        },
    };
    let response = match ra.response.as_ref() {
        None => AnomalyResponse::Alert,
        Some(r) => match r.value.as_str() {
            "alert" => AnomalyResponse::Alert,
            "quarantine" => AnomalyResponse::Quarantine,
            "kill" => AnomalyResponse::Kill,
            other => {
                cx.error(&r.referenced, format!("invalid anomaly response {other:?}"), Some("use \"alert\", \"quarantine\" or \"kill\""));
                AnomalyResponse::Alert
            }
        },
    };
    let false_positive_rate = match ra.false_positive_rate.as_ref() {
        None => Anomaly::DEFAULT_FALSE_POSITIVE_RATE,
        Some(f) if f.value > 0.0 && f.value <= 0.5 => f.value,
        Some(f) => {
            cx.error(
                &f.referenced,
                format!("falsePositiveRate {} is out of range", f.value),
                Some("a share above 0 and at most 0.5, e.g. 0.005 for 0.5%"),
            );
            Anomaly::DEFAULT_FALSE_POSITIVE_RATE
        }
    };
    let learn_calls = match ra.learn_calls.as_ref() {
        None => Anomaly::DEFAULT_LEARN_CALLS,
        Some(n) if Anomaly::LEARN_CALLS.contains(&n.value) => n.value,
        Some(n) => {
            let (lo, hi) = (Anomaly::LEARN_CALLS.start(), Anomaly::LEARN_CALLS.end());
            let hint = format!("from {lo} to {hi} calls");
            cx.error(&n.referenced, format!("learnCalls {} is out of range", n.value), Some(hint.as_str()));
            Anomaly::DEFAULT_LEARN_CALLS
        }
    };
    Anomaly { mode, response, false_positive_rate, learn_calls }
}

fn convert_selector(cx: &mut Ctx<'_>, rs: &RawSelector, parent: &Location) -> Option<Selector> {
    let before = cx.errors.len();
    let mut sel = Selector::default();
    if let Some(c) = &rs.cgroup {
        match CgroupGlob::new(&c.value) {
            Ok(g) => sel.cgroup = Some(g),
            Err(why) => cx.error(&c.referenced, why, Some("an absolute cgroup v2 path glob, e.g. \"/zt-agents/**\"")),
        }
    }
    if let Some(e) = &rs.exe {
        match ExeMatcher::new(&e.value) {
            Ok(m) => sel.exe = Some(m),
            Err(why) => cx.error(&e.referenced, why, None),
        }
    }
    if let Some(d) = &rs.exe_digest {
        match d.value.strip_prefix("blake3:") {
            None => {
                cx.error(&d.referenced, format!("invalid exeDigest {:?}", d.value), Some("write \"blake3:<64 hex digits>\" (`b3sum FILE`)"))
            }
            Some(hex) => match blake3::Hash::from_hex(hex) {
                Ok(h) => sel.exe_digest = Some(h),
                Err(e) => cx.error(&d.referenced, format!("invalid exeDigest {:?}: {e}", d.value), None),
            },
        }
    }
    if let Some(u) = &rs.uid {
        // (uid_t)-1 means "no change" to the kernel, and the exec table
        // keeps -1 and -2 for its own keys (zt_common::ANY_UID, GLOB_DIR_UID).
        if u.value >= zt_common::GLOB_DIR_UID {
            cx.error(&u.referenced, format!("uid {} is reserved", u.value), Some("a uid is below 4294967294"));
        } else {
            sel.uid = Some(u.value);
        }
    }
    if let Some(k) = &rs.k8s {
        let (namespace, pod_labels) = (k.value.namespace.clone(), k.value.pod_labels.clone().unwrap_or_default());
        if namespace.is_none() && pod_labels.is_empty() {
            cx.error(&k.referenced, "an empty k8s selector would match every pod", Some("give a namespace, podLabels, or both"));
        } else if !sel.is_empty() {
            cx.error(&k.referenced, "k8s cannot be combined with other keys in one selector", Some("write it as a selector of its own"));
        } else {
            sel.k8s = Some(crate::identity::selector::K8sSelector { namespace, pod_labels });
        }
    }
    if let Some(inner) = &rs.descendant_of
        && let Some(inner_sel) = convert_selector(cx, &inner.value, &inner.referenced)
    {
        if inner_sel.descendant_of.is_some() {
            cx.error(&inner.referenced, "descendantOf cannot be nested", None);
        } else if !sel.is_empty() {
            cx.error(
                &inner.referenced,
                "descendantOf cannot be combined with other keys in one selector",
                Some("write it as a selector of its own"),
            );
        } else {
            sel.descendant_of = Some(Box::new(inner_sel));
        }
    }
    if cx.errors.len() != before {
        return None;
    }
    if sel.is_empty() {
        cx.error(parent, "empty selector", Some("add at least one of cgroup, exe, exeDigest, uid, descendantOf"));
        return None;
    }
    Some(sel)
}

/// `known`: the names of `identities` (shared by their rules); `invalid`:
/// identities with errors.
fn convert_rule(
    cx: &mut Ctx<'_>,
    rr: &RawRule,
    known: &HashMap<&str, Arc<str>>,
    identities: &[IdentityDef],
    invalid: &HashSet<&str>,
    index: usize,
) -> Option<Rule> {
    let before = cx.errors.len();
    if invalid.contains(rr.identity.value.as_str()) {
        // Its identity already has an error; the rule is checked, not kept.
        let _ = parse_action(cx, &rr.action);
        return None;
    }
    let identity = known.get(rr.identity.value.as_str()).cloned();
    if identity.is_none() {
        let known: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
        cx.error(
            &rr.identity.referenced,
            format!("rule for unknown identity {:?}", rr.identity.value),
            Some(&format!("known identities: {}", known.join(", "))),
        );
    }
    let action = parse_action(cx, &rr.action);
    let mode = rr.mode.as_ref().and_then(|m| parse_mode(cx, m));
    let name = match &rr.name {
        Some(n) => {
            if let Err(why) = validate_name(&n.value) {
                cx.error(&n.referenced, format!("invalid rule name {:?}: {why}", n.value), None);
            }
            n.value.clone()
        }
        None => format!("{}/{index}", rr.identity.value),
    };
    if rr.egress.is_empty() && rr.files.is_empty() && rr.exec.is_empty() {
        cx.error(&rr.action.referenced, format!("rule {name:?} has no egress, files or exec entries"), None);
    }
    let when = rr.when.as_ref().map(|w| convert_when(cx, &w.value));
    let egress = rr.egress.iter().filter_map(|e| convert_egress(cx, e)).collect();
    let mut files = Vec::new();
    for f in &rr.files {
        let paths = convert_paths(cx, &f.value.paths);
        let mut mask = 0;
        for a in &f.value.access {
            match access::NAMES.iter().find(|(n, _)| *n == a.value) {
                Some((_, bit)) => mask |= bit,
                None => cx.error(&a.referenced, format!("invalid access {:?}", a.value), Some("read, write, create, delete or exec")),
            }
        }
        if mask == 0 && f.value.access.is_empty() {
            cx.error(&f.referenced, "files entry without access", Some("e.g. `access: [read]`"));
        }
        files.push(PathRuleDef { paths, access: mask, pos: cx.pos(&f.referenced) });
    }
    let mut exec = Vec::new();
    for x in &rr.exec {
        let paths = convert_paths(cx, &x.value.paths);
        exec.push(PathRuleDef { paths, access: access::EXEC, pos: cx.pos(&x.referenced) });
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Rule {
        name,
        identity: identity?,
        action: action?,
        mode,
        when: when.flatten().map(Box::new),
        egress,
        files,
        exec,
        pos: cx.pos(&rr.identity.referenced),
    })
}

fn convert_egress(cx: &mut Ctx<'_>, e: &Spanned<RawEgress>) -> Option<Egress> {
    if let Some(dns) = &e.value.dns {
        cx.error(
            &dns.referenced,
            "egress by DNS name is not supported yet",
            Some("list the destination CIDRs under `to`; DNS-bound rules come with a later version"),
        );
        return None;
    }
    if e.value.to.is_empty() {
        cx.error(&e.referenced, "egress entry without `to`", Some("e.g. `to: [10.0.0.0/8]`, or `0.0.0.0/0` for any IPv4 destination"));
        return None;
    }
    let (mut to, mut unix) = (Vec::new(), Vec::new());
    for t in &e.value.to {
        if let Some(name) = t.value.strip_prefix("unix:") {
            match super::unix::parse_name(name) {
                Ok(n) => unix.push(n),
                Err(why) => cx.error(
                    &t.referenced,
                    format!("invalid Unix-socket destination {:?}: {why}", t.value),
                    Some("unix:/abs/path.sock, unix:/abs/dir/** (everything below), unix:@abstract-name, or unix:@* (every abstract name)"),
                ),
            }
            continue;
        }
        match parse_net(&t.value) {
            Ok(n) => to.push(n),
            Err(why) => cx.error(
                &t.referenced,
                format!("invalid destination {:?}: {why}", t.value),
                Some("a CIDR like 10.0.0.0/8 or 2001:db8::/32, a single address, or unix:/path"),
            ),
        }
    }
    if e.value.to.iter().any(|t| t.value.starts_with("unix:")) {
        // Ports and protocols mean nothing to a Unix socket; accepting them
        // would suggest a narrower rule than the kernel applies.
        for (field, at) in
            [("ports", e.value.ports.as_ref().map(|p| &p.referenced)), ("protocol", e.value.protocol.as_ref().map(|p| &p.referenced))]
        {
            if let Some(at) = at {
                cx.error(
                    at,
                    format!("`{field}` does not apply to unix: destinations"),
                    Some("put Unix-socket destinations in an egress entry of their own"),
                );
            }
        }
    }
    let mut ports = Vec::new();
    let listed = e.value.ports.as_ref();
    if let Some(list) = listed.filter(|l| l.value.is_empty()) {
        cx.error(&list.referenced, "empty `ports` list", Some("omit `ports` to mean every port"));
    }
    for p in listed.map(|l| l.value.as_slice()).unwrap_or_default() {
        match parse_port(&p.value) {
            Ok(r) => ports.push(r),
            Err(why) => cx.error(&p.referenced, why, Some("a port (443) or an inclusive range (\"8000-8080\")")),
        }
    }
    let proto = match e.value.protocol.as_ref().map(|p| (p.value.as_str(), p)) {
        None | Some(("any", _)) => Proto::Any,
        Some(("tcp", _)) => Proto::Tcp,
        Some(("udp", _)) => Proto::Udp,
        Some((other, p)) => {
            cx.error(&p.referenced, format!("invalid protocol {other:?}"), Some("use tcp, udp or any"));
            Proto::Any
        }
    };
    Some(Egress { to, unix, ports, proto, pos: cx.pos(&e.referenced) })
}

/// Absolute paths without `..`, short enough for the kernel's buffers.
fn convert_paths(cx: &mut Ctx<'_>, paths: &[Spanned<String>]) -> Vec<String> {
    let mut out = Vec::new();
    for p in paths {
        if !p.value.starts_with('/') || p.value.contains("/../") || p.value.ends_with("/..") || p.value.contains('\0') {
            cx.error(&p.referenced, format!("invalid path {:?}: must be absolute, without '..'", p.value), None);
        } else if p.value.len() > zt_common::FILENAME_LEN - 1 {
            cx.error(&p.referenced, format!("path longer than {} bytes", zt_common::FILENAME_LEN - 1), None);
        } else {
            out.push(p.value.clone());
        }
    }
    out
}

fn convert_when(cx: &mut Ctx<'_>, w: &RawWhen) -> Option<Condition> {
    let time = w.time_window.as_ref().and_then(|t| {
        let mut days = 0u8;
        for d in &t.value.days {
            match parse_days(&d.value) {
                Some(bits) => days |= bits,
                None => cx.error(&d.referenced, format!("invalid day {:?}", d.value), Some("mon..sun, or a range like mon-fri")),
            }
        }
        if t.value.days.is_empty() {
            days = 0x7f;
        }
        let start = parse_hhmm(&t.value.start.value);
        let end = parse_hhmm(&t.value.end.value);
        if start.is_none() {
            cx.error(&t.value.start.referenced, format!("invalid time {:?}", t.value.start.value), Some("HH:MM, UTC"));
        }
        if end.is_none() {
            cx.error(&t.value.end.referenced, format!("invalid time {:?}", t.value.end.value), Some("HH:MM, UTC"));
        }
        if start.is_some() && start == end {
            cx.error(
                &t.value.end.referenced,
                format!("timeWindow starts and ends at {}: it would never be active", t.value.end.value),
                Some("a window from start to end (UTC), e.g. 08:00 to 18:00; omit `timeWindow` for all day"),
            );
        }
        Some(TimeWindow { days, start: start?, end: end? })
    });
    let rego = w.rego.as_ref().and_then(|r| {
        let src = RegoSource::new(r.value.clone(), cx.pos(&r.referenced), cx.text);
        match check_rego(&src) {
            Ok(()) => Some(src),
            Err(e) => {
                cx.errors.push(Diagnostic { pos: e.pos, message: format!("invalid Rego condition: {}", e.message), hint: None });
                None
            }
        }
    });
    Some(Condition { time, rego })
}

fn parse_days(s: &str) -> Option<u8> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let idx = |d: &str| DAYS.iter().position(|x| *x == d);
    match s.split_once('-') {
        None => idx(s).map(|i| 1 << i),
        Some((a, b)) => {
            let (a, b) = (idx(a)?, idx(b)?);
            if a > b {
                return None;
            }
            Some((a..=b).fold(0, |m, i| m | 1 << i))
        }
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

/// A CIDR or a single address (as /32 or /128); host bits must be zero, and
/// no IPv4 octet may have a leading zero (`010` reads as 8 in tools that take
/// it for octal; one rule for addresses and networks alike).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let addr = s.split('/').next().unwrap_or_default();
    let dotted = addr.rsplit(':').next().unwrap_or_default();
    if dotted.contains('.') && dotted.split('.').any(|o| o.len() > 1 && o.starts_with('0')) {
        return Err(format!("leading zeros in {addr:?} are ambiguous (octal in some tools)"));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|e| format!("{e}"))?;
    if net.network() != net.addr() {
        return Err(format!("host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

/// A port (`443`, or quoted `"443"`) or an inclusive range (`"8000-8080"`),
/// within 1-65535 (port 0 is no destination).
fn parse_port(p: &RawPort) -> Result<(u16, u16), String> {
    let one = |v: u32| match u16::try_from(v) {
        Ok(0) => Err("port 0 is not a destination port".to_string()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {v} out of range 1-65535")),
    };
    match p {
        RawPort::One(v) => one(*v).map(|v| (v, v)),
        RawPort::Range(s) => {
            let Some((a, b)) = s.split_once('-') else {
                let v = one(s.trim().parse().map_err(|_| format!("invalid port {s:?}"))?)?;
                return Ok((v, v));
            };
            let a = one(a.trim().parse().map_err(|_| format!("invalid port range {s:?}"))?)?;
            let b = one(b.trim().parse().map_err(|_| format!("invalid port range {s:?}"))?)?;
            if a > b {
                return Err(format!("port range {s:?} is empty (start > end)"));
            }
            Ok((a, b))
        }
    }
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/')) {
        return Err("contains a character other than letters, digits, '-', '_', '.' or '/'");
    }
    Ok(())
}

/// SPIFFE trust domain: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID spec §2.1).
fn validate_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() || td.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')) {
        return Err("only lowercase letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(())
}

/// SPIFFE ID: `spiffe://<trust domain>/<path>` with non-empty segments of
/// `[A-Za-z0-9._-]`, no `.`/`..` segments (SPIFFE-ID spec §2.2).
pub(crate) fn validate_spiffe_id(id: &str, trust_domain: Option<&str>) -> Result<(), String> {
    let rest = id.strip_prefix("spiffe://").ok_or("must start with \"spiffe://\"")?;
    let (td, path) = rest.split_once('/').ok_or("needs a path after the trust domain")?;
    if let Some(trust_domain) = trust_domain
        && td != trust_domain
    {
        return Err(format!("trust domain {td:?} differs from spec.trustDomain {trust_domain:?}"));
    }
    validate_trust_domain(td).map_err(|e| format!("trust domain {td:?}: {e}"))?;
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("path segments must be non-empty and not '.' or '..'".into());
        }
        if !seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
            return Err(format!("path segment {seg:?} has characters outside [A-Za-z0-9._-]"));
        }
    }
    Ok(())
}

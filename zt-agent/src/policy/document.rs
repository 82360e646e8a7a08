//! Host policy documents: YAML text -> a validated, composed [`Policy`].
//!
//! # Layout
//! - `Raw*`: serde shapes of the YAML, with `Spanned` positions.
//! - [`parse_sources`]: parse every file, validate, compose (several files
//!   make one bundle: identities in one, rules in others), collect every
//!   error as a [`Diagnostic`] with `file:line:col`.
//! - Validated types: [`Policy`], [`IdentityDef`], [`Rule`], [`Egress`],
//!   [`PathRuleDef`], [`Condition`].
//!
//! Syntax errors stop the file they are in (the YAML parser cannot go on);
//! every semantic error of every file is reported.
use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use crate::identity::selector::{CgroupGlob, ExeMatcher, Selector};

pub const API_VERSION: &str = "zt-agent.io/v1alpha1";
pub const KIND: &str = "HostPolicy";

/// A position in a source file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pos {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the whole file (it could not be read).
        if self.line == 0 { write!(f, "{}", self.file) } else { write!(f, "{}:{}:{}", self.file, self.line, self.column) }
    }
}

/// One error or warning, printed as `file:line:col: message (hint: …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Every error found, in file order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<Diagnostic>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
}

/// Default actions per category. Unset: egress deny (zero trust for agents),
/// files and exec allow (a default-deny file policy must list every library
/// a process loads; opt in with `defaultAction: deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub egress: Action,
    pub files: Action,
    pub exec: Action,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { egress: Action::Deny, files: Action::Allow, exec: Action::Allow }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityDef {
    pub name: String,
    pub spiffe_id: String,
    pub selectors: Vec<Selector>,
    pub mode: Mode,
    pub defaults: Defaults,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Egress {
    /// Networks; IPv4 kept as IPv4 here (mapped at compile time).
    pub to: Vec<IpNet>,
    /// Inclusive port ranges; empty = every port.
    pub ports: Vec<(u16, u16)>,
    pub proto: Proto,
    pub pos: Pos,
}

/// File access bits (also in `zt_common::policy`-compatible order).
pub mod access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const CREATE: u32 = 4;
    pub const DELETE: u32 = 8;
    pub const EXEC: u32 = 16;
    pub const NAMES: [(&str, u32); 5] = [("read", READ), ("write", WRITE), ("create", CREATE), ("delete", DELETE), ("exec", EXEC)];
}

/// A file or exec rule's paths: exact files, or directory prefixes when the
/// path ends with '/'.
#[derive(Debug, Clone)]
pub struct PathRuleDef {
    pub paths: Vec<String>,
    /// [`access`] bits (exec rules: `EXEC`).
    pub access: u32,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit i = weekday i (0 = Monday), UTC.
    pub days: u8,
    /// Minutes after midnight UTC; `start > end` wraps past midnight.
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub time: Option<TimeWindow>,
    /// A Rego body (one or more expressions, AND-ed), compiled and checked
    /// at load time; evaluated when inputs change, never per syscall.
    pub rego: Option<(String, Pos)>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique in the bundle; default `<identity>/<index in its file>`.
    pub name: String,
    pub identity: String,
    pub action: Action,
    /// Per-rule mode; the identity's mode applies when unset (and audit at
    /// either level makes the rule audit).
    pub mode: Option<Mode>,
    pub when: Option<Condition>,
    pub egress: Vec<Egress>,
    pub files: Vec<PathRuleDef>,
    pub exec: Vec<PathRuleDef>,
    pub pos: Pos,
}

/// A composed, validated bundle.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub trust_domain: String,
    pub identities: Vec<IdentityDef>,
    pub rules: Vec<Rule>,
    pub warnings: Vec<Diagnostic>,
}

impl Policy {
    pub fn identity(&self, name: &str) -> Option<&IdentityDef> {
        self.identities.iter().find(|i| i.name == name)
    }
}

// ---- raw serde shapes -------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDoc {
    api_version: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "accepted for Kubernetes-style documents, not used")]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    trust_domain: Option<Spanned<String>>,
    #[serde(default)]
    identities: Vec<RawIdentity>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    name: Spanned<String>,
    #[serde(default)]
    spiffe_id: Option<Spanned<String>>,
    selectors: Spanned<Vec<RawSelector>>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    default_action: Option<Spanned<RawDefault>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawDefault {
    All(String),
    Each(RawDefaults),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    egress: Option<String>,
    #[serde(default)]
    files: Option<String>,
    #[serde(default)]
    exec: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    cgroup: Option<Spanned<String>>,
    #[serde(default)]
    exe: Option<Spanned<String>>,
    #[serde(default)]
    exe_digest: Option<Spanned<String>>,
    #[serde(default)]
    uid: Option<Spanned<u32>>,
    #[serde(default)]
    descendant_of: Option<Spanned<Box<RawSelector>>>,
    #[serde(default)]
    #[allow(dead_code, reason = "syntax reserved; resolved by the operations issue")]
    k8s: Option<Spanned<RawK8s>>,
}

/// Kubernetes selectors (pod namespace/labels), resolved from the pod UID in
/// the cgroup path once a metadata source exists (operations issue). The
/// syntax is accepted and validated now; such a selector matches nothing yet
/// and `policy check` says so.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawK8s {
    #[serde(default)]
    #[allow(dead_code, reason = "resolved by the operations issue")]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "resolved by the operations issue")]
    pod_labels: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    name: Option<Spanned<String>>,
    identity: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    mode: Option<Spanned<String>>,
    #[serde(default)]
    when: Option<Spanned<RawWhen>>,
    #[serde(default)]
    egress: Vec<Spanned<RawEgress>>,
    #[serde(default)]
    files: Vec<Spanned<RawFiles>>,
    #[serde(default)]
    exec: Vec<Spanned<RawExec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWhen {
    #[serde(default)]
    time_window: Option<Spanned<RawTimeWindow>>,
    #[serde(default)]
    rego: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeWindow {
    #[serde(default)]
    days: Vec<Spanned<String>>,
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    to: Vec<Spanned<String>>,
    #[serde(default)]
    dns: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    One(u32),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    paths: Vec<Spanned<String>>,
    access: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    paths: Vec<Spanned<String>>,
}

// ---- parsing and validation ---------------------------------------------------

/// Collects diagnostics for one file.
struct Ctx<'a> {
    file: &'a str,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn pos(&self, loc: &Location) -> Pos {
        Pos { file: self.file.to_string(), line: loc.line(), column: loc.column() }
    }
    fn error(&mut self, loc: &Location, message: impl Into<String>, hint: Option<&str>) {
        let pos = self.pos(loc);
        self.errors.push(Diagnostic { pos, message: message.into(), hint: hint.map(str::to_string) });
    }
    fn warn(&mut self, loc: &Location, message: impl Into<String>, hint: Option<&str>) {
        let pos = self.pos(loc);
        self.warnings.push(Diagnostic { pos, message: message.into(), hint: hint.map(str::to_string) });
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
    Diagnostic { pos: Pos { file: file.to_string(), line, column }, message, hint: None }
}

/// A source: its name (for positions) and text.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// Parses, validates and composes several policy files into one bundle.
pub fn parse_sources(sources: &[Source<'_>]) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut names = Vec::new();
    let mut trust_domain: Option<(String, Pos)> = None;
    let mut identities: Vec<IdentityDef> = Vec::new();
    // Names of identities that had errors: rules naming them are not
    // reported again as "unknown identity".
    let mut invalid_names: Vec<String> = Vec::new();
    let mut raw_rules: Vec<(String, RawRule)> = Vec::new();

    for src in sources {
        let raw: RawDoc = match serde_saphyr::from_str(src.text) {
            Ok(r) => r,
            Err(e) => {
                errors.push(syntax_error(src.name, &e));
                continue;
            }
        };
        let mut cx = Ctx { file: src.name, errors: Vec::new(), warnings: Vec::new() };
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
        names.push(raw.metadata.name.clone().unwrap_or_else(|| src.name.to_string()));
        if let Some(td) = &raw.spec.trust_domain {
            if let Err(why) = validate_trust_domain(&td.value) {
                cx.error(&td.referenced, format!("invalid trustDomain {:?}: {why}", td.value), Some("e.g. \"prod.example.com\""));
            } else {
                match &trust_domain {
                    Some((prev, at)) if *prev != td.value => cx.error(
                        &td.referenced,
                        format!("conflicting trustDomain {:?}: {at} says {prev:?}", td.value),
                        Some("every file of a bundle must name the same trust domain (or none)"),
                    ),
                    Some(_) => {}
                    None => trust_domain = Some((td.value.clone(), cx.pos(&td.referenced))),
                }
            }
        }
        for ri in &raw.spec.identities {
            let Some(def) = convert_identity(&mut cx, ri, trust_domain.as_ref().map(|t| t.0.as_str())) else {
                invalid_names.push(ri.name.value.clone());
                continue;
            };
            {
                if let Some(prev) = identities.iter().find(|i| i.name == def.name) {
                    let prev = prev.pos.clone();
                    cx.error(&ri.name.referenced, format!("duplicate identity name {:?} (first defined at {prev})", def.name), None);
                } else {
                    identities.push(def);
                }
            }
        }
        for rr in raw.spec.rules {
            raw_rules.push((src.name.to_string(), rr));
        }
        errors.append(&mut cx.errors);
        warnings.append(&mut cx.warnings);
    }

    let trust_domain = match trust_domain {
        Some((td, _)) => td,
        None => {
            if errors.is_empty() {
                let pos = Pos { file: sources.first().map(|s| s.name.to_string()).unwrap_or_default(), line: 1, column: 1 };
                errors.push(Diagnostic {
                    pos,
                    message: "no file of the bundle sets spec.trustDomain".into(),
                    hint: Some("add `trustDomain: <domain>` under spec".into()),
                });
            }
            String::new()
        }
    };
    // SPIFFE IDs derived before the trust domain was known (identities in a
    // file before the one naming it) are filled in now.
    for i in &mut identities {
        if i.spiffe_id.is_empty() {
            i.spiffe_id = format!("spiffe://{trust_domain}/{}", i.name);
        }
    }

    let mut rules: Vec<Rule> = Vec::new();
    let mut per_file_index: std::collections::HashMap<(String, String), usize> = Default::default();
    for (file, rr) in &raw_rules {
        let mut cx = Ctx { file, errors: Vec::new(), warnings: Vec::new() };
        let idx = per_file_index.entry((file.clone(), rr.identity.value.clone())).or_insert(0);
        if let Some(rule) = convert_rule(&mut cx, rr, &identities, &invalid_names, *idx) {
            if let Some(prev) = rules.iter().find(|r| r.name == rule.name) {
                let at = prev.pos.clone();
                let loc = rr.name.as_ref().map(|n| n.referenced).unwrap_or(rr.identity.referenced);
                cx.error(
                    &loc,
                    format!("duplicate rule name {:?} (first defined at {at})", rule.name),
                    Some("give each rule a unique `name`"),
                );
            } else {
                rules.push(rule);
            }
        }
        *idx += 1;
        errors.append(&mut cx.errors);
        warnings.append(&mut cx.warnings);
    }

    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    let mut policy = Policy { name: names.join("+"), trust_domain, identities, rules, warnings };
    super::lint::lint(&mut policy);
    Ok(policy)
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
        None => trust_domain.map(|td| format!("spiffe://{td}/{}", name.value)).unwrap_or_default(),
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
    let selectors: Vec<Selector> = ri.selectors.value.iter().filter_map(|rs| convert_selector(cx, rs, &ri.selectors.referenced)).collect();
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
    if cx.errors.len() != before {
        return None;
    }
    Some(IdentityDef { name: name.value.clone(), spiffe_id, selectors, mode, defaults, pos: cx.pos(&name.referenced) })
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
        sel.uid = Some(u.value);
    }
    if let Some(k) = &rs.k8s {
        cx.warn(&k.referenced, "k8s selectors are accepted but match nothing yet (no Kubernetes metadata source in this version)", None);
        sel.k8s = true;
    }
    if let Some(inner) = &rs.descendant_of {
        if let Some(inner_sel) = convert_selector(cx, &inner.value, &inner.referenced) {
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

fn convert_rule(cx: &mut Ctx<'_>, rr: &RawRule, identities: &[IdentityDef], invalid: &[String], index: usize) -> Option<Rule> {
    let before = cx.errors.len();
    if invalid.contains(&rr.identity.value) {
        // Its identity already has an error; the rule is checked, not kept.
        let _ = parse_action(cx, &rr.action);
        return None;
    }
    if !identities.iter().any(|i| i.name == rr.identity.value) {
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
    let mut egress = Vec::new();
    for e in &rr.egress {
        if let Some(dns) = &e.value.dns {
            cx.error(
                &dns.referenced,
                "egress by DNS name is not supported yet",
                Some("list the destination CIDRs under `to`; DNS-bound rules come with a later version"),
            );
            continue;
        }
        if e.value.to.is_empty() {
            cx.error(&e.referenced, "egress entry without `to`", Some("e.g. `to: [10.0.0.0/8]`, or `0.0.0.0/0` for any IPv4 destination"));
            continue;
        }
        let mut to = Vec::new();
        for t in &e.value.to {
            match parse_net(&t.value) {
                Ok(n) => to.push(n),
                Err(why) => cx.error(
                    &t.referenced,
                    format!("invalid destination {:?}: {why}", t.value),
                    Some("a CIDR like 10.0.0.0/8 or 2001:db8::/32, or a single address"),
                ),
            }
        }
        let mut ports = Vec::new();
        for p in &e.value.ports {
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
        egress.push(Egress { to, ports, proto, pos: cx.pos(&e.referenced) });
    }
    let path_list = |cx: &mut Ctx<'_>, paths: &[Spanned<String>]| -> Vec<String> {
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
    };
    let mut files = Vec::new();
    for f in &rr.files {
        let paths = path_list(cx, &f.value.paths);
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
        let paths = path_list(cx, &x.value.paths);
        exec.push(PathRuleDef { paths, access: access::EXEC, pos: cx.pos(&x.referenced) });
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Rule {
        name,
        identity: rr.identity.value.clone(),
        action: action?,
        mode,
        when: when.flatten(),
        egress,
        files,
        exec,
        pos: cx.pos(&rr.identity.referenced),
    })
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
        Some(TimeWindow { days, start: start?, end: end? })
    });
    let rego = w.rego.as_ref().and_then(|r| {
        let pos = cx.pos(&r.referenced);
        match super::conditions::check_rego(&r.value) {
            Ok(()) => Some((r.value.clone(), pos)),
            Err(why) => {
                cx.error(&r.referenced, format!("invalid Rego condition: {why}"), None);
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

/// A CIDR or a single address (as /32 or /128); host bits must be zero.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|e| format!("{e}"))?;
    if net.network() != net.addr() {
        return Err(format!("host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

fn parse_port(p: &RawPort) -> Result<(u16, u16), String> {
    let one = |v: u32| u16::try_from(v).map_err(|_| format!("port {v} out of range 0-65535"));
    match p {
        RawPort::One(v) => one(*v).map(|v| (v, v)),
        RawPort::Range(s) => {
            let (a, b) = s.split_once('-').ok_or_else(|| format!("invalid port {s:?}"))?;
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
fn validate_spiffe_id(id: &str, trust_domain: Option<&str>) -> Result<(), String> {
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

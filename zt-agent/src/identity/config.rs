//! The identity file: a `HostPolicy` document with a trust domain and
//! identities with selectors. Parsed with exact `file:line:column` errors.
//!
//! # Layout
//! - [`load_file`] / [`parse`]: YAML text -> validated [`IdentityConfig`].
//! - Raw serde types (`Raw*`) keep `Spanned` positions for validation errors.
//! - [`ConfigError`]: every error carries file, line and column.
//!
//! The document is the seed of the full host policy language (rules and
//! modes come with the host-policy issue): it already uses its framing
//! (`apiVersion`, `kind: HostPolicy`, `metadata`, `spec`), so identity files
//! written today stay valid.
use std::{fmt, path::Path};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::selector::{CgroupGlob, ExeMatcher, Selector};

pub const API_VERSION: &str = "zt-agent.io/v1alpha1";
pub const KIND: &str = "HostPolicy";

/// A validated identity configuration.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub name: String,
    pub trust_domain: String,
    pub identities: Vec<Identity>,
}

/// One workload identity. Its numeric id (what the kernel tables hold) is its
/// position in [`IdentityConfig::identities`] plus one; 0 means "none".
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: u32,
    pub name: String,
    pub spiffe_id: String,
    pub selectors: Vec<Selector>,
}

impl IdentityConfig {
    pub fn by_id(&self, id: u32) -> Option<&Identity> {
        id.checked_sub(1).and_then(|i| self.identities.get(i as usize))
    }

    pub fn by_name(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }
}

/// A position in a source file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax or shape error reported by the YAML deserializer.
    #[error("{pos}: {message}")]
    Syntax { pos: Pos, message: String },
    /// A well-formed document with an invalid value.
    #[error("{pos}: {message}{}", hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Invalid { pos: Pos, message: String, hint: Option<String> },
}

impl ConfigError {
    pub fn pos(&self) -> Option<&Pos> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { pos, .. } | ConfigError::Invalid { pos, .. } => Some(pos),
        }
    }
}

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    trust_domain: Spanned<String>,
    #[serde(default)]
    identities: Vec<RawIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    name: Spanned<String>,
    #[serde(default)]
    spiffe_id: Option<Spanned<String>>,
    selectors: Spanned<Vec<RawSelector>>,
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
}

/// Reads and validates an identity file.
pub fn load_file(path: &Path) -> Result<IdentityConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
    parse(&file, &text)
}

/// Parses and validates identity-file text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<IdentityConfig, ConfigError> {
    let raw: RawDoc = serde_saphyr::from_str(text).map_err(|e| syntax_error(file, &e))?;
    let at = |s: &serde_saphyr::Location| Pos { file: file.to_string(), line: s.line(), column: s.column() };
    let invalid = |loc: &serde_saphyr::Location, message: String, hint: Option<&str>| ConfigError::Invalid {
        pos: at(loc),
        message,
        hint: hint.map(str::to_string),
    };

    if raw.api_version.value != API_VERSION {
        return Err(invalid(
            &raw.api_version.referenced,
            format!("unsupported apiVersion {:?}", raw.api_version.value),
            Some(&format!("use {API_VERSION:?}")),
        ));
    }
    if raw.kind.value != KIND {
        return Err(invalid(&raw.kind.referenced, format!("unsupported kind {:?}", raw.kind.value), Some("use \"HostPolicy\"")));
    }
    let td = &raw.spec.trust_domain;
    if let Err(why) = validate_trust_domain(&td.value) {
        return Err(invalid(&td.referenced, format!("invalid trustDomain {:?}: {why}", td.value), Some("e.g. \"prod.example.com\"")));
    }
    let trust_domain = td.value.clone();

    let mut identities: Vec<Identity> = Vec::new();
    for (index, ri) in raw.spec.identities.iter().enumerate() {
        let name = &ri.name;
        if let Err(why) = validate_name(&name.value) {
            return Err(invalid(&name.referenced, format!("invalid identity name {:?}: {why}", name.value), Some("use letters, digits, '-', '_' and '.'")));
        }
        if identities.iter().any(|i| i.name == name.value) {
            return Err(invalid(&name.referenced, format!("duplicate identity name {:?}", name.value), None));
        }
        let spiffe_id = match &ri.spiffe_id {
            None => format!("spiffe://{trust_domain}/{}", name.value),
            Some(s) => {
                validate_spiffe_id(&s.value, &trust_domain)
                    .map_err(|why| invalid(&s.referenced, format!("invalid spiffeId {:?}: {why}", s.value), None))?;
                s.value.clone()
            }
        };
        if ri.selectors.value.is_empty() {
            return Err(invalid(
                &ri.selectors.referenced,
                format!("identity {:?} has no selectors", name.value),
                Some("add at least one of cgroup, exe, exeDigest, uid, descendantOf"),
            ));
        }
        let selectors = ri
            .selectors
            .value
            .iter()
            .map(|rs| convert_selector(rs, &ri.selectors.referenced, &invalid))
            .collect::<Result<Vec<_>, _>>()?;
        identities.push(Identity { id: index as u32 + 1, name: name.value.clone(), spiffe_id, selectors });
    }
    Ok(IdentityConfig { name: raw.metadata.name.unwrap_or_else(|| "unnamed".into()), trust_domain, identities })
}

fn convert_selector(
    rs: &RawSelector,
    parent: &serde_saphyr::Location,
    invalid: &impl Fn(&serde_saphyr::Location, String, Option<&str>) -> ConfigError,
) -> Result<Selector, ConfigError> {
    let mut sel = Selector::default();
    if let Some(c) = &rs.cgroup {
        sel.cgroup = Some(CgroupGlob::new(&c.value).map_err(|why| invalid(&c.referenced, why, Some("an absolute cgroup v2 path glob, e.g. \"/zt-agents/**\"")))?);
    }
    if let Some(e) = &rs.exe {
        sel.exe = Some(ExeMatcher::new(&e.value).map_err(|why| invalid(&e.referenced, why, None))?);
    }
    if let Some(d) = &rs.exe_digest {
        let hex = d.value.strip_prefix("blake3:").ok_or_else(|| {
            invalid(&d.referenced, format!("invalid exeDigest {:?}", d.value), Some("write \"blake3:<64 hex digits>\" (`b3sum FILE`)"))
        })?;
        let hash = blake3::Hash::from_hex(hex).map_err(|e| invalid(&d.referenced, format!("invalid exeDigest {:?}: {e}", d.value), None))?;
        sel.exe_digest = Some(hash);
    }
    if let Some(u) = &rs.uid {
        sel.uid = Some(u.value);
    }
    if let Some(inner) = &rs.descendant_of {
        let inner_sel = convert_selector(&inner.value, &inner.referenced, invalid)?;
        if inner_sel.descendant_of.is_some() {
            return Err(invalid(&inner.referenced, "descendantOf cannot be nested".into(), None));
        }
        if !sel.is_empty() {
            return Err(invalid(
                &inner.referenced,
                "descendantOf cannot be combined with other keys in one selector".into(),
                Some("write it as a selector of its own"),
            ));
        }
        sel.descendant_of = Some(Box::new(inner_sel));
    }
    if sel.is_empty() {
        return Err(invalid(parent, "empty selector".into(), Some("add at least one of cgroup, exe, exeDigest, uid, descendantOf")));
    }
    Ok(sel)
}

fn syntax_error(file: &str, e: &serde_saphyr::Error) -> ConfigError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    // The crate's Display renders a snippet; keep only the first line of the
    // message so the error is one `file:line:col: message` line.
    let text = e.to_string();
    let message = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML")
        .trim_start_matches("error: ")
        .to_string();
    ConfigError::Syntax { pos: Pos { file: file.to_string(), line, column }, message }
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("contains a character other than letters, digits, '-', '_' or '.'");
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
fn validate_spiffe_id(id: &str, trust_domain: &str) -> Result<(), String> {
    let rest = id.strip_prefix("spiffe://").ok_or("must start with \"spiffe://\"")?;
    let (td, path) = rest.split_once('/').ok_or("needs a path after the trust domain")?;
    if td != trust_domain {
        return Err(format!("trust domain {td:?} differs from spec.trustDomain {trust_domain:?}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: zt-agent.io/v1alpha1
kind: HostPolicy
metadata:
  name: test
spec:
  trustDomain: zt.test
  identities:
    - name: coder
      selectors:
        - cgroup: /zt-agents/**
        - exe: /usr/bin/agent
          uid: 1000
    - name: runner-kids
      spiffeId: spiffe://zt.test/agents/runner
      selectors:
        - descendantOf:
            exe: /usr/bin/runner
";

    #[test]
    fn parses_good_file() {
        let c = parse("good.yaml", GOOD).unwrap();
        assert_eq!(c.trust_domain, "zt.test");
        assert_eq!(c.identities.len(), 2);
        assert_eq!(c.identities[0].id, 1);
        assert_eq!(c.identities[0].spiffe_id, "spiffe://zt.test/coder");
        assert_eq!(c.identities[1].spiffe_id, "spiffe://zt.test/agents/runner");
        assert!(c.identities[1].selectors[0].descendant_of.is_some());
        assert_eq!(c.by_id(2).unwrap().name, "runner-kids");
        assert!(c.by_id(0).is_none() && c.by_id(3).is_none());
    }

    fn err(text: &str) -> String {
        parse("f.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_field_has_position() {
        let e = err(&GOOD.replace("        - exe: /usr/bin/agent", "        - exec: /usr/bin/agent"));
        assert!(e.starts_with("f.yaml:11:"), "{e}");
        assert!(e.contains("exec"), "{e}");
    }

    #[test]
    fn bad_spiffe_id_names_line_and_column() {
        let e = err(&GOOD.replace("spiffe://zt.test/agents/runner", "spiffe://other/agents/runner"));
        assert_eq!(
            e,
            "f.yaml:14:17: invalid spiffeId \"spiffe://other/agents/runner\": trust domain \"other\" differs from spec.trustDomain \"zt.test\""
        );
    }

    #[test]
    fn duplicate_name() {
        let e = err(&GOOD.replace("name: runner-kids", "name: coder"));
        assert_eq!(e, "f.yaml:13:13: duplicate identity name \"coder\"");
    }

    #[test]
    fn bad_digest_has_hint() {
        let e = err(&GOOD.replace("uid: 1000", "exeDigest: sha256:00"));
        assert_eq!(
            e,
            "f.yaml:12:22: invalid exeDigest \"sha256:00\" (hint: write \"blake3:<64 hex digits>\" (`b3sum FILE`))"
        );
    }

    #[test]
    fn relative_cgroup_rejected() {
        let e = err(&GOOD.replace("cgroup: /zt-agents/**", "cgroup: zt-agents"));
        assert!(e.starts_with("f.yaml:10:19: "), "{e}");
    }

    #[test]
    fn bad_yaml_syntax_has_position() {
        let e = err("apiVersion: [\n");
        assert!(e.starts_with("f.yaml:"), "{e}");
        let pos = parse("f.yaml", "apiVersion: [\n").unwrap_err();
        assert!(pos.pos().unwrap().line >= 1);
    }

    #[test]
    fn wrong_kind() {
        let e = err(&GOOD.replace("kind: HostPolicy", "kind: Pod"));
        assert_eq!(e, "f.yaml:2:7: unsupported kind \"Pod\" (hint: use \"HostPolicy\")");
    }

    #[test]
    fn shipped_default_parses() {
        let c = parse("default.yaml", crate::identity::DEFAULT_POLICY).unwrap();
        assert!(!c.identities.is_empty());
    }
}

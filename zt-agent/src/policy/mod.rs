//! Host policy: the language, its compilation to kernel maps, and the tools
//! around it. Everything here is plain Rust, testable without root.
//!
//! # Layout
//! - [`model`]: what a validated bundle is ([`Policy`], [`Diagnostic`]).
//! - [`raw`]: the YAML's serde shapes, with positions.
//! - [`parse`]: YAML files -> validated, composed [`Policy`] (errors with
//!   `file:line:col`).
//! - [`lint`]: warnings (shadowed, redundant, overly broad, unmatchable).
//! - [`conditions`]: time windows and Rego conditions -> active rules.
//! - [`compile`]: [`Policy`] -> map entries (pure, byte-for-byte tested).
//! - [`Bundle`]: the files of one policy version, with their blake3 digest;
//!   [`Bundle::parse`] = parse + lint.
//! - [`explain`]: `explain` and `diff`, computed from the compiled form with
//!   the kernel's own decision functions from zt-common.
//! - [`target`]: where compiled policies go (the kernel's double-buffered
//!   tables, as a trait).
//! - [`rulebook`]: rule names by policy generation, for events.
//! - [`store`]: history of applied bundles (persisted) for history/rollback.
//! - [`unix`]: Unix-socket destinations: parsing, kernel keys, lookup.
//! - [`objects`]: file and exec rule paths resolved to the file system
//!   objects the kernel matches, and the same walk for `explain`.
//! - [`protect`]: the agent's self-protection rules, added to every policy.
pub mod compile;
pub mod conditions;
pub mod explain;
pub mod lint;
pub mod model;
pub mod objects;
pub mod parse;
pub mod protect;
mod raw;
pub mod rulebook;
pub mod store;
pub mod target;
#[cfg(test)]
mod tests;
pub mod unix;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use compile::{CompileError, Compiled, IdRegistry, RuleInfo};
pub use explain::{Explanation, Query, diff, explain};
pub use model::{Diagnostic, Policy, PolicyErrors};
pub use rulebook::RuleBook;

use crate::identity::{Identity, IdentityConfig};

/// The policy compiled into the binary, used when no `--policy` is given.
pub const DEFAULT_POLICY: &str = include_str!("../../../policies/default.yaml");

/// Largest policy file read (a policy is text a person writes; the largest
/// shipped one is a few KiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// Largest bundle (all files of one policy version together).
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;

/// Reads one policy file: a regular file (decided by `stat` before opening,
/// so a FIFO or a device never blocks or streams forever; checked again on
/// the open descriptor, which is opened non-blocking), of at most
/// [`MAX_FILE_BYTES`] and at most `room` bytes. The error says which rule
/// or limit was hit.
fn read_policy_file(path: &Path, room: u64) -> Result<String, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let kind = |m: &std::fs::Metadata| {
        use std::os::unix::fs::FileTypeExt as _;
        let t = m.file_type();
        match () {
            _ if t.is_file() => None,
            _ if t.is_fifo() => Some("a FIFO"),
            _ if t.is_char_device() => Some("a character device"),
            _ if t.is_block_device() => Some("a block device"),
            _ if t.is_socket() => Some("a socket"),
            _ if t.is_dir() => Some("a directory"),
            _ => Some("not a regular file"),
        }
    };
    let not_regular = |what: &str| format!("cannot read: {what}; policy files must be regular files");
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if let Some(what) = kind(&meta) {
        return Err(not_regular(what));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    // The path may have been swapped between stat and open.
    if let Some(what) = kind(&file.metadata().map_err(|e| format!("cannot read: {e}"))?) {
        return Err(not_regular(what));
    }
    let limit = MAX_FILE_BYTES.min(room);
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(if limit == MAX_FILE_BYTES {
            format!("larger than the {} MiB limit for one policy file", MAX_FILE_BYTES >> 20)
        } else {
            format!("the bundle's files together exceed the {} MiB limit", MAX_BUNDLE_BYTES >> 20)
        });
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// The policy files of a directory (a Kubernetes ConfigMap mount), in name
/// order: every entry named `*.yaml`/`*.yml` in any letter case, except
/// hidden ones (the ConfigMap's `..data` machinery). Entries are not
/// filtered by type here: a broken or looping symlink or a FIFO among them
/// is reported by [`read_policy_file`], exactly as when named directly.
fn policy_files_in(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x.eq_ignore_ascii_case("yaml") || x.eq_ignore_ascii_case("yml")))
        .filter(|f| !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|f| !f.symlink_metadata().is_ok_and(|m| m.is_dir()))
        .collect();
    v.sort();
    Ok(v)
}

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
        let mut total = 0u64;
        let whole_file = |p: &Path, message: String| Diagnostic {
            pos: model::Pos { file: p.display().to_string().into(), line: 0, column: 0 },
            message,
            hint: None,
        };
        for p in paths {
            let p = p.as_ref();
            let list: Vec<std::path::PathBuf> = if p.is_dir() {
                match policy_files_in(p) {
                    Ok(v) if v.is_empty() => {
                        errors.push(whole_file(p, "no policy files in this directory (*.yaml or *.yml)".into()));
                        continue;
                    }
                    Ok(v) => v,
                    Err(e) => {
                        errors.push(whole_file(p, format!("cannot read: {e}")));
                        continue;
                    }
                }
            } else {
                vec![p.to_path_buf()]
            };
            for f in list {
                match read_policy_file(&f, MAX_BUNDLE_BYTES.saturating_sub(total)) {
                    Ok(t) => {
                        total += t.len() as u64;
                        files.push((f.display().to_string(), t));
                    }
                    Err(message) => errors.push(whole_file(&f, message)),
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

    /// Parses and validates every file into one policy, with lint warnings.
    pub fn parse(&self) -> Result<Policy, PolicyErrors> {
        let sources: Vec<parse::Source<'_>> = self.files.iter().map(|(n, t)| parse::Source { name: n, text: t }).collect();
        let mut policy = parse::parse_sources(&sources)?;
        lint::lint(&mut policy);
        Ok(policy)
    }
}

/// The identities of policy text alone (tests and tools), ids in file order.
pub fn identities_from_text(file: &str, text: &str) -> Result<IdentityConfig, PolicyErrors> {
    let policy = Bundle { files: vec![(file.to_string(), text.to_string())] }.parse()?;
    let ids = IdRegistry::for_policy(&policy).map_err(|e| {
        PolicyErrors(vec![Diagnostic { pos: model::Pos { file: file.into(), line: 0, column: 0 }, message: e.to_string(), hint: None }])
    })?;
    Ok(identity_config(&policy, &ids))
}

/// Quarantine (an anomaly response, or `zt-agent identity quarantine`):
/// each named identity's egress becomes deny-all, enforced whatever its
/// mode: its rules keep their file and exec parts (audited ones stay
/// audited) and lose their egress destinations (network and Unix
/// sockets), and its default egress is deny. An identity in audit mode is
/// switched to enforce, so a `deny` default for files or exec is enforced
/// too while it is quarantined. Names the policy does not define are ignored.
pub fn quarantine(policy: &mut Policy, names: &std::collections::BTreeSet<String>) {
    for ident in policy.identities.iter_mut().filter(|i| names.contains(&i.name)) {
        for rule in policy.rules.iter_mut().filter(|r| *r.identity == *ident.name) {
            rule.egress.clear();
            if ident.mode == model::Mode::Audit {
                rule.mode = Some(model::Mode::Audit);
            }
        }
        ident.defaults.egress = model::Action::Deny;
        ident.mode = model::Mode::Enforce;
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
                anomaly: i.anomaly,
            })
            .collect(),
    }
}

impl IdRegistry {
    /// The name of an id, for display.
    pub fn ids_by_value(&self, id: u32) -> String {
        self.names().find(|(_, v)| *v == id).map(|(n, _)| n.to_string()).unwrap_or_else(|| format!("#{id}"))
    }
}

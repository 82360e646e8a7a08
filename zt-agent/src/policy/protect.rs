//! Self-protection: rules no policy file writes, added to every policy the
//! agent applies. Every identity is denied writing, creating and deleting
//! in the agent's own files and directories (state, audit log, pins,
//! config, policy files, its binary), reading its signing keys, and
//! connecting to its control socket. They go through the same compilation
//! and the same enforcement path as any file or Unix-socket rule (BPF LSM
//! where it loads, else the fanotify fallback: opens only; see
//! `policies/README.md`), and are named [`RULE`] in events. An identity in
//! audit mode is audited by them like by its own rules.
use std::{path::Path, sync::Arc};

use super::model::{Action, Egress, PathRuleDef, Policy, Pos, Proto, Rule, UnixName, access};

/// The rules' name, with the identity's after it (`:` is not allowed in
/// the names of a policy file's rules, so it never collides).
pub const RULE: &str = "zt-agent:self-protection";

/// What the agent protects from its identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    /// Written, created in or deleted by no identity (directories end in `/`).
    pub write: Vec<String>,
    /// Not read either (signing and TLS keys).
    pub read: Vec<String>,
    /// Unix sockets no identity may connect to.
    pub sockets: Vec<String>,
}

impl Protected {
    /// Adds `path` to `write` (or `read`), as a directory rule when it is one;
    /// a path that does not exist (yet) is skipped: a rule naming nothing
    /// would only warn at every apply.
    pub fn add(&mut self, path: &Path, read_too: bool) {
        let Ok(meta) = std::fs::metadata(path) else { return };
        let mut p = path.to_string_lossy().into_owned();
        if meta.is_dir() && !p.ends_with('/') {
            p.push('/');
        }
        let list = if read_too { &mut self.read } else { &mut self.write };
        if !list.contains(&p) {
            list.push(p);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.read.is_empty() && self.sockets.is_empty()
    }
}

/// Adds one deny rule per identity of `policy` for `what`.
pub fn protect(policy: &mut Policy, what: &Protected) {
    if what.is_empty() {
        return;
    }
    let pos = Pos { file: Arc::from("<self-protection>"), line: 0, column: 0 };
    let modify = access::WRITE | access::CREATE | access::DELETE;
    let mut files = Vec::new();
    if !what.write.is_empty() {
        files.push(PathRuleDef { paths: what.write.clone(), access: modify, pos: pos.clone() });
    }
    if !what.read.is_empty() {
        files.push(PathRuleDef { paths: what.read.clone(), access: modify | access::READ, pos: pos.clone() });
    }
    let egress = match what.sockets.is_empty() {
        true => vec![],
        false => vec![Egress {
            to: vec![],
            unix: what.sockets.iter().map(|s| UnixName::Path(s.clone())).collect(),
            ports: vec![],
            proto: Proto::Any,
            pos: pos.clone(),
        }],
    };
    let rules: Vec<Rule> = policy
        .identities
        .iter()
        .map(|i| Rule {
            name: format!("{RULE}:{}", i.name),
            identity: Arc::from(i.name.as_str()),
            action: Action::Deny,
            mode: None,
            when: None,
            egress: egress.clone(),
            files: files.clone(),
            exec: vec![],
            pos: pos.clone(),
        })
        .collect();
    policy.rules.extend(rules);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Bundle, IdRegistry, compile};

    #[test]
    fn every_identity_gets_the_rules_and_they_compile() {
        let text = "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata:\n  name: t\nspec:\n  trustDomain: zt.test\n  identities:\n    \
                    - name: a\n      selectors:\n        - uid: 1000\n    - name: b\n      selectors:\n        - uid: 1001\n";
        let mut policy = Bundle { files: vec![("p.yaml".into(), text.into())] }.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("audit.key");
        std::fs::write(&key, "k").unwrap();
        let mut what = Protected::default();
        what.add(dir.path(), false);
        what.add(dir.path(), false);
        what.add(&key, true);
        what.add(&dir.path().join("missing"), false);
        what.sockets.push("/run/zt-agent/control.sock".into());
        assert_eq!(what.write, vec![format!("{}/", dir.path().display())], "directories end in '/', once, missing paths skipped");
        assert_eq!(what.read, vec![key.display().to_string()]);
        protect(&mut policy, &what);
        let added: Vec<&Rule> = policy.rules.iter().filter(|r| r.name.starts_with(RULE)).collect();
        assert_eq!(added.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["zt-agent:self-protection:a", "zt-agent:self-protection:b"]);
        let r = added[0];
        assert_eq!(r.action, Action::Deny);
        assert_eq!(r.files[0].access, access::WRITE | access::CREATE | access::DELETE);
        assert_eq!(r.files[1].access, access::READ | access::WRITE | access::CREATE | access::DELETE);
        assert_eq!(r.egress[0].unix, vec![UnixName::Path("/run/zt-agent/control.sock".into())]);
        let ids = IdRegistry::for_policy(&policy).unwrap();
        let active = vec![true; policy.rules.len()];
        let compiled = compile::compile(&policy, &ids, 0, &active).unwrap();
        assert!(compiled.rules.iter().any(|r| r.name == "zt-agent:self-protection:b"), "{:?}", compiled.rules);

        let before = policy.rules.len();
        protect(&mut policy, &Protected::default());
        assert_eq!(policy.rules.len(), before, "nothing to protect: no rule");
    }
}

//! The file policy the fanotify responder decides with: the compiled
//! policy's `FILE_RULES` entries and identity defaults in hash maps, and
//! the objects its deny rules name (what gets marked). Pure, so it is tested
//! without root; the folding is zt-common's [`Matched`], the kernel's.
use std::collections::{BTreeMap, HashMap};

use zt_common::{
    path_policy::{Matched, ObjectRules},
    policy::{DENY, ENFORCE, IdentityPolicy, RULE_NO_POLICY, Verdict},
};

use crate::policy::{Compiled, objects::ObjectId};

/// A rule path whose object must be watched: a deny rule (enforced or
/// audited) names it. `below`: a directory rule (everything under it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watch {
    pub path: String,
    pub below: bool,
}

/// One policy generation's file rules, as the responder looks them up.
#[derive(Debug, Default)]
pub struct FilePolicy {
    pub generation: u32,
    identities: HashMap<u32, IdentityPolicy>,
    objects: HashMap<(u32, ObjectId), ObjectRules>,
    /// Sorted, deduplicated.
    pub watches: Vec<Watch>,
}

impl FilePolicy {
    pub fn new(c: &Compiled, generation: u32) -> FilePolicy {
        let identities = c.identities.iter().map(|(k, p)| (k.identity, *p)).collect();
        let objects = c.objects.iter().map(|(k, r)| ((k.identity, (k.dev, k.ino)), *r)).collect();
        let mut watches: BTreeMap<String, bool> = BTreeMap::new();
        for p in c.paths.iter().filter(|p| p.action == DENY) {
            let path = String::from_utf8_lossy(&p.path[..p.len as usize]).into_owned();
            if c.resolution.get(&path).is_some_and(Option::is_some) {
                *watches.entry(path).or_default() |= p.prefix == 1;
            }
        }
        let watches = watches.into_iter().map(|(path, below)| Watch { path, below }).collect();
        FilePolicy { generation, identities, objects, watches }
    }

    /// Whether `identity` has file rules for any of `access` or a default
    /// other than allow: an identity without either is allowed everything
    /// without a walk.
    pub fn concerns(&self, identity: u32, access: u8) -> bool {
        match self.identities.get(&identity) {
            Some(p) => p.file_rules & access != 0 || p.default_files == DENY,
            None => true,
        }
    }

    /// Whether `identity`'s files default to deny (then the kernel's
    /// `open_exit` reports its allowed opens; the responder only denials).
    pub fn default_deny(&self, identity: u32) -> bool {
        self.identities.get(&identity).is_some_and(|p| p.default_files == DENY)
    }

    /// The decision for `access` by `identity` to the object `chain[0]`,
    /// whose directories up to the root are `chain[1..]` (`complete`: the
    /// chain reached the root). An identity the policy does not define is
    /// denied (fail closed, as in the kernel).
    pub fn decide(&self, identity: u32, chain: &[ObjectId], complete: bool, access: u8) -> Verdict {
        let Some(pol) = self.identities.get(&identity) else {
            return Verdict::new(DENY, ENFORCE, RULE_NO_POLICY);
        };
        let mut m = Matched::default();
        for (i, obj) in chain.iter().enumerate() {
            if let Some(rules) = self.objects.get(&(identity, *obj)) {
                m.add(rules, access, i == 0);
            }
        }
        m.verdict(pol, access, complete)
    }
}

#[cfg(test)]
mod tests {
    use zt_common::{
        path_policy::{READ, RULE_TOO_DEEP, WRITE},
        policy::{ALLOW, AUDIT, RULE_DEFAULT},
    };

    use super::*;
    use crate::policy::{IdRegistry, compile::compile, objects};

    /// `/srv` (dir), `/srv/secret` (dir), `/srv/secret/key`, `/etc/hosts`:
    /// objects (1, 10..13); anything else names nothing.
    struct Fake;
    impl objects::Lookup for Fake {
        fn object(&self, path: &str) -> std::io::Result<(u32, u64)> {
            match path.trim_end_matches('/') {
                "/srv" => Ok((1, 10)),
                "/srv/secret" => Ok((1, 11)),
                "/srv/secret/key" => Ok((1, 12)),
                "/etc/hosts" => Ok((1, 13)),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
    }

    fn compiled(rules: &str) -> FilePolicy {
        let text = format!(
            "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nmetadata:\n  name: t\nspec:\n  trustDomain: t.example\n  identities:\n    - name: a\n      selectors:\n        - cgroup: /a\n    - name: b\n      selectors:\n        - cgroup: /b\n  rules:\n{rules}"
        );
        let bundle = crate::policy::Bundle { files: vec![("t.yaml".into(), text)] };
        let policy = bundle.parse().expect("valid policy");
        let ids = IdRegistry::for_policy(&policy).unwrap();
        let mut c = compile(&policy, &ids, 0, &vec![true; policy.rules.len()]).unwrap();
        objects::resolve(&mut c, &policy, &Fake).unwrap();
        FilePolicy::new(&c, 7)
    }

    const KEY: [ObjectId; 3] = [(1, 12), (1, 11), (1, 10)];

    #[test]
    fn deny_rules_are_watched_and_decide_by_object_and_directories() {
        let p = compiled(
            "    - name: no-secret\n      identity: a\n      action: deny\n      files:\n        - paths: [/srv/secret/]\n          access: [read]\n    - name: hosts-ro\n      identity: a\n      action: deny\n      mode: audit\n      files:\n        - paths: [/etc/hosts]\n          access: [write]\n    - name: srv-ok\n      identity: b\n      action: allow\n      files:\n        - paths: [/srv/]\n          access: [read]\n    - name: gone\n      identity: b\n      action: deny\n      files:\n        - paths: [/nowhere/]\n          access: [read]\n",
        );
        // Allow rules and paths that name nothing are not watched.
        assert_eq!(p.watches, vec![Watch { path: "/etc/hosts".into(), below: false }, Watch { path: "/srv/secret/".into(), below: true }]);
        let a = 1; // identity ids are assigned in order of definition
        let v = p.decide(a, &KEY, true, READ as u8);
        assert_eq!((v.action, v.rule), (DENY, 0), "the directory rule reaches the file below");
        assert_eq!(p.decide(a, &KEY[1..], true, READ as u8).action, DENY, "and the directory itself");
        assert_eq!(p.decide(a, &KEY[2..], true, READ as u8), Verdict::new(ALLOW, ENFORCE, RULE_DEFAULT), "not the one above");
        assert_eq!(p.decide(a, &KEY, true, WRITE as u8).action, ALLOW, "a read rule does not deny writes");
        let hosts = p.decide(a, &[(1, 13)], true, (READ | WRITE) as u8);
        assert_eq!((hosts.action, hosts.decided, hosts.mode, hosts.rule), (ALLOW, DENY, AUDIT, 1), "audited: a would-deny");
        assert!(p.concerns(a, READ as u8) && !p.concerns(a, 16), "a has file rules for read, none for exec");
        // An incomplete walk denies what the identity has rules for.
        assert_eq!(p.decide(a, &[(9, 9)], false, READ as u8).rule, RULE_TOO_DEEP);
        assert_eq!(p.decide(a, &[(9, 9)], false, WRITE as u8).rule, RULE_TOO_DEEP, "write: the audited hosts rule");
        // An identity the policy does not define: fail closed.
        assert_eq!(p.decide(99, &KEY, true, READ as u8), Verdict::new(DENY, ENFORCE, RULE_NO_POLICY));
        assert!(p.concerns(99, READ as u8));
        assert_eq!(p.generation, 7);
    }
}

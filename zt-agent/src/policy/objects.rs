//! File and exec rules resolved to the file system objects the kernel
//! matches (`FILE_RULES`): each rule path is looked up on this host (`stat`,
//! following symlinks) and its rules are keyed by the object's device and
//! inode. Pure given the lookup function, so it is tested with a fake one.
//!
//! - [`resolve`]: [`Compiled::paths`] -> [`Compiled::objects`], the
//!   identities' `file_rules` bits and [`Compiled::unresolved`].
//! - [`changed`]: whether a rule path names another object now than at
//!   resolution (created, removed, replaced by a new inode): then the
//!   policy is compiled again (the manager checks every 2 s).
//! - [`HostLookup`]: the real lookup (`std::fs::metadata`).
//! - [`walk`]: the decision for an existing path on this host, walking up
//!   its directories as the kernel walks `d_parent` (`policy explain`).
use std::{collections::BTreeMap, io, path::Path};

use zt_common::{
    path_policy::{Matched, OBJECT_RULES, ObjectKey, ObjectRule, ObjectRules, SCOPE_BELOW, SCOPE_SELF},
    policy::{IdentityPolicy, Verdict},
};

use super::{CompileError, Compiled, model::Policy};

/// A rule path that names no object on this host (yet): it matches
/// nothing until a later resolution finds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unresolved {
    pub rule: String,
    pub path: String,
    pub reason: String,
}

/// An object on this host: `(device in the kernel's encoding, inode)`.
pub type ObjectId = (u32, u64);

/// Each distinct rule path and the object it named when resolved (`None`:
/// nothing), sorted by path.
pub type Resolution = BTreeMap<String, Option<ObjectId>>;

/// The first rule path of `then` that names another object through
/// `lookup` now, with what it named then and now.
pub fn changed(then: &Resolution, lookup: &dyn Lookup) -> Option<(String, Option<ObjectId>, Option<ObjectId>)> {
    then.iter().find_map(|(path, was)| {
        let now = lookup.object(path).ok();
        (now != *was).then(|| (path.clone(), *was, now))
    })
}

/// The object a path names: `(device in the kernel's encoding, inode)`.
pub trait Lookup {
    fn object(&self, path: &str) -> io::Result<(u32, u64)>;
}

/// `stat` on this host (symlinks followed, as the kernel sees the object
/// an open of the path reaches).
pub struct HostLookup;

impl Lookup for HostLookup {
    fn object(&self, path: &str) -> io::Result<(u32, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((crate::host::kernel_dev(m.dev()), m.ino()))
    }
}

/// Resolves the path rules of `c` into `FILE_RULES` entries: rules of one
/// identity on one object share an entry (directory rules with
/// [`SCOPE_SELF`] | [`SCOPE_BELOW`], file rules with [`SCOPE_SELF`]); each
/// identity's `file_rules` gets the access bits of its resolved rules.
pub fn resolve(c: &mut Compiled, policy: &Policy, lookup: &dyn Lookup) -> Result<(), CompileError> {
    let mut by_object: BTreeMap<ObjectKey, Vec<ObjectRule>> = BTreeMap::new();
    let mut names: BTreeMap<ObjectKey, String> = BTreeMap::new();
    c.unresolved.clear();
    c.resolution.clear();
    for p in &c.paths {
        let path = String::from_utf8_lossy(&p.path[..p.len as usize]).into_owned();
        let found = lookup.object(&path);
        c.resolution.insert(path.clone(), found.as_ref().ok().copied());
        let (dev, ino) = match found {
            Ok(o) => o,
            Err(e) => {
                let rule = c.rules.get(p.rule as usize).map(|r| r.name.clone()).unwrap_or_default();
                c.unresolved.push(Unresolved { rule, path, reason: e.to_string() });
                continue;
            }
        };
        let key = ObjectKey { slot: c.slot, identity: p.identity, ino, dev, _pad: 0 };
        let scope = if p.prefix == 1 { SCOPE_SELF | SCOPE_BELOW } else { SCOPE_SELF };
        let r = ObjectRule { rule: p.rule, access: p.access as u8, action: p.action, mode: p.mode, scope };
        let list = by_object.entry(key).or_default();
        if !list.contains(&r) {
            list.push(r);
        }
        names.entry(key).or_insert(path);
    }
    let mut objects = Vec::with_capacity(by_object.len());
    for (key, mut list) in by_object {
        list.sort();
        if list.len() > OBJECT_RULES {
            let first_beyond = list[OBJECT_RULES].rule as usize;
            return Err(CompileError::ObjectRules {
                at: policy.rules[first_beyond].pos.clone(),
                identity: policy.rules[first_beyond].identity.to_string(),
                path: names.remove(&key).unwrap_or_default(),
                count: list.len(),
                capacity: OBJECT_RULES,
            });
        }
        let mut entry = ObjectRules { count: list.len() as u32, ..Default::default() };
        entry.rules[..list.len()].copy_from_slice(&list);
        for (k, pol) in c.identities.iter_mut().filter(|(k, _)| k.identity == key.identity) {
            debug_assert_eq!(k.slot, key.slot);
            pol.file_rules |= list.iter().fold(0, |a, r| a | r.access);
        }
        objects.push((key, entry));
    }
    let capacity = (zt_common::maps::FILE_RULES_CAPACITY / 2) as usize;
    if objects.len() > capacity {
        return Err(CompileError::FileObjects { count: objects.len(), capacity });
    }
    c.objects = objects;
    Ok(())
}

/// The decision for `access` to the object at `path` on this host, walking
/// up its directories (`..` of each, as the kernel follows `d_parent`) to
/// the root: what the kernel decides for the same object. A path that does
/// not exist yet is decided at its nearest existing directory (as a
/// creation inside it is).
pub fn walk(c: &Compiled, policy: &IdentityPolicy, identity: u32, lookup: &dyn Lookup, path: &Path, access: u8) -> Verdict {
    let path = canonical(path);
    let mut m = Matched::default();
    let mut is_self = true;
    let mut at = Some(path.as_path());
    while let Some(p) = at {
        if let Ok((dev, ino)) = lookup.object(&p.to_string_lossy()) {
            let key = ObjectKey { slot: c.slot, identity, ino, dev, _pad: 0 };
            if let Some((_, rules)) = c.objects.iter().find(|(k, _)| *k == key) {
                m.add(rules, access, is_self);
            }
        }
        is_self = false;
        at = p.parent();
    }
    m.verdict(policy, access, true)
}

/// `path` with symlinks and `..` resolved as far as it exists (the rest
/// appended as named): the directories the kernel walks up from the object.
fn canonical(path: &Path) -> std::path::PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

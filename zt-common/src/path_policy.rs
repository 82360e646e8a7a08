//! File and exec rules, compiled for the file/exec enforcement issue (the
//! programs that load them come with it); `zt-agent policy explain --open /
//! --exec` decides with [`decide_path`] over these entries today.

use crate::policy::{RULE_DEFAULT, Verdict};

pub const PATH_LEN: usize = 256;
pub const READ: u32 = 1;
pub const WRITE: u32 = 2;
pub const CREATE: u32 = 4;
pub const DELETE: u32 = 8;
pub const EXEC: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRule {
    pub identity: u32,
    pub rule: u32,
    /// Access bits the rule covers.
    pub access: u32,
    pub action: u8,
    pub mode: u8,
    /// 1: `path` is a directory prefix (ends with '/'); 0: exact file.
    pub prefix: u8,
    pub _pad: u8,
    pub len: u32,
    pub path: [u8; PATH_LEN],
}
const _: () = assert!(size_of::<PathRule>() == 16 + 4 + PATH_LEN);

impl PathRule {
    #[inline(always)]
    pub fn matches(&self, path: &[u8]) -> bool {
        let len = self.len as usize;
        if len > PATH_LEN || path.len() < len {
            return false;
        }
        let same = self.path[..len] == path[..len];
        if self.prefix == 1 { same } else { same && path.len() == len }
    }
}

/// Deny wins among matching rules covering `access`; then allow; then
/// the identity's default (exec default for `EXEC`, else files default).
pub fn decide_path<'a>(
    policy: &crate::policy::IdentityPolicy,
    rules: impl Iterator<Item = &'a PathRule>,
    identity: u32,
    path: &[u8],
    access: u32,
) -> Verdict {
    let mut allow: Option<&PathRule> = None;
    for r in rules {
        if r.identity != identity || r.access & access == 0 || !r.matches(path) {
            continue;
        }
        if r.action == crate::policy::DENY {
            return Verdict::new(crate::policy::DENY, r.mode, r.rule);
        }
        allow.get_or_insert(r);
    }
    match allow {
        Some(r) => Verdict::new(crate::policy::ALLOW, r.mode, r.rule),
        None => {
            let d = if access & EXEC != 0 { policy.default_exec } else { policy.default_files };
            Verdict::new(d, policy.mode, RULE_DEFAULT)
        }
    }
}

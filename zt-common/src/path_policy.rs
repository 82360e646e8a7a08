//! File and exec rules: [`PathRule`], a rule path as the policy compiles
//! it (by name), and what the kernel matches, the rules of each file system
//! object a rule path resolves to ([`ObjectKey`] -> [`ObjectRules`], in
//! `FILE_RULES`), decided by [`Matched`] on a walk from the object up its
//! directories.

use crate::policy::{ALLOW, AUDIT, DENY, ENFORCE, IdentityPolicy, RULE_DEFAULT, Verdict};

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

/// Rule scopes ([`ObjectRule::scope`]): the object a rule path names
/// itself, and (directory rules) everything below it.
pub const SCOPE_SELF: u8 = 1;
pub const SCOPE_BELOW: u8 = 2;

/// Rules kept per object (per identity).
pub const OBJECT_RULES: usize = 8;
/// Directory levels the kernel walks up from an object (crossing mount
/// points counts one level each). An object deeper than that, for an access
/// the identity has rules for, is denied: an unfinished walk may have
/// missed a deny rule above it.
pub const MAX_DEPTH: u32 = 48;
/// `Verdict::rule` when the walk up an object's directories did not reach
/// the root within [`MAX_DEPTH`] (fail closed).
pub const RULE_TOO_DEEP: u32 = u32::MAX - 3;

/// `FILE_RULES` key: a file system object (device in the kernel's `dev_t`
/// encoding, `major << 20 | minor`, and inode number) as one identity's
/// rules in one policy slot name it. Rules are matched by object, not by
/// name: a symlink, a hard link, a bind mount, a chroot or a `..` reaches
/// the same inode, and walking `d_parent` from it reaches the same
/// directories.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub slot: u32,
    pub identity: u32,
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ObjectKey>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRule {
    /// Index of the rule in the compiled bundle.
    pub rule: u32,
    /// Access bits the rule covers.
    pub access: u8,
    pub action: u8,
    /// Effective mode (the identity's audit mode folded in).
    pub mode: u8,
    /// [`SCOPE_SELF`] and/or [`SCOPE_BELOW`].
    pub scope: u8,
}
const _: () = assert!(size_of::<ObjectRule>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObjectRules {
    pub count: u32,
    pub _pad: u32,
    pub rules: [ObjectRule; OBJECT_RULES],
}
const _: () = assert!(size_of::<ObjectRules>() == 8 + 8 * OBJECT_RULES);

/// The rules met on the walk from an object up to the root, folded as they
/// are met: an enforced deny beats an audited deny, which beats an allow;
/// among equals the first met (the nearest) decides. The kernel programs
/// and `zt-agent policy explain` both decide with this.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    deny: Option<ObjectRule>,
    allow: Option<ObjectRule>,
    /// Requested access bits some allow rule covers.
    allowed: u8,
}

impl Matched {
    /// Folds in the rules of one object on the walk: the object itself
    /// (`is_self`: rules of either scope apply) or one of its directories
    /// (only [`SCOPE_BELOW`] rules apply).
    #[inline(always)]
    pub fn add(&mut self, rules: &ObjectRules, access: u8, is_self: bool) {
        let scope = if is_self { SCOPE_SELF | SCOPE_BELOW } else { SCOPE_BELOW };
        let mut i = 0;
        while i < OBJECT_RULES {
            if i as u32 >= rules.count {
                break;
            }
            let r = rules.rules[i];
            if r.access & access != 0 && r.scope & scope != 0 {
                if r.action == DENY {
                    let stronger = match self.deny {
                        None => true,
                        Some(d) => d.mode == AUDIT && r.mode == ENFORCE,
                    };
                    if stronger {
                        self.deny = Some(r);
                    }
                } else {
                    if self.allow.is_none() {
                        self.allow = Some(r);
                    }
                    self.allowed |= r.access & access;
                }
            }
            i += 1;
        }
    }

    /// The decision for the requested `access` bits (each decided on its
    /// own: a deny of any bit denies): the strongest deny met; else allow
    /// when allow rules cover every bit, or cover some and the identity's
    /// default (the exec default for [`EXEC`], else the files default)
    /// allows the rest; else the default. `complete`: the walk reached the
    /// root; if not, an access the identity has rules for is denied
    /// ([`RULE_TOO_DEEP`]).
    #[inline(always)]
    pub fn verdict(&self, policy: &IdentityPolicy, access: u8, complete: bool) -> Verdict {
        if let Some(r) = self.deny {
            return Verdict::new(DENY, r.mode, r.rule);
        }
        if !complete && policy.file_rules & access != 0 {
            return Verdict::new(DENY, policy.mode, RULE_TOO_DEEP);
        }
        let default = if access as u32 & EXEC != 0 { policy.default_exec } else { policy.default_files };
        match self.allow {
            Some(r) if self.allowed == access || default == ALLOW => Verdict::new(ALLOW, r.mode, r.rule),
            _ => Verdict::new(default, policy.mode, RULE_DEFAULT),
        }
    }
}

/// What was done to a file ([`FileEvent::op`]), and the hooks that see it.
pub mod file_op {
    pub const OPEN: u8 = 1;
    pub const EXEC: u8 = 2;
    pub const UNLINK: u8 = 3;
    pub const RMDIR: u8 = 4;
    /// The source of a rename (the destination is a `CREATE`).
    pub const RENAME: u8 = 5;
    pub const TRUNCATE: u8 = 6;
    /// The target of a hard link (the new name is a `CREATE`).
    pub const LINK: u8 = 7;
    pub const MKDIR: u8 = 8;
    pub const MKNOD: u8 = 9;
    pub const SYMLINK: u8 = 10;
    pub const NAMES: [&str; 11] = ["", "open", "exec", "unlink", "rmdir", "rename", "truncate", "link", "mkdir", "mknod", "symlink"];
}

/// How a file decision was carried out ([`FileEvent::enforcement`]).
pub mod enforcement {
    /// A BPF LSM hook refused the call (EPERM) before it happened.
    pub const LSM: u8 = 1;
    /// `sched_process_exec`: the exec happened; the process was killed
    /// (SIGKILL) before it ran an instruction of the new image.
    pub const EXEC_KILL: u8 = 2;
    /// The daemon answered a fanotify permission event (EPERM before the
    /// open returned); set by user space, never by a program.
    pub const FANOTIFY: u8 = 3;
    /// At the open syscall's return (an identity whose files default to
    /// deny, without BPF LSM): the open happened; the process was killed
    /// (SIGKILL) before it returned to user space.
    pub const OPEN_KILL: u8 = 4;
    pub const NAMES: [&str; 5] = ["", "lsm", "exec_kill", "fanotify", "open_kill"];
}

/// Bytes of the resolved path a [`FileEvent`] carries (its tail when longer).
pub const FILE_PATH_LEN: usize = 512;

/// A file access of an agent identity that a rule names or that was
/// denied (or would be, in audit mode), at most one per
/// [`FileAggKey`] per [`crate::policy::AGG_WINDOW_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub header: crate::EventHeader,
    pub verdict: Verdict,
    pub generation: u32,
    /// [`file_op`].
    pub op: u8,
    /// Requested access bits.
    pub access: u8,
    /// [`enforcement`].
    pub enforcement: u8,
    /// 1: `path` is the tail of a longer path (or the walk stopped early).
    pub path_truncated: u8,
    pub ino: u64,
    /// Attempts of this key since its last event, not counting this one.
    pub folded: u64,
    pub dev: u32,
    /// Meaningful bytes of `path`.
    pub path_len: u32,
    pub comm: [u8; crate::COMM_LEN],
    pub path: [u8; FILE_PATH_LEN],
}
const _: () = assert!(size_of::<FileEvent>() == 48 + 8 + 4 + 4 + 8 + 8 + 4 + 4 + 16 + FILE_PATH_LEN);

/// `FILE_AGG` key: one process's accesses to one object, by decision.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileAggKey {
    pub identity: u32,
    pub tgid: u32,
    pub generation: u32,
    pub dev: u32,
    pub ino: u64,
    pub op: u8,
    pub access: u8,
    pub decided: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<FileAggKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileAggValue {
    /// When the key's last event was emitted (`CLOCK_MONOTONIC` ns).
    pub last_emit_ns: u64,
    /// Attempts since then.
    pub folded: u64,
}
const _: () = assert!(size_of::<FileAggValue>() == 16);

/// `OPEN_CACHE`: per CPU, direct-mapped, the last `file_open` decisions,
/// so an agent that opens the same files again and again does not pay a
/// walk each time. An entry stands for one object as reached (its dentry
/// and mount, whose parents the walk followed) under one policy generation
/// and one value of `FILE_EPOCH`, the count of renames since the programs
/// loaded (a rename is the one way a dentry's parents change), and for
/// [`OPEN_CACHE_TTL_NS`] at most (what bounds everything else: a rename on
/// a network file system's server, a mount moved above the object).
pub const OPEN_CACHE_SLOTS: u32 = 256;
pub const OPEN_CACHE_TTL_NS: u64 = 100_000_000;

/// One `OPEN_CACHE` entry (see [`OPEN_CACHE_SLOTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenDecision {
    pub dentry: u64,
    pub mnt: u64,
    pub ino: u64,
    pub epoch: u64,
    /// `CLOCK_MONOTONIC` ns after which the entry is not used.
    pub until_ns: u64,
    pub dev: u32,
    pub identity: u32,
    pub generation: u32,
    pub access: u8,
    pub _pad: [u8; 3],
    pub verdict: Verdict,
}
const _: () = assert!(size_of::<OpenDecision>() == 64);

impl OpenDecision {
    /// Whether this entry decides `key` (the same object, identity,
    /// access, generation and epoch) at `now_ns`.
    #[inline(always)]
    pub fn decides(&self, key: &OpenDecision, now_ns: u64) -> bool {
        self.dentry == key.dentry
            && self.mnt == key.mnt
            && self.ino == key.ino
            && self.dev == key.dev
            && self.identity == key.identity
            && self.access == key.access
            && self.generation == key.generation
            && self.epoch == key.epoch
            && now_ns < self.until_ns
    }

    /// The entry's index in `OPEN_CACHE`.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        let mut h = self.dentry.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h ^ self.mnt.rotate_left(29)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h = (h ^ ((self.identity as u64) << 8 | self.access as u64)).wrapping_mul(0x1656_67b1_9e37_79f9);
        (h >> 32) as u32 & (OPEN_CACHE_SLOTS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_decision_stands_for_its_key_until_it_expires() {
        let verdict = Verdict { action: DENY, decided: DENY, mode: ENFORCE, _pad: 0, rule: 3 };
        let key = OpenDecision {
            dentry: 0xffff_8880_0123_4560,
            mnt: 0xffff_8880_0abc_0000,
            ino: 42,
            dev: 7,
            identity: 5,
            generation: 9,
            epoch: 2,
            access: READ as u8,
            ..Default::default()
        };
        let entry = OpenDecision { until_ns: 1_000, verdict, ..key };
        assert!(entry.decides(&key, 999));
        assert!(!entry.decides(&key, 1_000), "expired");
        for other in [
            OpenDecision { dentry: key.dentry + 0xc0, ..key },
            OpenDecision { mnt: key.mnt + 0x100, ..key },
            OpenDecision { ino: 43, ..key },
            OpenDecision { dev: 8, ..key },
            OpenDecision { identity: 6, ..key },
            OpenDecision { access: WRITE as u8, ..key },
            OpenDecision { generation: 10, ..key },
            OpenDecision { epoch: 3, ..key },
        ] {
            assert!(!entry.decides(&other, 0), "{other:?}");
        }
        assert_eq!(entry.slot(), key.slot(), "the slot is the key's, not the decision's");
    }

    #[test]
    fn open_decision_slots_spread_dentries_of_one_slab() {
        // Dentries are 192-byte slab objects: neighbours must not collide.
        let mut used = [0u32; OPEN_CACHE_SLOTS as usize];
        for i in 0..OPEN_CACHE_SLOTS as u64 {
            let key = OpenDecision {
                dentry: 0xffff_8880_0400_0000 + i * 192,
                mnt: 0xffff_8880_0abc_0000,
                identity: 1,
                access: READ as u8,
                ..Default::default()
            };
            used[key.slot() as usize] += 1;
        }
        let empty = used.iter().filter(|n| **n == 0).count();
        // Random placement leaves 1/e (36.8%) empty; allow a little more.
        assert!(empty < OPEN_CACHE_SLOTS as usize * 45 / 100, "{empty} of {OPEN_CACHE_SLOTS} slots unused");
    }

    fn rule(rule: u32, access: u32, action: u8, mode: u8, scope: u8) -> ObjectRule {
        ObjectRule { rule, access: access as u8, action, mode, scope }
    }

    fn rules(list: &[ObjectRule]) -> ObjectRules {
        let mut r = ObjectRules { count: list.len() as u32, ..Default::default() };
        r.rules[..list.len()].copy_from_slice(list);
        r
    }

    const DIR: u8 = SCOPE_SELF | SCOPE_BELOW;

    fn policy(files: u8, file_rules: u32) -> IdentityPolicy {
        IdentityPolicy {
            default_files: files,
            default_exec: files,
            mode: ENFORCE,
            defined: 1,
            file_rules: file_rules as u8,
            ..Default::default()
        }
    }

    #[test]
    fn exact_rules_apply_to_the_object_only_directory_rules_below() {
        let file = rules(&[rule(0, READ, DENY, ENFORCE, SCOPE_SELF)]);
        let pol = policy(ALLOW, READ);
        let mut m = Matched::default();
        m.add(&file, READ as u8, true);
        assert_eq!(m.verdict(&pol, READ as u8, true), Verdict::new(DENY, ENFORCE, 0));
        // The same object met as a directory of the accessed one: no match.
        let mut m = Matched::default();
        m.add(&file, READ as u8, false);
        assert_eq!(m.verdict(&pol, READ as u8, true), Verdict::new(ALLOW, ENFORCE, RULE_DEFAULT));
        let dir = rules(&[rule(1, READ, DENY, ENFORCE, DIR)]);
        let mut m = Matched::default();
        m.add(&dir, READ as u8, false);
        assert_eq!(m.verdict(&pol, READ as u8, true).rule, 1);
    }

    #[test]
    fn enforced_deny_beats_audited_deny_beats_allow() {
        let pol = policy(DENY, READ | WRITE);
        let mut m = Matched::default();
        m.add(&rules(&[rule(0, READ, ALLOW, ENFORCE, DIR), rule(1, READ, DENY, AUDIT, DIR)]), READ as u8, true);
        assert_eq!(m.verdict(&pol, READ as u8, true), Verdict::new(DENY, AUDIT, 1));
        assert_eq!(m.verdict(&pol, READ as u8, true).action, ALLOW);
        m.add(&rules(&[rule(2, READ, DENY, ENFORCE, DIR)]), READ as u8, false);
        assert_eq!(m.verdict(&pol, READ as u8, true), Verdict::new(DENY, ENFORCE, 2));
        m.add(&rules(&[rule(3, READ, DENY, AUDIT, DIR)]), READ as u8, false);
        assert_eq!(m.verdict(&pol, READ as u8, true).rule, 2, "an audited deny never replaces an enforced one");
    }

    #[test]
    fn every_requested_bit_is_decided() {
        let read_only = rules(&[rule(0, READ, ALLOW, ENFORCE, DIR)]);
        let rw = (READ | WRITE) as u8;
        // Default deny: allowing read does not allow read+write.
        let mut m = Matched::default();
        m.add(&read_only, rw, true);
        assert_eq!(m.verdict(&policy(DENY, READ), rw, true), Verdict::new(DENY, ENFORCE, RULE_DEFAULT));
        assert_eq!(m.verdict(&policy(ALLOW, READ), rw, true), Verdict::new(ALLOW, ENFORCE, 0));
        let mut m = Matched::default();
        m.add(&rules(&[rule(0, READ, ALLOW, ENFORCE, DIR), rule(1, WRITE, ALLOW, ENFORCE, DIR)]), rw, true);
        assert_eq!(m.verdict(&policy(DENY, READ | WRITE), rw, true), Verdict::new(ALLOW, ENFORCE, 0));
        // A deny of either bit denies.
        m.add(&rules(&[rule(2, WRITE, DENY, ENFORCE, DIR)]), rw, false);
        assert_eq!(m.verdict(&policy(ALLOW, READ | WRITE), rw, true).rule, 2);
        // Rules for other bits do not match.
        let mut m = Matched::default();
        m.add(&rules(&[rule(3, EXEC, DENY, ENFORCE, DIR)]), READ as u8, true);
        assert_eq!(m.verdict(&policy(ALLOW, EXEC), READ as u8, true).rule, RULE_DEFAULT);
    }

    #[test]
    fn an_unfinished_walk_fails_closed_for_ruled_accesses() {
        let m = Matched::default();
        assert_eq!(m.verdict(&policy(ALLOW, READ), READ as u8, false), Verdict::new(DENY, ENFORCE, RULE_TOO_DEEP));
        assert_eq!(m.verdict(&policy(ALLOW, READ), WRITE as u8, false), Verdict::new(ALLOW, ENFORCE, RULE_DEFAULT));
        let audit = IdentityPolicy { mode: AUDIT, ..policy(ALLOW, READ) };
        assert_eq!(m.verdict(&audit, READ as u8, false).action, ALLOW);
        // The exec default decides exec.
        let pol = IdentityPolicy { default_exec: DENY, ..policy(ALLOW, 0) };
        assert_eq!(m.verdict(&pol, EXEC as u8, true).action, DENY);
        assert_eq!(m.verdict(&pol, READ as u8, true).action, ALLOW);
    }
}

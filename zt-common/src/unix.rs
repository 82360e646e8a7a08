//! Unix-domain socket destinations: the key the `connect_unix` and
//! `sendmsg_unix` programs look up (`UNIX_RULES`, an LPM trie whose values
//! are [`crate::policy::NetRuleList`]s decided by
//! [`crate::policy::decide_net`]), the normalisation check both sides run,
//! and [`UnixEvent`].
//!
//! # The name as a key
//! A socket address names a filesystem path (`sun_path` up to its first
//! NUL, as the kernel resolves it) or an abstract name (`sun_path[0] == 0`;
//! every byte of the address after it is the name, NULs included). The key
//! holds a [`name_kind`] byte, then:
//! - a path: its bytes, NUL-padded. An exact rule's prefix covers the path
//!   and one NUL (`/a/b` does not match `/a/bc`); a directory rule's covers
//!   `DIR/` (everything below it).
//! - an abstract name: its length, then its bytes. An exact rule covers
//!   both, so `@foo` matches neither `@foo\0` nor `@foobar`; `@*` covers the
//!   kind byte only.
//!
//! The hook sees the address as the caller wrote it, before the kernel
//! resolves the path: [`unnormalized`] flags a path that could leave an
//! allowed directory (`..`, `.`, `//`), and such a path never matches an
//! allow rule. What string matching cannot see (symlinks, hardlinks, bind
//! mounts) is why the default for agent identities is deny
//! (`policies/README.md`).
use crate::{
    COMM_LEN, EventHeader,
    policy::{self, ALLOW, IdentityPolicy, NetRuleList, PROTO_ANY, RULE_DEFAULT, Verdict, decide_net},
};

/// `sizeof(sun_path)`.
pub const SUN_PATH_LEN: usize = 108;
/// Bytes of [`UnixKeyData::name`]: the kind byte, 108 bytes of address,
/// and room for the scan of [`unnormalized`] to look 3 bytes ahead.
pub const NAME_LEN: usize = 112;
/// `offsetof(struct sockaddr_un, sun_path)`.
pub const SUN_PATH_OFFSET: u32 = 2;

/// First byte of [`UnixKeyData::name`].
pub mod name_kind {
    pub const PATH: u8 = 1;
    pub const ABSTRACT: u8 = 2;
}

/// LPM trie key data: `(slot, identity)` always fully matched, then the name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixKeyData {
    pub slot: u32,
    pub identity: u32,
    pub name: [u8; NAME_LEN],
}
const _: () = assert!(size_of::<UnixKeyData>() == 120);

impl Default for UnixKeyData {
    fn default() -> Self {
        UnixKeyData { slot: 0, identity: 0, name: [0; NAME_LEN] }
    }
}

/// Whether the path in `name` (kind [`name_kind::PATH`], bytes from 1) has
/// a `.` or `..` component or an empty one (`//`): it could name a socket
/// outside a directory it seems to be in. The scan stops at the first NUL
/// (where the kernel ends the path).
#[inline(always)]
pub fn unnormalized(name: &[u8; NAME_LEN]) -> bool {
    // A component starts after every '/' (and at the start of a relative
    // path, which matches no rule anyway).
    let mut i = 1;
    while i < 1 + SUN_PATH_LEN {
        let c = name[i];
        if c == 0 {
            return false;
        }
        if c == b'/' {
            let (a, b, d) = (name[i + 1], name[i + 2], name[i + 3]);
            let end = |x: u8| x == 0 || x == b'/';
            if a == b'/' || (a == b'.' && (end(b) || (b == b'.' && end(d)))) {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// The decision on a Unix-socket address by an identity with `policy`:
/// [`decide_net`] over the rules of the longest matching name (no port, no
/// protocol), except that an [`unnormalized`] path never matches an allow
/// rule (`/allowed/../docker.sock` is decided by the deny rules and the
/// default). The kernel and `zt-agent policy explain` both run this.
#[inline(always)]
pub fn decide_unix(policy: &IdentityPolicy, list: Option<&NetRuleList>, name: &[u8; NAME_LEN]) -> Verdict {
    let v = decide_net(policy, list, PROTO_ANY, 0);
    if v.decided == ALLOW && v.rule != RULE_DEFAULT && name[0] == name_kind::PATH && unnormalized(name) {
        return Verdict::new(policy.default_egress, policy.mode, RULE_DEFAULT);
    }
    v
}

/// A decision on a Unix-domain address by an agent identity. Written for
/// every denial and would-deny (allowed ones are counted, not reported).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    pub header: EventHeader,
    /// [`crate::hook::CONNECT_UNIX`] or [`crate::hook::SENDMSG_UNIX`].
    pub hook: u32,
    /// Socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_SEQPACKET` 5).
    pub sock_type: u32,
    pub verdict: policy::Verdict,
    pub generation: u32,
    /// Bytes of `sun_path` the caller gave (address length - 2).
    pub path_len: u32,
    /// 1 when the path was [`unnormalized`].
    pub unnormalized: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    /// The key name the policy was looked up with (see the module doc).
    pub name: [u8; NAME_LEN],
}
const _: () = assert!(size_of::<UnixEvent>() == 48 + 32 + 16 + NAME_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> [u8; NAME_LEN] {
        let mut n = [0; NAME_LEN];
        n[0] = name_kind::PATH;
        n[1..1 + p.len()].copy_from_slice(p.as_bytes());
        n
    }

    #[test]
    fn an_unnormalized_path_matches_no_allow_rule() {
        use crate::policy::{DENY, ENFORCE, NetRule};
        let pol = IdentityPolicy { default_egress: DENY, mode: ENFORCE, ..Default::default() };
        let mut list = NetRuleList { count: 1, ..Default::default() };
        list.rules[0] = NetRule { port_lo: 0, port_hi: u16::MAX, proto: PROTO_ANY, action: ALLOW, mode: ENFORCE, _pad: 0, rule: 7 };
        assert_eq!(decide_unix(&pol, Some(&list), &path("/run/agent/api.sock")), Verdict::new(ALLOW, ENFORCE, 7));
        assert_eq!(decide_unix(&pol, Some(&list), &path("/run/agent/../docker.sock")), Verdict::new(DENY, ENFORCE, RULE_DEFAULT));
        // Deny rules still match it.
        list.rules[0].action = DENY;
        assert_eq!(decide_unix(&pol, Some(&list), &path("/run/agent/../docker.sock")).rule, 7);
        // Abstract names have no components.
        let mut abs = [0u8; NAME_LEN];
        abs[..5].copy_from_slice(&[name_kind::ABSTRACT, 3, b'/', b'.', b'.']);
        list.rules[0].action = ALLOW;
        assert_eq!(decide_unix(&pol, Some(&list), &abs).rule, 7);
    }

    #[test]
    fn unnormalized_paths() {
        for p in ["/a/../b", "/a/..", "/a/./b", "/a/.", "//a", "/a//b", "/a/"] {
            let bad = unnormalized(&path(p));
            assert_eq!(bad, p != "/a/", "{p}");
        }
        for p in ["/a/b", "/a/.b", "/a/..b", "/a/b.", "/a/b..", "/.x", "rel/x", "/", "/run/docker.sock"] {
            assert!(!unnormalized(&path(p)), "{p}");
        }
        // The scan stops where the kernel ends the path.
        let mut n = path("/a");
        n[4..8].copy_from_slice(b"/../");
        assert!(!unnormalized(&n));
        // A path of the full 108 bytes is scanned to its end without
        // reading past the name.
        let mut long = [b'x'; SUN_PATH_LEN];
        long[0] = b'/';
        long[105..].copy_from_slice(b"/..");
        let mut n = [0u8; NAME_LEN];
        n[0] = name_kind::PATH;
        n[1..1 + SUN_PATH_LEN].copy_from_slice(&long);
        assert!(unnormalized(&n));
        n[1 + 107] = b'a';
        assert!(!unnormalized(&n));
    }
}

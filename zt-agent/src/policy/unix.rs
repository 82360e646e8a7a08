//! Unix-socket destinations (`to: [unix:...]`).
//!
//! # Layout
//! - [`parse_name`]: the text after `unix:` -> [`UnixName`], or why not.
//! - [`key_of`]: a name's `UNIX_RULES` key name and prefix length (the
//!   encoding is `zt_common::unix`'s).
//! - [`address_key`]: a concrete address (`/run/x.sock`, `@name`) as the
//!   kernel keys it, for `explain`.
//! - [`entries`]: one identity's LPM entries, each holding the rules of
//!   every name that covers it (as the egress prefixes do).
//! - [`lookup`]: the longest-prefix match `explain` runs over them.
//!
//! The kernel matches the address as the caller wrote it, before the path
//! is resolved, so names are plain absolute paths: no globs but a trailing
//! `/**`, no `.`/`..`/empty components (see `policies/README.md`).
use std::collections::BTreeMap;

use zt_common::{
    policy::{NET_KEY_FIXED_BITS, NET_RULES_PER_PREFIX, NetRule, NetRuleList},
    unix::{NAME_LEN, SUN_PATH_LEN, UnixKeyData, name_kind},
};

use super::model::UnixName;

/// The longest abstract name (`sun_path` minus its leading NUL).
const ABSTRACT_MAX: usize = SUN_PATH_LEN - 1;

/// Parses what follows `unix:`.
pub fn parse_name(s: &str) -> Result<UnixName, String> {
    if let Some(name) = s.strip_prefix('@') {
        return match name {
            "*" => Ok(UnixName::AnyAbstract),
            "" => Err("empty abstract name".into()),
            n if n.contains('*') => Err("abstract names match exactly (`@*` matches every one)".into()),
            n if n.len() > ABSTRACT_MAX => Err(format!("abstract name of {} bytes, at most {ABSTRACT_MAX}", n.len())),
            n => Ok(UnixName::Abstract(n.as_bytes().to_vec())),
        };
    }
    if !s.starts_with('/') {
        return Err("not an absolute path (a relative address matches no rule: the kernel sees it unresolved)".into());
    }
    if s.contains('\0') {
        return Err("NUL in the path".into());
    }
    let (path, under) = match s.strip_suffix("**") {
        Some(dir) if dir.ends_with('/') => (dir, true),
        _ => (s, false),
    };
    if path.contains(['*', '?', '[']) {
        return Err("only a trailing `/**` (everything below a directory) is supported".into());
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    if !body.is_empty() && body.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("empty, `.` or `..` component (name the socket by its plain path)".into());
    }
    if under {
        // One byte at least must follow the directory.
        if path.len() >= SUN_PATH_LEN {
            return Err(format!("directory of {} bytes: a socket path has at most {SUN_PATH_LEN}", path.len()));
        }
        return Ok(UnixName::Under(path.to_string()));
    }
    if path.ends_with('/') {
        return Err("a socket path does not end in '/' (write DIR/** for everything below DIR)".into());
    }
    if path.len() > SUN_PATH_LEN {
        return Err(format!("path of {} bytes, at most {SUN_PATH_LEN} (sun_path)", path.len()));
    }
    Ok(UnixName::Path(path.to_string()))
}

/// The key name of `name` and the key's prefix length in bits (the fixed
/// `(slot, identity)` part included).
pub fn key_of(name: &UnixName) -> ([u8; NAME_LEN], u32) {
    let mut k = [0u8; NAME_LEN];
    let bytes = match name {
        UnixName::Path(p) => {
            k[0] = name_kind::PATH;
            k[1..1 + p.len()].copy_from_slice(p.as_bytes());
            // The path and the NUL after it: `/a/b` is not `/a/bc`.
            1 + p.len() + 1
        }
        UnixName::Under(d) => {
            k[0] = name_kind::PATH;
            k[1..1 + d.len()].copy_from_slice(d.as_bytes());
            1 + d.len()
        }
        UnixName::Abstract(n) => {
            k[0] = name_kind::ABSTRACT;
            k[1] = n.len() as u8;
            k[2..2 + n.len()].copy_from_slice(n);
            2 + n.len()
        }
        UnixName::AnyAbstract => {
            k[0] = name_kind::ABSTRACT;
            1
        }
    };
    (k, NET_KEY_FIXED_BITS + 8 * bytes as u32)
}

/// A concrete address (a path, or `@name` for an abstract one) as the
/// kernel programs key it.
pub fn address_key(addr: &str) -> Result<[u8; NAME_LEN], String> {
    let mut k = [0u8; NAME_LEN];
    match addr.strip_prefix('@') {
        Some(n) if n.len() <= ABSTRACT_MAX => {
            k[0] = name_kind::ABSTRACT;
            k[1] = n.len() as u8;
            k[2..2 + n.len()].copy_from_slice(n.as_bytes());
        }
        None if !addr.is_empty() && addr.len() <= SUN_PATH_LEN => {
            k[0] = name_kind::PATH;
            k[1..1 + addr.len()].copy_from_slice(addr.as_bytes());
        }
        _ => return Err(format!("{addr:?}: a socket path of 1-{SUN_PATH_LEN} bytes, or @name of at most {ABSTRACT_MAX}")),
    }
    Ok(k)
}

/// An address keyed as the kernel keys it (a `UnixEvent`'s name), as
/// text: the path up to its NUL, or `@` and the abstract name (bytes that
/// are not printable ASCII as `\xNN`).
pub fn address_text(k: &[u8; NAME_LEN]) -> String {
    match k[0] {
        name_kind::ABSTRACT => {
            let n = (k[1] as usize).min(ABSTRACT_MAX);
            format!("@{}", k[2..2 + n].escape_ascii())
        }
        _ => {
            let p = &k[1..1 + SUN_PATH_LEN];
            let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
            String::from_utf8_lossy(&p[..end]).into_owned()
        }
    }
}

/// A compiled key as the destination text it came from.
pub fn key_text(k: &[u8; NAME_LEN], bits: u32) -> String {
    let n = ((bits - NET_KEY_FIXED_BITS) / 8) as usize;
    match (k[0], n) {
        (name_kind::ABSTRACT, 1) => "unix:@*".into(),
        (name_kind::PATH, _) if k[n - 1] != 0 => format!("unix:{}**", String::from_utf8_lossy(&k[1..n])),
        _ => format!("unix:{}", address_text(k)),
    }
}

/// Too many rules apply to one name.
#[derive(Debug)]
pub struct TooManyRules {
    pub name: UnixName,
    /// The rules that apply, in rule order.
    pub rules: Vec<NetRule>,
}

/// One identity's `UNIX_RULES` entries `(prefix bits, key, rules)`: per
/// name, its own rules and those of every name covering it.
pub fn entries(
    by_name: &BTreeMap<UnixName, Vec<NetRule>>,
    slot: u32,
    identity: u32,
) -> Result<Vec<(u32, UnixKeyData, NetRuleList)>, TooManyRules> {
    let keyed: Vec<(&UnixName, [u8; NAME_LEN], u32)> = by_name.keys().map(|n| (n, key_of(n).0, key_of(n).1)).collect();
    let mut out = Vec::new();
    for (name, key, bits) in &keyed {
        let mut list: Vec<NetRule> =
            keyed.iter().filter(|(_, k, b)| b <= bits && covers(k, *b, key)).flat_map(|(n, _, _)| by_name[*n].iter().copied()).collect();
        list.sort_by_key(|r| r.rule);
        list.dedup();
        if list.len() > NET_RULES_PER_PREFIX {
            return Err(TooManyRules { name: (*name).clone(), rules: list });
        }
        let mut entry = NetRuleList { count: list.len() as u32, ..Default::default() };
        entry.rules[..list.len()].copy_from_slice(&list);
        out.push((*bits, UnixKeyData { slot, identity, name: *key }, entry));
    }
    Ok(out)
}

/// Whether the first `bits` (fixed part included) of key name `k` equal
/// those of `name`.
fn covers(k: &[u8; NAME_LEN], bits: u32, name: &[u8; NAME_LEN]) -> bool {
    let n = ((bits - NET_KEY_FIXED_BITS) / 8) as usize;
    k[..n] == name[..n]
}

/// Longest-prefix match over compiled entries, as the kernel's trie does.
pub fn lookup<'a>(
    entries: &'a [(u32, UnixKeyData, NetRuleList)],
    slot: u32,
    identity: u32,
    name: &[u8; NAME_LEN],
) -> Option<&'a NetRuleList> {
    entries
        .iter()
        .filter(|(bits, k, _)| k.slot == slot && k.identity == identity && covers(&k.name, *bits, name))
        .max_by_key(|(bits, _, _)| *bits)
        .map(|(_, _, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("/run/docker.sock"), Ok(UnixName::Path("/run/docker.sock".into())));
        assert_eq!(parse_name("/run/user/**"), Ok(UnixName::Under("/run/user/".into())));
        assert_eq!(parse_name("/**"), Ok(UnixName::Under("/".into())));
        assert_eq!(parse_name("@my-bus"), Ok(UnixName::Abstract(b"my-bus".to_vec())));
        assert_eq!(parse_name("@*"), Ok(UnixName::AnyAbstract));
        for bad in ["run/x", "/run/*.sock", "/run/x/", "/run/../x", "/run//x", "/run/./x", "/a/**/b", "@", "@a*", "/run/x**"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        let long = format!("/{}", "x".repeat(SUN_PATH_LEN));
        assert!(parse_name(&long).unwrap_err().contains("at most 108"));
        assert!(parse_name(&long[..SUN_PATH_LEN]).is_ok());
        for n in ["unix:/run/docker.sock", "unix:/run/user/**", "unix:@my-bus", "unix:@*", "unix:/**"] {
            let name = parse_name(&n[5..]).unwrap();
            assert_eq!(name.to_string(), n);
            let (k, bits) = key_of(&name);
            assert_eq!(key_text(&k, bits), n);
        }
        assert_eq!(address_text(&address_key("@a\0b").unwrap()), "@a\\x00b");
    }

    /// The key bytes the kernel looks up, byte for byte.
    #[test]
    fn keys() {
        let (k, bits) = key_of(&UnixName::Path("/a".into()));
        assert_eq!((&k[..5], bits), (&[1, b'/', b'a', 0, 0][..], 64 + 8 * 4));
        let (k, bits) = key_of(&UnixName::Under("/a/".into()));
        assert_eq!((&k[..5], bits), (&[1, b'/', b'a', b'/', 0][..], 64 + 8 * 4));
        let (k, bits) = key_of(&UnixName::Abstract(b"ab".to_vec()));
        assert_eq!((&k[..5], bits), (&[2, 2, b'a', b'b', 0][..], 64 + 8 * 4));
        assert_eq!(key_of(&UnixName::AnyAbstract).1, 64 + 8);
        assert_eq!(address_key("@ab").unwrap(), key_of(&UnixName::Abstract(b"ab".to_vec())).0);
        assert_eq!(address_key("/a").unwrap(), key_of(&UnixName::Path("/a".into())).0);
    }

    #[test]
    fn covering_names_share_rules_and_the_longest_decides() {
        let rule = |rule| NetRule { port_hi: u16::MAX, rule, ..Default::default() };
        let mut by_name = BTreeMap::new();
        by_name.insert(UnixName::Under("/run/".into()), vec![rule(0)]);
        by_name.insert(UnixName::Path("/run/docker.sock".into()), vec![rule(1)]);
        by_name.insert(UnixName::AnyAbstract, vec![rule(2)]);
        let e = entries(&by_name, 1, 5).unwrap();
        let rules = |addr: &str| {
            lookup(&e, 1, 5, &address_key(addr).unwrap()).map(|l| l.rules[..l.count as usize].iter().map(|r| r.rule).collect::<Vec<_>>())
        };
        assert_eq!(rules("/run/docker.sock"), Some(vec![0, 1]));
        assert_eq!(rules("/run/docker.sock2"), Some(vec![0]));
        assert_eq!(rules("/run"), None);
        assert_eq!(rules("/var/run/docker.sock"), None);
        assert_eq!(rules("@anything"), Some(vec![2]));
        // Another identity or slot sees none of them.
        assert!(lookup(&e, 0, 5, &address_key("/run/x").unwrap()).is_none());
        assert!(lookup(&e, 1, 6, &address_key("/run/x").unwrap()).is_none());
    }
}

//! Policy -> kernel map entries: a pure function, tested byte for byte.
//!
//! # Layout
//! - [`IdRegistry`]: identity name -> numeric id, stable across reloads (the
//!   process table holds ids, so a reload that reorders identities must not
//!   reattribute running processes).
//! - [`compile`]: one slot's entries: `IDENTITY_POLICY`, `NET_RULES` and
//!   `UNIX_RULES` (LPM), and the path rules for the file/exec issue.
//! - [`CompileError`]: capacity limits, with identity, count and capacity.
//!
//! Egress compilation: every destination becomes an IPv6 prefix (IPv4 as
//! `::ffff:0:0/96` + its prefix). For each distinct prefix of an identity,
//! its rule list holds its own rules and those of every covering prefix, so
//! the kernel's single longest-prefix lookup sees every rule that applies,
//! and `zt_common::policy::decide_net` decides (deny wins).
use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use zt_common::{
    maps,
    path_policy::{ObjectKey, ObjectRules, PATH_LEN, PathRule},
    policy::{
        ALLOW, AUDIT, DENY, ENFORCE, IdentityKey, IdentityPolicy, NET_KEY_FIXED_BITS, NET_RULES_PER_PREFIX, NetKeyData, NetRule,
        NetRuleList, PROTO_ANY, PROTO_TCP, PROTO_UDP,
    },
    unix::UnixKeyData,
};

use super::model::{Action, IdentityDef, Mode, Policy, Pos, Proto, Rule, UnixName};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// `at`: the first rule beyond the capacity.
    #[error(
        "{at}: identity {identity:?}: destination {prefix} has {count} applicable egress rules (its own and its covering prefixes'), capacity {capacity}; this rule is the first beyond it"
    )]
    PrefixRules { at: Pos, identity: String, prefix: String, count: usize, capacity: usize },
    /// `at`: the identity whose prefixes passed the capacity.
    #[error("{at}: identity {identity:?} brings the egress prefixes of one policy slot to {count}, capacity {capacity}")]
    NetEntries { at: Pos, identity: String, count: usize, capacity: usize },
    /// `at`: the first rule beyond the capacity.
    #[error(
        "{at}: identity {identity:?}: Unix-socket destination {name} has {count} applicable rules (its own and those of the names covering it), capacity {capacity}; this rule is the first beyond it"
    )]
    UnixRules { at: Pos, identity: String, name: String, count: usize, capacity: usize },
    /// `at`: the identity whose names passed the capacity.
    #[error("{at}: identity {identity:?} brings the Unix-socket destinations of one policy slot to {count}, capacity {capacity}")]
    UnixEntries { at: Pos, identity: String, count: usize, capacity: usize },
    /// `at`: the first new identity beyond the capacity.
    /// `at`: the first rule beyond the capacity.
    #[error(
        "{at}: identity {identity:?}: {path} (the file system object it names) has {count} file and exec rules, capacity {capacity}; this rule is the first beyond it"
    )]
    ObjectRules { at: Pos, identity: String, path: String, count: usize, capacity: usize },
    #[error("the file and exec rules of one policy slot name {count} file system objects, capacity {capacity}")]
    FileObjects { count: usize, capacity: usize },
    #[error("{at}: identity {identity:?} is number {count} (over the agent's lifetime, ids are never reused), capacity {capacity}")]
    Identities { at: Pos, identity: String, count: usize, capacity: usize },
}

/// Identity ids, stable for the agent's lifetime (and, with pinned tables,
/// across restarts: [`IdRegistry::save`], [`IdRegistry::load`]); 0 is "no
/// identity".
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRegistry {
    ids: BTreeMap<String, u32>,
}

/// An identity-id file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IdsError {
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{path}: {source}")]
    Malformed {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl IdRegistry {
    pub fn load(path: &std::path::Path) -> Result<Self, IdsError> {
        let text = std::fs::read_to_string(path).map_err(crate::fsutil::at("reading", path))?;
        serde_json::from_str(&text).map_err(|source| IdsError::Malformed { path: path.display().to_string(), source })
    }

    /// Written atomically (a crash leaves the old or the new ids).
    pub fn save(&self, path: &std::path::Path) -> Result<(), crate::fsutil::FsError> {
        let text = serde_json::to_string_pretty(self).expect("a map of strings to numbers encodes");
        crate::fsutil::write_atomic(path, text.as_bytes())
    }

    /// Gives every identity of `policy` an id (new names get the next one).
    pub fn assign(&mut self, policy: &Policy) -> Result<(), CompileError> {
        let capacity = maps::MAX_IDENTITIES as usize;
        let new: Vec<&IdentityDef> = policy.identities.iter().filter(|i| !self.ids.contains_key(&i.name)).collect();
        if self.ids.len() + new.len() > capacity {
            let first_beyond = new[capacity - self.ids.len()];
            return Err(CompileError::Identities {
                at: first_beyond.pos.clone(),
                identity: first_beyond.name.clone(),
                count: self.ids.len() + new.len(),
                capacity,
            });
        }
        for i in &policy.identities {
            let next = self.ids.len() as u32 + 1;
            self.ids.entry(i.name.clone()).or_insert(next);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn names(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ids.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// A registry for one policy alone (ids in file order), as `check`,
    /// `explain` and `diff` use.
    pub fn for_policy(policy: &Policy) -> Result<Self, CompileError> {
        let mut r = IdRegistry::default();
        r.assign(policy)?;
        Ok(r)
    }
}

/// What a rule id (index in the bundle) stands for, for events and explain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleInfo {
    pub name: String,
    pub identity: String,
    pub pos: String,
}

#[derive(Debug, Clone)]
pub struct Compiled {
    pub slot: u32,
    pub identities: Vec<(IdentityKey, IdentityPolicy)>,
    /// `(prefix_len, key data, rules)`, sorted by key.
    pub net: Vec<(u32, NetKeyData, NetRuleList)>,
    /// `UNIX_RULES` entries `(prefix_len, key data, rules)`, sorted by key.
    pub unix: Vec<(u32, UnixKeyData, NetRuleList)>,
    pub paths: Vec<PathRule>,
    /// `FILE_RULES` entries: `paths` resolved to objects on this host by
    /// [`super::objects::resolve`] (empty until then), sorted by key.
    pub objects: Vec<(ObjectKey, ObjectRules)>,
    /// Rule paths that named no object when resolved.
    pub unresolved: Vec<super::objects::Unresolved>,
    /// What each rule path named when resolved (the snapshot
    /// [`super::objects::changed`] compares the host against).
    pub resolution: super::objects::Resolution,
    /// Index = rule id.
    pub rules: Vec<RuleInfo>,
    /// Which rules were active (conditions) when compiled.
    pub active: Vec<bool>,
}

/// The pending pseudo-identity's entry in every slot (see
/// `zt_common::PENDING_IDENTITY`): egress denied, the default socket kinds,
/// nothing else restricted.
pub fn pending_identity(slot: u32) -> (IdentityKey, IdentityPolicy) {
    (
        IdentityKey { slot, identity: zt_common::PENDING_IDENTITY },
        IdentityPolicy {
            default_egress: DENY,
            default_files: ALLOW,
            default_exec: ALLOW,
            mode: ENFORCE,
            sockets: zt_common::guard::sock_kind::DEFAULT,
            defined: 1,
            file_rules: 0,
            _pad: 0,
        },
    )
}

impl Compiled {
    /// The [`super::target::Contents`] digest of what installing this
    /// writes into its slot (the pending identity's entry included).
    pub fn contents(&self) -> blake3::Hash {
        use super::target::{Contents, table};
        let mut c = Contents::default();
        for (len, data, list) in &self.net {
            c.add(table::NET, &(len, data, list));
        }
        for (len, data, list) in &self.unix {
            c.add(table::UNIX, &(len, data, list));
        }
        for (k, rules) in &self.objects {
            c.add(table::FILES, &(k, rules));
        }
        let pending = pending_identity(self.slot);
        for (k, v) in self.identities.iter().chain([&pending]).filter(|(_, v)| v.defined != 0) {
            if let Some(i) = zt_common::policy::identity_index(k.slot, k.identity) {
                c.add(table::IDENTITIES, &(i, v));
            }
        }
        c.digest()
    }
}

fn action(a: Action) -> u8 {
    match a {
        Action::Allow => ALLOW,
        Action::Deny => DENY,
    }
}

fn mode(m: Mode) -> u8 {
    match m {
        Mode::Enforce => ENFORCE,
        Mode::Audit => AUDIT,
    }
}

/// A destination as an IPv6 prefix: (network as u128, length 0..=128).
pub fn v6_prefix(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(n) => ((0xffffu128 << 32) | u32::from(n.network()) as u128, 96 + n.prefix_len()),
        IpNet::V6(n) => (u128::from(n.network()), n.prefix_len()),
    }
}

fn mask(addr: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { addr & (u128::MAX << (128 - len as u32)) }
}

pub fn prefix_string(addr: u128, len: u8) -> String {
    let v6 = std::net::Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => format!("{v4}/{}", len - 96),
        _ => format!("{v6}/{len}"),
    }
}

/// Compiles the active rules of `policy` into the entries of one slot.
pub fn compile(policy: &Policy, ids: &IdRegistry, slot: u32, active: &[bool]) -> Result<Compiled, CompileError> {
    let mut identities = Vec::new();
    let mut net = Vec::new();
    let mut unix = Vec::new();
    let mut paths = Vec::new();
    let rules: Vec<RuleInfo> =
        policy.rules.iter().map(|r| RuleInfo { name: r.name.clone(), identity: r.identity.to_string(), pos: r.pos.to_string() }).collect();
    // Each identity's rules, in policy order (one pass: a bundle may hold
    // 10,000s of rules over 1,000s of identities).
    let mut rules_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (rule_id, rule) in policy.rules.iter().enumerate() {
        rules_of.entry(&*rule.identity).or_default().push(rule_id);
    }

    for ident in &policy.identities {
        let id = ids.get(&ident.name).expect("registry assigned every identity");
        identities.push((
            IdentityKey { slot, identity: id },
            IdentityPolicy {
                default_egress: action(ident.defaults.egress),
                default_files: action(ident.defaults.files),
                default_exec: action(ident.defaults.exec),
                mode: mode(ident.mode),
                sockets: ident.sockets,
                defined: 1,
                // Set by `objects::resolve`.
                file_rules: 0,
                _pad: 0,
            },
        ));
        // prefix -> rules declared on exactly that prefix.
        let mut by_prefix: BTreeMap<(u128, u8), Vec<NetRule>> = BTreeMap::new();
        let mut by_name: BTreeMap<UnixName, Vec<NetRule>> = BTreeMap::new();
        for &rule_id in rules_of.get(ident.name.as_str()).map(Vec::as_slice).unwrap_or_default() {
            let rule = &policy.rules[rule_id];
            if !active.get(rule_id).copied().unwrap_or(true) {
                continue;
            }
            let eff_mode = if ident.mode == Mode::Audit || rule.mode == Some(Mode::Audit) { AUDIT } else { ENFORCE };
            add_egress(&mut by_prefix, &mut by_name, rule, rule_id as u32, eff_mode);
            paths.extend(path_rules(rule, id, rule_id as u32, eff_mode));
        }
        net.extend(prefix_entries(&by_prefix, &policy.rules, &ident.name, slot, id)?);
        let capacity = (maps::NET_RULES_CAPACITY / 2) as usize;
        if net.len() > capacity {
            return Err(CompileError::NetEntries { at: ident.pos.clone(), identity: ident.name.clone(), count: net.len(), capacity });
        }
        unix.extend(super::unix::entries(&by_name, slot, id).map_err(|e| CompileError::UnixRules {
            at: policy.rules[e.rules[NET_RULES_PER_PREFIX].rule as usize].pos.clone(),
            identity: ident.name.clone(),
            name: e.name.to_string(),
            count: e.rules.len(),
            capacity: NET_RULES_PER_PREFIX,
        })?);
        let capacity = (maps::UNIX_RULES_CAPACITY / 2) as usize;
        if unix.len() > capacity {
            return Err(CompileError::UnixEntries { at: ident.pos.clone(), identity: ident.name.clone(), count: unix.len(), capacity });
        }
    }
    net.sort_by_key(|(l, k, _)| (*k, *l));
    unix.sort_by_key(|(l, k, _)| (*k, *l));
    Ok(Compiled {
        slot,
        identities,
        net,
        unix,
        paths,
        objects: Vec::new(),
        unresolved: Vec::new(),
        resolution: Default::default(),
        rules,
        active: active.to_vec(),
    })
}

/// One rule's egress entries, under the prefix or Unix name each names.
fn add_egress(
    by_prefix: &mut BTreeMap<(u128, u8), Vec<NetRule>>,
    by_name: &mut BTreeMap<UnixName, Vec<NetRule>>,
    rule: &Rule,
    rule_id: u32,
    eff_mode: u8,
) {
    for e in &rule.egress {
        for n in &e.unix {
            let r = NetRule {
                port_lo: 0,
                port_hi: u16::MAX,
                proto: PROTO_ANY,
                action: action(rule.action),
                mode: eff_mode,
                _pad: 0,
                rule: rule_id,
            };
            by_name.entry(n.clone()).or_default().push(r);
        }
        let proto = match e.proto {
            Proto::Any => PROTO_ANY,
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        };
        let ports = if e.ports.is_empty() { vec![(0, u16::MAX)] } else { e.ports.clone() };
        for n in &e.to {
            let p = v6_prefix(n);
            for &(lo, hi) in &ports {
                by_prefix.entry(p).or_default().push(NetRule {
                    port_lo: lo,
                    port_hi: hi,
                    proto,
                    action: action(rule.action),
                    mode: eff_mode,
                    _pad: 0,
                    rule: rule_id,
                });
            }
        }
    }
}

/// One rule's file and exec paths as kernel path rules.
fn path_rules(rule: &Rule, identity: u32, rule_id: u32, eff_mode: u8) -> Vec<PathRule> {
    let mut out = Vec::new();
    for (defs, is_exec) in [(&rule.files, false), (&rule.exec, true)] {
        for d in defs {
            for path in &d.paths {
                let mut buf = [0u8; PATH_LEN];
                buf[..path.len()].copy_from_slice(path.as_bytes());
                out.push(PathRule {
                    identity,
                    rule: rule_id,
                    access: if is_exec { zt_common::path_policy::EXEC } else { d.access },
                    action: action(rule.action),
                    mode: eff_mode,
                    prefix: path.ends_with('/') as u8,
                    _pad: 0,
                    len: path.len() as u32,
                    path: buf,
                });
            }
        }
    }
    out
}

/// One LPM entry per distinct prefix of an identity, holding its own rules
/// and those of every covering prefix (so one longest-prefix lookup sees
/// every rule that applies).
fn prefix_entries(
    by_prefix: &BTreeMap<(u128, u8), Vec<NetRule>>,
    rules: &[Rule],
    identity: &str,
    slot: u32,
    id: u32,
) -> Result<Vec<(u32, NetKeyData, NetRuleList)>, CompileError> {
    let lens: BTreeSet<u8> = by_prefix.keys().map(|(_, l)| *l).collect();
    let mut out = Vec::new();
    for &(addr, len) in by_prefix.keys() {
        let mut list: Vec<NetRule> =
            lens.iter().filter(|l| **l <= len).filter_map(|l| by_prefix.get(&(mask(addr, *l), *l))).flatten().copied().collect();
        list.sort_by_key(|r| (r.rule, r.port_lo, r.port_hi, r.proto));
        list.dedup();
        if list.len() > NET_RULES_PER_PREFIX {
            return Err(CompileError::PrefixRules {
                at: rules[list[NET_RULES_PER_PREFIX].rule as usize].pos.clone(),
                identity: identity.to_string(),
                prefix: prefix_string(addr, len),
                count: list.len(),
                capacity: NET_RULES_PER_PREFIX,
            });
        }
        let mut entry = NetRuleList { count: list.len() as u32, ..Default::default() };
        entry.rules[..list.len()].copy_from_slice(&list);
        out.push((NET_KEY_FIXED_BITS + len as u32, NetKeyData { slot, identity: id, addr: addr.to_be_bytes() }, entry));
    }
    Ok(out)
}

/// Longest-prefix match over compiled entries, as the kernel's LPM trie does
/// (used by `explain`; the trie itself is the kernel's).
pub fn lookup(c: &Compiled, identity: u32, addr: [u8; 16]) -> Option<&NetRuleList> {
    let a = u128::from_be_bytes(addr);
    c.net
        .iter()
        .filter(|(len, k, _)| {
            let plen = (len - NET_KEY_FIXED_BITS) as u8;
            k.identity == identity && k.slot == c.slot && mask(a, plen) == u128::from_be_bytes(k.addr)
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, _, l)| l)
}

/// Bytes of a zt-common value, as the kernel sees them (golden tests).
#[cfg(test)]
pub fn bytes_of<T: zt_common::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: `Pod` types are #[repr(C)] with no implicit padding, so every
    // byte of the value is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
}

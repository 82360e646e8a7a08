//! Policy decisions: the compiled form the kernel evaluates, and the one
//! decision function both the kernel programs and `zt-agent policy explain`
//! run (so an explanation can never disagree with the kernel).

pub const ALLOW: u8 = 0;
pub const DENY: u8 = 1;
pub const ENFORCE: u8 = 0;
pub const AUDIT: u8 = 1;
/// `NetRule::proto` matching any protocol.
pub const PROTO_ANY: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// `IPPROTO_MPTCP` (`include/uapi/linux/in.h`): the protocol of a socket made
/// with `socket(AF_INET[6], SOCK_STREAM, IPPROTO_MPTCP)`, the one protocol
/// number above 255 (so it fits no `u8`).
pub const IPPROTO_MPTCP: u32 = 262;

/// The protocol egress rules are matched against for a socket of
/// `protocol` (the kernel's `u32`): itself for 0..=255, [`PROTO_TCP`] for
/// MPTCP, [`PROTO_ANY`] (matching only rules for any protocol) for the rest.
///
/// MPTCP is TCP on purpose: an MPTCP connection runs over TCP subflows, so a
/// tcp rule must govern it; matching it as anything else would let a process
/// dodge tcp deny rules by asking for `IPPROTO_MPTCP`. No other protocol
/// above 255 exists (the IP header field is 8 bits); truncating one would
/// have matched it as some unrelated protocol.
#[inline(always)]
pub const fn match_proto(protocol: u32) -> u8 {
    match protocol {
        IPPROTO_MPTCP => PROTO_TCP,
        p @ 0..=255 => p as u8,
        _ => PROTO_ANY,
    }
}
/// `Verdict::rule` when the identity's default action decided.
pub const RULE_DEFAULT: u32 = u32::MAX;
/// `Verdict::rule` when the identity has no policy entry (fail closed).
pub const RULE_NO_POLICY: u32 = u32::MAX - 1;
/// `Verdict::rule` when no policy has been applied yet.
pub const RULE_NONE_APPLIED: u32 = u32::MAX - 2;

/// Matching rules kept per prefix (its own and its covering prefixes').
pub const NET_RULES_PER_PREFIX: usize = 16;
/// Bits of `NetKeyData` before the address (slot + identity).
pub const NET_KEY_FIXED_BITS: u32 = 64;

/// LPM trie key data: `(slot, identity)` always fully matched, then the
/// destination as IPv6 (IPv4 as `::ffff:a.b.c.d`), so IPv4-mapped IPv6
/// destinations match IPv4 rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetKeyData {
    pub slot: u32,
    pub identity: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NetKeyData>() == 24);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetRule {
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    pub action: u8,
    /// Effective mode (the identity's audit mode already folded in).
    pub mode: u8,
    pub _pad: u8,
    /// Index of the rule in the compiled bundle (for events and explain).
    pub rule: u32,
}
const _: () = assert!(size_of::<NetRule>() == 12);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetRuleList {
    pub count: u32,
    pub _pad: u32,
    pub rules: [NetRule; NET_RULES_PER_PREFIX],
}
const _: () = assert!(size_of::<NetRuleList>() == 8 + 12 * NET_RULES_PER_PREFIX);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityKey {
    pub slot: u32,
    pub identity: u32,
}
const _: () = assert!(size_of::<IdentityKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityPolicy {
    pub default_egress: u8,
    pub default_files: u8,
    pub default_exec: u8,
    /// The identity's mode (rules carry their effective mode themselves).
    pub mode: u8,
    /// Socket kinds the identity may create ([`crate::guard::sock_kind`]).
    pub sockets: u32,
    /// 1 when the policy of the slot defines the identity; 0 (an unused
    /// element of `IDENTITY_POLICY`): unknown, fail closed.
    pub defined: u8,
    /// Access bits ([`crate::path_policy`]) some file or exec rule of the
    /// identity covers: only these make the kernel walk up an object's
    /// directories; any other access takes the default at once.
    pub file_rules: u8,
    pub _pad: u16,
}
const _: () = assert!(size_of::<IdentityPolicy>() == 12);

/// Elements of `IDENTITY_POLICY` per slot: identity ids 1..=MAX_IDENTITIES,
/// the pending pseudo-identity, and element 0 (no identity, unused).
pub const IDENTITY_SLOT_STRIDE: u32 = crate::maps::MAX_IDENTITIES + 2;

/// The `IDENTITY_POLICY` element of `identity` in `slot` (an array: one
/// inlined read on every decision, where a hash lookup cost 30-40 ns).
#[inline(always)]
pub const fn identity_index(slot: u32, identity: u32) -> Option<u32> {
    let i = match identity {
        crate::PENDING_IDENTITY => crate::maps::MAX_IDENTITIES + 1,
        id if id >= 1 && id <= crate::maps::MAX_IDENTITIES => id,
        _ => return None,
    };
    if slot > 1 { None } else { Some(slot * IDENTITY_SLOT_STRIDE + i) }
}

/// Aggregation of repeated egress attempts: one event per key per
/// [`AGG_WINDOW_NS`] (per CPU), the kernel counting every attempt in between
/// (plain per-CPU adds: `zt-ebpf/src/net.rs` says when preemption can lose
/// one), so a flood cannot blind the pipeline. See [`AggSlot`].
pub const AGG_WINDOW_NS: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    pub identity: u32,
    /// The process that attempted: one process's attempts are never folded
    /// into another's event (a noisy sibling cannot hide a quiet one).
    pub tgid: u32,
    /// The policy generation that decided: a policy switch starts new
    /// keys, so its first decisions are always reported.
    pub generation: u32,
    pub port: u16,
    /// The protocol policy matched, [`match_proto`] of the socket's: MPTCP
    /// attempts share the key of TCP attempts to the same destination. That
    /// is deliberate: they get the same decision from the same rules, so
    /// they are one stream of decisions, and the `u8` cannot hold 262 (a
    /// wider field would change this ABI for no policy difference). The
    /// events still tell them apart ([`crate::ConnectEvent::protocol`]); a
    /// summary of the folded attempts says tcp. A key rebuilt from a
    /// `ConnectEvent` must use `match_proto(protocol)`.
    pub proto: u8,
    /// The policy's decision (`ALLOW`/`DENY`).
    pub decided: u8,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AggKey>() == 32);

/// One slot of the per-CPU aggregation cache (`EGRESS_AGG`, a per-CPU
/// array of [`AGG_SLOTS`] slots, direct-mapped by [`agg_slot`]): the key it
/// holds and that key's attempts on this CPU. A key that finds its slot
/// taken by another key evicts it; the kernel then reports what the evicted
/// key had not reported yet ([`crate::AggEvictEvent`]), so an eviction is
/// never a silent miss and the counts still add up to every attempt.
/// Times are `CLOCK_MONOTONIC_COARSE` ns (the kernel's
/// `bpf_ktime_get_coarse_ns`: a tick of the scheduler clock, cheap to
/// read), not the events' `CLOCK_BOOTTIME`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggSlot {
    pub key: AggKey,
    /// Attempts of `key` in this slot so far (0: the slot is empty).
    pub total: u64,
    /// `total` as of the kernel's last event for the key that reached the
    /// ring (a lost one does not count: the eviction reports its attempts).
    pub emitted: u64,
    /// When an event for this key was last emitted.
    pub last_emit_ns: u64,
    pub _pad: u64,
}
const _: () = assert!(size_of::<AggSlot>() == 64);

/// Slots per CPU in `EGRESS_AGG` (a power of two).
pub const AGG_SLOTS: u32 = 4096;

/// The slot of `key`: a multiplicative hash of its bytes (keys differ
/// mostly in the address, the process and the port).
#[inline(always)]
pub fn agg_slot(key: &AggKey) -> u32 {
    let a = u64::from_ne_bytes([key.addr[0], key.addr[1], key.addr[2], key.addr[3], key.addr[4], key.addr[5], key.addr[6], key.addr[7]]);
    let b =
        u64::from_ne_bytes([key.addr[8], key.addr[9], key.addr[10], key.addr[11], key.addr[12], key.addr[13], key.addr[14], key.addr[15]]);
    let c = (key.identity as u64) << 32 | key.tgid as u64;
    let d = (key.generation as u64) << 32 | (key.port as u64) << 16 | (key.proto as u64) << 8 | key.decided as u64;
    let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h ^ b.rotate_left(23)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h = (h ^ c.rotate_left(41)).wrapping_mul(0x1656_67b1_9e37_79f9);
    h = (h ^ d).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 32) as u32 & (AGG_SLOTS - 1)
}

/// One identity's event budget on one CPU (`IDENTITY_BUDGET`, indexed by
/// [`crate::loss::identity_slot`]), and the attempts folded into counts
/// when it was spent. Every connect event an identity's decisions cause
/// (a new aggregation key, or a key's next window) takes a token; tokens
/// refill at [`crate::Config::event_rate`] per second up to one second's
/// worth. Without a token a new key's attempt is not cached (so it cannot
/// evict another identity's key) but counted here, and reported by user
/// space as a counted summary of the identity (`connect_folded`); a cached
/// key's attempts stay counted in its slot. So one identity's flood cannot
/// crowd out another's events, and the counts still add up to every
/// attempt. Times are `CLOCK_MONOTONIC_COARSE` ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityBudget {
    pub tokens: u64,
    /// When tokens were last added.
    pub refill_ns: u64,
    /// Folded attempts by outcome.
    pub folded: IdentityCounters,
    /// The first and the last folded attempt (0: none yet).
    pub first_ns: u64,
    pub last_ns: u64,
    pub _pad: u64,
}
const _: () = assert!(size_of::<IdentityBudget>() == 64);

/// Per-identity decision counters (per CPU; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityCounters {
    pub allowed: u64,
    pub denied: u64,
    /// Allowed, but the policy would deny (audit mode).
    pub audited: u64,
}
const _: () = assert!(size_of::<IdentityCounters>() == 24);

impl IdentityCounters {
    /// Counts one decision by what the kernel did with it.
    #[inline(always)]
    pub fn count(&mut self, verdict: Verdict) {
        if verdict.action == DENY {
            self.denied += 1;
        } else if verdict.decided == DENY {
            self.audited += 1;
        } else {
            self.allowed += 1;
        }
    }

    /// What was counted since `earlier` (0 for a counter that went back).
    pub fn since(self, earlier: IdentityCounters) -> IdentityCounters {
        IdentityCounters {
            allowed: self.allowed.saturating_sub(earlier.allowed),
            denied: self.denied.saturating_sub(earlier.denied),
            audited: self.audited.saturating_sub(earlier.audited),
        }
    }
}

/// User space sums the counters over CPUs.
impl core::ops::Add for IdentityCounters {
    type Output = IdentityCounters;
    fn add(self, o: IdentityCounters) -> IdentityCounters {
        IdentityCounters { allowed: self.allowed + o.allowed, denied: self.denied + o.denied, audited: self.audited + o.audited }
    }
}

/// The single entry of the `POLICY_ACTIVE` array: which slot programs
/// read. Read once per decision, so a decision sees one whole policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActivePolicy {
    pub slot: u32,
    /// 0 until a policy is applied; then increments with every switch.
    pub generation: u32,
}
const _: () = assert!(size_of::<ActivePolicy>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// What the kernel does: [`ALLOW`] or [`DENY`] (EPERM).
    pub action: u8,
    /// What the policy said; `DENY` with `action == ALLOW` is an audit "would deny".
    pub decided: u8,
    pub mode: u8,
    pub _pad: u8,
    /// Rule index, or [`RULE_DEFAULT`], [`RULE_NO_POLICY`], [`RULE_NONE_APPLIED`].
    pub rule: u32,
}
const _: () = assert!(size_of::<Verdict>() == 8);

impl Verdict {
    #[inline(always)]
    pub const fn new(decided: u8, mode: u8, rule: u32) -> Self {
        let action = if decided == DENY && mode == ENFORCE { DENY } else { ALLOW };
        Verdict { action, decided, mode, _pad: 0, rule }
    }
}

/// The egress decision: among the rules of the longest matching prefix
/// (which include those of every covering prefix), a matching deny wins,
/// else a matching allow, else the identity's default.
#[inline(always)]
pub fn decide_net(policy: &IdentityPolicy, list: Option<&NetRuleList>, proto: u8, port: u16) -> Verdict {
    let mut allow: Option<&NetRule> = None;
    if let Some(list) = list {
        let mut i = 0;
        while i < NET_RULES_PER_PREFIX {
            if i as u32 >= list.count {
                break;
            }
            let r = &list.rules[i];
            if (r.proto == PROTO_ANY || r.proto == proto) && r.port_lo <= port && port <= r.port_hi {
                if r.action == DENY {
                    return Verdict::new(DENY, r.mode, r.rule);
                }
                if allow.is_none() {
                    allow = Some(r);
                }
            }
            i += 1;
        }
    }
    match allow {
        Some(r) => Verdict::new(ALLOW, r.mode, r.rule),
        None => Verdict::new(policy.default_egress, policy.mode, RULE_DEFAULT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(size_of::<AggKey>(), 32);
        assert_eq!(core::mem::offset_of!(AggKey, addr), 16);
        assert_eq!(size_of::<AggSlot>(), 64);
        assert_eq!(size_of::<NetRuleList>(), 200);
    }

    #[test]
    fn identity_elements() {
        assert_eq!(identity_index(0, 1), Some(1));
        assert_eq!(identity_index(1, 1), Some(IDENTITY_SLOT_STRIDE + 1));
        assert_eq!(identity_index(1, crate::maps::MAX_IDENTITIES), Some(2 * IDENTITY_SLOT_STRIDE - 2));
        assert_eq!(identity_index(1, crate::PENDING_IDENTITY), Some(2 * IDENTITY_SLOT_STRIDE - 1));
        assert_eq!(identity_index(0, 0), None);
        assert_eq!(identity_index(0, crate::maps::MAX_IDENTITIES + 1), None);
        assert_eq!(identity_index(2, 1), None);
        assert_eq!(crate::maps::IDENTITY_POLICY_CAPACITY, 2 * IDENTITY_SLOT_STRIDE);
    }

    #[test]
    fn mptcp_matches_as_tcp() {
        assert_eq!(match_proto(IPPROTO_MPTCP), PROTO_TCP);
        assert_eq!(match_proto(6), PROTO_TCP);
        assert_eq!(match_proto(17), PROTO_UDP);
        assert_eq!(match_proto(0), PROTO_ANY);
        assert_eq!(match_proto(255), 255);
        // Beyond 255 only MPTCP exists; anything else must not wrap onto a
        // real protocol (273 as u8 would be 17, udp).
        assert_eq!(match_proto(273), PROTO_ANY);
        // A tcp deny rule governs an MPTCP socket: no bypass.
        let mut list = NetRuleList::default();
        list.rules[0] = NetRule { port_lo: 443, port_hi: 443, proto: PROTO_TCP, action: DENY, mode: ENFORCE, _pad: 0, rule: 0 };
        list.count = 1;
        let pol = IdentityPolicy { default_egress: ALLOW, mode: ENFORCE, ..Default::default() };
        assert_eq!(decide_net(&pol, Some(&list), match_proto(IPPROTO_MPTCP), 443).action, DENY);
    }

    #[test]
    fn decide_net_deny_wins_then_allow_then_default() {
        let rule = |lo, hi, proto, action, mode, rule| NetRule { port_lo: lo, port_hi: hi, proto, action, mode, _pad: 0, rule };
        let mut list = NetRuleList::default();
        list.rules[0] = rule(443, 443, PROTO_TCP, ALLOW, ENFORCE, 0);
        list.rules[1] = rule(0, 65535, PROTO_ANY, DENY, AUDIT, 1);
        list.rules[2] = rule(22, 22, PROTO_TCP, DENY, ENFORCE, 2);
        list.count = 3;
        let pol = IdentityPolicy { default_egress: DENY, mode: ENFORCE, ..Default::default() };
        // 443/tcp: allow rule 0 matches, but audit deny rule 1 matches too: deny wins, audited.
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443), Verdict::new(DENY, AUDIT, 1));
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443).action, ALLOW);
        list.rules[1] = rule(1000, 2000, PROTO_UDP, DENY, AUDIT, 1);
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 443), Verdict::new(ALLOW, ENFORCE, 0));
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 22), Verdict { action: DENY, decided: DENY, mode: ENFORCE, _pad: 0, rule: 2 });
        assert_eq!(decide_net(&pol, Some(&list), PROTO_UDP, 53), Verdict::new(DENY, ENFORCE, RULE_DEFAULT));
        assert_eq!(decide_net(&pol, None, PROTO_TCP, 443).rule, RULE_DEFAULT);
        // count bounds the scan: rule 2 is invisible with count 2.
        list.count = 2;
        assert_eq!(decide_net(&pol, Some(&list), PROTO_TCP, 22).rule, RULE_DEFAULT);
        let audit = IdentityPolicy { mode: AUDIT, ..pol };
        assert_eq!(decide_net(&audit, None, PROTO_TCP, 1).action, ALLOW);
    }
}

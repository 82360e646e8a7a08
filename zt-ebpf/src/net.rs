//! Egress decisions at the cgroup `connect4`/`connect6` hooks and, for UDP
//! datagrams sent without connect(), `sendmsg4`/`sendmsg6` (all attached at
//! the cgroup v2 root, so every process is covered).
//!
//! Processes without an identity cost one inlined array read
//! (`PID_IDENTITY[tgid]`; a `PROC_TABLE` lookup too for a tgid beyond the
//! array) and are allowed (and observed only with `OBSERVE_ALL_CONNECTS`). For an identity, the active
//! policy slot is read once, so one decision never mixes two policies; the
//! identity's rules for the destination come from one LPM lookup and are
//! decided by `zt_common::policy::decide_net`, the same function
//! `zt-agent policy explain` runs. A deny in enforce mode returns 0: the
//! caller gets EPERM before any packet leaves.
//!
//! Repeated attempts to one destination are aggregated in `EGRESS_AGG`, a
//! per-CPU direct-mapped cache (`zt_common::policy::AggSlot`): at most one
//! event per (identity, process, destination, port, protocol, decision,
//! policy generation) per second on each CPU, each carrying that CPU's
//! running attempt count; a key evicted by another is reported with its
//! count (`AggEvictEvent`), and user space reports what is left when the
//! attempts stop. Every attempt is counted, with one caveat: the per-CPU
//! counters are plain adds, and these programs can be preempted (see
//! `aggregate`), so under full preemption a racing attempt on the same CPU
//! can lose a count.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use zt_common::{
    AF_INET, AF_INET6, AggEvictEvent, ConnectEvent, NO_IDENTITY, config_flags, hook, kind, loss,
    policy::{
        AGG_WINDOW_NS, ALLOW, AUDIT, AggKey, AggSlot, DENY, ENFORCE, NetKeyData, PROTO_TCP, PROTO_UDP, RULE_NO_POLICY, RULE_NONE_APPLIED,
        Verdict, agg_slot, decide_net, match_proto,
    },
};

use crate::{
    events::{Ring, reserve, submit},
    maps::{EGRESS_AGG, IDENTITY_BUDGET, IDENTITY_COUNTERS, NET_RULES, PROC_TABLE, config, identity_of, identity_policy},
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, AF_INET, hook::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, AF_INET6, hook::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    decide(&ctx, AF_INET, hook::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    decide(&ctx, AF_INET6, hook::SENDMSG6)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, family: u16, hook: u32) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let identity = identity_of(tgid);
    if identity == NO_IDENTITY {
        if config().flags & config_flags::OBSERVE_ALL_CONNECTS != 0 {
            let (addr, port, protocol) = destination(ctx, family);
            let _ = emit(ctx, family, hook, identity, 0, 0, addr, port, protocol, Verdict::new(ALLOW, ENFORCE, 0), 0, 0);
        }
        return 1;
    }
    let (addr, port, protocol) = destination(ctx, family);
    // Rules match MPTCP as TCP, deliberately (see `match_proto`): an MPTCP
    // connection is TCP subflows, so a tcp rule must govern it and asking
    // for IPPROTO_MPTCP must not dodge one. The event keeps `protocol` as
    // the socket has it, so user space can say "mptcp".
    let proto = match_proto(protocol);
    let (active, pol) = identity_policy(identity);
    let verdict = match (active.generation, pol) {
        (0, _) => Verdict::new(ALLOW, AUDIT, RULE_NONE_APPLIED),
        // An identity the policy in force does not know: fail closed.
        (_, None) => Verdict::new(DENY, ENFORCE, RULE_NO_POLICY),
        (_, Some(pol)) => {
            let data = NetKeyData { slot: active.slot, identity, addr };
            let list = NET_RULES.get(Key::new(192, data));
            decide_net(&pol, list, proto, port)
        }
    };
    count_decision(identity, verdict);
    let key = AggKey { identity, tgid, generation: active.generation, port, proto, decided: verdict.decided, addr };
    if let Some(repeats_total) = aggregate(&key, verdict) {
        // The table lookup only when an event is due (at most once a second
        // per destination), not on every decision.
        // SAFETY: as for the lookup above: all-integer value, copied out here.
        let (start_ns, cgroup_id) = match unsafe { PROC_TABLE.get(tgid) } {
            Some(p) => (p.start_ns, p.cgroup_id),
            None => (0, 0),
        };
        if emit(ctx, family, hook, identity, start_ns, cgroup_id, addr, port, protocol, verdict, active.generation, repeats_total) {
            emitted(&key, repeats_total);
        }
    }
    if verdict.action == DENY { 0 } else { 1 }
}

/// Counts one decision in the identity's per-CPU counters.
#[inline(always)]
pub fn count_decision(identity: u32, verdict: Verdict) {
    if let Some(c) = IDENTITY_COUNTERS.get_ptr_mut(identity) {
        // SAFETY: the lookup bounds-checked `identity` and returned this
        // CPU's slot, valid and aligned for the run. Only these socket
        // programs write it, but they run with migration, not preemption,
        // disabled (kernel/bpf/cgroup.c `bpf_prog_run_array_cg`): on a fully
        // preemptible kernel another task's decision on this CPU can update
        // the slot between our load and store and one count is lost. The
        // fields are plain u64s, so nothing worse can happen.
        unsafe { (*c).count(verdict) };
    }
}

/// Counts the attempt under its key in this CPU's slot of the aggregation
/// cache; returns the running total when an event is due (first attempt in
/// the slot, or the window since the last event passed), `None` when it is
/// folded into the next event. A key that finds its slot held by another
/// key takes it over, after reporting what the evicted key had not
/// reported yet (`AggEvictEvent`, in the ring its decision belongs to).
/// An event due while the identity is over its budget is not emitted: a
/// known key's attempts stay counted in its slot, a new key's attempt is
/// folded into its identity's counts (`fold`), as it is when the evicted
/// key's report finds no room in the ring.
#[inline(always)]
fn aggregate(key: &AggKey, verdict: Verdict) -> Option<u64> {
    // The coarse clock (CLOCK_MONOTONIC_COARSE, ticks of the scheduler
    // clock): a precise one costs 70-100 ns per read on these VMs, a third
    // of the whole decision, and one-second windows need no more than ticks.
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The slot index is below AGG_SLOTS, the array's size: never None.
    let slot = EGRESS_AGG.get_ptr_mut(agg_slot(key))?;
    // SAFETY: this CPU's element of a per-CPU array, valid and aligned for
    // the run. Not exclusive: another task's decision on this CPU can
    // preempt us under full preemption (cgroup programs run with migration
    // disabled only) and update the slot in between; that can lose or
    // misplace one count. The fields stay plain integers.
    let slot = unsafe { &mut *slot };
    if slot.total != 0 && slot.key == *key {
        slot.total += 1;
        // Over budget: the attempts stay counted in the slot for later.
        if now.wrapping_sub(slot.last_emit_ns) < AGG_WINDOW_NS || !take_token(key.identity, now) {
            return None;
        }
        slot.last_emit_ns = now;
        return Some(slot.total);
    }
    // A new key: over budget, or its slot's key not reported, it is only
    // counted for its identity; the slot keeps what it holds.
    if !take_token(key.identity, now) || (slot.total > slot.emitted && !evicted(&slot.key, slot.total)) {
        fold(key.identity, verdict, now);
        return None;
    }
    *slot = AggSlot { key: *key, total: 1, emitted: 0, last_emit_ns: now, _pad: 0 };
    Some(1)
}

/// Takes one of `identity`'s event tokens on this CPU, refilling them at
/// `Config::event_rate` per second (at most one second's worth).
#[inline(always)]
fn take_token(identity: u32, now: u64) -> bool {
    let rate = config().event_rate as u64;
    if rate == 0 {
        return true;
    }
    let Some(b) = IDENTITY_BUDGET.get_ptr_mut(loss::identity_slot(identity)) else { return true };
    // SAFETY: this CPU's element, valid for the run; plain integers (a
    // preempting decision can lose or add one token at worst).
    let b = unsafe { &mut *b };
    let elapsed = now.wrapping_sub(b.refill_ns);
    let add = if elapsed >= NS_PER_SEC { rate } else { elapsed * rate / NS_PER_SEC };
    if add > 0 {
        b.tokens = if b.tokens + add > rate { rate } else { b.tokens + add };
        b.refill_ns = now;
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// Counts an attempt no event or slot reports, for its identity.
#[inline(always)]
fn fold(identity: u32, verdict: Verdict, now: u64) {
    if let Some(b) = IDENTITY_BUDGET.get_ptr_mut(loss::identity_slot(identity)) {
        // SAFETY: as in `take_token`.
        let b = unsafe { &mut *b };
        b.folded.count(verdict);
        if b.first_ns == 0 {
            b.first_ns = now;
        }
        b.last_ns = now;
    }
}

/// Records that an event carried `key`'s running total `total` (one whose
/// record could not be reserved is not: its attempts are reported when the
/// key is evicted, or by user space's flush).
#[inline(always)]
fn emitted(key: &AggKey, total: u64) {
    if let Some(slot) = EGRESS_AGG.get_ptr_mut(agg_slot(key)) {
        // SAFETY: as in `aggregate`.
        let slot = unsafe { &mut *slot };
        if slot.key == *key && slot.emitted < total {
            slot.emitted = total;
        }
    }
}

/// Reports an evicted key's attempts (user space subtracts what it already
/// reported for the key on this CPU); false when the ring had no room.
#[inline(always)]
fn evicted(key: &AggKey, total: u64) -> bool {
    let ring = if key.decided == DENY { Ring::Security } else { Ring::Telemetry };
    let Some(mut entry) = reserve::<AggEvictEvent>(ring, loss::AGG_EVICT, key.identity) else { return false };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for an
    // AggEvictEvent that only this program sees until `submit`; the helper
    // takes no arguments.
    unsafe {
        (*ev).header = crate::lineage::event_header(kind::AGG_EVICT, key.identity, 0, 0);
        (*ev).key = *key;
        (*ev).total = total;
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev)._pad = 0;
    }
    submit(ring, entry);
    true
}

/// Destination as an IPv6 address (IPv4 as `::ffff:a.b.c.d`), port in host
/// order, and the socket's protocol (from the socket type when the protocol
/// is implicit).
///
/// An MPTCP connect arrives here as TCP today: the kernel runs these hooks on
/// the MPTCP socket's first subflow, a TCP socket (`mptcp_connect()` in
/// `net/mptcp/protocol.c` calls the subflow's `pre_connect`). 262 is handled
/// (see `decide`) for a kernel that runs them on the MPTCP socket itself.
#[inline(always)]
fn destination(ctx: &SockAddrContext, family: u16) -> ([u8; 16], u16, u32) {
    // SAFETY: the context pointer the kernel passed to this program, valid
    // for the run; the verifier checks at load that each field read through
    // it is readable at this attach point (e.g. user_ip6 only at the IPv6
    // hooks) and rewrites the reads into reads of the kernel's own struct.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&sa.user_ip4.to_ne_bytes());
    } else {
        for (i, word) in sa.user_ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(sa.user_port as u16);
    let protocol = match (sa.protocol, sa.type_) {
        (0, SOCK_STREAM) => PROTO_TCP as u32,
        (0, SOCK_DGRAM) => PROTO_UDP as u32,
        (p, _) => p,
    };
    (addr, port, protocol)
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the arguments are the fields of the ConnectEvent written in place into the ring buffer; building one on the stack first would take 120 of the 512 stack bytes"
)]
fn emit(
    ctx: &SockAddrContext,
    family: u16,
    hook: u32,
    identity: u32,
    start_ns: u64,
    cgroup_id: u64,
    addr: [u8; 16],
    port: u16,
    protocol: u32,
    verdict: Verdict,
    generation: u32,
    repeats_total: u64,
) -> bool {
    // Denials and would-denies are security records: their own ring.
    let ring = if verdict.decided == DENY { Ring::Security } else { Ring::Telemetry };
    let Some(mut entry) = reserve::<ConnectEvent>(ring, loss::RINGBUF_CONNECT, identity) else {
        return false;
    };
    // SAFETY: the program's context pointer, valid for the run; the verifier
    // checks that `type_` is readable here.
    let sa = unsafe { &*ctx.sock_addr };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for a
    // ConnectEvent (its size, 8-byte aligned) that only this program can see
    // until `submit`: the field writes are in bounds and unaliased. The two
    // helpers take no arguments and have no preconditions.
    unsafe {
        let cgroup_id = if cgroup_id != 0 { cgroup_id } else { bpf_get_current_cgroup_id() };
        (*ev).header = crate::lineage::event_header(kind::CONNECT, identity, start_ns, cgroup_id);
        (*ev).family = family;
        (*ev).port = port;
        (*ev).sock_type = sa.type_;
        (*ev).protocol = protocol;
        (*ev).verdict = verdict;
        (*ev).generation = generation;
        (*ev).hook = hook;
        (*ev).cpu = bpf_get_smp_processor_id();
        (*ev).repeats_total = repeats_total;
        (*ev).addr = addr;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).netns_cookie = bpf_get_netns_cookie(ctx.sock_addr.cast());
    }
    submit(ring, entry);
    true
}

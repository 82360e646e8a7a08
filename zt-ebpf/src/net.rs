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
//! Repeated attempts to one destination are aggregated in `EGRESS_AGG`: at
//! most one event per (identity, process, destination, port, protocol,
//! decision, policy generation) per second on each CPU, each carrying that CPU's running
//! attempt count; user space reports what is left when the attempts stop.
//! Every attempt is counted, with one caveat: the per-CPU counters are plain
//! adds, and these programs can be preempted (see `aggregate`), so under full
//! preemption a racing attempt on the same CPU can lose a count.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_netns_cookie, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns},
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use zt_common::{
    AF_INET, AF_INET6, ConnectEvent, NO_IDENTITY, config_flags, hook, kind, loss,
    policy::{
        AGG_WINDOW_NS, ALLOW, AUDIT, AggKey, AggValue, DENY, ENFORCE, NetKeyData, PROTO_TCP, PROTO_UDP, RULE_NO_POLICY, RULE_NONE_APPLIED,
        Verdict, decide_net, match_proto,
    },
};

use crate::{
    events::{count_loss, reserve, submit},
    maps::{EGRESS_AGG, IDENTITY_COUNTERS, NET_RULES, PROC_TABLE, config, identity_of, identity_policy},
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
            emit(ctx, family, hook, identity, 0, 0, addr, port, protocol, Verdict::new(ALLOW, ENFORCE, 0), 0, 0);
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
    if let Some(repeats_total) =
        aggregate(AggKey { identity, tgid, generation: active.generation, port, proto, decided: verdict.decided, addr })
    {
        // The table lookup only when an event is due (at most once a second
        // per destination), not on every decision.
        // SAFETY: as for the lookup above: all-integer value, copied out here.
        let (start_ns, cgroup_id) = match unsafe { PROC_TABLE.get(tgid) } {
            Some(p) => (p.start_ns, p.cgroup_id),
            None => (0, 0),
        };
        emit(ctx, family, hook, identity, start_ns, cgroup_id, addr, port, protocol, verdict, active.generation, repeats_total);
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
        let c = unsafe { &mut *c };
        if verdict.action == DENY {
            c.denied += 1;
        } else if verdict.decided == DENY {
            c.audited += 1;
        } else {
            c.allowed += 1;
        }
    }
}

/// Counts the attempt under its key; returns the running total when an
/// event is due (first attempt, or the window since the last event passed),
/// `None` when it is folded into the next event. A full table is counted
/// and the attempt reported on its own (total 0).
#[inline(always)]
fn aggregate(key: AggKey) -> Option<u64> {
    // The coarse clock (CLOCK_MONOTONIC_COARSE, ticks of the scheduler
    // clock): a precise one costs 70-100 ns per read on these VMs, a third
    // of the whole decision, and one-second windows need no more than ticks.
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match EGRESS_AGG.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: the lookup returned this CPU's slot of the element,
            // valid and aligned for the run (a preallocated element stays
            // mapped even if removed meanwhile). Not exclusive: another
            // task's decision on this CPU can preempt us under full
            // preemption (cgroup programs run with migration disabled only),
            // and user space may remove an idle key, letting the element be
            // reused for another key. Either race can lose or misplace one
            // count; the fields stay plain u64s.
            let v = unsafe { &mut *v };
            v.total += 1;
            v.last_seen_ns = now;
            if now.wrapping_sub(v.last_emit_ns) < AGG_WINDOW_NS {
                return None;
            }
            v.last_emit_ns = now;
            Some(v.total)
        }
        None => {
            let v = AggValue { total: 1, last_emit_ns: now, last_seen_ns: now };
            match EGRESS_AGG.insert(key, v, BPF_NOEXIST as u64) {
                Ok(()) => Some(1),
                Err(_) => {
                    // Full (or inserted concurrently by another CPU): report
                    // this attempt on its own rather than lose it.
                    count_loss(loss::AGG_FULL);
                    Some(0)
                }
            }
        }
    }
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
) {
    let Some(mut entry) = reserve::<ConnectEvent>(loss::RINGBUF_CONNECT) else {
        return;
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
    submit(entry);
}

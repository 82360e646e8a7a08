//! Outbound connection attempts seen at the cgroup `connect4`/`connect6`
//! hooks (attached at the cgroup v2 root, so every process is covered).
//!
//! Observe only: both programs always return 1 (allow). Enforcement comes
//! with the network issue. Processes without an identity cost one hash miss
//! and return, unless `OBSERVE_ALL_CONNECTS` is set.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use zt_common::{AF_INET, AF_INET6, ConnectEvent, NO_IDENTITY, config_flags, kind, loss};

use crate::{
    events::{reserve, submit},
    maps::{PROC_TABLE, config},
};

const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, AF_INET6);
    ALLOW
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, family: u16) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (identity, start_ns, cgroup_id) = match unsafe { PROC_TABLE.get(&tgid) } {
        Some(p) => (p.identity, p.start_ns, p.cgroup_id),
        None => (NO_IDENTITY, 0, 0),
    };
    if identity == NO_IDENTITY && config().flags & config_flags::OBSERVE_ALL_CONNECTS == 0 {
        return;
    }
    let Some(mut entry) = reserve::<ConnectEvent>(loss::RINGBUF_CONNECT) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        let sa = &*ctx.sock_addr;
        let cgroup_id = if cgroup_id != 0 {
            cgroup_id
        } else {
            aya_ebpf::helpers::bpf_get_current_cgroup_id()
        };
        (*ev).header = crate::lineage::event_header(kind::CONNECT, identity, start_ns, cgroup_id);
        (*ev).family = family;
        // user_port holds the port in network byte order in its low 16 bits.
        (*ev).port = u16::from_be(sa.user_port as u16);
        (*ev).sock_type = sa.type_;
        (*ev).protocol = sa.protocol;
        (*ev)._pad = 0;
        let mut addr = [0u8; 16];
        if family == AF_INET {
            addr[..4].copy_from_slice(&sa.user_ip4.to_ne_bytes());
        } else {
            for (i, word) in sa.user_ip6.iter().enumerate() {
                addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
        }
        (*ev).addr = addr;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    submit(entry);
}

//! Unix-domain socket decisions at the cgroup `connect_unix` and
//! `sendmsg_unix` hooks (Linux >= 6.7; attached at the cgroup v2 root).
//!
//! The ELF sections say `cgroup/connect4`: aya 0.14 knows no Unix attach
//! type, so `zt-agent/src/bpf/unix.rs` loads these two functions itself
//! with the right expected attach type. The address is not in the context
//! the verifier exposes for these hooks (only kfuncs reach it), so it is
//! read from the kernel's `struct bpf_sock_addr_kern` behind the context
//! pointer, at offsets user space takes from BTF (`SOCK_ADDR_UADDR_OFF`,
//! `SOCK_ADDR_UADDRLEN_OFF`), with `bpf_probe_read_kernel`.
//!
//! Processes without an identity pay the one array read and are allowed.
//! For an identity, the name (see `zt_common::unix`) is looked up in
//! `UNIX_RULES` and decided by `zt_common::unix::decide_unix` (the function
//! `policy explain` runs): like an IP destination, except that an
//! unnormalized path never matches an allow rule. Every decision is
//! counted in `IDENTITY_COUNTERS`; denials and would-denies are reported
//! one by one as `UnixEvent`s.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel, generated},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use zt_common::{
    NO_IDENTITY, hook, kind, loss,
    policy::{ALLOW, AUDIT, DENY, ENFORCE, RULE_DEFAULT, RULE_NO_POLICY, RULE_NONE_APPLIED, Verdict},
    unix::{NAME_LEN, SUN_PATH_LEN, SUN_PATH_OFFSET, UnixEvent, UnixKeyData, decide_unix, name_kind, unnormalized},
};

use crate::{
    events::{Ring, reserve, submit},
    maps::{SOCK_ADDR_UADDR_OFF, SOCK_ADDR_UADDRLEN_OFF, UNIX_RULES, global, identity_of, identity_policy},
    net::count_decision,
};

#[cgroup_sock_addr(connect4)]
pub fn connect_unix(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::CONNECT_UNIX)
}

#[cgroup_sock_addr(connect4)]
pub fn sendmsg_unix(ctx: SockAddrContext) -> i32 {
    decide(&ctx, hook::SENDMSG_UNIX)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, hook: u32) -> i32 {
    let identity = identity_of((bpf_get_current_pid_tgid() >> 32) as u32);
    if identity == NO_IDENTITY {
        return 1;
    }
    let (active, pol) = identity_policy(identity);
    let mut key = Key::new(0, UnixKeyData { slot: active.slot, identity, name: [0; NAME_LEN] });
    let (path_len, read) = read_name(ctx, &mut key.data.name);
    let verdict = match (active.generation, pol) {
        (0, _) => Verdict::new(ALLOW, AUDIT, RULE_NONE_APPLIED),
        (_, None) => Verdict::new(DENY, ENFORCE, RULE_NO_POLICY),
        // An address that could not be read is decided by no rule: the
        // identity's default.
        (_, Some(pol)) if !read => Verdict::new(pol.default_egress, pol.mode, RULE_DEFAULT),
        (_, Some(pol)) => {
            key.prefix_len = (8 * size_of::<UnixKeyData>()) as u32;
            decide_unix(&pol, UNIX_RULES.get(&key), &key.data.name)
        }
    };
    count_decision(identity, verdict);
    if verdict.decided == DENY {
        let odd = key.data.name[0] == name_kind::PATH && unnormalized(&key.data.name);
        emit(ctx, identity, hook, verdict, active.generation, path_len, odd, &key.data.name);
    }
    if verdict.action == DENY { 0 } else { 1 }
}

/// Reads the address into `name` as `zt_common::unix` keys it; returns the
/// `sun_path` length the caller gave and whether the read worked.
#[inline(always)]
fn read_name(ctx: &SockAddrContext, name: &mut [u8; NAME_LEN]) -> (u32, bool) {
    let (uaddr_off, len_off) = (global(&SOCK_ADDR_UADDR_OFF), global(&SOCK_ADDR_UADDRLEN_OFF));
    let base = ctx.sock_addr as *const u8;
    // SAFETY: bpf_probe_read_kernel copies through the kernel's checked
    // copy (a bad address is an error, not a fault); `base` is the
    // context pointer, which points at a `struct bpf_sock_addr_kern`, and
    // the offsets are its members' from BTF (u32::MAX when unknown: user
    // space then never loads this program).
    let (uaddr, uaddrlen) = unsafe {
        match (
            bpf_probe_read_kernel(base.wrapping_add(uaddr_off as usize) as *const u64),
            bpf_probe_read_kernel(base.wrapping_add(len_off as usize) as *const u32),
        ) {
            (Ok(a), Ok(l)) => (a, l),
            _ => return (0, false),
        }
    };
    let path_len = uaddrlen.saturating_sub(SUN_PATH_OFFSET);
    let n = if path_len > SUN_PATH_LEN as u32 { SUN_PATH_LEN as u32 } else { path_len };
    if n == 0 {
        // An address without a path (autobind): no name, no rule.
        return (path_len, false);
    }
    // SAFETY: copies `n` (1..=108) bytes into name[1..=108], inside the
    // 112-byte array; the source is the kernel's copy of the address
    // (at least `uaddrlen` bytes), read through the checked copy.
    let r = unsafe {
        generated::bpf_probe_read_kernel(
            name.as_mut_ptr().add(1).cast(),
            n,
            (uaddr as *const u8).wrapping_add(SUN_PATH_OFFSET as usize).cast(),
        )
    };
    if r != 0 {
        return (path_len, false);
    }
    if name[1] == 0 {
        // Abstract: [kind, length, name...]; the NUL read into name[1]
        // makes room for the length.
        name[0] = name_kind::ABSTRACT;
        name[1] = (n - 1) as u8;
    } else {
        name[0] = name_kind::PATH;
    }
    (path_len, true)
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of the UnixEvent, written in place into the ring buffer")]
fn emit(
    ctx: &SockAddrContext,
    identity: u32,
    hook: u32,
    verdict: Verdict,
    generation: u32,
    path_len: u32,
    odd: bool,
    name: &[u8; NAME_LEN],
) {
    let Some(mut entry) = reserve::<UnixEvent>(Ring::Security, loss::RINGBUF_UNIX, identity) else { return };
    // SAFETY: the program's context pointer, valid for the run; `type_` is
    // readable at every sock_addr hook.
    let sock_type = unsafe { (*ctx.sock_addr).type_ };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for a UnixEvent
    // (its size, 8-byte aligned) that only this program sees until
    // `submit`: the field writes are in bounds and unaliased.
    unsafe {
        (*ev).header = crate::lineage::current_process_header(kind::UNIX, identity);
        (*ev).hook = hook;
        (*ev).sock_type = sock_type;
        (*ev).verdict = verdict;
        (*ev).generation = generation;
        (*ev).path_len = path_len;
        (*ev).unnormalized = odd as u32;
        (*ev)._pad = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).name = *name;
    }
    submit(Ring::Security, entry);
}

//! The kernel side of continuous verification ([`crate::verify`]): which
//! programs of ours are attached at the cgroup root, and which programs the
//! kernel has there now.
//!
//! # Layout
//! - [`Bpf::cgroup_attachments`]: what this run attached (program name,
//!   kernel program id, attach type), from the hook table.
//! - [`cgroup_programs`]: `BPF_PROG_QUERY` on a cgroup for one attach type.
//!
//! Only the cgroup hooks are checked this way: a cgroup link can be
//! detached from outside (`BPF_LINK_DETACH` on a link taken by id or from
//! its pin) and another program attached beside or instead of ours. Our
//! tracepoint links (perf-event links) cannot be detached from outside;
//! they end only when every holder closes them, which for this process
//! means killing it (the pins keep them then).
use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use aya_obj::generated::bpf_attach_type as T;
use zt_common::programs as P;

use super::loader::Bpf;

const BPF_PROG_QUERY: libc::c_long = 16;

/// One program this run attached at the cgroup root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupAttachment {
    pub program: &'static str,
    /// The kernel's id of our loaded program.
    pub id: u32,
    /// `bpf_attach_type`.
    pub attach_type: u32,
}

/// The attach type each cgroup program of ours uses.
fn attach_type(program: &str) -> Option<T> {
    Some(match program {
        P::CONNECT4 => T::BPF_CGROUP_INET4_CONNECT,
        P::CONNECT6 => T::BPF_CGROUP_INET6_CONNECT,
        P::SENDMSG4 => T::BPF_CGROUP_UDP4_SENDMSG,
        P::SENDMSG6 => T::BPF_CGROUP_UDP6_SENDMSG,
        P::SOCK_CREATE => T::BPF_CGROUP_INET_SOCK_CREATE,
        P::GUARD_ROUTE => T::BPF_CGROUP_INET_EGRESS,
        _ => return super::unix::HOOKS.iter().find(|(p, _)| *p == program).map(|(_, t)| *t),
    })
}

impl Bpf {
    /// The cgroup programs this run attached, with their kernel ids.
    pub fn cgroup_attachments(&self) -> Vec<CgroupAttachment> {
        let mut ids: Vec<(&'static str, u32)> =
            self.hooks.iter().filter(|h| h.attached).filter_map(|h| Some((h.program, self.program_id(h.program)?))).collect();
        ids.dedup();
        ids.into_iter()
            .filter_map(|(program, id)| Some(CgroupAttachment { program, id, attach_type: attach_type(program)? as u32 }))
            .collect()
    }
}

/// Ids of the programs attached directly at `cgroup` for `attach_type`.
pub fn cgroup_programs(cgroup: &Path, attach_type: u32) -> std::io::Result<Vec<u32>> {
    let dir = std::fs::File::open(cgroup)?;
    query(dir.as_fd(), attach_type)
}

fn query(target: BorrowedFd<'_>, attach_type: u32) -> std::io::Result<Vec<u32>> {
    // The kernel's `bpf_attr.query` prefix up to `prog_cnt` (the rest of
    // the union is zero: no link ids, no revision).
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
    }
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = Query {
            target_fd: target.as_raw_fd() as u32,
            attach_type,
            query_flags: 0,
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            _pad: 0,
        };
        // SAFETY: bpf(2) reads `attr` (an initialised #[repr(C)] prefix of
        // `bpf_attr`) and writes at most `prog_cnt` ids to `prog_ids`, a
        // buffer of that many u32 that outlives the call, then `prog_cnt`.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr, size_of::<Query>()) };
        let count = attr.prog_cnt as usize;
        if r == 0 {
            ids.truncate(count);
            return Ok(ids);
        }
        let e = std::io::Error::last_os_error();
        // ENOSPC: more programs than room; `prog_cnt` says how many.
        if e.raw_os_error() == Some(libc::ENOSPC) && count > ids.len() {
            ids = vec![0; count];
            continue;
        }
        return Err(e);
    }
}

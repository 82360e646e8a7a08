//! The kernel/user ABI of zt-agent: every type that crosses the boundary
//! between `zt-ebpf` (kernel) and `zt-agent` (user space).
//!
//! # Layout
//! - `maps.rs` ([`maps`]): map names and capacities, shared by both sides;
//!   [`maps::ALL`] lists every map of the object.
//! - `programs.rs` ([`programs`]): program names; [`programs::ALL`].
//! - `globals.rs` ([`globals`]): names of the load-time read-only globals.
//! - `process.rs`: [`ProcInfo`], the value of the in-kernel process table
//!   (keyed by tgid), with [`proc_flags`] and [`NO_IDENTITY`].
//! - `events.rs`: [`EventHeader`] and the records behind it ([`ExecEvent`],
//!   [`ExitEvent`], [`ConnectEvent`], [`AggEvictEvent`]), written to the two ring buffers, with
//!   [`kind`], [`hook`], [`args_flags`] and the argv scratch [`ExecArgs`].
//! - `policy.rs` ([`policy`]): compiled egress rules and [`policy::decide_net`],
//!   the decision both the kernel and `zt-agent policy explain` run.
//! - `path_policy.rs` ([`path_policy`]): compiled file and exec rules.
//! - `unix.rs` ([`unix`]): Unix-socket rule keys and [`unix::UnixEvent`].
//! - `guard.rs` ([`guard`]): socket kinds, the calls agent identities may
//!   not make around the egress hooks, and [`guard::GuardEvent`].
//! - `syscalls.rs` ([`syscalls`]): batches of syscall numbers for the
//!   anomaly model.
//! - `config.rs`: [`Config`], run-time switches user space writes into the
//!   `CONFIG` map, with [`config_flags`].
//! - `loss.rs` ([`loss`]): indices of the per-CPU loss counters.
//! - `pod.rs`: `aya::Pod` for the map and ring-record types (feature `user`).
//!
//! Rules for every type here: `#[repr(C)]`, `Copy`, explicit padding fields so
//! there is no implicit padding (the kernel verifier and `aya::Pod` both need
//! every byte initialised), `u32` flags instead of `bool`, and a
//! `const _: () = assert!(size_of::<T>() == N)` so that layout drift fails
//! the build instead of corrupting events.
#![no_std]

pub mod globals;
pub mod guard;
pub mod loss;
pub mod maps;
pub mod path_policy;
pub mod policy;
pub mod programs;
pub mod syscalls;
pub mod unix;

mod config;
mod events;
#[cfg(feature = "user")]
mod pod;
mod process;

/// The "plain old data" contract every type here meets (re-exported so user
/// space names it through the ABI crate).
#[cfg(feature = "user")]
pub use aya::Pod;

pub use config::{Config, config_flags};
pub use events::{
    AF_INET, AF_INET6, ARGS_LEN, AggEvictEvent, COMM_LEN, ConnectEvent, EventHeader, ExecArgs, ExecEvent, ExitEvent, FILENAME_LEN,
    MAX_ARGS, args_flags, hook, kind,
};
pub use process::{
    ANY_UID, CTIME_NSEC_MASK, DIGEST_SENTINEL, DigestKey, ExecKey, ExecPick, GLOB_DIR_DEPTH, GLOB_DIR_UID, GLOB_SENTINEL, NO_IDENTITY,
    PENDING_IDENTITY, ProcInfo, proc_flags,
};

//! zt-agent: zero-trust host enforcement for AI-agent workloads.
//!
//! # Layout
//! - [`audit`]: the signed, tamper-evident audit log (Merkle tree, C2SP checkpoints).
//! - [`bpf`]: the only module that uses aya: load, attach, probe, typed maps.
//! - [`identity`]: identity files, selectors, the resolver (plain Rust).
//! - [`policy`]: host policy language, compilation to map entries, history.
//! - [`manager`]: applies policies to the kernel (reload, history, rollback).
//! - [`pipeline`]: ring buffer -> decode -> enrich -> outputs, loss counting.
//! - [`control`]: the local control socket (`zt-agent status`).
//! - [`host`]: mounts, cgroup v2, privileges, clocks.
//! - [`fsutil`]: crash-safe file replacement.
//! - [`run`]: the daemon: wires the above together and owns shutdown.
pub mod audit;
pub mod bpf;
pub mod control;
pub mod fsutil;
pub mod host;
pub mod identity;
pub mod manager;
pub mod pipeline;
pub mod policy;
pub mod run;

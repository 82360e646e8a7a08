//! What the pipeline reads from the kernel, as traits (`bpf::tables`
//! implements them over the maps), so the tasks are plain Rust.
//!
//! # Layout
//! - [`EventRing`]: the two rings ([`Ring`]): wait for data, drain records.
//! - [`KernelCounters`]: loss counters and per-identity decision counters.
//! - [`AggregateTable`]: the kernel's egress aggregation cache (read).
use std::time::Duration;

use zt_common::{
    loss::{self, SecurityLoss},
    policy::{AggSlot, IdentityBudget, IdentityCounters},
};

use crate::identity::table::TableError;

/// Every kernel loss counter of one CPU (or summed), indexed by `zt_common::loss`.
pub type LossArray = [u64; loss::COUNT as usize];

/// The kernel's two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ring {
    /// Denials, would-denies, guard actions: never dropped in user space.
    Security,
    /// Exec, exit, allowed connects: dropped (counted) when the queue is full.
    Telemetry,
}

pub trait EventRing: Send {
    /// Waits until the kernel forces a wakeup or `timeout` passes.
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
    /// Hands at most `max` pending records of `ring` to `f`; returns how
    /// many there were (the rest stay in the ring).
    fn drain(&mut self, ring: Ring, max: usize, f: &mut dyn FnMut(&[u8])) -> usize;
}

pub trait KernelCounters: Send {
    /// Each CPU's loss counters.
    fn loss(&self) -> Result<Vec<LossArray>, TableError>;
    /// Security records the kernel could not queue, per identity.
    fn security_loss(&self) -> Result<Vec<(u32, SecurityLoss)>, TableError>;
    /// Counters of every identity id with any decision.
    fn decisions(&self) -> Result<Vec<(u32, IdentityCounters)>, TableError>;
}

pub trait AggregateTable: Send {
    /// Every slot of the cache holding a key, with its CPU.
    fn slots(&self) -> Result<Vec<(u32, AggSlot)>, TableError>;
    /// Attempts folded over the budget, per identity of `identities` (all
    /// CPUs together).
    fn folded(&self, identities: &[u32]) -> Result<Vec<(u32, IdentityBudget)>, TableError>;
}

//! What the pipeline reads from the kernel, as traits (`bpf::tables`
//! implements them over the maps), so the tasks are plain Rust.
//!
//! # Layout
//! - [`EventRing`]: the ring buffer: wait for data, drain records.
//! - [`KernelCounters`]: loss counters and per-identity decision counters.
//! - [`AggregateTable`]: the kernel's egress aggregation table (read, pruned).
use std::time::Duration;

use zt_common::{
    loss,
    policy::{AggKey, AggValue, IdentityCounters},
};

use crate::identity::table::TableError;

/// Every kernel loss counter summed over CPUs, indexed by `zt_common::loss`.
pub type LossArray = [u64; loss::COUNT as usize];

pub trait EventRing: Send {
    /// Waits until the kernel forces a wakeup or `timeout` passes.
    fn wait(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
    /// Hands every pending record to `f`; returns how many there were.
    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize;
}

pub trait KernelCounters: Send {
    fn loss(&self) -> Result<LossArray, TableError>;
    /// Counters of every identity id with any decision.
    fn decisions(&self) -> Result<Vec<(u32, IdentityCounters)>, TableError>;
}

pub trait AggregateTable: Send {
    /// Every key with its value on each CPU (index = CPU).
    fn entries(&self) -> Vec<(AggKey, Vec<AggValue>)>;
    fn get(&self, key: &AggKey) -> Result<Option<Vec<AggValue>>, TableError>;
    fn remove(&mut self, key: &AggKey) -> Result<(), TableError>;
}

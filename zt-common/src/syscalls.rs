//! Syscall telemetry for the anomaly model: the calls of processes whose
//! identity has it switched on, in batches.
//!
//! - [`SyscallBatch`]: up to [`BATCH_CALLS`] consecutive calls of one
//!   thread on one CPU, a ring record of kind [`crate::kind::SYSCALLS`]. A
//!   batch is sent when it is full, when another thread's call comes on
//!   that CPU, when its first call is [`BATCH_MAX_AGE_NS`] old at the next
//!   call, and when its thread exits.
//! - [`IORING_BASE`]: io_uring submissions as pseudo-calls (`IORING_BASE +
//!   opcode`), so that work done through io_uring shows in the sequence.
//! - The `TELEMETRY` map (indexed by identity id, 1 = on) says whose calls
//!   are recorded; the program runs only while some identity has it on.
use crate::events::EventHeader;

/// Calls per batch.
pub const BATCH_CALLS: usize = 60;
/// A batch whose first call is older than this is sent at the next call
/// of its CPU (or when its thread exits).
pub const BATCH_MAX_AGE_NS: u64 = 250_000_000;
/// Pseudo-call of an io_uring submission: this plus the opcode. Above the
/// x86_64 syscall numbers (the highest is below 512).
pub const IORING_BASE: u16 = 1024;

/// A ring record: `count` calls of thread `header.tid` from
/// `header.time_ns` (its first call) on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallBatch {
    pub header: EventHeader,
    pub count: u32,
    pub _pad: u32,
    /// Syscall numbers (or [`IORING_BASE`] + opcode); the first `count` hold.
    pub calls: [u16; BATCH_CALLS],
}
const _: () = assert!(size_of::<SyscallBatch>() == 48 + 8 + 2 * BATCH_CALLS);

impl SyscallBatch {
    /// The calls the batch holds (`count` bounded by its capacity).
    pub fn held(&self) -> &[u16] {
        &self.calls[..(self.count as usize).min(BATCH_CALLS)]
    }
}

//! The signed, tamper-evident audit log.
//!
//! # Layout
//! - [`record`]: canonical-JSON records (one per Merkle leaf).
//! - [`merkle`]: the RFC 6962 SHA-256 Merkle tree with inclusion and
//!   consistency proofs and their verification.
//! - [`note`]: C2SP signed notes with Ed25519 (ring), verifier keys.
//! - [`checkpoint`]: C2SP tlog checkpoints (origin, size, root) as notes.
//! - [`segment`]: append-only framed segment files, crash recovery.
//! - [`tail`]: reading from a record index on while the log is written
//!   (SIEM delivery).
//! - [`keys`]: signing keys on disk.
//! - [`log`]: the writer tying these together (cadence, recovery, rotation,
//!   retention).
//! - [`verify`]: full verification of a log directory by a third party.
//! - [`inspect`]: inclusion and consistency proofs, listings.
//! - [`writer`]: the agent's audit thread and which events it records.
pub mod checkpoint;
pub mod inspect;
pub mod keys;
pub mod log;
pub mod merkle;
pub mod note;
pub mod record;
pub mod segment;
pub mod tail;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

//! The signed, tamper-evident audit log (issue #5, in progress).
//!
//! # Layout
//! - [`merkle`]: the RFC 6962 SHA-256 Merkle tree with inclusion and
//!   consistency proofs and their verification.
//! - [`note`]: C2SP signed notes with Ed25519 (ring), verifier keys.
//! - [`checkpoint`]: C2SP tlog checkpoints (origin, size, root) as notes.
//!
//! Still to come in this module: canonical-JSON records, segment storage with crash recovery, and the `zt-agent audit` commands.
//! Nothing in the agent writes an audit log yet.
pub mod checkpoint;
pub mod merkle;
pub mod note;
pub mod segment;

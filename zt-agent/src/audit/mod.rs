//! The signed, tamper-evident audit log (issue #5, in progress).
//!
//! # Layout
//! - [`merkle`]: the RFC 6962 SHA-256 Merkle tree with inclusion and
//!   consistency proofs and their verification.
//!
//! Still to come in this module: canonical-JSON records, C2SP signed-note
//! checkpoints (Ed25519 via ring), segment storage with crash recovery, and
//! the `zt-agent audit` commands. Nothing in the agent writes an audit log yet.
pub mod merkle;

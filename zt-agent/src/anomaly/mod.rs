//! Syscall anomaly detection: a per-identity model of its processes'
//! syscall sequences, scored over sliding windows.
//!
//! # Parts
//! - [`trace`]: traces on disk (one process per file, integer tokens).
//! - [`ngram`]: the n-gram language model (Witten-Bell) and a process's
//!   stream of window scores (mean surprise, unseen-sequence rate).
//! - [`freq`]: the frequency scorer (call mixes of windows, nearest
//!   baseline window by smartcore's cover tree).
//! - [`model`]: train, score, save and load a model; evaluate it.
//! - [`record`]: live traces of recorded identities (`model record`).
//! - [`eval`]: seeded calibration split, thresholds for a target
//!   false-positive rate, AUC.
pub mod eval;
pub mod freq;
pub mod live;
pub mod model;
pub mod ngram;
pub mod record;
pub mod trace;

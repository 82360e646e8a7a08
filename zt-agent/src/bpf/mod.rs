//! The one user-space module that talks to the kernel through aya.
//!
//! # Layout
//! - [`loader`]: load the embedded object, the hook table with capability
//!   fallbacks, attach; [`loader::Bpf`] owns every link (drop = detach).
//! - [`probe`]: what this kernel really runs, learned by loading tiny programs.
//! - [`maps`]: typed map wrappers and the ring buffer source.
//! - [`tracefs`]: tracepoint layouts from tracefs `format` files.
pub mod loader;
pub mod maps;
pub mod probe;
pub mod tracefs;

/// The eBPF object built from `zt-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zt-ebpf"));

/// blake3 digest of the embedded object (logged at start, shown by `status`).
pub fn object_digest() -> blake3::Hash {
    blake3::hash(OBJECT)
}

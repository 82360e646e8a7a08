//! Empty on purpose: the programs are in the `zt-ebpf` binary target
//! (`src/main.rs`), built for `bpfel-unknown-none`. This lib target only lets
//! `zt-agent` declare a build-dependency on the package.
#![no_std]

//! Builds the eBPF object (`zt-ebpf`, nightly, bpfel-unknown-none) with
//! aya-build; it lands in `$OUT_DIR/zt-ebpf` and `bpf::loader` embeds it.
use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../zt-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed=../zt-common/src");
    aya_build::build_ebpf([Package { name: "zt-ebpf", root_dir: root, ..Default::default() }], Toolchain::default())
        .context("building the eBPF object (zt-ebpf); run `cargo xtask setup` first")
}

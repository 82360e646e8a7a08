//! Builds the eBPF object (`zt-ebpf`, nightly, `bpf{el,eb}-unknown-none`) and
//! writes it to `$OUT_DIR/zt-ebpf`, where `bpf::OBJECT` embeds it, without
//! its DWARF sections ([`strip_dwarf`]).
//!
//! This is the cargo invocation of aya-build 0.2.0's `build_ebpf` (same
//! arguments, environment, target directory layout and binary lookup), with
//! one difference: aya-build forwards every line of the inner cargo as a
//! `cargo:warning`, so each build printed ~30 `warning: ... Compiling ...`
//! lines. Here the output is kept and printed (as `cargo:warning` lines, so
//! it shows in the build log) only when the inner build fails.
//!
//! `AYA_BUILD_SKIP=1` skips the build as aya-build does (the `include_bytes!`
//! of the object then fails unless an earlier build left one).
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// The package and its one binary target (the object's name).
const PACKAGE: &str = "zt-ebpf";
/// The toolchain the eBPF crate needs (`-Z build-std`), as aya-build's
/// `Toolchain::default()`.
const TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../zt-ebpf");
    // The build-dependency on zt-ebpf reruns this script when its lib target
    // or a dependency changes; the programs are in its bin target, so watch
    // the package directory (recursively) and zt-common's sources too.
    println!("cargo:rerun-if-changed={root}");
    println!("cargo:rerun-if-changed=../zt-common/src");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if let Some(skip) = env::var_os("AYA_BUILD_SKIP")
        && (skip == "1" || skip.eq_ignore_ascii_case("true"))
    {
        println!("cargo:warning=AYA_BUILD_SKIP={}; skipping the eBPF build", skip.display());
        return Ok(());
    }
    build_ebpf().context("building the eBPF object (zt-ebpf)")
}

fn build_ebpf() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = match env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian {other}"),
    };
    // The host architecture, for aya-ebpf's `bpf_target_arch` cfg (which
    // selects the layout of pt_regs and friends).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") { "riscv64" } else { arch.as_str() };

    // `rustup run nightly ...` so the nightly toolchain is used whatever
    // toolchain runs this build; without rustup, the current one.
    let rustup = Command::new("rustup").arg("--version").output().is_ok();
    if !rustup {
        println!("cargo:warning=rustup not found; building the eBPF object with the current toolchain");
    }
    let tool = |program: &str| {
        if rustup {
            let mut c = Command::new("rustup");
            c.args(["run", TOOLCHAIN, program]);
            c
        } else {
            Command::new(program)
        }
    };

    // -Z build-std needs a nightly compiler; RUSTC_BOOTSTRAP can force the
    // answer either way, as aya-build reads it.
    let nightly = {
        let mut c = tool("rustc");
        c.arg("-vV");
        let out = run(&mut c)?;
        if !out.status.success() {
            bail!("{c:?} failed: {} (`cargo xtask setup` installs the toolchain)", String::from_utf8_lossy(&out.stderr).trim());
        }
        String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("release:") && l.contains("-nightly"))
    };
    let build_std = match env::var_os("RUSTC_BOOTSTRAP") {
        Some(v) if v == "1" || v == PACKAGE => true,
        Some(v) if v == "-1" => false,
        _ => nightly,
    };

    // A target directory of its own: the outer cargo holds the lock on
    // ours (cargo#6412), and it must not be `$OUT_DIR/zt-ebpf`, the file the
    // object is copied to.
    let target_dir = out_dir.join("zt-ebpf-target");
    let mut cargo = tool("cargo");
    cargo.args(["build", "--package", PACKAGE, "--bins", "--message-format=json", "--release", "--target", target]);
    if build_std {
        cargo.args(["-Z", "build-std=core"]);
    }
    cargo.args(["--features", ""]);
    cargo.arg("--target-dir").arg(&target_dir);
    // CARGO_ENCODED_RUSTFLAGS separates flags with 0x1f. `--btf` makes
    // bpf-linker emit BTF, which it derives from the `-Cdebuginfo=2` output.
    let rustflags: OsString = [&format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f").into();
    cargo.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo sets RUSTC to its own (stable) compiler; without it the
    // inner cargo uses the toolchain `rustup run` selected.
    cargo.env_remove("RUSTC").env_remove("RUSTC_WORKSPACE_WRAPPER");

    let out = run(&mut cargo)?;
    let messages = Messages::parse(&out.stdout);
    if !out.status.success() {
        for line in messages.rendered.iter().flat_map(|m| m.lines()).chain(String::from_utf8_lossy(&out.stderr).lines()) {
            println!("cargo:warning={line}");
        }
        bail!(
            "{cargo:?} failed ({}); its output is above (a missing rust-src or bpf-linker shows there too: `cargo xtask setup`)",
            out.status
        );
    }
    if messages.executables.is_empty() {
        bail!("{cargo:?} succeeded but reported no binary");
    }
    for (name, binary) in &messages.executables {
        let dst = out_dir.join(name);
        let object = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
        let stripped = strip_dwarf(&object).with_context(|| format!("removing the DWARF sections of {}", binary.display()))?;
        std::fs::write(&dst, stripped).with_context(|| format!("writing {}", dst.display()))?;
    }
    Ok(())
}

/// The object without its `.debug_*` sections and their relocations. The
/// compiler needs debug info to emit BTF, but the loader reads only `.BTF`
/// and `.BTF.ext`: DWARF was 1.1 MB of the 2.4 MB object, embedded in the
/// agent, read at every start and resident afterwards.
fn strip_dwarf(object: &[u8]) -> anyhow::Result<Vec<u8>> {
    use object::build::elf::{Builder, SectionData};
    let mut b = Builder::read(object)?;
    let debug: Vec<_> = b.sections.iter().filter(|s| s.name.starts_with(b".debug_")).map(|s| s.id()).collect();
    for s in b.sections.iter_mut() {
        if debug.contains(&s.id()) || s.sh_info_section.is_some_and(|target| debug.contains(&target)) {
            s.delete = true;
        }
    }
    b.delete_orphans();
    // LLVM names sections from the symbol string table (.strtab); the
    // writer keeps section names in a table of their own.
    if !b.sections.iter().any(|s| matches!(s.data, SectionData::SectionString)) {
        let names = b.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = SectionData::SectionString;
    }
    let mut out = Vec::new();
    b.write(&mut out)?;
    Ok(out)
}

fn run(c: &mut Command) -> anyhow::Result<Output> {
    c.output().with_context(|| format!("running {c:?} (`cargo xtask setup` installs what the eBPF build needs)"))
}

/// What the inner cargo's `--message-format=json` stdout says.
#[derive(Default)]
struct Messages {
    /// (binary target name, path) of every binary built.
    executables: Vec<(String, PathBuf)>,
    /// Compiler diagnostics as rustc renders them, and any non-JSON line.
    rendered: Vec<String>,
}

impl Messages {
    fn parse(stdout: &[u8]) -> Self {
        let mut m = Self::default();
        for line in String::from_utf8_lossy(stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                m.rendered.push(line.to_string());
                continue;
            };
            match v["reason"].as_str() {
                Some("compiler-artifact") => {
                    if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
                        m.executables.push((name.to_string(), Path::new(exe).to_path_buf()));
                    }
                }
                Some("compiler-message") => {
                    if let Some(r) = v["message"]["rendered"].as_str() {
                        m.rendered.push(r.to_string());
                    }
                }
                _ => {}
            }
        }
        m
    }
}

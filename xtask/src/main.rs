//! Project automation: `cargo xtask <command>`.
//!
//! # Layout
//! - `setup`: make a fresh machine ready (rust-src for nightly, bpf-linker,
//!   apt packages). Idempotent; fast when nothing is missing.
//! - `build`: build the agent (embeds the eBPF object).
//! - `image`: the container image (deploy/Containerfile) with podman.
//! - `run`: build and run the agent with the embedded policy and the demo
//!   workload, printing attributed events live.
//! - `test`: the gates (rust-version of the locked dependencies, rustfmt,
//!   clippy on the host crates and on zt-ebpf), then every test: unit tests,
//!   then the integration tests single-threaded (they load programs into the
//!   one shared kernel; the root ones only as root). Prints
//!   `xtask: N passed, F failed, S skipped` and what was skipped and why.
//!   The last part boots a stock Debian kernel under QEMU (`vm-test`).
//! - `vm-test`: the guest suites (tests/tests/guest.rs, network.rs,
//!   files.rs) in a QEMU guest that boots a stock Debian kernel, 6.1 or
//!   6.12 or each in turn (BPF LSM loads there), on the host's root,
//!   read-only over virtiofs; pass/fail from the guest's `GUEST-RC=` line
//!   (the `guest` module).
//! - `bench`: benchmarks (`bench attribution`, `bench policy`, `bench net`, `bench audit`,
//!   `bench hardening`, `bench pipeline`, `bench siem`, `bench files`, `bench anomaly`,
//!   `bench footprint`, `bench verify`).
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use guest::{GuestKernel, KernelArg, boot_guest, vm_test};

mod guest;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing needs (idempotent).
    Setup,
    /// Build zt-agent (debug unless --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and the container image from deploy/Containerfile
    /// with podman (`deploy/build-image.sh`).
    Image {
        #[arg(long, default_value = concat!("localhost/zt-agent:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
    /// Build (release) and run `zt-agent run --demo` in the foreground; extra
    /// arguments after `--` go to `zt-agent run`.
    Run {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the gates (rust-version, fmt, clippy), then every test (the root
    /// tests only as root; counted as skipped otherwise).
    Test {
        /// Extra arguments for the test binaries (e.g. a name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the guest tests in a QEMU guest on a stock Debian kernel (BPF
    /// LSM loads there); counted like the other tests.
    VmTest {
        /// The guest kernel: Debian's 6.1 or 6.12, or each in turn.
        #[arg(long, value_enum, default_value = "all")]
        kernel: KernelArg,
        /// Extra arguments for the guest test binary (e.g. a name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// A benchmark run in the QEMU test guest (stock Debian kernel, BPF LSM
    /// on; emulated with TCG, so only the ratios measured side by side mean
    /// anything): `hardening` there measures the guards on BPF LSM.
    VmBench {
        #[arg(value_enum)]
        which: Bench,
        /// Rounds of interleaved measurement.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// The guest kernel (each in turn with `all`).
        #[arg(long, value_enum, default_value = "6.12")]
        kernel: KernelArg,
    },
    /// Benchmarks; prints ratios measured side by side in one run.
    Bench {
        #[arg(value_enum)]
        which: Bench,
        /// Rounds of interleaved measurement.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// fork+exec overhead and pipeline throughput.
    Attribution,
    /// policy compile time, reload latency, connect latency during reloads.
    Policy,
    /// connect() latency with 0/100/10k rules, agent and non-agent processes.
    Net,
    /// audit log: durable append by batch size, verify throughput, sign latency.
    Audit,
    /// the guards' cost to processes without an identity: a syscall no guard
    /// watches, socket()+close(), fork+exec, with and without the guards.
    Hardening,
    /// event pipeline throughput (distinct events at 100k/500k/1M per
    /// second, budget off and on) and the flood-with-a-quiet-identity attack.
    Pipeline,
    /// SIEM delivery: backlog drain rate per transport to a local rsyslogd,
    /// and denial-to-receiver latency over TLS.
    Siem,
    /// open() loops: what each file-rule fallback (no BPF LSM) costs a
    /// process without an identity (fanotify marks, a syscall tracepoint),
    /// the agent's own fallback, and 1,000 file rules (in the guest:
    /// `vm-bench files`, BPF LSM).
    Files,
    /// the syscall anomaly model: getppid() with telemetry attached (for a
    /// process without an identity and for the watched identity), delivery
    /// at 100k and 1M syscalls/s, baseline size and scoring cost per call.
    Anomaly,
    /// the agent's footprint: time to ready, RSS and idle CPU with the
    /// embedded policy and with 10,000 egress rules over 1,000 identities;
    /// the image's size.
    Footprint,
    /// continuous verification: the time of a pass (periodic, on demand)
    /// and an agent process's connect() p50/p99 with passes back to back.
    Verify,
    /// the remote API over mutual TLS: status and policy push p50/p99, kept
    /// alive and with a new handshake each call, beside the local socket.
    Api,
}

impl Bench {
    /// The benchmark's name for `zt-bench`.
    fn name(self) -> &'static str {
        match self {
            Bench::Attribution => "attribution",
            Bench::Policy => "policy",
            Bench::Net => "net",
            Bench::Audit => "audit",
            Bench::Hardening => "hardening",
            Bench::Pipeline => "pipeline",
            Bench::Siem => "siem",
            Bench::Files => "files",
            Bench::Anomaly => "anomaly",
            Bench::Footprint => "footprint",
            Bench::Verify => "verify",
            Bench::Api => "api",
        }
    }
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Build { release } => {
            setup()?;
            build(release)
        }
        Cmd::Image { tag } => {
            setup()?;
            build(true)?;
            let mut c = Command::new(root.join("deploy/build-image.sh"));
            c.arg(root.join("target/release/zt-agent")).arg(&tag);
            run(c)?;
            eprintln!("xtask: built {tag} (`podman image inspect {tag}`)");
            Ok(())
        }
        Cmd::Run { args } => {
            setup()?;
            build(true)?;
            let mut cmd = Command::new(root.join("target/release/zt-agent"));
            cmd.arg("run");
            if args.is_empty() {
                cmd.arg("--demo");
            } else {
                cmd.args(args);
            }
            exec(cmd)
        }
        Cmd::VmTest { kernel, args } => {
            setup()?;
            build(false)?;
            let mut tally = Tally::default();
            let mut ok = true;
            for &k in kernel.kernels() {
                ok &= vm_test(&root, k, &args, &mut tally)?;
            }
            tally.summary();
            if !ok || tally.failed > 0 {
                bail!("guest tests failed");
            }
            Ok(())
        }
        Cmd::Test { args } => {
            setup()?;
            test(&root, &args)
        }
        Cmd::VmBench { which, rounds, kernel } => {
            setup()?;
            build(true)?;
            let mut b = cargo();
            b.args(["build", "--release", "--quiet", "-p", "zt-tests", "--bin", "zt-bench"]);
            run(b)?;
            let command = vec![
                "/usr/bin/env".into(),
                format!("ZT_AGENT_BIN={}", root.join("target/release/zt-agent").display()),
                root.join("target/release/zt-bench").display().to_string(),
                which.name().into(),
                "--rounds".into(),
                rounds.to_string(),
            ];
            for &k in kernel.kernels() {
                eprintln!("xtask: vm-bench: booting {k} under QEMU (TCG) for bench {}", which.name());
                let mut tally = Tally::default();
                if !boot_guest(&root, k, std::slice::from_ref(&command), &mut tally)? {
                    bail!("the benchmark failed in the {k} guest");
                }
            }
            Ok(())
        }
        Cmd::Bench { which, rounds } => {
            setup()?;
            build(true)?;
            let name = which.name();
            let mut cmd = cargo();
            cmd.args(["run", "--release", "--quiet", "-p", "zt-tests", "--bin", "zt-bench", "--", name])
                .arg("--rounds")
                .arg(rounds.to_string())
                .env("ZT_AGENT_BIN", root.join("target/release/zt-agent"));
            run(cmd)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn exec(cmd: Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = cmd;
    let err = cmd.exec();
    Err(err).with_context(|| format!("exec {cmd:?}"))
}

fn quiet_ok(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// apt packages the tests and the agent use at run time:
/// bash (the demo workload and test shells), iproute2 (network namespaces
/// for later network tests), procps (ps/pkill in diagnostics), rsyslog with
/// its GnuTLS and OpenSSL drivers (real syslog receivers for the SIEM
/// tests; installing starts no daemon here, the tests start their own),
/// openssl (test certificates), curl (a TLS client of the remote API), prometheus (its `prometheus` scrapes the
/// agent in a test, `promtool` checks the exposition; no service starts),
/// podman with runc (crun refuses hybrid cgroup hosts) and catatonit (the
/// pods' pause image) for the image and DaemonSet tests.
/// qemu-system-x86 (with virtiofsd) boots the guest of `vm-test`; xz-utils
/// unpacks the guest kernel's compressed modules for its initramfs.
const APT_PACKAGES: &[&str] = &[
    "bash",
    "iproute2",
    "procps",
    "rsyslog",
    "rsyslog-gnutls",
    "rsyslog-openssl",
    "openssl",
    "curl",
    "prometheus",
    "podman",
    "runc",
    "catatonit",
    "qemu-system-x86",
    "xz-utils",
];

/// The Kubernetes schemas the manifests are validated against (1.37 knows
/// up to Kubernetes 1.37).
const KUBERNETES_VALIDATE: &str = "1.37.0";

fn setup() -> anyhow::Result<()> {
    // 1. rust-src for the nightly toolchain (the eBPF crate builds core itself),
    //    clippy and rustfmt for the gates.
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"]).context("the nightly toolchain is required")?;
    if !Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask setup: adding rust-src to nightly");
        let mut c = Command::new("rustup");
        c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        run(c)?;
    }
    // The lint gates need clippy on both toolchains and rustfmt on stable.
    for (toolchain, components) in [("nightly", &["clippy"][..]), ("stable", &["clippy", "rustfmt"][..])] {
        let installed = output("rustup", &["component", "list", "--installed", "--toolchain", toolchain])?;
        for comp in components.iter().filter(|c| !installed.lines().any(|l| l.starts_with(&format!("{c}-")))) {
            eprintln!("xtask setup: adding {comp} to {toolchain}");
            let mut c = Command::new("rustup");
            c.args(["component", "add", comp, "--toolchain", toolchain]);
            run(c)?;
        }
    }

    // 2. bpf-linker, built against the LLVM inside the stable toolchain.
    if !quiet_ok("bpf-linker", &["--version"]) {
        install_bpf_linker()?;
    }

    // 3. apt packages.
    let mut apt = Apt::default();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !output("dpkg-query", &["-W", "-f=${Status}", p]).is_ok_and(|s| s.contains("install ok installed")))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask setup: apt-get install {}", missing.join(" "));
        apt.update()?;
        let mut i = Command::new("apt-get");
        i.args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run(i)?;
    }

    // 4. kubernetes-validate (PyPI) in its own venv, for the manifest tests.
    let kv = workspace_root().join("target/kubernetes-validate");
    if !kv.join("bin/kubernetes-validate").exists() {
        eprintln!("xtask setup: pip install kubernetes-validate=={KUBERNETES_VALIDATE} into {}", kv.display());
        let mut v = Command::new("python3");
        v.args(["-m", "venv"]).arg(&kv);
        run(v)?;
        let mut pip = Command::new(kv.join("bin/pip"));
        pip.args(["install", "--quiet", &format!("kubernetes-validate=={KUBERNETES_VALIDATE}")]);
        run(pip)?;
    }

    // 5. syslog-ng for the SIEM tests: it conflicts with the rsyslog
    //    package, so it is unpacked (not installed) under target/syslog-ng
    //    and run from there with its own library path.
    let syslog_ng = workspace_root().join("target/syslog-ng");
    if !syslog_ng.join("usr/sbin/syslog-ng").exists() {
        eprintln!("xtask setup: unpacking syslog-ng into {}", syslog_ng.display());
        apt.unpack(SYSLOG_NG_PACKAGES, &syslog_ng)?;
    }
    // 6. The guest kernels of `vm-test`, unpacked (not installed) under
    //    target/vm, and the 6.1 guest's initramfs.
    for kernel in GuestKernel::ALL {
        kernel.setup(&mut apt)?;
    }
    Ok(())
}

/// apt for `setup`: the package lists are updated once, and only when
/// something is missing.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> anyhow::Result<()> {
        if !self.updated {
            let mut u = Command::new("apt-get");
            u.args(["update", "-qq"]);
            run(u)?;
            self.updated = true;
        }
        Ok(())
    }

    /// Downloads `packages` and unpacks them into `into` (not installed:
    /// no dependencies resolved, no scripts run).
    fn unpack(&mut self, packages: &[&str], into: &Path) -> anyhow::Result<()> {
        self.update()?;
        let debs = PathBuf::from(format!("{}.debs", into.display()));
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::create_dir_all(&debs)?;
        let mut d = Command::new("apt-get");
        d.arg("download").args(packages).current_dir(&debs);
        run(d)?;
        for deb in std::fs::read_dir(&debs)? {
            let mut x = Command::new("dpkg");
            x.arg("-x").arg(deb?.path()).arg(into);
            run(x)?;
        }
        Ok(())
    }
}

/// syslog-ng and the libraries it needs that a base system lacks.
const SYSLOG_NG_PACKAGES: &[&str] = &["syslog-ng-core", "libivykis0", "libnet1", "libpcre3", "libwrap0", "libjson-c5"];

fn install_bpf_linker() -> anyhow::Result<()> {
    eprintln!("xtask setup: building bpf-linker against the stable toolchain's LLVM (about 2 minutes)");
    let sysroot = PathBuf::from(output("rustc", &["+stable", "--print", "sysroot"])?);
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib.display()))?;
    let major =
        llvm.trim_start_matches("libLLVM.so.").trim_start_matches("libLLVM-").split(['.', '-']).next().unwrap_or_default().to_string();
    // bpf-linker links with -lLLVM; the toolchain ships only the versioned name.
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(&llvm, &link).with_context(|| format!("symlinking {}", link.display()))?;
    }
    let mut c = Command::new("cargo");
    c.args(["+stable", "install", "bpf-linker", "--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &sysroot);
    run(c)?;
    if !quiet_ok("bpf-linker", &["--version"]) {
        bail!("bpf-linker installed but `bpf-linker --version` fails (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["build", "-p", "zt-agent"]);
    if release {
        c.arg("--release");
    }
    run(c)
}

/// `cargo xtask test`: the gates (MSRV, fmt, clippy), then the unit tests in
/// parallel, then the integration tests one at a time (they load programs
/// into the one shared kernel). Every gate and every test binary runs even
/// when an earlier one failed, so that one CI run reports everything; any
/// failure fails the command.
fn test(root: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let mut failed_gates = Vec::new();
    let gates: [(&str, Gate); 4] =
        [("msrv", check_msrv), ("fmt", fmt_check), ("clippy (host crates)", clippy_host), ("clippy (zt-ebpf)", clippy_ebpf)];
    for (name, gate) in gates {
        eprintln!("xtask: gate: {name}");
        if let Err(e) = gate(root) {
            eprintln!("xtask: gate {name} FAILED: {e:#}");
            failed_gates.push(name);
        }
    }

    build(false)?;
    let mut tally = Tally::default();
    // Unit tests (no root needed), in parallel.
    let mut unit = cargo();
    unit.args(["test", "--no-fail-fast", "-p", "zt-common", "-p", "zt-agent", "-p", "xtask", "--"]).args(args);
    let unit_ok = run_counting(unit, &mut tally)?;
    // Integration tests: real programs in the one kernel, one at a time. The
    // ones that need root are #[ignore]d for plain `cargo test`; as root we
    // run them too, otherwise libtest counts them as ignored (= skipped here).
    let is_root = nix::unistd::geteuid().is_root();
    let mut integ = cargo();
    integ.args(["test", "--no-fail-fast", "-p", "zt-tests", "--", "--test-threads=1"]);
    if is_root {
        integ.arg("--include-ignored");
    }
    integ.args(args).env("ZT_AGENT_BIN", root.join("target/debug/zt-agent"));
    let integ_ok = run_counting(integ, &mut tally)?;
    // The guest tests, in a QEMU guest on a stock kernel (as root only).
    let guest_ok = if is_root {
        let mut ok = true;
        for kernel in GuestKernel::ALL {
            ok &= vm_test(root, kernel, args, &mut tally)?;
        }
        ok
    } else {
        tally.skipped.push(("vm-test".into(), "needs root (QEMU guest with the host's root filesystem)".into()));
        true
    };

    let passed = tally.summary();
    if !failed_gates.is_empty() {
        println!("xtask: failed gates: {}", failed_gates.join(", "));
    }
    if !(unit_ok && integ_ok && guest_ok) || tally.failed > 0 {
        bail!("tests failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    if !failed_gates.is_empty() {
        bail!("gates failed: {}", failed_gates.join(", "));
    }
    Ok(())
}

/// A check run before the tests; its error says what failed.
type Gate = fn(&Path) -> anyhow::Result<()>;

/// `cargo fmt --all --check` (settings in rustfmt.toml).
fn fmt_check(_root: &Path) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    run(c)
}

/// clippy on every host crate and target, warnings denied.
fn clippy_host(_root: &Path) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args(["clippy", "-p", "zt-common", "-p", "zt-agent", "-p", "zt-tests", "-p", "xtask", "--all-targets", "--", "-D", "warnings"]);
    run(c)
}

/// clippy on the eBPF crate, built the way zt-agent/build.rs builds it (aya-build
/// 0.2.0's command): `rustup run nightly cargo`,
/// `--bins --release --target bpfel-unknown-none -Z build-std=core`, the same
/// `CARGO_ENCODED_RUSTFLAGS`, without `RUSTC`/`RUSTC_WORKSPACE_WRAPPER` (they
/// would name the stable toolchain), and a target directory of its own so
/// that host builds keep their fingerprints. Change both together.
fn clippy_ebpf(root: &Path) -> anyhow::Result<()> {
    const SEP: &str = "\x1f"; // CARGO_ENCODED_RUSTFLAGS separator
    // build.rs derives bpf_target_arch from the host crate's target arch.
    let rustflags = ["--cfg=bpf_target_arch=\"", std::env::consts::ARCH, "\"", SEP, "-Cdebuginfo=2", SEP, "-Clink-arg=--btf"].concat();
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "clippy", "--package", "zt-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target/clippy-ebpf"))
        .args(["--", "-D", "warnings"])
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    run(c)
}

/// Fails when a locked dependency declares a `rust-version` newer than the
/// workspace's (`[workspace.package] rust-version`, inherited by the members
/// that declare one).
///
/// Only the machine's stable (1.95) and nightly toolchains exist here and
/// none can be downloaded, so building with the declared minimum itself is
/// not possible; this check, plus clippy's `incompatible_msrv` (std APIs
/// newer than the same `rust-version`), is what we can do.
fn check_msrv(_root: &Path) -> anyhow::Result<()> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", out.status);
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let members: Vec<&str> = meta["workspace_members"].as_array().context("workspace_members")?.iter().filter_map(|m| m.as_str()).collect();
    let packages = meta["packages"].as_array().context("packages")?;
    let declared = |p: &serde_json::Value| p["rust_version"].as_str().map(str::to_string);
    let mut ours: Vec<(String, String)> = packages
        .iter()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
        .filter_map(|p| Some((declared(p)?, p["name"].as_str()?.to_string())))
        .collect();
    ours.sort();
    ours.dedup_by(|a, b| a.0 == b.0);
    let workspace = match ours.as_slice() {
        [(v, _)] => v.clone(),
        [] => bail!("no workspace member declares a rust-version (rust-version.workspace = true)"),
        more => bail!("workspace members declare different rust-versions: {more:?}"),
    };
    let ws = parse_version(&workspace)?;
    let mut newer: Vec<String> = Vec::new();
    for p in packages.iter().filter(|p| p["id"].as_str().is_some_and(|id| !members.contains(&id))) {
        if let Some(v) = declared(p)
            && parse_version(&v)? > ws
        {
            newer.push(format!("{} {} needs rust {v}", p["name"].as_str().unwrap_or("?"), p["version"].as_str().unwrap_or("?")));
        }
    }
    if !newer.is_empty() {
        bail!("locked dependencies need a newer Rust than the workspace's rust-version {workspace}:\n  {}", newer.join("\n  "));
    }
    eprintln!("xtask: every locked dependency builds with rust {workspace} (their declared rust-version)");
    Ok(())
}

/// "1.88" or "1.88.0" as [major, minor, patch].
fn parse_version(v: &str) -> anyhow::Result<[u64; 3]> {
    let mut out = [0; 3];
    for (slot, part) in out.iter_mut().zip(v.split('.')) {
        *slot = part.parse().with_context(|| format!("rust-version {v:?}"))?;
    }
    Ok(out)
}

#[derive(Default)]
struct Tally {
    /// libtest's `passed`, summed (runtime skips included: libtest says `ok`).
    passed: u64,
    failed: u64,
    /// Every skipped test or variant with why: libtest's `ignored` ones and
    /// the tests' own `SKIPPED <name>: <why>` lines.
    skipped: Vec<(String, String)>,
    /// Whole tests among `skipped` that libtest counted as passed.
    skipped_at_run_time: u64,
    /// The exit status a QEMU guest printed (`GUEST-RC=<n>`).
    guest_rc: Option<i32>,
    /// Put before the names of skipped tests (the guest kernel they ran on).
    scope: String,
    /// Each guest run: its kernel and whether it passed.
    guests: Vec<(String, bool)>,
}

impl Tally {
    /// Prints the summary; returns the tests that passed.
    fn summary(&self) -> u64 {
        let passed = self.passed.saturating_sub(self.skipped_at_run_time);
        println!("xtask: {passed} passed, {} failed, {} skipped", self.failed, self.skipped.len());
        for (name, why) in &self.skipped {
            println!("xtask:   skipped {name}: {why}");
        }
        for (kernel, ok) in &self.guests {
            println!("xtask:   guest {kernel}: {}", if *ok { "passed" } else { "FAILED" });
        }
        passed
    }

    fn line(&mut self, line: &str) {
        if let Some(rc) = line.trim().strip_prefix("GUEST-RC=") {
            self.guest_rc = rc.parse().ok();
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split([';', '.']).map(str::trim).find_map(|part| part.strip_suffix(word)?.trim().parse::<u64>().ok()).unwrap_or(0)
            };
            self.passed += num("passed");
            self.failed += num("failed");
        } else if let Some((name, verdict)) = line.strip_prefix("test ").and_then(|l| l.split_once(" ... "))
            && let Some(why) = verdict.strip_prefix("ignored")
        {
            let why = why.trim_start_matches(',').trim();
            self.skipped.push((format!("{}{name}", self.scope), if why.is_empty() { "#[ignore]".into() } else { why.to_string() }));
        } else if let Some((name, why)) = skipped_part(line).and_then(|l| l.split_once(": ")) {
            // `test/variant`: one variant of a test that itself ran (zt_tests::skip_variant).
            if !name.contains('/') {
                self.skipped_at_run_time += 1;
            }
            self.skipped.push((format!("{}{name}", self.scope), why.to_string()));
        }
    }
}

/// The `SKIPPED <name>: <why>` part of a line: at its start, or after
/// libtest's `test <name> ... ` (a guest's console interleaves the test's
/// stderr into libtest's line).
fn skipped_part(line: &str) -> Option<&str> {
    let line = line.trim_start();
    line.strip_prefix("SKIPPED ")
        .or_else(|| line.strip_prefix("test ").and_then(|l| l.split_once(" ... ")).and_then(|(_, rest)| rest.strip_prefix("SKIPPED ")))
}

/// Runs a `cargo test`, echoing its stdout and stderr as they come and adding
/// up libtest's result and `ignored` lines and the tests' own `SKIPPED` lines
/// (written to stderr uncaptured by `zt_tests::skip`).
fn run_counting(mut cmd: Command, tally: &mut Tally) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, BufReader, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<(bool, std::io::Result<String>)>();
    let forward = |pipe: Box<dyn Read + Send>, is_stderr: bool| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Lines, not UTF-8 lines: a test may print any bytes.
            for line in BufReader::new(pipe).split(b'\n') {
                let stop = line.is_err();
                let line = line.map(|l| String::from_utf8_lossy(&l).trim_end_matches('\r').to_string());
                if tx.send((is_stderr, line)).is_err() || stop {
                    break;
                }
            }
        })
    };
    let out = forward(Box::new(child.stdout.take().expect("piped")), false);
    let err = forward(Box::new(child.stderr.take().expect("piped")), true);
    drop(tx);
    for (is_stderr, line) in rx {
        let line = line.context("reading the output of cargo test")?;
        if is_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        tally.line(&line);
    }
    let _ = (out.join(), err.join());
    Ok(child.wait()?.success())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn counts_ignored_and_runtime_skips_as_skipped_not_passed() {
        let mut t = Tally::default();
        for line in [
            "test bypass_suite ... ignored, needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it",
            "test plain_ignore ... ignored",
            "SKIPPED recycled_pid_does_not_inherit_identity: /proc/sys/kernel/ns_last_pid missing",
            "SKIPPED bypass_suite/io_uring: io_uring_setup fails",
            "test result: ok. 7 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "test netns_veth_end_to_end ... SKIPPED netns_veth_end_to_end: no veth here",
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 4 filtered out; finished in 0.10s",
        ] {
            t.line(line);
        }
        assert_eq!((t.passed, t.failed, t.skipped_at_run_time), (10, 1, 2));
        let names: Vec<&str> = t.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["bypass_suite", "plain_ignore", "recycled_pid_does_not_inherit_identity", "bypass_suite/io_uring", "netns_veth_end_to_end"]
        );
        assert_eq!(t.skipped[0].1, "needs root (loads eBPF programs, creates cgroups): cargo xtask test runs it");
        assert_eq!(t.skipped[1].1, "#[ignore]");
    }
}

//! The QEMU test guest: stock Debian kernels, where BPF LSM and fentry load.
//!
//! # Parts
//! - [`GuestKernel`]: the kernels the guest boots (6.1 and 6.12), where
//!   `setup` unpacks them, and their initramfs ([`write_initramfs`]): it
//!   loads what is a module there (6.1: virtio-pci and virtiofs; both:
//!   veth), mounts the shared root and hands over to `zt-guest-init`.
//! - [`vm_test`]: builds the guest suites and runs them in one guest boot.
//! - [`boot_guest`]: virtiofsd serving the host's root read-only, QEMU (TCG),
//!   `zt-guest-init` as the guest's init; pass/fail from its `GUEST-RC=` line.
use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{Apt, Tally, cargo, output, quiet_ok, run, run_counting, workspace_root};

/// A Debian cloud kernel the guest boots, unpacked (not installed) under
/// `target/vm` by `setup`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestKernel {
    /// Debian 12's kernel: virtio-pci and virtiofs are modules.
    Linux6_1,
    /// Debian 12's newer cloud kernel: virtio-pci and virtiofs built in.
    Linux6_12,
}

impl GuestKernel {
    pub const ALL: [GuestKernel; 2] = [GuestKernel::Linux6_1, GuestKernel::Linux6_12];

    fn version(self) -> &'static str {
        match self {
            GuestKernel::Linux6_1 => "6.1",
            GuestKernel::Linux6_12 => "6.12",
        }
    }

    fn dir(self) -> PathBuf {
        workspace_root().join(format!("target/vm/linux-{}", self.version()))
    }

    /// The archive's unsigned cloud images of this series.
    fn package_pattern(self) -> &'static str {
        match self {
            GuestKernel::Linux6_1 => "^linux-image-6\\.1\\.0-.*-cloud-amd64-unsigned$",
            GuestKernel::Linux6_12 => "^linux-image-6\\.12\\..*-cloud-amd64-unsigned$",
        }
    }

    /// The modules the initramfs loads, in order: what mounting the
    /// virtiofs root needs where it is not built in, then veth (the
    /// network suite's namespaces).
    fn modules(self) -> &'static [&'static str] {
        match self {
            GuestKernel::Linux6_1 => {
                &["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "fuse", "virtiofs", "veth"]
            }
            GuestKernel::Linux6_12 => &["veth"],
        }
    }

    fn initramfs(self) -> PathBuf {
        self.dir().join("initramfs.cpio")
    }

    /// Unpacks the newest kernel of the series the archive has, and
    /// busybox beside it, when missing; then writes the initramfs (always:
    /// it takes a moment and follows [`Self::modules`]).
    pub fn setup(self, apt: &mut Apt) -> anyhow::Result<()> {
        let dir = self.dir();
        if !dir.join("boot").exists() {
            apt.update()?;
            let list = output("apt-cache", &["search", "--names-only", self.package_pattern()])?;
            let mut names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
            names.sort_by_key(|n| n.split(['.', '+', '-']).map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>());
            let name = names.last().with_context(|| format!("no package matching {} in the archive", self.package_pattern()))?;
            eprintln!("xtask setup: unpacking {name} into {} (a vm-test guest kernel)", dir.display());
            apt.unpack(&[name], &dir)?;
        }
        if !dir.join("bin/busybox").exists() {
            apt.unpack(&["busybox-static"], &dir)?;
        }
        write_initramfs(&dir, self.modules(), &self.initramfs())
    }

    /// The kernel's image, or why the guest cannot boot here.
    fn image(self) -> Result<PathBuf, String> {
        if !quiet_ok("qemu-system-x86_64", &["--version"]) || !Path::new(VIRTIOFSD).exists() {
            return Err("qemu-system-x86_64 or virtiofsd is missing (`cargo xtask setup` installs qemu-system-x86)".into());
        }
        let missing = || format!("no {self} guest kernel under {} (`cargo xtask setup` unpacks it)", self.dir().display());
        if !self.initramfs().exists() {
            return Err(missing());
        }
        std::fs::read_dir(self.dir().join("boot"))
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
            })
            .ok_or_else(missing)
    }
}

impl fmt::Display for GuestKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Linux {}", self.version())
    }
}

/// `--kernel`: one guest kernel or all of them.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum KernelArg {
    #[value(name = "6.1")]
    Linux6_1,
    #[value(name = "6.12")]
    Linux6_12,
    All,
}

impl KernelArg {
    pub fn kernels(self) -> &'static [GuestKernel] {
        match self {
            KernelArg::Linux6_1 => &[GuestKernel::Linux6_1],
            KernelArg::Linux6_12 => &[GuestKernel::Linux6_12],
            KernelArg::All => &GuestKernel::ALL,
        }
    }
}

/// PID 1 of the initramfs: loads the root's modules, mounts the host's
/// root (virtiofs tag `hostroot`) and hands over to the `init=` of the
/// kernel command line with the same arguments. On failure it says why and
/// powers off, so the run ends without a `GUEST-RC` line (a failure).
const INITRAMFS_INIT: &str = r#"#!/bin/busybox sh
bb=/bin/busybox
fail() { echo "zt-initramfs: $*"; $bb poweroff -f; }
$bb mount -t proc proc /proc || fail "mounting /proc"
for m in $($bb cat /modules/order); do
    $bb insmod /modules/$m.ko || fail "insmod $m"
done
init=
for a in $($bb cat /proc/cmdline); do
    case "$a" in init=*) init="${a#init=}" ;; esac
done
[ -n "$init" ] || fail "no init= on the kernel command line"
$bb mount -t virtiofs -o ro hostroot /root || fail "mounting the virtiofs root"
$bb umount /proc
exec $bb switch_root /root "$init" "$@"
"#;

/// Writes the initramfs of a kernel unpacked in `dir` (busybox unpacked
/// there too): `/init`, `/bin/busybox`, `modules` (in load order, found
/// through the kernel's `modules.order`) and `/dev/console`, the node the
/// kernel opens for init's output before any devtmpfs exists.
fn write_initramfs(dir: &Path, modules: &[&str], out: &Path) -> anyhow::Result<()> {
    use cpio::NewcBuilder;
    use std::io::Cursor;
    let release = std::fs::read_dir(dir.join("lib/modules"))?.next().context("no lib/modules/<release> in the unpacked kernel")??.path();
    let order = std::fs::read_to_string(release.join("modules.order")).context("reading modules.order")?;
    let dirs = ["bin", "dev", "modules", "proc", "root"].map(|d| (NewcBuilder::new(d).mode(0o040755), Vec::new()));
    let mut entries: Vec<(NewcBuilder, Vec<u8>)> = dirs.into();
    entries.push((NewcBuilder::new("dev/console").mode(0o020600).rdev_major(5).rdev_minor(1), Vec::new()));
    entries.push((NewcBuilder::new("init").mode(0o100755), INITRAMFS_INIT.as_bytes().to_vec()));
    let busybox = std::fs::read(dir.join("bin/busybox")).context("reading the unpacked busybox")?;
    entries.push((NewcBuilder::new("bin/busybox").mode(0o100755), busybox));
    for m in modules {
        let path = order
            .lines()
            .find(|l| l.rsplit('/').next() == Some(&format!("{m}.ko")))
            .with_context(|| format!("module {m} is not in {}/modules.order", release.display()))?;
        // 6.12's modules are xz-compressed; busybox's insmod wants them plain.
        let (plain, xz) = (release.join(path), release.join(format!("{path}.xz")));
        let ko = if plain.exists() {
            std::fs::read(&plain).with_context(|| format!("reading {}", plain.display()))?
        } else {
            let out = Command::new("xz").arg("-dc").arg(&xz).output().context("running xz (apt package xz-utils)")?;
            anyhow::ensure!(out.status.success(), "xz -dc {}: {}", xz.display(), String::from_utf8_lossy(&out.stderr));
            out.stdout
        };
        entries.push((NewcBuilder::new(&format!("modules/{m}.ko")).mode(0o100644), ko));
    }
    entries.push((NewcBuilder::new("modules/order").mode(0o100644), modules.join("\n").into_bytes()));
    let archive = cpio::write_cpio(entries.into_iter().map(|(b, data)| (b, Cursor::new(data))), Vec::new())?;
    std::fs::write(out, archive).with_context(|| format!("writing {}", out.display()))
}

/// The integration suites run in the guest: its own, and the network,
/// file enforcement and self-protection suites on a stock kernel.
const GUEST_SUITES: [&str; 4] = ["guest", "network", "files", "self_protection"];

/// Boots `kernel` and runs the guest suites there, counting their results
/// into `tally` under the kernel's name; false when the guest failed or
/// said nothing. QEMU or the kernel missing is a loud skip.
pub fn vm_test(root: &Path, kernel: GuestKernel, args: &[OsString], tally: &mut Tally) -> anyhow::Result<bool> {
    let image = match kernel.image() {
        Ok(k) => k,
        Err(why) => {
            eprintln!("xtask: vm-test SKIPPED: {why}");
            tally.skipped.push((format!("vm-test on {kernel}"), why));
            return Ok(true);
        }
    };
    // The guest test binaries, built for the host (the guest runs them from
    // the shared root).
    let mut build_tests = cargo();
    build_tests.args(["test", "-p", "zt-tests", "--no-run", "--message-format=json"]);
    for suite in GUEST_SUITES {
        build_tests.args(["--test", suite]);
    }
    let out = build_tests.output().context("building the guest tests")?;
    anyhow::ensure!(out.status.success(), "building the guest tests: {}", String::from_utf8_lossy(&out.stderr));
    let exes: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"].as_str().is_some_and(|n| GUEST_SUITES.contains(&n)))
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .collect();
    anyhow::ensure!(exes.len() == GUEST_SUITES.len(), "cargo built {} of the {} guest suites", exes.len(), GUEST_SUITES.len());
    let commands: Vec<Vec<String>> = exes
        .iter()
        .map(|exe| {
            let mut c = vec![exe.display().to_string(), "--include-ignored".into(), "--test-threads=1".into(), "--color=never".into()];
            c.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
            c
        })
        .collect();
    eprintln!("xtask: vm-test: booting {} under QEMU (TCG) for {}", image.display(), GUEST_SUITES.join(", "));
    tally.scope = format!("{kernel} guest: ");
    let ok = boot_guest(root, kernel, &commands, tally);
    tally.scope.clear();
    let ok = ok?;
    tally.guests.push((kernel.to_string(), ok));
    Ok(ok)
}

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// Runs `commands` (each a program and its arguments, in order) in a guest
/// on `kernel`: the host's root read-only over virtiofs, `zt-guest-init`
/// as its init. Its output goes through [`run_counting`] into `tally`;
/// false when a command failed or the guest said nothing.
pub fn boot_guest(root: &Path, kernel: GuestKernel, commands: &[Vec<String>], tally: &mut Tally) -> anyhow::Result<bool> {
    let image = kernel.image().map_err(|why| anyhow::anyhow!(why))?;
    let mut b = cargo();
    b.args(["build", "-p", "zt-tests", "--bin", "zt-guest-init"]);
    run(b)?;
    let init = root.join("target/debug/zt-guest-init");
    let dir = root.join("target/vm");
    let sock = dir.join("virtiofs.sock");
    let _ = std::fs::remove_file(&sock);
    let mut fsd = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", sock.display()))
        .args(["-o", "source=/", "-o", "cache=always", "-o", "sandbox=chroot"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("virtiofsd.log"))?)
        .spawn()
        .context("starting virtiofsd")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let guest_cmd: Vec<String> = commands.join(&";;".to_string());
    let append = format!(
        "console=ttyS0 init={} panic=-1 quiet lsm=lockdown,capability,landlock,yama,apparmor,bpf -- {}",
        init.display(),
        guest_cmd.join(" ")
    );
    // The initramfs mounts the root and runs `init=`.
    // QEMU's own status says nothing about the guest: the GUEST-RC line does.
    // One TCG thread for both vCPUs: with `thread=multi` a 6.12 guest
    // died now and then of an `Oops: int3` in `syscall_trace_enter` right
    // after a tracepoint attach, a vCPU running a stale translation of code
    // the kernel had just patched (text_poke_bp). Round-robin vCPUs see
    // every patch at once.
    let mut qemu = Command::new("timeout");
    qemu.args(["1500", "qemu-system-x86_64", "-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2", "-m", "1G"])
        .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on", "-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=vfs,path={}", sock.display()))
        .args(["-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot"])
        .args(["-display", "none", "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel"])
        .arg(&image);
    qemu.arg("-initrd").arg(kernel.initramfs()).arg("-append").arg(append);
    tally.guest_rc = None;
    let ran = run_counting(qemu, tally);
    let _ = fsd.kill();
    let _ = fsd.wait();
    ran?;
    match tally.guest_rc {
        Some(0) => Ok(true),
        Some(rc) => {
            eprintln!("xtask: vm-test: the guest tests on {kernel} exited with {rc}");
            Ok(false)
        }
        None => {
            eprintln!("xtask: vm-test: the {kernel} guest printed no GUEST-RC line (it did not boot or hung): counted as a failure");
            tally.failed += 1;
            Ok(false)
        }
    }
}

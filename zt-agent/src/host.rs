//! Host facts and set-up the agent needs: the cgroup v2 mount, tracefs and
//! securityfs (mounted when missing), privileges, clocks.
//!
//! # Layout
//! - [`parse_mountinfo`] / [`find_mount`]: mount points by fs type (pure).
//! - [`cgroup2_mount`]: the cgroup v2 hierarchy, mounted if absent.
//! - [`ensure_tracefs`], [`ensure_securityfs`]: mount when missing.
//! - [`check_privileges`]: a clear message naming what is missing.
//! - [`boottime_ns`], [`wall_time`] -> [`WallTime`]: the kernel's event clock and wall time;
//!   [`monotonic_coarse_ns`]: its aggregation clock.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nix::mount::{MsFlags, mount};

/// `(mount point, fs type)` pairs from `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(unescape(mount_point)), fstype.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn find_mount(fstype: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text).into_iter().find(|(_, t)| t == fstype).map(|(p, _)| p)
}

/// The cgroup v2 mount point; mounts one at `/sys/fs/cgroup/unified` (hybrid
/// layouts) or `/run/zt-agent/cgroup2` when none is mounted.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    if let Some(p) = find_mount("cgroup2") {
        return Ok(p);
    }
    let target = ["/sys/fs/cgroup/unified", "/run/zt-agent/cgroup2"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir() || std::fs::create_dir_all(p).is_ok())
        .context("no directory to mount cgroup2 on")?;
    mount(Some("cgroup2"), target, Some("cgroup2"), MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting cgroup2 at {}", target.display()))?;
    Ok(target.to_path_buf())
}

fn ensure_mounted(fstype: &str, target: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = find_mount(fstype) {
        return Ok(p);
    }
    std::fs::create_dir_all(target).ok();
    mount(Some(fstype), target, Some(fstype), MsFlags::empty(), None::<&str>).with_context(|| format!("mounting {fstype} at {target}"))?;
    Ok(PathBuf::from(target))
}

pub fn ensure_tracefs() -> anyhow::Result<PathBuf> {
    ensure_mounted("tracefs", "/sys/kernel/tracing")
}

pub fn ensure_securityfs() -> anyhow::Result<PathBuf> {
    ensure_mounted("securityfs", "/sys/kernel/security")
}

/// Fails with a message naming the missing privilege. Loading programs needs
/// CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), attaching to cgroups and
/// mounting needs CAP_SYS_ADMIN; the agent simply requires root-equivalent
/// CAP_SYS_ADMIN plus CAP_BPF.
pub fn check_privileges() -> anyhow::Result<()> {
    let caps = effective_caps().unwrap_or(0);
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    const CAP_PERFMON: u32 = 38;
    let missing: Vec<&str> = [(CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "zt-agent needs {} (effective capabilities of uid {}); run it as root or grant them",
            missing.join(", "),
            nix::unistd::geteuid()
        );
    }
    Ok(())
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Joins the cgroup namespace of PID 1 when ours is another (a container's
/// private one, with the host's PID namespace): `/proc/<pid>/cgroup` paths
/// are then the host's, as selectors name them, not `/../..`-relative ones.
/// Call it before any thread starts (a namespace is per thread).
/// Returns whether it switched.
pub fn enter_host_cgroup_namespace() -> anyhow::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = std::fs::metadata("/proc/self/ns/cgroup").context("reading /proc/self/ns/cgroup")?;
    let Ok(init) = std::fs::File::open("/proc/1/ns/cgroup") else { return Ok(false) };
    if init.metadata()?.ino() == ours.ino() {
        return Ok(false);
    }
    nix::sched::setns(&init, nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .context("joining the host's cgroup namespace (/proc/1/ns/cgroup; needs CAP_SYS_ADMIN and the host PID namespace)")?;
    Ok(true)
}

/// Hands the heap's free pages back to the kernel: loading (kernel BTF,
/// object relocation) and compiling a large policy leave tens of MiB free
/// but mapped, which would otherwise count as the agent's resident memory
/// for as long as it runs.
pub fn release_free_memory() {
    // SAFETY: glibc's malloc_trim only releases free memory of its own arenas.
    unsafe { libc::malloc_trim(0) };
}

/// The node's name in events, audit origins and Rego input: `ZT_NODE_NAME`
/// when set (the DaemonSet sets it to `spec.nodeName`: a pod's host name is
/// the pod's), else the host name.
pub fn node_name() -> String {
    match std::env::var("ZT_NODE_NAME") {
        Ok(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into()),
    }
}

/// The kernel's boot id (changes every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A wall-clock time, shown (and serialised) as RFC 3339 UTC with
/// microseconds: formatted where it is written, so an event carries 16
/// bytes instead of an allocated string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallTime(pub std::time::SystemTime);

impl std::fmt::Display for WallTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_micros(self.0).fmt(f)
    }
}

impl serde::Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Wall-clock time of a `CLOCK_BOOTTIME` timestamp (event times).
pub fn wall_time(boot_ns: u64) -> WallTime {
    // The offset between the two clocks, read once per thread and second:
    // two clock reads per event cost more than the rest of formatting it.
    thread_local! {
        static OFFSET: std::cell::Cell<Option<(std::time::Instant, std::time::SystemTime)>> = const { std::cell::Cell::new(None) };
    }
    let wall_at_boot = OFFSET.with(|o| match o.get() {
        Some((read, at)) if read.elapsed() < std::time::Duration::from_secs(1) => at,
        _ => {
            let at = std::time::SystemTime::now() - std::time::Duration::from_nanos(boottime_ns());
            o.set(Some((std::time::Instant::now(), at)));
            at
        }
    });
    WallTime(wall_at_boot + std::time::Duration::from_nanos(boot_ns))
}

/// `CLOCK_BOOTTIME` now, in ns: the clock of event `time_ns` fields.
pub fn boottime_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// `CLOCK_MONOTONIC_COARSE` now, in ns: the clock of the kernel's
/// aggregation times (`zt_common::policy::AggValue`).
pub fn monotonic_coarse_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// A user-space `st_dev` in the kernel's `dev_t` encoding (major << 20 | minor).
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let text = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
40 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
41 25 0:36 / /mnt/with\\040space rw - tmpfs tmpfs rw
";
        let m = parse_mountinfo(text);
        assert_eq!(m[1], (PathBuf::from("/sys/fs/cgroup/unified"), "cgroup2".to_string()));
        assert_eq!(m[2].0, PathBuf::from("/mnt/with space"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn this_machine_has_a_boot_id() {
        assert_eq!(boot_id().len(), 36);
        assert!(boottime_ns() > 0);
    }
}

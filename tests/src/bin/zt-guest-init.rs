//! PID 1 of the QEMU test guest (`cargo xtask vm-test`): the host's root is
//! the guest's, read-only over virtiofs. Mounts what the agent and the
//! tests need (proc, sys, dev, a tmpfs on /run, securityfs, tracefs,
//! bpffs, cgroup2), brings `lo` up, runs its arguments (commands separated
//! by `;;`) as the test commands
//! with `TMPDIR=/run/tmp` (not a tmpfs over /tmp: the workspace being
//! tested may live there), prints `GUEST-RC=<exit code>` on the console
//! (QEMU's own exit status says nothing) and powers the guest off.
use std::process::Command;

use nix::mount::{MsFlags, mount};

fn main() {
    let mounts: [(&str, &str, &str); 8] = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("securityfs", "/sys/kernel/security", "securityfs"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
        ("bpf", "/sys/fs/bpf", "bpf"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ];
    for (source, target, fstype) in mounts {
        if let Err(e) = mount(Some(source), target, Some(fstype), MsFlags::empty(), None::<&str>) {
            println!("zt-guest-init: mounting {fstype} on {target}: {e}");
        }
    }
    let _ = Command::new("ip").args(["link", "set", "lo", "up"]).status();
    let _ = std::fs::create_dir_all("/run/tmp");
    // Commands separated by `;;`, run in order; the first failure's code.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rc = if args.is_empty() { 2 } else { 0 };
    for command in args.split(|a| a == ";;").filter(|c| !c.is_empty()) {
        let code = run(command);
        if rc == 0 {
            rc = code;
        }
    }
    println!("GUEST-RC={rc}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
}

fn run(command: &[String]) -> i32 {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    println!("zt-guest-init: running {command:?} on {release}");
    let (cmd, rest) = command.split_first().expect("a non-empty command");
    match Command::new(cmd)
        .args(rest)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/run/tmp")
        .env("TMPDIR", "/run/tmp")
        .env("ZT_GUEST", "1")
        .status()
    {
        Ok(s) => s.code().unwrap_or(128),
        Err(e) => {
            println!("zt-guest-init: {cmd}: {e}");
            127
        }
    }
}

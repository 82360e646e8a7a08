//! Feature probing: load (and, where harmless, attach and detach) a tiny
//! program of each kind the agent may use, and report what really works.
//!
//! Reading `/sys/kernel/security/lsm` is not enough: it can list `bpf` while
//! `BPF_PROG_LOAD` of an LSM program fails with EPERM (as on this project's
//! development VMs), so every feature is judged by a real load.
use std::{fs, path::Path};

use aya::{
    Btf, Ebpf,
    maps::MapType,
    programs::{CgroupAttachMode, CgroupSockAddr, FEntry, KProbe, Lsm, RawTracePoint, TracePoint},
    sys::is_map_supported,
};
use serde::Serialize;
use zt_common::programs as P;

use super::OBJECT;
use crate::host;

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub kernel: String,
    pub features: Vec<Feature>,
}

impl Capabilities {
    pub fn has(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.available)
    }
}

pub mod names {
    pub const TRACEPOINT: &str = "tracepoint";
    pub const RAW_TRACEPOINT: &str = "raw_tracepoint";
    pub const RINGBUF: &str = "ring_buffer";
    pub const LPM_TRIE: &str = "lpm_trie";
    pub const SOCK_ADDR: &str = "cgroup_sock_addr";
    pub const LSM: &str = "bpf_lsm";
    pub const FENTRY: &str = "fentry";
    pub const KPROBE: &str = "kprobe";
    pub const SEND_SIGNAL: &str = "bpf_send_signal";
    pub const BPFFS: &str = "bpffs";
    pub const CGROUP2: &str = "cgroup_v2";
    pub const BTF: &str = "kernel_btf";
    /// fanotify permission events (not eBPF: the file-rule fallback).
    pub const FANOTIFY_PERM: &str = "fanotify_perm";
}

fn result(name: &'static str, r: Result<String, String>) -> Feature {
    match r {
        Ok(detail) => Feature { name, available: true, detail },
        Err(detail) => Feature { name, available: false, detail },
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Runs every probe. Needs privileges to load programs; without them every
/// program probe reports the load error.
pub fn probe() -> Capabilities {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mut features = Vec::new();
    let cgroup2 = host::find_mount("cgroup2");
    features.push(result(
        names::CGROUP2,
        cgroup2.as_ref().map(|p| format!("mounted at {}", p.display())).ok_or_else(|| "not mounted".to_string()),
    ));
    features.push(result(names::BPFFS, probe_bpffs()));
    let btf = Btf::from_sys_fs();
    features.push(result(names::BTF, btf.as_ref().map(|_| "/sys/kernel/btf/vmlinux".to_string()).map_err(|e| chain(e))));
    for (name, ty) in [(names::RINGBUF, MapType::RingBuf), (names::LPM_TRIE, MapType::LpmTrie)] {
        features.push(result(
            name,
            match is_map_supported(ty) {
                Ok(true) => Ok("map created".into()),
                Ok(false) => Err("map type not supported".into()),
                Err(e) => Err(chain(&e)),
            },
        ));
    }

    let mut ebpf = match super::loader::loader_with_offsets(None).load(OBJECT) {
        Ok(e) => e,
        Err(e) => {
            let why = format!("loading the object failed: {}", chain(&e));
            for name in
                [names::TRACEPOINT, names::RAW_TRACEPOINT, names::SOCK_ADDR, names::LSM, names::FENTRY, names::KPROBE, names::SEND_SIGNAL]
            {
                features.push(Feature { name, available: false, detail: why.clone() });
            }
            return Capabilities { kernel, features };
        }
    };
    features.push(result(names::TRACEPOINT, probe_tracepoint(&mut ebpf)));
    features.push(result(names::RAW_TRACEPOINT, probe_raw_tracepoint(&mut ebpf)));
    features.push(result(names::SOCK_ADDR, probe_sock_addr(&mut ebpf, cgroup2.as_deref())));
    let _ = host::ensure_securityfs();
    let lsm_list = fs::read_to_string("/sys/kernel/security/lsm").ok();
    features.push(result(names::LSM, probe_lsm(&mut ebpf, btf.as_ref().ok(), lsm_list.as_deref())));
    features.push(result(names::FENTRY, probe_fentry(&mut ebpf, btf.as_ref().ok())));
    features.push(result(names::KPROBE, probe_kprobe(&mut ebpf)));
    features.push(result(names::SEND_SIGNAL, probe_send_signal(&mut ebpf)));
    features.push(result(names::FANOTIFY_PERM, probe_fanotify()));
    Capabilities { kernel, features }
}

fn probe_bpffs() -> Result<String, String> {
    if let Some(p) = host::find_mount("bpf") {
        return Ok(format!("mounted at {}", p.display()));
    }
    let fs_list = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fs_list.lines().any(|l| l.split_whitespace().last() == Some("bpf")) {
        Ok("supported, not mounted (the agent mounts /sys/fs/bpf when pinning)".into())
    } else {
        Err("bpf filesystem not supported by this kernel".into())
    }
}

macro_rules! program {
    ($ebpf:expr, $name:expr, $ty:ty) => {{
        let p: &mut $ty = $ebpf
            .program_mut($name)
            .ok_or_else(|| format!("program {} missing from object", $name))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| chain(&e))?;
        p
    }};
}

fn probe_tracepoint(ebpf: &mut Ebpf) -> Result<String, String> {
    let p = program!(ebpf, P::PROBE_TRACEPOINT, TracePoint);
    p.load().map_err(|e| format!("load: {}", chain(&e)))?;
    let link = p.attach("syscalls", "sys_enter_getppid").map_err(|e| format!("attach: {}", chain(&e)))?;
    p.detach(link).map_err(|e| format!("detach: {}", chain(&e)))?;
    Ok("loaded and attached to syscalls/sys_enter_getppid".into())
}

fn probe_raw_tracepoint(ebpf: &mut Ebpf) -> Result<String, String> {
    let p = program!(ebpf, P::PROBE_RAW_TRACEPOINT, RawTracePoint);
    p.load().map_err(|e| format!("load: {}", chain(&e)))?;
    let link = p.attach("sys_enter").map_err(|e| format!("attach: {}", chain(&e)))?;
    p.detach(link).map_err(|e| format!("detach: {}", chain(&e)))?;
    Ok("loaded and attached to sys_enter".into())
}

fn probe_sock_addr(ebpf: &mut Ebpf, cgroup2: Option<&Path>) -> Result<String, String> {
    let p = program!(ebpf, P::PROBE_SOCK_ADDR, CgroupSockAddr);
    p.load().map_err(|e| format!("load: {}", chain(&e)))?;
    let Some(root) = cgroup2 else { return Err("loaded, but no cgroup v2 mount to attach to".into()) };
    // Attach to a private, empty child cgroup: no process is affected.
    let dir = root.join(format!("zt-agent-probe-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&dir) {
        // A read-only cgroup mount (a container's): the program loads, and
        // the agent's own attach at the root is checked hook by hook (a
        // refused one makes its enforcement path DEGRADED).
        return match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Ok(format!("loaded; attach not probed (no test cgroup: creating {}: {e})", dir.display()))
            }
            _ => Err(format!("creating {}: {e}", dir.display())),
        };
    }
    let attach = fs::File::open(&dir)
        .map_err(|e| e.to_string())
        .and_then(|f| p.attach(&f, CgroupAttachMode::Single).map_err(|e| format!("attach: {}", chain(&e))))
        .and_then(|link| p.detach(link).map_err(|e| format!("detach: {}", chain(&e))));
    let _ = fs::remove_dir(&dir);
    attach.map(|()| "loaded and attached (connect4) to a test cgroup".into())
}

fn probe_lsm(ebpf: &mut Ebpf, btf: Option<&Btf>, lsm_list: Option<&str>) -> Result<String, String> {
    let listed = lsm_list.map(|l| l.trim().split(',').any(|m| m == "bpf"));
    let note = match listed {
        Some(true) => "listed in /sys/kernel/security/lsm",
        Some(false) => "not listed in /sys/kernel/security/lsm",
        None => "securityfs not mounted",
    };
    let btf = btf.ok_or_else(|| format!("no kernel BTF ({note})"))?;
    let p = program!(ebpf, P::PROBE_LSM, Lsm);
    p.load("file_open", btf).map_err(|e| format!("load of lsm/file_open refused: {} ({note})", chain(&e)))?;
    Ok(format!("lsm/file_open loaded ({note})"))
}

fn probe_fentry(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<String, String> {
    let btf = btf.ok_or("no kernel BTF")?;
    let p = program!(ebpf, P::PROBE_FENTRY, FEntry);
    p.load("vfs_read", btf).map_err(|e| format!("load of fentry/vfs_read refused: {}", chain(&e)))?;
    Ok("fentry/vfs_read loaded".into())
}

fn probe_kprobe(ebpf: &mut Ebpf) -> Result<String, String> {
    let p = program!(ebpf, P::PROBE_KPROBE, KProbe);
    p.load().map_err(|e| format!("load: {}", chain(&e)))?;
    let link = p.attach("vfs_read", 0).map_err(|e| format!("attach to vfs_read: {}", chain(&e)))?;
    p.detach(link).map_err(|e| format!("detach: {}", chain(&e)))?;
    Ok("loaded and attached to vfs_read".into())
}

fn probe_send_signal(ebpf: &mut Ebpf) -> Result<String, String> {
    let p = program!(ebpf, P::PROBE_SEND_SIGNAL, TracePoint);
    p.load().map_err(|e| format!("verifier refused bpf_send_signal in a tracepoint: {}", chain(&e)))?;
    Ok("helper allowed in tracepoint programs".into())
}

/// Human-readable table for `zt-agent probe`.
fn probe_fanotify() -> Result<String, String> {
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags};
    Fanotify::init(InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC, EventFFlags::O_RDONLY)
        .map(|_| "fanotify_init(FAN_CLASS_CONTENT): permission events".to_string())
        .map_err(|e| format!("fanotify_init(FAN_CLASS_CONTENT): {e} (CONFIG_FANOTIFY_ACCESS_PERMISSIONS off?)"))
}

pub fn render(caps: &Capabilities) -> String {
    let mut s = format!("kernel {}\n", caps.kernel);
    for f in &caps.features {
        s.push_str(&format!("{:<18} {:<4} {}\n", f.name, if f.available { "yes" } else { "NO" }, f.detail));
    }
    s
}

/// Which mechanism each capability of the agent uses on this kernel, given
/// the probe: logged at start-up and shown by `status`.
/// The file-rules line where the fanotify fallback is in force (the start
/// of it: [`file_rules_fallback`] says how default-deny identities are held).
pub const FILE_RULES_FANOTIFY: &str = "fanotify FAN_OPEN_PERM on the objects deny rules name (every directory below a \
     directory rule), answered by the agent (fallback: BPF LSM does not load): opens refused with EPERM; unlink, rename, \
     link, mkdir, truncate(2) NOT ENFORCED; marks go when the agent stops";

/// The whole fallback line, once it is known whether `open_exit` is
/// attached (identities whose files default to deny).
pub fn file_rules_fallback(open_exit: bool) -> String {
    let defaults = if open_exit {
        "identities whose files default to deny: every open decided at the open syscalls' return, a denied one killed \
         (SIGKILL: the open happened, the process never returns to user space; io_uring opens killed at submission)"
    } else {
        "identities whose files default to deny: NOT ENFORCED beyond the objects deny rules name (needs the syscall guards)"
    };
    format!("{FILE_RULES_FANOTIFY}; {defaults}")
}

pub fn enforcement_paths(caps: &Capabilities) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    v.push((
        "process attribution",
        if caps.has(names::TRACEPOINT) {
            "in-kernel lineage (sched_process_fork/exec/exit tracepoints)".into()
        } else {
            "UNAVAILABLE: tracepoints do not load".into()
        },
    ));
    v.push((
        "network enforcement",
        if caps.has(names::SOCK_ADDR) && caps.has(names::LPM_TRIE) {
            "cgroup connect4/connect6/sendmsg4/sendmsg6 (IP) and connect_unix/sendmsg_unix (Unix sockets) at the cgroup v2 root: \
             per-identity egress rules, EPERM on deny"
                .into()
        } else {
            "UNAVAILABLE: cgroup sock_addr programs or LPM tries do not load; no egress enforcement".into()
        },
    ));
    let kill = caps.has(names::TRACEPOINT) && caps.has(names::SEND_SIGNAL);
    let lsm = caps.has(names::LSM);
    let other_families = match (lsm, kill) {
        (true, _) => "other families: BPF LSM socket_create (EPERM)",
        (false, true) => "other families: tracepoints on socket/socketpair, SIGKILL",
        (false, false) => "other families UNGUARDED (neither BPF LSM nor bpf_send_signal)",
    };
    v.push((
        "socket kinds",
        if caps.has(names::SOCK_ADDR) {
            format!(
                "inet: cgroup sock_create at the cgroup v2 root (EPERM); {other_families}; route-changing options \
                 (setsockopt or per message): cgroup skb egress (the packet dropped, the send EPERM)"
            )
        } else {
            "UNGUARDED: cgroup programs do not load".into()
        },
    ));
    v.push((
        "process takeover, bpf(2)",
        match (lsm, kill) {
            (true, _) => "BPF LSM ptrace_access_check (attach mode: ptrace, process_vm_readv/writev, pidfd_getfd, /proc/PID/mem) \
                          and bpf: EPERM before the call, no syscall tracepoint"
                .into(),
            (false, true) => "tracepoints on ptrace/process_vm_readv/process_vm_writev/pidfd_getfd/bpf, SIGKILL (the call itself \
                              runs; the caller never returns to user space)"
                .into(),
            (false, false) => "UNGUARDED: neither BPF LSM nor tracepoints with bpf_send_signal".into(),
        },
    ));
    v.push((
        "file rules",
        if lsm {
            "BPF LSM file_open, path_unlink/rmdir/rename/truncate/link/mkdir/mknod/symlink, matched by object (device and inode \
             of the file and of every directory above it): EPERM before the access; open decisions cached per CPU \
             until the next rename (fexit/vfs_rename), 100 ms at most"
                .into()
        } else if caps.has(names::FANOTIFY_PERM) {
            file_rules_fallback(kill)
        } else {
            "NOT ENFORCED: neither BPF LSM programs nor fanotify permission events on this kernel; file rules are compiled \
             and explained (`policy explain --open`), but no access is refused and no file event is written"
                .into()
        },
    ));
    v.push((
        "exec rules",
        match (lsm, kill) {
            (true, _) => "BPF LSM bprm_check_security, matched by object: EPERM before the exec".into(),
            (false, true) => "sched_process_exec + SIGKILL (fallback: BPF LSM does not load; the exec happens, and the process is \
                              killed before its new image runs an instruction)"
                .into(),
            (false, false) => "NOT ENFORCED: neither BPF LSM nor bpf_send_signal from tracepoints".into(),
        },
    ));
    let signals = match (lsm, kill && caps.has(names::RAW_TRACEPOINT)) {
        (true, _) => "signals to the agent: BPF LSM task_kill (EPERM)",
        (false, true) => {
            "signals to the agent: raw tracepoint signal_generate, the sender killed (SIGKILL) and recorded; the signal \
             itself is delivered (no hook can refuse it without BPF LSM: a root identity's SIGKILL or SIGSTOP still stops \
             the agent, its pinned programs stay)"
        }
        (false, false) => "signals to the agent: UNGUARDED (neither BPF LSM nor raw tracepoints with bpf_send_signal)",
    };
    v.push((
        "self-protection",
        format!(
            "every identity is denied writing the agent's state, audit, pin, policy and socket directories, config file and \
             binary, and reading its keys (the file rules above), and connecting to its control socket (the Unix egress \
             hooks); {signals}; bpf(2), ptrace and detaching programs: as above"
        ),
    ));
    v
}

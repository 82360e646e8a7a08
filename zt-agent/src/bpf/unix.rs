//! The Unix-socket programs (`connect_unix`, `sendmsg_unix`), loaded
//! beside aya.
//!
//! aya 0.14 has no attach type for the cgroup Unix-socket hooks
//! (`BPF_CGROUP_UNIX_CONNECT`/`_SENDMSG`, Linux >= 6.7), and the kernel
//! attaches a sock_addr program only at the hook it was loaded for. So the
//! two functions, compiled under a section aya parses (`cgroup/connect4`),
//! are taken from the same object through aya-obj, relocated against the
//! maps aya created (the same fds: one set of maps for every program),
//! loaded with `BPF_PROG_LOAD` and the right expected attach type, and
//! attached with `BPF_LINK_CREATE` at the cgroup v2 root. [`UnixPrograms`]
//! owns the descriptors: dropping it detaches the links not pinned.
use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_insn};
use zt_common::programs as P;

/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The programs and the hook each is for.
pub const HOOKS: [(&str, bpf_attach_type); 2] =
    [(P::CONNECT_UNIX, bpf_attach_type::BPF_CGROUP_UNIX_CONNECT), (P::SENDMSG_UNIX, bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG)];

#[derive(Debug, thiserror::Error)]
pub enum UnixLoadError {
    #[error("parsing the object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("relocating: {0}")]
    Relocate(#[from] aya_obj::relocation::EbpfRelocationError),
    #[error("map {0} has no descriptor")]
    Map(String),
    #[error("program {0} is not in the object")]
    Missing(&'static str),
    #[error("loading {program}: {source}{}", if log.is_empty() { String::new() } else { format!("\nverifier log (end):\n{log}") })]
    Load { program: &'static str, source: std::io::Error, log: String },
    #[error("{program}: reading its id: {source}")]
    Info { program: &'static str, source: std::io::Error },
}

pub struct UnixProgram {
    pub name: &'static str,
    pub attach_type: bpf_attach_type,
    pub id: u32,
    prog: OwnedFd,
    link: Option<OwnedFd>,
}

/// The loaded Unix-socket programs.
#[derive(Default)]
pub struct UnixPrograms(pub Vec<UnixProgram>);

impl UnixPrograms {
    /// Relocates and loads both programs against `ebpf`'s maps. Call before
    /// any map is taken out of `ebpf`.
    pub fn load(ebpf: &Ebpf, object: &[u8]) -> Result<UnixPrograms, UnixLoadError> {
        let mut obj = aya_obj::Object::parse(object)?;
        let fds: HashMap<&str, RawFd> = ebpf.maps().filter_map(|(name, m)| Some((name, map_fd(m)?))).collect();
        let defs = obj.maps.clone();
        let mut maps = Vec::new();
        for (name, def) in &defs {
            let fd = *fds.get(name.as_str()).ok_or_else(|| UnixLoadError::Map(name.clone()))?;
            maps.push((name.as_str(), fd, def));
        }
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(maps.into_iter(), &text)?;
        obj.relocate_calls(&text)?;
        let mut out = Vec::new();
        for (name, attach_type) in HOOKS {
            let program = obj.programs.get(name).ok_or(UnixLoadError::Missing(name))?;
            let insns = &obj.functions.get(&program.function_key()).ok_or(UnixLoadError::Missing(name))?.instructions;
            let prog = prog_load(name, insns, &program.license, attach_type)?;
            let id = prog_id(&prog).map_err(|source| UnixLoadError::Info { program: name, source })?;
            out.push(UnixProgram { name, attach_type, id, prog, link: None });
        }
        Ok(UnixPrograms(out))
    }

    /// Attaches `name` at the cgroup `root` through a new link.
    pub fn attach(&mut self, name: &str, root: &Path) -> std::io::Result<()> {
        let p = self.0.iter_mut().find(|p| p.name == name).ok_or_else(|| std::io::Error::other(format!("{name} not loaded")))?;
        let cgroup = std::fs::File::open(root)?;
        #[repr(C)]
        struct LinkCreate {
            prog_fd: u32,
            target_fd: u32,
            attach_type: u32,
            flags: u32,
        }
        let attr = LinkCreate {
            prog_fd: p.prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: p.attach_type as u32,
            flags: 0,
        };
        // SAFETY: bpf(2) reads `size_of::<LinkCreate>()` bytes of `attr`, an
        // initialised #[repr(C)] value (the kernel's `link_create` prefix)
        // that outlives the call; the fds stay open through it.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &attr, size_of::<LinkCreate>()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just returned, owned only here.
        p.link = Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        Ok(())
    }

    /// `(name, program id)` of each loaded program (for pinning its link).
    pub fn ids(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.0.iter().map(|p| (p.name, p.id))
    }
}

/// The descriptor of a map of the kinds our object has.
fn map_fd(m: &Map) -> Option<RawFd> {
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::SkStorage(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

fn prog_load(name: &'static str, insns: &[bpf_insn], license: &CString, attach_type: bpf_attach_type) -> Result<OwnedFd, UnixLoadError> {
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let load = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoad {
            prog_type: PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: attach_type as u32,
            ..Default::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: bpf(2) reads `size_of::<ProgLoad>()` bytes of `attr`, an
        // initialised #[repr(C)] prefix of the kernel's `bpf_attr` for
        // BPF_PROG_LOAD; the instructions, licence and log buffer it points
        // to outlive the call, and the log buffer is `log_size` bytes.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr, size_of::<ProgLoad>()) };
        if fd < 0 { Err(std::io::Error::last_os_error()) } else { Ok(fd as i32) }
    };
    match load(None) {
        // SAFETY: a new descriptor the kernel just returned, owned only here.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(source) => {
            // Again with the verifier's log, for the error.
            let mut log = vec![0u8; 1 << 20];
            let _ = load(Some(&mut log));
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            Err(UnixLoadError::Load { program: name, source, log: tail.into_iter().rev().collect::<Vec<_>>().join("\n") })
        }
    }
}

/// The kernel's id of a loaded program (`bpf_prog_info.id`).
fn prog_id(prog: &OwnedFd) -> std::io::Result<u32> {
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // `bpf_prog_info` starts with `type`, `id`; the kernel fills as much
    // as `info_len` allows.
    let mut info = [0u32; 2];
    let attr = GetInfo { bpf_fd: prog.as_raw_fd() as u32, info_len: size_of_val(&info) as u32, info: info.as_mut_ptr() as u64 };
    // SAFETY: bpf(2) reads `attr` and writes at most `info_len` bytes to
    // `info`, which outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, size_of::<GetInfo>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(info[1]) }
}

//! Pinning under bpffs: enforcement that outlives the daemon.
//!
//! # Layout under the pin directory (default `/sys/fs/bpf/zt-agent`)
//! - `<abi>/maps/<MAP>`: the maps that hold enforcement state
//!   (`zt_common::maps::pinned`).
//! - `<abi>/links/<run>/<program>-<link id>`: the links of one daemon run;
//!   a pinned link keeps its program attached with no process holding it.
//!
//! `<abi>` is a digest of the object's map definitions (name, type, key
//! and value size, entries, flags; [`abi`]): only an object that lays the
//! maps out the same adopts them.
//!
//! # A start
//! - No pins: maps are created and pinned.
//! - Maps pinned by a start that failed before it pinned any link: removed
//!   (they enforced nothing), and the start is a fresh one.
//! - Pins of this ABI ([`Pins::adopted`]): the maps are reused, so the
//!   process table, both policy slots, counters and events written while
//!   the daemon was down carry on. The new programs attach first; only
//!   then are the previous runs' links unpinned ([`Pins::retire_previous`]),
//!   which detaches their programs: there is no moment without one (for
//!   that moment both run, over the same maps, and decide alike).
//! - Pins of another ABI only: refused, naming them and `zt-agent
//!   uninstall` ([`PinError::OtherAbi`]).
//!
//! [`uninstall`] unpins every link (detaching its program) and map.
//!
//! The kernel side of pinning (`BPF_LINK_GET_FD_BY_ID`, `BPF_OBJ_PIN`) is
//! two raw `bpf(2)` calls here: aya cannot convert every link kind to a
//! pinnable link.
use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use zt_common::maps as M;

use crate::fsutil::{FsError, at};

pub const DEFAULT_DIR: &str = "/sys/fs/bpf/zt-agent";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{dir} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs { dir: String },
    #[error(
        "{dir} holds pins of another build (map layout {found}, this build {ours}); its programs may still be enforcing. Run `zt-agent uninstall --pin-dir {parent}` to remove them first"
    )]
    OtherAbi { dir: String, parent: String, found: String, ours: String },
    #[error("reading the eBPF object's map definitions: {0}")]
    Object(String),
    #[error("pinning the link of {program} at {path}")]
    PinLink {
        program: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing loaded links")]
    Links(#[source] aya::programs::links::LinkError),
    #[error("program {0}")]
    Program(String, #[source] aya::programs::ProgramError),
}

/// The digest of the object's map definitions (16 hex digits).
pub fn abi(object: &[u8]) -> Result<String, PinError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut h = blake3::Hasher::new();
    for name in M::pinned() {
        let m = obj.maps.get(name).ok_or_else(|| PinError::Object(format!("map {name} missing")))?;
        // Sizes set at load (ring buffer, pid array) are not the layout.
        let entries = if [M::EVENTS, M::PID_IDENTITY].contains(&name) { 0 } else { m.max_entries() };
        for v in [m.map_type(), m.key_size(), m.value_size(), entries, m.map_flags()] {
            h.update(&v.to_le_bytes());
        }
        h.update(name.as_bytes());
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// The pins of this ABI under a pin directory.
#[derive(Debug, Clone)]
pub struct Pins {
    root: PathBuf,
    run: PathBuf,
    previous: Vec<PathBuf>,
    adopted: bool,
}

impl Pins {
    /// Makes `dir/<abi>` ready (mounting bpffs at `/sys/fs/bpf` if nothing
    /// is mounted there); refuses pins of another ABI.
    pub fn prepare(dir: &Path, object: &[u8]) -> Result<Pins, PinError> {
        ensure_bpffs(dir)?;
        let ours = abi(object)?;
        let root = dir.join(&ours);
        if !root.exists()
            && let Some(found) = subdirs(dir)?.into_iter().next()
        {
            return Err(PinError::OtherAbi {
                dir: found.display().to_string(),
                parent: dir.display().to_string(),
                found: found.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                ours,
            });
        }
        std::fs::create_dir_all(root.join("maps")).map_err(at("creating", &root))?;
        let links = root.join("links");
        std::fs::create_dir_all(&links).map_err(at("creating", &links))?;
        let previous = subdirs(&links)?;
        let maps = root.join("maps");
        if previous.is_empty() && std::fs::read_dir(&maps).is_ok_and(|mut d| d.next().is_some()) {
            // Maps without links: a start that failed before it attached
            // anything. Nothing enforced with them; start afresh.
            remove_pins(&maps)?;
            std::fs::create_dir_all(&maps).map_err(at("creating", &maps))?;
        }
        let adopted = !previous.is_empty();
        let run = links.join(format!("{}-{}", std::process::id(), crate::host::boottime_ns()));
        Ok(Pins { root, run, previous, adopted })
    }

    /// Whether an earlier run's pinned state is adopted (decided before
    /// this run pinned anything).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Pins every link of the loaded `programs` (name, program id) under
    /// this run's directory; returns how many. A link pinned already stays
    /// (after a repair, only the new link is pinned).
    pub fn pin_links(&self, programs: &[(&str, u32)]) -> Result<usize, PinError> {
        std::fs::create_dir_all(&self.run).map_err(at("creating", &self.run))?;
        let mut n = 0;
        for link in aya::programs::loaded_links() {
            let link = link.map_err(PinError::Links)?;
            let Some((name, _)) = programs.iter().find(|(_, id)| *id == link.program_id()) else { continue };
            let path = self.run.join(format!("{name}-{}", link.id()));
            if path.exists() {
                continue;
            }
            pin_link_by_id(link.id(), &path).map_err(|source| PinError::PinLink {
                program: name.to_string(),
                path: path.display().to_string(),
                source,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Unpins the links of earlier runs (their programs detach once no
    /// process holds them); returns how many.
    pub fn retire_previous(&self) -> Result<usize, PinError> {
        let mut n = 0;
        for dir in &self.previous {
            n += remove_pins(dir)?;
        }
        Ok(n)
    }
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
}

/// Unpins everything under `dir` (every ABI): links first (their programs
/// detach), then maps, then the directories.
pub fn uninstall(dir: &Path) -> Result<Removed, PinError> {
    let mut removed = Removed::default();
    if !dir.exists() {
        return Ok(removed);
    }
    for abi_dir in subdirs(dir)? {
        let links = abi_dir.join("links");
        if links.exists() {
            for run in subdirs(&links)? {
                removed.links += remove_pins(&run)?;
            }
            std::fs::remove_dir(&links).map_err(at("removing", &links))?;
        }
        let maps = abi_dir.join("maps");
        if maps.exists() {
            removed.maps += remove_pins(&maps)?;
        }
        std::fs::remove_dir(&abi_dir).map_err(at("removing", &abi_dir))?;
    }
    std::fs::remove_dir(dir).map_err(at("removing", dir))?;
    Ok(removed)
}

/// Removes every pin in `dir`, then `dir` itself; returns how many pins.
fn remove_pins(dir: &Path) -> Result<usize, PinError> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(at("reading", dir))? {
        let path = e.map_err(at("reading", dir))?.path();
        std::fs::remove_file(&path).map_err(at("unpinning", &path))?;
        n += 1;
    }
    std::fs::remove_dir(dir).map_err(at("removing", dir))?;
    Ok(n)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut v = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(at("reading", dir))?;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    v.push(e.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at("reading", dir)(e).into()),
    }
    v.sort();
    Ok(v)
}

/// `dir` must be on bpffs; `/sys/fs/bpf` is mounted if it is not yet.
fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe4a11);
    let on_bpffs = |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    let default = Path::new("/sys/fs/bpf");
    if dir.starts_with(default) && !on_bpffs(default) {
        let _ = std::fs::create_dir_all(default);
        let _ = nix::mount::mount(Some("bpf"), default, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>);
    }
    let probe = dir.ancestors().find(|p| p.exists()).unwrap_or(default);
    if !on_bpffs(probe) {
        return Err(PinError::NotBpffs { dir: dir.display().to_string() });
    }
    Ok(())
}

/// `BPF_LINK_GET_FD_BY_ID` then `BPF_OBJ_PIN`.
fn pin_link_by_id(id: u32, path: &Path) -> std::io::Result<()> {
    #[repr(C)]
    struct GetFdById {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let attr = GetFdById { link_id: id, next_id: 0, open_flags: 0 };
    // SAFETY: bpf(2) reads `size_of::<GetFdById>()` bytes of `attr`, a
    // valid, initialised #[repr(C)] value that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, &attr, size_of::<GetFdById>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned only here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjPin { pathname: cpath.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: as above; `cpath` (read through `pathname`) and `fd` live
    // until the call returns.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &attr, size_of::<ObjPin>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_abi_is_the_map_layout() {
        let a = super::abi(super::super::OBJECT).unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(a, super::abi(super::super::OBJECT).unwrap());
    }
}

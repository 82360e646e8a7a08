//! The one user-space module that talks to the kernel through aya.
//!
//! # Layout
//! - [`loader`]: load the embedded object, the hook table with capability
//!   fallbacks, attach; [`loader::Bpf`] owns every link (drop = detach).
//! - [`probe`]: what this kernel really runs, learned by loading tiny programs.
//! - [`maps`]: typed map wrappers and the ring buffer source (map access only).
//! - [`tables`]: the domain's table traits (`identity::table`,
//!   `policy::target`, `pipeline::source`) implemented over [`maps`].
//! - [`pins`]: pinning under bpffs, so enforcement outlives the daemon;
//!   adoption by the next run, `uninstall`.
//! - [`unix`]: the Unix-socket programs, loaded beside aya (it has no
//!   attach type for their hooks).
//! - [`telemetry`]: syscall telemetry for the anomaly model, attached on
//!   demand.
//! - [`tracefs`]: tracepoint layouts from tracefs `format` files.
//! - [`btf`]: kernel struct member offsets from BTF (no CO-RE in aya-ebpf).
//! - [`verify`]: what is attached at the cgroup root now, for continuous
//!   verification.
pub mod btf;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod probe;
pub mod tables;
pub mod telemetry;
pub mod tracefs;
pub mod unix;
pub mod verify;

/// The eBPF object built from `zt-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zt-ebpf"));

/// blake3 digest of the embedded object (logged at start, shown by `status`).
pub fn object_digest() -> blake3::Hash {
    blake3::hash(OBJECT)
}

/// Names of every BPF program loaded in the kernel (truncated by the kernel
/// to 15 bytes); used to check that nothing of ours is left after a stop.
pub fn loaded_program_names() -> Result<Vec<String>, aya::programs::ProgramError> {
    loaded_programs().map(|p| p.map(|info| info.name_as_str().unwrap_or_default().to_string())).collect()
}

/// Every loaded program, skipping one unloaded between the kernel listing
/// its id and our opening it (ENOENT: not an error, it is gone).
fn loaded_programs() -> impl Iterator<Item = Result<aya::programs::ProgramInfo, aya::programs::ProgramError>> {
    aya::programs::loaded_programs()
        .filter(|p| !matches!(p, Err(aya::programs::ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT)))
}

/// Total run time and run count of every loaded program named `name`
/// (kernel run-time statistics; enable them with [`enable_run_time_stats`]).
pub fn program_run_stats(name: &str) -> Result<(std::time::Duration, u64), aya::programs::ProgramError> {
    let mut total = (std::time::Duration::ZERO, 0);
    for p in loaded_programs() {
        let p = p?;
        if p.name_as_str() == Some(name) {
            total.0 += p.run_time();
            total.1 += p.run_count();
        }
    }
    Ok(total)
}

/// Turns on the kernel's per-program run-time statistics while the
/// returned fd is open (`BPF_ENABLE_STATS`), for benchmarks.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd, aya::sys::SyscallError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol};
    use zt_common::{globals, maps, programs};

    /// (symbol, section) of every symbol of the embedded object that has a section.
    fn symbols() -> Vec<(String, String)> {
        let obj = object::File::parse(super::OBJECT).expect("the embedded object is ELF");
        obj.symbols()
            .filter_map(|s| {
                let section = s.section_index().and_then(|i| obj.section_by_index(i).ok())?;
                Some((s.name().ok()?.to_string(), section.name().ok()?.to_string()))
            })
            .collect()
    }

    /// The built object holds every program, map and load-time global the
    /// user-space side names (a rename on one side fails here, not at load).
    #[test]
    fn object_has_every_program_map_and_global() {
        let obj = object::File::parse(super::OBJECT).expect("the embedded object is ELF");
        assert_eq!(obj.architecture(), object::Architecture::Bpf);
        let symbols = symbols();
        let section_of = |name: &str| symbols.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
        for p in programs::ALL {
            let s = section_of(p).unwrap_or_else(|| panic!("program {p} missing"));
            assert!(!s.starts_with(".text"), "{p} is in {s}, not a program section");
        }
        for m in maps::ALL {
            assert!(matches!(section_of(m).as_deref(), Some(MAPS | BTF_MAPS)), "map {m}");
        }
        for g in [
            globals::FORK_PARENT_PID,
            globals::FORK_CHILD_PID,
            globals::EXEC_FILENAME,
            globals::EXEC_OLD_PID,
            globals::EXIT_GROUP_DEAD,
            globals::TASK_MM,
            globals::MM_ARG_START,
            globals::MM_ARG_END,
        ] {
            let s = section_of(g).unwrap_or_else(|| panic!("global {g} missing"));
            assert!(s.starts_with(".rodata"), "global {g} in {s}: must be read-only so the verifier sees a constant");
        }
        assert!(obj.section_by_name(".BTF").is_some(), "object lacks BTF");
        assert!(obj.section_by_name(".BTF.ext").is_some(), "object lacks BTF.ext");
        assert!(obj.section_by_name("license").is_some());
        // build.rs removed the DWARF sections and their relocations.
        let dwarf: Vec<String> =
            obj.sections().filter_map(|s| s.name().ok().map(str::to_string)).filter(|n| n.contains(".debug_")).collect();
        assert!(dwarf.is_empty(), "DWARF left in the object: {dwarf:?}");
    }

    /// Where maps live: legacy definitions (`#[map]`), and BTF ones
    /// (`#[btf_map]`, which socket storage needs).
    const MAPS: &str = "maps";
    const BTF_MAPS: &str = ".maps";

    /// `maps::ALL` names exactly the maps of the object: a `#[map]` added to
    /// zt-ebpf without a name in zt-common fails here, and so does a stale name.
    #[test]
    fn maps_all_is_exactly_the_objects_maps() {
        let in_object: BTreeSet<String> = symbols().into_iter().filter(|(_, s)| s == MAPS || s == BTF_MAPS).map(|(n, _)| n).collect();
        let listed: BTreeSet<String> = maps::ALL.iter().map(|m| m.to_string()).collect();
        assert_eq!(listed.len(), maps::ALL.len(), "maps::ALL names a map twice");
        let unlisted: Vec<_> = in_object.difference(&listed).collect();
        let absent: Vec<_> = listed.difference(&in_object).collect();
        assert!(
            unlisted.is_empty() && absent.is_empty(),
            "maps in the object but not in maps::ALL: {unlisted:?}; in maps::ALL but not in the object: {absent:?}"
        );
    }

    /// The digest `status` shows is that of the object build.rs wrote (read
    /// from disk now, not the bytes compiled in): it fails if the digest is
    /// taken over anything else, or if the embedded object is stale.
    #[test]
    fn object_digest_is_that_of_the_built_object() {
        let path = concat!(env!("OUT_DIR"), "/zt-ebpf");
        let on_disk = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(super::object_digest(), blake3::hash(&on_disk));
    }
}

//! The in-kernel process table: its value type and flags.

/// Identity id 0: the process belongs to no identity (the fast path).
pub const NO_IDENTITY: u32 = 0;

/// The identity of a process whose executable the kernel could not judge
/// at exec: `exeDigest` selectors are decided in the kernel, but this file
/// (device, inode, change time) is not in `DIGEST_VERDICT` yet. Until user
/// space has hashed it and classified the process, the process is held to
/// the pending policy (egress denied: fail closed), never free.
pub const PENDING_IDENTITY: u32 = u32::MAX - 1;

/// Value of the process table, keyed by tgid.
///
/// `start_ns` makes an entry one process incarnation: the kernel overwrites the
/// entry at every fork of that pid, and user space only updates an entry whose
/// `start_ns` still equals the one it resolved, so a recycled pid never
/// inherits a dead process's identity.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// `CLOCK_BOOTTIME` ns at fork (kernel) or from `/proc/<pid>/stat` (seeded).
    pub start_ns: u64,
    /// cgroup v2 id at fork or last exec.
    pub cgroup_id: u64,
    /// Parent tgid at fork (0 when unknown).
    pub ppid: u32,
    /// Identity of this process, [`NO_IDENTITY`] when none.
    pub identity: u32,
    /// Identity given to this process's descendants ("descendant of"
    /// selectors): a child of this process gets it at fork when this process
    /// has no identity of its own (an own identity is inherited first).
    pub child_identity: u32,
    /// [`proc_flags`] bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<ProcInfo>() == 32);

/// Key of `EXEC_SELECT`: an executable file (kernel `dev_t`, inode) and a
/// real uid ([`ANY_UID`]: any); `ino` 0 and `dev` 0: any executable (a
/// uid-only selector). User space fills it from the selectors the kernel
/// can decide at exec (see `zt-ebpf/src/lineage.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub ino: u64,
    pub dev: u32,
    pub uid: u32,
}
const _: () = assert!(size_of::<ExecKey>() == 16);

pub const ANY_UID: u32 = u32::MAX;

/// The `EXEC_SELECT` key whose value's `prio` is that of the first
/// identity with an `exeDigest` selector the kernel decides (absent: none):
/// an exec whose own pick does not come before it must know the file's
/// digest verdict.
pub const DIGEST_SENTINEL: ExecKey = ExecKey { ino: u64::MAX, dev: u32::MAX, uid: ANY_UID };

/// The `uid` of an `EXEC_SELECT` key that names a directory (its device
/// and inode), not an executable: the directory an `exe` glob's matches
/// lie under (its root, or a filesystem mounted below the root). The
/// value's `prio` is that of the first identity with such a glob.
pub const GLOB_DIR_UID: u32 = u32::MAX - 1;

/// The `EXEC_SELECT` key whose value's `prio` is that of the first
/// identity with an `exe` glob the kernel decides (absent: none): an exec
/// whose own pick does not come before it walks up the file's directories
/// (at most [`GLOB_DIR_DEPTH`]) looking for a [`GLOB_DIR_UID`] key; under
/// one, a file user space has not examined yet (no `DIGEST_VERDICT`) is
/// pending until it has.
pub const GLOB_SENTINEL: ExecKey = ExecKey { ino: u64::MAX, dev: u32::MAX, uid: GLOB_DIR_UID };

/// Directories the exec program walks up from an executable looking for a
/// glob's directory (the file's own directory first).
pub const GLOB_DIR_DEPTH: usize = 16;

/// Key of `DIGEST_VERDICT`: an executable file as the kernel sees it at
/// exec, with its change time (`inode.i_ctime_*`: every write or metadata
/// change moves it, and no call can set it back), so a verdict never
/// outlives the content it was computed from. The value is an
/// [`ExecPick`]: the identity whose `exeDigest` the file has, or
/// [`NO_IDENTITY`], or [`PENDING_IDENTITY`] (an `exeDigest` selector with
/// other keys names it: user space decides each exec). Its presence also
/// says user space has examined this file version, so the `EXEC_SELECT`
/// entries of `exe` globs are current for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DigestKey {
    pub ino: u64,
    pub dev: u32,
    /// Nanoseconds of the change time, masked with [`CTIME_NSEC_MASK`].
    pub ctime_nsec: u32,
    pub ctime_sec: i64,
}
const _: () = assert!(size_of::<DigestKey>() == 24);

/// Bits of `i_ctime_nsec` that hold nanoseconds (the kernel keeps a
/// multigrain-timestamp flag in bit 31; nanoseconds need 30 bits).
pub const CTIME_NSEC_MASK: u32 = (1 << 30) - 1;

/// Value of `EXEC_SELECT`: the identity, and its place in the policy's
/// order (the lowest wins when several keys match: first match wins).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecPick {
    pub identity: u32,
    pub prio: u32,
}
const _: () = assert!(size_of::<ExecPick>() == 8);

/// [`ProcInfo::flags`] bits.
pub mod proc_flags {
    /// Entry was created at exec of a process the table did not know.
    pub const SEEN_AT_EXEC: u32 = 1 << 0;
    /// Entry was seeded by user space from /proc.
    pub const SEEDED: u32 = 1 << 1;
    /// Identity was set by user space (selector match), not inherited.
    pub const RESOLVED: u32 = 1 << 2;
    /// Identity was chosen in the kernel at exec (`EXEC_SELECT`).
    pub const EXEC_SELECTED: u32 = 1 << 3;
    /// The process has exited, leaving children and no identity: its entry
    /// stays (until user space's garbage collection) so that an identity
    /// user space gives it later still reaches those children, re-parented
    /// elsewhere (a daemonizing double fork).
    pub const EXITED: u32 = 1 << 4;
    /// The process got [`super::PENDING_IDENTITY`] at exec.
    pub const DIGEST_PENDING: u32 = 1 << 5;
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::ProcInfo;

    #[test]
    fn proc_info_layout() {
        assert_eq!((size_of::<ProcInfo>(), align_of::<ProcInfo>()), (32, 8));
        assert_eq!(offset_of!(ProcInfo, ppid), 16);
        assert_eq!(offset_of!(ProcInfo, flags), 28);
    }
}

//! File and exec enforcement (see `zt_common::path_policy`).
//!
//! - The BPF LSM programs (the production path, where the kernel loads
//!   them): `file_open` (read, write, create by the open's mode),
//!   `bprm_check_security` (exec), `path_unlink`, `path_rmdir`,
//!   `path_rename`, `path_truncate`, `path_link`, `path_mkdir`,
//!   `path_mknod`, `path_symlink`. A denied call fails with EPERM before it
//!   happens.
//! - [`exec_fallback`], called by `sched_process_exec` where the LSM exec
//!   program is not attached: the exec has happened; a denied one is killed
//!   (SIGKILL, delivered before the new image runs an instruction).
//! - [`open_exit`], at the return of the open syscalls where BPF LSM does
//!   not load, for identities whose files default to deny only (deny rules
//!   are the agent's fanotify responder's, which refuses with EPERM): the
//!   open has happened; a denied one is killed before it returns to user
//!   space.
//!
//! Every decision walks from the object up its directories (`d_parent`, and
//! at a file system's root on to the mount point it is mounted on), looking
//! each object up in `FILE_RULES` by (device, inode): [`walk`]. So a
//! symlink, a hard link, `..`, a bind mount, a chroot or another mount
//! namespace reaches the same rules. Kernel struct offsets come from BTF at
//! load time (`zt_common::globals::FILE_MNT` and the exec selectors'
//! offsets); none is compiled in.
//!
//! Processes without an identity pay one array read. An identity without
//! rules for the access takes its default without a walk. `file_open`
//! keeps its decisions in a per-CPU cache (`OPEN_CACHE`, see
//! `zt_common::path_policy::OpenDecision`), which [`rename_exit`]
//! invalidates: every rename bumps `FILE_EPOCH` once it is done.
//!
//! A decision a rule made, or a deny, is reported as a [`FileEvent`], at
//! most one per (process, object, operation, access, decision) per second
//! on a CPU, with the attempts folded in between (`FILE_AGG`).
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel, bpf_send_signal},
    },
    macros::{fexit, lsm, tracepoint},
    programs::{FExitContext, LsmContext, TracePointContext},
};
use zt_common::{
    NO_IDENTITY, config_flags,
    globals::ABSENT,
    kind, loss,
    path_policy::{
        CREATE, DELETE, EXEC, FILE_PATH_LEN, FileAggKey, FileAggValue, FileEvent, MAX_DEPTH, Matched, OPEN_CACHE_TTL_NS, ObjectKey,
        OpenDecision, READ, WRITE, enforcement, file_op,
    },
    policy::{AGG_WINDOW_NS, ActivePolicy, DENY, ENFORCE, IdentityPolicy, RULE_DEFAULT, RULE_NO_POLICY, Verdict},
};

use crate::{
    events::{Ring, reserve, submit},
    lineage::{current_process_header, read_kernel},
    maps::{
        BPRM_FILE_OFF, DENTRY_INODE_OFF, DENTRY_NAME_LEN_OFF, DENTRY_NAME_OFF, DENTRY_PARENT_OFF, FDTABLE_FD_OFF, FDTABLE_MAX_FDS_OFF,
        FILE_AGG, FILE_DENTRY_OFF, FILE_EPOCH, FILE_FLAGS_OFF, FILE_MNT_OFF, FILE_MODE_OFF, FILE_RULES, FILES_FDT_OFF, INODE_INO_OFF,
        INODE_SB_OFF, MOUNT_MNT_OFF, MOUNT_MOUNTPOINT_OFF, MOUNT_PARENT_OFF, OPEN_CACHE, PATH_DENTRY_OFF, PATH_MNT_OFF, PATH_SCRATCH,
        SB_DEV_OFF, TASK_FILES_OFF, VFSMOUNT_ROOT_OFF, config, global, identity_of, identity_policy,
    },
};

const EPERM: i32 = 1;
const SIGKILL: u32 = 9;
/// `fmode_t` bits (`include/linux/fs.h`).
const FMODE_READ: u32 = 1 << 0;
const FMODE_WRITE: u32 = 1 << 1;
const FMODE_EXEC: u32 = 1 << 5;
const FMODE_CREATED: u32 = 1 << 20;
const PATH_MASK: u32 = FILE_PATH_LEN as u32 - 1;

/// A kernel pointer `off` bytes into `base`, read with fault handling.
#[inline(always)]
pub(crate) fn field<T>(base: *const u8, off: u32) -> Option<T> {
    // SAFETY: `read_kernel` copies through bpf_probe_read_kernel (an error,
    // not a fault, on a bad address); the callers read integers and raw
    // pointers, valid for any bit pattern, at offsets from BTF.
    unsafe { read_kernel(base.wrapping_add(off as usize).cast::<T>()) }
}

/// An object as the hooks see it: a dentry and the mount it was reached by.
#[derive(Clone, Copy)]
struct Object {
    mnt: *const u8,
    dentry: *const u8,
}

impl Object {
    /// The object a `struct path *` names.
    #[inline(always)]
    fn of_path(path: *const u8) -> Option<Object> {
        Some(Object { mnt: field(path, global(&PATH_MNT_OFF))?, dentry: field(path, global(&PATH_DENTRY_OFF))? })
    }

    /// The object a `struct file *` was opened as.
    #[inline(always)]
    fn of_file(file: *const u8) -> Option<Object> {
        Some(Object { mnt: field(file, global(&FILE_MNT_OFF))?, dentry: field(file, global(&FILE_DENTRY_OFF))? })
    }

    /// `(device, inode)` of the dentry (of its parent for a negative one:
    /// an object not created yet), or zeros.
    #[inline(always)]
    fn id(&self) -> (u32, u64) {
        let mut inode: *const u8 = field(self.dentry, global(&DENTRY_INODE_OFF)).unwrap_or(core::ptr::null());
        if inode.is_null() {
            let parent: *const u8 = field(self.dentry, global(&DENTRY_PARENT_OFF)).unwrap_or(core::ptr::null());
            inode = field(parent, global(&DENTRY_INODE_OFF)).unwrap_or(core::ptr::null());
        }
        inode_id(inode).unwrap_or((0, 0))
    }
}

#[inline(always)]
fn inode_id(inode: *const u8) -> Option<(u32, u64)> {
    let ino: u64 = field(inode, global(&INODE_INO_OFF))?;
    let sb: *const u8 = field(inode, global(&INODE_SB_OFF))?;
    Some((field(sb, global(&SB_DEV_OFF))?, ino))
}

/// Whether the programs have every offset they read.
#[inline(always)]
fn offsets_known() -> bool {
    global(&BPRM_FILE_OFF) != ABSENT && global(&DENTRY_NAME_LEN_OFF) != ABSENT && global(&SB_DEV_OFF) != ABSENT
}

/// The state of a walk up from an object (see [`walk`]).
struct Walk {
    d: *const u8,
    mnt: *const u8,
    key: ObjectKey,
    m: Matched,
    access: u8,
    /// `d` is the object accessed itself.
    first: bool,
    /// The walk reached the namespace's root mount.
    complete: bool,
}

/// Moves `d`/`mnt` one level up: to the parent dentry, or at a file
/// system's root to the mount point in the parent mount. Returns false at
/// the namespace's root mount (or a detached one), or on a failed read.
#[inline(always)]
fn up(d: &mut *const u8, mnt: &mut *const u8, stop_at_mount_root: bool) -> Option<bool> {
    let parent: *const u8 = field(*d, global(&DENTRY_PARENT_OFF))?;
    let at_root = parent == *d || (stop_at_mount_root && field::<*const u8>(*mnt, global(&VFSMOUNT_ROOT_OFF))? == *d);
    if !at_root {
        *d = parent;
        return Some(true);
    }
    let mount = mnt.wrapping_sub(global(&MOUNT_MNT_OFF) as usize);
    let above: *const u8 = field(mount, global(&MOUNT_PARENT_OFF))?;
    if above == mount {
        return Some(false);
    }
    *d = field(mount, global(&MOUNT_MOUNTPOINT_OFF))?;
    *mnt = above.wrapping_add(global(&MOUNT_MNT_OFF) as usize);
    Some(true)
}

/// One level of [`walk`] (a `bpf_loop` callback: the verifier checks it
/// once, not once per level). Returns 1 to stop.
extern "C" fn walk_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes back the pointer `walk` gave it: its own
    // `Walk` on the stack, alive and not otherwise used during the loop.
    let w = unsafe { &mut *ctx.cast::<Walk>() };
    let inode: *const u8 = field(w.d, global(&DENTRY_INODE_OFF)).unwrap_or(core::ptr::null());
    if let Some((dev, ino)) = inode_id(inode) {
        w.key.dev = dev;
        w.key.ino = ino;
        // SAFETY: a value of a preallocated hash map may be reused for
        // another key while we read it (why `get` is unsafe): the rules are
        // integers, so a race with user space shows another valid list, at
        // worst one of the slot being rewritten, which no program reads
        // until the switch.
        if let Some(rules) = unsafe { FILE_RULES.get(w.key) } {
            w.m.add(rules, w.access, w.first);
        }
    }
    w.first = false;
    match up(&mut w.d, &mut w.mnt, false) {
        Some(true) => 0,
        Some(false) => {
            w.complete = true;
            1
        }
        None => 1,
    }
}

/// Folds the rules of `from` and of every directory above it into a
/// decision (`is_self`: `from` is the object accessed, not the directory
/// it is created in). Directories are followed by `d_parent` to the file
/// system's root (so through a bind mount to the real directories), then
/// on at the mount point in the parent mount, up to the namespace's root
/// mount; at most [`MAX_DEPTH`] levels.
#[inline(always)]
fn walk(from: Object, identity: u32, active: ActivePolicy, pol: &IdentityPolicy, is_self: bool, access: u8) -> Verdict {
    if pol.file_rules & access == 0 {
        return Matched::default().verdict(pol, access, true);
    }
    let mut w = Walk {
        d: from.dentry,
        mnt: from.mnt,
        key: ObjectKey { slot: active.slot, identity, ino: 0, dev: 0, _pad: 0 },
        m: Matched::default(),
        access,
        first: is_self,
        complete: false,
    };
    // SAFETY: a helper call with a callback of the signature it expects and
    // a pointer to `w`, which outlives the call.
    unsafe { bpf_loop(MAX_DEPTH, walk_step as *mut c_void, (&mut w as *mut Walk).cast(), 0) };
    w.m.verdict(pol, access, w.complete)
}

/// The decision of `identity`'s policy in force and its generation;
/// `None` before the first policy (nothing is refused then). An identity
/// the policy in force does not define is denied everything (fail closed,
/// as for egress). `cached`: the walk's result may come from, and goes
/// into, `OPEN_CACHE` (`file_open` only: `obj` is the object itself).
#[inline(always)]
fn decide(obj: Object, identity: u32, is_self: bool, access: u8, cached: bool) -> Option<(Verdict, u32)> {
    let (active, pol) = identity_policy(identity);
    if active.generation == 0 {
        return None;
    }
    let v = match pol {
        Some(pol) if cached && pol.file_rules & access != 0 && config().flags & config_flags::OPEN_CACHE != 0 => {
            cached_walk(obj, identity, active, &pol, access)
        }
        Some(pol) => walk(obj, identity, active, &pol, is_self, access),
        None => Verdict::new(DENY, ENFORCE, RULE_NO_POLICY),
    };
    Some((v, active.generation))
}

/// [`walk`] for `file_open`, through this CPU's `OPEN_CACHE` slot for the
/// object. The epoch is read before the walk: a rename that ends during it
/// bumps the epoch after, so what the walk saw is never kept past it.
#[inline(always)]
fn cached_walk(obj: Object, identity: u32, active: ActivePolicy, pol: &IdentityPolicy, access: u8) -> Verdict {
    let (dev, ino) = obj.id();
    let epoch = match FILE_EPOCH.get_ptr(0) {
        // SAFETY: the array's one element, valid and aligned for the run;
        // a volatile read, as `rename_exit` adds to it on other CPUs.
        Some(e) => unsafe { core::ptr::read_volatile(e) },
        None => return walk(obj, identity, active, pol, true, access),
    };
    let key = OpenDecision {
        dentry: obj.dentry as u64,
        mnt: obj.mnt as u64,
        ino,
        epoch,
        dev,
        identity,
        generation: active.generation,
        access,
        ..Default::default()
    };
    // SAFETY: an argument-less helper with no preconditions. (LSM
    // programs may not call the coarse clock's helper.)
    let now = unsafe { bpf_ktime_get_ns() };
    // The slot is below OPEN_CACHE_SLOTS, the array's size: never None.
    let Some(slot) = OPEN_CACHE.get_ptr_mut(key.slot()) else { return walk(obj, identity, active, pol, true, access) };
    // SAFETY: this CPU's element of a per-CPU array, valid for the run.
    // LSM programs run with migration disabled, not preemption: another
    // task's `file_open` on this CPU may rewrite the slot between our read
    // and write, and then one of the two decisions, each whole and keyed by
    // what it decided, stays (the key is compared in full on every use).
    let slot = unsafe { &mut *slot };
    if slot.decides(&key, now) {
        return slot.verdict;
    }
    let verdict = walk(obj, identity, active, pol, true, access);
    *slot = OpenDecision { until_ns: now.wrapping_add(OPEN_CACHE_TTL_NS), verdict, ..key };
    verdict
}

/// Counts a rename into `FILE_EPOCH` when `vfs_rename` returns (whether
/// it succeeded or not): the dentries it moved have other parents now, so
/// every `OPEN_CACHE` entry made before is stale.
#[fexit(function = "vfs_rename")]
pub fn rename_exit(_ctx: FExitContext) -> i32 {
    if let Some(e) = FILE_EPOCH.get_ptr_mut(0) {
        // SAFETY: the array's one element, valid and aligned for a u64 for
        // the run; renames on other CPUs add to it at the same time, so the
        // add is atomic (a lost one could leave a stale entry valid).
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(e, 1) };
    }
    0
}

/// Decides `access` to `obj` for the caller, reports it, and returns what
/// an LSM hook returns: 0, or -EPERM.
#[inline(always)]
fn check(op: u8, obj: Object, is_self: bool, access: u8) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let identity = identity_of(tgid);
    if identity == NO_IDENTITY || !offsets_known() {
        return 0;
    }
    let Some((v, generation)) = decide(obj, identity, is_self, access, op == file_op::OPEN) else { return 0 };
    report(op, access, v, generation, identity, tgid, obj, enforcement::LSM);
    if v.action == DENY { -EPERM } else { 0 }
}

/// The exec decision where no LSM program makes it: called by
/// `sched_process_exec` for a process that had its identity before this
/// exec, with the new image's file. A denied exec is killed. Not inlined:
/// a subprogram of its own keeps the exec program's register use (and so
/// the verifier's view of it) as it was.
#[inline(never)]
pub fn exec_fallback(identity: u32, exe_file: *const u8) {
    if config().flags & config_flags::EXEC_LSM != 0 || !offsets_known() {
        return;
    }
    let Some(obj) = Object::of_file(exe_file) else { return };
    let Some((v, generation)) = decide(obj, identity, true, EXEC as u8, false) else { return };
    if v.action == DENY {
        // SAFETY: the helper takes a signal number and no memory; it
        // signals the current task's process, which is what we mean.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    report(file_op::EXEC, EXEC as u8, v, generation, identity, tgid, obj, enforcement::EXEC_KILL);
}

/// The access an open of `file` asks for (read, write, create when it made
/// the file), from its mode; 0 for the open of an exec (the exec'd file and
/// its ELF interpreter are decided by `bprm_check_security` or the exec
/// fallback; the kernel marks that open in `f_flags` as `__FMODE_EXEC`, not
/// always in `f_mode`), or a mode with none of them.
#[inline(always)]
fn open_access(file: *const u8) -> u8 {
    let mode: u32 = field(file, global(&FILE_MODE_OFF)).unwrap_or(0);
    let flags: u32 = field(file, global(&FILE_FLAGS_OFF)).unwrap_or(0);
    if (mode | flags) & FMODE_EXEC != 0 {
        return 0;
    }
    let mut access = 0u8;
    if mode & FMODE_READ != 0 {
        access |= READ as u8;
    }
    if mode & FMODE_WRITE != 0 {
        access |= WRITE as u8;
    }
    if mode & FMODE_CREATED != 0 {
        access |= CREATE as u8;
    }
    access
}

/// `ret` of a `syscalls/sys_exit_*` record (after the common fields and
/// `__syscall_nr`).
const SYS_EXIT_RET_OFF: usize = 16;

/// The file the current task's descriptor `fd` refers to (its descriptor
/// table read at offsets from BTF), or None.
#[inline(always)]
fn current_file(fd: u32) -> Option<*const u8> {
    if global(&TASK_FILES_OFF) == ABSENT || global(&FDTABLE_MAX_FDS_OFF) == ABSENT {
        return None;
    }
    // SAFETY: an argument-less helper; the task pointer is only read through
    // bpf_probe_read_kernel below.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() } as *const u8;
    let files: *const u8 = field(task, global(&TASK_FILES_OFF))?;
    let fdt: *const u8 = field(files, global(&FILES_FDT_OFF))?;
    let max: u32 = field(fdt, global(&FDTABLE_MAX_FDS_OFF))?;
    if fd >= max {
        return None;
    }
    let fds: *const u8 = field(fdt, global(&FDTABLE_FD_OFF))?;
    let file: *const u8 = field(fds, fd.wrapping_mul(8))?;
    (!file.is_null()).then_some(file)
}

/// File rules of identities whose files default to deny, where BPF LSM
/// does not load: at the return of an open syscall that succeeded, the
/// file it opened is decided like `file_open` decides it; a denied open is
/// killed (the descriptor never reaches user space). Other processes pay
/// one array read.
#[tracepoint]
pub fn open_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not
    // a fault); an integer.
    let ret = unsafe { ctx.read_at::<i64>(SYS_EXIT_RET_OFF) }.unwrap_or(-1);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let identity = identity_of(tgid);
    if identity == NO_IDENTITY || ret < 0 || !offsets_known() {
        return 0;
    }
    let (active, pol) = identity_policy(identity);
    let Some(pol) = pol else { return 0 };
    if active.generation == 0 || pol.default_files != DENY {
        return 0;
    }
    let Some(file) = current_file(ret as u32) else { return 0 };
    let access = open_access(file);
    if access == 0 {
        return 0;
    }
    let Some(obj) = Object::of_file(file) else { return 0 };
    let v = walk(obj, identity, active, &pol, true, access);
    if v.action == DENY {
        // SAFETY: the helper takes a signal number and no memory; it
        // signals the current task's process, which is what we mean.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    report(file_op::OPEN, access, v, active.generation, identity, tgid, obj, enforcement::OPEN_KILL);
    0
}

/// Emits a [`FileEvent`] for a decision a rule made or a deny, unless the
/// same key had one on this CPU within the window (then it is folded).
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the fields of the FileEvent")]
fn report(op: u8, access: u8, v: Verdict, generation: u32, identity: u32, tgid: u32, obj: Object, how: u8) {
    if v.rule == RULE_DEFAULT && v.decided != DENY {
        return;
    }
    let (dev, ino) = obj.id();
    let key = FileAggKey { identity, tgid, generation, dev, ino, op, access, decided: v.decided, _pad: [0; 5] };
    // SAFETY: an argument-less helper with no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let folded = match FILE_AGG.get_ptr_mut(key) {
        Some(a) => {
            // SAFETY: this CPU's value of the key in a per-CPU map, valid
            // for the run; plain integers.
            let a = unsafe { &mut *a };
            if now.wrapping_sub(a.last_emit_ns) < AGG_WINDOW_NS {
                a.folded += 1;
                return;
            }
            let folded = a.folded;
            *a = FileAggValue { last_emit_ns: now, folded: 0 };
            folded
        }
        None => {
            let _ = FILE_AGG.insert(key, FileAggValue { last_emit_ns: now, folded: 0 }, 0);
            0
        }
    };
    let ring = if v.decided == DENY { Ring::Security } else { Ring::Telemetry };
    let Some(mut entry) = reserve::<FileEvent>(ring, loss::RINGBUF_FILE, identity) else {
        // Not reported: the key's next event carries this attempt too.
        if let Some(a) = FILE_AGG.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { (*a).folded += folded + 1 };
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for a FileEvent
    // that only this program sees until `submit`: the writes are in bounds.
    unsafe {
        (*ev).header = current_process_header(kind::FILE, identity);
        (*ev).verdict = v;
        (*ev).generation = generation;
        (*ev).op = op;
        (*ev).access = access;
        (*ev).enforcement = how;
        (*ev).ino = ino;
        (*ev).folded = folded;
        (*ev).dev = dev;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let (len, truncated) = name_into(obj, (*ev).path.as_mut_ptr());
        (*ev).path_len = len;
        (*ev).path_truncated = truncated as u8;
    }
    submit(ring, entry);
}

/// The state of [`name_into`]'s walk.
struct Naming {
    d: *const u8,
    mnt: *const u8,
    buf: *mut u8,
    /// Where the path built so far starts in `buf` (it ends at FILE_PATH_LEN).
    pos: u32,
    complete: bool,
}

/// Prepends one name (a `bpf_loop` callback). Returns 1 to stop.
extern "C" fn name_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `walk_step`: `name_into`'s own `Naming`.
    let n = unsafe { &mut *ctx.cast::<Naming>() };
    let (before, before_mnt) = (n.d, n.mnt);
    match up(&mut n.d, &mut n.mnt, true) {
        Some(true) => {}
        Some(false) => {
            n.complete = true;
            return 1;
        }
        None => return 1,
    }
    if n.mnt != before_mnt {
        // Crossed to the mount point: no name to add for the mount's root.
        return 0;
    }
    let len = field::<u32>(before, global(&DENTRY_NAME_LEN_OFF)).unwrap_or(0).min(255);
    let name: *const u8 = field(before, global(&DENTRY_NAME_OFF)).unwrap_or(core::ptr::null());
    if n.pos < len + 1 {
        return 1;
    }
    n.pos -= len + 1;
    // SAFETY: `buf` is this CPU's 2 * FILE_PATH_LEN scratch bytes; the
    // masked offset is below FILE_PATH_LEN and at most 256 bytes are
    // written from it, so every write is in bounds.
    unsafe {
        *n.buf.add((n.pos & PATH_MASK) as usize) = b'/';
        bpf_probe_read_kernel(n.buf.add(((n.pos + 1) & PATH_MASK) as usize).cast(), len & 0xff, name.cast());
    }
    0
}

/// Writes the path of `obj` as the caller's mount namespace names it
/// (`d_path`-like: up to each mount's root, then its mount point) to `out`
/// (`FILE_PATH_LEN` bytes); returns its length and whether it is only the
/// tail. Built back to front in `PATH_SCRATCH`.
#[inline(always)]
fn name_into(obj: Object, out: *mut u8) -> (u32, bool) {
    let Some(buf) = PATH_SCRATCH.get_ptr_mut(0) else { return (0, true) };
    let mut n = Naming { d: obj.dentry, mnt: obj.mnt, buf: buf.cast::<u8>(), pos: FILE_PATH_LEN as u32, complete: false };
    // SAFETY: as in `walk`.
    unsafe { bpf_loop(MAX_DEPTH, name_step as *mut c_void, (&mut n as *mut Naming).cast(), 0) };
    if n.pos == FILE_PATH_LEN as u32 {
        n.pos -= 1;
        // SAFETY: as in `name_step`.
        unsafe { *n.buf.add((n.pos & PATH_MASK) as usize) = b'/' };
    }
    // SAFETY: copies FILE_PATH_LEN bytes from a masked offset below
    // FILE_PATH_LEN of the 2 * FILE_PATH_LEN scratch into the record's
    // FILE_PATH_LEN-byte path; user space reads the first `len`.
    unsafe { bpf_probe_read_kernel(out.cast(), FILE_PATH_LEN as u32, n.buf.add((n.pos & PATH_MASK) as usize).cast()) };
    (FILE_PATH_LEN as u32 - n.pos, !n.complete)
}

/// An LSM hook's argument `n` (within the hook's arguments: each caller
/// follows its hook's signature) as a kernel pointer.
#[inline(always)]
pub(crate) fn arg(ctx: &LsmContext, n: usize) -> *const u8 {
    ctx.arg::<*const u8>(n)
}

/// An earlier LSM's refusal (the hook's last argument, `n`) stands;
/// else `decide` decides.
#[inline(always)]
pub(crate) fn unless_refused(ctx: &LsmContext, n: usize, decide: impl FnOnce(&LsmContext) -> i32) -> i32 {
    let earlier = ctx.arg::<i32>(n);
    if earlier != 0 { earlier } else { decide(ctx) }
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 1, |ctx| {
        let file = arg(ctx, 0);
        let access = open_access(file);
        if access == 0 {
            return 0;
        }
        let Some(obj) = Object::of_file(file) else { return 0 };
        check(file_op::OPEN, obj, true, access)
    })
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 1, |ctx| {
        let Some(file) = field::<*const u8>(arg(ctx, 0), global(&BPRM_FILE_OFF)) else { return 0 };
        let Some(obj) = Object::of_file(file) else { return 0 };
        check(file_op::EXEC, obj, true, EXEC as u8)
    })
}

/// `(dir, dentry)` hooks: the object `dentry` in the mount of `dir`.
#[inline(always)]
fn in_dir(ctx: &LsmContext) -> Option<Object> {
    let mnt = field(arg(ctx, 0), global(&PATH_MNT_OFF))?;
    Some(Object { mnt, dentry: arg(ctx, 1) })
}

#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 2, |ctx| {
        let Some(obj) = in_dir(ctx) else { return 0 };
        check(file_op::UNLINK, obj, true, DELETE as u8)
    })
}

#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 2, |ctx| {
        let Some(obj) = in_dir(ctx) else { return 0 };
        check(file_op::RMDIR, obj, true, DELETE as u8)
    })
}

/// A new object in `dir` (`path_mkdir`, `path_mknod`, `path_symlink`):
/// decided as a creation inside the directory.
#[inline(always)]
fn create_in(ctx: &LsmContext, op: u8) -> i32 {
    let Some(dir) = Object::of_path(arg(ctx, 0)) else { return 0 };
    check(op, dir, false, CREATE as u8)
}

#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 3, |ctx| create_in(ctx, file_op::MKDIR))
}

#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 4, |ctx| create_in(ctx, file_op::MKNOD))
}

#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 3, |ctx| create_in(ctx, file_op::SYMLINK))
}

#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 1, |ctx| {
        let Some(obj) = Object::of_path(arg(ctx, 0)) else { return 0 };
        check(file_op::TRUNCATE, obj, true, WRITE as u8)
    })
}

/// `link(old, new)`: the object gets a new name, which may sit under other
/// directory rules, so the caller must be allowed to read, write and exec
/// it where it is (else a link out of a denied directory would shed the
/// rule); the new name is a creation in `new_dir`.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 3, |ctx| {
        let Some(new_dir) = Object::of_path(arg(ctx, 1)) else { return 0 };
        let old = Object { mnt: new_dir.mnt, dentry: arg(ctx, 0) };
        let r = check(file_op::LINK, old, true, (READ | WRITE | EXEC) as u8);
        if r != 0 {
            return r;
        }
        check(file_op::LINK, new_dir, false, CREATE as u8)
    })
}

/// `rename(old, new)`: removing the old name (delete), creating the new
/// one (create in `new_dir`), and replacing an existing object there
/// (delete; with `RENAME_EXCHANGE` it moves the other way too, which the
/// same two checks cover).
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    unless_refused(&ctx, 5, |ctx| {
        let Some(old_dir) = Object::of_path(arg(ctx, 0)) else { return 0 };
        let Some(new_dir) = Object::of_path(arg(ctx, 2)) else { return 0 };
        let old = Object { mnt: old_dir.mnt, dentry: arg(ctx, 1) };
        let new = Object { mnt: new_dir.mnt, dentry: arg(ctx, 3) };
        let mut r = check(file_op::RENAME, old, true, DELETE as u8);
        if r == 0 {
            r = check(file_op::RENAME, new_dir, false, CREATE as u8);
        }
        if r == 0 && field::<*const u8>(new.dentry, global(&DENTRY_INODE_OFF)).is_some_and(|i| !i.is_null()) {
            r = check(file_op::RENAME, new, true, DELETE as u8);
        }
        r
    })
}

//! Process lineage: the in-kernel process table and exec/exit events.
//!
//! - `sched_process_fork`: the child gets its parent's identity (or the
//!   parent's `child_identity`, for "descendant of" selectors, or its cgroup's
//!   identity) before it runs its first instruction. The entry is always
//!   overwritten, so a recycled pid starts from its own parent, never from the
//!   dead process that held the number before.
//! - `sched_process_exec`: refresh cgroup, adopt the cgroup's identity if the
//!   process had none, else the identity of the first `exe`/`uid` selector
//!   that matches the exec'd file (device, inode) and the real uid
//!   (`EXEC_SELECT`, filled by user space; offsets from BTF), or of an
//!   `exeDigest` selector whose verdict for that file version (device,
//!   inode, change time) user space left in `DIGEST_VERDICT`. A file with
//!   no verdict yet (for an `exe` glob: one under a glob's directory) makes
//!   the process `PENDING_IDENTITY` (held to the pending policy, egress
//!   denied) until user space has examined it, and so does a selector with
//!   keys the kernel cannot check (a pick of `PENDING_IDENTITY`). So a
//!   selected process never runs a single instruction unattributed; emit an exec
//!   event with filename and argv. argv is read
//!   from the new image (`current->mm->arg_start..arg_end`, offsets from BTF
//!   set by user space), so no syscall tracepoint is needed.
//! - `sys_enter_execve[at]`: the fallback when BTF offsets are unknown: argv
//!   is read from the syscall arguments into `EXEC_ARGS` (keyed by tid).
//!   Attaching any syscall tracepoint slows every syscall of every task a
//!   little, which is why it is only the fallback.
//! - `sched_process_exit`: on the death of the whole thread group, emit an exit
//!   event and drop the entry, unless the process has no identity and leaves
//!   children: then the entry stays, marked `EXITED`, so an identity user
//!   space gives it afterwards (a selector decided after exec) still reaches
//!   its descendants through the recorded parents (user space removes it).
//!   The death of the daemon clears `SETTLER`: from then until a daemon
//!   runs again, the guards leave pending processes alone.
//! - `cgroup_attach_task`: a process moved into a cgroup (a write to
//!   `cgroup.procs`: no fork, no exec) adopts that cgroup's identity if it
//!   had none, before it runs again. Identities stay sticky: a process
//!   moved out keeps its identity.
//!
//! Threads: `sched_process_fork` also fires for `clone(CLONE_THREAD)` and the
//! tracepoint does not say which it was, so a thread gets a (harmless) entry
//! keyed by its tid, removed when the thread exits. Lookups are always by
//! tgid, so threads act with their process's identity.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        generated::{
            bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_probe_read_user as probe_read_user_raw,
            bpf_probe_read_user_str,
        },
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use zt_common::{
    ANY_UID, ARGS_LEN, CTIME_NSEC_MASK, DIGEST_SENTINEL, DigestKey, EventHeader, ExecEvent, ExecKey, ExecPick, ExitEvent, GLOB_DIR_DEPTH,
    GLOB_DIR_UID, GLOB_SENTINEL, MAX_ARGS, NO_IDENTITY, PENDING_IDENTITY, ProcInfo, args_flags, globals::ABSENT, kind, loss, proc_flags,
};

use crate::{
    events::{Ring, count_loss, reserve, submit, submit_now},
    maps::{
        ARGS_SCRATCH, ATTACH_DST_ID_OFF, ATTACH_DST_ROOT_OFF, ATTACH_PID_OFF, CGROUP_IDENTITY, DENTRY_INODE_OFF, DENTRY_PARENT_OFF,
        DIGEST_VERDICT, EXEC_ARGS, EXEC_FILENAME_OFF, EXEC_OLD_PID_OFF, EXEC_SELECT, EXIT_GROUP_DEAD_OFF, FILE_DENTRY_OFF, FILE_INODE_OFF,
        FORK_CHILD_PID_OFF, INODE_CTIME_NSEC_OFF, INODE_CTIME_SEC_OFF, INODE_INO_OFF, INODE_SB_OFF, MM_ARG_END_OFF, MM_ARG_START_OFF,
        MM_EXE_FILE_OFF, PROC_TABLE, SB_DEV_OFF, SEL_TASK_MM_OFF, TASK_CHILDREN_OFF, TASK_MM_OFF, global, set_pid_identity, settler_exited,
    },
};

/// Offset of the first argument in a `syscalls/sys_enter_*` record: a stable
/// layout (`__syscall_nr` at 8, then 8-byte args) on every kernel.
const SYSCALL_ARG0: usize = 16;

#[inline(always)]
fn cgroup_identity(cgroup_id: u64) -> u32 {
    // SAFETY: `get` is unsafe because a preallocated hash map may hand a
    // removed element to another key while we read it. The value is a u32
    // copied out at once: a racing update by user space yields another
    // identity id at worst, never invalid memory.
    match unsafe { CGROUP_IDENTITY.get(cgroup_id) } {
        Some(id) => *id,
        None => NO_IDENTITY,
    }
}

/// The header of an event about the current process, with its incarnation
/// and cgroup from the process table (0 when it is not there).
#[inline(always)]
pub fn current_process_header(kind: u32, identity: u32) -> EventHeader {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: all-integer value of a preallocated hash, copied out here.
    let (start_ns, cgroup_id) = match unsafe { PROC_TABLE.get(tgid) } {
        Some(p) => (p.start_ns, p.cgroup_id),
        None => (0, 0),
    };
    event_header(kind, identity, start_ns, cgroup_id)
}

#[inline(always)]
pub fn event_header(kind: u32, identity: u32, start_ns: u64, cgroup_id: u64) -> EventHeader {
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader { uid: uid_gid as u32, gid: (uid_gid >> 32) as u32, ..header_without_creds(kind, identity, start_ns, cgroup_id) }
}

/// [`event_header`] with uid and gid 0.
#[inline(always)]
fn header_without_creds(kind: u32, identity: u32, start_ns: u64, cgroup_id: u64) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        identity,
        // SAFETY: an argument-less helper with no preconditions (unsafe only
        // as a raw helper binding), allowed in every program type here.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        start_ns,
        cgroup_id,
        uid: 0,
        gid: 0,
    }
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    match try_fork(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_fork(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: `read_at` copies through bpf_probe_read_kernel, which returns an
    // error instead of faulting on a bad address (a wrong offset reads a wrong
    // value, nothing worse), and any 4 bytes are a valid i32. The offset is
    // the tracepoint's own (tracefs format file, or the 6.18 default).
    let child: i32 = unsafe { ctx.read_at(global(&FORK_CHILD_PID_OFF) as usize)? };
    // The tracepoint fires in the parent (the task calling fork/clone), so
    // current is the parent; the record's `parent_pid` would be its tid.
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding).
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a preallocated hash map may reuse a removed element for another
    // key while we read (why `get` is unsafe); every field of ProcInfo is an
    // integer, so a racing update shows other but valid values, and the
    // fields are copied out here.
    let mut identity = match unsafe { PROC_TABLE.get(parent) } {
        Some(p) if p.identity != NO_IDENTITY => p.identity,
        Some(p) => p.child_identity,
        None => NO_IDENTITY,
    };
    if identity == NO_IDENTITY {
        identity = cgroup_identity(cgroup_id);
    }
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding).
    let start_ns = unsafe { bpf_ktime_get_boot_ns() };
    let info = ProcInfo { start_ns, cgroup_id, ppid: parent, identity, child_identity: NO_IDENTITY, flags: 0 };
    set_pid_identity(child as u32, identity);
    if PROC_TABLE.insert(child as u32, info, BPF_ANY as u64).is_err() {
        count_loss(loss::PROC_TABLE_FULL);
        warn!(ctx, "process table full: pid {} is not attributed", child);
    }
    Ok(())
}

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    let _ = capture_args(&ctx, SYSCALL_ARG0 + 8);
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    let _ = capture_args(&ctx, SYSCALL_ARG0 + 16);
    0
}

/// Copies up to `ARGS_LEN` bytes of NUL-separated argv into `EXEC_ARGS[tid]`.
fn capture_args(ctx: &TracePointContext, argv_offset: usize) -> Result<(), i64> {
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not a
    // fault, on a bad address); any 8 bytes are a valid raw pointer, and this
    // one is only ever passed to bpf_probe_read_user.
    let argv: *const *const u8 = unsafe { ctx.read_at(argv_offset)? };
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(scratch) = ARGS_SCRATCH.get_ptr_mut(0) else {
        return Err(-1);
    };
    // SAFETY: the lookup returned this CPU's slot of the per-CPU array, valid
    // and aligned for the whole run. Only the sys_enter_execve[at] programs
    // use the map, and tracepoint programs run with preemption disabled and
    // never nest on one CPU (kernel/trace/bpf_trace.c `trace_call_bpf`:
    // `cant_sleep()` and the `bpf_prog_active` guard), so this reference is
    // the only one to the slot until the program returns.
    let args = unsafe { &mut *scratch };
    args.argc = 0;
    args.truncated = 0;
    let mut off: u32 = 0;
    if !argv.is_null() {
        for i in 0..MAX_ARGS {
            // SAFETY: bpf_probe_read_user copies with fault handling and
            // returns an error for an unmapped or kernel address; any 8 bytes
            // are a valid raw pointer. `wrapping_add`: the user pointer is
            // never dereferenced by this program, only handed to the helper.
            let arg: *const u8 = match unsafe { bpf_probe_read_user(argv.wrapping_add(i as usize)) } {
                Ok(p) => p,
                Err(_) => break,
            };
            if arg.is_null() {
                break;
            }
            if off >= ARGS_LEN as u32 {
                args.truncated = 1;
                break;
            }
            // Masked offset + constant size: the verifier can prove the write
            // stays inside the 2*ARGS_LEN buffer.
            // SAFETY: the masked offset is below ARGS_LEN and `buf` holds
            // 2*ARGS_LEN bytes, so `dst` and the ARGS_LEN bytes after it lie
            // inside `buf`.
            let dst = unsafe { args.buf.as_mut_ptr().add((off & (ARGS_LEN as u32 - 1)) as usize) };
            // SAFETY: writes at most ARGS_LEN bytes (NUL included) at `dst`,
            // which has that much room (above); the user string is read with
            // fault handling (a negative return for a bad address).
            let n = unsafe { bpf_probe_read_user_str(dst.cast(), ARGS_LEN as u32, arg.cast()) };
            if n <= 0 {
                break;
            }
            off += n as u32;
            args.argc += 1;
        }
    }
    if off > ARGS_LEN as u32 {
        off = ARGS_LEN as u32;
        args.truncated = 1;
    }
    args.len = off;
    if EXEC_ARGS.insert(tid, args, BPF_ANY as u64).is_err() {
        count_loss(loss::EXEC_ARGS);
    }
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not a
    // fault, on a bad address); any 4 bytes are a valid i32.
    let old_tid: i32 = unsafe { ctx.read_at(global(&EXEC_OLD_PID_OFF) as usize)? };
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding).
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };

    let (identity, start_ns, ppid) = match PROC_TABLE.get_ptr_mut(tgid) {
        Some(p) => {
            // SAFETY: the lookup's pointer to this tgid's element, valid and
            // aligned for the run (a preallocated element stays mapped even
            // if removed meanwhile). No other program writes this key now: a
            // fork writes the child's key, and exit removes the tgid's only
            // when the whole group dies, which cannot happen while this
            // thread is in exec. User space may update or remove it
            // concurrently; every field is an integer, so such a race leaves
            // valid values.
            let p = unsafe { &mut *p };
            p.cgroup_id = cgroup_id;
            if p.identity == NO_IDENTITY {
                p.identity = cgroup_identity(cgroup_id);
            }
            (p.identity, p.start_ns, p.ppid)
        }
        None => {
            // A process that forked before our programs were attached and was
            // not seeded yet: start its entry now (parent unknown).
            let info = ProcInfo {
                // SAFETY: an argument-less helper with no preconditions
                // (unsafe only as a raw helper binding).
                start_ns: unsafe { bpf_ktime_get_boot_ns() },
                cgroup_id,
                ppid: 0,
                identity: cgroup_identity(cgroup_id),
                child_identity: NO_IDENTITY,
                flags: proc_flags::SEEN_AT_EXEC,
            };
            if PROC_TABLE.insert(tgid, info, BPF_ANY as u64).is_err() {
                count_loss(loss::PROC_TABLE_FULL);
            }
            (info.identity, info.start_ns, 0)
        }
    };
    if identity != NO_IDENTITY
        && let Some(file) = exe_file_ptr()
    {
        // An identity held before this exec: its exec rules apply to the
        // new image (one given by this exec's selection does not decide
        // its own first image, as at the LSM hook, which runs before).
        crate::file::exec_fallback(identity, file);
    }
    let identity = match identity {
        NO_IDENTITY => {
            let (picked, flag) = match select_at_exec() {
                Selected::Identity(id) => (id, proc_flags::EXEC_SELECTED),
                Selected::Pending => (PENDING_IDENTITY, proc_flags::DIGEST_PENDING),
                Selected::None => (NO_IDENTITY, 0),
            };
            if picked != NO_IDENTITY
                && let Some(p) = PROC_TABLE.get_ptr_mut(tgid)
            {
                // SAFETY: as for the lookup above (same key, same run).
                unsafe {
                    (*p).identity = picked;
                    (*p).flags |= flag;
                }
            }
            picked
        }
        id => id,
    };
    set_pid_identity(tgid, identity);

    let from_mm = global(&TASK_MM_OFF) != ABSENT;
    // SAFETY: EXEC_ARGS is a preallocated LRU hash, so another CPU's insert
    // may evict this entry and reuse its memory while we read it (why `get`
    // is unsafe). The element memory stays valid for the run; the value is
    // integers and bytes, `len` is clamped before use and the bytes are
    // copied with bpf_probe_read_kernel, so a race yields wrong argv at worst.
    let stashed = if from_mm { None } else { unsafe { EXEC_ARGS.get(old_tid as u32) } };
    // A held process waits for user space to decide: its exec goes with the
    // security records (never dropped there) and wakes user space now.
    let held = identity == PENDING_IDENTITY;
    let ring = if held { Ring::Security } else { Ring::Telemetry };
    let Some(mut entry) = reserve::<ExecEvent>(ring, loss::RINGBUF_EXEC, identity) else {
        if stashed.is_some() {
            let _ = EXEC_ARGS.remove(old_tid as u32);
        }
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a ring buffer record reserved for an ExecEvent
    // (its size, 8-byte aligned) that only this program can see until
    // `submit`, so the field writes are in bounds and unaliased. Besides:
    // `read_at` and bpf_probe_read_kernel_str_bytes go through fault-handling
    // probe-read helpers; the __data_loc offset is masked to 16 bits and only
    // used to form the helper's source address; the argv copy writes ARGS_LEN
    // bytes into `args`, which is ARGS_LEN long, from `a.buf`, which is longer.
    unsafe {
        (*ev).header = event_header(kind::EXEC, identity, start_ns, cgroup_id);
        (*ev).ppid = ppid;
        (*ev).old_tid = old_tid as u32;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        // __data_loc: low 16 bits offset from the record start, high 16 length.
        let loc: u32 = ctx.read_at(global(&EXEC_FILENAME_OFF) as usize).unwrap_or(0);
        let src = ctx.as_ptr().cast::<u8>().wrapping_add((loc & 0xffff) as usize);
        (*ev).filename_len = match bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
            Ok(s) => s.len() as u32,
            Err(_) => 0,
        };
        (*ev).argc = 0;
        if from_mm {
            let (len, truncated) = argv_from_mm(&mut (*ev).args).unwrap_or_default();
            (*ev).args_len = len;
            (*ev).args_flags = if truncated {
                args_flags::TRUNCATED
            } else if len == 0 {
                args_flags::MISSING
            } else {
                0
            };
        } else {
            match stashed {
                Some(a) => {
                    let len = if a.len > ARGS_LEN as u32 { ARGS_LEN as u32 } else { a.len };
                    bpf_probe_read_kernel((*ev).args.as_mut_ptr().cast(), ARGS_LEN as u32, a.buf.as_ptr().cast());
                    (*ev).args_len = len;
                    (*ev).argc = a.argc;
                    (*ev).args_flags = if a.truncated != 0 { args_flags::TRUNCATED } else { 0 };
                }
                None => {
                    (*ev).args_len = 0;
                    (*ev).args_flags = args_flags::MISSING;
                }
            }
        }
    }
    if stashed.is_some() {
        let _ = EXEC_ARGS.remove(old_tid as u32);
    }
    if held {
        submit_now(entry)
    } else {
        submit(ring, entry)
    }
    Ok(())
}

/// Copies `current->mm->arg_start..arg_end` (the argv strings of the image
/// just exec'd, NUL-separated) into `out`. Returns (bytes, truncated).
#[inline(always)]
fn argv_from_mm(out: &mut [u8; ARGS_LEN]) -> Option<(u32, bool)> {
    // SAFETY: an argument-less helper with no preconditions (unsafe only as a
    // raw helper binding); the result is only used as an address to read
    // through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: (this and the next two reads) read_kernel's contract holds: a
    // raw pointer and u64s accept any bits. The addresses are formed with
    // wrapping_add from BTF offsets and never dereferenced by this program.
    let mm: *const u8 = unsafe { read_kernel(task.wrapping_add(global(&TASK_MM_OFF) as usize).cast())? };
    if mm.is_null() {
        return None;
    }
    // SAFETY: as above.
    let start: u64 = unsafe { read_kernel(mm.wrapping_add(global(&MM_ARG_START_OFF) as usize).cast())? };
    // SAFETY: as above.
    let end: u64 = unsafe { read_kernel(mm.wrapping_add(global(&MM_ARG_END_OFF) as usize).cast())? };
    let total = end.saturating_sub(start);
    // Two bounded branches so the verifier can prove len <= ARGS_LEN.
    let len = if total >= ARGS_LEN as u64 { ARGS_LEN as u32 } else { total as u32 & (ARGS_LEN as u32 - 1) };
    // SAFETY: writes `len` <= ARGS_LEN bytes into `out`, which is ARGS_LEN
    // long; the source is read from user memory with fault handling (a
    // nonzero return for a bad address).
    if unsafe { probe_read_user_raw(out.as_mut_ptr().cast(), len, start as *const _) } != 0 {
        return None;
    }
    Some((len, total > ARGS_LEN as u64))
}

enum Selected {
    Identity(u32),
    /// User space decides: an `exeDigest` or `exe` glob identity may come
    /// first and the file has no verdict, or the first pick is a selector
    /// with keys the kernel cannot check (`PENDING_IDENTITY`).
    Pending,
    None,
}

/// The identity the image just exec'd gets: the lowest `prio` among the
/// `EXEC_SELECT` entries for (file, uid), (file, any uid) and (any file,
/// uid), and the file's `DIGEST_VERDICT` when an `exeDigest` identity could
/// come before that pick (`DIGEST_SENTINEL` holds the first one's prio), or
/// an `exe` glob identity could and the file lies under one of its
/// directories (`GLOB_SENTINEL`, `GLOB_DIR_UID` keys). `None` without BTF
/// offsets or a match.
#[inline(always)]
fn select_at_exec() -> Selected {
    if global(&SB_DEV_OFF) == ABSENT {
        return Selected::None;
    }
    let Some(exe) = exe_file() else { return Selected::None };
    let (ino, dev) = (exe.ino, exe.dev);
    let uid = bpf_get_current_uid_gid() as u32;
    let mut best: Option<ExecPick> = None;
    for key in [ExecKey { ino, dev, uid }, ExecKey { ino, dev, uid: ANY_UID }, ExecKey { ino: 0, dev: 0, uid }] {
        // SAFETY: a removed element of this preallocated hash may be reused
        // while we read (why `get` is unsafe); ExecPick is all integers,
        // copied out here.
        if let Some(p) = unsafe { EXEC_SELECT.get(key) }.copied()
            && best.is_none_or(|b| p.prio < b.prio)
        {
            best = Some(p);
        }
    }
    let beats_best = |key: ExecKey| -> bool {
        // SAFETY: as for EXEC_SELECT above.
        let first = unsafe { EXEC_SELECT.get(key) }.copied();
        first.is_some_and(|f| best.is_none_or(|b| f.prio < b.prio))
    };
    let needs_verdict = beats_best(DIGEST_SENTINEL) || (beats_best(GLOB_SENTINEL) && under_glob_dir(exe.dentry, dev, best));
    if needs_verdict && global(&INODE_CTIME_NSEC_OFF) != ABSENT {
        // SAFETY: read_kernel's contract, as in `exe_file`.
        let sec: Option<i64> = unsafe { read_kernel(exe.inode.wrapping_add(global(&INODE_CTIME_SEC_OFF) as usize).cast()) };
        // SAFETY: as above.
        let nsec: Option<u32> = unsafe { read_kernel(exe.inode.wrapping_add(global(&INODE_CTIME_NSEC_OFF) as usize).cast()) };
        let (Some(ctime_sec), Some(nsec)) = (sec, nsec) else { return Selected::Pending };
        let key = DigestKey { ino, dev, ctime_nsec: nsec & CTIME_NSEC_MASK, ctime_sec };
        // SAFETY: as for EXEC_SELECT above.
        match unsafe { DIGEST_VERDICT.get(key) }.copied() {
            Some(v) if v.identity != NO_IDENTITY && best.is_none_or(|b| v.prio < b.prio) => best = Some(v),
            Some(_) => {}
            None => return Selected::Pending,
        }
    }
    match best {
        Some(b) if b.identity == PENDING_IDENTITY => Selected::Pending,
        Some(b) => Selected::Identity(b.identity),
        None => Selected::None,
    }
}

/// Whether one of the directories above `dentry` (at most
/// `GLOB_DIR_DEPTH`, within its filesystem) is an `exe` glob's directory
/// whose identity comes before `best`. A directory that cannot be read
/// counts as one (user space then examines the file).
#[inline(always)]
fn under_glob_dir(dentry: *const u8, dev: u32, best: Option<ExecPick>) -> bool {
    let mut d = dentry;
    for _ in 0..GLOB_DIR_DEPTH {
        // SAFETY: (every read here) read_kernel's contract, as in `exe_file`.
        let Some(parent) = (unsafe { read_kernel::<*const u8>(d.wrapping_add(global(&DENTRY_PARENT_OFF) as usize).cast()) }) else {
            return true;
        };
        // SAFETY: as above.
        let Some(inode) = (unsafe { read_kernel::<*const u8>(parent.wrapping_add(global(&DENTRY_INODE_OFF) as usize).cast()) }) else {
            return true;
        };
        // SAFETY: as above.
        let Some(ino) = (unsafe { read_kernel::<u64>(inode.wrapping_add(global(&INODE_INO_OFF) as usize).cast()) }) else {
            return true;
        };
        // SAFETY: as for EXEC_SELECT in `select_at_exec`.
        if let Some(p) = unsafe { EXEC_SELECT.get(ExecKey { ino, dev, uid: GLOB_DIR_UID }) }
            && best.is_none_or(|b| p.prio < b.prio)
        {
            return true;
        }
        // The filesystem's root is its own parent.
        if parent == d {
            return false;
        }
        d = parent;
    }
    false
}

/// The exec'd file (`current->mm->exe_file`).
struct ExeFile {
    ino: u64,
    /// Kernel `dev_t`.
    dev: u32,
    /// The inode's address (to read more of it).
    inode: *const u8,
    /// `f_path.dentry`: the name it was exec'd by.
    dentry: *const u8,
}

/// `current->mm->exe_file`: the image just exec'd.
#[inline(always)]
fn exe_file_ptr() -> Option<*const u8> {
    if global(&SEL_TASK_MM_OFF) == ABSENT {
        return None;
    }
    // SAFETY: an argument-less helper with no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: checked kernel reads of pointers (any bits are a valid raw
    // pointer) at BTF offsets.
    let mm: *const u8 = unsafe { read_kernel(task.wrapping_add(global(&SEL_TASK_MM_OFF) as usize).cast())? };
    // SAFETY: as above.
    unsafe { read_kernel(mm.wrapping_add(global(&MM_EXE_FILE_OFF) as usize).cast()) }
}

/// The exec'd file (`current->mm->exe_file`): inode number, device and
/// the addresses to read more of it.
#[inline(always)]
fn exe_file() -> Option<ExeFile> {
    let file = exe_file_ptr()?;
    // SAFETY: (every read here) read_kernel's contract holds: raw pointers
    // and integers accept any bits; the addresses are formed with
    // wrapping_add from BTF offsets and never dereferenced by this program.
    let inode: *const u8 = unsafe { read_kernel(file.wrapping_add(global(&FILE_INODE_OFF) as usize).cast())? };
    // SAFETY: as above.
    let ino: u64 = unsafe { read_kernel(inode.wrapping_add(global(&INODE_INO_OFF) as usize).cast())? };
    // SAFETY: as above.
    let sb: *const u8 = unsafe { read_kernel(inode.wrapping_add(global(&INODE_SB_OFF) as usize).cast())? };
    // SAFETY: as above.
    let dev: u32 = unsafe { read_kernel(sb.wrapping_add(global(&SB_DEV_OFF) as usize).cast())? };
    // SAFETY: as above.
    let dentry: *const u8 = unsafe { read_kernel(file.wrapping_add(global(&FILE_DENTRY_OFF) as usize).cast())? };
    Some(ExeFile { ino, dev, inode, dentry })
}

/// Whether the exiting task still has children (they are re-parented
/// after this tracepoint): `current->children` is not an empty list.
#[inline(always)]
fn has_children() -> bool {
    let off = global(&TASK_CHILDREN_OFF);
    if off == ABSENT {
        return false;
    }
    // SAFETY: an argument-less helper with no preconditions; the result is
    // only used as an address to read through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let head = task.wrapping_add(off as usize);
    // SAFETY: read_kernel's contract holds (a raw pointer accepts any bits);
    // `list_head.next` is its first field.
    match unsafe { read_kernel::<*const u8>(head.cast()) } {
        Some(next) => !next.is_null() && next != head,
        None => false,
    }
}

/// Reads a `T` from a kernel address; `None` when the address faults.
///
/// # Safety
/// `T` must be valid for any bit pattern (integers, raw pointers): the bytes
/// at `src` are not checked.
#[inline(always)]
pub unsafe fn read_kernel<T>(src: *const T) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies with fault handling (an error for
    // a bad address); the caller guarantees any bytes read form a valid T.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(src).ok() }
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // The thread's last calls, before its exit event.
    crate::telemetry::flush_thread(tid);
    let off = global(&EXIT_GROUP_DEAD_OFF);
    // Without `group_dead` (older kernels) the leader's exit stands for the
    // group's; a leader that exits before its threads then leaves them
    // unattributed until user space re-seeds the entry.
    // SAFETY: `read_at` copies through bpf_probe_read_kernel (an error, not a
    // fault, on a bad address); any byte is a valid u8.
    let group_dead = if off == ABSENT { tid == tgid } else { (unsafe { ctx.read_at::<u8>(off as usize)? }) != 0 };
    if tid != tgid {
        // The per-thread entry created at clone (see module docs).
        let _ = PROC_TABLE.remove(tid);
        set_pid_identity(tid, NO_IDENTITY);
    }
    if !group_dead {
        return Ok(());
    }
    settler_exited(tgid);
    // SAFETY: a preallocated hash map may reuse a removed element for another
    // key while we read (why `get` is unsafe); every field of ProcInfo is an
    // integer, so a race shows other but valid values, copied out at once.
    let (identity, start_ns, ppid, cgroup_id) = match unsafe { PROC_TABLE.get(tgid) } {
        Some(p) => (p.identity, p.start_ns, p.ppid, p.cgroup_id),
        // SAFETY: an argument-less helper with no preconditions (unsafe only
        // as a raw helper binding).
        None => (NO_IDENTITY, 0, 0, unsafe { bpf_get_current_cgroup_id() }),
    };
    // A pending process is not attributed yet either: its settlement must
    // still reach its children through it.
    let kept = (identity == NO_IDENTITY || identity == PENDING_IDENTITY)
        && has_children()
        && match PROC_TABLE.get_ptr_mut(tgid) {
            Some(p) => {
                // SAFETY: the lookup's pointer to this tgid's element, valid
                // and aligned for the run; the group is dying, so no other
                // program writes this key now (user space may, and every
                // field is an integer).
                unsafe { (*p).flags |= proc_flags::EXITED };
                true
            }
            None => false,
        };
    if !kept {
        let _ = PROC_TABLE.remove(tgid);
    }
    set_pid_identity(tgid, NO_IDENTITY);
    if let Some(mut entry) = reserve::<ExitEvent>(Ring::Telemetry, loss::RINGBUF_EXIT, identity) {
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points to a ring buffer record reserved for an
        // ExitEvent (its size, 8-byte aligned) that only this program can see
        // until `submit`: the field writes are in bounds and unaliased.
        unsafe {
            (*ev).header = event_header(kind::EXIT, identity, start_ns, cgroup_id);
            (*ev).ppid = ppid;
            (*ev)._pad = 0;
            (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        }
        submit(Ring::Telemetry, entry);
    }
    Ok(())
}

/// `cgroup:cgroup_attach_task`, fired in the task doing the move, once per
/// thread moved. Only moves in the cgroup v2 hierarchy count (the ids of v1
/// hierarchies are another namespace).
#[tracepoint]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    match try_attach(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_attach(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: checked copies through bpf_probe_read_kernel (an error, not a
    // fault, on a bad offset) at the tracepoint's own offsets (tracefs, or
    // the 6.18 defaults); any bit pattern is a valid integer.
    let (root, cgroup_id, pid) = unsafe {
        (
            ctx.read_at::<i32>(global(&ATTACH_DST_ROOT_OFF) as usize)?,
            ctx.read_at::<u64>(global(&ATTACH_DST_ID_OFF) as usize)?,
            ctx.read_at::<i32>(global(&ATTACH_PID_OFF) as usize)?,
        )
    };
    if root != DFL_HIERARCHY {
        return Ok(());
    }
    let pid = pid as u32;
    let Some(p) = PROC_TABLE.get_ptr_mut(pid) else { return Ok(()) };
    // SAFETY: the lookup's pointer to this pid's element, valid and aligned
    // for the run (a preallocated element stays mapped even if removed
    // meanwhile). The moved task is stopped in the migration; user space may
    // write the entry concurrently, and every field is an integer, so a race
    // leaves valid values.
    let p = unsafe { &mut *p };
    p.cgroup_id = cgroup_id;
    if p.identity == NO_IDENTITY {
        let identity = cgroup_identity(cgroup_id);
        if identity != NO_IDENTITY {
            p.identity = identity;
            set_pid_identity(pid, identity);
        }
    }
    Ok(())
}

/// `dst_root` of the cgroup v2 (default) hierarchy.
const DFL_HIERARCHY: i32 = 0;

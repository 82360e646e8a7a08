//! The fanotify group, its marks and the two threads that serve it.
//!
//! - [`Fallback::start`]: `fanotify_init(FAN_CLASS_CONTENT | FAN_REPORT_TID)`,
//!   the responder thread and the mark keeper thread.
//! - [`Target`]: the policy target wrapper ([`Fallback::target`]).
//! - [`Marks`]: which objects carry a mark, synced to a policy's watches.
//! - [`Responder`]: one permission event -> identity -> access -> the
//!   object's directory chain -> decision -> answer, file event.
//!
//! The responder answers every event it reads, whatever happens while
//! deciding (a panic answers deny): an unanswered event would hold the
//! opening process forever.
use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::sys::fanotify::{EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zt_common::{
    EventHeader, NO_IDENTITY, PENDING_IDENTITY, ProcInfo, kind,
    path_policy::{FILE_PATH_LEN, FileEvent, MAX_DEPTH, READ, WRITE, enforcement, file_op},
    policy::{DENY, ENFORCE, RULE_DEFAULT, RULE_NO_POLICY, Verdict},
};

use super::{
    policy::{FilePolicy, Watch},
    syscall::{self, Requested},
};
use crate::{
    host::{boottime_ns, kernel_dev},
    pipeline::{Input, decode::RawEvent},
    policy::{
        Compiled,
        objects::ObjectId,
        target::{PolicyTarget, TargetError},
    },
};

/// How often the mark keeper walks the watched directories again (for
/// directories made or moved below a directory rule since).
pub const REWALK_EVERY: Duration = Duration::from_secs(2);
/// At most this many marks; directories beyond are not watched (said by
/// `status` and logged).
pub const MAX_MARKS: usize = 65_536;
/// How long an open by a process pending an exec verdict waits for it
/// before it is decided as an identity without a policy (denied).
const PENDING_WAIT: Duration = Duration::from_millis(100);
/// One file event per process, object, access and decision per window;
/// the attempts in between are counted into the next (as in the kernel).
const AGG_WINDOW: Duration = Duration::from_secs(1);
/// Decisions are reused this long for the same identity, object and
/// access (a rename moving the object, or one of its directories, is seen
/// at most this late).
const CACHE_FOR: Duration = Duration::from_millis(500);

/// The process table as the responder reads it (the kernel's `PROC_TABLE`).
pub trait Processes: Send {
    fn get(&self, tgid: u32) -> Option<ProcInfo>;
}

/// What the fallback did, for `status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub denied: AtomicU64,
    /// Opens whose access could not be read (io_uring, kernel-internal):
    /// decided as read and write.
    pub unknown_access: AtomicU64,
    /// Opens whose directories could not all be looked up (a deleted file,
    /// a path the daemon cannot reach): rules of the identity deny.
    pub incomplete: AtomicU64,
    /// Events not queued to the pipeline (it was full).
    pub events_dropped: Arc<AtomicU64>,
    pub marks: AtomicU64,
    /// Objects left unwatched at the last walk ([`MAX_MARKS`], depth).
    pub unwatched: AtomicU64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub answered: u64,
    pub denied: u64,
    pub unknown_access: u64,
    pub incomplete: u64,
    pub events_dropped: u64,
    pub marks: u64,
    pub unwatched: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            answered: self.answered.load(Relaxed),
            denied: self.denied.load(Relaxed),
            unknown_access: self.unknown_access.load(Relaxed),
            incomplete: self.incomplete.load(Relaxed),
            events_dropped: self.events_dropped.load(Relaxed),
            marks: self.marks.load(Relaxed),
            unwatched: self.unwatched.load(Relaxed),
        }
    }
}

struct Shared {
    group: Fanotify,
    policy: RwLock<Option<Arc<FilePolicy>>>,
    marks: Mutex<Marks>,
    /// [`Marks::roots`] as of the last sync, for the responder (which must
    /// not wait for the marks' lock).
    roots: RwLock<Arc<HashMap<ObjectId, Vec<ObjectId>>>>,
    counters: Arc<Counters>,
    /// Stops the responder (set last: see `Drop for Fallback`).
    stop: AtomicBool,
    /// Stops the mark keeper.
    stop_marks: AtomicBool,
}

/// The running fallback: the group and its threads. Dropping it removes
/// every mark and stops the threads, the responder last: until then it
/// answers every open that waits (the agent's own too: its files carry
/// marks, see `policy::protect`), so none is left waiting for an answer.
pub struct Fallback {
    shared: Arc<Shared>,
    responder: Option<JoinHandle<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Fallback {
    /// `events`: the pipeline's queue; `dropped` counts what did not fit.
    pub fn start(procs: Box<dyn Processes>, events: mpsc::Sender<Input>, dropped: Arc<AtomicU64>) -> anyhow::Result<Fallback> {
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_REPORT_TID
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .context("fanotify_init(FAN_CLASS_CONTENT) (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS)")?;
        let counters = Arc::new(Counters { events_dropped: dropped, ..Counters::default() });
        let shared = Arc::new(Shared {
            group,
            policy: RwLock::new(None),
            marks: Mutex::new(Marks::default()),
            roots: RwLock::default(),
            counters,
            stop: AtomicBool::new(false),
            stop_marks: AtomicBool::new(false),
        });
        let responder = Responder::new(shared.clone(), procs, events);
        let kept = shared.clone();
        let responder = std::thread::Builder::new().name("zt-fanotify".into()).spawn(move || responder.run())?;
        let keeper = std::thread::Builder::new().name("zt-fanotify-marks".into()).spawn(move || keep_marks(kept))?;
        Ok(Fallback { shared, responder: Some(responder), keeper: Some(keeper) })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// `inner` with this fallback's policy and marks switched with it.
    pub fn target(&self, inner: Box<dyn PolicyTarget>) -> Box<dyn PolicyTarget> {
        Box::new(Target { inner, shared: self.shared.clone(), pending: None })
    }
}

impl Drop for Fallback {
    fn drop(&mut self) {
        // The mark keeper first: its walk opens marked directories, which
        // the responder answers.
        self.shared.stop_marks.store(true, Relaxed);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        // No mark, no new event; the responder answers what is queued, then stops.
        if let Err(e) = self.shared.group.mark(MarkFlags::FAN_MARK_FLUSH, MaskFlags::empty(), nix::fcntl::AT_FDCWD, None::<&Path>) {
            tracing::error!("fanotify: removing the marks at stop: {e}");
        }
        self.shared.stop.store(true, Relaxed);
        if let Some(responder) = self.responder.take() {
            let _ = responder.join();
        }
    }
}

/// The kernel's policy target, and this fallback's policy beside it.
struct Target {
    inner: Box<dyn PolicyTarget>,
    shared: Arc<Shared>,
    /// Installed, not yet switched to.
    pending: Option<(FilePolicy, Wanted)>,
}

impl PolicyTarget for Target {
    fn active(&self) -> Result<zt_common::policy::ActivePolicy, TargetError> {
        self.inner.active()
    }

    fn contents(&self, slot: u32) -> Result<blake3::Hash, TargetError> {
        self.inner.contents(slot)
    }

    fn install(&mut self, compiled: &Compiled) -> Result<(), TargetError> {
        self.inner.install(compiled)?;
        // Marked before the switch: the old policy decides the new marks'
        // events until then.
        let policy = FilePolicy::new(compiled, 0);
        let wanted = wanted(&policy.watches);
        self.shared.marks.lock().expect("poisoned").add(&self.shared.group, &wanted);
        self.pending = Some((policy, wanted));
        Ok(())
    }

    fn flip(&mut self, slot: u32) -> Result<zt_common::policy::ActivePolicy, TargetError> {
        let now = self.inner.flip(slot)?;
        if let Some((mut policy, wanted)) = self.pending.take() {
            policy.generation = now.generation;
            *self.shared.policy.write().expect("poisoned") = Some(Arc::new(policy));
            let mut marks = self.shared.marks.lock().expect("poisoned");
            marks.retain(&self.shared.group, &wanted);
            self.shared.publish(&marks, &wanted);
        }
        Ok(now)
    }

    fn grace_remaining(&self) -> Duration {
        self.inner.grace_remaining()
    }
}

/// An object to mark: the path it was found at, the mask, and the
/// directory rules' objects it was found below (empty for a watched
/// object itself).
#[derive(Clone)]
struct Mark {
    path: PathBuf,
    mask: MaskFlags,
    roots: Vec<ObjectId>,
}

/// The objects to mark for some watches, and how many the walk left out.
#[derive(Default)]
struct Wanted {
    objects: BTreeMap<ObjectId, Mark>,
    unwatched: u64,
}

/// Every object `watches` need marked: each watched object; below a
/// directory rule, every directory (`FAN_EVENT_ON_CHILD`: opens of its
/// files are reported through it) and every file (its own mark: moved or
/// linked out of the directory, it still reports, and is still decided as
/// below the rule: [`Responder::decide`]), symlinks not followed, mounts
/// crossed, at most [`MAX_DEPTH`] levels and [`MAX_MARKS`] in all.
fn wanted(watches: &[Watch]) -> Wanted {
    let mut w = Wanted::default();
    for watch in watches {
        let root = Path::new(&watch.path);
        let Ok(meta) = std::fs::metadata(root) else { continue };
        if pseudo_fs(root) {
            tracing::warn!("fanotify: {} is on a kernel pseudo file system; opens there are not checked on this path", watch.path);
            continue;
        }
        let root_id = object_of(&meta);
        if !(watch.below && meta.is_dir()) {
            let mask = if meta.is_dir() { MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_ONDIR } else { MaskFlags::FAN_OPEN_PERM };
            w.add(root_id, root.to_path_buf(), mask, None);
            continue;
        }
        let dir_mask = MaskFlags::FAN_OPEN_PERM | MaskFlags::FAN_ONDIR | MaskFlags::FAN_EVENT_ON_CHILD;
        let mut stack = vec![(root.to_path_buf(), root_id, 0u32)];
        while let Some((dir, id, depth)) = stack.pop() {
            if w.objects.len() >= MAX_MARKS {
                w.unwatched += 1 + stack.len() as u64;
                break;
            }
            w.add(id, dir.clone(), dir_mask, (id != root_id).then_some(root_id));
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let Ok(t) = e.file_type() else { continue };
                // `DirEntry::file_type` does not follow symlinks; `metadata`
                // of a mount point gives the mounted root (stat crosses it).
                let Ok(m) = std::fs::metadata(e.path()) else { continue };
                if t.is_file() {
                    if w.objects.len() < MAX_MARKS {
                        w.add(object_of(&m), e.path(), MaskFlags::FAN_OPEN_PERM, Some(root_id));
                    } else {
                        w.unwatched += 1;
                    }
                    continue;
                }
                if !t.is_dir() || (object_of(&m).0 != id.0 && pseudo_fs(&e.path())) {
                    continue;
                }
                if depth + 1 >= MAX_DEPTH {
                    w.unwatched += 1;
                } else {
                    stack.push((e.path(), object_of(&m), depth + 1));
                }
            }
        }
    }
    w
}

/// procfs, sysfs and the like: never marked. The responder reads
/// `/proc` to decide, so a mark there would make it wait on itself; and
/// their contents are the kernel's, not files an open rule is about.
fn pseudo_fs(path: &Path) -> bool {
    use nix::sys::statfs::{
        BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, DEBUGFS_MAGIC, PROC_SUPER_MAGIC, SECURITYFS_MAGIC, SYSFS_MAGIC, TRACEFS_MAGIC, statfs,
    };
    statfs(path).is_ok_and(|s| {
        [PROC_SUPER_MAGIC, SYSFS_MAGIC, CGROUP2_SUPER_MAGIC, BPF_FS_MAGIC, DEBUGFS_MAGIC, TRACEFS_MAGIC, SECURITYFS_MAGIC]
            .contains(&s.filesystem_type())
    })
}

impl Wanted {
    fn add(&mut self, id: ObjectId, path: PathBuf, mask: MaskFlags, root: Option<ObjectId>) {
        let m = self.objects.entry(id).or_insert(Mark { path, mask, roots: Vec::new() });
        m.mask |= mask;
        if let Some(r) = root.filter(|r| !m.roots.contains(r)) {
            m.roots.push(r);
        }
    }
}

fn object_of(m: &std::fs::Metadata) -> ObjectId {
    use std::os::unix::fs::MetadataExt;
    (kernel_dev(m.dev()), m.ino())
}

/// The objects that carry a mark of the group: the path and mask it was
/// added by, and every directory rule's object it was found below while
/// this policy is in force.
#[derive(Default)]
struct Marks(BTreeMap<ObjectId, Mark>);

impl Marks {
    /// Marks every object of `wanted` not marked yet (with that mask), and
    /// adds the rule objects each was found below.
    fn add(&mut self, group: &Fanotify, wanted: &Wanted) {
        for (id, w) in &wanted.objects {
            let had = self.0.get(id).map(|m| m.mask);
            if !had.is_some_and(|m| m.contains(w.mask))
                && let Err(e) = group.mark(MarkFlags::FAN_MARK_ADD, w.mask, nix::fcntl::AT_FDCWD, Some(w.path.as_path()))
            {
                tracing::warn!("fanotify mark on {} not added ({e}): opens of it are not checked", w.path.display());
                continue;
            }
            let m = self.0.entry(*id).or_insert_with(|| Mark { roots: Vec::new(), ..w.clone() });
            m.mask |= w.mask;
            for r in &w.roots {
                if !m.roots.contains(r) {
                    m.roots.push(*r);
                }
            }
        }
    }

    /// Removes the marks of objects not in `wanted` whose path still names
    /// them (no longer below a rule where they were). An object that is
    /// elsewhere now (moved or linked out of a directory rule's directory)
    /// keeps its mark and its rule objects.
    fn retain(&mut self, group: &Fanotify, wanted: &Wanted) {
        let stale: Vec<ObjectId> = self
            .0
            .iter()
            .filter(|(id, m)| !wanted.objects.contains_key(id) && std::fs::metadata(&m.path).is_ok_and(|meta| object_of(&meta) == **id))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            let m = self.0.remove(&id).expect("listed");
            let _ = group.mark(MarkFlags::FAN_MARK_REMOVE, m.mask, nix::fcntl::AT_FDCWD, Some(m.path.as_path()));
        }
    }

    /// Each marked object found below directory rules, and their objects.
    fn roots(&self) -> HashMap<ObjectId, Vec<ObjectId>> {
        self.0.iter().filter(|(_, m)| !m.roots.is_empty()).map(|(id, m)| (*id, m.roots.clone())).collect()
    }
}

impl Shared {
    /// After a sync of the marks: the responder's view of them, and the
    /// counters.
    fn publish(&self, marks: &Marks, wanted: &Wanted) {
        *self.roots.write().expect("poisoned") = Arc::new(marks.roots());
        self.counters.marks.store(marks.0.len() as u64, Relaxed);
        let before = self.counters.unwatched.swap(wanted.unwatched, Relaxed);
        if wanted.unwatched > 0 && before != wanted.unwatched {
            tracing::warn!(
                "fanotify: {} objects below directory rules are not watched (more than {MAX_MARKS} marks, or deeper than {MAX_DEPTH} levels)",
                wanted.unwatched
            );
        }
    }
}

/// Walks the policy's watches again every [`REWALK_EVERY`] and marks what
/// appeared (directories made or moved below a directory rule).
fn keep_marks(shared: Arc<Shared>) {
    let mut last = Instant::now();
    while !shared.stop_marks.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < REWALK_EVERY {
            continue;
        }
        last = Instant::now();
        let Some(policy) = shared.policy.read().expect("poisoned").clone() else { continue };
        let wanted = wanted(&policy.watches);
        let mut marks = shared.marks.lock().expect("poisoned");
        // Only if the policy is still the one walked for (a switch syncs itself).
        if shared.policy.read().expect("poisoned").as_ref().is_some_and(|p| Arc::ptr_eq(p, &policy)) {
            marks.add(&shared.group, &wanted);
            marks.retain(&shared.group, &wanted);
            shared.publish(&marks, &wanted);
        }
    }
}

/// One identity's decision for one object and access, reused for
/// [`CACHE_FOR`].
#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct CacheKey {
    generation: u32,
    identity: u32,
    object: ObjectId,
    access: u8,
}

#[derive(Hash, PartialEq, Eq, Clone, Copy)]
struct AggKey {
    tgid: u32,
    decided: CacheKey,
    verdict: u8,
}

/// The object an event's descriptor is, and its directories.
struct Chain {
    objects: Vec<ObjectId>,
    complete: bool,
    /// As the daemon's mount namespace names it.
    path: String,
}

struct Responder {
    shared: Arc<Shared>,
    procs: Box<dyn Processes>,
    events: mpsc::Sender<Input>,
    own_tgid: u32,
    cache: HashMap<CacheKey, (Verdict, Instant)>,
    aggregates: HashMap<AggKey, (Instant, u64)>,
}

impl Responder {
    fn new(shared: Arc<Shared>, procs: Box<dyn Processes>, events: mpsc::Sender<Input>) -> Responder {
        Responder { shared, procs, events, own_tgid: std::process::id(), cache: HashMap::new(), aggregates: HashMap::new() }
    }

    fn run(mut self) {
        let fd = self.shared.group.as_fd().as_raw_fd();
        while !self.shared.stop.load(Relaxed) {
            let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, the count given.
            if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                continue;
            }
            let events = match self.shared.group.read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("fanotify: reading events: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            for ev in events {
                self.answer(&ev);
            }
        }
        // Stopping: what is still queued is answered (the marks are gone,
        // so nothing new comes).
        while let Ok(events) = self.shared.group.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                self.answer(&ev);
            }
        }
    }

    /// Decides and answers one event (deny if deciding panicked).
    fn answer(&mut self, ev: &FanotifyEvent) {
        let Some(fd) = ev.fd() else { return };
        let allow = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.decide(ev.pid() as u32, fd))).unwrap_or(false);
        let response = if allow { Response::FAN_ALLOW } else { Response::FAN_DENY };
        if let Err(e) = self.shared.group.write_response(FanotifyResponse::new(fd, response)) {
            tracing::error!("fanotify: answering an event: {e}");
        }
        self.shared.counters.answered.fetch_add(1, Relaxed);
        if !allow {
            self.shared.counters.denied.fetch_add(1, Relaxed);
        }
    }

    /// Whether thread `tid` may open `fd`.
    fn decide(&mut self, tid: u32, fd: BorrowedFd<'_>) -> bool {
        let Some((tgid, info)) = self.process_of(tid) else { return true };
        if tgid == self.own_tgid || info.identity == NO_IDENTITY {
            return true;
        }
        let Some(policy) = self.shared.policy.read().expect("poisoned").clone() else { return true };
        let access = match syscall::requested(&proc_text(tid, "syscall"), |addr| read_u64(tid, addr)) {
            Requested::Exec => return true,
            Requested::Open(a) => a,
            Requested::Unknown => {
                self.shared.counters.unknown_access.fetch_add(1, Relaxed);
                (READ | WRITE) as u8
            }
        };
        if info.identity != PENDING_IDENTITY && !policy.concerns(info.identity, access) {
            return true;
        }
        let mut chain = chain_of(fd);
        // Found below a directory rule's directory at a walk: decided as
        // below it wherever it is now (moved or hard-linked out).
        if let Some(roots) = self.shared.roots.read().expect("poisoned").get(&chain.objects[0]) {
            chain.objects.extend(roots);
        }
        if !chain.complete {
            self.shared.counters.incomplete.fetch_add(1, Relaxed);
        }
        let key = CacheKey { generation: policy.generation, identity: info.identity, object: chain.objects[0], access };
        let v = match self.cache.get(&key).filter(|(_, at)| at.elapsed() < CACHE_FOR && chain.complete) {
            Some((v, _)) => *v,
            None if info.identity == PENDING_IDENTITY => Verdict::new(DENY, ENFORCE, RULE_NO_POLICY),
            None => {
                let v = policy.decide(info.identity, &chain.objects, chain.complete, access);
                if self.cache.len() >= 4096 {
                    self.cache.clear();
                }
                self.cache.insert(key, (v, Instant::now()));
                v
            }
        };
        // A default-deny identity's allowed opens are the kernel's to report
        // (`open_exit` sees every open of it).
        if v.decided == DENY || (v.rule != RULE_DEFAULT && !policy.default_deny(info.identity)) {
            self.report(tgid, tid, &info, key, v, &chain);
        }
        v.action != DENY
    }

    /// The process `tid` belongs to (itself when it leads one the table
    /// knows, else from `/proc/<tid>/status`) and its entry, waiting up to
    /// [`PENDING_WAIT`] for a pending exec verdict (user space hashing its
    /// executable). None: not in the table.
    fn process_of(&self, tid: u32) -> Option<(u32, ProcInfo)> {
        let (tgid, mut info) = match self.procs.get(tid) {
            Some(info) => (tid, info),
            None => {
                let tgid = proc_text(tid, "status").lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())?;
                (tgid, self.procs.get(tgid)?)
            }
        };
        let until = Instant::now() + PENDING_WAIT;
        while info.identity == PENDING_IDENTITY && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
            info = self.procs.get(tgid)?;
        }
        Some((tgid, info))
    }

    /// A file event, one per [`AGG_WINDOW`] per key (the others counted
    /// into the next).
    fn report(&mut self, tgid: u32, tid: u32, info: &ProcInfo, key: CacheKey, v: Verdict, chain: &Chain) {
        let now = Instant::now();
        let agg = AggKey { tgid, decided: key, verdict: v.decided };
        let folded = match self.aggregates.get_mut(&agg) {
            Some((last, folded)) if now.duration_since(*last) < AGG_WINDOW => {
                *folded += 1;
                return;
            }
            Some((last, folded)) => {
                *last = now;
                std::mem::take(folded)
            }
            None => {
                if self.aggregates.len() >= 16_384 {
                    self.aggregates.retain(|_, (last, _)| now.duration_since(*last) < AGG_WINDOW);
                }
                self.aggregates.insert(agg, (now, 0));
                0
            }
        };
        let e = file_event(tgid, tid, info, key, v, chain, folded);
        if self.events.try_send(Input::Raw(RawEvent::File(Box::new(e)))).is_err() {
            self.shared.counters.events_dropped.fetch_add(1, Relaxed);
        }
    }
}

fn file_event(tgid: u32, tid: u32, info: &ProcInfo, key: CacheKey, v: Verdict, chain: &Chain, folded: u64) -> FileEvent {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{tid}")).ok();
    let mut comm = [0u8; zt_common::COMM_LEN];
    let name = proc_text(tid, "comm");
    let name = name.trim_end().as_bytes();
    let n = name.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&name[..n]);
    let bytes = chain.path.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(FILE_PATH_LEN)..];
    let mut path = [0u8; FILE_PATH_LEN];
    path[..tail.len()].copy_from_slice(tail);
    FileEvent {
        header: EventHeader {
            kind: kind::FILE,
            tgid,
            tid,
            identity: key.identity,
            time_ns: boottime_ns(),
            start_ns: info.start_ns,
            cgroup_id: info.cgroup_id,
            uid: owner.as_ref().map_or(0, |m| m.uid()),
            gid: owner.as_ref().map_or(0, |m| m.gid()),
        },
        verdict: v,
        generation: key.generation,
        op: file_op::OPEN,
        access: key.access,
        enforcement: enforcement::FANOTIFY,
        path_truncated: u8::from(tail.len() < bytes.len() || !chain.complete),
        ino: key.object.1,
        folded,
        dev: key.object.0,
        path_len: tail.len() as u32,
        comm,
        path,
    }
}

/// The object behind `fd` and its directories up to the root, looked up by
/// the path the daemon sees it at (`/proc/self/fd/N`), as the kernel walks
/// `d_parent` and then the mount points. Incomplete when the file is
/// deleted, the path is not reachable from the daemon's root, or the path
/// no longer names the object (a rename in between).
fn chain_of(fd: BorrowedFd<'_>) -> Chain {
    let object = nix::sys::stat::fstat(fd).map(|s| (kernel_dev(s.st_dev), s.st_ino)).unwrap_or((0, 0));
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
    let path = link.to_string_lossy().into_owned();
    let mut objects = vec![object];
    let mut complete = link.is_absolute() && !path.ends_with(" (deleted)");
    if complete {
        complete = std::fs::metadata(&link).is_ok_and(|m| object_of(&m) == object);
        for dir in link.ancestors().skip(1) {
            match std::fs::metadata(dir) {
                Ok(m) if objects.len() <= MAX_DEPTH as usize => objects.push(object_of(&m)),
                _ => {
                    complete = false;
                    break;
                }
            }
        }
    }
    Chain { objects, complete, path }
}

fn proc_text(tid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/{file}")).unwrap_or_default()
}

/// Eight bytes of thread `tid`'s memory at `addr` (an `open_how`'s flags).
fn read_u64(tid: u32, addr: u64) -> Option<u64> {
    let mut buf = [0u8; 8];
    let remote = [nix::sys::uio::RemoteIoVec { base: addr as usize, len: 8 }];
    let read = nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(tid as i32), &mut [std::io::IoSliceMut::new(&mut buf)], &remote);
    (read == Ok(8)).then(|| u64::from_ne_bytes(buf))
}

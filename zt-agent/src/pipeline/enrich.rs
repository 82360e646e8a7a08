//! Kernel events -> schema events: identity resolution for processes the
//! kernel could not attribute alone, and enrichment from /proc.
//!
//! # Layout
//! - [`Enricher::process`]: one `RawEvent` -> one [`Event`], writing
//!   identities it decides into the kernel tables ([`Tables`], traits).
//! - [`Enricher::flush_aggregates`]: attempts the kernel only counted.
//! - A per-incarnation cache `(tgid, start_ns) -> ProcMeta`, so a recycled pid
//!   never reuses a dead process's exe, cgroup or identity.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use zt_common::{
    AggEvictEvent, NO_IDENTITY, PENDING_IDENTITY, args_flags,
    policy::{AGG_SLOTS, AGG_WINDOW_NS, AggKey, AggSlot, IdentityBudget, IdentityCounters, agg_slot},
};

use super::{
    decode::{RawEvent, c_str},
    event::{
        Body, Comm, ConnectFolded, ConnectInfo, ConnectSummary, Decision, Event, ExecInfo, FileInfo, GuardInfo, IdentityRef, Process,
        UnixInfo, WallTime, ip_from_mapped, protocol_name,
    },
};
use crate::{
    anomaly::live::{Outcome, Watch},
    host::wall_time,
    identity::{
        Classification, IdentityConfig, Resolver,
        attribution::{self, Tables},
        container, procfs,
        table::Assign,
    },
    policy::RuleBook,
};

/// What events of a process incarnation share, learnt once: its strings
/// are shared with every event (no copies per event).
#[derive(Debug, Clone, Default)]
struct ProcMeta {
    ppid: u32,
    exe: Option<Arc<str>>,
    cgroup: Option<Arc<str>>,
    /// Parsed from `cgroup`.
    workload: container::Workload,
}

impl ProcMeta {
    fn new(ppid: u32, exe: Option<Arc<str>>, cgroup: Option<Arc<str>>) -> Self {
        let workload = cgroup.as_deref().map(container::parse).unwrap_or_default();
        ProcMeta { ppid, exe, cgroup, workload }
    }
}

/// Cap on cached process incarnations (entries are dropped at exit; the cap
/// only matters if exits were lost).
const MAX_CACHED: usize = 65_536;

pub struct Enricher {
    resolver: Resolver,
    node: Arc<str>,
    /// Every identity ever in force, by id (ids are never reused, so events
    /// of processes whose identity a reload removed still name it).
    identity_refs: HashMap<u32, IdentityRef>,
    rulebook: Arc<RuleBook>,
    procs: HashMap<(u32, u64), ProcMeta>,
    /// cgroup id -> path, learnt from /proc (and checked against the id: a
    /// process may have moved since its event); used when a process is
    /// already gone when its event is enriched (short-lived commands).
    cgroup_paths: HashMap<u64, Arc<str>>,
    /// Where the cgroup v2 hierarchy is mounted: a path's cgroup id is its
    /// directory's inode there.
    cgroup2: PathBuf,
    /// cgroup ids already checked against the cgroup selectors.
    seen_cgroups: HashSet<u64>,
    /// Whether some output shows events of processes without an identity.
    show_unattributed: bool,
    /// What was reported of the kernel's aggregation cache.
    reported: Reported,
    /// Per identity: the kernel's folded counts as of the last report.
    folded_reported: HashMap<u32, IdentityBudget>,
    /// Identities written into the kernel table by user space.
    pub assigned: u64,
    /// Whether the table may hold pending processes: the policy has kernel
    /// `exeDigest` selectors, or the last sweep (or the start, or a policy
    /// change) could not rule them out. Without, the sweep reads nothing.
    sweep_pending: bool,
    /// `model record` in progress: where syscall batches go (they are no
    /// output's events).
    pub recordings: crate::anomaly::record::Recordings,
    /// The anomaly detector (None: not in this daemon, as in most tests).
    pub anomaly: Option<Watch>,
    /// Events beside the one `process` returns (a finding at a process's
    /// exit, baseline notes at a policy change), for the task to send.
    pending: Vec<Event>,
}

impl Enricher {
    pub fn new(resolver: Resolver, cgroup2: PathBuf, node: Arc<str>, show_unattributed: bool, rulebook: Arc<RuleBook>) -> Self {
        let mut identity_refs = HashMap::new();
        add_refs(&mut identity_refs, resolver.config());
        Self {
            rulebook,
            resolver,
            node,
            identity_refs,
            procs: HashMap::new(),
            cgroup_paths: HashMap::new(),
            cgroup2,
            seen_cgroups: HashSet::new(),
            show_unattributed,
            reported: Reported::default(),
            folded_reported: HashMap::new(),
            assigned: 0,
            sweep_pending: true,
            recordings: Default::default(),
            anomaly: None,
            pending: Vec::new(),
        }
    }

    /// The anomaly detector's timed work: processes that ended a while ago
    /// are finished (their findings go with the pending events).
    pub fn anomaly_tick(&mut self) {
        let Some(w) = self.anomaly.as_mut() else { return };
        let outcomes = w.detector.expire(crate::host::boottime_ns());
        self.queue_anomaly(outcomes);
    }

    /// Outcomes of no kernel event (a policy change, the clock) as pending
    /// events, dated now.
    fn queue_anomaly(&mut self, outcomes: Vec<Outcome>) {
        let h = zt_common::EventHeader { time_ns: crate::host::boottime_ns(), ..Default::default() };
        for o in outcomes {
            let ev = self.anomaly_event(&h, o);
            self.pending.push(ev);
        }
    }

    /// Takes the events waiting beside the ones `process` returned.
    pub fn take_pending(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.pending)
    }

    /// An anomaly outcome as an event; a finding's response carried out.
    fn anomaly_event(&mut self, h: &zt_common::EventHeader, outcome: Outcome) -> Event {
        let time = wall_time(h.time_ns);
        match outcome {
            Outcome::Baseline { identity, note } => {
                self.event(time, Body::Baseline { identity: self.identity_ref(identity), baseline: note })
            }
            Outcome::Detection { identity, tgid, tid, exe, exited, mut detection } => {
                let identity = self.identity_ref(identity);
                if let (Some(w), Some(i)) = (&self.anomaly, &identity) {
                    w.respond(&i.name, tgid, exited, &mut detection);
                }
                let meta = self.meta(tgid, h.start_ns, h.cgroup_id);
                let mut process = self.process_info(&zt_common::EventHeader { tgid, tid, ..*h }, &[], &meta);
                process.exe = process.exe.or(exe);
                self.event(time, Body::Detection { process, identity, detection })
            }
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn resolver_mut(&mut self) -> &mut Resolver {
        &mut self.resolver
    }

    /// The node name events carry.
    pub fn node(&self) -> Arc<str> {
        self.node.clone()
    }

    /// Switches to the identities of a newly applied policy: new selectors
    /// for resolution, and the kernel's cgroup map recomputed.
    pub fn set_identities(&mut self, config: Arc<IdentityConfig>, tables: &mut Tables) {
        add_refs(&mut self.identity_refs, &config);
        if let Some(w) = self.anomaly.as_mut() {
            let notes = w.set_identities(&config);
            self.queue_anomaly(notes);
        }
        self.resolver.set_config(config);
        self.seen_cgroups.clear();
        let wanted: HashMap<u64, u32> =
            self.resolver.cgroup_assignments(&self.cgroup2).into_iter().map(|(id, _, ident)| (id, ident)).collect();
        if let Err(e) = tables.cgroups.replace(&wanted) {
            tracing::warn!("updating the cgroup identity map: {}", crate::error::Chain(&e));
        }
        crate::identity::attribution::sync_exec_selectors(&self.resolver, tables);
        // Verdicts name the identities of the digests the old policy listed.
        if let Err(e) = tables.execs.clear_verdicts() {
            tracing::warn!("clearing the digest verdicts: {}", crate::error::Chain(&e));
        }
        self.record_own_verdict(tables);
        self.sweep_pending = true;
    }

    /// Leaves the kernel the verdict for the file process `tgid` runs, so
    /// the next exec of that file version is decided there.
    fn record_verdict(&mut self, tgid: u32, tables: &mut Tables) {
        // An `exe` glob's new file gets its entries before the verdict says
        // the file was examined.
        if (!self.resolver.has_kernel_globs() || attribution::sync_exec_selectors(&self.resolver, tables))
            && let Some((key, pick)) = self.resolver.file_verdict(tgid)
            && let Err(e) = tables.execs.set_verdict(key, pick)
        {
            tracing::warn!("recording a file verdict: {}", crate::error::Chain(&e));
        }
    }

    /// Leaves the kernel the verdict for this daemon's own executable, so
    /// its CLI (the same file) is decided at exec, never held pending: a
    /// pending `zt-agent status` would find the control socket refused.
    pub fn record_own_verdict(&mut self, tables: &mut Tables) {
        if self.resolver.has_kernel_verdicts() {
            self.record_verdict(std::process::id(), tables);
        }
    }

    /// Settles every live process still pending (`PENDING_IDENTITY`) by its
    /// own executable: those whose exec event could not (the parent that
    /// exec'd was gone, its children forked before it was settled), within
    /// one rescan interval.
    pub fn settle_pending(&mut self, tables: &mut Tables) {
        if !self.sweep_pending {
            return;
        }
        let root = self.resolver.proc_root().to_path_buf();
        let pending: Vec<(u32, u64)> = tables
            .procs
            .entries()
            .into_iter()
            .filter(|(_, i)| i.identity == PENDING_IDENTITY && i.flags & zt_common::proc_flags::EXITED == 0)
            .map(|(pid, i)| (pid, i.start_ns))
            .collect();
        self.sweep_pending = !pending.is_empty() || self.resolver.has_kernel_verdicts();
        for (pid, start_ns) in pending {
            let (exe, uid, cgroup) = (procfs::exe(&root, pid), procfs::uid(&root, pid), procfs::cgroup_v2(&root, pid));
            self.resolve(pid, start_ns, uid, true, exe.as_deref(), cgroup.as_deref(), tables);
        }
    }

    /// Names the identities an already-built event counts by id (a loss
    /// event's lost security records).
    pub fn name_identities(&self, ev: &mut Event) {
        if let Body::Loss { loss } = &mut ev.body {
            for r in &mut loss.security_records {
                r.identity = self.identity_ref(r.identity_id);
            }
        }
    }

    fn identity_ref(&self, id: u32) -> Option<IdentityRef> {
        self.identity_refs.get(&id).cloned()
    }

    pub fn event(&self, time: WallTime, body: Body) -> Event {
        Event { time, node: self.node.clone(), body }
    }

    /// Resolves and enriches one kernel event. Returns `None` for events of
    /// unattributed processes when no output wants them: those then cost no
    /// /proc reads at all (the common case for every exec on a busy node).
    pub fn process(&mut self, raw: RawEvent, tables: &mut Tables) -> Option<Event> {
        let h = *raw.header();
        let root = self.resolver.proc_root().to_path_buf();
        let show_unattributed = self.show_unattributed;
        let wanted = |identity: u32| identity != NO_IDENTITY || show_unattributed;
        match raw {
            RawEvent::Exec(e) => {
                let read_facts = |en: &mut Self| {
                    let exe =
                        procfs::exe(&root, h.tgid).or_else(|| Some(c_str(&e.filename[..(e.filename_len as usize).min(e.filename.len())])));
                    let cgroup = en.cgroup_path(h.cgroup_id, procfs::cgroup_v2(&root, h.tgid));
                    (exe.map(Arc::from), cgroup)
                };
                let mut identity = h.identity;
                let mut facts = None;
                let pending = identity == PENDING_IDENTITY;
                if pending || (identity == NO_IDENTITY && self.needs_resolution(h.cgroup_id)) {
                    let (exe, cgroup) = read_facts(self);
                    identity = self.resolve(h.tgid, h.start_ns, Some(h.uid), pending, exe.as_deref(), cgroup.as_deref(), tables);
                    facts = Some((exe, cgroup));
                }
                if !wanted(identity) {
                    return None;
                }
                let (exe, cgroup) = match facts {
                    Some(f) => f,
                    None => read_facts(self),
                };
                let (argv, argv_source) = if e.args_flags & args_flags::MISSING == 0 {
                    (procfs::split_nul(&e.args[..(e.args_len as usize).min(e.args.len())]), "kernel")
                } else {
                    match procfs::cmdline(&root, h.tgid) {
                        Some(a) => (a, "proc"),
                        None => (Vec::new(), "none"),
                    }
                };
                let meta = ProcMeta::new(e.ppid, exe, cgroup);
                if self.procs.len() >= MAX_CACHED {
                    self.procs.clear();
                }
                let process = self.process_info(&h, &e.comm, &meta);
                self.procs.insert((h.tgid, h.start_ns), meta);
                let exec = ExecInfo {
                    filename: c_str(&e.filename[..(e.filename_len as usize).min(e.filename.len())]),
                    argv,
                    argv_truncated: e.args_flags & args_flags::TRUNCATED != 0,
                    argv_source,
                };
                Some(self.event(wall_time(h.time_ns), Body::Exec { process, identity: self.identity_ref(identity), exec }))
            }
            RawEvent::Exit(e) => {
                if let Some(w) = self.anomaly.as_mut() {
                    w.detector.exit(h.tgid, h.time_ns);
                }
                let meta = self.procs.remove(&(h.tgid, h.start_ns)).unwrap_or_default();
                if !wanted(h.identity) {
                    return None;
                }
                let meta = ProcMeta { ppid: e.ppid, ..meta };
                let process = self.process_info(&h, &e.comm, &meta);
                Some(self.event(wall_time(h.time_ns), Body::Exit { process, identity: self.identity_ref(h.identity) }))
            }
            RawEvent::Connect(c) => {
                if !wanted(h.identity) {
                    return None;
                }
                let meta = self.meta(h.tgid, h.start_ns, h.cgroup_id);
                let process = self.process_info(&h, &c.comm, &meta);
                let mut connect = ConnectInfo::from_raw(&c, |g, r| self.rulebook.name(g, r));
                if c.repeats_total > 0 {
                    let key = AggKey {
                        identity: h.identity,
                        tgid: h.tgid,
                        port: c.port,
                        proto: zt_common::policy::match_proto(c.protocol),
                        decided: c.verdict.decided,
                        generation: c.generation,
                        addr: c.addr,
                    };
                    let last = self.reported.set(c.cpu, key, c.repeats_total);
                    connect.repeats = c.repeats_total.saturating_sub(last).max(1);
                }
                Some(self.event(wall_time(h.time_ns), Body::Connect { process, identity: self.identity_ref(h.identity), connect }))
            }
            // Security records: always shown, whatever `--show` says.
            RawEvent::Guard(g) => {
                let meta = self.meta(h.tgid, h.start_ns, h.cgroup_id);
                let process = self.process_info(&h, &g.comm, &meta);
                let target = self.identity_ref(g.target_identity).map(|r| r.name);
                let guard = GuardInfo::from_raw(&g, target);
                Some(self.event(wall_time(h.time_ns), Body::Guard { process, identity: self.identity_ref(h.identity), guard }))
            }
            RawEvent::AggEvict(e) => self.evicted(&e).filter(|ev| wanted(e.key.identity) || ev.body.is_security()),
            // Denials and would-denies only: security records, always shown.
            RawEvent::Unix(u) => {
                let meta = self.meta(h.tgid, h.start_ns, h.cgroup_id);
                let process = self.process_info(&h, &u.comm, &meta);
                let unix_connect = UnixInfo::from_raw(&u, |g, r| self.rulebook.name(g, r));
                Some(self.event(wall_time(h.time_ns), Body::UnixConnect { process, identity: self.identity_ref(h.identity), unix_connect }))
            }
            RawEvent::Syscalls(b) => {
                self.recordings.add(h.identity, h.tgid, h.tid, h.time_ns, b.held());
                if !self.anomaly.as_ref()?.detector.watches(h.identity) {
                    return None;
                }
                // The program it runs (for a baseline's executables).
                let exe = self.meta(h.tgid, h.start_ns, h.cgroup_id).exe;
                let outcome = self.anomaly.as_mut()?.detector.batch(h.identity, h.tgid, h.tid, h.time_ns, exe.as_ref(), b.held())?;
                Some(self.anomaly_event(&h, outcome))
            }
            // Denials are security records, always shown; allowed accesses
            // a rule named follow `--show`.
            RawEvent::File(f) => {
                if f.verdict.decided != zt_common::policy::DENY && !wanted(h.identity) {
                    return None;
                }
                let meta = self.meta(h.tgid, h.start_ns, h.cgroup_id);
                let process = self.process_info(&h, &f.comm, &meta);
                let file = FileInfo::from_raw(&f, |g, r| self.rulebook.name(g, r));
                Some(self.event(wall_time(h.time_ns), Body::File { process, identity: self.identity_ref(h.identity), file }))
            }
        }
    }

    /// Whether an unattributed exec needs /proc facts: when some selector is
    /// decided in user space, or its cgroup was never examined (a cgroup
    /// created after start-up that a cgroup selector may match).
    fn needs_resolution(&self, cgroup_id: u64) -> bool {
        self.resolver.has_userspace_selectors() || (self.resolver.has_cgroup_selectors() && !self.seen_cgroups.contains(&cgroup_id))
    }

    /// Cached metadata of a process incarnation, read from /proc on a miss.
    fn meta(&mut self, tgid: u32, start_ns: u64, cgroup_id: u64) -> ProcMeta {
        if let Some(m) = self.procs.get(&(tgid, start_ns)) {
            return m.clone();
        }
        let root = self.resolver.proc_root().to_path_buf();
        let cgroup = self.cgroup_path(cgroup_id, procfs::cgroup_v2(&root, tgid));
        let m = ProcMeta::new(procfs::stat(&root, tgid).map(|s| s.ppid).unwrap_or(0), procfs::exe(&root, tgid).map(Arc::from), cgroup);
        self.procs.insert((tgid, start_ns), m.clone());
        m
    }

    /// The cgroup path read from /proc (remembered for its id if it is that
    /// cgroup's), else the path last seen for that cgroup id.
    fn cgroup_path(&mut self, cgroup_id: u64, from_proc: Option<String>) -> Option<Arc<str>> {
        match from_proc {
            Some(p) => {
                let p: Arc<str> = p.into();
                if cgroup_id != 0
                    && self.cgroup_paths.len() < MAX_CACHED
                    && !self.cgroup_paths.contains_key(&cgroup_id)
                    && self.cgroup_id(&p) == Some(cgroup_id)
                {
                    self.cgroup_paths.insert(cgroup_id, p.clone());
                }
                Some(p)
            }
            None => self.cgroup_paths.get(&cgroup_id).cloned(),
        }
    }

    /// With pod metadata: remembers the path of every container and pod
    /// cgroup under the hierarchy, so the events of a process that exited
    /// before its /proc entry was read still name their pod (a container's
    /// one-shot commands). Called at each cgroup rescan.
    pub fn learn_workload_cgroups(&mut self) {
        if self.resolver.pods().is_none() {
            return;
        }
        let mut stack = vec![self.cgroup2.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = e.path();
                if let Ok(rel) = path.strip_prefix(&self.cgroup2)
                    && let Some(rel) = rel.to_str().map(|r| format!("/{r}"))
                    && container::parse(&rel) != container::Workload::default()
                    && self.cgroup_paths.len() < MAX_CACHED
                    && let Ok(m) = e.metadata()
                {
                    self.cgroup_paths.entry(std::os::unix::fs::MetadataExt::ino(&m)).or_insert_with(|| rel.into());
                }
                stack.push(path);
            }
        }
    }

    /// The id of the cgroup at `path` (relative to the hierarchy's root).
    /// An event's cgroup id is where the process was when the kernel wrote
    /// it, its /proc path where it is now: a process moved in between must
    /// not pair the one with the other.
    fn cgroup_id(&self, path: &str) -> Option<u64> {
        std::fs::metadata(self.cgroup2.join(path.trim_start_matches('/'))).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    }

    fn process_info(&self, h: &zt_common::EventHeader, comm: &[u8], meta: &ProcMeta) -> Process {
        Process {
            pid: h.tgid,
            tid: h.tid,
            ppid: meta.ppid,
            start_ns: h.start_ns,
            uid: h.uid,
            gid: h.gid,
            comm: Comm::new(comm),
            exe: meta.exe.clone(),
            cgroup: meta.cgroup.clone(),
            cgroup_id: h.cgroup_id,
            pod_uid: meta.workload.pod_uid.clone(),
            container_id: meta.workload.container_id.clone(),
            pod: self.resolver.pods().filter(|_| meta.workload != container::Workload::default()).and_then(|p| p.lookup(&meta.workload)),
        }
    }

    /// Classifies a process the kernel left unattributed (or `pending`: held
    /// until user space has examined its executable) and writes the result
    /// into the kernel table; returns the identity the event should carry.
    /// For a pending process the file's verdict goes to the kernel first, so
    /// the next exec of that file version is decided there.
    #[expect(clippy::too_many_arguments, reason = "the facts of one process, from an event or from /proc")]
    fn resolve(
        &mut self,
        tgid: u32,
        start_ns: u64,
        uid: Option<u32>,
        pending: bool,
        exe: Option<&str>,
        cgroup: Option<&str>,
        tables: &mut Tables,
    ) -> u32 {
        if pending {
            self.record_verdict(tgid, tables);
        }
        // A cgroup created after start-up: teach the kernel its identity so
        // later forks and execs in it are attributed without us.
        // The id is the path's own, not the event's (the process may have
        // moved since: the event's cgroup would get another's identity).
        if let Some(path) = cgroup
            && self.seen_cgroups.len() < MAX_CACHED
            && let Some(path_id) = self.cgroup_id(path)
            && self.seen_cgroups.insert(path_id)
            && !matches!(tables.cgroups.get(path_id), Ok(Some(_)))
        {
            let id = self.resolver.cgroup_identity(path);
            if id != NO_IDENTITY
                && let Err(e) = tables.cgroups.set(path_id, id)
            {
                tracing::warn!("{}", crate::error::Chain(&e));
            }
        }
        let c = self.resolver.classify(tgid, exe, uid, cgroup);
        if c == Classification::default() && !pending {
            return NO_IDENTITY;
        }
        match tables.procs.assign(tgid, start_ns, c) {
            Ok(Assign::Updated) => {
                self.assigned += 1;
                let inherit = if c.identity != NO_IDENTITY { c.identity } else { c.child_identity };
                attribution::propagate(tables, self.resolver.proc_root(), tgid, inherit);
                c.identity
            }
            Ok(Assign::AlreadyAttributed(id)) => id,
            // Held until it exited: it never ran with an identity.
            Ok(Assign::Gone) if pending => PENDING_IDENTITY,
            Ok(Assign::Gone) => NO_IDENTITY,
            Err(e) => {
                tracing::warn!("assigning identity to pid {tgid}: {}", crate::error::Chain(&e));
                NO_IDENTITY
            }
        }
    }
}

/// Per CPU and slot of the kernel's aggregation cache: the key last seen
/// there and its running total already reported. Mirrors the cache (a key
/// is only ever in its own slot), so it is bounded like it and needs no
/// hashing or pruning: a key seen in a slot replaces the one before.
#[derive(Default)]
struct Reported(Vec<Vec<Option<(AggKey, u64)>>>);

impl Reported {
    fn entry(&mut self, cpu: u32, key: &AggKey) -> &mut Option<(AggKey, u64)> {
        let cpu = cpu as usize;
        if self.0.len() <= cpu {
            self.0.resize_with(cpu + 1, || vec![None; AGG_SLOTS as usize]);
        }
        &mut self.0[cpu][agg_slot(key) as usize]
    }

    /// What was reported of `key` on `cpu` (0: nothing, or its place was taken).
    fn get(&mut self, cpu: u32, key: &AggKey) -> u64 {
        match self.entry(cpu, key) {
            Some((k, n)) if k == key => *n,
            _ => 0,
        }
    }

    /// Records `total` as reported; returns what was before.
    fn set(&mut self, cpu: u32, key: AggKey, total: u64) -> u64 {
        let e = self.entry(cpu, &key);
        let last = match e {
            Some((k, n)) if *k == key => *n,
            _ => 0,
        };
        *e = Some((key, total));
        last
    }

    /// Forgets `key` on `cpu` (evicted); returns what was reported of it.
    fn take(&mut self, cpu: u32, key: &AggKey) -> u64 {
        let e = self.entry(cpu, key);
        match e {
            Some((k, n)) if k == key => {
                let n = *n;
                *e = None;
                n
            }
            _ => 0,
        }
    }
}

fn add_refs(refs: &mut HashMap<u32, IdentityRef>, config: &IdentityConfig) {
    // Not a name an identity can have ([A-Za-z0-9._/-]).
    refs.insert(PENDING_IDENTITY, IdentityRef { name: "(pending)".into(), spiffe_id: "".into() });
    for i in &config.identities {
        refs.insert(i.id, IdentityRef { name: i.name.as_str().into(), spiffe_id: i.spiffe_id.as_str().into() });
    }
}

impl Enricher {
    /// Reports attempts the kernel only counted: per key (across CPUs),
    /// what its slots hold beyond what was reported, once the slot's window
    /// has passed (every such key when `force`: at shutdown). `slots`: the
    /// non-empty slots of the kernel cache with their CPU. Forgets what was
    /// reported for keys no slot holds any more (their place is taken).
    pub fn flush_aggregates(&mut self, slots: &[(u32, AggSlot)], now_ns: u64, force: bool) -> Vec<Event> {
        let mut repeats: BTreeMap<AggKey, u64> = BTreeMap::new();
        for (cpu, s) in slots {
            let last = self.reported.get(*cpu, &s.key);
            if s.total > last && (force || now_ns.saturating_sub(s.last_emit_ns) >= AGG_WINDOW_NS) {
                self.reported.set(*cpu, s.key, s.total);
                *repeats.entry(s.key).or_default() += s.total - last;
            }
        }
        repeats.into_iter().map(|(k, n)| self.summary(k, n)).collect()
    }

    /// The identities that can have folded attempts (every one ever in
    /// force, and pending processes).
    pub fn identity_ids(&self) -> Vec<u32> {
        self.identity_refs.keys().copied().collect()
    }

    /// `connect_folded` events for the attempts each identity folded since
    /// the last report (`folded`: the kernel's running counts; its times
    /// and `now_coarse` are CLOCK_MONOTONIC_COARSE, shown as wall time).
    pub fn flush_folded(&mut self, folded: &[(u32, IdentityBudget)], now_coarse: u64) -> Vec<Event> {
        let to_boot = crate::host::boottime_ns().wrapping_sub(now_coarse);
        let mut out = Vec::new();
        for (id, b) in folded {
            let prev = self.folded_reported.get(id).copied().unwrap_or(IdentityBudget { last_ns: b.first_ns, ..Default::default() });
            let delta = b.folded.since(prev.folded);
            if delta == IdentityCounters::default() {
                continue;
            }
            self.folded_reported.insert(*id, *b);
            let connect_folded = ConnectFolded {
                allowed: delta.allowed,
                denied: delta.denied,
                audited: delta.audited,
                from: wall_time(prev.last_ns.wrapping_add(to_boot)),
                to: wall_time(b.last_ns.wrapping_add(to_boot)),
            };
            out.push(
                self.event(wall_time(crate::host::boottime_ns()), Body::ConnectFolded { identity: self.identity_ref(*id), connect_folded }),
            );
        }
        out
    }

    /// The attempts of an evicted key that no event reported (none: `None`).
    fn evicted(&mut self, e: &AggEvictEvent) -> Option<Event> {
        let last = self.reported.take(e.cpu, &e.key);
        (e.total > last).then(|| self.summary(e.key, e.total - last))
    }

    fn summary(&self, k: AggKey, repeats: u64) -> Event {
        let summary = ConnectSummary {
            pid: k.tgid,
            address: ip_from_mapped(k.addr),
            port: k.port,
            protocol: protocol_name(k.proto as u32, 0),
            decision: Decision::from_kernel(k.decided),
            policy_generation: k.generation,
            repeats,
        };
        self.event(
            wall_time(crate::host::boottime_ns()),
            Body::ConnectSummary { identity: self.identity_ref(k.identity), connect_summary: summary },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::identity::table::mem::{MemCgroups, MemExecs, MemProcs};

    fn tables() -> Tables {
        Tables { procs: Box::new(MemProcs::default()), cgroups: Box::new(MemCgroups::default()), execs: Box::new(MemExecs::default()) }
    }

    fn info(ppid: u32, start_ns: u64) -> zt_common::ProcInfo {
        zt_common::ProcInfo { ppid, start_ns, ..Default::default() }
    }

    #[test]
    fn aggregates_report_every_attempt_once() {
        use zt_common::policy::{AGG_WINDOW_NS, DENY};
        let cfg = crate::policy::identities_from_text(
            "t.yaml",
            "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: u\n      selectors:\n        - uid: 4242\n",
        )
        .unwrap();
        let mut en = Enricher::new(Resolver::new(Arc::new(cfg), "/proc"), "/sys/fs/cgroup".into(), "n".into(), true, Default::default());
        let k = AggKey {
            identity: 1,
            tgid: 4242,
            port: 53,
            proto: 17,
            decided: DENY,
            generation: 1,
            addr: std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets(),
        };
        let slot = |total, last_emit_ns| AggSlot { key: k, total, emitted: 1, last_emit_ns, _pad: 0 };
        let repeats = |ev: &[Event]| -> Vec<u64> {
            ev.iter()
                .map(|e| match &e.body {
                    Body::ConnectSummary { connect_summary, .. } => connect_summary.repeats,
                    _ => panic!(),
                })
                .collect()
        };
        let s = 10 * AGG_WINDOW_NS;
        // CPU 0: 7 attempts, the last event 2 s ago; CPU 1: 3 attempts, event just now.
        let slots = vec![(0, slot(7, s - 2 * AGG_WINDOW_NS)), (1, slot(3, s))];
        let ev = en.flush_aggregates(&slots, s, false);
        let Body::ConnectSummary { connect_summary, identity } = &ev[0].body else { panic!() };
        assert_eq!(
            (connect_summary.repeats, connect_summary.address.to_string().as_str(), connect_summary.decision),
            (7, "10.0.0.1", super::super::event::Decision::Deny)
        );
        assert_eq!(identity.as_ref().unwrap().name.as_ref(), "u");
        // CPU 1's window is open: reported only when forced (shutdown).
        assert!(en.flush_aggregates(&slots, s, false).is_empty());
        assert_eq!(repeats(&en.flush_aggregates(&slots, s, true)), [3]);
        // CPU 0's key evicted after 4 more attempts: those 4 are reported,
        // once; then its slot holds another key, and nothing is left.
        let ev = AggEvictEvent { key: k, total: 11, cpu: 0, ..Default::default() };
        assert_eq!(repeats(&en.evicted(&ev).into_iter().collect::<Vec<_>>()), [4]);
        assert!(en.evicted(&ev).is_some(), "forgotten once evicted: a later eviction counts from 0");
        // A key back in a slot after its eviction starts from its own count.
        assert_eq!(repeats(&en.flush_aggregates(&[(0, slot(2, s - 2 * AGG_WINDOW_NS))], s, false)), [2]);
        assert!(en.flush_aggregates(&[], s, true).is_empty());
    }

    #[test]
    fn stale_incarnation_is_not_assigned() {
        let cfg = crate::policy::identities_from_text(
            "t.yaml",
            "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: u\n      selectors:\n        - uid: 4242\n",
        )
        .unwrap();
        let mut en = Enricher::new(Resolver::new(Arc::new(cfg), "/proc"), "/sys/fs/cgroup".into(), "n".into(), true, Default::default());
        let mut t = tables();
        t.procs.seed(77, info(1, 500)).unwrap();
        // Event of an older incarnation of pid 77 (start 400): must not touch 77.
        assert_eq!(en.resolve(77, 400, Some(4242), false, None, None, &mut t), 0);
        assert_eq!(t.procs.get(77).unwrap().unwrap().identity, 0);
        assert_eq!(en.resolve(77, 500, Some(4242), false, None, None, &mut t), 1);
        assert_eq!(t.procs.get(77).unwrap().unwrap().identity, 1);
        assert_eq!(en.identity_ref(1).unwrap().spiffe_id.as_ref(), "spiffe://t/u");

        // Pending processes (and the children they forked meanwhile) are
        // settled either way: to the identity, or to none.
        let (parent, child, other) = (4_190_001, 4_190_002, 4_190_003);
        let pending = |ppid| zt_common::ProcInfo { identity: PENDING_IDENTITY, ..info(ppid, 600) };
        t.procs.seed(parent, pending(1)).unwrap();
        t.procs.seed(child, pending(parent)).unwrap();
        assert_eq!(en.resolve(parent, 600, Some(4242), true, None, None, &mut t), 1);
        assert_eq!((t.procs.get(parent).unwrap().unwrap().identity, t.procs.get(child).unwrap().unwrap().identity), (1, 1));
        t.procs.seed(other, pending(1)).unwrap();
        t.procs.seed(other + 1, pending(other)).unwrap();
        assert_eq!(en.resolve(other, 600, Some(1), true, None, None, &mut t), 0);
        assert_eq!((t.procs.get(other).unwrap().unwrap().identity, t.procs.get(other + 1).unwrap().unwrap().identity), (0, 0));
    }

    /// A process moved into another cgroup after its event was written: the
    /// event's cgroup id is the old cgroup's, /proc says the new one. The
    /// identity goes to the new cgroup's own id, and the old id is never
    /// paired with the new path (it once gave the root cgroup, and so every
    /// process on the host, an agent's identity).
    #[test]
    fn a_moved_process_teaches_its_new_cgroup_only() {
        let cg = tempfile::tempdir().unwrap();
        std::fs::create_dir(cg.path().join("agent")).unwrap();
        let agent_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(cg.path().join("agent")).unwrap());
        let root_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(cg.path()).unwrap());
        let cfg = crate::policy::identities_from_text(
            "t.yaml",
            "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: a\n      selectors:\n        - cgroup: /agent/**\n",
        )
        .unwrap();
        let mut en = Enricher::new(Resolver::new(Arc::new(cfg), "/proc"), cg.path().into(), "n".into(), true, Default::default());
        let mut t = tables();
        t.procs.seed(77, info(1, 500)).unwrap();
        assert_eq!(en.resolve(77, 500, Some(0), false, None, Some("/agent"), &mut t), 1);
        assert_eq!(t.cgroups.get(agent_id).unwrap(), Some(1));
        assert_eq!(t.cgroups.get(root_id).unwrap(), None);
        // The path is remembered for its own id only.
        assert_eq!(en.cgroup_path(root_id, Some("/agent".into())).as_deref(), Some("/agent"));
        assert_eq!(en.cgroup_path(root_id, None), None);
        assert_eq!(en.cgroup_path(agent_id, Some("/agent".into())).as_deref(), Some("/agent"));
        assert_eq!(en.cgroup_path(agent_id, None).as_deref(), Some("/agent"));
    }
}

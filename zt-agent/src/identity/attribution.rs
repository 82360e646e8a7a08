//! Keeping the kernel's attribution tables right from user space: seeding
//! at start, cgroups created later, identities written after exec, and the
//! garbage the kernel cannot see. Plain Rust over the [`table`] traits.
//!
//! # Layout
//! - [`Tables`]: the process and cgroup tables the enricher writes.
//! - [`seed`]: processes that started before the agent, from /proc.
//! - [`rescan_cgroups`]: new cgroups a cgroup selector matches, and the
//!   processes moved into them without exec'ing.
//! - [`sync_exec_selectors`]: the selectors the kernel decides at exec
//!   (files re-resolved to device and inode, globs listed, on every call).
//! - [`propagate`]: an identity written by user space reaches the children
//!   the process forked before it was classified.
//! - [`gc_stale_entries`]: entries of processes that no longer exist.
use std::{collections::HashSet, path::Path};

use zt_common::{NO_IDENTITY, PENDING_IDENTITY, ProcInfo, proc_flags};

use super::{
    Classification, Resolver, procfs,
    table::{Assign, CgroupTable, ExecTable, ProcessTable},
};

/// The kernel tables user-space attribution writes.
pub struct Tables {
    pub procs: Box<dyn ProcessTable + Send>,
    pub cgroups: Box<dyn CgroupTable + Send>,
    pub execs: Box<dyn ExecTable + Send>,
}

/// Makes `EXEC_SELECT` what the selectors say now (a file replaced at an
/// exact selector's path gets its new inode here, a glob's new files their
/// entries). Returns whether the table now lists every file the globs
/// match (only then may a verdict say a file was examined).
pub fn sync_exec_selectors(resolver: &Resolver, tables: &mut Tables) -> bool {
    let wanted = resolver.exec_entries();
    if !wanted.complete {
        tracing::warn!(
            "exe globs match more files than the kernel table lists: their files are held at every exec until user space decides"
        );
    }
    match tables.execs.replace(&wanted.entries) {
        Ok(()) => wanted.complete,
        Err(e) => {
            tracing::warn!("updating the exec selection table: {}", crate::error::Chain(&e));
            false
        }
    }
}

/// Most processes one propagation visits (the tree walk is bounded even if
/// /proc changes under it).
const MAX_PROPAGATE: usize = 65_536;

/// Gives `identity` to every unattributed descendant of `root`: children the
/// process forked before user space classified it. First the live process
/// tree through `/proc/<pid>/task/*/children` (an entry is assigned only if
/// the table records the walked parent as its parent, so a pid recycled
/// during the walk is left alone), then one pass over the table for the
/// descendants /proc no longer links to `root`: those re-parented when an
/// intermediate process exited (kept as `EXITED` entries by the kernel), and
/// all of them when `root` is gone or the children files are missing
/// (`CONFIG_PROC_CHILDREN` off).
///
/// With `identity` none, only descendants still pending (`PENDING_IDENTITY`,
/// inherited from `root` before it was settled) are settled, to none.
pub fn propagate(tables: &mut Tables, proc_root: &Path, root: u32, identity: u32) {
    let c = Classification { identity, child_identity: NO_IDENTITY };
    let mut assign = |tables: &mut Tables, pid: u32, info: ProcInfo| {
        if unsettled(info.identity, identity)
            && let Err(e) = tables.procs.assign(pid, info.start_ns, c)
        {
            tracing::warn!("propagating identity to pid {pid}: {}", crate::error::Chain(&e));
        }
    };
    let mut queue: Vec<(u32, u32)> = procfs::children(proc_root, root).unwrap_or_default().into_iter().map(|c| (root, c)).collect();
    let mut visited = 0;
    while let Some((parent, pid)) = queue.pop() {
        visited += 1;
        if visited > MAX_PROPAGATE {
            tracing::warn!("propagating identity {identity} from pid {root}: more than {MAX_PROPAGATE} descendants; stopped");
            break;
        }
        match tables.procs.get(pid) {
            Ok(Some(info)) if info.ppid == parent => assign(tables, pid, info),
            // Not a descendant we know (recycled pid, or not in the table).
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("{}", crate::error::Chain(&e));
                continue;
            }
        }
        queue.extend(procfs::children(proc_root, pid).unwrap_or_default().into_iter().map(|c| (pid, c)));
    }
    propagate_by_table(tables, root, identity, &mut assign);
}

/// Whether propagating `identity` gives it to an entry holding `held`.
fn unsettled(held: u32, identity: u32) -> bool {
    held == PENDING_IDENTITY || (held == NO_IDENTITY && identity != NO_IDENTITY)
}

/// Every table entry whose recorded ancestry reaches `root`. A recorded
/// parent counts only if it started no later than its child: a parent pid
/// reused since by a younger process is not that child's parent (the walk
/// would otherwise hand an identity to a stranger whose parent died).
fn propagate_by_table(tables: &mut Tables, root: u32, identity: u32, assign: &mut dyn FnMut(&mut Tables, u32, ProcInfo)) {
    // A child forked while a snapshot was read (its parent still without the
    // identity) can be missing from it: passes repeat while they find some.
    for _ in 0..3 {
        let entries = tables.procs.entries();
        let by_pid: std::collections::HashMap<u32, ProcInfo> = entries.iter().map(|(pid, i)| (*pid, *i)).collect();
        let descends = |mut pid: u32| {
            // Bounded walk: the table could hold a (stale) cycle.
            for _ in 0..64 {
                let Some(child) = by_pid.get(&pid) else { return false };
                let pp = child.ppid;
                if pp == 0 || pp == pid || by_pid.get(&pp).is_some_and(|parent| parent.start_ns > child.start_ns) {
                    return false;
                }
                if pp == root {
                    return true;
                }
                pid = pp;
            }
            false
        };
        let found: Vec<(u32, ProcInfo)> =
            entries.into_iter().filter(|(pid, i)| *pid != root && unsettled(i.identity, identity) && descends(*pid)).collect();
        if found.is_empty() {
            break;
        }
        for (pid, info) in found {
            assign(tables, pid, info);
        }
    }
}

/// Seeds the kernel table from /proc (processes that started before the
/// agent), then fixes entries the kernel created meanwhile whose parent was
/// seeded with an identity. Returns (seeded, attributed).
/// Two start times of one process, from the kernel (ns) and from /proc
/// (clock ticks), differ by less than this.
const SAME_START_NS: u64 = 20_000_000;

pub fn seed(resolver: &mut Resolver, tables: &mut Tables, cgroup2: &Path) -> (usize, usize) {
    sync_exec_selectors(resolver, tables);
    for (cgid, _rel, identity) in resolver.cgroup_assignments(cgroup2) {
        if let Err(e) = tables.cgroups.set(cgid, identity) {
            tracing::warn!("{}", crate::error::Chain(&e));
        }
    }
    let plan = resolver.seed_plan();
    let root = resolver.proc_root().to_path_buf();
    let (mut seeded, mut attributed) = (0, 0);
    for p in &plan {
        let cgroup_id = procfs::cgroup_v2(&root, p.pid)
            .and_then(|rel| std::fs::metadata(cgroup2.join(rel.trim_start_matches('/'))).ok())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let info = ProcInfo {
            start_ns: p.start_ns,
            cgroup_id,
            ppid: p.ppid,
            identity: p.classification.identity,
            child_identity: p.classification.child_identity,
            flags: proc_flags::SEEDED,
        };
        match tables.procs.seed(p.pid, info) {
            Ok(true) => {
                seeded += 1;
                if info.identity != NO_IDENTITY {
                    attributed += 1;
                }
            }
            // An entry the kernel made (since the programs attached, or
            // while a pinned table outlived the last run): it takes the
            // classification if it has no identity and is this incarnation
            // (/proc's start time has clock-tick resolution).
            Ok(false) if p.classification.identity != NO_IDENTITY => {
                let existing = tables.procs.get(p.pid).ok().flatten();
                if let Some(e) = existing.filter(|e| e.identity == NO_IDENTITY && e.start_ns.abs_diff(p.start_ns) < SAME_START_NS)
                    && matches!(tables.procs.assign(p.pid, e.start_ns, p.classification), Ok(Assign::Updated))
                {
                    attributed += 1;
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("{}", crate::error::Chain(&e)),
        }
    }
    // Forks that happened between attaching and seeding copied an empty parent.
    for p in plan.iter().filter(|p| p.classification.identity != NO_IDENTITY) {
        propagate(tables, &root, p.pid, p.classification.identity);
    }
    (seeded, attributed)
}

/// Finds cgroups created since the last scan that a kernel-only selector
/// matches, teaches the kernel their identity, and attributes processes that
/// were moved into them without exec'ing (which no hook would have seen).
pub fn rescan_cgroups(resolver: &Resolver, tables: &mut Tables, cgroup2: &Path) {
    sync_exec_selectors(resolver, tables);
    for (cgid, rel, identity) in resolver.cgroup_assignments(cgroup2) {
        if matches!(tables.cgroups.get(cgid), Ok(Some(_))) {
            continue;
        }
        if let Err(e) = tables.cgroups.set(cgid, identity) {
            tracing::warn!("{}", crate::error::Chain(&e));
            continue;
        }
        tracing::debug!("cgroup {rel} (id {cgid}) -> identity {identity}");
        attribute_cgroup_members(tables, resolver.proc_root(), cgroup2, &rel, identity);
    }
}

/// Gives `identity` to unattributed processes listed in a cgroup's
/// `cgroup.procs` (and their descendants).
pub fn attribute_cgroup_members(tables: &mut Tables, proc_root: &Path, cgroup2: &Path, rel: &str, identity: u32) {
    let procs_file = cgroup2.join(rel.trim_start_matches('/')).join("cgroup.procs");
    let Ok(text) = std::fs::read_to_string(&procs_file) else { return };
    for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        if let Ok(Some(info)) = tables.procs.get(pid)
            && info.identity == NO_IDENTITY
            && matches!(tables.procs.assign(pid, info.start_ns, Classification { identity, child_identity: 0 }), Ok(Assign::Updated))
        {
            propagate(tables, proc_root, pid, identity);
        }
    }
}

/// Removes table entries whose process no longer exists. The kernel removes
/// entries at exit; leftovers come from a thread that exec'd (its old tid's
/// entry is never exited) and from processes that left children without an
/// identity (kept `EXITED` for a later classification to reach them). `/proc/<tid>` exists for live threads too, so
/// thread entries stay. An entry is removed only if it still has the
/// `start_ns` seen in the snapshot, so a pid reused meanwhile is kept.
/// `EXITED` entries are removed at the second collection that sees them
/// (`exited` carries them from one to the next). Returns (entries removed,
/// entries left).
pub fn gc_stale_entries(procs: &mut dyn ProcessTable, proc_root: &Path, exited: &mut HashSet<(u32, u64)>) -> (usize, usize) {
    let mut removed = 0;
    let entries = procs.entries();
    let total = entries.len();
    let mut exited_now = HashSet::new();
    for (pid, info) in entries {
        // An entry the kernel kept for a process that left children waits
        // one whole collection interval: an identity given to it after it
        // exited must still find its descendants through it.
        if info.flags & proc_flags::EXITED != 0 && !exited.contains(&(pid, info.start_ns)) {
            exited_now.insert((pid, info.start_ns));
            continue;
        }
        let gone = || !proc_root.join(pid.to_string()).exists();
        if gone() && matches!(procs.get(pid), Ok(Some(now)) if now.start_ns == info.start_ns) && gone() && procs.remove(pid).is_ok() {
            removed += 1;
        }
    }
    *exited = exited_now;
    (removed, total - removed)
}

#[cfg(test)]
mod tests {
    use std::{fs, sync::Arc};

    use super::*;
    use crate::identity::{
        IdentityConfig,
        table::mem::{MemCgroups, MemExecs, MemProcs},
    };

    fn tables() -> Tables {
        Tables { procs: Box::new(MemProcs::default()), cgroups: Box::new(MemCgroups::default()), execs: Box::new(MemExecs::default()) }
    }

    fn info(ppid: u32, start_ns: u64) -> ProcInfo {
        ProcInfo { ppid, start_ns, ..Default::default() }
    }

    /// A fake /proc: `tree` is (pid, children); each pid gets a stat file
    /// with `ppid` and a start time, and `task/<pid>/children`.
    fn fake_proc(tree: &[(u32, u32, &[u32])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (pid, ppid, kids) in tree {
            let task = root.path().join(format!("{pid}/task/{pid}"));
            fs::create_dir_all(&task).unwrap();
            let kids: Vec<String> = kids.iter().map(u32::to_string).collect();
            fs::write(task.join("children"), kids.join(" ")).unwrap();
            let stat = format!("{pid} (p{pid}) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {pid} 0 0");
            fs::write(root.path().join(format!("{pid}/stat")), stat).unwrap();
        }
        root
    }

    fn get(t: &Tables, pid: u32) -> ProcInfo {
        t.procs.get(pid).unwrap().unwrap()
    }

    #[test]
    fn propagate_walks_the_live_tree_only() {
        let proc_root = fake_proc(&[(10, 1, &[11, 13, 14]), (11, 10, &[12]), (12, 11, &[]), (13, 10, &[]), (14, 10, &[]), (20, 1, &[])]);
        let mut t = tables();
        for (pid, i) in [(10, info(1, 100)), (11, info(10, 101)), (12, info(11, 102)), (20, info(1, 103))] {
            t.procs.seed(pid, i).unwrap();
        }
        t.procs.seed(13, ProcInfo { identity: 9, ..info(10, 104) }).unwrap();
        // pid 14 was recycled: its table entry names another parent.
        t.procs.seed(14, info(77, 105)).unwrap();
        propagate(&mut t, proc_root.path(), 10, 3);
        assert_eq!(get(&t, 11).identity, 3);
        assert_eq!(get(&t, 12).identity, 3);
        assert_eq!(get(&t, 20).identity, 0);
        assert_eq!(get(&t, 13).identity, 9, "an identity already held is kept");
        assert_eq!(get(&t, 14).identity, 0, "a recycled pid is not a descendant");
        assert_eq!(get(&t, 10).identity, 0, "root is assigned by the caller");
    }

    /// A thread that exits during the walk (its task directory has no
    /// readable `children` any more) costs neither its siblings' children
    /// nor the whole subtree.
    #[test]
    fn an_exited_thread_does_not_hide_the_subtree() {
        let proc_root = fake_proc(&[(10, 1, &[11]), (11, 10, &[12]), (12, 11, &[])]);
        fs::create_dir_all(proc_root.path().join("11/task/99")).unwrap();
        let mut t = tables();
        for (pid, i) in [(10, info(1, 100)), (11, info(10, 101)), (12, info(11, 102))] {
            t.procs.seed(pid, i).unwrap();
        }
        propagate(&mut t, proc_root.path(), 10, 3);
        assert_eq!((get(&t, 11).identity, get(&t, 12).identity), (3, 3));
    }

    #[test]
    fn propagate_falls_back_to_the_table_without_children_files() {
        let proc_root = tempfile::tempdir().unwrap();
        let mut t = tables();
        for (pid, i) in [(10, info(1, 100)), (11, info(10, 101)), (12, info(11, 102)), (20, info(1, 103))] {
            t.procs.seed(pid, i).unwrap();
        }
        fs::create_dir_all(proc_root.path().join("10")).unwrap();
        propagate(&mut t, proc_root.path(), 10, 3);
        assert_eq!((get(&t, 11).identity, get(&t, 12).identity, get(&t, 20).identity), (3, 3, 0));
    }

    /// The daemon case: 10 is classified after 11 (its child) exited; 12, the
    /// re-parented grandchild, is still found through 11's kept entry. 30
    /// names 10 as parent but started before it: its parent was an older
    /// process with the same pid, and it is left alone.
    #[test]
    fn the_table_walk_crosses_exited_parents_but_not_reused_pids() {
        let proc_root = tempfile::tempdir().unwrap();
        let mut t = tables();
        let exited = ProcInfo { flags: proc_flags::EXITED, ..info(10, 101) };
        for (pid, i) in [(10, info(1, 100)), (11, exited), (12, info(11, 102)), (30, info(10, 50))] {
            t.procs.seed(pid, i).unwrap();
        }
        propagate(&mut t, proc_root.path(), 10, 3);
        assert_eq!((get(&t, 12).identity, get(&t, 30).identity), (3, 0));
    }

    const POLICY: &str = "apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n    - name: a\n      selectors:\n        - cgroup: /agents/**\n";

    fn resolver(proc_root: &Path) -> Resolver {
        let cfg: IdentityConfig = crate::policy::identities_from_text("t.yaml", POLICY).unwrap();
        Resolver::new(Arc::new(cfg), proc_root)
    }

    #[test]
    fn rescan_teaches_new_cgroups_and_attributes_their_members() {
        let proc_root = fake_proc(&[(30, 1, &[31]), (31, 30, &[]), (40, 1, &[])]);
        let cgroup2 = tempfile::tempdir().unwrap();
        let cg = cgroup2.path().join("agents/one");
        fs::create_dir_all(&cg).unwrap();
        fs::write(cg.join("cgroup.procs"), "30\n").unwrap();
        fs::create_dir_all(cgroup2.path().join("other")).unwrap();
        let mut t = tables();
        for (pid, i) in [(30, info(1, 300)), (31, info(30, 301)), (40, info(1, 400))] {
            t.procs.seed(pid, i).unwrap();
        }
        let r = resolver(proc_root.path());
        rescan_cgroups(&r, &mut t, cgroup2.path());
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        assert_eq!(t.cgroups.get(ino(&cg)).unwrap(), Some(1));
        assert_eq!(t.cgroups.get(ino(&cgroup2.path().join("agents"))).unwrap(), Some(1));
        assert_eq!(t.cgroups.get(ino(&cgroup2.path().join("other"))).unwrap(), None);
        assert_eq!((get(&t, 30).identity, get(&t, 31).identity, get(&t, 40).identity), (1, 1, 0));
    }

    #[test]
    fn seed_never_replaces_kernel_entries_and_counts() {
        let proc_root = fake_proc(&[(50, 1, &[51]), (51, 50, &[])]);
        fs::write(proc_root.path().join("50/cgroup"), "0::/agents/x\n").unwrap();
        let cgroup2 = tempfile::tempdir().unwrap();
        fs::create_dir_all(cgroup2.path().join("agents/x")).unwrap();
        let mut t = tables();
        // The kernel saw pid 51 fork after attach: its entry stays.
        t.procs.seed(51, ProcInfo { flags: 0, ..info(50, 51_000_000_000) }).unwrap();
        let mut r = resolver(proc_root.path());
        let (seeded, attributed) = seed(&mut r, &mut t, cgroup2.path());
        assert_eq!((seeded, attributed), (1, 1));
        assert_eq!(get(&t, 50).identity, 1);
        assert_ne!(get(&t, 50).flags & proc_flags::SEEDED, 0);
        assert_eq!(get(&t, 51).identity, 1, "the kernel's entry of a seeded parent's child is fixed by propagation");
        assert_eq!(get(&t, 51).flags & proc_flags::SEEDED, 0, "and not replaced");
    }

    #[test]
    fn gc_removes_only_dead_entries() {
        let proc_root = fake_proc(&[(60, 1, &[])]);
        let mut procs = MemProcs::default();
        procs.seed(60, info(1, 600)).unwrap();
        procs.seed(61, info(1, 610)).unwrap();
        assert_eq!(gc_stale_entries(&mut procs, proc_root.path(), &mut HashSet::new()), (1, 1));
        assert!(procs.get(60).unwrap().is_some());
        assert!(procs.get(61).unwrap().is_none());
    }

    /// A kept `EXITED` entry survives the first collection that sees it (a
    /// classification may still need it) and goes at the next.
    #[test]
    fn gc_keeps_an_exited_parent_for_one_interval() {
        let proc_root = fake_proc(&[]);
        let mut procs = MemProcs::default();
        procs.seed(70, ProcInfo { flags: proc_flags::EXITED, ..info(1, 700) }).unwrap();
        let mut exited = HashSet::new();
        assert_eq!(gc_stale_entries(&mut procs, proc_root.path(), &mut exited), (0, 1));
        assert!(procs.get(70).unwrap().is_some());
        assert_eq!(gc_stale_entries(&mut procs, proc_root.path(), &mut exited), (1, 0));
    }
}

//! Process attribution in user space: identity files, selectors, and the
//! resolver that turns process facts into identity ids for the kernel tables.
//!
//! # Layout
//! - [`config`]: [`IdentityConfig`], the identity view of the policy in force.
//! - [`table`]: the kernel's attribution tables as traits ([`table::ProcessTable`],
//!   [`table::CgroupTable`]), with in-memory versions for tests.
//! - [`attribution`]: seeding, cgroup rescans, propagation and GC over them.
//! - [`selector`]: selector types and matching.
//! - [`digest`]: cached blake3 digests of executables.
//! - [`procfs`]: process facts from `/proc`.
//! - [`container`]: pod and container ids from cgroup paths.
//! - [`Resolver`]: facts -> [`Classification`]; cgroup tree -> kernel
//!   `CGROUP_IDENTITY` entries; the start-up seeding plan.
//!
//! The kernel inherits identities at fork and selects at exec from the
//! tables user space fills ([`Resolver::exec_entries`], verdicts per file
//! version), holding a process as pending where only user space can decide
//! (zt-ebpf `lineage.rs`); user space decides those, `descendantOf` anchors
//! and what came before its programs, and writes them into the table.
//! An identity, once held, is never changed or cleared by user space: a
//! process cannot shed its identity by exec'ing another binary.
pub mod attribution;
pub mod config;
pub mod container;
pub mod digest;
pub mod procfs;
pub mod selector;
pub mod table;

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::host::kernel_dev;
pub use config::{Identity, IdentityConfig};
use digest::DigestCache;
use selector::{ExecRule, Facts, Selector};
use zt_common::{ANY_UID, DIGEST_SENTINEL, DigestKey, ExecKey, ExecPick, GLOB_DIR_UID, GLOB_SENTINEL, NO_IDENTITY, PENDING_IDENTITY};

/// What the resolver decided for one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Classification {
    /// Identity of the process itself (0: none).
    pub identity: u32,
    /// Identity its descendants get ("descendantOf" anchors; 0: none).
    pub child_identity: u32,
}

pub struct Resolver {
    config: Arc<IdentityConfig>,
    proc_root: PathBuf,
    digests: DigestCache,
    /// Some selector needs user-space matching at exec (not cgroup-only).
    userspace_selectors: bool,
    /// Some selector is a kernel-decided cgroup glob.
    cgroup_selectors: bool,
    /// Pod metadata, where the agent has a Kubernetes source.
    pods: Option<Arc<crate::kube::Pods>>,
}

/// Facts of a live process read lazily from /proc.
struct LiveFacts<'a> {
    pid: u32,
    exe: Option<&'a str>,
    uid: Option<u32>,
    cgroup: Option<&'a str>,
    proc_root: &'a Path,
    digests: &'a mut DigestCache,
    pods: Option<&'a crate::kube::Pods>,
}

impl Facts for LiveFacts<'_> {
    fn exe(&self) -> Option<&str> {
        self.exe
    }
    fn uid(&self) -> Option<u32> {
        self.uid
    }
    fn cgroup(&self) -> Option<&str> {
        self.cgroup
    }
    fn digest(&mut self) -> Option<blake3::Hash> {
        self.digests.digest_pid(self.proc_root, self.pid).ok()
    }
    fn pod(&self) -> Option<Arc<crate::kube::PodMeta>> {
        self.pods?.lookup(&container::parse(self.cgroup?))
    }
}

/// What the kernel needs to decide selectors at exec.
#[derive(Debug, Default)]
pub struct ExecEntries {
    pub entries: HashMap<ExecKey, ExecPick>,
    /// Every `exe` glob's matching files are listed (and fit the table):
    /// only then may a verdict say a file was examined.
    pub complete: bool,
}

/// Directory entries listed for `exe` globs per pass, at most.
const MAX_GLOB_WALK: usize = 100_000;

/// A process as seen in /proc at start-up.
#[derive(Debug, Clone)]
pub struct SeedProc {
    pub pid: u32,
    pub ppid: u32,
    pub start_ns: u64,
    pub classification: Classification,
}

impl Resolver {
    pub fn new(config: Arc<IdentityConfig>, proc_root: impl Into<PathBuf>) -> Self {
        let selectors = || config.identities.iter().flat_map(|i| i.selectors.iter());
        let userspace_selectors = selectors().any(|s| s.kernel_cgroup_only().is_none());
        let cgroup_selectors = selectors().any(|s| s.kernel_cgroup_only().is_some() || s.k8s.is_some());
        Self { config, proc_root: proc_root.into(), digests: DigestCache::default(), userspace_selectors, cgroup_selectors, pods: None }
    }

    /// Resolves `k8s` selectors against this pod cache from now on.
    pub fn with_pods(mut self, pods: Option<Arc<crate::kube::Pods>>) -> Self {
        self.pods = pods;
        self
    }

    pub fn pods(&self) -> Option<&Arc<crate::kube::Pods>> {
        self.pods.as_ref()
    }

    pub fn has_userspace_selectors(&self) -> bool {
        self.userspace_selectors
    }

    pub fn has_cgroup_selectors(&self) -> bool {
        self.cgroup_selectors
    }

    pub fn config(&self) -> &Arc<IdentityConfig> {
        &self.config
    }

    /// Swaps in the identities of a newly applied policy.
    pub fn set_config(&mut self, config: Arc<IdentityConfig>) {
        *self = Resolver {
            digests: std::mem::take(&mut self.digests),
            pods: self.pods.take(),
            ..Resolver::new(config, self.proc_root.clone())
        };
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Matches one process against every identity in file order; the first
    /// identity with a matching selector wins.
    pub fn classify(&mut self, pid: u32, exe: Option<&str>, uid: Option<u32>, cgroup: Option<&str>) -> Classification {
        let mut facts =
            LiveFacts { pid, exe, uid, cgroup, proc_root: &self.proc_root, digests: &mut self.digests, pods: self.pods.as_deref() };
        let mut out = Classification::default();
        for ident in &self.config.identities {
            for sel in ident.selectors.iter() {
                if out.identity == NO_IDENTITY && sel.matches(&mut facts) {
                    out.identity = ident.id;
                }
                if out.child_identity == NO_IDENTITY
                    && let Some(inner) = &sel.descendant_of
                    && inner.matches(&mut facts)
                {
                    out.child_identity = ident.id;
                }
            }
        }
        if out.identity != NO_IDENTITY {
            // Its children inherit its own identity in the kernel.
            out.child_identity = NO_IDENTITY;
        }
        out
    }

    /// Classifies a live process from /proc.
    pub fn classify_pid(&mut self, pid: u32) -> Classification {
        let root = self.proc_root.clone();
        let exe = procfs::exe(&root, pid);
        let uid = procfs::uid(&root, pid);
        let cgroup = procfs::cgroup_v2(&root, pid);
        self.classify(pid, exe.as_deref(), uid, cgroup.as_deref())
    }

    /// The `EXEC_SELECT` entries (see [`ExecRule`]), for each identity in
    /// policy order while every earlier identity is decided in the kernel
    /// too (first match wins: an earlier identity decided in user space
    /// must get its chance). A key two identities share keeps the earlier
    /// one. The sentinels hold the place of the first identity with an
    /// `exeDigest` ([`DIGEST_SENTINEL`]) or an `exe` glob ([`GLOB_SENTINEL`]).
    pub fn exec_entries(&self) -> ExecEntries {
        let mut out = ExecEntries { entries: HashMap::new(), complete: true };
        let mut budget = MAX_GLOB_WALK;
        // Read once, and only when a glob needs it.
        let mut mounts: Option<Vec<(PathBuf, String)>> = None;
        for (prio, ident) in self.kernel_decided() {
            let (pick, held) = (ExecPick { identity: ident.id, prio }, ExecPick { identity: PENDING_IDENTITY, prio });
            let mut add = |key: ExecKey, pick: ExecPick| {
                out.entries.entry(key).or_insert(pick);
            };
            for rule in ident.selectors.iter().map(Selector::exec_rule) {
                let (exe, uid, alone) = match rule {
                    ExecRule::Files { exe, uid, alone } => (exe, uid.unwrap_or(ANY_UID), alone),
                    ExecRule::Digest { .. } => {
                        add(DIGEST_SENTINEL, ExecPick { identity: NO_IDENTITY, prio });
                        continue;
                    }
                    ExecRule::NotAtExec => continue,
                };
                let pick = if alone { pick } else { held };
                let Some(exe) = exe else {
                    add(ExecKey { ino: 0, dev: 0, uid }, pick);
                    continue;
                };
                let Some(root) = exe.glob_root() else {
                    // The file the path resolves to, as `/proc/<pid>/exe`
                    // names the file a process runs: a selector naming a
                    // symlink selects its target, whichever name it is run by.
                    if let Ok(m) = std::fs::metadata(exe.as_str())
                        && m.file_type().is_file()
                    {
                        add(ExecKey { ino: m.ino(), dev: kernel_dev(m.dev()), uid }, pick);
                    }
                    continue;
                };
                add(GLOB_SENTINEL, ExecPick { identity: NO_IDENTITY, prio });
                // The root, and every filesystem mounted below it (the
                // kernel's walk up from a file stops at its filesystem's root).
                let mounts = mounts.get_or_insert_with(|| {
                    std::fs::read_to_string("/proc/self/mountinfo").map(|t| crate::host::parse_mountinfo(&t)).unwrap_or_default()
                });
                let below = mounts.iter().map(|(m, _)| m.as_path()).filter(|m| m.starts_with(&root));
                for dir in std::iter::once(root.as_path()).chain(below) {
                    if let Ok(m) = std::fs::metadata(dir) {
                        add(
                            ExecKey { ino: m.ino(), dev: kernel_dev(m.dev()), uid: GLOB_DIR_UID },
                            ExecPick { identity: NO_IDENTITY, prio },
                        );
                    }
                }
                match exe.matching_files(&mut budget) {
                    Some(files) => {
                        for m in files {
                            add(ExecKey { ino: m.ino(), dev: kernel_dev(m.dev()), uid }, pick);
                        }
                    }
                    None => out.complete = false,
                }
            }
        }
        if out.entries.len() > zt_common::maps::EXEC_SELECT_CAPACITY as usize {
            out.complete = false;
        }
        out
    }

    /// The directories holding the files the kernel's exact `exe` selectors
    /// name: a file replaced there (a package upgrade renames a new inode
    /// over the path) is re-resolved at once, not at the next rescan. (A
    /// glob's new files are held at exec until user space has listed them.)
    pub fn exec_watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .kernel_decided()
            .flat_map(|(_, i)| i.selectors.iter().map(Selector::exec_rule))
            .filter_map(|r| match r {
                ExecRule::Files { exe: Some(e), .. } if e.is_exact() => Some(e.as_str()),
                _ => None,
            })
            // The path's directory, and its target's (a symlink retargeted,
            // or its target replaced).
            .flat_map(|p| [Some(PathBuf::from(p)), std::fs::canonicalize(p).ok()])
            .flatten()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The identities the kernel decides at exec, with their place in the
    /// policy: all of them up to (and including) the first with a
    /// `descendantOf` selector, which user space decides.
    fn kernel_decided(&self) -> impl Iterator<Item = (u32, &Identity)> {
        let decidable = |i: &&Identity| i.selectors.iter().all(|s| s.descendant_of.is_none());
        let n = self.config.identities.iter().take_while(decidable).count();
        // The first identity the kernel cannot fully decide still gets its
        // kernel-decidable selectors: nothing after it.
        let upto = (n + 1).min(self.config.identities.len());
        self.config.identities[..upto].iter().enumerate().map(|(p, i)| (p as u32, i))
    }

    /// Whether the kernel may hold processes pending until user space has
    /// examined their file (an `exeDigest` or `exe` glob decided at exec).
    pub fn has_kernel_verdicts(&self) -> bool {
        self.has_kernel_globs() || self.has_kernel_digests()
    }

    /// Whether some `exeDigest` selector is decided at exec.
    fn has_kernel_digests(&self) -> bool {
        self.kernel_decided().flat_map(|(_, i)| i.selectors.iter()).any(|s| matches!(s.exec_rule(), ExecRule::Digest { .. }))
    }

    /// Whether some `exe` glob is decided at exec (a file new under its
    /// directory is held until user space has listed it).
    pub fn has_kernel_globs(&self) -> bool {
        self.kernel_decided()
            .flat_map(|(_, i)| i.selectors.iter())
            .any(|s| matches!(s.exec_rule(), ExecRule::Files { exe: Some(e), .. } if !e.is_exact()))
    }

    /// The `DIGEST_VERDICT` value for a file with digest `hash`: the first
    /// identity the kernel decides whose `exeDigest` selector names it
    /// (held, `PENDING_IDENTITY`, when that selector has other keys), or
    /// none (`NO_IDENTITY`).
    pub fn digest_pick(&self, hash: &blake3::Hash) -> ExecPick {
        self.kernel_decided()
            .find_map(|(prio, i)| {
                i.selectors.iter().find_map(|s| match s.exec_rule() {
                    ExecRule::Digest { hash: h, alone } if h == hash => {
                        Some(ExecPick { identity: if alone { i.id } else { PENDING_IDENTITY }, prio })
                    }
                    _ => None,
                })
            })
            .unwrap_or_default()
    }

    /// The verdict key and value for the executable `pid` runs, read (and
    /// hashed, when some `exeDigest` selector is decided at exec) through
    /// `/proc/<pid>/exe`; `None` when it cannot be read, or it changed
    /// while being hashed (no verdict then: the next exec of it is pending
    /// again).
    pub fn file_verdict(&mut self, pid: u32) -> Option<(DigestKey, ExecPick)> {
        let file = std::fs::File::open(self.proc_root.join(pid.to_string()).join("exe")).ok()?;
        let key = |m: &std::fs::Metadata| DigestKey {
            ino: m.ino(),
            dev: kernel_dev(m.dev()),
            ctime_nsec: m.ctime_nsec() as u32 & zt_common::CTIME_NSEC_MASK,
            ctime_sec: m.ctime(),
        };
        let before = key(&file.metadata().ok()?);
        if !self.has_kernel_digests() {
            return Some((before, ExecPick::default()));
        }
        let hash = self.digests.digest_file(&file).ok()?;
        (key(&file.metadata().ok()?) == before).then(|| (before, self.digest_pick(&hash)))
    }

    /// Identity of a cgroup by the selectors the kernel can apply alone
    /// (a cgroup glob alone, or a `k8s` selector by the cgroup's pod); the
    /// first identity in policy order wins.
    pub fn cgroup_identity(&self, cgroup_path: &str) -> u32 {
        // The pod is looked up once, and only when a k8s selector asks.
        let mut pod = None;
        for ident in &self.config.identities {
            for s in ident.selectors.iter() {
                if s.kernel_cgroup_only().is_some_and(|g| g.is_match(cgroup_path)) {
                    return ident.id;
                }
                if let Some(k) = &s.k8s
                    && let Some(p) = pod.get_or_insert_with(|| self.pods.as_ref().and_then(|c| c.lookup(&container::parse(cgroup_path))))
                    && k.matches(p)
                {
                    return ident.id;
                }
            }
        }
        NO_IDENTITY
    }

    /// Walks the cgroup v2 tree under `root` and returns `(cgroup id, path,
    /// identity)` for every cgroup a kernel-only selector matches. The cgroup
    /// id the kernel reports (`bpf_get_current_cgroup_id`) is the inode number
    /// of the cgroup directory.
    pub fn cgroup_assignments(&self, root: &Path) -> Vec<(u64, String, u32)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rel = match dir.strip_prefix(root) {
                Ok(r) if r.as_os_str().is_empty() => "/".to_string(),
                Ok(r) => format!("/{}", r.display()),
                Err(_) => continue,
            };
            let id = self.cgroup_identity(&rel);
            if id != NO_IDENTITY
                && let Ok(m) = std::fs::metadata(&dir)
            {
                out.push((m.ino(), rel, id));
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        out
    }

    /// Reads every process in /proc and decides its classification the way
    /// the kernel would have, had it seen every fork: a process inherits its
    /// parent's identity (or the parent's `child_identity`), otherwise its
    /// own selectors decide. Parents come before children in the result.
    pub fn seed_plan(&mut self) -> Vec<SeedProc> {
        let root = self.proc_root.clone();
        let mut procs: Vec<(u32, procfs::Stat)> =
            procfs::pids(&root).unwrap_or_default().into_iter().filter_map(|pid| Some((pid, procfs::stat(&root, pid).ok()?))).collect();
        // A parent always started before its child.
        procs.sort_by_key(|(pid, s)| (s.start_ns, *pid));
        let mut decided: HashMap<u32, Classification> = HashMap::new();
        let mut out = Vec::with_capacity(procs.len());
        for (pid, st) in procs {
            let inherited =
                decided.get(&st.ppid).map(|p| if p.identity != NO_IDENTITY { p.identity } else { p.child_identity }).unwrap_or(NO_IDENTITY);
            let own = self.classify_pid(pid);
            let c = if inherited != NO_IDENTITY { Classification { identity: inherited, child_identity: 0 } } else { own };
            decided.insert(pid, c);
            out.push(SeedProc { pid, ppid: st.ppid, start_ns: st.start_ns, classification: c });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(yaml: &str) -> Resolver {
        Resolver::new(Arc::new(crate::policy::identities_from_text("t.yaml", yaml).unwrap()), "/proc")
    }

    const POLICY: &str = "\
apiVersion: zt-agent.io/v1alpha1
kind: HostPolicy
spec:
  trustDomain: t
  identities:
    - name: a
      selectors:
        - cgroup: /zt-agents/**
    - name: b
      selectors:
        - exe: /usr/bin/b
          uid: 7
        - descendantOf:
            exe: /usr/bin/runner
";

    #[test]
    fn first_identity_wins_and_anchor() {
        let mut r = resolver(POLICY);
        assert_eq!(r.classify(1, Some("/usr/bin/b"), Some(7), Some("/zt-agents/x")), Classification { identity: 1, child_identity: 0 });
        assert_eq!(r.classify(1, Some("/usr/bin/b"), Some(7), Some("/")), Classification { identity: 2, child_identity: 0 });
        assert_eq!(r.classify(1, Some("/usr/bin/b"), Some(8), Some("/")), Classification::default());
        assert_eq!(r.classify(1, Some("/usr/bin/runner"), Some(0), Some("/")), Classification { identity: 0, child_identity: 2 });
    }

    fn policy(identities: &str) -> String {
        format!("apiVersion: zt-agent.io/v1alpha1\nkind: HostPolicy\nspec:\n  trustDomain: t\n  identities:\n{identities}")
    }

    /// `exeDigest` is decided in the kernel: the sentinel holds the first
    /// such identity's place, verdicts name the first identity whose digest
    /// a file has (held when the selector has other keys), and nothing
    /// after an identity with a `descendantOf` selector is decided there.
    #[test]
    fn digest_selectors_in_the_kernel() {
        let (d1, d2, d3) = (blake3::hash(b"one"), blake3::hash(b"two"), blake3::hash(b"three"));
        let r = resolver(&policy(&format!(
            "    - name: u\n      selectors:\n        - uid: 5\n    \
             - name: d\n      selectors:\n        - exeDigest: blake3:{}\n    \
             - name: mixed\n      selectors:\n        - exeDigest: blake3:{}\n          uid: 9\n        \
             - descendantOf:\n            uid: 8\n    \
             - name: late\n      selectors:\n        - uid: 6\n        - exeDigest: blake3:{}\n",
            d1.to_hex(),
            d2.to_hex(),
            d3.to_hex()
        )));
        let e = r.exec_entries().entries;
        assert_eq!(e[&DIGEST_SENTINEL], ExecPick { identity: NO_IDENTITY, prio: 1 });
        assert_eq!(e[&ExecKey { ino: 0, dev: 0, uid: 5 }].prio, 0);
        assert!(!e.contains_key(&ExecKey { ino: 0, dev: 0, uid: 6 }), "after a descendantOf identity");
        assert_eq!(r.digest_pick(&d1), ExecPick { identity: 2, prio: 1 });
        assert_eq!(r.digest_pick(&d2), ExecPick { identity: PENDING_IDENTITY, prio: 2 }, "a digest with a uid: held for user space");
        assert_eq!(r.digest_pick(&d3), ExecPick::default(), "after a descendantOf identity: user space decides");
        assert_eq!(r.digest_pick(&blake3::hash(b"other")).identity, NO_IDENTITY);
    }

    /// An `exe` glob: its files listed by device and inode (with the uid),
    /// its root directory marked, the sentinel at its place; a selector with
    /// a key the kernel cannot check is held (`PENDING_IDENTITY`).
    #[test]
    fn glob_and_compound_selectors_in_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("agents");
        for p in ["a/bin/agent", "b/bin/agent", "b/bin/other", "c/lib/agent", "a/bin/deeper/agent"] {
            std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            std::fs::write(root.join(p), b"").unwrap();
        }
        let key = |p: &Path, uid| {
            let m = std::fs::metadata(p).unwrap();
            ExecKey { ino: m.ino(), dev: kernel_dev(m.dev()), uid }
        };
        let r = resolver(&policy(&format!(
            "    - name: c\n      selectors:\n        - cgroup: /x/**\n          uid: 4\n    \
             - name: g\n      selectors:\n        - exe: {}/*/bin/agent\n          uid: 7\n",
            root.display()
        )));
        let got = r.exec_entries();
        assert!(got.complete);
        let e = got.entries;
        assert_eq!(e[&ExecKey { ino: 0, dev: 0, uid: 4 }], ExecPick { identity: PENDING_IDENTITY, prio: 0 }, "cgroup and uid: held");
        assert_eq!(e[&key(&root.join("a/bin/agent"), 7)], ExecPick { identity: 2, prio: 1 });
        assert_eq!(e[&key(&root.join("b/bin/agent"), 7)], ExecPick { identity: 2, prio: 1 });
        assert_eq!(e[&key(&root, GLOB_DIR_UID)], ExecPick { identity: NO_IDENTITY, prio: 1 });
        assert_eq!(e[&GLOB_SENTINEL], ExecPick { identity: NO_IDENTITY, prio: 1 });
        assert_eq!(e.len(), 5, "no other file matches: {e:?}");
        assert!(r.has_kernel_globs() && r.has_kernel_verdicts());
    }

    #[test]
    fn kernel_cgroup_identity() {
        let r = resolver(POLICY);
        assert_eq!(r.cgroup_identity("/zt-agents"), 1);
        assert_eq!(r.cgroup_identity("/zt-agents/deep/er"), 1);
        assert_eq!(r.cgroup_identity("/user.slice"), 0);
    }

    /// `k8s` selectors decide a pod's cgroups by its metadata: namespace
    /// and labels, found by pod UID (kubelet layouts) or container id
    /// (podman); first identity wins; nothing without metadata.
    #[test]
    fn k8s_selectors_by_pod_metadata() {
        use crate::kube::{PodMeta, Pods};
        let uid = "6f2b4c1e-9a7d-4e3b-8c5a-1d2e3f4a5b6c";
        let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let r = resolver(&policy(concat!(
            "    - name: early\n      selectors:\n        - cgroup: /early/**\n",
            "    - name: agents\n      selectors:\n        - k8s:\n            namespace: agents\n            podLabels: {role: agent}\n",
            "    - name: anything-in-ci\n      selectors:\n        - k8s: {namespace: ci}\n",
        )));
        let pod_path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        assert_eq!(r.cgroup_identity(&pod_path), NO_IDENTITY, "no pod metadata source");
        let pods = Arc::new(Pods::default());
        let r = r.with_pods(Some(pods.clone()));
        assert_eq!(r.cgroup_identity(&pod_path), NO_IDENTITY, "a pod the cache does not know");
        let labels = |l: &[(&str, &str)]| l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        pods.replace_all(vec![PodMeta {
            namespace: "agents".into(),
            uid: uid.into(),
            labels: labels(&[("role", "agent"), ("team", "x")]),
            containers: vec![cid.into()],
            ..Default::default()
        }]);
        assert_eq!(r.cgroup_identity(&pod_path), 2);
        assert_eq!(r.cgroup_identity(&format!("/libpod_parent/libpod-{cid}")), 2, "by container id");
        pods.upsert(PodMeta { namespace: "agents".into(), uid: uid.into(), labels: labels(&[("role", "batch")]), ..Default::default() });
        assert_eq!(r.cgroup_identity(&pod_path), NO_IDENTITY, "the labels no longer match");
        pods.upsert(PodMeta { namespace: "ci".into(), uid: uid.into(), ..Default::default() });
        assert_eq!(r.cgroup_identity(&pod_path), 3);
        assert_eq!(r.cgroup_identity("/early/x"), 1);
    }

    #[test]
    fn cgroup_walk_uses_directory_inodes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("zt-agents/one")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        let r = resolver(POLICY);
        let mut got = r.cgroup_assignments(dir);
        got.sort_by(|a, b| a.1.cmp(&b.1));
        let paths: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(paths, ["/zt-agents", "/zt-agents/one"]);
        assert_eq!(got[1].0, std::fs::metadata(dir.join("zt-agents/one")).unwrap().ino());
    }

    #[test]
    fn seed_plan_orders_parents_first() {
        let mut r = resolver(POLICY);
        let plan = r.seed_plan();
        let me = std::process::id();
        let pos = |pid: u32| plan.iter().position(|p| p.pid == pid);
        let parent = nix::unistd::getppid().as_raw() as u32;
        if let (Some(p), Some(c)) = (pos(parent), pos(me)) {
            assert!(p < c);
        }
        assert!(pos(me).is_some());
    }
}

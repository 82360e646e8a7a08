//! Selectors: which processes belong to an identity.
//!
//! # Layout
//! - [`Selector`]: the keys of one selector; all given keys must match (AND);
//!   an identity's selectors are alternatives (OR).
//! - [`ExecRule`]: how the kernel decides a selector at exec.
//! - [`CgroupGlob`], [`ExeMatcher`]: validated path patterns (a glob's
//!   directory and matching files listed for the kernel).
//! - [`Facts`]: what a selector is matched against, with the exe digest
//!   computed only when a selector asks for it.
//!
//! `descendantOf` is not matched here: the resolver marks a matching process
//! as an anchor and the kernel gives the anchor's identity to every process
//! it forks (see `lineage.rs` in zt-ebpf).
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use globset::{GlobBuilder, GlobMatcher};

#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub cgroup: Option<CgroupGlob>,
    pub exe: Option<ExeMatcher>,
    pub exe_digest: Option<blake3::Hash>,
    pub uid: Option<u32>,
    pub descendant_of: Option<Box<Selector>>,
    /// Pods by namespace and labels (alone in its selector): decided from
    /// the pod metadata of the process's cgroup ([`Facts::pod`]).
    pub k8s: Option<K8sSelector>,
}

/// `k8s: {namespace: NS, podLabels: {k: v}}`: every key given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sSelector {
    pub namespace: Option<String>,
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

impl K8sSelector {
    pub fn matches(&self, pod: &crate::kube::PodMeta) -> bool {
        self.namespace.as_ref().is_none_or(|n| *n == pod.namespace) && self.pod_labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// What a process is matched against. `digest` may be expensive (hashing the
/// executable), so it is only asked for when a selector names one.
pub trait Facts {
    fn exe(&self) -> Option<&str>;
    fn uid(&self) -> Option<u32>;
    /// cgroup v2 path relative to the cgroup2 mount, starting with '/'.
    fn cgroup(&self) -> Option<&str>;
    fn digest(&mut self) -> Option<blake3::Hash>;
    /// The pod of the process's cgroup, when pod metadata is known.
    fn pod(&self) -> Option<Arc<crate::kube::PodMeta>> {
        None
    }
}

/// How the kernel decides a selector at exec (zt-ebpf `lineage.rs`). With
/// `alone` false the selector has keys the kernel cannot check (a cgroup
/// glob, or keys beside a digest): its pick is `PENDING_IDENTITY`, and user
/// space decides each such exec while the process is held.
#[derive(Debug, Clone, Copy)]
pub enum ExecRule<'a> {
    /// `EXEC_SELECT` entries for the files `exe` names (an exact path: the
    /// file it resolves to; a glob: the files under its directory that
    /// match, listed by user space, plus the directory so a file not listed
    /// yet is held) with the uid; without `exe`, any file of that uid.
    Files { exe: Option<&'a ExeMatcher>, uid: Option<u32>, alone: bool },
    /// The file's `DIGEST_VERDICT`, which user space writes once it has
    /// hashed that file version.
    Digest { hash: &'a blake3::Hash, alone: bool },
    /// Not at exec: a cgroup glob alone (`CGROUP_IDENTITY`, at fork and
    /// move), `descendantOf` (the lineage), `k8s` (the pod's cgroups, like a
    /// cgroup glob, once the pod metadata names them).
    NotAtExec,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.cgroup.is_none()
            && self.exe.is_none()
            && self.exe_digest.is_none()
            && self.uid.is_none()
            && self.descendant_of.is_none()
            && self.k8s.is_none()
    }

    /// A canonical text form: two selectors with the same form match the
    /// same processes (used to find identities shadowed by earlier ones).
    pub fn canonical(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup={}", c.as_str()));
        }
        if let Some(e) = &self.exe {
            parts.push(format!("exe={}", e.as_str()));
        }
        if let Some(d) = &self.exe_digest {
            parts.push(format!("digest={}", d.to_hex()));
        }
        if let Some(u) = self.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(d) = &self.descendant_of {
            parts.push(format!("descendantOf({})", d.canonical()));
        }
        if let Some(k) = &self.k8s {
            let labels: Vec<String> = k.pod_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("k8s(namespace={},labels={})", k.namespace.as_deref().unwrap_or("*"), labels.join(";")));
        }
        parts.join(",")
    }

    /// How the kernel decides this selector at exec (see [`ExecRule`]).
    pub fn exec_rule(&self) -> ExecRule<'_> {
        if self.descendant_of.is_some() || self.k8s.is_some() || self.is_empty() || self.kernel_cgroup_only().is_some() {
            return ExecRule::NotAtExec;
        }
        // The digest narrows most: every other key is checked in user space.
        if let Some(hash) = &self.exe_digest {
            let alone = self.exe.is_none() && self.uid.is_none() && self.cgroup.is_none();
            return ExecRule::Digest { hash, alone };
        }
        ExecRule::Files { exe: self.exe.as_ref(), uid: self.uid, alone: self.cgroup.is_none() }
    }

    /// A selector made of a cgroup glob alone can be decided in the kernel
    /// from the cgroup id (the `CGROUP_IDENTITY` map), with no race at all.
    pub fn kernel_cgroup_only(&self) -> Option<&CgroupGlob> {
        match self {
            Selector { cgroup: Some(c), exe: None, exe_digest: None, uid: None, descendant_of: None, k8s: None } => Some(c),
            _ => None,
        }
    }

    /// Whether the process itself matches (every key given must match).
    /// A `descendantOf` selector never matches the process itself.
    pub fn matches(&self, facts: &mut dyn Facts) -> bool {
        if self.descendant_of.is_some() || self.is_empty() {
            return false;
        }
        // Alone in its selector (the policy parser sees to it).
        if let Some(k) = &self.k8s {
            return facts.pod().is_some_and(|p| k.matches(&p));
        }
        if let Some(uid) = self.uid
            && facts.uid() != Some(uid)
        {
            return false;
        }
        if let Some(c) = &self.cgroup
            && !facts.cgroup().is_some_and(|p| c.is_match(p))
        {
            return false;
        }
        if let Some(e) = &self.exe
            && !facts.exe().is_some_and(|p| e.is_match(p))
        {
            return false;
        }
        if let Some(d) = &self.exe_digest
            && facts.digest().as_ref() != Some(d)
        {
            return false;
        }
        true
    }
}

/// A glob over cgroup v2 paths (`*` stays within one path component, `**`
/// crosses them). `/a/**` matches `/a` itself too, so an identity defined on a
/// cgroup covers the cgroup and everything below it.
///
/// The common shapes, a literal path or `/literal/**`, are matched as
/// strings: a compiled glob costs about 15 KiB (its regex), and a policy
/// may name a cgroup for each of a thousand identities.
#[derive(Debug, Clone)]
pub struct CgroupGlob {
    pattern: String,
    matcher: CgroupMatcher,
}

#[derive(Debug, Clone)]
enum CgroupMatcher {
    /// No glob characters: this path only.
    Exact,
    /// `/a/**` with `/a` literal: `/a` and everything below it.
    Subtree(String),
    Glob {
        matcher: GlobMatcher,
        /// For `/a/**`: also match `/a`.
        base: Option<String>,
    },
}

impl CgroupGlob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("cgroup pattern {pattern:?} must be an absolute path starting with '/'"));
        }
        let literal = |s: &str| !s.contains(['*', '?', '[', ']', '{', '}', '\\']);
        let base = pattern.strip_suffix("/**");
        let matcher = match base {
            _ if literal(pattern) => CgroupMatcher::Exact,
            Some(b) if literal(b) => CgroupMatcher::Subtree(format!("{b}/")),
            _ => CgroupMatcher::Glob {
                matcher: GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("invalid cgroup pattern {pattern:?}: {e}"))?
                    .compile_matcher(),
                base: base.map(str::to_string),
            },
        };
        Ok(Self { pattern: pattern.to_string(), matcher })
    }

    pub fn is_match(&self, path: &str) -> bool {
        match &self.matcher {
            CgroupMatcher::Exact => path == self.pattern,
            // "/a/" + something, or "/a" itself.
            CgroupMatcher::Subtree(prefix) => {
                path.strip_prefix(prefix.as_str()).is_some_and(|rest| !rest.is_empty()) || path == &prefix[..prefix.len() - 1]
            }
            CgroupMatcher::Glob { matcher, base } => matcher.is_match(path) || base.as_deref() == Some(path),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// How long [`ExeMatcher`] keeps the file an exact path resolves to.
const TARGET_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// An executable path, exact or a glob (`/opt/agents/*/bin/agent`).
#[derive(Debug, Clone)]
pub struct ExeMatcher {
    pattern: String,
    matcher: GlobMatcher,
    /// For an exact path: the file it resolves to, and when that was read.
    /// Matching runs for every exec event, so the path is resolved at most
    /// once per [`TARGET_TTL`], not per event (the kernel, which decides
    /// exact paths at exec, learns a retargeted symlink at once).
    target: Arc<Mutex<Option<Resolved>>>,
}

/// When a path was resolved, and the file it resolved to (None: it did not).
type Resolved = (Instant, Option<String>);

impl ExeMatcher {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("exe {pattern:?} must be an absolute path"));
        }
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid exe pattern {pattern:?}: {e}"))?
            .compile_matcher();
        Ok(Self { pattern: pattern.to_string(), matcher, target: Default::default() })
    }

    /// Whether `path` (an executable as `/proc/<pid>/exe` names it, symlinks
    /// resolved) matches. An exact path that is a symlink matches its target,
    /// as the kernel decides it at exec.
    pub fn is_match(&self, path: &str) -> bool {
        if self.matcher.is_match(path) {
            return true;
        }
        if !self.is_exact() {
            return false;
        }
        let mut target = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        if target.as_ref().is_none_or(|(at, _)| at.elapsed() >= TARGET_TTL) {
            let resolved = std::fs::canonicalize(&self.pattern).ok().map(|t| t.to_string_lossy().into_owned());
            *target = Some((Instant::now(), resolved));
        }
        target.as_ref().and_then(|(_, t)| t.as_deref()) == Some(path)
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// A plain path, not a pattern.
    pub fn is_exact(&self) -> bool {
        !self.pattern.contains(GLOB_CHARS)
    }

    /// For a glob: the deepest directory all its matches lie under (the
    /// components before the first with a pattern character).
    pub fn glob_root(&self) -> Option<PathBuf> {
        if self.is_exact() {
            return None;
        }
        let mut root = PathBuf::from("/");
        for c in self.pattern.split('/').filter(|c| !c.is_empty()).take_while(|c| !c.contains(GLOB_CHARS)) {
            root.push(c);
        }
        Some(root)
    }

    /// For a glob: the regular files under its root whose path matches
    /// (symlinks are not followed: a process's exe is matched by the path it
    /// resolves to). Visits at most `budget` directory entries, counting
    /// them off; `None` when that was not enough to see them all.
    pub fn matching_files(&self, budget: &mut usize) -> Option<Vec<std::fs::Metadata>> {
        let root = self.glob_root()?;
        let below = self.pattern.split('/').filter(|c| !c.is_empty()).count() - root.components().count() + 1;
        let max_depth = if self.pattern.contains("**") { MAX_GLOB_WALK_DEPTH } else { below };
        let mut out = Vec::new();
        let mut stack = vec![(root, 1)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                *budget = budget.checked_sub(1)?;
                let Ok(t) = e.file_type() else { continue };
                let path = e.path();
                if t.is_dir() && depth < max_depth {
                    stack.push((path, depth + 1));
                } else if t.is_file()
                    && path.to_str().is_some_and(|p| self.matcher.is_match(p))
                    && let Ok(m) = e.metadata()
                {
                    out.push(m);
                }
            }
        }
        Some(out)
    }
}

/// The characters that make an `exe` value a pattern.
const GLOB_CHARS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

/// Deepest a `**` glob's files are looked for below its root.
const MAX_GLOB_WALK_DEPTH: usize = 32;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[derive(Default)]
    pub struct TestFacts {
        pub exe: Option<String>,
        pub uid: Option<u32>,
        pub cgroup: Option<String>,
        pub digest: Option<blake3::Hash>,
        pub digest_asked: u32,
    }

    impl Facts for TestFacts {
        fn exe(&self) -> Option<&str> {
            self.exe.as_deref()
        }
        fn uid(&self) -> Option<u32> {
            self.uid
        }
        fn cgroup(&self) -> Option<&str> {
            self.cgroup.as_deref()
        }
        fn digest(&mut self) -> Option<blake3::Hash> {
            self.digest_asked += 1;
            self.digest
        }
    }

    #[test]
    fn cgroup_glob_semantics() {
        let g = CgroupGlob::new("/zt-agents/**").unwrap();
        assert!(g.is_match("/zt-agents"));
        assert!(g.is_match("/zt-agents/a"));
        assert!(g.is_match("/zt-agents/a/b"));
        assert!(!g.is_match("/zt-agents-evil"));
        assert!(!g.is_match("/other/zt-agents"));
        let one = CgroupGlob::new("/kubepods/*/pod*").unwrap();
        assert!(one.is_match("/kubepods/burstable/pod123"));
        assert!(!one.is_match("/kubepods/burstable/x/pod123"));
        assert!(CgroupGlob::new("relative").is_err());
        assert!(CgroupGlob::new("/a/[").is_err());
    }

    /// The string matchers of literal patterns agree with the compiled glob.
    #[test]
    fn literal_patterns_match_as_the_glob_would() {
        let paths = [
            "/zt-agents",
            "/zt-agents/",
            "/zt-agents/a",
            "/zt-agents/a/b",
            "/zt-agents-evil",
            "/zt-agentsx/a",
            "/",
            "/a.b",
            "/a.b/c",
            "/axb/c",
            "/a",
            "/a/b",
            "/a/b/c",
        ];
        for pattern in ["/zt-agents/**", "/zt-agents", "/a.b/**", "/a/b", "/a/**"] {
            let fast = CgroupGlob::new(pattern).unwrap();
            assert!(!matches!(fast.matcher, CgroupMatcher::Glob { .. }), "{pattern}");
            let glob = GlobBuilder::new(pattern).literal_separator(true).build().unwrap().compile_matcher();
            let base = pattern.strip_suffix("/**");
            for p in paths.iter().filter(|p| !p.ends_with('/') || p.len() == 1) {
                assert_eq!(fast.is_match(p), glob.is_match(p) || base == Some(*p), "{pattern} on {p}");
            }
        }
    }

    #[test]
    fn all_keys_must_match() {
        let sel = Selector { exe: Some(ExeMatcher::new("/usr/bin/*").unwrap()), uid: Some(1000), ..Default::default() };
        let mut f = TestFacts { exe: Some("/usr/bin/python3".into()), uid: Some(1000), ..Default::default() };
        assert!(sel.matches(&mut f));
        f.uid = Some(0);
        assert!(!sel.matches(&mut f));
        f.uid = Some(1000);
        f.exe = Some("/usr/local/bin/python3".into());
        assert!(!sel.matches(&mut f));
        f.exe = None;
        assert!(!sel.matches(&mut f));
    }

    #[test]
    fn an_exact_symlink_matches_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("python3.12"), dir.path().join("python3"));
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let m = ExeMatcher::new(link.to_str().unwrap()).unwrap();
        assert!(m.is_match(target.canonicalize().unwrap().to_str().unwrap()));
        assert!(m.is_match(link.to_str().unwrap()));
        assert!(!m.is_match("/usr/bin/other"));
    }

    #[test]
    fn digest_only_computed_when_needed() {
        let h = blake3::hash(b"x");
        let by_uid = Selector { uid: Some(1), ..Default::default() };
        let by_digest = Selector { exe_digest: Some(h), ..Default::default() };
        let mut f = TestFacts { uid: Some(1), digest: Some(h), ..Default::default() };
        assert!(by_uid.matches(&mut f));
        assert_eq!(f.digest_asked, 0);
        assert!(by_digest.matches(&mut f));
        assert_eq!(f.digest_asked, 1);
        f.digest = Some(blake3::hash(b"y"));
        assert!(!by_digest.matches(&mut f));
    }

    #[test]
    fn descendant_selector_never_matches_self_and_kernel_only_detection() {
        let inner = Selector { exe: Some(ExeMatcher::new("/bin/sh").unwrap()), ..Default::default() };
        let d = Selector { descendant_of: Some(Box::new(inner)), ..Default::default() };
        let mut f = TestFacts { exe: Some("/bin/sh".into()), ..Default::default() };
        assert!(!d.matches(&mut f));
        assert!(d.kernel_cgroup_only().is_none());
        let c = Selector { cgroup: Some(CgroupGlob::new("/a/**").unwrap()), ..Default::default() };
        assert_eq!(c.kernel_cgroup_only().unwrap().as_str(), "/a/**");
        let cu = Selector { uid: Some(0), ..c };
        assert!(cu.kernel_cgroup_only().is_none());
    }
}

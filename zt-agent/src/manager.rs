//! The policy manager: applies bundles to the kernel and keeps their history.
//!
//! # Layout
//! - [`Manager::apply`]: parse -> validate -> evaluate conditions -> compile
//!   for the inactive slot -> write -> switch; a bundle that fails any step
//!   changes nothing and the previous policy stays in force.
//! - [`RuleBook`]: rule names per policy generation, for naming the rule that
//!   decided a kernel event (events carry the generation that decided them).
//! - [`run`]: the task: reload triggers (inotify on the policy paths, SIGHUP,
//!   the control socket), periodic re-evaluation of conditions, rollback.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    bpf::maps::PolicyMaps,
    pipeline::{
        Input,
        enrich::Enricher,
        event::{Body, Event, PolicyChange},
    },
    policy::{self, Bundle, Compiled, IdRegistry, Policy, RuleInfo, compile, conditions, store},
};

/// Generations kept in the rule book (events are enriched within seconds).
const RULEBOOK_KEEP: usize = 64;

/// Rule names by policy generation.
#[derive(Default, Debug)]
pub struct RuleBook(RwLock<BTreeMap<u32, Arc<Vec<RuleInfo>>>>);

impl RuleBook {
    pub fn insert(&self, generation: u32, rules: Arc<Vec<RuleInfo>>) {
        let mut m = self.0.write().expect("poisoned");
        m.insert(generation, rules);
        while m.len() > RULEBOOK_KEEP {
            let first = *m.keys().next().expect("non-empty");
            m.remove(&first);
        }
    }

    pub fn name(&self, generation: u32, rule: u32) -> Option<String> {
        self.0.read().expect("poisoned").get(&generation).and_then(|r| r.get(rule as usize)).map(|r| r.name.clone())
    }
}

/// Requests from the control socket.
pub enum Request {
    Reload { source: String, reply: oneshot::Sender<Result<Outcome, String>> },
    Rollback { version: Option<u64>, reply: oneshot::Sender<Result<Outcome, String>> },
    History { reply: oneshot::Sender<Vec<HistoryEntry>> },
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub version: u64,
    pub digest: String,
    pub generation: u32,
    pub warnings: Vec<String>,
    /// Applying took this long (parse to switch), in microseconds.
    pub micros: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub time: String,
    pub source: String,
    pub digest: String,
    pub files: Vec<String>,
    pub in_force: bool,
}

/// What the rest of the agent needs to know about the policy in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InForce {
    pub version: u64,
    pub digest: String,
    pub generation: u32,
    pub name: String,
    pub trust_domain: String,
    pub files: Vec<String>,
    /// (name, SPIFFE ID)
    pub identities: Vec<(String, String)>,
    /// Every identity id ever assigned -> name (ids are never reused).
    pub ids: BTreeMap<u32, String>,
}

pub struct Manager {
    paths: Vec<PathBuf>,
    ids: IdRegistry,
    store: store::Store,
    maps: PolicyMaps,
    /// The policy in force and which of its rules were active.
    current: Option<(Policy, Vec<bool>)>,
    node_labels: BTreeMap<String, String>,
    rulebook: Arc<RuleBook>,
    input: mpsc::Sender<Input>,
    in_force: Arc<RwLock<InForce>>,
    node: Arc<str>,
}

impl Manager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        paths: Vec<PathBuf>,
        store: store::Store,
        maps: PolicyMaps,
        node_labels: BTreeMap<String, String>,
        rulebook: Arc<RuleBook>,
        input: mpsc::Sender<Input>,
        in_force: Arc<RwLock<InForce>>,
        node: Arc<str>,
    ) -> Self {
        Manager { paths, ids: IdRegistry::default(), store, maps, current: None, node_labels, rulebook, input, in_force, node }
    }

    pub fn ids(&self) -> &IdRegistry {
        &self.ids
    }

    pub fn current_policy(&self) -> Option<Policy> {
        self.current.as_ref().map(|(p, _)| p.clone())
    }

    /// The bundle the configured paths hold now (or the embedded default).
    pub fn read_bundle(&self) -> Result<Bundle, policy::PolicyErrors> {
        if self.paths.is_empty() { Ok(Bundle::embedded_default()) } else { Bundle::read(&self.paths) }
    }

    /// Parses, validates, compiles and switches to `bundle`. On error nothing
    /// in the kernel changes. `record` adds a history version.
    pub async fn apply(&mut self, bundle: Bundle, source: &str, record: bool) -> Result<(Outcome, Policy), String> {
        let started = std::time::Instant::now();
        let policy = bundle.parse().map_err(|e| e.to_string())?;
        let mut ids = self.ids.clone();
        ids.assign(&policy).map_err(|e| e.to_string())?;
        let inputs = conditions::Inputs::current(self.node_labels.clone());
        let (active, problems) = conditions::evaluate(&policy, &inputs);
        for p in &problems {
            tracing::warn!("{p}");
        }
        let slot = self.maps.target_slot().map_err(|e| format!("{e:#}"))?;
        let compiled: Compiled = compile::compile(&policy, &ids, slot, &active).map_err(|e| e.to_string())?;
        tokio::time::sleep(self.maps.grace_remaining()).await;
        let generation = self.maps.active().map_err(|e| format!("{e:#}"))?.generation + 1;
        // Names first: an event decided by the new generation may be read
        // before this function returns.
        self.rulebook.insert(generation, Arc::new(compiled.rules.clone()));
        let active_now = self.maps.install(&compiled).map_err(|e| format!("{e:#}"))?;
        debug_assert_eq!(active_now.generation, generation);
        let micros = started.elapsed().as_micros() as u64;
        self.ids = ids;

        let version = if record {
            match self.store.record(source.to_string(), bundle.clone()) {
                Ok(a) => a.version,
                Err(e) => {
                    tracing::warn!("policy applied but not recorded in history: {e:#}");
                    self.store.current().map(|a| a.version).unwrap_or(0)
                }
            }
        } else {
            self.store.current().map(|a| a.version).unwrap_or(0)
        };
        let digest = bundle.digest().to_hex().to_string();
        *self.in_force.write().expect("poisoned") = InForce {
            version,
            digest: digest.clone(),
            generation: active_now.generation,
            name: policy.name.clone(),
            trust_domain: policy.trust_domain.clone(),
            files: bundle.files.iter().map(|(n, _)| n.clone()).collect(),
            identities: policy.identities.iter().map(|i| (i.name.clone(), i.spiffe_id.clone())).collect(),
            ids: self.ids.names().map(|(n, id)| (id, n.to_string())).collect(),
        };
        let config = Arc::new(policy::identity_config(&policy, &self.ids));
        let _ = self.input.send(Input::Identities(config)).await;
        let warnings: Vec<String> = policy.warnings.iter().map(|w| w.to_string()).collect();
        self.current = Some((policy.clone(), active));
        Ok((Outcome { version, digest, generation: active_now.generation, warnings, micros }, policy))
    }

    async fn emit(&self, change: PolicyChange) {
        let ev =
            Event { time: Enricher::wall_time(crate::host::boottime_ns()), node: self.node.clone(), body: Body::Policy { policy: change } };
        let _ = self.input.send(Input::Emit(Box::new(ev))).await;
    }

    /// Applies and reports (log + event), for every trigger.
    pub async fn apply_and_report(&mut self, bundle: Bundle, source: &str, action: &'static str) -> Result<Outcome, String> {
        let digest = bundle.digest().to_hex().to_string();
        match self.apply(bundle.clone(), source, true).await {
            Ok((o, _)) => {
                tracing::info!(
                    "policy v{} applied ({source}): blake3:{} generation {} in {} us",
                    o.version,
                    o.digest,
                    o.generation,
                    o.micros
                );
                for w in &o.warnings {
                    tracing::warn!("policy warning: {w}");
                }
                self.emit(PolicyChange {
                    action,
                    source: source.to_string(),
                    version: Some(o.version),
                    digest,
                    generation: Some(o.generation),
                    files: bundle.files.iter().map(|(n, _)| n.clone()).collect(),
                    errors: vec![],
                    warnings: o.warnings.clone(),
                })
                .await;
                Ok(o)
            }
            Err(e) => {
                self.reject(source, digest, bundle.files.iter().map(|(n, _)| n.clone()).collect(), &e).await;
                Err(e)
            }
        }
    }

    /// Logs a rejected bundle and emits its `policy` event; nothing changed.
    async fn reject(&self, source: &str, digest: String, files: Vec<String>, errors: &str) {
        tracing::error!("policy rejected ({source}); the previous policy stays in force:\n{errors}");
        self.emit(PolicyChange {
            action: "rejected",
            source: source.to_string(),
            version: None,
            digest,
            generation: None,
            files,
            errors: errors.lines().map(str::to_string).collect(),
            warnings: vec![],
        })
        .await;
    }

    async fn reload(&mut self, source: &str) -> Result<Outcome, String> {
        let bundle = self.read_bundle().map_err(|e| e.to_string());
        match bundle {
            Ok(b) => {
                if self.store.current().is_some_and(|c| c.digest == b.digest().to_hex().to_string()) {
                    tracing::debug!("policy unchanged ({source})");
                    let c = self.in_force.read().expect("poisoned").clone();
                    return Ok(Outcome { version: c.version, digest: c.digest, generation: c.generation, warnings: vec![], micros: 0 });
                }
                self.apply_and_report(b, source, "applied").await
            }
            Err(e) => {
                self.reject(source, String::new(), self.paths.iter().map(|p| p.display().to_string()).collect(), &e).await;
                Err(e)
            }
        }
    }

    async fn rollback(&mut self, version: Option<u64>) -> Result<Outcome, String> {
        let target = match version {
            Some(v) => self.store.get(v).cloned().ok_or_else(|| format!("no policy version {v} in history"))?,
            None => self.store.previous().cloned().ok_or("no earlier policy version to roll back to")?,
        };
        self.apply_and_report(target.bundle, &format!("rollback to v{}", target.version), "rolled_back").await
    }

    /// Re-evaluates conditions; recompiles when the set of active rules changed.
    async fn reevaluate(&mut self) {
        let Some((policy, active)) = &self.current else { return };
        let inputs = conditions::Inputs::current(self.node_labels.clone());
        let (now, problems) = conditions::evaluate(policy, &inputs);
        for p in &problems {
            tracing::warn!("{p}");
        }
        if &now == active {
            return;
        }
        let Some(bundle) = self.store.current().map(|a| a.bundle.clone()) else { return };
        tracing::info!("rule conditions changed; recompiling");
        if let Err(e) = self.apply(bundle, "conditions", false).await {
            tracing::error!("re-evaluating conditions failed; previous maps stay in force: {e}");
        }
    }

    fn history(&self) -> Vec<HistoryEntry> {
        let current = self.store.current().map(|a| a.version);
        self.store
            .list()
            .iter()
            .map(|a| HistoryEntry {
                version: a.version,
                time: a.time.clone(),
                source: a.source.clone(),
                digest: a.digest.clone(),
                files: a.bundle.files.iter().map(|(n, _)| n.clone()).collect(),
                in_force: Some(a.version) == current,
            })
            .collect()
    }
}

/// Directories to watch for the policy paths (a file's parent, so editors'
/// rename-over and Kubernetes ConfigMap `..data` swaps are seen).
fn watch_dirs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() })
                    .unwrap_or_else(|| PathBuf::from("/"))
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// nix's `Inotify` offers `AsFd`; tokio's `AsyncFd` wants `AsRawFd`.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// The manager task. Ends when `stop` turns true.
pub async fn run(mut m: Manager, mut requests: mpsc::Receiver<Request>, mut stop: watch::Receiver<bool>, reevaluate_every: Duration) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = if m.paths.is_empty() {
        None
    } else {
        match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(ino) => {
                let flags = AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM;
                for d in watch_dirs(&m.paths) {
                    if let Err(e) = ino.add_watch(&d, flags) {
                        tracing::warn!("cannot watch {} for policy changes: {e}", d.display());
                    }
                }
                // SAFETY: the Inotify owns its fd for as long as the AsyncFd owns it.
                match unsafe { tokio::io::unix::AsyncFd::register(InotifyFd(ino)) } {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        tracing::warn!("policy file watching off: {e}");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!("policy file watching off: inotify: {e}");
                None
            }
        }
    };
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("SIGHUP reload off: {e}");
            None
        }
    };
    let mut tick = tokio::time::interval(reevaluate_every);
    tick.tick().await;
    loop {
        let changed = async {
            match &inotify {
                Some(fd) => match fd.readable().await {
                    Ok(mut g) => {
                        let _ = g.get_inner().0.read_events();
                        g.clear_ready();
                    }
                    Err(_) => std::future::pending::<()>().await,
                },
                None => std::future::pending::<()>().await,
            }
        };
        let hupped = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            _ = changed => {
                // Debounce: editors and ConfigMap updates write in several steps.
                tokio::time::sleep(Duration::from_millis(25)).await;
                if let Some(fd) = &inotify {
                    while fd.get_ref().0.read_events().is_ok_and(|e| !e.is_empty()) {}
                }
                let _ = m.reload("inotify").await;
            }
            _ = hupped => { let _ = m.reload("SIGHUP").await; }
            _ = tick.tick() => m.reevaluate().await,
            req = requests.recv() => match req {
                Some(Request::Reload { source, reply }) => { let _ = reply.send(m.reload(&source).await); }
                Some(Request::Rollback { version, reply }) => { let _ = reply.send(m.rollback(version).await); }
                Some(Request::History { reply }) => { let _ = reply.send(m.history()); }
                None => break,
            },
        }
    }
}

//! The policy manager: applies bundles to the kernel and keeps their history.
//!
//! # Layout
//! - [`Manager::apply`]: parse -> validate -> evaluate conditions -> compile
//!   for the inactive slot -> install -> flip; a bundle that fails any step
//!   changes nothing and the previous policy stays in force. The kernel
//!   tables are a [`PolicyTarget`] (in-memory in the tests below).
//! - [`Manager::apply_and_report`]: the same, logged and emitted as a
//!   `policy` event (applied, rejected, rolled back).
//! - [`InForce`]: what the rest of the agent reads about the policy in force.
//! - [`triggers`]: the task: reload triggers (inotify on the policy paths,
//!   SIGHUP, the control socket), periodic re-evaluation of conditions,
//!   rollback, history.
mod triggers;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use triggers::run;

use crate::{
    host::{boottime_ns, wall_time},
    pipeline::{
        Input,
        event::{Body, Event, PolicyAction, PolicyChange},
    },
    policy::{
        self, Bundle, CompileError, Compiled, IdRegistry, Policy, PolicyErrors, RuleBook, compile,
        conditions::{self, Inputs},
        objects, store,
        target::{PolicyTarget, TargetError, target_slot},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Every problem of the files, one `file:line:col: message` per line.
    #[error(transparent)]
    Invalid(#[from] PolicyErrors),
    #[error("assigning identity ids")]
    Ids(#[source] CompileError),
    #[error("compiling for the kernel")]
    Compile(#[source] CompileError),
    #[error("writing the policy into the kernel")]
    Target(#[from] TargetError),
    #[error("no policy version {0} in history")]
    NoSuchVersion(u64),
    #[error("no earlier policy version to roll back to")]
    NoEarlierVersion,
    #[error("reading the policy history")]
    History(#[from] store::StoreError),
    #[error("the policy in force has no identity {0:?}")]
    UnknownIdentity(String),
    #[error("identity {0:?} is not quarantined")]
    NotQuarantined(String),
}

/// Commands for the manager task (from the control socket and the remote API).
pub enum Command {
    Reload {
        source: String,
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
    Rollback {
        version: Option<u64>,
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
    /// Applies a bundle that came from elsewhere than the policy paths
    /// (the remote API); `source` names who sent it.
    Push {
        bundle: Bundle,
        source: String,
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
    History {
        reply: oneshot::Sender<Vec<HistoryEntry>>,
    },
    /// Quarantines (`on`) or releases an identity; `reason` is recorded.
    /// No reply: asked by the anomaly detector, which does not wait.
    Quarantine {
        identity: String,
        on: bool,
        reason: String,
        reply: Option<oneshot::Sender<Result<Outcome, ApplyError>>>,
    },
    /// Evaluates the rule conditions now (their inputs changed: risk).
    Reevaluate,
    /// Continuous verification: do the tables in force hold what was
    /// installed? Ok(None): yes; Ok(Some(what differs)); Err: not known.
    CheckMaps {
        reply: oneshot::Sender<Result<Option<String>, String>>,
    },
    /// Writes the policy in force again (into the other slot, then
    /// switches to it): the repair of tables found changed.
    Reinstall {
        reply: oneshot::Sender<Result<Outcome, ApplyError>>,
    },
}

/// A policy applied (or found already in force).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub version: u64,
    pub digest: String,
    pub generation: u32,
    pub warnings: Vec<String>,
    /// Applying took this long (parse to switch), in microseconds.
    pub micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub time: String,
    pub source: String,
    pub digest: String,
    pub files: Vec<String>,
    pub in_force: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: the quarantined identities cannot be read ({why}); remove the file to release every identity", file.display())]
pub struct QuarantineFileError {
    file: PathBuf,
    why: String,
}

/// What the rest of the agent needs to know about the policy in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Identities whose egress is deny-all until released.
    #[serde(default)]
    pub quarantined: Vec<String>,
}

/// What the manager shares with the rest of the agent.
#[derive(Clone)]
pub struct Shared {
    /// Rule names of each generation, written before the flip.
    pub rulebook: Arc<RuleBook>,
    pub in_force: Arc<RwLock<InForce>>,
    /// The pipeline's queue: new identities and `policy` events.
    pub pipeline: mpsc::Sender<Input>,
    pub node: Arc<str>,
}

/// What rule conditions are evaluated against (the clock, node labels, ...).
pub type InputsFn = Box<dyn Fn() -> Inputs + Send + Sync>;

pub struct Manager {
    paths: Vec<PathBuf>,
    ids: IdRegistry,
    /// Where `ids` is kept across restarts (pinned tables carry the ids).
    ids_file: Option<PathBuf>,
    store: store::Store,
    target: Box<dyn PolicyTarget>,
    /// The policy in force, which of its rules were active, and what its
    /// rule paths named on this host when it was compiled.
    current: Option<(Policy, Vec<bool>, objects::Resolution)>,
    inputs: InputsFn,
    shared: Shared,
    /// Identities under quarantine (their egress deny-all), and the file
    /// that keeps them across restarts.
    quarantined: BTreeSet<String>,
    quarantine_file: Option<PathBuf>,
    /// The agent's own files and socket, denied to every identity.
    protected: policy::protect::Protected,
    /// The generation this manager switched to last and the contents
    /// digest of what it installed for it (see `policy::target::Contents`).
    installed: Option<(u32, blake3::Hash)>,
}

fn file_names(bundle: &Bundle) -> Vec<String> {
    bundle.files.iter().map(|(n, _)| n.clone()).collect()
}

impl Manager {
    /// `paths` empty: the embedded default policy.
    pub fn new(paths: Vec<PathBuf>, store: store::Store, target: Box<dyn PolicyTarget>, inputs: InputsFn, shared: Shared) -> Self {
        Manager {
            paths,
            ids: IdRegistry::default(),
            ids_file: None,
            store,
            target,
            current: None,
            inputs,
            shared,
            quarantined: BTreeSet::new(),
            quarantine_file: None,
            protected: Default::default(),
            installed: None,
        }
    }

    /// Adds the self-protection rules for `protected` to every policy.
    pub fn with_protected(mut self, protected: policy::protect::Protected) -> Self {
        self.protected = protected;
        self
    }

    /// Keeps the quarantined identities in `file` and starts with those it
    /// holds. A file that cannot be read is an error (failing closed: the
    /// agent does not start with its quarantines forgotten).
    pub fn with_quarantine_file(mut self, file: PathBuf) -> Result<Self, QuarantineFileError> {
        self.quarantined = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| QuarantineFileError { file: file.clone(), why: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(QuarantineFileError { file, why: e.to_string() }),
        };
        self.quarantine_file = Some(file);
        Ok(self)
    }

    /// Starts from `ids` (adopted tables) and keeps them in `file`.
    pub fn with_ids(mut self, ids: IdRegistry, file: Option<PathBuf>) -> Self {
        self.ids = ids;
        self.ids_file = file;
        self
    }

    pub fn ids(&self) -> &IdRegistry {
        &self.ids
    }

    pub fn current_policy(&self) -> Option<&Policy> {
        self.current.as_ref().map(|(p, _, _)| p)
    }

    /// The bundle the configured paths hold now (or the embedded default).
    pub fn read_bundle(&self) -> Result<Bundle, PolicyErrors> {
        if self.paths.is_empty() { Ok(Bundle::embedded_default()) } else { Bundle::read(&self.paths) }
    }

    /// Parses, validates, compiles and switches to `bundle`. On error nothing
    /// in the kernel changes. `record` adds a history version.
    pub async fn apply(&mut self, bundle: Bundle, source: &str, record: bool) -> Result<Outcome, ApplyError> {
        let policy = bundle.parse()?;
        self.apply_parsed(bundle, policy, source, record).await
    }

    /// [`Self::apply`] of a bundle already parsed into `policy`.
    async fn apply_parsed(&mut self, bundle: Bundle, mut policy: Policy, source: &str, record: bool) -> Result<Outcome, ApplyError> {
        let started = std::time::Instant::now();
        policy::quarantine(&mut policy, &self.quarantined);
        policy::protect::protect(&mut policy, &self.protected);
        let mut ids = self.ids.clone();
        ids.assign(&policy).map_err(ApplyError::Ids)?;
        let active = self.evaluate_conditions(&policy, record)?;
        let slot = target_slot(self.target.active()?);
        let mut compiled: Compiled = compile::compile(&policy, &ids, slot, &active).map_err(ApplyError::Compile)?;
        objects::resolve(&mut compiled, &policy, &objects::HostLookup).map_err(ApplyError::Compile)?;
        tokio::time::sleep(self.target.grace_remaining()).await;
        let generation = self.target.active()?.generation + 1;
        // Names first: an event decided by the new generation may be read
        // before this function returns.
        self.shared.rulebook.insert(generation, &compiled.rules);
        let contents = compiled.contents();
        self.target.install(&compiled)?;
        let now = self.target.flip(slot)?;
        debug_assert_eq!(now.generation, generation);
        self.installed = Some((now.generation, contents));
        let micros = started.elapsed().as_micros() as u64;
        if let Some(f) = self.ids_file.as_ref().filter(|f| ids != self.ids || !f.exists()) {
            // The kernel now holds these ids; a restart adopting the tables needs them.
            if let Err(e) = ids.save(f) {
                tracing::error!("identity ids not saved (a restart cannot adopt the pinned tables): {}", crate::error::Chain(&e));
            }
        }
        self.ids = ids;

        let version = match record {
            true => self.record(source, &bundle),
            false => self.store.current().map(|a| a.version).unwrap_or(0),
        };
        let digest = bundle.digest().to_hex().to_string();
        *self.shared.in_force.write().expect("poisoned") = InForce {
            version,
            digest: digest.clone(),
            generation: now.generation,
            name: policy.name.clone(),
            trust_domain: policy.trust_domain.clone(),
            files: file_names(&bundle),
            identities: policy.identities.iter().map(|i| (i.name.clone(), i.spiffe_id.clone())).collect(),
            ids: self.ids.names().map(|(n, id)| (id, n.to_string())).collect(),
            quarantined: self.quarantined.iter().filter(|q| policy.identity(q).is_some()).cloned().collect(),
        };
        let config = Arc::new(policy::identity_config(&policy, &self.ids));
        let _ = self.shared.pipeline.send(Input::Identities(config)).await;
        let mut warnings: Vec<String> = policy.warnings.iter().map(|w| w.to_string()).collect();
        warnings.extend(compiled.unresolved.iter().map(|u| {
            format!(
                "rule {:?}: {} names nothing on this host ({}); it matches nothing until it exists (rule paths are looked up again every {} s)",
                u.rule,
                u.path,
                u.reason,
                triggers::RULE_PATHS_EVERY.as_secs()
            )
        }));
        self.current = Some((policy, active, compiled.resolution));
        Ok(Outcome { version, digest, generation: now.generation, warnings, micros })
    }

    /// The active rules. A condition over its budget rejects a new bundle
    /// (`new`); on re-evaluation of the bundle in force it fails closed
    /// like a condition that errs (logged).
    fn evaluate_conditions(&self, policy: &Policy, new: bool) -> Result<Vec<bool>, ApplyError> {
        let ev = conditions::evaluate(policy, &(self.inputs)());
        let over = ev.over_budget();
        if new && !over.is_empty() {
            return Err(ApplyError::Invalid(PolicyErrors(over)));
        }
        for d in over.iter().chain(&ev.errors()) {
            tracing::warn!("{d}");
        }
        Ok(ev.active())
    }

    /// Adds a history version; a policy in force that could not be recorded
    /// is logged, not undone.
    fn record(&mut self, source: &str, bundle: &Bundle) -> u64 {
        match self.store.record(source.to_string(), bundle.clone()) {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!("policy applied but not recorded in history: {}", crate::error::Chain(&e));
                self.store.current().map(|a| a.version).unwrap_or(0)
            }
        }
    }

    async fn emit(&self, change: PolicyChange) {
        let ev = Event { time: wall_time(boottime_ns()), node: self.shared.node.clone(), body: Body::Policy { policy: change } };
        let _ = self.shared.pipeline.send(Input::Emit(Box::new(ev))).await;
    }

    /// Applies and reports (log + event), for every trigger.
    pub async fn apply_and_report(&mut self, bundle: Bundle, source: &str, action: PolicyAction) -> Result<Outcome, ApplyError> {
        let parsed = bundle.parse();
        self.report(bundle, parsed, source, action).await
    }

    /// [`Self::apply_and_report`] of a bundle the caller has parsed already
    /// (the agent's start validates it before it loads anything).
    pub async fn apply_parsed_and_report(
        &mut self,
        bundle: Bundle,
        policy: Policy,
        source: &str,
        action: PolicyAction,
    ) -> Result<Outcome, ApplyError> {
        self.report(bundle, Ok(policy), source, action).await
    }

    async fn report(
        &mut self,
        bundle: Bundle,
        parsed: Result<Policy, PolicyErrors>,
        source: &str,
        action: PolicyAction,
    ) -> Result<Outcome, ApplyError> {
        let digest = bundle.digest().to_hex().to_string();
        let applied = match parsed {
            Ok(policy) => self.apply_parsed(bundle.clone(), policy, source, true).await,
            Err(e) => Err(e.into()),
        };
        match applied {
            Ok(o) => {
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
                    files: file_names(&bundle),
                    errors: vec![],
                    warnings: o.warnings.clone(),
                })
                .await;
                // Compiling freed the previous policy's structures.
                crate::host::release_free_memory();
                Ok(o)
            }
            Err(e) => {
                self.reject(source, digest, file_names(&bundle), &e).await;
                Err(e)
            }
        }
    }

    /// Logs a rejected bundle and emits its `policy` event; nothing changed.
    async fn reject(&self, source: &str, digest: String, files: Vec<String>, error: &ApplyError) {
        let text = crate::error::chain(error);
        tracing::error!("policy rejected ({source}); the previous policy stays in force:\n{text}");
        self.emit(PolicyChange {
            action: PolicyAction::Rejected,
            source: source.to_string(),
            version: None,
            digest,
            generation: None,
            files,
            errors: text.lines().map(str::to_string).collect(),
            warnings: vec![],
        })
        .await;
    }

    /// Re-reads the policy paths and applies what changed.
    pub async fn reload(&mut self, source: &str) -> Result<Outcome, ApplyError> {
        let bundle = match self.read_bundle() {
            Ok(b) => b,
            Err(e) => {
                let files = self.paths.iter().map(|p| p.display().to_string()).collect();
                let e = ApplyError::Invalid(e);
                self.reject(source, String::new(), files, &e).await;
                return Err(e);
            }
        };
        if self.store.current().is_some_and(|c| c.digest == bundle.digest().to_hex().to_string()) {
            tracing::debug!("policy unchanged ({source})");
            let c = self.shared.in_force.read().expect("poisoned").clone();
            return Ok(Outcome { version: c.version, digest: c.digest, generation: c.generation, warnings: vec![], micros: 0 });
        }
        self.apply_and_report(bundle, source, PolicyAction::Applied).await
    }

    /// Re-applies a version from history (default: the one before the current).
    pub async fn rollback(&mut self, version: Option<u64>) -> Result<Outcome, ApplyError> {
        let target = match version {
            Some(v) => self.store.get(v)?.ok_or(ApplyError::NoSuchVersion(v))?,
            None => self.store.previous()?.ok_or(ApplyError::NoEarlierVersion)?,
        };
        self.apply_and_report(target.bundle, &format!("rollback to v{}", target.version), PolicyAction::RolledBack).await
    }

    /// Whether the tables in force still hold what this manager installed:
    /// the generation switched to, and the slot's contents read back.
    pub fn check_maps(&self) -> Result<Option<String>, String> {
        let Some((generation, installed)) = self.installed else { return Ok(None) };
        let active = self.target.active().map_err(|e| crate::error::chain(&e))?;
        if active.generation != generation {
            return Ok(Some(format!(
                "generation {} (slot {}) is in force, not generation {generation}, the last this agent switched to",
                active.generation, active.slot
            )));
        }
        let found = self.target.contents(active.slot).map_err(|e| crate::error::chain(&e))?;
        Ok((found != installed).then(|| {
            format!(
                "slot {} (generation {generation}) does not hold what was installed: contents blake3 {} read back, {} installed",
                active.slot,
                found.to_hex(),
                installed.to_hex()
            )
        }))
    }

    /// Installs the policy in force again and switches to it.
    pub async fn reinstall(&mut self) -> Result<Outcome, ApplyError> {
        let bundle = self.store.current().map(|a| a.bundle.clone()).ok_or(ApplyError::NoEarlierVersion)?;
        self.apply(bundle, "integrity repair", false).await
    }

    /// Re-evaluates conditions; recompiles when the set of active rules changed.
    pub async fn reevaluate(&mut self) {
        let Some((policy, active, _)) = &self.current else { return };
        if self.evaluate_conditions(policy, false).ok().as_ref() == Some(active) {
            return;
        }
        let Some(bundle) = self.store.current().map(|a| a.bundle.clone()) else { return };
        tracing::info!("rule conditions changed; recompiling");
        if let Err(e) = self.apply(bundle, "conditions", false).await {
            tracing::error!("re-evaluating conditions failed; previous maps stay in force: {}", crate::error::chain(&e));
        }
    }

    /// Compiles the policy in force again when one of its rule paths names
    /// another object on this host than when it was compiled: a file
    /// created since, removed, or replaced by a new inode (an editor's
    /// rename-over, a package upgrade). File rules are keyed by object,
    /// so until then the rule stays with the old one.
    pub async fn recheck_rule_paths(&mut self) {
        let Some((_, _, resolution)) = &self.current else { return };
        let Some((path, was, now)) = objects::changed(resolution, &objects::HostLookup) else { return };
        let Some(bundle) = self.store.current().map(|a| a.bundle.clone()) else { return };
        let name = |o: Option<objects::ObjectId>| o.map_or("nothing".to_string(), |(dev, ino)| format!("device {dev:#x} inode {ino}"));
        tracing::info!("rule path {path} names {} now ({} when compiled); recompiling", name(now), name(was));
        if let Err(e) = self.apply(bundle, "rule paths", false).await {
            tracing::error!("recompiling for the rule paths failed; previous maps stay in force: {}", crate::error::chain(&e));
        }
    }

    /// Quarantines or releases `identity` and compiles the policy in force
    /// again; recorded as a `policy` event with `reason` as its source.
    pub async fn quarantine(&mut self, identity: &str, on: bool, reason: &str) -> Result<Outcome, ApplyError> {
        if on && self.current_policy().and_then(|p| p.identity(identity)).is_none() {
            return Err(ApplyError::UnknownIdentity(identity.into()));
        }
        if !on && !self.quarantined.contains(identity) {
            return Err(ApplyError::NotQuarantined(identity.into()));
        }
        if on && self.quarantined.contains(identity) {
            // Already in force (another finding of the same identity).
            let c = self.shared.in_force.read().expect("poisoned").clone();
            return Ok(Outcome { version: c.version, digest: c.digest, generation: c.generation, warnings: vec![], micros: 0 });
        }
        let Some(bundle) = self.store.current().map(|a| a.bundle.clone()) else {
            return Err(ApplyError::NoEarlierVersion);
        };
        let before = self.quarantined.clone();
        if on {
            self.quarantined.insert(identity.into());
        } else {
            self.quarantined.remove(identity);
        }
        let outcome = match self.apply(bundle.clone(), reason, false).await {
            Ok(o) => o,
            Err(e) => {
                self.quarantined = before;
                tracing::error!("quarantine of {identity} not changed; the previous maps stay in force: {}", crate::error::chain(&e));
                return Err(e);
            }
        };
        if let Some(f) = &self.quarantine_file {
            let json = serde_json::to_vec(&self.quarantined).expect("a set of strings serialises");
            if let Err(e) = crate::fsutil::write_atomic(f, &json) {
                tracing::error!("quarantines in force but not saved (a restart would forget the change): {}", crate::error::Chain(&e));
            }
        }
        let action = if on { PolicyAction::Quarantined } else { PolicyAction::Released };
        tracing::warn!("identity {identity} {}: {reason}", if on { "quarantined (egress deny-all)" } else { "released from quarantine" });
        self.emit(PolicyChange {
            action,
            source: format!("identity {identity}: {reason}"),
            version: Some(outcome.version),
            digest: outcome.digest.clone(),
            generation: Some(outcome.generation),
            files: file_names(&bundle),
            errors: vec![],
            warnings: vec![],
        })
        .await;
        Ok(outcome)
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        let current = self.store.current().map(|a| a.version);
        self.store
            .list()
            .iter()
            .map(|v| HistoryEntry {
                version: v.version,
                time: v.time.clone(),
                source: v.source.clone(),
                digest: v.digest.clone(),
                files: v.files.clone(),
                in_force: Some(v.version) == current,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

//! Live anomaly detection in the daemon: each watched identity learns a
//! baseline from its own processes, calibrates a threshold for the policy's
//! false-positive rate, then scores every thread's calls as they arrive.
//!
//! # Parts
//! - [`Baseline`]: a trained [`Model`], the scale of each scorer on the
//!   calibration traces, those traces' combined scores (a threshold for any
//!   rate comes from them) and the executables it learnt (path -> blake3);
//!   one versioned file per identity, written atomically.
//! - [`Detector`]: the identities whose policy has an `anomaly:` block,
//!   each learning or detecting; per-thread streams while detecting.
//!   [`Detector::batch`] takes one kernel batch and may answer with an
//!   [`Outcome`]: a [`Detection`] (the finding, with its evidence) or a
//!   [`BaselineNote`] (learnt, loaded, started again).
//! - [`Watch`]: the detector in the pipeline: telemetry turned on and off
//!   with the identities watched, and a finding's response carried out by
//!   a [`Responder`] (quarantine through the policy manager, kill).
//! - [`Board`]: what the rest of the daemon reads: each identity's phase
//!   and live risk (`input.identity.risk` for rule conditions, `status`).
//!
//! # Phases
//! Learning keeps each thread's calls as one trace until the identity has
//! `learnCalls` calls in at least [`min_traces`] traces (enough that the
//! calibration half can show the false-positive rate); then a seeded half
//! of the traces trains the model and the other half calibrates it: each
//! calibration trace's highest n-gram surprise and frequency distance, put
//! on standard scales, the higher of the two its combined score. The
//! threshold lets `falsePositiveRate` of those traces alert. Detecting, a
//! thread's score is the same combined score of its latest windows (20
//! calls for the n-gram model, 100 for the call mix, every 50 calls); the
//! first window above the threshold is its finding (one per thread). A
//! process whose executable the baseline learnt under another digest
//! starts the learning again (an upgraded binary behaves anew); an
//! executable the baseline never saw is scored like any other.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

use super::{
    eval::{self, Standard},
    model::{self, Model, ModelError},
    ngram::Stream,
    record::{Batches, TelemetrySwitch, TelemetryUser, in_order},
};
use crate::{
    identity::{IdentityConfig, digest::DigestCache},
    policy::model::{Anomaly, AnomalyMode},
};

pub const BASELINE_FORMAT: &str = "zt-anomaly-baseline";
pub const BASELINE_VERSION: u32 = 1;
/// Traces (threads) a baseline needs at least: half train, half calibrate.
pub const MIN_TRACES: usize = 20;
/// At most this many are asked for by [`min_traces`].
pub const MAX_MIN_TRACES: usize = 2_000;

/// Traces learning waits for: twice the number for which the calibration
/// half holds one trace above the threshold at `false_positive_rate` (a
/// threshold from fewer is the calibration's maximum, and lets through
/// more false positives than asked).
pub fn min_traces(false_positive_rate: f64) -> usize {
    ((2.0 / false_positive_rate).ceil() as usize).clamp(MIN_TRACES, MAX_MIN_TRACES)
}
/// Calls one learning thread contributes at most (a long-running thread
/// must not be the whole baseline).
pub const MAX_TRACE_CALLS: usize = 200_000;
/// Threads scored at once across identities; beyond, new threads are
/// counted per identity (`unscored_threads` in `status`) and not scored.
pub const MAX_THREADS: usize = 65_536;
/// How long after a process's exit its threads are finished: a batch of
/// calls waits at most `BATCH_MAX_AGE_NS` (250 ms) in a CPU the thread left,
/// and the pipeline polls every few ms.
pub const EXIT_GRACE_NS: u64 = 1_000_000_000;
/// A batch is scored once the kernel's clock is this far past its first
/// call: by then the thread's earlier batches, held in the CPUs it left
/// (at most `BATCH_MAX_AGE_NS`, 250 ms), have come. What a finding costs
/// in delay.
pub const REORDER_NS: u64 = 300_000_000;
/// How long a high window keeps an identity's risk up.
pub const RISK_HOLD_NS: u64 = 60_000_000_000;
/// The least deviation each scorer's scale gets: processes that all do the
/// same thing (a loop of the same commands) calibrate to a deviation near
/// zero, which would make any small variation (the kernel reporting a
/// thread's calls from two CPUs in the other order) an alert. One bit of
/// mean surprise per call; a tenth of the call-mix distance's range.
pub const MIN_SURPRISE_DEVIATION: f64 = 1.0;
pub const MIN_FREQUENCY_DEVIATION: f64 = 0.1;
/// The calibration split's seed (fixed: the same traces, the same baseline).
const SEED: u64 = 0x5eed;
/// Evidence items of each kind in a finding.
const EVIDENCE: usize = 3;

/// Which scorer a combined score came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scorer {
    /// The n-gram model: the order of the calls.
    Ngram,
    /// The call mix, whatever the order.
    Frequency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub format: String,
    pub version: u32,
    pub identity: String,
    /// RFC 3339 time it was learnt.
    pub learnt: String,
    pub model: Model,
    pub surprise: Standard,
    pub frequency: Standard,
    /// Combined scores of the calibration traces.
    pub calibration: Vec<f64>,
    /// Executables of the processes learnt: path -> blake3 hex.
    pub executables: BTreeMap<String, String>,
}

impl Baseline {
    /// Trains on a seeded half of `traces`, calibrates on the other half.
    pub fn learn(identity: &str, traces: Vec<Vec<u32>>, executables: BTreeMap<String, String>, learnt: String) -> Baseline {
        let (train, calibration) = eval::split(traces, SEED, 0.5);
        let model = Model::train(
            train.iter().map(Vec::as_slice),
            model::DEFAULT_ORDER.into(),
            model::DEFAULT_WINDOW as usize,
            model::DEFAULT_FREQUENCY_WINDOW as usize,
        );
        let scores: Vec<_> = calibration.iter().map(|t| model.score(t)).collect();
        let surprise = Standard::of(&scores.iter().map(|s| s.surprise).collect::<Vec<_>>()).at_least(MIN_SURPRISE_DEVIATION);
        let frequency = Standard::of(&scores.iter().map(|s| s.frequency).collect::<Vec<_>>()).at_least(MIN_FREQUENCY_DEVIATION);
        let mut b = Baseline {
            format: BASELINE_FORMAT.into(),
            version: BASELINE_VERSION,
            identity: identity.into(),
            learnt,
            model,
            surprise,
            frequency,
            calibration: Vec::new(),
            executables,
        };
        b.calibration = scores.iter().map(|s| b.combined(s.surprise, Some(s.frequency)).0).collect();
        b
    }

    /// The alert threshold for a false-positive rate.
    pub fn threshold(&self, rate: f64) -> f64 {
        eval::threshold(&self.calibration, rate)
    }

    /// The combined score of a window: the higher standard score, and whose.
    pub fn combined(&self, surprise: f64, frequency: Option<f64>) -> (f64, Scorer) {
        let n = self.surprise.z(surprise);
        match frequency.map(|f| self.frequency.z(f)) {
            Some(f) if f > n => (f, Scorer::Frequency),
            _ => (n, Scorer::Ngram),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        model::save_json(path, self)
    }

    pub fn load(path: &Path) -> Result<Baseline, ModelError> {
        model::load_versioned(path, BASELINE_FORMAT, BASELINE_VERSION)
    }
}

/// A finding: the fields of a `detection` event besides the process and
/// identity.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// The combined score (standard units of the calibration traces).
    pub score: f64,
    pub threshold: f64,
    /// The scorer that gave the score.
    pub scorer: Scorer,
    /// The window's mean surprise per call (bits) and its call mix's
    /// distance to the nearest baseline window (0 to 1.414; None before
    /// the thread made a window of calls).
    pub surprise_bits: f64,
    pub frequency_distance: Option<f64>,
    /// The identity's risk after this finding (1.0).
    pub risk: f64,
    /// What the policy says to do: "alert", "quarantine" or "kill".
    pub response: &'static str,
    /// What was done: filled in by the daemon ("alerted", "identity
    /// quarantined", "process killed", or why it failed).
    pub outcome: String,
    pub evidence: Evidence,
    /// Calls and traces the baseline learnt.
    pub baseline_calls: u64,
    pub baseline_traces: usize,
}

/// What a person reads to judge a finding.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    /// The window's most surprising sequences (order calls, named).
    pub sequences: Vec<Sequence>,
    /// The calls of the last frequency window the baseline made least.
    pub syscalls: Vec<CallShare>,
    /// The last calls scored, oldest first, named.
    pub recent: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sequence {
    pub calls: Vec<String>,
    /// -log2 of the last call's probability after the ones before.
    pub surprise_bits: f64,
    /// Times the baseline saw the whole sequence.
    pub baseline_count: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallShare {
    pub call: String,
    /// Times in the window.
    pub count: u32,
    /// Its share of the baseline's calls (0: never made).
    pub baseline_share: f64,
}

/// A baseline learnt, loaded or started again (a `baseline` event).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BaselineNote {
    /// "learnt", "loaded", "learning" (no baseline yet, or a new one started).
    pub state: &'static str,
    pub reason: String,
    pub calls: u64,
    pub traces: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl BaselineNote {
    /// A note of an identity with no baseline in use.
    fn starting(state: &'static str, reason: String) -> Self {
        BaselineNote { state, reason, calls: 0, traces: 0, threshold: None, file: None }
    }
}

/// One batch's or exit's result.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A thread of `identity` crossed the threshold; `kill` and
    /// `quarantine` are for the daemon to carry out.
    /// `exe`: the program the process ran, as far as known; `exited`: the
    /// finding came after the process's exit (nothing to kill: its pid may
    /// be another process's by now).
    Detection {
        identity: u32,
        tgid: u32,
        tid: u32,
        exe: Option<Arc<str>>,
        exited: bool,
        detection: Box<Detection>,
    },
    Baseline {
        identity: u32,
        note: BaselineNote,
    },
}

/// An identity's anomaly state as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityAnomaly {
    /// "learning", "detecting" or "learnt (mode learn)".
    pub phase: String,
    /// Calls learnt so far (learning) or in the baseline.
    pub calls: u64,
    pub traces: usize,
    pub threshold: Option<f64>,
    pub risk: f64,
    pub findings: u64,
    /// Threads of the identity not scored: the detector held
    /// [`MAX_THREADS`] already.
    #[serde(default)]
    pub unscored_threads: u64,
}

/// Shared with the policy manager (risk) and the control socket (status).
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<RwLock<BTreeMap<String, IdentityAnomaly>>>);

impl Board {
    pub fn risks(&self) -> HashMap<String, f64> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, a)| (n.clone(), a.risk)).collect()
    }

    pub fn snapshot(&self) -> BTreeMap<String, IdentityAnomaly> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, name: &str, a: IdentityAnomaly) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(name.into(), a);
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).retain(|n, _| keep(n));
    }
}

/// A thread's learning: its batches are put in the order of their first
/// calls before they are learnt, as a recording's are.
#[derive(Default)]
struct Learning {
    /// (tgid, tid) -> (calls kept, batches).
    traces: HashMap<(u32, u32), (usize, Batches)>,
    calls: u64,
    executables: BTreeMap<String, String>,
}

enum Phase {
    Learning(Learning),
    Detecting { baseline: Arc<Baseline>, threshold: f64 },
}

struct Watched {
    name: String,
    settings: Anomaly,
    phase: Phase,
    /// Highest risk of a recent window, and when (boot ns).
    risk: (f64, u64),
    findings: u64,
    unscored: u64,
}

/// One thread being scored.
struct Thread {
    identity: u32,
    stream: Stream,
    /// The last frequency-window calls, oldest first.
    recent: VecDeque<u32>,
    since_frequency: usize,
    frequency: Option<f64>,
    scored: bool,
    alerted: bool,
    /// Batches not scored yet (see [`Detector::release`]).
    held: Batches,
}

impl Thread {
    /// A thread's state after `calls` (none for a new thread), not scored.
    fn resuming(identity: u32, m: &Model, calls: &[u32]) -> Thread {
        let mut stream = Stream::new(m.window);
        for &c in calls {
            stream.push(&m.ngrams, c);
        }
        let fw = model::DEFAULT_FREQUENCY_WINDOW as usize;
        let mut recent = VecDeque::with_capacity(fw);
        recent.extend(&calls[calls.len().saturating_sub(fw)..]);
        // A learnt thread's calls so far count as scored (they are in the
        // baseline): its exit does not score them again.
        let frequency = (!calls.is_empty()).then(|| m.frequencies.score(recent.make_contiguous()));
        let scored = stream.calls_in_window() == m.window;
        Thread { identity, stream, recent, since_frequency: 0, frequency, scored, alerted: false, held: Vec::new() }
    }
}

pub struct Detector {
    /// Where baselines are kept (`<identity>.json`); None: memory only.
    dir: Option<PathBuf>,
    watched: HashMap<u32, Watched>,
    threads: BTreeMap<(u32, u32), Thread>,
    /// Processes that ended: (when to finish them, tgid), in order.
    ending: VecDeque<(u64, u32)>,
    /// Processes whose executable was checked, and which it was (an exec
    /// changes it).
    checked: HashMap<u32, Arc<str>>,
    digests: DigestCache,
    board: Board,
}

impl Detector {
    pub fn new(dir: Option<PathBuf>, board: Board) -> Self {
        Detector {
            dir,
            watched: HashMap::new(),
            threads: BTreeMap::new(),
            ending: VecDeque::new(),
            checked: HashMap::new(),
            digests: DigestCache::default(),
            board,
        }
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Whether `identity` has an `anomaly:` block in force.
    pub fn watches(&self, identity: u32) -> bool {
        self.watched.contains_key(&identity)
    }

    /// Where `name`'s baseline is kept (`<dir>/<name>.json`).
    fn file(dir: Option<&Path>, name: &str) -> Option<PathBuf> {
        dir.map(|d| d.join(format!("{name}.json")))
    }

    /// The identities of a new policy: those with an `anomaly:` block are
    /// watched (their baseline loaded from its file if there is one),
    /// the others dropped. Returns the ids to turn telemetry on and off,
    /// and a note per identity that starts.
    pub fn set_identities(&mut self, config: &IdentityConfig) -> (Vec<u32>, Vec<u32>, Vec<Outcome>) {
        let wanted: HashMap<u32, (&str, Anomaly)> =
            config.identities.iter().filter_map(|i| Some((i.id, (i.name.as_str(), i.anomaly?)))).collect();
        let off: Vec<u32> = self.watched.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in &off {
            self.watched.remove(id);
        }
        self.threads.retain(|_, t| wanted.contains_key(&t.identity));
        let mut on = Vec::new();
        let mut notes = Vec::new();
        for (&id, &(name, settings)) in &wanted {
            if let Some(w) = self.watched.get_mut(&id) {
                w.settings = settings;
                if let Phase::Detecting { baseline, threshold } = &mut w.phase {
                    *threshold = baseline.threshold(settings.false_positive_rate);
                }
                continue;
            }
            on.push(id);
            let (phase, note) = self.start(name, settings);
            notes.push(Outcome::Baseline { identity: id, note });
            self.watched.insert(id, Watched { name: name.into(), settings, phase, risk: (0.0, 0), findings: 0, unscored: 0 });
        }
        self.board.retain(|n| wanted.values().any(|(w, _)| *w == n));
        for id in wanted.keys() {
            self.publish(*id);
        }
        (on, off, notes)
    }

    /// The phase an identity starts in: its saved baseline, else learning.
    fn start(&self, name: &str, settings: Anomaly) -> (Phase, BaselineNote) {
        let learning = |reason: String| (Phase::Learning(Learning::default()), BaselineNote::starting("learning", reason));
        let Some(file) = Self::file(self.dir.as_deref(), name) else {
            return learning("no state directory: baselines are not kept".into());
        };
        match Baseline::load(&file) {
            Ok(b) if b.identity == name => {
                let threshold = b.threshold(settings.false_positive_rate);
                let note = BaselineNote {
                    state: "loaded",
                    reason: format!("learnt {}", b.learnt),
                    calls: b.model.calls,
                    traces: b.model.traces,
                    threshold: Some(threshold),
                    file: Some(file.display().to_string()),
                };
                (Phase::Detecting { baseline: Arc::new(b), threshold }, note)
            }
            Ok(b) => learning(format!("{} holds the baseline of identity {:?}; learning a new one", file.display(), b.identity)),
            Err(ModelError::Fs(e)) if e.source.kind() == std::io::ErrorKind::NotFound => learning("no baseline yet".into()),
            Err(e) => learning(format!("{}; learning a new one", crate::error::chain(&e).replace('\n', ": "))),
        }
    }

    fn publish(&self, id: u32) {
        let Some(w) = self.watched.get(&id) else { return };
        let (phase, calls, traces, threshold) = match &w.phase {
            Phase::Learning(l) => ("learning".to_string(), l.calls, l.traces.len(), None),
            Phase::Detecting { baseline, threshold } => {
                let phase = match w.settings.mode {
                    AnomalyMode::Detect => "detecting".to_string(),
                    AnomalyMode::Learn => "learnt (mode learn: no findings)".to_string(),
                };
                (phase, baseline.model.calls, baseline.model.traces, Some(*threshold))
            }
        };
        let a = IdentityAnomaly { phase, calls, traces, threshold, risk: w.risk.0, findings: w.findings, unscored_threads: w.unscored };
        self.board.set(&w.name, a);
    }

    /// One kernel batch of thread `tid` of process `tgid` running `exe`,
    /// its first call at `time_ns` (boot clock).
    pub fn batch(&mut self, identity: u32, tgid: u32, tid: u32, time_ns: u64, exe: Option<&Arc<str>>, calls: &[u16]) -> Option<Outcome> {
        let learning = matches!(self.watched.get(&identity)?.phase, Phase::Learning(_));
        if let Some(note) = exe.and_then(|exe| self.check_executable(identity, tgid, exe)) {
            return Some(note);
        }
        if learning { self.learn(identity, tgid, tid, time_ns, calls) } else { self.hold(identity, tgid, tid, time_ns, calls) }
    }

    /// The first batch of a process (and of each program it execs): the
    /// digest of the file at its executable's path, kept while learning,
    /// compared with the baseline's while detecting.
    fn check_executable(&mut self, identity: u32, tgid: u32, exe: &Arc<str>) -> Option<Outcome> {
        if self.checked.get(&tgid) == Some(exe) {
            return None;
        }
        if self.checked.len() >= MAX_THREADS {
            self.checked.clear();
        }
        self.checked.insert(tgid, exe.clone());
        let path = exe.to_string();
        let digest = self.digests.digest_path(Path::new(&path)).ok()?.to_hex().to_string();
        let w = self.watched.get_mut(&identity)?;
        match &mut w.phase {
            Phase::Learning(l) => {
                l.executables.insert(path, digest);
                None
            }
            Phase::Detecting { baseline, .. } => {
                let learnt = baseline.executables.get(&path).filter(|d| **d != digest)?;
                let reason = format!("{path} changed (blake3 {} -> {}); learning a new baseline", short(learnt), short(&digest));
                let mut executables = BTreeMap::new();
                executables.insert(path, digest);
                w.phase = Phase::Learning(Learning { executables, ..Default::default() });
                w.risk = (0.0, 0);
                self.threads.retain(|_, t| t.identity != identity);
                self.publish(identity);
                Some(Outcome::Baseline { identity, note: BaselineNote::starting("learning", reason) })
            }
        }
    }

    fn learn(&mut self, identity: u32, tgid: u32, tid: u32, time_ns: u64, calls: &[u16]) -> Option<Outcome> {
        let w = self.watched.get_mut(&identity)?;
        let Phase::Learning(l) = &mut w.phase else { return None };
        let traces = l.traces.len();
        let (kept, held) = l.traces.entry((tgid, tid)).or_default();
        let room = MAX_TRACE_CALLS.saturating_sub(*kept).min(calls.len());
        if room > 0 {
            held.push((time_ns, calls[..room].to_vec()));
        }
        *kept += room;
        l.calls += room as u64;
        if l.calls < w.settings.learn_calls || l.traces.len() < min_traces(w.settings.false_positive_rate) {
            // `status` follows new traces and every 4096 calls.
            if l.traces.len() > traces || (l.calls - room as u64) / 4096 < l.calls / 4096 {
                self.publish(identity);
            }
            return None;
        }
        let l = std::mem::take(l);
        let threads = l.traces.len();
        let mut traces: Vec<((u32, u32), Vec<u32>)> = l.traces.into_iter().map(|(k, (_, mut b))| (k, in_order(&mut b))).collect();
        traces.sort_unstable_by_key(|(k, _)| *k);
        // Threads still running go on where their trace stops (their next
        // window is not a fresh start); their last calls are kept for that.
        let tails: Vec<((u32, u32), Vec<u32>)> =
            traces.iter().map(|(k, t)| (*k, t[t.len().saturating_sub(model::DEFAULT_FREQUENCY_WINDOW as usize)..].to_vec())).collect();
        let started = std::time::Instant::now();
        let b = Baseline::learn(&w.name, traces.into_iter().map(|(_, t)| t).collect(), l.executables, now_rfc3339());
        let threshold = b.threshold(w.settings.false_positive_rate);
        let mut note = BaselineNote {
            state: "learnt",
            reason: format!("{} calls of {threads} threads, trained and calibrated in {} ms", l.calls, started.elapsed().as_millis()),
            calls: b.model.calls,
            traces: b.model.traces,
            threshold: Some(threshold),
            file: None,
        };
        if let Some(file) = Self::file(self.dir.as_deref(), &w.name) {
            match b.save(&file) {
                Ok(()) => note.file = Some(file.display().to_string()),
                Err(e) => note.reason += &format!("; not saved (learnt again after a restart): {}", crate::error::chain(&e)),
            }
        }
        for ((tgid, tid), tail) in tails {
            if self.threads.len() < MAX_THREADS {
                self.threads.insert((tgid, tid), Thread::resuming(identity, &b.model, &tail));
            }
        }
        w.phase = Phase::Detecting { baseline: Arc::new(b), threshold };
        self.publish(identity);
        Some(Outcome::Baseline { identity, note })
    }

    /// Holds a batch until the thread's batches before it have come
    /// ([`REORDER_NS`] of kernel time later), then scores what is ready.
    fn hold(&mut self, identity: u32, tgid: u32, tid: u32, time_ns: u64, calls: &[u16]) -> Option<Outcome> {
        let Phase::Detecting { baseline, .. } = &self.watched.get(&identity)?.phase else { return None };
        if !self.threads.contains_key(&(tgid, tid)) && self.threads.len() >= MAX_THREADS {
            if let Some(w) = self.watched.get_mut(&identity) {
                w.unscored += 1;
            }
            self.publish(identity);
            return None;
        }
        let baseline = baseline.clone();
        let t = self.threads.entry((tgid, tid)).or_insert_with(|| Thread::resuming(identity, &baseline.model, &[]));
        t.held.push((time_ns, calls.to_vec()));
        self.release((tgid, tid), time_ns.saturating_sub(REORDER_NS))
    }

    /// Scores the held batches of a thread that began before `before`.
    fn release(&mut self, key: (u32, u32), before: u64) -> Option<Outcome> {
        let t = self.threads.get_mut(&key)?;
        t.held.sort_by_key(|(time, _)| *time);
        let ready = t.held.iter().take_while(|(time, _)| *time <= before).count();
        let identity = t.identity;
        let mut outcome = None;
        for (time, calls) in t.held.drain(..ready).collect::<Vec<_>>() {
            let o = self.score(identity, key.0, key.1, time, &calls);
            outcome = outcome.or(o);
        }
        outcome
    }

    fn score(&mut self, identity: u32, tgid: u32, tid: u32, time_ns: u64, calls: &[u16]) -> Option<Outcome> {
        let w = self.watched.get_mut(&identity)?;
        let Phase::Detecting { baseline, threshold } = &w.phase else { return None };
        let (baseline, threshold) = (baseline.clone(), *threshold);
        let m = &baseline.model;
        let t = self.threads.get_mut(&(tgid, tid))?;
        let fw = model::DEFAULT_FREQUENCY_WINDOW as usize;
        let mut peak = f64::NEG_INFINITY;
        let (mut crossed, mut recent) = (None, Vec::new());
        for &c in calls {
            let c = u32::from(c);
            let window = t.stream.push(&m.ngrams, c);
            if t.recent.len() == fw {
                t.recent.pop_front();
            }
            t.recent.push_back(c);
            t.since_frequency += 1;
            let mut fresh = window.is_some();
            if t.recent.len() == fw && (t.frequency.is_none() || t.since_frequency >= fw / 2) {
                t.frequency = Some(m.frequencies.score(t.recent.make_contiguous()));
                t.since_frequency = 0;
                fresh = true;
            }
            if !fresh || window.is_none() && !t.scored {
                continue;
            }
            t.scored = true;
            let surprise = t.stream.current().surprise;
            let (score, scorer) = baseline.combined(surprise, t.frequency);
            peak = peak.max(score);
            if score > threshold && !t.alerted {
                // The evidence is the window that crossed.
                t.alerted = true;
                crossed = Some((score, scorer, surprise, t.frequency));
                recent = t.recent.iter().copied().collect();
            }
        }
        self.finish(identity, tgid, tid, time_ns, peak, crossed, &baseline, threshold, &recent)
    }

    /// A process ended (boot clock `time_ns`). Its threads are finished
    /// [`EXIT_GRACE_NS`] later by [`Detector::expire`]: a thread's last
    /// calls may still sit in the batch of a CPU it ran on before.
    pub fn exit(&mut self, tgid: u32, time_ns: u64) {
        if self.ending.len() < MAX_THREADS {
            self.ending.push_back((time_ns + EXIT_GRACE_NS, tgid));
        }
    }

    /// Finishes the processes that ended [`EXIT_GRACE_NS`] before `now_ns`:
    /// a thread that made fewer calls than a frequency window gets the
    /// score of all it made (as an offline trace would), then its state goes.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Outcome> {
        let mut out = Vec::new();
        let keys: Vec<(u32, u32)> = self.threads.iter().filter(|(_, t)| !t.held.is_empty()).map(|(k, _)| *k).collect();
        for key in keys {
            out.extend(self.release(key, now_ns.saturating_sub(REORDER_NS)));
        }
        while let Some(&(due, tgid)) = self.ending.front()
            && due <= now_ns
        {
            self.ending.pop_front();
            out.extend(self.finish_process(tgid, now_ns));
        }
        out
    }

    fn finish_process(&mut self, tgid: u32, time_ns: u64) -> Vec<Outcome> {
        let ended: Vec<(u32, u32)> = self.threads.range((tgid, 0)..=(tgid, u32::MAX)).map(|(k, _)| *k).collect();
        let mut outcome = Vec::new();
        for &key in &ended {
            outcome.extend(self.release(key, u64::MAX));
        }
        for key in ended {
            let Some(mut t) = self.threads.remove(&key) else { continue };
            let Some(Phase::Detecting { baseline, threshold }) = self.watched.get(&t.identity).map(|w| &w.phase) else { continue };
            if t.alerted || t.frequency.is_some() || t.recent.is_empty() {
                continue;
            }
            let (baseline, threshold) = (baseline.clone(), *threshold);
            let surprise = t.stream.current().surprise;
            let frequency = Some(baseline.model.frequencies.score(t.recent.make_contiguous()));
            let (score, scorer) = baseline.combined(surprise, frequency);
            let crossed = (score > threshold).then_some((score, scorer, surprise, frequency));
            let recent: Vec<u32> = t.recent.iter().copied().collect();
            let mut o = self.finish(t.identity, key.0, key.1, time_ns, score, crossed, &baseline, threshold, &recent);
            if let Some(Outcome::Detection { exited, .. }) = o.as_mut() {
                *exited = true;
            }
            outcome.extend(o);
        }
        self.checked.remove(&tgid);
        outcome
    }

    /// Updates the identity's risk with a window score; builds the finding.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        identity: u32,
        tgid: u32,
        tid: u32,
        time_ns: u64,
        peak: f64,
        crossed: Option<(f64, Scorer, f64, Option<f64>)>,
        baseline: &Baseline,
        threshold: f64,
        recent: &[u32],
    ) -> Option<Outcome> {
        let w = self.watched.get_mut(&identity)?;
        let risk = match crossed {
            Some(_) => 1.0,
            None if threshold > 0.0 => (peak / threshold).clamp(0.0, 1.0),
            None => 0.0,
        };
        let before = w.risk.0;
        if risk >= w.risk.0 || time_ns.saturating_sub(w.risk.1) > RISK_HOLD_NS {
            w.risk = (risk, time_ns);
        }
        let alert = crossed.filter(|_| w.settings.mode == AnomalyMode::Detect);
        let response = w.settings.response.name();
        if alert.is_some() {
            w.findings += 1;
        }
        if alert.is_some() || (w.risk.0 - before).abs() >= 0.05 {
            self.publish(identity);
        }
        let (score, scorer, surprise_bits, frequency_distance) = alert?;
        let detection = Detection {
            score,
            threshold,
            scorer,
            surprise_bits,
            frequency_distance,
            risk: 1.0,
            response,
            outcome: String::new(),
            evidence: evidence(&baseline.model, recent),
            baseline_calls: baseline.model.calls,
            baseline_traces: baseline.model.traces,
        };
        let exe = self.checked.get(&tgid).cloned();
        Some(Outcome::Detection { identity, tgid, tid, exe, exited: false, detection: Box::new(detection) })
    }
}

/// What carries out a finding's response besides the alert.
pub trait Responder: Send + Sync {
    /// Switches the identity's egress to deny-all (the policy manager).
    fn quarantine(&self, identity: &str, reason: &str) -> Result<(), String>;
    /// SIGKILL to the process.
    fn kill(&self, tgid: u32) -> Result<(), String>;
    /// The risk of an identity changed: rule conditions are evaluated again.
    fn risk_changed(&self);
}

/// The detector, owned by the pipeline, with the kernel switch for its
/// telemetry and what carries out its responses.
pub struct Watch {
    pub detector: Detector,
    pub telemetry: Arc<dyn TelemetrySwitch>,
    pub responder: Arc<dyn Responder>,
}

impl Watch {
    /// A new policy's identities: telemetry on for the identities that
    /// start being watched and off for those that stop; a note for each
    /// that starts (or whose telemetry could not be turned on).
    pub fn set_identities(&mut self, config: &IdentityConfig) -> Vec<Outcome> {
        let (on, off, mut notes) = self.detector.set_identities(config);
        for id in off {
            if let Err(e) = self.telemetry.set(id, TelemetryUser::Detector, false) {
                tracing::warn!("turning syscall telemetry off for identity id {id}: {e}");
            }
        }
        for id in on {
            if let Err(e) = self.telemetry.set(id, TelemetryUser::Detector, true) {
                let reason = format!("syscall telemetry could not be turned on, nothing is scored: {e}");
                tracing::error!("identity id {id}: {reason}");
                notes.push(Outcome::Baseline { identity: id, note: BaselineNote::starting("not watched", reason) });
            }
        }
        notes
    }

    /// Carries out the response of a finding of `name`'s process `tgid`
    /// (`exited`: it is gone) and says what was done in `d.outcome`.
    pub fn respond(&self, name: &str, tgid: u32, exited: bool, d: &mut Detection) {
        let reason = format!("anomaly in process {tgid}: score {:.2} above threshold {:.2} ({:?})", d.score, d.threshold, d.scorer);
        d.outcome = match d.response {
            "quarantine" => match self.responder.quarantine(name, &reason) {
                Ok(()) => "quarantine requested: egress deny-all until `zt-agent identity release`".into(),
                Err(e) => format!("quarantine failed: {e}"),
            },
            "kill" if exited => "nothing killed: the process had exited".into(),
            "kill" => match self.responder.kill(tgid) {
                Ok(()) => "process killed".into(),
                Err(e) => format!("kill failed: {e}"),
            },
            _ => "alerted".into(),
        };
        self.responder.risk_changed();
    }
}

/// The most surprising sequences of the last window of `recent`, and the
/// calls of `recent` the baseline made least.
pub fn evidence(model: &Model, recent: &[u32]) -> Evidence {
    let order = model.ngrams.order();
    let start = recent.len().saturating_sub(model.window);
    let mut sequences: Vec<Sequence> = (start..recent.len())
        .map(|i| {
            let from = i.saturating_sub(order - 1);
            let history: VecDeque<u32> = recent[from..i].iter().copied().collect();
            let step = model.ngrams.step(&history, recent[i]);
            Sequence {
                calls: recent[from..=i].iter().map(|&c| call_name(c)).collect(),
                surprise_bits: step.surprise,
                baseline_count: model.ngrams.count(&recent[from..=i]),
            }
        })
        .collect();
    sequences.sort_by(|a, b| b.surprise_bits.total_cmp(&a.surprise_bits));
    sequences.dedup_by(|a, b| a.calls == b.calls);
    sequences.truncate(EVIDENCE);
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for &c in recent {
        *counts.entry(c).or_default() += 1;
    }
    let total = model.calls.max(1) as f64;
    let mut syscalls: Vec<CallShare> = counts
        .into_iter()
        .map(|(c, count)| CallShare { call: call_name(c), count, baseline_share: f64::from(model.ngrams.count(&[c])) / total })
        .collect();
    syscalls.sort_by(|a, b| a.baseline_share.total_cmp(&b.baseline_share).then(b.count.cmp(&a.count)));
    syscalls.truncate(EVIDENCE);
    Evidence { sequences, syscalls, recent: recent[start..].iter().map(|&c| call_name(c)).collect() }
}

/// A token's name: the x86_64 syscall, `io_uring:OPCODE` for an io_uring
/// submission, else the number.
pub fn call_name(token: u32) -> String {
    let base = u32::from(zt_common::syscalls::IORING_BASE);
    if token >= base {
        return format!("io_uring:{}", token - base);
    }
    syscalls::x86_64::Sysno::new(token as usize).map_or_else(|| token.to_string(), |s| s.name().to_string())
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn now_rfc3339() -> String {
    crate::host::wall_time(crate::host::boottime_ns()).to_string()
}

#[cfg(test)]
mod tests;

//! An identity's baseline: the n-gram model of its processes' syscall
//! traces and the frequency vectors of their windows, and its file.
//!
//! - [`Model::train`]: learns every trace's n-grams and window frequencies.
//! - [`Model::score`]: a trace's scores, each the highest over its sliding
//!   windows (a trace shorter than a window: its calls so far).
//! - [`Model::save`], [`Model::load`]: a versioned JSON file, replaced
//!   atomically; a file of another format or version is refused by name.
//! - [`evaluate`]: normal and attack traces against a model, with
//!   thresholds from a seeded calibration half of the normal traces.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    eval::{self, Report},
    freq::Frequencies,
    ngram::{Ngrams, Stream},
};
use crate::fsutil::{self, FsError};

pub const FORMAT: &str = "zt-anomaly-model";
pub const VERSION: u32 = 2;
/// Defaults: order 6 (the strongest cheap scorer in comparable
/// experiments, see the README), 20-call windows; frequency windows of
/// 100 calls.
pub const DEFAULT_ORDER: u16 = 6;
pub const DEFAULT_WINDOW: u32 = 20;
pub const DEFAULT_FREQUENCY_WINDOW: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub version: u32,
    /// Calls per scoring window.
    pub window: usize,
    /// Traces and calls learnt.
    pub traces: usize,
    pub calls: u64,
    pub ngrams: Ngrams,
    pub frequencies: Frequencies,
}

/// A trace's scores: each scorer's highest window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceScore {
    /// Mean surprise per call over `window` calls, in bits.
    pub surprise: f64,
    /// Share of the window's order-length sequences never seen (stide).
    pub unseen: f64,
    /// Distance of the call mix to the nearest baseline window's.
    pub frequency: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: not a model file: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{}: a {format:?} file, not a {expected:?} one", path.display())]
    Format { path: PathBuf, format: String, expected: &'static str },
    #[error("{}: {expected} version {found}; this agent reads version {reads} (learn or train it again)", path.display())]
    Version { path: PathBuf, found: u32, expected: &'static str, reads: u32 },
}

/// Writes `value` as JSON, replacing `path` atomically (its directory
/// created if missing).
pub fn save_json(path: &Path, value: &impl Serialize) -> Result<(), ModelError> {
    let json = serde_json::to_vec(value).map_err(|source| ModelError::Json { path: path.into(), source })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fsutil::at("creating", dir))?;
    }
    Ok(fsutil::write_atomic(path, &json)?)
}

/// Reads a JSON file whose `format` and `version` fields must be these.
pub fn load_versioned<T: serde::de::DeserializeOwned>(path: &Path, format: &'static str, version: u32) -> Result<T, ModelError> {
    let bytes = std::fs::read(path).map_err(fsutil::at("reading", path))?;
    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let json = |source| ModelError::Json { path: path.into(), source };
    let h: Header = serde_json::from_slice(&bytes).map_err(json)?;
    if h.format != format {
        return Err(ModelError::Format { path: path.into(), format: h.format, expected: format });
    }
    if h.version != version {
        return Err(ModelError::Version { path: path.into(), found: h.version, expected: format, reads: version });
    }
    serde_json::from_slice(&bytes).map_err(json)
}

impl Model {
    pub fn train<'a>(traces: impl IntoIterator<Item = &'a [u32]> + Clone, order: usize, window: usize, frequency_window: usize) -> Model {
        let mut ngrams = Ngrams::new(order);
        let (mut count, mut calls) = (0, 0u64);
        for t in traces.clone() {
            ngrams.learn(t);
            count += 1;
            calls += t.len() as u64;
        }
        let frequencies = Frequencies::train(traces, frequency_window);
        Model { format: FORMAT.into(), version: VERSION, window: window.max(1), traces: count, calls, ngrams, frequencies }
    }

    /// The trace's scores (each scorer's own highest window).
    pub fn score(&self, calls: &[u32]) -> TraceScore {
        let mut stream = Stream::new(self.window);
        let (mut surprise, mut unseen) = (0.0_f64, 0.0_f64);
        let mut full = false;
        for &c in calls {
            if let Some(w) = stream.push(&self.ngrams, c) {
                full = true;
                surprise = surprise.max(w.surprise);
                unseen = unseen.max(w.unseen);
            }
        }
        if !full && stream.calls_in_window() > 0 {
            (surprise, unseen) = (stream.current().surprise, stream.current().unseen);
        }
        TraceScore { surprise, unseen, frequency: self.frequencies.score(calls) }
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        save_json(path, self)
    }

    pub fn load(path: &Path) -> Result<Model, ModelError> {
        load_versioned(path, FORMAT, VERSION)
    }
}

/// `model eval`'s result: the n-gram scorer's figures at the top level,
/// every scorer's under `scorers`, and the sizes of the sets.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    #[serde(flatten)]
    pub primary: Report,
    pub scorers: Scorers,
    pub seed: u64,
    pub normal_calibration: usize,
    pub normal_held_out: usize,
    pub attack: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scorers {
    /// Mean surprise per call over a window (bits), highest window.
    pub ngram: Report,
    /// Share of a window's order-length sequences never seen (stide).
    pub stide: Report,
    /// Distance of a window's call mix to the nearest baseline window's.
    pub frequency: Report,
    /// The higher of the n-gram and frequency scores, each first put on
    /// the calibration half's scale (standard scores).
    pub combined: Report,
}

/// Scores `normal` and `attack` traces; thresholds from a seeded half of
/// `normal` (never from `attack`), rates on the other half and on `attack`.
pub fn evaluate(model: &Model, normal: Vec<Vec<u32>>, attack: &[Vec<u32>], seed: u64) -> Evaluation {
    let (calibration, held_out) = eval::split(normal, seed, 0.5);
    let scores = |set: &[Vec<u32>]| set.iter().map(|t| model.score(t)).collect::<Vec<_>>();
    let (c, h, a) = (scores(&calibration), scores(&held_out), scores(attack));
    let of = |s: &[TraceScore], f: &dyn Fn(&TraceScore) -> f64| s.iter().map(f).collect::<Vec<f64>>();
    let report = |f: &dyn Fn(&TraceScore) -> f64| Report::new(&of(&c, f), &of(&h, f), &of(&a, f));
    let (zs, zf) = (eval::Standard::of(&of(&c, &|s| s.surprise)), eval::Standard::of(&of(&c, &|s| s.frequency)));
    let ngram = report(&|s| s.surprise);
    Evaluation {
        primary: ngram.clone(),
        scorers: Scorers {
            ngram,
            stide: report(&|s| s.unseen),
            frequency: report(&|s| s.frequency),
            combined: report(&|s| zs.z(s.surprise).max(zf.z(s.frequency))),
        },
        seed,
        normal_calibration: calibration.len(),
        normal_held_out: held_out.len(),
        attack: attack.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_trace_scores_its_calls_so_far_and_an_empty_one_zero() {
        let normal: Vec<u32> = [1, 2, 3].repeat(20);
        let m = Model::train([normal.as_slice()], 3, 20, 100);
        assert_eq!(m.score(&[]), TraceScore { surprise: 0.0, unseen: 0.0, frequency: 0.0 });
        assert!(m.score(&[9, 9, 9]).surprise > m.score(&[1, 2, 3]).surprise);
    }

    #[test]
    fn files_round_trip_and_other_versions_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        let m = Model::train([[1u32, 2, 3, 1, 2, 4].as_slice()], 3, 4, 4);
        m.save(&p).unwrap();
        let back = Model::load(&p).unwrap();
        assert_eq!(back.score(&[1, 2, 4, 4]), m.score(&[1, 2, 4, 4]));
        assert_eq!((back.traces, back.calls), (1, 6));
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("\"version\":2", "\"version\":9")).unwrap();
        let e = Model::load(&p).unwrap_err().to_string();
        assert!(e.ends_with("zt-anomaly-model version 9; this agent reads version 2 (learn or train it again)"), "{e}");
        std::fs::write(&p, r#"{"format":"other","version":1}"#).unwrap();
        assert!(Model::load(&p).unwrap_err().to_string().contains("a \"other\" file"));
        std::fs::write(&p, "[").unwrap();
        assert!(Model::load(&p).unwrap_err().to_string().contains("not a model file"));
    }

    #[test]
    fn evaluation_separates_a_behaviour_never_seen() {
        // Normal: two programs' loops with some variation; attack: a loop
        // of calls in an order normal never shows.
        let normal: Vec<Vec<u32>> = (0..40u32).map(|i| [0, 1, 2, 3, i % 3 + 4, 1].repeat(10 + i as usize % 5)).collect();
        let (train, test) = eval::split(normal, 1, 0.5);
        let m = Model::train(train.iter().map(Vec::as_slice), 6, 10, 30);
        let attack: Vec<Vec<u32>> = (0..10).map(|_| [3, 2, 1, 0, 9, 8].repeat(5)).collect();
        let e = evaluate(&m, test, &attack, 42);
        assert_eq!((e.normal_calibration, e.normal_held_out, e.attack), (10, 10, 10));
        assert_eq!(e.primary.auc, 1.0);
        assert_eq!(e.primary.dr_at_1pct, 1.0);
        assert_eq!(e.primary.fpr_at_1pct, 0.0);
        let json = serde_json::to_value(&e).unwrap();
        for key in ["auc", "dr_at_1pct", "fpr_at_1pct", "dr_at_5pct", "fpr_at_5pct"] {
            assert!(json[key].is_number(), "{key} in {json}");
        }
        for scorer in ["ngram", "stide", "frequency", "combined"] {
            assert!(json["scorers"][scorer]["auc"].is_number(), "{scorer} in {json}");
        }
        // The attack's call mix is new too (calls 8 and 9).
        assert_eq!(e.scorers.frequency.auc, 1.0);
    }
}

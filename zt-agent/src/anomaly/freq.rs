//! The frequency scorer: which calls a stretch of a trace makes and how
//! often, whatever their order, against the baseline's stretches.
//!
//! - [`Frequencies`]: the baseline: the training calls' vocabulary and the
//!   distinct frequency vectors of their windows (sparse counts in the
//!   file), with a smartcore `CoverTree` over them built at load.
//! - A window's vector is the square root of each call's share of it
//!   (unknown calls share one extra dimension), so the Euclidean distance
//!   between two windows is sqrt(2) times their Hellinger distance, 0 for
//!   the same mix, 1.414 for nothing in common.
//! - [`Frequencies::score`]: the highest, over a trace's windows, of the
//!   distance to the nearest baseline window: smartcore's cover tree, and a
//!   linear scan where the tree answers nothing (smartcore 0.4's `find`
//!   returns no neighbour when the tree is a single point).
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use smartcore::{algorithm::neighbour::cover_tree::CoverTree, metrics::distance::euclidian::Euclidian};

/// At most this many baseline windows are kept (evenly spaced among the
/// distinct ones): bounds the file and the search.
pub const MAX_BASELINE: usize = 5000;

/// A window as (dimension, count) pairs, dimensions ascending.
type Sparse = Vec<(u16, u16)>;

#[derive(Serialize, Deserialize)]
struct FrequenciesFile {
    window: usize,
    vocabulary: Vec<u32>,
    baseline: Vec<Sparse>,
}

#[derive(Serialize, Deserialize)]
#[serde(try_from = "FrequenciesFile", into = "FrequenciesFile")]
pub struct Frequencies {
    window: usize,
    vocabulary: Vec<u32>,
    dims: HashMap<u32, u16>,
    baseline: Vec<Sparse>,
    tree: Option<CoverTree<Vec<f64>, Euclidian<f64>>>,
}

impl std::fmt::Debug for Frequencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frequencies {{ window: {}, vocabulary: {}, baseline: {} }}", self.window, self.vocabulary.len(), self.baseline.len())
    }
}

impl Clone for Frequencies {
    fn clone(&self) -> Self {
        Frequencies::build(self.window, self.vocabulary.clone(), self.baseline.clone())
    }
}

impl TryFrom<FrequenciesFile> for Frequencies {
    type Error = String;
    fn try_from(f: FrequenciesFile) -> Result<Self, String> {
        let dims = f.vocabulary.len() + 1;
        if dims > usize::from(u16::MAX) || f.baseline.iter().flatten().any(|&(d, _)| usize::from(d) >= dims) {
            return Err("frequency baseline: a dimension beyond the vocabulary".into());
        }
        Ok(Frequencies::build(f.window, f.vocabulary, f.baseline))
    }
}

impl From<Frequencies> for FrequenciesFile {
    fn from(f: Frequencies) -> Self {
        FrequenciesFile { window: f.window, vocabulary: f.vocabulary, baseline: f.baseline }
    }
}

impl Frequencies {
    fn build(window: usize, vocabulary: Vec<u32>, baseline: Vec<Sparse>) -> Self {
        let dims: HashMap<u32, u16> = vocabulary.iter().enumerate().map(|(i, &c)| (c, i as u16)).collect();
        let n = vocabulary.len() + 1;
        let dense: Vec<Vec<f64>> = baseline.iter().map(|s| dense(s, n)).collect();
        // CoverTree::new fails only on no data.
        let tree = (!dense.is_empty()).then(|| CoverTree::new(dense, Euclidian::new()).ok()).flatten();
        Frequencies { window, vocabulary, dims, baseline, tree }
    }

    /// The baseline of `traces`: every window (half a window apart) of
    /// `window` calls; a trace shorter than that is one window.
    pub fn train<'a>(traces: impl IntoIterator<Item = &'a [u32]> + Clone, window: usize) -> Self {
        let window = window.max(1);
        let mut vocabulary: Vec<u32> = traces.clone().into_iter().flatten().copied().collect();
        vocabulary.sort_unstable();
        vocabulary.dedup();
        vocabulary.truncate(usize::from(u16::MAX) - 1);
        let dims: HashMap<u32, u16> = vocabulary.iter().enumerate().map(|(i, &c)| (c, i as u16)).collect();
        let mut seen: Vec<Sparse> =
            traces.into_iter().flat_map(|t| windows(t, window).map(|w| sparse(w, &dims)).collect::<Vec<_>>()).collect();
        seen.sort_unstable();
        seen.dedup();
        let step = seen.len().div_ceil(MAX_BASELINE).max(1);
        let baseline = seen.into_iter().step_by(step).collect();
        Frequencies::build(window, vocabulary, baseline)
    }

    pub fn baseline_len(&self) -> usize {
        self.baseline.len()
    }

    /// The highest distance of one of the trace's windows to its nearest
    /// baseline window (0 for an empty trace; the maximum, sqrt(2), with
    /// no baseline).
    pub fn score(&self, calls: &[u32]) -> f64 {
        let n = self.vocabulary.len() + 1;
        windows(calls, self.window)
            .map(|w| {
                let s = sparse(w, &self.dims);
                let tree = self.tree.as_ref().and_then(|t| t.find(&dense(&s, n), 1).ok()?.first().map(|(_, d, _)| *d));
                tree.unwrap_or_else(|| self.nearest_by_scan(&s))
            })
            .fold(0.0, f64::max)
    }

    /// The distance to the nearest baseline window, by trying every one
    /// (sqrt(2) with no baseline).
    fn nearest_by_scan(&self, s: &Sparse) -> f64 {
        let v = dense(s, self.vocabulary.len() + 1);
        self.baseline
            .iter()
            .map(|b| dense(b, v.len()).iter().zip(&v).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt())
            .fold(std::f64::consts::SQRT_2, f64::min)
    }
}

/// The windows of `calls`, half a window apart; the whole trace when it is
/// shorter than one; none when it is empty.
fn windows(calls: &[u32], window: usize) -> impl Iterator<Item = &[u32]> {
    let step = (window / 2).max(1);
    let starts = if calls.len() <= window { usize::from(!calls.is_empty()) } else { (calls.len() - window) / step + 1 };
    (0..starts).map(move |i| &calls[i * step..(i * step + window).min(calls.len())])
}

fn sparse(window: &[u32], dims: &HashMap<u32, u16>) -> Sparse {
    let other = dims.len() as u16;
    let mut counts: BTreeMap<u16, u16> = BTreeMap::new();
    for c in window {
        let e = counts.entry(dims.get(c).copied().unwrap_or(other)).or_default();
        *e = e.saturating_add(1);
    }
    counts.into_iter().collect()
}

fn dense(s: &Sparse, n: usize) -> Vec<f64> {
    let total: f64 = s.iter().map(|&(_, c)| f64::from(c)).sum::<f64>().max(1.0);
    let mut v = vec![0.0; n];
    for &(d, c) in s {
        v[usize::from(d)] = (f64::from(c) / total).sqrt();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_overlap_by_half_and_cover_short_traces() {
        let calls: Vec<u32> = (0..10).collect();
        let w: Vec<&[u32]> = windows(&calls, 4).collect();
        assert_eq!(w, [&calls[0..4], &calls[2..6], &calls[4..8], &calls[6..10]]);
        assert_eq!(windows(&calls[..3], 4).collect::<Vec<_>>(), [&calls[..3]]);
        assert_eq!(windows(&[], 4).count(), 0);
    }

    #[test]
    fn the_same_mix_is_at_zero_and_a_new_one_far() {
        let normal: Vec<u32> = [0, 1, 2, 3].repeat(25);
        let f = Frequencies::train([normal.as_slice()], 16);
        assert_eq!(f.baseline_len(), 1, "every window has the same mix");
        assert!(f.score(&[3, 2, 1, 0].repeat(10)) < 1e-9, "order does not matter");
        // Half the calls unknown: Hellinger distance between (1/4 x4) and
        // (1/8 x4, 1/2 other) is sqrt(1 - 4 * sqrt(1/32)).
        let mixed: Vec<u32> = [0, 1, 2, 3, 9, 9, 9, 9].repeat(5);
        let expect = (2.0 * (1.0 - 4.0 * (1.0f64 / 32.0).sqrt())).sqrt();
        assert!((f.score(&mixed) - expect).abs() < 1e-9, "{} vs {expect}", f.score(&mixed));
        assert_eq!(f.score(&[]), 0.0);
    }

    #[test]
    fn the_cover_tree_finds_the_nearest_window_like_a_scan() {
        // Traces with varied mixes (a fixed pseudo-random walk).
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        let traces: Vec<Vec<u32>> = (0..40).map(|_| (0..60).map(|_| next() % 12).collect()).collect();
        let f = Frequencies::train(traces.iter().map(Vec::as_slice), 20);
        assert!(f.baseline_len() > 100, "{}", f.baseline_len());
        for _ in 0..50 {
            let w: Vec<u32> = (0..20).map(|_| next() % 14).collect();
            let s = sparse(&w, &f.dims);
            let scan = f.nearest_by_scan(&s);
            assert!((f.score(&w) - scan).abs() < 1e-9, "tree {} scan {scan}", f.score(&w));
        }
    }

    #[test]
    fn the_file_form_rebuilds_the_same_scorer() {
        let f = Frequencies::train([[1u32, 2, 3, 1, 2, 3, 4].as_slice(), &[5, 5, 1]], 4);
        let json = serde_json::to_string(&f).unwrap();
        let back: Frequencies = serde_json::from_str(&json).unwrap();
        assert_eq!(back.score(&[1, 4, 4, 5]), f.score(&[1, 4, 4, 5]));
        let bad = json.replacen("[[0,", "[[99,", 1);
        assert!(serde_json::from_str::<Frequencies>(&bad).is_err());
    }
}

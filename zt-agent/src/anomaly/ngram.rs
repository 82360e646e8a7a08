//! The n-gram language model of syscall sequences, and what it says about
//! a sequence: how surprising each call is after the ones before it.
//!
//! - [`Ngrams`]: counts of every n-gram of length 1..=order seen in
//!   training, keyed by a 64-bit hash of its tokens, with each one's count
//!   as a context (how often something followed it, and how many distinct
//!   things did).
//! - [`Ngrams::step`]: a call's probability after its history under
//!   Witten-Bell interpolation (every order mixed in, weighted by how much a
//!   context has seen; never zero, so an unseen call costs a finite, large
//!   surprise), and whether the full-order n-gram was ever seen (stide).
//! - [`Stream`]: one process's calls in order; a sliding window's mean
//!   surprise in bits per call and its rate of unseen n-grams.
//!
//! Cost per call: 2 x order hash lookups (about 12 for order 6).
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One n-gram's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Occurrences of the n-gram.
    pub count: u32,
    /// Occurrences followed by another call (as the context of a longer one).
    pub followed: u32,
    /// Distinct calls that followed it.
    pub types: u32,
}

/// Keys are already hashes: the map uses them as they are.
#[derive(Default, Clone, Copy)]
pub struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type NodeMap = HashMap<u64, Node, std::hash::BuildHasherDefault<PassThrough>>;

/// The key of the empty sequence; [`extend`] adds one token in front.
const EMPTY: u64 = 0x243f_6a88_85a3_08d3;

/// The key of `token` followed by the sequence `key` stands for (keys are
/// built from the last token backwards). splitmix64's finaliser: every
/// input bit moves about half the output bits.
fn extend(key: u64, token: u32) -> u64 {
    let mut z = key ^ (u64::from(token) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the model says about one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// -log2 of the call's probability after its history.
    pub surprise: f64,
    /// The call with its full history (order calls) was never seen in
    /// training; None while the history is shorter than that.
    pub unseen: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "NgramsFile", into = "NgramsFile")]
pub struct Ngrams {
    order: usize,
    nodes: NodeMap,
}

/// The file form: nodes sorted by key (the same model, the same bytes).
#[derive(Serialize, Deserialize)]
struct NgramsFile {
    order: usize,
    nodes: Vec<(u64, Node)>,
}

impl From<NgramsFile> for Ngrams {
    fn from(f: NgramsFile) -> Self {
        Ngrams { order: f.order, nodes: f.nodes.into_iter().collect() }
    }
}

impl From<Ngrams> for NgramsFile {
    fn from(m: Ngrams) -> Self {
        let mut nodes: Vec<_> = m.nodes.into_iter().collect();
        nodes.sort_unstable_by_key(|(k, _)| *k);
        NgramsFile { order: m.order, nodes }
    }
}

impl Ngrams {
    pub fn new(order: usize) -> Self {
        assert!(order >= 1, "an n-gram model has order 1 or more");
        Ngrams { order, nodes: NodeMap::default() }
    }

    pub fn order(&self) -> usize {
        self.order
    }

    /// Distinct n-grams (all lengths) the model holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Distinct calls seen in training.
    pub fn vocabulary(&self) -> u32 {
        self.nodes.get(&EMPTY).map_or(0, |n| n.types)
    }

    /// Counts every n-gram of one trace (lengths 1..=order, each ending at
    /// every call).
    pub fn learn(&mut self, calls: &[u32]) {
        for i in 0..calls.len() {
            let (mut gram, mut context) = (extend(EMPTY, calls[i]), EMPTY);
            for k in 0..self.order.min(i + 1) {
                if k > 0 {
                    gram = extend(gram, calls[i - k]);
                    context = extend(context, calls[i - k]);
                }
                let g = self.nodes.entry(gram).or_default();
                g.count += 1;
                let new = g.count == 1;
                let c = self.nodes.entry(context).or_default();
                c.followed += 1;
                c.types += u32::from(new);
            }
        }
    }

    /// Times the sequence `calls` (oldest first, at most order calls) was
    /// seen in training.
    pub fn count(&self, calls: &[u32]) -> u32 {
        let key = calls.iter().rev().fold(EMPTY, |key, &c| extend(key, c));
        if calls.is_empty() { 0 } else { self.nodes.get(&key).map_or(0, |n| n.count) }
    }

    /// The model's view of `call` after `history` (oldest first; only the
    /// last order - 1 calls count).
    pub fn step(&self, history: &VecDeque<u32>, call: u32) -> Step {
        let base = 1.0 / f64::from(self.vocabulary() + 1);
        let mut p = base;
        let (mut gram, mut context) = (extend(EMPTY, call), EMPTY);
        let depth = self.order.min(history.len() + 1);
        let mut full_seen = false;
        for k in 0..depth {
            if k > 0 {
                let t = history[history.len() - k];
                gram = extend(gram, t);
                context = extend(context, t);
            }
            let Some(c) = self.nodes.get(&context).filter(|c| c.followed > 0) else {
                break; // a longer context contains this one: unseen too
            };
            let seen = self.nodes.get(&gram).map_or(0, |g| g.count);
            let (followed, types) = (f64::from(c.followed), f64::from(c.types));
            p = (f64::from(seen) + types * p) / (followed + types);
            full_seen = k + 1 == self.order && seen > 0;
        }
        let unseen = (depth == self.order).then_some(!full_seen);
        Step { surprise: -p.log2(), unseen }
    }
}

/// One window's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowScore {
    /// Mean surprise per call over the window, in bits.
    pub surprise: f64,
    /// Share of the window's calls whose full-order n-gram was never seen.
    pub unseen: f64,
}

/// A process's calls in order: its recent history and a sliding window of
/// what the model said about them.
#[derive(Debug, Clone)]
pub struct Stream {
    history: VecDeque<u32>,
    window: VecDeque<Step>,
    size: usize,
    surprise_sum: f64,
    unseen_count: usize,
}

impl Stream {
    /// `size`: calls per window (at least 1).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Stream { history: VecDeque::new(), window: VecDeque::with_capacity(size), size, surprise_sum: 0.0, unseen_count: 0 }
    }

    /// Adds a call; the window's scores once it is full.
    pub fn push(&mut self, model: &Ngrams, call: u32) -> Option<WindowScore> {
        let step = model.step(&self.history, call);
        if self.history.len() + 1 >= model.order() {
            self.history.pop_front();
        }
        if model.order() > 1 {
            self.history.push_back(call);
        }
        if self.window.len() == self.size
            && let Some(old) = self.window.pop_front()
        {
            self.surprise_sum -= old.surprise;
            self.unseen_count -= usize::from(old.unseen == Some(true));
        }
        self.surprise_sum += step.surprise;
        self.unseen_count += usize::from(step.unseen == Some(true));
        self.window.push_back(step);
        (self.window.len() == self.size).then(|| self.current())
    }

    /// The scores of what the window holds (a partial window at the start
    /// of a short trace).
    pub fn current(&self) -> WindowScore {
        let n = self.window.len().max(1) as f64;
        WindowScore { surprise: self.surprise_sum / n, unseen: self.unseen_count as f64 / n }
    }

    pub fn calls_in_window(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(calls: &[u32]) -> VecDeque<u32> {
        calls.iter().copied().collect()
    }

    #[test]
    fn counts_follow_the_definition() {
        let mut m = Ngrams::new(2);
        m.learn(&[1, 2, 1, 3]);
        // Empty context: 4 calls followed it, 3 distinct.
        assert_eq!(m.nodes[&EMPTY], Node { count: 0, followed: 4, types: 3 });
        assert_eq!(m.vocabulary(), 3);
        let one = extend(EMPTY, 1);
        // "1": seen twice, followed twice (by 2 and by 3).
        assert_eq!(m.nodes[&one], Node { count: 2, followed: 2, types: 2 });
        assert_eq!(m.nodes[&extend(extend(EMPTY, 2), 1)].count, 1, "the bigram 1 2");
        assert!(!m.nodes.contains_key(&extend(extend(EMPTY, 1), 1)), "1 1 never happened");
        assert_eq!((m.count(&[1, 2]), m.count(&[1]), m.count(&[1, 1]), m.count(&[])), (1, 2, 0, 0));
    }

    #[test]
    fn witten_bell_probabilities_by_hand() {
        let mut m = Ngrams::new(2);
        m.learn(&[1, 2, 1, 3]);
        // Unigram level: P(2) = (1 + 3 * 1/4) / (4 + 3) = 0.25.
        let p2: f64 = (1.0 + 3.0 * 0.25) / 7.0;
        let s = m.step(&history(&[]), 2);
        assert!((s.surprise - -p2.log2()).abs() < 1e-12);
        assert_eq!(s.unseen, None, "no full history yet");
        // After 1: P(2|1) = (1 + 2 * P(2)) / (2 + 2).
        let p21: f64 = (1.0 + 2.0 * p2) / 4.0;
        let s = m.step(&history(&[1]), 2);
        assert!((s.surprise - -p21.log2()).abs() < 1e-12);
        assert_eq!(s.unseen, Some(false));
        // 1 then 1: never seen, still a finite surprise.
        let p1 = (2.0 + 3.0 * 0.25) / 7.0;
        let s = m.step(&history(&[1]), 1);
        assert!((s.surprise - -(2.0 * p1 / 4.0_f64).log2()).abs() < 1e-12);
        assert_eq!(s.unseen, Some(true));
        // A call never seen at all: the base 1/(V+1) mixed down.
        assert!(m.step(&history(&[1]), 99).surprise > m.step(&history(&[1]), 1).surprise);
    }

    #[test]
    fn a_trained_loop_is_unsurprising_and_a_new_sequence_is_not() {
        let normal: Vec<u32> = [0, 1, 2, 3, 4, 5].repeat(50);
        let mut m = Ngrams::new(6);
        m.learn(&normal);
        let score = |calls: &[u32]| {
            let mut s = Stream::new(10);
            calls.iter().filter_map(|&c| s.push(&m, c)).fold(0.0_f64, |a, w| a.max(w.surprise))
        };
        let odd: Vec<u32> = [0, 1, 2, 5, 4, 3].repeat(10);
        assert!(score(&normal) < 0.5, "{}", score(&normal));
        assert!(score(&odd) > 1.0, "{}", score(&odd));
        let mut s = Stream::new(10);
        let last = odd.iter().filter_map(|&c| s.push(&m, c)).last().unwrap();
        assert!(last.unseen > 0.5, "{last:?}");
    }

    #[test]
    fn the_file_form_is_the_same_model() {
        let mut m = Ngrams::new(3);
        m.learn(&[5, 6, 7, 5, 6, 8]);
        let json = serde_json::to_string(&m).unwrap();
        let back: Ngrams = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        let h = history(&[5, 6]);
        assert_eq!(back.step(&h, 8), m.step(&h, 8));
    }
}

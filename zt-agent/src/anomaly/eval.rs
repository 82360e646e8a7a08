//! Measuring a scorer: thresholds for a target false-positive rate set on
//! normal data only, and what they achieve.
//!
//! - [`split`]: a seeded shuffle of the normal traces into a calibration
//!   half and a held-out half (the same seed, the same split everywhere).
//! - [`threshold`]: the score above which at most the target share of the
//!   calibration scores lie.
//! - [`auc`]: the area under the ROC curve (Mann-Whitney, ties counted half).
//! - [`Standard`]: standard scores, to put two scorers on one scale.
//! - [`Report`]: AUC, and detection and achieved false-positive rates at
//!   1% and 5% targets, for one scorer.
use serde::Serialize;

/// splitmix64: a seeded sequence for the shuffle (no cryptographic claim).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Shuffles `items` with `seed` (Fisher-Yates) and splits them: the first
/// `share` (rounded down, at least one when there are two or more) and the
/// rest.
pub fn split<T>(mut items: Vec<T>, seed: u64, share: f64) -> (Vec<T>, Vec<T>) {
    let mut rng = SplitMix(seed);
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    let mut first = ((items.len() as f64) * share) as usize;
    if items.len() >= 2 {
        first = first.clamp(1, items.len() - 1);
    }
    let rest = items.split_off(first.min(items.len()));
    (items, rest)
}

/// The threshold for a target false-positive rate: the lowest calibration
/// score with at most `rate` of the calibration scores strictly above it.
/// An alert is a score strictly above the threshold.
pub fn threshold(calibration: &[f64], rate: f64) -> f64 {
    let mut s: Vec<f64> = calibration.to_vec();
    s.sort_by(f64::total_cmp);
    let Some(&max) = s.last() else { return f64::INFINITY };
    let allowed_above = (rate * s.len() as f64).floor() as usize;
    s.get(s.len() - 1 - allowed_above.min(s.len() - 1)).copied().unwrap_or(max)
}

/// Share of `scores` strictly above `threshold`.
pub fn rate_above(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s > threshold).count() as f64 / scores.len() as f64
}

/// Probability that an attack trace scores above a normal one (ties half).
pub fn auc(normal: &[f64], attack: &[f64]) -> f64 {
    if normal.is_empty() || attack.is_empty() {
        return f64::NAN;
    }
    let mut n: Vec<f64> = normal.to_vec();
    n.sort_by(f64::total_cmp);
    let wins: f64 = attack
        .iter()
        .map(|a| {
            let below = n.partition_point(|x| x < a);
            let equal = n[below..].partition_point(|x| x <= a);
            below as f64 + equal as f64 / 2.0
        })
        .sum();
    wins / (n.len() as f64 * attack.len() as f64)
}

/// Standard scores on a reference set's scale: (x - mean) / deviation
/// (a deviation of 0 counts as 1, so a constant set only shifts).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Standard {
    mean: f64,
    deviation: f64,
}

impl Standard {
    pub fn of(reference: &[f64]) -> Self {
        let n = reference.len().max(1) as f64;
        let mean = reference.iter().sum::<f64>() / n;
        let var = reference.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Standard { mean, deviation: if var > 0.0 { var.sqrt() } else { 1.0 } }
    }

    /// The same scale with a deviation of at least `floor`.
    pub fn at_least(self, floor: f64) -> Self {
        Standard { deviation: self.deviation.max(floor), ..self }
    }

    pub fn z(&self, x: f64) -> f64 {
        (x - self.mean) / self.deviation
    }
}

/// One scorer's figures (`model eval --json` prints these names).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub auc: f64,
    pub dr_at_1pct: f64,
    pub fpr_at_1pct: f64,
    pub threshold_1pct: f64,
    pub dr_at_5pct: f64,
    pub fpr_at_5pct: f64,
    pub threshold_5pct: f64,
}

impl Report {
    /// Thresholds from `calibration`; rates on `held_out` and `attack`;
    /// AUC of `held_out` against `attack`.
    pub fn new(calibration: &[f64], held_out: &[f64], attack: &[f64]) -> Self {
        let (t1, t5) = (threshold(calibration, 0.01), threshold(calibration, 0.05));
        Report {
            auc: auc(held_out, attack),
            dr_at_1pct: rate_above(attack, t1),
            fpr_at_1pct: rate_above(held_out, t1),
            threshold_1pct: t1,
            dr_at_5pct: rate_above(attack, t5),
            fpr_at_5pct: rate_above(held_out, t5),
            threshold_5pct: t5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 0.0);
        // 3 beats 1 and 2, ties 3 (half), loses to 4: (2 + 0.5) / 4 of one attack.
        assert_eq!(auc(&[1.0, 2.0, 3.0, 4.0], &[3.0]), 2.5 / 4.0);
    }

    #[test]
    fn thresholds_leave_at_most_the_target_share_above() {
        let cal: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(threshold(&cal, 0.01), 99.0);
        assert_eq!(rate_above(&cal, 99.0), 0.01);
        assert_eq!(threshold(&cal, 0.05), 95.0);
        assert_eq!(threshold(&cal, 0.0), 100.0);
        // Ten calibration scores: 1% of them is no score, so the maximum.
        let few: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(threshold(&few, 0.01), 10.0);
        assert_eq!(threshold(&[], 0.01), f64::INFINITY);
    }

    #[test]
    fn the_split_is_seeded_and_covers_everything_once() {
        let (a, b) = split((0..10).collect(), 7, 0.5);
        assert_eq!((a.len(), b.len()), (5, 5));
        assert_eq!(split((0..10).collect::<Vec<_>>(), 7, 0.5), (a.clone(), b.clone()));
        assert_ne!(split((0..10).collect::<Vec<_>>(), 8, 0.5).0, a);
        let mut all: Vec<i32> = a.into_iter().chain(b).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(split(vec![1, 2], 1, 0.0).0.len(), 1, "at least one on each side");
    }
}

//! Percentile-bootstrap confidence intervals, resampled in parallel with one RNG stream per
//! resample so the result does not depend on scheduling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::roc::{auc_from_counts, counts_from_order, descending_order};
use super::*;
use crate::Result;

/// A percentile-bootstrap confidence interval around a point estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceInterval {
    /// The metric on the full data.
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// Resamples on which the metric was defined and used.
    pub n_used: usize,
}

/// 95% percentile-bootstrap intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapCis {
    pub n_resamples: usize,
    pub seed: u64,
    pub confidence: f64,
    pub threshold: f64,
    pub roc_auc: ConfidenceInterval,
    pub sensitivity: ConfidenceInterval,
    pub specificity: ConfidenceInterval,
    pub accuracy: ConfidenceInterval,
    /// Resamples lacking one class, left out of the AUC interval (and, for the class they
    /// lack, of the sensitivity or specificity interval).
    pub skipped_one_class: usize,
}

#[derive(Debug, Clone, Copy)]
struct ResampleStats {
    auc: Option<f64>,
    sensitivity: Option<f64>,
    specificity: Option<f64>,
    accuracy: f64,
}

/// The RNG of resample `i`: one ChaCha key from `seed`, one stream per resample, so that a
/// resample's draws depend only on `(seed, i)` and not on how rayon schedules the work.
pub(super) fn resample_rng(seed: u64, i: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i as u64);
    rng
}

/// NumPy's default (`"linear"`) percentile of sorted data, `q` in `[0, 100]`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q / 100.0;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let (a, b, t) = (sorted[lo], sorted[hi], h - lo as f64);
    // NumPy's `_lerp`, which interpolates from the nearer end for accuracy.
    if t >= 0.5 {
        b - (b - a) * (1.0 - t)
    } else {
        a + (b - a) * t
    }
}

pub(super) fn interval(
    estimate: f64,
    mut values: Vec<f64>,
    confidence: f64,
    what: &str,
) -> Result<ConfidenceInterval> {
    if values.is_empty() {
        return Err(bad(format!(
            "no bootstrap resample had the classes {what} needs; the data set is too small"
        )));
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0 * 100.0;
    Ok(ConfidenceInterval {
        estimate,
        lower: percentile(&values, tail),
        upper: percentile(&values, 100.0 - tail),
        n_used: values.len(),
    })
}

/// Seeded 95% percentile-bootstrap intervals for ROC AUC, and for sensitivity,
/// specificity and accuracy at `threshold`.
///
/// Each of `n_resamples` resamples draws `n` indices uniformly with replacement from a
/// ChaCha8 stream keyed by `seed` (stream `i` for resample `i`), so the result is the
/// same for a seed whatever the thread count. A metric that a resample leaves undefined
/// (AUC without both classes, sensitivity without malignant, specificity without benign
/// samples) is left out of that metric's interval rather than counted as 0; see
/// [`ConfidenceInterval::n_used`] and [`BootstrapCis::skipped_one_class`]. Needs both
/// classes in the data and `n_resamples >= 1`.
pub fn bootstrap_ci(
    labels: &[usize],
    probs: &[f64],
    n_resamples: usize,
    seed: u64,
    threshold: f64,
) -> Result<BootstrapCis> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "a bootstrap confidence interval")?;
    check_threshold(threshold)?;
    if n_resamples == 0 {
        return Err(bad("the bootstrap needs at least one resample"));
    }
    let n = labels.len();
    // Sorting once and weighting by multiplicity gives the same curve as sorting each
    // resample, at O(n) instead of O(n log n) per resample.
    let order = descending_order(probs);
    let stats: Vec<ResampleStats> = (0..n_resamples)
        .into_par_iter()
        .map(|i| {
            let mut rng = resample_rng(seed, i);
            let mut weight = vec![0u32; n];
            for _ in 0..n {
                weight[rng.random_range(0..n)] += 1;
            }
            let mut cm = ConfusionMatrix::default();
            for j in 0..n {
                cm.add(labels[j] == 1, probs[j] >= threshold, weight[j] as u64);
            }
            let (has_pos, has_neg) = (cm.positives() > 0, cm.negatives() > 0);
            let auc = (has_pos && has_neg).then(|| {
                auc_from_counts(counts_from_order(&order, labels, probs, |j| {
                    weight[j] as u64
                }))
            });
            ResampleStats {
                auc,
                sensitivity: has_pos.then(|| cm.sensitivity()),
                specificity: has_neg.then(|| cm.specificity()),
                accuracy: cm.accuracy(),
            }
        })
        .collect();

    let confidence = 0.95;
    let point = ConfusionMatrix::at_threshold(labels, probs, threshold)?;
    let aucs: Vec<f64> = stats.iter().filter_map(|s| s.auc).collect();
    let skipped_one_class = n_resamples - aucs.len();
    Ok(BootstrapCis {
        n_resamples,
        seed,
        confidence,
        threshold,
        roc_auc: interval(roc_auc(labels, probs)?, aucs, confidence, "ROC AUC")?,
        sensitivity: interval(
            point.sensitivity(),
            stats.iter().filter_map(|s| s.sensitivity).collect(),
            confidence,
            "sensitivity",
        )?,
        specificity: interval(
            point.specificity(),
            stats.iter().filter_map(|s| s.specificity).collect(),
            confidence,
            "specificity",
        )?,
        accuracy: interval(
            point.accuracy(),
            stats.iter().map(|s| s.accuracy).collect(),
            confidence,
            "accuracy",
        )?,
        skipped_one_class,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::close;
    use super::*;

    #[test]
    fn bootstrap_is_deterministic_and_brackets_the_estimate() {
        let n = 200;
        let y: Vec<usize> = (0..n).map(|i| (i % 3 == 0) as usize).collect();
        // A noisy but informative score, with some ties.
        let p: Vec<f64> = (0..n)
            .map(|i| {
                let noise = ((i * 37) % 100) as f64 / 100.0;
                ((0.35 * y[i] as f64 + 0.65 * noise) * 20.0).round() / 20.0
            })
            .collect();
        let a = bootstrap_ci(&y, &p, 300, 42, 0.5).unwrap();
        let b = bootstrap_ci(&y, &p, 300, 42, 0.5).unwrap();
        assert_eq!(a, b);
        let c = bootstrap_ci(&y, &p, 300, 43, 0.5).unwrap();
        assert_ne!(a.roc_auc, c.roc_auc);
        for ci in [a.roc_auc, a.sensitivity, a.specificity, a.accuracy] {
            assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
            assert!(ci.lower < ci.upper, "{ci:?}");
            assert_eq!(ci.n_used, 300);
        }
        assert_eq!(a.skipped_one_class, 0);
        assert!(close(a.roc_auc.estimate, roc_auc(&y, &p).unwrap()));
    }

    #[test]
    fn bootstrap_skips_resamples_missing_a_class() {
        let a = bootstrap_ci(&[0, 1, 0], &[0.2, 0.9, 0.4], 200, 7, 0.5).unwrap();
        // P(no malignant in 3 draws) = (2/3)^3, P(no benign) = (1/3)^3: both occur.
        assert!(a.skipped_one_class > 0);
        assert_eq!(a.roc_auc.n_used, 200 - a.skipped_one_class);
        assert!(a.sensitivity.n_used < 200 && a.specificity.n_used < 200);
        assert_eq!(a.accuracy.n_used, 200);
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(close(percentile(&v, 2.5), 1.1));
        assert!(close(percentile(&v, 97.5), 4.9));
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&[7.0], 97.5), 7.0);
    }
}

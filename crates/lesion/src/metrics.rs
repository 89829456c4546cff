//! Binary-classification metrics for benign (label `0`) vs malignant (label `1`, the
//! positive class), computed from per-image probabilities of malignancy.
//!
//! Inputs everywhere are `labels: &[usize]` (each `0` or `1`) and `probs: &[f64]` (each in
//! `[0, 1]`, not NaN), of equal, non-zero length; anything else is
//! [`Error::BadMetricInput`](crate::Error::BadMetricInput) rather than a NaN in a report.
//! A sample is predicted malignant when `p >= threshold`.
//!
//! The numbers follow scikit-learn (the reference in `../shared/fixtures/`), including its
//! corner cases:
//! - precision, recall/sensitivity, specificity, F1 and MCC are `0.0` where their
//!   denominator is zero. That is what scikit-learn returns with its default
//!   `zero_division="warn"` (it warns, then uses 0); balanced accuracy averages only the
//!   recalls that are defined, as scikit-learn does;
//! - ROC and PR curves place one point per *distinct* score, so tied scores are one
//!   threshold, as `_binary_clf_curve` does; the ROC curve starts at `(0, 0)` with threshold
//!   `+inf`, and `drop_intermediate` removes interior points where both the FP and TP counts
//!   are locally linear (second difference zero);
//! - ROC AUC is the trapezoid area of `roc_curve(drop_intermediate=True)`, exactly what
//!   `roc_auc_score` integrates (dropping collinear points does not change the area);
//! - average precision is `sum_k (R_k - R_{k-1}) P_k` over the PR curve, not interpolated;
//! - log loss clips `p` and `1 - p` to `[eps, 1 - eps]` with `eps = f64::EPSILON`
//!   (`np.finfo(float64).eps`), as scikit-learn >= 1.3 does, so a confident mistake costs
//!   about 36 nats instead of infinity;
//! - calibration uses 10 equal-width bins on edges `k * 0.1` (NumPy's `linspace`) closed on
//!   the right, `[0, 0.1], (0.1, 0.2], ..., (0.9, 1]`, which is how scikit-learn's
//!   `calibration_curve(strategy="uniform")` assigns a probability that sits on an edge.
//!
//! Sums that scikit-learn does with NumPy reductions use NumPy's pairwise summation, and
//! ratios are formed as scikit-learn forms them, so the values in
//! `shared/fixtures/metrics_expected.json` are reproduced bit for bit, not merely to 1e-9.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The decision threshold the notebook used.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Sensitivities at which the report states specificity (ISIC challenge convention).
pub const CLINICAL_SENSITIVITIES: [f64; 3] = [0.80, 0.90, 0.95];

/// Number of equal-width bins for expected calibration error and the reliability plot.
pub const CALIBRATION_BINS: usize = 10;

/// Counts of a binary confusion matrix (positive = malignant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl ConfusionMatrix {
    /// Counts predictions `p >= threshold` against `labels`. A single class is allowed here
    /// (the counts are still meaningful); the ratios then follow the zero-division rules
    /// in the module docs.
    pub fn at_threshold(labels: &[usize], probs: &[f64], threshold: f64) -> Result<Self> {
        check_inputs(labels, probs)?;
        check_threshold(threshold)?;
        let mut cm = ConfusionMatrix::default();
        for (&y, &p) in labels.iter().zip(probs) {
            cm.add(y == 1, p >= threshold, 1);
        }
        Ok(cm)
    }

    fn add(&mut self, positive: bool, predicted_positive: bool, weight: u64) {
        match (positive, predicted_positive) {
            (false, false) => self.tn += weight,
            (false, true) => self.fp += weight,
            (true, false) => self.fn_ += weight,
            (true, true) => self.tp += weight,
        }
    }

    /// Total number of samples.
    pub fn total(&self) -> u64 {
        self.tn + self.fp + self.fn_ + self.tp
    }

    /// Number of malignant samples.
    pub fn positives(&self) -> u64 {
        self.tp + self.fn_
    }

    /// Number of benign samples.
    pub fn negatives(&self) -> u64 {
        self.tn + self.fp
    }

    /// `(tp + tn) / n`; 0 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    /// Recall of malignant, `tp / (tp + fn)`; 0 without positives.
    pub fn sensitivity(&self) -> f64 {
        ratio(self.tp, self.positives())
    }

    /// Recall of benign, `tn / (tn + fp)`; 0 without negatives.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.negatives())
    }

    /// `tp / (tp + fp)`; 0 when nothing is predicted malignant.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Mean of the per-class recalls that are defined (scikit-learn drops a class absent
    /// from the labels); 0 for an empty matrix.
    pub fn balanced_accuracy(&self) -> f64 {
        match (self.negatives() > 0, self.positives() > 0) {
            (true, true) => (self.specificity() + self.sensitivity()) / 2.0,
            (true, false) => self.specificity(),
            (false, true) => self.sensitivity(),
            (false, false) => 0.0,
        }
    }

    /// `2 tp / (2 tp + fp + fn)` (scikit-learn >= 1.3's form, equal to the harmonic mean of
    /// precision and recall); 0 when `tp + fp + fn == 0`.
    pub fn f1(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Matthews correlation coefficient; 0 when a row or column of the matrix is empty.
    pub fn mcc(&self) -> f64 {
        // scikit-learn's covariance form, kept so that rounding matches for large counts.
        let (tn, fp, fn_, tp) = (
            self.tn as f64,
            self.fp as f64,
            self.fn_ as f64,
            self.tp as f64,
        );
        let t_sum = [tn + fp, fn_ + tp];
        let p_sum = [tn + fn_, fp + tp];
        let n_correct = tn + tp;
        let n = p_sum[0] + p_sum[1];
        let dot = |a: [f64; 2], b: [f64; 2]| a[0] * b[0] + a[1] * b[1];
        let cov_ytyp = n_correct * n - dot(t_sum, p_sum);
        let cov_ypyp = n * n - dot(p_sum, p_sum);
        let cov_ytyt = n * n - dot(t_sum, t_sum);
        if cov_ypyp * cov_ytyt == 0.0 {
            0.0
        } else {
            cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
        }
    }
}

/// A ROC curve in scikit-learn's layout: `fpr`, `tpr`, `thresholds` of equal length,
/// thresholds decreasing, the first point `(0, 0)` at threshold `+inf` (serialised as
/// `null` by serde_json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// A precision-recall curve in scikit-learn's layout: `thresholds` increasing (one per
/// distinct score); `precision` and `recall` have one more entry, the final `(1, 0)`
/// point that anchors the curve on the precision axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrCurve {
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// A decision threshold with the sensitivity and specificity it gives on the data it was
/// chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
}

/// The operating point chosen for a target sensitivity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SensitivityTarget {
    pub target_sensitivity: f64,
    pub threshold: f64,
    /// Achieved sensitivity (`>= target_sensitivity`).
    pub sensitivity: f64,
    pub specificity: f64,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Exclusive lower edge (inclusive for the first bin, so that `p = 0` is counted).
    pub lower: f64,
    /// Inclusive upper edge.
    pub upper: f64,
    pub count: u64,
    /// Mean predicted probability in the bin; 0 when `count == 0`.
    pub mean_predicted: f64,
    /// Fraction of malignant samples in the bin; 0 when `count == 0`.
    pub observed_frequency: f64,
}

/// Expected calibration error with the per-bin data behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `sum_b (count_b / n) * |mean_predicted_b - observed_frequency_b|`.
    pub ece: f64,
    /// All bins, empty ones included, in increasing order.
    pub bins: Vec<CalibrationBin>,
}

/// Every scalar metric of one evaluation, as written to `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// The threshold the threshold-dependent metrics were computed at.
    pub threshold: f64,
    pub n: u64,
    pub n_positive: u64,
    pub n_negative: u64,
    pub confusion_matrix: ConfusionMatrix,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub precision: f64,
    pub f1: f64,
    pub mcc: f64,
    pub roc_auc: f64,
    pub average_precision: f64,
    pub brier: f64,
    pub log_loss: f64,
    /// Expected calibration error, [`CALIBRATION_BINS`] bins.
    pub ece: f64,
    /// The Youden-optimal point; `None` when no threshold does better than chance
    /// (scikit-learn would name the `+inf` threshold).
    pub youden: Option<OperatingPoint>,
    /// Specificity at each of [`CLINICAL_SENSITIVITIES`].
    pub specificity_at_sensitivity: Vec<SensitivityTarget>,
}

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

// ---------------------------------------------------------------------------------------
// Validation

fn bad(msg: impl Into<String>) -> Error {
    Error::BadMetricInput(msg.into())
}

#[derive(Debug, Clone, Copy)]
struct ClassCounts {
    positives: u64,
    negatives: u64,
}

fn check_inputs(labels: &[usize], probs: &[f64]) -> Result<ClassCounts> {
    if labels.len() != probs.len() {
        return Err(bad(format!(
            "{} labels but {} probabilities; they must pair up one to one",
            labels.len(),
            probs.len()
        )));
    }
    if labels.is_empty() {
        return Err(bad("no samples: labels and probabilities are empty"));
    }
    let mut positives = 0;
    for (i, (&y, &p)) in labels.iter().zip(probs).enumerate() {
        match y {
            0 => {}
            1 => positives += 1,
            _ => {
                return Err(bad(format!(
                    "label {y} at index {i}; expected 0 (benign) or 1 (malignant)"
                )))
            }
        }
        if !(0.0..=1.0).contains(&p) {
            return Err(bad(format!(
                "probability {p} at index {i}; expected a number in [0, 1]"
            )));
        }
    }
    Ok(ClassCounts {
        positives,
        negatives: labels.len() as u64 - positives,
    })
}

fn check_threshold(threshold: f64) -> Result<()> {
    if (0.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(bad(format!(
            "threshold {threshold}; expected a number in [0, 1]"
        )))
    }
}

fn need_both_classes(c: ClassCounts, what: &str) -> Result<()> {
    if c.positives == 0 || c.negatives == 0 {
        let (n, class) = if c.positives == 0 {
            (c.negatives, "benign (0)")
        } else {
            (c.positives, "malignant (1)")
        };
        return Err(bad(format!(
            "{what} needs both classes, but all {n} samples are {class}"
        )));
    }
    Ok(())
}

fn need_positives(c: ClassCounts, what: &str) -> Result<()> {
    if c.positives == 0 {
        return Err(bad(format!(
            "{what} needs malignant (1) samples, but all {} samples are benign (0)",
            c.negatives
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// NumPy-compatible summation

/// NumPy's `add.reduce` for a contiguous f64 array: the accumulator starts at the identity
/// 0 and the whole array is summed pairwise (8-way unrolled blocks of at most 128). With
/// this, every fixture value is reproduced bit for bit; seeding with the first element
/// instead (as older NumPy did) leaves some one ulp away.
fn np_sum(xs: &[f64]) -> f64 {
    0.0 + pairwise_sum(xs)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

fn np_mean(xs: &[f64]) -> f64 {
    np_sum(xs) / xs.len() as f64
}

// ---------------------------------------------------------------------------------------
// Curves

/// Cumulative counts at each distinct score, scores decreasing (`_binary_clf_curve`).
#[derive(Debug, Clone, Default)]
struct Counts {
    fps: Vec<u64>,
    tps: Vec<u64>,
    thresholds: Vec<f64>,
}

fn descending_order(probs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable, so that ties keep a reproducible order; their order cannot change the
    // counts, which are only read after the last member of a tie.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
}

/// Walks samples in `order` (scores decreasing), each counted `weight(i)` times, and emits
/// one point after the last sample of every distinct score. Zero-weight samples are
/// skipped so that a bootstrap resample sees exactly the thresholds it contains.
fn counts_from_order(
    order: &[usize],
    labels: &[usize],
    probs: &[f64],
    weight: impl Fn(usize) -> u64,
) -> Counts {
    let mut out = Counts::default();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut current: Option<f64> = None;
    for &i in order {
        let w = weight(i);
        if w == 0 {
            continue;
        }
        let p = probs[i];
        if let Some(c) = current {
            // `!=` rather than bit equality so that -0.0 and 0.0 are one threshold, as
            // in NumPy's `diff`.
            if c != p {
                out.fps.push(fp);
                out.tps.push(tp);
                out.thresholds.push(c);
            }
        }
        current = Some(p);
        if labels[i] == 1 {
            tp += w;
        } else {
            fp += w;
        }
    }
    if let Some(c) = current {
        out.fps.push(fp);
        out.tps.push(tp);
        out.thresholds.push(c);
    }
    out
}

/// scikit-learn's `drop_intermediate`: keep the ends and every interior point where the
/// FP or TP count bends (non-zero second difference). Collinear points add no area and
/// only bloat plots.
fn drop_intermediate(c: Counts) -> Counts {
    let m = c.fps.len();
    if m <= 2 {
        return c;
    }
    let bends = |v: &[u64], i: usize| v[i + 1] as i64 - 2 * v[i] as i64 + v[i - 1] as i64 != 0;
    let keep: Vec<usize> = (0..m)
        .filter(|&i| i == 0 || i == m - 1 || bends(&c.fps, i) || bends(&c.tps, i))
        .collect();
    Counts {
        fps: keep.iter().map(|&i| c.fps[i]).collect(),
        tps: keep.iter().map(|&i| c.tps[i]).collect(),
        thresholds: keep.iter().map(|&i| c.thresholds[i]).collect(),
    }
}

/// Prepends the `(0, 0)` point and normalises; both classes must be present.
fn roc_from_counts(c: &Counts) -> RocCurve {
    let n_neg = *c.fps.last().unwrap() as f64;
    let n_pos = *c.tps.last().unwrap() as f64;
    let mut fpr = Vec::with_capacity(c.fps.len() + 1);
    let mut tpr = Vec::with_capacity(c.fps.len() + 1);
    let mut thresholds = Vec::with_capacity(c.fps.len() + 1);
    fpr.push(0.0);
    tpr.push(0.0);
    thresholds.push(f64::INFINITY);
    for k in 0..c.fps.len() {
        fpr.push(c.fps[k] as f64 / n_neg);
        tpr.push(c.tps[k] as f64 / n_pos);
        thresholds.push(c.thresholds[k]);
    }
    RocCurve {
        fpr,
        tpr,
        thresholds,
    }
}

/// `np.trapz(y, x)` for increasing `x`.
fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    let terms: Vec<f64> = (1..x.len())
        .map(|k| (x[k] - x[k - 1]) * (y[k] + y[k - 1]) / 2.0)
        .collect();
    np_sum(&terms)
}

fn auc_from_counts(c: Counts) -> f64 {
    let roc = roc_from_counts(&drop_intermediate(c));
    trapezoid(&roc.fpr, &roc.tpr)
}

fn pr_from_counts(c: &Counts) -> PrCurve {
    let n_pos = *c.tps.last().unwrap() as f64;
    let m = c.fps.len();
    let mut precision = Vec::with_capacity(m + 1);
    let mut recall = Vec::with_capacity(m + 1);
    for k in (0..m).rev() {
        // Every threshold holds at least one sample, so `tps + fps > 0`.
        precision.push(c.tps[k] as f64 / (c.tps[k] + c.fps[k]) as f64);
        recall.push(c.tps[k] as f64 / n_pos);
    }
    precision.push(1.0);
    recall.push(0.0);
    PrCurve {
        precision,
        recall,
        thresholds: c.thresholds.iter().rev().copied().collect(),
    }
}

/// `-sum(diff(recall) * precision[:-1])` on scikit-learn's (reversed) PR arrays.
fn average_precision_from_pr(pr: &PrCurve) -> f64 {
    let terms: Vec<f64> = (0..pr.recall.len() - 1)
        .map(|j| (pr.recall[j + 1] - pr.recall[j]) * pr.precision[j])
        .collect();
    -np_sum(&terms)
}

fn full_counts(labels: &[usize], probs: &[f64]) -> Counts {
    counts_from_order(&descending_order(probs), labels, probs, |_| 1)
}

/// The ROC curve, as `sklearn.metrics.roc_curve(labels, probs, drop_intermediate=...)`.
/// Needs both classes.
pub fn roc_curve(labels: &[usize], probs: &[f64], drop_intermediate: bool) -> Result<RocCurve> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "a ROC curve")?;
    let counts = full_counts(labels, probs);
    let counts = if drop_intermediate {
        self::drop_intermediate(counts)
    } else {
        counts
    };
    Ok(roc_from_counts(&counts))
}

/// Area under the ROC curve (`roc_auc_score`). Needs both classes.
pub fn roc_auc(labels: &[usize], probs: &[f64]) -> Result<f64> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "ROC AUC")?;
    Ok(auc_from_counts(full_counts(labels, probs)))
}

/// The precision-recall curve (`precision_recall_curve`). Needs malignant samples.
pub fn precision_recall_curve(labels: &[usize], probs: &[f64]) -> Result<PrCurve> {
    let c = check_inputs(labels, probs)?;
    need_positives(c, "a precision-recall curve")?;
    Ok(pr_from_counts(&full_counts(labels, probs)))
}

/// Average precision (`average_precision_score`), the step-wise area under the PR
/// curve. Needs malignant samples.
pub fn average_precision(labels: &[usize], probs: &[f64]) -> Result<f64> {
    let c = check_inputs(labels, probs)?;
    need_positives(c, "average precision")?;
    Ok(average_precision_from_pr(&pr_from_counts(&full_counts(
        labels, probs,
    ))))
}

// ---------------------------------------------------------------------------------------
// Probabilistic scores

/// Brier score, the mean of `(y - p)^2` (`brier_score_loss`).
pub fn brier_score(labels: &[usize], probs: &[f64]) -> Result<f64> {
    check_inputs(labels, probs)?;
    let sq: Vec<f64> = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            let d = y as f64 - p;
            d * d
        })
        .collect();
    Ok(np_mean(&sq))
}

/// Mean binary cross-entropy in nats (`log_loss`), with the clipping described in the
/// module docs.
pub fn log_loss(labels: &[usize], probs: &[f64]) -> Result<f64> {
    check_inputs(labels, probs)?;
    let eps = f64::EPSILON;
    let losses: Vec<f64> = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            // scikit-learn builds the two columns `[1 - p, p]` first and clips each, so
            // the benign term clips `1 - p`, not `p`.
            let q = if y == 1 { p } else { 1.0 - p };
            -q.clamp(eps, 1.0 - eps).ln()
        })
        .collect();
    Ok(np_mean(&losses))
}

/// Reliability data and expected calibration error with `n_bins` equal-width bins
/// (edges as in the module docs). `n_bins` must be at least 1.
pub fn calibration(labels: &[usize], probs: &[f64], n_bins: usize) -> Result<Calibration> {
    check_inputs(labels, probs)?;
    if n_bins == 0 {
        return Err(bad("calibration needs at least one bin"));
    }
    // `np.linspace(0, 1, n_bins + 1)` computes `k * (1 / n_bins)`, which is not always the
    // nearest double to `k / n_bins`; the last edge is exactly 1.
    let step = 1.0 / n_bins as f64;
    let mut edges: Vec<f64> = (0..=n_bins).map(|k| k as f64 * step).collect();
    edges[n_bins] = 1.0;
    let interior = &edges[1..n_bins];
    let mut sum_p = vec![Vec::new(); n_bins];
    let mut positives = vec![0u64; n_bins];
    for (&y, &p) in labels.iter().zip(probs) {
        // `np.searchsorted(interior, p)` (side="left"): the first edge >= p.
        let b = interior.partition_point(|&e| e < p);
        sum_p[b].push(p);
        positives[b] += (y == 1) as u64;
    }
    let n = labels.len() as f64;
    let mut ece = 0.0;
    let mut bins = Vec::with_capacity(n_bins);
    for b in 0..n_bins {
        let count = sum_p[b].len() as u64;
        let (mean_predicted, observed_frequency) = if count == 0 {
            (0.0, 0.0)
        } else {
            (np_sum(&sum_p[b]) / count as f64, ratio(positives[b], count))
        };
        ece += count as f64 / n * (mean_predicted - observed_frequency).abs();
        bins.push(CalibrationBin {
            lower: edges[b],
            upper: edges[b + 1],
            count,
            mean_predicted,
            observed_frequency,
        });
    }
    Ok(Calibration { ece, bins })
}

/// Expected calibration error with [`CALIBRATION_BINS`] bins.
pub fn expected_calibration_error(labels: &[usize], probs: &[f64]) -> Result<f64> {
    Ok(calibration(labels, probs, CALIBRATION_BINS)?.ece)
}

// ---------------------------------------------------------------------------------------
// Thresholds

/// The threshold maximising Youden's J = sensitivity + specificity - 1, searched over
/// `roc_curve(drop_intermediate=True)` with the first maximum winning, as the fixture's
/// `_youden` does. The threshold is `+inf` (predict nothing malignant) when no cut-off
/// beats chance. Needs both classes.
pub fn youden(labels: &[usize], probs: &[f64]) -> Result<OperatingPoint> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "the Youden threshold")?;
    let counts = drop_intermediate(full_counts(labels, probs));
    let roc = roc_from_counts(&counts);
    let mut best = 0;
    for k in 1..roc.fpr.len() {
        // Exactly `tpr - fpr` as NumPy computes it, so that near-ties resolve identically.
        if roc.tpr[k] - roc.fpr[k] > roc.tpr[best] - roc.fpr[best] {
            best = k;
        }
    }
    let (tp, fp) = if best == 0 {
        (0, 0)
    } else {
        (counts.tps[best - 1], counts.fps[best - 1])
    };
    Ok(OperatingPoint {
        threshold: roc.thresholds[best],
        sensitivity: ratio(tp, c.positives),
        specificity: ratio(c.negatives - fp, c.negatives),
    })
}

/// The highest threshold whose sensitivity on this data is at least `target` (in `(0, 1]`),
/// with the specificity it gives. Sensitivity only grows as the threshold falls while
/// specificity only shrinks, so this is also the best specificity reachable at that
/// sensitivity. Needs both classes.
pub fn threshold_for_sensitivity(
    labels: &[usize],
    probs: &[f64],
    target: f64,
) -> Result<SensitivityTarget> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "a threshold for a target sensitivity")?;
    check_target(target)?;
    Ok(target_point(&full_counts(labels, probs), c, target))
}

fn check_target(target: f64) -> Result<()> {
    if target > 0.0 && target <= 1.0 {
        Ok(())
    } else {
        Err(bad(format!(
            "target sensitivity {target}; expected a number in (0, 1]"
        )))
    }
}

fn target_point(counts: &Counts, c: ClassCounts, target: f64) -> SensitivityTarget {
    // The last point has sensitivity exactly 1 >= target, so the search always succeeds.
    let k = counts
        .tps
        .iter()
        .position(|&tp| tp as f64 / c.positives as f64 >= target)
        .unwrap_or(counts.tps.len() - 1);
    SensitivityTarget {
        target_sensitivity: target,
        threshold: counts.thresholds[k],
        sensitivity: ratio(counts.tps[k], c.positives),
        specificity: ratio(c.negatives - counts.fps[k], c.negatives),
    }
}

/// Specificity at each target sensitivity (see [`threshold_for_sensitivity`]), in the
/// order given. Needs both classes.
pub fn specificity_at_sensitivities(
    labels: &[usize],
    probs: &[f64],
    targets: &[f64],
) -> Result<Vec<SensitivityTarget>> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "specificity at a sensitivity")?;
    for &t in targets {
        check_target(t)?;
    }
    let counts = full_counts(labels, probs);
    Ok(targets
        .iter()
        .map(|&t| target_point(&counts, c, t))
        .collect())
}

// ---------------------------------------------------------------------------------------
// Everything at once

/// Every scalar metric at `threshold`. Needs both classes: without them AUC, balanced
/// accuracy and the operating points are undefined.
pub fn evaluate(labels: &[usize], probs: &[f64], threshold: f64) -> Result<BinaryMetrics> {
    let c = check_inputs(labels, probs)?;
    need_both_classes(c, "evaluation")?;
    let cm = ConfusionMatrix::at_threshold(labels, probs, threshold)?;
    let counts = full_counts(labels, probs);
    let average_precision = average_precision_from_pr(&pr_from_counts(&counts));
    let specificity_at_sensitivity = CLINICAL_SENSITIVITIES
        .iter()
        .map(|&t| target_point(&counts, c, t))
        .collect();
    let roc_auc = auc_from_counts(counts);
    let youden = youden(labels, probs)?;
    Ok(BinaryMetrics {
        threshold,
        n: c.positives + c.negatives,
        n_positive: c.positives,
        n_negative: c.negatives,
        confusion_matrix: cm,
        accuracy: cm.accuracy(),
        balanced_accuracy: cm.balanced_accuracy(),
        sensitivity: cm.sensitivity(),
        specificity: cm.specificity(),
        precision: cm.precision(),
        f1: cm.f1(),
        mcc: cm.mcc(),
        roc_auc,
        average_precision,
        brier: brier_score(labels, probs)?,
        log_loss: log_loss(labels, probs)?,
        ece: expected_calibration_error(labels, probs)?,
        youden: youden.threshold.is_finite().then_some(youden),
        specificity_at_sensitivity,
    })
}

// ---------------------------------------------------------------------------------------
// Bootstrap

#[derive(Debug, Clone, Copy)]
struct ResampleStats {
    auc: Option<f64>,
    sensitivity: Option<f64>,
    specificity: Option<f64>,
    accuracy: f64,
}

/// The RNG of resample `i`: one ChaCha key from `seed`, one stream per resample, so that a
/// resample's draws depend only on `(seed, i)` and not on how rayon schedules the work.
fn resample_rng(seed: u64, i: usize) -> ChaCha8Rng {
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

fn interval(
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
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // Scores with ties across classes: 0.4 and 0.8 each hold one benign and one malignant.
    const TIE_Y: [usize; 6] = [0, 0, 1, 1, 0, 1];
    const TIE_P: [f64; 6] = [0.1, 0.4, 0.4, 0.8, 0.8, 0.9];

    #[test]
    fn confusion_matrix_and_ratios() {
        let cm = ConfusionMatrix::at_threshold(&TIE_Y, &TIE_P, 0.5).unwrap();
        assert_eq!(
            cm,
            ConfusionMatrix {
                tn: 2,
                fp: 1,
                fn_: 1,
                tp: 2
            }
        );
        assert!(close(cm.accuracy(), 4.0 / 6.0));
        assert!(close(cm.sensitivity(), 2.0 / 3.0));
        assert!(close(cm.specificity(), 2.0 / 3.0));
        assert!(close(cm.precision(), 2.0 / 3.0));
        assert!(close(cm.f1(), 2.0 / 3.0));
        assert!(close(cm.balanced_accuracy(), 2.0 / 3.0));
        // (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 3 / 9
        assert!(close(cm.mcc(), 1.0 / 3.0));
        // p >= threshold is positive: both 0.4 samples flip to malignant.
        let cm = ConfusionMatrix::at_threshold(&TIE_Y, &TIE_P, 0.4).unwrap();
        assert_eq!((cm.tp, cm.fp, cm.fn_, cm.tn), (3, 2, 0, 1));
    }

    #[test]
    fn zero_division_follows_sklearn() {
        // Nothing predicted malignant: precision, F1, MCC undefined -> 0.
        let cm = ConfusionMatrix::at_threshold(&[0, 1, 1], &[0.1, 0.2, 0.3], 0.9).unwrap();
        assert_eq!(cm.precision(), 0.0);
        assert_eq!(cm.f1(), 0.0);
        assert_eq!(cm.mcc(), 0.0);
        assert_eq!(cm.sensitivity(), 0.0);
        assert_eq!(cm.specificity(), 1.0);
        // Only benign samples: balanced accuracy is benign recall alone.
        let cm = ConfusionMatrix::at_threshold(&[0, 0], &[0.1, 0.7], 0.5).unwrap();
        assert_eq!(cm.balanced_accuracy(), 0.5);
        assert_eq!(cm.sensitivity(), 0.0);
    }

    #[test]
    fn roc_with_ties() {
        let full = roc_curve(&TIE_Y, &TIE_P, false).unwrap();
        assert_eq!(full.thresholds[1..], [0.9, 0.8, 0.4, 0.1]);
        assert!(full.thresholds[0].is_infinite());
        let third = 1.0 / 3.0;
        let two_thirds = 2.0 / 3.0;
        assert_eq!(full.fpr, vec![0.0, 0.0, third, two_thirds, 1.0]);
        assert_eq!(full.tpr, vec![0.0, third, two_thirds, 1.0, 1.0]);
        // (0,1/3) -> (1/3,2/3) -> (2/3,1) is a straight line: its middle point goes.
        let dropped = roc_curve(&TIE_Y, &TIE_P, true).unwrap();
        assert_eq!(dropped.thresholds[1..], [0.9, 0.4, 0.1]);
        assert_eq!(dropped.fpr, vec![0.0, 0.0, two_thirds, 1.0]);
        // Pairs ranked correctly, ties counting half: (1.5 + 2.5 + 3) / 9.
        assert!(close(roc_auc(&TIE_Y, &TIE_P).unwrap(), 7.0 / 9.0));
        assert!(close(
            trapezoid(&full.fpr, &full.tpr),
            trapezoid(&dropped.fpr, &dropped.tpr)
        ));
    }

    #[test]
    fn pr_curve_and_average_precision_with_ties() {
        let pr = precision_recall_curve(&TIE_Y, &TIE_P).unwrap();
        assert_eq!(pr.thresholds, vec![0.1, 0.4, 0.8, 0.9]);
        assert_eq!(pr.recall, vec![1.0, 1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]);
        assert_eq!(pr.precision, vec![0.5, 0.6, 2.0 / 3.0, 1.0, 1.0]);
        // 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5
        let ap = average_precision(&TIE_Y, &TIE_P).unwrap();
        assert!(close(ap, 34.0 / 45.0), "{ap}");
    }

    #[test]
    fn auc_extremes() {
        let y = [0, 0, 1, 1];
        assert_eq!(roc_auc(&y, &[0.1, 0.2, 0.8, 0.9]).unwrap(), 1.0);
        assert_eq!(average_precision(&y, &[0.1, 0.2, 0.8, 0.9]).unwrap(), 1.0);
        assert_eq!(roc_auc(&y, &[0.9, 0.8, 0.2, 0.1]).unwrap(), 0.0);
        let ties = roc_curve(&y, &[0.5; 4], true).unwrap();
        assert_eq!(ties.fpr, vec![0.0, 1.0]);
        assert_eq!(roc_auc(&y, &[0.5; 4]).unwrap(), 0.5);
        assert_eq!(average_precision(&y, &[0.5; 4]).unwrap(), 0.5);
    }

    #[test]
    fn brier_and_log_loss() {
        let y = [1, 0];
        let p = [0.8, 0.4];
        assert!(close(brier_score(&y, &p).unwrap(), (0.04 + 0.16) / 2.0));
        let expect = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!(close(log_loss(&y, &p).unwrap(), expect));
        // A certain mistake is clipped to -ln(eps) instead of infinity.
        let ll = log_loss(&[1, 0], &[0.0, 1.0]).unwrap();
        assert!(close(ll, -f64::EPSILON.ln()), "{ll}");
    }

    #[test]
    fn youden_and_target_sensitivity() {
        let y = [0, 0, 0, 1, 0, 1, 1, 1];
        let p = [0.05, 0.1, 0.3, 0.35, 0.6, 0.7, 0.8, 0.9];
        // J on the dropped curve: 0.9 -> 1/4, 0.7 -> 3/4, 0.6 -> 1/2, 0.35 -> 3/4, 0.05 -> 0;
        // the first maximum wins.
        let j = youden(&y, &p).unwrap();
        assert_eq!(j.threshold, 0.7);
        assert_eq!((j.sensitivity, j.specificity), (0.75, 1.0));
        let t = threshold_for_sensitivity(&y, &p, 1.0).unwrap();
        assert_eq!(
            (t.threshold, t.sensitivity, t.specificity),
            (0.35, 1.0, 0.75)
        );
        let t = threshold_for_sensitivity(&y, &p, 0.5).unwrap();
        assert_eq!((t.threshold, t.sensitivity, t.specificity), (0.8, 0.5, 1.0));
        let v = specificity_at_sensitivities(&y, &p, &[0.8, 0.75]).unwrap();
        assert_eq!(v[0].threshold, 0.35);
        assert_eq!(v[1].threshold, 0.7);
        // With ties the threshold must be a distinct score and both tied samples flip.
        let t = threshold_for_sensitivity(&TIE_Y, &TIE_P, 0.6).unwrap();
        assert_eq!((t.threshold, t.specificity), (0.8, 2.0 / 3.0));
        assert!(threshold_for_sensitivity(&y, &p, 0.0).is_err());
    }

    #[test]
    fn youden_is_infinite_when_nothing_beats_chance() {
        let j = youden(&[0, 1], &[0.9, 0.1]).unwrap();
        assert!(j.threshold.is_infinite());
        let m = evaluate(&[0, 1], &[0.9, 0.1], 0.5).unwrap();
        assert_eq!(m.youden, None);
    }

    #[test]
    fn calibration_bins() {
        // Perfectly calibrated: each bin's frequency equals its (constant) prediction.
        let y = [1, 0, 0, 0, 1, 1, 1, 0];
        let p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let cal = calibration(&y, &p, 10).unwrap();
        assert_eq!(cal.ece, 0.0);
        assert_eq!(cal.bins.len(), 10);
        assert_eq!(cal.bins[2].count, 4);
        assert_eq!(cal.bins[2].mean_predicted, 0.25);
        assert_eq!(cal.bins[7].observed_frequency, 0.75);
        // Edges: 0 and 0.1 fall in bin 0, 0.3 in (0.2, 0.3], 1 in the last bin.
        let cal = calibration(&[0, 0, 1, 1], &[0.0, 0.1, 0.3, 1.0], 10).unwrap();
        let counts: Vec<u64> = cal.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![2, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        // Bin 0: predicted 0.05, observed 0; bin 2: 0.3 vs 1; bin 9: 1 vs 1.
        let expect = 2.0 / 4.0 * 0.05 + 1.0 / 4.0 * 0.7;
        assert!(close(cal.ece, expect), "{}", cal.ece);
    }

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

    #[test]
    fn numpy_sum_agrees_with_exact_sums() {
        let xs: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
        assert_eq!(np_sum(&xs), 500_500.0);
        assert_eq!(np_sum(&xs[..5]), 15.0);
        assert_eq!(np_sum(&[]), 0.0);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let err = |r: Result<f64>| match r {
            Err(Error::BadMetricInput(msg)) => msg,
            other => panic!("expected BadMetricInput, got {other:?}"),
        };
        assert!(err(roc_auc(&[0, 1], &[0.5])).contains("2 labels but 1"));
        assert!(err(roc_auc(&[], &[])).contains("empty"));
        assert!(err(roc_auc(&[0, 1], &[0.5, f64::NAN])).contains("index 1"));
        assert!(err(brier_score(&[0, 1], &[0.5, 1.5])).contains("[0, 1]"));
        assert!(err(log_loss(&[0, 2], &[0.5, 0.5])).contains("label 2"));
        assert!(err(roc_auc(&[1, 1], &[0.5, 0.6])).contains("both classes"));
        assert!(err(roc_auc(&[0, 0], &[0.5, 0.6])).contains("benign"));
        assert!(err(average_precision(&[0, 0], &[0.5, 0.6])).contains("malignant"));
        assert!(evaluate(&[0, 0], &[0.1, 0.2], 0.5).is_err());
        assert!(evaluate(&[0, 1], &[0.1, 0.2], f64::NAN).is_err());
        assert!(bootstrap_ci(&[0, 1], &[0.1, 0.2], 0, 1, 0.5).is_err());
        assert!(calibration(&[0, 1], &[0.1, 0.2], 0).is_err());
    }

    #[test]
    fn evaluate_collects_everything_and_round_trips_json() {
        let m = evaluate(&TIE_Y, &TIE_P, 0.5).unwrap();
        assert_eq!((m.n, m.n_positive, m.n_negative), (6, 3, 3));
        assert!(close(m.roc_auc, 7.0 / 9.0));
        assert!(close(m.mcc, 1.0 / 3.0));
        assert_eq!(m.specificity_at_sensitivity.len(), 3);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"fn\":1"));
        let back: BinaryMetrics = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}

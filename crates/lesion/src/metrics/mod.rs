//! Binary-classification metrics for benign (label `0`) vs malignant (label `1`, the
//! positive class), computed from per-image probabilities of malignancy; the N-class
//! figures are in [`multiclass`].
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

mod bootstrap;
mod calibration;
mod confusion;
pub mod multiclass;
mod numpy;
mod roc;
mod threshold;

use serde::{Deserialize, Serialize};

use roc::{auc_from_counts, average_precision_from_pr, full_counts, pr_from_counts};
use threshold::target_point;

use crate::{Error, Result};

pub use bootstrap::{bootstrap_ci, BootstrapCis, ConfidenceInterval};
pub use calibration::{
    brier_score, calibration, expected_calibration_error, log_loss, Calibration, CalibrationBin,
};
pub use confusion::ConfusionMatrix;
pub use multiclass::{
    evaluate_multiclass, multiclass_bootstrap, predicted_classes, top_class_calibration,
    ClassFigures, ClassIntervals, MulticlassBootstrap, MulticlassMetrics, TopK,
};
pub use roc::{average_precision, precision_recall_curve, roc_auc, roc_curve, PrCurve, RocCurve};
pub use threshold::{
    specificity_at_sensitivities, threshold_for_sensitivity, youden, OperatingPoint,
    SensitivityTarget,
};

/// The decision threshold the notebook used.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Sensitivities at which the report states specificity (ISIC challenge convention).
pub const CLINICAL_SENSITIVITIES: [f64; 3] = [0.80, 0.90, 0.95];

/// Number of equal-width bins for expected calibration error and the reliability plot.
pub const CALIBRATION_BINS: usize = 10;

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // Scores with ties across classes: 0.4 and 0.8 each hold one benign and one malignant.
    pub(super) const TIE_Y: [usize; 6] = [0, 0, 1, 1, 0, 1];
    pub(super) const TIE_P: [f64; 6] = [0.1, 0.4, 0.4, 0.8, 0.8, 0.9];

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

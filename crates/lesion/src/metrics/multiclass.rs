//! N-class metrics from each image's class probabilities, following scikit-learn
//! (checked against it to 1e-9 by `tests/multiclass_fixture.rs`, whose reference
//! `tests/fixtures/multiclass_metrics.json` `scripts/fixtures/make_multiclass_metrics.py`
//! writes).
//!
//! Inputs: `labels: &[usize]` (each `< N`) and `probs: &[Vec<f64>]`, one row of `N >= 2`
//! class probabilities per sample (each in `[0, 1]`, not NaN; rows are not required to sum
//! to 1), of equal, non-zero length. Anything else is
//! [`Error::BadMetricInput`](crate::Error::BadMetricInput).
//!
//! Conventions, as scikit-learn's defaults:
//! - the predicted class is the row's argmax, the **first** on ties (`np.argmax`);
//! - the confusion matrix is `[true][predicted]` counts; its row-normalised form divides each
//!   row by its sum, an empty row staying all 0 (`confusion_matrix(normalize="true")`);
//! - per class `k` (one-vs-rest): recall `tp / support`, precision `tp / predicted`, F1
//!   `2 tp / (support + predicted)`, each `0.0` where its denominator is zero
//!   (`zero_division="warn"`); specificity `tn / (tn + fp)` from
//!   `multilabel_confusion_matrix`, `0.0` without negatives;
//! - macro figures are the unweighted mean over all N classes, absent ones included (with
//!   `labels=range(N)`); weighted F1 weights by support;
//! - balanced accuracy is the mean recall over the classes present in the labels
//!   (`balanced_accuracy_score` drops the others);
//! - one-vs-rest ROC AUC of class `k` is the binary AUC of `label == k` against `p_k`
//!   ([`super::roc_auc`]), undefined (`None`) when the class or its complement is absent.
//!   Macro and support-weighted AUC average the defined ones; with every class present this
//!   is `roc_auc_score(multi_class="ovr")`, which raises where a class is absent;
//! - top-k accuracy: the label is among the k highest scores, ties broken towards the
//!   **higher** class index (`top_k_accuracy_score` sorts with a stable ascending mergesort
//!   and reverses), so top-1 accuracy can differ from accuracy on tied rows; reported for
//!   `k = 1 ..= N - 1`;
//! - log loss is the mean of `-ln p_label`, `p` clipped to `[eps, 1 - eps]` with
//!   `eps = f64::EPSILON`, rows not renormalised (`log_loss`);
//! - the top-class calibration (ECE) uses each sample's highest probability as the
//!   confidence and whether its argmax is the label as the outcome, in the binary module's
//!   10 equal-width bins `[0, 0.1], (0.1, 0.2], ..., (0.9, 1]`
//!   (`calibration_curve(strategy="uniform")`'s binning); ECE is
//!   `sum_b (count_b / n) |mean confidence_b - accuracy_b|`.
//!
//! Means use NumPy's pairwise summation, as in the rest of [`crate::metrics`].

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::bootstrap::{interval, resample_rng};
use super::calibration::calibration;
use super::confusion::ratio;
use super::numpy::{np_mean, np_sum};
use super::roc::{auc_from_counts, counts_from_order, descending_order};
use super::{bad, Calibration, ConfidenceInterval, CALIBRATION_BINS};
use crate::Result;

/// One class's one-vs-rest figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    /// Samples whose label is this class.
    pub support: u64,
    /// Samples predicted (argmax) as this class.
    pub predicted: u64,
    /// Sensitivity.
    pub recall: f64,
    pub specificity: f64,
    pub precision: f64,
    pub f1: f64,
    /// One-vs-rest ROC AUC; `None` when the class or its complement is absent.
    pub roc_auc: Option<f64>,
}

/// Top-k accuracy for one `k`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    pub k: usize,
    pub accuracy: f64,
}

/// Every N-class figure of one set of predictions (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassMetrics {
    pub n: u64,
    pub n_classes: usize,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    /// Indexed by label.
    pub per_class: Vec<ClassFigures>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    /// Mean of the defined per-class AUCs; `None` when none is defined.
    pub macro_roc_auc: Option<f64>,
    /// Support-weighted mean of the defined per-class AUCs.
    pub weighted_roc_auc: Option<f64>,
    /// `k = 1 ..= N - 1`.
    pub top_k_accuracy: Vec<TopK>,
    pub log_loss: f64,
    /// `[true][predicted]` counts.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Each row divided by its sum (an empty row stays 0).
    pub confusion_normalized: Vec<Vec<f64>>,
    /// Reliability of the top class (confidence = highest probability).
    pub top_class_calibration: Calibration,
}

/// Checks the inputs and returns `N`.
fn check(labels: &[usize], probs: &[Vec<f64>]) -> Result<usize> {
    if labels.len() != probs.len() {
        return Err(bad(format!(
            "{} labels but {} probability rows; they must pair up one to one",
            labels.len(),
            probs.len()
        )));
    }
    if labels.is_empty() {
        return Err(bad("no samples: labels and probabilities are empty"));
    }
    let k = probs[0].len();
    if k < 2 {
        return Err(bad(format!(
            "{k} class probabilities per sample; at least 2 are needed"
        )));
    }
    for (i, (&y, row)) in labels.iter().zip(probs).enumerate() {
        if row.len() != k {
            return Err(bad(format!(
                "row {i} has {} class probabilities, row 0 has {k}",
                row.len()
            )));
        }
        if y >= k {
            return Err(bad(format!(
                "label {y} at index {i}; expected a class index below {k}"
            )));
        }
        if let Some(p) = row.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(bad(format!(
                "probability {p} at index {i}; expected a number in [0, 1]"
            )));
        }
    }
    Ok(k)
}

/// The argmax of each row (the first on ties).
pub fn predicted_classes(probs: &[Vec<f64>]) -> Vec<usize> {
    probs.iter().map(|r| crate::infer::argmax(r)).collect()
}

/// The figures that depend only on the (weighted) confusion matrix.
struct FromConfusion {
    per_class: Vec<ClassFigures>,
    accuracy: f64,
    balanced_accuracy: f64,
    macro_precision: f64,
    macro_recall: f64,
    macro_f1: f64,
    weighted_f1: f64,
}

fn from_confusion(cm: &[Vec<u64>]) -> FromConfusion {
    let k = cm.len();
    let n: u64 = cm.iter().flatten().sum();
    let support: Vec<u64> = cm.iter().map(|r| r.iter().sum()).collect();
    let predicted: Vec<u64> = (0..k).map(|j| cm.iter().map(|r| r[j]).sum()).collect();
    let correct: u64 = (0..k).map(|i| cm[i][i]).sum();
    let per_class: Vec<ClassFigures> = (0..k)
        .map(|c| {
            let tp = cm[c][c];
            let fp = predicted[c] - tp;
            let negatives = n - support[c];
            ClassFigures {
                support: support[c],
                predicted: predicted[c],
                recall: ratio(tp, support[c]),
                specificity: ratio(negatives - fp, negatives),
                precision: ratio(tp, predicted[c]),
                f1: ratio(2 * tp, support[c] + predicted[c]),
                roc_auc: None,
            }
        })
        .collect();
    let col = |f: fn(&ClassFigures) -> f64| per_class.iter().map(f).collect::<Vec<f64>>();
    let present: Vec<f64> = per_class
        .iter()
        .filter(|c| c.support > 0)
        .map(|c| c.recall)
        .collect();
    let f1 = col(|c| c.f1);
    let weighted: Vec<f64> = per_class.iter().map(|c| c.f1 * c.support as f64).collect();
    FromConfusion {
        accuracy: ratio(correct, n),
        balanced_accuracy: if present.is_empty() {
            0.0
        } else {
            np_mean(&present)
        },
        macro_precision: np_mean(&col(|c| c.precision)),
        macro_recall: np_mean(&col(|c| c.recall)),
        macro_f1: np_mean(&f1),
        weighted_f1: if n == 0 {
            0.0
        } else {
            np_sum(&weighted) / n as f64
        },
        per_class,
    }
}

/// `[true][predicted]` counts, each sample counted `weight(i)` times.
fn confusion(
    labels: &[usize],
    predicted: &[usize],
    k: usize,
    weight: impl Fn(usize) -> u64,
) -> Vec<Vec<u64>> {
    let mut cm = vec![vec![0u64; k]; k];
    for (i, (&y, &p)) in labels.iter().zip(predicted).enumerate() {
        cm[y][p] += weight(i);
    }
    cm
}

/// Per-class one-vs-rest columns: `(is this class, p of this class, descending order)`.
struct Columns {
    is_class: Vec<Vec<usize>>,
    score: Vec<Vec<f64>>,
    order: Vec<Vec<usize>>,
}

fn columns(labels: &[usize], probs: &[Vec<f64>], k: usize) -> Columns {
    let is_class: Vec<Vec<usize>> = (0..k)
        .map(|c| labels.iter().map(|&y| usize::from(y == c)).collect())
        .collect();
    let score: Vec<Vec<f64>> = (0..k)
        .map(|c| probs.iter().map(|r| r[c]).collect())
        .collect();
    let order = score.iter().map(|s| descending_order(s)).collect();
    Columns {
        is_class,
        score,
        order,
    }
}

impl Columns {
    /// Class `c`'s AUC on the samples weighted by `weight`, if both sides are present.
    fn auc(&self, c: usize, support: u64, n: u64, weight: impl Fn(usize) -> u64) -> Option<f64> {
        (support > 0 && support < n).then(|| {
            auc_from_counts(counts_from_order(
                &self.order[c],
                &self.is_class[c],
                &self.score[c],
                weight,
            ))
        })
    }
}

/// Mean of the defined AUCs, and their support-weighted mean.
fn auc_means(per_class: &[ClassFigures]) -> (Option<f64>, Option<f64>) {
    let defined: Vec<(f64, u64)> = per_class
        .iter()
        .filter_map(|c| c.roc_auc.map(|a| (a, c.support)))
        .collect();
    if defined.is_empty() {
        return (None, None);
    }
    let aucs: Vec<f64> = defined.iter().map(|d| d.0).collect();
    let weighted: Vec<f64> = defined.iter().map(|d| d.0 * d.1 as f64).collect();
    let total: Vec<f64> = defined.iter().map(|d| d.1 as f64).collect();
    (
        Some(np_mean(&aucs)),
        Some(np_sum(&weighted) / np_sum(&total)),
    )
}

/// Whether `label` is among the `k` highest scores of `row`, ties placing the higher class
/// index first (see the module docs).
fn in_top_k(row: &[f64], label: usize, k: usize) -> bool {
    let s = row[label];
    let ahead = row
        .iter()
        .enumerate()
        .filter(|&(j, &v)| v > s || (v == s && j > label))
        .count();
    ahead < k
}

/// Every N-class figure of `probs` against `labels` (see the module docs).
pub fn evaluate_multiclass(labels: &[usize], probs: &[Vec<f64>]) -> Result<MulticlassMetrics> {
    let k = check(labels, probs)?;
    let n = labels.len() as u64;
    let predicted = predicted_classes(probs);
    let cm = confusion(labels, &predicted, k, |_| 1);
    let mut f = from_confusion(&cm);
    let cols = columns(labels, probs, k);
    for (c, fig) in f.per_class.iter_mut().enumerate() {
        fig.roc_auc = cols.auc(c, fig.support, n, |_| 1);
    }
    let (macro_roc_auc, weighted_roc_auc) = auc_means(&f.per_class);
    let top_k_accuracy = (1..k)
        .map(|t| {
            let hits = labels
                .iter()
                .zip(probs)
                .filter(|(&y, r)| in_top_k(r, y, t))
                .count();
            TopK {
                k: t,
                accuracy: ratio(hits as u64, n),
            }
        })
        .collect();
    let eps = f64::EPSILON;
    let losses: Vec<f64> = labels
        .iter()
        .zip(probs)
        .map(|(&y, r)| -r[y].clamp(eps, 1.0 - eps).ln())
        .collect();
    let confusion_normalized = cm
        .iter()
        .map(|row| {
            let s: u64 = row.iter().sum();
            row.iter().map(|&v| ratio(v, s)).collect()
        })
        .collect();
    Ok(MulticlassMetrics {
        n,
        n_classes: k,
        accuracy: f.accuracy,
        balanced_accuracy: f.balanced_accuracy,
        per_class: f.per_class,
        macro_precision: f.macro_precision,
        macro_recall: f.macro_recall,
        macro_f1: f.macro_f1,
        weighted_f1: f.weighted_f1,
        macro_roc_auc,
        weighted_roc_auc,
        top_k_accuracy,
        log_loss: np_mean(&losses),
        confusion_matrix: cm,
        confusion_normalized,
        top_class_calibration: top_class_calibration(labels, probs)?,
    })
}

/// Reliability of the top class: confidence `max_k p_k`, outcome `argmax == label`, in
/// [`CALIBRATION_BINS`] bins.
pub fn top_class_calibration(labels: &[usize], probs: &[Vec<f64>]) -> Result<Calibration> {
    check(labels, probs)?;
    let predicted = predicted_classes(probs);
    let confidence: Vec<f64> = probs.iter().zip(&predicted).map(|(r, &p)| r[p]).collect();
    let correct: Vec<usize> = labels
        .iter()
        .zip(&predicted)
        .map(|(&y, &p)| usize::from(y == p))
        .collect();
    calibration(&correct, &confidence, CALIBRATION_BINS)
}

/// One class's bootstrap intervals. Recall, specificity and AUC leave out the resamples
/// where they are undefined (no sample of the class, no other sample, either); `None` when
/// no resample defined them. Precision and F1 use the zero-division value 0, as the point
/// estimates do, so every resample counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassIntervals {
    pub recall: Option<ConfidenceInterval>,
    pub specificity: Option<ConfidenceInterval>,
    pub precision: ConfidenceInterval,
    pub f1: ConfidenceInterval,
    pub roc_auc: Option<ConfidenceInterval>,
}

/// 95% percentile-bootstrap intervals of the N-class figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassBootstrap {
    pub n_resamples: usize,
    pub seed: u64,
    pub confidence: f64,
    pub accuracy: ConfidenceInterval,
    pub balanced_accuracy: ConfidenceInterval,
    pub macro_f1: ConfidenceInterval,
    /// Left out of a resample lacking a class whose AUC the full data defines.
    pub macro_roc_auc: Option<ConfidenceInterval>,
    /// Indexed by label.
    pub per_class: Vec<ClassIntervals>,
}

struct Resample {
    fc: FromConfusion,
    aucs: Vec<Option<f64>>,
    negatives: Vec<u64>,
    macro_auc: Option<f64>,
}

/// Seeded 95% percentile-bootstrap intervals for the per-class and overall figures of
/// [`evaluate_multiclass`]. The resamples are drawn exactly as
/// [`bootstrap_ci`](super::bootstrap_ci) draws them (ChaCha8 keyed by `seed`, stream `i`
/// for resample `i`, `n` uniform draws with replacement), so class `k`'s AUC interval equals
/// the binary interval of `label == k` against `p_k` with the same seed.
pub fn multiclass_bootstrap(
    labels: &[usize],
    probs: &[Vec<f64>],
    n_resamples: usize,
    seed: u64,
) -> Result<MulticlassBootstrap> {
    let k = check(labels, probs)?;
    if n_resamples == 0 {
        return Err(bad("the bootstrap needs at least one resample"));
    }
    let point = evaluate_multiclass(labels, probs)?;
    let n = labels.len();
    let predicted = predicted_classes(probs);
    let cols = columns(labels, probs, k);
    let full_defined: Vec<bool> = point
        .per_class
        .iter()
        .map(|c| c.roc_auc.is_some())
        .collect();
    let stats: Vec<Resample> = (0..n_resamples)
        .into_par_iter()
        .map(|i| {
            let mut rng = resample_rng(seed, i);
            let mut weight = vec![0u32; n];
            for _ in 0..n {
                weight[rng.random_range(0..n)] += 1;
            }
            let w = |j: usize| u64::from(weight[j]);
            let cm = confusion(labels, &predicted, k, w);
            let fc = from_confusion(&cm);
            let aucs: Vec<Option<f64>> = (0..k)
                .map(|c| cols.auc(c, fc.per_class[c].support, n as u64, w))
                .collect();
            let negatives = fc.per_class.iter().map(|c| n as u64 - c.support).collect();
            let all = (0..k).all(|c| !full_defined[c] || aucs[c].is_some());
            let defined: Vec<f64> = aucs.iter().flatten().copied().collect();
            let macro_auc = (all && !defined.is_empty()).then(|| np_mean(&defined));
            Resample {
                fc,
                aucs,
                negatives,
                macro_auc,
            }
        })
        .collect();
    let confidence = 0.95;
    let ci = |estimate: f64, values: Vec<f64>, what: &str| -> Option<ConfidenceInterval> {
        if values.is_empty() {
            None
        } else {
            interval(estimate, values, confidence, what).ok()
        }
    };
    let all = |estimate: f64, values: Vec<f64>, what: &str| -> Result<ConfidenceInterval> {
        interval(estimate, values, confidence, what)
    };
    let per_class = (0..k)
        .map(|c| {
            let p = &point.per_class[c];
            Ok(ClassIntervals {
                recall: ci(
                    p.recall,
                    stats
                        .iter()
                        .filter(|s| s.fc.per_class[c].support > 0)
                        .map(|s| s.fc.per_class[c].recall)
                        .collect(),
                    "recall",
                ),
                specificity: ci(
                    p.specificity,
                    stats
                        .iter()
                        .filter(|s| s.negatives[c] > 0)
                        .map(|s| s.fc.per_class[c].specificity)
                        .collect(),
                    "specificity",
                ),
                precision: all(
                    p.precision,
                    stats.iter().map(|s| s.fc.per_class[c].precision).collect(),
                    "precision",
                )?,
                f1: all(
                    p.f1,
                    stats.iter().map(|s| s.fc.per_class[c].f1).collect(),
                    "F1",
                )?,
                roc_auc: p.roc_auc.and_then(|a| {
                    ci(
                        a,
                        stats.iter().filter_map(|s| s.aucs[c]).collect(),
                        "ROC AUC",
                    )
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(MulticlassBootstrap {
        n_resamples,
        seed,
        confidence,
        accuracy: all(
            point.accuracy,
            stats.iter().map(|s| s.fc.accuracy).collect(),
            "accuracy",
        )?,
        balanced_accuracy: all(
            point.balanced_accuracy,
            stats.iter().map(|s| s.fc.balanced_accuracy).collect(),
            "balanced accuracy",
        )?,
        macro_f1: all(
            point.macro_f1,
            stats.iter().map(|s| s.fc.macro_f1).collect(),
            "macro F1",
        )?,
        macro_roc_auc: point.macro_roc_auc.and_then(|a| {
            ci(
                a,
                stats.iter().filter_map(|s| s.macro_auc).collect(),
                "macro ROC AUC",
            )
        }),
        per_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[[f64; 3]]) -> Vec<Vec<f64>> {
        v.iter().map(|r| r.to_vec()).collect()
    }

    #[test]
    fn hand_computed_three_classes() {
        let y = [0, 0, 1, 1, 2, 2];
        let p = rows(&[
            [0.7, 0.2, 0.1],
            [0.4, 0.4, 0.2], // tie: argmax 0, top-1 (sklearn) class 1
            [0.1, 0.8, 0.1],
            [0.5, 0.3, 0.2],
            [0.2, 0.2, 0.6],
            [0.3, 0.3, 0.4],
        ]);
        let m = evaluate_multiclass(&y, &p).unwrap();
        assert_eq!(
            m.confusion_matrix,
            vec![vec![2, 0, 0], vec![1, 1, 0], vec![0, 0, 2]]
        );
        assert_eq!(m.confusion_normalized[1], vec![0.5, 0.5, 0.0]);
        assert_eq!(m.accuracy, 5.0 / 6.0);
        let c0 = &m.per_class[0];
        assert_eq!((c0.support, c0.predicted), (2, 3));
        assert_eq!(c0.recall, 1.0);
        assert_eq!(c0.precision, 2.0 / 3.0);
        assert_eq!(c0.specificity, 3.0 / 4.0);
        assert_eq!(c0.f1, 4.0 / 5.0);
        assert_eq!(m.per_class[1].recall, 0.5);
        assert!((m.balanced_accuracy - 2.5 / 3.0).abs() < 1e-15);
        // Top-1 breaks the tie of row 1 towards class 1, so that row misses too (and row 3
        // does): 4 of 6, where accuracy (argmax, first on ties) counts 5.
        assert_eq!(
            m.top_k_accuracy[0],
            TopK {
                k: 1,
                accuracy: 4.0 / 6.0
            }
        );
        assert_eq!(m.top_k_accuracy[1].k, 2);
        // Class 2: scores 0.6, 0.4 (positives) above every negative's: AUC 1.
        assert_eq!(m.per_class[2].roc_auc, Some(1.0));
        let ll =
            -(0.7f64.ln() + 0.4f64.ln() + 0.8f64.ln() + 0.3f64.ln() + 0.6f64.ln() + 0.4f64.ln())
                / 6.0;
        assert!((m.log_loss - ll).abs() < 1e-15);
    }

    #[test]
    fn top_k_ties_prefer_the_higher_index() {
        let row = [0.4, 0.4, 0.2];
        assert!(in_top_k(&row, 1, 1));
        assert!(!in_top_k(&row, 0, 1));
        assert!(in_top_k(&row, 0, 2));
        assert!(!in_top_k(&row, 2, 2));
    }

    #[test]
    fn absent_class_has_no_auc_and_zero_division_rules_apply() {
        // Class 2 never occurs and is never predicted.
        let y = [0, 1, 0, 1];
        let p = rows(&[
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.3, 0.6, 0.1],
            [0.1, 0.8, 0.1],
        ]);
        let m = evaluate_multiclass(&y, &p).unwrap();
        let c2 = &m.per_class[2];
        assert_eq!(c2.roc_auc, None);
        assert_eq!((c2.recall, c2.precision, c2.f1), (0.0, 0.0, 0.0));
        assert_eq!(c2.specificity, 1.0);
        // Balanced accuracy averages classes 0 and 1 only; macro F1 all three.
        assert_eq!(m.balanced_accuracy, (0.5 + 1.0) / 2.0);
        assert!((m.macro_f1 - (2.0 / 3.0 + 0.8) / 3.0).abs() < 1e-15);
        // Classes 0 and 1 are ranked perfectly; class 2 has no AUC and is left out.
        assert_eq!(m.macro_roc_auc, Some(1.0));
        let b = multiclass_bootstrap(&y, &p, 50, 3).unwrap();
        assert!(b.per_class[2].roc_auc.is_none() && b.per_class[2].recall.is_none());
        assert_eq!(b.per_class[2].precision.estimate, 0.0);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let p = rows(&[[0.5, 0.5, 0.0]]);
        assert!(evaluate_multiclass(&[3], &p).is_err());
        assert!(evaluate_multiclass(&[0, 1], &p).is_err());
        assert!(evaluate_multiclass(&[], &[]).is_err());
        assert!(evaluate_multiclass(&[0], &rows(&[[0.5, f64::NAN, 0.0]])).is_err());
        assert!(evaluate_multiclass(&[0, 0], &[vec![1.0, 0.0], vec![1.0]]).is_err());
        assert!(multiclass_bootstrap(&[0], &p, 0, 1).is_err());
    }

    #[test]
    fn bootstrap_is_seeded_and_matches_the_binary_draws() {
        let n = 120;
        let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let p: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let noise = ((i * 37) % 10) as f64 / 20.0;
                let mut r = [0.25 - noise / 4.0; 3];
                r[y[i]] += 0.25 + noise / 2.0;
                if i % 7 == 0 {
                    r.rotate_left(1);
                }
                let s: f64 = r.iter().sum();
                r.iter().map(|v| v / s).collect()
            })
            .collect();
        let a = multiclass_bootstrap(&y, &p, 200, 9).unwrap();
        assert_eq!(a, multiclass_bootstrap(&y, &p, 200, 9).unwrap());
        assert_ne!(a, multiclass_bootstrap(&y, &p, 200, 10).unwrap());
        for c in 0..3 {
            let yc: Vec<usize> = y.iter().map(|&v| usize::from(v == c)).collect();
            let pc: Vec<f64> = p.iter().map(|r| r[c]).collect();
            let bin = super::super::bootstrap_ci(&yc, &pc, 200, 9, 0.5).unwrap();
            assert_eq!(a.per_class[c].roc_auc, Some(bin.roc_auc));
            let ci = a.per_class[c].recall.unwrap();
            assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
        }
        assert!(a.accuracy.lower < a.accuracy.upper);
        assert_eq!(a.macro_roc_auc.unwrap().n_used, 200);
    }
}

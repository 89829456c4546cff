//! ROC and precision-recall curves, ROC AUC and average precision, from the cumulative
//! counts at each distinct score (scikit-learn's `_binary_clf_curve`).

use serde::{Deserialize, Serialize};

use super::numpy::np_sum;
use super::{check_inputs, need_both_classes, need_positives};
use crate::Result;

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

/// Cumulative counts at each distinct score, scores decreasing (`_binary_clf_curve`).
#[derive(Debug, Clone, Default)]
pub(super) struct Counts {
    pub(super) fps: Vec<u64>,
    pub(super) tps: Vec<u64>,
    pub(super) thresholds: Vec<f64>,
}

pub(super) fn descending_order(probs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable, so that ties keep a reproducible order; their order cannot change the
    // counts, which are only read after the last member of a tie.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
}

/// Walks samples in `order` (scores decreasing), each counted `weight(i)` times, and emits
/// one point after the last sample of every distinct score. Zero-weight samples are
/// skipped so that a bootstrap resample sees exactly the thresholds it contains.
pub(super) fn counts_from_order(
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
pub(super) fn drop_intermediate(c: Counts) -> Counts {
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
pub(super) fn roc_from_counts(c: &Counts) -> RocCurve {
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
pub(super) fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    let terms: Vec<f64> = (1..x.len())
        .map(|k| (x[k] - x[k - 1]) * (y[k] + y[k - 1]) / 2.0)
        .collect();
    np_sum(&terms)
}

pub(super) fn auc_from_counts(c: Counts) -> f64 {
    let roc = roc_from_counts(&drop_intermediate(c));
    trapezoid(&roc.fpr, &roc.tpr)
}

pub(super) fn pr_from_counts(c: &Counts) -> PrCurve {
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
pub(super) fn average_precision_from_pr(pr: &PrCurve) -> f64 {
    let terms: Vec<f64> = (0..pr.recall.len() - 1)
        .map(|j| (pr.recall[j + 1] - pr.recall[j]) * pr.precision[j])
        .collect();
    -np_sum(&terms)
}

pub(super) fn full_counts(labels: &[usize], probs: &[f64]) -> Counts {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{close, TIE_P, TIE_Y};
    use super::*;

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
}

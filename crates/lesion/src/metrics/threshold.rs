//! Choosing a decision threshold: Youden's J and the threshold for a target sensitivity.

use serde::{Deserialize, Serialize};

use super::confusion::ratio;
use super::roc::{drop_intermediate, full_counts, roc_from_counts, Counts};
use super::{bad, check_inputs, need_both_classes, ClassCounts};
use crate::Result;

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

pub(super) fn target_point(counts: &Counts, c: ClassCounts, target: f64) -> SensitivityTarget {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{TIE_P, TIE_Y};
    use super::*;
    use crate::metrics::evaluate;

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
}

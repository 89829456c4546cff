//! The confusion matrix at a threshold and the ratios scikit-learn derives from it.

use serde::{Deserialize, Serialize};

use super::{check_inputs, check_threshold};
use crate::Result;

/// Counts of a binary confusion matrix (positive = malignant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub tn: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tp: u64,
}

pub(super) fn ratio(num: u64, den: u64) -> f64 {
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

    pub(super) fn add(&mut self, positive: bool, predicted_positive: bool, weight: u64) {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{close, TIE_P, TIE_Y};
    use super::*;

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
}

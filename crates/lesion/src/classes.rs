//! The classes of a prepared dataset and of a run ([`Classes`]): names in label order, the
//! head they need, how logits become class probabilities, and the positive group that gives
//! the binary (malignant-vs-benign) view.
//!
//! - Two classes: the notebook's head, one logit `[b, 1]`; label 1 is the positive class and
//!   its probability is `sigmoid(logit)` (label 0 gets `1 - sigmoid(logit)`). The positive
//!   group is `{1}`.
//! - N > 2 classes: N logits `[b, N]`, probabilities `softmax(logits)` (computed in f64). The
//!   positive group is the classes named as malignant (`--malignant` at prep or eval), or none;
//!   its probability is the sum of its classes' probabilities.

use crate::{Error, Result};

/// Class names (label order) and the positive group. Built by [`Classes::new`], which
/// checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classes {
    names: Vec<String>,
    /// Sorted labels of the positive group: `[1]` for two classes, the malignant classes
    /// (possibly none) for more.
    positive: Vec<usize>,
}

impl Classes {
    /// `names` in label order (at least two, distinct ignoring case) and, for N > 2, the
    /// names of the malignant classes (may be empty). For two classes `malignant` must be
    /// empty or name label 1: the positive class is always label 1.
    pub fn new(names: Vec<String>, malignant: &[String]) -> Result<Self> {
        if names.len() < 2 {
            return Err(Error::InvalidOption(format!(
                "a classifier needs at least two classes, got {}: {names:?}",
                names.len()
            )));
        }
        if names.len() > usize::from(u8::MAX) + 1 {
            return Err(Error::InvalidOption(format!(
                "at most 256 classes are supported, got {}",
                names.len()
            )));
        }
        for (i, a) in names.iter().enumerate() {
            if a.is_empty() {
                return Err(Error::InvalidOption("a class name is empty".into()));
            }
            if let Some(b) = names[..i].iter().find(|b| b.eq_ignore_ascii_case(a)) {
                return Err(Error::InvalidOption(format!(
                    "classes `{b}` and `{a}` differ only in case"
                )));
            }
        }
        let mut positive = Vec::with_capacity(malignant.len());
        for m in malignant {
            let k = names.iter().position(|n| n == m).ok_or_else(|| {
                Error::InvalidOption(format!(
                    "malignant class `{m}` is not one of the classes {}",
                    names.join(", ")
                ))
            })?;
            if !positive.contains(&k) {
                positive.push(k);
            }
        }
        positive.sort_unstable();
        if names.len() == 2 {
            if positive.iter().any(|&k| k != 1) {
                return Err(Error::InvalidOption(format!(
                    "with two classes the positive class is label 1 (`{}`), not `{}`",
                    names[1], names[0]
                )));
            }
            positive = vec![1];
        }
        Ok(Self { names, positive })
    }

    /// The notebook's classes, `Benign` (0) and `Malignant` (1).
    pub fn benign_malignant() -> Self {
        Self {
            names: vec!["Benign".into(), "Malignant".into()],
            positive: vec![1],
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, label: usize) -> &str {
        &self.names[label]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true: a `Classes` has at least two names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn is_binary(&self) -> bool {
        self.names.len() == 2
    }

    /// Width of the head's last layer: 1 for two classes, N otherwise.
    pub fn outputs(&self) -> usize {
        if self.is_binary() {
            1
        } else {
            self.names.len()
        }
    }

    /// Label of a class name: exact match first, then ignoring ASCII case.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .or_else(|| self.names.iter().position(|n| n.eq_ignore_ascii_case(name)))
    }

    /// Labels of the positive group, sorted; `None` for N > 2 classes without malignant
    /// classes.
    pub fn positive_group(&self) -> Option<&[usize]> {
        (!self.positive.is_empty()).then_some(self.positive.as_slice())
    }

    /// Names of the positive group's classes (empty when there is none).
    pub fn positive_names(&self) -> Vec<String> {
        self.positive
            .iter()
            .map(|&k| self.names[k].clone())
            .collect()
    }

    /// The malignant names to record (`--malignant`): empty for two classes, whose positive
    /// class is implied by the label order.
    pub fn malignant_record(&self) -> Vec<String> {
        if self.is_binary() {
            Vec::new()
        } else {
            self.positive_names()
        }
    }

    /// Whether `label` is in the positive group.
    pub fn is_positive(&self, label: usize) -> bool {
        self.positive.binary_search(&label).is_ok()
    }

    /// Class probabilities of one image from its [`Self::outputs`] logits: for two classes
    /// `[1 - sigmoid(x), sigmoid(x)]`, for more `softmax(x)` in f64.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f64> {
        debug_assert_eq!(logits.len(), self.outputs());
        if self.is_binary() {
            let p = sigmoid(f64::from(logits[0]));
            return vec![1.0 - p, p];
        }
        softmax(logits)
    }

    /// Probability of the positive group from [`Self::probabilities`]'s output: for two
    /// classes exactly `sigmoid(logit)`; `None` without a group.
    pub fn positive_probability(&self, probs: &[f64]) -> Option<f64> {
        self.positive_group()
            .map(|g| g.iter().map(|&k| probs[k]).sum())
    }
}

/// Logistic sigmoid that does not overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `softmax(x)` in f64, shifted by the maximum so that it cannot overflow.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|&x| (f64::from(x) - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_classes_use_one_logit_and_label_one_is_positive() {
        let c = Classes::new(names(&["Benign", "Malignant"]), &[]).unwrap();
        assert_eq!(c, Classes::benign_malignant());
        assert_eq!(c.outputs(), 1);
        assert_eq!(c.positive_group(), Some(&[1][..]));
        assert!(c.malignant_record().is_empty());
        let p = c.probabilities(&[2.0]);
        assert_eq!(p[1], sigmoid(2.0));
        assert_eq!(p[0], 1.0 - sigmoid(2.0));
        assert_eq!(c.positive_probability(&p), Some(sigmoid(2.0)));
        let err = Classes::new(names(&["Benign", "Malignant"]), &names(&["Benign"])).unwrap_err();
        assert!(err.to_string().contains("label 1 (`Malignant`)"), "{err}");
    }

    #[test]
    fn n_classes_use_softmax_and_sum_the_malignant_group() {
        let c = Classes::new(
            names(&["melanoma", "nevus", "seborrheic_keratosis"]),
            &names(&["melanoma"]),
        )
        .unwrap();
        assert_eq!(c.outputs(), 3);
        assert!(c.is_positive(0) && !c.is_positive(1));
        let p = c.probabilities(&[1.0, 2.0, 3.0]);
        // softmax([1, 2, 3]) from numpy: exp(x - 3) / sum.
        let expected = [0.09003057317038046, 0.24472847105479767, 0.6652409557748219];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
        assert_eq!(c.positive_probability(&p), Some(p[0]));
        assert_eq!(c.malignant_record(), ["melanoma"]);
        let none = Classes::new(names(&["a", "b", "c"]), &[]).unwrap();
        assert_eq!(none.positive_group(), None);
        assert_eq!(none.positive_probability(&p), None);
        assert_eq!(none.index("B"), Some(1));
    }

    #[test]
    fn softmax_does_not_overflow() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert_eq!(p, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn bad_class_lists_are_refused() {
        for (list, mal, why) in [
            (names(&["a"]), vec![], "at least two"),
            (names(&["Nevus", "nevus"]), vec![], "differ only in case"),
            (names(&["a", "b", "c"]), names(&["d"]), "`d` is not one of"),
            (names(&["a", ""]), vec![], "empty"),
        ] {
            let err = Classes::new(list, &mal).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}

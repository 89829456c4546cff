//! Validation figures that only training needs: the balanced accuracy of the
//! `val_balanced_acc` monitor and history column.

use crate::infer::SplitPredictions;
use crate::metrics;

/// scikit-learn's `balanced_accuracy_score(labels, predicted)`: the mean, over the classes
/// that occur in `labels`, of the fraction of their images predicted as them (a class that
/// is only predicted has no recall and is left out, as scikit-learn does); NaN when empty.
/// Both slices hold class indices and have equal length.
pub fn balanced_accuracy(labels: &[usize], predicted: &[usize]) -> f64 {
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let (mut support, mut hits) = (vec![0usize; classes], vec![0usize; classes]);
    for (&y, &p) in labels.iter().zip(predicted) {
        support[y] += 1;
        hits[y] += usize::from(p == y);
    }
    let recalls: Vec<f64> = support
        .iter()
        .zip(&hits)
        .filter(|(&n, _)| n > 0)
        .map(|(&n, &h)| h as f64 / n as f64)
        .collect();
    if recalls.is_empty() {
        return f64::NAN;
    }
    recalls.iter().sum::<f64>() / recalls.len() as f64
}

/// Balanced accuracy of validation predictions: of the class predicted at threshold 0.5
/// for two classes, of the most probable class otherwise.
pub fn val_balanced_accuracy(val: &SplitPredictions) -> f64 {
    let predicted: Vec<usize> = (0..val.len())
        .map(|i| val.predicted(i, metrics::DEFAULT_THRESHOLD))
        .collect();
    balanced_accuracy(&val.labels, &predicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::Classes;

    /// Against scikit-learn (`scripts/fixtures/make_schedule_fixture.py`).
    #[test]
    fn balanced_accuracy_matches_scikit_learn() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/schedule_balanced_accuracy.json"
        ))
        .unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        let ints = |v: &serde_json::Value| -> Vec<usize> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect()
        };
        for case in cases {
            let (y, p) = (ints(&case["labels"]), ints(&case["predicted"]));
            let want = case["balanced_accuracy"].as_f64().unwrap();
            let got = balanced_accuracy(&y, &p);
            assert!(
                (got - want).abs() <= 1e-12,
                "{got} vs {want} for {y:?} {p:?}"
            );
        }
        assert!(balanced_accuracy(&[], &[]).is_nan());
    }

    #[test]
    fn validation_balanced_accuracy_uses_the_threshold_or_the_argmax() {
        let binary = Classes::new(vec!["Benign".into(), "Malignant".into()], &[]).unwrap();
        // Logit 0 is probability 0.5: predicted malignant at threshold 0.5.
        let val = SplitPredictions::from_logits(
            &binary,
            vec![0, 1, 2, 3, 4],
            vec![0, 0, 0, 0, 1],
            vec![-2.0, -1.0, 0.0, 3.0, 0.0],
        );
        // Benign recall 2/4, malignant recall 1/1; plain accuracy would be 3/5.
        assert_eq!(val_balanced_accuracy(&val), 0.75);
        let three = Classes::new(vec!["a".into(), "b".into(), "c".into()], &[]).unwrap();
        let val = SplitPredictions::from_logits(
            &three,
            vec![0, 1, 2],
            vec![0, 1, 2],
            vec![3.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 5.0],
        );
        // Row 2 predicts c (logit 2 > 1): recalls 1, 0, 1.
        assert!((val_balanced_accuracy(&val) - 2.0 / 3.0).abs() < 1e-15);
    }
}

//! `lesion::metrics::multiclass` against scikit-learn's values in
//! `tests/fixtures/multiclass_metrics.json` (written by
//! `scripts/fixtures/make_multiclass_metrics.py`): 300 samples of 3 classes and 400 of 8
//! (one never predicted), with ties across samples and inside rows.

use lesion::metrics::{evaluate_multiclass, MulticlassMetrics};
use serde_json::Value;

const TOL: f64 = 1e-9;

struct Case {
    labels: Vec<usize>,
    probs: Vec<Vec<f64>>,
    expect: Value,
}

fn cases() -> Vec<(String, Case)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/multiclass_metrics.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let obj = v["cases"].as_object().unwrap();
    obj.iter()
        .map(|(name, c)| {
            let labels = c["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let probs = c["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap())
                        .collect()
                })
                .collect();
            let case = Case {
                labels,
                probs,
                expect: c["expect"].clone(),
            };
            (name.clone(), case)
        })
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn check(case: &str, name: &str, got: f64, want: f64) {
    let diff = (got - want).abs();
    println!("{case} {name:<28} got {got:<22} want {want:<22} |diff| {diff:.3e}");
    assert!(
        diff <= TOL,
        "{case} {name}: got {got}, want {want}, |diff| {diff:e}"
    );
}

fn check_vec(case: &str, name: &str, got: &[f64], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{case} {name}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        check(case, &format!("{name}[{k}]"), *g, num(w));
    }
}

fn per_class(m: &MulticlassMetrics, f: impl Fn(&lesion::metrics::ClassFigures) -> f64) -> Vec<f64> {
    m.per_class.iter().map(f).collect()
}

#[test]
fn every_multiclass_metric_matches_scikit_learn() {
    let all = cases();
    assert_eq!(all.len(), 2);
    for (case, c) in &all {
        let e = &c.expect;
        let m = evaluate_multiclass(&c.labels, &c.probs).unwrap();
        let k = m.n_classes;
        assert!(k == 3 || k == 8, "{case}");
        check(case, "accuracy", m.accuracy, num(&e["accuracy"]));
        check(
            case,
            "balanced_accuracy",
            m.balanced_accuracy,
            num(&e["balanced_accuracy"]),
        );
        check_vec(case, "recall", &per_class(&m, |c| c.recall), &e["recall"]);
        check_vec(
            case,
            "precision",
            &per_class(&m, |c| c.precision),
            &e["precision"],
        );
        check_vec(case, "f1", &per_class(&m, |c| c.f1), &e["f1"]);
        check_vec(
            case,
            "specificity",
            &per_class(&m, |c| c.specificity),
            &e["specificity"],
        );
        check_vec(
            case,
            "roc_auc",
            &per_class(&m, |c| c.roc_auc.unwrap()),
            &e["roc_auc"],
        );
        let support: Vec<u64> = m.per_class.iter().map(|c| c.support).collect();
        let want: Vec<u64> = e["support"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(support, want, "{case}");
        check(
            case,
            "macro_roc_auc",
            m.macro_roc_auc.unwrap(),
            num(&e["macro_roc_auc"]),
        );
        check(
            case,
            "weighted_roc_auc",
            m.weighted_roc_auc.unwrap(),
            num(&e["weighted_roc_auc"]),
        );
        check(
            case,
            "macro_precision",
            m.macro_precision,
            num(&e["macro_precision"]),
        );
        check(
            case,
            "macro_recall",
            m.macro_recall,
            num(&e["macro_recall"]),
        );
        check(case, "macro_f1", m.macro_f1, num(&e["macro_f1"]));
        check(case, "weighted_f1", m.weighted_f1, num(&e["weighted_f1"]));
        check(case, "log_loss", m.log_loss, num(&e["log_loss"]));
        let topk = e["top_k_accuracy"].as_object().unwrap();
        assert_eq!(m.top_k_accuracy.len(), topk.len(), "{case}");
        for t in &m.top_k_accuracy {
            check(
                case,
                &format!("top_{}", t.k),
                t.accuracy,
                num(&topk[&t.k.to_string()]),
            );
        }
        let cm: Vec<Vec<u64>> = serde_json::from_value(e["confusion_matrix"].clone()).unwrap();
        assert_eq!(m.confusion_matrix, cm, "{case}");
        for (i, row) in m.confusion_normalized.iter().enumerate() {
            check_vec(
                case,
                &format!("confusion_normalized[{i}]"),
                row,
                &e["confusion_normalized"][i],
            );
        }
        let cal = &m.top_class_calibration;
        check(case, "ece_top", cal.ece, num(&e["ece_top"]));
        for (b, want) in cal
            .bins
            .iter()
            .zip(e["calibration_bins"].as_array().unwrap())
        {
            assert_eq!(b.count, want["count"].as_u64().unwrap(), "{case}");
            check(
                case,
                "bin mean_predicted",
                b.mean_predicted,
                num(&want["mean_predicted"]),
            );
            check(
                case,
                "bin observed_frequency",
                b.observed_frequency,
                num(&want["observed_frequency"]),
            );
        }
    }
    // The 8-class case's class 5 is never predicted: scikit-learn's zero-division value.
    let (_, n8) = all.iter().find(|(n, _)| n == "n8").unwrap();
    let m = evaluate_multiclass(&n8.labels, &n8.probs).unwrap();
    assert_eq!(m.per_class[5].predicted, 0);
    assert_eq!((m.per_class[5].precision, m.per_class[5].f1), (0.0, 0.0));
}

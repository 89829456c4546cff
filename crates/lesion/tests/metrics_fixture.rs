//! `lesion::metrics` against scikit-learn's values in `shared/fixtures/metrics_expected.json`
//! (500 samples with deliberate ties; see `make_fixtures.py`, `metric_values`).

mod common;

use lesion::metrics::{self, ConfusionMatrix};
use serde_json::Value;

struct Fixture {
    labels: Vec<usize>,
    probs: Vec<f64>,
    threshold: f64,
    expect: Value,
    /// The file's text, for reading floats exactly (see [`raw_numbers`]).
    text: String,
}

/// The number (or array of numbers) after `"key":`, parsed by `str::parse`, which rounds
/// correctly. serde_json's default float parser may be one ulp off, which would shift the
/// inputs away from scikit-learn's and blur the measured differences.
fn raw_numbers(text: &str, key: &str) -> Vec<f64> {
    let pat = format!("\"{key}\":");
    let start = text
        .find(&pat)
        .unwrap_or_else(|| panic!("fixture lacks {key}"))
        + pat.len();
    let rest = text[start..].trim_start();
    let body = match rest.strip_prefix('[') {
        Some(array) => &array[..array.find(']').unwrap()],
        None => &rest[..rest.find([',', '}', '\n']).unwrap()],
    };
    body.split(',')
        .map(|t| t.trim().parse::<f64>().unwrap())
        .collect()
}

fn load() -> Fixture {
    let path = common::fixture("metrics_expected.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let labels = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let probs = raw_numbers(&text, "probabilities");
    assert_eq!(probs.len(), v["probabilities"].as_array().unwrap().len());
    Fixture {
        labels,
        probs,
        threshold: raw_numbers(&text, "threshold")[0],
        expect: v["expect"].clone(),
        text,
    }
}

fn expected(f: &Fixture, key: &str) -> f64 {
    assert!(f.expect[key].is_f64(), "fixture lacks expect.{key}");
    raw_numbers(&f.text, key)[0]
}

/// Asserts within `tol` and prints the measured difference, so that a run with
/// `--nocapture` documents how close we are.
fn check(name: &str, got: f64, want: f64, tol: f64) {
    let diff = (got - want).abs();
    println!("{name:<20} got {got:<22} want {want:<22} |diff| {diff:.3e}");
    assert!(
        diff <= tol,
        "{name}: got {got}, want {want}, |diff| {diff:e} > {tol:e}"
    );
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn every_metric_matches_scikit_learn() {
    let f = load();
    assert_eq!(f.labels.len(), 500);
    let m = metrics::evaluate(&f.labels, &f.probs, f.threshold).unwrap();

    let cm = &f.expect["confusion_matrix"];
    let count = |k: &str| cm[k].as_u64().unwrap();
    assert_eq!(
        m.confusion_matrix,
        ConfusionMatrix {
            tn: count("tn"),
            fp: count("fp"),
            fn_: count("fn"),
            tp: count("tp"),
        }
    );

    let tol = 1e-9;
    check("accuracy", m.accuracy, expected(&f, "accuracy"), tol);
    check(
        "balanced_accuracy",
        m.balanced_accuracy,
        expected(&f, "balanced_accuracy"),
        tol,
    );
    check("precision", m.precision, expected(&f, "precision"), tol);
    check(
        "recall_sensitivity",
        m.sensitivity,
        expected(&f, "recall_sensitivity"),
        tol,
    );
    check(
        "specificity",
        m.specificity,
        expected(&f, "specificity"),
        tol,
    );
    check("f1", m.f1, expected(&f, "f1"), tol);
    check("mcc", m.mcc, expected(&f, "mcc"), tol);
    check("roc_auc", m.roc_auc, expected(&f, "roc_auc"), tol);
    check(
        "average_precision",
        m.average_precision,
        expected(&f, "average_precision"),
        tol,
    );
    check("brier", m.brier, expected(&f, "brier"), tol);
    check("log_loss", m.log_loss, expected(&f, "log_loss"), tol);

    let youden = m.youden.expect("the fixture's classifier beats chance");
    check(
        "youden_threshold",
        youden.threshold,
        expected(&f, "youden_threshold"),
        1e-12,
    );
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn standalone_functions_agree_with_evaluate_and_fixture() {
    let f = load();
    let (y, p) = (&f.labels, &f.probs);
    let m = metrics::evaluate(y, p, f.threshold).unwrap();

    let roc = metrics::roc_curve(y, p, true).unwrap();
    let want_points = f.expect["roc_points"].as_u64().unwrap() as usize;
    assert_eq!(roc.fpr.len(), want_points);
    assert_eq!(roc.tpr.len(), want_points);
    assert_eq!(roc.thresholds.len(), want_points);
    assert!(roc.thresholds[0].is_infinite());
    assert!(roc.thresholds[1..].windows(2).all(|w| w[0] > w[1]));

    // The full curve has one point per distinct score (plus the leading one): ties merge.
    let mut distinct = p.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert!(distinct.len() < p.len(), "the fixture has ties on purpose");
    let full = metrics::roc_curve(y, p, false).unwrap();
    assert_eq!(full.fpr.len(), distinct.len() + 1);

    assert_eq!(metrics::roc_auc(y, p).unwrap(), m.roc_auc);
    assert_eq!(
        metrics::average_precision(y, p).unwrap(),
        m.average_precision
    );
    assert_eq!(metrics::brier_score(y, p).unwrap(), m.brier);
    assert_eq!(metrics::log_loss(y, p).unwrap(), m.log_loss);
    let youden = metrics::youden(y, p).unwrap();
    assert_eq!(Some(youden), m.youden);

    let pr = metrics::precision_recall_curve(y, p).unwrap();
    assert_eq!(pr.thresholds.len(), distinct.len());
    assert_eq!(pr.precision.len(), distinct.len() + 1);

    // Youden's sensitivity is reached at Youden's threshold, so the highest threshold
    // reaching it is no lower.
    let t = metrics::threshold_for_sensitivity(y, p, youden.sensitivity).unwrap();
    assert!(t.threshold >= youden.threshold);
    assert!(t.sensitivity >= youden.sensitivity);

    let ci = metrics::bootstrap_ci(y, p, 1000, 42, f.threshold).unwrap();
    assert_eq!(
        ci,
        metrics::bootstrap_ci(y, p, 1000, 42, f.threshold).unwrap()
    );
    for (name, iv, point) in [
        ("roc_auc", ci.roc_auc, m.roc_auc),
        ("sensitivity", ci.sensitivity, m.sensitivity),
        ("specificity", ci.specificity, m.specificity),
        ("accuracy", ci.accuracy, m.accuracy),
    ] {
        println!("{name:<12} {point:.4} [{:.4}, {:.4}]", iv.lower, iv.upper);
        assert_eq!(iv.estimate, point);
        assert!(iv.lower <= point && point <= iv.upper, "{name}: {iv:?}");
    }
}

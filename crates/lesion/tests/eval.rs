//! The eval stage end to end: on tiny self-made data (every output, figures that agree with
//! `lesion::metrics` recomputed from predictions.csv, the run's threshold, deterministic
//! bootstrap intervals, refusals), and — ignored by default, run by CI — the whole chain on
//! `shared/data/isic2017-256` at 112 px with its report opened in headless Chromium.

mod common;
#[path = "support/webdriver.rs"]
mod webdriver;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lesion::eval::{self, EvalMetrics, EvalOptions, ThresholdMethod, OUTPUT_FILES};
use lesion::metrics;
use lesion::prep::{self, PrepOptions};
use lesion::split::Split;
use lesion::train::{self, Monitor, TrainConfig};
use lesion::Error;
use webdriver::Browser;

// ---------------------------------------------------------------------------------------
// Tiny data, shared by the fast tests

/// Synthetic images (12 per class), prepared at 32 px, and a 2-epoch run trained on them.
struct Tiny {
    _dir: tempfile::TempDir,
    images: PathBuf,
    data: PathBuf,
    run: PathBuf,
}

fn tiny() -> &'static Tiny {
    static TINY: OnceLock<Tiny> = OnceLock::new();
    TINY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        lesion::synth::generate(&images, 12, 7, false, false).unwrap();
        let data = dir.path().join("prepared");
        let mut opts = PrepOptions::new(&images, &data);
        opts.size = 32;
        opts.progress = false;
        prep::run(&opts).unwrap();
        let run = dir.path().join("run");
        let cfg = TrainConfig {
            data: data.clone(),
            out: run.clone(),
            epochs: 2,
            batch_size: 8,
            patience: 10,
            monitor: Monitor::ValAuc,
            weights: "none".into(),
            device: "cpu".into(),
            ..TrainConfig::default()
        };
        train::train(&cfg, false).unwrap();
        Tiny {
            _dir: dir,
            images,
            data,
            run,
        }
    })
}

/// A private copy of the tiny run (tests write into their run folders).
fn run_copy(dest: &Path, with_best: bool) -> PathBuf {
    let run = dest.join("run");
    fs::create_dir_all(&run).unwrap();
    for f in [
        "config.json",
        "best.safetensors",
        "history.csv",
        "curves.png",
    ] {
        if f == "best.safetensors" && !with_best {
            continue;
        }
        fs::copy(tiny().run.join(f), run.join(f)).unwrap();
    }
    run
}

fn options(run: &Path, data: &Path) -> EvalOptions {
    EvalOptions {
        run: run.to_path_buf(),
        data: data.to_path_buf(),
        bootstrap: 200,
        device: "cpu".into(),
        batch_size: 16,
        progress: false,
        ..EvalOptions::default()
    }
}

/// `predictions.csv` as (header -> column) maps, one per row.
fn read_predictions(path: &Path) -> Vec<HashMap<String, String>> {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            assert_eq!(fields.len(), header.len(), "{l}");
            header
                .iter()
                .cloned()
                .zip(fields.into_iter().map(String::from))
                .collect()
        })
        .collect()
}

/// The malignant-vs-benign figures every two-class evaluation has.
fn bin(m: &EvalMetrics) -> &eval::BinaryView {
    m.binary
        .as_ref()
        .expect("a two-class evaluation has its binary figures")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(1.0)
}

fn assert_metrics_match(json: &metrics::BinaryMetrics, csv: &metrics::BinaryMetrics) {
    assert_eq!(json.confusion_matrix, csv.confusion_matrix);
    assert_eq!((json.n, json.n_positive), (csv.n, csv.n_positive));
    for (name, a, b) in [
        ("threshold", json.threshold, csv.threshold),
        ("accuracy", json.accuracy, csv.accuracy),
        (
            "balanced_accuracy",
            json.balanced_accuracy,
            csv.balanced_accuracy,
        ),
        ("sensitivity", json.sensitivity, csv.sensitivity),
        ("specificity", json.specificity, csv.specificity),
        ("precision", json.precision, csv.precision),
        ("f1", json.f1, csv.f1),
        ("mcc", json.mcc, csv.mcc),
        ("roc_auc", json.roc_auc, csv.roc_auc),
        (
            "average_precision",
            json.average_precision,
            csv.average_precision,
        ),
        ("brier", json.brier, csv.brier),
        ("log_loss", json.log_loss, csv.log_loss),
        ("ece", json.ece, csv.ece),
    ] {
        assert!(close(a, b), "{name}: metrics.json {a} vs recomputed {b}");
    }
    for (a, b) in json
        .specificity_at_sensitivity
        .iter()
        .zip(&csv.specificity_at_sensitivity)
    {
        assert!(close(a.specificity, b.specificity) && close(a.threshold, b.threshold));
    }
}

fn png_dims(path: &Path) -> (u32, u32, usize) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    (img.width(), img.height(), ink)
}

/// Every output exists and is what it claims to be; returns the parsed metrics.
fn check_outputs(out: &Path, n_images: usize) -> EvalMetrics {
    for f in OUTPUT_FILES {
        let p = out.join(f);
        let len = fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len();
        let min = if f == "predictions.csv" {
            60 * n_images as u64
        } else {
            1000
        };
        assert!(len > min, "{} is only {len} bytes", p.display());
    }
    for (f, w, h) in [
        ("roc.png", 800, 700),
        ("pr.png", 800, 700),
        ("confusion.png", 1120, 520),
        ("calibration.png", 800, 800),
    ] {
        let (gw, gh, ink) = png_dims(&out.join(f));
        assert_eq!((gw, gh), (w, h), "{f}");
        assert!(ink > 5_000, "{f}: only {ink} drawn pixels");
    }
    let (ew, _, ink) = png_dims(&out.join("errors.png"));
    assert!(ew > 700 && ink > 2_000, "errors.png");

    let m: EvalMetrics = lesion::fsutil::read_json(out.join("metrics.json")).unwrap();
    assert_eq!(m.format, eval::METRICS_FORMAT);
    assert_eq!(bin(&m).at_default_threshold.n as usize, n_images);
    assert_eq!(m.checkpoint_sha256.len(), 64);
    assert_eq!(m.manifest_sha256.len(), 64);
    assert_eq!(
        m.checkpoint_sha256,
        lesion::fsutil::sha256_file(&m.checkpoint).unwrap()
    );
    assert_eq!(bin(&m).at_default_threshold.threshold, 0.5);
    assert_eq!(
        bin(&m).at_chosen_threshold.threshold,
        bin(&m).threshold.threshold
    );
    assert_eq!(
        bin(&m)
            .at_default_threshold
            .specificity_at_sensitivity
            .len(),
        3
    );
    assert_eq!(bin(&m).calibration.bins.len(), 10);

    let html = fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"disclaimer\""));
    assert!(html.contains("not a medical device"));
    for key in eval::report::METRIC_ROWS {
        assert!(
            html.contains(&format!("data-metric=\"{key}\"")),
            "row {key} missing"
        );
    }
    // Six inlined figures (five plots and the training curves), nothing fetched.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 6);
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    m
}

/// metrics.json agrees with `lesion::metrics` recomputed from predictions.csv, whose rows
/// name real input files; returns the labels and probabilities.
fn check_against_predictions(out: &Path, m: &EvalMetrics, input: &Path) -> (Vec<usize>, Vec<f64>) {
    let rows = read_predictions(&out.join("predictions.csv"));
    assert_eq!(rows.len() as u64, bin(m).at_default_threshold.n);
    let labels: Vec<usize> = rows.iter().map(|r| r["label"].parse().unwrap()).collect();
    let probs: Vec<f64> = rows
        .iter()
        .map(|r| r["probability"].parse().unwrap())
        .collect();
    let thr = bin(m).threshold.threshold;
    for (r, &p) in rows.iter().zip(&probs) {
        assert_eq!(r["prediction"], if p >= thr { "1" } else { "0" });
        assert!(r["path"].starts_with("Benign/") || r["path"].starts_with("Malignant/"));
        assert_eq!(
            r["class"],
            ["Benign", "Malignant"][r["label"].parse::<usize>().unwrap()]
        );
        assert!(input.join(&r["path"]).is_file(), "{}", r["path"]);
    }
    assert_metrics_match(
        &bin(m).at_default_threshold,
        &metrics::evaluate(&labels, &probs, 0.5).unwrap(),
    );
    assert_metrics_match(
        &bin(m).at_chosen_threshold,
        &metrics::evaluate(&labels, &probs, thr).unwrap(),
    );
    let cal = metrics::calibration(&labels, &probs, 10).unwrap();
    assert!(close(cal.ece, bin(m).calibration.ece));
    (labels, probs)
}

#[test]
fn writes_every_output_and_the_runs_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_copy(tmp.path(), true);
    let data = &tiny().data;
    let summary = eval::run(&options(&run, data)).unwrap();
    let out = run.join("eval-test");
    assert_eq!(summary.out_dir, out);
    assert_eq!(summary.report, out.join("report.html"));
    let ds = lesion::loader::PreparedDataset::open(data).unwrap();
    let n_test = ds.len(Split::Test);
    let m = check_outputs(&out, n_test);
    assert!(!m.tta);
    assert_eq!(m.split, Split::Test);
    let table = summary.to_string();
    for needle in ["ROC AUC", "sensitivity", "specificity", "report:"] {
        assert!(table.contains(needle), "{needle} not in\n{table}");
    }

    let (labels, probs) = check_against_predictions(&out, &m, &tiny().images);
    assert_eq!(labels.len(), n_test);
    let thr = bin(&m).threshold.threshold;

    // Bootstrap: the intervals are lesion::metrics' for this seed, and bracket the estimate.
    let b = bin(&m).bootstrap.as_ref().unwrap();
    let direct = metrics::bootstrap_ci(&labels, &probs, 200, 42, thr).unwrap();
    assert_eq!(b.at_chosen_threshold.roc_auc.lower, direct.roc_auc.lower);
    assert_eq!(
        b.at_chosen_threshold.sensitivity.upper,
        direct.sensitivity.upper
    );
    for cis in [&b.at_default_threshold, &b.at_chosen_threshold] {
        assert_eq!((cis.n_resamples, cis.seed), (200, 42));
        for ci in [cis.roc_auc, cis.sensitivity, cis.specificity, cis.accuracy] {
            assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
        }
    }
    assert!(close(
        b.at_default_threshold.roc_auc.estimate,
        bin(&m).at_default_threshold.roc_auc
    ));

    // The threshold is the run's, readable by prediction, tied to the checkpoint and data.
    let t = eval::read_threshold(&run).unwrap();
    assert_eq!(t, bin(&m).threshold);
    assert_eq!(t.split, Split::Val);
    assert_eq!(t.method, ThresholdMethod::Youden);
    assert_eq!(t.target_sensitivity, None);
    assert_eq!(t.checkpoint, "best.safetensors");
    assert_eq!(t.manifest_sha256, m.manifest_sha256);
    t.verify_checkpoint(&run.join("best.safetensors")).unwrap();
    assert!((0.0..=1.0).contains(&t.threshold));
    let raw: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(run.join("threshold.json")).unwrap()).unwrap();
    for key in [
        "threshold",
        "method",
        "target_sensitivity",
        "split",
        "val_sensitivity",
        "val_specificity",
        "checkpoint_sha256",
        "manifest_sha256",
    ] {
        assert!(raw.get(key).is_some(), "threshold.json lacks {key}: {raw}");
    }
    assert_eq!(raw["method"], "youden");
    assert_eq!(raw["split"], "val");

    // Same seed, same everything: a forced re-run reproduces metrics.json (timing aside).
    let again = eval::run(&EvalOptions {
        force: true,
        ..options(&run, data)
    })
    .unwrap();
    // (In memory: serde_json's default float parser may be one ulp off on reading.)
    let mut a = summary.metrics.clone();
    let mut b2 = again.metrics.clone();
    a.seconds = 0.0;
    b2.seconds = 0.0;
    assert_eq!(
        bin(&a).bootstrap,
        bin(&b2).bootstrap,
        "bootstrap not deterministic for a seed"
    );
    assert_eq!(a, b2);
    let other_seed = eval::run(&EvalOptions {
        force: true,
        seed: 43,
        ..options(&run, data)
    })
    .unwrap();
    assert_ne!(
        other_seed
            .metrics
            .binary
            .as_ref()
            .unwrap()
            .bootstrap
            .as_ref()
            .unwrap()
            .at_default_threshold
            .roc_auc,
        bin(&m)
            .bootstrap
            .as_ref()
            .unwrap()
            .at_default_threshold
            .roc_auc
    );
}

#[test]
fn stored_validation_predictions_replace_a_second_pass_only_where_they_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_copy(tmp.path(), true);
    let data = &tiny().data;
    let on_val = |recompute_val| EvalOptions {
        split: Split::Val,
        bootstrap: 0,
        force: true,
        recompute_val,
        ..options(&run, data)
    };
    let preds = || read_predictions(&run.join("eval-val").join("predictions.csv"));

    // The predictions lesion-train stored with the checkpoint...
    let stored = eval::run(&on_val(false)).unwrap();
    assert!(bin(&stored.metrics).val_from_checkpoint);
    let p_stored = preds();
    // ... are those of a new pass over the same images with the same weights.
    let fresh = eval::run(&on_val(true)).unwrap();
    assert!(!bin(&fresh.metrics).val_from_checkpoint);
    let p_fresh = preds();
    let n_val = lesion::loader::PreparedDataset::open(data)
        .unwrap()
        .len(Split::Val);
    assert_eq!((p_stored.len(), p_fresh.len()), (n_val, n_val));
    for (a, b) in p_stored.iter().zip(&p_fresh) {
        assert_eq!((&a["path"], &a["label"]), (&b["path"], &b["label"]));
        let (pa, pb): (f64, f64) = (
            a["probability"].parse().unwrap(),
            b["probability"].parse().unwrap(),
        );
        assert!((pa - pb).abs() < 1e-6, "{}: {pa} vs {pb}", a["path"]);
    }
    let (ta, tb) = (
        &bin(&stored.metrics).threshold,
        &bin(&fresh.metrics).threshold,
    );
    assert!(
        (ta.threshold - tb.threshold).abs() < 1e-6,
        "{ta:?} vs {tb:?}"
    );
    assert_eq!(ta.val_sensitivity, tb.val_sensitivity);
    assert_eq!(ta.val_specificity, tb.val_specificity);

    // Not with TTA (other predictions), nor on another prepared dataset: the same images
    // split with another seed.
    let tta = eval::run(&EvalOptions {
        tta: true,
        ..on_val(false)
    })
    .unwrap();
    assert!(!bin(&tta.metrics).val_from_checkpoint);
    let other = tmp.path().join("other");
    let mut opts = PrepOptions::new(&tiny().images, &other);
    (opts.size, opts.seed, opts.progress) = (32, 43, false);
    prep::run(&opts).unwrap();
    let elsewhere = eval::run(&EvalOptions {
        data: other,
        ..on_val(false)
    })
    .unwrap();
    assert!(!bin(&elsewhere.metrics).val_from_checkpoint);
}

#[test]
fn sensitivity_target_tta_and_other_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_copy(tmp.path(), true);
    let data = &tiny().data;
    let summary = eval::run(&EvalOptions {
        split: Split::Val,
        threshold_method: ThresholdMethod::Sensitivity,
        target_sensitivity: 0.9,
        tta: true,
        ..options(&run, data)
    })
    .unwrap();
    let out = run.join("eval-val");
    let n_val = lesion::loader::PreparedDataset::open(data)
        .unwrap()
        .len(Split::Val);
    let m = check_outputs(&out, n_val);
    assert!(m.tta);
    assert!(
        m.warnings.iter().any(|w| w.contains("validation split")),
        "{:?}",
        m.warnings
    );
    let t = eval::read_threshold(&run).unwrap();
    assert_eq!(t.method, ThresholdMethod::Sensitivity);
    assert_eq!(t.target_sensitivity, Some(0.9));
    assert!(t.tta);
    assert!(t.val_sensitivity >= 0.9, "{t:?}");
    // Evaluated on val itself, the chosen point is the validation point.
    assert!(close(
        bin(&m).at_chosen_threshold.sensitivity,
        t.val_sensitivity
    ));
    assert!(close(
        bin(&m).at_chosen_threshold.specificity,
        t.val_specificity
    ));
    assert!(summary.to_string().contains("TTA on"));

    // Without TTA the probabilities differ (the flips change the logits), row for row.
    let p_tta = read_predictions(&out.join("predictions.csv"));
    assert_eq!(p_tta.len(), n_val);
    let plain = eval::run(&EvalOptions {
        split: Split::Val,
        bootstrap: 0,
        force: true,
        ..options(&run, data)
    })
    .unwrap();
    assert!(bin(&plain.metrics).bootstrap.is_none());
    assert!(!plain.metrics.tta);
    let p_plain = read_predictions(&out.join("predictions.csv"));
    assert!(p_tta
        .iter()
        .zip(&p_plain)
        .all(|(a, b)| a["path"] == b["path"]));
    assert!(p_tta
        .iter()
        .zip(&p_plain)
        .any(|(a, b)| a["probability"] != b["probability"]));

    // A checkpoint file other than best.safetensors gets its own folder and threshold file.
    fs::copy(run.join("best.safetensors"), run.join("epoch2.safetensors")).unwrap();
    let s = eval::run(&EvalOptions {
        run: run.join("epoch2.safetensors"),
        bootstrap: 0,
        ..options(&run, data)
    })
    .unwrap();
    assert_eq!(s.out_dir, run.join("eval-test-epoch2"));
    assert_eq!(s.threshold_file, Some(run.join("threshold-epoch2.json")));
    assert!(eval::read_threshold_file(s.threshold_file.as_ref().unwrap()).is_ok());
    // ...and the best checkpoint's threshold is untouched.
    assert_eq!(
        eval::read_threshold(&run).unwrap().method,
        ThresholdMethod::Youden
    );
}

#[test]
fn refuses_mismatched_unverified_or_incomplete_inputs() {
    let tmp = tempfile::tempdir().unwrap();

    // The same images prepared at 40 px do not fit a run trained at 32 px.
    let data40 = tmp.path().join("prepared40");
    let mut opts = PrepOptions::new(&tiny().images, &data40);
    opts.size = 40;
    opts.progress = false;
    prep::run(&opts).unwrap();
    let run = run_copy(tmp.path(), true);
    let err = eval::run(&options(&run, &data40)).unwrap_err();
    assert!(matches!(err, Error::RunDataMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("image size") && msg.contains("--size 32"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 2);
    assert!(!run.join("eval-test").exists());
    assert!(!run.join("threshold.json").exists());
    assert!(
        fs::read_dir(&run).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("partial")),
        "staging folder left behind"
    );

    // A run without best.safetensors.
    let tmp2 = tempfile::tempdir().unwrap();
    let no_best = run_copy(tmp2.path(), false);
    let err = eval::run(&options(&no_best, &tiny().data)).unwrap_err();
    match &err {
        Error::BadArtifact { path, .. } => assert!(path.ends_with("best.safetensors"), "{err}"),
        other => panic!("expected BadArtifact, got {other}"),
    }
    assert!(err.to_string().contains("no best checkpoint"), "{err}");

    // A path that is neither.
    let err = eval::run(&options(&tmp.path().join("nope"), &tiny().data)).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err}");

    // An existing evaluation is kept unless --force.
    eval::run(&EvalOptions {
        bootstrap: 0,
        ..options(&run, &tiny().data)
    })
    .unwrap();
    let before = fs::read(run.join("eval-test/metrics.json")).unwrap();
    let err = eval::run(&options(&run, &tiny().data)).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(
        fs::read(run.join("eval-test/metrics.json")).unwrap(),
        before
    );

    // A prepared folder whose shards no longer match their hashes.
    let bad = tmp.path().join("tampered");
    copy_dir(&tiny().data, &bad);
    let shard = fs::read_dir(bad.join("test"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let mut bytes = fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&shard, bytes).unwrap();
    let err = eval::run(&EvalOptions {
        force: true,
        ..options(&run, &bad)
    })
    .unwrap_err();
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    // The previous evaluation survives a failed forced one.
    assert_eq!(
        fs::read(run.join("eval-test/metrics.json")).unwrap(),
        before
    );

    // No threshold yet: a clear message for prediction.
    let err = eval::read_threshold(&no_best).unwrap_err();
    assert!(err.to_string().contains("run lesion-eval"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The real chain on ISIC 2017, and the report in a real browser (ignored: run by CI)

struct IsicRun {
    input: PathBuf,
    run: PathBuf,
    report: PathBuf,
}

/// prep (112 px) -> train (random init, 1 epoch) -> eval with and without TTA, once per
/// test process, in `target/tmp/eval-isic` (kept for inspection). With
/// `LESION_EVAL_REUSE=1`, the prepared data and the trained run of an earlier chain there
/// are reused and only the evaluations run again (for working on the report).
fn isic_run() -> &'static IsicRun {
    static RUN: OnceLock<IsicRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let input = common::isic2017();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("eval-isic");
        let data = root.join("prepared");
        let run = root.join("run");
        let reuse = std::env::var_os("LESION_EVAL_REUSE").is_some_and(|v| v == "1")
            && run.join("best.safetensors").is_file();
        if reuse {
            for dir in ["eval-test", "eval-test-tta"] {
                if run.join(dir).exists() {
                    fs::remove_dir_all(run.join(dir)).unwrap();
                }
            }
        } else {
            if root.exists() {
                fs::remove_dir_all(&root).unwrap();
            }
            fs::create_dir_all(&root).unwrap();
            let mut p = PrepOptions::new(&input, &data);
            p.size = 112;
            p.progress = false;
            let t = Instant::now();
            prep::run(&p).unwrap();
            println!("prep: {:.1} s", t.elapsed().as_secs_f64());

            let cfg = TrainConfig {
                data: data.clone(),
                out: run.clone(),
                epochs: 1,
                batch_size: 64,
                monitor: Monitor::ValAuc,
                weights: "none".into(),
                device: "cpu".into(),
                ..TrainConfig::default()
            };
            let t = Instant::now();
            let summary = train::train(&cfg, false).unwrap();
            println!("train: {:.1} s\n{summary}", t.elapsed().as_secs_f64());
        }

        let opts = EvalOptions {
            run: run.clone(),
            data: data.clone(),
            device: "cpu".into(),
            progress: false,
            ..EvalOptions::default()
        };
        let t = Instant::now();
        let with_tta = eval::run(&EvalOptions {
            tta: true,
            ..opts.clone()
        })
        .unwrap();
        println!(
            "eval with TTA: {:.1} s\n{with_tta}\n",
            t.elapsed().as_secs_f64()
        );
        fs::rename(run.join("eval-test"), run.join("eval-test-tta")).unwrap();
        let t = Instant::now();
        let plain = eval::run(&opts).unwrap();
        println!(
            "eval without TTA: {:.1} s\n{plain}\n",
            t.elapsed().as_secs_f64()
        );
        IsicRun {
            input,
            report: plain.report.clone(),
            run,
        }
    })
}

#[test]
#[ignore = "needs ../shared/data and chromium"]
fn isic_chain_at_112_px_produces_every_file() {
    let r = isic_run();
    for dir in ["eval-test", "eval-test-tta"] {
        let out = r.run.join(dir);
        let m = check_outputs(&out, 550);
        check_against_predictions(&out, &m, &r.input);
        assert_eq!(bin(&m).at_default_threshold.n_positive, 104);
        assert_eq!(m.tta, dir.ends_with("tta"));
        let b = bin(&m).bootstrap.as_ref().unwrap();
        assert_eq!(b.at_chosen_threshold.n_resamples, 1000);
        for ci in [
            b.at_chosen_threshold.roc_auc,
            b.at_chosen_threshold.sensitivity,
        ] {
            assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
            assert!(
                ci.upper - ci.lower < 0.3,
                "550 images give a usable interval: {ci:?}"
            );
        }
    }
    let t = eval::read_threshold(&r.run).unwrap();
    assert!(
        !t.tta,
        "the last evaluation (without TTA) sets the threshold"
    );
}

#[test]
#[ignore = "needs ../shared/data and chromium"]
fn report_renders_in_headless_chromium() {
    let report = fs::canonicalize(&isic_run().report).unwrap();
    let browser = Browser::start(1366, 900);
    browser.open(&format!("file://{}", report.display()));
    let script = r#"
        const imgs = Array.from(document.images);
        return {
          title: document.title,
          images: imgs.map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),
          rows: Array.from(document.querySelectorAll('table#metrics tr[data-metric]')).map(r => r.dataset.metric),
          disclaimer: (document.getElementById('disclaimer') || {}).innerText || '',
          disclaimerTop: document.getElementById('disclaimer') ? document.getElementById('disclaimer').getBoundingClientRect().top : -1,
          external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => /^(https?:)?\/\//.test(u)),
        };"#;
    let mut page = serde_json::Value::Null;
    for _ in 0..50 {
        page = browser.execute(script);
        let all_done = page["images"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["complete"] == true));
        if all_done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let images = page["images"].as_array().unwrap();
    assert_eq!(images.len(), 6, "{page}");
    for img in images {
        assert!(img["w"].as_u64().unwrap() > 0, "image not rendered: {img}");
        assert!(img["h"].as_u64().unwrap() > 0, "image not rendered: {img}");
    }
    let rows: Vec<&str> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(rows, eval::report::METRIC_ROWS, "metrics table rows");
    assert!(page["disclaimer"]
        .as_str()
        .unwrap()
        .contains("not a medical device"));
    let top = page["disclaimerTop"].as_f64().unwrap();
    assert!(
        (0.0..900.0).contains(&top),
        "disclaimer not on the first screen ({top})"
    );
    assert_eq!(page["external"].as_array().unwrap().len(), 0, "{page}");

    let png = browser.screenshot();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert!(
        img.width() >= 1000 && img.height() >= 600,
        "{}x{}",
        img.width(),
        img.height()
    );
    let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(distinct.len() > 50, "the screenshot looks blank");
    let dest = report.with_file_name("report-screenshot.png");
    fs::write(&dest, &png).unwrap();
    let _ = fs::copy(&dest, "/tmp/lesion-report-screenshot.png");
    println!(
        "screenshot: {} (and /tmp/lesion-report-screenshot.png)",
        dest.display()
    );
}

// ---------------------------------------------------------------------------------------
// N classes

/// Synthetic images (20 per folder) prepared at 32 px and relabelled into three classes, the
/// first two malignant, with an untrained three-output run that fits them.
fn three_class(dir: &Path) -> (PathBuf, PathBuf) {
    let images = dir.join("images");
    lesion::synth::generate(&images, 20, 3, false, false).unwrap();
    let data = dir.join("prepared");
    let mut opts = PrepOptions::new(&images, &data);
    opts.size = 32;
    opts.progress = false;
    prep::run(&opts).unwrap();
    let names: Vec<String> = ["bcc", "mel", "nv"].map(String::from).to_vec();
    let malignant = names[..2].to_vec();
    lesion::run::fixtures::relabel_prepared(&data, &names, &malignant).unwrap();
    let run = dir.join("run");
    lesion::run::fixtures::write_untrained_run_with(&run, 32, 5, None, &names, &malignant).unwrap();
    (data, run)
}

#[test]
fn three_classes_give_per_class_figures_that_predictions_csv_reproduces() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = three_class(tmp.path());
    let summary = eval::run(&EvalOptions {
        bootstrap: 50,
        ..options(&run, &data)
    })
    .unwrap();
    let out = run.join("eval-test");
    let m: EvalMetrics = lesion::fsutil::read_json(out.join("metrics.json")).unwrap();
    assert_eq!(m, summary.metrics, "metrics.json reads back as written");
    assert_eq!(m.malignant, vec!["bcc".to_string(), "mel".to_string()]);
    let mc = m.multiclass.as_ref().expect("an N-class section");
    assert_eq!(mc.class_names, vec!["bcc", "mel", "nv"]);
    assert_eq!(mc.metrics.per_class.len(), 3);
    assert_eq!(mc.bootstrap.as_ref().unwrap().per_class.len(), 3);

    // predictions.csv carries everything the per-class figures are computed from.
    let rows = read_predictions(&out.join("predictions.csv"));
    let text = fs::read_to_string(out.join("predictions.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "path",
            "label",
            "class",
            "p_bcc",
            "p_mel",
            "p_nv",
            "predicted",
            "predicted_class",
            "predicted_probability",
            "malignant_probability",
            "malignant_prediction",
            "source_index"
        ]
    );
    assert_eq!(rows.len() as u64, mc.metrics.n);
    let labels: Vec<usize> = rows.iter().map(|r| r["label"].parse().unwrap()).collect();
    let probs: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            ["p_bcc", "p_mel", "p_nv"]
                .iter()
                .map(|k| r[*k].parse::<f64>().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        metrics::evaluate_multiclass(&labels, &probs).unwrap(),
        mc.metrics,
        "metrics.json's N-class figures are not those of predictions.csv"
    );
    let b = bin(&m);
    for (r, p) in rows.iter().zip(&probs) {
        let k: usize = r["predicted"].parse().unwrap();
        assert_eq!(k, lesion::infer::argmax(p));
        assert_eq!(r["predicted_probability"].parse::<f64>().unwrap(), p[k]);
        let pm: f64 = r["malignant_probability"].parse().unwrap();
        assert!((pm - (p[0] + p[1])).abs() < 1e-12, "{pm} vs {p:?}");
        let called = pm >= b.threshold.threshold;
        assert_eq!(r["malignant_prediction"], if called { "1" } else { "0" });
    }
    // The malignant view is the binary evaluation of the summed probability.
    let is_malignant: Vec<usize> = labels.iter().map(|&y| usize::from(y < 2)).collect();
    let pm: Vec<f64> = rows
        .iter()
        .map(|r| r["malignant_probability"].parse().unwrap())
        .collect();
    assert_metrics_match(
        &b.at_chosen_threshold,
        &metrics::evaluate(&is_malignant, &pm, b.threshold.threshold).unwrap(),
    );
    assert!(summary.threshold_file.as_ref().unwrap().is_file());

    // The figures, and a report with the per-class table first.
    for f in [
        "roc.png",
        "confusion.png",
        "calibration.png",
        "malignant-roc.png",
        "malignant-pr.png",
        "malignant-confusion.png",
        "malignant-calibration.png",
        "errors.png",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("pr.png").exists());
    let (_, _, ink) = png_dims(&out.join("confusion.png"));
    assert!(ink > 5_000, "confusion.png: only {ink} drawn pixels");
    let html = fs::read_to_string(out.join("report.html")).unwrap();
    let per_class = html.find("id=\"per-class\"").expect("per-class table");
    let confusion = html.find("id=\"confusion\"").expect("confusion table");
    let overall = html.find("id=\"overall\"").expect("overall table");
    let malignant = html
        .find("id=\"malignant-heading\"")
        .expect("malignant view");
    assert!(per_class < confusion && confusion < overall && overall < malignant);
    for class in ["bcc", "mel", "nv"] {
        assert!(html.contains(&format!("<tr data-class=\"{class}\"><td>{class}</td>")));
    }
    assert!(
        html.contains("id=\"metrics\""),
        "the malignant view's table"
    );
    // Three N-class figures, four of the malignant view, the errors; no training curves.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 8);

    // The terminal summary: overall figures, then a line per class.
    let table = summary.to_string();
    for needle in [
        "accuracy",
        "balanced accuracy",
        "macro ROC AUC",
        "\nbcc ",
        "\nmel ",
        "\nnv ",
        "malignant (bcc, mel) vs the rest",
    ] {
        assert!(table.contains(needle), "{needle} not in\n{table}");
    }
}

#[test]
fn the_malignant_group_can_be_replaced_or_dropped_at_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = three_class(tmp.path());
    // No group: no binary view, no threshold for prediction.
    let s = eval::run(&EvalOptions {
        bootstrap: 0,
        malignant: Some(Vec::new()),
        ..options(&run, &data)
    })
    .unwrap();
    assert!(s.metrics.binary.is_none() && s.metrics.malignant.is_empty());
    assert!(s.threshold_file.is_none());
    assert!(!run.join("threshold.json").exists());
    let out = run.join("eval-test");
    assert!(!out.join("malignant-roc.png").exists() && !out.join("errors.png").exists());
    let json = fs::read_to_string(out.join("metrics.json")).unwrap();
    assert!(!json.contains("\"threshold\"") && json.contains("\"multiclass\""));
    let header = fs::read_to_string(out.join("predictions.csv")).unwrap();
    assert!(header.starts_with(
        "path,label,class,p_bcc,p_mel,p_nv,predicted,predicted_class,predicted_probability,source_index\n"
    ));
    let html = fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("malignant-heading"));
    assert!(s.to_string().contains("no intervals"));

    // Another group: only nv.
    let s = eval::run(&EvalOptions {
        bootstrap: 0,
        force: true,
        malignant: Some(vec!["nv".into()]),
        ..options(&run, &data)
    })
    .unwrap();
    assert_eq!(s.metrics.malignant, vec!["nv".to_string()]);
    let b = bin(&s.metrics);
    let n_nv = s.metrics.multiclass.as_ref().unwrap().metrics.per_class[2].support;
    assert_eq!(b.at_default_threshold.n_positive, n_nv);
    // Prediction sums the run's group (bcc, mel): a threshold chosen for nv is not its.
    assert!(s.threshold_file.is_none());
    assert!(!run.join("threshold.json").exists());

    // The run's own group: its threshold is saved for prediction.
    let s = eval::run(&EvalOptions {
        bootstrap: 0,
        force: true,
        malignant: Some(vec!["mel".into(), "bcc".into()]),
        ..options(&run, &data)
    })
    .unwrap();
    assert_eq!(s.threshold_file, Some(run.join("threshold.json")));
    assert!(run.join("threshold.json").is_file());

    // A name that is not a class: refused before anything is written (exit code 2).
    let err = eval::run(&EvalOptions {
        force: true,
        malignant: Some(vec!["melanoma".into()]),
        ..options(&run, &data)
    })
    .unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("melanoma"), "{err}");
}

#[test]
#[ignore = "needs chromium"]
fn three_class_report_renders_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run) = three_class(tmp.path());
    let summary = eval::run(&EvalOptions {
        bootstrap: 50,
        ..options(&run, &data)
    })
    .unwrap();
    let browser = Browser::start(1366, 900);
    browser.open(&format!("file://{}", summary.report.display()));
    let script = r#"
        const imgs = Array.from(document.images);
        const cells = t => Array.from(document.querySelectorAll(t)).map(e => e.innerText.trim());
        return {
          images: imgs.map(i => ({complete: i.complete, w: i.naturalWidth})),
          classes: Array.from(document.querySelectorAll('table#per-class tr[data-class]')).map(r => r.dataset.class),
          recall: cells('table#per-class td[data-metric="recall"]'),
          confusion: Array.from(document.querySelectorAll('table#confusion tbody tr')).map(r => r.querySelectorAll('td').length),
          order: ['per-class', 'confusion', 'overall', 'malignant-heading', 'metrics'].map(id => document.getElementById(id).getBoundingClientRect().top),
        };"#;
    let mut page = serde_json::Value::Null;
    for _ in 0..50 {
        page = browser.execute(script);
        let all_done = page["images"]
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["complete"] == true));
        if all_done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let images = page["images"].as_array().unwrap();
    assert_eq!(images.len(), 8, "{page}");
    assert!(
        images.iter().all(|i| i["w"].as_u64().unwrap() > 0),
        "{page}"
    );
    assert_eq!(page["classes"], serde_json::json!(["bcc", "mel", "nv"]));
    let mc = summary.metrics.multiclass.as_ref().unwrap();
    let recall: Vec<String> = mc
        .metrics
        .per_class
        .iter()
        .map(|c| format!("{:.4}", c.recall))
        .collect();
    assert_eq!(page["recall"], serde_json::json!(recall));
    assert_eq!(page["confusion"], serde_json::json!([3, 3, 3]));
    let tops: Vec<f64> = page["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        tops.windows(2).all(|w| w[0] < w[1]),
        "sections out of order: {tops:?}"
    );
}

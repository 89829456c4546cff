//! `lesion-train --fold I` on K-fold data: the run validates on fold I and records it, its
//! evaluation chooses the threshold on that fold, and the fold options' errors.

use std::path::Path;
use std::process::{Command, Output};

use lesion::eval::{self, EvalOptions};
use lesion::manifest::Manifest;
use lesion::run::read_config;
use lesion::split::Split;
use lesion::Error;
use testkit::data::{prep_options, write_class_photos};
use testkit::shared::history_without_timings;

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    training(data, out, extra).output().unwrap()
}

/// `lesion-train` on `data` into `out`, small and on the CPU, with `extra` arguments (one
/// epoch unless they give `--epochs`).
fn training(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lesion-train"));
    cmd.arg("--data").arg(data).arg("--out").arg(out);
    if !extra.contains(&"--epochs") {
        cmd.args(["--epochs", "1"]);
    }
    cmd.args([
        "--batch-size",
        "4",
        "--weights",
        "none",
        "--device",
        "cpu",
        "--quiet",
    ])
    .args(extra);
    cmd
}

fn eval_options(run: &Path, data: &Path, split: Split) -> EvalOptions {
    EvalOptions {
        run: run.to_path_buf(),
        data: data.to_path_buf(),
        split,
        bootstrap: 0,
        device: "cpu".into(),
        progress: false,
        ..EvalOptions::default()
    }
}

#[test]
fn a_fold_run_validates_on_its_fold_and_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_class_photos(&tmp.path().join("in"), &[("Benign", 9), ("Malignant", 9)]);
    let data = tmp.path().join("cv");
    let mut o = prep_options(&input, &data);
    o.folds = 3;
    lesion::prep::run(&o).unwrap();
    let m = Manifest::load(&data).unwrap();
    let fold1 = m.fold_counts(1).unwrap().total;
    let in_fold1 = |si: &u32| m.images[*si as usize].fold == Some(1);

    let run = tmp.path().join("runs/fold-1");
    let out = train(&data, &run, &["--fold", "1"]);
    assert!(out.status.success(), "{out:?}");
    let cfg = read_config(&run).unwrap();
    assert_eq!((cfg.train.fold, cfg.fold()), (Some(1), Some(1)));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["train"]["fold"], 1);

    // The validation predictions the checkpoint stores are fold 1's, image for image.
    let val = eval::run_predictions(&eval_options(&run, &data, Split::Val), Split::Val).unwrap();
    assert!(val.from_checkpoint);
    assert_eq!((val.fold, val.data.fold()), (Some(1), Some(1)));
    assert_eq!(val.predictions.len(), fold1);
    assert!(val.predictions.source_index.iter().all(in_fold1));
    let test = eval::run_predictions(&eval_options(&run, &data, Split::Test), Split::Test).unwrap();
    assert!(!test.from_checkpoint);
    assert_eq!(test.predictions.len(), m.counts(Split::Test).unwrap().total);

    // lesion-eval of the fold run: the threshold is chosen on fold 1.
    let summary = eval::run(&eval_options(&run, &data, Split::Val)).unwrap();
    let csv = std::fs::read_to_string(summary.out_dir.join(eval::PREDICTIONS_FILE)).unwrap();
    assert_eq!(csv.lines().count(), fold1 + 1, "{csv}");
    let binary = summary.metrics.binary.as_ref().unwrap();
    assert!(binary.val_from_checkpoint);

    // Data without a test split: evaluating the test split points to --cv.
    let no_test = tmp.path().join("cv-no-test");
    let mut o = prep_options(&input, &no_test);
    o.folds = 3;
    o.no_test = true;
    lesion::prep::run(&o).unwrap();
    let err = eval::run(&eval_options(&run, &no_test, Split::Test)).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains("lesion-eval --cv CV_DIR"), "{err}");
    // Data without folds for a fold run: a mismatch naming the fold.
    let plain = tmp.path().join("plain");
    lesion::prep::run(&prep_options(&input, &plain)).unwrap();
    let err = eval::run(&eval_options(&run, &plain, Split::Test)).unwrap_err();
    assert!(matches!(err, Error::RunDataMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("fold 1"), "{err}");

    // Training K-fold data without a fold, or with a fold out of range, is refused.
    let out = train(&data, &tmp.path().join("runs/none"), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pass --fold I (I from 0 to 2)"), "{stderr}");
    let out = train(&data, &tmp.path().join("runs/fold-3"), &["--fold", "3"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has 3 folds, numbered 0 to 2"), "{stderr}");
    let out = train(&plain, &tmp.path().join("runs/plain"), &["--fold", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prepared without folds"), "{stderr}");
    for dir in ["none", "fold-3", "plain"] {
        assert!(!tmp.path().join("runs").join(dir).exists(), "{dir}");
    }
}

/// With a fold, the feature cache of `--freeze-bn` holds the fold's rows: a cached run
/// equals an uncached one.
#[test]
fn a_cached_fold_run_equals_an_uncached_one() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_class_photos(&tmp.path().join("in"), &[("Benign", 8), ("Malignant", 8)]);
    let data = tmp.path().join("cv");
    let mut o = prep_options(&input, &data);
    o.folds = 2;
    o.no_test = true;
    lesion::prep::run(&o).unwrap();
    let args = ["--fold", "0", "--freeze-bn", "--epochs", "2"];
    let mut runs = Vec::new();
    for (name, switch) in [("uncached", "off"), ("cached", "on")] {
        let run = tmp.path().join(name);
        let out = training(&data, &run, &args)
            .env(lesion::train::feature_cache::ENV_SWITCH, switch)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let held = Manifest::load(&data).unwrap().fold_counts(0).unwrap().total;
        // The cache holds the fold's rows: its training rows and its held-out ones.
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (n, split) in [(16 - held, "train"), (held, "val")] {
            let built = format!("output of {n} images ({split} split, view 0)");
            assert_eq!(stderr.contains(&built), switch == "on", "{built}: {stderr}");
        }
        let val =
            eval::run_predictions(&eval_options(&run, &data, Split::Val), Split::Val).unwrap();
        assert!(val.from_checkpoint);
        assert_eq!(val.predictions.len(), held);
        runs.push((history_without_timings(&run), val.predictions));
    }
    assert_eq!(runs[0].1.logits, runs[1].1.logits);
    assert_eq!(runs[0].1.source_index, runs[1].1.source_index);
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].0.len(), 3, "header and two epochs");
}

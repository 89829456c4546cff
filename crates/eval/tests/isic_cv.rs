//! 5-fold cross-validation of ISIC 2017 (../shared/data/isic2017-256, Benign/ and
//! Malignant/) through scripts/cv.sh, as `just cv K=5` runs it: prep with folds, every fold
//! trained (32 px, one epoch from random initialisation), then `lesion-eval --cv`. The
//! aggregated metrics.json (pooled out-of-fold figures, per-fold figures, mean and SD, test
//! split) must equal scikit-learn's recomputed from the written predictions
//! (scripts/check_multiclass_metrics.py; needs python3 with numpy and scikit-learn,
//! `LESION_TEST_PYTHON` names another interpreter).
//!
//! The binaries are those of this build (lesion-prep and lesion-train beside lesion-eval:
//! `cargo test --workspace` builds them all); `LESION_BIN` names another folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::shared::{isic2017, python_script, repo};

const K: usize = 5;

fn bin_dir() -> PathBuf {
    match std::env::var_os("LESION_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_BIN_EXE_lesion-eval"))
            .parent()
            .unwrap()
            .to_path_buf(),
    }
}

/// Runs `scripts/cv.sh args...` with the binaries of [`bin_dir`]; panics on failure.
fn cv_sh(args: &[&str], eval_args: &str) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/cv.sh"))
        .args(args)
        .env("LESION_BIN", bin_dir())
        .env("EVAL_ARGS", eval_args)
        .output()
        .expect("bash");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scripts/cv.sh {args:?} failed");
}

#[test]
#[ignore = "needs ../shared/data and python3 with scikit-learn (run by CI with --include-ignored)"]
fn isic_five_fold_cv_matches_scikit_learn() {
    let isic = isic2017();
    for exe in ["lesion-prep", "lesion-train", "lesion-eval"] {
        let path = bin_dir().join(exe);
        assert!(
            path.is_file(),
            "{} not found: build the binaries first (cargo build --bins) or set LESION_BIN",
            path.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let prepared = dir.path().join("prepared");
    let cv = dir.path().join("cv");
    let (p, c) = (prepared.to_str().unwrap(), cv.to_str().unwrap());
    let k = K.to_string();
    cv_sh(&["prep", isic.to_str().unwrap(), p, &k, "--size", "32"], "");
    let train = [
        "--epochs",
        "1",
        "--weights",
        "none",
        "--batch-size",
        "64",
        "--device",
        "cpu",
    ];
    let mut all = vec!["all", p, c];
    all.extend(train);
    cv_sh(&all, "--device cpu --bootstrap 200 --quiet");

    let eval = cv.join("eval");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval.join("metrics.json")).unwrap()).unwrap();
    let section = &metrics["cv"];
    assert_eq!(section["k"], K);
    let folds = section["folds"].as_array().unwrap();
    assert_eq!(folds.len(), K);
    // Every image outside the test split is scored exactly once, by the fold that held it out.
    let pooled = metrics["at_default_threshold"]["n"].as_u64().unwrap();
    let per_fold: u64 = folds.iter().map(|f| f["n"].as_u64().unwrap()).sum();
    assert_eq!(pooled, per_fold);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(prepared.join("manifest.json")).unwrap()).unwrap();
    let in_test = manifest["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|im| im["split"] == "test")
        .count() as u64;
    let total = manifest["images"].as_array().unwrap().len() as u64;
    assert_eq!(pooled + in_test, total);
    let test = &section["test"];
    assert_eq!(test["folds"].as_array().unwrap().len(), K);
    assert_eq!(test["fold_average"]["n"].as_u64().unwrap(), in_test);
    let report = std::fs::read_to_string(eval.join("report.html")).unwrap();
    assert!(report.contains("cross-validation: 5 folds, pooled out-of-fold predictions"));

    let out = python_script("check_multiclass_metrics.py", &[&eval]);
    assert!(
        out.status.success(),
        "metrics.json differs from scikit-learn"
    );
}

//! Three diagnoses of ISIC 2017 (../shared/data/isic2017-256, folders built from its
//! labels.csv by scripts/isic_classes.py) through every stage: prep -> train -> eval ->
//! predict -> serve, at 112 px, two epochs from random initialisation. The evaluation's
//! per-class figures are checked against scikit-learn computed from its own predictions.csv
//! (scripts/check_multiclass_metrics.py; needs python3 with numpy and scikit-learn,
//! `LESION_TEST_PYTHON` names another interpreter).

mod common;

use std::path::{Path, PathBuf};

use testkit::shared::{isic2017, python_script};

use candle_core::Device;
use lesion::eval::{self, EvalOptions};
use lesion::predict::Predictor;
use lesion::prep::{self, PrepOptions};
use lesion::run::{Monitor, TrainConfig};
use lesion::train;

const CLASSES: [&str; 3] = ["melanoma", "nevus", "seborrheic_keratosis"];

#[test]
#[ignore = "needs ../shared/data and python3 with scikit-learn (run by CI with --include-ignored)"]
fn three_diagnoses_go_through_every_stage_and_match_scikit_learn() {
    let isic = isic2017();
    let dir = tempfile::tempdir().unwrap();
    let folders = dir.path().join("isic3");
    assert!(python_script("isic_classes.py", &[&isic, &folders])
        .status
        .success());

    let prepared = dir.path().join("prepared");
    let mut opts = PrepOptions::new(&folders, &prepared);
    opts.size = 112;
    opts.progress = false;
    opts.malignant = vec!["melanoma".into()];
    let summary = prep::run(&opts).unwrap();
    assert_eq!(summary.classes, CLASSES);

    let run = dir.path().join("run");
    let cfg = TrainConfig {
        data: prepared.clone(),
        out: run.clone(),
        epochs: 2,
        batch_size: 32,
        monitor: Monitor::ValAuc,
        weights: "none".into(),
        device: "cpu".into(),
        ..TrainConfig::default()
    };
    let trained = train::train(&cfg, false).unwrap();
    println!("{trained}");
    assert!(
        trained.best_metric > 0.5,
        "macro AUC {}",
        trained.best_metric
    );

    let evaluated = eval::run(&EvalOptions {
        run: run.clone(),
        data: prepared,
        device: "cpu".into(),
        progress: false,
        ..EvalOptions::default()
    })
    .unwrap();
    let eval_dir = evaluated.out_dir.clone();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_dir.join("metrics.json")).unwrap()).unwrap();
    let mc = &metrics["multiclass"];
    assert_eq!(mc["class_names"], serde_json::json!(CLASSES));
    // 550 test images: 104 melanoma, 369 nevus, 77 seborrheic keratosis.
    let support: Vec<u64> = (0..3)
        .map(|k| mc["per_class"][k]["support"].as_u64().unwrap())
        .collect();
    assert_eq!(support, [104, 369, 77]);
    assert_eq!(metrics["malignant"], serde_json::json!(["melanoma"]));
    let checked = python_script("check_multiclass_metrics.py", &[&eval_dir]);
    assert!(
        checked.status.success(),
        "metrics.json differs from scikit-learn"
    );

    let predictor = Predictor::load(&run, &Device::Cpu, None).unwrap();
    let photos: Vec<PathBuf> = CLASSES
        .iter()
        .map(|c| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(folders.join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.remove(0)
        })
        .collect();
    let bytes: Vec<Vec<u8>> = photos.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let files: Vec<(&Path, &[u8])> = photos
        .iter()
        .zip(&bytes)
        .map(|(p, b)| (p.as_path(), b.as_slice()))
        .collect();
    let predictions: Vec<_> = predictor
        .predict_bytes(&files, false)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for p in &predictions {
        assert_eq!(p.probabilities.len(), 3);
        assert!((p.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(p.probability, Some(p.probabilities[0]));
        assert!(p.malignant.is_some());
    }

    let server = common::start(&common::options(&run));
    let (content_type, body) = common::multipart("image", Some("photo.jpg"), &bytes[0]);
    let reply = common::post(
        &format!("{}/v1/predict", server.url()),
        Some(&content_type),
        &body,
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let j = reply.json();
    for (k, name) in CLASSES.iter().enumerate() {
        let served = j["probabilities"][name].as_f64().unwrap();
        assert!(
            (served - predictions[0].probabilities[k]).abs() < 1e-6,
            "{name}: served {served}, predicted {}",
            predictions[0].probabilities[k]
        );
    }
    assert_eq!(j["top_class"], CLASSES[predictions[0].top]);
}

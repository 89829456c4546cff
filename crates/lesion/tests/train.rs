//! The train stage end to end on tiny self-made data: a run folder with every artifact,
//! resume equivalence, overwrite protection and bad-input errors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lesion::model::Trainable;
use lesion::prep::{self, PrepOptions};
use lesion::run::checkpoint;
use lesion::train::{self, TrainConfig};

/// A synthetic dataset prepared at 32 px (the smallest size ResNet-18 takes).
fn prepared(root: &Path, per_class: usize) -> PathBuf {
    let images = root.join("images");
    lesion::synth::generate(&images, per_class, 7, false, false).unwrap();
    let out = root.join("prepared");
    let mut opts = PrepOptions::new(&images, &out);
    opts.size = 32;
    opts.progress = false;
    prep::run(&opts).unwrap();
    out
}

fn config(data: &Path, out: &Path, epochs: usize) -> TrainConfig {
    TrainConfig {
        patience: 10,
        trainable: Trainable::Layer3,
        ..common::cpu_train_config(data, out, epochs, 8)
    }
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    checkpoint::load(path, &Device::Cpu).unwrap().0
}

fn max_abs_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(k, t)| {
            let f32 = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
            let d = (f32(t) - f32(&b[k]))
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn run_folder_resume_and_overwrite_protection() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 12);

    // Uninterrupted: 3 epochs.
    let full = dir.path().join("full");
    let summary = train::train(&config(&data, &full, 3), false).unwrap();
    assert_eq!(summary.epochs_completed, 3);
    assert_eq!(summary.history.len(), 3);
    for f in common::RUN_FILES {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    for r in &summary.history {
        assert!(r.train_loss.is_finite() && r.val_loss.is_finite(), "{r:?}");
        assert!((0.0..=1.0).contains(&r.val_acc));
        assert_eq!(
            (r.lr_head, r.lr_layer4, r.lr_layer3, r.lr_backbone),
            (1e-2, 1e-3, 1e-3, 0.0)
        );
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["batch_size"], 8);
    assert_eq!(cfg["weights_source"], "none");
    assert_eq!(cfg["manifest_sha256"].as_str().unwrap().len(), 64);
    // The preprocessing prediction needs, copied from the manifest.
    assert_eq!(cfg["image_size"], 32);
    assert_eq!(cfg["resize"], "stretch");
    let csv = std::fs::read_to_string(full.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");

    // Interrupted after 2 epochs, then resumed for the third.
    let split = dir.path().join("split");
    train::train(&config(&data, &split, 2), false).unwrap();
    let resumed = train::resume(&split, Some(3), false).unwrap();
    assert_eq!(resumed.epochs_completed, 3);
    let a = load(&full.join("last.safetensors"));
    let b = load(&split.join("last.safetensors"));
    let diff = max_abs_diff(&a, &b);
    assert_eq!(
        diff, 0.0,
        "resumed run differs from the uninterrupted one by {diff}"
    );
    assert_eq!(
        std::fs::read_to_string(split.join("history.csv"))
            .unwrap()
            .lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect::<Vec<_>>(),
        csv.lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect::<Vec<_>>(),
        "history (without timings) differs after resume"
    );

    // The frozen stem never moves; layer3 does.
    let init = dir.path().join("init");
    train::train(&config(&data, &init, 1), false).unwrap();
    let c = load(&init.join("last.safetensors"));
    let moved = |k: &str| {
        max_abs_diff(
            &HashMap::from([(k.to_string(), a[k].clone())]),
            &HashMap::from([(k.to_string(), c[k].clone())]),
        )
    };
    assert_eq!(moved("conv1.weight"), 0.0);
    assert_eq!(moved("layer2.0.conv1.weight"), 0.0);
    assert!(moved("layer3.0.conv1.weight") > 0.0);

    // An existing run is never overwritten without --force.
    let err = train::train(&config(&data, &full, 1), false).unwrap_err();
    assert!(matches!(err, lesion::Error::OutputExists { .. }), "{err}");
    let mut forced = config(&data, &full, 1);
    forced.force = true;
    train::train(&forced, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(full.join("history.csv"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = train::train(&config(&missing, &dir.path().join("r"), 1), false).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(
        !dir.path().join("r").exists(),
        "a failed start must not leave a run folder"
    );

    let data = prepared(dir.path(), 6);
    let mut cfg = config(&data, &dir.path().join("r"), 1);
    cfg.device = "cuda".into();
    let err = train::train(&cfg, false).unwrap_err().to_string();
    assert!(
        err.contains("CUDA") && err.contains("--features cuda"),
        "{err}"
    );

    let mut cfg = config(&data, &dir.path().join("r"), 0);
    cfg.epochs = 0;
    assert!(train::train(&cfg, false).is_err());

    // A corrupted shard fails verification before anything is written.
    let shard = std::fs::read_dir(data.join("train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let err = train::train(&config(&data, &dir.path().join("r"), 1), false).unwrap_err();
    assert!(err.to_string().contains("train"), "{err}");
    assert!(!dir.path().join("r").exists());

    let err = train::resume(&dir.path().join("absent"), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}

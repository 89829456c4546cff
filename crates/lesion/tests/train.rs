//! The train stage end to end on tiny self-made data: a run folder with every artifact,
//! resume equivalence, overwrite protection and bad-input errors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lesion::model::Trainable;
use lesion::prep::{self, PrepOptions};
use lesion::run::checkpoint;
use lesion::train::{self, ResumeOptions, TrainConfig};
use lesion::Error;

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

fn epochs(n: usize) -> ResumeOptions {
    ResumeOptions {
        epochs: Some(n),
        ..ResumeOptions::default()
    }
}

/// SHA-256 of every file in `dir`, by name.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, lesion::fsutil::sha256_file(&path).unwrap())
        })
        .collect()
}

/// `history.csv` without its two timing columns, which differ between runs.
fn history_without_timings(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
        .collect()
}

/// The same tensors with one value of `name` set to `value`.
fn poisoned(tensors: &HashMap<String, Tensor>, name: &str, value: f32) -> HashMap<String, Tensor> {
    let mut out = tensors.clone();
    let t = &tensors[name];
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[3] = value;
    out.insert(
        name.to_string(),
        Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap(),
    );
    out
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
    let resumed = train::resume(&split, &epochs(3), false).unwrap();
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

    let err = train::resume(&dir.path().join("absent"), &ResumeOptions::default(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent: no such folder"), "{err}");
}

#[test]
fn divergence_says_which_checkpoint_exists() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 12);

    // Diverging in the first epoch: no checkpoint exists, and the message says so.
    let run = dir.path().join("wild");
    let mut cfg = config(&data, &run, 2);
    cfg.lr_head = 1e30;
    let err = train::train(&cfg, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Diverged {
                epoch: 1,
                saved_epoch: None,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("no epoch finished") && msg.contains("holds no checkpoint"),
        "{msg}"
    );
    assert!(!msg.contains("last.safetensors"), "{msg}");
    assert!(!run.join("last.safetensors").exists());

    // Diverging after a good epoch (a resume with a wild head learning rate): the message
    // names the checkpoint of that epoch, which is there, untouched.
    let run = dir.path().join("tame");
    train::train(&config(&data, &run, 1), false).unwrap();
    let before = hashes(&run);
    let wild = ResumeOptions {
        epochs: Some(2),
        lr_head: Some(1e30),
        ..ResumeOptions::default()
    };
    let err = train::resume(&run, &wild, false).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Diverged {
                epoch: 2,
                saved_epoch: Some(1),
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("checkpoint of epoch 1") && msg.contains("last.safetensors"),
        "{msg}"
    );
    let after = hashes(&run);
    for file in ["last.safetensors", "best.safetensors", "history.csv"] {
        assert_eq!(before[file], after[file], "{file} changed");
    }
}

#[test]
fn weights_with_nan_or_infinity_are_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 6);
    let run = dir.path().join("r");
    train::train(&config(&data, &run, 1), false).unwrap();
    let tensor = "layer1.0.conv1.weight";

    // --weights PATH: refused before a run folder exists; the file is left alone.
    let weights = dir.path().join("nan.safetensors");
    let model = lesion::weights::load_safetensors(run.join("last.safetensors")).unwrap();
    candle_core::safetensors::save(&poisoned(&model, tensor, f32::NAN), &weights).unwrap();
    let sha = lesion::fsutil::sha256_file(&weights).unwrap();
    let mut cfg = config(&data, &dir.path().join("from-nan"), 1);
    cfg.weights = weights.display().to_string();
    let err = train::train(&cfg, false).unwrap_err();
    assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
    let msg = err.to_string();
    for needle in ["nan.safetensors", tensor, "non-finite"] {
        assert!(msg.contains(needle), "missing {needle:?} in: {msg}");
    }
    assert!(!dir.path().join("from-nan").exists());
    assert_eq!(lesion::fsutil::sha256_file(&weights).unwrap(), sha);

    // --resume from a checkpoint holding infinity: refused, nothing in the run changes.
    let (tensors, state) = checkpoint::load(&run.join("last.safetensors"), &Device::Cpu).unwrap();
    checkpoint::save(
        &run.join("last.safetensors"),
        &poisoned(&tensors, tensor, f32::INFINITY),
        &state,
    )
    .unwrap();
    let before = hashes(&run);
    let err = train::resume(&run, &epochs(2), false).unwrap_err();
    assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("last.safetensors") && msg.contains(tensor),
        "{msg}"
    );
    assert_eq!(hashes(&run), before);

    // The loader of prediction and serving refuses it too.
    let err = checkpoint::load_model(&run.join("last.safetensors"), &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
    assert!(err.to_string().contains(tensor), "{err}");
}

#[test]
fn resume_follows_the_checkpoint_after_a_kill_while_saving() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 12);

    // Reference: two uninterrupted epochs; and the files of the first one.
    let full = dir.path().join("full");
    train::train(&config(&data, &full, 2), false).unwrap();
    let full_history = history_without_timings(&full);
    let first = dir.path().join("first");
    train::train(&config(&data, &first, 1), false).unwrap();
    let copy_run = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for f in common::RUN_FILES {
            std::fs::copy(first.join(f), to.join(f)).unwrap();
        }
        to
    };

    // Killed after epoch 2's checkpoint, before its history row: the row comes back from
    // the checkpoint, and nothing is trained again.
    let run = copy_run("history-behind");
    std::fs::copy(full.join("last.safetensors"), run.join("last.safetensors")).unwrap();
    std::fs::copy(full.join("best.safetensors"), run.join("best.safetensors")).unwrap();
    let summary = train::resume(&run, &epochs(2), false).unwrap();
    assert_eq!(summary.epochs_completed, 2);
    assert_eq!(summary.history.len(), 2);
    assert_eq!(history_without_timings(&run), full_history);
    let restored = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert!(
        restored.lines().nth(2).unwrap().ends_with(",NaN,NaN"),
        "the restored row's timings were lost with the kill: {restored}"
    );
    assert_ne!(
        std::fs::read(run.join("curves.png")).unwrap(),
        std::fs::read(first.join("curves.png")).unwrap(),
        "curves.png still shows one epoch"
    );

    // History one epoch ahead of last.safetensors (the order an older lesion wrote in):
    // the extra row goes at once and the epoch is trained again, as uninterrupted.
    let run = copy_run("history-ahead");
    std::fs::copy(full.join("history.csv"), run.join("history.csv")).unwrap();
    let summary = train::resume(&run, &epochs(2), false).unwrap();
    assert_eq!(summary.epochs_completed, 2);
    assert_eq!(history_without_timings(&run), full_history);
    assert_eq!(
        max_abs_diff(
            &load(&run.join("last.safetensors")),
            &load(&full.join("last.safetensors"))
        ),
        0.0
    );

    // Killed in the first epoch after best.safetensors, before last.safetensors: resumed
    // from best.safetensors, and last.safetensors is there again.
    let run = copy_run("no-last");
    std::fs::remove_file(run.join("last.safetensors")).unwrap();
    std::fs::remove_file(run.join("history.csv")).unwrap();
    let summary = train::resume(&run, &epochs(2), false).unwrap();
    assert_eq!(summary.epochs_completed, 2);
    assert_eq!(history_without_timings(&run), full_history);
    assert!(run.join("last.safetensors").is_file());

    // A history without any checkpoint: resume names what the folder holds, and changes
    // nothing.
    let run = copy_run("no-checkpoint");
    std::fs::remove_file(run.join("last.safetensors")).unwrap();
    std::fs::remove_file(run.join("best.safetensors")).unwrap();
    let before = hashes(&run);
    let err = train::resume(&run, &epochs(2), false).unwrap_err();
    assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("last.safetensors")
            && msg.contains("history.csv records 1 epoch")
            && msg.contains("none finished"),
        "{msg}"
    );
    assert_eq!(hashes(&run), before);
}

#[test]
fn resume_applies_epochs_patience_and_learning_rates_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 6);
    let run = dir.path().join("r");
    train::train(&config(&data, &run, 1), false).unwrap();

    let opts = ResumeOptions {
        epochs: Some(2),
        patience: Some(3),
        lr_head: Some(0.5),
        lr_layer3: Some(2e-4),
        ..ResumeOptions::default()
    };
    let summary = train::resume(&run, &opts, false).unwrap();
    assert_eq!(summary.epochs_completed, 2);
    let lrs: Vec<_> = summary
        .history
        .iter()
        .map(|r| (r.lr_head, r.lr_layer4, r.lr_layer3))
        .collect();
    assert_eq!(lrs, [(1e-2, 1e-3, 1e-3), (0.5, 1e-3, 2e-4)]);
    let csv = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert!(
        csv.lines().nth(2).unwrap().contains(",5e-1,1e-3,2e-4,"),
        "{csv}"
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["epochs"], 2);
    assert_eq!(cfg["train"]["patience"], 3);
    assert_eq!(cfg["train"]["lr_head"], 0.5);
    assert_eq!(cfg["train"]["lr_layer3"], 2e-4);
    assert_eq!(cfg["train"]["lr_layer4"], 1e-3);

    // An invalid value is refused before anything changes.
    let before = hashes(&run);
    let bad = ResumeOptions {
        epochs: Some(3),
        lr_head: Some(-1.0),
        ..ResumeOptions::default()
    };
    let err = train::resume(&run, &bad, false).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains("--lr-head"), "{err}");
    assert_eq!(hashes(&run), before);
}

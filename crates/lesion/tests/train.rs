//! The train stage end to end on tiny self-made data: a run folder with every artifact,
//! resume equivalence, overwrite protection and bad-input errors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use lesion::model::Trainable;
use lesion::optim::LrSchedule;
use lesion::prep::{self, PrepOptions};
use lesion::run::checkpoint;
use lesion::split::Split;
use lesion::train::{
    self, ClassWeights, Monitor, Recipe, ResumeOptions, Sampler, Schedule, TrainConfig,
};
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
    // The notebook's options on two classes keep the notebook's columns.
    assert_eq!(
        csv.lines().next(),
        Some(
            "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,lr_head,lr_layer4,lr_layer3,\
             lr_backbone,seconds,images_per_s"
        )
    );
    // So do the checkpoints' rows, and without timings: identical runs write identical files.
    let (_, state) = checkpoint::load(&full.join("last.safetensors"), &Device::Cpu).unwrap();
    let row = state.record.unwrap();
    assert!(
        row.val_balanced_acc.is_nan() && row.seconds.is_nan(),
        "{row:?}"
    );
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    assert_eq!(
        (row.epoch, format!("{:.6}", row.val_acc)),
        (3, last[4].to_string())
    );

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
        common::history_without_timings(&split),
        common::history_without_timings(&full),
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
    let full_history = common::history_without_timings(&full);
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
    assert_eq!(common::history_without_timings(&run), full_history);
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
    assert_eq!(common::history_without_timings(&run), full_history);
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
    assert_eq!(common::history_without_timings(&run), full_history);
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

/// A scheduled run with the balanced sampler, selected on balanced accuracy: its history
/// records the schedule's rates, and stopping after epoch 1 (patience 0) and resuming gives
/// the uninterrupted run bit for bit: sampler and schedule are functions of (seed, epoch,
/// step), not of the session.
#[test]
fn a_scheduled_balanced_run_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 12);
    let scheduled = |out: &Path, patience: usize| TrainConfig {
        patience,
        sampler: Sampler::Balanced,
        schedule: Schedule::OneCycle,
        warmup_epochs: Some(1),
        monitor: Monitor::ValBalancedAcc,
        ..config(&data, out, 3)
    };
    let full = dir.path().join("full");
    let summary = train::train(&scheduled(&full, 10), false).unwrap();
    assert_eq!(summary.epochs_completed, 3);

    let n_train = lesion::loader::PreparedDataset::open(&data)
        .unwrap()
        .len(Split::Train);
    let steps = n_train.div_ceil(8);
    let schedule = LrSchedule::new(Schedule::OneCycle, 3, steps, Some(1)).unwrap();
    for r in &summary.history {
        let last_step = r.epoch * steps - 1;
        assert_eq!(r.lr_head, schedule.lr(1e-2, last_step), "epoch {}", r.epoch);
        assert_eq!(r.lr_layer4, schedule.lr(1e-3, last_step));
        assert_eq!(r.lr_layer3, schedule.lr(1e-3, last_step));
        assert!((0.0..=1.0).contains(&r.val_balanced_acc), "{r:?}");
    }
    // The rate peaks at the end of the warm-up epoch and falls after it.
    let heads: Vec<f64> = summary.history.iter().map(|r| r.lr_head).collect();
    assert!(
        heads[0] == 1e-2 && heads[1] < heads[0] && heads[2] < heads[1],
        "{heads:?}"
    );
    let best = summary
        .history
        .iter()
        .map(|r| r.val_balanced_acc)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(summary.best_metric, best);
    assert_eq!(
        summary.history[summary.best_epoch - 1].val_balanced_acc,
        best
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["sampler"], "balanced");
    assert_eq!(cfg["train"]["schedule"], "onecycle");
    assert_eq!(cfg["train"]["warmup_epochs"], 1);
    assert_eq!(cfg["train"]["monitor"], "val_balanced_acc");
    let (_, state) = checkpoint::load(&full.join("last.safetensors"), &Device::Cpu).unwrap();
    let recorded = state.schedule.unwrap();
    assert_eq!(
        (recorded.steps_per_epoch, recorded.total_steps),
        (steps, 3 * steps)
    );

    let split = dir.path().join("split");
    let first = train::train(&scheduled(&split, 0), false).unwrap();
    assert!(
        first.stopped_early && first.epochs_completed == 1,
        "{first}"
    );
    let resumed = train::resume(
        &split,
        &ResumeOptions {
            patience: Some(10),
            ..ResumeOptions::default()
        },
        false,
    )
    .unwrap();
    assert_eq!(resumed.epochs_completed, 3);
    let diff = max_abs_diff(
        &load(&full.join("last.safetensors")),
        &load(&split.join("last.safetensors")),
    );
    assert_eq!(diff, 0.0, "the resumed run differs by {diff}");
    assert_eq!(
        common::history_without_timings(&split),
        common::history_without_timings(&full)
    );

    // The schedule is laid out over the run's epochs: a new total is refused.
    let before = hashes(&split);
    let err = train::resume(&split, &epochs(5), false).unwrap_err();
    assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains("--epochs 5"), "{err}");
    assert_eq!(hashes(&split), before);
}

/// The balanced sampler draws other images than shuffling, reproducibly.
#[test]
fn the_balanced_sampler_changes_the_epochs_and_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 8);
    let run = |name: &str, sampler| {
        let out = dir.path().join(name);
        let cfg = TrainConfig {
            sampler,
            ..config(&data, &out, 1)
        };
        train::train(&cfg, false).unwrap();
        load(&out.join("last.safetensors"))
    };
    let (a, b, shuffled) = (
        run("a", Sampler::Balanced),
        run("b", Sampler::Balanced),
        run("c", Sampler::Shuffle),
    );
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &shuffled) > 0.0);
}

/// With every learning rate 0 the weights never move (train-mode BatchNorm statistics do,
/// identically), so class weights and label smoothing change the training loss only: the
/// validation figures stay those of the unweighted run.
#[test]
fn class_weights_and_label_smoothing_reach_the_training_loss() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    // 12 benign to 4 malignant: balanced weights are not all 1.
    lesion::synth::generate(&images, 12, 7, false, false).unwrap();
    for i in 0..8 {
        std::fs::remove_file(images.join(format!("Malignant/malignant_{i:05}.jpg"))).unwrap();
    }
    let prepared = dir.path().join("prepared");
    let mut opts = PrepOptions::new(&images, &prepared);
    opts.size = 32;
    opts.progress = false;
    prep::run(&opts).unwrap();
    let run = |name: &str, class_weights, label_smoothing| {
        let out = dir.path().join(name);
        let cfg = TrainConfig {
            class_weights,
            label_smoothing,
            lr_head: 0.0,
            lr_layer4: 0.0,
            lr_layer3: 0.0,
            ..config(&prepared, &out, 1)
        };
        let summary = train::train(&cfg, false).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        (summary.history[0].clone(), cfg)
    };
    let (plain, _) = run("plain", ClassWeights::None, 0.0);
    let (weighted, cfg) = run("weighted", ClassWeights::Balanced, 0.0);
    assert_eq!(cfg["train"]["class_weights"], "balanced");
    let (smoothed, cfg) = run("smoothed", ClassWeights::None, 0.1);
    assert_eq!(cfg["train"]["label_smoothing"], 0.1);
    for other in [&weighted, &smoothed] {
        assert_ne!(other.train_loss, plain.train_loss);
        assert_eq!(other.val_loss, plain.val_loss);
        assert_eq!(other.val_acc, plain.val_acc);
    }
}

/// `--recipe recommended` end to end: it trains, and `config.json` names the recipe and
/// records its values.
#[test]
fn the_recommended_recipe_trains_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 8);
    let out = dir.path().join("run");
    let cfg = TrainConfig {
        data: data.clone(),
        out: out.clone(),
        epochs: 2,
        batch_size: 8,
        weights: "none".into(),
        device: "cpu".into(),
        ..TrainConfig::for_recipe(Recipe::Recommended)
    };
    let summary = train::train(&cfg, false).unwrap();
    assert_eq!(summary.monitor, Monitor::ValLoss);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let t = &cfg["train"];
    assert_eq!(t["recipe"], "recommended");
    assert_eq!(t["monitor"], "val_loss");
    assert_eq!(t["class_weights"], "balanced");
    assert_eq!(t["schedule"], "cosine");
    assert_eq!(t["warmup_epochs"], 1);
    assert_eq!(t["label_smoothing"], 0.1);
    // Cosine with a one-epoch warm-up: the full rate at the end of epoch 1.
    assert_eq!(summary.history[0].lr_head, 1e-2);
    assert!(summary.history[1].lr_head < 1e-2);
    let csv = std::fs::read_to_string(out.join("history.csv")).unwrap();
    assert!(
        csv.starts_with("epoch,train_loss,train_acc,val_loss,val_acc,val_auc,val_balanced_acc,"),
        "{csv}"
    );
}

/// A field of this process's `/proc/self/status` in KiB: `RssFile` is the resident part of
/// its file mappings, where the shards' pages count.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A balanced epoch reads rows from anywhere in the split, each released after it is
/// copied: the shards' pages do not accumulate in the process's memory. Ignored by default
/// (it measures the whole process, so it must run alone:
/// `cargo test -p lesion --test train -- --ignored balanced_epochs_stream`).
#[test]
#[ignore = "measures this process's memory; run it alone"]
fn balanced_epochs_stream() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    lesion::synth::generate(&images, 600, 7, false, false).unwrap();
    let out = dir.path().join("prepared");
    let mut opts = PrepOptions::new(&images, &out);
    opts.size = 128;
    opts.shard_size = 32;
    opts.progress = false;
    prep::run(&opts).unwrap();
    let data = lesion::loader::PreparedDataset::open(&out).unwrap();
    let split_mib = (data.len(Split::Train) * 3 * 128 * 128) as f64 / (1 << 20) as f64;
    for sampler in [Sampler::Shuffle, Sampler::Balanced] {
        let opts = lesion::loader::LoaderOptions::train(8, 1, 0).with_sampler(sampler);
        let (file0, anon0) = (status_kib("RssFile:"), status_kib("RssAnon:"));
        let (mut file, mut anon) = (file0, anon0);
        for batch in data.loader(Split::Train, opts, &Device::Cpu).unwrap() {
            drop(batch.unwrap());
            file = file.max(status_kib("RssFile:"));
            anon = anon.max(status_kib("RssAnon:"));
        }
        let mib = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1024.0;
        let (file_mib, anon_mib) = (mib(file, file0), mib(anon, anon0));
        println!(
            "{sampler}: file-backed RSS grew {file_mib:.1} MiB, anonymous {anon_mib:.1} MiB, \
             over a {split_mib:.1} MiB split"
        );
        // About 23 shards: a window of 4 is a sixth of the split, and released shards leave
        // nothing behind.
        assert!(file_mib < split_mib / 5.0, "{sampler}: {file_mib:.1} MiB");
    }
}

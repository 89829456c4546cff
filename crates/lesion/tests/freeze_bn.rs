//! `--freeze-bn`: frozen BatchNorm in the model, `forward_prefix`/`forward_from`, and the
//! feature cache that lets later epochs run only the trainable stages (same weights as
//! without the cache).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use lesion::loader::LoaderOptions;
use lesion::model::{self, ResNet18, Trainable};
use lesion::prep::{self, PrepOptions};
use lesion::run::checkpoint;
use lesion::split::Split;
use lesion::train::feature_cache::{self, FeatureCache};
use lesion::train::{self, TrainConfig};

fn seeded_model(trainable: Trainable, freeze_bn: bool) -> (VarMap, ResNet18) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let mut model = ResNet18::new(vb, 0.25, 1).unwrap();
    model::init_seeded(&varmap, 11).unwrap();
    model.set_trainable(trainable);
    model.set_freeze_bn(freeze_bn);
    (varmap, model)
}

/// Deterministic pseudo-random NCHW input.
fn input(b: usize, size: usize) -> Tensor {
    let n = b * 3 * size * size;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + 13) % 1009) as f32 / 504.5 - 1.0)
        .collect();
    Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn var(varmap: &VarMap, name: &str) -> Vec<f32> {
    values(varmap.data().lock().unwrap()[name].as_tensor())
}

fn bce(logits: &Tensor) -> Tensor {
    let b = logits.dim(0).unwrap();
    let y: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    let y = Tensor::from_vec(y, b, &Device::Cpu).unwrap();
    lesion::ops::bce_with_logits(logits, &y).unwrap()
}

#[test]
fn frozen_batchnorm_keeps_its_running_statistics_and_the_trained_ones_move() {
    let frozen = [
        "bn1.running_mean",
        "layer1.0.bn1.running_var",
        "layer2.1.bn2.running_mean",
        "layer2.0.downsample.1.running_var",
    ];
    let trained = ["layer3.0.bn1.running_mean", "layer4.1.bn2.running_var"];
    let x = input(4, 64);
    for freeze_bn in [false, true] {
        let (varmap, model) = seeded_model(Trainable::Layer3, freeze_bn);
        let before: Vec<Vec<f32>> = frozen.iter().map(|n| var(&varmap, n)).collect();
        let trained_before: Vec<Vec<f32>> = trained.iter().map(|n| var(&varmap, n)).collect();
        let logits = model
            .forward_with(&x, true, Some(Trainable::Layer3))
            .unwrap();
        let grads = bce(&logits).backward().unwrap();
        for (name, old) in frozen.iter().zip(&before) {
            let now = var(&varmap, name);
            // Without freezing, PyTorch's train mode updates every BatchNorm.
            assert_eq!(&now == old, freeze_bn, "{name} (freeze_bn {freeze_bn})");
        }
        for (name, old) in trained.iter().zip(&trained_before) {
            assert_ne!(&var(&varmap, name), old, "{name} (freeze_bn {freeze_bn})");
        }
        let data = varmap.data().lock().unwrap();
        assert!(grads
            .get(data["layer3.0.conv1.weight"].as_tensor())
            .is_some());
        assert!(grads
            .get(data["layer2.0.conv1.weight"].as_tensor())
            .is_none());
    }
    // With `all` nothing is frozen: the flag changes nothing.
    let run = |freeze_bn| {
        let (varmap, model) = seeded_model(Trainable::All, freeze_bn);
        let out = values(&model.forward_with(&x, true, Some(Trainable::All)).unwrap());
        (out, var(&varmap, "bn1.running_mean"))
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn forward_from_the_prefix_equals_the_full_forward_bit_for_bit() {
    let x = input(5, 64);
    for trainable in [Trainable::Layer3, Trainable::Layer4, Trainable::Head] {
        let stage = trainable.first_stage();
        // Two identical models, so that running-statistics updates of one pass do not reach
        // the other.
        let (va, a) = seeded_model(trainable, true);
        let (vb, b) = seeded_model(trainable, true);
        for train in [false, true] {
            let grad = train.then_some(trainable);
            a.set_dropout_seed(3);
            b.set_dropout_seed(3);
            let full = a.forward_with(&x, train, grad).unwrap();
            let prefix = b.forward_prefix(&x, stage).unwrap();
            assert!(!prefix.track_op());
            let from = b.forward_from(stage, &prefix, train, grad).unwrap();
            assert_eq!(values(&full), values(&from), "{trainable} train {train}");
            if train {
                let ga = bce(&full).backward().unwrap();
                let gb = bce(&from).backward().unwrap();
                let name = "fc.0.weight";
                let g = |grads: &candle_core::backprop::GradStore, vm: &VarMap| {
                    values(
                        grads
                            .get(vm.data().lock().unwrap()[name].as_tensor())
                            .unwrap(),
                    )
                };
                assert_eq!(g(&ga, &va), g(&gb, &vb), "{trainable}: {name} gradient");
            }
        }
        let dims = b.forward_prefix(&x, stage).unwrap().dims().to_vec();
        let want: &[usize] = match stage {
            3 => &[5, 128, 8, 8],
            4 => &[5, 256, 4, 4],
            _ => &[5, 512],
        };
        assert_eq!(dims, want);
    }
    // Stage 0 is the full forward; a wrong input is a clear error.
    let (_, m) = seeded_model(Trainable::Layer3, false);
    assert_eq!(
        values(&m.forward_from(0, &x, false, None).unwrap()),
        values(&m.forward_with(&x, false, None).unwrap())
    );
    let err = m.forward_from(3, &x, false, None).unwrap_err().to_string();
    assert!(
        err.contains("input of model stage 3 must be [batch, 128"),
        "{err}"
    );
    assert!(m.forward_prefix(&x, 0).is_err());
}

/// The cache relies on each image's prefix output not depending on the rest of its batch.
#[test]
fn an_images_prefix_output_does_not_depend_on_its_batch() {
    let (_, model) = seeded_model(Trainable::Layer3, true);
    for size in [32, 64, 112] {
        let x = input(7, size);
        let batch = model.forward_prefix(&x, 3).unwrap();
        for i in [0, 3, 6] {
            let one = model
                .forward_prefix(&x.narrow(0, i, 1).unwrap(), 3)
                .unwrap();
            assert_eq!(
                values(&batch.narrow(0, i, 1).unwrap()),
                values(&one),
                "size {size}, image {i}"
            );
        }
        let pair = model
            .forward_prefix(&x.narrow(0, 2, 2).unwrap(), 3)
            .unwrap();
        assert_eq!(
            values(&batch.narrow(0, 2, 2).unwrap()),
            values(&pair),
            "size {size}"
        );
    }
}

/// A synthetic dataset prepared at 32 px with two augmented views.
fn prepared(root: &Path, per_class: usize) -> PathBuf {
    let images = root.join("images");
    lesion::synth::generate(&images, per_class, 7, false, false).unwrap();
    let out = root.join("prepared");
    let mut opts = PrepOptions::new(&images, &out);
    opts.size = 32;
    opts.views = 2;
    opts.progress = false;
    prep::run(&opts).unwrap();
    out
}

fn config(data: &Path, out: &Path, freeze_bn: bool) -> TrainConfig {
    TrainConfig {
        patience: 10,
        trainable: Trainable::Layer3,
        freeze_bn,
        ..common::cpu_train_config(data, out, 3, 8)
    }
}

fn last(run: &Path) -> HashMap<String, Tensor> {
    checkpoint::load(&run.join("last.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

/// The only test here that trains (it sets `LESION_FEATURE_CACHE`, read when a run starts).
#[test]
fn cached_and_uncached_freeze_bn_runs_give_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path(), 10);

    std::env::set_var(feature_cache::ENV_SWITCH, "off");
    let plain = dir.path().join("uncached");
    train::train(&config(&data, &plain, true), false).unwrap();
    std::env::remove_var(feature_cache::ENV_SWITCH);
    let cached = dir.path().join("cached");
    train::train(&config(&data, &cached, true), false).unwrap();
    let unfrozen = dir.path().join("unfrozen");
    train::train(&config(&data, &unfrozen, false), false).unwrap();

    let (a, b, c) = (last(&plain), last(&cached), last(&unfrozen));
    assert_eq!(a.len(), b.len());
    let all_values = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for (name, t) in &a {
        assert_eq!(all_values(t), all_values(&b[name]), "{name}");
    }
    assert_eq!(
        common::history_without_timings(&plain),
        common::history_without_timings(&cached)
    );
    // The cache is deleted when training finishes.
    assert!(!cached.join(feature_cache::CACHE_DIR).exists());

    // Frozen BatchNorm kept its initial statistics (0 and 1 from a fresh init); without the
    // flag they follow the data, and the weights differ.
    for name in ["bn1.running_mean", "layer2.1.bn2.running_mean"] {
        assert!(values(&a[name]).iter().all(|&v| v == 0.0), "{name}");
        assert!(values(&c[name]).iter().any(|&v| v != 0.0), "{name}");
    }
    assert!(values(&a["bn1.running_var"]).iter().all(|&v| v == 1.0));
    assert_ne!(
        values(&a["layer3.0.conv1.weight"]),
        values(&c["layer3.0.conv1.weight"])
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cached.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["freeze_bn"], true);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unfrozen.join("config.json")).unwrap()).unwrap();
    assert!(cfg["train"].get("freeze_bn").is_none(), "{cfg}");
}

/// Every cached row, in epoch order, with its label.
fn cached_epoch(
    cache: &mut FeatureCache,
    data: &lesion::loader::PreparedDataset,
    model: &ResNet18,
    varmap: &VarMap,
    epoch: u64,
) -> (Vec<f32>, Vec<u8>, Vec<u32>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    let opts = LoaderOptions::train(8, 5, epoch);
    for b in cache
        .train_batches(data, model, varmap, opts, &Device::Cpu)
        .unwrap()
    {
        let b = b.unwrap();
        assert_eq!(b.stage, 3);
        out.0.extend(values(&b.input));
        out.1.extend(b.label_u8);
        out.2.extend(b.source_index);
    }
    out
}

#[test]
fn the_cache_follows_the_loader_and_is_rebuilt_when_stale_or_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = prepared(dir.path(), 6);
    let data = lesion::loader::PreparedDataset::open(&data_dir).unwrap();
    let run = dir.path().join("run");
    let cfg = config(&data_dir, &run, true);
    assert!(FeatureCache::new(&TrainConfig {
        trainable: Trainable::All,
        ..cfg.clone()
    })
    .is_none());
    assert!(FeatureCache::new(&config(&data_dir, &run, false)).is_none());
    let mut cache = FeatureCache::new(&cfg).unwrap();
    assert_eq!(cache.stage(), 3);
    let (varmap, model) = seeded_model(Trainable::Layer3, true);

    // Epochs 0 and 1 read views 0 and 1: the rows, order and labels the loader gives, with
    // the prefix of the loader's images.
    for epoch in [0u64, 1] {
        let (feats, labels, sources) = cached_epoch(&mut cache, &data, &model, &varmap, epoch);
        let (mut want_feats, mut want_labels, mut want_sources) = (vec![], vec![], vec![]);
        let opts = LoaderOptions::train(8, 5, epoch);
        for b in data.loader(Split::Train, opts, &Device::Cpu).unwrap() {
            let b = b.unwrap();
            want_feats.extend(values(&model.forward_prefix(&b.images, 3).unwrap()));
            want_labels.extend(b.label_u8);
            want_sources.extend(b.source_index);
        }
        assert_eq!(sources, want_sources, "epoch {epoch}");
        assert_eq!(labels, want_labels, "epoch {epoch}");
        assert_eq!(feats, want_feats, "epoch {epoch}");
    }
    let file = cache.dir().join("train-v0.feat");
    let full_len = std::fs::metadata(&file).unwrap().len();
    assert!(cache.dir().join("train-v1.feat").is_file());
    let reference = cached_epoch(&mut cache, &data, &model, &varmap, 2);

    // Truncated: rebuilt, same rows.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(full_len - 4).unwrap();
    drop(f);
    assert_eq!(
        cached_epoch(&mut cache, &data, &model, &varmap, 2),
        reference
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), full_len);

    // A damaged value is not detected by design (no checksum of the rows), but another
    // file's header is: made for other frozen weights, it is rebuilt for these.
    let (other_vm, other) = {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut m = ResNet18::new(vb, 0.25, 1).unwrap();
        model::init_seeded(&varmap, 12).unwrap();
        m.set_trainable(Trainable::Layer3);
        m.set_freeze_bn(true);
        (varmap, m)
    };
    let other_rows = cached_epoch(&mut cache, &data, &other, &other_vm, 2);
    assert_ne!(other_rows.0, reference.0);
    assert_eq!((&other_rows.1, &other_rows.2), (&reference.1, &reference.2));
    assert_eq!(
        cached_epoch(&mut cache, &data, &model, &varmap, 2),
        reference
    );

    // Garbage: rebuilt.
    std::fs::write(&file, b"not a cache").unwrap();
    assert_eq!(
        cached_epoch(&mut cache, &data, &model, &varmap, 2),
        reference
    );
    // A trained (non-frozen) parameter does not change the key.
    let before = feature_cache::frozen_sha256(&varmap, 3).unwrap();
    let before_layer4 = feature_cache::frozen_sha256(&varmap, 4).unwrap();
    {
        let data = varmap.data().lock().unwrap();
        let w = data["layer3.0.conv1.weight"].clone();
        w.set(&(w.as_tensor() * 2.0).unwrap()).unwrap();
    }
    assert_eq!(feature_cache::frozen_sha256(&varmap, 3).unwrap(), before);
    assert_ne!(
        feature_cache::frozen_sha256(&varmap, 4).unwrap(),
        before_layer4
    );

    cache.remove();
    assert!(!cache.dir().exists());
}

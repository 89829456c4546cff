//! Run folders without training, for tests, benchmarks and load tests of the prediction
//! path, whose cost does not depend on the weights.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::checkpoint::{self, TrainState};
use super::threshold::{Threshold, ThresholdMethod};
use super::{read_config, write_config, RunConfig, TrainConfig, BEST_FILE, THRESHOLD_FILE};
use crate::classes::Classes;
use crate::fsutil::{sha256_file, write_json_atomic};
use crate::image_io::ResizePolicy;
use crate::manifest::{Manifest, SplitCounts};
use crate::model::{self, ResNet18};
use crate::shard::{write_shard, Shard, ShardMeta};
use crate::split::Split;
use crate::{Error, Result};

/// Writes a complete run folder with seeded random weights (no training) and a
/// `threshold.json`: its predictions mean nothing.
///
/// `config.json` records the `stretch` resize policy and points at a prepared dataset that
/// does not exist (prediction does not need it); `threshold` is `None` for a run that has
/// not been evaluated yet.
pub fn write_untrained_run(
    dir: &Path,
    image_size: usize,
    seed: u64,
    threshold: Option<f64>,
) -> Result<PathBuf> {
    let names = ["Benign".to_string(), "Malignant".to_string()];
    write_untrained_run_with(dir, image_size, seed, threshold, &names, &[])
}

/// [`write_untrained_run`] for the classes `names` (label order) with the malignant group
/// `malignant` (N > 2 only): the head has one output for two classes, N for more.
pub fn write_untrained_run_with(
    dir: &Path,
    image_size: usize,
    seed: u64,
    threshold: Option<f64>,
    names: &[String],
    malignant: &[String],
) -> Result<PathBuf> {
    let classes = Classes::new(names.to_vec(), malignant)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let varmap = VarMap::new();
    ResNet18::new(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        0.25,
        classes.outputs(),
    )?;
    model::init_seeded(&varmap, seed)?;
    let tensors = model::snapshot(&varmap)?;
    let best = dir.join(BEST_FILE);
    checkpoint::save(&best, &tensors, &TrainState::new(seed, 0.0))?;
    let train = TrainConfig {
        data: dir.join("no-prepared-dataset"),
        out: dir.to_path_buf(),
        weights: "none".into(),
        ..TrainConfig::default()
    };
    let config = RunConfig {
        train,
        manifest_sha256: "0".repeat(64),
        class_names: names.to_vec(),
        malignant: classes.malignant_record(),
        image_size,
        resize: Some(ResizePolicy::Stretch),
        mean: crate::transforms::IMAGENET_MEAN,
        std: crate::transforms::IMAGENET_STD,
        weights_source: "none".into(),
        weights_sha256: None,
        device: "cpu".into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_config(dir, &config)?;
    if let Some(t) = threshold {
        let threshold = Threshold {
            threshold: t,
            method: ThresholdMethod::Youden,
            target_sensitivity: None,
            split: Split::Val,
            val_sensitivity: 0.5,
            val_specificity: 0.5,
            tta: false,
            checkpoint: BEST_FILE.into(),
            checkpoint_sha256: sha256_file(&best)?,
            manifest_sha256: config.manifest_sha256.clone(),
            note: Some("untrained fixture".into()),
        };
        write_json_atomic(dir.join(THRESHOLD_FILE), &threshold)?;
    }
    Ok(dir.to_path_buf())
}

/// Rewrites the `config.json` of the run folder `dir` without `resize`, as a run folder
/// that does not record it has it: readers then apply the documented default (see
/// [`super::Run::resize_policy`]), which for [`write_untrained_run`]'s missing prepared
/// dataset is `stretch` with a warning.
pub fn forget_resize_policy(dir: &Path) -> Result<()> {
    let mut config = read_config(dir)?;
    config.resize = None;
    write_config(dir, &config)
}

/// Turns the prepared dataset `dir` into one of the classes `names` (label order) with the
/// malignant group `malignant`: image `i` of the manifest gets class `i % names.len()`, in
/// the manifest and in every shard (rewritten, with their hashes). The pixels keep the
/// classes prep gave them, so the labels mean nothing; for tests of N-class evaluation
/// before prep writes such datasets itself.
pub fn relabel_prepared(dir: &Path, names: &[String], malignant: &[String]) -> Result<()> {
    Classes::new(names.to_vec(), malignant)?;
    let mut manifest = Manifest::load(dir)?;
    let n = names.len();
    let label = |i: u32| (i as usize % n) as u8;
    for (i, image) in manifest.images.iter_mut().enumerate() {
        image.class = label(i as u32);
    }
    for entry in &mut manifest.shards {
        let path = dir.join(&entry.file);
        let (meta, images, source): (ShardMeta, Vec<u8>, Vec<u32>) = {
            let shard = Shard::open(&path)?;
            (
                *shard.meta(),
                shard.images().to_vec(),
                shard.source_index().to_vec(),
            )
        };
        let labels: Vec<u8> = source.iter().map(|&i| label(i)).collect();
        let info = write_shard(&path, meta, &images, &labels, &source)?;
        entry.sha256 = info.sha256;
        entry.bytes = info.bytes;
    }
    let counts: Vec<SplitCounts> = manifest
        .counts
        .iter()
        .map(|c| {
            let mut per_class = vec![0; n];
            for image in manifest.images.iter().filter(|e| e.split == c.split) {
                per_class[image.class as usize] += 1;
            }
            SplitCounts {
                split: c.split,
                total: per_class.iter().sum(),
                per_class,
            }
        })
        .collect();
    manifest.counts = counts;
    manifest.classes = names.to_vec();
    manifest.malignant = malignant.to_vec();
    manifest.save(dir)
}

//! Run folders without training, for tests, benchmarks and load tests of the prediction
//! path, whose cost does not depend on the weights.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::checkpoint::{self, TrainState};
use super::threshold::{Threshold, ThresholdMethod};
use super::{read_config, write_config, RunConfig, TrainConfig, BEST_FILE, THRESHOLD_FILE};
use crate::fsutil::{sha256_file, write_json_atomic};
use crate::image_io::ResizePolicy;
use crate::model::{self, ResNet18};
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
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let varmap = VarMap::new();
    ResNet18::new(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        0.25,
        1,
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
        class_names: vec!["Benign".into(), "Malignant".into()],
        malignant: Vec::new(),
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

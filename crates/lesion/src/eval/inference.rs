//! Scoring images: the checks on the prepared data, loading the checkpoint onto the device,
//! and the malignant probabilities of the validation split (for the threshold) and of the
//! evaluated split, each a [`SplitPredictions`] in the split's row order.

use std::path::Path;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::EvalOptions;
use crate::classes::Classes;
use crate::device::{describe, parse_device};
use crate::fsutil::sha256_file;
use crate::infer::{predict_split, SplitPredictions};
use crate::loader::PreparedDataset;
use crate::model::ResNet18;
use crate::run::checkpoint;
use crate::run::RunConfig;
use crate::split::Split;
use crate::{Error, Result};

/// Verifies the shards and refuses an empty validation or evaluated split.
pub(super) fn check_data(opts: &EvalOptions, data: &PreparedDataset) -> Result<()> {
    if opts.progress {
        eprintln!("verifying {}", data.dir().display());
    }
    data.verify()?;
    for split in [Split::Val, opts.split] {
        if data.len(split) == 0 {
            return Err(Error::BadArtifact {
                path: data.dir().to_path_buf(),
                reason: format!("the {} split is empty", split.name()),
            });
        }
    }
    Ok(())
}

/// The checkpoint on its device, and what identifies it and the data.
pub(super) struct Loaded {
    pub classes: Classes,
    pub device: Device,
    pub model: ResNet18,
    /// Epoch after which the checkpoint was saved.
    pub epoch: usize,
    pub checkpoint_sha256: String,
    pub manifest_sha256: String,
}

/// Loads `checkpoint`; also returns the validation predictions the checkpoint was selected
/// on, when they are of this dataset and the evaluation would compute the same ones (no
/// TTA, no `recompute_val`).
pub(super) fn load(
    opts: &EvalOptions,
    checkpoint: &Path,
    cfg: &RunConfig,
    data: &PreparedDataset,
) -> Result<(Loaded, Option<SplitPredictions>)> {
    let device = parse_device(&opts.device)?;
    let checkpoint_sha256 = sha256_file(checkpoint)?;
    let manifest_sha256 = crate::manifest::manifest_sha256(data.dir())?;
    let (tensors, state) = checkpoint::load(checkpoint, &Device::Cpu)?;
    let classes = match &opts.malignant {
        Some(group) => Classes::new(cfg.classes()?.names().to_vec(), group)?,
        None => cfg.classes()?,
    };
    let stored_val = if opts.tta || opts.recompute_val || manifest_sha256 != cfg.manifest_sha256 {
        None
    } else {
        SplitPredictions::val_from_tensors(&tensors, data, &classes)?
    };
    let model = ResNet18::from_tensors(
        tensors,
        &device,
        cfg.train.head_dropout as f32,
        classes.outputs(),
    )
    .map_err(|e| Error::BadArtifact {
        path: checkpoint.to_path_buf(),
        reason: format!("not a ResNet-18 checkpoint of this pipeline: {e}"),
    })?;
    if opts.progress {
        eprintln!(
            "evaluating {} (epoch {}) on the {} split of {} ({} images), {}{}",
            checkpoint.display(),
            state.epoch,
            opts.split.name(),
            data.dir().display(),
            data.len(opts.split),
            describe(&device),
            if opts.tta { ", TTA" } else { "" }
        );
    }
    let loaded = Loaded {
        classes,
        device,
        model,
        epoch: state.epoch,
        checkpoint_sha256,
        manifest_sha256,
    };
    Ok((loaded, stored_val))
}

/// The probabilities of both splits an evaluation needs.
pub(super) struct Scored {
    /// The validation split, on which the threshold is chosen.
    pub val: SplitPredictions,
    /// The evaluated split (a copy of `val` when that is the one evaluated).
    pub preds: SplitPredictions,
    /// Whether `val` is the checkpoint's stored copy.
    pub val_from_checkpoint: bool,
}

/// Scores the validation split (unless `stored_val` has it) and the evaluated split.
pub(super) fn predict(
    opts: &EvalOptions,
    loaded: &Loaded,
    data: &PreparedDataset,
    stored_val: Option<SplitPredictions>,
) -> Result<Scored> {
    let predict = |split: Split| -> Result<SplitPredictions> {
        let pb = progress_bar(opts.progress, data.len(split) as u64, split.name());
        let p = predict_split(
            &loaded.model,
            &loaded.classes,
            data,
            split,
            opts.batch_size,
            opts.tta,
            &loaded.device,
            Some(&pb),
        )?;
        pb.finish_and_clear();
        Ok(p)
    };
    let val_from_checkpoint = stored_val.is_some();
    let val = match stored_val {
        Some(val) => {
            if opts.progress {
                eprintln!(
                    "validation predictions (for the threshold): those lesion-train stored in \
                     the checkpoint (--recompute-val runs the split again)"
                );
            }
            val
        }
        None => predict(Split::Val)?,
    };
    let preds = if opts.split == Split::Val {
        val.clone()
    } else {
        predict(opts.split)?
    };
    Ok(Scored {
        val,
        preds,
        val_from_checkpoint,
    })
}

pub(super) fn progress_bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

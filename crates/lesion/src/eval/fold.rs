//! Runs on K-fold data (`lesion-prep --folds K`, `lesion-train --fold I`): their data are
//! opened as the run read them, with the run's fold selected, so that the validation split
//! (which chooses the threshold) is the run's held-out fold, and a run's predictions on one
//! split are available to the evaluation of all folds together (`lesion-eval --cv`).

use std::path::{Path, PathBuf};

use super::inference;
use super::EvalOptions;
use crate::classes::Classes;
use crate::infer::{predict_split, SplitPredictions};
use crate::loader::PreparedDataset;
use crate::run::Run;
use crate::split::Split;
use crate::{Error, Result};

/// Opens the prepared data at `data` as `run` trained on them: with the run's fold
/// selected ([`PreparedDataset::with_fold`]) when it has one. Errors when the run has a
/// fold and the data have none (or fewer folds), when the data have folds and the run none
/// ([`Error::RunDataMismatch`]), and when `split` is the test split of data prepared with
/// `--no-test` ([`Error::InvalidOption`], naming `lesion-eval --cv`).
pub fn open_run_data(data: &Path, run: &Run, split: Split) -> Result<PreparedDataset> {
    let opened = PreparedDataset::open(data)?;
    let k = opened.folds();
    let mismatch = |reason: String| Error::RunDataMismatch {
        run: run.run_dir.clone(),
        data: data.to_path_buf(),
        reason,
    };
    let opened = match run.config.fold() {
        Some(fold) if fold < k => opened.with_fold(fold)?,
        Some(fold) if k == 0 => {
            return Err(mismatch(format!(
                "the run validated on fold {fold} of K-fold data, these data have no folds"
            )))
        }
        Some(fold) => {
            return Err(mismatch(format!(
                "the run validated on fold {fold}, these data have {k} folds (0 to {})",
                k - 1
            )))
        }
        None if k > 0 => {
            return Err(mismatch(format!(
                "the data are prepared for {k}-fold cross-validation and the run was trained \
                 without --fold; evaluate the fold runs (CV_DIR/fold-I) instead"
            )))
        }
        None => opened,
    };
    if split == Split::Test && k > 0 && opened.len(Split::Test) == 0 {
        return Err(Error::InvalidOption(format!(
            "{} was prepared with --no-test: it has no test split. Evaluate the folds \
             together with `lesion-eval --cv CV_DIR --data {}` (their pooled held-out \
             predictions), or this run's held-out fold with --split val",
            data.display(),
            data.display()
        )));
    }
    Ok(opened)
}

/// A run's predictions on one split of its (fold-selected) data: [`run_predictions`].
#[derive(Debug)]
pub struct RunPredictions {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The checkpoint that made them.
    pub checkpoint: PathBuf,
    /// Epoch after which the checkpoint was saved.
    pub checkpoint_epoch: usize,
    /// The run's fold (its held-out fold is the val split of `data`), if any.
    pub fold: Option<u32>,
    /// The classes and malignant group the predictions are for.
    pub classes: Classes,
    /// The data, opened with the run's fold ([`open_run_data`]); its manifest maps each
    /// prediction's `source_index` to its image.
    pub data: PreparedDataset,
    /// The split's predictions, in its evaluation order
    /// ([`PreparedDataset::eval_order`]).
    pub predictions: SplitPredictions,
    /// Whether `predictions` are the validation predictions stored in the checkpoint
    /// (the val split, no TTA, the run's own data), rather than computed here.
    pub from_checkpoint: bool,
}

/// The predictions of the run `opts.run` (a run folder or a checkpoint in one) on `split` of
/// `opts.data`, opened with the run's fold ([`open_run_data`]): for a fold run,
/// `Split::Val` is its held-out fold. Uses `opts.device`, `opts.batch_size`, `opts.tta`,
/// `opts.malignant` and `opts.recompute_val`; for the val split the checkpoint's stored
/// predictions are used as in [`super::run`] (no forward pass). The shards are not
/// re-hashed: verify the data once ([`PreparedDataset::verify`]) before predicting
/// several runs on them.
pub fn run_predictions(opts: &EvalOptions, split: Split) -> Result<RunPredictions> {
    opts.validate()?;
    let target = Run::resolve(&opts.run)?;
    let data = open_run_data(&opts.data, &target, split)?;
    target.check_compatible(&data)?;
    if data.len(split) == 0 {
        return Err(Error::BadArtifact {
            path: data.dir().to_path_buf(),
            reason: format!("the {} split is empty", split.name()),
        });
    }
    let (loaded, stored_val) = inference::load(opts, &target.checkpoint, &target.config, &data)?;
    let (predictions, from_checkpoint) = match stored_val {
        Some(val) if split == Split::Val => (val, true),
        _ => {
            let p = predict_split(
                &loaded.model,
                &loaded.classes,
                &data,
                split,
                opts.batch_size,
                opts.tta,
                &loaded.device,
                None,
            )?;
            (p, false)
        }
    };
    Ok(RunPredictions {
        run_dir: target.run_dir.clone(),
        checkpoint: target.checkpoint.clone(),
        checkpoint_epoch: loaded.epoch,
        fold: target.config.fold(),
        classes: loaded.classes,
        data,
        predictions,
        from_checkpoint,
    })
}

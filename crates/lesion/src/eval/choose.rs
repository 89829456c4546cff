//! Choosing the decision threshold on the validation split (never on the evaluated one),
//! by [`ThresholdMethod`], and recording it as a [`Threshold`].

use std::path::Path;

use super::inference::Loaded;
use super::{EvalOptions, Threshold, ThresholdMethod};
use crate::infer::SplitPredictions;
use crate::metrics::{self, ConfusionMatrix, DEFAULT_THRESHOLD};
use crate::split::Split;
use crate::{Error, Result};

/// The threshold for `checkpoint`, chosen on its validation predictions `val`.
pub(super) fn on_validation(
    opts: &EvalOptions,
    val: &SplitPredictions,
    data_dir: &Path,
    checkpoint: &Path,
    loaded: &Loaded,
) -> Result<Threshold> {
    let (thr, val_sens, val_spec, note) = choose_threshold(opts, val, data_dir)?;
    Ok(Threshold {
        threshold: thr,
        method: opts.threshold_method,
        target_sensitivity: (opts.threshold_method == ThresholdMethod::Sensitivity)
            .then_some(opts.target_sensitivity),
        split: Split::Val,
        val_sensitivity: val_sens,
        val_specificity: val_spec,
        tta: opts.tta,
        checkpoint: checkpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        checkpoint_sha256: loaded.checkpoint_sha256.clone(),
        manifest_sha256: loaded.manifest_sha256.clone(),
        note,
    })
}

/// Chooses the threshold on validation predictions: `(threshold, sensitivity, specificity,
/// why the method's own choice was replaced)`.
fn choose_threshold(
    opts: &EvalOptions,
    val: &SplitPredictions,
    data_dir: &Path,
) -> Result<(f64, f64, f64, Option<String>)> {
    let cannot = |e: Error| Error::BadArtifact {
        path: data_dir.to_path_buf(),
        reason: format!("the validation split cannot choose a threshold: {e}"),
    };
    match opts.threshold_method {
        ThresholdMethod::Fixed => {
            let cm = ConfusionMatrix::at_threshold(&val.labels, &val.probs, DEFAULT_THRESHOLD)?;
            Ok((DEFAULT_THRESHOLD, cm.sensitivity(), cm.specificity(), None))
        }
        ThresholdMethod::Youden => {
            let j = metrics::youden(&val.labels, &val.probs).map_err(cannot)?;
            if j.threshold.is_finite() {
                Ok((j.threshold, j.sensitivity, j.specificity, None))
            } else {
                let cm = ConfusionMatrix::at_threshold(&val.labels, &val.probs, DEFAULT_THRESHOLD)?;
                Ok((
                    DEFAULT_THRESHOLD,
                    cm.sensitivity(),
                    cm.specificity(),
                    Some(
                        "no threshold gives a positive Youden's J on the validation split (the \
                         model does no better than chance there); the default 0.5 is used"
                            .into(),
                    ),
                ))
            }
        }
        ThresholdMethod::Sensitivity => {
            let t = metrics::threshold_for_sensitivity(
                &val.labels,
                &val.probs,
                opts.target_sensitivity,
            )
            .map_err(cannot)?;
            Ok((t.threshold, t.sensitivity, t.specificity, None))
        }
    }
}

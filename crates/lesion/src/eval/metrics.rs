//! `metrics.json` ([`EvalMetrics`]): every figure of one evaluation, computed from the
//! evaluated split's probabilities at 0.5 and at the threshold chosen on validation, with
//! bootstrap intervals and the caveats the figures need.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EvalOptions, Threshold};
use crate::infer::SplitPredictions;
use crate::metrics::{
    self, BinaryMetrics, BootstrapCis, Calibration, MulticlassBootstrap, MulticlassMetrics,
    PrCurve, RocCurve, CALIBRATION_BINS, DEFAULT_THRESHOLD,
};
use crate::split::Split;
use crate::{Error, Result};

/// Bootstrap intervals at both thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapPair {
    pub at_default_threshold: BootstrapCis,
    pub at_chosen_threshold: BootstrapCis,
}

/// `metrics.json`: every figure of one evaluation and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub format: String,
    pub format_version: u32,
    pub crate_version: String,
    pub split: Split,
    pub tta: bool,
    pub device: String,
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub checkpoint_sha256: String,
    /// Epoch after which the checkpoint was saved.
    pub checkpoint_epoch: usize,
    pub data_dir: PathBuf,
    /// SHA-256 of the evaluated dataset's `manifest.json`.
    pub manifest_sha256: String,
    /// SHA-256 of the manifest the run was trained on.
    pub trained_on_manifest_sha256: String,
    pub class_names: Vec<String>,
    pub image_size: u32,
    /// The malignant-vs-benign figures: always for two classes, for N classes where a
    /// malignant group exists. Flattened, so that a two-class `metrics.json` keeps its
    /// layout (`threshold` .. `calibration` at the top level); absent without a group.
    #[serde(flatten)]
    pub binary: Option<BinaryView>,
    /// Caveats the figures need (also shown in the report).
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// N classes: the classes of the malignant group behind [`EvalMetrics::binary`] (the
    /// run's, or `--malignant`); empty for two classes and without a group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub malignant: Vec<String>,
    /// N classes: every N-class figure; absent for two classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiclass: Option<MulticlassSection>,
}

/// The malignant-vs-benign figures of an evaluation (for N classes: of the summed
/// malignant probability against `label is malignant`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryView {
    /// The threshold chosen on the validation split.
    pub threshold: Threshold,
    /// Whether the validation predictions behind the threshold were those `lesion-train`
    /// stored in the checkpoint (rather than computed by this evaluation).
    #[serde(default)]
    pub val_from_checkpoint: bool,
    /// Everything at 0.5 (the notebook's threshold).
    pub at_default_threshold: BinaryMetrics,
    /// Everything at [`BinaryView::threshold`].
    pub at_chosen_threshold: BinaryMetrics,
    /// 95% percentile-bootstrap intervals (absent with `--bootstrap 0`).
    pub bootstrap: Option<BootstrapPair>,
    /// Reliability bins behind the ECE.
    pub calibration: Calibration,
}

/// `metrics.json`'s `multiclass` object: the N-class figures of the evaluated split
/// ([`MulticlassMetrics`]: `per_class[k]` holds class `k`'s `recall`, `specificity`,
/// `precision`, `f1`, `roc_auc`, `support`, `predicted`) and their intervals
/// (`bootstrap.per_class[k]`, absent with `--bootstrap 0`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MulticlassSection {
    pub class_names: Vec<String>,
    #[serde(flatten)]
    pub metrics: MulticlassMetrics,
    pub bootstrap: Option<MulticlassBootstrap>,
}

/// The figures of the evaluated split, and the curves the plots draw.
pub(super) struct Measured {
    pub at_default: BinaryMetrics,
    pub at_chosen: BinaryMetrics,
    pub bootstrap: Option<BootstrapPair>,
    pub calibration: Calibration,
    pub roc: RocCurve,
    pub pr: PrCurve,
}

impl Measured {
    /// `metrics.json`'s binary view at `threshold`, and the curves the plots draw.
    pub(super) fn into_view(
        self,
        threshold: Threshold,
        val_from_checkpoint: bool,
    ) -> (BinaryView, (RocCurve, PrCurve)) {
        let view = BinaryView {
            threshold,
            val_from_checkpoint,
            at_default_threshold: self.at_default,
            at_chosen_threshold: self.at_chosen,
            bootstrap: self.bootstrap,
            calibration: self.calibration,
        };
        (view, (self.roc, self.pr))
    }
}

/// Every figure of `preds` at 0.5 and at `threshold`, with `opts.bootstrap` resamples.
pub(super) fn measure(
    opts: &EvalOptions,
    preds: &SplitPredictions,
    threshold: f64,
    data_dir: &Path,
) -> Result<Measured> {
    let split_err = |e: Error| Error::BadArtifact {
        path: data_dir.to_path_buf(),
        reason: format!("the {} split cannot be evaluated: {e}", opts.split.name()),
    };
    let (labels, probs) = (&preds.labels, &preds.probs);
    let at_default = metrics::evaluate(labels, probs, DEFAULT_THRESHOLD).map_err(split_err)?;
    let at_chosen = metrics::evaluate(labels, probs, threshold).map_err(split_err)?;
    let bootstrap = if opts.bootstrap > 0 {
        Some(BootstrapPair {
            at_default_threshold: metrics::bootstrap_ci(
                labels,
                probs,
                opts.bootstrap,
                opts.seed,
                DEFAULT_THRESHOLD,
            )
            .map_err(split_err)?,
            at_chosen_threshold: metrics::bootstrap_ci(
                labels,
                probs,
                opts.bootstrap,
                opts.seed,
                threshold,
            )
            .map_err(split_err)?,
        })
    } else {
        None
    };
    Ok(Measured {
        at_default,
        at_chosen,
        bootstrap,
        calibration: metrics::calibration(labels, probs, CALIBRATION_BINS)?,
        roc: metrics::roc_curve(labels, probs, true)?,
        pr: metrics::precision_recall_curve(labels, probs)?,
    })
}

/// The N-class figures of `preds` (labels are class indices, `class_probs` one row per
/// image), with `opts.bootstrap` resamples.
pub(super) fn measure_multiclass(
    opts: &EvalOptions,
    preds: &SplitPredictions,
    class_names: &[String],
    data_dir: &Path,
) -> Result<MulticlassSection> {
    let split_err = |e: Error| Error::BadArtifact {
        path: data_dir.to_path_buf(),
        reason: format!("the {} split cannot be evaluated: {e}", opts.split.name()),
    };
    let (labels, probs) = (&preds.labels, &preds.class_probs);
    let metrics = metrics::evaluate_multiclass(labels, probs).map_err(split_err)?;
    let bootstrap = if opts.bootstrap > 0 {
        Some(
            metrics::multiclass_bootstrap(labels, probs, opts.bootstrap, opts.seed)
                .map_err(split_err)?,
        )
    } else {
        None
    };
    Ok(MulticlassSection {
        class_names: class_names.to_vec(),
        metrics,
        bootstrap,
    })
}

/// The caveats of [`EvalMetrics::warnings`]: the threshold's note, a split that is not the
/// test split, data other than the run's, too few images, an AUC interval reaching chance,
/// resamples that lacked a class.
pub(super) fn warnings(
    opts: &EvalOptions,
    binary: Option<(&Threshold, &Measured)>,
    multiclass: Option<&MulticlassSection>,
    manifest_sha256: &str,
    trained_on_manifest_sha256: &str,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(n) = binary.and_then(|(t, _)| t.note.as_ref()) {
        warnings.push(n.clone());
    }
    match opts.split {
        Split::Val => warnings.push(
            "this is the validation split, on which the threshold was chosen (and the best \
             epoch selected): its figures are optimistic"
                .into(),
        ),
        Split::Train => warnings.push(
            "this is the training split (augmented images the model was fitted on): its \
             figures say nothing about performance on new images"
                .into(),
        ),
        Split::Test => {}
    }
    if manifest_sha256 != trained_on_manifest_sha256 {
        warnings.push(format!(
            "the prepared dataset differs from the one the run was trained on (manifest \
             SHA-256 {} vs {}): make sure none of these images were used in training",
            short(manifest_sha256),
            short(trained_on_manifest_sha256)
        ));
    }
    if let Some(mc) = multiclass {
        let few: Vec<String> = mc
            .metrics
            .per_class
            .iter()
            .zip(&mc.class_names)
            .filter(|(c, _)| c.support < 30)
            .map(|(c, name)| format!("{} {name}", c.support))
            .collect();
        if !few.is_empty() {
            warnings.push(format!(
                "only {} images: those classes' figures are very uncertain (see the intervals)",
                few.join(", ")
            ));
        }
    }
    let Some((_, m)) = binary else {
        return warnings;
    };
    let d = &m.at_default;
    if d.n_positive < 30 || d.n_negative < 30 {
        warnings.push(format!(
            "only {} malignant and {} benign images: every figure is very uncertain (see the \
             intervals)",
            d.n_positive, d.n_negative
        ));
    }
    if let Some(b) = &m.bootstrap {
        if b.at_default_threshold.roc_auc.lower <= 0.5 {
            warnings.push(format!(
                "the ROC AUC interval ({:.3} to {:.3}) includes 0.5: on this split the model's \
                 ranking cannot be told apart from chance",
                b.at_default_threshold.roc_auc.lower, b.at_default_threshold.roc_auc.upper
            ));
        }
        let skipped = b.at_chosen_threshold.skipped_one_class;
        if skipped > 0 {
            warnings.push(format!(
                "{skipped} of {} bootstrap resamples lacked a class and were left out of the \
                 AUC interval",
                b.at_chosen_threshold.n_resamples
            ));
        }
    }
    warnings
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::tests::metrics_at;

    /// The two-class layout with every field at the top level, as `metrics.json` was
    /// written before N classes: the flattened [`BinaryView`] must give the same bytes.
    #[derive(Serialize)]
    struct TopLevel<'a> {
        format: &'a str,
        format_version: u32,
        crate_version: &'a str,
        split: Split,
        tta: bool,
        device: &'a str,
        run_dir: &'a Path,
        checkpoint: &'a Path,
        checkpoint_sha256: &'a str,
        checkpoint_epoch: usize,
        data_dir: &'a Path,
        manifest_sha256: &'a str,
        trained_on_manifest_sha256: &'a str,
        class_names: &'a [String],
        image_size: u32,
        threshold: &'a Threshold,
        val_from_checkpoint: bool,
        at_default_threshold: &'a BinaryMetrics,
        at_chosen_threshold: &'a BinaryMetrics,
        bootstrap: &'a Option<BootstrapPair>,
        calibration: &'a Calibration,
        warnings: &'a [String],
        seconds: f64,
    }

    #[test]
    fn two_class_metrics_json_keeps_its_layout_and_reads_back() {
        for chosen in [0.41234, 3.3e-7] {
            let mut m = metrics_at(chosen);
            // The report's fixture has a NaN, which JSON cannot carry back.
            m.binary.as_mut().unwrap().at_default_threshold.mcc = 0.25;
            let b = m.binary.as_ref().unwrap();
            let flat = TopLevel {
                format: &m.format,
                format_version: m.format_version,
                crate_version: &m.crate_version,
                split: m.split,
                tta: m.tta,
                device: &m.device,
                run_dir: &m.run_dir,
                checkpoint: &m.checkpoint,
                checkpoint_sha256: &m.checkpoint_sha256,
                checkpoint_epoch: m.checkpoint_epoch,
                data_dir: &m.data_dir,
                manifest_sha256: &m.manifest_sha256,
                trained_on_manifest_sha256: &m.trained_on_manifest_sha256,
                class_names: &m.class_names,
                image_size: m.image_size,
                threshold: &b.threshold,
                val_from_checkpoint: b.val_from_checkpoint,
                at_default_threshold: &b.at_default_threshold,
                at_chosen_threshold: &b.at_chosen_threshold,
                bootstrap: &b.bootstrap,
                calibration: &b.calibration,
                warnings: &m.warnings,
                seconds: m.seconds,
            };
            let ours = serde_json::to_string_pretty(&m).unwrap();
            assert_eq!(ours, serde_json::to_string_pretty(&flat).unwrap());
            let back: EvalMetrics = serde_json::from_str(&ours).unwrap();
            assert_eq!(back, m);
        }
    }
}

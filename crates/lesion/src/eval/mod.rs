//! The evaluation stage (`lesion-eval`): clinical metrics, per-image predictions, figures
//! and a self-contained HTML report for one checkpoint on one split of a prepared dataset.
//!
//! Data flow: the loader yields NCHW f32 batches `[b, 3, S, S]` normalised with the
//! manifest's mean/std; the model runs in eval mode (running statistics, no dropout) and
//! each image's malignant probability is `sigmoid(logit)` as f64 — with `tta`, the sigmoid
//! of the mean logit of the image and its horizontal and vertical flips
//! ([`crate::infer::predict_split`]). Labels are `0` benign, `1` malignant (positive).
//!
//! The decision threshold is chosen on the **validation** split (Youden's J, or the highest
//! threshold reaching a target sensitivity) and then applied to the evaluated split, so the
//! test figures at that threshold are not tuned on the test images. It is written into the
//! run ([`THRESHOLD_FILE`], see [`Threshold`]) so that prediction uses it. A
//! `best.safetensors` written by `lesion-train` holds the validation predictions it was
//! selected on; they are used instead of a second validation pass when the dataset is the
//! run's own (same manifest hash, same images in the same order) and there is no TTA
//! ([`EvalOptions::recompute_val`] turns this off). Either way the predictions come from the
//! same weights on the same images, in eval mode.
//!
//! Outputs, in `<run>/eval-<split>/` (built in a staging folder and renamed into place,
//! refused if present unless `force`): [`METRICS_FILE`], [`PREDICTIONS_FILE`], `roc.png`,
//! `pr.png`, `confusion.png`, `calibration.png`, `errors.png` and `report.html`. A
//! checkpoint other than the run's `best.safetensors` gets `eval-<split>-<stem>/` and
//! `threshold-<stem>.json` instead, so it never replaces the best checkpoint's threshold.

mod choose;
mod errors;
mod inference;
mod metrics;
mod options;
pub mod plots;
mod predictions;
pub mod report;
mod summary;

pub use errors::{confident_errors, ErrorCase};
pub use metrics::{BootstrapPair, EvalMetrics};
pub use options::EvalOptions;
pub use summary::EvalSummary;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::device::describe;
use crate::fsutil::{read_json, sha256_file, write_atomic, write_json_atomic, StagingDir};
use crate::loader::PreparedDataset;
use crate::split::Split;
use crate::train::{
    history, EpochRecord, RunConfig, BEST_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE,
};
use crate::{Error, Result};
use metrics::Measured;

/// The chosen threshold inside a run folder (for the run's `best.safetensors`).
pub const THRESHOLD_FILE: &str = "threshold.json";
/// Every figure of an evaluation, as [`EvalMetrics`].
pub const METRICS_FILE: &str = "metrics.json";
/// One row per image: path, label, probability, prediction.
pub const PREDICTIONS_FILE: &str = "predictions.csv";
pub const ROC_FILE: &str = "roc.png";
pub const PR_FILE: &str = "pr.png";
pub const CONFUSION_FILE: &str = "confusion.png";
pub const CALIBRATION_FILE: &str = "calibration.png";
pub const ERRORS_FILE: &str = "errors.png";
pub const REPORT_FILE: &str = "report.html";
/// Every file an evaluation folder holds.
pub const OUTPUT_FILES: [&str; 8] = [
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROC_FILE,
    PR_FILE,
    CONFUSION_FILE,
    CALIBRATION_FILE,
    ERRORS_FILE,
    REPORT_FILE,
];
/// Value of [`EvalMetrics::format`].
pub const METRICS_FORMAT: &str = "lesion-eval-metrics";
pub const METRICS_FORMAT_VERSION: u32 = 1;
/// Most false negatives (and, separately, false positives) shown in `errors.png`.
pub const MAX_ERRORS_SHOWN: usize = 8;

/// How the decision threshold is chosen on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// Maximise Youden's J = sensitivity + specificity - 1.
    #[default]
    Youden,
    /// The highest threshold whose validation sensitivity reaches a target (the best
    /// specificity at that sensitivity).
    Sensitivity,
}

impl FromStr for ThresholdMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "youden" => Ok(Self::Youden),
            "sensitivity" => Ok(Self::Sensitivity),
            _ => Err(Error::InvalidOption(format!(
                "unknown threshold method `{s}`; expected youden or sensitivity"
            ))),
        }
    }
}

impl fmt::Display for ThresholdMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Youden => "youden",
            Self::Sensitivity => "sensitivity",
        })
    }
}

/// The decision threshold of a run, as `threshold.json`: a sample is called malignant when
/// its probability is `>= threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub threshold: f64,
    pub method: ThresholdMethod,
    /// The sensitivity asked for (method `sensitivity` only).
    pub target_sensitivity: Option<f64>,
    /// The split it was chosen on (always `val`).
    pub split: Split,
    pub val_sensitivity: f64,
    pub val_specificity: f64,
    /// Whether the probabilities it was chosen on used test-time augmentation; prediction
    /// should score images the same way.
    #[serde(default)]
    pub tta: bool,
    /// File name of the checkpoint it belongs to, inside the run folder.
    #[serde(default)]
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub manifest_sha256: String,
    /// Why the method's own choice was replaced (e.g. no threshold beats chance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Threshold {
    /// A short description, e.g. `0.4123 (youden on val)`.
    pub fn describe(&self) -> String {
        match (self.method, self.target_sensitivity) {
            (ThresholdMethod::Sensitivity, Some(t)) => format!(
                "{:.4} (highest reaching sensitivity {:.0}% on val)",
                self.threshold,
                t * 100.0
            ),
            _ => format!("{:.4} (Youden's J on val)", self.threshold),
        }
    }

    /// Checks that `checkpoint` is the file this threshold was chosen for.
    pub fn verify_checkpoint(&self, checkpoint: &Path) -> Result<()> {
        let sha = sha256_file(checkpoint)?;
        if sha == self.checkpoint_sha256 {
            Ok(())
        } else {
            Err(Error::BadArtifact {
                path: checkpoint.to_path_buf(),
                reason: format!(
                    "the decision threshold was chosen for another checkpoint (SHA-256 {} vs \
                     {sha}); run lesion-eval again on this run",
                    self.checkpoint_sha256
                ),
            })
        }
    }
}

/// Where the threshold of `checkpoint` (a file inside `run_dir`) is kept:
/// `threshold.json` for `best.safetensors`, `threshold-<stem>.json` for any other.
pub fn threshold_path(run_dir: &Path, checkpoint: &Path) -> PathBuf {
    match checkpoint_suffix(checkpoint) {
        None => run_dir.join(THRESHOLD_FILE),
        Some(stem) => run_dir.join(format!("threshold-{stem}.json")),
    }
}

/// Reads the decision threshold of a run's best checkpoint (`<run_dir>/threshold.json`),
/// written by [`run`].
pub fn read_threshold(run_dir: &Path) -> Result<Threshold> {
    read_threshold_file(&run_dir.join(THRESHOLD_FILE))
}

/// Reads and checks a threshold file.
pub fn read_threshold_file(path: &Path) -> Result<Threshold> {
    if !path.is_file() {
        return Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: "no decision threshold: run lesion-eval on this run first".into(),
        });
    }
    let t: Threshold = read_json(path)?;
    if !(0.0..=1.0).contains(&t.threshold) {
        return Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: format!("threshold {} is not a probability in [0, 1]", t.threshold),
        });
    }
    Ok(t)
}

/// `None` for the run's best checkpoint, else the file stem that tells outputs apart.
fn checkpoint_suffix(checkpoint: &Path) -> Option<String> {
    match checkpoint.file_name().and_then(|n| n.to_str()) {
        Some(BEST_FILE) => None,
        _ => Some(
            checkpoint
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "checkpoint".into()),
        ),
    }
}

/// The run folder and checkpoint a `--run` argument names.
#[derive(Debug, Clone)]
struct RunTarget {
    run_dir: PathBuf,
    checkpoint: PathBuf,
}

fn resolve_run(path: &Path) -> Result<RunTarget> {
    let (run_dir, checkpoint) = if path.is_dir() {
        let best = path.join(BEST_FILE);
        if !best.is_file() {
            return Err(Error::BadArtifact {
                path: best,
                reason: "missing: the run has no best checkpoint (it has not finished an epoch, \
                         or this is not a run folder); pass a checkpoint file with --run to \
                         evaluate another one"
                    .into(),
            });
        }
        (path.to_path_buf(), best)
    } else if path.is_file() {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, path.to_path_buf())
    } else {
        return Err(Error::InvalidOption(format!(
            "--run {}: no such run folder or checkpoint file",
            path.display()
        )));
    };
    Ok(RunTarget {
        run_dir,
        checkpoint,
    })
}

fn read_run_config(run_dir: &Path) -> Result<RunConfig> {
    let path = run_dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(Error::BadArtifact {
            path,
            reason: "missing: not a lesion run folder (the checkpoint's training configuration \
                     is needed to check it against the data)"
                .into(),
        });
    }
    read_json(&path)
}

/// Refuses data prepared differently from the data the run was trained on.
fn check_compatible(cfg: &RunConfig, data: &PreparedDataset, run_dir: &Path) -> Result<()> {
    let mut problems = Vec::new();
    if cfg.class_names != data.class_names() {
        problems.push(format!(
            "class names: the run was trained on {:?}, the data has {:?}",
            cfg.class_names,
            data.class_names()
        ));
    }
    if cfg.image_size != data.image_size() as usize {
        problems.push(format!(
            "image size: the run was trained on {0}x{0} px images, the data is {1}x{1} px \
             (prepare it again with --size {0})",
            cfg.image_size,
            data.image_size()
        ));
    }
    let norm = data.manifest().normalization;
    let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6);
    if !close(cfg.mean, norm.mean) || !close(cfg.std, norm.std) {
        problems.push(format!(
            "normalisation: the run used mean {:?} / std {:?}, the data specifies {:?} / {:?}",
            cfg.mean, cfg.std, norm.mean, norm.std
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::RunDataMismatch {
            run: run_dir.to_path_buf(),
            data: data.dir().to_path_buf(),
            reason: problems.join("; "),
        })
    }
}

/// Runs the whole evaluation described by `opts` (see the module docs).
pub fn run(opts: &EvalOptions) -> Result<EvalSummary> {
    let start = Instant::now();
    opts.validate()?;
    let target = resolve_run(&opts.run)?;
    let cfg = read_run_config(&target.run_dir)?;
    let data = PreparedDataset::open(&opts.data)?;
    check_compatible(&cfg, &data, &target.run_dir)?;
    let suffix = checkpoint_suffix(&target.checkpoint)
        .map(|s| format!("-{s}"))
        .unwrap_or_default();
    let out_dir = target
        .run_dir
        .join(format!("eval-{}{suffix}", opts.split.name()));
    // Refuse an existing output before any expensive work.
    let stage = StagingDir::new(&out_dir, opts.force)?;
    inference::check_data(opts, &data)?;

    // Score both splits, choose the threshold on validation, measure the evaluated split.
    let (loaded, stored_val) = inference::load(opts, &target.checkpoint, &cfg, &data)?;
    let scored = inference::predict(opts, &loaded, &data, stored_val)?;
    let threshold =
        choose::on_validation(opts, &scored.val, data.dir(), &target.checkpoint, &loaded)?;
    let thr = threshold.threshold;
    let measured = metrics::measure(opts, &scored.preds, thr, data.dir())?;
    let warnings = metrics::warnings(
        opts,
        &threshold,
        &measured,
        &loaded.manifest_sha256,
        &cfg.manifest_sha256,
    );
    let Measured {
        at_default,
        at_chosen,
        bootstrap,
        calibration,
        roc,
        pr,
    } = measured;
    let mut metrics_doc = EvalMetrics {
        format: METRICS_FORMAT.into(),
        format_version: METRICS_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        split: opts.split,
        tta: opts.tta,
        device: describe(&loaded.device),
        run_dir: absolute(&target.run_dir),
        checkpoint: absolute(&target.checkpoint),
        checkpoint_sha256: loaded.checkpoint_sha256.clone(),
        checkpoint_epoch: loaded.epoch,
        data_dir: absolute(data.dir()),
        manifest_sha256: loaded.manifest_sha256.clone(),
        trained_on_manifest_sha256: cfg.manifest_sha256.clone(),
        class_names: data.class_names().to_vec(),
        image_size: data.image_size(),
        threshold: threshold.clone(),
        val_from_checkpoint: scored.val_from_checkpoint,
        at_default_threshold: at_default,
        at_chosen_threshold: at_chosen,
        bootstrap,
        calibration,
        warnings,
        seconds: 0.0,
    };

    // The outputs, into the staging folder.
    let dir = stage.path();
    let paths = predictions::image_paths(data.manifest(), &scored.preds);
    plots::draw_metrics(dir, &metrics_doc, &roc, &pr, data.class_names())?;
    let (fns, fps) = errors::draw_errors(dir, &scored.preds, &paths, &data, opts.split, thr)?;
    predictions::write(
        &dir.join(PREDICTIONS_FILE),
        &scored.preds,
        &paths,
        data.class_names(),
        thr,
    )?;
    let history: Vec<EpochRecord> =
        history::read(&target.run_dir.join(HISTORY_FILE)).unwrap_or_default();
    let curves_png = std::fs::read(target.run_dir.join(CURVES_FILE)).ok();
    metrics_doc.seconds = start.elapsed().as_secs_f64();
    let report_ctx = report::ReportInput {
        metrics: &metrics_doc,
        run_config: &cfg,
        manifest: data.manifest(),
        history: &history,
        curves_png: curves_png.as_deref(),
        figures_dir: dir,
        false_negatives: &fns,
        false_positives: &fps,
        out_dir: &out_dir,
        threshold_file: &threshold_path(&target.run_dir, &target.checkpoint),
    };
    let html = report::render(&report_ctx)?;
    write_atomic(dir.join(REPORT_FILE), html.as_bytes())?;
    write_json_atomic(dir.join(METRICS_FILE), &metrics_doc)?;

    let out_dir = stage.commit()?;
    // Only a complete evaluation may change the threshold prediction uses.
    let threshold_file = threshold_path(&target.run_dir, &target.checkpoint);
    write_json_atomic(&threshold_file, &threshold)?;
    Ok(EvalSummary {
        report: out_dir.join(REPORT_FILE),
        out_dir,
        threshold_file,
        metrics: metrics_doc,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_files_follow_the_checkpoint() {
        let run = Path::new("runs/x");
        assert_eq!(
            threshold_path(run, &run.join("best.safetensors")),
            run.join("threshold.json")
        );
        assert_eq!(
            threshold_path(run, &run.join("last.safetensors")),
            run.join("threshold-last.json")
        );
    }
}

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

pub mod plots;
pub mod report;

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use candle_core::Device;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::device::{describe, parse_device};
use crate::fsutil::{read_json, sha256_file, write_atomic, write_json_atomic, StagingDir};
use crate::infer::{predict_split, SplitPredictions};
use crate::loader::PreparedDataset;
use crate::metrics::{
    self, BinaryMetrics, BootstrapCis, Calibration, ConfusionMatrix, CALIBRATION_BINS,
    DEFAULT_THRESHOLD,
};
use crate::model::ResNet18;
use crate::shard::Shard;
use crate::split::Split;
use crate::train::checkpoint;
use crate::train::{
    history, EpochRecord, RunConfig, BEST_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE,
};
use crate::{Error, Result};

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

/// Every option of `lesion-eval`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// A run folder (its `best.safetensors` is evaluated) or a checkpoint file in a run folder.
    pub run: PathBuf,
    /// Prepared dataset folder.
    pub data: PathBuf,
    /// The split to evaluate (test).
    pub split: Split,
    pub threshold_method: ThresholdMethod,
    /// Used by [`ThresholdMethod::Sensitivity`] (0.95).
    pub target_sensitivity: f64,
    /// Bootstrap resamples for the 95% intervals (1000); 0 skips the intervals.
    pub bootstrap: usize,
    /// Seed of the bootstrap (42).
    pub seed: u64,
    /// Test-time augmentation: mean logit of the image and its two flips.
    pub tta: bool,
    /// Images per forward pass (64).
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
    pub device: String,
    /// Replace an existing evaluation folder.
    pub force: bool,
    /// Run the validation split again even where the checkpoint holds the validation
    /// predictions it was selected on (see [`run`]).
    pub recompute_val: bool,
    /// Progress bars and stage messages on stderr.
    pub progress: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            run: PathBuf::from("runs/default"),
            data: PathBuf::from("data/prepared"),
            split: Split::Test,
            threshold_method: ThresholdMethod::Youden,
            target_sensitivity: 0.95,
            bootstrap: 1000,
            seed: 42,
            tta: false,
            batch_size: 64,
            device: "auto".into(),
            force: false,
            recompute_val: false,
            progress: true,
        }
    }
}

impl EvalOptions {
    /// Rejects option values that cannot work, before anything is read.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::InvalidOption(
                "--batch-size must be at least 1".into(),
            ));
        }
        let t = self.target_sensitivity;
        if !(t > 0.0 && t <= 1.0) {
            return Err(Error::InvalidOption(format!(
                "--target-sensitivity must be in (0, 1], got {t}"
            )));
        }
        Ok(())
    }
}

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
    /// The threshold chosen on the validation split.
    pub threshold: Threshold,
    /// Whether the validation predictions behind the threshold were those `lesion-train`
    /// stored in the checkpoint (rather than computed by this evaluation).
    #[serde(default)]
    pub val_from_checkpoint: bool,
    /// Everything at 0.5 (the notebook's threshold).
    pub at_default_threshold: BinaryMetrics,
    /// Everything at [`EvalMetrics::threshold`].
    pub at_chosen_threshold: BinaryMetrics,
    /// 95% percentile-bootstrap intervals (absent with `--bootstrap 0`).
    pub bootstrap: Option<BootstrapPair>,
    /// Reliability bins behind the ECE.
    pub calibration: Calibration,
    /// Caveats the figures need (also shown in the report).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// What [`run`] returns; `Display` is the compact terminal table.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    pub out_dir: PathBuf,
    pub report: PathBuf,
    pub threshold_file: PathBuf,
    pub metrics: EvalMetrics,
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

fn progress_bar(show: bool, len: u64, prefix: &str) -> ProgressBar {
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

/// Chooses the threshold on validation predictions.
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

/// An image the model got wrong, for `errors.png` and the report.
#[derive(Debug, Clone)]
pub struct ErrorCase {
    /// Row of `predictions.csv` (0-based, header excluded).
    pub row: usize,
    pub source_index: u32,
    /// Path relative to the input folder.
    pub path: String,
    pub label: usize,
    pub probability: f64,
}

/// The most confident false negatives (malignant, lowest probability first) and false
/// positives (benign, highest probability first) at `threshold`.
pub fn confident_errors(
    preds: &SplitPredictions,
    paths: &[String],
    threshold: f64,
    max_each: usize,
) -> (Vec<ErrorCase>, Vec<ErrorCase>) {
    let case = |i: usize| ErrorCase {
        row: i,
        source_index: preds.source_index[i],
        path: paths[i].clone(),
        label: preds.labels[i],
        probability: preds.probs[i],
    };
    let mut fns: Vec<usize> = (0..preds.len())
        .filter(|&i| preds.labels[i] == 1 && preds.probs[i] < threshold)
        .collect();
    fns.sort_by(|&a, &b| preds.probs[a].total_cmp(&preds.probs[b]).then(a.cmp(&b)));
    let mut fps: Vec<usize> = (0..preds.len())
        .filter(|&i| preds.labels[i] == 0 && preds.probs[i] >= threshold)
        .collect();
    fps.sort_by(|&a, &b| preds.probs[b].total_cmp(&preds.probs[a]).then(a.cmp(&b)));
    (
        fns.into_iter().take(max_each).map(case).collect(),
        fps.into_iter().take(max_each).map(case).collect(),
    )
}

/// The stored (resized, unnormalised) images of `wanted` source indices of `split`,
/// exactly as the model saw them.
fn split_images(
    data: &PreparedDataset,
    split: Split,
    wanted: &[u32],
) -> Result<HashMap<u32, RgbImage>> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let size = data.image_size();
    for entry in data.manifest().shards_of(split, 0) {
        let shard = Shard::open(data.dir().join(&entry.file))?;
        for (row, src) in shard.source_index().iter().enumerate() {
            if wanted.contains(src) {
                out.insert(*src, crate::prep::chw_to_image(shard.image(row), size));
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    Ok(out)
}

/// RFC 4180 quoting for a field that needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `predictions.csv`; probabilities are written in Rust's shortest round-trip form, so
/// metrics recomputed from the file equal those in `metrics.json` exactly.
fn predictions_csv(
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: f64,
) -> String {
    let mut s = String::from(
        "path,label,class,probability,prediction,predicted_class,logit,source_index\n",
    );
    let name = |k: usize| classes.get(k).map_or("?", String::as_str);
    for i in 0..preds.len() {
        let pred = usize::from(preds.probs[i] >= threshold);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            csv_field(&paths[i]),
            preds.labels[i],
            csv_field(name(preds.labels[i])),
            preds.probs[i],
            pred,
            csv_field(name(pred)),
            preds.logits[i],
            preds.source_index[i]
        );
    }
    s
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

    let device = parse_device(&opts.device)?;
    let checkpoint_sha256 = sha256_file(&target.checkpoint)?;
    let manifest_sha256 = crate::manifest::manifest_sha256(data.dir())?;
    let (tensors, state) = checkpoint::load(&target.checkpoint, &Device::Cpu)?;
    // The validation predictions the checkpoint was selected on, when they are of this
    // dataset and the evaluation would compute the same ones (no TTA).
    let stored_val = if opts.tta || opts.recompute_val || manifest_sha256 != cfg.manifest_sha256 {
        None
    } else {
        SplitPredictions::val_from_tensors(&tensors, &data)?
    };
    let model =
        ResNet18::from_tensors(tensors, &device, cfg.train.head_dropout as f32).map_err(|e| {
            Error::BadArtifact {
                path: target.checkpoint.clone(),
                reason: format!("not a ResNet-18 checkpoint of this pipeline: {e}"),
            }
        })?;
    if opts.progress {
        eprintln!(
            "evaluating {} (epoch {}) on the {} split of {} ({} images), {}{}",
            target.checkpoint.display(),
            state.epoch,
            opts.split.name(),
            data.dir().display(),
            data.len(opts.split),
            describe(&device),
            if opts.tta { ", TTA" } else { "" }
        );
    }
    let predict = |split: Split| -> Result<SplitPredictions> {
        let pb = progress_bar(opts.progress, data.len(split) as u64, split.name());
        let p = predict_split(
            &model,
            &data,
            split,
            opts.batch_size,
            opts.tta,
            &device,
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

    let (thr, val_sens, val_spec, note) = choose_threshold(opts, &val, data.dir())?;
    let threshold = Threshold {
        threshold: thr,
        method: opts.threshold_method,
        target_sensitivity: (opts.threshold_method == ThresholdMethod::Sensitivity)
            .then_some(opts.target_sensitivity),
        split: Split::Val,
        val_sensitivity: val_sens,
        val_specificity: val_spec,
        tta: opts.tta,
        checkpoint: target
            .checkpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        checkpoint_sha256: checkpoint_sha256.clone(),
        manifest_sha256: manifest_sha256.clone(),
        note,
    };

    let split_err = |e: Error| Error::BadArtifact {
        path: data.dir().to_path_buf(),
        reason: format!("the {} split cannot be evaluated: {e}", opts.split.name()),
    };
    let (labels, probs) = (&preds.labels, &preds.probs);
    let at_default = metrics::evaluate(labels, probs, DEFAULT_THRESHOLD).map_err(split_err)?;
    let at_chosen = metrics::evaluate(labels, probs, thr).map_err(split_err)?;
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
                thr,
            )
            .map_err(split_err)?,
        })
    } else {
        None
    };
    let calibration = metrics::calibration(labels, probs, CALIBRATION_BINS)?;
    let roc = metrics::roc_curve(labels, probs, true)?;
    let pr = metrics::precision_recall_curve(labels, probs)?;

    let mut warnings = Vec::new();
    if let Some(n) = &threshold.note {
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
    if manifest_sha256 != cfg.manifest_sha256 {
        warnings.push(format!(
            "the prepared dataset differs from the one the run was trained on (manifest \
             SHA-256 {} vs {}): make sure none of these images were used in training",
            short(&manifest_sha256),
            short(&cfg.manifest_sha256)
        ));
    }
    if at_default.n_positive < 30 || at_default.n_negative < 30 {
        warnings.push(format!(
            "only {} malignant and {} benign images: every figure is very uncertain (see the \
             intervals)",
            at_default.n_positive, at_default.n_negative
        ));
    }
    if let Some(b) = &bootstrap {
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

    let manifest = data.manifest();
    let paths: Vec<String> = preds
        .source_index
        .iter()
        .map(|&i| {
            manifest
                .images
                .get(i as usize)
                .map_or_else(|| format!("#{i}"), |e| e.path.clone())
        })
        .collect();

    let metrics_doc = EvalMetrics {
        format: METRICS_FORMAT.into(),
        format_version: METRICS_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        split: opts.split,
        tta: opts.tta,
        device: describe(&device),
        run_dir: absolute(&target.run_dir),
        checkpoint: absolute(&target.checkpoint),
        checkpoint_sha256,
        checkpoint_epoch: state.epoch,
        data_dir: absolute(data.dir()),
        manifest_sha256,
        trained_on_manifest_sha256: cfg.manifest_sha256.clone(),
        class_names: data.class_names().to_vec(),
        image_size: data.image_size(),
        threshold: threshold.clone(),
        val_from_checkpoint,
        at_default_threshold: at_default,
        at_chosen_threshold: at_chosen,
        bootstrap,
        calibration,
        warnings,
        seconds: 0.0,
    };

    // Figures.
    let dir = stage.path();
    let m = &metrics_doc;
    let marks = [
        plots::Mark::from_metrics("threshold 0.5", &m.at_default_threshold, 0),
        plots::Mark::from_metrics(
            &format!("threshold {:.3} (chosen on val)", thr),
            &m.at_chosen_threshold,
            1,
        ),
    ];
    plots::roc(
        &roc,
        m.at_default_threshold.roc_auc,
        &marks,
        &dir.join(ROC_FILE),
    )?;
    let prevalence = m.at_default_threshold.n_positive as f64 / m.at_default_threshold.n as f64;
    plots::pr(
        &pr,
        m.at_default_threshold.average_precision,
        prevalence,
        &marks,
        &dir.join(PR_FILE),
    )?;
    plots::confusion(
        &[
            (
                "threshold 0.5".to_string(),
                m.at_default_threshold.confusion_matrix,
            ),
            (
                format!("threshold {thr:.3} (chosen on val)"),
                m.at_chosen_threshold.confusion_matrix,
            ),
        ],
        data.class_names(),
        &dir.join(CONFUSION_FILE),
    )?;
    plots::calibration(&m.calibration, &dir.join(CALIBRATION_FILE))?;
    let (fns, fps) = confident_errors(&preds, &paths, thr, MAX_ERRORS_SHOWN);
    let wanted: Vec<u32> = fns.iter().chain(&fps).map(|c| c.source_index).collect();
    let images = split_images(&data, opts.split, &wanted)?;
    plots::error_grid(&fns, &fps, &images, thr, &dir.join(ERRORS_FILE))?;

    write_atomic(
        dir.join(PREDICTIONS_FILE),
        predictions_csv(&preds, &paths, data.class_names(), thr).as_bytes(),
    )?;

    let history: Vec<EpochRecord> =
        history::read(&target.run_dir.join(HISTORY_FILE)).unwrap_or_default();
    let curves_png = std::fs::read(target.run_dir.join(CURVES_FILE)).ok();
    let mut metrics_doc = metrics_doc;
    metrics_doc.seconds = start.elapsed().as_secs_f64();
    let report_ctx = report::ReportInput {
        metrics: &metrics_doc,
        run_config: &cfg,
        manifest,
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

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// `0.8123 [0.7712, 0.8501]` or just the value.
fn with_ci(v: f64, ci: Option<&metrics::ConfidenceInterval>) -> String {
    match ci {
        Some(c) => format!("{v:.4} [{:.4}, {:.4}]", c.lower, c.upper),
        None => format!("{v:.4}"),
    }
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        let (d, c) = (&m.at_default_threshold, &m.at_chosen_threshold);
        let (bd, bc) = match &m.bootstrap {
            Some(b) => (Some(&b.at_default_threshold), Some(&b.at_chosen_threshold)),
            None => (None, None),
        };
        writeln!(
            f,
            "{} split: {} images ({} benign, {} malignant), TTA {}, checkpoint epoch {}",
            m.split.name(),
            d.n,
            d.n_negative,
            d.n_positive,
            if m.tta { "on" } else { "off" },
            m.checkpoint_epoch
        )?;
        writeln!(
            f,
            "threshold {} — val sensitivity {:.3}, specificity {:.3}",
            m.threshold.describe(),
            m.threshold.val_sensitivity,
            m.threshold.val_specificity
        )?;
        let ci_note = match bd {
            Some(b) => format!("95% CI, {} bootstrap resamples", b.n_resamples),
            None => "no intervals (--bootstrap 0)".into(),
        };
        writeln!(
            f,
            "{:<20} {:<28} {:<28}",
            "metric",
            "at 0.5",
            format!("at {:.4}", c.threshold)
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, a: String, b: String| {
            writeln!(f, "{name:<20} {a:<28} {b:<28}")
        };
        row(
            f,
            "ROC AUC",
            with_ci(d.roc_auc, bd.map(|b| &b.roc_auc)),
            String::new(),
        )?;
        row(
            f,
            "average precision",
            format!("{:.4}", d.average_precision),
            String::new(),
        )?;
        row(
            f,
            "sensitivity",
            with_ci(d.sensitivity, bd.map(|b| &b.sensitivity)),
            with_ci(c.sensitivity, bc.map(|b| &b.sensitivity)),
        )?;
        row(
            f,
            "specificity",
            with_ci(d.specificity, bd.map(|b| &b.specificity)),
            with_ci(c.specificity, bc.map(|b| &b.specificity)),
        )?;
        row(
            f,
            "accuracy",
            with_ci(d.accuracy, bd.map(|b| &b.accuracy)),
            with_ci(c.accuracy, bc.map(|b| &b.accuracy)),
        )?;
        for (name, a, b) in [
            (
                "balanced accuracy",
                d.balanced_accuracy,
                c.balanced_accuracy,
            ),
            ("precision (PPV)", d.precision, c.precision),
            ("F1", d.f1, c.f1),
            ("MCC", d.mcc, c.mcc),
        ] {
            row(f, name, format!("{a:.4}"), format!("{b:.4}"))?;
        }
        let cm = |m: &ConfusionMatrix| format!("{}/{}/{}/{}", m.tp, m.fp, m.fn_, m.tn);
        row(
            f,
            "TP/FP/FN/TN",
            cm(&d.confusion_matrix),
            cm(&c.confusion_matrix),
        )?;
        writeln!(
            f,
            "Brier {:.4}, log loss {:.4}, ECE ({CALIBRATION_BINS} bins) {:.4}; {ci_note}",
            d.brier, d.log_loss, d.ece
        )?;
        let at: Vec<String> = d
            .specificity_at_sensitivity
            .iter()
            .map(|t| {
                format!(
                    "{:.0}% -> {:.3}",
                    t.target_sensitivity * 100.0,
                    t.specificity
                )
            })
            .collect();
        writeln!(f, "specificity at sensitivity {}", at.join(", "))?;
        for w in &m.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "outputs:   {}", self.out_dir.display())?;
        writeln!(f, "threshold: {}", self.threshold_file.display())?;
        write!(f, "report:    {}", self.report.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(labels: Vec<usize>, probs: Vec<f64>) -> SplitPredictions {
        SplitPredictions {
            source_index: (0..labels.len() as u32).collect(),
            logits: vec![0.0; labels.len()],
            labels,
            probs,
        }
    }

    #[test]
    fn confident_errors_are_ordered_by_confidence() {
        let p = preds(vec![1, 1, 0, 0, 1, 0], vec![0.1, 0.3, 0.9, 0.6, 0.8, 0.2]);
        let paths: Vec<String> = (0..6).map(|i| format!("x/{i}.jpg")).collect();
        let (fns, fps) = confident_errors(&p, &paths, 0.5, 8);
        assert_eq!(fns.iter().map(|c| c.row).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(fps.iter().map(|c| c.row).collect::<Vec<_>>(), [2, 3]);
        let (fns, _) = confident_errors(&p, &paths, 0.5, 1);
        assert_eq!(fns.len(), 1);
        assert_eq!(fns[0].path, "x/0.jpg");
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn predictions_csv_quotes_awkward_names() {
        let p = SplitPredictions {
            source_index: vec![3, 9, 4],
            labels: vec![0, 1, 1],
            logits: vec![-1.25, 0.1, -16.118_095],
            probs: vec![0.2227, 0.525, 1e-7],
        };
        let paths: Vec<String> = vec![
            "a,b \"c\"\nd.jpg".into(),
            "plain/x.jpg".into(),
            "cr\rhere.jpg".into(),
        ];
        let classes = ["benign".to_string(), "mal,ignant".to_string()];
        assert_eq!(
            predictions_csv(&p, &paths, &classes, 0.5),
            "path,label,class,probability,prediction,predicted_class,logit,source_index\n\
             \"a,b \"\"c\"\"\nd.jpg\",0,benign,0.2227,0,benign,-1.25,3\n\
             plain/x.jpg,1,\"mal,ignant\",0.525,1,\"mal,ignant\",0.1,9\n\
             \"cr\rhere.jpg\",1,\"mal,ignant\",0.0000001,0,benign,-16.118095,4\n"
        );
    }

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

    #[test]
    fn options_are_validated() {
        assert!(EvalOptions::default().validate().is_ok());
        let bad = EvalOptions {
            target_sensitivity: 0.0,
            ..EvalOptions::default()
        };
        assert!(matches!(bad.validate(), Err(Error::InvalidOption(_))));
        assert_eq!(
            "youden".parse::<ThresholdMethod>().unwrap(),
            ThresholdMethod::Youden
        );
        assert!("roc".parse::<ThresholdMethod>().is_err());
    }
}

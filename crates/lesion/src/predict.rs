//! Classifying new photos with a trained run (`lesion-predict`, `lesion-serve`).
//!
//! A [`Predictor`] holds what a run folder needs to score an image exactly as `lesion-eval`
//! scored the validation and test splits:
//! - the model of `best.safetensors` in eval mode (running statistics, no dropout);
//! - the preprocessing of the prepared validation/test images: [`decode_rgb`] (content-
//!   sniffed, EXIF orientation applied) → [`resize_square`] to the run's `image_size` with the
//!   prepared dataset's resize policy (read from its `manifest.json`) → CHW →
//!   `(x / 255 - mean) / std` with the run's mean/std, giving `[3, S, S]` f32 per image and
//!   `[b, 3, S, S]` batches;
//! - the decision threshold that `lesion-eval` chose on the validation split
//!   (`threshold.json`, checked against the checkpoint's SHA-256) or one given explicitly.
//!
//! A [`Prediction`] is the malignant probability `sigmoid(logit)` (f64; with test-time
//! augmentation the logit is the mean over the image and its horizontal and vertical flips,
//! as [`crate::infer::eval_logits`]) and the label at the threshold (`probability >=
//! threshold` is malignant, as in [`crate::eval`]). [`Predictor::explain`] adds a Grad-CAM
//! heatmap of the malignant logit (see [`crate::gradcam`]).
//!
//! [`run`] is the whole `lesion-predict` command: files and folders in, one
//! [`FileResult`] per file out, per-file errors kept beside the successes.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::device::parse_device;
use crate::eval::{read_threshold, Threshold, ThresholdMethod, THRESHOLD_FILE};
use crate::fsutil::{read_json, sha256_file, write_atomic, write_json_atomic};
use crate::gradcam::{self, Cam};
use crate::image_io::{decode_rgb, resize_square, ResizePolicy, DEFAULT_MAX_PIXELS};
use crate::infer::{eval_logits, sigmoid};
use crate::manifest::{manifest_sha256, Manifest};
use crate::model::{self, ResNet18};
use crate::split::Split;
use crate::train::checkpoint::{self, TrainState};
use crate::train::{RunConfig, TrainConfig, BEST_FILE, CONFIG_FILE};
use crate::transforms::{normalize_chw, to_chw};
use crate::{Error, Result};

/// Images per forward pass unless set otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Index of the malignant class (the positive label) in a run's class names.
pub const MALIGNANT: usize = 1;

/// The model's answer for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Probability of malignancy, `sigmoid(logit)`.
    pub probability: f64,
    /// The malignant logit (mean over the flips with TTA).
    pub logit: f32,
    /// `probability >= threshold`.
    pub malignant: bool,
    /// The class name the run gives that decision (e.g. `Malignant`).
    pub label: String,
}

/// A Grad-CAM explanation of one image.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The heatmap blended over the photo (see [`gradcam::overlay`]).
    pub overlay: RgbImage,
    /// The raw map on layer4's grid.
    pub cam: Cam,
    /// The prediction behind it (no TTA: the CAM explains the plain forward pass).
    pub prediction: Prediction,
}

/// A loaded run, ready to score images. `Send + Sync`; forward passes take `&self`.
#[derive(Debug)]
pub struct Predictor {
    model: ResNet18,
    device: Device,
    run_dir: PathBuf,
    checkpoint: PathBuf,
    checkpoint_sha256: String,
    config: RunConfig,
    resize: ResizePolicy,
    threshold: f64,
    threshold_overridden: bool,
    run_threshold: Option<Threshold>,
    model_id: String,
    warnings: Vec<String>,
    max_pixels: u64,
    batch_size: usize,
}

impl Predictor {
    /// Loads `run_dir` (a folder written by `lesion-train`, with `config.json` and
    /// `best.safetensors`) onto `device`.
    ///
    /// The threshold is `threshold_override` when given, else the run's `threshold.json`
    /// (written by `lesion-eval`), which must belong to this `best.safetensors`. Problems
    /// that do not stop prediction (e.g. the prepared dataset that records the resize policy
    /// is gone, so `stretch` is assumed) are listed in [`Predictor::warnings`].
    pub fn load(run_dir: &Path, device: &Device, threshold_override: Option<f64>) -> Result<Self> {
        if !run_dir.is_dir() {
            return Err(Error::BadArtifact {
                path: run_dir.to_path_buf(),
                reason: "not a folder: pass a run folder written by lesion-train".into(),
            });
        }
        let config_path = run_dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(Error::BadArtifact {
                path: config_path,
                reason: "missing: this is not a lesion run folder (lesion-train writes it)".into(),
            });
        }
        let config: RunConfig = read_json(&config_path)?;
        check_config(&config, &config_path)?;
        let checkpoint = run_dir.join(BEST_FILE);
        if !checkpoint.is_file() {
            return Err(Error::BadArtifact {
                path: checkpoint,
                reason: "missing: the run has no best checkpoint (training has not finished \
                         an epoch)"
                    .into(),
            });
        }
        let checkpoint_sha256 = sha256_file(&checkpoint)?;
        let mut warnings = Vec::new();

        let threshold_path = run_dir.join(THRESHOLD_FILE);
        let run_threshold = if threshold_path.is_file() {
            match read_threshold(run_dir) {
                Ok(t) => Some(t),
                // An explicit threshold makes a broken file irrelevant, but worth a word.
                Err(e) if threshold_override.is_some() => {
                    warnings.push(format!("ignoring the run's threshold: {e}"));
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let threshold = match (threshold_override, &run_threshold) {
            (Some(t), _) => {
                if !(0.0..=1.0).contains(&t) {
                    return Err(Error::InvalidOption(format!(
                        "--threshold must be a probability in [0, 1], got {t}"
                    )));
                }
                t
            }
            (None, None) => {
                return Err(Error::BadArtifact {
                    path: threshold_path,
                    reason: format!(
                        "missing: the run has no decision threshold yet; run `lesion-eval --run \
                         {} --data <PREPARED_DIR>` first (it chooses one on the validation \
                         split), or pass --threshold",
                        run_dir.display()
                    ),
                })
            }
            (None, Some(t)) => {
                if t.checkpoint_sha256 != checkpoint_sha256 {
                    return Err(Error::BadArtifact {
                        path: threshold_path,
                        reason: format!(
                            "the decision threshold was chosen for another checkpoint (SHA-256 \
                             {} vs {checkpoint_sha256} of {BEST_FILE}); run lesion-eval again \
                             on this run, or pass --threshold",
                            t.checkpoint_sha256
                        ),
                    });
                }
                t.threshold
            }
        };

        let resize = resize_policy(&config, run_dir, &mut warnings);
        let tensors = checkpoint::load_model(&checkpoint, device)?;
        let model = ResNet18::from_tensors(tensors, device, config.train.head_dropout as f32)
            .map_err(|e| Error::BadArtifact {
                path: checkpoint.clone(),
                reason: format!("not a checkpoint of this model: {e}"),
            })?;
        let name = run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "run".into());
        Ok(Self {
            model,
            device: device.clone(),
            run_dir: run_dir.to_path_buf(),
            checkpoint,
            model_id: format!("{name}@{}", &checkpoint_sha256[..12]),
            checkpoint_sha256,
            config,
            resize,
            threshold,
            threshold_overridden: threshold_override.is_some(),
            run_threshold,
            warnings,
            max_pixels: DEFAULT_MAX_PIXELS,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// `<run folder name>@<first 12 hex digits of the checkpoint's SHA-256>`.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn checkpoint(&self) -> &Path {
        &self.checkpoint
    }

    pub fn checkpoint_sha256(&self) -> &str {
        &self.checkpoint_sha256
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Side of the square model input, in pixels.
    pub fn image_size(&self) -> u32 {
        self.config.image_size as u32
    }

    pub fn resize_policy(&self) -> ResizePolicy {
        self.resize
    }

    /// The decision threshold in use.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether the threshold was given explicitly rather than read from the run.
    pub fn threshold_overridden(&self) -> bool {
        self.threshold_overridden
    }

    /// The run's `threshold.json`, when it was read.
    pub fn run_threshold(&self) -> Option<&Threshold> {
        self.run_threshold.as_ref()
    }

    /// How the threshold in use was chosen, e.g. `0.4123 (Youden's J on val)`.
    pub fn describe_threshold(&self) -> String {
        match &self.run_threshold {
            Some(t) if !self.threshold_overridden() => t.describe(),
            _ => format!("{:.4} (given with --threshold)", self.threshold),
        }
    }

    /// Whether images should be scored with test-time augmentation by default: as the
    /// probabilities the run's threshold was chosen on were.
    pub fn default_tta(&self) -> bool {
        self.run_threshold.as_ref().is_some_and(|t| t.tta)
    }

    /// Remarks about the run that do not stop prediction.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn class_names(&self) -> &[String] {
        &self.config.class_names
    }

    /// Largest accepted pixel count of an input image (default [`DEFAULT_MAX_PIXELS`]).
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    pub fn set_max_pixels(&mut self, max_pixels: u64) {
        self.max_pixels = max_pixels.max(1);
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Images per forward pass (at least 1).
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.batch_size = batch_size.max(1);
    }

    /// Decodes an encoded image (`path` only names it in errors) within the pixel limit.
    pub fn decode(&self, bytes: &[u8], path: &Path) -> Result<RgbImage> {
        decode_rgb(bytes, path, self.max_pixels)
    }

    /// The model input of one image: `[3, S, S]` f32, normalised, as prep does for val/test.
    pub fn preprocess(&self, image: &RgbImage) -> Vec<f32> {
        let chw = to_chw(&resize_square(image, self.image_size(), self.resize));
        let mut out = vec![0f32; chw.len()];
        normalize_chw(&chw, self.config.mean, self.config.std, &mut out);
        out
    }

    /// The label of a probability at the threshold in use.
    pub fn prediction_from_logit(&self, logit: f32) -> Prediction {
        let probability = sigmoid(f64::from(logit));
        let malignant = probability >= self.threshold;
        Prediction {
            probability,
            logit,
            malignant,
            label: self.config.class_names[usize::from(malignant)].clone(),
        }
    }

    /// Stacks preprocessed images into a `[b, 3, S, S]` tensor on the device.
    fn batch_tensor(&self, inputs: &[Vec<f32>]) -> Result<Tensor> {
        let s = self.image_size() as usize;
        let len = 3 * s * s;
        let mut flat = Vec::with_capacity(inputs.len() * len);
        for x in inputs {
            if x.len() != len {
                return Err(Error::InvalidOption(format!(
                    "a preprocessed image has {} values, the model takes 3x{s}x{s} = {len}",
                    x.len()
                )));
            }
            flat.extend_from_slice(x);
        }
        Ok(Tensor::from_vec(
            flat,
            (inputs.len(), 3, s, s),
            &self.device,
        )?)
    }

    /// Scores preprocessed images (see [`Predictor::preprocess`]), `batch_size` at a time.
    pub fn predict_preprocessed(&self, inputs: &[Vec<f32>], tta: bool) -> Result<Vec<Prediction>> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.batch_size) {
            let x = self.batch_tensor(chunk)?;
            let logits: Vec<f32> = eval_logits(&self.model, &x, tta)?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            out.extend(logits.into_iter().map(|l| self.prediction_from_logit(l)));
        }
        Ok(out)
    }

    /// Scores decoded images, in order.
    pub fn predict_images(&self, images: &[RgbImage], tta: bool) -> Result<Vec<Prediction>> {
        let inputs: Vec<Vec<f32>> = images.par_iter().map(|i| self.preprocess(i)).collect();
        self.predict_preprocessed(&inputs, tta)
    }

    /// Decodes and scores encoded images (`(name, bytes)`): one result per image, so that
    /// a bad file does not cost the others.
    pub fn predict_bytes(&self, files: &[(&Path, &[u8])], tta: bool) -> Vec<Result<Prediction>> {
        let decoded: Vec<Result<Vec<f32>>> = files
            .par_iter()
            .map(|(path, bytes)| Ok(self.preprocess(&self.decode(bytes, path)?)))
            .collect();
        let good: Vec<Vec<f32>> = decoded
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut preds = match self.predict_preprocessed(&good, tta) {
            Ok(p) => p.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                return files
                    .iter()
                    .map(|(p, _)| {
                        Err(Error::BadImage {
                            path: p.to_path_buf(),
                            reason: format!("inference failed: {msg}"),
                        })
                    })
                    .collect();
            }
        };
        decoded
            .into_iter()
            .map(|r| r.map(|_| preds.next().expect("one prediction per decoded image")))
            .collect()
    }

    /// Grad-CAM maps of preprocessed images, `batch_size` at a time.
    pub fn cams_preprocessed(&self, inputs: &[Vec<f32>]) -> Result<Vec<Cam>> {
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.batch_size) {
            out.extend(gradcam::grad_cam(&self.model, &self.batch_tensor(chunk)?)?);
        }
        Ok(out)
    }

    /// Grad-CAM heatmap of the malignant logit, drawn over `image`.
    pub fn explain(&self, image: &RgbImage) -> Result<Explanation> {
        let mut all = self.explain_images(std::slice::from_ref(image))?;
        Ok(all.remove(0))
    }

    /// [`Predictor::explain`] for several images, batched.
    pub fn explain_images(&self, images: &[RgbImage]) -> Result<Vec<Explanation>> {
        let inputs: Vec<Vec<f32>> = images.par_iter().map(|i| self.preprocess(i)).collect();
        let cams = self.cams_preprocessed(&inputs)?;
        Ok(images
            .par_iter()
            .zip(cams)
            .map(|(img, cam)| self.explanation(img, cam))
            .collect())
    }

    /// Renders a CAM computed by [`Predictor::cams_preprocessed`] for `image`.
    pub fn explanation(&self, image: &RgbImage, cam: Cam) -> Explanation {
        Explanation {
            overlay: gradcam::overlay(image, &cam, self.resize),
            prediction: self.prediction_from_logit(cam.logit),
            cam,
        }
    }
}

/// Rejects a config.json that the model cannot use, naming the file.
fn check_config(config: &RunConfig, path: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadArtifact {
        path: path.to_path_buf(),
        reason,
    };
    if config.class_names.len() != 2 {
        return Err(bad(format!(
            "the run has {} classes; the binary model needs exactly two (benign, malignant)",
            config.class_names.len()
        )));
    }
    if config.image_size < 32 {
        return Err(bad(format!(
            "image_size {} is below ResNet-18's minimum of 32",
            config.image_size
        )));
    }
    if config.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err(bad(format!("std {:?} is not positive", config.std)));
    }
    Ok(())
}

/// The resize policy the run's data was prepared with, from the prepared dataset's
/// manifest; `stretch` (prep's default) with a warning when the manifest cannot be read.
fn resize_policy(config: &RunConfig, run_dir: &Path, warnings: &mut Vec<String>) -> ResizePolicy {
    let data = &config.train.data;
    match Manifest::load(data) {
        Ok(m) => {
            if manifest_sha256(data).ok().as_deref() != Some(config.manifest_sha256.as_str()) {
                warnings.push(format!(
                    "the prepared dataset {} changed since {} was trained; its resize policy \
                     `{}` is used",
                    data.display(),
                    run_dir.display(),
                    policy_name(m.resize)
                ));
            }
            m.resize
        }
        Err(e) => {
            warnings.push(format!(
                "cannot read the resize policy of the run's prepared dataset ({e}); assuming \
                 `stretch` (prep's default). If the data was prepared with `--resize crop`, \
                 predictions will be off"
            ));
            ResizePolicy::Stretch
        }
    }
}

fn policy_name(p: ResizePolicy) -> &'static str {
    match p {
        ResizePolicy::Stretch => "stretch",
        ResizePolicy::Crop => "crop",
    }
}

// ------------------------------------------------------------------------------------
// The lesion-predict command.

/// Output format of [`PredictReport::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Csv,
    Json,
}

/// Every option of `lesion-predict`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictOptions {
    /// The run folder.
    pub run: PathBuf,
    /// Image files and folders (searched recursively).
    pub inputs: Vec<PathBuf>,
    /// Decision threshold instead of the run's.
    pub threshold: Option<f64>,
    /// Test-time augmentation; `None` follows the run's threshold.
    pub tta: Option<bool>,
    /// auto, cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Folder for Grad-CAM heatmaps (one PNG per image).
    pub explain: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Overwrite existing heatmap files.
    pub force: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl PredictOptions {
    pub fn new(run: impl Into<PathBuf>, inputs: Vec<PathBuf>) -> Self {
        Self {
            run: run.into(),
            inputs,
            threshold: None,
            tta: None,
            device: "auto".into(),
            explain: None,
            batch_size: DEFAULT_BATCH_SIZE,
            force: false,
            progress: false,
        }
    }
}

/// One input file found by [`collect_inputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// Where its heatmap goes, relative to the `--explain` folder.
    pub heatmap_name: PathBuf,
    /// Why it cannot be read at all (it is reported as failed, in its place).
    pub problem: Option<String>,
}

/// A file of a searched folder that is not an image, or a path that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// What the command line's paths hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Files to predict, in argument order (folders sorted by path), including those that
    /// cannot be read (with their [`InputFile::problem`]).
    pub files: Vec<InputFile>,
    /// Files inside folders whose content is not an image (reported, not failures).
    pub skipped: Vec<Skipped>,
}

/// Expands files and folders: a named file is always tried (and fails if it is not an
/// image); a folder is searched recursively (hidden entries skipped) and its files are
/// kept when their first bytes are those of an image format, whatever their extension.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut names = HashSet::new();
    for arg in paths {
        let unreadable = |path: &Path, e: std::io::Error| InputFile {
            path: path.to_path_buf(),
            heatmap_name: PathBuf::new(),
            problem: Some(format!("cannot read: {e}")),
        };
        match fs::metadata(arg) {
            Err(e) => inputs.files.push(unreadable(arg, e)),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk(arg, 0, &mut files)?;
                for path in files {
                    match sniff(&path) {
                        Ok(true) => {
                            let rel = path.strip_prefix(arg).unwrap_or(&path).to_path_buf();
                            let heatmap_name = unique_name(&rel, &mut names);
                            inputs.files.push(InputFile {
                                path,
                                heatmap_name,
                                problem: None,
                            });
                        }
                        Ok(false) => inputs.skipped.push(Skipped {
                            path,
                            reason: "not an image (unrecognised content)".into(),
                        }),
                        Err(e) => inputs.files.push(unreadable(&path, e)),
                    }
                }
            }
            Ok(_) => {
                let rel = PathBuf::from(arg.file_name().unwrap_or(arg.as_os_str()));
                let heatmap_name = unique_name(&rel, &mut names);
                inputs.files.push(InputFile {
                    path: arg.clone(),
                    heatmap_name,
                    problem: None,
                });
            }
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > 32 {
        return Err(Error::InvalidOption(format!(
            "{}: folders nested too deeply (a symlink loop?)",
            dir.display()
        )));
    }
    let mut entries = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, depth + 1, out)?,
            // A dangling link is passed on so that reading it is reported.
            _ => out.push(path),
        }
    }
    Ok(())
}

/// Whether a file starts like an image the decoder knows.
fn sniff(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::with_capacity(64);
    fs::File::open(path)?.take(64).read_to_end(&mut head)?;
    Ok(image::guess_format(&head).is_ok())
}

/// `<rel without extension>.gradcam.png`, suffixed `-2`, `-3`, ... when already taken.
fn unique_name(rel: &Path, taken: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = rel.with_extension("");
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let mut name = stem.clone().into_os_string();
        name.push(format!("{suffix}.gradcam.png"));
        let name = PathBuf::from(name);
        if taken.insert(name.clone()) {
            return name;
        }
        n += 1;
    }
}

/// The outcome for one input file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileResult {
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malignant: Option<bool>,
    /// The Grad-CAM PNG written for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<PathBuf>,
    /// Why it could not be predicted (or its heatmap written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FileResult {
    fn failed(path: PathBuf, error: String) -> Self {
        Self {
            path,
            probability: None,
            label: None,
            malignant: None,
            heatmap: None,
            error: Some(error),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What [`run`] found.
#[derive(Debug, Clone, Serialize)]
pub struct PredictReport {
    pub model_id: String,
    pub threshold: f64,
    pub threshold_source: String,
    pub tta: bool,
    pub resize: ResizePolicy,
    pub device: String,
    /// One entry per input file, in input order (failures included).
    pub results: Vec<FileResult>,
    /// Non-image files found in folders.
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

impl PredictReport {
    /// Files that could not be predicted.
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| !r.is_ok()).count()
    }

    /// The results as a table, CSV or JSON document (ending with a newline).
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => {
                let mut s = serde_json::to_string_pretty(self).expect("report serialises");
                s.push('\n');
                s
            }
        }
    }

    fn table(&self) -> String {
        let paths: Vec<String> = self
            .results
            .iter()
            .map(|r| r.path.display().to_string())
            .collect();
        let width = paths
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let mut s = format!("{:<width$}  {:>11}  label\n", "path", "probability");
        for (r, p) in self.results.iter().zip(&paths) {
            match (&r.error, r.probability, &r.label) {
                (None, Some(prob), Some(label)) => {
                    let _ = writeln!(s, "{p:<width$}  {prob:>11.4}  {label}");
                }
                (error, _, _) => {
                    let e = error.as_deref().unwrap_or("no result");
                    let _ = writeln!(s, "{p:<width$}  {:>11}  error: {e}", "-");
                }
            }
        }
        s
    }

    fn csv(&self) -> String {
        let mut s = String::from("path,probability,label,threshold,error\n");
        for r in &self.results {
            let _ = writeln!(
                s,
                "{},{},{},{},{}",
                csv_field(&r.path.display().to_string()),
                r.probability.map(|p| format!("{p:.6}")).unwrap_or_default(),
                csv_field(r.label.as_deref().unwrap_or("")),
                self.threshold,
                csv_field(r.error.as_deref().unwrap_or("")),
            );
        }
        s
    }
}

/// RFC 4180 quoting where needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The `lesion-predict` command: loads the run, predicts every image (in batches, with a
/// progress bar when asked), writes heatmaps when asked. Per-file problems end up in the
/// report's results; only problems with the run or the options are errors.
pub fn run(opts: &PredictOptions) -> Result<PredictReport> {
    if opts.batch_size == 0 {
        return Err(Error::InvalidOption(
            "--batch-size must be at least 1".into(),
        ));
    }
    if opts.inputs.is_empty() {
        return Err(Error::InvalidOption(
            "no input: name image files or folders".into(),
        ));
    }
    let device = parse_device(&opts.device)?;
    let mut predictor = Predictor::load(&opts.run, &device, opts.threshold)?;
    predictor.set_batch_size(opts.batch_size);
    let tta = opts.tta.unwrap_or_else(|| predictor.default_tta());
    let mut warnings = predictor.warnings().to_vec();
    if let Some(t) = predictor.run_threshold() {
        if t.tta != tta && !predictor.threshold_overridden() {
            warnings.push(format!(
                "the threshold was chosen on probabilities {} test-time augmentation, these are \
                 scored {} it",
                if t.tta { "with" } else { "without" },
                if tta { "with" } else { "without" },
            ));
        }
    }

    let inputs = collect_inputs(&opts.inputs)?;
    if let Some(dir) = &opts.explain {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if !opts.force {
            if let Some(f) = inputs
                .files
                .iter()
                .filter(|f| f.problem.is_none())
                .map(|f| dir.join(&f.heatmap_name))
                .find(|p| p.exists())
            {
                return Err(Error::OutputExists { path: f });
            }
        }
    }
    let mut results: HashMap<usize, FileResult> = HashMap::new();
    let bar = progress_bar(
        opts.progress && inputs.files.len() > opts.batch_size,
        inputs.files.len(),
    );
    let chunk = opts.batch_size;
    for (c, files) in inputs.files.chunks(chunk).enumerate() {
        // Only the model input and, for heatmaps, a display-sized copy outlive decoding,
        // so memory stays small whatever the photos' resolution.
        let explain = opts.explain.is_some();
        let decoded: Vec<Result<(Vec<f32>, Option<RgbImage>)>> = files
            .par_iter()
            .map(|f| {
                if let Some(problem) = &f.problem {
                    return Err(Error::BadImage {
                        path: f.path.clone(),
                        reason: problem.clone(),
                    });
                }
                let bytes = fs::read(&f.path).map_err(|e| Error::io(&f.path, e))?;
                let img = predictor.decode(&bytes, &f.path)?;
                Ok((
                    predictor.preprocess(&img),
                    explain.then(|| gradcam::display_image(&img)),
                ))
            })
            .collect();
        let mut ok = Vec::new();
        let mut inputs_f32 = Vec::new();
        let mut shown = Vec::new();
        for (i, d) in decoded.into_iter().enumerate() {
            match d {
                Ok((x, img)) => {
                    ok.push(i);
                    inputs_f32.push(x);
                    shown.push(img);
                }
                Err(e) => {
                    results.insert(
                        c * chunk + i,
                        FileResult::failed(files[i].path.clone(), reason_of(&e)),
                    );
                }
            }
        }
        let preds = predictor.predict_preprocessed(&inputs_f32, tta)?;
        let cams = match &opts.explain {
            Some(_) => Some(predictor.cams_preprocessed(&inputs_f32)?),
            None => None,
        };
        let written: Vec<Option<Result<PathBuf>>> = ok
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                let (dir, cams, img) = (opts.explain.as_ref()?, cams.as_ref()?, shown[k].as_ref()?);
                Some(write_heatmap(
                    &predictor,
                    img,
                    cams[k].clone(),
                    &dir.join(&files[i].heatmap_name),
                ))
            })
            .collect();
        for ((&i, pred), heat) in ok.iter().zip(preds).zip(written) {
            let path = files[i].path.clone();
            let mut r = FileResult {
                path,
                probability: Some(pred.probability),
                label: Some(pred.label),
                malignant: Some(pred.malignant),
                heatmap: None,
                error: None,
            };
            match heat {
                Some(Ok(p)) => r.heatmap = Some(p),
                Some(Err(e)) => r.error = Some(format!("heatmap not written: {e}")),
                None => {}
            }
            results.insert(c * chunk + i, r);
        }
        bar.inc(files.len() as u64);
    }
    bar.finish_and_clear();
    let ordered: Vec<FileResult> = (0..inputs.files.len())
        .map(|i| results.remove(&i).expect("every file has a result"))
        .collect();
    Ok(PredictReport {
        model_id: predictor.model_id().to_string(),
        threshold: predictor.threshold(),
        threshold_source: predictor.describe_threshold(),
        tta,
        resize: predictor.resize_policy(),
        device: crate::device::describe(&device),
        results: ordered,
        skipped: inputs.skipped,
        warnings,
    })
}

fn write_heatmap(
    predictor: &Predictor,
    image: &RgbImage,
    cam: Cam,
    path: &Path,
) -> Result<PathBuf> {
    let png = gradcam::encode_png(&predictor.explanation(image, cam).overlay)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(path, &png)?;
    Ok(path.to_path_buf())
}

/// A file's problem without repeating its path (the report shows it beside).
fn reason_of(e: &Error) -> String {
    match e {
        Error::BadImage { reason, .. } => reason.clone(),
        Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    }
}

fn progress_bar(show: bool, len: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "predict [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr()).with_style(style)
}

// ------------------------------------------------------------------------------------
// Fixtures.

/// Writes a complete run folder with seeded random weights (no training) and a
/// `threshold.json`: for tests, benchmarks and load tests of the prediction path, whose
/// cost does not depend on the weights. Its predictions mean nothing.
///
/// `config.json` points at a prepared dataset that does not exist, so a [`Predictor`]
/// warns and assumes the `stretch` resize policy; `threshold` is `None` for a run that has
/// not been evaluated yet.
pub fn write_untrained_run(
    dir: &Path,
    image_size: usize,
    seed: u64,
    threshold: Option<f64>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let varmap = VarMap::new();
    ResNet18::new(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        0.25,
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
        image_size,
        mean: crate::transforms::IMAGENET_MEAN,
        std: crate::transforms::IMAGENET_STD,
        weights_source: "none".into(),
        weights_sha256: None,
        device: "cpu".into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json_atomic(dir.join(CONFIG_FILE), &config)?;
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

//! The [`Predictor`] API: a run loaded for scoring images, one at a time or in batches,
//! with optional test-time augmentation and Grad-CAM explanations (see [`super`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;

use crate::classes::Classes;
use crate::drift::{ImageStats, InputProfile};
use crate::fsutil::sha256_file;
use crate::gradcam::{self, Cam, CamTarget};
use crate::image_io::{decode_rgb, resize_square, ResizePolicy, DEFAULT_MAX_PIXELS};
use crate::infer::eval_logits;
use crate::model::ResNet18;
use crate::run::{checkpoint, Run, RunConfig, Threshold, BEST_FILE};
use crate::transforms::{normalize_chw, to_chw};
use crate::{Error, Result};

/// Images per forward pass unless set otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Index of the malignant class (the positive label) in a two-class run's class names.
pub const MALIGNANT: usize = 1;

/// The model's answer for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The head's outputs (mean over the flips with TTA): one logit for two classes (the
    /// malignant logit), N for more.
    pub logits: Vec<f32>,
    /// Every class's probability, in class order ([`Classes::probabilities`]: two classes
    /// `[1 - sigmoid(logit), sigmoid(logit)]`, more `softmax(logits)`).
    pub probabilities: Vec<f64>,
    /// The most probable class (its label; the first of equal ones).
    pub top: usize,
    /// Probability of the malignant group ([`Classes::positive_probability`]: two classes
    /// exactly `sigmoid(logit)`); `None` for a run without a malignant group.
    pub probability: Option<f64>,
    /// `probability >= threshold`; `None` without a malignant group.
    pub malignant: Option<bool>,
    /// The class given as the answer: without a malignant group the most probable class;
    /// with one, the most probable class of the side the threshold decided (for two
    /// classes: `Malignant` when malignant, else `Benign`), so that it never contradicts
    /// the decision.
    pub class: usize,
    /// The name of [`Self::class`].
    pub label: String,
}

impl Prediction {
    /// Probability of the most probable class.
    pub fn top_probability(&self) -> f64 {
        self.probabilities[self.top]
    }

    /// The `k` most probable classes (at most all of them) as `(label, probability)`,
    /// most probable first, equal ones in class order.
    pub fn top_k(&self, k: usize) -> Vec<(usize, f64)> {
        let mut order: Vec<(usize, f64)> = self.probabilities.iter().copied().enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        order.truncate(k);
        order
    }
}

/// Label of the largest value (the first of equal ones).
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
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
    /// The class whose evidence the map shows.
    pub class: usize,
}

/// A loaded run, ready to score images. `Send + Sync`; forward passes take `&self`.
#[derive(Debug)]
pub struct Predictor {
    model: ResNet18,
    device: Device,
    run: Run,
    classes: Classes,
    checkpoint_sha256: String,
    resize: ResizePolicy,
    /// `None` for a run without a malignant group (no decision to make).
    threshold: Option<f64>,
    threshold_overridden: bool,
    run_threshold: Option<Threshold>,
    model_id: String,
    warnings: Vec<String>,
    /// What the training images looked like; `None` for a run without `input_profile.json`.
    profile: Option<InputProfile>,
    max_pixels: u64,
    batch_size: usize,
}

impl Predictor {
    /// Loads `run_dir` (a folder written by `lesion-train`, with `config.json` and
    /// `best.safetensors`) onto `device`.
    ///
    /// The threshold is `threshold_override` when given, else the run's `threshold.json`
    /// (written by `lesion-eval`), which must belong to this `best.safetensors`. Problems
    /// that do not stop prediction (e.g. a run that does not record its resize policy and
    /// whose prepared dataset is gone, so `stretch` is assumed; see
    /// [`Run::resize_policy`]) are listed in [`Predictor::warnings`].
    pub fn load(run_dir: &Path, device: &Device, threshold_override: Option<f64>) -> Result<Self> {
        let run = Run::open(run_dir)?;
        let best = &run.checkpoint;
        let classes = run.config.classes()?;
        let checkpoint_sha256 = sha256_file(best)?;
        let mut warnings = Vec::new();

        if classes.positive_group().is_none() {
            // Nothing to decide: the answer is the most probable class. The run's
            // threshold.json, if any, only says how its figures were scored (TTA).
            if threshold_override.is_some() {
                return Err(Error::InvalidOption(format!(
                    "--threshold applies to the probability of the malignant classes, and \
                     the classes of {} ({}) have none; the answer is the most probable class",
                    run_dir.display(),
                    classes.names().join(", ")
                )));
            }
            let run_threshold = match run.threshold() {
                Ok(t) => t.filter(|t| t.checkpoint_sha256 == checkpoint_sha256),
                Err(e) => {
                    warnings.push(format!("ignoring the run's threshold file: {e}"));
                    None
                }
            };
            return Self::finish(
                run,
                classes,
                device,
                checkpoint_sha256,
                None,
                None,
                run_threshold,
                warnings,
            );
        }

        let run_threshold = match run.threshold() {
            Ok(t) => t,
            // An explicit threshold makes a broken file irrelevant, but worth a word.
            Err(e) if threshold_override.is_some() => {
                warnings.push(format!("ignoring the run's threshold: {e}"));
                None
            }
            Err(e) => return Err(e),
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
                    path: run.threshold_path(),
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
                        path: run.threshold_path(),
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
        Self::finish(
            run,
            classes,
            device,
            checkpoint_sha256,
            Some(threshold),
            threshold_override,
            run_threshold,
            warnings,
        )
    }

    /// Loads the model of an opened run, once the threshold is settled.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        run: Run,
        classes: Classes,
        device: &Device,
        checkpoint_sha256: String,
        threshold: Option<f64>,
        threshold_override: Option<f64>,
        run_threshold: Option<Threshold>,
        mut warnings: Vec<String>,
    ) -> Result<Self> {
        let best = &run.checkpoint;
        let run_dir = &run.run_dir;
        let (resize, warning) = run.resize_policy();
        warnings.extend(warning);
        let profile = InputProfile::read(run_dir).unwrap_or_else(|e| {
            warnings.push(format!(
                "ignoring the run's input profile (no input-drift warnings): {e}"
            ));
            None
        });
        let tensors = checkpoint::load_model(best, device)?;
        let model = ResNet18::from_tensors(
            tensors,
            device,
            run.config.train.head_dropout as f32,
            classes.outputs(),
        )
        .map_err(|e| Error::BadArtifact {
            path: best.clone(),
            reason: format!(
                "not a checkpoint of this model with {} output(s) for the classes {}: {e}",
                classes.outputs(),
                classes.names().join(", ")
            ),
        })?;
        let name = run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "run".into());
        Ok(Self {
            model,
            device: device.clone(),
            run,
            classes,
            model_id: format!("{name}@{}", &checkpoint_sha256[..12]),
            checkpoint_sha256,
            resize,
            threshold,
            threshold_overridden: threshold_override.is_some(),
            run_threshold,
            warnings,
            profile,
            max_pixels: DEFAULT_MAX_PIXELS,
            batch_size: DEFAULT_BATCH_SIZE,
        })
    }

    /// `<run folder name>@<first 12 hex digits of the checkpoint's SHA-256>`.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    pub fn run_dir(&self) -> &Path {
        &self.run.run_dir
    }

    pub fn checkpoint(&self) -> &Path {
        &self.run.checkpoint
    }

    pub fn checkpoint_sha256(&self) -> &str {
        &self.checkpoint_sha256
    }

    pub fn config(&self) -> &RunConfig {
        &self.run.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Side of the square model input, in pixels.
    pub fn image_size(&self) -> u32 {
        self.run.config.image_size as u32
    }

    pub fn resize_policy(&self) -> ResizePolicy {
        self.resize
    }

    /// The decision threshold on the malignant probability in use; `None` for a run
    /// without a malignant group.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }

    /// The run's classes (names in label order, malignant group).
    pub fn classes(&self) -> &Classes {
        &self.classes
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
    /// For a run without a malignant group: `none (no malignant classes: the answer is the
    /// most probable class)`.
    pub fn describe_threshold(&self) -> String {
        let Some(threshold) = self.threshold else {
            return "none (no malignant classes: the answer is the most probable class)".into();
        };
        match &self.run_threshold {
            Some(t) if !self.threshold_overridden() => t.describe(),
            _ => format!(
                "{} (given with --threshold)",
                crate::display::threshold(threshold)
            ),
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
        self.classes.names()
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
        normalize_chw(&chw, self.run.config.mean, self.run.config.std, &mut out);
        out
    }

    /// [`Predictor::preprocess`] (the same values), with what the input-drift rules measure
    /// of the image and why it differs markedly from the training images
    /// ([`InputProfile::image_warnings`]; none for a run without a profile).
    pub fn preprocess_checked(&self, image: &RgbImage) -> (Vec<f32>, ImageStats, Vec<String>) {
        let chw = to_chw(&resize_square(image, self.image_size(), self.resize));
        let stats = ImageStats::of_chw(image.width(), image.height(), &chw);
        let warnings = self
            .profile
            .as_ref()
            .map_or_else(Vec::new, |p| p.image_warnings(&stats));
        let mut out = vec![0f32; chw.len()];
        normalize_chw(&chw, self.run.config.mean, self.run.config.std, &mut out);
        (out, stats, warnings)
    }

    /// The run's input profile (`input_profile.json`), if it has one.
    pub fn input_profile(&self) -> Option<&InputProfile> {
        self.profile.as_ref()
    }

    /// The prediction of one image's head outputs ([`Classes::outputs`] logits) at the
    /// threshold in use.
    pub fn prediction_from_logits(&self, logits: &[f32]) -> Prediction {
        let probabilities = self.classes.probabilities(logits);
        let top = argmax(&probabilities);
        let probability = self.classes.positive_probability(&probabilities);
        let malignant = probability.zip(self.threshold).map(|(p, t)| p >= t);
        let class = match malignant {
            None => top,
            // The most probable class on the decided side (the first of equal ones).
            Some(m) => (0..probabilities.len())
                .filter(|&k| self.classes.is_positive(k) == m)
                .fold(None, |best: Option<usize>, k| match best {
                    Some(b) if probabilities[b] >= probabilities[k] => Some(b),
                    _ => Some(k),
                })
                .expect("each side of the decision has a class"),
        };
        Prediction {
            logits: logits.to_vec(),
            top,
            probability,
            malignant,
            class,
            label: self.classes.name(class).to_string(),
            probabilities,
        }
    }

    /// The Grad-CAM target of `class` (see [`CamTarget::of_class`]), or of the class a
    /// prediction of `logits` answers when `None`; for two classes that default is the
    /// malignant logit whatever the answer.
    fn cam_target(&self, class: Option<usize>, logits: &[f32]) -> CamTarget {
        match class {
            Some(k) => CamTarget::of_class(&self.classes, k),
            None if self.classes.is_binary() => CamTarget::of_class(&self.classes, MALIGNANT),
            None => CamTarget::of_class(&self.classes, self.prediction_from_logits(logits).class),
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
        let outputs = self.classes.outputs();
        for chunk in inputs.chunks(self.batch_size) {
            let x = self.batch_tensor(chunk)?;
            let logits: Vec<f32> = eval_logits(&self.model, &x, tta)?
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1()?;
            out.extend(
                logits
                    .chunks_exact(outputs)
                    .map(|l| self.prediction_from_logits(l)),
            );
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

    /// Grad-CAM maps of preprocessed images, `batch_size` at a time, explaining `class`
    /// or, when `None`, each image's answer (for two classes: the malignant logit, see
    /// [`crate::gradcam`]).
    pub fn cams_preprocessed(&self, inputs: &[Vec<f32>], class: Option<usize>) -> Result<Vec<Cam>> {
        if let Some(k) = class.filter(|&k| k >= self.classes.len()) {
            return Err(Error::InvalidOption(format!(
                "class {k} is not a label of the classes {}",
                self.classes.names().join(", ")
            )));
        }
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(self.batch_size) {
            out.extend(gradcam::grad_cam(
                &self.model,
                &self.batch_tensor(chunk)?,
                &|logits: &[f32]| self.cam_target(class, logits),
            )?);
        }
        Ok(out)
    }

    /// The label of a class named on the command line (exact name, else ignoring case),
    /// or an [`Error::InvalidOption`] naming `option` and the run's classes.
    pub fn class_index(&self, option: &str, name: &str) -> Result<usize> {
        self.classes.index(name).ok_or_else(|| {
            Error::InvalidOption(format!(
                "{option} `{name}` is not one of the run's classes: {}",
                self.classes.names().join(", ")
            ))
        })
    }

    /// Grad-CAM heatmap of the image's answer (for two classes, the malignant logit),
    /// drawn over `image`.
    pub fn explain(&self, image: &RgbImage) -> Result<Explanation> {
        let mut all = self.explain_images(std::slice::from_ref(image), None)?;
        Ok(all.remove(0))
    }

    /// [`Predictor::explain`] for several images, batched, explaining `class` when given.
    pub fn explain_images(
        &self,
        images: &[RgbImage],
        class: Option<usize>,
    ) -> Result<Vec<Explanation>> {
        let inputs: Vec<Vec<f32>> = images.par_iter().map(|i| self.preprocess(i)).collect();
        let cams = self.cams_preprocessed(&inputs, class)?;
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
            prediction: self.prediction_from_logits(&cam.logits),
            class: cam.target.class,
            cam,
        }
    }
}

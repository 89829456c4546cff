//! Classifying new photos with a trained run (`lesion-predict`, `lesion-serve`).
//!
//! A [`Predictor`] holds what a run folder needs to score an image exactly as `lesion-eval`
//! scored the validation and test splits (the run is opened through [`crate::run::Run`]):
//! - the model of `best.safetensors` in eval mode (running statistics, no dropout);
//! - the preprocessing of the prepared validation/test images:
//!   [`decode_rgb`](crate::image_io::decode_rgb) (content-sniffed, EXIF orientation
//!   applied) → [`resize_square`](crate::image_io::resize_square) to the run's `image_size`
//!   with the run's resize policy ([`crate::run::Run::resize_policy`]: recorded in
//!   `config.json`, or for a run that lacks it read from the prepared dataset's
//!   `manifest.json`) → CHW → `(x / 255 - mean) / std` with the run's mean/std, giving
//!   `[3, S, S]` f32 per image and `[b, 3, S, S]` batches;
//! - the decision threshold that `lesion-eval` chose on the validation split
//!   (`threshold.json`, checked against the checkpoint's SHA-256) or one given explicitly;
//!   none for a run with more than two classes and no malignant group.
//!
//! A [`Prediction`] holds the head's logits (with test-time augmentation the mean over the
//! image and its horizontal and vertical flips, as [`crate::infer::eval_logits`]), every
//! class's probability ([`crate::classes::Classes::probabilities`]: two classes `[1 -
//! sigmoid(logit), sigmoid(logit)]`, more `softmax`, f64) and the most probable class. Where
//! the run has a malignant group (always for two classes) it adds the group's probability
//! (two classes: exactly `sigmoid(logit)`) and the decision at the threshold (`probability
//! >= threshold` is malignant, as in [`crate::eval`]); the label is then the most probable
//! class of the decided side (two classes: `Malignant` or `Benign`), else the most probable
//! class. [`Predictor::explain`] adds a Grad-CAM heatmap of the answer's class (two
//! classes: the malignant logit) or of a class asked for (see [`crate::gradcam`]).
//!
//! [`run`] is the whole `lesion-predict` command: files and folders in, one
//! [`FileResult`] per file out, per-file errors kept beside the successes.
//!
//! Input drift: a run with `input_profile.json` ([`crate::drift`]) has each image checked
//! against its training images ([`Predictor::preprocess_checked`]); an image that differs
//! markedly (size, aspect ratio, mean colour) gets the reasons in its
//! [`FileResult::warnings`], and the report one summary warning.
//!
//! Files: `predictor.rs` (the [`Predictor`] API), `command.rs` (the command: its options,
//! input collection, the report and its table/CSV/JSON rendering, heatmaps, progress).

mod command;
mod predictor;

pub use command::{
    collect_inputs, run, ClassProbabilities, FileResult, InputFile, Inputs, OutputFormat,
    PredictOptions, PredictReport, Skipped,
};
pub use predictor::{Explanation, Prediction, Predictor, DEFAULT_BATCH_SIZE, MALIGNANT};

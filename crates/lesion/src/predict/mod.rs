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
//!
//! Files: `predictor.rs` (the [`Predictor`] API), `command.rs` (the command: its options,
//! input collection, the report and its table/CSV/JSON rendering, heatmaps, progress).

mod command;
mod predictor;

pub use command::{
    collect_inputs, run, FileResult, InputFile, Inputs, OutputFormat, PredictOptions,
    PredictReport, Skipped,
};
pub use predictor::{Explanation, Prediction, Predictor, DEFAULT_BATCH_SIZE, MALIGNANT};

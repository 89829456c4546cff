//! The training stage: fine-tunes ResNet-18 on a prepared dataset and writes a run folder.
//!
//! The run folder is written through [`crate::run`], which owns its layout and files:
//! [`crate::run::create`] makes the folder, `config.json` is a [`crate::run::RunConfig`]
//! (the options, the data's and weights' identity, and the preprocessing copied from the
//! prepared manifest), and every epoch saves the checkpoints ([`crate::run::checkpoint`]),
//! then adds a row to `history.csv` ([`crate::run::history`]) and redraws `curves.png`.
//!
//! Batches are NCHW f32 normalised images with f32 labels (0 benign, 1 malignant); the model
//! produces logits `[b, 1]`.

pub mod feature_cache;
mod session;

pub use crate::run::{Monitor, TrainConfig};
pub use session::{resume, train, ResumeOptions, TrainSummary};

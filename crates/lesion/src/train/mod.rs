//! The training stage: fine-tunes ResNet-18 on a prepared dataset and writes a run folder.
//!
//! The run folder is written through [`crate::run`], which owns its layout and files:
//! [`crate::run::create`] makes the folder, `config.json` is a [`crate::run::RunConfig`]
//! (the options, the data's and weights' identity, and the preprocessing copied from the
//! prepared manifest), and every epoch saves the checkpoints ([`crate::run::checkpoint`]),
//! then adds a row to `history.csv` ([`crate::run::history`]) and redraws `curves.png`.
//! Before the first epoch, `input_profile.json` records what the training images look like
//! ([`crate::drift`]), for the input-drift warnings of evaluation and prediction.
//!
//! Batches are NCHW f32 normalised images with their `u8` class labels; the model produces
//! logits `[b, 1]` for two classes and `[b, N]` for N.
//!
//! Options for imbalanced data, all recorded in `config.json`: loss class weights
//! (`--class-weights`), label smoothing, a class-balanced sampler ([`Sampler`]), a per-step
//! learning-rate schedule of every group ([`crate::optim::LrSchedule`]), the
//! `val_balanced_acc` monitor ([`monitor`]); and named sets of defaults ([`Recipe`]).

pub mod feature_cache;
pub mod monitor;
mod session;

pub use crate::loader::Sampler;
pub use crate::optim::Schedule;
pub use crate::run::config::{ClassWeights, Recipe};
pub use crate::run::{Monitor, TrainConfig};
pub use session::{resume, train, ResumeOptions, TrainSummary};

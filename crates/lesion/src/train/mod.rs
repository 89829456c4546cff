//! The training stage: fine-tunes ResNet-18 on a prepared dataset and writes a run folder.
//!
//! Run folder layout (`runs/<name>/`):
//! - `config.json` — [`RunConfig`]: every option plus the data's manifest hash and the weights;
//! - `best.safetensors`, `last.safetensors` — checkpoints (see [`checkpoint`]);
//! - `history.csv` — one [`EpochRecord`] per epoch;
//! - `curves.png` — loss and accuracy per epoch, train vs validation.
//!
//! Batches are NCHW f32 normalised images with f32 labels (0 benign, 1 malignant); the model
//! produces logits `[b, 1]`.

pub mod checkpoint;
pub mod config;
pub mod history;
mod run;

pub use config::{Monitor, RunConfig, TrainConfig};
pub use history::EpochRecord;
pub use run::{resume, train, TrainSummary};
pub use run::{BEST_FILE, CONFIG_FILE, CURVES_FILE, HISTORY_FILE, LAST_FILE};

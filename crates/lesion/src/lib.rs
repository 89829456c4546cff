//! lesion: the library behind the `lesion-*` stage binaries.
//!
//! The binaries are thin clap front ends; everything they do lives here so that it can be
//! tested without spawning processes. The modules, lowest layer first (a module uses only
//! modules of its own layer or below):
//!
//! | layer | module | owns |
//! |---|---|---|
//! | base | [`error`], [`fsutil`], [`alloc`], [`display`] | the error type and exit codes; atomic writes, staged folders, SHA-256; allocator tuning; how probabilities and thresholds read on screen |
//! | kernels | [`kernels`] | CPU convolution, BatchNorm, ReLU and max-pool as candle custom ops, cuDNN passes (design: `docs/kernels.md`) |
//! | data | [`classes`], [`image_io`], [`transforms`], [`split`], [`synth`] | class names, head width and class probabilities; decoding and resizing; the notebook's augmentations and normalisation; the stratified split; the synthetic dataset |
//! | prepared folder | [`manifest`], [`shard`], [`verify`] | `manifest.json`, the shard files of a prepared dataset, and checking them against each other |
//! | model | [`device`], [`ops`], [`loss`], [`model`], [`optim`], [`weights`] | device choice; tensor ops PyTorch has and candle lacks; the training loss; ResNet-18 and its head; Adam; pretrained weights (Hub or file) |
//! | figures | [`metrics`], [`plot`] | binary and N-class metrics checked against scikit-learn; PNG grids and curves |
//! | data in batches | [`loader`], [`infer`], [`gradcam`] | batches from shards; batched inference over a split; Grad-CAM |
//! | run folder | [`run`] | `config.json`, checkpoints, `history.csv`, `threshold.json`: the run's layout, written by `train`, read by `eval` and `predict` |
//! | stages | [`prep`], [`train`], [`eval`], [`predict`] | one module per binary (`lesion-serve` builds on [`predict`]) |
//! | binaries | [`cli`] | the options the binaries share, `main!`, and the exit-code rule |
//!
//! Conventions used throughout:
//! - images in memory are `image::RgbImage` (u8, HWC); in shards and batches they are
//!   CHW/NCHW (`u8` on disk, `f32` normalised in batches);
//! - labels are class indices into the dataset's class list (two classes: `1` is the
//!   positive class, `Malignant` for the notebook's folders; see [`classes`]);
//! - every artifact is written atomically (see [`fsutil`]).

/// `FromStr` and `Display` of an option's enum from one table of its variants' names: an
/// unknown name is an [`Error::InvalidOption`] listing the known ones
/// (`unknown sampler `x`; expected shuffle or balanced`).
macro_rules! option_names {
    ($ty:ty, $what:literal, { $($variant:path => $name:literal),+ $(,)? }) => {
        impl std::str::FromStr for $ty {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err($crate::Error::InvalidOption(format!(
                        "unknown {} `{s}`; expected {}",
                        $what,
                        $crate::error::one_of(&[$($name),+])
                    ))),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($variant => $name,)+
                })
            }
        }
    };
}

pub mod alloc;
pub mod display;
pub mod error;
pub mod fsutil;

pub use error::{Error, IoContext, Result};

pub mod kernels;

pub mod image_io;
pub mod split;
pub mod synth;
pub mod transforms;

pub mod classes;
pub mod manifest;
pub mod shard;
pub mod verify;

pub mod device;
pub mod loss;
pub mod model;
pub mod ops;
pub mod optim;
pub mod weights;

pub mod metrics;
pub mod plot;

pub mod gradcam;
pub mod infer;
pub mod loader;

pub mod run;

pub mod drift;
pub mod eval;
pub mod predict;
pub mod prep;
pub mod train;

pub mod cli;

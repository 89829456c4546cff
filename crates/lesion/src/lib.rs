//! lesion: the library behind the `lesion-*` stage binaries.
//!
//! The binaries are thin clap front ends; everything they do lives here so that it can be
//! tested without spawning processes. Conventions used throughout:
//! - images in memory are `image::RgbImage` (u8, HWC); in shards and batches they are
//!   CHW/NCHW (`u8` on disk, `f32` normalised in batches);
//! - labels are class indices (`0` = benign, `1` = malignant);
//! - every artifact is written atomically (see [`fsutil`]).

pub mod alloc;
pub mod error;

pub use error::{Error, IoContext, Result};
pub mod cli;
pub mod device;
pub mod eval;
pub mod fsutil;
pub mod gradcam;
pub mod image_io;
pub mod infer;
pub mod kernels;
pub mod loader;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod prep;
pub mod run;
pub mod shard;
pub mod split;
pub mod synth;
pub mod train;
pub mod transforms;
pub mod weights;

//! The library's one error type. Every variant that concerns a file carries its path,
//! so that a binary can print "what, where, why" without extra context.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An input image could not be used (corrupt, truncated, not an image, too large, ...).
    #[error("{path}: {reason}")]
    BadImage { path: PathBuf, reason: String },

    /// The input dataset folder is unusable (missing, fewer than two classes, empty class, ...).
    #[error("{path}: {reason}")]
    BadDataset { path: PathBuf, reason: String },

    /// A prepared dataset, run folder or checkpoint is inconsistent or fails verification.
    #[error("{path}: {reason}")]
    BadArtifact { path: PathBuf, reason: String },

    /// An output exists and `--force` was not given.
    #[error("{path} already exists; pass --force to overwrite it")]
    OutputExists { path: PathBuf },

    /// An output location a stage may not write to, `--force` or not: it is not a folder
    /// the stage wrote, or it is, holds or lies inside one of the stage's inputs.
    #[error("{path}: {reason}")]
    NotOurOutput { path: PathBuf, reason: String },

    /// A JSON document could not be read or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A safetensors file could not be parsed or written.
    #[error("{path}: invalid safetensors: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    /// An invalid option or combination of options.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// Pretrained weights could not be fetched from the Hugging Face Hub and are not cached.
    #[error(
        "cannot get the pretrained weights `{file}` of Hub repo `{repo}`: {reason}\n  \
         Hub endpoint: {endpoint}\n  \
         Hub cache:    {cache_dir} (nothing cached for this repo)\n\
         Alternatives: `--weights PATH` loads a local safetensors file (for example \
         `~/.cache/huggingface/hub/models--timm--resnet18.tv_in1k/snapshots/*/model.safetensors` \
         copied from a machine that has downloaded it; copying that machine's whole \
         `models--timm--resnet18.tv_in1k` folder into this Hub cache works too), and \
         `--weights none` starts from random initialisation"
    )]
    WeightsUnavailable {
        repo: String,
        file: String,
        endpoint: String,
        cache_dir: PathBuf,
        reason: String,
    },

    /// The requested compute device is not offered by this build or cannot be opened.
    #[error("device `{requested}` is unavailable: {reason}")]
    DeviceUnavailable { requested: String, reason: String },

    /// Training produced a non-finite loss; the previous checkpoint is kept.
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, step {step}; \
         the last good checkpoint is kept in {run}; try lower learning rates"
    )]
    Diverged {
        run: PathBuf,
        epoch: usize,
        step: usize,
        value: f32,
    },

    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Labels or probabilities handed to `metrics` are unusable (lengths differ, empty,
    /// a label other than 0/1, a probability outside [0, 1] or NaN, a class missing where
    /// the metric needs both).
    #[error("cannot compute metrics: {0}")]
    BadMetricInput(String),

    /// A tensor the model or optimizer needs is absent from a state dict or checkpoint.
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },

    /// A named tensor has the wrong shape.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// Saved optimizer state does not fit the optimizer (unknown parameter or group,
    /// incomplete or invalid entries).
    #[error("optimizer state: {0}")]
    OptimizerState(String),

    /// A run's checkpoint cannot be applied to a prepared dataset: the data was prepared
    /// differently from the data the run was trained on (classes, image size, normalisation).
    #[error("the run in {run} does not match the prepared dataset {data}: {reason}")]
    RunDataMismatch {
        run: PathBuf,
        data: PathBuf,
        reason: String,
    },

    /// An output image (e.g. a Grad-CAM heatmap) could not be encoded.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },
}

impl Error {
    /// Shorthand for wrapping an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code a binary should use for this error: 2 for bad input or
    /// usage (the user can fix it), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::BadDataset { .. }
            | Error::BadImage { .. }
            | Error::OutputExists { .. }
            | Error::NotOurOutput { .. }
            | Error::InvalidOption(_)
            | Error::DeviceUnavailable { .. }
            | Error::RunDataMismatch { .. } => 2,
            _ => 1,
        }
    }
}

/// Extension to attach a path to `std::io::Result`s.
pub trait IoContext<T> {
    /// Converts the I/O error into [`Error::Io`] naming `path`.
    fn with_path(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn with_path(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

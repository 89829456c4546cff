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

    /// A tensor computation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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
            | Error::InvalidOption(_) => 2,
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

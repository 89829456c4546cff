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

    /// Training produced a non-finite loss. `saved_epoch` is the epoch of the run's
    /// `last.safetensors`, `None` when no epoch finished and so no checkpoint exists.
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, step {step}; {}",
        diverged_advice(run, *saved_epoch)
    )]
    Diverged {
        /// The run folder.
        run: PathBuf,
        epoch: usize,
        step: usize,
        value: f32,
        saved_epoch: Option<usize>,
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

    /// The process exit code a binary should use for this error, by one rule: 2 when the
    /// user can fix it — input they gave (a folder, image, prepared dataset, run, checkpoint,
    /// weights file or option) is missing, unreadable, malformed or inconsistent, or an output
    /// they named is in the way — and 1 for everything else: our own failures (a tensor
    /// computation, a full disk, an encoder), a diverged training, an unreachable Hub.
    ///
    /// I/O errors are classified by their kind: a path that does not exist, is not
    /// accessible, is a file where a folder is expected (or the reverse) or holds invalid
    /// data is the user's input; any other kind (out of space, interrupted, ...) is not.
    pub fn exit_code(&self) -> u8 {
        const USER: u8 = 2;
        const OURS: u8 = 1;
        match self {
            Error::BadDataset { .. }
            | Error::BadImage { .. }
            | Error::BadArtifact { .. }
            | Error::OutputExists { .. }
            | Error::NotOurOutput { .. }
            | Error::Json { .. }
            | Error::Safetensors { .. }
            | Error::InvalidOption(_)
            | Error::DeviceUnavailable { .. }
            | Error::MissingTensor { .. }
            | Error::TensorShape { .. }
            | Error::OptimizerState(_)
            | Error::RunDataMismatch { .. } => USER,
            Error::Io { source, .. } if is_user_io(source) => USER,
            Error::Io { .. }
            | Error::WeightsUnavailable { .. }
            | Error::Diverged { .. }
            | Error::Candle(_)
            | Error::BadMetricInput(_)
            | Error::Encode { .. } => OURS,
        }
    }
}

/// Whether an I/O error means the path the user gave is wrong rather than the machine.
fn is_user_io(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        NotFound
            | PermissionDenied
            | NotADirectory
            | IsADirectory
            | InvalidData
            | InvalidInput
            | InvalidFilename
            | UnexpectedEof
            | ReadOnlyFilesystem
            | AlreadyExists
            | DirectoryNotEmpty
    )
}

/// What a diverged run leaves behind, and what to do next.
fn diverged_advice(run: &std::path::Path, saved_epoch: Option<usize>) -> String {
    match saved_epoch {
        None => format!(
            "no epoch finished, so {} holds no checkpoint; start again with lower learning \
             rates (--force replaces the folder)",
            run.display()
        ),
        Some(epoch) => format!(
            "{} holds the checkpoint of epoch {epoch} (last.safetensors; best.safetensors is \
             the best epoch so far); continue from it with lower learning rates: \
             lesion-train --resume {} --lr-head ...",
            run.display(),
            run.display()
        ),
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

/// `a`, `a or b`, `a, b or c`: the names an option accepts, for its error message.
pub(crate) fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_names_are_listed_as_a_sentence() {
        assert_eq!(one_of(&["a"]), "a");
        assert_eq!(one_of(&["a", "b"]), "a or b");
        assert_eq!(one_of(&["a", "b", "c"]), "a, b or c");
        let err = "nope".parse::<crate::run::Monitor>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option: unknown monitor `nope`; expected val_acc, val_loss, val_auc or \
             val_balanced_acc"
        );
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            crate::run::Monitor::ValBalancedAcc.to_string(),
            "val_balanced_acc"
        );
    }
    use std::io::ErrorKind;

    fn io(kind: ErrorKind) -> Error {
        Error::io("data/x", std::io::Error::from(kind))
    }

    #[test]
    fn what_the_user_gave_exits_with_two() {
        let user = [
            io(ErrorKind::NotFound),
            io(ErrorKind::PermissionDenied),
            io(ErrorKind::NotADirectory),
            io(ErrorKind::UnexpectedEof),
            Error::BadArtifact {
                path: "runs/x/best.safetensors".into(),
                reason: "truncated".into(),
            },
            Error::Safetensors {
                path: "w.safetensors".into(),
                reason: "incomplete metadata".into(),
            },
            Error::MissingTensor {
                name: "fc.0.weight".into(),
            },
            Error::InvalidOption("--max-body-mib must be positive".into()),
        ];
        for e in user {
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn our_own_failures_exit_with_one() {
        let ours = [
            io(ErrorKind::StorageFull),
            io(ErrorKind::Interrupted),
            Error::Candle(candle_core::Error::Msg("out of memory".into())),
            Error::Encode {
                what: "heatmap".into(),
                reason: "png".into(),
            },
        ];
        for e in ours {
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }
}

//! The decision threshold of a checkpoint: `threshold.json` (for `best.safetensors`) or
//! `threshold-<stem>.json` (for `<stem>.safetensors`) in the run folder, written by
//! [`crate::eval::run`] after a complete evaluation and read by prediction.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{BEST_FILE, THRESHOLD_FILE};
use crate::fsutil::{read_json, sha256_file};
use crate::split::Split;
use crate::{Error, Result};

/// How the decision threshold is chosen on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// Maximise Youden's J = sensitivity + specificity - 1.
    #[default]
    Youden,
    /// The highest threshold whose validation sensitivity reaches a target (the best
    /// specificity at that sensitivity).
    Sensitivity,
    /// Not chosen: 0.5 (cross-validation's pooled out-of-fold figures, whose validation
    /// splits are the images measured).
    Fixed,
}

impl FromStr for ThresholdMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "youden" => Ok(Self::Youden),
            "sensitivity" => Ok(Self::Sensitivity),
            _ => Err(Error::InvalidOption(format!(
                "unknown threshold method `{s}`; expected youden or sensitivity"
            ))),
        }
    }
}

impl fmt::Display for ThresholdMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Youden => "youden",
            Self::Sensitivity => "sensitivity",
            Self::Fixed => "fixed",
        })
    }
}

/// The decision threshold of a run, as `threshold.json`: a sample is called malignant when
/// its probability is `>= threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub threshold: f64,
    pub method: ThresholdMethod,
    /// The sensitivity asked for (method `sensitivity` only).
    pub target_sensitivity: Option<f64>,
    /// The split it was chosen on (always `val`).
    pub split: Split,
    pub val_sensitivity: f64,
    pub val_specificity: f64,
    /// Whether the probabilities it was chosen on used test-time augmentation; prediction
    /// should score images the same way.
    #[serde(default)]
    pub tta: bool,
    /// File name of the checkpoint it belongs to, inside the run folder.
    #[serde(default)]
    pub checkpoint: String,
    pub checkpoint_sha256: String,
    pub manifest_sha256: String,
    /// Why the method's own choice was replaced (e.g. no threshold beats chance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Threshold {
    /// A short description, e.g. `0.4123 (Youden's J on val)`, the threshold written by
    /// [`crate::display::threshold`].
    pub fn describe(&self) -> String {
        match (self.method, self.target_sensitivity) {
            (ThresholdMethod::Sensitivity, Some(t)) => format!(
                "{} (highest reaching sensitivity {:.0}% on val)",
                crate::display::threshold(self.threshold),
                t * 100.0
            ),
            (ThresholdMethod::Fixed, _) => {
                format!("{} (fixed)", crate::display::threshold(self.threshold))
            }
            _ => format!(
                "{} (Youden's J on val)",
                crate::display::threshold(self.threshold)
            ),
        }
    }

    /// Checks that `checkpoint` is the file this threshold was chosen for.
    pub fn verify_checkpoint(&self, checkpoint: &Path) -> Result<()> {
        let sha = sha256_file(checkpoint)?;
        if sha == self.checkpoint_sha256 {
            Ok(())
        } else {
            Err(Error::BadArtifact {
                path: checkpoint.to_path_buf(),
                reason: format!(
                    "the decision threshold was chosen for another checkpoint (SHA-256 {} vs \
                     {sha}); run lesion-eval again on this run",
                    self.checkpoint_sha256
                ),
            })
        }
    }
}

/// Where the threshold of `checkpoint` (a file inside `run_dir`) is kept:
/// `threshold.json` for `best.safetensors`, `threshold-<stem>.json` for any other.
pub fn threshold_path(run_dir: &Path, checkpoint: &Path) -> PathBuf {
    match checkpoint_suffix(checkpoint) {
        None => run_dir.join(THRESHOLD_FILE),
        Some(stem) => run_dir.join(format!("threshold-{stem}.json")),
    }
}

/// Reads the decision threshold of a run's best checkpoint (`<run_dir>/threshold.json`),
/// written by [`crate::eval::run`].
pub fn read_threshold(run_dir: &Path) -> Result<Threshold> {
    read_threshold_file(&run_dir.join(THRESHOLD_FILE))
}

/// Reads and checks a threshold file.
pub fn read_threshold_file(path: &Path) -> Result<Threshold> {
    if !path.is_file() {
        return Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: "no decision threshold: run lesion-eval on this run first".into(),
        });
    }
    let t: Threshold = read_json(path)?;
    if !(0.0..=1.0).contains(&t.threshold) {
        return Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: format!("threshold {} is not a probability in [0, 1]", t.threshold),
        });
    }
    Ok(t)
}

/// `None` for the run's best checkpoint, else the file stem that tells outputs apart.
pub(super) fn checkpoint_suffix(checkpoint: &Path) -> Option<String> {
    match checkpoint.file_name().and_then(|n| n.to_str()) {
        Some(BEST_FILE) => None,
        _ => Some(
            checkpoint
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "checkpoint".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_files_follow_the_checkpoint() {
        let run = Path::new("runs/x");
        assert_eq!(
            threshold_path(run, &run.join("best.safetensors")),
            run.join("threshold.json")
        );
        assert_eq!(
            threshold_path(run, &run.join("last.safetensors")),
            run.join("threshold-last.json")
        );
    }

    #[test]
    fn a_threshold_outside_0_1_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_threshold(dir.path()).unwrap_err().to_string();
        assert!(err.contains("run lesion-eval"), "{err}");
        let t = Threshold {
            threshold: 1.5,
            method: ThresholdMethod::Youden,
            target_sensitivity: None,
            split: Split::Val,
            val_sensitivity: 0.5,
            val_specificity: 0.5,
            tta: false,
            checkpoint: BEST_FILE.into(),
            checkpoint_sha256: "0".repeat(64),
            manifest_sha256: "0".repeat(64),
            note: None,
        };
        crate::fsutil::write_json_atomic(dir.path().join(THRESHOLD_FILE), &t).unwrap();
        let err = read_threshold(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a probability"), "{err}");
    }
}

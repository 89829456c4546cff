//! [`EvalOptions`]: what `lesion-eval` is asked to do, and the checks made before anything
//! is read.

use std::path::PathBuf;

use super::ThresholdMethod;
use crate::split::Split;
use crate::{Error, Result};

/// Every option of `lesion-eval`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// A run folder (its `best.safetensors` is evaluated) or a checkpoint file in a run folder.
    pub run: PathBuf,
    /// Prepared dataset folder.
    pub data: PathBuf,
    /// The split to evaluate (test).
    pub split: Split,
    pub threshold_method: ThresholdMethod,
    /// Used by [`ThresholdMethod::Sensitivity`] (0.95).
    pub target_sensitivity: f64,
    /// Bootstrap resamples for the 95% intervals (1000); 0 skips the intervals.
    pub bootstrap: usize,
    /// Seed of the bootstrap (42).
    pub seed: u64,
    /// Test-time augmentation: mean logit of the image and its two flips.
    pub tta: bool,
    /// Images per forward pass (64).
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
    pub device: String,
    /// Replace an existing evaluation folder.
    pub force: bool,
    /// Run the validation split again even where the checkpoint holds the validation
    /// predictions it was selected on (see [`run`](super::run)).
    pub recompute_val: bool,
    /// Progress bars and stage messages on stderr.
    pub progress: bool,
    /// N classes: the classes of the malignant group, replacing the run's own (`None`
    /// keeps the run's). Checked against the run's class names; for two classes it may
    /// only name the positive class.
    pub malignant: Option<Vec<String>>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            run: PathBuf::from("runs/default"),
            data: PathBuf::from("data/prepared"),
            split: Split::Test,
            threshold_method: ThresholdMethod::Youden,
            target_sensitivity: 0.95,
            bootstrap: 1000,
            seed: 42,
            tta: false,
            batch_size: 64,
            device: "auto".into(),
            force: false,
            recompute_val: false,
            progress: true,
            malignant: None,
        }
    }
}

impl EvalOptions {
    /// Rejects option values that cannot work, before anything is read.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::InvalidOption(
                "--batch-size must be at least 1".into(),
            ));
        }
        let t = self.target_sensitivity;
        if !(t > 0.0 && t <= 1.0) {
            return Err(Error::InvalidOption(format!(
                "--target-sensitivity must be in (0, 1], got {t}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        assert!(EvalOptions::default().validate().is_ok());
        let bad = EvalOptions {
            target_sensitivity: 0.0,
            ..EvalOptions::default()
        };
        assert!(matches!(bad.validate(), Err(Error::InvalidOption(_))));
        assert_eq!(
            "youden".parse::<ThresholdMethod>().unwrap(),
            ThresholdMethod::Youden
        );
        assert!("roc".parse::<ThresholdMethod>().is_err());
    }
}

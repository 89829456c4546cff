//! `config.json` of a run folder ([`RunConfig`]): every option of `lesion-train`
//! ([`TrainConfig`]) plus what the run was made from and the preprocessing its model
//! expects, so that a run can be resumed, audited and used for prediction without its
//! prepared data.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::classes::Classes;
use crate::image_io::ResizePolicy;
use crate::model::Trainable;
use crate::{Error, Result};

/// Which validation figure picks the best checkpoint and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Validation accuracy at threshold 0.5 (the notebook's choice).
    #[default]
    ValAcc,
    /// Validation loss (lower is better).
    ValLoss,
    /// Validation ROC AUC: threshold-free, robust to class imbalance.
    ValAuc,
}

impl Monitor {
    /// Whether `new` improves on `best` for this monitor.
    pub fn improves(self, new: f64, best: f64) -> bool {
        match self {
            Monitor::ValLoss => new < best,
            Monitor::ValAcc | Monitor::ValAuc => new > best,
        }
    }

    /// The starting "best" value, which any finite figure improves on.
    pub fn worst(self) -> f64 {
        match self {
            Monitor::ValLoss => f64::INFINITY,
            Monitor::ValAcc | Monitor::ValAuc => f64::NEG_INFINITY,
        }
    }
}

impl FromStr for Monitor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "val_acc" => Ok(Monitor::ValAcc),
            "val_loss" => Ok(Monitor::ValLoss),
            "val_auc" => Ok(Monitor::ValAuc),
            _ => Err(Error::InvalidOption(format!(
                "unknown monitor `{s}`; expected val_acc, val_loss or val_auc"
            ))),
        }
    }
}

impl fmt::Display for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Monitor::ValAcc => "val_acc",
            Monitor::ValLoss => "val_loss",
            Monitor::ValAuc => "val_auc",
        })
    }
}

/// Every option of a training run. Defaults reproduce the notebook's recipe (with
/// validation in eval mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Prepared dataset folder (output of `lesion-prep`).
    pub data: PathBuf,
    /// Run folder to create.
    pub out: PathBuf,
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Images per optimisation step.
    pub batch_size: usize,
    /// Stop after this many epochs without improvement of `monitor`.
    pub patience: usize,
    pub monitor: Monitor,
    pub lr_head: f64,
    pub lr_layer4: f64,
    pub lr_layer3: f64,
    /// Learning rate of the stem, layer1 and layer2 (only with `trainable = all`).
    pub lr_backbone: f64,
    pub trainable: Trainable,
    /// Dropout probability of the head's two dropout layers.
    pub head_dropout: f64,
    /// Seeds shuffling and dropout; with the same seed a CPU run is reproducible.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
    /// `imagenet`, `none` or a path to a safetensors state dict.
    pub weights: String,
    /// Replace an existing run folder.
    pub force: bool,
    /// Let training's 3x3 convolutions use F(4x4, 3x3) Winograd tiles on the CPU too (they
    /// always do in eval-mode inference): about 15% shorter epochs at 224 px, less accurate
    /// gradients (see `kernels`' `training_4x4`). Off by default: it changes results.
    #[serde(default)]
    pub winograd_4x4: bool,

    // Frozen BatchNorm and the feature cache (see `model::ResNet18::set_freeze_bn` and
    // `train::feature_cache`).
    /// Run the frozen stages' BatchNorm in eval mode while training (their running
    /// statistics stay those of the initial weights), which makes the frozen prefix a fixed
    /// function of each stored image, so its output is cached in `<run>/cache/` and later
    /// epochs run only the trainable stages. Does nothing with `trainable = all` (nothing is
    /// frozen). Off by default, and then absent from `config.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_bn: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::from("data/prepared"),
            out: PathBuf::from("runs/default"),
            epochs: 50,
            batch_size: 128,
            patience: 5,
            monitor: Monitor::ValAcc,
            lr_head: 1e-2,
            lr_layer4: 1e-3,
            lr_layer3: 1e-3,
            lr_backbone: 1e-4,
            trainable: Trainable::Layer3,
            head_dropout: 0.25,
            seed: 42,
            device: "auto".into(),
            weights: "imagenet".into(),
            force: false,
            winograd_4x4: false,
            freeze_bn: false,
        }
    }
}

impl TrainConfig {
    /// Rejects option values that cannot work, before anything is loaded.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if self.epochs == 0 {
            return bad("--epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.head_dropout) {
            return bad(format!(
                "--head-dropout must be in [0, 1), got {}",
                self.head_dropout
            ));
        }
        for (name, lr) in [
            ("--lr-head", self.lr_head),
            ("--lr-layer4", self.lr_layer4),
            ("--lr-layer3", self.lr_layer3),
            ("--lr-backbone", self.lr_backbone),
        ] {
            if !(lr.is_finite() && lr >= 0.0) {
                return bad(format!(
                    "{name} must be a finite, non-negative number, got {lr}"
                ));
            }
        }
        Ok(())
    }
}

/// What `config.json` holds: the options plus facts about the inputs that make the
/// run auditable (which data, which weights, which build) and the preprocessing of its
/// images (size, resize policy, normalisation), copied from the prepared dataset's
/// manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub train: TrainConfig,
    /// SHA-256 of the prepared dataset's `manifest.json`.
    pub manifest_sha256: String,
    pub class_names: Vec<String>,
    /// For more than two classes, the malignant group (as in the manifest); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub malignant: Vec<String>,
    pub image_size: usize,
    /// How the prepared images were made square (`"stretch"` or `"crop"`, as in the
    /// manifest). `None` when `config.json` has no `resize` field (an older run folder);
    /// [`super::Run::resize_policy`] then applies the documented default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizePolicy>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Where the initial weights came from: `imagenet (timm/resnet18.tv_in1k)`, a path, or `none`.
    pub weights_source: String,
    /// SHA-256 of the initial weights file, if any.
    pub weights_sha256: Option<String>,
    /// The device the run started on, as described by [`crate::device::describe`].
    pub device: String,
    /// `lesion` crate version that wrote the run.
    pub crate_version: String,
}

impl RunConfig {
    /// The run's classes and their positive group, checked.
    pub fn classes(&self) -> Result<Classes> {
        Classes::new(self.class_names.clone(), &self.malignant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(resize: Option<ResizePolicy>) -> RunConfig {
        RunConfig {
            train: TrainConfig::default(),
            manifest_sha256: "0".repeat(64),
            class_names: vec!["Benign".into(), "Malignant".into()],
            malignant: Vec::new(),
            image_size: 32,
            resize,
            mean: [0.5; 3],
            std: [0.25; 3],
            weights_source: "none".into(),
            weights_sha256: None,
            device: "cpu".into(),
            crate_version: "0.1.0".into(),
        }
    }

    #[test]
    fn freeze_bn_is_recorded_only_when_set() {
        let json = serde_json::to_value(config(None)).unwrap();
        assert!(json["train"].get("freeze_bn").is_none(), "{json}");
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert!(!back.train.freeze_bn);
        let mut cfg = config(None);
        cfg.train.freeze_bn = true;
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["train"]["freeze_bn"], true);
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert!(back.train.freeze_bn);
    }

    #[test]
    fn resize_is_recorded_as_in_the_manifest() {
        let json = serde_json::to_value(config(Some(ResizePolicy::Crop))).unwrap();
        assert_eq!(json["resize"], "crop");
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.resize, Some(ResizePolicy::Crop));
    }

    #[test]
    fn a_config_without_resize_reads_as_none_and_stays_without_it() {
        let mut json = serde_json::to_value(config(Some(ResizePolicy::Stretch))).unwrap();
        json.as_object_mut().unwrap().remove("resize");
        let old: RunConfig = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old.resize, None);
        // Rewriting an old config (resume does) adds nothing.
        assert_eq!(serde_json::to_value(&old).unwrap(), json);
    }
}

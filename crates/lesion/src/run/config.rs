//! `config.json` of a run folder ([`RunConfig`]): every option of `lesion-train`
//! ([`TrainConfig`]) plus what the run was made from and the preprocessing its model
//! expects, so that a run can be resumed, audited and used for prediction without its
//! prepared data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classes::Classes;
use crate::image_io::ResizePolicy;
pub use crate::loader::Sampler;
use crate::model::Trainable;
pub use crate::optim::Schedule;
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
    /// Validation ROC AUC (macro one-vs-rest for more than two classes): threshold-free,
    /// robust to class imbalance.
    ValAuc,
    /// Validation balanced accuracy (mean recall of the classes present), of the class
    /// predicted at threshold 0.5 for two classes, of the most probable class otherwise.
    ValBalancedAcc,
}

impl Monitor {
    /// Whether `new` improves on `best` for this monitor.
    pub fn improves(self, new: f64, best: f64) -> bool {
        match self {
            Monitor::ValLoss => new < best,
            Monitor::ValAcc | Monitor::ValAuc | Monitor::ValBalancedAcc => new > best,
        }
    }

    /// The starting "best" value, which any finite figure improves on.
    pub fn worst(self) -> f64 {
        match self {
            Monitor::ValLoss => f64::INFINITY,
            Monitor::ValAcc | Monitor::ValAuc | Monitor::ValBalancedAcc => f64::NEG_INFINITY,
        }
    }
}

option_names!(Monitor, "monitor", {
    Monitor::ValAcc => "val_acc",
    Monitor::ValLoss => "val_loss",
    Monitor::ValAuc => "val_auc",
    Monitor::ValBalancedAcc => "val_balanced_acc",
});

/// Per-class weights of the training loss (`--class-weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Every image counts the same (the notebook).
    #[default]
    None,
    /// scikit-learn's `class_weight="balanced"`: `n / (classes * count[c])` from the train
    /// split's class counts, so that every class weighs the same in total.
    Balanced,
}

option_names!(ClassWeights, "class weights", {
    ClassWeights::None => "none",
    ClassWeights::Balanced => "balanced",
});

/// A named set of training defaults (`--recipe`); options given explicitly override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// The notebook's recipe, with validation in eval mode.
    #[default]
    Notebook,
    /// Settings for imbalanced data: loss-monitored, class-weighted, cosine schedule with
    /// warm-up, label smoothing.
    Recommended,
}

/// The values a [`Recipe`] sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipeValues {
    pub epochs: usize,
    pub batch_size: usize,
    pub patience: usize,
    pub monitor: Monitor,
    pub lr_head: f64,
    pub lr_layer4: f64,
    pub lr_layer3: f64,
    pub lr_backbone: f64,
    pub trainable: Trainable,
    pub head_dropout: f64,
    pub class_weights: ClassWeights,
    pub sampler: Sampler,
    pub label_smoothing: f64,
    pub schedule: Schedule,
    pub warmup_epochs: Option<usize>,
}

impl Recipe {
    /// The recipes' values: the one table to edit to change a recipe.
    pub fn defaults(self) -> RecipeValues {
        const NOTEBOOK: RecipeValues = RecipeValues {
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
            class_weights: ClassWeights::None,
            sampler: Sampler::Shuffle,
            label_smoothing: 0.0,
            schedule: Schedule::Constant,
            warmup_epochs: None,
        };
        match self {
            Recipe::Notebook => NOTEBOOK,
            // Provisional: to be settled by the measurements on real imbalanced data.
            Recipe::Recommended => RecipeValues {
                monitor: Monitor::ValLoss,
                class_weights: ClassWeights::Balanced,
                schedule: Schedule::Cosine,
                warmup_epochs: Some(1),
                label_smoothing: 0.1,
                ..NOTEBOOK
            },
        }
    }
}

option_names!(Recipe, "recipe", {
    Recipe::Notebook => "notebook",
    Recipe::Recommended => "recommended",
});

/// Whether `v` is its type's default: the imbalance options are left out of `config.json`
/// then, so that a run with the notebook's options writes a `config.json` (which
/// `report.html` embeds) without them, and a file without them reads as the notebook's.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Every option of a training run. Defaults reproduce the notebook's recipe (with
/// validation in eval mode); [`TrainConfig::for_recipe`] gives another recipe's.
///
/// The imbalance options (`recipe` to `warmup_epochs`) are written to `config.json` only
/// when they differ from the notebook's, and read as the notebook's when absent.
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
    /// The recipe whose values the options not given explicitly took.
    #[serde(default, skip_serializing_if = "is_default")]
    pub recipe: Recipe,
    /// Per-class weights of the training loss.
    #[serde(default, skip_serializing_if = "is_default")]
    pub class_weights: ClassWeights,
    /// How each training epoch draws its images.
    #[serde(default, skip_serializing_if = "is_default")]
    pub sampler: Sampler,
    /// Label smoothing of the training loss, in `[0, 1)` (PyTorch's `label_smoothing`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub label_smoothing: f64,
    /// Learning-rate schedule of every group, per step ([`crate::optim::LrSchedule`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub schedule: Schedule,
    /// Warm-up epochs of `cosine`, or `onecycle`'s rising phase (`pct_start = warmup /
    /// epochs`); `None`: none for `cosine`, `pct_start` 0.3 for `onecycle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_epochs: Option<usize>,

    // Frozen BatchNorm and the feature cache (see `model::ResNet18::set_freeze_bn` and
    // `train::feature_cache`).
    /// Run the frozen stages' BatchNorm in eval mode while training (their running
    /// statistics stay those of the initial weights), which makes the frozen prefix a fixed
    /// function of each stored image, so its output is cached in `<run>/cache/` and later
    /// epochs run only the trainable stages. Does nothing with `trainable = all` (nothing is
    /// frozen). Off by default, and then absent from `config.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub freeze_bn: bool,
    /// K-fold data: the fold `i` held out for validation (`--fold i`); the run trains on the
    /// other folds ([`crate::loader::PreparedDataset::with_fold`]). `None` (absent from
    /// `config.json`) for data without folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::for_recipe(Recipe::Notebook)
    }
}

impl TrainConfig {
    /// The options of `recipe` ([`Recipe::defaults`]), with the defaults of the options no
    /// recipe sets.
    pub fn for_recipe(recipe: Recipe) -> Self {
        let r = recipe.defaults();
        TrainConfig {
            data: PathBuf::from("data/prepared"),
            out: PathBuf::from("runs/default"),
            epochs: r.epochs,
            batch_size: r.batch_size,
            patience: r.patience,
            monitor: r.monitor,
            lr_head: r.lr_head,
            lr_layer4: r.lr_layer4,
            lr_layer3: r.lr_layer3,
            lr_backbone: r.lr_backbone,
            trainable: r.trainable,
            head_dropout: r.head_dropout,
            seed: 42,
            device: "auto".into(),
            weights: "imagenet".into(),
            force: false,
            winograd_4x4: false,
            recipe,
            class_weights: r.class_weights,
            sampler: r.sampler,
            label_smoothing: r.label_smoothing,
            schedule: r.schedule,
            warmup_epochs: r.warmup_epochs,
            freeze_bn: false,
            fold: None,
        }
    }

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
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if let Some(w) = self.warmup_epochs {
            if self.schedule == Schedule::Constant {
                return bad(format!(
                    "--warmup-epochs {w} needs --schedule cosine or onecycle (the schedule is \
                     constant)"
                ));
            }
            if w >= self.epochs {
                return bad(format!(
                    "--warmup-epochs {w} must be less than --epochs {} (--schedule {} needs \
                     an epoch after the warm-up; --warmup-epochs 0 has none)",
                    self.epochs, self.schedule
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

    /// The fold the run held out for validation (K-fold data), `None` otherwise.
    pub fn fold(&self) -> Option<u32> {
        self.train.fold
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
    fn the_notebook_recipe_is_the_default_and_writes_no_new_fields() {
        assert_eq!(
            TrainConfig::default(),
            TrainConfig::for_recipe(Recipe::Notebook)
        );
        let d = TrainConfig::default();
        assert_eq!((d.epochs, d.batch_size, d.patience), (50, 128, 5));
        assert_eq!((d.lr_head, d.lr_layer4, d.lr_layer3), (1e-2, 1e-3, 1e-3));
        assert_eq!((d.monitor, d.head_dropout), (Monitor::ValAcc, 0.25));
        assert_eq!(
            (d.class_weights, d.sampler, d.schedule, d.warmup_epochs),
            (
                ClassWeights::None,
                Sampler::Shuffle,
                Schedule::Constant,
                None
            )
        );
        assert_eq!(d.label_smoothing, 0.0);
        let json = serde_json::to_value(config(None)).unwrap();
        let keys: Vec<&String> = json["train"].as_object().unwrap().keys().collect();
        for new in [
            "recipe",
            "class_weights",
            "sampler",
            "label_smoothing",
            "schedule",
            "warmup_epochs",
        ] {
            assert!(!keys.iter().any(|k| *k == new), "{new} written: {keys:?}");
        }
    }

    #[test]
    fn the_recommended_recipe_is_recorded_with_its_values() {
        let cfg = TrainConfig::for_recipe(Recipe::Recommended);
        assert_eq!(cfg.monitor, Monitor::ValLoss);
        assert_eq!(cfg.class_weights, ClassWeights::Balanced);
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs),
            (Schedule::Cosine, Some(1))
        );
        assert_eq!((cfg.label_smoothing, cfg.sampler), (0.1, Sampler::Shuffle));
        assert_eq!((cfg.patience, cfg.epochs, cfg.batch_size), (5, 50, 128));
        cfg.validate().unwrap();
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["recipe"], "recommended");
        assert_eq!(json["monitor"], "val_loss");
        assert_eq!(json["class_weights"], "balanced");
        assert_eq!(json["schedule"], "cosine");
        assert_eq!(json["warmup_epochs"], 1);
        assert_eq!(json["label_smoothing"], 0.1);
        let back: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, cfg);
        let onecycle = TrainConfig {
            schedule: Schedule::OneCycle,
            sampler: Sampler::Balanced,
            ..TrainConfig::default()
        };
        let json = serde_json::to_value(&onecycle).unwrap();
        assert_eq!(
            (&json["schedule"], &json["sampler"]),
            (&"onecycle".into(), &"balanced".into())
        );
        assert_eq!(
            serde_json::from_value::<TrainConfig>(json).unwrap(),
            onecycle
        );
    }

    #[test]
    fn a_config_without_the_new_options_reads_as_the_notebook() {
        let mut json = serde_json::to_value(TrainConfig::for_recipe(Recipe::Recommended)).unwrap();
        let obj = json.as_object_mut().unwrap();
        for key in [
            "recipe",
            "class_weights",
            "label_smoothing",
            "schedule",
            "warmup_epochs",
        ] {
            obj.remove(key).unwrap();
        }
        obj.insert("monitor".into(), "val_acc".into());
        let old: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old, TrainConfig::default());
    }

    #[test]
    fn bad_imbalance_options_are_refused_by_name() {
        for (cfg, named) in [
            (
                TrainConfig {
                    label_smoothing: 1.0,
                    ..TrainConfig::default()
                },
                "--label-smoothing",
            ),
            (
                TrainConfig {
                    label_smoothing: -0.1,
                    ..TrainConfig::default()
                },
                "--label-smoothing",
            ),
            (
                TrainConfig {
                    label_smoothing: f64::NAN,
                    ..TrainConfig::default()
                },
                "--label-smoothing",
            ),
            (
                TrainConfig {
                    warmup_epochs: Some(1),
                    ..TrainConfig::default()
                },
                "--schedule",
            ),
            (
                TrainConfig {
                    schedule: Schedule::Cosine,
                    warmup_epochs: Some(3),
                    epochs: 3,
                    ..TrainConfig::default()
                },
                "--warmup-epochs 3",
            ),
        ] {
            let err = cfg.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
            assert!(err.to_string().contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn option_names_round_trip() {
        for m in ["val_acc", "val_loss", "val_auc", "val_balanced_acc"] {
            let monitor: Monitor = m.parse().unwrap();
            assert_eq!(monitor.to_string(), m);
            assert_eq!(serde_json::to_value(monitor).unwrap(), m);
        }
        assert!(Monitor::ValBalancedAcc.improves(0.6, 0.5));
        assert_eq!(Monitor::ValBalancedAcc.worst(), f64::NEG_INFINITY);
        for w in ["none", "balanced"] {
            assert_eq!(w.parse::<ClassWeights>().unwrap().to_string(), w);
        }
        for r in ["notebook", "recommended"] {
            let recipe: Recipe = r.parse().unwrap();
            assert_eq!(recipe.to_string(), r);
            assert_eq!(serde_json::to_value(recipe).unwrap(), r);
        }
        for (bad, err) in [
            (
                "x".parse::<Recipe>().unwrap_err(),
                "notebook or recommended",
            ),
            ("x".parse::<ClassWeights>().unwrap_err(), "none or balanced"),
            ("x".parse::<Monitor>().unwrap_err(), "val_balanced_acc"),
        ] {
            assert!(bad.to_string().contains(err), "{bad}");
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
    fn the_fold_is_recorded_only_when_set() {
        let json = serde_json::to_value(config(None)).unwrap();
        assert!(json["train"].get("fold").is_none(), "{json}");
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.fold(), None);
        let mut cfg = config(None);
        cfg.train.fold = Some(3);
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["train"]["fold"], 3);
        let back: RunConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back.fold(), Some(3));
        assert_eq!(back, cfg);
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

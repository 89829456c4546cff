//! A run folder opened for reading ([`Run`]): which checkpoint, its `config.json`, its
//! threshold, its preprocessing, and whether a prepared dataset fits it.

use std::path::{Path, PathBuf};

use super::threshold::{read_threshold_file, threshold_path, Threshold};
use super::{eval_dir_name, read_config, RunConfig, BEST_FILE, CONFIG_FILE};
use crate::fsutil::read_json;
use crate::image_io::ResizePolicy;
use crate::loader::PreparedDataset;
use crate::manifest::{manifest_sha256, Manifest};
use crate::split::Split;
use crate::{Error, Result};

/// Smallest image side ResNet-18 can take: five stride-2 stages leave at least 1x1.
pub const MIN_IMAGE_SIZE: u32 = 32;

/// A run folder, the checkpoint in it that is used, and its `config.json`.
///
/// Built by [`Run::resolve`] (evaluation: any checkpoint) or [`Run::open`] (prediction:
/// the best checkpoint, and a configuration the model can run with).
#[derive(Debug, Clone)]
pub struct Run {
    /// The run folder, as given (or the folder of the checkpoint given).
    pub run_dir: PathBuf,
    /// The checkpoint file: `<run_dir>/best.safetensors` unless another one was named.
    pub checkpoint: PathBuf,
    /// The run's `config.json`.
    pub config: RunConfig,
}

impl Run {
    /// The run that a `--run` argument of `lesion-eval` names: a run folder (its
    /// `best.safetensors`) or a checkpoint file inside one. Its `config.json` must exist.
    pub fn resolve(path: &Path) -> Result<Self> {
        let (run_dir, checkpoint) = if path.is_dir() {
            let best = path.join(BEST_FILE);
            if !best.is_file() {
                return Err(Error::BadArtifact {
                    path: best,
                    reason: "missing: the run has no best checkpoint (it has not finished an \
                             epoch, or this is not a run folder); pass a checkpoint file with \
                             --run to evaluate another one"
                        .into(),
                });
            }
            (path.to_path_buf(), best)
        } else if path.is_file() {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, path.to_path_buf())
        } else {
            return Err(Error::InvalidOption(format!(
                "--run {}: no such run folder or checkpoint file",
                path.display()
            )));
        };
        let config_path = run_dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(Error::BadArtifact {
                path: config_path,
                reason: "missing: not a lesion run folder (the checkpoint's training \
                         configuration is needed to check it against the data)"
                    .into(),
            });
        }
        let config = read_json(&config_path)?;
        Ok(Self {
            run_dir,
            checkpoint,
            config,
        })
    }

    /// The run folder `dir` with its `best.safetensors`, for prediction: `config.json` must
    /// describe a model prediction can run (two classes, images of at least
    /// [`MIN_IMAGE_SIZE`] px, a positive std).
    pub fn open(dir: &Path) -> Result<Self> {
        let config = read_config(dir)?;
        check_config(&config, &dir.join(CONFIG_FILE))?;
        let checkpoint = dir.join(BEST_FILE);
        if !checkpoint.is_file() {
            return Err(Error::BadArtifact {
                path: checkpoint,
                reason: "missing: the run has no best checkpoint (training has not finished \
                         an epoch)"
                    .into(),
            });
        }
        Ok(Self {
            run_dir: dir.to_path_buf(),
            checkpoint,
            config,
        })
    }

    /// Where an evaluation of this checkpoint on `split` goes (see [`eval_dir_name`]).
    pub fn eval_dir(&self, split: Split) -> PathBuf {
        self.run_dir.join(eval_dir_name(split, &self.checkpoint))
    }

    /// Where this checkpoint's decision threshold is kept (see [`threshold_path`]).
    pub fn threshold_path(&self) -> PathBuf {
        threshold_path(&self.run_dir, &self.checkpoint)
    }

    /// This checkpoint's decision threshold, checked ([`read_threshold_file`]); `None` when
    /// the run has not been evaluated yet.
    pub fn threshold(&self) -> Result<Option<Threshold>> {
        let path = self.threshold_path();
        if path.is_file() {
            read_threshold_file(&path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The resize policy the model's images were prepared with, and a warning when it is
    /// not certain.
    ///
    /// The policy recorded in `config.json` when there is one. Otherwise (a run folder
    /// whose `config.json` lacks the field) the documented default: the policy in the
    /// manifest of the prepared dataset at `train.data` (with a warning if that dataset
    /// changed since training), or `stretch` (prep's default) with a warning when the
    /// manifest cannot be read.
    pub fn resize_policy(&self) -> (ResizePolicy, Option<String>) {
        if let Some(policy) = self.config.resize {
            return (policy, None);
        }
        let data = &self.config.train.data;
        match Manifest::load(data) {
            Ok(m) => {
                let changed = manifest_sha256(data).ok().as_deref()
                    != Some(self.config.manifest_sha256.as_str());
                let warning = changed.then(|| {
                    format!(
                        "the prepared dataset {} changed since {} was trained; its resize \
                         policy `{}` is used",
                        data.display(),
                        self.run_dir.display(),
                        policy_name(m.resize)
                    )
                });
                (m.resize, warning)
            }
            Err(e) => (
                ResizePolicy::Stretch,
                Some(format!(
                    "cannot read the resize policy of the run's prepared dataset ({e}); \
                     assuming `stretch` (prep's default). If the data was prepared with \
                     `--resize crop`, predictions will be off"
                )),
            ),
        }
    }

    /// Refuses data prepared differently from the data the run was trained on (class
    /// names, image size, normalisation).
    pub fn check_compatible(&self, data: &PreparedDataset) -> Result<()> {
        let cfg = &self.config;
        let mut problems = Vec::new();
        if cfg.class_names != data.class_names() {
            problems.push(format!(
                "class names: the run was trained on {:?}, the data has {:?}",
                cfg.class_names,
                data.class_names()
            ));
        }
        if cfg.image_size != data.image_size() as usize {
            problems.push(format!(
                "image size: the run was trained on {0}x{0} px images, the data is {1}x{1} px \
                 (prepare it again with --size {0})",
                cfg.image_size,
                data.image_size()
            ));
        }
        let norm = data.manifest().normalization;
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6);
        if !close(cfg.mean, norm.mean) || !close(cfg.std, norm.std) {
            problems.push(format!(
                "normalisation: the run used mean {:?} / std {:?}, the data specifies {:?} / {:?}",
                cfg.mean, cfg.std, norm.mean, norm.std
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::RunDataMismatch {
                run: self.run_dir.clone(),
                data: data.dir().to_path_buf(),
                reason: problems.join("; "),
            })
        }
    }
}

/// Rejects a config.json that the model cannot use, naming the file.
fn check_config(config: &RunConfig, path: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadArtifact {
        path: path.to_path_buf(),
        reason,
    };
    config.classes().map_err(|e| bad(e.to_string()))?;
    if config.image_size < MIN_IMAGE_SIZE as usize {
        return Err(bad(format!(
            "image_size {} is below ResNet-18's minimum of {MIN_IMAGE_SIZE}",
            config.image_size
        )));
    }
    if config.std.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return Err(bad(format!("std {:?} is not positive", config.std)));
    }
    Ok(())
}

fn policy_name(p: ResizePolicy) -> &'static str {
    match p {
        ResizePolicy::Stretch => "stretch",
        ResizePolicy::Crop => "crop",
    }
}

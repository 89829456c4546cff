//! Checkpoints: one safetensors file holding the model's state dict (torchvision names,
//! running statistics included), the optimizer's state (`optim.*`) and, in the file's
//! metadata, the training state needed to resume (epoch, best figure, patience counter, and
//! the epoch's history row).
//!
//! Files are written atomically, so a kill during a write leaves the previous checkpoint
//! intact.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::Load as _;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::fsutil::write_atomic;
use crate::run::history::EpochRecord;
use crate::weights::check_finite;
use crate::{Error, Result};

/// Metadata key under which [`TrainState`] is stored as JSON.
const META_KEY: &str = "lesion.train_state";
/// Identifies the checkpoint layout.
const FORMAT: &str = "lesion-checkpoint-v1";

/// Where training stands after an epoch: everything besides tensors that resuming needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// Number of completed epochs.
    pub epoch: usize,
    /// Best value of the monitored figure so far, and the (1-based) epoch that reached it.
    /// Infinite (the monitor's starting value) until an epoch gives a finite figure, which
    /// it never does when the figure is undefined (AUC of a one-class validation split).
    #[serde(with = "non_finite")]
    pub best_metric: f64,
    pub best_epoch: usize,
    pub epochs_without_improvement: usize,
    /// Shuffling and dropout are derived from (seed, epoch), so this is the RNG state.
    pub seed: u64,
    /// Early stopping ended the run; resuming it does nothing.
    pub finished: bool,
    /// The `history.csv` row of the epoch this checkpoint was saved after, with its timings
    /// (`seconds`, `images_per_s`) left out (NaN) so that a checkpoint's bytes depend on
    /// the computation only. Resuming restores the row from here when `history.csv` lacks
    /// it, as it does after a kill between writing the checkpoint and the history. Stored as
    /// that CSV line (JSON has no NaN, and the validation AUC can be NaN).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "csv_row")]
    pub record: Option<EpochRecord>,
    /// The length of the run's learning-rate schedule, for schedules other than constant:
    /// the rate of a step depends on it, so resuming checks that it has not changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSteps>,
}

/// How many optimizer steps a scheduled run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSteps {
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

/// (De)serialises an `f64` that may be infinite or NaN, which JSON numbers cannot hold:
/// finite values as numbers, the others as the strings `inf`, `-inf` and `NaN`.
mod non_finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            Number(f64),
            Text(String),
        }
        match Value::deserialize(d)? {
            Value::Number(v) => Ok(v),
            Value::Text(t) => t
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("not a number: `{t}`"))),
        }
    }
}

/// (De)serialises [`TrainState::record`] as a `history.csv` line.
mod csv_row {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::run::history::{self, EpochRecord};

    pub fn serialize<S: Serializer>(r: &Option<EpochRecord>, s: S) -> Result<S::Ok, S::Error> {
        r.as_ref().map(history::to_row).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EpochRecord>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|line| history::parse_row(&line).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl TrainState {
    pub fn new(seed: u64, best_metric: f64) -> Self {
        TrainState {
            format: FORMAT.into(),
            epoch: 0,
            best_metric,
            best_epoch: 0,
            epochs_without_improvement: 0,
            seed,
            finished: false,
            record: None,
            schedule: None,
        }
    }
}

/// Writes `tensors` (moved to the CPU as needed) and `state` to `path` atomically.
pub fn save(path: &Path, tensors: &HashMap<String, Tensor>, state: &TrainState) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let cpu: Vec<(String, Tensor)> = names
        .into_iter()
        .map(|n| Ok((n.clone(), tensors[n].to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([(
        META_KEY.to_string(),
        serde_json::to_string(state).expect("TrainState serialises"),
    )]);
    let bytes = safetensors::serialize(cpu, Some(meta)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

fn bad_file(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::Safetensors {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads a checkpoint written by [`save`]; tensors are placed on `device`. A tensor holding
/// NaN or infinity is an [`Error::BadArtifact`] naming it.
pub fn load(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, TrainState)> {
    let bytes = std::fs::read(path).with_path(path)?;
    let bad = bad_file(path);
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let state_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| bad(format!("no `{META_KEY}` metadata: not a lesion checkpoint")))?;
    let state: TrainState =
        serde_json::from_str(state_json).map_err(|e| bad(format!("bad train state: {e}")))?;
    if state.format != FORMAT {
        return Err(bad(format!(
            "unsupported checkpoint format `{}`",
            state.format
        )));
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    check_finite(path, &st)?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?;
    Ok((tensors, state))
}

/// Only the model's tensors of a checkpoint (any safetensors file with torchvision names),
/// without the optimizer state (two thirds of a training checkpoint), so that a
/// long-running server does not keep memory it never uses. Missing names are left to
/// [`crate::model::ResNet18::from_tensors`], which reports them by name. A tensor holding
/// NaN or infinity is an [`Error::BadArtifact`] naming it.
pub fn load_model(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_path(path)?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad_file(path)(e.to_string()))?;
    check_finite(path, &st)?;
    let mut out = HashMap::new();
    for spec in crate::model::param_specs() {
        if let Ok(view) = st.tensor(&spec.name) {
            out.insert(spec.name.clone(), view.load(device)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let tensors = HashMap::from([("fc.0.weight".to_string(), t)]);
        let mut state = TrainState::new(7, f64::NEG_INFINITY);
        state.epoch = 3;
        state.best_metric = 0.875;
        save(&path, &tensors, &state).unwrap();
        let (back, st) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(st, state);
        let v: Vec<Vec<f32>> = back["fc.0.weight"].to_vec2().unwrap();
        assert_eq!(v, vec![vec![1., 2.], vec![3., 4.]]);
    }

    #[test]
    fn an_infinite_best_metric_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        for best in [f64::NEG_INFINITY, f64::INFINITY] {
            let state = TrainState::new(7, best);
            save(
                &path,
                &HashMap::from([("a".to_string(), t.clone())]),
                &state,
            )
            .unwrap();
            let (_, back) = load(&path, &Device::Cpu).unwrap();
            assert_eq!(back.best_metric, best);
        }
    }

    #[test]
    fn the_epoch_row_round_trips_nan_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.safetensors");
        let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let mut state = TrainState::new(7, f64::NEG_INFINITY);
        state.epoch = 2;
        state.best_metric = 0.75;
        state.record = Some(EpochRecord {
            epoch: 2,
            train_loss: 0.5,
            train_acc: 0.75,
            val_loss: 0.625,
            val_acc: 0.8125,
            val_auc: f64::NAN,
            val_balanced_acc: 0.625,
            lr_head: 1e-2,
            lr_layer4: 1e-3,
            lr_layer3: 1e-3,
            lr_backbone: 0.0,
            seconds: f64::NAN,
            images_per_s: f64::NAN,
        });
        save(&path, &HashMap::from([("a".to_string(), t)]), &state).unwrap();
        let (_, back) = load(&path, &Device::Cpu).unwrap();
        let (want, got) = (state.record.unwrap(), back.record.unwrap());
        assert_eq!(
            crate::run::history::to_row(&got),
            crate::run::history::to_row(&want)
        );
        assert!(got.val_auc.is_nan() && got.seconds.is_nan());
        assert_eq!(got.val_acc, 0.8125);
        assert_eq!(got.val_balanced_acc, 0.625);
    }

    #[test]
    fn a_train_state_from_an_older_checkpoint_still_reads() {
        // A 12-field history row (no balanced accuracy) and no schedule.
        let json = r#"{"format":"lesion-checkpoint-v1","epoch":2,"best_metric":0.75,
            "best_epoch":2,"epochs_without_improvement":0,"seed":7,"finished":false,
            "record":"2,0.500000,0.750000,0.625000,0.812500,NaN,1e-2,1e-3,1e-3,0e0,NaN,NaN"}"#;
        let state: TrainState = serde_json::from_str(json).unwrap();
        let record = state.record.unwrap();
        assert_eq!((record.val_acc, record.lr_head), (0.8125, 1e-2));
        assert!(record.val_balanced_acc.is_nan() && record.val_auc.is_nan());
        assert_eq!(state.schedule, None);
        // A scheduled run's state keeps its schedule's length.
        let mut scheduled = TrainState::new(7, f64::INFINITY);
        scheduled.schedule = Some(ScheduleSteps {
            steps_per_epoch: 3,
            total_steps: 12,
        });
        let text = serde_json::to_string(&scheduled).unwrap();
        assert!(
            text.contains(r#""schedule":{"steps_per_epoch":3,"total_steps":12}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<TrainState>(&text).unwrap(),
            scheduled
        );
        let plain = serde_json::to_string(&TrainState::new(7, 0.0)).unwrap();
        assert!(!plain.contains("schedule"), "{plain}");
    }

    #[test]
    fn non_finite_tensors_are_refused_by_both_loaders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.safetensors");
        let t = Tensor::new(&[1f32, f32::INFINITY], &Device::Cpu).unwrap();
        save(
            &path,
            &HashMap::from([("fc.0.weight".to_string(), t)]),
            &TrainState::new(1, 0.0),
        )
        .unwrap();
        for err in [
            load(&path, &Device::Cpu).unwrap_err(),
            load_model(&path, &Device::Cpu).unwrap_err(),
        ] {
            assert!(matches!(err, Error::BadArtifact { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("best.safetensors") && msg.contains("`fc.0.weight`"),
                "{msg}"
            );
        }
    }

    #[test]
    fn plain_safetensors_is_rejected_with_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let t = Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("a", t)]), &path).unwrap();
        let err = load(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("not a lesion checkpoint"), "{err}");
    }
}

//! Batched inference over a prepared split, shared by validation (train stage), the eval
//! stage and prediction.
//!
//! The model runs in eval mode on NCHW f32 batches from the [`crate::loader`]; logits `[b, 1]`
//! become malignant probabilities `sigmoid(logit)` (f64).

use std::collections::HashMap;

use candle_core::{Device, Tensor, D};
use candle_nn::ModuleT;
use indicatif::ProgressBar;

use crate::loader::{LoaderOptions, PreparedDataset};
use crate::model::ResNet18;
use crate::split::Split;
use crate::Result;

/// Model outputs for every image of a split, in loader order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitPredictions {
    /// Index of each image in the prepared manifest's image list.
    pub source_index: Vec<u32>,
    /// True class index (0 benign, 1 malignant).
    pub labels: Vec<usize>,
    /// Malignant logit.
    pub logits: Vec<f32>,
    /// Malignant probability, `sigmoid(logit)`.
    pub probs: Vec<f64>,
}

/// Tensor names under which a checkpoint carries the validation predictions it was selected
/// on (`lesion-train` writes them into `best.safetensors`, `lesion-eval` reuses them).
const VAL_SOURCE_INDEX: &str = "val.source_index";
const VAL_LABELS: &str = "val.labels";
const VAL_LOGITS: &str = "val.logits";

impl SplitPredictions {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Mean binary cross-entropy of the logits, computed stably in f64 (as BCEWithLogits).
    pub fn mean_bce(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let sum: f64 = self
            .logits
            .iter()
            .zip(&self.labels)
            .map(|(&x, &y)| bce_with_logit(f64::from(x), y as f64))
            .sum();
        sum / self.len() as f64
    }

    /// Fraction of images whose prediction at `threshold` equals the label.
    pub fn accuracy(&self, threshold: f64) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let correct = self
            .probs
            .iter()
            .zip(&self.labels)
            .filter(|(&p, &y)| usize::from(p >= threshold) == y)
            .count();
        correct as f64 / self.len() as f64
    }

    /// The validation predictions as checkpoint tensors: `val.source_index` `[n]` u32,
    /// `val.labels` `[n]` u8, `val.logits` `[n]` f32 (probabilities are their sigmoid).
    pub fn to_val_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let cpu = &Device::Cpu;
        let labels: Vec<u8> = self.labels.iter().map(|&y| y as u8).collect();
        Ok(HashMap::from([
            (
                VAL_SOURCE_INDEX.to_string(),
                Tensor::new(self.source_index.as_slice(), cpu)?,
            ),
            (VAL_LABELS.to_string(), Tensor::new(labels.as_slice(), cpu)?),
            (
                VAL_LOGITS.to_string(),
                Tensor::new(self.logits.as_slice(), cpu)?,
            ),
        ]))
    }

    /// The validation predictions stored in a checkpoint's `tensors`, if it has them and
    /// they cover exactly `data`'s validation split, image for image, in evaluation order.
    /// Whether `data` is the dataset the run was trained on is the caller's to check (by its
    /// manifest hash).
    pub fn val_from_tensors(
        tensors: &HashMap<String, Tensor>,
        data: &PreparedDataset,
    ) -> Result<Option<Self>> {
        let (Some(source), Some(labels), Some(logits)) = (
            tensors.get(VAL_SOURCE_INDEX),
            tensors.get(VAL_LABELS),
            tensors.get(VAL_LOGITS),
        ) else {
            return Ok(None);
        };
        let source: Vec<u32> = source.to_vec1()?;
        let labels: Vec<u8> = labels.to_vec1()?;
        let logits: Vec<f32> = logits.to_vec1()?;
        let (val_source, val_labels) = data.eval_order(Split::Val);
        if source != val_source || labels != val_labels || logits.len() != source.len() {
            return Ok(None);
        }
        Ok(Some(Self {
            probs: logits.iter().map(|&x| sigmoid(f64::from(x))).collect(),
            labels: labels.into_iter().map(usize::from).collect(),
            logits,
            source_index: source,
        }))
    }
}

/// `max(x, 0) - x*t + ln(1 + e^{-|x|})`: finite for any finite logit.
pub fn bce_with_logit(x: f64, t: f64) -> f64 {
    x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
}

/// Logistic sigmoid that does not overflow for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Logits `[b]` of an NCHW batch in eval mode; with `tta`, the mean of the logits of the
/// image and its horizontal and vertical flips.
pub fn eval_logits(model: &ResNet18, images: &Tensor, tta: bool) -> Result<Tensor> {
    let logits = model.forward_t(images, false)?.squeeze(D::Minus1)?;
    if !tta {
        return Ok(logits);
    }
    let hflip = flip(images, 3)?;
    let vflip = flip(images, 2)?;
    let lh = model.forward_t(&hflip, false)?.squeeze(D::Minus1)?;
    let lv = model.forward_t(&vflip, false)?.squeeze(D::Minus1)?;
    Ok(((logits + lh)? + lv)?.affine(1.0 / 3.0, 0.0)?)
}

/// Reverses `dim` of a tensor (candle has no `flip`): an index_select with reversed indices.
fn flip(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dim(dim)?;
    let idx: Vec<u32> = (0..n as u32).rev().collect();
    let idx = Tensor::new(idx.as_slice(), t.device())?;
    Ok(t.index_select(&idx, dim)?)
}

/// Runs `model` in eval mode over every image of `split`.
pub fn predict_split(
    model: &ResNet18,
    data: &PreparedDataset,
    split: Split,
    batch_size: usize,
    tta: bool,
    device: &Device,
    progress: Option<&ProgressBar>,
) -> Result<SplitPredictions> {
    let mut out = SplitPredictions::default();
    for batch in data.loader(split, LoaderOptions::eval(batch_size), device)? {
        let batch = batch?;
        let logits: Vec<f32> = eval_logits(model, &batch.images, tta)?.to_vec1()?;
        out.probs
            .extend(logits.iter().map(|&x| sigmoid(f64::from(x))));
        out.logits.extend(logits);
        out.labels
            .extend(batch.label_u8.iter().map(|&y| usize::from(y)));
        out.source_index.extend(&batch.source_index);
        if let Some(pb) = progress {
            pb.inc(batch.len() as u64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_is_stable_and_exact() {
        assert_eq!(bce_with_logit(100.0, 0.0), 100.0);
        assert!(bce_with_logit(100.0, 1.0) < 1e-40);
        assert!((bce_with_logit(0.0, 1.0) - std::f64::consts::LN_2).abs() < 1e-15);
        assert_eq!(bce_with_logit(-100.0, 1.0), 100.0);
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn accuracy_and_loss_of_known_predictions() {
        let p = SplitPredictions {
            source_index: vec![0, 1, 2, 3],
            labels: vec![0, 1, 1, 0],
            logits: vec![-2.0, 3.0, -1.0, 0.5],
            probs: [-2.0f64, 3.0, -1.0, 0.5]
                .iter()
                .map(|&x| sigmoid(x))
                .collect(),
        };
        assert_eq!(p.accuracy(0.5), 0.5);
        let expected = (bce_with_logit(-2.0, 0.0)
            + bce_with_logit(3.0, 1.0)
            + bce_with_logit(-1.0, 1.0)
            + bce_with_logit(0.5, 0.0))
            / 4.0;
        assert!((p.mean_bce() - expected).abs() < 1e-12);
    }

    #[test]
    fn flip_reverses_a_dimension() {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 3))
            .unwrap();
        let h: Vec<f32> = flip(&t, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(h, vec![2., 1., 0., 5., 4., 3.]);
        let v: Vec<f32> = flip(&t, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![3., 4., 5., 0., 1., 2.]);
    }
}

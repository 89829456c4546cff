//! Batched inference over a prepared split, shared by validation (train stage), the eval
//! stage and prediction.
//!
//! The model runs in eval mode on NCHW f32 batches from the [`crate::loader`]; logits `[b, 1]`
//! become malignant probabilities `sigmoid(logit)` (f64).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use indicatif::ProgressBar;

pub use crate::classes::sigmoid;
use crate::classes::Classes;
use crate::loader::{LoaderOptions, PreparedDataset};
use crate::model::ResNet18;
use crate::split::Split;
use crate::Result;

/// Model outputs for every image of a split, in loader order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitPredictions {
    /// Index of each image in the prepared manifest's image list.
    pub source_index: Vec<u32>,
    /// True class index.
    pub labels: Vec<usize>,
    /// Logits per image, row-major `[n, outputs]`: the positive class's logit for two
    /// classes (`outputs` 1), one per class otherwise.
    pub logits: Vec<f32>,
    /// Width of a logit row ([`Classes::outputs`]).
    pub outputs: usize,
    /// Class probabilities per image ([`Classes::probabilities`]).
    pub class_probs: Vec<Vec<f64>>,
    /// Probability of the positive group per image ([`Classes::positive_probability`]):
    /// `sigmoid(logit)` for two classes; empty for N classes without a malignant group.
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

    /// Mean loss of the logits, computed stably in f64: binary cross-entropy of the logit
    /// for two classes (as BCEWithLogits), cross-entropy of the softmax otherwise (as
    /// CrossEntropyLoss, unweighted, without smoothing).
    pub fn mean_loss(&self) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let sum: f64 = if self.outputs == 1 {
            self.logits
                .iter()
                .zip(&self.labels)
                .map(|(&x, &y)| bce_with_logit(f64::from(x), y as f64))
                .sum()
        } else {
            self.class_probs
                .iter()
                .zip(self.logits.chunks(self.outputs))
                .zip(&self.labels)
                .map(|((_, row), &y)| cross_entropy(row, y))
                .sum()
        };
        sum / self.len() as f64
    }

    /// Fraction of images whose predicted class equals the label: for two classes the
    /// positive class when its probability is at least `threshold`, for more the most
    /// probable class (`threshold` unused).
    pub fn accuracy(&self, threshold: f64) -> f64 {
        if self.is_empty() {
            return f64::NAN;
        }
        let correct = (0..self.len())
            .filter(|&i| self.predicted(i, threshold) == self.labels[i])
            .count();
        correct as f64 / self.len() as f64
    }

    /// ROC AUC: of the positive class's probability for two classes, macro one-vs-rest over
    /// the classes otherwise (scikit-learn's `roc_auc_score(multi_class="ovr",
    /// average="macro")`). `None` when a class is missing from the labels.
    pub fn auc(&self) -> Option<f64> {
        if self.outputs == 1 {
            return crate::metrics::roc_auc(&self.labels, &self.probs).ok();
        }
        let n = self.class_probs.first()?.len();
        let mut sum = 0.0;
        for k in 0..n {
            let y: Vec<usize> = self.labels.iter().map(|&l| usize::from(l == k)).collect();
            let p: Vec<f64> = self.class_probs.iter().map(|row| row[k]).collect();
            sum += crate::metrics::roc_auc(&y, &p).ok()?;
        }
        Some(sum / n as f64)
    }

    /// Predicted class of image `i` (see [`Self::accuracy`]).
    pub fn predicted(&self, i: usize, threshold: f64) -> usize {
        if self.outputs == 1 {
            usize::from(self.probs[i] >= threshold)
        } else {
            argmax(&self.class_probs[i])
        }
    }

    /// Builds the predictions from logits (row-major `[n, classes.outputs()]`).
    pub fn from_logits(
        classes: &Classes,
        source_index: Vec<u32>,
        labels: Vec<usize>,
        logits: Vec<f32>,
    ) -> Self {
        let mut out = Self {
            outputs: classes.outputs(),
            ..Self::default()
        };
        out.push(classes, &source_index, &labels, &logits);
        out
    }

    fn push(&mut self, classes: &Classes, source_index: &[u32], labels: &[usize], logits: &[f32]) {
        for row in logits.chunks(classes.outputs()) {
            let p = classes.probabilities(row);
            if let Some(q) = classes.positive_probability(&p) {
                self.probs.push(q);
            }
            self.class_probs.push(p);
        }
        self.logits.extend_from_slice(logits);
        self.labels.extend_from_slice(labels);
        self.source_index.extend_from_slice(source_index);
    }

    /// The validation predictions as checkpoint tensors: `val.source_index` `[n]` u32,
    /// `val.labels` `[n]` u8, `val.logits` f32, `[n]` for two classes and `[n, N]` for N.
    pub fn to_val_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let cpu = &Device::Cpu;
        let labels: Vec<u8> = self.labels.iter().map(|&y| y as u8).collect();
        Ok(HashMap::from([
            (
                VAL_SOURCE_INDEX.to_string(),
                Tensor::new(self.source_index.as_slice(), cpu)?,
            ),
            (VAL_LABELS.to_string(), Tensor::new(labels.as_slice(), cpu)?),
            (VAL_LOGITS.to_string(), {
                let logits = Tensor::new(self.logits.as_slice(), cpu)?;
                if self.outputs == 1 {
                    logits
                } else {
                    logits.reshape((self.len(), self.outputs))?
                }
            }),
        ]))
    }

    /// The validation predictions stored in a checkpoint's `tensors`, if it has them and
    /// they cover exactly `data`'s validation split, image for image, in evaluation order.
    /// Whether `data` is the dataset the run was trained on is the caller's to check (by its
    /// manifest hash).
    pub fn val_from_tensors(
        tensors: &HashMap<String, Tensor>,
        data: &PreparedDataset,
        classes: &Classes,
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
        let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let (val_source, val_labels) = data.eval_order(Split::Val);
        if source != val_source
            || labels != val_labels
            || logits.len() != source.len() * classes.outputs()
        {
            return Ok(None);
        }
        let labels = labels.into_iter().map(usize::from).collect();
        Ok(Some(Self::from_logits(classes, source, labels, logits)))
    }
}

/// `-ln softmax(x)[y]` in f64: finite for any finite logits.
pub fn cross_entropy(logits: &[f32], y: usize) -> f64 {
    let max = logits
        .iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    max + sum.ln() - f64::from(logits[y])
}

/// Index of the largest value (the first on ties, as numpy's `argmax`).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `max(x, 0) - x*t + ln(1 + e^{-|x|})`: finite for any finite logit.
pub fn bce_with_logit(x: f64, t: f64) -> f64 {
    x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
}

/// Logits `[b, outputs]` of an NCHW batch in eval mode; with `tta`, the mean of the logits
/// of the image and its horizontal and vertical flips.
pub fn eval_logits(model: &ResNet18, images: &Tensor, tta: bool) -> Result<Tensor> {
    let logits = model.forward_t(images, false)?;
    if !tta {
        return Ok(logits);
    }
    let hflip = flip(images, 3)?;
    let vflip = flip(images, 2)?;
    let lh = model.forward_t(&hflip, false)?;
    let lv = model.forward_t(&vflip, false)?;
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
#[allow(clippy::too_many_arguments)]
pub fn predict_split(
    model: &ResNet18,
    classes: &Classes,
    data: &PreparedDataset,
    split: Split,
    batch_size: usize,
    tta: bool,
    device: &Device,
    progress: Option<&ProgressBar>,
) -> Result<SplitPredictions> {
    let mut out = SplitPredictions {
        outputs: classes.outputs(),
        ..SplitPredictions::default()
    };
    for batch in data.loader(split, LoaderOptions::eval(batch_size), device)? {
        let batch = batch?;
        let logits: Vec<f32> = eval_logits(model, &batch.images, tta)?
            .flatten_all()?
            .to_vec1()?;
        let labels: Vec<usize> = batch.label_u8.iter().map(|&y| usize::from(y)).collect();
        out.push(classes, &batch.source_index, &labels, &logits);
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
        let p = SplitPredictions::from_logits(
            &Classes::benign_malignant(),
            vec![0, 1, 2, 3],
            vec![0, 1, 1, 0],
            vec![-2.0, 3.0, -1.0, 0.5],
        );
        assert_eq!(p.probs[1], sigmoid(3.0));
        assert_eq!(p.accuracy(0.5), 0.5);
        let expected = (bce_with_logit(-2.0, 0.0)
            + bce_with_logit(3.0, 1.0)
            + bce_with_logit(-1.0, 1.0)
            + bce_with_logit(0.5, 0.0))
            / 4.0;
        assert!((p.mean_loss() - expected).abs() < 1e-12);
    }

    #[test]
    fn n_class_loss_and_accuracy_use_the_softmax() {
        let classes =
            Classes::new(vec!["a".into(), "b".into(), "c".into()], &["c".into()]).unwrap();
        let p = SplitPredictions::from_logits(
            &classes,
            vec![0, 1],
            vec![2, 0],
            vec![1.0, 2.0, 3.0, 0.5, 0.0, 4.0],
        );
        assert_eq!(p.outputs, 3);
        assert_eq!(p.accuracy(0.5), 0.5);
        // mean of ln(sum(exp(row))) - row[label], in Python floats
        assert!(
            (p.mean_loss() - 1.9774894778354353).abs() < 1e-12,
            "{}",
            p.mean_loss()
        );
        assert_eq!(p.probs, [p.class_probs[0][2], p.class_probs[1][2]]);
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

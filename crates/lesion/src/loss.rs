//! The training loss of a run ([`Loss`]), chosen by its classes.
//!
//! - Two classes: logits `[b, 1]`, mean binary cross-entropy with logits against the labels
//!   (PyTorch's `BCEWithLogitsLoss()`, the notebook's loss).
//! - N > 2 classes: logits `[b, N]`, mean softmax cross-entropy against one-hot labels
//!   (PyTorch's `CrossEntropyLoss()`).
//!
//! Labels are the batch's `u8` class indices.

use candle_core::{Tensor, D};

use crate::classes::Classes;
use crate::{ops, Error, Result};

/// The loss of a run's logits against its labels.
#[derive(Debug, Clone)]
pub struct Loss {
    classes: usize,
}

impl Loss {
    /// The unweighted loss for `classes`; `class_weights` (one per class) and
    /// `label_smoothing` in `[0, 1)` are not supported yet and must be `None` / `0`.
    pub fn new(
        classes: &Classes,
        class_weights: Option<Vec<f64>>,
        label_smoothing: f64,
    ) -> Result<Self> {
        if class_weights.is_some() || label_smoothing != 0.0 {
            return Err(Error::InvalidOption(
                "class weights and label smoothing are not available in this build".into(),
            ));
        }
        Ok(Self {
            classes: classes.len(),
        })
    }

    /// Mean loss of `logits` (`[b, 1]` or `[b, N]`) against `labels` (`b` class indices), a
    /// scalar tensor on the logits' device.
    pub fn forward(&self, logits: &Tensor, labels: &[u8]) -> Result<Tensor> {
        let device = logits.device();
        if self.classes == 2 {
            let targets: Vec<f32> = labels.iter().map(|&y| f32::from(y)).collect();
            let targets = Tensor::from_vec(targets, labels.len(), device)?;
            return Ok(ops::bce_with_logits(&logits.squeeze(D::Minus1)?, &targets)?);
        }
        let targets = ops::one_hot(labels, self.classes, device)?;
        Ok(ops::cross_entropy(logits, &targets)?)
    }
}

//! The training loss of a run ([`Loss`]), chosen by its classes, with optional class weights
//! and label smoothing; and scikit-learn's `balanced` class weights
//! ([`balanced_class_weights`]).
//!
//! Labels are the batch's `u8` class indices; the loss is a scalar tensor (mean over the
//! batch, as below) on the logits' device and in their dtype.
//!
//! **N > 2 classes**: logits `[b, N]`, PyTorch's `CrossEntropyLoss(weight=w,
//! label_smoothing=eps)` exactly (see [`ops::weighted_cross_entropy`]): with targets
//! `t = (1 - eps) * onehot(y) + eps / N`,
//! `loss = sum_i sum_k w_k t_ik (-log softmax(x_i)_k) / sum_i w_{y_i}`, a weighted mean whose
//! denominator is the weights of the batch's labels. Without weights and smoothing this is
//! [`ops::cross_entropy`] against one-hot rows.
//!
//! **Two classes**: logits `[b, 1]` (the notebook's head), PyTorch's
//! `BCEWithLogitsLoss(pos_weight=p)` on targets `y * (1 - eps) + eps / 2`, with
//! `p = w_1 / w_0`. Without weights and smoothing this is [`ops::bce_with_logits`] on the
//! labels as f32, bit for bit the notebook's loss.
//!
//! Why `p = w_1 / w_0` is the two-class form of class weights: per item, weighting by the
//! label's class gives `w_{y} * l(x, y)` with `l(x, 1) = -log σ(x)`, `l(x, 0) = -log(1 -
//! σ(x))`, and `w_y * l(x, y) = w_0 * (p * y * (-log σ(x)) + (1 - y) * (-log(1 - σ(x))))`:
//! `pos_weight` times `w_0`. It is also the 2-class softmax cross-entropy with weights `w`
//! on logits `[0, x]`, whose softmax is `[1 - σ(x), σ(x)]`. The scale differs: the binary
//! loss divides by `b`, so it equals `sum_i w_{y_i} l_i / (b * w_0)`, where the N-class
//! loss divides by `sum_i w_{y_i}`. The ratio, `sum_i w_{y_i} / (b * w_0)`, is the same for
//! every item of a batch, so each batch's gradient points the same way as the weighted
//! mean's; under `balanced` weights a batch with the training set's class mix has
//! `sum_i w_{y_i} = b`, so there the binary loss is `1 / w_0 = 2 n_0 / n` times the weighted
//! mean (`12 / 7` for 6:1 data). A constant factor on the loss does not change Adam's
//! steps (up to its epsilon); the batch-to-batch part of the ratio means items are weighted
//! by their class alone, not by the batch's mix.
//!
//! Label smoothing for two classes moves each target `eps / 2` towards the other class, the
//! same soft targets as PyTorch's `CrossEntropyLoss(label_smoothing=eps)` on two classes
//! (`(1 - eps) + eps / 2` on the true class); torch's `BCEWithLogitsLoss` has no smoothing
//! option, so this is `BCEWithLogitsLoss` on smoothed targets. With `pos_weight` the
//! weight multiplies the positive term `t * (-log σ(x))` of every item, as in PyTorch; that
//! is still the 2-class weighted, smoothed softmax cross-entropy on `[0, x]` up to the scale
//! above.

use candle_core::{Tensor, D};

use crate::classes::Classes;
use crate::{ops, Error, Result};

/// scikit-learn's `compute_class_weight('balanced', ...)`: `n / (N * count_k)` for each
/// class `k`, with `n` the total count and `N` the number of classes, computed as NumPy
/// does (`n as f64 / (N as f64 * count_k as f64)`). A zero count has no finite weight and is
/// an [`Error::InvalidOption`] naming the class index, as is an empty list.
pub fn balanced_class_weights(counts: &[usize]) -> Result<Vec<f64>> {
    if counts.is_empty() {
        return Err(Error::InvalidOption(
            "balanced class weights need at least one class".into(),
        ));
    }
    if let Some(k) = counts.iter().position(|&c| c == 0) {
        return Err(Error::InvalidOption(format!(
            "balanced class weights need an example of every class; class {k} has none"
        )));
    }
    let n = counts.iter().sum::<usize>() as f64;
    let classes = counts.len() as f64;
    Ok(counts.iter().map(|&c| n / (classes * c as f64)).collect())
}

/// The loss of a run's logits against its labels. See the module docs for the formulas.
#[derive(Debug, Clone)]
pub struct Loss {
    classes: usize,
    class_weights: Option<Vec<f64>>,
    label_smoothing: f64,
}

impl Loss {
    /// The loss for `classes`, with `class_weights` (one positive, finite weight per class,
    /// in label order) and `label_smoothing` in `[0, 1)`. Anything else is an
    /// [`Error::InvalidOption`].
    pub fn new(
        classes: &Classes,
        class_weights: Option<Vec<f64>>,
        label_smoothing: f64,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&label_smoothing) {
            return Err(Error::InvalidOption(format!(
                "label smoothing must be in [0, 1), got {label_smoothing}"
            )));
        }
        if let Some(w) = &class_weights {
            if w.len() != classes.len() {
                return Err(Error::InvalidOption(format!(
                    "{} class weights for {} classes ({}); give one per class",
                    w.len(),
                    classes.len(),
                    classes.names().join(", ")
                )));
            }
            if let Some((k, v)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v > 0.0))
            {
                return Err(Error::InvalidOption(format!(
                    "class weights must be positive and finite; class `{}` has {v}",
                    classes.names()[k]
                )));
            }
        }
        Ok(Self {
            classes: classes.len(),
            class_weights,
            label_smoothing,
        })
    }

    /// The class weights, one per class, if any.
    pub fn class_weights(&self) -> Option<&[f64]> {
        self.class_weights.as_deref()
    }

    pub fn label_smoothing(&self) -> f64 {
        self.label_smoothing
    }

    /// Two classes with class weights: PyTorch's `pos_weight`, `w_1 / w_0`.
    pub fn pos_weight(&self) -> Option<f64> {
        match &self.class_weights {
            Some(w) if self.classes == 2 => Some(w[1] / w[0]),
            _ => None,
        }
    }

    /// Mean loss of `logits` (`[b, 1]` for two classes, `[b, N]` otherwise) against `labels`
    /// (`b` class indices), a scalar tensor on the logits' device.
    pub fn forward(&self, logits: &Tensor, labels: &[u8]) -> Result<Tensor> {
        let outputs = if self.classes == 2 { 1 } else { self.classes };
        let (b, k) = logits.dims2()?;
        if k != outputs || b != labels.len() {
            return Err(candle_core::Error::Msg(format!(
                "loss: logits {:?} for {} labels of {} classes (expected [{}, {outputs}])",
                logits.dims(),
                labels.len(),
                self.classes,
                labels.len()
            ))
            .into());
        }
        if let Some(&y) = labels.iter().find(|&&y| usize::from(y) >= self.classes) {
            return Err(candle_core::Error::Msg(format!(
                "loss: label {y} with {} classes",
                self.classes
            ))
            .into());
        }
        let device = logits.device();
        if self.classes == 2 {
            let eps = self.label_smoothing;
            let targets: Vec<f32> = if eps == 0.0 {
                labels.iter().map(|&y| f32::from(y)).collect()
            } else {
                labels
                    .iter()
                    .map(|&y| (f64::from(y) * (1.0 - eps) + eps / 2.0) as f32)
                    .collect()
            };
            let targets = Tensor::from_vec(targets, labels.len(), device)?;
            let logits = logits.squeeze(D::Minus1)?;
            return Ok(match self.pos_weight() {
                Some(p) => ops::bce_with_logits_pos_weight(&logits, &targets, p)?,
                None => ops::bce_with_logits(&logits, &targets)?,
            });
        }
        if self.class_weights.is_none() && self.label_smoothing == 0.0 {
            let targets = ops::one_hot(labels, self.classes, device)?;
            return Ok(ops::cross_entropy(logits, &targets)?);
        }
        Ok(ops::weighted_cross_entropy(
            logits,
            labels,
            self.class_weights.as_deref(),
            self.label_smoothing,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn classes(n: usize) -> Classes {
        if n == 2 {
            return Classes::benign_malignant();
        }
        Classes::new((0..n).map(|k| format!("c{k}")).collect(), &[]).unwrap()
    }

    /// Loss value and gradient with respect to the logits `[b, k]` (row-major).
    fn run(loss: &Loss, logits: &[f32], k: usize, labels: &[u8]) -> (f32, Vec<f32>) {
        let v = Var::from_vec(logits.to_vec(), (labels.len(), k), &Device::Cpu).unwrap();
        let l = loss.forward(v.as_tensor(), labels).unwrap();
        let g = l.backward().unwrap();
        let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        (l.to_scalar::<f32>().unwrap(), g.to_vec1::<f32>().unwrap())
    }

    /// PyTorch's weighted, smoothed cross-entropy and its gradient, in f64:
    /// `sum_ik c_ik (-log p_ik)` with `c_ik = w_k t_ik / sum_i w_{y_i}`, whose gradient is
    /// `p_ij * sum_k c_ik - c_ij`.
    fn ce_reference(x: &[f32], n: usize, labels: &[u8], w: &[f64], eps: f64) -> (f64, Vec<f64>) {
        let denom: f64 = labels.iter().map(|&y| w[usize::from(y)]).sum();
        let (mut loss, mut grad) = (0.0, vec![0.0; x.len()]);
        for (i, &y) in labels.iter().enumerate() {
            let row: Vec<f64> = x[i * n..(i + 1) * n]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let c: Vec<f64> = (0..n)
                .map(|k| {
                    let t = (1.0 - eps) * f64::from(u8::from(k == usize::from(y))) + eps / n as f64;
                    w[k] * t / denom
                })
                .collect();
            let total: f64 = c.iter().sum();
            for k in 0..n {
                loss += c[k] * (lse - row[k]);
                grad[i * n + k] = (row[k] - lse).exp() * total - c[k];
            }
        }
        (loss, grad)
    }

    /// PyTorch's `BCEWithLogitsLoss(pos_weight=p)` on targets `y (1 - eps) + eps / 2` and its
    /// gradient, in f64.
    fn bce_reference(x: &[f32], labels: &[u8], p: f64, eps: f64) -> (f64, Vec<f64>) {
        let b = x.len() as f64;
        let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut loss = 0.0;
        let mut grad = Vec::new();
        for (&x, &y) in x.iter().zip(labels) {
            let (x, t) = (f64::from(x), f64::from(y) * (1.0 - eps) + eps / 2.0);
            loss += (p * t * softplus(-x) + (1.0 - t) * softplus(x)) / b;
            grad.push(((1.0 - t + p * t) * sigmoid(x) - p * t) / b);
        }
        (loss, grad)
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(g) - w).abs() <= tol * w.abs().max(1.0),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    const X3: [f32; 12] = [
        0.3, -1.2, 2.5, 4.0, 0.1, -0.7, -2.2, 1.9, 0.0, 0.5, 0.5, -3.1,
    ];

    #[test]
    fn defaults_are_bit_identical_to_the_plain_losses() {
        let x = [0.7f32, -2.3, 0.0, 5.5, -0.4];
        let y = [1u8, 0, 1, 0, 0];
        let (loss, grad) = run(&Loss::new(&classes(2), None, 0.0).unwrap(), &x, 1, &y);
        let v = Var::from_vec(x.to_vec(), x.len(), &Device::Cpu).unwrap();
        let t: Vec<f32> = y.iter().map(|&y| f32::from(y)).collect();
        let t = Tensor::from_vec(t, y.len(), &Device::Cpu).unwrap();
        let want = ops::bce_with_logits(v.as_tensor(), &t).unwrap();
        let want_grad = want.backward().unwrap();
        let want_grad = want_grad
            .get(v.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(loss.to_bits(), want.to_scalar::<f32>().unwrap().to_bits());
        assert_eq!(bits(&grad), bits(&want_grad));
        // And that is the notebook's BCE.
        let (ref_loss, ref_grad) = bce_reference(&x, &y, 1.0, 0.0);
        assert_close("binary loss", &[loss], &[ref_loss], 1e-6);
        assert_close("binary grad", &grad, &ref_grad, 1e-6);

        let y3 = [2u8, 0, 1, 1];
        let (loss, grad) = run(&Loss::new(&classes(3), None, 0.0).unwrap(), &X3, 3, &y3);
        let v = Var::from_vec(X3.to_vec(), (4, 3), &Device::Cpu).unwrap();
        let want = ops::cross_entropy(v.as_tensor(), &ops::one_hot(&y3, 3, &Device::Cpu).unwrap())
            .unwrap();
        let want_grad = want.backward().unwrap();
        let want_grad = want_grad.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        assert_eq!(loss.to_bits(), want.to_scalar::<f32>().unwrap().to_bits());
        assert_eq!(bits(&grad), bits(&want_grad.to_vec1::<f32>().unwrap()));
        let (ref_loss, ref_grad) = ce_reference(&X3, 3, &y3, &[1.0; 3], 0.0);
        assert_close("3-class loss", &[loss], &[ref_loss], 1e-6);
        assert_close("3-class grad", &grad, &ref_grad, 1e-6);
    }

    #[test]
    fn weighted_smoothed_cross_entropy_with_a_class_absent_matches_pytorch_formula() {
        // Class 1 is not in the batch: its weight enters only through the smoothing term.
        let y = [0u8, 2, 2, 0];
        let w = [0.5, 3.0, 2.0];
        for eps in [0.0, 0.2] {
            let loss = Loss::new(&classes(3), Some(w.to_vec()), eps).unwrap();
            let (l, g) = run(&loss, &X3, 3, &y);
            let (want, want_grad) = ce_reference(&X3, 3, &y, &w, eps);
            assert_close(&format!("loss eps {eps}"), &[l], &[want], 1e-6);
            assert_close(&format!("grad eps {eps}"), &g, &want_grad, 1e-6);
        }
        // Worked by hand for eps 0: sum_i w_{y_i} l_i / sum_i w_{y_i}, denominator 5.
        let (l, _) = run(
            &Loss::new(&classes(3), Some(w.to_vec()), 0.0).unwrap(),
            &X3,
            3,
            &y,
        );
        let nll = |i: usize, y: usize| {
            let row = &X3[i * 3..i * 3 + 3];
            let lse = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            lse - f64::from(row[y])
        };
        let want = (0.5 * nll(0, 0) + 2.0 * nll(1, 2) + 2.0 * nll(2, 2) + 0.5 * nll(3, 0)) / 5.0;
        assert_close("hand-worked", &[l], &[want], 1e-6);
        // Without smoothing the absent class's weight has no effect at all.
        let (l2, g2) = run(
            &Loss::new(&classes(3), Some(vec![0.5, 100.0, 2.0]), 0.0).unwrap(),
            &X3,
            3,
            &y,
        );
        let (l1, g1) = run(
            &Loss::new(&classes(3), Some(w.to_vec()), 0.0).unwrap(),
            &X3,
            3,
            &y,
        );
        assert_eq!(l1.to_bits(), l2.to_bits());
        assert_eq!(bits(&g1), bits(&g2));
        // With it, it does.
        let (l3, _) = run(
            &Loss::new(&classes(3), Some(vec![0.5, 100.0, 2.0]), 0.2).unwrap(),
            &X3,
            3,
            &y,
        );
        let (l4, _) = run(
            &Loss::new(&classes(3), Some(w.to_vec()), 0.2).unwrap(),
            &X3,
            3,
            &y,
        );
        assert!(l3 > l4 + 1.0, "{l3} vs {l4}");
    }

    #[test]
    fn smoothing_without_weights_is_the_mean_over_smoothed_targets() {
        let y = [2u8, 0, 1, 1];
        let (l, g) = run(&Loss::new(&classes(3), None, 0.1).unwrap(), &X3, 3, &y);
        let (want, want_grad) = ce_reference(&X3, 3, &y, &[1.0; 3], 0.1);
        assert_close("loss", &[l], &[want], 1e-6);
        assert_close("grad", &g, &want_grad, 1e-6);
        // The same as plain cross-entropy against the smoothed rows.
        let t: Vec<f32> = y
            .iter()
            .flat_map(|&y| {
                (0..3).map(move |k| {
                    if k == usize::from(y) {
                        0.9 + 0.1 / 3.0
                    } else {
                        0.1 / 3.0
                    }
                })
            })
            .collect();
        let x = Tensor::from_vec(X3.to_vec(), (4, 3), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(t, (4, 3), &Device::Cpu).unwrap();
        let plain = ops::cross_entropy(&x, &t)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((plain - l).abs() < 1e-6, "{plain} vs {l}");
    }

    #[test]
    fn binary_pos_weight_and_smoothing_match_pytorch_formula() {
        // x = 0 is where relu and abs choose a branch; +-100 would overflow a naive form.
        let x = [0.7f32, -2.3, 0.0, 5.5, -0.4, 30.0, -30.0, 100.0, -100.0];
        let y = [1u8, 0, 1, 0, 0, 1, 1, 0, 1];
        let w = balanced_class_weights(&[600, 100]).unwrap();
        for (weights, eps) in [(None, 0.1), (Some(w.clone()), 0.0), (Some(w.clone()), 0.1)] {
            let loss = Loss::new(&classes(2), weights.clone(), eps).unwrap();
            let p = loss.pos_weight().unwrap_or(1.0);
            assert_eq!(weights.is_some(), loss.pos_weight().is_some());
            let (l, g) = run(&loss, &x, 1, &y);
            let (want, want_grad) = bce_reference(&x, &y, p, eps);
            assert!(l.is_finite() && g.iter().all(|v| v.is_finite()));
            assert_close(&format!("loss {weights:?} {eps}"), &[l], &[want], 1e-6);
            assert_close(&format!("grad {weights:?} {eps}"), &g, &want_grad, 1e-6);
        }
        assert!(
            (Loss::new(&classes(2), Some(w), 0.0)
                .unwrap()
                .pos_weight()
                .unwrap()
                - 6.0)
                .abs()
                < 1e-12
        );
    }

    /// The module docs' claim: binary `pos_weight = w_1 / w_0` is the 2-class weighted softmax
    /// cross-entropy on logits `[0, x]`, rescaled by `sum_i w_{y_i} / (b w_0)`, smoothing
    /// included.
    #[test]
    fn binary_pos_weight_is_two_class_weighted_cross_entropy_rescaled() {
        let x = [0.7f32, -2.3, 0.0, 5.5, -0.4];
        let y = [1u8, 0, 1, 0, 0];
        let w = [0.75, 2.5];
        let two: Vec<f32> = x.iter().flat_map(|&v| [0.0, v]).collect();
        let two = Tensor::from_vec(two, (5, 2), &Device::Cpu).unwrap();
        for eps in [0.0, 0.3] {
            let (l, _) = run(
                &Loss::new(&classes(2), Some(w.to_vec()), eps).unwrap(),
                &x,
                1,
                &y,
            );
            let ce = ops::weighted_cross_entropy(&two, &y, Some(&w), eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let sum_w: f64 = y.iter().map(|&y| w[usize::from(y)]).sum();
            let scale = sum_w / (5.0 * w[0]);
            assert_close(&format!("eps {eps}"), &[l], &[f64::from(ce) * scale], 1e-6);
        }
    }

    #[test]
    fn bad_options_are_refused() {
        let c3 = classes(3);
        let invalid = |r: Result<Loss>, needle: &str| match r {
            Err(Error::InvalidOption(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected InvalidOption({needle}), got {other:?}"),
        };
        invalid(
            Loss::new(&c3, Some(vec![1.0, 2.0]), 0.0),
            "2 class weights for 3 classes",
        );
        invalid(
            Loss::new(&classes(2), Some(vec![1.0; 3]), 0.0),
            "3 class weights for 2",
        );
        invalid(
            Loss::new(&c3, Some(vec![1.0, -2.0, 1.0]), 0.0),
            "class `c1` has -2",
        );
        invalid(
            Loss::new(&c3, Some(vec![1.0, 1.0, f64::NAN]), 0.0),
            "class `c2` has NaN",
        );
        invalid(
            Loss::new(&c3, Some(vec![0.0, 1.0, 1.0]), 0.0),
            "class `c0` has 0",
        );
        invalid(
            Loss::new(&c3, Some(vec![f64::INFINITY, 1.0, 1.0]), 0.0),
            "has inf",
        );
        for eps in [-0.1, 1.0, 1.5, f64::NAN, f64::INFINITY] {
            invalid(
                Loss::new(&c3, None, eps),
                "label smoothing must be in [0, 1)",
            );
            invalid(
                Loss::new(&classes(2), None, eps),
                "label smoothing must be in [0, 1)",
            );
        }
        assert!(Loss::new(&c3, None, 0.999).is_ok());
        assert!(Loss::new(&c3, Some(vec![1e-9, 1.0, 1e9]), 0.5).is_ok());
    }

    #[test]
    fn labels_and_logits_must_fit_the_classes() {
        let loss = Loss::new(&classes(3), None, 0.0).unwrap();
        let x = Tensor::from_vec(X3.to_vec(), (4, 3), &Device::Cpu).unwrap();
        let err = loss.forward(&x, &[0, 1, 3, 2]).unwrap_err().to_string();
        assert!(err.contains("label 3 with 3 classes"), "{err}");
        assert!(loss.forward(&x, &[0, 1, 2]).is_err());
        let binary = Loss::new(&classes(2), None, 0.0).unwrap();
        assert!(binary.forward(&x, &[0, 1, 1, 0]).is_err());
        let x1 = Tensor::from_vec(vec![0.5f32, -1.0], (2, 1), &Device::Cpu).unwrap();
        let err = binary.forward(&x1, &[0, 2]).unwrap_err().to_string();
        assert!(err.contains("label 2 with 2 classes"), "{err}");
    }

    #[test]
    fn balanced_weights_are_n_over_classes_times_count() {
        let w = balanced_class_weights(&[600, 100]).unwrap();
        assert_eq!(w, vec![700.0 / 1200.0, 3.5]);
        let w = balanced_class_weights(&[5, 5, 5]).unwrap();
        assert_eq!(w, vec![1.0; 3]);
        // Weighted counts are equal: sum_k w_k count_k = n, each class contributing n / N.
        let counts = [1200, 300, 90];
        let w = balanced_class_weights(&counts).unwrap();
        for (c, w) in counts.iter().zip(&w) {
            assert!((*c as f64 * w - 1590.0 / 3.0).abs() < 1e-9);
        }
        match balanced_class_weights(&[3, 4, 0, 1]) {
            Err(Error::InvalidOption(m)) => assert!(m.contains("class 2 has none"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            balanced_class_weights(&[]),
            Err(Error::InvalidOption(_))
        ));
    }
}

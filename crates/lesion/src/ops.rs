//! Tensor operations candle lacks or gets wrong, with PyTorch semantics, that are not
//! kernels (those are in [`crate::kernels`]: ReLU, the max-pool, convolutions, BatchNorm).
//!
//! - [`bce_with_logits`]: mean binary cross-entropy on logits, stable for any logit
//!   (candle's version takes the log of a sigmoid and overflows beyond |logit| ≈ 17);
//! - [`bce_with_logits_pos_weight`]: the same with PyTorch's `pos_weight` on the positive
//!   term;
//! - [`cross_entropy`]: mean softmax cross-entropy against target distributions (N-class
//!   head), with [`one_hot`] targets;
//! - [`weighted_cross_entropy`]: PyTorch's `CrossEntropyLoss(weight, label_smoothing)` on
//!   class indices, with its normalisation by the labels' weights.

use candle_core::Tensor;

/// `targets` in `logits`' shape and dtype: the binary losses take `[b]` or `[b, 1]` targets
/// for `[b, 1]` logits.
fn targets_like(logits: &Tensor, targets: &Tensor, op: &str) -> candle_core::Result<Tensor> {
    let targets = if targets.dims() == logits.dims() {
        targets.clone()
    } else if targets.elem_count() == logits.elem_count() {
        targets.reshape(logits.shape())?
    } else {
        candle_core::bail!(
            "{op}: targets {:?} do not match logits {:?}",
            targets.shape(),
            logits.shape()
        )
    };
    targets.to_dtype(logits.dtype())
}

/// Mean binary cross-entropy with logits, as PyTorch's `BCEWithLogitsLoss()`.
///
/// `logits` is `[b, 1]` (any shape works); `targets` holds the same number of elements
/// (`[b]` or `[b, 1]`, values in `[0, 1]`) and is reshaped to `logits`' shape. Returns a
/// scalar tensor. Computed as `relu(x) - x*t + ln(1 + exp(-|x|))`, which never overflows:
/// `exp(-|x|) <= 1`. The gradient is `(sigmoid(x) - t) / n`, also at `x = 0` (candle's
/// `relu` and `abs` both take the `x >= 0` branch there, which adds up correctly).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let targets = targets_like(logits, targets, "bce_with_logits")?;
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_item = ((logits.relu()? - (logits * &targets)?)? + softplus_tail)?;
    per_item.mean_all()
}

/// Mean binary cross-entropy with logits and a weight on the positive term, as PyTorch's
/// `BCEWithLogitsLoss(pos_weight=[p])`:
/// `mean(-(p * t * log(sigmoid(x)) + (1 - t) * log(1 - sigmoid(x))))`.
///
/// Shapes as [`bce_with_logits`]; `t` may be any value in `[0, 1]` (smoothed labels). Computed
/// as `(1 - t) * x + (1 + (p - 1) * t) * softplus(-x)` with `softplus(-x) = relu(x) - x +
/// ln(1 + exp(-|x|))`, which never overflows (PyTorch's form). The gradient is
/// `((1 - t + p t) * sigmoid(x) - p t) / n`.
pub fn bce_with_logits_pos_weight(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: f64,
) -> candle_core::Result<Tensor> {
    if !(pos_weight.is_finite() && pos_weight > 0.0) {
        candle_core::bail!(
            "bce_with_logits_pos_weight: pos_weight must be positive, got {pos_weight}"
        )
    }
    let targets = targets_like(logits, targets, "bce_with_logits_pos_weight")?;
    // relu(x) - x rather than relu(-x): at x = 0 candle's relu and abs both take the
    // x >= 0 branch, and only this pairing gives softplus(-x)' = -1/2 there.
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let softplus_neg = ((logits.relu()? - logits)? + softplus_tail)?;
    let log_weight = ((&targets * (pos_weight - 1.0))? + 1.0)?;
    let per_item = ((targets.affine(-1.0, 1.0)? * logits)? + (log_weight * softplus_neg)?)?;
    per_item.mean_all()
}

/// Mean cross-entropy of logits `[b, N]` against target distributions `[b, N]` (one-hot rows
/// for plain labels): `mean_b(-sum_k t_bk * log_softmax(x_b)_k)`, as PyTorch's
/// `cross_entropy(x, t)` with probability targets.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if targets.dims() != logits.dims() {
        candle_core::bail!(
            "cross_entropy: targets {:?} do not match logits {:?}",
            targets.shape(),
            logits.shape()
        )
    }
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    (targets.to_dtype(logits.dtype())? * log_p)?
        .sum(candle_core::D::Minus1)?
        .neg()?
        .mean_all()
}

/// PyTorch's `CrossEntropyLoss(weight=w, label_smoothing=eps)` (mean reduction) of logits
/// `[b, N]` against class indices `labels` (`b` of them, each `< N`); `weights` is `w` (N
/// values, `None`: all 1), `label_smoothing` is `eps` in `[0, 1)`. Returns a scalar tensor.
///
/// With `t = (1 - eps) * onehot(y) + eps / N` and `log p = log_softmax(x)`:
///
/// `loss = sum_i sum_k w_k t_ik (-log p_ik) / sum_i w_{y_i}`
///
/// That is PyTorch's `(1 - eps) * nll_loss(log p, y, w) + eps / N * sum_i sum_k w_k (-log
/// p_ik) / sum_i w_{y_i}`: the smoothing term is weighted by each class's own weight but
/// normalised, like the main term, by the weights of the labels present. Without weights
/// the denominator is `b` and the loss is the mean over items of the smoothed-target
/// cross-entropy. The coefficients `w_k t_ik / sum_i w_{y_i}` are computed in f64 and
/// applied in the logits' dtype.
pub fn weighted_cross_entropy(
    logits: &Tensor,
    labels: &[u8],
    weights: Option<&[f64]>,
    label_smoothing: f64,
) -> candle_core::Result<Tensor> {
    let (b, n) = logits.dims2()?;
    if labels.len() != b {
        candle_core::bail!(
            "weighted_cross_entropy: {} labels for {b} rows of logits",
            labels.len()
        )
    }
    if let Some(&y) = labels.iter().find(|&&y| usize::from(y) >= n) {
        candle_core::bail!("weighted_cross_entropy: label {y} with {n} logits per row")
    }
    if weights.is_some_and(|w| w.len() != n) {
        candle_core::bail!(
            "weighted_cross_entropy: {} class weights for {n} classes",
            weights.map_or(0, <[f64]>::len)
        )
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        candle_core::bail!(
            "weighted_cross_entropy: label smoothing {label_smoothing} is not in [0, 1)"
        )
    }
    let weight = |k: usize| weights.map_or(1.0, |w| w[k]);
    let denominator: f64 = labels.iter().map(|&y| weight(usize::from(y))).sum();
    let off = label_smoothing / n as f64;
    let on = 1.0 - label_smoothing + off;
    let mut coeffs = Vec::with_capacity(b * n);
    for &y in labels {
        for k in 0..n {
            let t = if k == usize::from(y) { on } else { off };
            coeffs.push((weight(k) * t / denominator) as f32);
        }
    }
    let coeffs = Tensor::from_vec(coeffs, (b, n), logits.device())?.to_dtype(logits.dtype())?;
    let log_p = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    (coeffs * log_p)?.sum_all()?.neg()
}

/// One-hot rows `[b, n]` (f32) of class indices, on `device`.
pub fn one_hot(
    labels: &[u8],
    n: usize,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let mut t = vec![0f32; labels.len() * n];
    for (row, &y) in labels.iter().enumerate() {
        t[row * n + usize::from(y)] = 1.0;
    }
    Tensor::from_vec(t, (labels.len(), n), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn bce(x: &[f32], t: &[f32]) -> (f32, Vec<f32>) {
        let v = Var::from_vec(x.to_vec(), (x.len(), 1), &Device::Cpu).unwrap();
        let tt = Tensor::from_vec(t.to_vec(), t.len(), &Device::Cpu).unwrap();
        let loss = bce_with_logits(v.as_tensor(), &tt).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
        (
            loss.to_scalar::<f32>().unwrap(),
            g.to_vec1::<f32>().unwrap(),
        )
    }

    #[test]
    fn bce_with_extreme_logits_is_finite_and_exact() {
        let cases: [(f32, f32, f32); 6] = [
            (100.0, 0.0, 100.0),
            (100.0, 1.0, 0.0),
            (-100.0, 1.0, 100.0),
            (-100.0, 0.0, 0.0),
            (17.0, 1.0, 4.139_938_6e-8),
            (20.0, 0.0, 20.0),
        ];
        for (x, t, want) in cases {
            let (loss, _) = bce(&[x], &[t]);
            assert!(loss.is_finite(), "logit {x} target {t}: {loss}");
            assert!(
                (loss - want).abs() <= 1e-6 * want.abs().max(1.0),
                "logit {x} target {t}: {loss} vs {want}"
            );
        }
        // Mean over items, against the f64 formula.
        let x = [0.3f32, -2.0, 5.0, 0.0];
        let t = [1.0f32, 0.0, 0.0, 1.0];
        let want: f64 = x
            .iter()
            .zip(&t)
            .map(|(&x, &t)| {
                let (x, t) = (x as f64, t as f64);
                x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
            })
            .sum::<f64>()
            / 4.0;
        let (loss, _) = bce(&x, &t);
        assert!((loss as f64 - want).abs() < 1e-6, "{loss} vs {want}");
    }

    #[test]
    fn bce_gradient_is_sigmoid_minus_target_over_n() {
        let x = [100.0f32, -100.0, 0.0, 0.7, -3.2, 17.0];
        let t = [0.0f32, 1.0, 1.0, 0.0, 1.0, 1.0];
        let (_, g) = bce(&x, &t);
        let n = x.len() as f64;
        for i in 0..x.len() {
            let s = 1.0 / (1.0 + (-(x[i] as f64)).exp());
            let want = (s - t[i] as f64) / n;
            assert!(g[i].is_finite());
            assert!(
                (g[i] as f64 - want).abs() < 1e-7,
                "x {}: {} vs {want}",
                x[i],
                g[i]
            );
        }
    }
}

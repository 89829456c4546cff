//! Tensor operations candle lacks or gets wrong, with PyTorch semantics, that are not
//! kernels (those are in [`crate::kernels`]: ReLU, the max-pool, convolutions, BatchNorm).
//!
//! - [`bce_with_logits`]: mean binary cross-entropy on logits, stable for any logit
//!   (candle's version takes the log of a sigmoid and overflows beyond |logit| ≈ 17);
//! - [`cross_entropy`]: mean softmax cross-entropy against target distributions (N-class
//!   head), with [`one_hot`] targets.

use candle_core::Tensor;

/// Mean binary cross-entropy with logits, as PyTorch's `BCEWithLogitsLoss()`.
///
/// `logits` is `[b, 1]` (any shape works); `targets` holds the same number of elements
/// (`[b]` or `[b, 1]`, values in `[0, 1]`) and is reshaped to `logits`' shape. Returns a
/// scalar tensor. Computed as `relu(x) - x*t + ln(1 + exp(-|x|))`, which never overflows:
/// `exp(-|x|) <= 1`. The gradient is `(sigmoid(x) - t) / n`, also at `x = 0` (candle's
/// `relu` and `abs` both take the `x >= 0` branch there, which adds up correctly).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let targets = if targets.dims() == logits.dims() {
        targets.clone()
    } else if targets.elem_count() == logits.elem_count() {
        targets.reshape(logits.shape())?
    } else {
        candle_core::bail!(
            "bce_with_logits: targets {:?} do not match logits {:?}",
            targets.shape(),
            logits.shape()
        )
    };
    let targets = targets.to_dtype(logits.dtype())?;
    let softplus_tail = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per_item = ((logits.relu()? - (logits * &targets)?)? + softplus_tail)?;
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

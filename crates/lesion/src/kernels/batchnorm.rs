//! BatchNorm2d: a fused training op with a closed-form backward, and the folded eval op
//! ([`Affine`], which is also the eval-mode convolution's epilogue in `conv.rs`).
//!
//! `x` and the output are `[n, c, h, w]` NCHW f32; `gamma`, `beta` and the statistics are
//! `[c]`. Channel `ch` of sample `b` is the contiguous plane starting at `(b * c + ch) * h * w`.
//!
//! Training forward, per channel over the `m = n * h * w` values: mean and biased variance
//! (plane sums in f32 lanes, accumulated in f64; the variance from deviations about the
//! mean, so no cancellation), then `y = (x - mean) * gamma / sqrt(var + eps) + beta`,
//! optionally followed by ReLU. Backward with `g` the output gradient (zero where a fused ReLU
//! output is 0) and `xhat = (x - mean) * invstd`:
//! `dbeta = sum g`, `dgamma = sum g * xhat`,
//! `dx = gamma * invstd * (g - dbeta / m - xhat * dgamma / m)`.
//!
//! Every pass runs per plane, in parallel over planes (or over channels for the sums), so
//! each statistic is summed in an order fixed by the shapes.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::{self, map_plane};
use super::parallel::planes_per_task;
use super::storage::{contiguous, f32_slice, f32_slices, overwritten};
use super::switch::applies;

/// f32 accumulators per reduction: one AVX-512 register.
const LANES: usize = 16;

/// Per-channel batch statistics of one training forward, `[c]` f32, detached.
#[derive(Debug, Clone)]
pub struct BatchStats {
    pub mean: Tensor,
    /// Biased (divided by the count), the one that normalises.
    pub var: Tensor,
}

/// What the training forward keeps for its backward.
#[derive(Debug)]
struct Saved {
    mean: Vec<f32>,
    var: Vec<f32>,
    invstd: Vec<f32>,
}

/// Sum of `f(v)` over a plane, in `LANES` f32 accumulators (vectorisable) summed in f64.
#[inline]
fn lane_sum(p: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = p.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..LANES {
            acc[i] += f(ch[i]);
        }
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + rest.iter().map(|&v| f(v) as f64).sum::<f64>()
}

/// `(n, c, h * w)` of an NCHW tensor.
type Dims = (usize, usize, usize);

/// The [`Dims`] of a 4-D layout.
fn dims(l: &Layout) -> candle_core::Result<Dims> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((n, c, h * w))
}

/// The planes of channel `ch`.
fn planes(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw])
}

/// Mean and biased variance of every channel, in parallel over channels.
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    let m = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = planes(x, n, c, hw, ch)
                .map(|p| lane_sum(p, |v| v))
                .sum::<f64>()
                / m;
            let mf = mean as f32;
            let sq = planes(x, n, c, hw, ch)
                .map(|p| lane_sum(p, |v| (v - mf) * (v - mf)))
                .sum::<f64>();
            // Deviations were taken about the f32-rounded mean; correct to the exact one.
            let d = mean - mf as f64;
            (mean, (sq / m - d * d).max(0.0))
        })
        .collect()
}

/// `f(plane index, output plane, input plane)` over the `hw`-element planes of `out` and
/// `x` (`None`: `out` in place), in parallel over planes.
fn per_plane(
    out: &mut [f32],
    x: Option<&[f32]>,
    hw: usize,
    f: impl Fn(usize, &mut [f32], Option<&[f32]>) + Sync + Send,
) {
    if hw == 0 {
        return;
    }
    out.par_chunks_mut(hw)
        .with_min_len(planes_per_task(hw))
        .enumerate()
        .for_each(|(p, o)| f(p, o, x.map(|x| &x[p * hw..(p + 1) * hw])));
}

/// `out = (x - mean[ch]) * scale[ch] + shift[ch]`, ReLU'd when `relu`, per plane of `hw`
/// elements (`x` `None`: `out` in place).
fn normalise_into(
    out: &mut [f32],
    x: Option<&[f32]>,
    (hw, c): (usize, usize),
    mean: &[f32],
    scale: &[f32],
    shift: &[f32],
    relu: bool,
) {
    per_plane(out, x, hw, |p, o, xp| {
        let ch = p % c;
        let (m, a, b) = (mean[ch], scale[ch], shift[ch]);
        map_plane(o, xp, relu, |v| (v - m) * a + b);
    });
}

/// Per-channel statistics of `x` and the normalisation's `(saved, scale)`: what both the
/// differentiable and the in-place training BatchNorm compute before normalising.
fn batch_statistics(x: &[f32], (n, c, hw): Dims, gamma: &[f32], eps: f64) -> (Saved, Vec<f32>) {
    let stats = channel_stats(x, n, c, hw);
    let invstd: Vec<f64> = stats.iter().map(|&(_, v)| 1.0 / (v + eps).sqrt()).collect();
    let saved = Saved {
        mean: stats.iter().map(|s| s.0 as f32).collect(),
        var: stats.iter().map(|s| s.1 as f32).collect(),
        invstd: invstd.iter().map(|&v| v as f32).collect(),
    };
    let scale = gamma
        .iter()
        .zip(&invstd)
        .map(|(&g, &i)| (g as f64 * i) as f32)
        .collect();
    (saved, scale)
}

/// Training BatchNorm `(x, gamma, beta) -> y`; keeps the statistics in `saved`.
struct BnTrain {
    eps: f64,
    relu: bool,
    saved: Arc<OnceLock<Arc<Saved>>>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "lesion_batch_norm_train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let [x, gamma, beta] = f32_slices([(s1, l1), (s2, l2), (s3, l3)], self.name())?;
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("{}: gamma/beta must have {c} entries", self.name());
        }
        let (saved, scale) = batch_statistics(x, (n, c, hw), gamma, self.eps);
        let y = overwritten(x.len(), |y| {
            normalise_into(y, Some(x), (hw, c), &saved.mean, &scale, beta, self.relu)
        });
        if self.saved.set(Arc::new(saved)).is_err() {
            candle_core::bail!("{}: op applied twice", self.name());
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(saved) = self.saved.get().cloned() else {
            candle_core::bail!("{}: backward before forward", self.name());
        };
        let dy = contiguous(grad)?;
        let sums_f64 = Arc::new(OnceLock::new());
        let sums = x.apply_op3_no_bwd(
            &dy,
            res,
            &BnGradSums {
                saved: saved.clone(),
                relu: self.relu,
                out: sums_f64.clone(),
            },
        )?;
        let dx = if x.track_op() {
            let Some(sums) = sums_f64.get() else {
                candle_core::bail!("{}: gradient sums missing", self.name());
            };
            let gamma_v = gamma.to_vec1::<f32>()?;
            let op = BnGradInput::new(&saved, &gamma_v, sums, x.elem_count(), self.relu);
            Some(x.apply_op3_no_bwd(&dy, res, &op)?)
        } else {
            None
        };
        let dgamma = gamma.track_op().then(|| sums.get(1)).transpose()?;
        let dbeta = beta.track_op().then(|| sums.get(0)).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

/// The `(n, c, h * w)` and data of a backward op's arguments `(x, dy, y)`, which must have
/// the same length and `channels` channels.
fn backward_args<'a>(
    args: [(&'a CpuStorage, &Layout); 3],
    channels: usize,
    op: &'static str,
) -> candle_core::Result<(Dims, [&'a [f32]; 3])> {
    let dims = dims(args[0].1)?;
    let [x, dy, y] = f32_slices(args, op)?;
    if dy.len() != x.len() || y.len() != x.len() || channels != dims.1 {
        candle_core::bail!("{op}: shapes do not match");
    }
    Ok((dims, [x, dy, y]))
}

/// Output gradient masked by a fused ReLU: zero where the output `y` is not positive.
#[inline]
fn masked(g: f32, y: f32, relu: bool) -> f32 {
    if !relu || y > 0.0 {
        g
    } else {
        0.0
    }
}

/// `(x, dy, y) -> [2, c]`: per channel `sum g` and `sum g * xhat` (`dbeta`, `dgamma`).
struct BnGradSums {
    saved: Arc<Saved>,
    relu: bool,
    /// The same sums in f64, for the input gradient's coefficients.
    out: Arc<OnceLock<Vec<(f64, f64)>>>,
}

impl CustomOp3 for BnGradSums {
    fn name(&self) -> &'static str {
        "lesion_batch_norm_grad_sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let ((n, c, hw), [x, dy, y]) = backward_args(args, self.saved.mean.len(), self.name())?;
        let relu = self.relu;
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let m = self.saved.mean[ch];
                let (mut sg, mut sgx) = (0f64, 0f64);
                for b in 0..n {
                    let r = (b * c + ch) * hw..(b * c + ch + 1) * hw;
                    let (xp, gp, yp) = (&x[r.clone()], &dy[r.clone()], &y[r]);
                    let mut acc_g = [0f32; LANES];
                    let mut acc_gx = [0f32; LANES];
                    let mut i = 0;
                    while i + LANES <= hw {
                        for l in 0..LANES {
                            let g = masked(gp[i + l], yp[i + l], relu);
                            acc_g[l] += g;
                            acc_gx[l] += g * (xp[i + l] - m);
                        }
                        i += LANES;
                    }
                    let (mut pg, mut pgx) = (0f64, 0f64);
                    for l in 0..LANES {
                        pg += acc_g[l] as f64;
                        pgx += acc_gx[l] as f64;
                    }
                    for j in i..hw {
                        let g = masked(gp[j], yp[j], relu) as f64;
                        pg += g;
                        pgx += g * (xp[j] - m) as f64;
                    }
                    sg += pg;
                    sgx += pgx;
                }
                (sg, sgx * self.saved.invstd[ch] as f64)
            })
            .collect();
        let mut flat = Vec::with_capacity(2 * c);
        flat.extend(sums.iter().map(|s| s.0 as f32));
        flat.extend(sums.iter().map(|s| s.1 as f32));
        // Only this op's own forward sets it.
        let _ = self.out.set(sums);
        Ok((CpuStorage::F32(flat), Shape::from((2, c))))
    }
}

/// `(x, dy, y) -> dx` with per-channel coefficients: `dx = g * a + (x - mean) * d + b`.
struct BnGradInput {
    mean: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    d: Vec<f32>,
    relu: bool,
}

impl BnGradInput {
    fn new(saved: &Saved, gamma: &[f32], sums: &[(f64, f64)], len: usize, relu: bool) -> Self {
        let c = saved.mean.len();
        let m = (len / c.max(1)) as f64;
        let (mut a, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for ch in 0..c {
            let inv = saved.invstd[ch] as f64;
            let ac = gamma[ch] as f64 * inv;
            let (sg, sgx) = sums[ch];
            a.push(ac as f32);
            b.push((-ac * sg / m) as f32);
            d.push((-ac * inv * sgx / m) as f32);
        }
        Self {
            mean: saved.mean.clone(),
            a,
            b,
            d,
            relu,
        }
    }
}

impl CustomOp3 for BnGradInput {
    fn name(&self) -> &'static str {
        "lesion_batch_norm_grad_input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let args = [(s1, l1), (s2, l2), (s3, l3)];
        let ((_, c, hw), [x, dy, y]) = backward_args(args, self.mean.len(), self.name())?;
        let relu = self.relu;
        let dx = overwritten(x.len(), |dx| {
            per_plane(dx, None, hw, |p, out, _| {
                let ch = p % c;
                let (m, a, b, d) = (self.mean[ch], self.a[ch], self.b[ch], self.d[ch]);
                let r = p * hw..(p + 1) * hw;
                let (xp, gp, yp) = (&x[r.clone()], &dy[r.clone()], &y[r]);
                for i in 0..hw {
                    out[i] = masked(gp[i], yp[i], relu) * a + (xp[i] - m) * d + b;
                }
            });
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Training-mode BatchNorm of `x` `[n, c, h, w]` with batch statistics, then ReLU when
/// `relu`: `y = (x - mean) / sqrt(var + eps) * gamma + beta`, mean and biased variance over
/// `(n, h, w)` per channel. Differentiable in `x`, `gamma` and `beta` (each that tracks).
/// Returns `y` and the batch statistics, for the caller's running averages.
///
/// CPU f32: one fused op (statistics, normalisation and ReLU; backward in two passes).
/// Otherwise composed from candle ops.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let (_, c, _, _) = x.dims4()?;
    if applies(x) && gamma.dtype() == DType::F32 && beta.dtype() == DType::F32 {
        let saved = Arc::new(OnceLock::new());
        let op = BnTrain {
            eps,
            relu,
            saved: saved.clone(),
        };
        let y = contiguous(x)?.apply_op3(&contiguous(gamma)?, &contiguous(beta)?, op)?;
        let Some(s) = saved.get() else {
            candle_core::bail!("batch_norm_train: statistics missing");
        };
        let stats = BatchStats {
            mean: Tensor::from_slice(&s.mean, c, x.device())?,
            var: Tensor::from_slice(&s.var, c, x.device())?,
        };
        return Ok((y, stats));
    }
    let (n, c, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    // [n, c, h*w]: reductions over the last (contiguous) axis, then the batch.
    let xr = x.reshape((n, c, h * w))?;
    let mean = (xr.sum_keepdim(2)?.sum_keepdim(0)? / count)?;
    let centred = xr.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(2)?.sum_keepdim(0)? / count)?;
    let scale = ((&var + eps)?.sqrt()?.recip()? * gamma.reshape((1, c, 1))?)?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape((1, c, 1))?)?
        .reshape((n, c, h, w))?;
    let y = if relu { elementwise::relu(&y)? } else { y };
    let stats = BatchStats {
        mean: mean.detach().flatten_all()?,
        var: var.detach().flatten_all()?,
    };
    Ok((y, stats))
}

/// [`batch_norm_train`] without gradients, overwriting `x` (which the caller gives up: any
/// other handle on its storage sees the normalised values). For frozen layers in train mode,
/// whose BatchNorm still uses batch statistics: at batch 128 the stem's activations are 411
/// MB, and normalising in place halves what the frozen forward holds at its peak.
///
/// CPU f32 with a contiguous `x`: in place. Otherwise [`batch_norm_train`] on detached inputs.
pub fn batch_norm_train_in_place(
    x: Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let (_, c, _, _) = x.dims4()?;
    let f32s = gamma.dtype() == DType::F32 && beta.dtype() == DType::F32;
    if !(applies(&x) && x.is_contiguous() && f32s) {
        return batch_norm_train(&x.detach(), &gamma.detach(), &beta.detach(), eps, relu);
    }
    let op = BnTrainInPlace {
        eps,
        relu,
        gamma: gamma.to_vec1()?,
        beta: beta.to_vec1()?,
        saved: OnceLock::new(),
    };
    let x = x.detach();
    x.inplace_op1(&op)?;
    let Some(s) = op.saved.get() else {
        candle_core::bail!("batch_norm_train_in_place: statistics missing");
    };
    let stats = BatchStats {
        mean: Tensor::from_slice(&s.mean, c, x.device())?,
        var: Tensor::from_slice(&s.var, c, x.device())?,
    };
    Ok((x, stats))
}

struct BnTrainInPlace {
    eps: f64,
    relu: bool,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    saved: OnceLock<Saved>,
}

impl InplaceOp1 for BnTrainInPlace {
    fn name(&self) -> &'static str {
        "lesion_batch_norm_train_in_place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (n, c, hw) = dims(l)?;
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("{}: expected f32", self.name());
        };
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{}: input must be contiguous", self.name());
        };
        if self.gamma.len() != c || self.beta.len() != c {
            candle_core::bail!("{}: gamma/beta must have {c} entries", self.name());
        }
        let x = &mut data[start..end];
        let (saved, scale) = batch_statistics(x, (n, c, hw), &self.gamma, self.eps);
        normalise_into(x, None, (hw, c), &saved.mean, &scale, &self.beta, self.relu);
        if self.saved.set(saved).is_err() {
            candle_core::bail!("{}: op applied twice", self.name());
        }
        Ok(())
    }
}

/// Per-output-channel `y * scale + shift`, then ReLU when `relu`: an eval-mode BatchNorm with
/// its running statistics folded in. `scale` and `shift` are `[c]`.
#[derive(Debug, Clone)]
pub(super) struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Affine {
    /// From `[c]` tensors of any float dtype.
    pub(super) fn new(scale: &Tensor, shift: &Tensor, relu: bool) -> candle_core::Result<Self> {
        Ok(Self {
            scale: scale.to_dtype(DType::F32)?.to_vec1()?,
            shift: shift.to_dtype(DType::F32)?.to_vec1()?,
            relu,
        })
    }

    /// Channels it has scale and shift for.
    pub(super) fn channels(&self) -> Option<usize> {
        (self.scale.len() == self.shift.len()).then_some(self.scale.len())
    }

    /// In place on one sample `y` (`[c, cols]`).
    pub(super) fn apply(&self, y: &mut [f32], cols: usize) {
        self.apply_cols(y, cols, 0..cols);
    }

    /// [`Affine::apply`] to columns `range` of each channel's plane only.
    pub(super) fn apply_cols(&self, y: &mut [f32], cols: usize, range: Range<usize>) {
        for ((plane, &a), &b) in y.chunks_mut(cols).zip(&self.scale).zip(&self.shift) {
            map_plane(&mut plane[range.clone()], None, self.relu, |v| v * a + b);
        }
    }
}

/// [`Affine`] over a whole batch `x` `[n, c, h, w]`: the folded eval-mode BatchNorm.
struct ScaleShift(Affine);

impl CustomOp1 for ScaleShift {
    fn name(&self) -> &'static str {
        "lesion_scale_shift"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l)?;
        let x = f32_slice(s, l, self.name())?;
        if self.0.channels() != Some(c) {
            candle_core::bail!("{}: scale/shift must have {c} entries", self.name());
        }
        let Affine { scale, shift, relu } = &self.0;
        let y = overwritten(x.len(), |y| {
            per_plane(y, Some(x), hw, |p, o, xp| {
                let (a, b) = (scale[p % c], shift[p % c]);
                map_plane(o, xp, *relu, |v| v * a + b);
            })
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// `x * scale[ch] + shift[ch]` for `x` `[n, c, h, w]`, `scale`/`shift` `[c]`, then ReLU when
/// `relu`: eval-mode BatchNorm with its running statistics folded in. A single no-graph pass
/// on CPU f32 when nothing tracks gradients; otherwise differentiable candle ops.
pub fn scale_shift(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let tracked = [x, scale, shift].iter().any(|t| t.track_op());
    if applies(x) && !tracked {
        let op = ScaleShift(Affine::new(scale, shift, relu)?);
        return contiguous(x)?.apply_op1_no_bwd(&op);
    }
    let y = x
        .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
    if relu {
        elementwise::relu(&y)
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{rel_err, tensor};
    use candle_core::Var;

    /// The composed reference, in f64.
    fn reference(x: &Tensor, gamma: &Tensor, beta: &Tensor, relu: bool) -> (Tensor, BatchStats) {
        let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        batch_norm_train(&f(x), &f(gamma), &f(beta), 1e-5, relu).unwrap()
    }

    /// (y, dx, dgamma, dbeta) of `sum(bn(x) * g)`.
    fn run(
        bn: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        g: &Tensor,
    ) -> [Tensor; 4] {
        let (xv, gv, bv) = (
            Var::from_tensor(x).unwrap(),
            Var::from_tensor(gamma).unwrap(),
            Var::from_tensor(beta).unwrap(),
        );
        let y = bn(xv.as_tensor(), gv.as_tensor(), bv.as_tensor());
        let loss = (&y * g.to_dtype(y.dtype()).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let get = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
        [y.clone(), get(&xv), get(&gv), get(&bv)]
    }

    #[test]
    fn train_forward_backward_match_f64_reference() {
        for (i, &(n, c, h, w)) in [(2, 3, 5, 7), (4, 2, 1, 1), (1, 5, 4, 4), (3, 4, 9, 6)]
            .iter()
            .enumerate()
        {
            let i = i as u32;
            // Offset mean so that a naive E[x^2] - E[x]^2 would lose digits.
            let x = tensor(&[n, c, h, w], 40 + i).affine(3.0, 5.0).unwrap();
            let gamma = tensor(&[c], 50 + i);
            let beta = tensor(&[c], 60 + i);
            let g = tensor(&[n, c, h, w], 70 + i);
            for relu in [false, true] {
                let (want_y, want_stats) = reference(&x, &gamma, &beta, relu);
                let (y, stats) = batch_norm_train(&x, &gamma, &beta, 1e-5, relu).unwrap();
                assert_eq!(y.dtype(), DType::F32);
                assert!(rel_err(&y, &want_y) < 1e-5, "y {i} {relu}");
                assert!(rel_err(&stats.mean, &want_stats.mean) < 1e-6);
                assert!(rel_err(&stats.var, &want_stats.var) < 1e-5);

                let ours = run(
                    |x, gm, bt| batch_norm_train(x, gm, bt, 1e-5, relu).unwrap().0,
                    &x,
                    &gamma,
                    &beta,
                    &g,
                );
                let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                let want = run(
                    |x, gm, bt| batch_norm_train(x, gm, bt, 1e-5, relu).unwrap().0,
                    &f(&x),
                    &f(&gamma),
                    &f(&beta),
                    &g,
                );
                for (k, name) in ["y", "dx", "dgamma", "dbeta"].iter().enumerate() {
                    let err = rel_err(&ours[k], &want[k]);
                    assert!(err < 1e-4, "{name} case {i} relu {relu}: {err:e}");
                }
            }
        }
    }

    #[test]
    fn in_place_equals_the_differentiable_op_and_overwrites_its_input() {
        for relu in [false, true] {
            let x = tensor(&[3, 4, 5, 6], 11);
            let (gamma, beta) = (tensor(&[4], 12), tensor(&[4], 13));
            let (want, want_stats) = batch_norm_train(&x, &gamma, &beta, 1e-5, relu).unwrap();
            let owned = x.copy().unwrap();
            let alias = owned.clone();
            let (got, stats) = batch_norm_train_in_place(owned, &gamma, &beta, 1e-5, relu).unwrap();
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(v(&got), v(&want), "relu {relu}");
            assert_eq!(v(&alias), v(&want), "the input's storage holds the result");
            assert_eq!(v(&stats.mean), v(&want_stats.mean));
            assert_eq!(v(&stats.var), v(&want_stats.var));
        }
    }

    #[test]
    fn frozen_gamma_and_beta_get_no_gradient() {
        let x = Var::from_tensor(&tensor(&[2, 3, 4, 4], 1)).unwrap();
        let gamma = tensor(&[3], 2);
        let beta = tensor(&[3], 3);
        let (y, _) = batch_norm_train(x.as_tensor(), &gamma, &beta, 1e-5, true).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
        assert!(grads.get(&gamma).is_none() && grads.get(&beta).is_none());
    }

    #[test]
    fn scale_shift_matches_composition() {
        let x = tensor(&[2, 3, 5, 4], 4);
        let scale = tensor(&[3], 5);
        let shift = tensor(&[3], 6);
        for relu in [false, true] {
            let got = scale_shift(&x, &scale, &shift, relu).unwrap();
            let mut want = x
                .broadcast_mul(&scale.reshape((1, 3, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&shift.reshape((1, 3, 1, 1)).unwrap())
                .unwrap();
            if relu {
                want = want.relu().unwrap();
            }
            assert!(rel_err(&got, &want) < 1e-6);
        }
        // Tracked input: the differentiable path.
        let v = Var::from_tensor(&x).unwrap();
        let y = scale_shift(v.as_tensor(), &scale, &shift, false).unwrap();
        assert!(y.track_op());
    }
}

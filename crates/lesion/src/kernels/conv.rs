//! 2-D convolution (no bias, groups or dilation) as im2col + gemm.
//!
//! Input `x` `[n, c, h, w]`, weight `[o, c, kh, kw]`, output `[n, o, ho, wo]` with
//! `ho = (h + 2 * pad - kh) / stride + 1` (likewise `wo`), all NCHW f32. Per sample, the
//! im2col matrix is `[c * kh * kw, ho * wo]` (row `(ci * kh + ky) * kw + kx`, column
//! `oy * wo + ox`, zeros where the window reads padding), so that the weight, read as
//! `[o, c * kh * kw]`, multiplies it into the sample's output `[o, ho * wo]`:
//! - forward: `y_b = W * col(x_b)`;
//! - input gradient: `dx_b = col2im(W^T * dy_b)` (col2im sums each column entry back into the
//!   input element it was copied from);
//! - weight gradient: `dW = sum_b dy_b * col(x_b)^T`, summed over fixed groups of samples
//!   (each group in order, then the groups in order), so the result is independent of the
//!   thread count.
//!
//! A 1x1 stride-1 unpadded convolution's im2col is the sample itself, so it is a plain gemm.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{applies, contiguous, f32_slice, split_even, sgemm, with_scratch, Mat};

/// Number of sample groups the weight gradient is split into (at most one per sample): enough
/// to keep a few threads busy, few enough that the per-group partial gradients stay small.
const WGRAD_GROUPS: usize = 8;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, ci, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        if c != ci {
            candle_core::bail!("conv2d: input has {c} channels, weight expects {ci}");
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be positive");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} larger than padded input {}x{}",
                h + 2 * pad,
                w + 2 * pad
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix (the gemm's reduction length).
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the im2col matrix (output positions per channel).
    fn cols(&self) -> usize {
        self.ho * self.wo
    }

    fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }

    fn y_len(&self) -> usize {
        self.o * self.cols()
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.o, self.ho, self.wo))
    }

    /// Whether gemm should parallelise itself: too few samples to keep the pool busy.
    fn inner_parallel(&self, tasks: usize) -> bool {
        tasks < rayon::current_num_threads()
    }
}

/// Output positions `0..out` whose input index `pos * stride + k_off - pad` lies in `0..len`.
fn valid(out: usize, stride: usize, k_off: usize, pad: usize, len: usize) -> Range<usize> {
    let lo = pad.saturating_sub(k_off).div_ceil(stride).min(out);
    let hi = (len + pad).saturating_sub(k_off).div_ceil(stride).min(out);
    lo..hi.max(lo)
}

/// Calls `f(row, ci, ky, kx, oys, oxs)` for every im2col row, where `oys` and `oxs` are the
/// output rows and columns whose input position is inside the image (the rest read padding).
fn for_each_row(g: &Geom, mut f: impl FnMut(usize, usize, usize, usize, Range<usize>, Range<usize>)) {
    for ci in 0..g.c {
        for ky in 0..g.kh {
            let oys = valid(g.ho, g.stride, ky, g.pad, g.h);
            for kx in 0..g.kw {
                let oxs = valid(g.wo, g.stride, kx, g.pad, g.w);
                f((ci * g.kh + ky) * g.kw + kx, ci, ky, kx, oys.clone(), oxs);
            }
        }
    }
}

/// Fills `col` (`[k, cols]`) with the im2col matrix of one sample `x` (`[c, h, w]`).
fn im2col(x: &[f32], g: &Geom, col: &mut [f32]) {
    let (cols, wo, w, hw, s) = (g.cols(), g.wo, g.w, g.h * g.w, g.stride);
    for_each_row(g, |row, ci, ky, kx, oys, oxs| {
        let r = &mut col[row * cols..(row + 1) * cols];
        r[..oys.start * wo].fill(0.0);
        r[oys.end * wo..].fill(0.0);
        let plane = &x[ci * hw..(ci + 1) * hw];
        for oy in oys {
            let out = &mut r[oy * wo..(oy + 1) * wo];
            out[..oxs.start].fill(0.0);
            out[oxs.end..].fill(0.0);
            if oxs.is_empty() {
                continue;
            }
            let iy = oy * s + ky - g.pad;
            let src = &plane[iy * w..(iy + 1) * w];
            let ix0 = oxs.start * s + kx - g.pad;
            if s == 1 {
                out[oxs.clone()].copy_from_slice(&src[ix0..ix0 + oxs.len()]);
            } else {
                for (o, ix) in out[oxs.clone()].iter_mut().zip((ix0..).step_by(s)) {
                    *o = src[ix];
                }
            }
        }
    });
}

/// Adds the im2col-shaped gradient `dcol` (`[k, cols]`) into one sample's input gradient
/// `dx` (`[c, h, w]`).
fn col2im(dcol: &[f32], g: &Geom, dx: &mut [f32]) {
    let (cols, wo, w, hw, s) = (g.cols(), g.wo, g.w, g.h * g.w, g.stride);
    for_each_row(g, |row, ci, ky, kx, oys, oxs| {
        if oxs.is_empty() {
            return;
        }
        let r = &dcol[row * cols..(row + 1) * cols];
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for oy in oys {
            let src = &r[oy * wo + oxs.start..oy * wo + oxs.end];
            let iy = oy * s + ky - g.pad;
            let dst = &mut plane[iy * w..(iy + 1) * w];
            let ix0 = oxs.start * s + kx - g.pad;
            if s == 1 {
                for (d, v) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (v, ix) in src.iter().zip((ix0..).step_by(s)) {
                    dst[ix] += v;
                }
            }
        }
    });
}

/// Per-output-channel `y * scale + shift`, then ReLU when `relu`: a BatchNorm folded into the
/// convolution, applied while the sample's output is still in cache.
#[derive(Debug, Clone)]
struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl Affine {
    fn apply(&self, y: &mut [f32], cols: usize) {
        for ((plane, &a), &b) in y.chunks_mut(cols).zip(&self.scale).zip(&self.shift) {
            if self.relu {
                for v in plane {
                    let t = *v * a + b;
                    // `t <= 0` is false for NaN, which propagates as in PyTorch.
                    *v = if t <= 0.0 { 0.0 } else { t };
                }
            } else {
                for v in plane {
                    *v = *v * a + b;
                }
            }
        }
    }
}

/// Runs `f(b, out_b)` for every sample, in parallel unless gemm parallelises instead.
fn per_sample(
    out: &mut [f32],
    per: usize,
    sequential: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if per == 0 {
        return;
    }
    if sequential {
        out.chunks_mut(per).enumerate().for_each(|(b, o)| f(b, o));
    } else {
        out.par_chunks_mut(per)
            .enumerate()
            .for_each(|(b, o)| f(b, o));
    }
}

fn forward(x: &[f32], wt: &[f32], g: &Geom, epilogue: Option<&Affine>) -> Vec<f32> {
    let (k, cols, x_len) = (g.k(), g.cols(), g.x_len());
    let inner = g.inner_parallel(g.n);
    let mut y = vec![0f32; g.n * g.y_len()];
    per_sample(&mut y, g.y_len(), inner, |b, yb| {
        let xb = &x[b * x_len..(b + 1) * x_len];
        let w = Mat::rows(wt, k);
        if g.pointwise() {
            sgemm((g.o, cols, k), yb, false, w, Mat::rows(xb, cols), inner);
        } else {
            with_scratch(k * cols, |col| {
                im2col(xb, g, col);
                sgemm((g.o, cols, k), yb, false, w, Mat::rows(col, cols), inner);
            });
        }
        if let Some(e) = epilogue {
            e.apply(yb, cols);
        }
    });
    y
}

fn backward_input(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cols, y_len) = (g.k(), g.cols(), g.y_len());
    let inner = g.inner_parallel(g.n);
    let mut dx = vec![0f32; g.n * g.x_len()];
    per_sample(&mut dx, g.x_len(), inner, |b, dxb| {
        let dyb = Mat::rows(&dy[b * y_len..(b + 1) * y_len], cols);
        let wt_t = Mat::rows_t(wt, k);
        if g.pointwise() {
            sgemm((k, cols, g.o), dxb, false, wt_t, dyb, inner);
        } else {
            with_scratch(k * cols, |dcol| {
                sgemm((k, cols, g.o), dcol, false, wt_t, dyb, inner);
                col2im(dcol, g, dxb);
            });
        }
    });
    dx
}

fn backward_weight(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
    let w_len = g.o * k;
    let groups = split_even(g.n, WGRAD_GROUPS);
    let inner = g.inner_parallel(groups.len());
    let partial = |samples: Range<usize>| -> Vec<f32> {
        let mut dw = vec![0f32; w_len];
        for (i, b) in samples.enumerate() {
            let dyb = Mat::rows(&dy[b * y_len..(b + 1) * y_len], cols);
            let xb = &x[b * x_len..(b + 1) * x_len];
            if g.pointwise() {
                sgemm((g.o, k, cols), &mut dw, i > 0, dyb, Mat::rows_t(xb, cols), inner);
            } else {
                with_scratch(k * cols, |col| {
                    im2col(xb, g, col);
                    let col_t = Mat::rows_t(col, cols);
                    sgemm((g.o, k, cols), &mut dw, i > 0, dyb, col_t, inner);
                });
            }
        }
        dw
    };
    let mut parts: Vec<Vec<f32>> = if inner {
        groups.into_iter().map(partial).collect()
    } else {
        groups.into_par_iter().map(partial).collect()
    };
    let mut dw = parts.remove(0);
    if !parts.is_empty() {
        const CHUNK: usize = 1 << 14;
        dw.par_chunks_mut(CHUNK).enumerate().for_each(|(i, d)| {
            for p in &parts {
                for (d, s) in d.iter_mut().zip(&p[i * CHUNK..]) {
                    *d += s;
                }
            }
        });
    }
    dw
}

/// `conv2d(x, w)` with gradients for both.
struct Conv {
    stride: usize,
    pad: usize,
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "lesion_conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape().dims4()?, l2.shape().dims4()?, self.stride, self.pad)?;
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        Ok((CpuStorage::F32(forward(x, w, &g, None)), g.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = contiguous(grad)?;
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            let op = ConvGradInput {
                stride: self.stride,
                pad: self.pad,
                h,
                w: wd,
            };
            Some(dy.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = ConvGradWeight {
                stride: self.stride,
                pad: self.pad,
                kh,
                kw,
            };
            Some(x.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// (output gradient `[n, o, ho, wo]`, weight) -> input gradient `[n, c, h, w]`.
struct ConvGradInput {
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "lesion_conv2d_grad_input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, o, ho, wo) = l1.shape().dims4()?;
        let wdims @ (o2, c, _, _) = l2.shape().dims4()?;
        let g = Geom::new((n, c, self.h, self.w), wdims, self.stride, self.pad)?;
        if (o, ho, wo) != (o2, g.ho, g.wo) {
            candle_core::bail!(
                "{}: gradient {:?} does not fit weight {:?} and input size {}x{}",
                self.name(),
                l1.shape(),
                l2.shape(),
                self.h,
                self.w
            );
        }
        let dy = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let dx = backward_input(dy, w, &g);
        Ok((CpuStorage::F32(dx), Shape::from((n, c, self.h, self.w))))
    }
}

/// (input `[n, c, h, w]`, output gradient `[n, o, ho, wo]`) -> weight gradient
/// `[o, c, kh, kw]`.
struct ConvGradWeight {
    stride: usize,
    pad: usize,
    kh: usize,
    kw: usize,
}

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "lesion_conv2d_grad_weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xdims @ (n, c, _, _) = l1.shape().dims4()?;
        let (n2, o, ho, wo) = l2.shape().dims4()?;
        let g = Geom::new(xdims, (o, c, self.kh, self.kw), self.stride, self.pad)?;
        if (n2, ho, wo) != (n, g.ho, g.wo) {
            candle_core::bail!(
                "{}: gradient {:?} does not fit input {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            );
        }
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let dw = backward_weight(x, dy, &g);
        Ok((CpuStorage::F32(dw), Shape::from((o, c, self.kh, self.kw))))
    }
}

/// Inference-only convolution with an [`Affine`] epilogue.
struct ConvAffine {
    stride: usize,
    pad: usize,
    affine: Affine,
}

impl CustomOp2 for ConvAffine {
    fn name(&self) -> &'static str {
        "lesion_conv2d_affine"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1.shape().dims4()?, l2.shape().dims4()?, self.stride, self.pad)?;
        if self.affine.scale.len() != g.o || self.affine.shift.len() != g.o {
            candle_core::bail!("{}: scale/shift must have {} entries", self.name(), g.o);
        }
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let y = forward(x, w, &g, Some(&self.affine));
        Ok((CpuStorage::F32(y), g.out_shape()))
    }
}

/// Convolution without bias: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, zero padding `padding`
/// on every side, output `[n, o, ho, wo]`. Differentiable in both arguments (only arguments
/// that track gradients get one). CPU f32: the im2col + gemm op; otherwise candle's
/// `conv2d`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    if applies(x) && w.dtype() == DType::F32 {
        contiguous(x)?.apply_op2(
            &contiguous(w)?,
            Conv {
                stride,
                pad: padding,
            },
        )
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// `conv2d(x, w) * scale[o] + shift[o]`, then ReLU (PyTorch's: NaN propagates) when `relu`:
/// an inference convolution with its BatchNorm folded in. `scale` and `shift` are `[o]`.
///
/// CPU f32 and no argument tracking gradients: one pass, the affine applied to each sample's
/// output while it is in cache, no graph. Otherwise composed from differentiable ops.
pub fn conv2d_affine(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> candle_core::Result<Tensor> {
    let tracked = [x, w, scale, shift].iter().any(|t| t.track_op());
    if applies(x) && w.dtype() == DType::F32 && !tracked {
        let affine = Affine {
            scale: scale.to_dtype(DType::F32)?.to_vec1()?,
            shift: shift.to_dtype(DType::F32)?.to_vec1()?,
            relu,
        };
        let op = ConvAffine {
            stride,
            pad: padding,
            affine,
        };
        contiguous(x)?.apply_op2_no_bwd(&contiguous(w)?, &op)
    } else {
        let y = conv2d(x, w, stride, padding)?;
        let o = scale.elem_count();
        let y = y
            .broadcast_mul(&scale.reshape((1, o, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, o, 1, 1))?)?;
        if relu {
            crate::ops::relu(&y)
        } else {
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{rel_err, tensor};
    use candle_core::{Device, Var};

    /// (n, c, h, w, o, k, stride, pad)
    const CASES: [(usize, usize, usize, usize, usize, usize, usize, usize); 10] = [
        (2, 3, 9, 9, 4, 3, 1, 1),
        (2, 3, 11, 10, 5, 7, 2, 3),
        (1, 4, 8, 8, 6, 1, 1, 0),
        (3, 4, 9, 7, 6, 1, 2, 0),
        (2, 5, 7, 7, 3, 3, 2, 1),
        (1, 2, 5, 6, 3, 3, 1, 0),
        (2, 2, 4, 4, 2, 3, 3, 1),
        (1, 1, 1, 1, 2, 1, 1, 0),
        (1, 3, 3, 3, 2, 3, 1, 2),
        (9, 2, 6, 5, 3, 3, 1, 1),
    ];

    fn grads_of(
        f: impl Fn(&Tensor, &Tensor) -> Tensor,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let xv = Var::from_tensor(x).unwrap();
        let wv = Var::from_tensor(w).unwrap();
        let y = f(xv.as_tensor(), wv.as_tensor());
        let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap().clone();
        let dw = grads.get(wv.as_tensor()).unwrap().clone();
        (y, dx, dw)
    }

    #[test]
    fn forward_and_gradients_match_candle() {
        for (i, &(n, c, h, w, o, k, s, p)) in CASES.iter().enumerate() {
            let i = i as u32;
            let x = tensor(&[n, c, h, w], 10 + i);
            let wt = tensor(&[o, c, k, k], 20 + i);
            let want_y = x.conv2d(&wt, p, s, 1, 1).unwrap();
            let g = tensor(want_y.dims(), 30 + i);
            let (y, dx, dw) = grads_of(|x, w| conv2d(x, w, s, p).unwrap(), &x, &wt, &g);
            let (_, want_dx, want_dw) =
                grads_of(|x, w| x.conv2d(w, p, s, 1, 1).unwrap(), &x, &wt, &g);
            let case = CASES[i as usize];
            assert!(rel_err(&y, &want_y) < 1e-5, "forward {case:?}");
            assert!(rel_err(&dx, &want_dx) < 1e-5, "dx {case:?}");
            assert!(rel_err(&dw, &want_dw) < 1e-5, "dw {case:?}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // f(x, w) = sum(conv(x, w) * g) is linear in each argument, so a central difference
        // in f64 is exact up to rounding.
        let (n, c, h, w, o, k, s, p) = (2, 2, 6, 5, 3, 3, 2, 1);
        let x = tensor(&[n, c, h, w], 1);
        let wt = tensor(&[o, c, k, k], 2);
        let y0 = conv2d(&x, &wt, s, p).unwrap();
        let g = tensor(y0.dims(), 3);
        let (_, dx, dw) = grads_of(|x, w| conv2d(x, w, s, p).unwrap(), &x, &wt, &g);
        let f = |x: &Tensor, wt: &Tensor| -> f64 {
            let x = x.to_dtype(DType::F64).unwrap();
            let wt = wt.to_dtype(DType::F64).unwrap();
            let y = x.conv2d(&wt, p, s, 1, 1).unwrap();
            (y * g.to_dtype(DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let bump = |t: &Tensor, i: usize, eps: f32| {
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[i] += eps;
            Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap()
        };
        let eps = 1e-2;
        let dxv = dx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, 7, 31, x.elem_count() - 1] {
            let fd = (f(&bump(&x, i, eps), &wt) - f(&bump(&x, i, -eps), &wt)) / (2.0 * eps as f64);
            assert!((fd - dxv[i] as f64).abs() < 1e-3, "dx[{i}]: {fd} vs {}", dxv[i]);
        }
        let dwv = dw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, 5, 17, wt.elem_count() - 1] {
            let fd = (f(&x, &bump(&wt, i, eps)) - f(&x, &bump(&wt, i, -eps))) / (2.0 * eps as f64);
            assert!((fd - dwv[i] as f64).abs() < 1e-3, "dw[{i}]: {fd} vs {}", dwv[i]);
        }
    }

    #[test]
    fn non_contiguous_input_and_frozen_arguments() {
        let base = tensor(&[2, 3, 7, 9], 5);
        let x = base.transpose(2, 3).unwrap();
        assert!(!x.is_contiguous());
        let wt = tensor(&[4, 3, 3, 3], 6);
        let got = conv2d(&x, &wt, 2, 1).unwrap();
        let want = x.contiguous().unwrap().conv2d(&wt, 1, 2, 1, 1).unwrap();
        assert!(rel_err(&got, &want) < 1e-5);

        // Only the argument that tracks gets a gradient.
        let wv = Var::from_tensor(&wt).unwrap();
        let y = conv2d(&x, wv.as_tensor(), 2, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(wv.as_tensor()).is_some());
        assert!(grads.get(&x).is_none());
    }

    #[test]
    fn affine_epilogue_matches_composition() {
        for relu in [false, true] {
            let x = tensor(&[3, 4, 8, 7], 8);
            let wt = tensor(&[5, 4, 3, 3], 9);
            let scale = tensor(&[5], 10);
            let shift = tensor(&[5], 11);
            let got = conv2d_affine(&x, &wt, 2, 1, &scale, &shift, relu).unwrap();
            assert!(!got.track_op());
            let mut want = x
                .conv2d(&wt, 1, 2, 1, 1)
                .unwrap()
                .broadcast_mul(&scale.reshape((1, 5, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&shift.reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            if relu {
                want = want.relu().unwrap();
            }
            assert!(rel_err(&got, &want) < 1e-5, "relu {relu}");
        }
    }

    #[test]
    fn weight_gradient_is_deterministic_across_thread_counts() {
        let x = tensor(&[13, 3, 10, 10], 12);
        let wt = tensor(&[4, 3, 3, 3], 13);
        let g = tensor(&[13, 4, 10, 10], 14);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (_, dx, dw) = grads_of(|x, w| conv2d(x, w, 1, 1).unwrap(), &x, &wt, &g);
                (
                    dx.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    dw.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(16));
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> = <x, col2im(c)> for any x and c.
        let g = Geom::new((1, 2, 5, 6), (1, 2, 3, 3), 2, 1).unwrap();
        let x = crate::kernels::testutil::pseudo_random(g.x_len(), 1);
        let c = crate::kernels::testutil::pseudo_random(g.k() * g.cols(), 2);
        let mut col = vec![f32::NAN; g.k() * g.cols()];
        im2col(&x, &g, &mut col);
        let mut back = vec![0f32; g.x_len()];
        col2im(&c, &g, &mut back);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}

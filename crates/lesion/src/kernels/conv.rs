//! 2-D convolution without bias, groups or dilation: the public entry points, and which path
//! computes each pass.
//!
//! Shapes as in `geom.rs`: `x` `[n, c, h, w]`, weight `[o, c, kh, kw]`, output
//! `[n, o, ho, wo]`, NCHW. On CPU f32 every pass is one custom op ([`CpuConv`]) that takes
//! Winograd (`winograd.rs`) where [`winograd::choose`] picks a tile size for the shapes (3x3,
//! stride 1, padding 1, large enough to pay for the kernel transform) and im2col + gemm
//! (`im2col.rs`) otherwise:
//! - forward: F(2x2, 3x3) in training ([`Pass::Training`]; F(4x4, 3x3) too under
//!   [`winograd::training_4x4`]), F(4x4, 3x3) or F(2x2, 3x3) for the eval-mode forward with
//!   its BatchNorm folded in ([`conv2d_affine`], [`Pass::Inference`]);
//! - input gradient: as the training forward (it is itself such a convolution);
//! - weight gradient: F(2x2, 3x3) wherever the training forward takes Winograd.
//!
//! Other devices: cuDNN's three passes on CUDA with the `cudnn` feature (`cudnn.rs`), else
//! candle's forward with the backward of `gpu_conv.rs`; other CPU dtypes (f64 in the strict
//! parity tests) and `LESION_CPU_KERNELS=0`: candle's own convolution.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::batchnorm::{scale_shift, Affine};
#[cfg(feature = "cudnn")]
use super::cudnn;
use super::geom::{Geom, WGRAD_GROUPS};
use super::gpu_conv;
use super::im2col;
use super::storage::{contiguous, f32_slices, tracked_grads};
use super::switch::{applies, enabled};
use super::winograd::{self, Pass};

/// The forward convolution of `x` with `wt` (`[n, o, ho, wo]`), `epilogue` applied to each
/// sample's output. With an epilogue this is an eval-mode convolution (BatchNorm folded in,
/// nothing tracks gradients: [`conv2d_affine`]), whose output feeds predictions only.
fn forward(x: &[f32], wt: &[f32], g: &Geom, epilogue: Option<&Affine>) -> Vec<f32> {
    let pass = if epilogue.is_some() {
        Pass::Inference
    } else {
        Pass::Training
    };
    if let Some(tile) = winograd::choose(pass, g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let kernel = winograd::Kernel::forward(tile, wt, g.o, g.c);
        let cols = g.cols();
        return winograd::conv3x3(x, g.n, (g.h, g.w), &kernel, |yb| {
            if let Some(e) = epilogue {
                e.apply(yb, cols);
            }
        });
    }
    im2col::forward(x, wt, g, epilogue)
}

/// The input gradient `[n, c, h, w]` from the output gradient `dy` and `wt`.
fn backward_input(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let pass = Pass::Training;
    if let Some(tile) = winograd::choose(pass, g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let kernel = winograd::Kernel::input_grad(tile, wt, g.o, g.c);
        return winograd::conv3x3(dy, g.n, (g.h, g.w), &kernel, |_| {});
    }
    im2col::backward_input(dy, wt, g)
}

/// The weight gradient `[o, c, kh, kw]` from the input `x` and the output gradient `dy`.
fn backward_weight(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    if winograd::suits_weight_grad(g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let (channels, size) = ((g.c, g.o), (g.h, g.w));
        let chunk_bytes = winograd::WGRAD_SCRATCH_BYTES;
        return winograd::grad_weight(x, dy, g.n, channels, size, WGRAD_GROUPS, chunk_bytes);
    }
    im2col::backward_weight(x, dy, g)
}

/// Which pass a [`CpuConv`] computes.
enum CpuPass {
    /// `(x, w) -> y`, differentiable in both.
    Forward,
    /// `(x, w) -> y` with the folded BatchNorm applied; no graph.
    Affine(Affine),
    /// `(dy, w) -> dx`; no graph.
    GradInput,
    /// `(x, dy) -> dw`; no graph.
    GradWeight,
}

/// One pass of a convolution of geometry `geometry` on CPU f32 (the shapes were checked when
/// the geometry was built).
struct CpuConv {
    pass: CpuPass,
    geometry: Geom,
}

impl CpuConv {
    /// The dims of the two arguments and of the result.
    fn dims(&self) -> [[usize; 4]; 3] {
        let g = &self.geometry;
        match self.pass {
            CpuPass::Forward | CpuPass::Affine(_) => [g.x_dims(), g.w_dims(), g.y_dims()],
            CpuPass::GradInput => [g.y_dims(), g.w_dims(), g.x_dims()],
            CpuPass::GradWeight => [g.x_dims(), g.y_dims(), g.w_dims()],
        }
    }

    /// This pass on contiguous copies of `a` and `b`, without a graph.
    fn run(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        contiguous(a)?.apply_op2_no_bwd(&contiguous(b)?, &self)
    }
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        match self.pass {
            CpuPass::Forward => "lesion_conv2d",
            CpuPass::Affine(_) => "lesion_conv2d_affine",
            CpuPass::GradInput => "lesion_conv2d_grad_input",
            CpuPass::GradWeight => "lesion_conv2d_grad_weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [a_dims, b_dims, out_dims] = self.dims();
        if l1.dims() != a_dims || l2.dims() != b_dims {
            candle_core::bail!(
                "{}: arguments {:?} and {:?} do not fit {:?}",
                self.name(),
                l1.shape(),
                l2.shape(),
                self.geometry
            );
        }
        let [a, b] = f32_slices([(s1, l1), (s2, l2)], self.name())?;
        let g = &self.geometry;
        let out = match &self.pass {
            CpuPass::Forward => forward(a, b, g, None),
            CpuPass::Affine(e) => forward(a, b, g, Some(e)),
            CpuPass::GradInput => backward_input(a, b, g),
            CpuPass::GradWeight => backward_weight(a, b, g),
        };
        Ok((CpuStorage::F32(out), Shape::from(out_dims.to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !matches!(self.pass, CpuPass::Forward) {
            candle_core::bail!("{}: no second derivative", self.name());
        }
        let dy = contiguous(grad)?;
        let pass = |pass| CpuConv {
            pass,
            geometry: self.geometry,
        };
        tracked_grads(
            (x, w),
            || pass(CpuPass::GradInput).run(&dy, w),
            || pass(CpuPass::GradWeight).run(x, &dy),
        )
    }
}

/// Convolution without bias: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, zero padding `padding`
/// on every side, output `[n, o, ho, wo]`. Differentiable in both arguments (only arguments
/// that track gradients get one). CPU f32: lesion's kernels (Winograd or im2col + gemm);
/// other CPU dtypes: candle's `conv2d`; CUDA f32/f64 with the `cudnn` feature: cuDNN's
/// forward and backward passes (`cudnn.rs`); other GPUs: candle's forward with the backward
/// of `gpu_conv.rs`. With `LESION_CPU_KERNELS=0`, candle's own convolution and backward
/// everywhere.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    if applies(x) && w.dtype() == DType::F32 {
        let op = CpuConv {
            pass: CpuPass::Forward,
            geometry: Geom::new(x.dims4()?, w.dims4()?, stride, padding)?,
        };
        contiguous(x)?.apply_op2(&contiguous(w)?, op)
    } else if x.device().is_cpu() || !enabled() {
        x.conv2d(w, padding, stride, 1, 1)
    } else {
        #[cfg(feature = "cudnn")]
        if cudnn::applies(x, w) {
            return cudnn::conv2d(x, w, stride, padding);
        }
        gpu_conv::conv2d(x, w, stride, padding)
    }
}

/// The input gradient of [`conv2d`] on CPU f32 (no graph): `dy` `[n, o, ho, wo]`, `w`
/// `[o, c, kh, kw]`, input size `(h, w)`; returns `[n, c, h, w]`.
pub fn conv2d_grad_input(
    dy: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    (h, wd): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (n, o, ho, wo) = dy.dims4()?;
    let wdims @ (o2, c, _, _) = w.dims4()?;
    let g = Geom::new((n, c, h, wd), wdims, stride, padding)?;
    if (o, ho, wo) != (o2, g.ho, g.wo) {
        candle_core::bail!(
            "lesion_conv2d_grad_input: gradient {:?} does not fit weight {:?} and input size \
             {h}x{wd}",
            dy.shape(),
            w.shape(),
        );
    }
    let op = CpuConv {
        pass: CpuPass::GradInput,
        geometry: g,
    };
    op.run(dy, w)
}

/// The weight gradient of [`conv2d`] on CPU f32 (no graph): `x` `[n, c, h, w]`, `dy`
/// `[n, o, ho, wo]`, kernel size `(kh, kw)`; returns `[o, c, kh, kw]`.
pub fn conv2d_grad_weight(
    x: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    (kh, kw): (usize, usize),
) -> candle_core::Result<Tensor> {
    let xdims @ (n, c, _, _) = x.dims4()?;
    let (n2, o, ho, wo) = dy.dims4()?;
    let g = Geom::new(xdims, (o, c, kh, kw), stride, padding)?;
    if (n2, ho, wo) != (n, g.ho, g.wo) {
        candle_core::bail!(
            "lesion_conv2d_grad_weight: gradient {:?} does not fit input {:?}",
            dy.shape(),
            x.shape()
        );
    }
    let op = CpuConv {
        pass: CpuPass::GradWeight,
        geometry: g,
    };
    op.run(x, dy)
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
        let affine = Affine::new(scale, shift, relu)?;
        let g = Geom::new(x.dims4()?, w.dims4()?, stride, padding)?;
        if affine.channels() != Some(g.o) {
            candle_core::bail!(
                "lesion_conv2d_affine: scale/shift must have {} entries",
                g.o
            );
        }
        let op = CpuConv {
            pass: CpuPass::Affine(affine),
            geometry: g,
        };
        op.run(x, w)
    } else {
        scale_shift(&conv2d(x, w, stride, padding)?, scale, shift, relu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::{rel_err, tensor};
    use candle_core::{Device, Var};

    /// (n, c, h, w, o, k, stride, pad). Small maps take the grouped path (several samples
    /// per gemm); 40x40 and 33x33 outputs exceed the grouping target (one sample per gemm),
    /// 20x20 splits 5 samples into chunks of 3 and 2.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const CASES: [Case; 15] = [
        (2, 2, 40, 40, 3, 3, 1, 1),
        // One sample per gemm (1365 output positions), im2col in row blocks of 12, 12, 12
        // and 3 rows (`Geom::row_blocks`), like the stem's.
        (5, 3, 78, 70, 4, 7, 2, 3),
        (2, 3, 33, 33, 4, 1, 1, 0),
        (5, 2, 20, 20, 3, 3, 1, 1),
        (4, 2, 41, 39, 3, 3, 2, 1),
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

    /// Direct-loop convolution in f64: (y, dx, dw) of `sum(conv(x, w) * g)`.
    fn naive(x: &Tensor, wt: &Tensor, g: &Tensor, s: usize, p: usize) -> [Vec<f64>; 3] {
        let (n, c, h, w) = x.dims4().unwrap();
        let (o, _, kh, kw) = wt.dims4().unwrap();
        let (_, _, ho, wo) = g.dims4().unwrap();
        let v = |t: &Tensor| -> Vec<f64> {
            let t = t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
            t.to_vec1().unwrap()
        };
        let (xv, wv, gv) = (v(x), v(wt), v(g));
        let mut y = vec![0.0; n * o * ho * wo];
        let mut dx = vec![0.0; xv.len()];
        let mut dw = vec![0.0; wv.len()];
        for b in 0..n {
            for oc in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let yi = ((b * o + oc) * ho + oy) * wo + ox;
                        for ci in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s + ky) as isize - p as isize;
                                    let ix = (ox * s + kx) as isize - p as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + ci) * h + iy as usize) * w + ix as usize;
                                    let wi = ((oc * c + ci) * kh + ky) * kw + kx;
                                    y[yi] += xv[xi] * wv[wi];
                                    dx[xi] += gv[yi] * wv[wi];
                                    dw[wi] += gv[yi] * xv[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn max_rel(got: &Tensor, want: &[f64]) -> f64 {
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        got.iter()
            .zip(want)
            .map(|(&a, b)| (a as f64 - b).abs() / scale)
            .fold(0.0, f64::max)
    }

    #[test]
    fn forward_and_gradients_match_direct_loops_and_candle() {
        for (i, &case) in CASES.iter().enumerate() {
            let (n, c, h, w, o, k, s, p) = case;
            let i = i as u32;
            let x = tensor(&[n, c, h, w], 10 + i);
            let wt = tensor(&[o, c, k, k], 20 + i);
            let want_y = x.conv2d(&wt, p, s, 1, 1).unwrap();
            let g = tensor(want_y.dims(), 30 + i);
            let (y, dx, dw) = grads_of(|x, w| conv2d(x, w, s, p).unwrap(), &x, &wt, &g);
            assert!(rel_err(&y, &want_y) < 1e-5, "forward vs candle {case:?}");
            let [ny, ndx, ndw] = naive(&x, &wt, &g, s, p);
            for (name, got, want) in [("y", &y, &ny), ("dx", &dx, &ndx), ("dw", &dw, &ndw)] {
                let err = max_rel(got, want);
                assert!(err < 1e-5, "{name} {case:?}: {err:e}");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // f(x, w) = sum(conv(x, w) * g) is linear in each argument, so a central difference
        // in f64 is exact up to rounding. Stride 2 runs through im2col, the 30x28 stride-1 case
        // through Winograd (all three passes).
        for case in [(2, 2, 6, 5, 3, 3, 2, 1), (2, 2, 30, 28, 3, 3, 1, 1)] {
            check_finite_differences(case);
        }
        // Forward and input gradient through F(4x4, 3x3) (`lesion-train --winograd-4x4`).
        let _tiles = winograd::training_4x4(true);
        check_finite_differences((2, 2, 30, 28, 3, 3, 1, 1));
    }

    fn check_finite_differences((n, c, h, w, o, k, s, p): Case) {
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
            assert!(
                (fd - dxv[i] as f64).abs() < 1e-3,
                "dx[{i}]: {fd} vs {}",
                dxv[i]
            );
        }
        let dwv = dw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in [0, 5, 17, wt.elem_count() - 1] {
            let fd = (f(&x, &bump(&wt, i, eps)) - f(&x, &bump(&wt, i, -eps))) / (2.0 * eps as f64);
            assert!(
                (fd - dwv[i] as f64).abs() < 1e-3,
                "dw[{i}]: {fd} vs {}",
                dwv[i]
            );
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
        // Stride 2 runs through im2col (at 90x90 one sample per gemm, in two row blocks), the
        // 40x40 stride-1 case through Winograd F(4x4, 3x3) (inference's tile size).
        for (relu, x_dims, stride) in [
            (false, [3, 4, 8, 7], 2),
            (true, [3, 4, 8, 7], 2),
            (true, [1, 4, 90, 90], 2),
            (true, [2, 4, 40, 40], 1),
        ] {
            let x = tensor(&x_dims, 8);
            let wt = tensor(&[5, 4, 3, 3], 9);
            let scale = tensor(&[5], 10);
            let shift = tensor(&[5], 11);
            let got = conv2d_affine(&x, &wt, stride, 1, &scale, &shift, relu).unwrap();
            assert!(!got.track_op());
            let mut want = x
                .conv2d(&wt, 1, stride, 1, 1)
                .unwrap()
                .broadcast_mul(&scale.reshape((1, 5, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&shift.reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            if relu {
                want = want.relu().unwrap();
            }
            assert!(rel_err(&got, &want) < 1e-5, "relu {relu} {x_dims:?}");
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // 13 samples of 10x10 run as two chunks of 7 and 6 samples; 20 of 32x32 as 20
        // one-sample chunks summed in 8 groups. 1 thread runs chunks in parallel, 16
        // parallelise inside gemm instead.
        for (x_dims, seed) in [([13, 3, 10, 10], 12), ([20, 2, 32, 32], 15)] {
            let x = tensor(&x_dims, seed);
            let wt = tensor(&[4, x_dims[1], 3, 3], seed + 1);
            let g = tensor(&[x_dims[0], 4, x_dims[2], x_dims[3]], seed + 2);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let (y, dx, dw) = grads_of(|x, w| conv2d(x, w, 1, 1).unwrap(), &x, &wt, &g);
                    [y, dx, dw].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
            };
            let one = run(1);
            assert_eq!(one, run(3));
            assert_eq!(one, run(16));
        }
    }

    /// `gpu_conv.rs`'s backward, run on CPU, against the CPU kernels' convolution (itself held
    /// to an f64 direct convolution above; candle's own backward cannot be the reference: it takes the input gradient's output padding from the height alone and
    /// fails on case 3). Strides 1-3, 1x1, 3x3 and 7x7 kernels, bottom/right rows a strided
    /// forward skips, a padding wider than the kernel and a non-square kernel.
    #[test]
    fn gpu_conv_backward_matches_cpu_kernel_gradients() {
        // (n, c, h, w, o, (kh, kw), stride, padding)
        type Case = (
            usize,
            usize,
            usize,
            usize,
            usize,
            (usize, usize),
            usize,
            usize,
        );
        let cases: &[Case] = &[
            (2, 2, 12, 12, 3, (3, 3), 1, 1),
            (2, 3, 13, 13, 4, (1, 1), 1, 0),
            (4, 2, 41, 39, 3, (3, 3), 2, 1),
            (2, 3, 11, 10, 5, (7, 7), 2, 3),
            (3, 4, 9, 7, 6, (1, 1), 2, 0),
            (2, 5, 7, 7, 3, (3, 3), 2, 1),
            (1, 2, 5, 6, 3, (3, 3), 1, 0),
            (2, 2, 4, 4, 2, (3, 3), 3, 1),
            (1, 3, 3, 3, 2, (3, 3), 1, 2),
            (2, 2, 6, 5, 3, (1, 1), 1, 1),
            (2, 2, 9, 8, 3, (3, 1), 2, 0),
        ];
        for (i, &(n, c, h, wd, o, (kh, kw), s, p)) in cases.iter().enumerate() {
            let seed = 40 + i as u32;
            let x = tensor(&[n, c, h, wd], seed);
            let w = tensor(&[o, c, kh, kw], seed + 100);
            let ho = (h + 2 * p - kh) / s + 1;
            let wo = (wd + 2 * p - kw) / s + 1;
            let g = tensor(&[n, o, ho, wo], seed + 200);
            let run = |ours: bool| {
                let xv = Var::from_tensor(&x).unwrap();
                let wv = Var::from_tensor(&w).unwrap();
                let y = if ours {
                    gpu_conv::conv2d(xv.as_tensor(), wv.as_tensor(), s, p).unwrap()
                } else {
                    conv2d(xv.as_tensor(), wv.as_tensor(), s, p).unwrap()
                };
                let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(xv.as_tensor()).unwrap().clone();
                let dw = grads.get(wv.as_tensor()).unwrap().clone();
                (y, dx, dw)
            };
            let (y, dx, dw) = run(true);
            let (y0, dx0, dw0) = run(false);
            let case = format!("case {i}: {:?}", cases[i]);
            assert_eq!(y.dims(), y0.dims(), "{case}");
            assert!(rel_err(&y, &y0) < 1e-6, "{case}: forward");
            assert_eq!(dx.dims(), x.dims(), "{case}");
            assert!(
                rel_err(&dx, &dx0) < 1e-5,
                "{case}: input gradient {}",
                rel_err(&dx, &dx0)
            );
            assert!(
                rel_err(&dw, &dw0) < 1e-5,
                "{case}: weight gradient {}",
                rel_err(&dw, &dw0)
            );
        }
    }
}

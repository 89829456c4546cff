//! ResNet's stem max-pool (kernel 3, stride 2, padding 1) on NCHW tensors, with PyTorch's
//! semantics: [`max_pool2d_3x3s2p1`]. candle's `max_pool2d` has neither padding nor a
//! backward pass when kernel ≠ stride.
//!
//! Input `[n, c, h, w]`, output `[n, c, (h - 1) / 2 + 1, (w - 1) / 2 + 1]`, same dtype.
//! Padding behaves as `-inf`. On CPU with f32 a threaded custom op (one task per group of
//! planes) whose backward is a second custom op that routes each output's gradient to its
//! window's winner; on other devices or dtypes candle's ops, composed so that candle's
//! autograd gives the same gradients ([`max_pool2d_3x3s2p1_composed`]), or candle's own
//! forward where no gradient is needed ([`max_pool2d_3x3s2p1_forward_only`], fewer GPU
//! kernels).

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::parallel::planes_per_task;
use super::storage::{contiguous, f32_slice};

/// Output size of a 3x3, stride 2, padding 1 pooling window over `len` positions.
fn pooled_len(len: usize) -> usize {
    (len - 1) / 2 + 1
}

/// Max-pool with kernel 3, stride 2, padding 1 (PyTorch's `MaxPool2d(3, 2, 1)`): input
/// `[n, c, h, w]`, output `[n, c, (h - 1) / 2 + 1, (w - 1) / 2 + 1]`.
///
/// Padding behaves as `-inf`, i.e. windows only see real elements. The gradient of each output
/// goes to the *first* maximum of its window in row-major order, as in PyTorch, on CPU and in
/// the fallback alike (the fallback relies on candle's `argmax` returning the first maximum,
/// which its CPU kernel does; other backends' kernels are not documented to).
pub fn max_pool2d_3x3s2p1(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max_pool2d_3x3s2p1: empty spatial size {:?}", x.shape());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        // The kernels index planes directly; a transposed view is rare enough to copy.
        let x = contiguous(x)?;
        if x.track_op() {
            let op = MaxPool3x3s2p1 {
                saved: Some(Arc::new(OnceLock::new())),
            };
            x.apply_op1(op)
        } else {
            x.apply_op1_no_bwd(&MaxPool3x3s2p1 { saved: None })
        }
    } else if !x.track_op() {
        max_pool2d_3x3s2p1_forward_only(x)
    } else {
        max_pool2d_3x3s2p1_composed(x)
    }
}

/// Device-agnostic max-pool for inputs that need no gradient: candle's `max_pool2d` (no
/// padding, and no backward when kernel ≠ stride) over the input padded by edge replication,
/// which leaves every window's maximum unchanged (see [`max_pool2d_3x3s2p1_composed`]).
/// Three kernels on a GPU instead of the composed version's stack, argmax and gather.
pub fn max_pool2d_3x3s2p1_forward_only(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}

/// Device-agnostic max-pool from candle ops.
///
/// Edge replication stands in for `-inf` padding: every window that overlaps the border also
/// contains the element being replicated, so maxima are unchanged, and replicas come before
/// (top/left) or after (bottom/right) their source in window order, so the first maximum
/// still lands on the same input element. The nine shifted stride-2 views are stacked and the
/// winner is picked with `argmax` + `gather`, whose backward (scatter-add) sends each gradient
/// to exactly that element.
pub fn max_pool2d_3x3s2p1_composed(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (pooled_len(h), pooled_len(w));
    // Padded to 2 * (out + 1) so that a reshape to (out + 1, 2) splits positions into
    // (window index, parity): offsets 0, 1, 2 are (o, 0), (o, 1), (o + 1, 0).
    let xp = x
        .pad_with_same(2, 1, 2 * (ho + 1) - h - 1)?
        .pad_with_same(3, 1, 2 * (wo + 1) - w - 1)?
        .reshape((n, c, ho + 1, 2, wo + 1, 2))?;
    let pick = |t: &Tensor, dim: usize, offset: usize, len: usize| -> candle_core::Result<Tensor> {
        let (start, parity) = (offset / 2, offset % 2);
        t.narrow(dim, start, len)?
            .narrow(dim + 1, parity, 1)?
            .squeeze(dim + 1)
    };
    let mut views = Vec::with_capacity(9);
    for dy in 0..3 {
        let rows = pick(&xp, 2, dy, ho)?;
        for dx in 0..3 {
            views.push(pick(&rows, 3, dx, wo)?);
        }
    }
    // Stacked along a new leading axis: candle's concatenation along any other axis yields
    // a strided tensor, which `gather` rejects.
    let stacked = Tensor::stack(&views, 0)?;
    let idx = stacked.argmax_keepdim(0)?;
    stacked.gather(&idx, 0)?.squeeze(0)
}

/// PyTorch's max-pool rule: a later element wins if strictly greater, or if it is NaN (so
/// the first maximum wins ties and NaN propagates).
#[inline(always)]
fn beats(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// Pools one `h x w` plane into `out` (`ho x wo`) and records in `idx` the plane index of
/// each window's winner, as PyTorch picks it: scanning the window in row-major order, an
/// element wins if strictly greater than the best so far or NaN (so the first maximum wins
/// ties and the last NaN wins). Done in two passes that vectorise: per column, the vertical
/// winner of the window's rows (`colmax`, `colarg`: its row), then per output the winner of
/// its three columns, where row-major order means a smaller row wins a tie of values and a
/// later (row, column) wins among NaNs.
fn pool_plane(
    plane: &[f32],
    h: usize,
    w: usize,
    out: &mut [f32],
    idx: &mut [u32],
    colmax: &mut [f32],
    colarg: &mut [u32],
) {
    let (ho, wo) = (pooled_len(h), pooled_len(w));
    let rows = out.chunks_exact_mut(wo).zip(idx.chunks_exact_mut(wo));
    for (oy, (orow, irow)) in rows.enumerate().take(ho) {
        let y0 = (2 * oy).saturating_sub(1);
        let y1 = (2 * oy + 2).min(h);
        colmax.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
        colarg.fill(y0 as u32);
        for y in y0 + 1..y1 {
            let row = &plane[y * w..(y + 1) * w];
            for ((m, a), &v) in colmax.iter_mut().zip(colarg.iter_mut()).zip(row) {
                let wins = beats(v, *m);
                *m = if wins { v } else { *m };
                *a = if wins { y as u32 } else { *a };
            }
        }
        for (ox, (o, i)) in orow.iter_mut().zip(irow.iter_mut()).enumerate() {
            let x0 = (2 * ox).saturating_sub(1);
            let x1 = (2 * ox + 2).min(w);
            let (mut best, mut row, mut col) = (colmax[x0], colarg[x0], x0);
            for x in x0 + 1..x1 {
                let (v, r) = (colmax[x], colarg[x]);
                let wins = if v.is_nan() {
                    !best.is_nan() || r >= row
                } else {
                    !best.is_nan() && (v > best || (v == best && r < row))
                };
                if wins {
                    (best, row, col) = (v, r, x);
                }
            }
            *o = best;
            *i = row * w as u32 + col as u32;
        }
    }
}

/// [`pool_plane`] without the winners' indices (inference and frozen layers), so without
/// tie-breaking: the maximum (NaN if any element is NaN) does not depend on the order of
/// comparison.
fn pool_plane_values(plane: &[f32], h: usize, w: usize, out: &mut [f32], colmax: &mut [f32]) {
    #[inline(always)]
    fn max(a: f32, b: f32) -> f32 {
        if beats(b, a) {
            b
        } else {
            a
        }
    }
    let (ho, wo) = (pooled_len(h), pooled_len(w));
    for (oy, orow) in out.chunks_exact_mut(wo).enumerate().take(ho) {
        let y0 = (2 * oy).saturating_sub(1);
        let y1 = (2 * oy + 2).min(h);
        colmax.copy_from_slice(&plane[y0 * w..(y0 + 1) * w]);
        for y in y0 + 1..y1 {
            for (m, &v) in colmax.iter_mut().zip(&plane[y * w..(y + 1) * w]) {
                *m = max(*m, v);
            }
        }
        for (ox, o) in orow.iter_mut().enumerate() {
            let x0 = (2 * ox).saturating_sub(1);
            let x1 = (2 * ox + 2).min(w);
            *o = colmax[x0 + 1..x1]
                .iter()
                .fold(colmax[x0], |m, &v| max(m, v));
        }
    }
}

/// Forward max-pool; `saved` receives the winners' plane indices when set (the input
/// tracks gradients), for [`MaxPool3x3s2p1Bwd`].
struct MaxPool3x3s2p1 {
    saved: Option<Arc<OnceLock<Vec<u32>>>>,
}

impl CustomOp1 for MaxPool3x3s2p1 {
    fn name(&self) -> &'static str {
        "max_pool2d_3x3s2p1"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let src = f32_slice(s, l, self.name())?;
        let (ho, wo) = (pooled_len(h), pooled_len(w));
        let mut dst = vec![0f32; n * c * ho * wo];
        let min_len = planes_per_task(h * w);
        match &self.saved {
            Some(saved) => {
                let mut idx = vec![0u32; dst.len()];
                dst.par_chunks_mut(ho * wo)
                    .zip(idx.par_chunks_mut(ho * wo))
                    .zip(src.par_chunks(h * w))
                    .with_min_len(min_len)
                    .for_each_init(
                        || (vec![0f32; w], vec![0u32; w]),
                        |(colmax, colarg), ((out, idx), plane)| {
                            pool_plane(plane, h, w, out, idx, colmax, colarg)
                        },
                    );
                if saved.set(idx).is_err() {
                    candle_core::bail!("{}: op applied twice", self.name());
                }
            }
            None => dst
                .par_chunks_mut(ho * wo)
                .zip(src.par_chunks(h * w))
                .with_min_len(min_len)
                .for_each_init(
                    || vec![0f32; w],
                    |colmax, (out, plane)| pool_plane_values(plane, h, w, out, colmax),
                ),
        }
        Ok((CpuStorage::F32(dst), Shape::from((n, c, ho, wo))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(idx) = self.saved.as_ref().and_then(|s| s.get()) else {
            candle_core::bail!("{}: backward without saved indices", self.name());
        };
        let grad = contiguous(grad_res)?;
        let (_, _, h, w) = arg.dims4()?;
        let op = MaxPool3x3s2p1Bwd { idx, hw: h * w };
        Ok(Some(grad.apply_op1_no_bwd(&op)?.reshape(arg.shape())?))
    }
}

/// Gradient of [`MaxPool3x3s2p1`]: output gradient `[n, c, ho, wo]` -> input gradient
/// `[n, c, h, w]` (returned flat per plane), each output's gradient added to its window's
/// winner. Within a plane, outputs are visited in order, so sums are deterministic.
struct MaxPool3x3s2p1Bwd<'a> {
    idx: &'a [u32],
    hw: usize,
}

impl CustomOp1 for MaxPool3x3s2p1Bwd<'_> {
    fn name(&self) -> &'static str {
        "max_pool2d_3x3s2p1_bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, ho, wo) = l.shape().dims4()?;
        let grad = f32_slice(s, l, self.name())?;
        if self.idx.len() != grad.len() {
            candle_core::bail!("{}: gradient {:?} does not match", self.name(), l.shape());
        }
        let (hw, per) = (self.hw, ho * wo);
        let mut dst = vec![0f32; n * c * hw];
        dst.par_chunks_mut(hw)
            .zip(grad.par_chunks(per).zip(self.idx.par_chunks(per)))
            .with_min_len(planes_per_task(hw))
            .for_each(|(out, (g, idx))| {
                for (&g, &i) in g.iter().zip(idx) {
                    out[i as usize] += g;
                }
            });
        Ok((CpuStorage::F32(dst), Shape::from((n, c, hw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::pseudo_random;
    use candle_core::{Device, Var};

    /// Straightforward PyTorch-semantics reference: -inf padding, first argmax wins.
    fn naive_pool(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> (Vec<f32>, Vec<usize>) {
        let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
        let mut out = Vec::new();
        let mut arg = Vec::new();
        for p in 0..n * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best = f32::NEG_INFINITY;
                    let mut best_i = usize::MAX;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (y, xx) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                continue;
                            }
                            let i = p * h * w + y as usize * w + xx as usize;
                            if best_i == usize::MAX || x[i] > best || x[i].is_nan() {
                                best = x[i];
                                best_i = i;
                            }
                        }
                    }
                    out.push(best);
                    arg.push(best_i);
                }
            }
        }
        (out, arg)
    }

    fn check_forward(n: usize, c: usize, h: usize, w: usize) {
        let data = pseudo_random(n * c * h * w, (h * 31 + w) as u32);
        let x = Tensor::from_vec(data.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let (want, _) = naive_pool(&data, n, c, h, w);
        for got in [
            max_pool2d_3x3s2p1(&x).unwrap(),
            max_pool2d_3x3s2p1_composed(&x).unwrap(),
            max_pool2d_3x3s2p1_forward_only(&x).unwrap(),
        ] {
            assert_eq!(got.dims(), [n, c, (h - 1) / 2 + 1, (w - 1) / 2 + 1]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want, "shape {n}x{c}x{h}x{w}");
        }
    }

    #[test]
    fn max_pool_forward_matches_naive_reference() {
        for (n, c, h, w) in [
            (1, 1, 1, 1),
            (1, 1, 2, 3),
            (1, 2, 7, 7),
            (2, 3, 8, 5),
            (1, 1, 9, 10),
            (2, 4, 112, 112),
            (1, 3, 15, 224),
        ] {
            check_forward(n, c, h, w);
        }
    }

    #[test]
    fn max_pool_propagates_nan_with_and_without_indices() {
        let mut data = pseudo_random(2 * 5 * 6, 11);
        data[8] = f32::NAN; // row 1, column 2 of the first plane
        let x = Tensor::from_vec(data.clone(), (1, 2, 5, 6), &Device::Cpu).unwrap();
        let var = Var::from_tensor(&x).unwrap();
        for got in [
            max_pool2d_3x3s2p1(&x).unwrap(),
            max_pool2d_3x3s2p1(var.as_tensor()).unwrap(),
        ] {
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Windows (0,1) and (1,1) of the first 3x3 output plane contain (1,2).
            let nan: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_nan()).collect();
            assert_eq!(nan, [1, 4]);
            let (want, _) = naive_pool(&data, 1, 2, 5, 6);
            assert_eq!(got[9..], want[9..], "second plane untouched");
        }
        // Both windows that hold the NaN send their gradient to it.
        let g = vec![1f32; 18];
        let dx = pool_grad(&data, (1, 2, 5, 6), &g, false);
        assert_eq!(dx[8], 2.0);
    }

    #[test]
    fn max_pool_handles_non_contiguous_input() {
        let (n, c, h, w) = (2, 3, 7, 9);
        let data = pseudo_random(n * c * h * w, 7);
        // Build the transposed tensor's contents explicitly for the reference.
        let base = Tensor::from_vec(data, (n, c, w, h), &Device::Cpu).unwrap();
        let x = base.transpose(2, 3).unwrap();
        assert!(!x.is_contiguous());
        let dense = x.contiguous().unwrap();
        let (want, _) = naive_pool(
            &dense.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            n,
            c,
            h,
            w,
        );
        let got = max_pool2d_3x3s2p1(&x).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let got = max_pool2d_3x3s2p1_composed(&x).unwrap();
        assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }

    /// The reference input gradient: each output's gradient `g[o]` added to its window's
    /// winner `arg[o]` (from [`naive_pool`]), over an input of `len` elements.
    fn routed(arg: &[usize], g: &[f32], len: usize) -> Vec<f32> {
        let mut want = vec![0f32; len];
        for (&i, &go) in arg.iter().zip(g) {
            want[i] += go;
        }
        want
    }

    /// Gradient of `sum(pool(x) * g)` w.r.t. x, from the CPU op or the composed fallback.
    fn pool_grad(
        x: &[f32],
        shape: (usize, usize, usize, usize),
        g: &[f32],
        composed: bool,
    ) -> Vec<f32> {
        let (n, c, h, w) = shape;
        let var = Var::from_vec(x.to_vec(), (n, c, h, w), &Device::Cpu).unwrap();
        let out = if composed {
            max_pool2d_3x3s2p1_composed(var.as_tensor()).unwrap()
        } else {
            max_pool2d_3x3s2p1(var.as_tensor()).unwrap()
        };
        let gt = Tensor::from_vec(g.to_vec(), out.shape(), &Device::Cpu).unwrap();
        let loss = (out * gt).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn max_pool_backward_routes_to_first_argmax_on_ties() {
        // 3x3 input, output 2x2. All windows see the tied 5s; PyTorch gives each output's
        // gradient to the first 5 in row-major order within its window.
        #[rustfmt::skip]
        let x = [
            5.0, 1.0, 5.0,
            1.0, 5.0, 1.0,
            5.0, 1.0, 0.0,
        ];
        let g = [1.0, 10.0, 100.0, 1000.0];
        // window (0,0): rows 0..2, cols 0..2 -> first max at (0,0)
        // window (0,1): rows 0..2, cols 1..3 -> first max at (0,2)
        // window (1,0): rows 1..3, cols 0..2 -> first max at (1,1)
        // window (1,1): rows 1..3, cols 1..3 -> first max at (1,1)
        #[rustfmt::skip]
        let want = [
            1.0, 0.0, 10.0,
            0.0, 1100.0, 0.0,
            0.0, 0.0, 0.0,
        ];
        assert_eq!(pool_grad(&x, (1, 1, 3, 3), &g, false), want);
        assert_eq!(pool_grad(&x, (1, 1, 3, 3), &g, true), want);
    }

    #[test]
    fn max_pool_backward_matches_reference_and_finite_differences() {
        let shape @ (n, c, h, w) = (2, 3, 11, 8);
        let x = pseudo_random(n * c * h * w, 3);
        let (_, arg) = naive_pool(&x, n, c, h, w);
        let g = pseudo_random(arg.len(), 5);
        let want = routed(&arg, &g, x.len());
        let got = pool_grad(&x, shape, &g, false);
        assert_eq!(got, want);
        let composed = pool_grad(&x, shape, &g, true);
        assert_eq!(composed, want);

        // Central differences of f(x) = sum(pool(x) * g) at a few inputs, in f64 on the
        // naive reference (values are distinct so f is locally linear).
        let f = |x: &[f32]| -> f64 {
            let (out, _) = naive_pool(x, n, c, h, w);
            out.iter()
                .zip(&g)
                .map(|(&o, &gg)| o as f64 * gg as f64)
                .sum()
        };
        for i in [0, 1, 17, 40, 87, 250, x.len() - 1] {
            let eps = 1e-3;
            let mut xp = x.clone();
            xp[i] += eps;
            let mut xm = x.clone();
            xm[i] -= eps;
            let fd = (f(&xp) - f(&xm)) / (2.0 * eps as f64);
            assert!(
                (fd - got[i] as f64).abs() < 1e-3,
                "input {i}: fd {fd} vs {}",
                got[i]
            );
        }
    }

    #[test]
    fn max_pool_ties_go_to_the_first_maximum_everywhere() {
        // Three levels only, so most windows (interior and border) hold ties.
        let shape @ (n, c, h, w) = (2, 2, 9, 12);
        let x: Vec<f32> = pseudo_random(n * c * h * w, 9)
            .iter()
            .map(|v| (v * 1.5).round())
            .collect();
        let (_, arg) = naive_pool(&x, n, c, h, w);
        let g = pseudo_random(arg.len(), 10);
        let want = routed(&arg, &g, x.len());
        assert_eq!(pool_grad(&x, shape, &g, false), want);
    }

    #[test]
    fn max_pool_routes_to_the_last_nan_of_a_window() {
        let shape @ (n, c, h, w) = (1, 2, 9, 12);
        let mut x: Vec<f32> = pseudo_random(n * c * h * w, 12)
            .iter()
            .map(|v| (v * 1.5).round())
            .collect();
        for i in (0..x.len()).step_by(7) {
            x[i] = f32::NAN;
        }
        let (_, arg) = naive_pool(&x, n, c, h, w);
        let g = pseudo_random(arg.len(), 13);
        let want = routed(&arg, &g, x.len());
        assert_eq!(pool_grad(&x, shape, &g, false), want);
    }

    #[test]
    fn max_pool_padding_is_minus_infinity() {
        // All-negative input: zero padding would give 0 at the borders.
        let x =
            Tensor::from_vec(vec![-3f32, -2.0, -5.0, -1.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
        let y = max_pool2d_3x3s2p1(&x).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-1.0]);
    }
}

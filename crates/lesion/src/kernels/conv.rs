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
//! A sample with many output positions (the stem's 112x112) is its own gemm, and its im2col
//! matrix is built and multiplied in blocks of output rows sized to stay in L2
//! ([`Geom::row_blocks`]); the column blocks of the output are the same numbers either way.
//!
//! A 1x1 stride-1 unpadded convolution's im2col is the sample itself, so it is a plain gemm.
//! 3x3 stride-1 padding-1 convolutions take the Winograd path instead (`winograd.rs`): forward
//! and input gradient wherever it pays (F(4x4, 3x3) tiles for inference, F(2x2, 3x3) for
//! training), the weight gradient too.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::winograd::{self, Pass};
use super::{
    applies, contiguous, enabled, f32_slice, overwritten, relu_f32, scale_shift, sgemm, sgemm_ld,
    split_even, with_scratch, Mat,
};

/// Number of sample groups the weight gradient is split into (at most one per sample): enough
/// to keep a few threads busy, few enough that the per-group partial gradients stay small.
const WGRAD_GROUPS: usize = 8;

/// Shapes of one convolution (also what `cudnn.rs` keys its algorithm choices on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geom {
    /// The geometry of `x` `(n, c, h, w)` convolved with `w` `(o, c, kh, kw)`, or an error
    /// naming what does not fit.
    pub(super) fn new(
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

    /// Output rows of one sample in blocks whose im2col matrix stays in a core's L2 cache
    /// while gemm packs it: written and read back once each, a whole sample's (7.4 MB for
    /// the 7x7 stem at 224 px) went through memory twice.
    fn row_blocks(&self) -> impl Iterator<Item = Range<usize>> {
        let rows = (col_block_bytes() / (4 * self.k() * self.wo)).clamp(1, self.ho.max(1));
        let ho = self.ho;
        (0..ho).step_by(rows).map(move |a| a..(a + rows).min(ho))
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.n, self.o, self.ho, self.wo))
    }
}

/// Output positions `0..out` whose input index `pos * stride + k_off - pad` lies in `0..len`.
fn valid(out: usize, stride: usize, k_off: usize, pad: usize, len: usize) -> Range<usize> {
    let lo = pad.saturating_sub(k_off).div_ceil(stride).min(out);
    let hi = (len + pad).saturating_sub(k_off).div_ceil(stride).min(out);
    lo..hi.max(lo)
}

/// Where input column `ix` of a row lives once the row is split by phase (see
/// [`PhaseSplit`]); the identity for stride 1.
#[derive(Debug, Clone)]
struct PhaseSplit {
    stride: usize,
    /// Start of each phase's segment within a row.
    offsets: Vec<usize>,
}

impl PhaseSplit {
    /// Strided convolutions read every `stride`-th input column, so each input row is
    /// rearranged as `[columns = 0 mod s | columns = 1 mod s | ...]`: then the columns one
    /// im2col row reads from an input row are contiguous.
    fn new(g: &Geom) -> Self {
        let s = g.stride;
        let mut offsets = Vec::with_capacity(s);
        let mut at = 0;
        for p in 0..s {
            offsets.push(at);
            at += (g.w + s - 1 - p) / s;
        }
        Self { stride: s, offsets }
    }

    #[inline]
    fn pos(&self, ix: usize) -> usize {
        self.offsets[ix % self.stride] + ix / self.stride
    }

    /// Rearranges every row of `x` (planes of width `w`) into `out`.
    fn split(&self, x: &[f32], w: usize, out: &mut [f32], parallel: bool) {
        let f = |(src, dst): (&[f32], &mut [f32])| {
            for p in 0..self.stride {
                let seg = &mut dst[self.offsets[p]..];
                for (d, &v) in seg.iter_mut().zip(src.iter().skip(p).step_by(self.stride)) {
                    *d = v;
                }
            }
        };
        let out = &mut out[..x.len()];
        if parallel {
            x.par_chunks(w)
                .zip(out.par_chunks_mut(w))
                .with_min_len(256)
                .for_each(f);
        } else {
            x.chunks(w).zip(out.chunks_mut(w)).for_each(f);
        }
    }

    /// Adds rows in the split layout back into `out` in the natural layout.
    fn merge_add(&self, x: &[f32], w: usize, out: &mut [f32]) {
        for (src, dst) in x.chunks(w).zip(out.chunks_mut(w)) {
            for p in 0..self.stride {
                let seg = &src[self.offsets[p]..];
                for (&v, d) in seg.iter().zip(dst.iter_mut().skip(p).step_by(self.stride)) {
                    *d += v;
                }
            }
        }
    }
}

/// One im2col row: (input channel, ky, kx) and its in-image output rows and columns.
/// The same for every sample, so computed once per row of a pass, not per sample (it
/// divides, and small maps have many short rows).
struct RowGeom {
    ci: usize,
    ky: usize,
    kx: usize,
    oys: Range<usize>,
    oxs: Range<usize>,
}

/// [`row_geometry`] of every im2col row of `g`.
fn row_geometries(g: &Geom) -> Vec<RowGeom> {
    (0..g.k()).map(|row| row_geometry(g, row)).collect()
}

fn row_geometry(g: &Geom, row: usize) -> RowGeom {
    let (ci, ky, kx) = (row / (g.kh * g.kw), row / g.kw % g.kh, row % g.kw);
    let oys = valid(g.ho, g.stride, ky, g.pad, g.h);
    let oxs = valid(g.wo, g.stride, kx, g.pad, g.w);
    RowGeom {
        ci,
        ky,
        kx,
        oys,
        oxs,
    }
}

/// Fills the part of one im2col row for output rows `rows` (`rows.len() * wo` long, zeros
/// where the window reads padding) of one sample `x` (`[c, h, w]`; for strides above 1, rows
/// split by [`PhaseSplit`]).
fn fill_row(
    g: &Geom,
    split: &PhaseSplit,
    rg: &RowGeom,
    x: &[f32],
    out: &mut [f32],
    rows: &Range<usize>,
) {
    let (ci, ky, kx, oxs) = (rg.ci, rg.ky, rg.kx, rg.oxs.clone());
    let oys = rg.oys.start.max(rows.start)..rg.oys.end.min(rows.end);
    let (wo, w, hw, s, pad) = (g.wo, g.w, g.h * g.w, g.stride, g.pad);
    if oys.is_empty() || oxs.is_empty() {
        out.fill(0.0);
        return;
    }
    // `out`'s rows that read inside the image.
    let (lo, hi) = (oys.start - rows.start, oys.end - rows.start);
    // Only what falls in the padding is zeroed (zeroing whole rows first cost the 7x7 stem
    // a second pass over its column matrix): the output rows above and below `oys` here,
    // the columns outside `oxs` after the copies.
    out[..lo * wo].fill(0.0);
    out[hi * wo..].fill(0.0);
    let plane = &x[ci * hw..(ci + 1) * hw];
    if s == 1 && wo == w {
        // "Same" width: output row oy is input row oy + ky - pad shifted by kx - pad, so
        // the whole row is one copy; the columns that wrapped in from a neighbouring input
        // row are cleared below.
        let src0 = ((oys.start + ky - pad) * w) as isize + kx as isize - pad as isize;
        let (mut a, mut b) = (lo * wo, hi * wo);
        let src_a = if src0 < 0 {
            a += src0.unsigned_abs();
            0
        } else {
            src0 as usize
        };
        b = b.min(a + (hw - src_a));
        out[a..b].copy_from_slice(&plane[src_a..src_a + (b - a)]);
    } else {
        let p0 = split.pos(oxs.start * s + kx - pad);
        for (oy, row) in oys.zip(out[lo * wo..].chunks_exact_mut(wo)) {
            let iy = oy * s + ky - pad;
            row[oxs.clone()].copy_from_slice(&plane[iy * w + p0..iy * w + p0 + oxs.len()]);
        }
    }
    if oxs.len() < wo {
        for row in out[lo * wo..hi * wo].chunks_exact_mut(wo) {
            row[..oxs.start].fill(0.0);
            row[oxs.end..].fill(0.0);
        }
    }
}

/// Adds one im2col row of gradients (`cols` long) into one sample's input gradient `dx`
/// (`[c, h, w]`, rows split by [`PhaseSplit`] for strides above 1): the adjoint of
/// [`fill_row`].
fn add_row(g: &Geom, split: &PhaseSplit, rg: &RowGeom, src: &[f32], dx: &mut [f32]) {
    let (ci, ky, kx, oys, oxs) = (rg.ci, rg.ky, rg.kx, rg.oys.clone(), rg.oxs.clone());
    if oxs.is_empty() {
        return;
    }
    let (wo, w, hw, s, pad) = (g.wo, g.w, g.h * g.w, g.stride, g.pad);
    let plane = &mut dx[ci * hw..(ci + 1) * hw];
    let p0 = split.pos(oxs.start * s + kx - pad);
    for oy in oys {
        let v = &src[oy * wo + oxs.start..oy * wo + oxs.end];
        let iy = oy * s + ky - pad;
        let d = &mut plane[iy * w + p0..iy * w + p0 + v.len()];
        for (d, v) in d.iter_mut().zip(v) {
            *d += v;
        }
    }
}

/// The im2col matrices of consecutive samples `xs` side by side: `col` `[k, ld]` with
/// `ld = samples * cols`, sample `i` in columns `i * cols..(i + 1) * cols`.
/// `geoms`: [`row_geometries`] of `g`.
fn im2col(xs: &[f32], g: &Geom, geoms: &[RowGeom], col: &mut [f32], parallel: bool) {
    let split = PhaseSplit::new(g);
    with_split(xs, g, &split, parallel, |xs| {
        im2col_rows(xs, g, &split, geoms, col, 0..g.ho, parallel);
    });
}

/// Runs `f` on `xs` as [`fill_row`] reads it: rearranged by [`PhaseSplit`] for strides above
/// 1, as it is otherwise.
fn with_split<R>(
    xs: &[f32],
    g: &Geom,
    split: &PhaseSplit,
    parallel: bool,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    if g.stride > 1 {
        f(&overwritten(xs.len(), |b| {
            split.split(xs, g.w, b, parallel)
        }))
    } else {
        f(xs)
    }
}

/// [`im2col`] of output rows `rows` only (`ld = samples * rows.len() * wo`), from samples
/// already split as [`with_split`] gives them.
fn im2col_rows(
    xs: &[f32],
    g: &Geom,
    split: &PhaseSplit,
    geoms: &[RowGeom],
    col: &mut [f32],
    rows: Range<usize>,
    parallel: bool,
) {
    let per = rows.len() * g.wo;
    let ld = xs.len() / g.x_len() * per;
    let fill = |(out, rg): (&mut [f32], &RowGeom)| {
        for (xb, o) in xs.chunks(g.x_len()).zip(out.chunks_mut(per)) {
            fill_row(g, split, rg, xb, o, &rows);
        }
    };
    let col = &mut col[..g.k() * ld];
    if parallel {
        col.par_chunks_mut(ld).zip(geoms).for_each(fill);
    } else {
        col.chunks_mut(ld).zip(geoms).for_each(fill);
    }
}

/// Adds `dcol` (`[k, ld]`, laid out as [`im2col`]'s) into the input gradients `dxs` of the
/// same samples. Each input element sums its contributions in a fixed (row, position) order.
fn col2im(dcol: &[f32], g: &Geom, dxs: &mut [f32], parallel: bool) {
    let (cols, ld) = (g.cols(), dxs.len() / g.x_len() * g.cols());
    let split = PhaseSplit::new(g);
    let geoms = row_geometries(g);
    let add = |(i, dx): (usize, &mut [f32])| {
        let rows = |dx: &mut [f32]| {
            for (row, rg) in geoms.iter().enumerate() {
                let src = &dcol[row * ld + i * cols..row * ld + (i + 1) * cols];
                add_row(g, &split, rg, src, dx);
            }
        };
        if g.stride > 1 {
            // Accumulate in the split layout, then put each column back in place.
            let mut acc = vec![0f32; g.x_len()];
            rows(&mut acc);
            split.merge_add(&acc, g.w, dx);
        } else {
            rows(dx);
        }
    };
    if parallel {
        dxs.par_chunks_mut(g.x_len()).enumerate().for_each(add);
    } else {
        dxs.chunks_mut(g.x_len()).enumerate().for_each(add);
    }
}

/// Copies per-sample `[rows, cols]` matrices `src` (consecutive) into `dst` `[rows, ld]`
/// side by side (sample `i` in columns `i * cols..`).
fn interleave(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, parallel: bool) {
    let ld = src.len() / rows;
    let copy = |(r, out): (usize, &mut [f32])| {
        for (i, o) in out.chunks_mut(cols).enumerate() {
            let per = rows * cols;
            o.copy_from_slice(&src[i * per + r * cols..i * per + (r + 1) * cols]);
        }
    };
    let dst = &mut dst[..rows * ld];
    if parallel {
        dst.par_chunks_mut(ld).enumerate().for_each(copy);
    } else {
        dst.chunks_mut(ld).enumerate().for_each(copy);
    }
}

/// The inverse of [`interleave`]: `src` `[rows, ld]` back into per-sample `[rows, cols]`.
fn deinterleave(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, parallel: bool) {
    let (per, ld) = (rows * cols, dst.len() / rows);
    let copy = |(i, out): (usize, &mut [f32])| {
        for (r, o) in out.chunks_mut(cols).enumerate() {
            o.copy_from_slice(&src[r * ld + i * cols..r * ld + (i + 1) * cols]);
        }
    };
    if parallel {
        dst.par_chunks_mut(per).enumerate().for_each(copy);
    } else {
        dst.chunks_mut(per).enumerate().for_each(copy);
    }
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
        self.apply_cols(y, cols, 0..cols);
    }

    /// [`Affine::apply`] to columns `range` of each channel's plane only.
    fn apply_cols(&self, y: &mut [f32], cols: usize, range: Range<usize>) {
        for ((plane, &a), &b) in y.chunks_mut(cols).zip(&self.scale).zip(&self.shift) {
            let plane = &mut plane[range.clone()];
            if self.relu {
                for v in plane {
                    *v = relu_f32(*v * a + b);
                }
            } else {
                for v in plane {
                    *v = *v * a + b;
                }
            }
        }
    }
}

/// How a pass over the batch is split: chunks of consecutive samples, each handled by one
/// gemm over their im2col matrices side by side (so that small feature maps still give gemm
/// wide matrices), and whether chunks run in parallel (gemm single-threaded inside) or one
/// after another (gemm, im2col and copies parallel inside). Depends on the shapes and the
/// thread count; results depend on the shapes only.
struct Plan {
    chunks: Vec<Range<usize>>,
    outer: bool,
}

/// Tuning knobs, read once (development only).
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_cols() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| knob("LESION_CONV_TARGET_COLS", 1024))
}

fn col_block_bytes() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| knob("LESION_CONV_BLOCK_KB", 256) << 10)
}

fn min_tasks_per_thread() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| knob("LESION_CONV_MIN_TASKS", 2))
}

/// Whether `tasks` independent tasks keep the pool busy enough to run them in parallel
/// rather than parallelising inside each.
pub(super) fn outer_parallel(tasks: usize) -> bool {
    tasks >= min_tasks_per_thread() * rayon::current_num_threads()
}

impl Geom {
    fn plan(&self) -> Plan {
        let per = target_cols().div_ceil(self.cols()).clamp(1, self.n.max(1));
        let chunks = split_even(self.n, self.n.div_ceil(per));
        let outer = outer_parallel(chunks.len());
        Plan { chunks, outer }
    }
}

/// `buf` cut into the pieces of `chunks` (sample ranges), `per` elements a sample.
pub(super) fn pieces<'a>(
    mut buf: &'a mut [f32],
    chunks: &[Range<usize>],
    per: usize,
) -> Vec<(Range<usize>, &'a mut [f32])> {
    let mut out = Vec::with_capacity(chunks.len());
    for r in chunks {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(r.len() * per);
        out.push((r.clone(), head));
        buf = tail;
    }
    out
}

pub(super) fn run_pieces(
    pieces: Vec<(Range<usize>, &mut [f32])>,
    outer: bool,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync + Send,
) {
    if outer {
        pieces.into_par_iter().for_each(|(r, o)| f(r, o));
    } else {
        pieces.into_iter().for_each(|(r, o)| f(r, o));
    }
}

fn forward(x: &[f32], wt: &[f32], g: &Geom, epilogue: Option<&Affine>) -> Vec<f32> {
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
    // With an epilogue this is an eval-mode convolution (BatchNorm folded in, nothing tracks
    // gradients: `conv2d_affine`), whose output feeds predictions only.
    let pass = if epilogue.is_some() {
        Pass::Inference
    } else {
        Pass::Training
    };
    if let Some(tile) = winograd::choose(pass, g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let kernel = winograd::Kernel::forward(tile, wt, g.o, g.c);
        return winograd::conv3x3(x, g.n, (g.h, g.w), &kernel, |yb| {
            if let Some(e) = epilogue {
                e.apply(yb, cols);
            }
        });
    }
    let plan = g.plan();
    let par = !plan.outer;
    let w = Mat::rows(wt, k);
    let geoms = row_geometries(g);
    overwritten(g.n * y_len, |y| {
        run_pieces(pieces(y, &plan.chunks, y_len), plan.outer, |r, ys| {
            let xs = &x[r.start * x_len..r.end * x_len];
            let ld = r.len() * cols;
            if r.len() == 1 && g.pointwise() {
                sgemm((g.o, cols, k), ys, false, w, Mat::rows(xs, cols), par);
            } else if r.len() == 1 {
                let split = PhaseSplit::new(g);
                with_split(xs, g, &split, par, |xs| {
                    for rows in g.row_blocks() {
                        let block = rows.start * g.wo..rows.end * g.wo;
                        with_scratch(k * block.len(), |col| {
                            im2col_rows(xs, g, &split, &geoms, col, rows, par);
                            let dims = (g.o, block.len(), k);
                            let rhs = Mat::rows(col, block.len());
                            sgemm_ld(dims, &mut ys[block.start..], cols, false, w, rhs, par);
                        });
                        // While the block is still in cache.
                        if let Some(e) = epilogue {
                            e.apply_cols(ys, cols, block);
                        }
                    }
                });
                return;
            } else {
                with_scratch(k * ld + g.o * ld, |buf| {
                    let (col, tmp) = buf.split_at_mut(k * ld);
                    im2col(xs, g, &geoms, col, par);
                    sgemm((g.o, ld, k), tmp, false, w, Mat::rows(col, ld), par);
                    deinterleave(tmp, ys, g.o, cols, par);
                });
            }
            if let Some(e) = epilogue {
                for yb in ys.chunks_mut(y_len) {
                    e.apply(yb, cols);
                }
            }
        })
    })
}

fn backward_input(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
    let pass = Pass::Training;
    if let Some(tile) = winograd::choose(pass, g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let kernel = winograd::Kernel::input_grad(tile, wt, g.o, g.c);
        return winograd::conv3x3(dy, g.n, (g.h, g.w), &kernel, |_| {});
    }
    let plan = g.plan();
    let par = !plan.outer;
    let wt_t = Mat::rows_t(wt, k);
    let mut dx = vec![0f32; g.n * x_len];
    run_pieces(
        pieces(&mut dx, &plan.chunks, x_len),
        plan.outer,
        |r, dxs| {
            let dys = &dy[r.start * y_len..r.end * y_len];
            let ld = r.len() * cols;
            if r.len() == 1 && g.pointwise() {
                sgemm((k, cols, g.o), dxs, false, wt_t, Mat::rows(dys, cols), par);
                return;
            }
            let grouped = r.len() > 1;
            with_scratch(k * ld + if grouped { g.o * ld } else { 0 }, |buf| {
                let (dcol, dyg) = buf.split_at_mut(k * ld);
                let dyg: &[f32] = if grouped {
                    interleave(dys, dyg, g.o, cols, par);
                    dyg
                } else {
                    dys
                };
                sgemm((k, ld, g.o), dcol, false, wt_t, Mat::rows(dyg, ld), par);
                col2im(dcol, g, dxs, par);
            });
        },
    );
    dx
}

fn backward_weight(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    if winograd::suits_weight_grad(g.n, (g.h, g.w), (g.kh, g.kw), g.stride, g.pad) {
        let channels = (g.c, g.o);
        return winograd::grad_weight(
            x,
            dy,
            g.n,
            channels,
            (g.h, g.w),
            WGRAD_GROUPS,
            winograd::WGRAD_SCRATCH_BYTES,
        );
    }
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
    let w_len = g.o * k;
    let plan = g.plan();
    // Partial sums over fixed groups of chunks, added in a fixed order below.
    let groups = split_even(plan.chunks.len(), WGRAD_GROUPS);
    let geoms = row_geometries(g);
    let outer = outer_parallel(groups.len());
    let par = !outer;
    let partial = |group: Range<usize>| -> Vec<f32> {
        let mut dw = vec![0f32; w_len];
        for (j, r) in plan.chunks[group].iter().enumerate() {
            let xs = &x[r.start * x_len..r.end * x_len];
            let dys = &dy[r.start * y_len..r.end * y_len];
            let ld = r.len() * cols;
            let grouped = r.len() > 1;
            let direct = !grouped && g.pointwise();
            let len = if direct { 0 } else { k * ld } + if grouped { g.o * ld } else { 0 };
            with_scratch(len, |buf| {
                let (col, dyg) = buf.split_at_mut(if direct { 0 } else { k * ld });
                let col: &[f32] = if direct {
                    xs
                } else {
                    im2col(xs, g, &geoms, col, par);
                    col
                };
                let dyg: &[f32] = if grouped {
                    interleave(dys, dyg, g.o, cols, par);
                    dyg
                } else {
                    dys
                };
                // dW (o x k) += dy (o x ld) * col^T (ld x k)
                let (lhs, rhs) = (Mat::rows(dyg, ld), Mat::rows_t(col, ld));
                sgemm((g.o, k, ld), &mut dw, j > 0, lhs, rhs, par);
            });
        }
        dw
    };
    let mut parts: Vec<Vec<f32>> = if outer {
        groups.into_par_iter().map(partial).collect()
    } else {
        groups.into_iter().map(partial).collect()
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
        let g = Geom::new(
            l1.shape().dims4()?,
            l2.shape().dims4()?,
            self.stride,
            self.pad,
        )?;
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
        let dx = x
            .track_op()
            .then(|| conv2d_grad_input(&dy, w, self.stride, self.pad, (h, wd)))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| conv2d_grad_weight(x, &dy, self.stride, self.pad, (kh, kw)))
            .transpose()?;
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
        let g = Geom::new(
            l1.shape().dims4()?,
            l2.shape().dims4()?,
            self.stride,
            self.pad,
        )?;
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
/// that track gradients get one). CPU f32: the im2col + gemm op; other CPU dtypes: candle's
/// `conv2d`; CUDA f32/f64 with the `cudnn` feature: cuDNN's forward and backward passes
/// (`cudnn.rs`); other GPUs: candle's forward with the backward of `gpu_conv.rs`. With
/// `LESION_CPU_KERNELS=0`, candle's own convolution and backward everywhere.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    if applies(x) && w.dtype() == DType::F32 {
        contiguous(x)?.apply_op2(
            &contiguous(w)?,
            Conv {
                stride,
                pad: padding,
            },
        )
    } else if x.device().is_cpu() || !enabled() {
        x.conv2d(w, padding, stride, 1, 1)
    } else {
        #[cfg(feature = "cudnn")]
        if super::cudnn::applies(x, w) {
            return super::cudnn::conv2d(x, w, stride, padding);
        }
        super::gpu_conv::conv2d(x, w, stride, padding)
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
    let op = ConvGradInput {
        stride,
        pad: padding,
        h,
        w: wd,
    };
    contiguous(dy)?.apply_op2_no_bwd(&contiguous(w)?, &op)
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
    let op = ConvGradWeight {
        stride,
        pad: padding,
        kh,
        kw,
    };
    contiguous(x)?.apply_op2_no_bwd(&contiguous(dy)?, &op)
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
        let _tiles = super::super::training_4x4(true);
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

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> = <x, col2im(c)> for any x and c.
        let g = Geom::new((1, 2, 5, 6), (1, 2, 3, 3), 2, 1).unwrap();
        let x = crate::kernels::testutil::pseudo_random(g.x_len(), 1);
        let c = crate::kernels::testutil::pseudo_random(g.k() * g.cols(), 2);
        let mut col = vec![f32::NAN; g.k() * g.cols()];
        im2col(&x, &g, &row_geometries(&g), &mut col, false);
        let mut back = vec![0f32; g.x_len()];
        col2im(&c, &g, &mut back, true);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}

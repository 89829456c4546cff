//! 2-D convolution as im2col + gemm: every shape, and the only path for those Winograd does
//! not take (strided, 1x1 and 7x7 kernels, and maps too small to pay for a kernel transform).
//!
//! Shapes as in `geom.rs`. Per sample, the im2col matrix is `[c * kh * kw, ho * wo]` (row
//! `(ci * kh + ky) * kw + kx`, column `oy * wo + ox`, zeros where the window reads padding),
//! so that the weight, read as `[o, c * kh * kw]`, multiplies it into the sample's output
//! `[o, ho * wo]`:
//! - forward ([`forward`]): `y_b = W * col(x_b)`;
//! - input gradient ([`backward_input`]): `dx_b = col2im(W^T * dy_b)` (col2im sums each
//!   column entry back into the input element it was copied from);
//! - weight gradient ([`backward_weight`]): `dW = sum_b dy_b * col(x_b)^T`, summed over
//!   [`WGRAD_GROUPS`] fixed groups of samples (each group in order, then the groups in
//!   order), so the result is independent of the thread count.
//!
//! Samples are handled in chunks ([`Geom::plan`]): a chunk's im2col matrices stand side by
//! side so that small maps still give gemm wide matrices. A sample with many output
//! positions (the stem's 112x112) is its own chunk, and its im2col matrix is built and
//! multiplied in blocks of output rows sized to stay in L2 ([`Geom::row_blocks`]), the
//! folded BatchNorm applied per block while it is in cache; the column blocks of the output
//! are the same numbers either way. A 1x1 stride-1 unpadded convolution's im2col is the
//! sample itself, so it is a plain gemm. im2col writes only the entries in the padding as
//! zeros, never a whole row first.

use std::ops::Range;

use rayon::prelude::*;

use super::batchnorm::Affine;
use super::geom::{Geom, WGRAD_GROUPS};
use super::matmul::{sgemm, sgemm_ld, Mat};
use super::parallel::{for_chunks, map_ranges, outer_parallel, pieces, run_pieces, split_even};
use super::storage::{overwritten, with_scratch};

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
    // Only what falls in the padding is zeroed (zeroing whole rows first would send the 7x7
    // stem's column matrix through memory a second time): the output rows above and below
    // `oys` here, the columns outside `oxs` after the copies.
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
    for_chunks(&mut col[..g.k() * ld], ld, parallel, |row, out| {
        for (xb, o) in xs.chunks(g.x_len()).zip(out.chunks_mut(per)) {
            fill_row(g, split, &geoms[row], xb, o, &rows);
        }
    });
}

/// Adds `dcol` (`[k, ld]`, laid out as [`im2col`]'s) into the input gradients `dxs` of the
/// same samples. Each input element sums its contributions in a fixed (row, position) order.
fn col2im(dcol: &[f32], g: &Geom, dxs: &mut [f32], parallel: bool) {
    let (cols, ld) = (g.cols(), dxs.len() / g.x_len() * g.cols());
    let split = PhaseSplit::new(g);
    let geoms = row_geometries(g);
    for_chunks(dxs, g.x_len(), parallel, |i, dx| {
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
    });
}

/// Copies per-sample `[rows, cols]` matrices `src` (consecutive) into `dst` `[rows, ld]`
/// side by side (sample `i` in columns `i * cols..`).
fn interleave(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, parallel: bool) {
    let ld = src.len() / rows;
    for_chunks(&mut dst[..rows * ld], ld, parallel, |r, out| {
        for (i, o) in out.chunks_mut(cols).enumerate() {
            let per = rows * cols;
            o.copy_from_slice(&src[i * per + r * cols..i * per + (r + 1) * cols]);
        }
    });
}

/// The inverse of [`interleave`]: `src` `[rows, ld]` back into per-sample `[rows, cols]`.
fn deinterleave(src: &[f32], dst: &mut [f32], rows: usize, cols: usize, parallel: bool) {
    let (per, ld) = (rows * cols, dst.len() / rows);
    for_chunks(dst, per, parallel, |i, out| {
        for (r, o) in out.chunks_mut(cols).enumerate() {
            o.copy_from_slice(&src[r * ld + i * cols..r * ld + (i + 1) * cols]);
        }
    });
}

/// The forward convolution of `x` (`[n, c, h, w]`) with `wt` (`[o, c, kh, kw]`): returns
/// `[n, o, ho, wo]`, with `epilogue` applied to each sample's output (each row block's, for a
/// sample that is its own gemm) while it is in cache.
pub(super) fn forward(x: &[f32], wt: &[f32], g: &Geom, epilogue: Option<&Affine>) -> Vec<f32> {
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
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

/// The input gradient `[n, c, h, w]` from the output gradient `dy` (`[n, o, ho, wo]`) and
/// `wt` (`[o, c, kh, kw]`).
pub(super) fn backward_input(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let (k, cols, x_len, y_len) = (g.k(), g.cols(), g.x_len(), g.y_len());
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

/// The weight gradient `[o, c, kh, kw]` from the input `x` (`[n, c, h, w]`) and the output
/// gradient `dy` (`[n, o, ho, wo]`).
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
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
    let mut parts = map_ranges(groups, outer, partial);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::pseudo_random;

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> = <x, col2im(c)> for any x and c.
        let g = Geom::new((1, 2, 5, 6), (1, 2, 3, 3), 2, 1).unwrap();
        let x = pseudo_random(g.x_len(), 1);
        let c = pseudo_random(g.k() * g.cols(), 2);
        let mut col = vec![f32::NAN; g.k() * g.cols()];
        im2col(&x, &g, &row_geometries(&g), &mut col, false);
        let mut back = vec![0f32; g.x_len()];
        col2im(&c, &g, &mut back, true);
        let lhs: f64 = col.iter().zip(&c).map(|(a, b)| (a * b) as f64).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (a * b) as f64).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }
}

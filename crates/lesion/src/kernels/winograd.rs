//! Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2016) for 3x3, stride-1, padding-1 convolutions: 13 of ResNet-18's 20
//! convolutions and about 80% of its arithmetic.
//!
//! Each 2x2 output tile is computed from the 4x4 input patch around it as
//! `A^T [ sum_c (G g G^T) ⊙ (B^T d B) ] A`, so the 9 multiplications per output and input
//! channel of a direct convolution become 4 (16 per 2x2 tile): 2.25x fewer. Over a batch that
//! is 16 independent gemms, one per position `xi` of the 4x4 transformed tile:
//! `M[xi] (out x tiles) = U[xi] (out x in) * V[xi] (in x tiles)`.
//!
//! Layouts (all f32):
//! - input `[n, cin, h, w]` and output `[n, cout, h, w]`, NCHW contiguous;
//! - transformed kernel ([`Kernel`]) `[cout, 16, cin]`;
//! - transformed input `V` `[cin, 16, tiles]` and gemm output `M` `[16, cout, tiles]`, tile
//!   `t = (sample * th + ty) * tw + tx` over `th = ceil(h / 2)` by `tw = ceil(w / 2)` tiles.
//!
//! The input gradient of such a convolution is itself one (the output gradient correlated
//! with the kernel rotated by 180° and its channel axes swapped), so it runs here too
//! ([`Kernel::input_grad`]). Sums run in an order fixed by the shapes, so results do not
//! depend on the thread count. The transforms' 0.5 factors are exact in binary and the
//! additions are few: results agree with the im2col path to about 1e-6 relative (measured
//! in the tests against an f64 reference).

use std::ops::Range;

use rayon::prelude::*;

use super::conv::{outer_parallel, pieces, run_pieces};
use super::{sgemm, split_even, with_scratch, Mat};

/// Tiles (over the samples of a chunk) handled by one set of 16 gemms: wide enough for gemm
/// to run near its peak, small enough that `V` and `M` stay in the last-level cache.
const TARGET_TILES: usize = 128;

/// Whether a convolution of `n` samples of `h x w` takes the Winograd path: 3x3, stride 1,
/// padding 1 (output as large as the input), enough work for the saved multiplications to pay
/// for transforming the kernel on every call, and not `LESION_WINOGRAD=0` (or `off`).
///
/// The saving is `n * (9 h w - 16 tiles)` multiply-adds per kernel against a transform of
/// fixed cost per kernel. Measured eval-mode, batch 1 (`lesion-bench infer --batch-size 1`):
/// Winograd everywhere ran at 38-40 img/s against 53-71 without. Below [`MIN_SAVED_MACS`] per
/// kernel (the 28x28, 14x14 and 7x7 maps of a single image) it takes im2col: batch 1 then
/// runs at 71-76 img/s against 74-77 without, batch 4 at 91-98 against 78-80.
pub(super) fn suits(
    n: usize,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let saved = (n * 9 * h * w).saturating_sub(n * 16 * Tiles::new(h, w).per_plane());
    kh == 3
        && kw == 3
        && stride == 1
        && pad == 1
        && saved >= MIN_SAVED_MACS
        && *ON
            .get_or_init(|| !matches!(std::env::var("LESION_WINOGRAD").as_deref(), Ok("0" | "off")))
}

/// Multiply-adds per kernel (output-input channel pair) that Winograd must save to be used.
const MIN_SAVED_MACS: usize = 4096;

/// Whether the weight gradient of such a convolution on `h x w` planes is faster through
/// Winograd than through im2col. Measured at batch 32 (`conv2d_grad_weight`, 2 threads): 1.5x
/// faster from 14x14 up (64-256 channels), 1.2-1.4x slower at 7x7 x 512 channels, where
/// the 8x8 tile grid wastes 30% and the per-group sums of the 16 transformed gradients
/// (16 x 512 x 512 each) outweigh the saved arithmetic.
pub(super) fn pays_for_weight_grad(h: usize, w: usize) -> bool {
    h >= 14 && w >= 14
}

/// A 3x3 weight transformed to `G g G^T` per kernel, stored `[cout, 16, cin]` so that each
/// `U[xi]` is a row-major `cout x cin` matrix (row stride `16 * cin`).
pub(super) struct Kernel {
    u: Vec<f32>,
    cout: usize,
    cin: usize,
}

impl Kernel {
    /// For the forward pass of `conv2d(x, w)` with `w` `[cout, cin, 3, 3]`.
    pub(super) fn forward(wt: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(wt.len(), cout * cin * 9, "winograd: weight size");
        Self::build(cout, cin, |oc, ic| {
            let g = &wt[(oc * cin + ic) * 9..][..9];
            std::array::from_fn(|i| g[i])
        })
    }

    /// For the input gradient of `conv2d(x, w)` with `w` `[o, c, 3, 3]`: the kernel rotated
    /// by 180° with its channel axes swapped (`cout = c`, `cin = o`).
    pub(super) fn input_grad(wt: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(wt.len(), o * c * 9, "winograd: weight size");
        Self::build(c, o, |ic, oc| {
            let g = &wt[(oc * c + ic) * 9..][..9];
            std::array::from_fn(|i| g[8 - i])
        })
    }

    /// `kernel(out, in)` gives the 3x3 kernel (row-major) from input channel `in` to output
    /// channel `out`.
    fn build(cout: usize, cin: usize, kernel: impl Fn(usize, usize) -> [f32; 9] + Sync) -> Self {
        let mut u = vec![0f32; cout * 16 * cin];
        u.par_chunks_mut(16 * cin).enumerate().for_each(|(oc, uo)| {
            for ic in 0..cin {
                for (xi, v) in transform_kernel(&kernel(oc, ic)).into_iter().enumerate() {
                    uo[xi * cin + ic] = v;
                }
            }
        });
        Self { u, cout, cin }
    }

    /// `U[xi]` as a `cout x cin` matrix.
    fn mat(&self, xi: usize) -> Mat<'_> {
        Mat {
            data: &self.u[xi * self.cin..],
            rs: 16 * self.cin,
            cs: 1,
        }
    }
}

/// `G g G^T` of one 3x3 kernel (row-major), as 16 values row-major.
fn transform_kernel(g: &[f32; 9]) -> [f32; 16] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    let col = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut rows = [[0f32; 4]; 3];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = col(g[3 * r], g[3 * r + 1], g[3 * r + 2]);
    }
    let mut out = [0f32; 16];
    for j in 0..4 {
        let t = col(rows[0][j], rows[1][j], rows[2][j]);
        for i in 0..4 {
            out[i * 4 + j] = t[i];
        }
    }
    out
}

/// Tile grid of an `h x w` plane.
#[derive(Clone, Copy)]
struct Tiles {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(h: usize, w: usize) -> Self {
        Self {
            h,
            w,
            th: h.div_ceil(2),
            tw: w.div_ceil(2),
        }
    }

    fn per_plane(&self) -> usize {
        self.th * self.tw
    }

    /// Consecutive samples handled together, about `target` tiles each.
    fn chunks(&self, n: usize, target: usize) -> Vec<Range<usize>> {
        let per = target.div_ceil(self.per_plane()).clamp(1, n.max(1));
        split_even(n, n.div_ceil(per))
    }
}

/// `f` over `buf`'s chunks of `len` elements with their index, in parallel or not.
fn for_chunks(
    buf: &mut [f32],
    len: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if parallel {
        buf.par_chunks_mut(len)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// `B^T d B` of every tile of the samples `xs` (`[nb, cin, h, w]`) into `v`
/// (`[cin, 16, nb * tiles]`).
fn transform_input(xs: &[f32], nb: usize, cin: usize, t: Tiles, v: &mut [f32], parallel: bool) {
    let (hw, tiles) = (t.h * t.w, nb * t.per_plane());
    // Padded rows: column -1 at index 0, columns w.. (to 2 * tw + 1) zero.
    let wp = 2 * t.tw + 2;
    for_chunks(v, 16 * tiles, parallel, |ci, vc| {
        let mut rows = vec![0f32; 8 * wp];
        let (raw, tr) = rows.split_at_mut(4 * wp);
        for s in 0..nb {
            let plane = &xs[(s * cin + ci) * hw..][..hw];
            for ty in 0..t.th {
                for (k, r) in raw.chunks_exact_mut(wp).enumerate() {
                    let y = (2 * ty + k).wrapping_sub(1);
                    if y < t.h {
                        r[1..=t.w].copy_from_slice(&plane[y * t.w..(y + 1) * t.w]);
                    } else {
                        r[1..=t.w].fill(0.0);
                    }
                }
                // B^T along columns: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
                let (r0, rest) = raw.split_at(wp);
                let (r1, rest) = rest.split_at(wp);
                let (r2, r3) = rest.split_at(wp);
                let (t0, rest) = tr.split_at_mut(wp);
                let (t1, rest) = rest.split_at_mut(wp);
                let (t2, t3) = rest.split_at_mut(wp);
                for x in 0..wp {
                    t0[x] = r0[x] - r2[x];
                    t1[x] = r1[x] + r2[x];
                    t2[x] = r2[x] - r1[x];
                    t3[x] = r1[x] - r3[x];
                }
                // ... then B along rows, tile by tile.
                let base = (s * t.th + ty) * t.tw;
                for (i, ti) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                    let row = |j: usize| (i * 4 + j) * tiles + base;
                    let (o0, rest) = vc[row(0)..].split_at_mut(tiles);
                    let (o1, rest) = rest.split_at_mut(tiles);
                    let (o2, rest) = rest.split_at_mut(tiles);
                    let o3 = &mut rest[..t.tw];
                    for tx in 0..t.tw {
                        let a = &ti[2 * tx..2 * tx + 4];
                        o0[tx] = a[0] - a[2];
                        o1[tx] = a[1] + a[2];
                        o2[tx] = a[2] - a[1];
                        o3[tx] = a[1] - a[3];
                    }
                }
            }
        }
    });
}

/// `A^T m A` of every tile of `m` (`[16, cout, nb * tiles]`) into the samples `ys`
/// (`[nb, cout, h, w]`).
fn transform_output(m: &[f32], nb: usize, cout: usize, t: Tiles, ys: &mut [f32], parallel: bool) {
    let tiles = nb * t.per_plane();
    let stride_xi = cout * tiles;
    let wq = 2 * t.tw;
    for_chunks(ys, t.h * t.w, parallel, |p, plane| {
        let (s, oc) = (p / cout, p % cout);
        let mut q = vec![0f32; 4 * wq];
        for ty in 0..t.th {
            let base = oc * tiles + (s * t.th + ty) * t.tw;
            // A along rows: (m0 + m1 + m2, m1 - m2 - m3) per tile.
            for (i, qi) in q.chunks_exact_mut(wq).enumerate() {
                let at = |j: usize| &m[(i * 4 + j) * stride_xi + base..][..t.tw];
                let (m0, m1, m2, m3) = (at(0), at(1), at(2), at(3));
                for (tx, pair) in qi.chunks_exact_mut(2).enumerate() {
                    pair[0] = m0[tx] + m1[tx] + m2[tx];
                    pair[1] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            // ... then A^T along columns, clipped to the plane.
            let (q0, rest) = q.split_at(wq);
            let (q1, rest) = rest.split_at(wq);
            let (q2, q3) = rest.split_at(wq);
            let y0 = 2 * ty;
            for (x, out) in plane[y0 * t.w..(y0 + 1) * t.w].iter_mut().enumerate() {
                *out = q0[x] + q1[x] + q2[x];
            }
            if y0 + 1 < t.h {
                for (x, out) in plane[(y0 + 1) * t.w..(y0 + 2) * t.w].iter_mut().enumerate() {
                    *out = q1[x] - q2[x] - q3[x];
                }
            }
        }
    });
}

/// The convolution of `x` (`[n, cin, h, w]`) with `kernel`, padding 1: returns
/// `[n, cout, h, w]`, then `each_sample` runs on every sample's output (the
/// epilogue, while it is still in cache).
pub(super) fn conv3x3(
    x: &[f32],
    n: usize,
    (h, w): (usize, usize),
    kernel: &Kernel,
    each_sample: impl Fn(&mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let (cin, cout) = (kernel.cin, kernel.cout);
    let t = Tiles::new(h, w);
    let (x_len, y_len) = (cin * h * w, cout * h * w);
    assert_eq!(x.len(), n * x_len, "winograd: input size");
    let chunks = t.chunks(n, TARGET_TILES);
    let outer = outer_parallel(chunks.len());
    let par = !outer;
    let mut y = vec![0f32; n * y_len];
    let run = |r: Range<usize>, ys: &mut [f32]| {
        let nb = r.len();
        let tiles = nb * t.per_plane();
        with_scratch(16 * (cin + cout) * tiles, |buf| {
            let (v, m) = buf.split_at_mut(16 * cin * tiles);
            transform_input(&x[r.start * x_len..r.end * x_len], nb, cin, t, v, par);
            for xi in 0..16 {
                let rhs = Mat {
                    data: &v[xi * tiles..],
                    rs: 16 * tiles,
                    cs: 1,
                };
                let dst = &mut m[xi * cout * tiles..(xi + 1) * cout * tiles];
                sgemm((cout, tiles, cin), dst, false, kernel.mat(xi), rhs, par);
            }
            transform_output(m, nb, cout, t, ys, par);
        });
        for yb in ys.chunks_mut(y_len) {
            each_sample(yb);
        }
    };
    run_pieces(pieces(&mut y, &chunks, y_len), outer, run);
    y
}

/// `A dY A^T` of every 2x2 tile of the output gradient `dys` (`[nb, cout, h, w]`, zero
/// beyond the plane) into `dm` (`[cout, 16, nb * tiles]`): the gradient of `M` in
/// [`conv3x3`]'s output transform.
fn transform_grad_output(
    dys: &[f32],
    nb: usize,
    cout: usize,
    t: Tiles,
    dm: &mut [f32],
    parallel: bool,
) {
    let (hw, tiles) = (t.h * t.w, nb * t.per_plane());
    let wq = 2 * t.tw;
    for_chunks(dm, 16 * tiles, parallel, |oc, dmc| {
        let mut rows = vec![0f32; 6 * wq];
        let (raw, e) = rows.split_at_mut(2 * wq);
        for s in 0..nb {
            let plane = &dys[(s * cout + oc) * hw..][..hw];
            for ty in 0..t.th {
                for (k, r) in raw.chunks_exact_mut(wq).enumerate() {
                    let y = 2 * ty + k;
                    if y < t.h {
                        r[..t.w].copy_from_slice(&plane[y * t.w..(y + 1) * t.w]);
                    } else {
                        r[..t.w].fill(0.0);
                    }
                }
                // A along columns: (d0, d0 + d1, d0 - d1, -d1).
                let (r0, r1) = raw.split_at(wq);
                let (e0, rest) = e.split_at_mut(wq);
                let (e1, rest) = rest.split_at_mut(wq);
                let (e2, e3) = rest.split_at_mut(wq);
                for x in 0..wq {
                    e0[x] = r0[x];
                    e1[x] = r0[x] + r1[x];
                    e2[x] = r0[x] - r1[x];
                    e3[x] = -r1[x];
                }
                // ... then A^T along rows, tile by tile.
                let base = (s * t.th + ty) * t.tw;
                for (i, ei) in [&*e0, &*e1, &*e2, &*e3].into_iter().enumerate() {
                    let row = |j: usize| (i * 4 + j) * tiles + base;
                    let (o0, rest) = dmc[row(0)..].split_at_mut(tiles);
                    let (o1, rest) = rest.split_at_mut(tiles);
                    let (o2, rest) = rest.split_at_mut(tiles);
                    let o3 = &mut rest[..t.tw];
                    for tx in 0..t.tw {
                        let (a, b) = (ei[2 * tx], ei[2 * tx + 1]);
                        o0[tx] = a;
                        o1[tx] = a + b;
                        o2[tx] = a - b;
                        o3[tx] = -b;
                    }
                }
            }
        }
    });
}

/// The weight gradient `[cout, cin, 3, 3]` of [`conv3x3`] with a forward kernel, from its
/// input `x` (`[n, cin, h, w]`) and output gradient `dy` (`[n, cout, h, w]`):
/// `dW = G^T [ sum over tiles of (A dY A^T) ⊙ (B^T d B) ] G`, the chain rule through the
/// forward's transforms (exact, since they compute the convolution exactly). The sum over
/// tiles is 16 gemms per chunk of samples; chunks are summed in fixed groups, then the groups
/// in order, so the result does not depend on the thread count.
pub(super) fn grad_weight(
    x: &[f32],
    dy: &[f32],
    n: usize,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    groups: usize,
) -> Vec<f32> {
    let t = Tiles::new(h, w);
    let (x_len, y_len, u_len) = (cin * h * w, cout * h * w, 16 * cout * cin);
    assert_eq!(x.len(), n * x_len, "winograd: input size");
    assert_eq!(dy.len(), n * y_len, "winograd: output gradient size");
    let chunks = t.chunks(n, TARGET_TILES);
    let groups = split_even(chunks.len(), groups);
    let outer = outer_parallel(groups.len());
    let par = !outer;
    let partial = |group: Range<usize>| -> Vec<f32> {
        let mut du = vec![0f32; u_len];
        for (j, r) in chunks[group].iter().enumerate() {
            let (nb, tiles) = (r.len(), r.len() * t.per_plane());
            with_scratch(16 * (cin + cout) * tiles, |buf| {
                let (v, dm) = buf.split_at_mut(16 * cin * tiles);
                transform_input(&x[r.start * x_len..r.end * x_len], nb, cin, t, v, par);
                let dys = &dy[r.start * y_len..r.end * y_len];
                transform_grad_output(dys, nb, cout, t, dm, par);
                for xi in 0..16 {
                    let lhs = Mat {
                        data: &dm[xi * tiles..],
                        rs: 16 * tiles,
                        cs: 1,
                    };
                    let rhs = Mat {
                        data: &v[xi * tiles..],
                        rs: 1,
                        cs: 16 * tiles,
                    };
                    let dst = &mut du[xi * cout * cin..(xi + 1) * cout * cin];
                    sgemm((cout, cin, tiles), dst, j > 0, lhs, rhs, par);
                }
            });
        }
        du
    };
    let parts: Vec<Vec<f32>> = if outer {
        groups.into_par_iter().map(partial).collect()
    } else {
        groups.into_iter().map(partial).collect()
    };
    // G^T dU G per kernel, summing the groups' dU in order first.
    let mut dw = vec![0f32; cout * cin * 9];
    dw.par_chunks_mut(cin * 9)
        .enumerate()
        .for_each(|(oc, dwo)| {
            for (ic, g) in dwo.chunks_exact_mut(9).enumerate() {
                let mut u = [0f32; 16];
                for (xi, v) in u.iter_mut().enumerate() {
                    let at = (xi * cout + oc) * cin + ic;
                    *v = parts.iter().fold(0.0, |acc, p| acc + p[at]);
                }
                g.copy_from_slice(&transform_kernel_grad(&u));
            }
        });
    dw
}

/// `G^T u G` of one 4x4 tile (row-major): the gradient of a 3x3 kernel from that of its
/// transform.
fn transform_kernel_grad(u: &[f32; 16]) -> [f32; 9] {
    // G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]]
    let col =
        |a: f32, b: f32, c: f32, d: f32| [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + d];
    let mut rows = [[0f32; 3]; 4];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = col(u[4 * r], u[4 * r + 1], u[4 * r + 2], u[4 * r + 3]);
    }
    let mut out = [0f32; 9];
    for j in 0..3 {
        let t = col(rows[0][j], rows[1][j], rows[2][j], rows[3][j]);
        for i in 0..3 {
            out[i * 3 + j] = t[i];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::pseudo_random;

    /// Direct 3x3, stride-1, padding-1 correlation in f64.
    fn reference(
        x: &[f32],
        wt: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        o: usize,
    ) -> Vec<f64> {
        let mut y = vec![0f64; n * o * h * w];
        for s in 0..n {
            for oc in 0..o {
                for yy in 0..h {
                    for xx in 0..w {
                        let mut acc = 0f64;
                        for ic in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((yy + ky).wrapping_sub(1), (xx + kx).wrapping_sub(1));
                                    if iy < h && ix < w {
                                        acc += f64::from(x[((s * c + ic) * h + iy) * w + ix])
                                            * f64::from(wt[((oc * c + ic) * 3 + ky) * 3 + kx]);
                                    }
                                }
                            }
                        }
                        y[((s * o + oc) * h + yy) * w + xx] = acc;
                    }
                }
            }
        }
        y
    }

    fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        got.iter()
            .zip(want)
            .fold(0f64, |m, (&g, &w)| m.max((f64::from(g) - w).abs() / scale))
    }

    #[test]
    fn forward_matches_direct_convolution_on_odd_and_even_sizes() {
        for &(n, c, h, w, o) in &[
            (1, 1, 1, 1, 1),
            (2, 3, 5, 7, 4),
            (3, 8, 7, 7, 5),
            (1, 16, 14, 9, 8),
        ] {
            let x = pseudo_random(n * c * h * w, 3);
            let wt = pseudo_random(o * c * 9, 4);
            let got = conv3x3(&x, n, (h, w), &Kernel::forward(&wt, o, c), |_| {});
            let err = max_rel_err(&got, &reference(&x, &wt, (n, c, h, w), o));
            assert!(
                err < 1e-6,
                "{n}x{c}x{h}x{w} -> {o}: max relative error {err:e}"
            );
        }
    }

    #[test]
    fn weight_gradient_matches_direct_sums() {
        // dW[o][c][ky][kx] = sum over samples and positions of dy[o](y, x) * x[c](y + ky - 1, x + kx - 1).
        for &(n, c, h, w, o, groups) in
            &[(1, 1, 1, 1, 1, 1), (3, 2, 5, 4, 3, 2), (5, 4, 7, 7, 6, 8)]
        {
            let x = pseudo_random(n * c * h * w, 7);
            let dy = pseudo_random(n * o * h * w, 8);
            let got = grad_weight(&x, &dy, n, (c, o), (h, w), groups);
            let mut want = vec![0f64; o * c * 9];
            for s in 0..n {
                for oc in 0..o {
                    for ic in 0..c {
                        for k in 0..9 {
                            let (ky, kx) = (k / 3, k % 3);
                            for yy in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) =
                                        ((yy + ky).wrapping_sub(1), (xx + kx).wrapping_sub(1));
                                    if iy < h && ix < w {
                                        want[(oc * c + ic) * 9 + k] +=
                                            f64::from(dy[((s * o + oc) * h + yy) * w + xx])
                                                * f64::from(x[((s * c + ic) * h + iy) * w + ix]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let err = max_rel_err(&got, &want);
            assert!(
                err < 1e-6,
                "{n}x{c}x{h}x{w} -> {o}: max relative error {err:e}"
            );
        }
    }

    #[test]
    fn input_grad_kernel_is_the_rotated_transposed_correlation() {
        // dx = conv(dy, rot180(w) with in/out swapped), written out directly.
        let (n, c, h, w, o) = (2, 3, 6, 5, 4);
        let dy = pseudo_random(n * o * h * w, 5);
        let wt = pseudo_random(o * c * 9, 6);
        let mut rotated = vec![0f32; c * o * 9];
        for oc in 0..o {
            for ic in 0..c {
                for k in 0..9 {
                    rotated[(ic * o + oc) * 9 + k] = wt[(oc * c + ic) * 9 + 8 - k];
                }
            }
        }
        let got = conv3x3(&dy, n, (h, w), &Kernel::input_grad(&wt, o, c), |_| {});
        let err = max_rel_err(&got, &reference(&dy, &rotated, (n, o, h, w), c));
        assert!(err < 1e-6, "max relative error {err:e}");
    }
}

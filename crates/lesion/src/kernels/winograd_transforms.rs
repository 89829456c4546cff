//! The arithmetic of the Winograd transforms, shared by the portable path (`winograd.rs`) and
//! the x86 vector path (`winograd_x86.rs`): the 1-D transforms of each tile size
//! ([`Transforms`]: [`F2`], [`F4`]), written once over [`Arith`] so that both paths run the
//! same operations in the same order and agree to the bit; the 2-D transforms of 16 tiles at
//! once ([`Block`], one tile per SIMD lane); and the tile grid of a plane ([`Tiles`]).

use std::ops::{Add, Mul, Range, Sub};

use super::parallel::split_even;

/// Tiles per lane group of the transforms: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

/// Zeros after the padded input planes: the vectorised input transform's loads read up to
/// `2 * LANES + 3` values past a tile row's first patch, into the next rows (whose values
/// only reach unused lanes) and, on the last row, past the planes.
pub(super) const INPUT_SLACK: usize = 2 * LANES + 4;

/// An `a x a` tile (row-major, the rest unused) of [`LANES`] tiles at once, lane innermost,
/// so that each 1-D transform below compiles to whole-register operations.
pub(super) type Block = [[[f32; LANES]; 6]; 6];

pub(super) const ZERO_BLOCK: Block = [[[0.0; LANES]; 6]; 6];

/// What the data transforms compute on: one `f32`, or one per lane of a register (`V` in
/// `winograd_x86.rs`). Both run the same formulas in the same order, so they agree to the bit.
pub(super) trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
    const ZERO: Self;
}

impl Arith for f32 {
    const ZERO: Self = 0.0;
}

/// The 1-D transforms of one tile size; the 2-D ones apply them along columns, then rows.
/// Arrays hold `A` (or `M`) values; the rest are unused.
pub(super) trait Transforms {
    /// Output tile side.
    const M: usize;
    /// Transformed tile side, `M + 2`.
    const A: usize = Self::M + 2;
    /// `B^T d`.
    fn input<V: Arith>(d: [V; 6]) -> [V; 6];
    /// `A^T m`.
    fn output<V: Arith>(m: [V; 6]) -> [V; 4];
    /// `G g`.
    fn kernel(g: [f32; 3]) -> [f32; 6];
}

/// F(2x2, 3x3), interpolation points 0, 1, -1 and infinity.
pub(super) struct F2;

impl Transforms for F2 {
    const M: usize = 2;

    #[inline(always)]
    fn input<V: Arith>([d0, d1, d2, d3, ..]: [V; 6]) -> [V; 6] {
        [d0 - d2, d1 + d2, d2 - d1, d1 - d3, V::ZERO, V::ZERO]
    }

    #[inline(always)]
    fn output<V: Arith>([m0, m1, m2, m3, ..]: [V; 6]) -> [V; 4] {
        [m0 + m1 + m2, m1 - m2 - m3, V::ZERO, V::ZERO]
    }

    #[inline(always)]
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2, 0.0, 0.0]
    }
}

/// F(4x4, 3x3), interpolation points 0, 1, -1, 2, -2 and infinity.
pub(super) struct F4;

impl Transforms for F4 {
    const M: usize = 4;

    // Constants multiply from the right (`Mul<f32>`); IEEE products commute exactly.
    #[inline(always)]
    fn input<V: Arith>([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6] {
        let (a, b) = (d4 - d2 * 4.0, d3 - d1 * 4.0);
        let (c, e) = (d4 - d2, (d3 - d1) * 2.0);
        [
            d0 * 4.0 - d2 * 5.0 + d4,
            a + b,
            a - b,
            c + e,
            c - e,
            d1 * 4.0 - d3 * 5.0 + d5,
        ]
    }

    #[inline(always)]
    fn output<V: Arith>([m0, m1, m2, m3, m4, m5]: [V; 6]) -> [V; 4] {
        let (s12, d12) = (m1 + m2, m1 - m2);
        let (s34, d34) = (m3 + m4, m3 - m4);
        [
            m0 + s12 + s34,
            d12 + d34 * 2.0,
            s12 + s34 * 4.0,
            d12 + d34 * 8.0 + m5,
        ]
    }

    #[inline(always)]
    fn kernel([g0, g1, g2]: [f32; 3]) -> [f32; 6] {
        let (even, odd) = (g0 + g2, g1);
        let (q0, q1) = (g0 / 24.0 + g2 / 6.0, g1 / 12.0);
        [
            g0 / 4.0,
            -(even + odd) / 6.0,
            -(even - odd) / 6.0,
            q0 + q1,
            q0 - q1,
            g2,
        ]
    }
}

/// `f` (a 1-D transform of `n_in` values into `n_out`) applied lane by lane to each of the
/// first `lines` lines of `src` into `dst`: rows when `ROWS`, else columns.
#[inline(always)]
fn transform_lines<const ROWS: bool, const I: usize, const O: usize>(
    src: &Block,
    dst: &mut Block,
    (n_in, n_out, lines): (usize, usize, usize),
    f: impl Fn([f32; I]) -> [f32; O],
) {
    // (row, column) of element `k` of line `line`.
    let at = |line: usize, k: usize| if ROWS { (line, k) } else { (k, line) };
    for line in 0..lines {
        for l in 0..LANES {
            let out = f(std::array::from_fn(|k| {
                let (r, c) = at(line, k);
                if k < n_in {
                    src[r][c][l]
                } else {
                    0.0
                }
            }));
            for (k, v) in out.into_iter().take(n_out).enumerate() {
                let (r, c) = at(line, k);
                dst[r][c][l] = v;
            }
        }
    }
}

/// The first `valid` lanes of `src` into `dst`; a whole register's worth is a fixed-size
/// copy (a few vector moves, not a `memcpy` call).
#[inline(always)]
pub(super) fn store(dst: &mut [f32], src: &[f32; LANES], valid: usize) {
    if valid == LANES {
        dst[..LANES].copy_from_slice(src);
    } else {
        dst[..valid].copy_from_slice(&src[..valid]);
    }
}

/// The first `valid` values of `src` into the first lanes of `dst`, as [`store`].
#[inline(always)]
pub(super) fn load(dst: &mut [f32; LANES], src: &[f32], valid: usize) {
    if valid == LANES {
        dst.copy_from_slice(&src[..LANES]);
    } else {
        dst[..valid].copy_from_slice(&src[..valid]);
    }
}

/// `B^T d B` of the patches in `d`, in place (`tmp` is scratch).
#[inline(always)]
pub(super) fn input_tile<T: Transforms>(d: &mut Block, tmp: &mut Block) {
    transform_lines::<false, _, _>(d, tmp, (T::A, T::A, T::A), T::input::<f32>);
    transform_lines::<true, _, _>(tmp, d, (T::A, T::A, T::A), T::input::<f32>);
}

/// `A^T m A` of the transformed tiles in `m`, in place into its first `M x M` (`tmp` is
/// scratch).
#[inline(always)]
pub(super) fn output_tile<T: Transforms>(m: &mut Block, tmp: &mut Block) {
    transform_lines::<false, _, _>(m, tmp, (T::A, T::M, T::A), T::output::<f32>);
    transform_lines::<true, _, _>(tmp, m, (T::A, T::M, T::M), T::output::<f32>);
}

/// `G g G^T` of the 3x3 kernels in `g`, in place into its first `A x A` (`tmp` is scratch).
#[inline(always)]
pub(super) fn kernel_tile<T: Transforms>(g: &mut Block, tmp: &mut Block) {
    transform_lines::<false, _, _>(g, tmp, (3, T::A, 3), T::kernel);
    transform_lines::<true, _, _>(tmp, g, (3, T::A, T::A), T::kernel);
}

/// Tile grid of an `h x w` plane.
#[derive(Clone, Copy)]
pub(super) struct Tiles {
    pub(super) h: usize,
    pub(super) w: usize,
    /// Tile rows, `ceil(h / m)`.
    pub(super) th: usize,
    /// Tile columns, `ceil(w / m)`.
    pub(super) tw: usize,
}

impl Tiles {
    /// The grid of `m x m` output tiles.
    pub(super) fn new(h: usize, w: usize, m: usize) -> Self {
        Self {
            h,
            w,
            th: h.div_ceil(m),
            tw: w.div_ceil(m),
        }
    }

    pub(super) fn per_plane(&self) -> usize {
        self.th * self.tw
    }

    /// Consecutive samples handled together, about `target` tiles each.
    pub(super) fn chunks(&self, n: usize, target: usize) -> Vec<Range<usize>> {
        let per = target.div_ceil(self.per_plane()).clamp(1, n.max(1));
        split_even(n, n.div_ceil(per))
    }

    /// Sample, tile row and tile column of tile `t`.
    pub(super) fn locate(&self, t: usize) -> (usize, usize, usize) {
        let (s, r) = (t / self.per_plane(), t % self.per_plane());
        (s, r / self.tw, r % self.tw)
    }
}

/// `G^T u G` of one 4x4 tile (row-major): the gradient of a 3x3 kernel from that of its
/// transform.
pub(super) fn transform_kernel_grad(u: &[f32; 16]) -> [f32; 9] {
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

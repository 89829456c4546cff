//! x86-64 versions of the F(2x2, 3x3) data transforms ([`input_channel`],
//! [`output_channel`]), on AVX-512F (16 lanes) or AVX2 (8 lanes), chosen at run time
//! ([`level`], [`suits`]).
//!
//! The portable transforms gather each lane's patch element by element (about 500 scalar
//! loads and stores per 16 tiles) and compile for baseline x86-64 (SSE2). Here the lanes are
//! neighbouring tiles of one tile row, so each patch element is one stride-2 load (two vector
//! loads and a permute), outputs are interleaved back by permutes, results go out with masked
//! vector stores, and the transform arithmetic runs on whole registers ([`V`]). It is the same
//! [`Transforms`] code as the portable path, in the same order, so results agree to the bit
//! (`simd_transforms_agree_with_portable_ones_to_the_bit` in `winograd.rs`'s tests, on every
//! level the CPU has).
//!
//! A tile row of `tw` tiles takes `ceil(tw / lanes)` register groups, so lanes idle on small
//! planes; [`suits`] keeps those on the portable path.

use std::arch::x86_64::{
    __m256, __m256i, __m512, __mmask16, _mm256_castpd_ps, _mm256_castps_pd, _mm256_cmpgt_epi32,
    _mm256_loadu_ps, _mm256_maskload_ps, _mm256_maskstore_ps, _mm256_permute2f128_ps,
    _mm256_permute4x64_pd, _mm256_set1_epi32, _mm256_setr_epi32, _mm256_shuffle_ps,
    _mm256_storeu_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps, _mm512_loadu_ps,
    _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_permutex2var_ps, _mm512_setr_epi32,
};
use std::ops::{Add, Mul, Sub};
use std::sync::OnceLock;

use super::winograd_transforms::{Arith, Tiles, Transforms, F2, INPUT_SLACK};

/// The instruction set the vectorised transforms run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// AVX-512F: 16 tiles per register.
    Avx512,
    /// AVX2: 8 tiles per register.
    Avx2,
}

impl Level {
    /// The levels this CPU has, best first.
    pub(super) fn supported() -> Vec<Level> {
        let mut out = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            out.push(Level::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            out.push(Level::Avx2);
        }
        out
    }
}

/// The best level this CPU has (checked once), or none. `LESION_SIMD=portable` turns the
/// vectorised path off (and runs the portable code as compiled for baseline x86-64) and
/// `LESION_SIMD=avx2` keeps it to AVX2, for measurements.
pub(super) fn level() -> Option<Level> {
    static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let supported = Level::supported();
        match std::env::var("LESION_SIMD").as_deref() {
            Ok("portable") => None,
            Ok("avx2") => supported.into_iter().find(|&l| l == Level::Avx2),
            _ => supported.first().copied(),
        }
    })
}

/// The level the transforms of `T` on planes of `t` take, if any: F(2x2, 3x3) and at least
/// 7 tiles per tile row (planes 13 wide and up). With fewer tiles a row fills less than half
/// of a 16-lane register, and the 7x7 maps (4 tiles per row) ran slower here than on the
/// portable path; from 14x14 up this path is faster on both levels. F(4x4, 3x3) stays on the
/// portable code (compiled for AVX2): its 6x6 patches made inference slower on this path.
/// Measurements are in `docs/benchmarks.md`.
pub(super) fn suits<T: Transforms>(t: Tiles) -> Option<Level> {
    if T::M == F2::M && t.tw >= 7 {
        level()
    } else {
        None
    }
}

/// `L` values, one per lane, as an array so that it crosses function boundaries by memory
/// (the Rust ABI) and compiles to one register where inlined into the functions below.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct V<const L: usize>([f32; L]);

impl<const L: usize> Add for V<L> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        V(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
}

impl<const L: usize> Sub for V<L> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        V(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
}

impl<const L: usize> Mul<f32> for V<L> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, k: f32) -> Self {
        V(self.0.map(|v| v * k))
    }
}

impl<const L: usize> Arith for V<L> {
    const ZERO: Self = V([0.0; L]);
}

/// The vector operations the transforms need beyond arithmetic. Every method is `unsafe`:
/// the CPU must have the instruction set, which the `#[target_feature]` entry points below
/// state for the code they inline these into.
trait Isa {
    /// Lanes per register.
    const L: usize;
    type V: Arith;
    /// `p[2 l]` in lane `l`; reads `p .. p + 2 L`.
    unsafe fn stride2(p: *const f32) -> Self::V;
    /// The first `n` lanes (`n <= L`) from `p`, zero in the others.
    unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
    /// The first `n` lanes (`n <= L`) of `v` to `p .. p + n`.
    unsafe fn store_first(p: *mut f32, n: usize, v: Self::V);
    /// `r0` and `r1` interleaved lane by lane: `r0[0], r1[0], r0[1], ..` in two registers.
    unsafe fn interleave(r0: Self::V, r1: Self::V) -> [Self::V; 2];
}

struct Avx512;

impl Avx512 {
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }
}

impl Isa for Avx512 {
    const L: usize = 16;
    type V = V<16>;

    #[inline(always)]
    unsafe fn stride2(p: *const f32) -> V<16> {
        // SAFETY: the caller guarantees 32 readable values from `p` and AVX-512F.
        unsafe {
            let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            to_v(_mm512_permutex2var_ps(a, even, b))
        }
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> V<16> {
        // SAFETY: the caller guarantees `p .. p + n` readable and AVX-512F.
        to_v(unsafe { _mm512_maskz_loadu_ps(Self::mask(n), p) })
    }

    #[inline(always)]
    unsafe fn store_first(p: *mut f32, n: usize, v: V<16>) {
        // SAFETY: the caller guarantees `p .. p + n` writable and AVX-512F.
        unsafe { _mm512_mask_storeu_ps(p, Self::mask(n), from_v::<16, __m512>(v)) }
    }

    #[inline(always)]
    unsafe fn interleave(r0: V<16>, r1: V<16>) -> [V<16>; 2] {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe {
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            let (r0, r1) = (from_v::<16, __m512>(r0), from_v::<16, __m512>(r1));
            [
                to_v(_mm512_permutex2var_ps(r0, lo, r1)),
                to_v(_mm512_permutex2var_ps(r0, hi, r1)),
            ]
        }
    }
}

struct Avx2;

impl Avx2 {
    /// All ones in the first `n` lanes (`n <= 8`).
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }
}

impl Isa for Avx2 {
    const L: usize = 8;
    type V = V<8>;

    #[inline(always)]
    unsafe fn stride2(p: *const f32) -> V<8> {
        // SAFETY: the caller guarantees 16 readable values from `p` and AVX2.
        unsafe {
            let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            // [a0 a2 b0 b2 | a4 a6 b4 b6], then its 64-bit pairs in the order 0, 2, 1, 3.
            let evens = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            to_v(_mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                _mm256_castps_pd(evens),
            )))
        }
    }

    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> V<8> {
        // SAFETY: the caller guarantees `p .. p + n` readable and AVX2.
        to_v(unsafe {
            // Nearly every load is a whole register; a plain load needs no mask built.
            if n >= 8 {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, Self::mask(n))
            }
        })
    }

    #[inline(always)]
    unsafe fn store_first(p: *mut f32, n: usize, v: V<8>) {
        // SAFETY: the caller guarantees `p .. p + n` writable and AVX2.
        unsafe {
            // AMD's masked stores are microcoded and several times slower than plain ones.
            if n >= 8 {
                _mm256_storeu_ps(p, from_v::<8, __m256>(v))
            } else {
                _mm256_maskstore_ps(p, Self::mask(n), from_v::<8, __m256>(v))
            }
        }
    }

    #[inline(always)]
    unsafe fn interleave(r0: V<8>, r1: V<8>) -> [V<8>; 2] {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let (r0, r1) = (from_v::<8, __m256>(r0), from_v::<8, __m256>(r1));
            // Within 128-bit halves: lo = [r0_0 r1_0 r0_1 r1_1 | r0_4 ..], hi = [r0_2 .. | r0_6 ..].
            let (lo, hi) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            [
                to_v(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                to_v(_mm256_permute2f128_ps::<0x31>(lo, hi)),
            ]
        }
    }
}

/// The lane groups covering the tile row of `tw` tiles that starts at tile `base` of
/// `tiles`: each group's first tile in the row, and how many of its lanes to read or write in
/// the `[.., tiles]` rows of transformed tiles.
///
/// Groups start every `l`-th tile, with the last one moved back to end with the row where
/// the row has `l` tiles or more. It then recomputes a few tiles (to the same bits) but
/// touches whole registers: masked stores are microcoded on AMD's AVX2 and took most of the
/// transforms' time there. A group also keeps all `l` lanes where they end within the tiles:
/// the lanes past the row then land on later rows' tiles, which are written after these.
fn groups(tw: usize, l: usize, base: usize, tiles: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..tw).step_by(l).map(move |tx0| {
        let tx0 = tx0.min(tw.saturating_sub(l));
        let keep = if base + tx0 + l <= tiles { l } else { tw - tx0 };
        (tx0, keep)
    })
}

/// A register as lanes.
#[inline(always)]
fn to_v<R: Copy, const L: usize>(r: R) -> V<L> {
    const { assert!(size_of::<R>() == 4 * L) };
    // SAFETY: same size (checked above), any bit pattern is a valid f32.
    unsafe { std::mem::transmute_copy::<R, V<L>>(&r) }
}

/// Lanes as a register.
#[inline(always)]
fn from_v<const L: usize, R: Copy>(v: V<L>) -> R {
    const { assert!(size_of::<R>() == 4 * L) };
    // SAFETY: as in `to_v`; the registers are plain vectors of f32.
    unsafe { std::mem::transmute_copy::<V<L>, R>(&v) }
}

/// `B^T d B` of the tiles of one channel of `nb` samples, read from its zero-bordered planes
/// `padded` (`[nb, hp, wp]`, then [`INPUT_SLACK`] more values), into `vc` (`[16, tiles]`).
///
/// # Safety
/// The CPU must have `level`'s instruction set ([`Level::supported`]).
pub(super) unsafe fn input_channel(
    level: Level,
    padded: &[f32],
    nb: usize,
    t: Tiles,
    hw: (usize, usize),
    vc: &mut [f32],
) {
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(padded: &[f32], nb: usize, t: Tiles, hw: (usize, usize), vc: &mut [f32]) {
        // SAFETY: this function's target feature.
        unsafe { input::<Avx512>(padded, nb, t, hw, vc) }
    }
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(padded: &[f32], nb: usize, t: Tiles, hw: (usize, usize), vc: &mut [f32]) {
        // SAFETY: this function's target feature.
        unsafe { input::<Avx2>(padded, nb, t, hw, vc) }
    }
    // SAFETY: the caller guarantees the level's instruction set.
    unsafe {
        match level {
            Level::Avx512 => avx512(padded, nb, t, hw, vc),
            Level::Avx2 => avx2(padded, nb, t, hw, vc),
        }
    }
}

#[inline(always)]
unsafe fn input<I: Isa>(
    padded: &[f32],
    nb: usize,
    t: Tiles,
    (hp, wp): (usize, usize),
    vc: &mut [f32],
) {
    type T = F2;
    let tiles = nb * t.per_plane();
    assert!(
        padded.len() >= nb * hp * wp + INPUT_SLACK && INPUT_SLACK >= 2 * I::L + 4,
        "winograd: padded planes"
    );
    assert!(
        vc.len() >= T::A * T::A * tiles,
        "winograd: transformed input"
    );
    for s in 0..nb {
        for ty in 0..t.th {
            let base = (s * t.th + ty) * t.tw;
            for (tx0, keep) in groups(t.tw, I::L, base, tiles) {
                // d[k][j]: element (k, j) of each lane's patch.
                let mut d = [[I::V::ZERO; 6]; 6];
                for (k, dk) in d.iter_mut().take(T::A).enumerate() {
                    let at = (s * hp + T::M * ty + k) * wp + T::M * tx0;
                    for (j, dkj) in dk.iter_mut().take(T::A).enumerate() {
                        // SAFETY: at <= (nb hp - 1) wp + 2 tx0 with 2 tx0 <= wp - 4, so
                        // at + j + 2 L <= nb hp wp + 2 L + 3 <= padded.len() (asserted).
                        *dkj = unsafe { I::stride2(padded.as_ptr().add(at + j)) };
                    }
                }
                // B^T down the columns, then B along the rows (the portable order).
                let cols: [[I::V; 6]; 6] =
                    std::array::from_fn(|j| T::input(std::array::from_fn(|k| d[k][j])));
                for i in 0..T::A {
                    let row = T::input(std::array::from_fn(|j| cols[j][i]));
                    for (j, &v) in row.iter().take(T::A).enumerate() {
                        let at = (i * T::A + j) * tiles + base + tx0;
                        // SAFETY: the `keep` values stored end at (i a + j) tiles + tiles
                        // at most, within `vc` (asserted).
                        unsafe { I::store_first(vc.as_mut_ptr().add(at), keep, v) };
                    }
                }
            }
        }
    }
}

/// `A^T m A` of the tiles of output channel `oc` (of `cout`) from `m` (`[16, cout, tiles]`)
/// into its planes (one per sample of the chunk), clipped to the planes.
///
/// # Safety
/// The CPU must have `level`'s instruction set ([`Level::supported`]).
pub(super) unsafe fn output_channel(
    level: Level,
    m: &[f32],
    oc: (usize, usize),
    t: Tiles,
    planes: &mut [&mut [f32]],
) {
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(m: &[f32], oc: (usize, usize), t: Tiles, planes: &mut [&mut [f32]]) {
        // SAFETY: this function's target feature.
        unsafe { output::<Avx512>(m, oc, t, planes) }
    }
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(m: &[f32], oc: (usize, usize), t: Tiles, planes: &mut [&mut [f32]]) {
        // SAFETY: this function's target feature.
        unsafe { output::<Avx2>(m, oc, t, planes) }
    }
    // SAFETY: the caller guarantees the level's instruction set.
    unsafe {
        match level {
            Level::Avx512 => avx512(m, oc, t, planes),
            Level::Avx2 => avx2(m, oc, t, planes),
        }
    }
}

#[inline(always)]
unsafe fn output<I: Isa>(
    m: &[f32],
    (oc, cout): (usize, usize),
    t: Tiles,
    planes: &mut [&mut [f32]],
) {
    type T = F2;
    let tiles = planes.len() * t.per_plane();
    assert!(
        m.len() >= T::A * T::A * cout * tiles,
        "winograd: gemm output"
    );
    for (s, plane) in planes.iter_mut().enumerate() {
        assert!(plane.len() >= t.h * t.w, "winograd: output plane");
        for ty in 0..t.th {
            let base = (s * t.th + ty) * t.tw;
            let rows = (t.h - T::M * ty).min(T::M);
            for (tx0, keep) in groups(t.tw, I::L, base, tiles) {
                // Lanes past the row reach the arithmetic but no store below.
                let at = oc * tiles + base + tx0;
                // Row `k` of every lane's 4x4 `m` (element (k, j) at `(4 k + j) cout tiles`).
                let row = |k: usize| -> [I::V; 4] {
                    std::array::from_fn(|j| {
                        let at = at + (k * T::A + j) * cout * tiles;
                        // SAFETY: the `keep` values read end within `m` (asserted).
                        unsafe { I::load_first(m.as_ptr().add(at), keep) }
                    })
                };
                // A^T down the columns, one row of `m` at a time so that few registers are
                // live (the generic 6x6 blocks spilled to the stack): column j's
                // (m0 + m1) + m2 and (m1 - m2) - m3, as `F2::output` sums them.
                let (m0, m1) = (row(0), row(1));
                let mut c0: [I::V; 4] = std::array::from_fn(|j| m0[j] + m1[j]);
                let mut c1 = m1;
                let m2 = row(2);
                for j in 0..4 {
                    c0[j] = c0[j] + m2[j];
                    c1[j] = c1[j] - m2[j];
                }
                let m3 = row(3);
                for j in 0..4 {
                    c1[j] = c1[j] - m3[j];
                }
                let cols = [c0, c1];
                let width = (t.w - T::M * tx0).min(T::M * I::L);
                for (i, c) in cols.iter().enumerate().take(rows) {
                    let r = T::output([c[0], c[1], c[2], c[3], I::V::ZERO, I::V::ZERO]);
                    // SAFETY: as the caller guarantees for the whole function.
                    let out = unsafe { I::interleave(r[0], r[1]) };
                    let at = (T::M * ty + i) * t.w + T::M * tx0;
                    for (q, &v) in out.iter().enumerate() {
                        let (at, valid) = (at + q * I::L, width.saturating_sub(q * I::L));
                        // A whole register where it ends within the plane and the values
                        // past `valid` land on rows stored after this one: the next tile
                        // row's, or this group's next row when it is the row's only group
                        // (the others store whole registers anyway, see `groups`).
                        let n = if (tx0 == 0 || i + 1 == rows) && at + I::L <= t.h * t.w {
                            I::L
                        } else {
                            valid.min(I::L)
                        };
                        if valid > 0 {
                            // SAFETY: the n values from `at` end within the plane (the row
                            // ends within it, `width` being clipped to the plane).
                            unsafe { I::store_first(plane.as_mut_ptr().add(at), n, v) };
                        }
                    }
                }
            }
        }
    }
}

//! AVX-512 versions of the F(2x2, 3x3) data transforms ([`input_channel`],
//! [`output_channel`]), chosen at run time ([`suits`]).
//!
//! The portable transforms gather each lane's patch element by element (about 500 scalar
//! loads and stores per 16 tiles). Here the [`LANES`] lanes are neighbouring tiles of one
//! tile row, so each patch element is one stride-2 load (two vector loads and a permute),
//! outputs are interleaved back by permutes, results go out with masked vector stores, and
//! the transform arithmetic runs on whole registers ([`V16`]). It is the same [`Transforms`]
//! code as the portable path, in the same order, so results agree to the bit
//! (`simd_transforms_agree_with_portable_ones_to_the_bit` in the parent's tests).
//!
//! A tile row of `tw` tiles takes `ceil(tw / 16)` register groups, so lanes idle on small
//! planes; [`suits`] keeps those on the portable path.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_permutex2var_ps, _mm512_setr_epi32,
};
use std::ops::{Add, Mul, Sub};
use std::sync::OnceLock;

use super::{Arith, Tiles, Transforms, F2, INPUT_SLACK, LANES};

/// Whether this CPU has AVX-512F (checked once). `LESION_SIMD=portable` turns the AVX-512
/// path off, for measurements.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("LESION_SIMD").as_deref() != Ok("portable")
            && std::arch::is_x86_feature_detected!("avx512f")
    })
}

/// Whether the transforms of `T` on planes of `t` take this path: F(2x2, 3x3), AVX-512F and
/// at least 7 tiles per tile row (7 of a register's 16 lanes busy). Measured on the
/// project's CPU (2 threads, whole convolutions, 64-128 channels): 15-25% faster from
/// 14x14 up, 7% slower at 7x7 (4 tiles per row); a training step at batch 128 ran 2.08 s
/// against 2.23 s portable, 2.13 s with 4x4-tile maps included. F(4x4, 3x3) stays
/// portable: its 6x6 patches made inference slower on this path (117 against 131 img/s
/// at batch 32), even on the 56x56 maps alone.
pub(super) fn suits<T: Transforms>(t: Tiles) -> bool {
    T::M == F2::M && t.tw >= 7 && available()
}

/// One value per lane, as an array so that it crosses function boundaries by memory (the
/// Rust ABI) and compiles to one register where inlined into the functions below.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(super) struct V16([f32; LANES]);

impl Add for V16 {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        V16(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
}

impl Sub for V16 {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        V16(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
}

impl Mul<f32> for V16 {
    type Output = Self;
    #[inline(always)]
    fn mul(self, k: f32) -> Self {
        V16(self.0.map(|v| v * k))
    }
}

impl Arith for V16 {
    const ZERO: Self = V16([0.0; LANES]);
}

#[inline(always)]
fn v16(x: __m512) -> V16 {
    // SAFETY: both are 64 bytes of 16 f32, any bit pattern valid.
    unsafe { std::mem::transmute::<__m512, V16>(x) }
}

#[inline(always)]
fn m512(x: V16) -> __m512 {
    // SAFETY: as in `v16`.
    unsafe { std::mem::transmute::<V16, __m512>(x) }
}

/// The first `n` lanes (`n <= 16`).
#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(LANES)) - 1) as __mmask16
}

/// `p[2 l]` in lane `l`.
///
/// # Safety
/// `p .. p + 32` must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn stride2(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 32 readable values from `p`.
    let (a, b) = unsafe { (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))) };
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    _mm512_permutex2var_ps(a, even, b)
}

/// `B^T d B` of the tiles of one channel of `nb` samples, read from its zero-bordered planes
/// `padded` (`[nb, hp, wp]`, then [`INPUT_SLACK`] more values), into `vc` (`[16, tiles]`).
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn input_channel(
    padded: &[f32],
    nb: usize,
    t: Tiles,
    (hp, wp): (usize, usize),
    vc: &mut [f32],
) {
    type T = F2;
    let tiles = nb * t.per_plane();
    assert!(
        padded.len() >= nb * hp * wp + INPUT_SLACK,
        "winograd: padded planes"
    );
    assert!(
        vc.len() >= T::A * T::A * tiles,
        "winograd: transformed input"
    );
    for s in 0..nb {
        for ty in 0..t.th {
            let base = (s * t.th + ty) * t.tw;
            for tx0 in (0..t.tw).step_by(LANES) {
                let keep = mask(t.tw - tx0);
                // d[k][j]: element (k, j) of each lane's patch.
                let mut d = [[V16::ZERO; 6]; 6];
                for (k, dk) in d.iter_mut().take(T::A).enumerate() {
                    let at = (s * hp + T::M * ty + k) * wp + T::M * tx0;
                    for (j, dkj) in dk.iter_mut().take(T::A).enumerate() {
                        // SAFETY: at <= (nb hp - 1) wp + 2 tx0 with 2 tx0 <= wp - 4, so
                        // at + j + 32 <= nb hp wp + 31 < padded.len() (asserted above).
                        *dkj = v16(unsafe { stride2(padded.as_ptr().add(at + j)) });
                    }
                }
                // B^T down the columns, then B along the rows (the portable order).
                let cols: [[V16; 6]; 6] =
                    std::array::from_fn(|j| T::input(std::array::from_fn(|k| d[k][j])));
                for i in 0..T::A {
                    let row = T::input(std::array::from_fn(|j| cols[j][i]));
                    for (j, &v) in row.iter().take(T::A).enumerate() {
                        let at = (i * T::A + j) * tiles + base + tx0;
                        // SAFETY: lanes past the row's last tile are masked off, so the
                        // store ends at (i a + j) tiles + base + tw <= a² tiles (asserted).
                        unsafe { _mm512_mask_storeu_ps(vc.as_mut_ptr().add(at), keep, m512(v)) };
                    }
                }
            }
        }
    }
}

/// `r0` and `r1` interleaved lane by lane: `r0[0], r1[0], r0[1], ..` in two registers.
#[target_feature(enable = "avx512f")]
#[inline]
fn interleave(r0: V16, r1: V16) -> [__m512; 2] {
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let (r0, r1) = (m512(r0), m512(r1));
    [
        _mm512_permutex2var_ps(r0, lo, r1),
        _mm512_permutex2var_ps(r0, hi, r1),
    ]
}

/// `A^T m A` of the tiles of output channel `oc` (of `cout`) from `m` (`[16, cout, tiles]`)
/// into its planes (one per sample of the chunk), clipped to the planes.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_channel(
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
            for tx0 in (0..t.tw).step_by(LANES) {
                let keep = mask(t.tw - tx0);
                let b: [[V16; 6]; 6] = std::array::from_fn(|k| {
                    std::array::from_fn(|j| {
                        if k < T::A && j < T::A {
                            let at = ((k * T::A + j) * cout + oc) * tiles + base + tx0;
                            // SAFETY: masked to the row's tiles, which end within `m`.
                            v16(unsafe { _mm512_maskz_loadu_ps(keep, m.as_ptr().add(at)) })
                        } else {
                            V16::ZERO
                        }
                    })
                });
                // A^T down the columns, then A along the rows (the portable order).
                let cols: [[V16; 4]; 6] =
                    std::array::from_fn(|j| T::output(std::array::from_fn(|k| b[k][j])));
                let width = (t.w - T::M * tx0).min(T::M * LANES);
                for i in 0..rows {
                    let r = T::output(std::array::from_fn(|j| cols[j][i]));
                    let out = interleave(r[0], r[1]);
                    let at = (T::M * ty + i) * t.w + T::M * tx0;
                    for (q, &v) in out.iter().enumerate() {
                        let n = width.saturating_sub(q * LANES);
                        if n > 0 {
                            // SAFETY: the first n <= width - 16 q values from at + 16 q lie
                            // in the plane's row (width is clipped to the plane).
                            unsafe {
                                _mm512_mask_storeu_ps(
                                    plane.as_mut_ptr().add(at + q * LANES),
                                    mask(n),
                                    v,
                                )
                            };
                        }
                    }
                }
            }
        }
    }
}

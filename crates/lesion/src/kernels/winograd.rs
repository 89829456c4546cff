//! Winograd convolution (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016) for 3x3, stride-1, padding-1 convolutions: 13 of ResNet-18's 20 convolutions and
//! about 80% of its arithmetic. Two tile sizes ([`Tile`]):
//! - F(4x4, 3x3): each 4x4 output tile from the 6x6 input patch around it, 36 multiplications
//!   per tile and channel pair instead of 144 (4x fewer). Its transforms multiply by up to 8
//!   and its kernel transform by 1/6 and 1/24, so it is about 10x less accurate: used for
//!   eval-mode inference, and in training only when asked ([`Pass`], [`training_4x4`]), so
//!   that training's gradients stay as close to PyTorch's as F(2x2, 3x3) keeps them;
//! - F(2x2, 3x3): 2x2 output tiles from 4x4 patches, 16 instead of 36 (2.25x fewer), with
//!   transforms exact in binary: training's forward pass, input gradient and weight gradient.
//!
//! Each output tile is `A^T [ sum_c (G g G^T) ⊙ (B^T d B) ] A` with `a x a` transformed tiles
//! (`a = m + 2` for `m x m` output tiles). Over a batch that is `a²` independent gemms, one per
//! position `xi` of the transformed tile: `M[xi] (out x tiles) = U[xi] (out x in) * V[xi]
//! (in x tiles)`.
//!
//! Layouts (all f32):
//! - input `[n, cin, h, w]` and output `[n, cout, h, w]`, NCHW contiguous;
//! - transformed kernel ([`Kernel`]) `[cout, a², cin]`;
//! - transformed input `V` `[cin, a², tiles]` and gemm output `M` `[a², cout, tiles]`, tile
//!   `t = (sample * th + ty) * tw + tx` over `th = ceil(h / m)` by `tw = ceil(w / m)` tiles.
//!
//! The transforms (`winograd_transforms.rs`) run on 16 tiles at once, one per SIMD lane
//! (`Block`), so that they vectorise whatever the plane's width. Which code runs them is a
//! [`Path`]: on x86-64 with AVX-512F or AVX2, F(2x2, 3x3)'s data transforms on planes at
//! least 13 wide take `winograd_x86.rs` (strided vector loads and masked stores in place of
//! the per-lane gather); elsewhere on a CPU with AVX2 (F(4x4, 3x3), small planes) the
//! portable code compiled for AVX2; otherwise the portable code as compiled for the target.
//! All run the same arithmetic in the same order, so they give the same bits.
//!
//! The input gradient of such a convolution is itself one (the output gradient correlated
//! with the kernel rotated by 180° and its channel axes swapped), so it runs here too
//! ([`Kernel::input_grad`]). Sums run in an order fixed by the shapes, so results do not
//! depend on the thread count. The tests hold each tile size to an f64 direct convolution
//! on random data: within 1e-6 of the output's largest magnitude for F(2x2, 3x3), 5e-6 for
//! F(4x4, 3x3). The design is in `docs/kernels.md`, measurements in
//! `docs/benchmarks.md`.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{sgemm, Mat};
use super::parallel::{for_chunks, map_ranges, outer_parallel, pieces, run_pieces, split_even};
use super::storage::{overwritten, with_scratch};
use super::winograd_transforms::{
    input_tile, kernel_tile, load, output_tile, store, transform_kernel_grad, Tiles, Transforms,
    F2, F4, INPUT_SLACK, LANES, ZERO_BLOCK,
};
#[cfg(target_arch = "x86_64")]
use super::winograd_x86 as x86;

/// Output tile size of a Winograd convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tile {
    /// F(2x2, 3x3).
    F2,
    /// F(4x4, 3x3).
    F4,
}

impl Tile {
    /// Output tile side `m`.
    fn m(self) -> usize {
        match self {
            Tile::F2 => F2::M,
            Tile::F4 => F4::M,
        }
    }

    /// Transformed tile side `a = m + 2`.
    fn a(self) -> usize {
        self.m() + 2
    }

    /// Tiles (over the samples of a chunk) handled by one set of `a²` gemms: wide enough for
    /// gemm to run near its peak, small enough that `V` and `M` stay in the last-level cache.
    /// F(2x2, 3x3): 128, the fastest of 32-2048 in whole-network training and inference.
    fn target_tiles(self) -> usize {
        match self {
            Tile::F2 => 128,
            Tile::F4 => 64,
        }
    }

    /// Multiply-adds per kernel (output-input channel pair) saved over a direct convolution
    /// of `n` samples of `h x w`.
    fn saved_macs(self, n: usize, h: usize, w: usize) -> usize {
        let tiles = Tiles::new(h, w, self.m()).per_plane();
        (n * 9 * h * w).saturating_sub(n * self.a() * self.a() * tiles)
    }

    /// Whether the saving pays for transforming the kernel on every call, which costs about
    /// `a²` per kernel: at least `4096 a² / 16` saved multiply-adds per kernel. Below that
    /// (a single image's 28x28 and smaller maps) the kernel transform and the transforms'
    /// fixed costs outweigh the saved multiplications, and im2col is faster.
    fn pays(self, n: usize, h: usize, w: usize) -> bool {
        self.saved_macs(n, h, w) >= 4096 * self.a() * self.a() / 16
    }
}

/// What a convolution's output is for, which decides the tile sizes it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Eval-mode inference (BatchNorm folded in): only predictions depend on it. F(4x4, 3x3)
    /// is allowed: the eval logits stay as close to PyTorch's as with F(2x2, 3x3) alone
    /// (the parity test's numbers are in `docs/kernels.md`).
    Inference,
    /// Training (forward, input gradient): gradients depend on it. F(2x2, 3x3) only, unless
    /// this thread runs under [`training_4x4`]: F(4x4, 3x3)'s rounding puts the f32 gradients
    /// about 10x further from PyTorch's, so it changes results and is an option.
    Training,
}

thread_local! {
    static TRAINING_4X4: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While the returned guard lives, training convolutions (forward and input gradient) on this
/// thread may use F(4x4, 3x3) tiles too (`lesion-train --winograd-4x4`). Thread-local, so that it covers the
/// training loop that sets it (the ops choose their path on the calling thread) and nothing
/// else running in the process.
pub fn training_4x4(on: bool) -> Training4x4Guard {
    Training4x4Guard {
        previous: TRAINING_4X4.replace(on),
    }
}

/// Restores the previous [`training_4x4`] setting when dropped.
#[must_use = "the setting lasts only while the guard lives"]
pub struct Training4x4Guard {
    previous: bool,
}

impl Drop for Training4x4Guard {
    fn drop(&mut self) {
        TRAINING_4X4.set(self.previous);
    }
}

/// Which Winograd path a convolution of `n` samples of `h x w` takes, if any: 3x3, stride 1,
/// padding 1 (output as large as the input), and of the tile sizes `pass` allows, the one
/// that saves more multiplications where that pays for the kernel transform ([`Tile::pays`]).
///
/// `LESION_WINOGRAD=0` (or `off`) turns the Winograd path off, `LESION_WINOGRAD=f2` keeps it
/// to F(2x2, 3x3) everywhere (for measurements).
pub(super) fn choose(
    pass: Pass,
    n: usize,
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
) -> Option<Tile> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    // Some(whether F(4x4, 3x3) may be used at all).
    let any_4x4 = (*MODE.get_or_init(|| match std::env::var("LESION_WINOGRAD").as_deref() {
        Ok("0" | "off") => None,
        Ok("f2") => Some(false),
        _ => Some(true),
    }))?;
    if (kh, kw, stride, pad) != (3, 3, 1, 1) {
        return None;
    }
    let use_4x4 = any_4x4 && (pass == Pass::Inference || TRAINING_4X4.get());
    let tiles: &[Tile] = if use_4x4 {
        &[Tile::F4, Tile::F2]
    } else {
        &[Tile::F2]
    };
    tiles
        .iter()
        .copied()
        .filter(|t| t.pays(n, h, w))
        .max_by_key(|t| t.saved_macs(n, h, w))
}

/// Whether the weight gradient of such a convolution goes through Winograd (F(2x2, 3x3)):
/// wherever its training forward does. It is then faster than im2col on every ResNet-18 map
/// size at training batch sizes (at 7x7 only thanks to [`WGRAD_SCRATCH_BYTES`]-sized
/// chunks), and no slower on small batches.
pub(super) fn suits_weight_grad(
    n: usize,
    (h, w): (usize, usize),
    k: (usize, usize),
    stride: usize,
    pad: usize,
) -> bool {
    choose(Pass::Training, n, (h, w), k, stride, pad).is_some()
}

/// Transformed input and output gradient held per chunk of the weight gradient, in bytes
/// (each thread working on a chunk holds one). The sum over tiles is a gemm whose inner
/// dimension is the chunk's tiles, so short chunks re-read the 16 `cout x cin` products
/// often: the deep 7x7 and 14x14 layers need chunks of hundreds of tiles, many more than the
/// forward's 128, to beat im2col. Larger chunks are faster still at 7x7 but add their size,
/// per thread, to training's peak memory: 32 MiB (512 tiles at 512 channels, 1024 at 256)
/// is the compromise.
pub(super) const WGRAD_SCRATCH_BYTES: usize = 32 << 20;

/// A 3x3 weight transformed to `G g G^T` per kernel, stored `[cout, a², cin]` so that each
/// `U[xi]` is a row-major `cout x cin` matrix (row stride `a² * cin`).
pub(super) struct Kernel {
    u: Vec<f32>,
    tile: Tile,
    cout: usize,
    cin: usize,
}

impl Kernel {
    /// For the forward pass of `conv2d(x, w)` with `w` `[cout, cin, 3, 3]`.
    pub(super) fn forward(tile: Tile, wt: &[f32], cout: usize, cin: usize) -> Self {
        assert_eq!(wt.len(), cout * cin * 9, "winograd: weight size");
        Self::build(tile, cout, cin, |oc, ic| {
            let g = &wt[(oc * cin + ic) * 9..][..9];
            std::array::from_fn(|i| g[i])
        })
    }

    /// For the input gradient of `conv2d(x, w)` with `w` `[o, c, 3, 3]`: the kernel rotated
    /// by 180° with its channel axes swapped (`cout = c`, `cin = o`).
    pub(super) fn input_grad(tile: Tile, wt: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(wt.len(), o * c * 9, "winograd: weight size");
        Self::build(tile, c, o, |ic, oc| {
            let g = &wt[(oc * c + ic) * 9..][..9];
            std::array::from_fn(|i| g[8 - i])
        })
    }

    /// `kernel(out, in)` gives the 3x3 kernel (row-major) from input channel `in` to output
    /// channel `out`.
    fn build(
        tile: Tile,
        cout: usize,
        cin: usize,
        kernel: impl Fn(usize, usize) -> [f32; 9] + Sync,
    ) -> Self {
        let mut u = vec![0f32; cout * tile.a() * tile.a() * cin];
        match tile {
            Tile::F2 => transform_kernels::<F2>(&mut u, cin, kernel),
            Tile::F4 => transform_kernels::<F4>(&mut u, cin, kernel),
        }
        Self { u, tile, cout, cin }
    }

    /// `U[xi]` as a `cout x cin` matrix.
    fn mat(&self, xi: usize) -> Mat<'_> {
        let aa = self.tile.a() * self.tile.a();
        Mat {
            data: &self.u[xi * self.cin..],
            rs: aa * self.cin,
            cs: 1,
        }
    }
}

/// `G g G^T` of every kernel into `u` (`[cout, a², cin]`), 16 input channels at a time.
fn transform_kernels<T: Transforms>(
    u: &mut [f32],
    cin: usize,
    kernel: impl Fn(usize, usize) -> [f32; 9] + Sync,
) {
    let aa = T::A * T::A;
    u.par_chunks_mut(aa * cin).enumerate().for_each(|(oc, uo)| {
        let (mut g, mut tmp) = (ZERO_BLOCK, ZERO_BLOCK);
        for ic0 in (0..cin).step_by(LANES) {
            let valid = (cin - ic0).min(LANES);
            for l in 0..valid {
                for (k, v) in kernel(oc, ic0 + l).into_iter().enumerate() {
                    g[k / 3][k % 3][l] = v;
                }
            }
            kernel_tile::<T>(&mut g, &mut tmp);
            for xi in 0..aa {
                store(&mut uo[xi * cin + ic0..], &g[xi / T::A][xi % T::A], valid);
            }
        }
    });
}

/// Which code runs the data transforms. All paths compute the same bits.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `winograd_x86.rs` on this instruction set, which the CPU must have.
    #[cfg(target_arch = "x86_64")]
    Simd(x86::Level),
    /// The portable code compiled for AVX2, which the CPU must have.
    #[cfg(target_arch = "x86_64")]
    PortableAvx2,
    /// The portable code compiled for the baseline target.
    Portable,
}

impl Path {
    /// The path the data transforms of `T` on planes of `t` take: the vector code where
    /// [`x86::suits`] says so, else the portable code, compiled for AVX2 where the CPU has it
    /// and `LESION_SIMD` is not `portable` ([`x86::level`]).
    fn of<T: Transforms>(t: Tiles) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(level) = x86::suits::<T>(t) {
                return Path::Simd(level);
            }
            if x86::level().is_some() {
                return Path::PortableAvx2;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = t;
        Path::Portable
    }

    /// Whether the portable code runs, which gathers each lane's patch element by element.
    fn portable(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return !matches!(self, Path::Simd(_));
        #[cfg(not(target_arch = "x86_64"))]
        true
    }
}

/// `B^T d B` of every tile of the samples `xs` (`[nb, cin, h, w]`) into `v`
/// (`[cin, a², nb * tiles]`), on `path` ([`Path::of`] the planes).
fn transform_input<T: Transforms>(
    xs: &[f32],
    (nb, cin): (usize, usize),
    t: Tiles,
    v: &mut [f32],
    parallel: bool,
    path: Path,
) {
    let (hw, tiles) = (t.h * t.w, nb * t.per_plane());
    // Each plane is copied into a zero border: row and column -1 at index 0, then up to
    // the tile grid's last patch.
    let (hp, wp) = (T::M * t.th + 2, T::M * t.tw + 2);
    // Where each tile's patch starts in the padded planes (portable path); the last group
    // repeats the last tile in its unused lanes.
    let starts: Vec<usize> = (0..if path.portable() {
        tiles.next_multiple_of(LANES)
    } else {
        0
    })
        .map(|i| {
            let (s, ty, tx) = t.locate(i.min(tiles - 1));
            (s * hp + T::M * ty) * wp + T::M * tx
        })
        .collect();
    for_chunks(v, T::A * T::A * tiles, parallel, |ci, vc| {
        // Only the border and the slack are zeroed; the plane's rows are copied in.
        let padded = overwritten(nb * hp * wp + INPUT_SLACK, |padded| {
            let (planes, slack) = padded.split_at_mut(nb * hp * wp);
            slack.fill(0.0);
            for (s, pp) in planes.chunks_exact_mut(hp * wp).enumerate() {
                let plane = &xs[(s * cin + ci) * hw..][..hw];
                let (top, rest) = pp.split_at_mut(wp);
                top.fill(0.0);
                let (inner, bottom) = rest.split_at_mut(t.h * wp);
                bottom.fill(0.0);
                for (dst, row) in inner.chunks_exact_mut(wp).zip(plane.chunks_exact(t.w)) {
                    dst[0] = 0.0;
                    dst[1..=t.w].copy_from_slice(row);
                    dst[t.w + 1..].fill(0.0);
                }
            }
        });
        match path {
            // SAFETY: `Path::Simd` holds only levels the CPU has (`x86::suits`, or the tests
            // after `x86::Level::supported`); `padded` ends with the slack the loads need.
            #[cfg(target_arch = "x86_64")]
            Path::Simd(level) => unsafe { x86::input_channel(level, &padded, nb, t, (hp, wp), vc) },
            // SAFETY: `Path::PortableAvx2` is taken only where the CPU has AVX2.
            #[cfg(target_arch = "x86_64")]
            Path::PortableAvx2 => unsafe {
                input_portable_avx2::<T>(&padded, &starts, wp, tiles, vc)
            },
            Path::Portable => input_portable::<T>(&padded, &starts, wp, tiles, vc),
        }
    });
}

/// The portable input transform of one channel: each lane group's patches gathered from the
/// zero-bordered planes `padded` (row length `wp`) at `starts`, transformed, and stored
/// into `vc` (`[a², tiles]`).
#[inline(always)]
fn input_portable<T: Transforms>(
    padded: &[f32],
    starts: &[usize],
    wp: usize,
    tiles: usize,
    vc: &mut [f32],
) {
    let (mut d, mut tmp) = (ZERO_BLOCK, ZERO_BLOCK);
    for (g, at) in starts.chunks_exact(LANES).enumerate() {
        for (k, dk) in d.iter_mut().take(T::A).enumerate() {
            for (j, dkj) in dk.iter_mut().take(T::A).enumerate() {
                for (v, &a) in dkj.iter_mut().zip(at) {
                    *v = padded[a + k * wp + j];
                }
            }
        }
        input_tile::<T>(&mut d, &mut tmp);
        let (t0, valid) = (g * LANES, (tiles - g * LANES).min(LANES));
        for (i, di) in d.iter().take(T::A).enumerate() {
            for (j, dij) in di.iter().take(T::A).enumerate() {
                store(&mut vc[(i * T::A + j) * tiles + t0..], dij, valid);
            }
        }
    }
}

/// [`input_portable`] compiled for AVX2: its 16-lane blocks take two registers instead of
/// four. No fused multiply-adds are formed (Rust does not contract), so the bits are the
/// same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn input_portable_avx2<T: Transforms>(
    padded: &[f32],
    starts: &[usize],
    wp: usize,
    tiles: usize,
    vc: &mut [f32],
) {
    input_portable::<T>(padded, starts, wp, tiles, vc);
}

/// `A^T m A` of every tile of `m` (`[a², cout, nb * tiles]`) into the samples `ys`
/// (`[nb, cout, h, w]`), clipped to the planes, on `path` ([`Path::of`] the planes).
fn transform_output<T: Transforms>(
    m: &[f32],
    (nb, cout): (usize, usize),
    t: Tiles,
    ys: &mut [f32],
    parallel: bool,
    path: Path,
) {
    let (hw, tiles) = (t.h * t.w, nb * t.per_plane());
    // Per tile: sample, offset of its top-left output in the plane, rows and columns inside.
    let places: Vec<(usize, usize, usize, usize)> = (0..if path.portable() { tiles } else { 0 })
        .map(|i| {
            let (s, ty, tx) = t.locate(i);
            let (y0, x0) = (T::M * ty, T::M * tx);
            (s, y0 * t.w + x0, (t.h - y0).min(T::M), (t.w - x0).min(T::M))
        })
        .collect();
    // The planes of each output channel, so that channels can run in parallel.
    let mut by_channel: Vec<Vec<&mut [f32]>> = (0..cout).map(|_| Vec::with_capacity(nb)).collect();
    for sample in ys.chunks_exact_mut(cout * hw) {
        for (oc, plane) in sample.chunks_exact_mut(hw).enumerate() {
            by_channel[oc].push(plane);
        }
    }
    let channel = |oc: usize, planes: &mut Vec<&mut [f32]>| match path {
        // SAFETY: as in `transform_input`.
        #[cfg(target_arch = "x86_64")]
        Path::Simd(level) => unsafe { x86::output_channel(level, m, (oc, cout), t, planes) },
        // SAFETY: as in `transform_input`.
        #[cfg(target_arch = "x86_64")]
        Path::PortableAvx2 => unsafe {
            output_portable_avx2::<T>(m, (oc, cout), t.w, &places, planes)
        },
        Path::Portable => output_portable::<T>(m, (oc, cout), t.w, &places, planes),
    };
    if parallel {
        by_channel
            .par_iter_mut()
            .enumerate()
            .for_each(|(oc, p)| channel(oc, p));
    } else {
        by_channel
            .iter_mut()
            .enumerate()
            .for_each(|(oc, p)| channel(oc, p));
    }
}

/// The portable output transform of output channel `oc` (of `cout`): lane groups of
/// transformed tiles loaded from `m`, transformed, and written to the planes (row length
/// `w`) at `places` (sample, offset, rows and columns inside the plane).
#[inline(always)]
fn output_portable<T: Transforms>(
    m: &[f32],
    (oc, cout): (usize, usize),
    w: usize,
    places: &[(usize, usize, usize, usize)],
    planes: &mut [&mut [f32]],
) {
    let tiles = places.len();
    let (mut b, mut tmp) = (ZERO_BLOCK, ZERO_BLOCK);
    for t0 in (0..tiles).step_by(LANES) {
        let valid = (tiles - t0).min(LANES);
        for (i, bi) in b.iter_mut().take(T::A).enumerate() {
            for (j, bij) in bi.iter_mut().take(T::A).enumerate() {
                let xi = i * T::A + j;
                load(bij, &m[(xi * cout + oc) * tiles + t0..], valid);
            }
        }
        output_tile::<T>(&mut b, &mut tmp);
        for (l, &(s, at, rows, cols)) in places[t0..t0 + valid].iter().enumerate() {
            let plane = &mut planes[s];
            if rows == T::M && cols == T::M {
                // A whole tile, nearly all of them: rows of a fixed length, one bounds
                // check each (in the general loop below the checks cost more than the
                // stores).
                for (i, row) in plane[at..].chunks_mut(w).take(T::M).enumerate() {
                    for (o, bij) in row[..T::M].iter_mut().zip(&b[i]) {
                        *o = bij[l];
                    }
                }
                continue;
            }
            for (i, bi) in b.iter().take(rows).enumerate() {
                for (j, bij) in bi.iter().take(cols).enumerate() {
                    plane[at + i * w + j] = bij[l];
                }
            }
        }
    }
}

/// [`output_portable`] compiled for AVX2, as [`input_portable_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn output_portable_avx2<T: Transforms>(
    m: &[f32],
    oc: (usize, usize),
    w: usize,
    places: &[(usize, usize, usize, usize)],
    planes: &mut [&mut [f32]],
) {
    output_portable::<T>(m, oc, w, places, planes);
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
    match kernel.tile {
        Tile::F2 => conv3x3_with::<F2>(x, n, (h, w), kernel, each_sample),
        Tile::F4 => conv3x3_with::<F4>(x, n, (h, w), kernel, each_sample),
    }
}

fn conv3x3_with<T: Transforms>(
    x: &[f32],
    n: usize,
    (h, w): (usize, usize),
    kernel: &Kernel,
    each_sample: impl Fn(&mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let (cin, cout, aa) = (kernel.cin, kernel.cout, T::A * T::A);
    let t = Tiles::new(h, w, kernel.tile.m());
    let path = Path::of::<T>(t);
    let (x_len, y_len) = (cin * h * w, cout * h * w);
    assert_eq!(x.len(), n * x_len, "winograd: input size");
    let chunks = t.chunks(n, kernel.tile.target_tiles());
    let outer = outer_parallel(chunks.len());
    let par = !outer;
    let run = |r: Range<usize>, ys: &mut [f32]| {
        let nb = r.len();
        let tiles = nb * t.per_plane();
        with_scratch(aa * (cin + cout) * tiles, |buf| {
            let (v, m) = buf.split_at_mut(aa * cin * tiles);
            let xs = &x[r.start * x_len..r.end * x_len];
            transform_input::<T>(xs, (nb, cin), t, v, par, path);
            // The a² gemms are independent: in parallel with each other rather than each
            // split over the threads, which is slow for the small gemms of few samples.
            for_chunks(m, cout * tiles, par, |xi, dst| {
                let rhs = Mat {
                    data: &v[xi * tiles..],
                    rs: aa * tiles,
                    cs: 1,
                };
                sgemm((cout, tiles, cin), dst, false, kernel.mat(xi), rhs, false);
            });
            transform_output::<T>(m, (nb, cout), t, ys, par, path);
        });
        for yb in ys.chunks_mut(y_len) {
            each_sample(yb);
        }
    };
    overwritten(n * y_len, |y| {
        run_pieces(pieces(y, &chunks, y_len), outer, run)
    })
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

/// The weight gradient `[cout, cin, 3, 3]` of [`conv3x3`] (F(2x2, 3x3)) with a forward kernel, from its
/// input `x` (`[n, cin, h, w]`) and output gradient `dy` (`[n, cout, h, w]`):
/// `dW = G^T [ sum over tiles of (A dY A^T) ⊙ (B^T d B) ] G`, the chain rule through the
/// forward's transforms (exact, since they compute the convolution exactly). The sum over
/// tiles is 16 gemms per chunk of samples, each chunk's transforms taking about
/// `chunk_bytes` ([`WGRAD_SCRATCH_BYTES`]); chunks are summed in fixed groups, then the
/// groups in order, so the result does not depend on the thread count.
pub(super) fn grad_weight(
    x: &[f32],
    dy: &[f32],
    n: usize,
    (cin, cout): (usize, usize),
    (h, w): (usize, usize),
    groups: usize,
    chunk_bytes: usize,
) -> Vec<f32> {
    let t = Tiles::new(h, w, F2::M);
    let path = Path::of::<F2>(t);
    let (x_len, y_len, u_len) = (cin * h * w, cout * h * w, 16 * cout * cin);
    assert_eq!(x.len(), n * x_len, "winograd: input size");
    assert_eq!(dy.len(), n * y_len, "winograd: output gradient size");
    let per_tile = 16 * (cin + cout) * std::mem::size_of::<f32>();
    let target = (chunk_bytes / per_tile).max(1);
    let chunks = t.chunks(n, target);
    let groups = split_even(chunks.len(), groups);
    let outer = outer_parallel(groups.len());
    let par = !outer;
    let partial = |group: Range<usize>| -> Vec<f32> {
        // Zeroed, not `overwritten`: with no samples the one group is empty and no gemm
        // writes it.
        let mut du = vec![0f32; u_len];
        for (j, r) in chunks[group].iter().enumerate() {
            let (nb, tiles) = (r.len(), r.len() * t.per_plane());
            with_scratch(16 * (cin + cout) * tiles, |buf| {
                let (v, dm) = buf.split_at_mut(16 * cin * tiles);
                let xs = &x[r.start * x_len..r.end * x_len];
                transform_input::<F2>(xs, (nb, cin), t, v, par, path);
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
    let parts = map_ranges(groups, outer, partial);
    // G^T dU G per kernel, summing the groups' dU in order first.
    overwritten(cout * cin * 9, |dw| {
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
    })
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

    /// Largest error of each tile size against f64, relative to the output's largest
    /// magnitude: F(2x2, 3x3)'s transforms are exact in binary, F(4x4, 3x3)'s kernel
    /// transform is not (factors 1/6, 1/24) and its input transform multiplies by up to 5.
    fn tolerance(tile: Tile) -> f64 {
        match tile {
            Tile::F2 => 1e-6,
            Tile::F4 => 5e-6,
        }
    }

    #[test]
    fn forward_matches_direct_convolution_on_odd_and_even_sizes() {
        // Sizes below, at and above a tile multiple; more tiles than one lane group (16),
        // with a partial last group; many samples in one chunk.
        for &(n, c, h, w, o) in &[
            (1, 1, 1, 1, 1),
            (2, 3, 5, 7, 4),
            (3, 8, 7, 7, 5),
            (1, 16, 14, 9, 8),
            (2, 5, 17, 13, 3),
            (9, 4, 8, 8, 6),
        ] {
            let x = pseudo_random(n * c * h * w, 3);
            let wt = pseudo_random(o * c * 9, 4);
            let want = reference(&x, &wt, (n, c, h, w), o);
            for tile in [Tile::F2, Tile::F4] {
                let got = conv3x3(&x, n, (h, w), &Kernel::forward(tile, &wt, o, c), |_| {});
                let err = max_rel_err(&got, &want);
                assert!(
                    err < tolerance(tile),
                    "{tile:?} {n}x{c}x{h}x{w} -> {o}: max relative error {err:e}"
                );
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn simd_transforms_agree_with_portable_ones_to_the_bit() {
        let levels = x86::Level::supported();
        if levels.is_empty() {
            eprintln!("no AVX2 here: the vectorised transforms are not exercised");
        }
        // The baseline-compiled portable path is the reference; F(2x2, 3x3) also has the
        // explicit vector path on every level, and both tiles the portable code compiled
        // for AVX2 (which every level implies).
        let mut paths: Vec<Path> = levels.iter().map(|&l| Path::Simd(l)).collect();
        if !levels.is_empty() {
            paths.push(Path::PortableAvx2);
        }
        agree_to_the_bit::<F2>(Tile::F2, &paths);
        // F(4x4, 3x3) has no explicit vector path: only the AVX2 build, if any.
        agree_to_the_bit::<F4>(Tile::F4, &paths[levels.len()..]);
    }

    fn agree_to_the_bit<T: Transforms>(tile: Tile, paths: &[Path]) {
        let same_bits =
            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        let aa = T::A * T::A;
        // Planes from one tile to several lane groups per tile row, odd and even sides
        // (clipped last tiles), one or several samples (chunk boundaries in `tiles`).
        for &(nb, c, h, w) in &[
            (1, 1, 1, 1),
            (2, 3, 5, 7),
            (1, 2, 14, 14),
            (3, 4, 9, 33),
            (2, 5, 56, 56),
            (1, 3, 28, 67),
        ] {
            let t = Tiles::new(h, w, tile.m());
            let tiles = nb * t.per_plane();
            let x = pseudo_random(nb * c * h * w, 11);
            let m = pseudo_random(aa * c * tiles, 12);
            // Outputs start as NaN, so that an element a path leaves unwritten shows.
            let transformed = |path| {
                let mut v = vec![f32::NAN; aa * c * tiles];
                transform_input::<T>(&x, (nb, c), t, &mut v, true, path);
                v
            };
            let outputs = |path| {
                let mut ys = vec![f32::NAN; nb * c * h * w];
                transform_output::<T>(&m, (nb, c), t, &mut ys, true, path);
                ys
            };
            let (want_v, want_y) = (transformed(Path::Portable), outputs(Path::Portable));
            assert!(
                want_y.iter().all(|v| v.is_finite()),
                "portable output unwritten"
            );
            for &path in paths {
                let got = transformed(path);
                assert!(
                    same_bits(&want_v, &got),
                    "{tile:?} {path:?} input transform, {nb}x{c}x{h}x{w}"
                );
                assert!(got.iter().all(|v| v.is_finite()), "input left unwritten");
                let got = outputs(path);
                assert!(
                    same_bits(&want_y, &got),
                    "{tile:?} {path:?} output transform, {nb}x{c}x{h}x{w}"
                );
                assert!(got.iter().all(|v| v.is_finite()), "output left unwritten");
            }
        }
    }

    #[test]
    fn resnet_shapes_take_the_tile_that_saves_most() {
        let (k, inf) = ((3, 3), Pass::Inference);
        // Batch 32: F(4x4, 3x3) on every map size of ResNet-18.
        for hw in [56, 28, 14, 7] {
            assert_eq!(
                choose(inf, 32, (hw, hw), k, 1, 1),
                Some(Tile::F4),
                "{hw}x{hw}"
            );
        }
        // One image: only the 56x56 maps save enough to pay for the kernel transform.
        assert_eq!(choose(inf, 1, (56, 56), k, 1, 1), Some(Tile::F4));
        assert_eq!(choose(inf, 1, (28, 28), k, 1, 1), None);
        assert_eq!(choose(inf, 1, (7, 7), k, 1, 1), None);
        // Not 3x3 stride 1 padding 1.
        assert_eq!(choose(inf, 32, (56, 56), k, 2, 1), None);
        assert_eq!(choose(inf, 32, (56, 56), (1, 1), 1, 0), None);
        assert_eq!(choose(inf, 32, (56, 56), k, 1, 0), None);
    }

    #[test]
    fn training_takes_4x4_tiles_only_under_the_guard_and_only_on_its_thread() {
        let train = |hw| choose(Pass::Training, 32, (hw, hw), (3, 3), 1, 1);
        assert_eq!(train(28), Some(Tile::F2));
        {
            let _outer = training_4x4(true);
            assert_eq!(train(28), Some(Tile::F4));
            std::thread::spawn(move || assert_eq!(train(28), Some(Tile::F2)))
                .join()
                .unwrap();
            {
                let _inner = training_4x4(false);
                assert_eq!(train(28), Some(Tile::F2));
            }
            assert_eq!(train(28), Some(Tile::F4));
        }
        assert_eq!(train(28), Some(Tile::F2));
    }

    #[test]
    fn weight_gradient_matches_direct_sums() {
        // dW[o][c][ky][kx] = sum over samples and positions of dy[o](y, x) * x[c](y + ky - 1, x + kx - 1).
        // The last case's chunks are one sample each (16 tiles), summed in 3 groups.
        let one_sample = 16 * 16 * (4 + 6) * 4;
        for &(n, c, h, w, o, groups, chunk_bytes) in &[
            (1, 1, 1, 1, 1, 1, WGRAD_SCRATCH_BYTES),
            (3, 2, 5, 4, 3, 2, WGRAD_SCRATCH_BYTES),
            (5, 4, 7, 7, 6, 8, WGRAD_SCRATCH_BYTES),
            (5, 4, 7, 7, 6, 3, one_sample),
        ] {
            let x = pseudo_random(n * c * h * w, 7);
            let dy = pseudo_random(n * o * h * w, 8);
            let got = grad_weight(&x, &dy, n, (c, o), (h, w), groups, chunk_bytes);
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
        let want = reference(&dy, &rotated, (n, o, h, w), c);
        for tile in [Tile::F2, Tile::F4] {
            let kernel = Kernel::input_grad(tile, &wt, o, c);
            let err = max_rel_err(&conv3x3(&dy, n, (h, w), &kernel, |_| {}), &want);
            assert!(
                err < tolerance(tile),
                "{tile:?}: max relative error {err:e}"
            );
        }
    }
}

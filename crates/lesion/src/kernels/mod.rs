//! CPU kernels for ResNet-18's hot layers, as candle custom ops (so `backward()` and the
//! optimizer work unchanged), with candle's own ops on every other device and dtype.
//!
//! Layouts: activations are NCHW f32, contiguous (non-contiguous inputs are copied first);
//! convolution weights are `[out, in, kh, kw]`; per-channel vectors (BatchNorm's gamma,
//! beta, statistics, folded scale/shift) are `[c]`.
//!
//! - [`conv2d`]: convolution without bias (any kernel size, stride, zero padding; no groups
//!   or dilation). 3x3 stride-1 padding-1 convolutions go through Winograd (`winograd.rs`:
//!   F(4x4, 3x3) for inference, F(2x2, 3x3) for training unless [`training_4x4`];
//!   `LESION_WINOGRAD=0` turns it off); the others: forward as per-sample
//!   im2col + gemm, input gradient as gemm + col2im, weight gradient as gemm against the
//!   input's im2col; 1x1 stride-1 convolutions skip the im2col. [`conv2d_affine`] adds a
//!   per-channel scale/shift (+ ReLU) epilogue for inference (a BatchNorm folded into the
//!   convolution).
//! - [`batch_norm_train`]: BatchNorm with batch statistics, optionally fused with the ReLU
//!   after it, with a closed-form backward; returns the batch mean and biased variance for
//!   the running statistics. [`scale_shift`]: the folded eval-mode BatchNorm (+ ReLU).
//! - [`add_relu`]: the residual `relu(a + b)` in one pass.
//!
//! GPUs: [`conv2d`] runs cuDNN's forward and both backward passes on CUDA with the `cudnn`
//! feature (`cudnn.rs`), and elsewhere candle's forward with the backward of `gpu_conv.rs`;
//! the rest composes candle's ops.
//!
//! Threads: everything runs on rayon's global pool (the one candle's own ops use). Work is
//! split over samples or channels, and `gemm` runs single-threaded inside a task; only when
//! there are fewer samples than threads does gemm parallelise itself, on the same pool.
//!
//! Determinism: every output element is reduced in an order fixed by the shapes alone, never
//! by the thread count or scheduling (the weight gradient sums fixed groups of samples in a
//! fixed order), so training on CPU is bit-for-bit repeatable.
//!
//! The kernels support f32 only; f64 (used by the strict parity tests) and non-CPU devices
//! take candle's ops, as does everything while [`set_enabled`]`(false)` or with
//! `LESION_CPU_KERNELS=0` in the environment.

mod batchnorm;
mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
mod elementwise;
mod gpu_conv;
mod winograd;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};

pub use batchnorm::{batch_norm_train, batch_norm_train_in_place, scale_shift, BatchStats};
pub use conv::{conv2d, conv2d_affine, conv2d_grad_input, conv2d_grad_weight};
pub use elementwise::add_relu;
pub use winograd::{training_4x4, Training4x4Guard};

/// 0: not decided yet (read `LESION_CPU_KERNELS`), 1: on, 2: off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Turns the CPU kernels on or off process-wide; off, every function here composes candle's
/// ops, as on other devices. For benchmarks and tests that compare the two in one process.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the CPU kernels are on: as [`set_enabled`] last set, else on unless the
/// environment variable `LESION_CPU_KERNELS` is `0` or `off` (an escape hatch and a way to
/// compare whole runs against candle's own ops).
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = !matches!(
                std::env::var("LESION_CPU_KERNELS").as_deref(),
                Ok("0" | "off")
            );
            // A concurrent `set_enabled` wins over the environment.
            let _ = ENABLED.compare_exchange(
                0,
                if on { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            ENABLED.load(Ordering::Relaxed) == 1
        }
    }
}

/// True where the CPU kernels apply to `t`: enabled, on the CPU, f32.
pub(crate) fn applies(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// PyTorch's ReLU of one value: `t <= 0` is false for NaN, which propagates.
#[inline(always)]
pub(crate) fn relu_f32(t: f32) -> f32 {
    if t <= 0.0 {
        0.0
    } else {
        t
    }
}

/// `t` itself if contiguous (a cheap clone), else a contiguous copy.
pub(crate) fn contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The f32 elements of a contiguous CPU storage.
pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: expected f32, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Index one past the last element of an `rows x cols` matrix with strides `rs`, `cs`.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// A strided f32 matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn rows_t(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// `dst (m x n, row-major) (+)= lhs (m x k) * rhs (k x n)`, accumulating when `accumulate`.
///
/// `parallel`: let gemm split the work over rayon's pool (only from outside a rayon task
/// that already runs in parallel with others, so that the pool is not oversubscribed).
/// gemm splits output tiles, never the `k` reduction, so results do not depend on it.
pub(crate) fn sgemm(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallel: bool,
) {
    sgemm_ld(dims, dst, dims.1, accumulate, lhs, rhs, parallel);
}

/// [`sgemm`] into a block of a wider row-major matrix: `dst` row `i` starts at `i * ld`
/// (`ld >= n`), the other columns untouched.
pub(crate) fn sgemm_ld(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ld >= n && span(m, n, ld, 1) <= dst.len(),
        "sgemm: dst too small"
    );
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(ld).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    assert!(
        span(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "sgemm: lhs too small"
    );
    assert!(
        span(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "sgemm: rhs too small"
    );
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index `i * rs + j * cs` of the three matrices
    // inside their slices, and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

thread_local! {
    /// Per-thread im2col/col2im buffer, reused across calls: these are megabytes per sample,
    /// and fresh allocations of that size are page-faulted and zeroed every time.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer resized to `len` (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        // A nested call on the same thread (not expected) gets a buffer of its own.
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return f(&mut vec![0.0; len]);
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// A vector of `len` f32 that `fill` writes in full before reading any of it, not zeroed
/// first: `vec![0.0; len]` memsets each activation just before it is overwritten (3.5% of a
/// training epoch in `perf`). With debug assertions (the tests) it starts as NaN instead,
/// so that an element `fill` misses shows in every comparison against a reference.
pub(crate) fn overwritten(len: usize, fill: impl FnOnce(&mut [f32])) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    if cfg!(debug_assertions) {
        v.resize(len, f32::NAN);
        fill(&mut v);
        return v;
    }
    let spare = v.spare_capacity_mut();
    // SAFETY: `spare` holds at least `len` elements of `f32`, which has no invalid bit
    // patterns, and `fill` writes every element before it reads it (its contract, which
    // the NaN start above checks in the tests), so no uninitialised value is ever read and
    // all `len` are initialised when the length is set.
    unsafe {
        fill(std::slice::from_raw_parts_mut(
            spare.as_mut_ptr().cast(),
            len,
        ));
        v.set_len(len);
    }
    v
}

/// Splits `0..n` into `parts` contiguous ranges whose lengths differ by at most one.
pub(crate) fn split_even(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (q, r) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = q + usize::from(i < r);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod testutil {
    use candle_core::{DType, Device, Tensor};

    pub fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20000) as f32 / 10000.0 - 1.0
            })
            .collect()
    }

    pub fn tensor(dims: &[usize], seed: u32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(pseudo_random(n, seed), dims, &Device::Cpu).unwrap()
    }

    /// Largest |a - b| relative to the largest |b|.
    pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims());
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let d = (&a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let m = b.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        d / m.max(1e-30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_covers_in_order() {
        assert_eq!(split_even(10, 4), [0..3, 3..6, 6..8, 8..10]);
        assert_eq!(split_even(2, 8), [0..1, 1..2]);
        assert_eq!(split_even(0, 3), vec![0..0]);
    }

    #[test]
    fn sgemm_matches_naive_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let a = testutil::pseudo_random(m * k, 1);
        let b = testutil::pseudo_random(n * k, 2);
        // lhs row-major m x k; rhs given as the transpose of a row-major n x k.
        let mut dst = vec![1.0f32; m * n];
        sgemm(
            (m, n, k),
            &mut dst,
            true,
            Mat::rows(&a, k),
            Mat::rows_t(&b, k),
            false,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum::<f32>();
                assert!((dst[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}

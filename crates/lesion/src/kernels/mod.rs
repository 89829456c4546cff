//! CPU kernels for ResNet-18's hot layers, as candle custom ops (so `backward()` and the
//! optimizer work unchanged), with candle's own ops on every other device and dtype. The
//! design (dispatch rules, SIMD levels, numerics, GPU paths) is in `docs/kernels.md`;
//! measurements are in `docs/benchmarks.md`.
//!
//! Layouts: activations are NCHW f32, contiguous (non-contiguous inputs are copied first);
//! convolution weights are `[out, in, kh, kw]`; per-channel vectors (BatchNorm's gamma,
//! beta, statistics, folded scale/shift) are `[c]`.
//!
//! - [`conv2d`]: convolution without bias (any kernel size, stride, zero padding; no groups
//!   or dilation), with [`conv2d_grad_input`] and [`conv2d_grad_weight`] as its backward
//!   passes. 3x3 stride-1 padding-1 convolutions go through Winograd where it pays
//!   (F(2x2, 3x3) for training unless [`training_4x4`], F(4x4, 3x3) for inference;
//!   `LESION_WINOGRAD=0` turns it off), the others through im2col + gemm.
//!   [`conv2d_affine`] adds a per-channel scale/shift (+ ReLU) epilogue for inference (a
//!   BatchNorm folded into the convolution).
//! - [`batch_norm_train`]: BatchNorm with batch statistics, optionally fused with the ReLU
//!   after it, with a closed-form backward; returns the batch mean and biased variance for
//!   the running statistics. [`batch_norm_train_in_place`] for frozen layers;
//!   [`scale_shift`]: the folded eval-mode BatchNorm (+ ReLU).
//! - [`relu`]: ReLU with PyTorch's gradient (0 at 0); [`add_relu`]: the residual
//!   `relu(a + b)` in one pass.
//! - [`max_pool2d_3x3s2p1`]: the stem's max-pool with PyTorch's padding and tie rules.
//!
//! Files, in an order where each uses only files after it:
//! - `conv.rs`: the convolution's entry points and which path computes each pass;
//! - the convolution paths: `im2col.rs`, `winograd.rs` (with `winograd_x86.rs` and the
//!   transforms' arithmetic in `winograd_transforms.rs`), `cudnn.rs`, `gpu_conv.rs`;
//! - the other ops: `batchnorm.rs`, `pool.rs`, `elementwise.rs`;
//! - what they share: `geom.rs` (a convolution's shapes and plan), `parallel.rs` (work
//!   splitting), `matmul.rs` (gemm), `storage.rs` (candle glue, output and scratch
//!   buffers), `switch.rs` ([`set_enabled`], tuning knobs).
//!
//! Threads: everything runs on rayon's global pool (the one candle's own ops use). Work is
//! split over samples or channels, and `gemm` runs single-threaded inside a task; only when
//! there are fewer tasks than threads does gemm parallelise itself, on the same pool.
//!
//! Determinism: every output element is reduced in an order fixed by the shapes alone, never
//! by the thread count or scheduling (the weight gradient sums fixed groups of samples in a
//! fixed order), so training on CPU is bit-for-bit repeatable.
//!
//! The kernels support f32 only; f64 (used by the strict parity tests) and non-CPU devices
//! take candle's ops, as do the convolution, BatchNorm and residual kernels while
//! [`set_enabled`]`(false)` or with `LESION_CPU_KERNELS=0` in the environment.

mod batchnorm;
mod conv;
#[cfg(feature = "cudnn")]
mod cudnn;
mod elementwise;
mod geom;
mod gpu_conv;
mod im2col;
mod matmul;
mod parallel;
mod pool;
mod storage;
mod switch;
#[cfg(test)]
mod testutil;
mod winograd;
mod winograd_transforms;
#[cfg(target_arch = "x86_64")]
mod winograd_x86;

pub use batchnorm::{batch_norm_train, batch_norm_train_in_place, scale_shift, BatchStats};
pub use conv::{conv2d, conv2d_affine, conv2d_grad_input, conv2d_grad_weight};
pub use elementwise::{add_relu, relu};
pub use pool::{max_pool2d_3x3s2p1, max_pool2d_3x3s2p1_composed, max_pool2d_3x3s2p1_forward_only};
pub use switch::{enabled, set_enabled};
pub use winograd::{training_4x4, Training4x4Guard};

//! Glue between candle's tensors and storages and the kernels' f32 slices, and the kernels'
//! output and scratch buffers.
//!
//! Outputs the kernels write in full are allocated without zeroing ([`overwritten`]); with
//! debug assertions (the tests) they start as NaN instead, so that an element a kernel
//! misses shows in every comparison. Scratch (im2col matrices, Winograd's transformed tiles)
//! is one buffer per thread, reused across calls ([`with_scratch`]).

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Tensor};

/// `t` itself if contiguous (a cheap clone), else a contiguous copy.
pub(super) fn contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The f32 elements of a contiguous CPU storage.
pub(super) fn f32_slice<'a>(
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

/// [`f32_slice`] of each of an op's arguments.
pub(super) fn f32_slices<'a, const N: usize>(
    args: [(&'a CpuStorage, &Layout); N],
    op: &'static str,
) -> candle_core::Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (s, l)) in out.iter_mut().zip(args) {
        *o = f32_slice(s, l, op)?;
    }
    Ok(out)
}

/// What the `bwd` of a two-argument op returns: `da()` for `a` and `db()` for `b`, each
/// computed only where that argument tracks gradients (a frozen layer's input needs none).
pub(super) fn tracked_grads(
    (a, b): (&Tensor, &Tensor),
    da: impl FnOnce() -> candle_core::Result<Tensor>,
    db: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let da = a.track_op().then(da).transpose()?;
    let db = b.track_op().then(db).transpose()?;
    Ok((da, db))
}

thread_local! {
    /// Per-thread im2col/col2im buffer, reused across calls: these are megabytes per sample,
    /// and fresh allocations of that size are page-faulted and zeroed every time.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer resized to `len` (contents unspecified).
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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
/// first: `vec![0.0; len]` would memset each activation just before it is overwritten, one
/// more pass over memory per op. With debug assertions (the tests) it starts as NaN instead,
/// so that an element `fill` misses shows in every comparison against a reference.
pub(super) fn overwritten(len: usize, fill: impl FnOnce(&mut [f32])) -> Vec<f32> {
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

//! How the kernels split work over rayon's global pool (the one candle's own ops use).
//!
//! A pass over a batch is cut into chunks of consecutive samples ([`split_even`]). Where
//! there are enough chunks to keep every thread busy ([`outer_parallel`]) they run in
//! parallel, each single-threaded inside (gemm included); otherwise one after another, each
//! parallel inside (gemm splits its output tiles over the pool). Either way every output
//! element is reduced in an order fixed by the shapes, never by the thread count or the
//! scheduling: results are bit-for-bit repeatable.

use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::switch::knob;

/// Elements per rayon task in the per-plane element-wise passes (BatchNorm, max-pool).
const MIN_TASK: usize = 1 << 14;

/// Splits `0..n` into `parts` contiguous ranges whose lengths differ by at most one.
pub(super) fn split_even(n: usize, parts: usize) -> Vec<Range<usize>> {
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

/// Planes of `plane_len` (> 0) elements per rayon task: several where planes are small, so
/// that a task is worth its scheduling.
pub(super) fn planes_per_task(plane_len: usize) -> usize {
    MIN_TASK.div_ceil(plane_len)
}

/// Whether `tasks` independent tasks keep the pool busy enough to run them in parallel
/// rather than parallelising inside each: at least `LESION_CONV_MIN_TASKS` (2) per thread.
pub(super) fn outer_parallel(tasks: usize) -> bool {
    static MIN_TASKS: OnceLock<usize> = OnceLock::new();
    tasks >= knob(&MIN_TASKS, "LESION_CONV_MIN_TASKS", 2) * rayon::current_num_threads()
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

/// `f` on every piece of [`pieces`], in parallel when `outer`.
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

/// `f` of every range, in parallel when `outer`, the results in the ranges' order.
pub(super) fn map_ranges<T: Send>(
    ranges: Vec<Range<usize>>,
    outer: bool,
    f: impl Fn(Range<usize>) -> T + Sync + Send,
) -> Vec<T> {
    if outer {
        ranges.into_par_iter().map(f).collect()
    } else {
        ranges.into_iter().map(f).collect()
    }
}

/// `f` over `buf`'s chunks of `len` elements with their index, in parallel or not.
pub(super) fn for_chunks(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_covers_in_order() {
        assert_eq!(split_even(10, 4), [0..3, 3..6, 6..8, 8..10]);
        assert_eq!(split_even(2, 8), [0..1, 1..2]);
        assert_eq!(split_even(0, 3), vec![0..0]);
    }
}

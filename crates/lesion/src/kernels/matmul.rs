//! Single-precision matrix products on strided matrices, through the `gemm` crate (the one
//! candle's CPU backend uses).

/// Index one past the last element of an `rows x cols` matrix with strides `rs`, `cs`.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs + 1
}

/// A strided f32 matrix: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with `cols` columns.
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(super) fn rows_t(data: &'a [f32], cols: usize) -> Self {
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
pub(super) fn sgemm(
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
pub(super) fn sgemm_ld(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::pseudo_random;

    #[test]
    fn sgemm_matches_naive_with_strides() {
        let (m, n, k) = (5, 7, 3);
        let a = pseudo_random(m * k, 1);
        let b = pseudo_random(n * k, 2);
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

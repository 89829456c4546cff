//! NumPy-compatible summation, so that sums and means match scikit-learn's bit for bit.

/// NumPy's `add.reduce` for a contiguous f64 array: the accumulator starts at the identity
/// 0 and the whole array is summed pairwise (8-way unrolled blocks of at most 128). With
/// this, every fixture value is reproduced bit for bit; seeding with the first element
/// instead (as older NumPy did) leaves some one ulp away.
pub(super) fn np_sum(xs: &[f64]) -> f64 {
    0.0 + pairwise_sum(xs)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[full..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

pub(super) fn np_mean(xs: &[f64]) -> f64 {
    np_sum(xs) / xs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_sum_agrees_with_exact_sums() {
        let xs: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
        assert_eq!(np_sum(&xs), 500_500.0);
        assert_eq!(np_sum(&xs[..5]), 15.0);
        assert_eq!(np_sum(&[]), 0.0);
    }
}

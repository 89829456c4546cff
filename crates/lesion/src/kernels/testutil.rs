//! Inputs and comparisons for the kernels' tests.

use candle_core::{DType, Device, Tensor};

/// `len` values in `[-1, 1)` from a xorshift generator seeded with `seed`.
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

/// A CPU f32 tensor of shape `dims` filled by [`pseudo_random`].
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

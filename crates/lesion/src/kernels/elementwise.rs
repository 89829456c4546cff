//! Fused element-wise ops on same-shape f32 tensors (any shape, contiguous on CPU).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{applies, contiguous, f32_slice, overwritten, relu_f32};

const CHUNK: usize = 1 << 15;

/// `relu(a + b)`.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "lesion_add_relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: {:?} vs {:?}", self.name(), l1.shape(), l2.shape());
        }
        let out = overwritten(a.len(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| {
                    for i in 0..o.len() {
                        o[i] = relu_f32(a[i] + b[i]);
                    }
                });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // PyTorch's ReLU gradient: zero where the output is not positive.
        let g = crate::ops::relu_backward(res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `relu(a + b)` for same-shape tensors (the residual connection of a ResNet block), with
/// PyTorch's ReLU gradient (0 where the sum is exactly 0). One threaded pass on CPU f32;
/// otherwise candle's add and [`crate::ops::relu`].
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if applies(a) && b.dtype() == DType::F32 && a.shape() == b.shape() {
        contiguous(a)?.apply_op2(&contiguous(b)?, AddRelu)
    } else {
        crate::ops::relu(&(a + b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn add_relu_values_and_gradients() {
        let a = Var::from_slice(&[1.0f32, -2.0, 0.5, 3.0, -1.0], 5, &Device::Cpu).unwrap();
        let b = Var::from_slice(&[-1.0f32, 1.0, 0.5, -4.0, 2.0], 5, &Device::Cpu).unwrap();
        let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 1.0, 0.0, 1.0]);
        let g = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &Device::Cpu).unwrap();
        let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
        // Sum exactly 0 at index 0: no gradient, as PyTorch.
        let want = [0.0f32, 0.0, 3.0, 0.0, 5.0];
        for v in [&a, &b] {
            let got = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want);
        }
        // A detached argument gets nothing; a strided one works.
        let m = Tensor::from_vec(vec![-1f32, 2.0, 3.0, -4.0], (2, 2), &Device::Cpu).unwrap();
        let r = add_relu(&m.t().unwrap(), &m).unwrap();
        assert_eq!(r.to_vec2::<f32>().unwrap(), [[0.0, 5.0], [5.0, 0.0]]);
    }
}

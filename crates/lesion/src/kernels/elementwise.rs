//! Element-wise ops on f32 tensors of any shape (contiguous on CPU): [`relu`] with
//! PyTorch's gradient, the residual [`add_relu`], and the per-element loops the other
//! kernels share ([`relu_f32`], [`map_plane`]).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::storage::{contiguous, f32_slice, f32_slices, overwritten};
use super::switch::applies;

/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

/// PyTorch's ReLU of one value: `t <= 0` is false for NaN, which propagates.
#[inline(always)]
fn relu_f32(t: f32) -> f32 {
    if t <= 0.0 {
        0.0
    } else {
        t
    }
}

/// `f(v)` of every value `v` of `src` into `dst` (`src` `None`: of `dst` itself, in place),
/// then PyTorch's ReLU when `relu`. One loop per case rather than a branch inside one loop,
/// so that each vectorises.
#[inline(always)]
pub(super) fn map_plane(dst: &mut [f32], src: Option<&[f32]>, relu: bool, f: impl Fn(f32) -> f32) {
    match (src, relu) {
        (Some(src), true) => {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = relu_f32(f(v));
            }
        }
        (Some(src), false) => {
            for (o, &v) in dst.iter_mut().zip(src) {
                *o = f(v);
            }
        }
        (None, true) => {
            for o in dst {
                *o = relu_f32(f(*o));
            }
        }
        (None, false) => {
            for o in dst {
                *o = f(*o);
            }
        }
    }
}

/// `f(a[i], b[i])` for every `i` of two same-length slices, in parallel chunks.
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    overwritten(a.len(), |out| {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for i in 0..o.len() {
                    o[i] = f(a[i], b[i]);
                }
            });
    })
}

/// ReLU with PyTorch's gradient: `grad * (x > 0)`, so 0 at `x = 0`. candle's own `relu`
/// passes the gradient at exactly 0 (`x >= 0`), which in f32 happens often enough in a
/// ResNet-18 to shift gradients by percent. Same shape and dtype as `x`.
///
/// On CPU with f32 a custom op (threaded); elsewhere candle's `relu` when `x` needs no
/// gradient (one kernel, same values), else `where_cond` on `x > 0`.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        contiguous(x)?.apply_op1(Relu)
    } else if !x.track_op() {
        x.relu()
    } else {
        x.gt(0.0)?.where_cond(x, &x.zeros_like()?)
    }
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = f32_slice(s, l, self.name())?;
        let dst = overwritten(src.len(), |dst| {
            dst.par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| map_plane(d, Some(s), true, |v| v));
        });
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // `res > 0` exactly where `x > 0`.
        Ok(Some(relu_backward(res, grad_res)?))
    }
}

/// `grad * (out > 0)` for the output `out` of a ReLU (CPU f32, same shapes): the input
/// gradient of any op that ends in PyTorch's ReLU.
fn relu_backward(out: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
    contiguous(out)?.apply_op2_no_bwd(&contiguous(grad)?, &ReluBwd)
}

/// Arguments (relu output, output gradient) -> input gradient.
struct ReluBwd;

impl CustomOp2 for ReluBwd {
    fn name(&self) -> &'static str {
        "relu_bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [out, grad] = f32_slices([(s1, l1), (s2, l2)], self.name())?;
        if out.len() != grad.len() {
            candle_core::bail!("relu_bwd: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let dst = zip_map(out, grad, |o, g| if o > 0.0 { g } else { 0.0 });
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

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
        let [a, b] = f32_slices([(s1, l1), (s2, l2)], self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{}: {:?} vs {:?}", self.name(), l1.shape(), l2.shape());
        }
        let out = zip_map(a, b, |a, b| relu_f32(a + b));
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
        let g = relu_backward(res, grad)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `relu(a + b)` for same-shape tensors (the residual connection of a ResNet block), with
/// PyTorch's ReLU gradient (0 where the sum is exactly 0). One threaded pass on CPU f32;
/// otherwise candle's add and [`relu`].
pub fn add_relu(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if applies(a) && b.dtype() == DType::F32 && a.shape() == b.shape() {
        contiguous(a)?.apply_op2(&contiguous(b)?, AddRelu)
    } else {
        relu(&(a + b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn relu_gradient_is_zero_at_zero_on_cpu_and_fallback() {
        let x = [-1.0f32, 0.0, 2.0, -0.0, 3.5];
        let v = Var::from_slice(&x, x.len(), &Device::Cpu).unwrap();
        let g = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0], &Device::Cpu).unwrap();
        let want_y = [0.0f32, 0.0, 2.0, 0.0, 3.5];
        let want_g = [0.0f32, 0.0, 3.0, 0.0, 5.0];
        let through_fallback = v
            .gt(0.0)
            .unwrap()
            .where_cond(v.as_tensor(), &v.zeros_like().unwrap())
            .unwrap();
        for y in [relu(v.as_tensor()).unwrap(), through_fallback] {
            assert_eq!(y.to_vec1::<f32>().unwrap(), want_y);
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let got = grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, want_g);
        }
        // Strided input.
        let m = Tensor::from_vec(vec![-1f32, 2.0, 3.0, -4.0], (2, 2), &Device::Cpu).unwrap();
        let r = relu(&m.t().unwrap()).unwrap();
        assert_eq!(r.to_vec2::<f32>().unwrap(), [[0.0, 3.0], [2.0, 0.0]]);
    }

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

//! Convolution backward for GPUs (and any device the CPU kernels do not cover), built from
//! candle's forward convolution. [`super::conv2d`] sends CUDA f32/f64 with the `cudnn`
//! feature to `cudnn.rs` instead (cuDNN's own backward passes).
//!
//! candle 0.11 differentiates `conv2d` with its `conv_transpose2d` for the input gradient,
//! a direct kernel on CUDA (one thread per input element looping over every output
//! channel and tap, no cuDNN), and computes that gradient even for a frozen layer's input,
//! which needs none. Here the forward convolution is candle's own (cuDNN with the `cudnn`
//! feature) and the backward is:
//! - input gradient, only when the input tracks gradients: a forward convolution of the
//!   output gradient, zero-dilated by the stride, with the kernel flipped and its channel
//!   axes swapped (`[o, c, kh, kw]` -> `[c, o, kh, kw]`), padded by `k - 1 - p` (plus the
//!   rows and columns a strided forward skipped at the bottom and right);
//! - weight gradient, only when the weight tracks gradients: candle's formula (a forward
//!   convolution of the input with the output gradient, batch and channel axes swapped,
//!   dilated by the stride).
//!
//! Shapes: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, output `[n, o, ho, wo]`, any dtype the
//! device's convolution takes. The forward result is attached to the graph by a custom op
//! whose forward copies it (one device-to-device copy of the output), since candle offers no
//! other way to give a built-in op a different backward.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::storage::tracked_grads;

/// `conv2d(x, w)` (no bias, zero padding `padding`, no dilation or groups) whose backward
/// is described in the module docs.
pub(super) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let y = x.detach().conv2d(&w.detach(), padding, stride, 1, 1)?;
    if !(x.track_op() || w.track_op()) {
        return Ok(y);
    }
    x.apply_op3(
        w,
        &y,
        Backward {
            stride,
            pad: padding,
        },
    )
}

/// The input gradient `[n, c, h, w]` of a convolution, from the output gradient `dy`
/// `[n, o, ho, wo]` and the kernel `w` `[o, c, kh, kw]` (see the module docs).
fn conv2d_grad_input(
    dy: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    (h, wd): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (n, o, ho, wo) = dy.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if padding + 1 > kh || padding + 1 > kw {
        // Padding of a kernel's size or more would need cropping, not padding, below; no
        // ResNet layer has it, so candle's own path covers it.
        let out_pad = h - ((ho - 1) * stride + kh - 2 * padding);
        return dy.conv_transpose2d(w, padding, out_pad, stride, 1);
    }
    let dilated = if stride > 1 {
        dy.unsqueeze(3)?
            .unsqueeze(5)?
            .pad_with_zeros(3, 0, stride - 1)?
            .pad_with_zeros(5, 0, stride - 1)?
            .reshape((n, o, ho * stride, wo * stride))?
            .narrow(2, 0, (ho - 1) * stride + 1)?
            .narrow(3, 0, (wo - 1) * stride + 1)?
    } else {
        dy.clone()
    };
    // A strided forward ignores the last `h + 2p - k mod stride` rows (and columns): their
    // gradient is zero beyond what the padded convolution below reaches.
    let rows = h - ((ho - 1) * stride + kh - 2 * padding);
    let cols = wd - ((wo - 1) * stride + kw - 2 * padding);
    let dilated = dilated
        .pad_with_zeros(2, 0, rows)?
        .pad_with_zeros(3, 0, cols)?;
    let flipped = w.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
    if kh == kw {
        dilated.conv2d(&flipped, kh - 1 - padding, 1, 1, 1)
    } else {
        dilated
            .pad_with_zeros(2, kh - 1 - padding, kh - 1 - padding)?
            .pad_with_zeros(3, kw - 1 - padding, kw - 1 - padding)?
            .conv2d(&flipped, 0, 1, 1, 1)
    }
}

/// The weight gradient `[o, c, kh, kw]` of a convolution, from its input `x` and output
/// gradient `dy` (candle's formula).
fn conv2d_grad_weight(
    x: &Tensor,
    dy: &Tensor,
    stride: usize,
    padding: usize,
    (kh, kw): (usize, usize),
) -> candle_core::Result<Tensor> {
    let g = x
        .transpose(0, 1)?
        .conv2d(&dy.transpose(0, 1)?, padding, 1, stride, 1)?
        .transpose(0, 1)?;
    let (_, _, gh, gw) = g.dims4()?;
    if gh != kh || gw != kw {
        g.narrow(2, 0, kh)?.narrow(3, 0, kw)
    } else {
        Ok(g)
    }
}

/// (input, weight, the forward's result) -> a copy of the result, with the convolution's
/// gradients for the first two.
struct Backward {
    stride: usize,
    pad: usize,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "lesion_conv2d_backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((copy(y, ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((copy(y, ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
        _: &candle_core::MetalStorage,
        _: &Layout,
        y: &candle_core::MetalStorage,
        ly: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        Ok((copy(y, ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (dx, dw) = tracked_grads(
            (x, w),
            || conv2d_grad_input(grad, w, self.stride, self.pad, (h, wd)),
            || conv2d_grad_weight(x, grad, self.stride, self.pad, (kh, kw)),
        )?;
        Ok((dx, dw, None))
    }
}

/// A contiguous copy of the forward's result (which `conv2d` made contiguous, at offset 0).
fn copy<S: BackendStorage>(s: &S, l: &Layout) -> candle_core::Result<S> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("lesion_conv2d_backward: the result must be contiguous");
    }
    s.try_clone(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::tensor;
    use candle_core::{Device, Var};

    /// A frozen layer's input gets no gradient (and none is computed); the weight still does.
    #[test]
    fn untracked_input_gets_no_gradient() {
        let x = tensor(&[2, 3, 8, 8], 1);
        let wv = Var::from_tensor(&tensor(&[4, 3, 3, 3], 2)).unwrap();
        let y = conv2d(&x, wv.as_tensor(), 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(wv.as_tensor()).is_some());
        // Nothing tracked: a plain convolution, no op attached.
        let y = conv2d(&x, &tensor(&[4, 3, 3, 3], 2), 1, 1).unwrap();
        assert!(!y.track_op());
        assert_eq!(y.device().location(), Device::Cpu.location());
    }
}

//! The leaf layers of the network, one struct per layer: [`Conv2d`], [`BatchNorm2d`], the
//! [`ConvBn`] pair and [`Linear`]. Weight names are torchvision's (`weight`, `bias`,
//! `running_mean`, `running_var`) under the prefix the caller's `VarBuilder` carries.

use candle_core::{Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, ModuleT, VarBuilder};

use super::{to_candle, Mode};
use crate::kernels;
use crate::{Error, Result};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// `t` as the backward graph should see it under `mode`.
fn weight(t: &Tensor, mode: Mode) -> Tensor {
    if mode.grad {
        t.clone()
    } else {
        t.detach()
    }
}

/// A 2-D convolution without bias (all of ResNet's are), weight `[out, in, k, k]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// torchvision's init: Kaiming normal, fan-out, ReLU gain.
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let init = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        };
        let weight = vb.get_with_hints((out_c, in_c, kernel, kernel), "weight", init)?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(kernels::conv2d(
            x,
            &weight(&self.weight, mode),
            self.stride,
            self.padding,
        )?)
    }

    /// `forward_mode` followed by a per-channel `* scale + shift` (and ReLU when `relu`),
    /// without a graph where nothing tracks gradients: an eval-mode BatchNorm folded in.
    fn forward_affine(
        &self,
        x: &Tensor,
        mode: Mode,
        (scale, shift): (&Tensor, &Tensor),
        relu: bool,
    ) -> Result<Tensor> {
        let w = weight(&self.weight, mode);
        Ok(kernels::conv2d_affine(
            x,
            &w,
            self.stride,
            self.padding,
            scale,
            shift,
            relu,
        )?)
    }
}

/// BatchNorm2d (eps 1e-5, momentum 0.1) with PyTorch's train/eval semantics.
///
/// Written out rather than using `candle_nn::BatchNorm` so that frozen layers can run with
/// detached weights (no graph) while still updating their running statistics, and to avoid
/// its transpose-and-copy of the whole activation. The arithmetic is
/// [`kernels::batch_norm_train`] (train) and [`kernels::scale_shift`] (eval).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm2d {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        // Shares storage with the VarMap's variable when there is one; otherwise (a model
        // built from plain tensors) this owns a private copy that train mode may update.
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_act(x, mode, false)
    }

    /// BatchNorm, then ReLU when `relu` (fused on CPU).
    pub fn forward_act(&self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        self.forward_act_impl(x, mode, relu, false)
    }

    /// [`BatchNorm2d::forward_act`] that may overwrite `x` (a fresh activation the caller
    /// gives up): in train mode without gradients (frozen layers), the normalisation runs in
    /// place instead of allocating a second activation.
    fn forward_act_owned(&self, x: Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        self.forward_act_impl(&x, mode, relu, true)
    }

    fn forward_act_impl(&self, x: &Tensor, mode: Mode, relu: bool, owned: bool) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        if !mode.train {
            let (scale, shift) = self.folded(mode)?;
            return Ok(kernels::scale_shift(x, &scale, &shift, relu)?);
        }
        let count = n * h * w;
        if count < 2 {
            return Err(Error::InvalidOption(format!(
                "BatchNorm in train mode needs more than one value per channel, got input {:?} \
                 (use a larger batch or image size)",
                x.dims()
            )));
        }
        let (gamma, beta) = (weight(&self.weight, mode), weight(&self.bias, mode));
        let (y, stats) = if owned && !mode.grad && !x.track_op() {
            kernels::batch_norm_train_in_place(x.clone(), &gamma, &beta, BN_EPS, relu)?
        } else {
            kernels::batch_norm_train(x, &gamma, &beta, BN_EPS, relu)?
        };
        self.update_running_stats(&stats.mean, &stats.var, count)?;
        Ok(y)
    }

    /// Eval mode's per-channel `(scale, shift)`, `[c]` each: `gamma / sqrt(running_var +
    /// eps)` and `beta - running_mean * scale`.
    fn folded(&self, mode: Mode) -> Result<(Tensor, Tensor)> {
        let (gamma, beta) = (weight(&self.weight, mode), weight(&self.bias, mode));
        let inv_std = (self.running_var.as_detached_tensor() + BN_EPS)?
            .sqrt()?
            .recip()?;
        let scale = (gamma * inv_std)?;
        let shift = (beta - (self.running_mean.as_detached_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    fn update_running_stats(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let unbiased = count as f64 / (count as f64 - 1.0);
        let mean = mean.detach().flatten_all()?;
        let var = var.detach().flatten_all()?;
        let rm = ((self.running_mean.as_detached_tensor() * (1.0 - BN_MOMENTUM))?
            + (mean * BN_MOMENTUM)?)?;
        let rv = ((self.running_var.as_detached_tensor() * (1.0 - BN_MOMENTUM))?
            + (var * (BN_MOMENTUM * unbiased))?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(())
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        to_candle(self.forward_mode(x, Mode { train, grad: true }))
    }
}

/// Convolution followed by BatchNorm (no activation); the unit a fused implementation would
/// replace.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// `conv_vb` and `bn_vb` name the two halves (`conv1`/`bn1`, `downsample.0`/`downsample.1`).
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(in_c, out_c, kernel, stride, padding, conv_vb)?,
            bn: BatchNorm2d::new(out_c, bn_vb)?,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_act(x, mode, false)
    }

    /// Convolution, BatchNorm, then ReLU when `relu`. Eval mode folds the BatchNorm (and the
    /// ReLU) into the convolution's output pass.
    pub fn forward_act(&self, x: &Tensor, mode: Mode, relu: bool) -> Result<Tensor> {
        if !mode.train {
            let (scale, shift) = self.bn.folded(mode)?;
            return self.conv.forward_affine(x, mode, (&scale, &shift), relu);
        }
        self.bn
            .forward_act_owned(self.conv.forward_mode(x, mode)?, mode, relu)
    }

    pub fn bn(&self) -> &BatchNorm2d {
        &self.bn
    }
}

/// A fully connected layer, weight `[out, in]`, bias `[out]`, PyTorch's default init
/// (uniform ±1/sqrt(in) for both; `candle_nn::linear` uses a Kaiming normal weight instead).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(in_f: usize, out_f: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_f as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((out_f, in_f), "weight", init)?,
            bias: vb.get_with_hints(out_f, "bias", init)?,
        })
    }

    /// `[b, in]` -> `[b, out]`.
    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let w = weight(&self.weight, mode);
        Ok(x.matmul(&w.t()?)?
            .broadcast_add(&weight(&self.bias, mode))?)
    }
}

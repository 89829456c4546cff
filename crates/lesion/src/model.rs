//! torchvision's ResNet-18 with the notebook's binary head, trainable in candle.
//!
//! - Input: `[b, 3, h, w]` f32 NCHW, ImageNet-normalised (224x224 in the notebook; any size
//!   works, but train mode needs more than one value per channel in every BatchNorm, i.e.
//!   `b * (h/32) * (w/32) > 1`).
//! - Output: logits `[b, 1]` f32 (malignant = positive).
//! - Parameters: exactly torchvision's state-dict names and shapes (`conv1.weight`
//!   `[64, 3, 7, 7]`, `layer2.0.downsample.1.running_var` `[128]`, ...), plus the head
//!   `fc.0` Linear(512, 256), `fc.3` Linear(256, 32), `fc.6` Linear(32, 1) (indices of the
//!   notebook's `nn.Sequential`; ReLU and Dropout sit between them). No `num_batches_tracked`.
//!   BatchNorm running statistics are `Var`s too (they are updated in train mode) but must
//!   never reach the optimizer: see [`is_running_stat`] and [`trainable_vars`].
//!
//! Train vs eval ([`candle_nn::ModuleT`]): in train mode BatchNorm normalises with batch
//! statistics (biased variance) and updates its running statistics with momentum 0.1 and the
//! unbiased variance, as PyTorch, in every layer including frozen ones (as in the notebook);
//! dropout is active. In eval mode BatchNorm uses the running statistics, dropout is off, and
//! no backward graph is built at all (weights are used detached), because candle has no
//! `no_grad` and a graph would keep every activation alive.
//!
//! [`Trainable`] selects how much of the network trains. The frozen prefix runs its forward
//! with detached weights and its output is detached, so backward neither reaches nor is
//! recorded for it.
//!
//! Every layer is a small struct with a `forward_mode` method so that an implementation
//! can be swapped in one place. On CPU with f32 the layers run [`crate::kernels`]:
//! im2col + gemm convolutions, a fused BatchNorm(+ReLU) with a closed-form backward in train
//! mode, BatchNorm folded into the convolution (+ReLU) in eval mode, and a fused residual
//! add + ReLU. Elsewhere (f64, CUDA, Metal) the same functions compose candle's ops.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, ModuleT, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::kernels;
use crate::{Error, Result};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// How much of the network trains; everything before it is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Only the head (`fc.*`).
    Head,
    /// The head and `layer4`.
    Layer4,
    /// The head, `layer4` and `layer3` (the notebook's recipe).
    Layer3,
    /// Every layer.
    All,
}

impl Trainable {
    /// All values, from least to most trainable.
    pub const ALL: [Trainable; 4] = [
        Trainable::Head,
        Trainable::Layer4,
        Trainable::Layer3,
        Trainable::All,
    ];

    /// The optimizer groups that train, in the notebook's order: `head`, `layer4`, `layer3`,
    /// then `backbone` (stem, `layer1`, `layer2`).
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            Trainable::Head => &["head"],
            Trainable::Layer4 => &["head", "layer4"],
            Trainable::Layer3 => &["head", "layer4", "layer3"],
            Trainable::All => &["head", "layer4", "layer3", "backbone"],
        }
    }

    /// Index of the first trainable stage (0 stem, 1..=4 layers, 5 head).
    fn first_stage(self) -> usize {
        match self {
            Trainable::All => 0,
            Trainable::Layer3 => 3,
            Trainable::Layer4 => 4,
            Trainable::Head => 5,
        }
    }
}

impl fmt::Display for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trainable::Head => "head",
            Trainable::Layer4 => "layer4",
            Trainable::Layer3 => "layer3",
            Trainable::All => "all",
        })
    }
}

impl FromStr for Trainable {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "head" => Ok(Trainable::Head),
            "layer4" => Ok(Trainable::Layer4),
            "layer3" => Ok(Trainable::Layer3),
            "all" => Ok(Trainable::All),
            _ => Err(Error::InvalidOption(format!(
                "trainable must be one of head|layer4|layer3|all, got `{s}`"
            ))),
        }
    }
}

/// How a layer runs: `train` picks batch statistics and dropout; `grad` says whether the
/// layer's weights take part in the backward graph (false: they are used detached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub train: bool,
    pub grad: bool,
}

fn weight(t: &Tensor, mode: Mode) -> Tensor {
    if mode.grad {
        t.clone()
    } else {
        t.detach()
    }
}

/// The optimizer group of a parameter name: `head`, `layer4`, `layer3` or `backbone`.
pub fn param_group(name: &str) -> &'static str {
    if name.starts_with("fc.") {
        "head"
    } else if name.starts_with("layer4.") {
        "layer4"
    } else if name.starts_with("layer3.") {
        "layer3"
    } else {
        "backbone"
    }
}

/// True for BatchNorm buffers (`running_mean`, `running_var`, `num_batches_tracked`), which
/// live in the `VarMap` but are not parameters.
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
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

/// The 1x1 strided projection shortcut (`downsample.0` conv, `downsample.1` BatchNorm).
#[derive(Debug, Clone)]
pub struct Downsample {
    inner: ConvBn,
}

impl Downsample {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: ConvBn::new(in_c, out_c, 1, stride, 0, vb.pp("0"), vb.pp("1"))?,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.inner.forward_mode(x, mode)
    }
}

/// torchvision's `BasicBlock`: two 3x3 conv-BN pairs and a residual connection.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    first: ConvBn,
    second: ConvBn,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = if stride != 1 || in_c != out_c {
            Some(Downsample::new(in_c, out_c, stride, vb.pp("downsample"))?)
        } else {
            None
        };
        Ok(Self {
            first: ConvBn::new(in_c, out_c, 3, stride, 1, vb.pp("conv1"), vb.pp("bn1"))?,
            second: ConvBn::new(out_c, out_c, 3, 1, 1, vb.pp("conv2"), vb.pp("bn2"))?,
            downsample,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.first.forward_act(x, mode, true)?;
        let y = self.second.forward_mode(&y, mode)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward_mode(x, mode)?,
            None => x.clone(),
        };
        Ok(kernels::add_relu(&y, &shortcut)?)
    }

    pub fn bn1(&self) -> &BatchNorm2d {
        self.first.bn()
    }

    pub fn bn2(&self) -> &BatchNorm2d {
        self.second.bn()
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        to_candle(self.forward_mode(x, Mode { train, grad: true }))
    }
}

/// `layerN`: two basic blocks, the first of which may downsample.
#[derive(Debug, Clone)]
pub struct ResLayer {
    blocks: Vec<BasicBlock>,
}

impl ResLayer {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            blocks: vec![
                BasicBlock::new(in_c, out_c, stride, vb.pp("0"))?,
                BasicBlock::new(out_c, out_c, 1, vb.pp("1"))?,
            ],
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward_mode(&x, mode)?;
        }
        Ok(x)
    }

    pub fn block(&self, i: usize) -> &BasicBlock {
        &self.blocks[i]
    }
}

/// The stem: `conv1` 7x7/2, `bn1`, ReLU, max-pool 3x3/2.
#[derive(Debug, Clone)]
pub struct Stem {
    conv_bn: ConvBn,
}

impl Stem {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv_bn: ConvBn::new(3, 64, 7, 2, 3, vb.pp("conv1"), vb.pp("bn1"))?,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.conv_bn.forward_act(x, mode, true)?;
        Ok(kernels::max_pool2d_3x3s2p1(&y)?)
    }

    pub fn bn1(&self) -> &BatchNorm2d {
        self.conv_bn.bn()
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

/// Seed and position of the dropout RNG (ChaCha8), enough to resume the exact mask sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutRngState {
    pub seed: u64,
    pub word_pos: u128,
}

/// The notebook's head: `fc.0` Linear(512, 256), ReLU, Dropout(p), `fc.3` Linear(256, 32),
/// ReLU, Dropout(p), `fc.6` Linear(32, 1). Input `[b, 512]`, output `[b, 1]`.
///
/// Dropout masks come from a seeded ChaCha8 RNG on the CPU (candle's CPU RNG cannot be
/// seeded), so training is reproducible and resumable.
#[derive(Debug)]
pub struct Head {
    fc0: Linear,
    fc3: Linear,
    fc6: Linear,
    dropout: f32,
    rng: Mutex<(u64, ChaCha8Rng)>,
}

impl Head {
    pub fn new(dropout: f32, vb: VarBuilder) -> Result<Self> {
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::InvalidOption(format!(
                "head dropout must be in [0, 1), got {dropout}"
            )));
        }
        Ok(Self {
            fc0: Linear::new(512, 256, vb.pp("0"))?,
            fc3: Linear::new(256, 32, vb.pp("3"))?,
            fc6: Linear::new(32, 1, vb.pp("6"))?,
            dropout,
            rng: Mutex::new((0, ChaCha8Rng::seed_from_u64(0))),
        })
    }

    fn drop(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if !mode.train || self.dropout == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.dropout);
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap();
            (0..x.elem_count())
                .map(|_| {
                    if rng.1.random::<f32>() < self.dropout {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.drop(&kernels::relu(&self.fc0.forward_mode(x, mode)?)?, mode)?;
        let x = self.drop(&kernels::relu(&self.fc3.forward_mode(&x, mode)?)?, mode)?;
        self.fc6.forward_mode(&x, mode)
    }

    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    pub fn set_dropout_seed(&self, seed: u64) {
        *self.rng.lock().unwrap() = (seed, ChaCha8Rng::seed_from_u64(seed));
    }

    pub fn dropout_rng_state(&self) -> DropoutRngState {
        let rng = self.rng.lock().unwrap();
        DropoutRngState {
            seed: rng.0,
            word_pos: rng.1.get_word_pos(),
        }
    }

    pub fn set_dropout_rng_state(&self, state: DropoutRngState) {
        let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
        rng.set_word_pos(state.word_pos);
        *self.rng.lock().unwrap() = (state.seed, rng);
    }
}

/// ResNet-18 backbone + the notebook's head. See the module docs for shapes and modes.
#[derive(Debug)]
pub struct ResNet18 {
    stem: Stem,
    layers: [ResLayer; 4],
    head: Head,
    trainable: Trainable,
}

impl ResNet18 {
    /// Builds the model from `vb` (f32). With a fresh `VarMap` behind `vb`, parameters are
    /// initialised as torchvision's (Kaiming-normal fan-out convs, BatchNorm 1/0, running
    /// stats 0/1, PyTorch-default Linear), from candle's unseeded RNG; see [`init_seeded`]
    /// for a reproducible init. `trainable` starts as [`Trainable::All`].
    pub fn new(vb: VarBuilder, head_dropout: f32) -> Result<Self> {
        Ok(Self {
            stem: Stem::new(vb.clone())?,
            layers: [
                ResLayer::new(64, 64, 1, vb.pp("layer1"))?,
                ResLayer::new(64, 128, 2, vb.pp("layer2"))?,
                ResLayer::new(128, 256, 2, vb.pp("layer3"))?,
                ResLayer::new(256, 512, 2, vb.pp("layer4"))?,
            ],
            head: Head::new(head_dropout, vb.pp("fc"))?,
            trainable: Trainable::All,
        })
    }

    /// An inference/evaluation model from plain tensors (a checkpoint, or [`snapshot`]):
    /// every tensor is detached, so no forward ever builds a backward graph. Every name of
    /// [`param_specs`] must be present with its shape; other keys are ignored. Tensors are
    /// moved to `device` and converted to f32. Train mode still works on such a model but
    /// updates private copies of the running statistics.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        device: &Device,
        head_dropout: f32,
    ) -> Result<Self> {
        let mut map = HashMap::with_capacity(param_specs().len());
        for spec in param_specs() {
            let t = tensors
                .get(&spec.name)
                .ok_or_else(|| Error::MissingTensor {
                    name: spec.name.clone(),
                })?;
            if t.dims() != spec.shape.as_slice() {
                return Err(Error::TensorShape {
                    name: spec.name.clone(),
                    expected: spec.shape.clone(),
                    actual: t.dims().to_vec(),
                });
            }
            map.insert(spec.name.clone(), t.detach());
        }
        Self::new(
            VarBuilder::from_tensors(map, DType::F32, device),
            head_dropout,
        )
    }

    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    /// Which part trains in [`ModuleT::forward_t`] with `train = true`.
    pub fn set_trainable(&mut self, trainable: Trainable) {
        self.trainable = trainable;
    }

    /// The full forward pass. `train` selects BatchNorm statistics and dropout; `grad` is the
    /// part whose weights enter the backward graph (`None`: no graph at all, the inference
    /// setting). The frozen prefix's output is detached.
    pub fn forward_with(&self, x: &Tensor, train: bool, grad: Option<Trainable>) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            return Err(Error::InvalidOption(format!(
                "model input must be [batch, 3, height, width], got {:?}",
                x.dims()
            )));
        }
        let first = grad.map_or(usize::MAX, Trainable::first_stage);
        let mode = |stage: usize| Mode {
            train,
            grad: stage >= first,
        };
        let enter = |stage: usize, x: Tensor| {
            if stage == first && stage > 0 {
                x.detach()
            } else {
                x
            }
        };
        let mut x = self.stem.forward_mode(x, mode(0))?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_mode(&enter(i + 1, x), mode(i + 1))?;
        }
        let pooled = x.mean((2, 3))?;
        self.head.forward_mode(&enter(5, pooled), mode(5))
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn stem(&self) -> &Stem {
        &self.stem
    }

    /// `layerN` for `n` in 1..=4.
    pub fn layer(&self, n: usize) -> &ResLayer {
        &self.layers[n - 1]
    }

    pub fn set_dropout_seed(&self, seed: u64) {
        self.head.set_dropout_seed(seed);
    }

    pub fn dropout_rng_state(&self) -> DropoutRngState {
        self.head.dropout_rng_state()
    }

    pub fn set_dropout_rng_state(&self, state: DropoutRngState) {
        self.head.set_dropout_rng_state(state);
    }
}

impl ModuleT for ResNet18 {
    /// `[b, 3, h, w]` -> `[b, 1]`. Train: backward graph for [`ResNet18::trainable`] only.
    /// Eval: no backward graph.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let grad = train.then_some(self.trainable);
        to_candle(self.forward_with(x, train, grad))
    }
}

fn to_candle<T>(r: Result<T>) -> candle_core::Result<T> {
    r.map_err(|e| match e {
        Error::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    })
}

/// Name, shape and init of one model tensor.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// Every tensor of the model (parameters and running statistics) in construction order.
pub fn param_specs() -> &'static [ParamSpec] {
    static SPECS: OnceLock<Vec<ParamSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let vb = VarBuilder::from_backend(
            Box::new(Recorder(recorded.clone())),
            DType::F32,
            Device::Cpu,
        );
        ResNet18::new(vb, 0.0).expect("recording the architecture cannot fail");
        let specs = recorded.lock().unwrap().clone();
        specs
    })
}

/// A `VarBuilder` backend that records what the model asks for and hands out free
/// broadcast zeros.
struct Recorder(Arc<Mutex<Vec<ParamSpec>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.lock().unwrap().push(ParamSpec {
            name: name.to_string(),
            shape: s.dims().to_vec(),
            init,
        });
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked lookup of `{name}` while recording the architecture")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Parameter names (no running statistics) that train under `trainable`, by optimizer
/// group, in [`Trainable::groups`] order.
pub fn trainable_param_names(trainable: Trainable) -> Vec<(&'static str, Vec<String>)> {
    trainable
        .groups()
        .iter()
        .map(|&group| {
            let names = param_specs()
                .iter()
                .filter(|s| !is_running_stat(&s.name) && param_group(&s.name) == group)
                .map(|s| s.name.clone())
                .collect();
            (group, names)
        })
        .collect()
}

/// Named variables of one optimizer group: (group name, [(parameter name, variable)]).
pub type VarGroup = (&'static str, Vec<(String, Var)>);

/// [`trainable_param_names`] resolved to the `VarMap`'s variables, for building optimizer
/// groups. Errors name any parameter missing from the map.
pub fn trainable_vars(varmap: &VarMap, trainable: Trainable) -> Result<Vec<VarGroup>> {
    let data = varmap.data().lock().unwrap();
    trainable_param_names(trainable)
        .into_iter()
        .map(|(group, names)| {
            let vars = names
                .into_iter()
                .map(|name| match data.get(&name) {
                    Some(v) => Ok((name, v.clone())),
                    None => Err(Error::MissingTensor { name }),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((group, vars))
        })
        .collect()
}

/// Deep copies of every variable in `varmap` (later optimizer steps do not affect them),
/// e.g. to keep the best weights or to build an inference model with
/// [`ResNet18::from_tensors`].
pub fn snapshot(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
        .collect()
}

/// Re-initialises every model tensor in `varmap` as torchvision does, from a ChaCha8 RNG
/// seeded with `seed` (candle's CPU RNG cannot be seeded). Order is [`param_specs`] order, so
/// a seed always gives the same weights.
pub fn init_seeded(varmap: &VarMap, seed: u64) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().unwrap();
    for spec in param_specs() {
        let var = data.get(&spec.name).ok_or_else(|| Error::MissingTensor {
            name: spec.name.clone(),
        })?;
        let n: usize = spec.shape.iter().product();
        let values: Vec<f32> = match spec.init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n)
                .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
                .collect(),
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| (mean + stdev * standard_normal(&mut rng)) as f32)
                .collect(),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let fan = fan.for_shape(&Shape::from(spec.shape.clone()));
                let std = non_linearity.gain() / (fan as f64).sqrt();
                match dist {
                    NormalOrUniform::Normal => (0..n)
                        .map(|_| (std * standard_normal(&mut rng)) as f32)
                        .collect(),
                    NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0..n)
                            .map(|_| (bound * (2.0 * rng.random::<f64>() - 1.0)) as f32)
                            .collect()
                    }
                }
            }
        };
        let t = Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu)?
            .to_device(var.device())?
            .to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Box-Muller; one draw per call keeps the sequence simple to reproduce.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What [`load_state_dict`] did with each key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model tensors copied from the state dict.
    pub loaded: Vec<String>,
    /// Head tensors absent from the state dict (an ImageNet checkpoint): they keep their
    /// current (fresh) values.
    pub head_kept: Vec<String>,
    /// The 1000-class ImageNet classifier (`fc.weight`, `fc.bias`), skipped.
    pub skipped_classifier: Vec<String>,
    /// `num_batches_tracked` buffers, which this model does not keep.
    pub ignored_counters: Vec<String>,
    /// Any other key the model does not know, ignored.
    pub unknown: Vec<String>,
}

/// Copies a torchvision/timm ResNet-18 state dict (torchvision names) into the model's
/// `VarMap`, converting dtype and device.
///
/// Every backbone tensor must be present with the right shape, else the error names it
/// ([`Error::MissingTensor`], [`Error::TensorShape`]). The head (`fc.0`, `fc.3`, `fc.6`) is
/// loaded when present (all of it, or it is an error) and kept otherwise. With
/// `skip_fc_if_1000_classes`, an ImageNet classifier `fc.weight` `[1000, 512]` / `fc.bias`
/// `[1000]` is reported as skipped; otherwise those keys count as unknown. Nothing is
/// modified when an error is returned.
pub fn load_state_dict(
    varmap: &VarMap,
    tensors: HashMap<String, Tensor>,
    skip_fc_if_1000_classes: bool,
) -> Result<LoadReport> {
    let data = varmap.data().lock().unwrap();
    let mut report = LoadReport::default();
    let has_head = data
        .keys()
        .any(|k| param_group(k) == "head" && tensors.contains_key(k));
    let mut plan = Vec::new();
    let sorted: BTreeMap<_, _> = data.iter().collect();
    for (name, var) in sorted {
        match tensors.get(name) {
            Some(t) if t.dims() == var.dims() => plan.push((name.clone(), var, t)),
            Some(t) => {
                return Err(Error::TensorShape {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    actual: t.dims().to_vec(),
                })
            }
            None if param_group(name) == "head" && !has_head => report.head_kept.push(name.clone()),
            None => return Err(Error::MissingTensor { name: name.clone() }),
        }
    }
    let is_imagenet_fc = |k: &str| {
        let classes = tensors
            .get("fc.weight")
            .and_then(|w| w.dims().first().copied());
        skip_fc_if_1000_classes && (k == "fc.weight" || k == "fc.bias") && classes == Some(1000)
    };
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    extra.sort();
    for k in extra {
        if is_imagenet_fc(k) {
            report.skipped_classifier.push(k.clone());
        } else if k.ends_with(".num_batches_tracked") {
            report.ignored_counters.push(k.clone());
        } else {
            report.unknown.push(k.clone());
        }
    }
    for (name, var, t) in plan {
        let t = t.to_device(var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
        report.loaded.push(name);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use candle_core::backprop::GradStore;

    fn tiny_model() -> (VarMap, ResNet18) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ResNet18::new(vb, 0.25).unwrap();
        init_seeded(&varmap, 7).unwrap();
        (varmap, model)
    }

    fn input(b: usize, size: usize) -> Tensor {
        let n = b * 3 * size * size;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
    }

    fn grad_norm(grads: &GradStore, varmap: &VarMap, name: &str) -> Option<f32> {
        let data = varmap.data().lock().unwrap();
        grads.get(data[name].as_tensor()).map(|g| {
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
    }

    #[test]
    fn names_and_shapes_are_torchvision_s() {
        let specs = param_specs();
        // 62 parameters + 40 running statistics (20 BatchNorms) in ResNet-18 with this head.
        let params = specs.iter().filter(|s| !is_running_stat(&s.name)).count();
        assert_eq!(params, 62 - 2 + 6);
        assert_eq!(specs.len() - params, 40);
        let get = |n: &str| {
            specs
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("{n}"))
                .shape
                .clone()
        };
        assert_eq!(get("conv1.weight"), [64, 3, 7, 7]);
        assert_eq!(get("bn1.running_mean"), [64]);
        assert_eq!(get("layer1.0.conv1.weight"), [64, 64, 3, 3]);
        assert_eq!(get("layer2.0.downsample.0.weight"), [128, 64, 1, 1]);
        assert_eq!(get("layer2.0.downsample.1.running_var"), [128]);
        assert_eq!(get("layer4.1.bn2.bias"), [512]);
        assert_eq!(get("fc.0.weight"), [256, 512]);
        assert_eq!(get("fc.3.weight"), [32, 256]);
        assert_eq!(get("fc.6.weight"), [1, 32]);
        assert_eq!(get("fc.6.bias"), [1]);
        assert!(!specs.iter().any(|s| s.name.contains("layer1.0.downsample")));
        let params: usize = specs
            .iter()
            .filter(|s| !is_running_stat(&s.name))
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // torchvision resnet18 has 11,689,512 parameters, 513,000 of them in its fc.
        assert_eq!(
            params,
            11_689_512 - 513_000 + (512 * 256 + 256) + (256 * 32 + 32) + 33
        );
    }

    #[test]
    fn trainable_parses_prints_and_groups() {
        for t in Trainable::ALL {
            assert_eq!(t.to_string().parse::<Trainable>().unwrap(), t);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
        }
        assert!("layer2".parse::<Trainable>().is_err());
        let groups = trainable_param_names(Trainable::Layer3);
        let names: Vec<_> = groups.iter().map(|g| g.0).collect();
        assert_eq!(names, ["head", "layer4", "layer3"]);
        assert!(groups[0].1.contains(&"fc.6.bias".to_string()));
        assert!(groups[2].1.contains(&"layer3.1.bn1.bias".to_string()));
        assert!(groups
            .iter()
            .flat_map(|g| &g.1)
            .all(|n| !is_running_stat(n)));
        let all = trainable_param_names(Trainable::All);
        assert_eq!(all[3].0, "backbone");
        assert!(all[3].1.contains(&"conv1.weight".to_string()));
        assert!(all[3].1.contains(&"layer2.1.conv2.weight".to_string()));
        assert_eq!(all.iter().map(|g| g.1.len()).sum::<usize>(), 66);
    }

    #[test]
    fn tiny_model_shapes_determinism_and_frozen_layers() {
        let (varmap, mut model) = tiny_model();
        let x = input(2, 64);
        let eval1 = model.forward_t(&x, false).unwrap();
        assert_eq!(eval1.dims(), [2, 1]);
        let eval2 = model.forward_t(&x, false).unwrap();
        assert_eq!(
            eval1.to_vec2::<f32>().unwrap(),
            eval2.to_vec2::<f32>().unwrap()
        );
        // Eval builds no graph.
        assert!(!eval1.track_op());

        model.set_trainable(Trainable::Head);
        let y = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
        let rm_before = model.stem().bn1().running_mean().to_vec1::<f32>().unwrap();
        let logits = model.forward_t(&x, true).unwrap();
        assert_eq!(logits.dims(), [2, 1]);
        // Frozen layers still update their running statistics in train mode.
        let rm_after = model.stem().bn1().running_mean().to_vec1::<f32>().unwrap();
        assert_ne!(rm_before, rm_after);
        let grads = ops::bce_with_logits(&logits, &y)
            .unwrap()
            .backward()
            .unwrap();
        assert!(grad_norm(&grads, &varmap, "fc.0.weight").unwrap() > 0.0);
        for name in [
            "layer4.1.conv2.weight",
            "layer4.0.bn1.weight",
            "conv1.weight",
        ] {
            assert!(grad_norm(&grads, &varmap, name).is_none(), "{name}");
        }

        model.set_trainable(Trainable::Layer4);
        let logits = model.forward_t(&x, true).unwrap();
        let grads = ops::bce_with_logits(&logits, &y)
            .unwrap()
            .backward()
            .unwrap();
        assert!(grad_norm(&grads, &varmap, "layer4.1.conv2.weight").unwrap() > 0.0);
        assert!(grad_norm(&grads, &varmap, "layer3.1.conv2.weight").is_none());

        model.set_trainable(Trainable::All);
        let logits = model.forward_t(&x, true).unwrap();
        let grads = ops::bce_with_logits(&logits, &y)
            .unwrap()
            .backward()
            .unwrap();
        for name in [
            "conv1.weight",
            "bn1.bias",
            "layer1.0.conv1.weight",
            "fc.6.bias",
        ] {
            assert!(grad_norm(&grads, &varmap, name).unwrap() > 0.0, "{name}");
        }
        // Running statistics never get a gradient.
        assert!(grad_norm(&grads, &varmap, "bn1.running_mean").is_none());
    }

    #[test]
    fn dropout_is_seeded_and_resumable() {
        let (_varmap, model) = tiny_model();
        let x = input(2, 32);
        model.set_dropout_seed(3);
        let a = model.forward_with(&x, true, None).unwrap();
        let state = model.dropout_rng_state();
        let b = model.forward_with(&x, true, None).unwrap();
        model.set_dropout_rng_state(state);
        let b2 = model.forward_with(&x, true, None).unwrap();
        assert_eq!(b.to_vec2::<f32>().unwrap(), b2.to_vec2::<f32>().unwrap());
        assert_ne!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn seeded_init_is_reproducible_and_torchvision_like() {
        let (va, _) = tiny_model();
        let (vb, _) = tiny_model();
        let a = snapshot(&va).unwrap();
        let b = snapshot(&vb).unwrap();
        for (k, t) in &a {
            let d = (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
        }
        // conv1: std sqrt(2 / (64 * 49)) = 0.0252.
        let w = a["conv1.weight"].flatten_all().unwrap();
        let std = w
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((std - 0.0252).abs() < 0.001, "{std}");
        let fc = a["fc.0.weight"].abs().unwrap().max_all().unwrap();
        assert!(fc.to_scalar::<f32>().unwrap() <= 1.0 / 512f32.sqrt());
        assert_eq!(
            a["bn1.running_var"].to_vec1::<f32>().unwrap(),
            vec![1.0; 64]
        );
    }

    #[test]
    fn load_state_dict_reports_and_rejects() {
        let (varmap, _) = tiny_model();
        let mut sd = snapshot(&varmap).unwrap();
        for k in [
            "fc.0.weight",
            "fc.0.bias",
            "fc.3.weight",
            "fc.3.bias",
            "fc.6.weight",
            "fc.6.bias",
        ] {
            sd.remove(k);
        }
        sd.insert(
            "fc.weight".into(),
            Tensor::zeros((1000, 512), DType::F32, &Device::Cpu).unwrap(),
        );
        sd.insert(
            "fc.bias".into(),
            Tensor::zeros(1000, DType::F32, &Device::Cpu).unwrap(),
        );
        sd.insert(
            "bn1.num_batches_tracked".into(),
            Tensor::new(&[3i64], &Device::Cpu).unwrap(),
        );
        sd.insert(
            "extra.thing".into(),
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        );
        let report = load_state_dict(&varmap, sd.clone(), true).unwrap();
        assert_eq!(report.loaded.len(), 106 - 6);
        assert_eq!(report.head_kept.len(), 6);
        assert_eq!(report.skipped_classifier, ["fc.bias", "fc.weight"]);
        assert_eq!(report.ignored_counters, ["bn1.num_batches_tracked"]);
        assert_eq!(report.unknown, ["extra.thing"]);
        let report = load_state_dict(&varmap, sd.clone(), false).unwrap();
        assert_eq!(report.unknown, ["extra.thing", "fc.bias", "fc.weight"]);

        let mut missing = sd.clone();
        missing.remove("layer3.1.bn2.running_var");
        let err = load_state_dict(&varmap, missing, true).unwrap_err();
        assert!(
            err.to_string().contains("layer3.1.bn2.running_var"),
            "{err}"
        );

        let mut bad = sd;
        bad.insert(
            "layer2.0.conv1.weight".into(),
            Tensor::zeros((128, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = load_state_dict(&varmap, bad, true).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("layer2.0.conv1.weight") && msg.contains("[128, 64, 3, 3]"),
            "{msg}"
        );
    }

    #[test]
    fn from_tensors_model_matches_and_builds_no_graph() {
        let (varmap, model) = tiny_model();
        let x = input(2, 64);
        let inference =
            ResNet18::from_tensors(snapshot(&varmap).unwrap(), &Device::Cpu, 0.25).unwrap();
        let a = model.forward_t(&x, false).unwrap();
        let b = inference
            .forward_with(&x, false, Some(Trainable::All))
            .unwrap();
        assert!(!b.track_op());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let mut partial = snapshot(&varmap).unwrap();
        partial.remove("layer1.1.bn1.weight");
        let err = ResNet18::from_tensors(partial, &Device::Cpu, 0.0).unwrap_err();
        assert!(err.to_string().contains("layer1.1.bn1.weight"));
    }
}

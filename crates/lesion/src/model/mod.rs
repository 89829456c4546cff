//! torchvision's ResNet-18 with the notebook's binary head, trainable in candle.
//!
//! - Input: `[b, 3, h, w]` f32 NCHW, ImageNet-normalised (224x224 in the notebook; any size
//!   works, but train mode needs more than one value per channel in every BatchNorm, i.e.
//!   `b * (h/32) * (w/32) > 1`).
//! - Output: logits `[b, K]` f32: K = 1 for two classes (the positive class's logit), K = N
//!   for N > 2 (see [`crate::classes`]).
//! - Parameters: exactly torchvision's state-dict names and shapes (`conv1.weight`
//!   `[64, 3, 7, 7]`, `layer2.0.downsample.1.running_var` `[128]`, ...), plus the head
//!   `fc.0` Linear(512, 256), `fc.3` Linear(256, 32), `fc.6` Linear(32, K) (indices of the
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
//! Frozen BatchNorm ([`ResNet18::set_freeze_bn`]): the stages before the first trainable one
//! run in eval mode even when training (running statistics, never updated; Keras's advice
//! for fine-tuning), image by image, so the frozen prefix is a fixed function of each image.
//! [`ResNet18::forward_prefix`] computes that prefix alone and [`ResNet18::forward_from`]
//! continues from its output, which lets training cache the prefix's output per image
//! (`train::feature_cache`). Stage numbers: 0 stem (input `[b, 3, h, w]`), 1..=4 `layerN`
//! (input: the previous stage's `[b, c, h', w']`), 5 the head (input: the pooled
//! `[b, 512]`). With [`Trainable::All`] nothing is frozen and the flag changes nothing.
//!
//! Every layer is a small struct with a `forward_mode` method so that an implementation
//! can be swapped in one place. On CPU with f32 the layers run [`crate::kernels`]:
//! im2col + gemm convolutions, a fused BatchNorm(+ReLU) with a closed-form backward in train
//! mode, BatchNorm folded into the convolution (+ReLU) in eval mode, and a fused residual
//! add + ReLU. Elsewhere (f64, CUDA, Metal) the same functions compose candle's ops.

mod block;
mod head;
mod layers;
mod params;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use block::{BasicBlock, Downsample, ResLayer, Stem};
pub use head::{DropoutRngState, Head};
pub use layers::{BatchNorm2d, Conv2d, ConvBn, Linear};
pub use params::{
    init_seeded, load_state_dict, param_specs, shape_for, snapshot, trainable_param_names,
    trainable_vars, LoadReport, ParamSpec, VarGroup,
};

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
    pub fn first_stage(self) -> usize {
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

/// ResNet-18 backbone + the notebook's head. See the module docs for shapes and modes.
#[derive(Debug)]
pub struct ResNet18 {
    stem: Stem,
    layers: [ResLayer; 4],
    head: Head,
    trainable: Trainable,
    freeze_bn: bool,
}

impl ResNet18 {
    /// Builds the model from `vb` (f32). With a fresh `VarMap` behind `vb`, parameters are
    /// initialised as torchvision's (Kaiming-normal fan-out convs, BatchNorm 1/0, running
    /// stats 0/1, PyTorch-default Linear), from candle's unseeded RNG; see [`init_seeded`]
    /// for a reproducible init. `trainable` starts as [`Trainable::All`].
    pub fn new(vb: VarBuilder, head_dropout: f32, outputs: usize) -> Result<Self> {
        Ok(Self {
            stem: Stem::new(vb.clone())?,
            layers: [
                ResLayer::new(64, 64, 1, vb.pp("layer1"))?,
                ResLayer::new(64, 128, 2, vb.pp("layer2"))?,
                ResLayer::new(128, 256, 2, vb.pp("layer3"))?,
                ResLayer::new(256, 512, 2, vb.pp("layer4"))?,
            ],
            head: Head::new(head_dropout, outputs, vb.pp("fc"))?,
            trainable: Trainable::All,
            freeze_bn: false,
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
        outputs: usize,
    ) -> Result<Self> {
        let mut map = HashMap::with_capacity(param_specs().len());
        for spec in param_specs() {
            let t = tensors
                .get(&spec.name)
                .ok_or_else(|| Error::MissingTensor {
                    name: spec.name.clone(),
                })?;
            let expected = shape_for(spec, outputs);
            if t.dims() != expected.as_slice() {
                return Err(Error::TensorShape {
                    name: spec.name.clone(),
                    expected,
                    actual: t.dims().to_vec(),
                });
            }
            map.insert(spec.name.clone(), t.detach());
        }
        Self::new(
            VarBuilder::from_tensors(map, DType::F32, device),
            head_dropout,
            outputs,
        )
    }

    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    /// Which part trains in [`ModuleT::forward_t`] with `train = true`.
    pub fn set_trainable(&mut self, trainable: Trainable) {
        self.trainable = trainable;
    }

    /// Whether the frozen stages' BatchNorm runs in eval mode when training.
    pub fn freeze_bn(&self) -> bool {
        self.freeze_bn
    }

    /// With `true`, the stages before the first trainable one (of the `grad` part given to
    /// [`ResNet18::forward_with`], else [`ResNet18::trainable`]) run in eval mode in train
    /// mode too: their BatchNorm normalises with the running statistics and never updates
    /// them. Dropout (in the head, which is never frozen this way) is unaffected.
    pub fn set_freeze_bn(&mut self, freeze_bn: bool) {
        self.freeze_bn = freeze_bn;
    }

    /// The full forward pass. `train` selects BatchNorm statistics and dropout; `grad` is the
    /// part whose weights enter the backward graph (`None`: no graph at all, the inference
    /// setting). The frozen prefix's output is detached.
    pub fn forward_with(&self, x: &Tensor, train: bool, grad: Option<Trainable>) -> Result<Tensor> {
        self.forward_from(0, x, train, grad)
    }

    /// The forward pass from stage `stage` on (see the module docs for the stage numbers and
    /// their inputs), as [`ResNet18::forward_with`] runs it. With frozen BatchNorm the frozen
    /// stages run as [`ResNet18::forward_prefix`] does, so `forward_from(s,
    /// &forward_prefix(x, s)?, ..)` gives `forward_with(x, ..)` bit for bit when `s` is the
    /// first trainable stage.
    pub fn forward_from(
        &self,
        stage: usize,
        x: &Tensor,
        train: bool,
        grad: Option<Trainable>,
    ) -> Result<Tensor> {
        check_stage_input(stage, x)?;
        let first = grad.map_or(usize::MAX, Trainable::first_stage);
        // The frozen stages (never the head) when BatchNorm is frozen.
        let frozen_until = if self.freeze_bn {
            grad.unwrap_or(self.trainable).first_stage().min(5)
        } else {
            0
        };
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
        let (mut x, stage) = if stage < frozen_until {
            (self.frozen_stages(x, stage, frozen_until)?, frozen_until)
        } else {
            (x.clone(), stage)
        };
        if stage == 0 {
            x = self.stem.forward_mode(&x, mode(0))?;
        }
        for (i, layer) in self.layers.iter().enumerate().skip(stage.max(1) - 1) {
            x = layer.forward_mode(&enter(i + 1, x), mode(i + 1))?;
        }
        let pooled = if stage < 5 { x.mean((2, 3))? } else { x };
        self.head.forward_mode(&enter(5, pooled), mode(5))
    }

    /// The output of the stages before `stage` (1..=5) in eval mode, without a graph: the
    /// input [`ResNet18::forward_from`] takes at `stage`. `x` is `[b, 3, h, w]`; the output is
    /// `[b, 64, h/4, w/4]` (1), `[b, 64, h/4, w/4]` (2), `[b, 128, h/8, w/8]` (3),
    /// `[b, 256, h/16, w/16]` (4) or `[b, 512]` pooled (5), sizes rounded up per stride.
    ///
    /// Each image runs on its own, so that its output does not depend on the rest of the
    /// batch: on small feature maps the CPU convolution puts several images into one gemm,
    /// whose blocking (and so its rounding) follows the gemm's size. This is what makes the
    /// prefix cacheable per image with results identical to computing it in every epoch.
    pub fn forward_prefix(&self, x: &Tensor, stage: usize) -> Result<Tensor> {
        if !(1..=5).contains(&stage) {
            return Err(Error::InvalidOption(format!(
                "the frozen prefix ends before stage 1..=5, got {stage}"
            )));
        }
        check_stage_input(0, x)?;
        self.frozen_stages(x, 0, stage)
    }

    /// Stages `from..to` (`to` <= 5) in eval mode without a graph, image by image (see
    /// [`ResNet18::forward_prefix`]); `to == 5` ends with the pooling.
    fn frozen_stages(&self, x: &Tensor, from: usize, to: usize) -> Result<Tensor> {
        let mode = Mode {
            train: false,
            grad: false,
        };
        let mut outs = Vec::with_capacity(x.dim(0)?);
        for i in 0..x.dim(0)? {
            let mut y = x.narrow(0, i, 1)?.detach();
            if from == 0 {
                y = self.stem.forward_mode(&y, mode)?;
            }
            for layer in &self.layers[from.max(1) - 1..to.min(5) - 1] {
                y = layer.forward_mode(&y, mode)?;
            }
            if to == 5 && from < 5 {
                y = y.mean((2, 3))?;
            }
            outs.push(y);
        }
        Ok(Tensor::cat(&outs, 0)?)
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
    /// `[b, 3, h, w]` -> `[b, K]`. Train: backward graph for [`ResNet18::trainable`] only.
    /// Eval: no backward graph.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let grad = train.then_some(self.trainable);
        to_candle(self.forward_with(x, train, grad))
    }
}

/// The channels a stage's input has (stage 5: the pooled features' width).
const STAGE_CHANNELS: [usize; 6] = [3, 64, 64, 128, 256, 512];

/// Checks that `x` is what stage `stage` takes: `[b, c, h, w]` with the stage's channels, or
/// `[b, 512]` for the head.
fn check_stage_input(stage: usize, x: &Tensor) -> Result<()> {
    let Some(&c) = STAGE_CHANNELS.get(stage) else {
        return Err(Error::InvalidOption(format!(
            "model stages are 0..=5, got {stage}"
        )));
    };
    let ok = match (stage, x.dims()) {
        (5, [_, w]) => *w == c,
        (0..=4, [_, ch, _, _]) => *ch == c,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let want = if stage == 5 {
        format!("[batch, {c}]")
    } else {
        format!("[batch, {c}, height, width]")
    };
    let what = if stage == 0 {
        "model input".to_string()
    } else {
        format!("input of model stage {stage}")
    };
    Err(Error::InvalidOption(format!(
        "{what} must be {want}, got {:?}",
        x.dims()
    )))
}

fn to_candle<T>(r: Result<T>) -> candle_core::Result<T> {
    r.map_err(|e| match e {
        Error::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use candle_core::backprop::GradStore;
    use candle_nn::VarMap;

    pub(super) fn tiny_model() -> (VarMap, ResNet18) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ResNet18::new(vb, 0.25, 1).unwrap();
        init_seeded(&varmap, 7).unwrap();
        (varmap, model)
    }

    pub(super) fn input(b: usize, size: usize) -> Tensor {
        let n = b * 3 * size * size;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
    }

    pub(super) fn grad_norm(grads: &GradStore, varmap: &VarMap, name: &str) -> Option<f32> {
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
    fn from_tensors_model_matches_and_builds_no_graph() {
        let (varmap, model) = tiny_model();
        let x = input(2, 64);
        let inference =
            ResNet18::from_tensors(snapshot(&varmap).unwrap(), &Device::Cpu, 0.25, 1).unwrap();
        let a = model.forward_t(&x, false).unwrap();
        let b = inference
            .forward_with(&x, false, Some(Trainable::All))
            .unwrap();
        assert!(!b.track_op());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let mut partial = snapshot(&varmap).unwrap();
        partial.remove("layer1.1.bn1.weight");
        let err = ResNet18::from_tensors(partial, &Device::Cpu, 0.0, 1).unwrap_err();
        assert!(err.to_string().contains("layer1.1.bn1.weight"));
    }
}

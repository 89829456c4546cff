//! Adam with PyTorch's semantics, named parameter groups and checkpointable state.
//!
//! Matches `torch.optim.Adam` (betas 0.9/0.999, eps 1e-8, no weight decay, bias correction,
//! per-parameter step counts; a parameter without a gradient is skipped, its step count
//! included). candle's `AdamW` has weight decay 0.01 by default and keeps its moments
//! private, so it can be neither matched nor checkpointed.
//!
//! Parameters are `Var`s of any shape; moments have the parameter's shape and dtype. On CPU
//! with f32 the whole update is one fused, threaded pass that writes the parameter in place
//! (tensors sharing its storage, e.g. detached views, see the new values; take
//! `Tensor::copy` for snapshots). Elsewhere it is a handful of candle tensor ops.
//!
//! State tensors ([`Adam::state_tensors`]): `optim.exp_avg.<param>` and
//! `optim.exp_avg_sq.<param>` (param's shape, f32), `optim.step.<param>` (`[1]` i64) for each
//! parameter that has taken a step, and `optim.lr.<group>` (`[1]` f64).
//!
//! [`LrSchedule`] gives each group's learning rate at every optimizer step of a run, as a
//! multiple of the group's own base rate: constant, linear warm-up then cosine decay, or
//! PyTorch's one-cycle policy.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A named group of parameters sharing a learning rate.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub name: String,
    pub lr: f64,
    /// (parameter name, variable); names must be unique across all groups.
    pub params: Vec<(String, Var)>,
}

#[derive(Debug)]
enum Moments {
    /// Host vectors, updated in place together with the parameter.
    Cpu { m: Vec<f32>, v: Vec<f32> },
    /// Device tensors, replaced every step.
    Tensors { m: Tensor, v: Tensor },
}

#[derive(Debug)]
struct ParamState {
    step: u64,
    moments: Moments,
}

/// Adam (not AdamW) with per-group learning rates.
#[derive(Debug)]
pub struct Adam {
    groups: Vec<ParamGroup>,
    state: HashMap<String, ParamState>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

fn uses_cpu_kernel(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && var.is_contiguous()
}

impl Adam {
    /// PyTorch's defaults.
    pub const BETA1: f64 = 0.9;
    pub const BETA2: f64 = 0.999;
    pub const EPS: f64 = 1e-8;

    /// Errors on duplicate group or parameter names and on negative or non-finite rates.
    pub fn new(groups: Vec<ParamGroup>) -> Result<Self> {
        let mut group_names = HashSet::new();
        let mut param_names = HashSet::new();
        for g in &groups {
            if !group_names.insert(g.name.as_str()) {
                return Err(Error::InvalidOption(format!(
                    "duplicate optimizer group `{}`",
                    g.name
                )));
            }
            check_lr(&g.name, g.lr)?;
            for (name, _) in &g.params {
                if !param_names.insert(name.as_str()) {
                    return Err(Error::InvalidOption(format!(
                        "parameter `{name}` is in more than one optimizer group"
                    )));
                }
            }
        }
        Ok(Self {
            groups,
            state: HashMap::new(),
            beta1: Self::BETA1,
            beta2: Self::BETA2,
            eps: Self::EPS,
        })
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        for group in &self.groups {
            for (name, var) in &group.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                if grad.dims() != var.dims() {
                    return Err(Error::TensorShape {
                        name: format!("gradient of {name}"),
                        expected: var.dims().to_vec(),
                        actual: grad.dims().to_vec(),
                    });
                }
                if !self.state.contains_key(name) {
                    self.state.insert(name.clone(), fresh_state(var)?);
                }
                let state = self.state.get_mut(name).expect("inserted above");
                state.step += 1;
                let t = state.step as i32;
                let bias1 = 1.0 - beta1.powi(t);
                let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                let step_size = group.lr / bias1;
                match &mut state.moments {
                    Moments::Cpu { m, v } => {
                        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
                        let op = FusedAdamCpu {
                            m: Mutex::new(m.as_mut_slice()),
                            v: Mutex::new(v.as_mut_slice()),
                            beta1: beta1 as f32,
                            beta2: beta2 as f32,
                            eps: eps as f32,
                            step_size: step_size as f32,
                            bias2_sqrt: bias2_sqrt as f32,
                        };
                        var.as_tensor().inplace_op2(&grad, &op)?;
                    }
                    Moments::Tensors { m, v } => {
                        let grad = grad.to_dtype(var.dtype())?;
                        *m = (m.clone() + ((&grad - &*m)? * (1.0 - beta1))?)?;
                        *v = ((&*v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
                        let denom = v.sqrt()?.affine(1.0 / bias2_sqrt, eps)?;
                        let update = (&*m / denom)?.affine(-step_size, 0.0)?;
                        var.set(&(var.as_tensor() + update)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the learning rate of group `group`.
    pub fn set_lr(&mut self, group: &str, lr: f64) -> Result<()> {
        check_lr(group, lr)?;
        let g = self
            .groups
            .iter_mut()
            .find(|g| g.name == group)
            .ok_or_else(|| Error::InvalidOption(format!("no optimizer group `{group}`")))?;
        g.lr = lr;
        Ok(())
    }

    /// (group name, learning rate) in group order.
    pub fn lrs(&self) -> Vec<(String, f64)> {
        self.groups.iter().map(|g| (g.name.clone(), g.lr)).collect()
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Copies of the optimizer's state, named as in the module docs, to save with a
    /// checkpoint.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for group in &self.groups {
            out.insert(
                format!("optim.lr.{}", group.name),
                Tensor::new(&[group.lr], &Device::Cpu)?,
            );
            for (name, var) in &group.params {
                let Some(state) = self.state.get(name) else {
                    continue;
                };
                let (m, v) = match &state.moments {
                    Moments::Cpu { m, v } => (
                        Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                        Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
                    ),
                    Moments::Tensors { m, v } => (m.copy()?, v.copy()?),
                };
                out.insert(format!("optim.exp_avg.{name}"), m);
                out.insert(format!("optim.exp_avg_sq.{name}"), v);
                out.insert(
                    format!("optim.step.{name}"),
                    Tensor::new(&[state.step as i64], &Device::Cpu)?,
                );
            }
        }
        Ok(out)
    }

    /// Restores state saved by [`Adam::state_tensors`] (keys not starting with `optim.` are
    /// ignored, so a whole checkpoint can be passed). Learning rates are restored too.
    /// Parameters without saved state start fresh. Errors, leaving the optimizer unchanged:
    /// state for a parameter or group this optimizer does not have, an incomplete or
    /// mis-shaped entry, a step count below 1.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let params: HashMap<&str, &Var> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v)))
            .collect();
        for key in tensors.keys().filter(|k| k.starts_with("optim.")) {
            let known = if let Some(group) = key.strip_prefix("optim.lr.") {
                self.groups.iter().any(|g| g.name == group)
            } else {
                ["optim.exp_avg.", "optim.exp_avg_sq.", "optim.step."]
                    .iter()
                    .filter_map(|p| key.strip_prefix(p))
                    .any(|name| params.contains_key(name))
            };
            if !known {
                return Err(Error::OptimizerState(format!(
                    "`{key}` belongs to no parameter or group of this optimizer (was the \
                     checkpoint made with other trainable layers?)"
                )));
            }
        }
        let mut lrs = Vec::new();
        for group in &self.groups {
            if let Some(t) = tensors.get(&format!("optim.lr.{}", group.name)) {
                let lr = scalar_f64(t, &format!("optim.lr.{}", group.name))?;
                check_lr(&group.name, lr)?;
                lrs.push(lr);
            } else {
                lrs.push(group.lr);
            }
        }
        let mut state = HashMap::new();
        for (&name, &var) in &params {
            let keys = [
                format!("optim.exp_avg.{name}"),
                format!("optim.exp_avg_sq.{name}"),
                format!("optim.step.{name}"),
            ];
            let found: Vec<Option<&Tensor>> = keys.iter().map(|k| tensors.get(k)).collect();
            if found.iter().all(Option::is_none) {
                continue;
            }
            let get = |i: usize| {
                found[i].ok_or_else(|| Error::MissingTensor {
                    name: keys[i].clone(),
                })
            };
            let (m, v, step) = (get(0)?, get(1)?, get(2)?);
            for (key, t) in keys.iter().zip([m, v]) {
                if t.dims() != var.dims() {
                    return Err(Error::TensorShape {
                        name: key.clone(),
                        expected: var.dims().to_vec(),
                        actual: t.dims().to_vec(),
                    });
                }
            }
            let step = scalar_f64(step, &keys[2])?;
            if step < 1.0 || step.fract() != 0.0 {
                return Err(Error::OptimizerState(format!(
                    "`{}` is {step}, expected a whole number >= 1",
                    keys[2]
                )));
            }
            let moments = if uses_cpu_kernel(var) {
                Moments::Cpu {
                    m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                }
            } else {
                // Copies: the optimizer replaces these, but never shares caller storage.
                let to_var = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.to_device(var.device())?.to_dtype(var.dtype())?.copy()?)
                };
                Moments::Tensors {
                    m: to_var(m)?,
                    v: to_var(v)?,
                }
            };
            state.insert(
                name.to_string(),
                ParamState {
                    step: step as u64,
                    moments,
                },
            );
        }
        for (group, lr) in self.groups.iter_mut().zip(lrs) {
            group.lr = lr;
        }
        self.state = state;
        Ok(())
    }
}

/// How every group's learning rate moves over a run (`--schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Each group keeps its base rate (the notebook).
    #[default]
    Constant,
    /// Linear warm-up over the warm-up epochs, then cosine decay towards 0.
    Cosine,
    /// PyTorch's `OneCycleLR` with the group's base rate as `max_lr`.
    OneCycle,
}

option_names!(Schedule, "schedule", {
    Schedule::Constant => "constant",
    Schedule::Cosine => "cosine",
    Schedule::OneCycle => "onecycle",
});

/// The learning rate of every optimizer step of a run, per step (not per epoch): step `k`
/// (0-based, counted over the whole run, `epoch * steps_per_epoch + batch`) uses
/// [`LrSchedule::lr`]`(base, k)`, where `base` is the group's rate (`--lr-head`, ...).
/// With `T = epochs * steps_per_epoch` steps and `w = warmup_epochs * steps_per_epoch`:
///
/// - `Constant`: `base`.
/// - `Cosine`: `base * (k + 1) / w` for `k < w`, then `base * (1 + cos(pi * (k - w) /
///   (T - w))) / 2`: PyTorch's `SequentialLR` of `LinearLR(start_factor=1/w,
///   total_iters=w-1)` and `CosineAnnealingLR(T_max=T-w, eta_min=0)` with milestone `w`, so
///   the first step already trains and the last warm-up step reaches `base`.
/// - `OneCycle`: PyTorch's `OneCycleLR(max_lr=base, total_steps=T, pct_start,
///   anneal_strategy="cos", div_factor=25, final_div_factor=1e4, three_phase=False)` with
///   `pct_start = warmup_epochs / epochs`, or 0.3 without warm-up epochs. Adam's beta1 is
///   not cycled (`cycle_momentum=False`): lesion's Adam keeps PyTorch's fixed betas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    kind: Schedule,
    total_steps: usize,
    warmup_steps: usize,
    pct_start: f64,
}

impl LrSchedule {
    /// `OneCycleLR`'s `pct_start` when no warm-up epochs are given.
    pub const ONE_CYCLE_PCT_START: f64 = 0.3;
    /// `OneCycleLR`'s `div_factor`: the first step's rate is `base / 25`.
    pub const ONE_CYCLE_DIV: f64 = 25.0;
    /// `OneCycleLR`'s `final_div_factor`: the last rate approaches `base / 25 / 1e4`.
    pub const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

    /// The schedule of a run of `epochs` epochs of `steps_per_epoch` steps. Errors unless
    /// both are at least 1 and a warm-up, where given, is shorter than the run.
    pub fn new(
        kind: Schedule,
        epochs: usize,
        steps_per_epoch: usize,
        warmup_epochs: Option<usize>,
    ) -> Result<Self> {
        if epochs == 0 || steps_per_epoch == 0 {
            return Err(Error::InvalidOption(format!(
                "a learning-rate schedule needs at least one step (epochs {epochs}, \
                 steps per epoch {steps_per_epoch})"
            )));
        }
        if let Some(w) = warmup_epochs {
            if kind != Schedule::Constant && w >= epochs {
                return Err(Error::InvalidOption(format!(
                    "--warmup-epochs {w} must be less than --epochs {epochs}"
                )));
            }
        }
        let w = warmup_epochs.unwrap_or(0);
        Ok(Self {
            kind,
            total_steps: epochs * steps_per_epoch,
            warmup_steps: w * steps_per_epoch,
            pct_start: match warmup_epochs {
                Some(w) => w as f64 / epochs as f64,
                None => Self::ONE_CYCLE_PCT_START,
            },
        })
    }

    pub fn kind(&self) -> Schedule {
        self.kind
    }

    /// Steps in the whole run.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// The rate of a group whose base rate is `base` at step `step` (0-based); steps past
    /// the end keep the last step's rate.
    pub fn lr(&self, base: f64, step: usize) -> f64 {
        let k = step.min(self.total_steps - 1);
        match self.kind {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let (w, t) = (self.warmup_steps, self.total_steps);
                if k < w {
                    base * (k + 1) as f64 / w as f64
                } else {
                    let progress = std::f64::consts::PI * (k - w) as f64 / (t - w) as f64;
                    base * (1.0 + progress.cos()) / 2.0
                }
            }
            Schedule::OneCycle => {
                // Phase boundaries and arithmetic as in OneCycleLR.get_lr, in f64.
                let initial = base / Self::ONE_CYCLE_DIV;
                let min = initial / Self::ONE_CYCLE_FINAL_DIV;
                let end_warm = self.pct_start * self.total_steps as f64 - 1.0;
                let end = (self.total_steps - 1) as f64;
                let step = k as f64;
                let (start_step, end_step, from, to) = if step <= end_warm {
                    (0.0, end_warm, initial, base)
                } else {
                    (end_warm, end, base, min)
                };
                // A one-step phase (PyTorch divides by zero there) ends at its target.
                let pct = if end_step > start_step {
                    (step - start_step) / (end_step - start_step)
                } else {
                    1.0
                };
                let cos_out = (std::f64::consts::PI * pct).cos() + 1.0;
                to + (from - to) / 2.0 * cos_out
            }
        }
    }
}

fn check_lr(group: &str, lr: f64) -> Result<()> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidOption(format!(
            "learning rate of group `{group}` must be finite and >= 0, got {lr}"
        )))
    }
}

fn scalar_f64(t: &Tensor, name: &str) -> Result<f64> {
    if t.elem_count() != 1 {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: vec![1],
            actual: t.dims().to_vec(),
        });
    }
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0])
}

fn fresh_state(var: &Var) -> Result<ParamState> {
    let moments = if uses_cpu_kernel(var) {
        let n = var.elem_count();
        Moments::Cpu {
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    } else {
        Moments::Tensors {
            m: var.zeros_like()?,
            v: var.zeros_like()?,
        }
    };
    Ok(ParamState { step: 0, moments })
}

/// The whole Adam update for one f32 parameter, in place: reads the gradient, updates the
/// moments and the parameter in one pass. Arithmetic mirrors PyTorch's single-tensor Adam
/// (`lerp` for the first moment, `addcmul` for the second, `addcdiv` for the parameter).
struct FusedAdamCpu<'a> {
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bias2_sqrt: f32,
}

const CHUNK: usize = 1 << 14;

impl InplaceOp2 for FusedAdamCpu<'_> {
    fn name(&self) -> &'static str {
        "fused_adam"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("fused_adam: expected f32 parameter and gradient");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused_adam: parameter and gradient must be contiguous");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.m.lock().unwrap();
        let mut v = self.v.lock().unwrap();
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!("fused_adam: length mismatch");
        }
        let (b1, b2, eps, step_size, bias2_sqrt) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.step_size,
            self.bias2_sqrt,
        );
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.len() {
                    let gi = g[i];
                    let mi = m[i] + (1.0 - b1) * (gi - m[i]);
                    let vi = v[i] * b2 + (1.0 - b2) * (gi * gi);
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() / bias2_sqrt + eps;
                    p[i] -= step_size * (mi / denom);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32]) -> Var {
        Var::from_slice(values, values.len(), &Device::Cpu).unwrap()
    }

    /// Gradients of sum((p - target)^2) * scale.
    fn quad_grads(p: &Var, target: &Tensor) -> GradStore {
        let loss = (p.as_tensor() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        loss.backward().unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn first_step_moves_by_lr_times_sign() {
        let p = var(&[1.0, -2.0, 0.5]);
        let q = var(&[3.0]);
        let mut adam = Adam::new(vec![
            ParamGroup {
                name: "a".into(),
                lr: 0.1,
                params: vec![("p".into(), p.clone())],
            },
            ParamGroup {
                name: "b".into(),
                lr: 0.01,
                params: vec![("q".into(), q.clone())],
            },
        ])
        .unwrap();
        let target = Tensor::new(&[0f32, 0.0, 0.0], &Device::Cpu).unwrap();
        // Only p has a gradient: q must be left alone and get no state.
        adam.step(&quad_grads(&p, &target)).unwrap();
        let got = values(&p);
        for (g, w) in got.iter().zip([0.9f32, -1.9, 0.4]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        assert_eq!(values(&q), [3.0]);
        let state = adam.state_tensors().unwrap();
        assert!(state.contains_key("optim.exp_avg.p"));
        assert!(!state.contains_key("optim.exp_avg.q"));
        assert_eq!(
            state["optim.step.p"].to_vec1::<i64>().unwrap(),
            [1],
            "per-parameter step"
        );
    }

    #[test]
    fn quadratic_converges() {
        let p = var(&[5.0, -3.0, 0.25, 10.0]);
        let target = Tensor::new(&[1f32, 2.0, -1.0, 0.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![ParamGroup {
            name: "all".into(),
            lr: 0.05,
            params: vec![("p".into(), p.clone())],
        }])
        .unwrap();
        for i in 0..2000 {
            if i == 1500 {
                adam.set_lr("all", 0.005).unwrap();
            }
            adam.step(&quad_grads(&p, &target)).unwrap();
        }
        for (g, w) in values(&p).iter().zip([1f32, 2.0, -1.0, 0.0]) {
            assert!((g - w).abs() < 1e-2, "{g} vs {w}");
        }
        assert_eq!(adam.lrs(), [("all".to_string(), 0.005)]);
    }

    #[test]
    fn fused_cpu_update_matches_tensor_ops() {
        let init: Vec<f32> = (0..50_000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let target_v: Vec<f32> = (0..50_000)
            .map(|i| ((i * 13 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let target = Tensor::from_vec(target_v, 50_000, &Device::Cpu).unwrap();
        let fused = var(&init);
        let plain = var(&init);
        let group = |v: &Var| ParamGroup {
            name: "g".into(),
            lr: 1e-2,
            params: vec![("w".into(), v.clone())],
        };
        let mut a = Adam::new(vec![group(&fused)]).unwrap();
        let mut b = Adam::new(vec![group(&plain)]).unwrap();
        // Force the tensor-op path for `b`.
        b.state.insert(
            "w".into(),
            ParamState {
                step: 0,
                moments: Moments::Tensors {
                    m: plain.zeros_like().unwrap(),
                    v: plain.zeros_like().unwrap(),
                },
            },
        );
        for _ in 0..5 {
            a.step(&quad_grads(&fused, &target)).unwrap();
            b.step(&quad_grads(&plain, &target)).unwrap();
        }
        let d = (fused.as_tensor() - plain.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "max difference {d}");
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let init = [0.3f32, -1.2, 4.0, 0.0, 2.5];
        let target = Tensor::new(&[1f32, 1.0, -1.0, 0.5, 0.0], &Device::Cpu).unwrap();
        let make = |p: &Var| {
            Adam::new(vec![ParamGroup {
                name: "g".into(),
                lr: 0.03,
                params: vec![("w".into(), p.clone())],
            }])
            .unwrap()
        };
        let p = var(&init);
        let mut adam = make(&p);
        for _ in 0..3 {
            adam.step(&quad_grads(&p, &target)).unwrap();
        }
        adam.set_lr("g", 0.02).unwrap();
        let saved = adam.state_tensors().unwrap();
        let resumed_p = var(&values(&p));
        let mut resumed = make(&resumed_p);
        resumed.load_state(&saved).unwrap();
        assert_eq!(resumed.lrs(), [("g".to_string(), 0.02)]);
        for _ in 0..4 {
            adam.step(&quad_grads(&p, &target)).unwrap();
            resumed.step(&quad_grads(&resumed_p, &target)).unwrap();
            let (a, b) = (values(&p), values(&resumed_p));
            assert_eq!(
                a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// Every group's rate at every step, against PyTorch's schedulers stepped once per
    /// batch (`scripts/fixtures/make_schedule_fixture.py`).
    #[test]
    fn schedules_match_pytorch() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/schedule_lrs.json")).unwrap();
        let groups = fixture["groups"].as_object().unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for case in cases {
            let kind: Schedule = case["schedule"].as_str().unwrap().parse().unwrap();
            let epochs = case["epochs"].as_u64().unwrap() as usize;
            let spe = case["steps_per_epoch"].as_u64().unwrap() as usize;
            let warmup = case["warmup_epochs"].as_u64().map(|w| w as usize);
            let schedule = LrSchedule::new(kind, epochs, spe, warmup).unwrap();
            assert_eq!(schedule.total_steps(), epochs * spe);
            for (group, base) in groups {
                let base = base.as_f64().unwrap();
                let want = case["lrs"][group].as_array().unwrap();
                assert_eq!(want.len(), epochs * spe);
                for (k, want) in want.iter().enumerate() {
                    let (want, got) = (want.as_f64().unwrap(), schedule.lr(base, k));
                    assert!(
                        (got - want).abs() <= 1e-12,
                        "{kind} epochs {epochs} x {spe} warm-up {warmup:?}, {group} step {k}: \
                         {got} vs PyTorch {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_schedule_is_the_base_rate_bit_for_bit() {
        let s = LrSchedule::new(Schedule::Constant, 3, 4, None).unwrap();
        for k in 0..20 {
            assert_eq!(s.lr(1e-3, k).to_bits(), 1e-3f64.to_bits());
        }
    }

    #[test]
    fn schedule_edges() {
        // Steps past the end keep the last rate; a warm-up as long as the run is refused.
        let s = LrSchedule::new(Schedule::Cosine, 2, 3, Some(1)).unwrap();
        assert_eq!(s.lr(1.0, 5), s.lr(1.0, 99));
        assert_eq!(
            s.lr(1.0, 2),
            1.0,
            "the last warm-up step reaches the base rate"
        );
        assert_eq!(s.lr(1.0, 0), 1.0 / 3.0);
        for kind in [Schedule::Cosine, Schedule::OneCycle] {
            let err = LrSchedule::new(kind, 2, 3, Some(2))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--warmup-epochs 2") && err.contains("--epochs 2"),
                "{err}"
            );
        }
        assert!(LrSchedule::new(Schedule::Cosine, 2, 0, None).is_err());
        // One warm-up step: PyTorch would divide by zero; the step trains at the peak.
        let one = LrSchedule::new(Schedule::OneCycle, 4, 1, Some(1)).unwrap();
        assert_eq!(one.lr(0.5, 0), 0.5);
        assert!(one.lr(0.5, 3) < 0.5 / 25.0);
        for name in ["constant", "cosine", "onecycle"] {
            assert_eq!(name.parse::<Schedule>().unwrap().to_string(), name);
        }
        let err = "linear".parse::<Schedule>().unwrap_err().to_string();
        assert!(
            err.contains("`linear`") && err.contains("onecycle"),
            "{err}"
        );
    }

    #[test]
    fn load_state_rejects_bad_entries() {
        let p = var(&[1.0, 2.0]);
        let target = Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap();
        let mut adam = Adam::new(vec![ParamGroup {
            name: "g".into(),
            lr: 0.1,
            params: vec![("w".into(), p.clone())],
        }])
        .unwrap();
        adam.step(&quad_grads(&p, &target)).unwrap();
        let good = adam.state_tensors().unwrap();

        let mut missing = good.clone();
        missing.remove("optim.exp_avg_sq.w");
        let err = adam.load_state(&missing).unwrap_err().to_string();
        assert!(err.contains("optim.exp_avg_sq.w"), "{err}");

        let mut shaped = good.clone();
        shaped.insert(
            "optim.exp_avg.w".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = adam.load_state(&shaped).unwrap_err().to_string();
        assert!(
            err.contains("optim.exp_avg.w") && err.contains("[3]"),
            "{err}"
        );

        let mut unknown = good.clone();
        unknown.insert(
            "optim.step.other".into(),
            Tensor::new(&[1i64], &Device::Cpu).unwrap(),
        );
        let err = adam.load_state(&unknown).unwrap_err().to_string();
        assert!(err.contains("optim.step.other"), "{err}");

        // The failed loads left the good state in place.
        assert_eq!(
            adam.state_tensors().unwrap()["optim.step.w"]
                .to_vec1::<i64>()
                .unwrap(),
            [1]
        );
        adam.load_state(&good).unwrap();
    }
}

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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

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

//! ResNet-18 + head, BCE and Adam against PyTorch: `shared/fixtures/resnet18_parity_*`
//! (see the fixtures' README and `make_fixtures.py`, `parity()`), with the README's
//! tolerances. Every check prints its measured error.
//!
//! Gradients and Adam steps are also computed in f64. Why: a gradient passes through every
//! ReLU whose input is positive and every max-pool window's winner; where an activation lies
//! within f32 rounding (~1e-6) of a ReLU kink or a max-pool near-tie, two correct f32
//! implementations can take different branches. On this fixture our f32 forward puts 3
//! pre-ReLU values of layer2's output and 1 of `layer4.0.bn1` on the other side of zero
//! from exact arithmetic (e.g. exact 5.5e-8, ours -6.5e-6), although its overall error is at
//! PyTorch's level (train logits 3.9e-6 vs PyTorch's 1.8e-6, relative to exact). That moves
//! `layer2.1.conv2.weight`'s gradient by 1.7e-2 of its largest element; PyTorch's f32 in
//! turn differs from exact arithmetic by 2.0e-3 on `conv1.weight`. So the README's
//! elementwise tolerances are asserted on the f64 run, which checks the mathematics, and the
//! f32 run (the production path, CPU kernels included) is held to bounds that isolated
//! branch flips stay within but a wrong formula does not. See each test for the numbers.
//!
//! Runs on CPU; with `LESION_PARITY_DEVICE=cuda` (and a build with the `cuda` feature) on
//! the first CUDA device.

mod common;

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use lesion::model::{self, ResNet18, Trainable};
use lesion::ops::bce_with_logits;
use lesion::optim::{Adam, ParamGroup};

/// The README's tolerances.
const LOGIT_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-3;
const PARAM_TOL: f64 = 1e-5;
const GRAD_MIN: f64 = 1e-6;
/// The notebook's learning rates: head, and layer4/layer3.
const HEAD_LR: f64 = 1e-2;
const BACKBONE_LR: f64 = 1e-3;
/// How far apart, in units of lr, two Adam runs (betas 0.9/0.999) can put a weight after two
/// steps whatever their gradients: the bias-corrected update is exactly lr * sign(g) at step
/// 1 and at most 1.0014 * lr at step 2 (the maximum of |m_hat| / sqrt(v_hat) over g1/g2), so
/// 2 * (1 + 1.0014). Reaching it takes opposite gradients at both steps.
const ADAM_TWO_STEP_SPREAD: f64 = 4.003;

/// For f32 gradients: bounds that isolated kink/tie flips stay within (measured worst:
/// L2 3.2e-3 on `conv1.weight`, elementwise 1.7e-2 on `layer2.1.conv2.weight`), while a
/// wrong gradient formula misses them by orders of magnitude.
const F32_GRAD_L2_TOL: f64 = 1e-2;
const F32_GRAD_MAX_TOL: f64 = 5e-2;
/// PyTorch's own f32 `conv1.weight` gradient is 2.0e-3 (elementwise, relative to the
/// largest) from exact arithmetic, through the 800k max-pool windows after it.
const CONV1_GRAD_TOL: f64 = 5e-3;

const GRAD_PARAMS: [&str; 7] = [
    "fc.6.weight",
    "fc.0.bias",
    "layer4.1.conv2.weight",
    "layer4.0.downsample.1.weight",
    "layer3.0.conv1.weight",
    "layer2.1.conv2.weight",
    "conv1.weight",
];

const TRACKED: [&str; 6] = [
    "fc.6.weight",
    "fc.3.bias",
    "layer4.0.conv1.weight",
    "layer3.1.bn1.bias",
    "layer2.0.conv1.weight",
    "conv1.weight",
];

/// The CPU, or the first CUDA device with `LESION_PARITY_DEVICE=cuda`.
fn parity_device() -> Device {
    match std::env::var("LESION_PARITY_DEVICE").as_deref() {
        // Through `--device`'s path, so the test sees the binaries' f32 policy on CUDA.
        Ok("cuda") => lesion::device::parse_device("cuda").expect("LESION_PARITY_DEVICE=cuda"),
        _ => Device::Cpu,
    }
}

struct Fixture {
    weights: HashMap<String, Tensor>,
    expect: HashMap<String, Tensor>,
    device: Device,
}

impl Fixture {
    fn load() -> Self {
        let device = parity_device();
        let load = |name| {
            candle_core::safetensors::load(common::fixture(name), &device)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        Self {
            weights: load("resnet18_parity_weights.safetensors"),
            expect: load("resnet18_parity_expected.safetensors"),
            device,
        }
    }

    fn expect(&self, key: &str) -> &Tensor {
        self.expect
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
    }

    /// A fresh model of `dtype` (in its own VarMap) holding the fixture's weights.
    fn model(&self, dtype: DType, dropout: f32) -> (VarMap, ResNet18) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &self.device);
        let model = ResNet18::new(vb, dropout, 1).unwrap();
        let report = model::load_state_dict(&varmap, self.weights.clone(), true).unwrap();
        assert!(report.head_kept.is_empty(), "{report:?}");
        assert!(report.unknown.is_empty(), "{report:?}");
        assert_eq!(report.loaded.len(), model::param_specs().len());
        (varmap, model)
    }

    fn x(&self, dtype: DType) -> Tensor {
        self.expect("input.x").to_dtype(dtype).unwrap()
    }

    fn y(&self) -> &Tensor {
        self.expect("input.y")
    }
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

fn f64s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    f64s(t)
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn norm(t: &Tensor) -> f64 {
    f64s(t)
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        .sqrt()
}

/// Largest |got - want| divided by the largest |want| (the README's measure).
fn rel_to_max(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    max_abs(&(f64s(got) - f64s(want)).unwrap()) / max_abs(want)
}

/// ||got - want|| / ||want||.
fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    norm(&(f64s(got) - f64s(want)).unwrap()) / norm(want)
}

fn check_rel(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    let err = rel_to_max(got, want);
    println!("{what}: max error relative to max |expected| = {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{what}: {err:.3e} > {tol:.0e}");
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn eval_logits_match_pytorch() {
    let f = Fixture::load();
    let (_, model) = f.model(DType::F32, 0.25);
    let logits = model.forward_t(&f.x(DType::F32), false).unwrap();
    check_rel(
        "eval logits",
        &logits,
        f.expect("expect.eval_logits"),
        LOGIT_TOL,
    );
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn train_logits_running_stats_and_loss_match_pytorch() {
    let f = Fixture::load();
    let (varmap, mut model) = f.model(DType::F32, 0.0);
    model.set_trainable(Trainable::All);
    let logits = model.forward_t(&f.x(DType::F32), true).unwrap();
    check_rel(
        "train logits (dropout 0)",
        &logits,
        f.expect("expect.train_logits"),
        LOGIT_TOL,
    );
    for bn in ["bn1", "layer1.0.bn1", "layer4.1.bn2"] {
        for stat in ["running_mean", "running_var"] {
            let name = format!("{bn}.{stat}");
            let want = f.expect(&format!("expect.after_forward.{name}"));
            check_rel(
                &format!("{name} after one train forward"),
                &var(&varmap, &name),
                want,
                LOGIT_TOL,
            );
        }
    }
    let loss = bce_with_logits(&logits, f.y()).unwrap();
    check_rel(
        "loss",
        &loss.reshape(1).unwrap(),
        f.expect("expect.loss"),
        LOGIT_TOL,
    );
}

/// Gradients of the train-mode loss with every layer trainable, as the fixture's were.
fn gradients(f: &Fixture, dtype: DType) -> (VarMap, GradStore) {
    let (varmap, mut model) = f.model(dtype, 0.0);
    model.set_trainable(Trainable::All);
    let logits = model.forward_t(&f.x(dtype), true).unwrap();
    let grads = bce_with_logits(&logits, f.y()).unwrap().backward().unwrap();
    (varmap, grads)
}

fn grad_of(varmap: &VarMap, grads: &GradStore, name: &str) -> Tensor {
    grads
        .get(&var(varmap, name))
        .unwrap_or_else(|| panic!("no gradient for {name}"))
        .clone()
}

/// The fixture's gradients were taken with every layer requiring grad, so this runs with
/// `Trainable::All` (the frozen recipe gives the same gradients for the layers it trains).
#[test]
#[ignore = "needs ../shared fixtures"]
fn gradients_match_pytorch() {
    let f = Fixture::load();
    let (vm64, g64) = gradients(&f, DType::F64);
    for name in GRAD_PARAMS {
        let want = f.expect(&format!("expect.grad.{name}"));
        let tol = if name == "conv1.weight" {
            CONV1_GRAD_TOL
        } else {
            GRAD_TOL
        };
        check_rel(
            &format!("f64 grad {name}"),
            &grad_of(&vm64, &g64, name),
            want,
            tol,
        );
    }
    let (vm32, g32) = gradients(&f, DType::F32);
    for name in GRAD_PARAMS {
        let want = f.expect(&format!("expect.grad.{name}"));
        let got = grad_of(&vm32, &g32, name);
        let (max_err, l2) = (rel_to_max(&got, want), rel_l2(&got, want));
        let own = rel_to_max(&got, &grad_of(&vm64, &g64, name));
        println!(
            "f32 grad {name}: max error relative to max |expected| = {max_err:.3e} (README \
             tolerance {GRAD_TOL:.0e}, asserted {F32_GRAD_MAX_TOL:.0e}), relative L2 = {l2:.3e} \
             (tolerance {F32_GRAD_L2_TOL:.0e}); vs our f64: {own:.3e}"
        );
        assert!(
            max_err <= F32_GRAD_MAX_TOL,
            "f32 grad {name}: {max_err:.3e}"
        );
        assert!(l2 <= F32_GRAD_L2_TOL, "f32 grad {name}: L2 {l2:.3e}");
    }
}

/// Two Adam steps with the notebook's groups (fc 1e-2, layer4 1e-3, layer3 1e-3; stem to
/// layer2 frozen, so they must not move at all).
///
/// Adam's first step moves each weight by about lr * sign(grad), so where a gradient is tiny
/// its sign, and hence the result, is rounding noise: parameters are compared (1e-5
/// absolute, the README's rule) only where the exact (f64) first-step gradient has
/// |grad| > 1e-6 (the fixture has PyTorch's gradient for few of the tracked tensors; our f64
/// gradients match PyTorch's to ~3e-6 of their maximum).
///
/// That rule holds everywhere for the f64 run's first step, and for both steps of the head.
/// The second step of the backbone tensors is chaotic: a weight whose first gradient has a
/// different sign in two runs (a ReLU kink flip, see the module docs) lands 2 * lr away,
/// which changes the second gradient of everything around it. Our own f32 and f64 runs
/// differ there by up to 2.4e-3 with 38% of `layer4.0.conv1.weight` beyond 1e-5, and our f64
/// run against PyTorch by 1.5e-3 with 95% within 1e-5. Those tensors are therefore held to
/// the fraction of elements within 1e-5, the median error and an lr-sized bound.
#[test]
#[ignore = "needs ../shared fixtures"]
fn adam_steps_match_pytorch() {
    let f = Fixture::load();
    let exact = adam_run(&f, DType::F64);
    let masks: HashMap<&str, Tensor> = exact
        .grads
        .iter()
        .map(|(&n, g)| (n, g.abs().unwrap().gt(GRAD_MIN).unwrap()))
        .collect();
    let strict = |_: &str| Bound::Strict;
    let chaotic = |min_within: f64, max_median: f64| {
        move |name: &str| {
            if name.starts_with("fc.") {
                Bound::Strict
            } else {
                Bound::Loose {
                    min_within,
                    max_median,
                }
            }
        }
    };
    check_adam(&f, &exact, &exact, &masks, "step1", &exact.step1, strict);
    check_adam(
        &f,
        &exact,
        &exact,
        &masks,
        "step2",
        &exact.step2,
        chaotic(0.9, 2e-6),
    );
    let run = adam_run(&f, DType::F32);
    // f32 step 1: one kink flip upstream of layer4.0.conv1 (module docs) changes that
    // tensor's gradient for a few dozen elements (measured: 99.999% within 1e-5).
    check_adam(
        &f,
        &run,
        &exact,
        &masks,
        "step1",
        &run.step1,
        chaotic(0.999, 1e-6),
    );
    // f32 step 2: the 538 first-step sign flips of `layer4.0.conv1.weight` (see above) put
    // those weights 2 * lr away and change the second gradient around them (measured: 54%
    // within 1e-5, median 8.2e-6, max 3.6e-3); a wrong update would move the median to lr.
    check_adam(
        &f,
        &run,
        &exact,
        &masks,
        "step2",
        &run.step2,
        chaotic(0.4, 5e-5),
    );
}

/// How a trained tensor's parameters are compared with the fixture, over the mask.
#[derive(Clone, Copy)]
enum Bound {
    /// Every element within 1e-5.
    Strict,
    /// At least `min_within` of the elements within 1e-5, median error at most `max_median`,
    /// and no element further than [`ADAM_TWO_STEP_SPREAD`] * lr.
    Loose { min_within: f64, max_median: f64 },
}

struct AdamRun {
    dtype: DType,
    /// First-step gradients of the trained tracked tensors.
    grads: HashMap<&'static str, Tensor>,
    initial: HashMap<&'static str, Tensor>,
    step1: HashMap<&'static str, Tensor>,
    step2: HashMap<&'static str, Tensor>,
}

fn adam_run(f: &Fixture, dtype: DType) -> AdamRun {
    let (varmap, mut model) = f.model(dtype, 0.0);
    model.set_trainable(Trainable::Layer3);
    let lr = |group: &str| match group {
        "head" => HEAD_LR,
        "layer4" | "layer3" => BACKBONE_LR,
        other => panic!("unexpected group {other}"),
    };
    let groups = model::trainable_vars(&varmap, Trainable::Layer3)
        .unwrap()
        .into_iter()
        .map(|(name, params)| ParamGroup {
            name: name.to_string(),
            lr: lr(name),
            params,
        })
        .collect();
    let mut adam = Adam::new(groups).unwrap();
    let snapshot = || -> HashMap<&'static str, Tensor> {
        TRACKED
            .iter()
            .map(|&n| (n, var(&varmap, n).copy().unwrap()))
            .collect()
    };
    let initial = snapshot();
    let x = f.x(dtype);
    let tag = format!("{dtype:?}").to_lowercase();

    let logits = model.forward_t(&x, true).unwrap();
    let loss = bce_with_logits(&logits, f.y()).unwrap();
    check_rel(
        &format!("{tag} step1 loss"),
        &loss.reshape(1).unwrap(),
        f.expect("expect.loss"),
        LOGIT_TOL,
    );
    let grads = loss.backward().unwrap();
    let first_grads: HashMap<&'static str, Tensor> = TRACKED
        .iter()
        .filter_map(|&n| grads.get(&var(&varmap, n)).map(|g| (n, g.clone())))
        .collect();
    for n in ["layer2.0.conv1.weight", "conv1.weight"] {
        assert!(!first_grads.contains_key(n), "frozen {n} got a gradient");
    }
    adam.step(&grads).unwrap();
    drop(grads);
    let step1 = snapshot();

    let logits = model.forward_t(&x, true).unwrap();
    let loss = bce_with_logits(&logits, f.y()).unwrap();
    check_rel(
        &format!("{tag} step2 loss_before"),
        &loss.reshape(1).unwrap(),
        f.expect("expect.step2.loss_before"),
        LOGIT_TOL,
    );
    let grads = loss.backward().unwrap();
    adam.step(&grads).unwrap();
    AdamRun {
        dtype,
        grads: first_grads,
        initial,
        step1,
        step2: snapshot(),
    }
}

fn check_adam(
    f: &Fixture,
    run: &AdamRun,
    exact: &AdamRun,
    masks: &HashMap<&str, Tensor>,
    step: &str,
    params: &HashMap<&'static str, Tensor>,
    bound: impl Fn(&str) -> Bound,
) {
    let tag = format!("{:?}", run.dtype).to_lowercase();
    for name in TRACKED {
        let got = f64s(&params[name]);
        let want = f64s(f.expect(&format!("expect.{step}.{name}")));
        let diff = (&got - &want).unwrap().abs().unwrap();
        let moved = max_abs(&(&got - f64s(&run.initial[name])).unwrap());
        let Some(mask) = masks.get(name) else {
            let err = max_abs(&diff);
            println!(
                "{tag} {step} {name} (frozen): max |param - expected| = {err:.3e}, moved {moved:.1e}"
            );
            assert_eq!(moved, 0.0, "{tag} {step} frozen {name} moved");
            assert!(err <= PARAM_TOL, "{tag} {step} {name}: {err:.3e}");
            continue;
        };
        assert!(moved > 0.0, "{tag} {step} {name} did not move");
        let selected: Vec<f64> = {
            let d = diff.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let m = mask.flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let mut v: Vec<f64> = d
                .into_iter()
                .zip(m)
                .filter(|p| p.1 != 0)
                .map(|p| p.0)
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let err = selected.last().copied().unwrap_or(0.0);
        let median = selected.get(selected.len() / 2).copied().unwrap_or(0.0);
        let within =
            selected.iter().filter(|&&e| e <= PARAM_TOL).count() as f64 / selected.len() as f64;
        let sign_flips = count(
            &(f64s(&run.grads[name]) * f64s(&exact.grads[name]))
                .unwrap()
                .lt(0.0)
                .unwrap(),
        );
        println!(
            "{tag} {step} {name}: max |param - expected| = {err:.3e}, median {median:.3e}, \
             {:.4}% within 1e-5, over {} of {} elements with |exact grad| > 1e-6 \
             ({sign_flips} first-step gradient signs differ from exact)",
            100.0 * within,
            selected.len(),
            mask.elem_count()
        );
        match bound(name) {
            Bound::Strict => assert!(err <= PARAM_TOL, "{tag} {step} {name}: {err:.3e}"),
            Bound::Loose {
                min_within,
                max_median,
            } => {
                assert!(within >= min_within, "{tag} {step} {name}: {within} within");
                assert!(
                    median <= max_median,
                    "{tag} {step} {name}: median {median:.3e}"
                );
                assert!(
                    err <= ADAM_TWO_STEP_SPREAD * BACKBONE_LR,
                    "{tag} {step} {name}: {err:.3e}"
                );
            }
        }
    }
}

fn count(mask: &Tensor) -> f64 {
    mask.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The production convolution (`lesion::kernels::conv2d`: the CPU kernels, or cuDNN's three
/// passes on CUDA) in f32 on the parity device, against candle's CPU convolution and its
/// backward in f64, on every kind of convolution ResNet-18 has (7x7 stride 2, 3x3 stride 1
/// and 2, 1x1 stride 2) plus odd sizes and a batch of one. Needs no fixture, so it also runs
/// in the fast suite (on CPU). Inputs are square: candle's f64 backward, the reference, takes
/// its output padding from the height alone.
#[test]
fn conv_passes_match_f64_reference() {
    let device = parity_device();
    // (n, c, size, o, k, stride, padding)
    let cases = [
        (2, 3, 37, 8, 7, 2, 3),
        (3, 8, 14, 8, 3, 1, 1),
        (2, 8, 15, 16, 3, 2, 1),
        (2, 8, 15, 16, 1, 2, 0),
        (1, 5, 9, 6, 3, 1, 1),
    ];
    // Deterministic values in [-0.5, 0.5), f64, on the CPU.
    let pseudo = |dims: &[usize], seed: u64| -> Tensor {
        let values: Vec<f64> = (0..dims.iter().product::<usize>() as u64)
            .map(|i| {
                let h = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
                (h >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
    };
    for (i, &(n, c, size, o, k, stride, pad)) in cases.iter().enumerate() {
        let ho = (size + 2 * pad - k) / stride + 1;
        let seed = 3 * i as u64;
        let x = pseudo(&[n, c, size, size], seed);
        let w = pseudo(&[o, c, k, k], seed + 1);
        let g = pseudo(&[n, o, ho, ho], seed + 2);
        let run = |dtype: DType, device: &Device| {
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(device).unwrap();
            let xv = candle_core::Var::from_tensor(&on(&x)).unwrap();
            let wv = candle_core::Var::from_tensor(&on(&w)).unwrap();
            let y = lesion::kernels::conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad).unwrap();
            let grads = (&y * on(&g))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let dx = grads
                .get(xv.as_tensor())
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            let dw = grads
                .get(wv.as_tensor())
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            (y.to_device(&Device::Cpu).unwrap(), dx, dw)
        };
        let (y, dx, dw) = run(DType::F32, &device);
        let (y0, dx0, dw0) = run(DType::F64, &Device::Cpu);
        let what = format!("conv case {i} {:?} on {:?}", cases[i], device.location());
        check_rel(&format!("{what}: output"), &y, &y0, 1e-5);
        check_rel(&format!("{what}: input gradient"), &dx, &dx0, 1e-5);
        check_rel(&format!("{what}: weight gradient"), &dw, &dw0, 1e-5);
    }
}

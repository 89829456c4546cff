//! The model's tensors as data: their names, shapes and inits ([`param_specs`]), which of them
//! train ([`trainable_vars`]), torchvision's seeded initialisation ([`init_seeded`]) and
//! loading a torchvision state dict ([`load_state_dict`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{is_running_stat, param_group, ResNet18, Trainable};
use crate::{Error, Result};

/// Name, shape and init of one model tensor.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The shape of `spec`'s tensor in a model whose head has `outputs` logits (only `fc.6`
/// depends on it).
pub fn shape_for(spec: &ParamSpec, outputs: usize) -> Vec<usize> {
    match spec.name.as_str() {
        "fc.6.weight" => vec![outputs, spec.shape[1]],
        "fc.6.bias" => vec![outputs],
        _ => spec.shape.clone(),
    }
}

/// Every tensor of the model (parameters and running statistics) in construction order,
/// with the shapes of the binary head (one logit; see [`shape_for`]).
pub fn param_specs() -> &'static [ParamSpec] {
    static SPECS: OnceLock<Vec<ParamSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let vb = VarBuilder::from_backend(
            Box::new(Recorder(recorded.clone())),
            DType::F32,
            Device::Cpu,
        );
        ResNet18::new(vb, 0.0, 1).expect("recording the architecture cannot fail");
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
        // The var's own shape: the head's last layer is as wide as the run's classes.
        let shape = var.dims().to_vec();
        let n: usize = shape.iter().product();
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
                let fan = fan.for_shape(&Shape::from(shape.clone()));
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
        let t = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
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
    use super::super::tests::tiny_model;
    use super::*;

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
}

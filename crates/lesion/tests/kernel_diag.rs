mod common;
use std::collections::HashMap;
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use lesion::model::{self, ResNet18, Trainable};
use lesion::ops::bce_with_logits;

fn grads(dtype: DType, on: bool) -> HashMap<String, Tensor> {
    lesion::kernels::set_enabled(on);
    let load = |name| candle_core::safetensors::load(common::fixture(name), &Device::Cpu).unwrap();
    let w = load("resnet18_parity_weights.safetensors");
    let e = load("resnet18_parity_expected.safetensors");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let mut m = ResNet18::new(vb, 0.0).unwrap();
    model::load_state_dict(&varmap, w, true).unwrap();
    m.set_trainable(Trainable::Layer3);
    let x = e["input.x"].to_dtype(dtype).unwrap();
    let logits = m.forward_t(&x, true).unwrap();
    let g = bce_with_logits(&logits, &e["input.y"]).unwrap().backward().unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter().filter_map(|(k, v)| g.get(v.as_tensor()).map(|g| (k.clone(), g.to_dtype(DType::F64).unwrap()))).collect()
}

fn maxabs(t: &Tensor) -> f64 { t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() }

#[test]
#[ignore]
fn diag() {
    let exact = grads(DType::F64, false);
    let on = grads(DType::F32, true);
    let off = grads(DType::F32, false);
    let mut names: Vec<_> = exact.keys().cloned().collect();
    names.sort();
    for n in names {
        let e = &exact[&n];
        let m = maxabs(e);
        let mask = e.abs().unwrap().gt(1e-6).unwrap().to_dtype(DType::F64).unwrap();
        let flips = |t: &Tensor| (t * e).unwrap().lt(0.0).unwrap().to_dtype(DType::F64).unwrap().mul(&mask).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        println!("{n}: on {:.3e} ({} flips)  off {:.3e} ({} flips)", maxabs(&(&on[&n] - e).unwrap()) / m, flips(&on[&n]), maxabs(&(&off[&n] - e).unwrap()) / m, flips(&off[&n]));
    }
}

fn acts(dtype: DType, on: bool) -> Vec<(String, Tensor)> {
    lesion::kernels::set_enabled(on);
    let load = |name| candle_core::safetensors::load(common::fixture(name), &Device::Cpu).unwrap();
    let w = load("resnet18_parity_weights.safetensors");
    let e = load("resnet18_parity_expected.safetensors");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let m = ResNet18::new(vb, 0.0).unwrap();
    model::load_state_dict(&varmap, w, true).unwrap();
    let mut x = e["input.x"].to_dtype(dtype).unwrap();
    println!("input {:?}", x.dims());
    let mode = model::Mode { train: true, grad: false };
    x = m.stem().forward_mode(&x, mode).unwrap();
    let mut out = vec![("stem".to_string(), x.to_dtype(DType::F64).unwrap())];
    for l in 1..=4 {
        for b in 0..2 {
            x = m.layer(l).block(b).forward_mode(&x, mode).unwrap();
            out.push((format!("layer{l}.{b}"), x.to_dtype(DType::F64).unwrap()));
        }
    }
    out
}

#[test]
#[ignore]
fn diag_acts() {
    let exact = acts(DType::F64, false);
    let on = acts(DType::F32, true);
    let off = acts(DType::F32, false);
    for i in 0..exact.len() {
        let e = &exact[i].1;
        let pos = |t: &Tensor| t.gt(0.0).unwrap().to_dtype(DType::F64).unwrap();
        let mism = |t: &Tensor| (pos(t) - pos(e)).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let m = maxabs(e);
        println!("{}: on err {:.3e} flips {}  off err {:.3e} flips {}", exact[i].0, maxabs(&(&on[i].1 - e).unwrap())/m, mism(&on[i].1), maxabs(&(&off[i].1 - e).unwrap())/m, mism(&off[i].1));
    }
}

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use lesion::model::{self, ResNet18, Trainable};
use lesion::ops::bce_with_logits;

fn maxabs(t: &Tensor) -> f64 { t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() }

#[test]
#[ignore]
fn debug_precision() {
    let w = candle_core::safetensors::load(common::fixture("resnet18_parity_weights.safetensors"), &Device::Cpu).unwrap();
    let e = candle_core::safetensors::load(common::fixture("resnet18_parity_expected.safetensors"), &Device::Cpu).unwrap();
    let mut grads_by = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dt, &Device::Cpu);
        let mut m = ResNet18::new(vb, 0.0).unwrap();
        model::load_state_dict(&varmap, w.clone(), true).unwrap();
        m.set_trainable(Trainable::All);
        let x = e["input.x"].to_dtype(dt).unwrap();
        let logits = m.forward_t(&x, true).unwrap();
        let g = bce_with_logits(&logits, &e["input.y"]).unwrap().backward().unwrap();
        let all: Vec<String> = model::param_specs().iter().filter(|s| !model::is_running_stat(&s.name)).map(|s| s.name.clone()).rev().collect();
        let names: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        let data = varmap.data().lock().unwrap();
        let mut out = Vec::new();
        for n in names {
            out.push((n.to_string(), g.get(data[n].as_tensor()).unwrap().to_dtype(DType::F64).unwrap()));
        }
        grads_by.push(out);
    }
    for i in 0..grads_by[0].len() {
        let (n, g32) = &grads_by[0][i];
        let g64 = &grads_by[1][i].1;
        let mx = maxabs(g64);
        let d = maxabs(&(g32 - g64).unwrap()) / mx;
        print!("{n}: max|g| {mx:.3e}  f32 vs f64 {d:.3e}");
        if let Some(p) = e.get(&format!("expect.grad.{n}")) {
            let p = p.to_dtype(DType::F64).unwrap();
            let d1 = maxabs(&(&p - g64).unwrap()) / mx;
            let d2 = maxabs(&(&p - g32).unwrap()) / mx;
            print!("  torch vs f64 {d1:.3e}  torch vs f32 {d2:.3e}");
            // where is the max error?
            let diff = (&p - g64).unwrap().abs().unwrap().flatten_all().unwrap();
            let idx = diff.argmax(0).unwrap().to_scalar::<u32>().unwrap() as usize;
            let pv = p.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let gv = g64.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            print!("  at {idx}: torch {:.6e} ours64 {:.6e}", pv[idx], gv[idx]);
        }
        println!();
    }
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    maxabs(&(&a - &b).unwrap()) / maxabs(&b)
}

#[test]
#[ignore]
fn debug_ops() {
    use candle_core::Var;
    let dev = Device::Cpu;
    let x64 = Tensor::randn(0f64, 1.0, (4, 512, 7, 7), &dev).unwrap();
    let w64 = (Tensor::randn(0f64, 1.0, (512, 512, 3, 3), &dev).unwrap() * 0.02).unwrap();
    let g64 = Tensor::randn(0f64, 1.0, (4, 512, 7, 7), &dev).unwrap();
    let mut res = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let x = Var::from_tensor(&x64.to_dtype(dt).unwrap()).unwrap();
        let w = Var::from_tensor(&w64.to_dtype(dt).unwrap()).unwrap();
        let y = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        let l = (y * g64.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
        let gr = l.backward().unwrap();
        res.push((gr.get(&x).unwrap().clone(), gr.get(&w).unwrap().clone()));
    }
    println!("conv 3x3 s1 7x7: dx {:.3e} dw {:.3e}", rel(&res[0].0, &res[1].0), rel(&res[0].1, &res[1].1));
    // BN
    let vm = candle_nn::VarMap::new();
    let mut res = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let vb = VarBuilder::from_varmap(&vm, dt, &dev).pp(format!("{dt:?}"));
        let bn = lesion::model::BatchNorm2d::new(512, vb).unwrap();
        let x = Var::from_tensor(&x64.to_dtype(dt).unwrap()).unwrap();
        let y = bn.forward_t(&x, true).unwrap();
        let l = (y * g64.to_dtype(dt).unwrap()).unwrap().sum_all().unwrap();
        let gr = l.backward().unwrap();
        res.push(gr.get(&x).unwrap().clone());
    }
    println!("bn train: dx {:.3e}", rel(&res[0], &res[1]));
}

#[test]
#[ignore]
fn debug_layer4() {
    use lesion::model::{ConvBn, Mode};
    let w = candle_core::safetensors::load(common::fixture("resnet18_parity_weights.safetensors"), &Device::Cpu).unwrap();
    let e = candle_core::safetensors::load(common::fixture("resnet18_parity_expected.safetensors"), &Device::Cpu).unwrap();
    let mut acts = Vec::new();
    for dt in [DType::F32, DType::F64] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dt, &Device::Cpu);
        let m = ResNet18::new(vb.clone(), 0.0).unwrap();
        model::load_state_dict(&varmap, w.clone(), true).unwrap();
        let mode = Mode { train: true, grad: false };
        let x = e["input.x"].to_dtype(dt).unwrap();
        let mut h = m.stem().forward_mode(&x, mode).unwrap();
        let mut per = vec![h.clone()];
        for i in 1..=3 { h = m.layer(i).forward_mode(&h, mode).unwrap(); per.push(h.clone()); }
        let cb = ConvBn::new(256, 512, 3, 2, 1, vb.pp("layer4.0.conv1"), vb.pp("layer4.0.bn1")).unwrap();
        let pre = cb.forward_mode(&h, mode).unwrap();
        per.push(pre);
        acts.push(per);
    }
    for i in 0..acts[0].len() {
        let a = acts[0][i].to_dtype(DType::F64).unwrap();
        let b = &acts[1][i];
        let d = (&a - b).unwrap().abs().unwrap();
        println!("act {i}: rel {:.3e}", maxabs(&d) / maxabs(b));
        // sign flips
        let sa = a.gt(0.0).unwrap();
        let sb = b.gt(0.0).unwrap();
        let flips = sa.ne(&sb).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let small = b.abs().unwrap().lt(1e-5).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let zeros32 = a.eq(0.0).unwrap().to_dtype(DType::F64).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        println!("   sign flips {flips}, |x|<1e-5 in f64: {small}, exact zeros f32 {zeros32} / {}", b.elem_count());
    }
}

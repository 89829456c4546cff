//! The head with N outputs and the training loss (class weights, label smoothing) against
//! PyTorch: `tests/fixtures/head_n_class.safetensors`, written by
//! `scripts/fixtures/make_head_fixture.py` (its docstring lists the keys). The head runs in
//! eval mode (no dropout) with gradients on; logits, losses and the gradients of every head
//! parameter and of the input are held to 1e-5 of the largest expected magnitude, in f32.
//! Every check prints its measured error. Also: `balanced_class_weights` against
//! scikit-learn's `compute_class_weight('balanced')`, to the bit.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use lesion::classes::Classes;
use lesion::loss::{balanced_class_weights, Loss};
use lesion::model::{Head, Mode};

const TOL: f64 = 1e-5;

const CASES: [&str; 9] = [
    "n3.ce",
    "n3.ce_weighted",
    "n3.ce_smoothed",
    "n3.ce_weighted_smoothed",
    "n1.bce",
    "n1.bce_pos_weight",
    "n1.bce_smoothed",
    "n1.bce_pos_weight_smoothed",
    "n8.ce_weighted_smoothed",
];

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/head_n_class.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn get<'a>(f: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    f.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Largest |got - want| divided by the largest |want|.
fn check(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let diff = (got.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap()).unwrap();
    let scale = max_abs(want);
    assert!(scale > 0.0, "{what}: expected values are all zero");
    let err = max_abs(&diff) / scale;
    println!("{what}: max error relative to max |expected| {scale:.3e} = {err:.2e}");
    assert!(err <= TOL, "{what}: {err:.3e} > {TOL:.0e}");
}

/// Classes whose head has `outputs` logits.
fn classes(outputs: usize) -> Classes {
    if outputs == 1 {
        return Classes::benign_malignant();
    }
    Classes::new((0..outputs).map(|k| format!("class{k}")).collect(), &[]).unwrap()
}

/// The candle head of `fc.0`, `fc.3` and `n{outputs}.fc.6`, its parameters as variables.
fn head(f: &HashMap<String, Tensor>, outputs: usize) -> (VarMap, Head) {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = Head::new(0.25, outputs, vb.pp("fc")).unwrap();
    for name in ["0.weight", "0.bias", "3.weight", "3.bias"] {
        varmap
            .set_one(format!("fc.{name}"), get(f, &format!("fc.{name}")))
            .unwrap();
    }
    for name in ["6.weight", "6.bias"] {
        varmap
            .set_one(
                format!("fc.{name}"),
                get(f, &format!("n{outputs}.fc.{name}")),
            )
            .unwrap();
    }
    (varmap, head)
}

const EVAL_WITH_GRAD: Mode = Mode {
    train: false,
    grad: true,
};

#[test]
fn logits_match_pytorch() {
    let f = fixture();
    let x = get(&f, "input.x");
    for outputs in [1, 3, 8] {
        let (_varmap, head) = head(&f, outputs);
        let logits = head.forward_mode(x, EVAL_WITH_GRAD).unwrap();
        check(
            &format!("n{outputs} logits"),
            &logits,
            get(&f, &format!("n{outputs}.logits")),
        );
    }
}

#[test]
fn losses_and_gradients_match_pytorch() {
    let f = fixture();
    for case in CASES {
        let outputs: usize = case[1..case.find('.').unwrap()].parse().unwrap();
        let labels = get(&f, &format!("n{outputs}.labels"))
            .to_vec1::<u8>()
            .unwrap();
        let weights = f
            .get(&format!("{case}.class_weights"))
            .map(|w| w.to_vec1::<f64>().unwrap());
        let eps = get(&f, &format!("{case}.label_smoothing"))
            .to_vec1::<f64>()
            .unwrap()[0];
        let loss_fn = Loss::new(&classes(outputs), weights.clone(), eps).unwrap();
        assert_eq!(loss_fn.label_smoothing(), eps);
        assert_eq!(loss_fn.class_weights(), weights.as_deref());

        let (varmap, head) = head(&f, outputs);
        let x = Var::from_tensor(get(&f, "input.x")).unwrap();
        let logits = head.forward_mode(x.as_tensor(), EVAL_WITH_GRAD).unwrap();
        let loss = loss_fn.forward(&logits, &labels).unwrap();
        check(
            &format!("{case} loss"),
            &loss.reshape(1).unwrap(),
            get(&f, &format!("{case}.loss")),
        );

        let grads = loss.backward().unwrap();
        // Intermediate gradients are not kept; the loss's own, on a copy of the logits.
        let z = Var::from_tensor(&logits.detach()).unwrap();
        let dz = loss_fn
            .forward(z.as_tensor(), &labels)
            .unwrap()
            .backward()
            .unwrap();
        check(
            &format!("{case} grad logits"),
            dz.get(z.as_tensor()).unwrap(),
            get(&f, &format!("{case}.grad.logits")),
        );
        check(
            &format!("{case} grad input"),
            grads.get(x.as_tensor()).unwrap(),
            get(&f, &format!("{case}.grad.input")),
        );
        let vars = varmap.data().lock().unwrap();
        for name in ["0.bias", "3.weight", "3.bias", "6.weight", "6.bias"] {
            let var = &vars[&format!("fc.{name}")];
            check(
                &format!("{case} grad fc.{name}"),
                grads.get(var.as_tensor()).unwrap(),
                get(&f, &format!("{case}.grad.fc.{name}")),
            );
        }
        let rows: Vec<u32> = (0..256).step_by(16).collect();
        let rows = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
        let g0 = grads.get(vars["fc.0.weight"].as_tensor()).unwrap();
        check(
            &format!("{case} grad fc.0.weight (every 16th row)"),
            &g0.index_select(&rows, 0).unwrap(),
            get(&f, &format!("{case}.grad.fc.0.weight.rows_every_16")),
        );
    }
}

/// The binary pos_weight the loss derives from balanced weights is the one the fixture's
/// `BCEWithLogitsLoss` took: `w_1 / w_0` of counts 600:100, i.e. 6.
#[test]
fn binary_pos_weight_is_the_ratio_of_the_class_weights() {
    let f = fixture();
    let w = get(&f, "n1.bce_pos_weight.class_weights")
        .to_vec1::<f64>()
        .unwrap();
    let loss = Loss::new(&classes(1), Some(w), 0.0).unwrap();
    assert!((loss.pos_weight().unwrap() - 6.0).abs() < 1e-12);
}

#[test]
fn balanced_class_weights_match_scikit_learn() {
    let f = fixture();
    let mut cases = 0;
    while let Some(counts) = f.get(&format!("sklearn.balanced.{cases}.counts")) {
        let counts: Vec<usize> = counts
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|c| usize::try_from(c).unwrap())
            .collect();
        let want = get(&f, &format!("sklearn.balanced.{cases}.weights"))
            .to_vec1::<f64>()
            .unwrap();
        let got = balanced_class_weights(&counts).unwrap();
        println!("counts {counts:?}: {got:?}");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "counts {counts:?}: {got:?} vs {want:?}"
        );
        cases += 1;
    }
    assert_eq!(cases, 7, "the fixture's scikit-learn cases");
}

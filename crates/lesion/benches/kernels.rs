//! Micro-benchmarks of `lesion::kernels` against candle's own ops, and of the whole
//! ResNet-18 with the kernels on and off (`lesion::kernels::set_enabled`), at the notebook's
//! batch 32 and 224 px, f32 on CPU. Every figure prints; nothing about time is asserted.
//!
//! The two sides run interleaved in the same process (A, B, A, B, ...) and the medians are
//! compared, so that a noisy, shared machine moves both alike. Run in release, one test at a
//! time:
//!
//! ```text
//! cargo bench -p lesion --bench kernels [conv|elementwise|network|profile]...
//! ```
//!
//! (`just bench-kernels`); with no argument it runs `conv`, `elementwise` and `network`.
//!
//! `BENCH_REPS` sets the repeats (default 5 for ops, 3 for whole-network runs).
//! Like the binaries, this runs on mimalloc; [`lesion::alloc`] switches its purge delay
//! between mimalloc's default and "never" where a figure compares the two.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use lesion::kernels;
use lesion::model::{self, ResNet18, Trainable};
use lesion::optim::{Adam, ParamGroup};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 32;

/// The number in environment variable `name`, else `default`.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn reps(default: usize) -> usize {
    env_usize("BENCH_REPS", default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU time (ns) of every thread of this process so far, from the scheduler's per-thread
/// statistics: under load from other processes it moves far less than wall time.
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Times each closure `reps` times, interleaved, after one untimed warm-up round; returns
/// the median wall seconds and the median CPU seconds (all threads) of each.
fn interleaved_cpu(reps: usize, fs: &mut [&mut dyn FnMut()]) -> (Vec<f64>, Vec<f64>) {
    for f in fs.iter_mut() {
        f();
    }
    let mut wall = vec![Vec::new(); fs.len()];
    let mut cpu = vec![Vec::new(); fs.len()];
    for _ in 0..reps {
        for ((f, w), c) in fs.iter_mut().zip(&mut wall).zip(&mut cpu) {
            let (start, c0) = (Instant::now(), cpu_ns());
            f();
            w.push(start.elapsed().as_secs_f64());
            c.push((cpu_ns() - c0) as f64 * 1e-9);
        }
    }
    (
        wall.into_iter().map(median).collect(),
        cpu.into_iter().map(median).collect(),
    )
}

fn randn(dims: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, dims, &Device::Cpu).unwrap()
}

/// Forces evaluation (candle is eager, but keep the result observable).
fn sink(t: &Tensor) {
    assert!(t.elem_count() > 0);
}

/// (name, input dims, out channels, kernel, stride, padding, times in the network)
type ConvShape = (&'static str, [usize; 4], usize, usize, usize, usize, usize);

const CONVS: [ConvShape; 11] = [
    (
        "stem 7x7/2 3->64 @224",
        [BATCH, 3, 224, 224],
        64,
        7,
        2,
        3,
        1,
    ),
    ("l1 3x3 64->64 @56", [BATCH, 64, 56, 56], 64, 3, 1, 1, 4),
    (
        "l2.0.c1 3x3/2 64->128 @56",
        [BATCH, 64, 56, 56],
        128,
        3,
        2,
        1,
        1,
    ),
    ("l2 3x3 128->128 @28", [BATCH, 128, 28, 28], 128, 3, 1, 1, 3),
    (
        "l2.0.ds 1x1/2 64->128 @56",
        [BATCH, 64, 56, 56],
        128,
        1,
        2,
        0,
        1,
    ),
    (
        "l3.0.c1 3x3/2 128->256 @28",
        [BATCH, 128, 28, 28],
        256,
        3,
        2,
        1,
        1,
    ),
    ("l3 3x3 256->256 @14", [BATCH, 256, 14, 14], 256, 3, 1, 1, 3),
    (
        "l3.0.ds 1x1/2 128->256 @28",
        [BATCH, 128, 28, 28],
        256,
        1,
        2,
        0,
        1,
    ),
    (
        "l4.0.c1 3x3/2 256->512 @14",
        [BATCH, 256, 14, 14],
        512,
        3,
        2,
        1,
        1,
    ),
    ("l4 3x3 512->512 @7", [BATCH, 512, 7, 7], 512, 3, 1, 1, 3),
    (
        "l4.0.ds 1x1/2 256->512 @14",
        [BATCH, 256, 14, 14],
        512,
        1,
        2,
        0,
        1,
    ),
];

/// candle's conv input gradient, as its `backprop.rs` computes it.
fn candle_dx(x: &Tensor, w: &Tensor, dy: &Tensor, stride: usize, pad: usize) -> Tensor {
    let (_, _, kh, _) = w.dims4().unwrap();
    let out_size = (dy.dim(2).unwrap() - 1) * stride + (kh - 1) + 1 - 2 * pad;
    let out_padding = x.dim(2).unwrap() - out_size;
    dy.conv_transpose2d(w, pad, out_padding, stride, 1).unwrap()
}

/// candle's conv weight gradient, as its `backprop.rs` computes it.
fn candle_dw(x: &Tensor, w: &Tensor, dy: &Tensor, stride: usize, pad: usize) -> Tensor {
    let (_, _, kh, kw) = w.dims4().unwrap();
    let dw = x
        .transpose(0, 1)
        .unwrap()
        .conv2d(&dy.transpose(0, 1).unwrap(), pad, 1, stride, 1)
        .unwrap()
        .transpose(0, 1)
        .unwrap();
    dw.narrow(2, 0, kh).unwrap().narrow(3, 0, kw).unwrap()
}

fn bench_conv_ops() {
    lesion::alloc::tune();
    let reps = reps(5);
    println!(
        "conv ops, batch {BATCH}, median of {reps} interleaved runs (wall ms): candle | ours | \
         ratio | ratio of CPU times"
    );
    let mut totals = [[0.0f64; 2]; 3];
    for (name, dims, o, k, s, p, count) in CONVS {
        let x = randn(&dims, 1.0);
        let w = randn(&[o, dims[1], k, k], 0.05);
        let y = x.conv2d(&w, p, s, 1, 1).unwrap();
        let dy = randn(y.dims(), 1e-3);
        let (h, wd) = (dims[2], dims[3]);
        let fwd = interleaved_cpu(
            reps,
            &mut [
                &mut || sink(&x.conv2d(&w, p, s, 1, 1).unwrap()),
                &mut || sink(&kernels::conv2d(&x, &w, s, p).unwrap()),
            ],
        );
        // The stem's input gradient is never needed (its input is the image).
        let dx = if name.starts_with("stem") {
            (vec![0.0, 0.0], vec![0.0, 0.0])
        } else {
            interleaved_cpu(
                reps,
                &mut [&mut || sink(&candle_dx(&x, &w, &dy, s, p)), &mut || {
                    sink(&kernels::conv2d_grad_input(&dy, &w, s, p, (h, wd)).unwrap())
                }],
            )
        };
        let dw = interleaved_cpu(
            reps,
            &mut [&mut || sink(&candle_dw(&x, &w, &dy, s, p)), &mut || {
                sink(&kernels::conv2d_grad_weight(&x, &dy, s, p, (k, k)).unwrap())
            }],
        );
        for (i, (what, (t, c))) in [("fwd", &fwd), ("dx", &dx), ("dw", &dw)]
            .into_iter()
            .enumerate()
        {
            if t[1] > 0.0 {
                println!(
                    "{name:30} {what:3} {:9.1} | {:8.1} | {:5.1}x | CPU {:5.1}x",
                    1e3 * t[0],
                    1e3 * t[1],
                    t[0] / t[1],
                    c[0] / c[1]
                );
            }
            totals[i][0] += count as f64 * t[0];
            totals[i][1] += count as f64 * t[1];
        }
    }
    for (what, t) in ["fwd", "dx", "dw"].iter().zip(totals) {
        println!(
            "whole network {what}: candle {:.0} ms, ours {:.0} ms, {:.1}x",
            1e3 * t[0],
            1e3 * t[1],
            t[0] / t[1]
        );
    }
}

/// BatchNorm shapes of the network: (name, dims, times in the network).
const BNS: [(&str, [usize; 4], usize); 5] = [
    ("bn @112 x64", [BATCH, 64, 112, 112], 1),
    ("bn @56 x64", [BATCH, 64, 56, 56], 4),
    ("bn @28 x128", [BATCH, 128, 28, 28], 5),
    ("bn @14 x256", [BATCH, 256, 14, 14], 5),
    ("bn @7 x512", [BATCH, 512, 7, 7], 5),
];

fn bench_elementwise_ops() {
    lesion::alloc::tune();
    let reps = reps(5);
    println!(
        "element-wise ops, batch {BATCH}, median of {reps} interleaved runs (wall ms): candle | \
         ours | ratio | ratio of CPU times"
    );
    let row = |name: &str, (t, c): (Vec<f64>, Vec<f64>)| {
        println!(
            "{name:44} {:9.2} | {:8.2} | {:5.1}x | CPU {:5.1}x",
            1e3 * t[0],
            1e3 * t[1],
            t[0] / t[1],
            c[0] / c[1]
        )
    };
    for (name, dims, _) in BNS {
        let c = dims[1];
        let x = randn(&dims, 1.0);
        let g = randn(&dims, 1e-3);
        let gamma = Var::from_tensor(&randn(&[c], 1.0)).unwrap();
        let beta = Var::from_tensor(&randn(&[c], 1.0)).unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        // Train forward + backward (BatchNorm then ReLU, as after most convolutions).
        let train = |on: bool| {
            kernels::set_enabled(on);
            let (y, _) =
                kernels::batch_norm_train(xv.as_tensor(), &gamma, &beta, 1e-5, true).unwrap();
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            sink(grads.get(xv.as_tensor()).unwrap());
        };
        let t = interleaved_cpu(reps, &mut [&mut || train(false), &mut || train(true)]);
        row(&format!("{name} train fwd+bwd (+relu)"), t);
        let scale = randn(&[c], 1.0);
        let shift = randn(&[c], 1.0);
        let eval = |on: bool| {
            kernels::set_enabled(on);
            sink(&kernels::scale_shift(&x, &scale, &shift, true).unwrap());
        };
        let t = interleaved_cpu(reps, &mut [&mut || eval(false), &mut || eval(true)]);
        row(&format!("{name} eval scale+shift+relu"), t);
        let b = randn(&dims, 1.0);
        let bv = Var::from_tensor(&b).unwrap();
        let add = |on: bool| {
            kernels::set_enabled(on);
            let y = kernels::add_relu(xv.as_tensor(), bv.as_tensor()).unwrap();
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            sink(grads.get(bv.as_tensor()).unwrap());
        };
        let t = interleaved_cpu(reps, &mut [&mut || add(false), &mut || add(true)]);
        row(&format!("{name} add+relu fwd+bwd"), t);
    }
    kernels::set_enabled(true);
    let x = Var::from_tensor(&randn(&[BATCH, 64, 112, 112], 1.0)).unwrap();
    let g = randn(&[BATCH, 64, 56, 56], 1.0);
    let pool = |composed: bool| {
        let y = if composed {
            kernels::max_pool2d_3x3s2p1_composed(x.as_tensor()).unwrap()
        } else {
            kernels::max_pool2d_3x3s2p1(x.as_tensor()).unwrap()
        };
        let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        sink(grads.get(x.as_tensor()).unwrap());
    };
    let t = interleaved_cpu(reps, &mut [&mut || pool(true), &mut || pool(false)]);
    row("max-pool 3x3/2 @112 fwd+bwd (composed | op)", t);
}

/// A ResNet-18 (random torchvision-like init) and Adam over `trainable`'s groups.
fn network(trainable: Trainable) -> (VarMap, ResNet18, Adam) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let mut model = ResNet18::new(vb, 0.25, 1).unwrap();
    model::init_seeded(&varmap, 1).unwrap();
    model.set_trainable(trainable);
    model.set_dropout_seed(1);
    let groups = model::trainable_vars(&varmap, trainable)
        .unwrap()
        .into_iter()
        .map(|(name, params)| ParamGroup {
            name: name.to_string(),
            lr: 1e-3,
            params,
        })
        .collect();
    (varmap, model, Adam::new(groups).unwrap())
}

fn batch() -> (Tensor, Tensor) {
    batch_of(BATCH)
}

fn batch_of(n: usize) -> (Tensor, Tensor) {
    let x = randn(&[n, 3, 224, 224], 1.0);
    let y = Tensor::from_vec(
        (0..n).map(|i| (i % 2) as f32).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    (x, y)
}

/// Configurations compared: candle's ops with mimalloc's default purge delay (the draft as
/// it was), our kernels with the default delay, and our kernels with purging off (as the
/// binaries now run).
const CONFIGS: [(&str, bool, Option<u32>); 3] = [
    ("candle ops, purge 1000ms", false, Some(1000)),
    ("kernels, purge 1000ms", true, Some(1000)),
    ("kernels, purge never", true, None),
];

fn whole_network(what: &str, reps: usize, step: impl FnMut()) {
    let step = std::cell::RefCell::new(step);
    let mut fs: Vec<Box<dyn FnMut() + '_>> = CONFIGS
        .iter()
        .map(|&(_, on, purge)| {
            let step = &step;
            Box::new(move || {
                kernels::set_enabled(on);
                lesion::alloc::set_purge_delay(purge);
                (step.borrow_mut())();
            }) as Box<dyn FnMut()>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut()> = fs.iter_mut().map(|f| &mut **f as _).collect();
    let (t, cpu) = interleaved_cpu(reps, &mut refs);
    println!("{what}, batch {BATCH}, median of {reps} interleaved runs:");
    for (((name, _, _), &ti), &ci) in CONFIGS.iter().zip(&t).zip(&cpu) {
        println!(
            "  {name:26} {ti:7.3} s/step {:6.1} images/s  ({:.2}x the first); CPU {ci:6.2} s \
             ({:.2}x)",
            BATCH as f64 / ti,
            t[0] / ti,
            cpu[0] / ci
        );
    }
    kernels::set_enabled(true);
    lesion::alloc::tune();
}

fn train_step(model: &ResNet18, adam: &mut Adam, x: &Tensor, y: &Tensor) {
    let logits = model
        .forward_with(x, true, Some(model.trainable()))
        .unwrap();
    let loss = lesion::ops::bce_with_logits(&logits, y).unwrap();
    let grads = loss.backward().unwrap();
    adam.step(&grads).unwrap();
}

fn bench_network() {
    let reps = reps(3);
    let (x, y) = batch();
    let (_vm, model, _) = network(Trainable::All);
    whole_network("eval forward", reps, || {
        sink(&model.forward_with(&x, false, None).unwrap());
    });
    for trainable in [Trainable::Layer3, Trainable::All] {
        let (_vm, model, mut adam) = network(trainable);
        whole_network(&format!("train step, trainable {trainable}"), reps, || {
            train_step(&model, &mut adam, &x, &y)
        });
    }
}

/// A few train steps with the kernels on, for a profiler (`perf record`):
/// `PROFILE_TRAINABLE` (default layer3), `PROFILE_STEPS` (default 3), `PROFILE_EVAL=1` for
/// eval forwards instead, `PROFILE_BATCH` (default 32; training runs use 128).
fn profile_steps() {
    lesion::alloc::tune();
    let trainable: Trainable = std::env::var("PROFILE_TRAINABLE")
        .unwrap_or_else(|_| "layer3".into())
        .parse()
        .unwrap();
    let steps = env_usize("PROFILE_STEPS", 3);
    let eval = std::env::var_os("PROFILE_EVAL").is_some();
    let (x, y) = batch_of(env_usize("PROFILE_BATCH", BATCH));
    let (_vm, model, mut adam) = network(trainable);
    for _ in 0..steps {
        let start = Instant::now();
        if eval {
            sink(&model.forward_with(&x, false, None).unwrap());
        } else {
            train_step(&model, &mut adam, &x, &y);
        }
        println!("step {:.3} s", start.elapsed().as_secs_f64());
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| {
        if args.is_empty() {
            name != "profile"
        } else {
            args.iter().any(|a| a == name)
        }
    };
    if wanted("conv") {
        bench_conv_ops();
    }
    if wanted("elementwise") {
        bench_elementwise_ops();
    }
    if wanted("network") {
        bench_network();
    }
    if wanted("profile") {
        profile_steps();
    }
}

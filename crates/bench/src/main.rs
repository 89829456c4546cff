//! `lesion-bench`: throughput of the library's ResNet-18 on one synthetic batch, the Rust
//! half of `just bench` (the PyTorch half is `scripts/bench_torch.py`, same workloads, same
//! JSON line).
//!
//! Workloads, all on one seeded batch `[batch, 3, size, size]` f32 of ImageNet-normalised
//! uniform random pixels and random 0/1 labels, reused every iteration (no data loading):
//! - `train-frozen`: the notebook's recipe ([`Trainable::Layer3`]): stem to layer2 run forward
//!   only (detached, train-mode BatchNorm), layer3, layer4 and the head train; one iteration
//!   is forward + BCE-with-logits + backward + one Adam step with the groups head 1e-2,
//!   layer4 1e-3, layer3 1e-3 (as `lesion::train` builds them);
//! - `train-all`: the same with every layer training (backbone group 1e-4);
//! - `infer`: eval-mode forward (`forward_t(x, false)`, no backward graph).
//!
//! Output: one JSON line on stdout, `{"workload", "images_per_s_median", "per_iter_s",
//! "peak_rss_mib", ...}`; `per_iter_s` excludes the warm-up iterations and the median is
//! `batch / median(per_iter_s)`. Peak RSS is the process's `VmHWM` (Linux; null elsewhere).

use std::time::Instant;

use anyhow::Context as _;
use candle_core::{DType, Device, ModuleT, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use lesion::model::{self, ResNet18, Trainable};
use lesion::optim::{Adam, ParamGroup};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The notebook's normalisation (ImageNet statistics), as the batch loader applies it.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Images/s of ResNet-18 training or inference on a synthetic batch; prints one JSON line.
#[derive(Debug, Parser)]
#[command(name = "lesion-bench", version, about, long_about = None)]
struct Cli {
    /// What to time.
    #[arg(value_enum)]
    workload: Workload,
    /// Images per iteration.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Side of the square input images, in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Untimed iterations first (allocator, caches, lazily built kernels).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Worker threads (sets the rayon pool and candle's thread count).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seed of the weights, the batch and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    /// Notebook recipe: stem to layer2 frozen, layer3, layer4 and head train.
    TrainFrozen,
    /// Every layer trains.
    TrainAll,
    /// Eval-mode forward only.
    Infer,
}

impl Workload {
    fn trainable(self) -> Option<Trainable> {
        match self {
            Workload::TrainFrozen => Some(Trainable::Layer3),
            Workload::TrainAll => Some(Trainable::All),
            Workload::Infer => None,
        }
    }
}

/// The JSON line, shared with `scripts/bench_torch.py`.
#[derive(Debug, Serialize)]
struct Report {
    #[serde(rename = "impl")]
    implementation: &'static str,
    workload: Workload,
    images_per_s_median: f64,
    per_iter_s: Vec<f64>,
    peak_rss_mib: Option<f64>,
    batch_size: usize,
    size: usize,
    threads: usize,
    device: String,
}

/// A seeded batch: ImageNet-normalised uniform u8 pixels (what the loader produces from
/// real shards, value range included) and balanced-on-average 0/1 labels.
fn synthetic_batch(
    batch: usize,
    size: usize,
    seed: u64,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let plane = size * size;
    let mut pixels = Vec::with_capacity(batch * 3 * plane);
    for _ in 0..batch {
        for c in 0..3 {
            pixels.extend(
                (0..plane).map(|_| (f32::from(rng.random::<u8>()) / 255.0 - MEAN[c]) / STD[c]),
            );
        }
    }
    let labels: Vec<f32> = (0..batch)
        .map(|_| f32::from(u8::from(rng.random::<bool>())))
        .collect();
    Ok((
        Tensor::from_vec(pixels, (batch, 3, size, size), device)?,
        Tensor::from_vec(labels, batch, device)?,
    ))
}

/// The optimizer `lesion::train` builds: one group per trainable part, notebook rates.
fn optimizer(varmap: &VarMap, trainable: Trainable) -> anyhow::Result<Adam> {
    let groups = model::trainable_vars(varmap, trainable)?
        .into_iter()
        .map(|(name, params)| ParamGroup {
            name: name.to_string(),
            lr: match name {
                "head" => 1e-2,
                "layer4" | "layer3" => 1e-3,
                _ => 1e-4,
            },
            params,
        })
        .collect();
    Ok(Adam::new(groups)?)
}

/// Peak resident set size of this process in MiB (`VmHWM`), if the OS reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times the workload and prints the report line.
fn run(cli: &Cli) -> anyhow::Result<()> {
    // candle sizes its own CPU thread pools from these variables when it first needs them,
    // so they are set before anything touches a tensor (still single-threaded here).
    std::env::set_var("RAYON_NUM_THREADS", cli.threads.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", cli.threads.to_string());
    let report = measure(cli)?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serialises")
    );
    Ok(())
}

fn measure(cli: &Cli) -> anyhow::Result<Report> {
    anyhow::ensure!(cli.iters > 0, "--iters must be at least 1");
    anyhow::ensure!(
        cli.batch_size >= 2 || cli.workload == Workload::Infer,
        "training needs --batch-size >= 2 (train-mode BatchNorm)"
    );
    anyhow::ensure!(cli.size >= 32, "--size must be at least 32");
    rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads)
        .build_global()
        .context("building the rayon thread pool")?;
    let device = lesion::device::parse_device(&cli.device)?;

    let varmap = VarMap::new();
    let mut net = ResNet18::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        0.25,
        1,
    )?;
    model::init_seeded(&varmap, cli.seed)?;
    net.set_dropout_seed(cli.seed);
    let (x, y) = synthetic_batch(cli.batch_size, cli.size, cli.seed, &device)?;

    let mut step: Box<dyn FnMut() -> anyhow::Result<()>> = match cli.workload.trainable() {
        Some(trainable) => {
            net.set_trainable(trainable);
            let mut opt = optimizer(&varmap, trainable)?;
            // Exactly the training loop's step (crates/lesion/src/train/run.rs), reading the
            // loss back as it does.
            Box::new(move || {
                let logits = net.forward_t(&x, true)?.squeeze(D::Minus1)?;
                let loss = lesion::ops::bce_with_logits(&logits, &y)?;
                let value = loss.to_scalar::<f32>()?;
                anyhow::ensure!(value.is_finite(), "loss is {value}");
                let grads = loss.backward()?;
                opt.step(&grads)?;
                Ok(())
            })
        }
        None => Box::new(move || {
            let logits = net.forward_t(&x, false)?;
            // Reading the result back forces the whole forward on lazy devices.
            let _ = logits.flatten_all()?.to_vec1::<f32>()?;
            Ok(())
        }),
    };

    for _ in 0..cli.warmup {
        step()?;
    }
    device.synchronize()?;
    let mut per_iter_s = Vec::with_capacity(cli.iters);
    for _ in 0..cli.iters {
        let start = Instant::now();
        step()?;
        device.synchronize()?;
        per_iter_s.push(start.elapsed().as_secs_f64());
    }
    Ok(Report {
        implementation: "lesion",
        workload: cli.workload,
        images_per_s_median: cli.batch_size as f64 / median(&per_iter_s),
        per_iter_s,
        peak_rss_mib: peak_rss_mib(),
        batch_size: cli.batch_size,
        size: cli.size,
        threads: cli.threads,
        device: lesion::device::describe(&device),
    })
}

// The allocator and its settings are the stage binaries', so that the figures are theirs.
lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn batch_is_seeded_and_normalised() {
        let (a, ya) = synthetic_batch(2, 8, 7, &Device::Cpu).unwrap();
        let (b, yb) = synthetic_batch(2, 8, 7, &Device::Cpu).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(ya.to_vec1::<f32>().unwrap(), yb.to_vec1::<f32>().unwrap());
        // Pixel 0 of channel 0 maps to -mean/std, pixel 255 to (1-mean)/std.
        let (lo, hi) = (-MEAN[0] / STD[0], (1.0 - MEAN[0]) / STD[0]);
        assert!(a[..64]
            .iter()
            .all(|&v| (lo - 1e-5..=hi + 1e-5).contains(&v)));
    }

    #[test]
    fn train_frozen_step_runs_on_a_tiny_batch() {
        let cli = Cli::try_parse_from([
            "lesion-bench",
            "train-frozen",
            "--batch-size",
            "2",
            "--size",
            "32",
            "--warmup",
            "0",
            "--iters",
            "1",
        ])
        .unwrap();
        // The global rayon pool may already exist in this test process; run the steps of
        // `measure` that follow it.
        let varmap = VarMap::new();
        let mut net = ResNet18::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            0.25,
            1,
        )
        .unwrap();
        model::init_seeded(&varmap, cli.seed).unwrap();
        net.set_trainable(Trainable::Layer3);
        let mut opt = optimizer(&varmap, Trainable::Layer3).unwrap();
        let names: Vec<_> = opt.lrs();
        assert_eq!(
            names,
            vec![
                ("head".to_string(), 1e-2),
                ("layer4".to_string(), 1e-3),
                ("layer3".to_string(), 1e-3)
            ]
        );
        let (x, y) = synthetic_batch(cli.batch_size, cli.size, cli.seed, &Device::Cpu).unwrap();
        let logits = net.forward_t(&x, true).unwrap().squeeze(D::Minus1).unwrap();
        let loss = lesion::ops::bce_with_logits(&logits, &y).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
        opt.step(&loss.backward().unwrap()).unwrap();
    }
}

//! `lesion-train`: fine-tunes ResNet-18 on a prepared dataset (see `lesion::train`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use lesion::cli::DeviceArg;
use lesion::model::Trainable;
use lesion::train::{Monitor, TrainConfig};

/// Fine-tune ResNet-18 (ImageNet weights by default) on a folder written by `lesion-prep`.
///
/// Defaults reproduce the notebook: batch 128, Adam with head 1e-2 / layer4 1e-3 /
/// layer3 1e-3, stem to layer2 frozen, up to 50 epochs, best validation accuracy kept,
/// early stopping after 5 epochs without improvement; validation runs in eval mode.
#[derive(Debug, Parser)]
#[command(name = "lesion-train", version, about, long_about = None)]
pub struct Cli {
    /// Prepared dataset folder (output of `lesion-prep`).
    #[arg(long, value_name = "PREPARED_DIR", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run folder to create (refused if it exists, unless --force).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue an interrupted run from its last.safetensors (other options come from its config.json).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["data", "out", "force"])]
    resume: Option<PathBuf>,
    /// Maximum number of epochs (with --resume: a new total).
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per optimisation step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Stop after this many epochs without improvement of --monitor.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Figure that selects the best checkpoint and drives early stopping: val_acc, val_loss or val_auc.
    #[arg(long, default_value = "val_acc")]
    monitor: Monitor,
    /// Learning rate of the head (fc.*).
    #[arg(long, default_value_t = 1e-2)]
    lr_head: f64,
    /// Learning rate of layer4.
    #[arg(long, default_value_t = 1e-3)]
    lr_layer4: f64,
    /// Learning rate of layer3.
    #[arg(long, default_value_t = 1e-3)]
    lr_layer3: f64,
    /// Learning rate of the stem, layer1 and layer2 (only with --trainable all).
    #[arg(long, default_value_t = 1e-4)]
    lr_backbone: f64,
    /// Deepest part that trains: head, layer4, layer3 (the notebook) or all.
    #[arg(long, default_value = "layer3")]
    trainable: Trainable,
    /// Dropout probability of the head's two dropout layers.
    #[arg(long, default_value_t = 0.25)]
    head_dropout: f64,
    /// Seed for shuffling and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArg,
    /// Initial weights: imagenet (Hugging Face Hub, cached), none (random init) or a safetensors file.
    #[arg(long, default_value = "imagenet", value_name = "imagenet|none|PATH")]
    weights: String,
    /// Replace an existing run folder.
    #[arg(long)]
    force: bool,
    /// CPU: let training use F(4x4, 3x3) Winograd convolutions too (about 15% faster epochs at
    /// 224 px; gradients about 10x further from PyTorch's, so results change; off by default).
    #[arg(long)]
    winograd_4x4: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

impl Cli {
    /// The library configuration these options describe (for a new run).
    pub fn config(&self) -> TrainConfig {
        let d = TrainConfig::default();
        TrainConfig {
            data: self.data.clone().unwrap_or(d.data),
            out: self.out.clone().unwrap_or(d.out),
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size,
            patience: self.patience,
            monitor: self.monitor,
            lr_head: self.lr_head,
            lr_layer4: self.lr_layer4,
            lr_layer3: self.lr_layer3,
            lr_backbone: self.lr_backbone,
            trainable: self.trainable,
            head_dropout: self.head_dropout,
            seed: self.seed,
            device: self.device.device.clone(),
            weights: self.weights.clone(),
            force: self.force,
            winograd_4x4: self.winograd_4x4,
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let summary = match &cli.resume {
        Some(dir) => lesion::train::resume(dir, cli.epochs, !cli.quiet)
            .with_context(|| format!("resuming {}", dir.display()))?,
        None => lesion::train::train(&cli.config(), !cli.quiet).context("training failed")?,
    };
    println!("{summary}");
    Ok(())
}

lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reproduce_the_notebook() {
        let cli = Cli::try_parse_from(["lesion-train", "--data", "d", "--out", "r"]).unwrap();
        let cfg = cli.config();
        assert_eq!(cfg.batch_size, 128);
        assert_eq!(cfg.epochs, 50);
        assert_eq!(cfg.patience, 5);
        assert_eq!(cfg.monitor, Monitor::ValAcc);
        assert_eq!(
            (cfg.lr_head, cfg.lr_layer4, cfg.lr_layer3),
            (1e-2, 1e-3, 1e-3)
        );
        assert_eq!(cfg.trainable, Trainable::Layer3);
        assert_eq!(cfg.weights, "imagenet");
    }

    #[test]
    fn resume_conflicts_with_out() {
        let err = Cli::try_parse_from(["lesion-train", "--resume", "r", "--out", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn data_required_without_resume() {
        assert!(Cli::try_parse_from(["lesion-train", "--out", "r"]).is_err());
        assert!(Cli::try_parse_from(["lesion-train", "--resume", "r"]).is_ok());
    }
}

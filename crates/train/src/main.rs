//! `lesion-train`: fine-tunes ResNet-18 on a prepared dataset (see `lesion::train`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use lesion::model::Trainable;
use lesion::train::{ClassWeights, Monitor, Recipe, ResumeOptions, Sampler, Schedule, TrainConfig};

/// Fine-tune ResNet-18 (ImageNet weights by default) on a folder written by `lesion-prep`.
///
/// Defaults reproduce the notebook (`--recipe notebook`): batch 128, Adam with head 1e-2 /
/// layer4 1e-3 / layer3 1e-3, stem to layer2 frozen, up to 50 epochs, best validation
/// accuracy kept, early stopping after 5 epochs without improvement; validation runs in
/// eval mode. `--recipe recommended` sets options for imbalanced data instead; options given
/// explicitly override the recipe's.
//
// Options are `Option`s, their defaults (the notebook recipe's) written into the help (and
// checked against `TrainConfig::default()` by a test), so that the recipe and `--resume`
// can tell what was given.
#[derive(Debug, Parser)]
#[command(name = "lesion-train", version, about, long_about = None)]
pub struct Cli {
    /// Prepared dataset folder (output of `lesion-prep`).
    #[arg(long, value_name = "PREPARED_DIR", required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Run folder to create (refused if it exists, unless --force).
    #[arg(long, value_name = "RUN_DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue an interrupted run from its last.safetensors; only --epochs, --patience, the learning rates and --device may be given (the rest comes from its config.json).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["data", "out", "force"])]
    resume: Option<PathBuf>,
    /// Named defaults: notebook (the notebook's recipe) or recommended (for imbalanced data: --monitor val_loss, --class-weights balanced, --schedule cosine --warmup-epochs 1, --label-smoothing 0.1); options given explicitly override it [default: notebook]
    #[arg(long, value_name = "RECIPE")]
    recipe: Option<Recipe>,
    /// Maximum number of epochs (with --resume: a new total) [default: 50]
    #[arg(long, value_name = "EPOCHS")]
    epochs: Option<usize>,
    /// Images per optimisation step [default: 128]
    #[arg(long, value_name = "BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Stop after this many epochs without improvement of --monitor [default: 5]
    #[arg(long, value_name = "PATIENCE")]
    patience: Option<usize>,
    /// Figure that selects the best checkpoint and drives early stopping: val_acc, val_loss, val_auc (macro one-vs-rest for N classes) or val_balanced_acc [default: val_acc]
    #[arg(long, value_name = "MONITOR")]
    monitor: Option<Monitor>,
    /// Learning rate of the head (fc.*) [default: 0.01]
    #[arg(long, value_name = "LR_HEAD")]
    lr_head: Option<f64>,
    /// Learning rate of layer4 [default: 0.001]
    #[arg(long, value_name = "LR_LAYER4")]
    lr_layer4: Option<f64>,
    /// Learning rate of layer3 [default: 0.001]
    #[arg(long, value_name = "LR_LAYER3")]
    lr_layer3: Option<f64>,
    /// Learning rate of the stem, layer1 and layer2 (only with --trainable all) [default: 0.0001]
    #[arg(long, value_name = "LR_BACKBONE")]
    lr_backbone: Option<f64>,
    /// Deepest part that trains: head, layer4, layer3 (the notebook) or all [default: layer3]
    #[arg(long, value_name = "TRAINABLE")]
    trainable: Option<Trainable>,
    /// Dropout probability of the head's two dropout layers [default: 0.25]
    #[arg(long, value_name = "HEAD_DROPOUT")]
    head_dropout: Option<f64>,
    /// Seed for shuffling and dropout [default: 42]
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// auto, cpu, cuda, cuda:N or metal [default: auto]
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Initial weights: imagenet (Hugging Face Hub, cached; LESION_HUB_TIMEOUT_SECS sets the Hub timeouts), none (random init) or a safetensors file [default: imagenet]
    #[arg(long, value_name = "imagenet|none|PATH")]
    weights: Option<String>,
    /// Loss weight of each class: none, or balanced (scikit-learn's n / (classes x count), from the train split) [default: none]
    #[arg(long, value_name = "WEIGHTS")]
    class_weights: Option<ClassWeights>,
    /// How each epoch draws its images: shuffle (every image once) or balanced (as many draws as images, with replacement, classes equally likely) [default: shuffle]
    #[arg(long, value_name = "SAMPLER")]
    sampler: Option<Sampler>,
    /// Label smoothing of the training loss, in [0, 1) [default: 0]
    #[arg(long, value_name = "EPS")]
    label_smoothing: Option<f64>,
    /// Learning rate per step of every group, from its own rate: constant, cosine (linear warm-up, then cosine decay to 0) or onecycle (PyTorch's OneCycleLR) [default: constant]
    #[arg(long, value_name = "SCHEDULE")]
    schedule: Option<Schedule>,
    /// Warm-up epochs of --schedule cosine, or the rising part of onecycle (default there: 30% of the run)
    #[arg(long, value_name = "EPOCHS")]
    warmup_epochs: Option<usize>,
    /// K-fold data (`lesion-prep --folds K`): validate on fold I and train on the other
    /// folds (I from 0 to K-1); recorded in the run's config.json.
    #[arg(long, value_name = "I", conflicts_with = "resume")]
    fold: Option<u32>,
    /// Replace an existing run folder.
    #[arg(long)]
    force: bool,
    /// CPU: let training use F(4x4, 3x3) Winograd convolutions too (about 15% faster epochs at
    /// 224 px; gradients about 10x further from PyTorch's, so results change; off by default).
    #[arg(long)]
    winograd_4x4: bool,
    /// Frozen layers' BatchNorm in eval mode (ImageNet statistics); their output is then
    /// cached per image in RUN_DIR/cache/ and later epochs run only the trainable layers.
    /// Does nothing with --trainable all.
    #[arg(long)]
    freeze_bn: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

impl Cli {
    /// The library configuration these options describe (for a new run).
    pub fn config(&self) -> TrainConfig {
        let d = TrainConfig::for_recipe(self.recipe.unwrap_or_default());
        TrainConfig {
            data: self.data.clone().unwrap_or(d.data),
            out: self.out.clone().unwrap_or(d.out),
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            patience: self.patience.unwrap_or(d.patience),
            monitor: self.monitor.unwrap_or(d.monitor),
            lr_head: self.lr_head.unwrap_or(d.lr_head),
            lr_layer4: self.lr_layer4.unwrap_or(d.lr_layer4),
            lr_layer3: self.lr_layer3.unwrap_or(d.lr_layer3),
            lr_backbone: self.lr_backbone.unwrap_or(d.lr_backbone),
            trainable: self.trainable.unwrap_or(d.trainable),
            head_dropout: self.head_dropout.unwrap_or(d.head_dropout),
            seed: self.seed.unwrap_or(d.seed),
            device: self.device.clone().unwrap_or(d.device),
            weights: self.weights.clone().unwrap_or(d.weights),
            force: self.force,
            winograd_4x4: self.winograd_4x4,
            recipe: d.recipe,
            class_weights: self.class_weights.unwrap_or(d.class_weights),
            sampler: self.sampler.unwrap_or(d.sampler),
            label_smoothing: self.label_smoothing.unwrap_or(d.label_smoothing),
            schedule: self.schedule.unwrap_or(d.schedule),
            // A recipe's warm-up belongs to its schedule.
            warmup_epochs: self.warmup_epochs.or(d
                .warmup_epochs
                .filter(|_| self.schedule.unwrap_or(d.schedule) == d.schedule)),
            freeze_bn: self.freeze_bn,
            fold: self.fold,
        }
    }

    /// The options given with `--resume`; those a run keeps from its start are refused
    /// (every one given is named).
    // The library's one error type, so that the exit code follows it; called once.
    #[allow(clippy::result_large_err)]
    pub fn resume_options(&self) -> lesion::Result<ResumeOptions> {
        let fixed: Vec<&str> = [
            ("--batch-size", self.batch_size.is_some()),
            ("--monitor", self.monitor.is_some()),
            ("--trainable", self.trainable.is_some()),
            ("--head-dropout", self.head_dropout.is_some()),
            ("--seed", self.seed.is_some()),
            ("--weights", self.weights.is_some()),
            ("--winograd-4x4", self.winograd_4x4),
            ("--recipe", self.recipe.is_some()),
            ("--class-weights", self.class_weights.is_some()),
            ("--sampler", self.sampler.is_some()),
            ("--label-smoothing", self.label_smoothing.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--warmup-epochs", self.warmup_epochs.is_some()),
            ("--freeze-bn", self.freeze_bn),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        if !fixed.is_empty() {
            return Err(lesion::Error::InvalidOption(format!(
                "{} cannot be given with --resume: a resumed run keeps the value it started \
                 with (see its config.json); only --epochs, --patience, the learning rates and \
                 --device may change (start a new run to change the others)",
                fixed.join(", ")
            )));
        }
        Ok(ResumeOptions {
            epochs: self.epochs,
            patience: self.patience,
            lr_head: self.lr_head,
            lr_layer4: self.lr_layer4,
            lr_layer3: self.lr_layer3,
            lr_backbone: self.lr_backbone,
            device: self.device.clone(),
        })
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let summary = match &cli.resume {
        Some(dir) => lesion::train::resume(dir, &cli.resume_options()?, !cli.quiet)
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
        assert!(!cfg.freeze_bn);
        let cli = Cli::try_parse_from(["lesion-train", "--data", "d", "--out", "r", "--freeze-bn"])
            .unwrap();
        assert!(cli.config().freeze_bn);
    }

    #[test]
    fn the_fold_is_passed_through_and_kept_on_resume() {
        assert_eq!(parse(&[]).fold, None);
        assert_eq!(parse(&["--fold", "2"]).fold, Some(2));
        let err =
            Cli::try_parse_from(["lesion-train", "--resume", "r", "--fold", "1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err =
            Cli::try_parse_from(["lesion-train", "--data", "d", "--out", "r", "--fold", "-1"])
                .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn resume_conflicts_with_out() {
        let err = Cli::try_parse_from(["lesion-train", "--resume", "r", "--out", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn help_shows_the_library_defaults() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_help().to_string();
        let d = TrainConfig::default();
        for (flag, default) in [
            ("--epochs", d.epochs.to_string()),
            ("--batch-size", d.batch_size.to_string()),
            ("--patience", d.patience.to_string()),
            ("--monitor", d.monitor.to_string()),
            ("--lr-head", d.lr_head.to_string()),
            ("--lr-layer4", d.lr_layer4.to_string()),
            ("--lr-layer3", d.lr_layer3.to_string()),
            ("--lr-backbone", d.lr_backbone.to_string()),
            ("--trainable", d.trainable.to_string()),
            ("--head-dropout", d.head_dropout.to_string()),
            ("--seed", d.seed.to_string()),
            ("--device", d.device.clone()),
            ("--weights", d.weights.clone()),
            ("--recipe", d.recipe.to_string()),
            ("--class-weights", d.class_weights.to_string()),
            ("--sampler", d.sampler.to_string()),
            ("--label-smoothing", d.label_smoothing.to_string()),
            ("--schedule", d.schedule.to_string()),
        ] {
            let line = help
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
                .unwrap_or_else(|| panic!("{flag} missing from the help:\n{help}"));
            assert!(
                line.ends_with(&format!("[default: {default}]")),
                "{flag}: {line}"
            );
        }
    }

    #[test]
    fn resume_takes_the_changeable_options_and_refuses_the_rest() {
        let cli = Cli::try_parse_from([
            "lesion-train",
            "--resume",
            "r",
            "--lr-head",
            "0.5",
            "--epochs",
            "7",
            "--patience",
            "2",
            "--device",
            "cpu",
        ])
        .unwrap();
        assert_eq!(
            cli.resume_options().unwrap(),
            ResumeOptions {
                epochs: Some(7),
                patience: Some(2),
                lr_head: Some(0.5),
                device: Some("cpu".into()),
                ..ResumeOptions::default()
            }
        );
        let plain = Cli::try_parse_from(["lesion-train", "--resume", "r"]).unwrap();
        assert_eq!(plain.resume_options().unwrap(), ResumeOptions::default());

        for (args, named) in [
            (&["--batch-size", "128"][..], "--batch-size"),
            (&["--monitor", "val_auc"], "--monitor"),
            (&["--trainable", "all"], "--trainable"),
            (&["--head-dropout", "0.5"], "--head-dropout"),
            (&["--seed", "42"], "--seed"),
            (&["--weights", "none"], "--weights"),
            (&["--winograd-4x4"], "--winograd-4x4"),
            (&["--recipe", "notebook"], "--recipe"),
            (&["--class-weights", "balanced"], "--class-weights"),
            (&["--sampler", "balanced"], "--sampler"),
            (&["--label-smoothing", "0.1"], "--label-smoothing"),
            (&["--schedule", "cosine"], "--schedule"),
            (&["--warmup-epochs", "1"], "--warmup-epochs"),
            (&["--freeze-bn"], "--freeze-bn"),
        ] {
            let cli = Cli::try_parse_from(
                ["lesion-train", "--resume", "r", "--lr-head", "0.5"]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            let err = cli.resume_options().unwrap_err();
            assert!(matches!(err, lesion::Error::InvalidOption(_)), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(
                msg.contains(named) && msg.contains("--resume"),
                "{named}: {msg}"
            );
        }
        let cli = Cli::try_parse_from([
            "lesion-train",
            "--resume",
            "r",
            "--seed",
            "1",
            "--batch-size",
            "8",
        ])
        .unwrap();
        let msg = cli.resume_options().unwrap_err().to_string();
        assert!(msg.contains("--batch-size, --seed"), "{msg}");
    }

    fn parse(args: &[&str]) -> TrainConfig {
        let base = ["lesion-train", "--data", "d", "--out", "r"];
        Cli::try_parse_from(base.iter().chain(args))
            .unwrap()
            .config()
    }

    #[test]
    fn the_notebook_recipe_is_the_default() {
        assert_eq!(parse(&["--recipe", "notebook"]), parse(&[]));
        let cfg = parse(&[]);
        assert_eq!(
            cfg,
            TrainConfig {
                data: "d".into(),
                out: "r".into(),
                ..TrainConfig::default()
            }
        );
        assert_eq!(cfg.recipe, Recipe::Notebook);
    }

    #[test]
    fn the_recommended_recipe_sets_its_values_and_explicit_options_win() {
        let cfg = parse(&["--recipe", "recommended"]);
        assert_eq!(cfg.recipe, Recipe::Recommended);
        assert_eq!(cfg.monitor, Monitor::ValLoss);
        assert_eq!(cfg.class_weights, ClassWeights::Balanced);
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs),
            (Schedule::Cosine, Some(1))
        );
        assert_eq!(
            (cfg.label_smoothing, cfg.sampler, cfg.patience),
            (0.1, Sampler::Shuffle, 5)
        );
        assert_eq!((cfg.lr_head, cfg.batch_size, cfg.epochs), (1e-2, 128, 50));

        let cfg = parse(&[
            "--recipe",
            "recommended",
            "--monitor",
            "val_auc",
            "--class-weights",
            "none",
            "--label-smoothing",
            "0",
            "--sampler",
            "balanced",
            "--warmup-epochs",
            "3",
            "--patience",
            "9",
        ]);
        assert_eq!(cfg.recipe, Recipe::Recommended);
        assert_eq!(cfg.monitor, Monitor::ValAuc);
        assert_eq!(cfg.class_weights, ClassWeights::None);
        assert_eq!((cfg.label_smoothing, cfg.sampler), (0.0, Sampler::Balanced));
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs, cfg.patience),
            (Schedule::Cosine, Some(3), 9)
        );

        // Another schedule drops the recipe's warm-up, unless one is given.
        let cfg = parse(&["--recipe", "recommended", "--schedule", "constant"]);
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs),
            (Schedule::Constant, None)
        );
        cfg.validate().unwrap();
        let cfg = parse(&["--recipe", "recommended", "--schedule", "onecycle"]);
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs),
            (Schedule::OneCycle, None)
        );
        let cfg = parse(&["--schedule", "onecycle", "--warmup-epochs", "2"]);
        assert_eq!(
            (cfg.schedule, cfg.warmup_epochs),
            (Schedule::OneCycle, Some(2))
        );
        assert_eq!(cfg.recipe, Recipe::Notebook);
    }

    #[test]
    fn option_values_parse() {
        let cfg = parse(&[
            "--monitor",
            "val_balanced_acc",
            "--class-weights",
            "balanced",
            "--sampler",
            "balanced",
            "--label-smoothing",
            "0.2",
            "--schedule",
            "onecycle",
        ]);
        assert_eq!(cfg.monitor, Monitor::ValBalancedAcc);
        assert_eq!(
            (cfg.class_weights, cfg.sampler),
            (ClassWeights::Balanced, Sampler::Balanced)
        );
        assert_eq!(
            (cfg.label_smoothing, cfg.schedule),
            (0.2, Schedule::OneCycle)
        );
        for (flag, value) in [
            ("--recipe", "best"),
            ("--class-weights", "inverse"),
            ("--sampler", "weighted"),
            ("--schedule", "linear"),
            ("--monitor", "val_f1"),
            ("--label-smoothing", "lots"),
            ("--warmup-epochs", "-1"),
        ] {
            let arg = format!("{flag}={value}");
            let err = Cli::try_parse_from(["lesion-train", "--data", "d", "--out", "r", &arg])
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
            let msg = err.to_string();
            assert!(msg.contains(flag) && msg.contains(value), "{flag}: {msg}");
        }
    }

    #[test]
    fn data_required_without_resume() {
        assert!(Cli::try_parse_from(["lesion-train", "--out", "r"]).is_err());
        assert!(Cli::try_parse_from(["lesion-train", "--resume", "r"]).is_ok());
    }
}

//! `lesion-eval`: evaluates a trained run on a prepared split (see `lesion::eval`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use lesion::cli::DeviceArg;
use lesion::eval::cv::CvOptions;
use lesion::eval::external::ExternalOptions;
use lesion::eval::{EvalOptions, ThresholdMethod};
use lesion::split::Split;

/// Evaluate a trained run: clinical metrics with bootstrap intervals, a decision threshold
/// chosen on the validation split (saved into the run for prediction), per-image
/// predictions, figures and a self-contained HTML report in <RUN>/eval-<SPLIT>/.
#[derive(Debug, Parser)]
#[command(
    name = "lesion-eval",
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  lesion-eval --run runs/default --data data/prepared\n  \
                  lesion-eval --run runs/default --data data/prepared --tta --target-sensitivity 0.95 --force\n  \
                  lesion-eval --cv runs/cv --data data/prepared-folds\n  \
                  lesion-eval --run runs/default --images other-hospital/   (external test set)"
)]
pub struct Cli {
    /// Run folder (its best.safetensors is evaluated) or a checkpoint file inside a run folder.
    #[arg(
        long,
        value_name = "RUN_DIR|CHECKPOINT",
        required_unless_present = "cv"
    )]
    run: Option<PathBuf>,
    /// Prepared dataset folder (output of `lesion-prep`); with --cv, the fold runs' own by
    /// default; with --images, only used to choose the threshold on its validation split when
    /// the run has none yet.
    #[arg(long, value_name = "PREPARED_DIR", required_unless_present_any = ["cv", "images"])]
    data: Option<PathBuf>,
    /// Cross-validation: aggregate the fold runs CV_DIR/fold-0 .. fold-{K-1} (one per fold of
    /// data prepared with --folds K) into one evaluation of their pooled out-of-fold
    /// predictions, with per-fold figures and mean ± SD, in CV_DIR/eval/ (or --out).
    #[arg(long, value_name = "CV_DIR", conflicts_with_all = ["run", "split", "threshold_method", "target_sensitivity", "malignant", "images"])]
    cv: Option<PathBuf>,
    /// External test set: a labelled image folder (one sub-folder per class, mapped to the
    /// run's classes by name), evaluated whole with the run's threshold, preprocessed as the
    /// run's training data; the report goes to <RUN>/eval-external-<FOLDER NAME>/.
    #[arg(long, value_name = "FOLDER", conflicts_with_all = ["split", "malignant", "recompute_val"])]
    images: Option<PathBuf>,
    /// With --cv or --images: the output folder [default: CV_DIR/eval, or
    /// RUN/eval-external-<FOLDER NAME>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// With --images: a class mapping file (`folder = class` a line, `-` skips a folder).
    #[arg(long = "classes", value_name = "FILE", requires = "images")]
    classes_file: Option<PathBuf>,
    /// With --images: file the folder under a class of the run (`-` skips it); repeatable.
    #[arg(long = "group", value_name = "FOLDER=CLASS", requires = "images")]
    groups: Vec<String>,
    /// With --images: an unreadable image is an error (else it is reported and left out).
    #[arg(long, requires = "images")]
    strict: bool,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// How the decision threshold is chosen on the validation split [default: youden, or
    /// sensitivity when --target-sensitivity is given].
    #[arg(long, value_enum)]
    threshold_method: Option<MethodArg>,
    /// Sensitivity the threshold must reach on validation (implies --threshold-method
    /// sensitivity) [default: 0.95].
    #[arg(long, value_name = "FRACTION")]
    target_sensitivity: Option<f64>,
    /// Bootstrap resamples for the 95% confidence intervals (0: no intervals).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Test-time augmentation: average the logits of each image and its horizontal and
    /// vertical flips (also for the validation split that sets the threshold).
    #[arg(long)]
    tta: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArg,
    /// Replace an existing evaluation folder.
    #[arg(long)]
    force: bool,
    /// Run the validation split for the threshold even where the checkpoint holds the
    /// validation predictions lesion-train selected it on.
    #[arg(long)]
    recompute_val: bool,
    /// N classes: the classes whose summed probability is the probability of malignancy,
    /// replacing the run's own group (comma-separated class names, e.g. `mel,bcc`). Adds the
    /// malignant-vs-rest view with a threshold chosen on validation; `--malignant ''`
    /// evaluates without a group.
    #[arg(long, value_name = "CLASS,CLASS", value_delimiter = ',')]
    malignant: Option<Vec<String>>,
    /// No progress bars or stage messages (the result table is still printed).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SplitArg {
    Test,
    Val,
    Train,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    Youden,
    Sensitivity,
}

impl Cli {
    /// The library options these arguments describe.
    pub fn options(&self) -> anyhow::Result<EvalOptions> {
        let d = EvalOptions::default();
        if self.out.is_some() && self.cv.is_none() && self.images.is_none() {
            anyhow::bail!(lesion::Error::InvalidOption(
                "--out needs --cv or --images: an evaluation of one run's split is written into \
                 its run folder"
                    .into()
            ));
        }
        let method = match (self.threshold_method, self.target_sensitivity) {
            (Some(MethodArg::Youden), Some(_)) => anyhow::bail!(lesion::Error::InvalidOption(
                "--target-sensitivity needs --threshold-method sensitivity, not youden".into()
            )),
            (Some(MethodArg::Youden), None) | (None, None) => ThresholdMethod::Youden,
            (Some(MethodArg::Sensitivity), _) | (None, Some(_)) => ThresholdMethod::Sensitivity,
        };
        Ok(EvalOptions {
            run: self.run.clone().unwrap_or_default(),
            data: self.data.clone().unwrap_or_default(),
            split: match self.split {
                SplitArg::Test => Split::Test,
                SplitArg::Val => Split::Val,
                SplitArg::Train => Split::Train,
            },
            threshold_method: method,
            target_sensitivity: self.target_sensitivity.unwrap_or(d.target_sensitivity),
            bootstrap: self.bootstrap,
            seed: self.seed,
            tta: self.tta,
            batch_size: self.batch_size,
            device: self.device.device.clone(),
            force: self.force,
            recompute_val: self.recompute_val,
            progress: !self.quiet,
            // `--malignant ''` is the empty group.
            malignant: self
                .malignant
                .as_ref()
                .map(|names| names.iter().filter(|n| !n.is_empty()).cloned().collect()),
        })
    }

    /// The cross-validation options, when --cv is given.
    pub fn cv_options(&self) -> anyhow::Result<Option<CvOptions>> {
        let Some(cv_dir) = &self.cv else {
            return Ok(None);
        };
        Ok(Some(CvOptions {
            cv_dir: cv_dir.clone(),
            data: self.data.clone(),
            out: self.out.clone(),
            eval: self.options()?,
        }))
    }
}

impl Cli {
    /// The external evaluation these arguments describe, with --images.
    pub fn external_options(&self) -> anyhow::Result<Option<ExternalOptions>> {
        let Some(images) = &self.images else {
            return Ok(None);
        };
        let mut o = ExternalOptions::new(self.options()?, images);
        o.data = self.data.clone();
        o.out = self.out.clone();
        o.classes_file = self.classes_file.clone();
        o.groups = self.groups.clone();
        o.strict = self.strict;
        Ok(Some(o))
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(cv) = cli.cv_options()? {
        let summary = lesion::eval::cv::run(&cv)
            .with_context(|| format!("evaluating the cross-validation {}", cv.cv_dir.display()))?;
        println!("{summary}");
        return Ok(());
    }
    if let Some(ext) = cli.external_options()? {
        let done = lesion::eval::external::run(&ext).with_context(|| {
            format!(
                "evaluating {} on the external folder {}",
                ext.eval.run.display(),
                ext.images.display()
            )
        })?;
        println!(
            "external test set: {} ({} images) — not from the run's prepared data",
            done.data.folder.display(),
            done.data.images
        );
        println!("{}", done.summary);
        return Ok(());
    }
    let opts = cli.options()?;
    let summary = lesion::eval::run(&opts).with_context(|| {
        format!(
            "evaluating {} on {}",
            opts.run.display(),
            opts.data.display()
        )
    })?;
    println!("{summary}");
    Ok(())
}

lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let base = ["lesion-eval", "--run", "runs/r", "--data", "data/p"];
        Cli::try_parse_from(base.into_iter().chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).options().unwrap();
        assert_eq!(o.run, PathBuf::from("runs/r"));
        assert_eq!(o.data, PathBuf::from("data/p"));
        assert_eq!(o.split, Split::Test);
        assert_eq!(o.threshold_method, ThresholdMethod::Youden);
        assert_eq!((o.bootstrap, o.seed, o.batch_size), (1000, 42, 64));
        assert!(!o.tta && !o.force && o.progress);
        assert_eq!(o.malignant, None);
    }

    #[test]
    fn malignant_takes_a_comma_separated_list() {
        let o = parse(&["--malignant", "mel,bcc"]).options().unwrap();
        assert_eq!(
            o.malignant,
            Some(vec!["mel".to_string(), "bcc".to_string()])
        );
        let none = parse(&["--malignant", ""]).options().unwrap();
        assert_eq!(none.malignant, Some(Vec::new()));
    }

    #[test]
    fn target_sensitivity_selects_the_method() {
        let o = parse(&["--target-sensitivity", "0.9"]).options().unwrap();
        assert_eq!(o.threshold_method, ThresholdMethod::Sensitivity);
        assert_eq!(o.target_sensitivity, 0.9);
        let o = parse(&["--threshold-method", "sensitivity"])
            .options()
            .unwrap();
        assert_eq!(o.target_sensitivity, 0.95);
        let err = parse(&[
            "--threshold-method",
            "youden",
            "--target-sensitivity",
            "0.9",
        ])
        .options()
        .unwrap_err();
        assert!(
            err.to_string().contains("--threshold-method sensitivity"),
            "{err}"
        );
    }

    #[test]
    fn cv_takes_a_folder_and_an_optional_data_and_out() {
        let cli = Cli::try_parse_from(["lesion-eval", "--cv", "runs/cv"]).unwrap();
        let cv = cli.cv_options().unwrap().unwrap();
        assert_eq!(cv.cv_dir, PathBuf::from("runs/cv"));
        assert_eq!((cv.data, cv.out), (None, None));
        assert_eq!(cv.eval.bootstrap, 1000);
        let cli = Cli::try_parse_from([
            "lesion-eval",
            "--cv",
            "c",
            "--data",
            "p",
            "--out",
            "o",
            "--bootstrap",
            "0",
            "--force",
        ])
        .unwrap();
        let cv = cli.cv_options().unwrap().unwrap();
        assert_eq!(cv.data, Some(PathBuf::from("p")));
        assert_eq!(cv.out, Some(PathBuf::from("o")));
        assert!(cv.eval.force && cv.eval.bootstrap == 0);
        assert!(parse(&[]).cv_options().unwrap().is_none());
        for bad in [
            &["--cv", "c", "--run", "r"][..],
            &["--cv", "c", "--split", "val"],
            &["--cv", "c", "--target-sensitivity", "0.9"],
        ] {
            let args = ["lesion-eval"].into_iter().chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} was accepted");
        }
        let err = parse(&["--out", "o"]).options().unwrap_err();
        assert!(
            err.to_string().contains("--out needs --cv or --images"),
            "{err}"
        );
    }

    #[test]
    fn split_and_flags() {
        let o = parse(&["--split", "val", "--tta", "--quiet", "--force"])
            .options()
            .unwrap();
        assert_eq!(o.split, Split::Val);
        assert!(o.tta && o.force && !o.progress);
        let base = ["lesion-eval", "--run", "r", "--data", "d"];
        assert!(Cli::try_parse_from(base.into_iter().chain(["--split", "holdout"])).is_err());
        assert!(
            Cli::try_parse_from(["lesion-eval", "--run", "r"]).is_err(),
            "--data is required"
        );
    }

    #[test]
    fn images_makes_an_external_evaluation() {
        let cli = Cli::try_parse_from([
            "lesion-eval",
            "--run",
            "r",
            "--images",
            "ext",
            "--group",
            "mel=Malignant",
            "--group",
            "notes=-",
            "--strict",
            "--out",
            "o",
        ])
        .unwrap();
        let o = cli.external_options().unwrap().unwrap();
        assert_eq!(o.images, PathBuf::from("ext"));
        assert_eq!(o.data, None);
        assert_eq!(o.out, Some(PathBuf::from("o")));
        assert_eq!(o.groups, ["mel=Malignant", "notes=-"]);
        assert!(o.strict && o.classes_file.is_none());
        assert_eq!(o.eval.run, PathBuf::from("r"));
        let with_data = Cli::try_parse_from([
            "lesion-eval",
            "--run",
            "r",
            "--images",
            "ext",
            "--data",
            "p",
        ])
        .unwrap();
        let o = with_data.external_options().unwrap().unwrap();
        assert_eq!(o.data, Some(PathBuf::from("p")));
        assert!(parse(&[]).external_options().unwrap().is_none());
        // Options of the prepared splits do not apply to a folder, and the folder's options
        // need one.
        for bad in [
            &["--images", "ext", "--split", "val"][..],
            &["--images", "ext", "--malignant", "mel"],
            &["--images", "ext", "--recompute-val"],
            &["--data", "p", "--strict"],
            &["--data", "p", "--group", "a=b"],
        ] {
            let args = ["lesion-eval", "--run", "r"]
                .into_iter()
                .chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} parsed");
        }
    }
}

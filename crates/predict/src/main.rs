//! `lesion-predict`: classifies photos with a trained run (see `lesion::predict`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use lesion::cli::DeviceArg;
use lesion::predict::{OutputFormat, PredictOptions, PredictReport};

/// Classify skin-lesion photos with a trained run. A two-class run gives the probability of
/// malignancy and the label at the run's decision threshold (chosen by lesion-eval on the
/// validation split). A run with more classes gives the most probable class and its
/// probability (--top-k K: the K most probable), and every class's probability in CSV and
/// JSON; where the run has malignant classes, also their summed probability and the
/// decision at the threshold.
///
/// Images are decoded, resized and normalised exactly as lesion-prep prepared the run's
/// validation and test images. A research tool, not a diagnosis.
#[derive(Debug, Parser)]
#[command(
    name = "lesion-predict",
    version,
    about,
    after_help = "Examples:\n  lesion-predict --run runs/demo photo.jpg\n  \
                  lesion-predict --run runs/demo photos/ --format csv > predictions.csv\n  \
                  lesion-predict --run runs/demo photos/ --explain heatmaps/\n  \
                  lesion-predict --run runs/isic3 photo.jpg --top-k 3\n  \
                  lesion-predict --run runs/isic3 photos/ --explain heatmaps/ \
                  --explain-class melanoma\n\n\
                  Exit status: 0 all predicted, 1 some file failed (the others are still \
                  predicted) or another error, 2 bad usage or input."
)]
pub struct Cli {
    /// Run folder written by lesion-train (and evaluated by lesion-eval, which stores the
    /// decision threshold in it).
    #[arg(long, value_name = "RUN_DIR")]
    run: PathBuf,
    /// Image files, or folders searched recursively (files are recognised by content;
    /// other files in folders are skipped and listed).
    #[arg(required = true, value_name = "IMAGE_OR_DIR")]
    inputs: Vec<PathBuf>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Decision threshold on the malignant probability, instead of the run's threshold.json
    /// (not for a run with more than two classes and no malignant ones).
    #[arg(long, value_name = "PROBABILITY")]
    threshold: Option<f64>,
    /// Test-time augmentation: average the logits of each image and its horizontal and
    /// vertical flips [default: as the run's threshold was chosen].
    #[arg(long, conflicts_with = "no_tta")]
    tta: bool,
    /// No test-time augmentation, even if the run's threshold was chosen with it.
    #[arg(long)]
    no_tta: bool,
    #[command(flatten)]
    device: DeviceArg,
    /// Write a Grad-CAM heatmap per image, as PNG, into this folder: where the evidence for
    /// the predicted class came from (two classes: the malignant score).
    #[arg(long, value_name = "OUT_DIR")]
    explain: Option<PathBuf>,
    /// The class the heatmaps explain, instead of each image's predicted class.
    #[arg(long, value_name = "CLASS", requires = "explain")]
    explain_class: Option<String>,
    /// List the K most probable classes of each image, with their probabilities, in the
    /// table.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Overwrite existing heatmaps in the --explain folder.
    #[arg(long)]
    force: bool,
    /// No progress bar and no summary on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

impl Cli {
    /// The library options these arguments describe.
    pub fn options(&self) -> PredictOptions {
        PredictOptions {
            threshold: self.threshold,
            tta: match (self.tta, self.no_tta) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            device: self.device.device.clone(),
            explain: self.explain.clone(),
            batch_size: self.batch_size,
            force: self.force,
            progress: !self.quiet,
            top_k: self.top_k,
            explain_class: self.explain_class.clone(),
            ..PredictOptions::new(&self.run, self.inputs.clone())
        }
    }

    fn format(&self) -> OutputFormat {
        match self.format {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
        }
    }
}

fn summarise(report: &PredictReport) {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    for s in &report.skipped {
        eprintln!("skipped: {}: {}", s.path.display(), s.reason);
    }
    for r in report.results.iter().filter(|r| !r.is_ok()) {
        eprintln!(
            "error: {}: {}",
            r.path.display(),
            r.error.as_deref().unwrap_or("")
        );
    }
    let ok = report.results.len() - report.failures();
    eprintln!(
        "{ok} predicted, {} failed, {} skipped; threshold {}; TTA {}; model {} on {}",
        report.failures(),
        report.skipped.len(),
        report.threshold_source,
        if report.tta { "on" } else { "off" },
        report.model_id,
        report.device,
    );
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let report = lesion::predict::run(&cli.options())
        .with_context(|| format!("predicting with {}", cli.run.display()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(report.render(cli.format()).as_bytes())
        .context("writing the results")?;
    out.flush().context("writing the results")?;
    if !cli.quiet {
        summarise(&report);
    } else {
        for r in report.results.iter().filter(|r| !r.is_ok()) {
            eprintln!(
                "error: {}: {}",
                r.path.display(),
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(if report.failures() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

lesion::main!(Cli, run);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["lesion-predict", "--run", "r", "a.jpg", "dir"]).unwrap();
        let o = cli.options();
        assert_eq!(o.inputs, vec![PathBuf::from("a.jpg"), PathBuf::from("dir")]);
        assert_eq!(o.batch_size, 32);
        assert_eq!(o.tta, None);
        assert_eq!(o.threshold, None);
        assert_eq!(o.device, "auto");
        assert!(o.progress);
    }

    #[test]
    fn tta_flags() {
        let parse = |args: &[&str]| {
            let mut v = vec!["lesion-predict", "--run", "r", "x"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        assert_eq!(parse(&["--tta"]).unwrap().options().tta, Some(true));
        assert_eq!(parse(&["--no-tta"]).unwrap().options().tta, Some(false));
        assert!(parse(&["--tta", "--no-tta"]).is_err());
    }

    #[test]
    fn class_options() {
        let parse = |args: &[&str]| {
            let mut v = vec!["lesion-predict", "--run", "r", "x"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        let o = parse(&["--top-k", "3"]).unwrap().options();
        assert_eq!((o.top_k, o.explain_class), (Some(3), None));
        let o = parse(&["--explain", "h", "--explain-class", "nevus"])
            .unwrap()
            .options();
        assert_eq!(o.explain_class.as_deref(), Some("nevus"));
        // A class to explain without heatmaps to write is a mistake.
        assert!(parse(&["--explain-class", "nevus"]).is_err());
        assert!(parse(&["--top-k", "-1"]).is_err());
    }

    #[test]
    fn needs_run_and_input() {
        assert!(Cli::try_parse_from(["lesion-predict", "a.jpg"]).is_err());
        assert!(Cli::try_parse_from(["lesion-predict", "--run", "r"]).is_err());
    }
}

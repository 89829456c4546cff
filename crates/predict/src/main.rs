//! `lesion-predict`: classifies photos with a trained run (see `lesion::predict`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use lesion::cli::DeviceArg;
use lesion::predict::{OutputFormat, PredictOptions, PredictReport};

/// Classify skin-lesion photos with a trained run: the probability of malignancy and the
/// label at the run's decision threshold (chosen by lesion-eval on the validation split).
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
                  lesion-predict --run runs/demo photos/ --explain heatmaps/\n\n\
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
    /// Decision threshold on the malignant probability, instead of the run's threshold.json.
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
    /// Write a Grad-CAM heatmap (where the malignant score came from) per image, as PNG,
    /// into this folder.
    #[arg(long, value_name = "OUT_DIR")]
    explain: Option<PathBuf>,
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
    fn needs_run_and_input() {
        assert!(Cli::try_parse_from(["lesion-predict", "a.jpg"]).is_err());
        assert!(Cli::try_parse_from(["lesion-predict", "--run", "r"]).is_err());
    }
}

//! The evaluation stage (`lesion-eval`): clinical metrics, per-image predictions, figures
//! and a self-contained HTML report for one checkpoint on one split of a prepared dataset.
//!
//! Data flow: the loader yields NCHW f32 batches `[b, 3, S, S]` normalised with the
//! manifest's mean/std; the model runs in eval mode (running statistics, no dropout) and
//! each image's malignant probability is `sigmoid(logit)` as f64 — with `tta`, the sigmoid
//! of the mean logit of the image and its horizontal and vertical flips
//! ([`crate::infer::predict_split`]). Labels are `0` benign, `1` malignant (positive).
//!
//! The decision threshold is chosen on the **validation** split (Youden's J, or the highest
//! threshold reaching a target sensitivity) and then applied to the evaluated split, so the
//! test figures at that threshold are not tuned on the test images. It is written into the
//! run ([`THRESHOLD_FILE`], see [`Threshold`]) so that prediction uses it. A
//! `best.safetensors` written by `lesion-train` holds the validation predictions it was
//! selected on; they are used instead of a second validation pass when the dataset is the
//! run's own (same manifest hash, same images in the same order) and there is no TTA
//! ([`EvalOptions::recompute_val`] turns this off). Either way the predictions come from the
//! same weights on the same images, in eval mode.
//!
//! A run trained on one fold of K-fold data (`lesion-train --fold I`) is evaluated on its
//! data with that fold selected ([`open_run_data`]): its validation split, which chooses
//! the threshold, is the held-out fold. [`run_predictions`] gives a run's predictions on
//! one split without the report, for evaluating the folds together.
//!
//! Outputs, in `<run>/eval-<split>/` (built in a staging folder and renamed into place,
//! refused if present unless `force`): [`METRICS_FILE`], [`PREDICTIONS_FILE`], `roc.png`,
//! `pr.png`, `confusion.png`, `calibration.png`, `errors.png` and `report.html`. A
//! checkpoint other than the run's `best.safetensors` gets `eval-<split>-<stem>/` and
//! `threshold-<stem>.json` instead, so it never replaces the best checkpoint's threshold.
//! `force` replaces only an evaluation folder ([`OUTPUT_KIND`]), and never one that holds
//! the prepared data or the checkpoint.
//!
//! ## N classes
//!
//! A run of N > 2 classes ([`crate::classes::Classes`]; labels are class indices, each
//! image's class probabilities `softmax(logits)`) is measured with
//! [`crate::metrics::multiclass`] (scikit-learn's conventions, documented there), the
//! prediction being the most probable class. Its `metrics.json` has, besides the header
//! fields:
//! - `multiclass` ([`MulticlassSection`]): `class_names`; `n`, `n_classes`, `accuracy`,
//!   `balanced_accuracy`, `macro_precision`, `macro_recall`, `macro_f1`, `weighted_f1`,
//!   `macro_roc_auc`, `weighted_roc_auc` (`null` when undefined), `top_k_accuracy`
//!   (`[{k, accuracy}]`, k = 1..N-1), `log_loss`, `confusion_matrix` (`[true][predicted]`
//!   counts), `confusion_normalized` (rows divided by their sums), `top_class_calibration`
//!   (`{ece, bins}`); **`per_class[k]`** for class `k` in label order: `support`,
//!   `predicted`, `recall`, `specificity`, `precision`, `f1`, `roc_auc` (`null` when the
//!   class or its complement is absent); and `bootstrap` (`null` with `bootstrap` 0):
//!   `n_resamples`, `seed`, `confidence`, `accuracy`, `balanced_accuracy`, `macro_f1`,
//!   `macro_roc_auc`, and `per_class[k]` with the intervals `{estimate, lower, upper,
//!   n_used}` of `recall`, `specificity`, `precision`, `f1` and `roc_auc`;
//! - `malignant`: the classes of the malignant group (the run's, or
//!   [`EvalOptions::malignant`]); absent without one;
//! - where a group exists, the two-class fields exactly as for a binary run (`threshold`,
//!   `val_from_checkpoint`, `at_default_threshold`, `at_chosen_threshold`, `bootstrap`,
//!   `calibration`), computed from the group's summed probability against
//!   `label is malignant`, with the threshold chosen on validation and written to the run as
//!   for two classes. Without a group these fields are absent and no threshold is written.
//!
//! Its `predictions.csv` has `path,label,class`, a column `p_<class>` per class (full
//! precision), `predicted,predicted_class,predicted_probability`, with a group
//! `malignant_probability,malignant_prediction`, and `source_index`; its
//! figures are `roc.png` (one one-vs-rest curve per class), `confusion.png` (N×N),
//! `calibration.png` (top class), plus, with a group, the binary figures as
//! [`MALIGNANT_ROC_FILE`], [`MALIGNANT_PR_FILE`], [`MALIGNANT_CONFUSION_FILE`],
//! [`MALIGNANT_CALIBRATION_FILE`] and `errors.png`. Two-class runs are unchanged.
//!
//! ## External test sets
//!
//! [`external::run`] (`lesion-eval --images FOLDER`) evaluates a labelled image folder that
//! was never prepared, whole, through the prediction path's preprocessing and with the run's
//! threshold, into the same outputs marked external (see [`external`]).

mod choose;
pub mod cv;
mod errors;
pub mod external;
mod fold;
mod inference;
mod metrics;
mod options;
pub mod plots;
mod predictions;
pub mod report;
mod summary;

pub use errors::{confident_errors, ErrorCase};
pub use fold::{open_run_data, run_predictions, RunPredictions};
pub use metrics::{BinaryView, BootstrapPair, EvalMetrics, MulticlassSection};
pub use options::EvalOptions;
pub use summary::EvalSummary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::classes::Classes;
use crate::device::describe;
use crate::fsutil::{self, write_atomic, write_json_atomic, OutputKind, StagingDir};
use crate::infer::SplitPredictions;
use crate::run::{history, EpochRecord, Run, CURVES_FILE, HISTORY_FILE};
pub use crate::run::{
    read_threshold, read_threshold_file, threshold_path, Threshold, ThresholdMethod, THRESHOLD_FILE,
};
use crate::Result;

/// Every figure of an evaluation, as [`EvalMetrics`].
pub const METRICS_FILE: &str = "metrics.json";
/// One row per image: path, label, probability, prediction.
pub const PREDICTIONS_FILE: &str = "predictions.csv";
pub const ROC_FILE: &str = "roc.png";
pub const PR_FILE: &str = "pr.png";
pub const CONFUSION_FILE: &str = "confusion.png";
pub const CALIBRATION_FILE: &str = "calibration.png";
pub const ERRORS_FILE: &str = "errors.png";
/// N classes with a malignant group: the malignant-vs-benign figures.
pub const MALIGNANT_ROC_FILE: &str = "malignant-roc.png";
pub const MALIGNANT_PR_FILE: &str = "malignant-pr.png";
pub const MALIGNANT_CONFUSION_FILE: &str = "malignant-confusion.png";
pub const MALIGNANT_CALIBRATION_FILE: &str = "malignant-calibration.png";
/// The binary figures' files: ROC, PR, confusion, calibration.
pub(crate) const BINARY_FIGURES: [&str; 4] = [ROC_FILE, PR_FILE, CONFUSION_FILE, CALIBRATION_FILE];
pub(crate) const MALIGNANT_FIGURES: [&str; 4] = [
    MALIGNANT_ROC_FILE,
    MALIGNANT_PR_FILE,
    MALIGNANT_CONFUSION_FILE,
    MALIGNANT_CALIBRATION_FILE,
];
/// How the N-class figures name the two sides of the malignant group.
const GROUP_REST: &str = "not malignant";
const GROUP_MALIGNANT: &str = "malignant";
pub const REPORT_FILE: &str = "report.html";
/// Every file an evaluation folder holds.
pub const OUTPUT_FILES: [&str; 8] = [
    METRICS_FILE,
    PREDICTIONS_FILE,
    ROC_FILE,
    PR_FILE,
    CONFUSION_FILE,
    CALIBRATION_FILE,
    ERRORS_FILE,
    REPORT_FILE,
];
/// Value of [`EvalMetrics::format`].
pub const METRICS_FORMAT: &str = "lesion-eval-metrics";
pub const METRICS_FORMAT_VERSION: u32 = 1;
/// What an evaluation folder is, for `--force`: one whose `metrics.json` eval wrote.
pub const OUTPUT_KIND: OutputKind = OutputKind {
    what: "an evaluation folder (one with the metrics.json lesion-eval writes)",
    is_ours: |dir| fsutil::has_format_marker(dir, METRICS_FILE, METRICS_FORMAT),
};
/// Most false negatives (and, separately, false positives) shown in `errors.png`.
pub const MAX_ERRORS_SHOWN: usize = 8;

/// Runs the whole evaluation described by `opts` (see the module docs).
pub fn run(opts: &EvalOptions) -> Result<EvalSummary> {
    let start = Instant::now();
    opts.validate()?;
    let target = Run::resolve(&opts.run)?;
    let cfg = &target.config;
    let data = open_run_data(&opts.data, &target, opts.split)?;
    target.check_compatible(&data)?;
    let out_dir = target.eval_dir(opts.split);
    // Refuse an existing output before any expensive work.
    fsutil::remove_stale_temps(&target.run_dir);
    let inputs = [data.dir(), target.checkpoint.as_path()];
    let stage = StagingDir::new(&out_dir, opts.force, OUTPUT_KIND, &inputs)?;
    inference::check_data(opts, &data)?;

    // Score both splits, choose the threshold on validation, measure the evaluated split.
    let (loaded, stored_val) = inference::load(opts, &target.checkpoint, cfg, &data)?;
    let scored = inference::predict(opts, &loaded, &data, stored_val)?;
    let classes = &loaded.classes;
    let names = data.class_names();
    // The malignant-vs-benign view: the predictions themselves for two classes, labels
    // mapped to `is malignant` for N classes with a malignant group.
    let binary_preds = if classes.is_binary() {
        Some((scored.val.clone(), scored.preds.clone()))
    } else if classes.positive_group().is_some() {
        Some((
            malignant_view(&scored.val, classes),
            malignant_view(&scored.preds, classes),
        ))
    } else {
        None
    };
    let mut binary = None;
    if let Some((val, preds)) = &binary_preds {
        let threshold = choose::on_validation(opts, val, data.dir(), &target.checkpoint, &loaded)?;
        let measured = metrics::measure(opts, preds, threshold.threshold, data.dir())?;
        binary = Some((threshold, measured));
    }
    let multiclass = if classes.is_binary() {
        None
    } else {
        Some(metrics::measure_multiclass(
            opts,
            &scored.preds,
            names,
            data.dir(),
        )?)
    };
    let warnings = metrics::warnings(
        opts,
        binary.as_ref().map(|(t, m)| (t, m)),
        multiclass.as_ref(),
        &loaded.manifest_sha256,
        &cfg.manifest_sha256,
    );
    let (binary_view, curves) = binary
        .map(|(threshold, measured)| measured.into_view(threshold, scored.val_from_checkpoint))
        .unzip();
    let mut metrics_doc = EvalMetrics {
        format: METRICS_FORMAT.into(),
        format_version: METRICS_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        split: opts.split,
        tta: opts.tta,
        device: describe(&loaded.device),
        run_dir: absolute(&target.run_dir),
        checkpoint: absolute(&target.checkpoint),
        checkpoint_sha256: loaded.checkpoint_sha256.clone(),
        checkpoint_epoch: loaded.epoch,
        data_dir: absolute(data.dir()),
        manifest_sha256: loaded.manifest_sha256.clone(),
        trained_on_manifest_sha256: cfg.manifest_sha256.clone(),
        class_names: names.to_vec(),
        image_size: data.image_size(),
        binary: binary_view,
        warnings,
        seconds: 0.0,
        malignant: classes.malignant_record(),
        multiclass,
    };

    // The outputs, into the staging folder.
    let dir = stage.path();
    let paths = predictions::image_paths(data.manifest(), &scored.preds);
    let threshold = metrics_doc.binary.as_ref().map(|b| b.threshold.clone());
    // Prediction applies threshold.json to the run's own malignant group: a threshold chosen
    // for another group (`--malignant`) stays in this evaluation's metrics.json only.
    let threshold_path = target.threshold_path();
    let saved_threshold =
        (threshold.is_some() && *classes == cfg.classes()?).then_some(threshold_path.as_path());
    let (mut fns, mut fps) = (Vec::new(), Vec::new());
    if let (Some(view), Some((roc, pr)), Some((_, bin_preds))) =
        (&metrics_doc.binary, &curves, &binary_preds)
    {
        let thr = view.threshold.threshold;
        if classes.is_binary() {
            plots::draw_metrics(dir, view, roc, pr, names, &BINARY_FIGURES)?;
        } else {
            let group = [GROUP_REST.to_string(), GROUP_MALIGNANT.to_string()];
            plots::draw_metrics(dir, view, roc, pr, &group, &MALIGNANT_FIGURES)?;
        }
        (fns, fps) = errors::draw_errors(dir, bin_preds, &paths, &data, opts.split, thr)?;
    }
    match &metrics_doc.multiclass {
        None => predictions::write(
            &dir.join(PREDICTIONS_FILE),
            &scored.preds,
            &paths,
            names,
            threshold.as_ref().map_or(0.5, |t| t.threshold),
        )?,
        Some(mc) => {
            plots::draw_multiclass(dir, mc, &scored.preds.labels, &scored.preds.class_probs)?;
            predictions::write_multiclass(
                &dir.join(PREDICTIONS_FILE),
                &scored.preds,
                &paths,
                names,
                threshold.as_ref().map(|t| t.threshold),
            )?
        }
    }
    let history: Vec<EpochRecord> =
        history::read(&target.run_dir.join(HISTORY_FILE)).unwrap_or_default();
    let curves_png = std::fs::read(target.run_dir.join(CURVES_FILE)).ok();
    metrics_doc.seconds = start.elapsed().as_secs_f64();
    let report_ctx = report::ReportInput {
        metrics: &metrics_doc,
        run_config: cfg,
        manifest: data.manifest(),
        history: &history,
        curves_png: curves_png.as_deref(),
        figures_dir: dir,
        false_negatives: &fns,
        false_positives: &fps,
        out_dir: &out_dir,
        threshold_file: saved_threshold,
    };
    let html = report::render(&report_ctx)?;
    write_atomic(dir.join(REPORT_FILE), html.as_bytes())?;
    write_json_atomic(dir.join(METRICS_FILE), &metrics_doc)?;

    let out_dir = stage.commit()?;
    // Only a complete evaluation may change the threshold prediction uses.
    let threshold_file = match (&threshold, saved_threshold) {
        (Some(t), Some(file)) => {
            write_json_atomic(file, t)?;
            Some(file.to_path_buf())
        }
        _ => None,
    };
    Ok(EvalSummary {
        report: out_dir.join(REPORT_FILE),
        out_dir,
        threshold_file,
        metrics: metrics_doc,
    })
}

/// `preds` with each label replaced by `1` for a class of the malignant group and `0`
/// otherwise (`probs` already holds the group's summed probability).
fn malignant_view(preds: &SplitPredictions, classes: &Classes) -> SplitPredictions {
    SplitPredictions {
        labels: preds
            .labels
            .iter()
            .map(|&y| usize::from(classes.is_positive(y)))
            .collect(),
        ..preds.clone()
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prep::{self, PrepOptions};
    use crate::Error;
    use std::fs;

    /// A prepared dataset of synthetic images at 32 px and an untrained run that fits it.
    fn data_and_run(root: &Path) -> (PathBuf, PathBuf) {
        let images = root.join("images");
        crate::synth::generate(&images, 6, 1, false, false).unwrap();
        let data = root.join("prepared");
        let mut p = PrepOptions::new(&images, &data);
        p.size = 32;
        p.progress = false;
        prep::run(&p).unwrap();
        let run_dir = root.join("run");
        crate::run::fixtures::write_untrained_run(&run_dir, 32, 0, None).unwrap();
        (data, run_dir)
    }

    fn options(run_dir: &Path, data: &Path) -> EvalOptions {
        EvalOptions {
            run: run_dir.to_path_buf(),
            data: data.to_path_buf(),
            device: "cpu".into(),
            bootstrap: 10,
            force: true,
            progress: false,
            ..EvalOptions::default()
        }
    }

    #[test]
    fn force_replaces_only_an_evaluation_folder_that_holds_no_input() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, run_dir) = data_and_run(tmp.path());
        let out = run_dir.join("eval-test");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("notes.txt"), b"mine").unwrap();
        let err = run(&options(&run_dir, &data)).unwrap_err();
        assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.starts_with(&out.display().to_string()), "{msg}");
        assert!(msg.contains("is not an evaluation folder"), "{msg}");
        assert_eq!(fs::read(out.join("notes.txt")).unwrap(), b"mine");

        // An evaluation folder the prepared data was moved into is not replaced either.
        fs::remove_file(out.join("notes.txt")).unwrap();
        fs::write(
            out.join(METRICS_FILE),
            format!(r#"{{"format": "{METRICS_FORMAT}"}}"#),
        )
        .unwrap();
        let moved = out.join("prepared");
        fs::rename(&data, &moved).unwrap();
        let err = run(&options(&run_dir, &moved)).unwrap_err();
        assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
        assert!(err.to_string().contains("holds the input"), "{err}");
        assert!(moved.join("manifest.json").is_file());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stale_temporaries_in_the_run_are_removed_first() {
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (data, run_dir) = data_and_run(tmp.path());
        let stale_dir = run_dir.join(format!("eval-test.partial-{dead}"));
        let stale_file = run_dir.join(format!(".threshold.json.tmp-{dead}-0"));
        fs::create_dir(&stale_dir).unwrap();
        fs::write(stale_dir.join(REPORT_FILE), b"half").unwrap();
        fs::write(&stale_file, b"half").unwrap();
        // Refused (an existing evaluation without --force), after the clean-up.
        let out = run_dir.join("eval-test");
        fs::create_dir(&out).unwrap();
        fs::write(
            out.join(METRICS_FILE),
            format!(r#"{{"format": "{METRICS_FORMAT}"}}"#),
        )
        .unwrap();
        let mut opts = options(&run_dir, &data);
        opts.force = false;
        let err = run(&opts).unwrap_err();
        assert!(matches!(err, Error::OutputExists { .. }), "{err:?}");
        assert!(!stale_dir.exists() && !stale_file.exists());
        assert!(run_dir.join(crate::run::CONFIG_FILE).is_file());
    }
}

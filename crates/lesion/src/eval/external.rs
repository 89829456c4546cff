//! Evaluation on an external test set (`lesion-eval --run RUN --images FOLDER`): a labelled
//! image folder (one sub-folder per class) that was never prepared, evaluated whole, with
//! the report of [`super::run`] marked external.
//!
//! - **Classes.** The folders are found and mapped as `lesion-prep` does
//!   (`prep`'s folder discovery: the same `--group FOLDER=CLASS` / `--classes FILE`
//!   mapping, `-` skipping a folder); each resulting class must be a class of the run
//!   (matched by name, exactly or else ignoring ASCII case), or it is an error naming the
//!   folder and the run's classes. A folder set may hold a subset of the run's classes.
//! - **Images.** Each file is decoded and preprocessed by the run's
//!   [`Predictor`] (the very path of `lesion-predict` and `lesion-serve`: the run's image
//!   size, resize policy and normalisation), so each image's probabilities equal those
//!   `lesion-predict` gives for the same file. A file that cannot be read is named with its
//!   reason on stderr and in the report's warnings and `metrics.json`'s `data.rejected`,
//!   never silently dropped; with `strict` it is an error.
//! - **Threshold.** The run's `threshold.json` (chosen by `lesion-eval --run RUN --data
//!   PREPARED` on the run's validation split; it must belong to the checkpoint). Without one,
//!   with `data` given, it is chosen on that prepared dataset's validation split exactly as
//!   [`super::run`] does, and saved into the run as that command would; without either, an
//!   error names the command that makes it. N classes without a malignant group need none.
//! - **Outputs** in `RUN/eval-external-<folder name>/` (or `out`), refused when present
//!   unless `force`, and then only an evaluation folder ([`super::OUTPUT_KIND`]):
//!   `metrics.json` ([`ExternalMetrics`]: the [`EvalMetrics`] fields with `split` `test`,
//!   `data_dir` the folder and `manifest_sha256` empty, plus `data`, an [`ExternalData`]),
//!   `predictions.csv` (as [`super::run`]'s; `path` relative to the folder, `source_index`
//!   the row in the folder's listing order), the figures, and `report.html` with the notice
//!   `#external` at the top.
//! - **Input drift.** With the run's `input_profile.json` ([`crate::drift`]), the set's
//!   findings ([`SetDrift`]) go into `data.drift`, each markedly different image into
//!   `data.drift_images`, and the set's warnings into the report and onto stderr.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::inference::{self, Loaded};
use super::metrics::{self, Measured};
use super::{
    absolute, choose, errors, malignant_view, plots, predictions, report, EvalMetrics, EvalOptions,
    EvalSummary, Threshold, BINARY_FIGURES, ERRORS_FILE, MALIGNANT_FIGURES, MAX_ERRORS_SHOWN,
    METRICS_FILE, METRICS_FORMAT, METRICS_FORMAT_VERSION, OUTPUT_KIND, PREDICTIONS_FILE,
    REPORT_FILE,
};
use crate::classes::Classes;
use crate::device::{describe, parse_device};
use crate::drift::{ImageStats, SetDrift};
use crate::fsutil::{self, sha256_file, write_atomic, write_json_atomic, StagingDir};
use crate::image_io::{resize_square, DEFAULT_MAX_PIXELS};
use crate::infer::SplitPredictions;
use crate::manifest::{
    FolderClass, ImageEntry, Manifest, Normalization, PrepRecord, RejectedFile, SplitCounts,
};
use crate::predict::Predictor;
use crate::prep::discover::{discover, ClassChoice, Discovery};
use crate::prep::ClassMap;
use crate::run::{checkpoint, history, EpochRecord, Run, BEST_FILE, CURVES_FILE, HISTORY_FILE};
use crate::split::Split;
use crate::{Error, Result};

/// Prefix of the default output folder: `RUN/eval-external-<folder name>`.
pub const EXTERNAL_DIR_PREFIX: &str = "eval-external-";
/// Value of [`ExternalData::kind`].
pub const EXTERNAL_KIND: &str = "external";

/// What `lesion-eval --images` is asked to do.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// The evaluation's options: `run`, `threshold_method` and `target_sensitivity` (used
    /// only when the threshold is chosen on `data`), `bootstrap`, `seed`, `tta`,
    /// `batch_size`, `device`, `force`, `progress`. `data` and `split` are not used.
    pub eval: EvalOptions,
    /// The labelled image folder (one sub-folder per class).
    pub images: PathBuf,
    /// A prepared dataset whose validation split chooses the threshold when the run has
    /// none yet.
    pub data: Option<PathBuf>,
    /// Output folder; `RUN/eval-external-<folder name>` when `None`.
    pub out: Option<PathBuf>,
    /// Folder-to-class mapping file (`--classes FILE`, the format of
    /// [`crate::prep::mapping`]).
    pub classes_file: Option<PathBuf>,
    /// `FOLDER=CLASS` mappings (`--group`; `CLASS` `-` skips the folder), after the file's.
    pub groups: Vec<String>,
    /// An unreadable image is an error rather than a reported omission.
    pub strict: bool,
    /// Largest accepted pixel count of an image.
    pub max_pixels: u64,
}

impl ExternalOptions {
    pub fn new(eval: EvalOptions, images: impl Into<PathBuf>) -> Self {
        Self {
            eval,
            images: images.into(),
            data: None,
            out: None,
            classes_file: None,
            groups: Vec::new(),
            strict: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// `metrics.json` of an external evaluation: every field of [`EvalMetrics`] and `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalMetrics {
    #[serde(flatten)]
    pub metrics: EvalMetrics,
    pub data: ExternalData,
}

/// `metrics.json`'s `data`: what was evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalData {
    /// Always [`EXTERNAL_KIND`].
    pub kind: String,
    /// The folder, absolute.
    pub folder: PathBuf,
    /// Images evaluated.
    pub images: usize,
    /// Images per class, in `class_names` order.
    pub per_class: Vec<usize>,
    /// Every folder of the input with the class it was filed under (`null`: skipped), its
    /// files and the images evaluated from it.
    pub folders: Vec<FolderClass>,
    /// Files that could not be read, with the reason.
    pub rejected: Vec<RejectedFile>,
    /// Where the decision threshold came from; `null` without a malignant group.
    pub threshold_source: Option<String>,
    /// The set's input-drift findings; `null` for a run without `input_profile.json`.
    pub drift: Option<SetDrift>,
    /// The images that differ markedly from the training images, and how.
    pub drift_images: Vec<DriftImage>,
}

/// One image that differs markedly from the run's training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftImage {
    /// Relative to the folder, as in `predictions.csv`.
    pub path: String,
    pub warnings: Vec<String>,
}

/// What [`run`] returns: the evaluation's summary (its `Display` is the terminal table)
/// and the external data's record.
#[derive(Debug, Clone)]
pub struct ExternalSummary {
    pub summary: EvalSummary,
    pub data: ExternalData,
}

/// The images of the folder that were read, in listing order.
struct Scored {
    paths: Vec<String>,
    abs: Vec<PathBuf>,
    stats: Vec<ImageStats>,
    drift: Vec<Vec<String>>,
    preds: SplitPredictions,
    rejected: Vec<RejectedFile>,
}

/// The threshold of an evaluation and where it came from.
struct Chosen {
    threshold: Threshold,
    /// How the report names its origin.
    source: String,
    /// Whether it was read from the run (else chosen here on the prepared data).
    from_run: bool,
    val_from_checkpoint: bool,
}

/// Runs the whole external evaluation (see the module docs).
pub fn run(opts: &ExternalOptions) -> Result<ExternalSummary> {
    let start = Instant::now();
    let eo = &opts.eval;
    eo.validate()?;
    let target = Run::resolve(&eo.run)?;
    if target.checkpoint != target.run_dir.join(BEST_FILE) {
        return Err(Error::InvalidOption(format!(
            "--images evaluates a run's {BEST_FILE} (the checkpoint prediction uses); pass \
             the run folder {} rather than {}",
            target.run_dir.display(),
            target.checkpoint.display()
        )));
    }
    let map = class_map(opts)?;
    let cfg = &target.config;
    let classes = cfg.classes()?;
    let names = classes.names().to_vec();
    match fs::metadata(&opts.images) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad_folder(&opts.images, "not a folder")),
        Err(_) => return Err(bad_folder(&opts.images, "no such folder")),
    }
    let out_dir = match &opts.out {
        Some(o) => o.clone(),
        None => target.run_dir.join(default_dir_name(&opts.images)),
    };
    fsutil::remove_stale_temps(&target.run_dir);
    let inputs = [opts.images.as_path(), target.checkpoint.as_path()];
    let stage = StagingDir::new(&out_dir, eo.force, OUTPUT_KIND, &inputs)?;

    // The folder's classes, mapped onto the run's, before any expensive work.
    let discovery = discover(
        &opts.images,
        &ClassChoice {
            map: &map,
            positive: None,
            malignant: &[],
        },
    )?;
    let to_run = class_mapping(&opts.images, &discovery, &names)?;

    let device = parse_device(&eo.device)?;
    let chosen = if classes.positive_group().is_some() {
        Some(threshold(opts, &target, &classes)?)
    } else {
        None
    };
    let mut predictor = Predictor::load(
        &target.run_dir,
        &device,
        chosen.as_ref().map(|c| c.threshold.threshold),
    )?;
    predictor.set_batch_size(eo.batch_size);
    predictor.set_max_pixels(opts.max_pixels);
    let mut warnings: Vec<String> = discovery.warnings.clone();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if eo.progress {
        eprintln!(
            "evaluating {} on the external folder {} ({} files), {}{}",
            target.checkpoint.display(),
            opts.images.display(),
            discovery.files.len(),
            describe(&device),
            if eo.tta { ", TTA" } else { "" }
        );
    }
    let scored = score(opts, &predictor, &discovery, &to_run, &classes)?;
    let n = scored.preds.len();
    if n == 0 {
        return Err(bad_folder(
            &opts.images,
            format!(
                "none of its {} file(s) could be read as an image",
                discovery.files.len()
            ),
        ));
    }
    let mut per_class = vec![0usize; names.len()];
    for &y in &scored.preds.labels {
        per_class[y] += 1;
    }
    if !scored.rejected.is_empty() {
        let listed: Vec<String> = scored
            .rejected
            .iter()
            .map(|r| format!("{} ({})", r.path, r.reason))
            .collect();
        warnings.push(format!(
            "{} file(s) could not be read and are not evaluated: {}",
            scored.rejected.len(),
            listed.join("; ")
        ));
    }
    if let Some(t) = chosen.as_ref().map(|c| &c.threshold) {
        if t.tta != eo.tta {
            warnings.push(format!(
                "the threshold was chosen on probabilities {} test-time augmentation, these \
                 are scored {} it",
                if t.tta { "with" } else { "without" },
                if eo.tta { "with" } else { "without" },
            ));
        }
    }

    // Input drift of the set.
    let drift = predictor
        .input_profile()
        .and_then(|p| p.set_drift(&scored.stats));
    let drift_images: Vec<DriftImage> = scored
        .paths
        .iter()
        .zip(&scored.drift)
        .filter(|(_, w)| !w.is_empty())
        .map(|(path, w)| DriftImage {
            path: path.clone(),
            warnings: w.clone(),
        })
        .collect();
    if let Some(d) = &drift {
        for w in &d.warnings {
            eprintln!("warning: input drift: {w}");
        }
        warnings.extend(d.warnings.iter().cloned());
    }

    // The figures, as `super::run` computes them.
    let eval_opts = EvalOptions {
        split: Split::Test,
        data: opts.images.clone(),
        ..eo.clone()
    };
    let preds = &scored.preds;
    let binary_preds = if classes.is_binary() {
        Some(preds.clone())
    } else if classes.positive_group().is_some() {
        Some(malignant_view(preds, &classes))
    } else {
        None
    };
    let mut binary: Option<(Threshold, Measured)> = None;
    if let (Some(bp), Some(c)) = (&binary_preds, &chosen) {
        let measured = metrics::measure(&eval_opts, bp, c.threshold.threshold, &opts.images)?;
        binary = Some((c.threshold.clone(), measured));
    }
    let multiclass = if classes.is_binary() {
        None
    } else {
        Some(metrics::measure_multiclass(
            &eval_opts,
            preds,
            &names,
            &opts.images,
        )?)
    };
    // Equal hashes: the caveat about other prepared data does not apply to a folder.
    let mut caveats = metrics::warnings(
        &eval_opts,
        binary.as_ref().map(|(t, m)| (t, m)),
        multiclass.as_ref(),
        "",
        "",
    );
    caveats.extend(warnings);
    let val_from_checkpoint = chosen.as_ref().is_some_and(|c| c.val_from_checkpoint);
    let (binary_view, curves) = binary
        .map(|(threshold, measured)| measured.into_view(threshold, val_from_checkpoint))
        .unzip();
    let (_, state) = checkpoint::load(&target.checkpoint, &Device::Cpu)?;
    let folder_abs = absolute(&opts.images);
    let mut metrics_doc = EvalMetrics {
        format: METRICS_FORMAT.into(),
        format_version: METRICS_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        split: Split::Test,
        tta: eo.tta,
        device: describe(&device),
        run_dir: absolute(&target.run_dir),
        checkpoint: absolute(&target.checkpoint),
        checkpoint_sha256: predictor.checkpoint_sha256().to_string(),
        checkpoint_epoch: state.epoch,
        data_dir: folder_abs.clone(),
        manifest_sha256: String::new(),
        trained_on_manifest_sha256: cfg.manifest_sha256.clone(),
        class_names: names.clone(),
        image_size: cfg.image_size as u32,
        binary: binary_view,
        warnings: caveats,
        seconds: 0.0,
        malignant: classes.malignant_record(),
        multiclass,
    };

    // The outputs, into the staging folder.
    let dir = stage.path();
    let manifest = folder_manifest(
        opts,
        &predictor,
        &discovery,
        &scored,
        &names,
        &per_class,
        &folder_abs,
    );
    let threshold_value = metrics_doc.binary.as_ref().map(|b| b.threshold.threshold);
    let (mut fns, mut fps) = (Vec::new(), Vec::new());
    if let (Some(view), Some((roc, pr)), Some(bin_preds)) =
        (&metrics_doc.binary, &curves, &binary_preds)
    {
        let thr = view.threshold.threshold;
        if classes.is_binary() {
            plots::draw_metrics(dir, view, roc, pr, &names, &BINARY_FIGURES)?;
        } else {
            let group = [
                super::GROUP_REST.to_string(),
                super::GROUP_MALIGNANT.to_string(),
            ];
            plots::draw_metrics(dir, view, roc, pr, &group, &MALIGNANT_FIGURES)?;
        }
        (fns, fps) = errors::confident_errors(bin_preds, &scored.paths, thr, MAX_ERRORS_SHOWN);
        let wanted: Vec<u32> = fns.iter().chain(&fps).map(|c| c.source_index).collect();
        let images = seen_images(&predictor, &scored.abs, &wanted)?;
        plots::error_grid(&fns, &fps, &images, thr, &dir.join(ERRORS_FILE))?;
    }
    match &metrics_doc.multiclass {
        None => predictions::write(
            &dir.join(PREDICTIONS_FILE),
            preds,
            &scored.paths,
            &names,
            threshold_value.unwrap_or(0.5),
        )?,
        Some(mc) => {
            plots::draw_multiclass(dir, mc, &preds.labels, &preds.class_probs)?;
            predictions::write_multiclass(
                &dir.join(PREDICTIONS_FILE),
                preds,
                &scored.paths,
                &names,
                threshold_value,
            )?
        }
    }
    let history: Vec<EpochRecord> =
        history::read(&target.run_dir.join(HISTORY_FILE)).unwrap_or_default();
    let curves_png = fs::read(target.run_dir.join(CURVES_FILE)).ok();
    metrics_doc.seconds = start.elapsed().as_secs_f64();
    let threshold_file = target.threshold_path();
    let report_ctx = report::ReportInput {
        metrics: &metrics_doc,
        run_config: cfg,
        manifest: &manifest,
        history: &history,
        curves_png: curves_png.as_deref(),
        figures_dir: dir,
        false_negatives: &fns,
        false_positives: &fps,
        out_dir: &out_dir,
        threshold_file: chosen.as_ref().map(|_| threshold_file.as_path()),
    };
    let per_class_text: Vec<String> = per_class
        .iter()
        .zip(&names)
        .map(|(k, name)| format!("{k} {name}"))
        .collect();
    let page = report::ExternalPage {
        folder: folder_abs.display().to_string(),
        images: n,
        per_class: per_class_text.join(", "),
        threshold_source: chosen.as_ref().map_or_else(
            || "none (no malignant classes: the answer is the most probable class)".into(),
            |c| c.source.clone(),
        ),
        unreadable: scored.rejected.len(),
    };
    let html = report::render_external(&report_ctx, &page)?;
    write_atomic(dir.join(REPORT_FILE), html.as_bytes())?;
    let data = ExternalData {
        kind: EXTERNAL_KIND.into(),
        folder: folder_abs,
        images: n,
        per_class,
        folders: manifest_folders(&discovery, &scored, &names),
        rejected: scored.rejected.clone(),
        threshold_source: chosen.as_ref().map(|c| c.source.clone()),
        drift,
        drift_images,
    };
    let doc = ExternalMetrics {
        metrics: metrics_doc,
        data,
    };
    write_json_atomic(dir.join(METRICS_FILE), &doc)?;
    let out_dir = stage.commit()?;
    // As `lesion-eval --run RUN --data PREPARED` would: only once the evaluation is complete.
    let saved = match &chosen {
        Some(c) if !c.from_run => {
            write_json_atomic(&threshold_file, &c.threshold)?;
            Some(threshold_file)
        }
        Some(_) => Some(threshold_file),
        None => None,
    };
    Ok(ExternalSummary {
        summary: EvalSummary {
            report: out_dir.join(REPORT_FILE),
            out_dir,
            threshold_file: saved,
            metrics: doc.metrics,
        },
        data: doc.data,
    })
}

/// The mapping of `--classes` and `--group` (empty without either).
fn class_map(opts: &ExternalOptions) -> Result<ClassMap> {
    let mut map = match &opts.classes_file {
        Some(path) => ClassMap::parse_file(path)?,
        None => ClassMap::default(),
    };
    for g in &opts.groups {
        map.push_group(g)?;
    }
    Ok(map)
}

/// `eval-external-<folder name>`.
pub fn default_dir_name(images: &Path) -> String {
    let name = absolute(images)
        .file_name()
        .map(fsutil::os_str_to_string)
        .unwrap_or_else(|| "images".into());
    format!("{EXTERNAL_DIR_PREFIX}{name}")
}

fn bad_folder(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The run's label of each of the discovery's classes; an error names a folder whose class
/// the run lacks.
fn class_mapping(images: &Path, d: &Discovery, run_names: &[String]) -> Result<Vec<usize>> {
    d.classes
        .iter()
        .map(|name| {
            run_names
                .iter()
                .position(|r| r == name)
                .or_else(|| run_names.iter().position(|r| r.eq_ignore_ascii_case(name)))
                .ok_or_else(|| {
                    let folders: Vec<String> = d
                        .folders
                        .iter()
                        .filter(|f| f.class.as_deref() == Some(name.as_str()))
                        .map(|f| format!("{}/", f.folder))
                        .collect();
                    let folder = folders.first().map_or_else(|| name.clone(), |f| f.clone());
                    bad_folder(
                        images,
                        format!(
                            "{} (class `{name}`) is not a class of the run (its classes: {}); \
                             map it with --group {}=CLASS or skip it with --group {}=-",
                            folders.join(", "),
                            run_names.join(", "),
                            folder.trim_end_matches('/'),
                            folder.trim_end_matches('/'),
                        ),
                    )
                })
        })
        .collect()
}

/// The decision threshold: the run's, or one chosen on `opts.data`'s validation split.
fn threshold(opts: &ExternalOptions, target: &Run, classes: &Classes) -> Result<Chosen> {
    let sha = sha256_file(&target.checkpoint)?;
    if let Some(t) = target.threshold()? {
        if t.checkpoint_sha256 != sha {
            return Err(Error::BadArtifact {
                path: target.threshold_path(),
                reason: format!(
                    "the decision threshold was chosen for another checkpoint (SHA-256 {} vs \
                     {sha} of {BEST_FILE}); run `lesion-eval --run {} --data <PREPARED_DIR>` \
                     again",
                    t.checkpoint_sha256,
                    target.run_dir.display()
                ),
            });
        }
        return Ok(Chosen {
            source: format!(
                "{}, from the run's {}",
                t.describe(),
                target.threshold_path().display()
            ),
            threshold: t,
            from_run: true,
            val_from_checkpoint: false,
        });
    }
    let Some(data_dir) = &opts.data else {
        return Err(Error::BadArtifact {
            path: target.threshold_path(),
            reason: format!(
                "missing: the run has no decision threshold yet. Run `lesion-eval --run {} \
                 --data <PREPARED_DIR>` first (it chooses one on the run's validation split), \
                 or add `--data <PREPARED_DIR>` here to choose it on that split",
                target.run_dir.display()
            ),
        });
    };
    // A fold run's validation split is its held-out fold.
    let data = super::open_run_data(data_dir, target, Split::Val)?;
    target.check_compatible(&data)?;
    if opts.eval.progress {
        eprintln!("verifying {}", data.dir().display());
    }
    data.verify()?;
    if data.len(Split::Val) == 0 {
        return Err(Error::BadArtifact {
            path: data.dir().to_path_buf(),
            reason: "the val split is empty: it cannot choose a threshold".into(),
        });
    }
    let val_opts = EvalOptions {
        data: data_dir.clone(),
        split: Split::Val,
        malignant: None,
        ..opts.eval.clone()
    };
    let (loaded, stored_val): (Loaded, _) =
        inference::load(&val_opts, &target.checkpoint, &target.config, &data)?;
    let scored = inference::predict(&val_opts, &loaded, &data, stored_val)?;
    let val = if classes.is_binary() {
        scored.val
    } else {
        malignant_view(&scored.val, classes)
    };
    let t = choose::on_validation(&val_opts, &val, data.dir(), &target.checkpoint, &loaded)?;
    Ok(Chosen {
        source: format!(
            "{}, chosen on the validation split of {} (saved into the run)",
            t.describe(),
            data.dir().display()
        ),
        threshold: t,
        from_run: false,
        val_from_checkpoint: scored.val_from_checkpoint,
    })
}

/// A model input, its drift measurements and warnings ([`Predictor::preprocess_checked`]).
type Checked = (Vec<f32>, ImageStats, Vec<String>);

/// Reads, preprocesses and scores every file of the discovery, `batch_size` at a time.
fn score(
    opts: &ExternalOptions,
    predictor: &Predictor,
    discovery: &Discovery,
    to_run: &[usize],
    classes: &Classes,
) -> Result<Scored> {
    let bar = super::inference::progress_bar(
        opts.eval.progress,
        discovery.files.len() as u64,
        "external",
    );
    let mut out = Scored {
        paths: Vec::new(),
        abs: Vec::new(),
        stats: Vec::new(),
        drift: Vec::new(),
        preds: SplitPredictions::default(),
        rejected: Vec::new(),
    };
    let (mut labels, mut logits) = (Vec::new(), Vec::new());
    for chunk in discovery.files.chunks(opts.eval.batch_size) {
        let decoded: Vec<Result<Checked>> = chunk
            .par_iter()
            .map(|f| {
                let bytes = fs::read(&f.abs).map_err(|e| Error::io(&f.abs, e))?;
                let img = predictor.decode(&bytes, &f.abs)?;
                Ok(predictor.preprocess_checked(&img))
            })
            .collect();
        let mut inputs = Vec::new();
        for (f, d) in chunk.iter().zip(decoded) {
            match d {
                Ok((x, stats, drift)) => {
                    inputs.push(x);
                    out.paths.push(f.rel.clone());
                    out.abs.push(f.abs.clone());
                    out.stats.push(stats);
                    out.drift.push(drift);
                    labels.push(to_run[f.class as usize]);
                }
                Err(e) => {
                    let reason = match &e {
                        Error::BadImage { reason, .. } => reason.clone(),
                        Error::Io { source, .. } => format!("cannot read: {source}"),
                        other => other.to_string(),
                    };
                    if opts.strict {
                        bar.abandon();
                        return Err(Error::BadImage {
                            path: f.abs.clone(),
                            reason,
                        });
                    }
                    bar.println(format!("warning: skipped {}: {reason}", f.rel));
                    if !opts.eval.progress {
                        eprintln!("warning: skipped {}: {reason}", f.rel);
                    }
                    out.rejected.push(RejectedFile {
                        path: f.rel.clone(),
                        reason,
                    });
                }
            }
        }
        for p in predictor.predict_preprocessed(&inputs, opts.eval.tta)? {
            logits.extend(p.logits);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let source_index = (0..labels.len() as u32).collect();
    out.preds = SplitPredictions::from_logits(classes, source_index, labels, logits);
    Ok(out)
}

/// The images of `wanted` rows as the model saw them (resized, unnormalised).
fn seen_images(
    predictor: &Predictor,
    abs: &[PathBuf],
    wanted: &[u32],
) -> Result<HashMap<u32, RgbImage>> {
    let mut out = HashMap::new();
    for &row in wanted {
        let path = &abs[row as usize];
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let img = predictor.decode(&bytes, path)?;
        out.insert(
            row,
            resize_square(&img, predictor.image_size(), predictor.resize_policy()),
        );
    }
    Ok(out)
}

/// Every folder of the input with its class and the images evaluated from it.
fn manifest_folders(d: &Discovery, scored: &Scored, names: &[String]) -> Vec<FolderClass> {
    d.folders
        .iter()
        .map(|f| {
            let prefix = format!("{}/", f.folder);
            FolderClass {
                folder: f.folder.clone(),
                class: f.class.as_ref().map(|c| {
                    names
                        .iter()
                        .find(|n| n.eq_ignore_ascii_case(c))
                        .cloned()
                        .unwrap_or_else(|| c.clone())
                }),
                files: f.files,
                images: scored
                    .paths
                    .iter()
                    .filter(|p| p.starts_with(&prefix))
                    .count(),
            }
        })
        .collect()
}

/// A manifest describing the folder, for the report's configuration table and paths: the
/// run's classes and preprocessing, every image in the test split.
fn folder_manifest(
    opts: &ExternalOptions,
    predictor: &Predictor,
    discovery: &Discovery,
    scored: &Scored,
    names: &[String],
    per_class: &[usize],
    folder: &Path,
) -> Manifest {
    let cfg = predictor.config();
    let size = cfg.image_size as u32;
    let resize = predictor.resize_policy();
    Manifest {
        format: crate::manifest::MANIFEST_FORMAT.into(),
        format_version: crate::manifest::MANIFEST_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        classes: names.to_vec(),
        malignant: cfg.malignant.clone(),
        folders: manifest_folders(discovery, scored, names),
        image_size: size,
        resize,
        views: 1,
        augment: false,
        seed: 0,
        options: PrepRecord {
            input: folder.display().to_string(),
            image_size: size,
            resize,
            val: 0.0,
            test: 1.0,
            seed: 0,
            shard_size: 0,
            views: 1,
            augment: false,
            strict: opts.strict,
            max_pixels: opts.max_pixels,
            no_test: false,
            groups: None,
        },
        normalization: Normalization {
            mean: cfg.mean,
            std: cfg.std,
        },
        counts: vec![SplitCounts {
            split: Split::Test,
            per_class: per_class.to_vec(),
            total: per_class.iter().sum(),
        }],
        shards: Vec::new(),
        images: scored
            .paths
            .iter()
            .zip(&scored.stats)
            .zip(&scored.preds.labels)
            .map(|((path, s), &y)| ImageEntry {
                path: path.clone(),
                class: y as u8,
                split: Split::Test,
                sha256: String::new(),
                width: s.width,
                height: s.height,
                augmentations: None,
                fold: None,
                group: None,
            })
            .collect(),
        rejected: scored.rejected.clone(),
        duplicates: Vec::new(),
        folds: 0,
        fold_counts: Vec::new(),
    }
}

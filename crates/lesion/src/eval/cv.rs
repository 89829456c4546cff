//! Cross-validation (`lesion-eval --cv CV_DIR`): the K fold runs of one prepared dataset,
//! aggregated into one evaluation in the ordinary report format.
//!
//! A CV folder holds one ordinary run folder per fold, `CV_DIR/fold-0` .. `fold-{K-1}`
//! (no zero padding), each trained with `lesion-train --fold i`: its validation split is
//! fold `i`, which no other fold's training saw. Each run scores its own held-out fold
//! (its **out-of-fold** predictions); pooled, they give one prediction per image of the
//! folds, each from a model that did not train on it. With a test split, each fold's model
//! scores it too.
//!
//! Outputs, in `CV_DIR/eval/` (or `--out`; built in a staging folder and renamed into place,
//! refused if present unless `force`, which replaces only an evaluation folder):
//! - `metrics.json`: the pooled out-of-fold predictions measured exactly as an ordinary
//!   evaluation measures its split ([`EvalMetrics`], `split` `val`), plus a `cv` object
//!   ([`CvSection`]). Two classes: the figures at 0.5 in both threshold columns. The
//!   threshold is **fixed at 0.5**, not chosen: a fold's validation split is its held-out
//!   fold, so a threshold chosen there (Youden's J, or its `threshold.json`) would be tuned
//!   on the very images it is measured on. N classes: the `multiclass` section, the
//!   prediction being the most probable class; the malignant-group view is left out (it
//!   would need a chosen threshold too).
//! - `predictions.csv`: the pooled predictions in the ordinary layout (fold 0's rows first,
//!   then fold 1's, ...) with a last column `fold`.
//! - `test-predictions.csv` (with a test split): every fold model's test predictions, fold
//!   after fold, in the same layout with the column `fold`.
//! - the figures and `report.html` of the pooled predictions, headed "cross-validation:
//!   K folds, pooled out-of-fold predictions", with the per-fold table.
//!
//! The `cv` section: `k`; `runs[i]` (fold, run folder, checkpoint, its SHA-256 and epoch);
//! `folds[i]` ([`FoldFigures`]: `n`, `roc_auc` (macro one-vs-rest for N, `null` when
//! undefined), `balanced_accuracy`, `accuracy`, `log_loss`, for two classes `sensitivity` and
//! `specificity` at 0.5, for N `per_class[k]` with `recall`, `precision`, `f1`, `roc_auc`),
//! computed exactly as the pooled figures; `mean_sd`: the mean and **sample** standard
//! deviation (ddof = 1, `null` below two folds) of each figure over the folds where it is
//! defined (`n` of them); with a test split, `test`: `folds[i]` (each fold model on the
//! whole test split), `mean_sd`, and `fold_average`, the figures of the mean of the K
//! models' probabilities per test image.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::time::Instant;

use super::{
    errors, inference, metrics, plots, predictions, report, EvalMetrics, EvalOptions, Threshold,
    ThresholdMethod, BINARY_FIGURES, METRICS_FORMAT, METRICS_FORMAT_VERSION, OUTPUT_KIND,
};
use crate::device::describe;
use crate::fsutil::{self, write_atomic, write_json_atomic, StagingDir};
use crate::infer::SplitPredictions;
use crate::loader::PreparedDataset;
use crate::metrics::DEFAULT_THRESHOLD;
use crate::run::Run;
use crate::split::Split;
use crate::{Error, Result};

/// Name of fold `i`'s run folder inside a CV folder is `fold-{i}`.
pub const FOLD_PREFIX: &str = "fold-";
/// Default output folder inside a CV folder.
pub const CV_EVAL_DIR: &str = "eval";
/// Every fold model's predictions on the test split.
pub const TEST_PREDICTIONS_FILE: &str = "test-predictions.csv";
/// The column `predictions.csv` gains in a cross-validation.
pub const FOLD_COLUMN: &str = "fold";

/// The figures of one fold's predictions (or of the fold-averaged test predictions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldFigures {
    /// The fold; `None` for the fold average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u32>,
    pub n: u64,
    /// Two classes: ROC AUC; N: macro one-vs-rest ROC AUC (`None` when a class is absent).
    pub roc_auc: Option<f64>,
    pub balanced_accuracy: f64,
    pub accuracy: f64,
    /// Log loss of the probabilities, nats.
    pub log_loss: f64,
    /// Two classes, at 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specificity: Option<f64>,
    /// N classes, in label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassFoldFigures>,
}

/// One class's one-vs-rest figures in one fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFoldFigures {
    pub recall: f64,
    pub precision: f64,
    pub f1: f64,
    pub roc_auc: Option<f64>,
}

/// Mean and sample standard deviation of one figure over the folds where it is defined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    pub mean: f64,
    /// `sqrt(sum (x - mean)^2 / (n - 1))`; `None` when `n < 2`.
    pub sd: Option<f64>,
    /// Folds with a value.
    pub n: usize,
}

/// [`MeanSd`] of every figure of [`FoldFigures`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiguresMeanSd {
    pub roc_auc: Option<MeanSd>,
    pub balanced_accuracy: MeanSd,
    pub accuracy: MeanSd,
    pub log_loss: MeanSd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<MeanSd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specificity: Option<MeanSd>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassMeanSd>,
}

/// [`MeanSd`] of one class's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMeanSd {
    pub recall: MeanSd,
    pub precision: MeanSd,
    pub f1: MeanSd,
    pub roc_auc: Option<MeanSd>,
}

/// Which run scored which fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldRun {
    pub fold: u32,
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub checkpoint_sha256: String,
    pub checkpoint_epoch: usize,
}

/// The fold models on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvTest {
    pub folds: Vec<FoldFigures>,
    pub mean_sd: FiguresMeanSd,
    /// The mean of the K models' probabilities per test image, measured as one model.
    pub fold_average: FoldFigures,
}

/// `metrics.json`'s `cv` object (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvSection {
    pub k: u32,
    /// How the pooled predictions are called: `probability >= 0.5` or `argmax`.
    pub decision: String,
    /// How `mean_sd` is computed.
    pub sd: String,
    pub runs: Vec<FoldRun>,
    pub folds: Vec<FoldFigures>,
    pub mean_sd: FiguresMeanSd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<CvTest>,
}

/// What [`CvSection::sd`] says.
pub const SD_NOTE: &str = "sample standard deviation over folds (ddof = 1)";

/// The decision rule of predictions with `outputs` logits per image.
fn decision(outputs: usize) -> String {
    if outputs == 1 {
        format!("probability >= {DEFAULT_THRESHOLD} (fixed, not chosen)")
    } else {
        "argmax (the most probable class)".into()
    }
}

/// The figures of `p` (two classes when `p.outputs == 1`): ROC AUC, balanced accuracy,
/// accuracy, log loss, and sensitivity/specificity at 0.5 or the per-class figures, each
/// computed by [`crate::metrics`] exactly as an evaluation computes them.
pub fn fold_figures(p: &SplitPredictions, fold: Option<u32>) -> Result<FoldFigures> {
    if p.outputs == 1 {
        let m = crate::metrics::evaluate(&p.labels, &p.probs, DEFAULT_THRESHOLD)?;
        Ok(FoldFigures {
            fold,
            n: m.n,
            roc_auc: Some(m.roc_auc),
            balanced_accuracy: m.balanced_accuracy,
            accuracy: m.accuracy,
            log_loss: m.log_loss,
            sensitivity: Some(m.sensitivity),
            specificity: Some(m.specificity),
            per_class: Vec::new(),
        })
    } else {
        let m = crate::metrics::evaluate_multiclass(&p.labels, &p.class_probs)?;
        Ok(FoldFigures {
            fold,
            n: m.n,
            roc_auc: m.macro_roc_auc,
            balanced_accuracy: m.balanced_accuracy,
            accuracy: m.accuracy,
            log_loss: m.log_loss,
            sensitivity: None,
            specificity: None,
            per_class: m
                .per_class
                .iter()
                .map(|c| ClassFoldFigures {
                    recall: c.recall,
                    precision: c.precision,
                    f1: c.f1,
                    roc_auc: c.roc_auc,
                })
                .collect(),
        })
    }
}

/// Mean and sample standard deviation (ddof = 1) of the defined values; `None` when none is.
pub fn mean_sd(values: impl IntoIterator<Item = Option<f64>>) -> Option<MeanSd> {
    let xs: Vec<f64> = values.into_iter().flatten().collect();
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let sd = (n >= 2).then(|| {
        let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(MeanSd { mean, sd, n })
}

/// [`MeanSd`] of each figure over `folds` (all of one kind: two classes or N).
pub fn summarise(folds: &[FoldFigures]) -> FiguresMeanSd {
    let all = |f: fn(&FoldFigures) -> f64| {
        mean_sd(folds.iter().map(|x| Some(f(x)))).unwrap_or(MeanSd {
            mean: f64::NAN,
            sd: None,
            n: 0,
        })
    };
    let n_classes = folds.first().map_or(0, |f| f.per_class.len());
    let class = |k: usize, f: fn(&ClassFoldFigures) -> Option<f64>| {
        mean_sd(folds.iter().map(|x| x.per_class.get(k).and_then(f)))
    };
    let nan = MeanSd {
        mean: f64::NAN,
        sd: None,
        n: 0,
    };
    FiguresMeanSd {
        roc_auc: mean_sd(folds.iter().map(|x| x.roc_auc)),
        balanced_accuracy: all(|x| x.balanced_accuracy),
        accuracy: all(|x| x.accuracy),
        log_loss: all(|x| x.log_loss),
        sensitivity: mean_sd(folds.iter().map(|x| x.sensitivity)),
        specificity: mean_sd(folds.iter().map(|x| x.specificity)),
        per_class: (0..n_classes)
            .map(|k| ClassMeanSd {
                recall: class(k, |c| Some(c.recall)).unwrap_or(nan),
                precision: class(k, |c| Some(c.precision)).unwrap_or(nan),
                f1: class(k, |c| Some(c.f1)).unwrap_or(nan),
                roc_auc: class(k, |c| c.roc_auc),
            })
            .collect(),
    }
}

/// The predictions of the folds one after the other, and each row's fold.
pub fn pool(folds: &[(u32, &SplitPredictions)]) -> Result<(SplitPredictions, Vec<u32>)> {
    let mut out = SplitPredictions::default();
    let mut fold_of = Vec::new();
    for (i, (fold, p)) in folds.iter().enumerate() {
        if i == 0 {
            out.outputs = p.outputs;
        } else if p.outputs != out.outputs {
            return Err(Error::BadMetricInput(format!(
                "fold {fold} has {} outputs per image, fold {} has {}",
                p.outputs, folds[0].0, out.outputs
            )));
        }
        out.source_index.extend_from_slice(&p.source_index);
        out.labels.extend_from_slice(&p.labels);
        out.logits.extend_from_slice(&p.logits);
        out.class_probs.extend(p.class_probs.iter().cloned());
        out.probs.extend_from_slice(&p.probs);
        fold_of.extend(std::iter::repeat_n(*fold, p.len()));
    }
    Ok((out, fold_of))
}

/// The mean of the folds' probabilities per image (matched by source index, in the first
/// fold's order), as predictions without logits. Every fold must score the same images
/// with the same labels.
pub fn fold_average(folds: &[(u32, &SplitPredictions)]) -> Result<SplitPredictions> {
    let Some((first_fold, first)) = folds.first() else {
        return Err(Error::BadMetricInput(
            "no fold predictions to average".into(),
        ));
    };
    let k = folds.len() as f64;
    let mut class_probs = first.class_probs.clone();
    let mut probs = first.probs.clone();
    let row_of: HashMap<u32, usize> = first
        .source_index
        .iter()
        .enumerate()
        .map(|(row, &s)| (s, row))
        .collect();
    for (fold, p) in &folds[1..] {
        let mismatch = |what: &str| {
            Error::BadMetricInput(format!(
                "fold {fold} scored {what} than fold {first_fold} on the test split"
            ))
        };
        if p.len() != first.len() || p.probs.len() != first.probs.len() {
            return Err(mismatch("a different number of images"));
        }
        for (i, &s) in p.source_index.iter().enumerate() {
            let row = *row_of.get(&s).ok_or_else(|| mismatch("other images"))?;
            if p.labels[i] != first.labels[row] {
                return Err(mismatch("other labels"));
            }
            for (acc, v) in class_probs[row].iter_mut().zip(&p.class_probs[i]) {
                *acc += v;
            }
            if let Some(q) = p.probs.get(i) {
                probs[row] += q;
            }
        }
    }
    for row in &mut class_probs {
        for v in row.iter_mut() {
            *v /= k;
        }
    }
    for q in &mut probs {
        *q /= k;
    }
    Ok(SplitPredictions {
        source_index: first.source_index.clone(),
        labels: first.labels.clone(),
        logits: Vec::new(),
        outputs: first.outputs,
        class_probs,
        probs,
    })
}

/// Every fold's figures, their mean and SD, and the test figures when each fold has test
/// predictions (`oof[i]` and `test[i]` of fold `folds[i]`).
pub fn aggregate(
    runs: Vec<FoldRun>,
    oof: &[&SplitPredictions],
    test: Option<&[&SplitPredictions]>,
) -> Result<CvSection> {
    let fold_ids: Vec<u32> = runs.iter().map(|r| r.fold).collect();
    let folds = fold_ids
        .iter()
        .zip(oof)
        .map(|(&f, p)| fold_figures(p, Some(f)).map_err(|e| in_fold(f, "held-out fold", e)))
        .collect::<Result<Vec<_>>>()?;
    let test = match test {
        Some(test) => {
            let figures = fold_ids
                .iter()
                .zip(test)
                .map(|(&f, p)| fold_figures(p, Some(f)).map_err(|e| in_fold(f, "test split", e)))
                .collect::<Result<Vec<_>>>()?;
            let pairs: Vec<(u32, &SplitPredictions)> =
                fold_ids.iter().copied().zip(test.iter().copied()).collect();
            let avg = fold_average(&pairs)?;
            Some(CvTest {
                mean_sd: summarise(&figures),
                folds: figures,
                fold_average: fold_figures(&avg, None)?,
            })
        }
        None => None,
    };
    Ok(CvSection {
        k: runs.len() as u32,
        decision: decision(oof.first().map_or(1, |p| p.outputs)),
        sd: SD_NOTE.into(),
        mean_sd: summarise(&folds),
        folds,
        runs,
        test,
    })
}

fn in_fold(fold: u32, what: &str, e: Error) -> Error {
    match e {
        Error::BadMetricInput(m) => {
            Error::BadMetricInput(format!("fold {fold}, on its {what}: {m}"))
        }
        other => other,
    }
}

/// `0.8123 ± 0.0214` (`± n/a` with one fold).
pub fn mean_sd_text(m: &MeanSd) -> String {
    let f4 = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            "n/a".into()
        }
    };
    match m.sd {
        Some(sd) => format!("{} ± {}", f4(m.mean), f4(sd)),
        None => format!("{} ± n/a", f4(m.mean)),
    }
}

impl fmt::Display for FoldFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auc = self.roc_auc.map_or("n/a".into(), |v| format!("{v:.4}"));
        write!(
            f,
            "{:>6} {:>6} {:>8} {:>9} {:>9} {:>9}",
            self.fold.map_or("mean".into(), |i| i.to_string()),
            self.n,
            auc,
            format!("{:.4}", self.balanced_accuracy),
            format!("{:.4}", self.accuracy),
            format!("{:.4}", self.log_loss),
        )
    }
}

/// Fold `i`'s run folder in `cv_dir`.
pub fn fold_dir(cv_dir: &Path, fold: u32) -> PathBuf {
    cv_dir.join(format!("{FOLD_PREFIX}{fold}"))
}

/// The fold run folders of `cv_dir` (`fold-{i}`), by fold. A `fold-` name whose rest is
/// digits with a leading zero is refused (the folders are not zero-padded); other names are
/// ignored. No fold at all is an error.
pub fn find_folds(cv_dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    use crate::error::IoContext;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(cv_dir).with_path(cv_dir)? {
        let entry = entry.with_path(cv_dir)?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(FOLD_PREFIX)) else {
            continue;
        };
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = entry.path();
        let fold = match rest.parse::<u32>() {
            Ok(i) if i.to_string() == rest => i,
            _ => {
                return Err(Error::BadArtifact {
                    path,
                    reason: format!(
                        "not a fold folder name: fold folders are named {FOLD_PREFIX}0, \
                         {FOLD_PREFIX}1, ... without zero padding"
                    ),
                })
            }
        };
        if !path.is_dir() {
            return Err(Error::BadArtifact {
                path,
                reason: "not a folder: a fold's run folder was expected".into(),
            });
        }
        found.push((fold, path));
    }
    if found.is_empty() {
        return Err(Error::BadArtifact {
            path: cv_dir.to_path_buf(),
            reason: format!(
                "no fold runs ({FOLD_PREFIX}0, {FOLD_PREFIX}1, ...): train each fold into it \
                 first (scripts/cv.sh fold I PREPARED CV_DIR)"
            ),
        });
    }
    found.sort();
    Ok(found)
}

/// Refuses a set of fold folders that is not exactly `fold-0` .. `fold-{k-1}`, naming
/// every missing and every extra one.
pub fn check_fold_set(cv_dir: &Path, found: &[u32], k: u32) -> Result<()> {
    let missing: Vec<String> = (0..k)
        .filter(|i| !found.contains(i))
        .map(|i| fold_dir(cv_dir, i).display().to_string())
        .collect();
    let extra: Vec<String> = found
        .iter()
        .filter(|&&i| i >= k)
        .map(|&i| fold_dir(cv_dir, i).display().to_string())
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "missing fold run{} {} (train {} before evaluating)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        ));
    }
    if !extra.is_empty() {
        problems.push(format!("{} beyond the data's folds", extra.join(", ")));
    }
    Err(Error::BadArtifact {
        path: cv_dir.to_path_buf(),
        reason: format!("the data has {k} folds: {}", problems.join("; ")),
    })
}

/// Every option of `lesion-eval --cv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CvOptions {
    /// The CV folder: `fold-0` .. `fold-{K-1}` run folders.
    pub cv_dir: PathBuf,
    /// The prepared K-fold dataset; `None`: the one the fold runs recorded (`train.data`).
    pub data: Option<PathBuf>,
    /// Output folder; `None`: `<cv_dir>/eval`.
    pub out: Option<PathBuf>,
    /// Scoring and output options (`bootstrap`, `seed`, `tta`, `batch_size`, `device`,
    /// `force`, `recompute_val`, `progress`); `run`, `data`, `split`, the threshold method
    /// and `malignant` are not used.
    pub eval: EvalOptions,
}

/// `metrics.json` of a cross-validation: the pooled evaluation, and the `cv` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvMetrics {
    #[serde(flatten)]
    pub eval: EvalMetrics,
    pub cv: CvSection,
}

/// What [`run`] returns; `Display` is the terminal table.
#[derive(Debug, Clone)]
pub struct CvSummary {
    pub out_dir: PathBuf,
    pub report: PathBuf,
    pub metrics: CvMetrics,
}

/// One fold run, checked, and its predictions.
struct Scored {
    run: FoldRun,
    oof: SplitPredictions,
    test: Option<SplitPredictions>,
    val_from_checkpoint: bool,
    device: String,
}

/// The fold runs of `cv_dir`, checked against each other: all trained on one prepared
/// dataset (manifest SHA-256) with the same classes.
fn open_runs(cv_dir: &Path) -> Result<Vec<(u32, Run)>> {
    let mut runs = Vec::new();
    for (fold, dir) in find_folds(cv_dir)? {
        runs.push((fold, Run::resolve(&dir)?));
    }
    let (first_fold, first) = &runs[0];
    for (_, run) in &runs[1..] {
        let (a, b) = (&first.config, &run.config);
        let reason = if a.manifest_sha256 != b.manifest_sha256 {
            format!(
                "trained on other prepared data than {} (manifest SHA-256 {} vs {}): the folds \
                 of one cross-validation share one prepared folder",
                fold_dir(cv_dir, *first_fold).display(),
                short(&b.manifest_sha256),
                short(&a.manifest_sha256)
            )
        } else if a.class_names != b.class_names || a.malignant != b.malignant {
            format!(
                "trained on other classes than {} ({:?} vs {:?})",
                fold_dir(cv_dir, *first_fold).display(),
                b.class_names,
                a.class_names
            )
        } else {
            continue;
        };
        return Err(Error::BadArtifact {
            path: run.run_dir.clone(),
            reason,
        });
    }
    Ok(runs)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Checks that `run` is fold `fold`'s run of `data` (its recorded fold and manifest).
fn check_run(run: &Run, fold: u32, data: &PreparedDataset, sha: &str) -> Result<()> {
    if run.config.train.fold != Some(fold) {
        return Err(Error::BadArtifact {
            path: run.run_dir.clone(),
            reason: match run.config.train.fold {
                Some(f) => format!("is the run of fold {f}, not of fold {fold}"),
                None => "is not a fold run (trained without --fold)".into(),
            },
        });
    }
    if run.config.manifest_sha256 != sha {
        return Err(Error::RunDataMismatch {
            run: run.run_dir.clone(),
            data: data.dir().to_path_buf(),
            reason: format!(
                "the run was trained on other prepared data (manifest SHA-256 {} vs {}); its \
                 held-out fold is only known in the data it was trained on",
                short(&run.config.manifest_sha256),
                short(sha)
            ),
        });
    }
    run.check_compatible(data)
}

/// Scores fold `fold`'s held-out images (its validation split) and, with `test`, the test
/// split with its run's best checkpoint.
fn score_fold(
    opts: &CvOptions,
    fold: u32,
    run: &Run,
    data_dir: &Path,
    test: bool,
) -> Result<Scored> {
    let data = PreparedDataset::open(data_dir)?.with_fold(fold)?;
    if data.len(Split::Val) == 0 {
        return Err(Error::BadArtifact {
            path: data_dir.to_path_buf(),
            reason: format!("fold {fold} is empty"),
        });
    }
    let eval = EvalOptions {
        split: if test { Split::Test } else { Split::Val },
        malignant: None,
        ..opts.eval.clone()
    };
    let (loaded, stored_val) = inference::load(&eval, &run.checkpoint, &run.config, &data)?;
    let scored = inference::predict(&eval, &loaded, &data, stored_val)?;
    Ok(Scored {
        run: FoldRun {
            fold,
            run_dir: absolute(&run.run_dir),
            checkpoint: absolute(&run.checkpoint),
            checkpoint_sha256: loaded.checkpoint_sha256.clone(),
            checkpoint_epoch: loaded.epoch,
        },
        test: test.then_some(scored.preds),
        oof: scored.val,
        val_from_checkpoint: scored.val_from_checkpoint,
        device: describe(&loaded.device),
    })
}

/// `csv` (a `predictions.csv` as bytes) with the column [`FOLD_COLUMN`] appended, row `i`
/// holding `folds[i]`; `header` keeps or drops the header line.
fn with_fold_column(csv: &[u8], folds: &[u32], header: bool) -> Result<Vec<u8>> {
    let encode = |reason: String| Error::Encode {
        what: super::PREDICTIONS_FILE.into(),
        reason,
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut rows = folds.iter();
    for (i, record) in r.records().enumerate() {
        let mut record = record.map_err(|e| encode(e.to_string()))?;
        if i == 0 {
            if !header {
                continue;
            }
            record.push_field(FOLD_COLUMN);
        } else {
            let fold = rows
                .next()
                .ok_or_else(|| encode("more rows than predictions".into()))?;
            record.push_field(&fold.to_string());
        }
        w.write_record(&record).map_err(|e| encode(e.to_string()))?;
    }
    w.into_inner().map_err(|e| encode(e.to_string()))
}

/// The `predictions.csv` bytes of `preds` (the layout of an ordinary evaluation, at 0.5 for
/// two classes) with the fold column.
fn predictions_with_folds(
    preds: &SplitPredictions,
    folds: &[u32],
    paths: &[String],
    names: &[String],
    header: bool,
) -> Result<Vec<u8>> {
    let csv = if preds.outputs == 1 {
        predictions::predictions_csv(preds, paths, names, DEFAULT_THRESHOLD)?
    } else {
        predictions::multiclass_csv(preds, paths, names, None)?
    };
    with_fold_column(&csv, folds, header)
}

/// Runs the whole cross-validation evaluation (see the module docs).
pub fn run(opts: &CvOptions) -> Result<CvSummary> {
    let start = Instant::now();
    opts.eval.validate()?;
    let cv_dir = &opts.cv_dir;
    if !cv_dir.is_dir() {
        return Err(Error::InvalidOption(format!(
            "--cv {}: no such folder",
            cv_dir.display()
        )));
    }
    let runs = open_runs(cv_dir)?;
    let first = &runs[0].1;
    let data_dir = opts
        .data
        .clone()
        .unwrap_or_else(|| first.config.train.data.clone());
    let base = PreparedDataset::open(&data_dir)?;
    let sha = crate::manifest::manifest_sha256(&data_dir)?;
    let k = base.folds();
    if k == 0 {
        return Err(Error::BadDataset {
            path: data_dir.clone(),
            reason: "has no folds: prepare the data with `lesion-prep --folds K` and train each \
                     fold on it"
                .into(),
        });
    }
    let ids: Vec<u32> = runs.iter().map(|(f, _)| *f).collect();
    check_fold_set(cv_dir, &ids, k)?;
    for (fold, run) in &runs {
        check_run(run, *fold, &base, &sha)?;
    }
    let out_dir = opts.out.clone().unwrap_or_else(|| cv_dir.join(CV_EVAL_DIR));
    fsutil::remove_stale_temps(cv_dir);
    let mut inputs: Vec<&Path> = vec![data_dir.as_path()];
    inputs.extend(runs.iter().map(|(_, r)| r.run_dir.as_path()));
    let stage = StagingDir::new(&out_dir, opts.eval.force, OUTPUT_KIND, &inputs)?;
    if opts.eval.progress {
        eprintln!("verifying {}", data_dir.display());
    }
    base.verify()?;
    let has_test = base.len(Split::Test) > 0;

    let mut scored = Vec::with_capacity(runs.len());
    for (fold, run) in &runs {
        if opts.eval.progress {
            eprintln!("fold {fold} of {k}: {}", run.run_dir.display());
        }
        scored.push(score_fold(opts, *fold, run, &data_dir, has_test)?);
    }
    let fold_runs: Vec<FoldRun> = scored.iter().map(|s| s.run.clone()).collect();
    let oof: Vec<&SplitPredictions> = scored.iter().map(|s| &s.oof).collect();
    let test: Option<Vec<&SplitPredictions>> = scored
        .iter()
        .map(|s| s.test.as_ref())
        .collect::<Option<Vec<_>>>();
    let section = aggregate(fold_runs, &oof, test.as_deref())?;
    let pairs: Vec<(u32, &SplitPredictions)> =
        scored.iter().map(|s| (s.run.fold, &s.oof)).collect();
    let (pooled, fold_of) = pool(&pairs)?;

    // The pooled predictions, measured as an evaluation measures its split.
    let names = base.class_names();
    let binary_run = pooled.outputs == 1;
    let measure_opts = EvalOptions {
        split: Split::Val,
        ..opts.eval.clone()
    };
    let (binary, multiclass) = if binary_run {
        let m = metrics::measure(&measure_opts, &pooled, DEFAULT_THRESHOLD, &data_dir)?;
        (Some(m), None)
    } else {
        let mc = metrics::measure_multiclass(&measure_opts, &pooled, names, &data_dir)?;
        (None, Some(mc))
    };
    let threshold = binary.as_ref().map(|m| Threshold {
        threshold: DEFAULT_THRESHOLD,
        method: ThresholdMethod::Fixed,
        target_sensitivity: None,
        split: Split::Val,
        val_sensitivity: m.at_default.sensitivity,
        val_specificity: m.at_default.specificity,
        tta: opts.eval.tta,
        checkpoint: String::new(),
        checkpoint_sha256: String::new(),
        manifest_sha256: sha.clone(),
        note: Some(FIXED_THRESHOLD_NOTE.into()),
    });
    // The split caveat of an ordinary evaluation is replaced by the cross-validation one.
    let mut warnings = vec![HELD_OUT_IS_VAL.to_string()];
    warnings.extend(metrics::warnings(
        &EvalOptions {
            split: Split::Test,
            ..opts.eval.clone()
        },
        threshold.as_ref().zip(binary.as_ref()),
        multiclass.as_ref(),
        &sha,
        &sha,
    ));
    if !binary_run && !first.config.malignant.is_empty() {
        warnings.push(
            "the malignant-group view is left out of a cross-validation: it needs a decision \
             threshold, and a fold's only validation images are its held-out ones"
                .into(),
        );
    }
    let (binary_view, curves) = binary
        .map(|m| {
            m.into_view(
                threshold.clone().expect("two classes have a threshold"),
                scored.iter().all(|s| s.val_from_checkpoint),
            )
        })
        .unzip();
    let mut doc = CvMetrics {
        eval: EvalMetrics {
            format: METRICS_FORMAT.into(),
            format_version: METRICS_FORMAT_VERSION,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            split: Split::Val,
            tta: opts.eval.tta,
            device: scored[0].device.clone(),
            run_dir: absolute(cv_dir),
            checkpoint: absolute(cv_dir).join(format!("{FOLD_PREFIX}*/{}", crate::run::BEST_FILE)),
            checkpoint_sha256: PER_FOLD.into(),
            checkpoint_epoch: 0,
            data_dir: absolute(&data_dir),
            manifest_sha256: sha.clone(),
            trained_on_manifest_sha256: sha.clone(),
            class_names: names.to_vec(),
            image_size: base.image_size(),
            binary: binary_view,
            warnings,
            seconds: 0.0,
            malignant: Vec::new(),
            multiclass,
        },
        cv: section,
    };

    let dir = stage.path();
    let paths = predictions::image_paths(base.manifest(), &pooled);
    let (mut fns, mut fps) = (Vec::new(), Vec::new());
    if let (Some(view), Some((roc, pr))) = (&doc.eval.binary, &curves) {
        plots::draw_metrics(dir, view, roc, pr, names, &BINARY_FIGURES)?;
        // The val shards of K-fold data hold a clean copy of every pool image.
        (fns, fps) =
            errors::draw_errors(dir, &pooled, &paths, &base, Split::Val, DEFAULT_THRESHOLD)?;
    }
    if let Some(mc) = &doc.eval.multiclass {
        plots::draw_multiclass(dir, mc, &pooled.labels, &pooled.class_probs)?;
    }
    write_atomic(
        dir.join(super::PREDICTIONS_FILE),
        &predictions_with_folds(&pooled, &fold_of, &paths, names, true)?,
    )?;
    if let Some(test) = &test {
        let mut bytes = Vec::new();
        for (i, (s, p)) in scored.iter().zip(test).enumerate() {
            let paths = predictions::image_paths(base.manifest(), p);
            let folds = vec![s.run.fold; p.len()];
            bytes.extend(predictions_with_folds(p, &folds, &paths, names, i == 0)?);
        }
        write_atomic(dir.join(TEST_PREDICTIONS_FILE), &bytes)?;
    }
    doc.eval.seconds = start.elapsed().as_secs_f64();
    let report_ctx = report::ReportInput {
        metrics: &doc.eval,
        run_config: &first.config,
        manifest: base.manifest(),
        history: &[],
        curves_png: None,
        figures_dir: dir,
        false_negatives: &fns,
        false_positives: &fps,
        out_dir: &out_dir,
        threshold_file: None,
    };
    let html = report::render_cv(&report_ctx, report_context(&doc.cv, has_test))?;
    write_atomic(dir.join(super::REPORT_FILE), html.as_bytes())?;
    write_json_atomic(dir.join(super::METRICS_FILE), &doc)?;
    let out_dir = stage.commit()?;
    Ok(CvSummary {
        report: out_dir.join(super::REPORT_FILE),
        out_dir,
        metrics: doc,
    })
}

/// [`EvalMetrics::checkpoint_sha256`] of a cross-validation.
pub const PER_FOLD: &str = "one per fold: see cv.runs";

/// The note of the pooled predictions' threshold.
pub const FIXED_THRESHOLD_NOTE: &str = "cross-validation: the threshold is fixed at 0.5, not \
    chosen (both threshold columns are at 0.5): a fold's validation split is its held-out \
    fold, so a threshold chosen there would be tuned on the images it is measured on";

/// The caveat every cross-validation carries.
pub const HELD_OUT_IS_VAL: &str = "each fold's held-out images are also its validation \
    split, on which its best epoch was selected: the pooled out-of-fold figures are slightly \
    optimistic (the test split's, where there is one, are not)";

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The report's `cv` context: every figure as text.
fn report_context(cv: &CvSection, has_test: bool) -> minijinja::Value {
    use minijinja::context;
    let f4 = |v: f64| {
        if v.is_finite() {
            format!("{v:.4}")
        } else {
            "n/a".into()
        }
    };
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), f4);
    let ms = |m: Option<MeanSd>| m.map_or_else(|| "n/a".to_string(), |m| mean_sd_text(&m));
    let epochs: HashMap<u32, usize> = cv
        .runs
        .iter()
        .map(|r| (r.fold, r.checkpoint_epoch))
        .collect();
    let row = |f: &FoldFigures| {
        context! {
            fold => f.fold.map_or_else(|| "fold average".to_string(), |i| i.to_string()),
            epoch => f.fold.and_then(|i| epochs.get(&i)).map_or_else(String::new, |e| e.to_string()),
            n => f.n,
            roc_auc => opt(f.roc_auc),
            balanced_accuracy => f4(f.balanced_accuracy),
            accuracy => f4(f.accuracy),
            log_loss => f4(f.log_loss),
            sensitivity => opt(f.sensitivity),
            specificity => opt(f.specificity),
        }
    };
    let summary = |m: &FiguresMeanSd| {
        context! {
            roc_auc => ms(m.roc_auc),
            balanced_accuracy => mean_sd_text(&m.balanced_accuracy),
            accuracy => mean_sd_text(&m.accuracy),
            log_loss => mean_sd_text(&m.log_loss),
            sensitivity => ms(m.sensitivity),
            specificity => ms(m.specificity),
        }
    };
    let per_class: Vec<minijinja::Value> = cv
        .mean_sd
        .per_class
        .iter()
        .map(|c| {
            context! {
                recall => mean_sd_text(&c.recall),
                precision => mean_sd_text(&c.precision),
                f1 => mean_sd_text(&c.f1),
                roc_auc => ms(c.roc_auc),
            }
        })
        .collect();
    let test = cv.test.as_ref().filter(|_| has_test).map(|t| {
        context! {
            folds => t.folds.iter().map(row).collect::<Vec<_>>(),
            mean_sd => summary(&t.mean_sd),
            fold_average => row(&t.fold_average),
        }
    });
    context! {
        k => cv.k,
        decision => &cv.decision,
        sd => &cv.sd,
        binary => cv.folds.first().is_some_and(|f| f.sensitivity.is_some()),
        folds => cv.folds.iter().map(row).collect::<Vec<_>>(),
        mean_sd => summary(&cv.mean_sd),
        per_class,
        test,
    }
}

impl fmt::Display for CvSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (m, cv) = (&self.metrics.eval, &self.metrics.cv);
        writeln!(
            f,
            "cross-validation: {} folds, pooled out-of-fold predictions ({})",
            cv.k, cv.decision
        )?;
        if let Some(b) = &m.binary {
            let d = &b.at_default_threshold;
            writeln!(
                f,
                "pooled: {} images ({} benign, {} malignant), ROC AUC {:.4}, balanced accuracy \
                 {:.4}, sensitivity {:.4}, specificity {:.4} at 0.5",
                d.n,
                d.n_negative,
                d.n_positive,
                d.roc_auc,
                d.balanced_accuracy,
                d.sensitivity,
                d.specificity
            )?;
        }
        if let Some(mc) = &m.multiclass {
            let x = &mc.metrics;
            writeln!(
                f,
                "pooled: {} images, accuracy {:.4}, balanced accuracy {:.4}, macro ROC AUC {}",
                x.n,
                x.accuracy,
                x.balanced_accuracy,
                x.macro_roc_auc.map_or("n/a".into(), |v| format!("{v:.4}"))
            )?;
        }
        let table = |f: &mut fmt::Formatter<'_>, folds: &[FoldFigures], s: &FiguresMeanSd| {
            writeln!(
                f,
                "{:>6} {:>6} {:>8} {:>9} {:>9} {:>9}",
                "fold", "images", "ROC AUC", "bal. acc", "accuracy", "log loss"
            )?;
            for x in folds {
                writeln!(f, "{x}")?;
            }
            writeln!(
                f,
                "mean ± SD (ddof = 1): ROC AUC {}, balanced accuracy {}, accuracy {}, log loss {}",
                s.roc_auc.map_or("n/a".into(), |m| mean_sd_text(&m)),
                mean_sd_text(&s.balanced_accuracy),
                mean_sd_text(&s.accuracy),
                mean_sd_text(&s.log_loss)
            )
        };
        table(f, &cv.folds, &cv.mean_sd)?;
        if let Some(t) = &cv.test {
            writeln!(f, "test split, each fold's model:")?;
            table(f, &t.folds, &t.mean_sd)?;
            writeln!(f, "test split, fold-averaged probabilities:")?;
            writeln!(f, "{}", t.fold_average)?;
        }
        for w in &m.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "report: {}", self.report.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(source: &[u32], labels: &[usize], probs: &[f64]) -> SplitPredictions {
        SplitPredictions {
            source_index: source.to_vec(),
            labels: labels.to_vec(),
            logits: probs.iter().map(|p| (p / (1.0 - p)).ln() as f32).collect(),
            outputs: 1,
            class_probs: probs.iter().map(|&p| vec![1.0 - p, p]).collect(),
            probs: probs.to_vec(),
        }
    }

    fn fold_run(fold: u32) -> FoldRun {
        FoldRun {
            fold,
            run_dir: PathBuf::from(format!("cv/fold-{fold}")),
            checkpoint: PathBuf::from(format!("cv/fold-{fold}/best.safetensors")),
            checkpoint_sha256: "ab".repeat(32),
            checkpoint_epoch: 1,
        }
    }

    #[test]
    fn mean_sd_is_the_sample_standard_deviation() {
        // 0.7, 0.8, 0.9: mean 0.8, squared deviations 0.01 + 0 + 0.01 over n - 1 = 2.
        let m = mean_sd([Some(0.7), Some(0.8), None, Some(0.9)]).unwrap();
        assert_eq!(m.n, 3);
        assert!((m.mean - 0.8).abs() < 1e-15, "{m:?}");
        assert!((m.sd.unwrap() - 0.1).abs() < 1e-15, "{m:?}");
        let one = mean_sd([Some(0.25), None]).unwrap();
        assert_eq!((one.mean, one.sd, one.n), (0.25, None, 1));
        assert_eq!(mean_sd([None, None]), None);
        assert_eq!(mean_sd_text(&m), "0.8000 ± 0.1000");
        assert_eq!(mean_sd_text(&one), "0.2500 ± n/a");
    }

    #[test]
    fn two_folds_are_pooled_and_summarised() {
        // Fold 0: AUC 1 (every malignant above every benign); at 0.5: TP 1, FN 1, TN 2.
        let f0 = binary(&[0, 2, 4, 6], &[0, 0, 1, 1], &[0.1, 0.2, 0.4, 0.9]);
        // Fold 1: pairs (mal 0.6 vs ben 0.3, 0.7): 1 of 2 ordered; TP 1, TN 1, FP 1.
        let f1 = binary(&[1, 3, 5], &[0, 1, 0], &[0.3, 0.6, 0.7]);
        let (pooled, fold_of) = pool(&[(0, &f0), (1, &f1)]).unwrap();
        assert_eq!(fold_of, [0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(pooled.source_index, [0, 2, 4, 6, 1, 3, 5]);
        assert_eq!(pooled.labels, [0, 0, 1, 1, 0, 1, 0]);
        assert_eq!(pooled.probs[6], 0.7);
        assert_eq!(pooled.logits.len(), 7);

        let cv = aggregate(vec![fold_run(0), fold_run(1)], &[&f0, &f1], None).unwrap();
        assert_eq!(cv.k, 2);
        assert!(cv.test.is_none());
        let (a, b) = (&cv.folds[0], &cv.folds[1]);
        assert_eq!((a.fold, a.n, b.fold, b.n), (Some(0), 4, Some(1), 3));
        assert_eq!(a.roc_auc, Some(1.0));
        assert_eq!(b.roc_auc, Some(0.5));
        assert_eq!((a.accuracy, b.accuracy), (0.75, 2.0 / 3.0));
        assert_eq!((a.sensitivity, a.specificity), (Some(0.5), Some(1.0)));
        assert_eq!((b.sensitivity, b.specificity), (Some(1.0), Some(0.5)));
        assert_eq!((a.balanced_accuracy, b.balanced_accuracy), (0.75, 0.75));
        // Log loss by hand: fold 0 -(ln .9 + ln .8 + ln .4 + ln .9) / 4.
        let want0 = -(0.9f64.ln() + 0.8f64.ln() + 0.4f64.ln() + 0.9f64.ln()) / 4.0;
        assert!((a.log_loss - want0).abs() < 1e-12, "{}", a.log_loss);
        let m = &cv.mean_sd;
        let auc = m.roc_auc.unwrap();
        assert_eq!((auc.mean, auc.n), (0.75, 2));
        // Two values x, y: SD = |x - y| / sqrt(2).
        assert!((auc.sd.unwrap() - 0.5 / 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(m.balanced_accuracy.sd, Some(0.0));
        let acc = m.accuracy;
        assert!((acc.mean - (0.75 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
        assert!((acc.sd.unwrap() - (0.75 - 2.0 / 3.0) / 2f64.sqrt()).abs() < 1e-15);
        assert_eq!(m.sensitivity.unwrap().mean, 0.75);
        assert!(m.per_class.is_empty());
        assert!(cv.decision.starts_with("probability >= 0.5"));
        assert_eq!(cv.runs[1].fold, 1);
    }

    #[test]
    fn test_split_figures_per_fold_and_of_the_fold_average() {
        let oof0 = binary(&[0, 1], &[0, 1], &[0.2, 0.8]);
        let oof1 = binary(&[2, 3], &[1, 0], &[0.6, 0.1]);
        // The same three test images, in different orders.
        let t0 = binary(&[10, 11, 12], &[0, 1, 1], &[0.2, 0.4, 0.9]);
        let t1 = binary(&[12, 10, 11], &[1, 0, 1], &[0.5, 0.6, 0.8]);
        let cv = aggregate(
            vec![fold_run(0), fold_run(1)],
            &[&oof0, &oof1],
            Some(&[&t0, &t1]),
        )
        .unwrap();
        let test = cv.test.unwrap();
        assert_eq!(test.folds[0].accuracy, 2.0 / 3.0);
        assert_eq!(test.folds[1].accuracy, 2.0 / 3.0);
        assert_eq!(test.folds[1].roc_auc, Some(0.5));
        assert_eq!(test.mean_sd.accuracy.sd, Some(0.0));
        // Averages: image 10: 0.4, 11: 0.6, 12: 0.7 -> all right at 0.5, AUC 1.
        let avg = &test.fold_average;
        assert_eq!(avg.fold, None);
        assert_eq!(avg.n, 3);
        assert_eq!(avg.accuracy, 1.0);
        assert_eq!(avg.roc_auc, Some(1.0));
        let want = -((1.0f64 - 0.4).ln() + 0.6f64.ln() + 0.7f64.ln()) / 3.0;
        assert!((avg.log_loss - want).abs() < 1e-12, "{}", avg.log_loss);

        let other = binary(&[10, 11, 13], &[0, 1, 1], &[0.2, 0.4, 0.9]);
        let err = fold_average(&[(0, &t0), (1, &other)]).unwrap_err();
        assert!(
            err.to_string().contains("fold 1 scored other images"),
            "{err}"
        );
        let relabelled = binary(&[10, 11, 12], &[1, 1, 1], &[0.2, 0.4, 0.9]);
        let err = fold_average(&[(0, &t0), (1, &relabelled)]).unwrap_err();
        assert!(err.to_string().contains("other labels"), "{err}");
    }

    #[test]
    fn n_class_folds_have_per_class_figures() {
        let probs = |rows: &[[f64; 3]]| rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
        let p = |labels: &[usize], rows: &[[f64; 3]]| SplitPredictions {
            source_index: (0..labels.len() as u32).collect(),
            labels: labels.to_vec(),
            logits: vec![0.0; labels.len() * 3],
            outputs: 3,
            class_probs: probs(rows),
            probs: Vec::new(),
        };
        // Fold 0: all three right. Fold 1: class 2 predicted as 0.
        let f0 = p(
            &[0, 1, 2],
            &[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]],
        );
        let f1 = p(
            &[0, 1, 2],
            &[[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4]],
        );
        let cv = aggregate(vec![fold_run(0), fold_run(1)], &[&f0, &f1], None).unwrap();
        assert_eq!(cv.decision, "argmax (the most probable class)");
        let (a, b) = (&cv.folds[0], &cv.folds[1]);
        assert_eq!(a.sensitivity, None);
        assert_eq!(a.per_class.len(), 3);
        assert_eq!((a.accuracy, b.accuracy), (1.0, 2.0 / 3.0));
        assert_eq!(b.per_class[2].recall, 0.0);
        assert_eq!(b.per_class[0].precision, 0.5);
        let recall2 = cv.mean_sd.per_class[2].recall;
        assert_eq!(recall2.mean, 0.5);
        assert!((recall2.sd.unwrap() - 1.0 / 2f64.sqrt()).abs() < 1e-15);
        // Class 2's one-vs-rest AUC in fold 1: 0.4 against 0.1, 0.1 -> 1.
        assert_eq!(b.per_class[2].roc_auc, Some(1.0));
        let want_loss = -(0.6f64.ln() + 0.8f64.ln() + 0.4f64.ln()) / 3.0;
        assert!((b.log_loss - want_loss).abs() < 1e-12);
    }

    #[test]
    fn a_fold_without_a_class_is_named() {
        let f0 = binary(&[0, 1], &[0, 1], &[0.2, 0.8]);
        let f1 = binary(&[2, 3], &[0, 0], &[0.6, 0.1]);
        let err = aggregate(vec![fold_run(0), fold_run(1)], &[&f0, &f1], None).unwrap_err();
        assert!(
            err.to_string().contains("fold 1, on its held-out fold"),
            "{err}"
        );
    }

    #[test]
    fn fold_folders_are_found_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let cv = tmp.path();
        let err = find_folds(cv).unwrap_err();
        assert!(err.to_string().contains("no fold runs"), "{err}");
        assert_eq!(err.exit_code(), 2);
        for name in ["fold-0", "fold-1", "fold-3", "fold-notes", "eval"] {
            std::fs::create_dir(cv.join(name)).unwrap();
        }
        std::fs::write(cv.join("fold-.txt"), b"").unwrap();
        let found = find_folds(cv).unwrap();
        let ids: Vec<u32> = found.iter().map(|f| f.0).collect();
        assert_eq!(ids, [0, 1, 3]);
        assert_eq!(found[2].1, cv.join("fold-3"));

        let err = check_fold_set(cv, &ids, 4).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the data has 4 folds"), "{msg}");
        assert!(
            msg.contains(&format!("missing fold run {}", cv.join("fold-2").display())),
            "{msg}"
        );
        let err = check_fold_set(cv, &ids, 2).unwrap_err();
        assert!(
            err.to_string().contains("fold-3 beyond the data's folds"),
            "{err}"
        );
        assert!(check_fold_set(cv, &[0, 1, 2], 3).is_ok());

        std::fs::create_dir(cv.join("fold-02")).unwrap();
        let err = find_folds(cv).unwrap_err();
        assert!(err.to_string().contains("without zero padding"), "{err}");
    }

    /// K-fold synthetic data at 32 px (`folds` folds, a test split unless `no_test`) and an
    /// untrained run per fold that records it.
    fn cv_fixture(root: &Path, folds: u32, no_test: bool) -> (PathBuf, PathBuf) {
        cv_fixture_with(root, folds, no_test, &[])
    }

    /// [`cv_fixture`] relabelled to the classes `names` when there are more than two.
    fn cv_fixture_with(
        root: &Path,
        folds: u32,
        no_test: bool,
        names: &[String],
    ) -> (PathBuf, PathBuf) {
        use crate::prep::{self, PrepOptions};
        let images = root.join("images");
        crate::synth::generate(&images, 12, 1, false, false).unwrap();
        let data = root.join("prepared");
        let mut p = PrepOptions::new(&images, &data);
        p.size = 32;
        p.progress = false;
        p.folds = folds;
        p.no_test = no_test;
        prep::run(&p).unwrap();
        let names = if names.is_empty() {
            vec!["Benign".to_string(), "Malignant".to_string()]
        } else {
            crate::run::fixtures::relabel_prepared(&data, names, &[]).unwrap();
            // The relabelling leaves the per-fold class counts to the caller.
            let mut m = crate::manifest::Manifest::load(&data).unwrap();
            for c in &mut m.fold_counts {
                c.per_class = vec![0; names.len()];
                for im in m.images.iter().filter(|im| im.fold == Some(c.fold)) {
                    c.per_class[usize::from(im.class)] += 1;
                }
            }
            m.save(&data).unwrap();
            names.to_vec()
        };
        let sha = crate::manifest::manifest_sha256(&data).unwrap();
        let cv = root.join("cv");
        for i in 0..folds {
            let dir = fold_dir(&cv, i);
            crate::run::fixtures::write_untrained_run_with(
                &dir,
                32,
                u64::from(i),
                None,
                &names,
                &[],
            )
            .unwrap();
            let mut cfg = crate::run::read_config(&dir).unwrap();
            cfg.train.fold = Some(i);
            cfg.train.data = data.clone();
            cfg.manifest_sha256 = sha.clone();
            crate::run::write_config(&dir, &cfg).unwrap();
        }
        (data, cv)
    }

    fn options(cv: &Path) -> CvOptions {
        CvOptions {
            cv_dir: cv.to_path_buf(),
            data: None,
            out: None,
            eval: EvalOptions {
                device: "cpu".into(),
                bootstrap: 20,
                progress: false,
                ..EvalOptions::default()
            },
        }
    }

    fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
        let mut r = csv::Reader::from_path(path).unwrap();
        let header = r.headers().unwrap().iter().map(String::from).collect();
        let rows = r
            .records()
            .map(|x| x.unwrap().iter().map(String::from).collect())
            .collect();
        (header, rows)
    }

    #[test]
    fn fold_runs_are_aggregated_into_one_report() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, cv) = cv_fixture(tmp.path(), 3, false);
        let summary = super::run(&options(&cv)).unwrap();
        let out = cv.join(CV_EVAL_DIR);
        assert_eq!(summary.out_dir, out);
        let manifest = crate::manifest::Manifest::load(&data).unwrap();
        let pool: usize = manifest.fold_counts.iter().map(|c| c.total).sum();
        let test_n = manifest.counts(Split::Test).unwrap().total;
        assert!(pool > 0 && test_n > 0);

        let doc: CvMetrics =
            serde_json::from_slice(&std::fs::read(out.join(super::super::METRICS_FILE)).unwrap())
                .unwrap();
        assert_eq!(doc, summary.metrics);
        let (m, section) = (&doc.eval, &doc.cv);
        assert_eq!(section.k, 3);
        assert_eq!(section.folds.len(), 3);
        let b = m.binary.as_ref().unwrap();
        assert_eq!(b.at_default_threshold.n as usize, pool);
        assert_eq!(b.threshold.threshold, 0.5);
        assert_eq!(b.at_chosen_threshold, b.at_default_threshold);
        assert_eq!(m.warnings[0], HELD_OUT_IS_VAL);
        assert_eq!(m.warnings[1], FIXED_THRESHOLD_NOTE);
        assert_eq!(b.threshold.note.as_deref(), Some(FIXED_THRESHOLD_NOTE));
        assert_eq!(b.threshold.method, ThresholdMethod::Fixed);
        assert!(b.threshold.describe().ends_with(" (fixed)"));

        // predictions.csv: the pooled rows, fold by fold, each fold's figures recomputed.
        let (header, rows) = csv_rows(&out.join(super::super::PREDICTIONS_FILE));
        assert_eq!(header.last().unwrap(), FOLD_COLUMN);
        assert_eq!(rows.len(), pool);
        for f in &section.folds {
            let fold = f.fold.unwrap();
            let mine: Vec<&Vec<String>> =
                rows.iter().filter(|r| r[8] == fold.to_string()).collect();
            assert_eq!(mine.len(), manifest.fold_counts(fold).unwrap().total);
            let labels: Vec<usize> = mine.iter().map(|r| r[1].parse().unwrap()).collect();
            let probs: Vec<f64> = mine.iter().map(|r| r[3].parse().unwrap()).collect();
            let want = crate::metrics::evaluate(&labels, &probs, 0.5).unwrap();
            assert_eq!(f.roc_auc, Some(want.roc_auc));
            assert_eq!(f.log_loss, want.log_loss);
            // Every row of the fold is an image of that fold.
            for r in &mine {
                let src: usize = r[7].parse().unwrap();
                assert_eq!(manifest.images[src].fold, Some(fold));
            }
        }
        let test = section.test.as_ref().unwrap();
        assert_eq!(test.folds.len(), 3);
        assert_eq!(test.fold_average.n as usize, test_n);
        let (_, test_rows) = csv_rows(&out.join(TEST_PREDICTIONS_FILE));
        assert_eq!(test_rows.len(), 3 * test_n);

        let html = std::fs::read_to_string(out.join(super::super::REPORT_FILE)).unwrap();
        assert!(
            html.contains("cross-validation: 3 folds, pooled out-of-fold predictions"),
            "the report is not marked"
        );
        for want in [
            "<tr data-fold=\"0\">",
            "<tr data-fold=\"2\">",
            "<tr data-fold=\"mean\">",
            "<table id=\"cv-test\">",
            "<th>at 0.5000 (fixed)</th>",
        ] {
            assert!(html.contains(want), "the report lacks {want}");
        }
        assert!(
            !html.contains("(chosen)"),
            "the fixed threshold is called chosen"
        );

        // Our own output is replaced with --force only; a folder of the user's never.
        let err = super::run(&options(&cv)).unwrap_err();
        assert!(matches!(err, Error::OutputExists { .. }), "{err:?}");
        let mut forced = options(&cv);
        forced.eval.force = true;
        super::run(&forced).unwrap();
        let mine = tmp.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("notes.txt"), b"mine").unwrap();
        forced.out = Some(mine.clone());
        let err = super::run(&forced).unwrap_err();
        assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
        assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"mine");
    }

    #[test]
    fn n_class_folds_are_aggregated_with_per_class_figures() {
        let tmp = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (_, cv) = cv_fixture_with(tmp.path(), 2, true, &names);
        let summary = super::run(&options(&cv)).unwrap();
        let doc = &summary.metrics;
        let mc = doc.eval.multiclass.as_ref().unwrap();
        assert!(doc.eval.binary.is_none());
        assert_eq!(doc.cv.k, 2);
        assert!(doc.cv.test.is_none());
        let per_fold: u64 = doc.cv.folds.iter().map(|f| f.n).sum();
        assert_eq!(mc.metrics.n, per_fold);
        assert_eq!(doc.cv.folds[0].per_class.len(), 3);
        assert_eq!(doc.cv.mean_sd.per_class.len(), 3);
        let (header, rows) = csv_rows(&summary.out_dir.join(super::super::PREDICTIONS_FILE));
        assert_eq!(header[3..6], ["p_a", "p_b", "p_c"]);
        assert_eq!(header.last().unwrap(), FOLD_COLUMN);
        assert_eq!(rows.len() as u64, per_fold);
        let html = std::fs::read_to_string(&summary.report).unwrap();
        assert!(html.contains("cross-validation: 2 folds, pooled out-of-fold predictions"));
        assert!(html.contains("<table id=\"cv-per-class\">"));
        assert!(html.contains("<tr data-class=\"c\"><td>c</td>"));
    }

    #[test]
    fn missing_folds_and_mixed_runs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (data, cv) = cv_fixture(tmp.path(), 3, true);
        let mut opts = options(&cv);
        opts.data = Some(data.clone());

        // A run trained on other data.
        let fold2 = fold_dir(&cv, 2);
        let mut cfg = crate::run::read_config(&fold2).unwrap();
        let sha = cfg.manifest_sha256.clone();
        cfg.manifest_sha256 = "f".repeat(64);
        crate::run::write_config(&fold2, &cfg).unwrap();
        let err = super::run(&opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(&fold2.display().to_string()), "{msg}");
        assert!(msg.contains("trained on other prepared data"), "{msg}");
        assert_eq!(err.exit_code(), 2);

        // A run of another fold in fold-2's place.
        cfg.manifest_sha256 = sha;
        cfg.train.fold = Some(1);
        crate::run::write_config(&fold2, &cfg).unwrap();
        let err = super::run(&opts).unwrap_err();
        assert!(
            err.to_string()
                .contains("is the run of fold 1, not of fold 2"),
            "{err}"
        );

        // A missing fold.
        std::fs::remove_dir_all(fold_dir(&cv, 1)).unwrap();
        let err = super::run(&opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the data has 3 folds"), "{msg}");
        assert!(
            msg.contains(&fold_dir(&cv, 1).display().to_string()),
            "{msg}"
        );
        assert!(!cv.join(CV_EVAL_DIR).exists());
    }

    #[test]
    fn data_without_folds_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, cv) = cv_fixture(tmp.path(), 2, true);
        let images = tmp.path().join("images");
        let plain = tmp.path().join("plain");
        let mut p = crate::prep::PrepOptions::new(&images, &plain);
        p.size = 32;
        p.progress = false;
        crate::prep::run(&p).unwrap();
        let mut opts = options(&cv);
        opts.data = Some(plain);
        let err = super::run(&opts).unwrap_err();
        assert!(matches!(err, Error::BadDataset { .. }), "{err:?}");
        assert!(err.to_string().contains("has no folds"), "{err}");
    }
}

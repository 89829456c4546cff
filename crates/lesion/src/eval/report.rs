//! `report.html`: one self-contained page per evaluation. Figures are inlined as
//! `data:image/png;base64,...` URIs and the CSS is inline, so the file can be mailed or
//! archived alone and opens without network access; no script is needed to read it.
//!
//! The page is `templates/report.html` (its pieces in `macros.html`, its style in
//! `report.css`, all compiled in), rendered with minijinja from a context built here in
//! which every number is already formatted text (4 decimals, percentages, interval text,
//! the UTC date) except probabilities and decision thresholds: those are numbers that the
//! templates write through the `probability` and `threshold` filters, the rule of
//! [`crate::display`]. Every value is HTML-escaped on output.
//!
//! Landmarks other tools rely on (the browser test does): `table#metrics` has one
//! `tr[data-metric]` per figure, named as in `metrics.json`; `#disclaimer` is the
//! research-use notice. An N-class page (`templates/report_multiclass.html`, which extends
//! the two-class page block by block) has `table#per-class` with one `tr[data-class]` per
//! class whose cells `td[data-metric]` are `recall`, `specificity`, `precision`, `f1` and
//! `roc_auc`, then `table#confusion` and `table#overall`; where a malignant group exists,
//! `#malignant-heading` and the two-class page's sections follow.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{context, AutoEscape, Environment, Output, State, UndefinedBehavior, Value};

use super::{
    BinaryView, ErrorCase, EvalMetrics, MulticlassSection, ThresholdMethod, BINARY_FIGURES,
    CALIBRATION_FILE, CONFUSION_FILE, ERRORS_FILE, MALIGNANT_FIGURES, PREDICTIONS_FILE,
    REPORT_FILE, ROC_FILE,
};
use crate::display;
use crate::error::IoContext;
use crate::manifest::Manifest;
use crate::metrics::{BinaryMetrics, BootstrapCis, ConfidenceInterval, CALIBRATION_BINS};
use crate::run::{EpochRecord, RunConfig};
use crate::split::Split;
use crate::{Error, Result};

/// The page's template, which imports [`MACROS`] and includes the stylesheet.
const PAGE: &str = "report.html";
/// The N-class page: [`PAGE`] with the per-class blocks first.
const MULTICLASS_PAGE: &str = "report_multiclass.html";
const MACROS: &str = "macros.html";
/// Every template, by name (the name's extension sets the escaping: HTML for `.html`).
const TEMPLATES: [(&str, &str); 4] = [
    (PAGE, include_str!("templates/report.html")),
    (
        MULTICLASS_PAGE,
        include_str!("templates/report_multiclass.html"),
    ),
    (MACROS, include_str!("templates/macros.html")),
    ("report.css", include_str!("templates/report.css")),
];

/// The `data-metric` names of the rows of `table#metrics`, in order.
pub const METRIC_ROWS: [&str; 17] = [
    "roc_auc",
    "average_precision",
    "brier",
    "log_loss",
    "ece",
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "mcc",
    "tp",
    "fp",
    "fn",
    "tn",
    "threshold",
];

/// Everything the page shows.
#[derive(Debug)]
pub struct ReportInput<'a> {
    pub metrics: &'a EvalMetrics,
    pub run_config: &'a RunConfig,
    pub manifest: &'a Manifest,
    pub history: &'a [EpochRecord],
    /// The run's `curves.png`, if present.
    pub curves_png: Option<&'a [u8]>,
    /// Where the figures were written (the staging folder).
    pub figures_dir: &'a Path,
    pub false_negatives: &'a [ErrorCase],
    pub false_positives: &'a [ErrorCase],
    /// The final output folder (for the paths the page names).
    pub out_dir: &'a Path,
    /// Where the threshold is saved for prediction; `None` when it is not (a `--malignant`
    /// group other than the run's).
    pub threshold_file: Option<&'a Path>,
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM UTC` for a Unix time (Howard Hinnant's civil-from-days).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn f4(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        "n/a".into()
    }
}

fn ci_text(ci: Option<&ConfidenceInterval>) -> String {
    match ci {
        Some(c) => format!("{} – {}", f4(c.lower), f4(c.upper)),
        None => "—".into(),
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// The page's templates, with HTML auto-escaping (chosen by the `.html` extension) done
/// by [`html_formatter`], undefined names an error rather than empty text, and the
/// `probability` and `threshold` filters of [`crate::display`].
fn environment() -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_formatter(html_formatter);
    env.add_filter("probability", display::probability);
    env.add_filter("threshold", display::threshold);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

/// minijinja's formatter with [`escape`]'s rules for HTML. minijinja's own escaping also
/// writes `/` as `&#x2f;` (and `'` as `&#x27;`): HTML text and quoted attributes never need
/// the first, which would bloat every path and every base64 figure on the page.
fn html_formatter(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.as_str() {
        Some(s) if *state.auto_escape() == AutoEscape::Html && !value.is_safe() => {
            out.write_str(&escape(s)).map_err(minijinja::Error::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Renders the page, dated now.
pub fn render(input: &ReportInput<'_>) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    render_at(input, now)
}

/// What the page of an evaluation on an external image folder adds to [`ReportInput`]: the
/// notice `#external` at the top, and the folder's counts in place of the prepared data's.
#[derive(Debug, Clone)]
pub struct ExternalPage {
    /// The folder, as the page names it.
    pub folder: String,
    /// Images evaluated.
    pub images: usize,
    /// `n class, ...` in class order.
    pub per_class: String,
    /// Where the decision threshold came from.
    pub threshold_source: String,
    /// Files that could not be read (named in the warnings).
    pub unreadable: usize,
}

/// Renders the page of an evaluation on an external image folder, dated now.
pub fn render_external(input: &ReportInput<'_>, external: &ExternalPage) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    render_with(input, now, Some(external_part(input, external)))
}

/// The context that [`render_external`] lays over the page's.
fn external_part(input: &ReportInput<'_>, e: &ExternalPage) -> Value {
    let counts = format!("{} ({})", e.images, e.per_class);
    context! {
        split => "external",
        external => context! {
            folder => &e.folder,
            images => e.images,
            per_class => &e.per_class,
            threshold_source => &e.threshold_source,
            unreadable => e.unreadable,
        },
        // The leftmost of merged contexts wins.
        config => context! {
            ..context! {
                data_dir => &e.folder,
                manifest_sha256 => "none (an image folder, not prepared data)",
                split_counts => format!("external set: {counts}; none of the run's own splits"),
            },
            ..config_rows(input)
        },
    }
}

/// Renders the page, dated `now` (Unix seconds).
fn render_at(input: &ReportInput<'_>, now: u64) -> Result<String> {
    render_with(input, now, None)
}

/// Renders the page, dated `now`, with `extra` laid over its context (its keys win: the
/// leftmost of merged contexts does).
fn render_with(input: &ReportInput<'_>, now: u64, extra: Option<Value>) -> Result<String> {
    let page = page(input, now)?;
    let page = match extra {
        Some(extra) => context! { ..extra, ..page },
        None => page,
    };
    let name = if input.metrics.multiclass.is_some() {
        MULTICLASS_PAGE
    } else {
        PAGE
    };
    let env = environment();
    env.and_then(|env| env.get_template(name)?.render(page))
        .map_err(|e| Error::Encode {
            what: REPORT_FILE.into(),
            reason: format!("{e:#}"),
        })
}

/// The cross-validation pages (see [`super::cv`]): [`PAGE`] or [`MULTICLASS_PAGE`] marked
/// "cross-validation", with the per-fold section (`table#cv-folds`, one `tr[data-fold]`
/// per fold and `tr[data-fold="mean"]`; with a test split `table#cv-test`) in place of
/// the threshold's; `cv` is that section's context.
const CV_TEMPLATES: [(&str, &str); 3] = [
    ("report_cv.html", include_str!("templates/report_cv.html")),
    (
        "report_cv_multiclass.html",
        include_str!("templates/report_cv_multiclass.html"),
    ),
    ("cv.html", include_str!("templates/cv.html")),
];

/// Renders a cross-validation page, dated now (`cv`: the context of `cv.html`).
pub fn render_cv(input: &ReportInput<'_>, cv: Value) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    render_cv_at(input, cv, now)
}

fn render_cv_at(input: &ReportInput<'_>, cv: Value, now: u64) -> Result<String> {
    let page = page(input, now)?;
    let name = CV_TEMPLATES[usize::from(input.metrics.multiclass.is_some())].0;
    let env = environment().and_then(|mut env| {
        for (name, source) in CV_TEMPLATES {
            env.add_template(name, source)?;
        }
        Ok(env)
    });
    let ctx = context! { split => "pooled out-of-fold", cv, ..page };
    env.and_then(|env| env.get_template(name)?.render(ctx))
        .map_err(|e| Error::Encode {
            what: REPORT_FILE.into(),
            reason: format!("{e:#}"),
        })
}

/// The figures of one threshold column (`f4` text, counts and the threshold as numbers).
fn at_threshold(b: &BinaryMetrics) -> Value {
    let cm = &b.confusion_matrix;
    context! {
        threshold => b.threshold,
        roc_auc => f4(b.roc_auc),
        average_precision => f4(b.average_precision),
        brier => f4(b.brier),
        log_loss => f4(b.log_loss),
        ece => f4(b.ece),
        accuracy => f4(b.accuracy),
        balanced_accuracy => f4(b.balanced_accuracy),
        sensitivity => f4(b.sensitivity),
        specificity => f4(b.specificity),
        precision => f4(b.precision),
        f1 => f4(b.f1),
        mcc => f4(b.mcc),
        tp => cm.tp,
        fp => cm.fp,
        fn => cm.fn_,
        tn => cm.tn,
    }
}

/// The interval texts of one threshold column (`—` each without a bootstrap).
fn intervals(b: Option<&BootstrapCis>) -> Value {
    context! {
        roc_auc => ci_text(b.map(|b| &b.roc_auc)),
        sensitivity => ci_text(b.map(|b| &b.sensitivity)),
        specificity => ci_text(b.map(|b| &b.specificity)),
        accuracy => ci_text(b.map(|b| &b.accuracy)),
    }
}

fn error_rows(cases: &[ErrorCase]) -> Vec<Value> {
    cases
        .iter()
        .map(|e| {
            context! {
                path => &e.path,
                probability => e.probability,
            }
        })
        .collect()
}

/// `total (n class, ...)` of a split, `0` if the manifest has no counts for it.
fn split_counts(manifest: &Manifest, s: Split, fold: Option<u32>) -> String {
    let per_class = match fold {
        // A run on fold f of K-fold data trains on the other folds and validates on f.
        Some(f) if manifest.folds > 0 && s != Split::Test => {
            let mut pc = vec![0; manifest.classes.len()];
            for c in manifest
                .fold_counts
                .iter()
                .filter(|c| (c.fold == f) == (s == Split::Val))
            {
                for (n, &m) in pc.iter_mut().zip(&c.per_class) {
                    *n += m;
                }
            }
            Some(pc)
        }
        _ => manifest.counts(s).map(|c| c.per_class.clone()),
    };
    per_class
        .map(|pc| {
            let per: Vec<String> = pc
                .iter()
                .zip(&manifest.classes)
                .map(|(n, name)| format!("{n} {name}"))
                .collect();
            let of_fold = match (fold, s) {
                (Some(f), Split::Val) => format!(", fold {f} of {}", manifest.folds),
                _ => String::new(),
            };
            format!("{} ({}{of_fold})", pc.iter().sum::<usize>(), per.join(", "))
        })
        .unwrap_or_else(|| "0".into())
}

/// The rows of `table#config`.
fn config_rows(input: &ReportInput<'_>) -> Value {
    let (m, cfg, manifest) = (input.metrics, input.run_config, input.manifest);
    let tr = &cfg.train;
    context! {
        run_dir => m.run_dir.display().to_string(),
        checkpoint => m.checkpoint.display().to_string(),
        checkpoint_sha256 => &m.checkpoint_sha256,
        weights_source => &cfg.weights_source,
        trainable => tr.trainable.to_string(),
        epochs_patience_monitor => format!("{} / {} / {}", tr.epochs, tr.patience, tr.monitor),
        batch_size => tr.batch_size.to_string(),
        learning_rates => format!(
            "{} / {} / {} / {}",
            tr.lr_head, tr.lr_layer4, tr.lr_layer3, tr.lr_backbone
        ),
        head_dropout => tr.head_dropout.to_string(),
        seed => tr.seed.to_string(),
        trained_on_device => &cfg.device,
        evaluated_on_device => &m.device,
        data_dir => m.data_dir.display().to_string(),
        manifest_sha256 => &m.manifest_sha256,
        trained_on_manifest_sha256 => &m.trained_on_manifest_sha256,
        input_dir => &manifest.options.input,
        classes => manifest.classes.join(", "),
        image_size => format!("{0}×{0} px ({1:?})", manifest.image_size, manifest.resize),
        normalisation => format!(
            "{:?} / {:?}",
            manifest.normalization.mean, manifest.normalization.std
        ),
        split_counts => format!(
            "{} / {} / {}",
            split_counts(manifest, Split::Train, tr.fold),
            split_counts(manifest, Split::Val, tr.fold),
            split_counts(manifest, Split::Test, tr.fold)
        ),
        seconds => format!("{:.1} s", m.seconds),
    }
}

/// The base64 of a figure written beside the report.
fn figure_png(dir: &Path, file: &str) -> Result<String> {
    let path = dir.join(file);
    Ok(base64(&std::fs::read(&path).with_path(&path)?))
}

/// The template's context: everything the page shows, formatted.
fn page(input: &ReportInput<'_>, now: u64) -> Result<Value> {
    let m = input.metrics;
    let common = common_part(input, now);
    match (&m.multiclass, &m.binary) {
        (None, Some(b)) => {
            let benign = m.class_names.first().map_or("benign", String::as_str);
            let malignant = m.class_names.get(1).map_or("malignant", String::as_str);
            let binary = binary_part(input, b, &BINARY_FIGURES, (benign, malignant))?;
            Ok(context! { ..common, ..binary })
        }
        (None, None) => Err(Error::Encode {
            what: REPORT_FILE.into(),
            reason: "a two-class evaluation without its figures".into(),
        }),
        (Some(mc), b) => {
            let group = m.malignant.join(", ");
            let mc = multiclass_part(input, mc, &group)?;
            match b {
                Some(b) => {
                    let names = ("not malignant", "malignant");
                    let binary = binary_part(input, b, &MALIGNANT_FIGURES, names)?;
                    Ok(context! { ..context! { binary => true }, ..common, ..mc, ..binary })
                }
                None => Ok(context! { ..context! { binary => false }, ..common, ..mc }),
            }
        }
    }
}

/// What every page shows: the run, the split, the training history and configuration.
fn common_part(input: &ReportInput<'_>, now: u64) -> Value {
    let m = input.metrics;
    let run_name = m.run_dir.file_name().map_or_else(
        || m.run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let history: Vec<Value> = input
        .history
        .iter()
        .map(|r| {
            context! {
                epoch => r.epoch,
                evaluated => r.epoch == m.checkpoint_epoch,
                train_loss => f4(r.train_loss),
                train_acc => f4(r.train_acc),
                val_loss => f4(r.val_loss),
                val_acc => f4(r.val_acc),
                val_auc => f4(r.val_auc),
                seconds => format!("{:.1}", r.seconds),
            }
        })
        .collect();
    context! {
        run_name,
        split => m.split.name(),
        checkpoint => m
            .checkpoint
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        epoch => m.checkpoint_epoch,
        tta => m.tta,
        image_size => m.image_size,
        generated => utc(now),
        version => &m.crate_version,
        warnings => &m.warnings,
        curves => input.curves_png.map(base64),
        history,
        config => config_rows(input),
        config_json => serde_json::to_string_pretty(input.run_config).unwrap_or_default(),
        out_dir => input.out_dir.display().to_string(),
        predictions_csv => input.out_dir.join(PREDICTIONS_FILE).display().to_string(),
        input_dir => &input.manifest.options.input,
    }
}

/// The malignant-vs-benign figures of `b` (`files`: its ROC, PR, confusion and
/// calibration PNGs; `(benign, malignant)`: what the two sides are called).
fn binary_part(
    input: &ReportInput<'_>,
    b: &BinaryView,
    files: &[&str; 4],
    (benign, malignant): (&str, &str),
) -> Result<Value> {
    let (d, c, t) = (
        &b.at_default_threshold,
        &b.at_chosen_threshold,
        &b.threshold,
    );
    let (bd, bc) = match &b.bootstrap {
        Some(b) => (Some(&b.at_default_threshold), Some(&b.at_chosen_threshold)),
        None => (None, None),
    };
    let dir = input.figures_dir;
    let spec_at_sens: Vec<Value> = d
        .specificity_at_sensitivity
        .iter()
        .map(|p| {
            context! {
                target => format!("{:.2}", p.target_sensitivity),
                target_pct => pct(p.target_sensitivity),
                threshold => p.threshold,
                sensitivity => format!("{:.4}", p.sensitivity),
                specificity => format!("{:.4}", p.specificity),
            }
        })
        .collect();
    Ok(context! {
        n => d.n,
        n_negative => d.n_negative,
        n_positive => d.n_positive,
        benign,
        malignant,
        d => at_threshold(d),
        c => at_threshold(c),
        ci_d => intervals(bd),
        ci_c => intervals(bc),
        intervals => bc.map(|b| context! { resamples => b.n_resamples, seed => b.seed }),
        calibration_bins => CALIBRATION_BINS,
        threshold => context! {
            value => t.threshold,
            fixed => t.method == ThresholdMethod::Fixed,
            target => t.target_sensitivity.map(pct),
            val_sensitivity => format!("{:.3}", t.val_sensitivity),
            val_specificity => format!("{:.3}", t.val_specificity),
            tta => t.tta,
            file => input.threshold_file.map(|f| f.display().to_string()),
            note => &t.note,
        },
        spec_at_sens,
        youden => d.youden.as_ref().map(|y| context! {
            threshold => y.threshold,
            sensitivity => format!("{:.3}", y.sensitivity),
            specificity => format!("{:.3}", y.specificity),
        }),
        figures => context! {
            confusion => figure_png(dir, files[2])?,
            roc => figure_png(dir, files[0])?,
            pr => figure_png(dir, files[1])?,
            calibration => figure_png(dir, files[3])?,
            errors => figure_png(dir, ERRORS_FILE)?,
        },
        false_negatives => error_rows(input.false_negatives),
        false_positives => error_rows(input.false_positives),
    })
}

/// The N-class figures, under `mc` (`group`: the malignant classes, comma-separated).
fn multiclass_part(input: &ReportInput<'_>, s: &MulticlassSection, group: &str) -> Result<Value> {
    let x = &s.metrics;
    let b = s.bootstrap.as_ref();
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), f4);
    let classes: Vec<Value> = x
        .per_class
        .iter()
        .zip(&s.class_names)
        .enumerate()
        .map(|(k, (c, name))| {
            let ci = b.map(|b| &b.per_class[k]);
            context! {
                name,
                support => c.support,
                predicted => c.predicted,
                recall => f4(c.recall),
                recall_ci => ci_text(ci.and_then(|i| i.recall.as_ref())),
                specificity => f4(c.specificity),
                specificity_ci => ci_text(ci.and_then(|i| i.specificity.as_ref())),
                precision => f4(c.precision),
                precision_ci => ci_text(ci.map(|i| &i.precision)),
                f1 => f4(c.f1),
                f1_ci => ci_text(ci.map(|i| &i.f1)),
                roc_auc => opt(c.roc_auc),
                roc_auc_ci => ci_text(ci.and_then(|i| i.roc_auc.as_ref())),
            }
        })
        .collect();
    let rows: Vec<Value> = x
        .confusion_matrix
        .iter()
        .zip(&x.confusion_normalized)
        .zip(&s.class_names)
        .map(|((counts, shares), name)| {
            let cells: Vec<Value> = counts
                .iter()
                .zip(shares)
                .map(|(n, f)| context! { count => n, share => pct(*f), diagonal => false })
                .collect();
            context! { name, cells }
        })
        .collect();
    let top_k: Vec<Value> = x
        .top_k_accuracy
        .iter()
        .map(|t| context! { k => t.k, accuracy => f4(t.accuracy) })
        .collect();
    let dir = input.figures_dir;
    Ok(context! {
        mc => context! {
            n => x.n,
            n_classes => x.n_classes,
            accuracy => f4(x.accuracy),
            balanced_accuracy => f4(x.balanced_accuracy),
            macro_precision => f4(x.macro_precision),
            macro_recall => f4(x.macro_recall),
            macro_f1 => f4(x.macro_f1),
            weighted_f1 => f4(x.weighted_f1),
            macro_roc_auc => opt(x.macro_roc_auc),
            weighted_roc_auc => opt(x.weighted_roc_auc),
            log_loss => f4(x.log_loss),
            ece => f4(x.top_class_calibration.ece),
            ci => b.map(|b| context! {
                accuracy => ci_text(Some(&b.accuracy)),
                balanced_accuracy => ci_text(Some(&b.balanced_accuracy)),
                macro_f1 => ci_text(Some(&b.macro_f1)),
                macro_roc_auc => ci_text(b.macro_roc_auc.as_ref()),
                resamples => b.n_resamples,
                seed => b.seed,
            }),
            classes,
            class_names => &s.class_names,
            confusion => rows,
            top_k,
            group => (!group.is_empty()).then_some(group),
            calibration_bins => CALIBRATION_BINS,
            figures => context! {
                roc => figure_png(dir, ROC_FILE)?,
                confusion => figure_png(dir, CONFUSION_FILE)?,
                calibration => figure_png(dir, CALIBRATION_FILE)?,
            },
        },
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::eval::{BootstrapPair, Threshold, ThresholdMethod, PR_FILE};
    use crate::image_io::ResizePolicy;
    use crate::manifest::{Normalization, PrepRecord, SplitCounts};
    use crate::metrics::{self, OperatingPoint};
    use crate::run::TrainConfig;
    use std::path::PathBuf;

    /// Text that HTML must escape, in every string the page shows (paths bring their `/`).
    const NASTY: &str = "<&amp; \"q\" 'a'>";

    fn labels_probs() -> (Vec<usize>, Vec<f64>) {
        let labels = vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 1];
        let probs = vec![
            0.05, 0.2, 0.35, 0.61, 0.1, 0.45, 0.9, 0.55, 0.3, 0.8, 0.72, 0.66,
        ];
        (labels, probs)
    }

    fn error(row: usize, label: usize, probability: f64, path: &str) -> ErrorCase {
        ErrorCase {
            row,
            source_index: row as u32,
            path: path.into(),
            label,
            probability,
        }
    }

    struct Fixture {
        metrics: EvalMetrics,
        config: RunConfig,
        manifest: Manifest,
        history: Vec<EpochRecord>,
        curves: Vec<u8>,
        figures: tempfile::TempDir,
        false_negatives: Vec<ErrorCase>,
        false_positives: Vec<ErrorCase>,
        out_dir: PathBuf,
        threshold_file: PathBuf,
    }

    impl Fixture {
        fn input(&self, full: bool) -> ReportInput<'_> {
            ReportInput {
                metrics: &self.metrics,
                run_config: &self.config,
                manifest: &self.manifest,
                history: if full { &self.history } else { &[] },
                curves_png: full.then_some(self.curves.as_slice()),
                figures_dir: self.figures.path(),
                false_negatives: if full { &self.false_negatives } else { &[] },
                false_positives: if full { &self.false_positives } else { &[] },
                out_dir: &self.out_dir,
                threshold_file: Some(&self.threshold_file),
            }
        }
    }

    /// Every section of the page present (`full`), or every optional one left out.
    fn fixture(full: bool) -> Fixture {
        fixture_at(full, 0.4123)
    }

    /// The metrics of the full fixture with the threshold `chosen` (for the terminal table).
    pub(in crate::eval) fn metrics_at(chosen: f64) -> EvalMetrics {
        fixture_at(true, chosen).metrics
    }

    /// [`fixture`] with the decision threshold `chosen`.
    fn fixture_at(full: bool, chosen: f64) -> Fixture {
        let (labels, probs) = labels_probs();
        let thr = 0.5;
        let mut at_default = metrics::evaluate(&labels, &probs, thr).unwrap();
        let mut at_chosen = metrics::evaluate(&labels, &probs, chosen).unwrap();
        if full {
            at_default.mcc = f64::NAN;
            at_default.youden = Some(OperatingPoint {
                threshold: 0.55,
                sensitivity: 0.8,
                specificity: 0.857_142_857,
            });
        } else {
            at_default.youden = None;
            at_chosen.youden = None;
        }
        let bootstrap = full.then(|| BootstrapPair {
            at_default_threshold: metrics::bootstrap_ci(&labels, &probs, 25, 7, thr).unwrap(),
            at_chosen_threshold: metrics::bootstrap_ci(&labels, &probs, 25, 7, chosen).unwrap(),
        });
        let classes = vec![format!("benign {NASTY}"), format!("malignant {NASTY}")];
        let run_dir = PathBuf::from(format!("/runs/run {NASTY}"));
        let metrics = EvalMetrics {
            format: crate::eval::METRICS_FORMAT.into(),
            format_version: crate::eval::METRICS_FORMAT_VERSION,
            crate_version: format!("0.9.9 {NASTY}"),
            split: Split::Test,
            tta: full,
            device: format!("cpu {NASTY}"),
            run_dir: run_dir.clone(),
            checkpoint: run_dir.join(format!("best {NASTY}.safetensors")),
            checkpoint_sha256: "ab".repeat(32),
            checkpoint_epoch: 2,
            data_dir: PathBuf::from(format!("/data/prepared {NASTY}")),
            manifest_sha256: "cd".repeat(32),
            trained_on_manifest_sha256: "ef".repeat(32),
            class_names: classes.clone(),
            image_size: 112,
            binary: Some(BinaryView {
                threshold: Threshold {
                    threshold: chosen,
                    method: if full {
                        ThresholdMethod::Sensitivity
                    } else {
                        ThresholdMethod::Youden
                    },
                    target_sensitivity: full.then_some(0.95),
                    split: Split::Val,
                    val_sensitivity: 0.951_234,
                    val_specificity: 0.612_345,
                    tta: full,
                    checkpoint: format!("best {NASTY}.safetensors"),
                    checkpoint_sha256: "ab".repeat(32),
                    manifest_sha256: "cd".repeat(32),
                    note: full.then(|| format!("the note {NASTY}")),
                },
                val_from_checkpoint: !full,
                at_default_threshold: at_default,
                at_chosen_threshold: at_chosen,
                bootstrap,
                calibration: metrics::calibration(&labels, &probs, CALIBRATION_BINS).unwrap(),
            }),
            warnings: if full {
                vec![format!("first warning {NASTY}"), "second warning".into()]
            } else {
                Vec::new()
            },
            seconds: 12.345,
            malignant: Vec::new(),
            multiclass: None,
        };
        let config = RunConfig {
            train: TrainConfig {
                data: PathBuf::from(format!("/data/prepared {NASTY}")),
                lr_layer3: 3.5e-5,
                ..TrainConfig::default()
            },
            manifest_sha256: "ef".repeat(32),
            class_names: classes.clone(),
            malignant: Vec::new(),
            image_size: 112,
            resize: None,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            weights_source: format!("imagenet {NASTY}"),
            weights_sha256: Some("01".repeat(32)),
            device: format!("cuda:0 {NASTY}"),
            crate_version: format!("0.9.8 {NASTY}"),
        };
        let counts = |split, per_class: Vec<usize>| SplitCounts {
            split,
            total: per_class.iter().sum(),
            per_class,
        };
        let manifest = Manifest {
            format: crate::manifest::MANIFEST_FORMAT.into(),
            format_version: crate::manifest::MANIFEST_FORMAT_VERSION,
            crate_version: "0.9.7".into(),
            classes,
            malignant: Vec::new(),
            folders: Vec::new(),
            image_size: 112,
            resize: ResizePolicy::Crop,
            views: 1,
            augment: false,
            seed: 42,
            options: PrepRecord {
                input: format!("/photos {NASTY}"),
                image_size: 112,
                resize: ResizePolicy::Crop,
                val: 0.2,
                test: 0.2,
                seed: 42,
                shard_size: 1024,
                views: 1,
                augment: false,
                strict: false,
                max_pixels: 1 << 26,
                no_test: false,
                groups: None,
            },
            normalization: Normalization {
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
            },
            // No val counts: that split reads as 0.
            counts: vec![
                counts(Split::Train, vec![30, 10]),
                counts(Split::Test, vec![7, 5]),
            ],
            folds: 0,
            fold_counts: Vec::new(),
            shards: Vec::new(),
            images: Vec::new(),
            rejected: Vec::new(),
            duplicates: Vec::new(),
        };
        let record = |epoch: usize, val_auc: f64| EpochRecord {
            epoch,
            train_loss: 0.7 / epoch as f64,
            train_acc: 0.5 + 0.1 * epoch as f64,
            val_loss: 0.7,
            val_acc: 0.61,
            val_auc,
            val_balanced_acc: 0.6,
            lr_head: 1e-2,
            lr_layer4: 1e-3,
            lr_layer3: 1e-3,
            lr_backbone: 0.0,
            seconds: 83.25,
            images_per_s: 40.0,
        };
        let figures = tempfile::tempdir().unwrap();
        // Lengths 0, 1 and 2 mod 3, for every kind of base64 padding.
        for (i, file) in [
            ROC_FILE,
            PR_FILE,
            CONFUSION_FILE,
            CALIBRATION_FILE,
            ERRORS_FILE,
        ]
        .into_iter()
        .enumerate()
        {
            let bytes: Vec<u8> = file.bytes().chain(0..=(i as u8)).collect();
            std::fs::write(figures.path().join(file), bytes).unwrap();
        }
        Fixture {
            metrics,
            config,
            manifest,
            history: vec![record(1, f64::NAN), record(2, 0.75), record(3, 0.7)],
            curves: b"\x89PNG curves".to_vec(),
            figures,
            false_negatives: vec![
                error(8, 1, 0.3, &format!("mal/{NASTY}.jpg")),
                error(7, 1, 0.005, "mal/b.jpg"),
            ],
            false_positives: vec![error(10, 0, 0.72, &format!("ben/{NASTY}.jpg"))],
            out_dir: run_dir.join("eval-test"),
            threshold_file: run_dir.join("threshold.json"),
        }
    }

    /// Compares the page with `testdata/<name>`; `LESION_BLESS=1` writes it instead.
    fn check_golden(name: &str, html: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/eval/testdata")
            .join(name);
        if std::env::var_os("LESION_BLESS").is_some() {
            std::fs::write(&path, html).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap();
        if html != want {
            let at = html
                .bytes()
                .zip(want.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(html.len().min(want.len()));
            let around = |s: &str| {
                let b = &s.as_bytes()[at.saturating_sub(40)..(at + 80).min(s.len())];
                String::from_utf8_lossy(b).into_owned()
            };
            panic!(
                "{name} differs at byte {at}: got {:?}, want {:?}",
                around(html),
                around(&want)
            );
        }
    }

    /// 2023-11-14 22:13 UTC.
    const NOW: u64 = 1_700_000_000;

    /// A threshold or probability outside [0.0001, 0.9999] keeps its meaning on the page:
    /// the threshold in scientific notation, a probability as a bound, never `0.0000`.
    #[test]
    fn tiny_threshold_and_extreme_probabilities_read_meaningfully() {
        let mut f = fixture_at(true, 3.3e-7);
        f.metrics
            .binary
            .as_mut()
            .unwrap()
            .at_default_threshold
            .youden = Some(OperatingPoint {
            threshold: 1.0 - 4e-6,
            sensitivity: 0.2,
            specificity: 1.0,
        });
        f.false_negatives[1].probability = 2e-9;
        f.false_positives[0].probability = 1.0;
        let html = render_at(&f.input(true), NOW).unwrap();
        for want in [
            "Decision threshold <strong>3.3e-7</strong>",
            "<div class=\"label\">Sensitivity at 3.3e-7</div>",
            "<th>at 3.3e-7 (chosen)</th>",
            "<tr data-metric=\"threshold\"><td>Threshold</td><td class=\"num\">0.5</td><td></td><td class=\"num\">3.3e-7</td>",
            "Youden-optimal threshold on this split itself: 0.999996 ",
            "<code>mal/b.jpg</code></td><td class=\"num\">&lt; 0.0001</td>",
            "</code></td><td class=\"num\">&gt; 0.9999</td>",
        ] {
            assert!(html.contains(want), "the page lacks {want:?}");
        }
        for unwanted in ["0.0000 (chosen)", "at 0.000<", "<strong>0.0000</strong>"] {
            assert!(!html.contains(unwanted), "the page shows {unwanted:?}");
        }
    }

    #[test]
    fn full_report_matches_golden() {
        let f = fixture(true);
        check_golden(
            "report-full.html.golden",
            &render_at(&f.input(true), NOW).unwrap(),
        );
    }

    #[test]
    fn bare_report_matches_golden() {
        let f = fixture(false);
        check_golden(
            "report-bare.html.golden",
            &render_at(&f.input(false), NOW).unwrap(),
        );
    }

    #[test]
    fn a_fold_run_counts_its_training_and_held_out_folds() {
        let mut manifest = fixture(false).manifest;
        manifest.classes = vec!["a".into(), "b".into()];
        assert_eq!(
            split_counts(&manifest, Split::Train, None),
            "40 (30 a, 10 b)"
        );
        manifest.folds = 3;
        manifest.fold_counts = (0..3)
            .map(|fold| crate::manifest::FoldCounts {
                fold,
                per_class: vec![10, 3 + fold as usize],
                total: 13 + fold as usize,
            })
            .collect();
        let counts = |s| split_counts(&manifest, s, Some(1));
        assert_eq!(counts(Split::Train), "28 (20 a, 8 b)");
        assert_eq!(counts(Split::Val), "14 (10 a, 4 b, fold 1 of 3)");
        assert_eq!(counts(Split::Test), "12 (7 a, 5 b)");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn escaping_and_dates() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(
            utc(951_782_400 + 3_600 * 13 + 60 * 7),
            "2000-02-29 13:07 UTC"
        );
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}

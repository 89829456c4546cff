//! `report.html`: one self-contained page per evaluation. Figures are inlined as
//! `data:image/png;base64,...` URIs and the CSS is inline, so the file can be mailed or
//! archived alone and opens without network access; no script is needed to read it.
//!
//! Landmarks other tools rely on (the browser test does): `table#metrics` has one
//! `tr[data-metric]` per figure, named as in `metrics.json`; `#disclaimer` is the
//! research-use notice.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    ErrorCase, EvalMetrics, CALIBRATION_FILE, CONFUSION_FILE, ERRORS_FILE, PREDICTIONS_FILE,
    PR_FILE, ROC_FILE,
};
use crate::error::IoContext;
use crate::manifest::Manifest;
use crate::metrics::{BinaryMetrics, ConfidenceInterval, CALIBRATION_BINS};
use crate::split::Split;
use crate::train::{EpochRecord, RunConfig};
use crate::Result;

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
    pub threshold_file: &'a Path,
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

fn png_img(bytes: &[u8], alt: &str, class: &str) -> String {
    format!(
        "<img class=\"{class}\" alt=\"{}\" src=\"data:image/png;base64,{}\">",
        escape(alt),
        base64(bytes)
    )
}

fn figure(dir: &Path, file: &str, alt: &str, caption: &str, class: &str) -> Result<String> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).with_path(&path)?;
    Ok(format!(
        "<figure class=\"{class}\">{}<figcaption>{caption}</figcaption></figure>\n",
        png_img(&bytes, alt, "plot")
    ))
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

const CSS: &str = r#"
:root { --ink:#1d2733; --muted:#5b6b7c; --line:#d6dde5; --bg:#f6f8fa; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { margin:0; font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color:var(--ink); background:#fff; line-height:1.45; }
header { background:#102a43; color:#fff; padding:18px 28px 14px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:600; }
header .sub { color:#c8d6e5; font-size:14px; }
header code { color:#fff; }
main { max-width:1200px; margin:0 auto; padding:14px 28px 40px; }
.disclaimer { border:2px solid #b3261e; background:#fdecea; color:#5f1410; padding:10px 14px;
              border-radius:6px; margin:14px 0; font-size:15px; }
.disclaimer strong { color:#b3261e; }
.warnings { border:1px solid #e0b000; background:#fff8db; padding:8px 14px; border-radius:6px;
            margin:10px 0; font-size:14px; }
.warnings ul { margin:4px 0; padding-left:20px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:14px 0; }
.card { flex:1 1 200px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; background:var(--bg); }
.card .label { font-size:13px; color:var(--muted); }
.card .value { font-size:28px; font-weight:600; }
.card .ci { font-size:13px; color:var(--muted); }
h2 { font-size:19px; border-bottom:1px solid var(--line); padding-bottom:4px; margin-top:28px; }
table { border-collapse:collapse; font-size:14px; margin:8px 0; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:left; }
th { background:var(--bg); font-weight:600; }
td.num { text-align:right; font-variant-numeric: tabular-nums; }
tr.group th { background:#e8eef4; text-align:left; }
td.free .v { font-variant-numeric: tabular-nums; }
td.free .ci { color:var(--muted); }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap:16px; }
figure { margin:0; border:1px solid var(--line); border-radius:8px; padding:8px; background:#fff; }
figure.wide { grid-column: 1 / -1; }
figure img.plot { max-width:100%; height:auto; display:block; margin:0 auto; }
figcaption { font-size:13px; color:var(--muted); margin-top:4px; }
.threshold { background:var(--bg); border-left:4px solid var(--accent); padding:8px 12px; margin:12px 0; }
pre { background:var(--bg); border:1px solid var(--line); padding:10px; overflow:auto; font-size:12px; }
.muted { color:var(--muted); font-size:13px; }
footer { color:var(--muted); font-size:12px; margin-top:36px; border-top:1px solid var(--line); padding-top:8px; }
"#;

/// Renders the page, dated now.
pub fn render(input: &ReportInput<'_>) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    render_at(input, now)
}

/// Renders the page, dated `now` (Unix seconds).
fn render_at(input: &ReportInput<'_>, now: u64) -> Result<String> {
    let m = input.metrics;
    let d = &m.at_default_threshold;
    let c = &m.at_chosen_threshold;
    let cfg = input.run_config;
    let run_name = m.run_dir.file_name().map_or_else(
        || m.run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut h = String::with_capacity(1 << 20);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>lesion eval — {run} — {split}</title>\n<style>{CSS}</style>\n</head>\n<body>",
        run = escape(&run_name),
        split = m.split.name()
    );
    let _ = writeln!(
        h,
        "<header><h1>Evaluation report: run <code>{run}</code>, {split} split</h1>\
         <div class=\"sub\">{n} images ({neg} {c0}, {pos} {c1}) · checkpoint <code>{ckpt}</code> \
         (epoch {epoch}) · test-time augmentation {tta} · {size}×{size} px · generated {when} \
         by lesion {ver}</div></header>\n<main>",
        run = escape(&run_name),
        split = m.split.name(),
        n = d.n,
        neg = d.n_negative,
        pos = d.n_positive,
        c0 = escape(m.class_names.first().map_or("benign", String::as_str)),
        c1 = escape(m.class_names.get(1).map_or("malignant", String::as_str)),
        ckpt = escape(
            &m.checkpoint
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ),
        epoch = m.checkpoint_epoch,
        tta = if m.tta {
            "on (mean of image, horizontal and vertical flip)"
        } else {
            "off"
        },
        size = m.image_size,
        when = utc(now),
        ver = escape(&m.crate_version),
    );
    h.push_str(
        "<div class=\"disclaimer\" id=\"disclaimer\" role=\"note\"><strong>Research tool — not a \
         medical device.</strong> These figures describe one model on one dataset. The model is \
         not clinically validated and must not be used to diagnose, screen, triage or treat \
         anyone; a suspicious lesion needs a clinician.</div>\n",
    );
    if !m.warnings.is_empty() {
        h.push_str("<div class=\"warnings\"><strong>Read with care:</strong><ul>");
        for w in &m.warnings {
            let _ = write!(h, "<li>{}</li>", escape(w));
        }
        h.push_str("</ul></div>\n");
    }

    // Headline cards.
    let (bd, bc) = match &m.bootstrap {
        Some(b) => (Some(&b.at_default_threshold), Some(&b.at_chosen_threshold)),
        None => (None, None),
    };
    let card = |label: &str, v: f64, ci: Option<&ConfidenceInterval>| {
        format!(
            "<div class=\"card\"><div class=\"label\">{label}</div><div class=\"value\">{}</div>\
             <div class=\"ci\">{}</div></div>",
            f4(v),
            match ci {
                Some(_) => format!("95% CI {}", ci_text(ci)),
                None => "&nbsp;".into(),
            }
        )
    };
    h.push_str("<div class=\"cards\">");
    h.push_str(&card("ROC AUC", d.roc_auc, bd.map(|b| &b.roc_auc)));
    h.push_str(&card(
        &format!("Sensitivity at {:.3}", c.threshold),
        c.sensitivity,
        bc.map(|b| &b.sensitivity),
    ));
    h.push_str(&card(
        &format!("Specificity at {:.3}", c.threshold),
        c.specificity,
        bc.map(|b| &b.specificity),
    ));
    h.push_str(&card(
        &format!("Balanced accuracy at {:.3}", c.threshold),
        c.balanced_accuracy,
        None,
    ));
    h.push_str("</div>\n");

    let t = &m.threshold;
    let how = match t.target_sensitivity {
        Some(target) => format!(
            "the highest threshold reaching {} sensitivity on the validation split",
            pct(target)
        ),
        None => {
            "maximising Youden's J (sensitivity + specificity − 1) on the validation split".into()
        }
    };
    let _ = writeln!(
        h,
        "<div class=\"threshold\">Decision threshold <strong>{thr:.4}</strong>, chosen by {how} \
         (validation sensitivity {vs:.3}, specificity {vp:.3}){tta}. A lesion is called {c1} when \
         its probability is ≥ the threshold. Saved with the run in <code>{file}</code> for \
         prediction to use.{note}</div>",
        thr = t.threshold,
        vs = t.val_sensitivity,
        vp = t.val_specificity,
        tta = if t.tta { ", with TTA" } else { "" },
        c1 = escape(m.class_names.get(1).map_or("malignant", String::as_str)),
        file = escape(&input.threshold_file.display().to_string()),
        note = t
            .note
            .as_ref()
            .map(|n| format!(" <em>{}</em>", escape(n)))
            .unwrap_or_default(),
    );

    // Metrics table.
    h.push_str("<h2 id=\"metrics-heading\">Metrics</h2>\n");
    let resamples = bc.map_or(0, |b| b.n_resamples);
    if resamples > 0 {
        let _ = write!(
            h,
            "<p class=\"muted\">Intervals: 95% percentile bootstrap, {resamples} resamples of the \
             {split} split (seed {seed}).</p>",
            split = m.split.name(),
            seed = bc.map_or(0, |b| b.seed)
        );
    } else {
        h.push_str("<p class=\"muted\">No intervals: bootstrap disabled (--bootstrap 0).</p>");
    }
    let _ = writeln!(
        h,
        "<table id=\"metrics\"><thead><tr><th>Metric</th><th>at 0.5</th><th>95% CI</th>\
         <th>at {:.4} (chosen)</th><th>95% CI</th></tr></thead><tbody>",
        c.threshold
    );
    h.push_str(
        "<tr class=\"group\"><th colspan=\"5\">Threshold-free (ranking and calibration; the same \
         at every threshold)</th></tr>\n",
    );
    let free = |key: &str, name: &str, v: f64, ci: Option<&ConfidenceInterval>| {
        format!(
            "<tr data-metric=\"{key}\"><td>{name}</td><td class=\"free\" colspan=\"4\">\
             <span class=\"v\">{}</span>{}</td></tr>\n",
            f4(v),
            if ci.is_some() {
                format!(" <span class=\"ci\">(95% CI {})</span>", ci_text(ci))
            } else {
                String::new()
            }
        )
    };
    h.push_str(&free(
        "roc_auc",
        "ROC AUC",
        d.roc_auc,
        bd.map(|b| &b.roc_auc),
    ));
    h.push_str(&free(
        "average_precision",
        "Average precision (PR AUC)",
        d.average_precision,
        None,
    ));
    h.push_str(&free(
        "brier",
        "Brier score (lower is better)",
        d.brier,
        None,
    ));
    h.push_str(&free(
        "log_loss",
        "Log loss, nats (lower is better)",
        d.log_loss,
        None,
    ));
    h.push_str(&free(
        "ece",
        &format!("Expected calibration error ({CALIBRATION_BINS} bins)"),
        d.ece,
        None,
    ));
    h.push_str(
        "<tr class=\"group\"><th colspan=\"5\">At a decision threshold (malignant when \
         probability ≥ threshold)</th></tr>\n",
    );
    let dep = |key: &str,
               name: &str,
               f: fn(&BinaryMetrics) -> f64,
               ci: Option<fn(&crate::metrics::BootstrapCis) -> &ConfidenceInterval>| {
        let ci_d = ci.and_then(|g| bd.map(g));
        let ci_c = ci.and_then(|g| bc.map(g));
        format!(
            "<tr data-metric=\"{key}\"><td>{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            f4(f(d)),
            if ci.is_some() { ci_text(ci_d) } else { String::new() },
            f4(f(c)),
            if ci.is_some() { ci_text(ci_c) } else { String::new() },
        )
    };
    h.push_str(&dep(
        "accuracy",
        "Accuracy",
        |m| m.accuracy,
        Some(|b| &b.accuracy),
    ));
    h.push_str(&dep(
        "balanced_accuracy",
        "Balanced accuracy",
        |m| m.balanced_accuracy,
        None,
    ));
    h.push_str(&dep(
        "sensitivity",
        "Sensitivity (recall of malignant)",
        |m| m.sensitivity,
        Some(|b| &b.sensitivity),
    ));
    h.push_str(&dep(
        "specificity",
        "Specificity (recall of benign)",
        |m| m.specificity,
        Some(|b| &b.specificity),
    ));
    h.push_str(&dep("precision", "Precision (PPV)", |m| m.precision, None));
    h.push_str(&dep("f1", "F1", |m| m.f1, None));
    h.push_str(&dep("mcc", "Matthews correlation", |m| m.mcc, None));
    let count = |key: &str, name: &str, a: u64, b: u64| {
        format!(
            "<tr data-metric=\"{key}\"><td>{name}</td><td class=\"num\">{a}</td><td></td>\
             <td class=\"num\">{b}</td><td></td></tr>\n"
        )
    };
    let (cd, cc) = (&d.confusion_matrix, &c.confusion_matrix);
    h.push_str(&count(
        "tp",
        "True positives (malignant found)",
        cd.tp,
        cc.tp,
    ));
    h.push_str(&count(
        "fp",
        "False positives (benign called malignant)",
        cd.fp,
        cc.fp,
    ));
    h.push_str(&count(
        "fn",
        "False negatives (malignant missed)",
        cd.fn_,
        cc.fn_,
    ));
    h.push_str(&count("tn", "True negatives", cd.tn, cc.tn));
    let _ = writeln!(
        h,
        "<tr data-metric=\"threshold\"><td>Threshold</td><td class=\"num\">0.5</td><td></td>\
         <td class=\"num\">{:.4}</td><td></td></tr>\n</tbody></table>",
        c.threshold
    );

    // Specificity at fixed sensitivities.
    let _ = write!(
        h,
        "<h3>Specificity at fixed sensitivity</h3><p class=\"muted\">Operating points read off \
         the {split} split's own ROC curve (ISIC convention): optimistic, since each threshold is \
         fitted to these images.</p><table id=\"spec-at-sens\"><thead><tr><th>Target sensitivity</th>\
         <th>Threshold</th><th>Sensitivity reached</th><th>Specificity</th></tr></thead><tbody>",
        split = m.split.name()
    );
    for p in &d.specificity_at_sensitivity {
        let _ = write!(
            h,
            "<tr data-target=\"{:.2}\"><td>{}</td><td class=\"num\">{:.4}</td><td class=\"num\">{:.4}</td>\
             <td class=\"num\">{:.4}</td></tr>",
            p.target_sensitivity,
            pct(p.target_sensitivity),
            p.threshold,
            p.sensitivity,
            p.specificity
        );
    }
    h.push_str("</tbody></table>\n");
    if let Some(y) = &d.youden {
        let _ = writeln!(
            h,
            "<p class=\"muted\">Youden-optimal threshold on this split itself: {:.4} (sensitivity \
             {:.3}, specificity {:.3}) — for comparison with the validation choice.</p>",
            y.threshold, y.sensitivity, y.specificity
        );
    }

    // Figures.
    let dir = input.figures_dir;
    h.push_str("<h2>Curves and calibration</h2>\n<div class=\"grid\">\n");
    h.push_str(&figure(
        dir,
        CONFUSION_FILE,
        "Confusion matrices",
        "Confusion matrices at 0.5 and at the chosen threshold; shading is the share of the true class.",
        "wide",
    )?);
    h.push_str(&figure(
        dir,
        ROC_FILE,
        "ROC curve",
        "ROC curve with the operating points at 0.5 and at the chosen threshold.",
        "",
    )?);
    h.push_str(&figure(
        dir,
        PR_FILE,
        "Precision-recall curve",
        "Precision-recall curve; the grey line is the prevalence (a random ranker).",
        "",
    )?);
    h.push_str(&figure(
        dir,
        CALIBRATION_FILE,
        "Reliability diagram",
        "Reliability diagram: points on the diagonal are calibrated; n is the bin's image count.",
        "",
    )?);
    h.push_str("</div>\n");

    let _ = writeln!(
        h,
        "<h2>The lesions a clinician must see</h2><p class=\"muted\">The {nf} most confident \
         false negatives and {np} most confident false positives at the chosen threshold, as the \
         model saw them ({size}×{size} px). Every image's probability is in \
         <code>{csv}</code>.</p>",
        nf = input.false_negatives.len(),
        np = input.false_positives.len(),
        size = m.image_size,
        csv = escape(&input.out_dir.join(PREDICTIONS_FILE).display().to_string()),
    );
    h.push_str(&figure(
        dir,
        ERRORS_FILE,
        "Most confident errors",
        "Red frames: missed malignant lesions. Orange frames: benign lesions called malignant.",
        "wide",
    )?);
    let errors_table = |cases: &[ErrorCase], kind: &str| -> String {
        let mut s = String::new();
        for e in cases {
            let _ = write!(
                s,
                "<tr><td>{kind}</td><td><code>{}</code></td><td class=\"num\">{:.4}</td></tr>",
                escape(&e.path),
                e.probability
            );
        }
        s
    };
    if !(input.false_negatives.is_empty() && input.false_positives.is_empty()) {
        let _ = writeln!(
            h,
            "<table id=\"errors\"><thead><tr><th>Error</th><th>File (relative to <code>{}</code>)</th>\
             <th>p(malignant)</th></tr></thead><tbody>{}{}</tbody></table>",
            escape(&input.manifest.options.input),
            errors_table(input.false_negatives, "false negative"),
            errors_table(input.false_positives, "false positive"),
        );
    }

    // Training.
    h.push_str("<h2>Training</h2>\n");
    match input.curves_png {
        Some(png) => {
            let _ = writeln!(
                h,
                "<figure class=\"wide\">{}<figcaption>Loss and accuracy per epoch (train vs \
                 validation, from the run's curves.png).</figcaption></figure>",
                png_img(png, "Training curves", "plot")
            );
        }
        None => h.push_str("<p class=\"muted\">The run has no curves.png.</p>\n"),
    }
    if !input.history.is_empty() {
        h.push_str(
            "<table id=\"history\"><thead><tr><th>Epoch</th><th>Train loss</th><th>Train acc</th>\
             <th>Val loss</th><th>Val acc</th><th>Val AUC</th><th>Seconds</th></tr></thead><tbody>",
        );
        for r in input.history {
            let best = if r.epoch == m.checkpoint_epoch {
                " style=\"font-weight:600\""
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr{best}><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{:.1}</td></tr>",
                r.epoch,
                if best.is_empty() { "" } else { " (evaluated)" },
                f4(r.train_loss),
                f4(r.train_acc),
                f4(r.val_loss),
                f4(r.val_acc),
                f4(r.val_auc),
                r.seconds
            );
        }
        h.push_str("</tbody></table>\n");
    }

    // Configuration.
    let tr = &cfg.train;
    let counts = |s: Split| {
        input
            .manifest
            .counts(s)
            .map(|c| {
                let per: Vec<String> = c
                    .per_class
                    .iter()
                    .zip(&input.manifest.classes)
                    .map(|(n, name)| format!("{n} {name}"))
                    .collect();
                format!("{} ({})", c.total, per.join(", "))
            })
            .unwrap_or_else(|| "0".into())
    };
    let rows: Vec<(&str, String)> = vec![
        ("Run folder", m.run_dir.display().to_string()),
        ("Checkpoint", m.checkpoint.display().to_string()),
        ("Checkpoint SHA-256", m.checkpoint_sha256.clone()),
        ("Initial weights", cfg.weights_source.clone()),
        ("Trainable", tr.trainable.to_string()),
        (
            "Epochs (max) / patience / monitor",
            format!("{} / {} / {}", tr.epochs, tr.patience, tr.monitor),
        ),
        ("Batch size", tr.batch_size.to_string()),
        (
            "Learning rates (head / layer4 / layer3 / backbone)",
            format!(
                "{} / {} / {} / {}",
                tr.lr_head, tr.lr_layer4, tr.lr_layer3, tr.lr_backbone
            ),
        ),
        ("Head dropout", tr.head_dropout.to_string()),
        ("Seed", tr.seed.to_string()),
        ("Trained on device", cfg.device.clone()),
        ("Evaluated on device", m.device.clone()),
        ("Prepared data", m.data_dir.display().to_string()),
        ("Data manifest SHA-256", m.manifest_sha256.clone()),
        (
            "Trained on manifest SHA-256",
            m.trained_on_manifest_sha256.clone(),
        ),
        ("Input images", input.manifest.options.input.clone()),
        ("Classes", input.manifest.classes.join(", ")),
        (
            "Image size",
            format!(
                "{0}×{0} px ({1:?})",
                input.manifest.image_size, input.manifest.resize
            ),
        ),
        (
            "Normalisation (mean / std)",
            format!(
                "{:?} / {:?}",
                input.manifest.normalization.mean, input.manifest.normalization.std
            ),
        ),
        (
            "Train / val / test images",
            format!(
                "{} / {} / {}",
                counts(Split::Train),
                counts(Split::Val),
                counts(Split::Test)
            ),
        ),
        ("Evaluation time", format!("{:.1} s", m.seconds)),
    ];
    h.push_str("<h2>Configuration</h2>\n<table id=\"config\"><tbody>");
    for (k, v) in rows {
        let _ = write!(
            h,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            escape(k),
            escape(&v)
        );
    }
    h.push_str("</tbody></table>\n");
    let cfg_json = serde_json::to_string_pretty(cfg).unwrap_or_default();
    let _ = writeln!(
        h,
        "<details><summary>config.json of the run</summary><pre>{}</pre></details>",
        escape(&cfg_json)
    );
    let _ = writeln!(
        h,
        "<footer>Files beside this report: metrics.json (every figure above), predictions.csv, \
         and the figures as PNG, in <code>{}</code>. Generated by lesion-eval {}. \
         Research use only; not a medical device.</footer>\n</main>\n</body>\n</html>",
        escape(&input.out_dir.display().to_string()),
        escape(&m.crate_version)
    );
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{BootstrapPair, Threshold, ThresholdMethod};
    use crate::image_io::ResizePolicy;
    use crate::manifest::{Normalization, PrepRecord, SplitCounts};
    use crate::metrics::{self, OperatingPoint};
    use crate::train::TrainConfig;
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
                threshold_file: &self.threshold_file,
            }
        }
    }

    /// Every section of the page present (`full`), or every optional one left out.
    fn fixture(full: bool) -> Fixture {
        let (labels, probs) = labels_probs();
        let thr = 0.5;
        let chosen = 0.4123;
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
            warnings: if full {
                vec![format!("first warning {NASTY}"), "second warning".into()]
            } else {
                Vec::new()
            },
            seconds: 12.345,
        };
        let config = RunConfig {
            train: TrainConfig {
                data: PathBuf::from(format!("/data/prepared {NASTY}")),
                lr_layer3: 3.5e-5,
                ..TrainConfig::default()
            },
            manifest_sha256: "ef".repeat(32),
            class_names: classes.clone(),
            image_size: 112,
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

    #[test]
    fn full_report_matches_golden() {
        let f = fixture(true);
        check_golden("report-full.html", &render_at(&f.input(true), NOW).unwrap());
    }

    #[test]
    fn bare_report_matches_golden() {
        let f = fixture(false);
        check_golden(
            "report-bare.html",
            &render_at(&f.input(false), NOW).unwrap(),
        );
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

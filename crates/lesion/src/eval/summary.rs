//! [`EvalSummary`]: what an evaluation returns, and its compact terminal table: for N
//! classes accuracy, balanced accuracy, macro AUC and one line per class; then, for two
//! classes or a malignant group, the figures at 0.5 and at the chosen threshold, with
//! intervals; then the warnings and where the outputs went.

use std::fmt;
use std::path::PathBuf;

use super::{BinaryView, EvalMetrics, MulticlassSection};
use crate::display;
use crate::metrics::{self, ConfusionMatrix, CALIBRATION_BINS};

/// What [`run`](super::run) returns; `Display` is the compact terminal table.
#[derive(Debug, Clone)]
pub struct EvalSummary {
    pub out_dir: PathBuf,
    pub report: PathBuf,
    /// Where the chosen threshold was saved; `None` for N classes without a malignant group.
    pub threshold_file: Option<PathBuf>,
    pub metrics: EvalMetrics,
}

/// `0.8123 [0.7712, 0.8501]` or just the value.
fn with_ci(v: f64, ci: Option<&metrics::ConfidenceInterval>) -> String {
    match ci {
        Some(c) => format!("{v:.4} [{:.4}, {:.4}]", c.lower, c.upper),
        None => format!("{v:.4}"),
    }
}

/// The malignant-vs-benign table of `b`; `group` names the malignant group (N classes).
fn binary_table(
    f: &mut fmt::Formatter<'_>,
    m: &EvalMetrics,
    b: &BinaryView,
    group: Option<&str>,
) -> fmt::Result {
    {
        let (d, c) = (&b.at_default_threshold, &b.at_chosen_threshold);
        let (bd, bc) = match &b.bootstrap {
            Some(b) => (Some(&b.at_default_threshold), Some(&b.at_chosen_threshold)),
            None => (None, None),
        };
        match group {
            None => writeln!(
                f,
                "{} split: {} images ({} benign, {} malignant), TTA {}, checkpoint epoch {}",
                m.split.name(),
                d.n,
                d.n_negative,
                d.n_positive,
                if m.tta { "on" } else { "off" },
                m.checkpoint_epoch
            )?,
            Some(g) => writeln!(
                f,
                "malignant ({g}) vs the rest: {} malignant, {} other",
                d.n_positive, d.n_negative
            )?,
        }
        writeln!(
            f,
            "threshold {} — val sensitivity {:.3}, specificity {:.3}",
            b.threshold.describe(),
            b.threshold.val_sensitivity,
            b.threshold.val_specificity
        )?;
        let ci_note = match bd {
            Some(b) => format!("95% CI, {} bootstrap resamples", b.n_resamples),
            None => "no intervals (--bootstrap 0)".into(),
        };
        writeln!(
            f,
            "{:<20} {:<28} {:<28}",
            "metric",
            "at 0.5",
            format!("at {}", display::threshold(c.threshold))
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, a: String, b: String| {
            writeln!(f, "{name:<20} {a:<28} {b:<28}")
        };
        row(
            f,
            "ROC AUC",
            with_ci(d.roc_auc, bd.map(|b| &b.roc_auc)),
            String::new(),
        )?;
        row(
            f,
            "average precision",
            format!("{:.4}", d.average_precision),
            String::new(),
        )?;
        row(
            f,
            "sensitivity",
            with_ci(d.sensitivity, bd.map(|b| &b.sensitivity)),
            with_ci(c.sensitivity, bc.map(|b| &b.sensitivity)),
        )?;
        row(
            f,
            "specificity",
            with_ci(d.specificity, bd.map(|b| &b.specificity)),
            with_ci(c.specificity, bc.map(|b| &b.specificity)),
        )?;
        row(
            f,
            "accuracy",
            with_ci(d.accuracy, bd.map(|b| &b.accuracy)),
            with_ci(c.accuracy, bc.map(|b| &b.accuracy)),
        )?;
        for (name, a, b) in [
            (
                "balanced accuracy",
                d.balanced_accuracy,
                c.balanced_accuracy,
            ),
            ("precision (PPV)", d.precision, c.precision),
            ("F1", d.f1, c.f1),
            ("MCC", d.mcc, c.mcc),
        ] {
            row(f, name, format!("{a:.4}"), format!("{b:.4}"))?;
        }
        let cm = |m: &ConfusionMatrix| format!("{}/{}/{}/{}", m.tp, m.fp, m.fn_, m.tn);
        row(
            f,
            "TP/FP/FN/TN",
            cm(&d.confusion_matrix),
            cm(&c.confusion_matrix),
        )?;
        writeln!(
            f,
            "Brier {:.4}, log loss {:.4}, ECE ({CALIBRATION_BINS} bins) {:.4}; {ci_note}",
            d.brier, d.log_loss, d.ece
        )?;
        let at: Vec<String> = d
            .specificity_at_sensitivity
            .iter()
            .map(|t| {
                format!(
                    "{:.0}% -> {:.3}",
                    t.target_sensitivity * 100.0,
                    t.specificity
                )
            })
            .collect();
        writeln!(f, "specificity at sensitivity {}", at.join(", "))
    }
}

/// The N-class lines: overall figures, then one line per class.
fn multiclass_table(
    f: &mut fmt::Formatter<'_>,
    m: &EvalMetrics,
    mc: &MulticlassSection,
) -> fmt::Result {
    let x = &mc.metrics;
    let b = mc.bootstrap.as_ref();
    writeln!(
        f,
        "{} split: {} images, {} classes, TTA {}, checkpoint epoch {}",
        m.split.name(),
        x.n,
        x.n_classes,
        if m.tta { "on" } else { "off" },
        m.checkpoint_epoch
    )?;
    match b {
        Some(b) => writeln!(f, "95% CI, {} bootstrap resamples", b.n_resamples)?,
        None => writeln!(f, "no intervals (--bootstrap 0)")?,
    }
    writeln!(
        f,
        "{:<20} {}",
        "accuracy",
        with_ci(x.accuracy, b.map(|b| &b.accuracy))
    )?;
    writeln!(
        f,
        "{:<20} {}",
        "balanced accuracy",
        with_ci(x.balanced_accuracy, b.map(|b| &b.balanced_accuracy))
    )?;
    let macro_auc = match x.macro_roc_auc {
        Some(a) => with_ci(a, b.and_then(|b| b.macro_roc_auc.as_ref())),
        None => "n/a".into(),
    };
    writeln!(f, "{:<20} {macro_auc}", "macro ROC AUC")?;
    writeln!(
        f,
        "{:<20} {}",
        "macro F1",
        with_ci(x.macro_f1, b.map(|b| &b.macro_f1))
    )?;
    writeln!(
        f,
        "weighted F1 {:.4}, log loss {:.4}, top-class ECE ({CALIBRATION_BINS} bins) {:.4}",
        x.weighted_f1, x.log_loss, x.top_class_calibration.ece
    )?;
    let width = mc
        .class_names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 24);
    for (k, (c, name)) in x.per_class.iter().zip(&mc.class_names).enumerate() {
        let ci = b.map(|b| &b.per_class[k]);
        let auc = match c.roc_auc {
            Some(a) => with_ci(a, ci.and_then(|i| i.roc_auc.as_ref())),
            None => "n/a".into(),
        };
        writeln!(
            f,
            "{:<width$} n {:<5} recall {:<24} specificity {:.4}, precision {:.4}, F1 {:.4}, \
             AUC {auc}",
            super::plots::ellipsize(name, width),
            c.support,
            with_ci(c.recall, ci.and_then(|i| i.recall.as_ref())),
            c.specificity,
            c.precision,
            c.f1,
        )?;
    }
    Ok(())
}

impl fmt::Display for EvalSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metrics;
        if let Some(mc) = &m.multiclass {
            multiclass_table(f, m, mc)?;
        }
        if let Some(b) = &m.binary {
            let group = m.malignant.join(", ");
            binary_table(f, m, b, m.multiclass.is_some().then_some(group.as_str()))?;
        }
        for w in &m.warnings {
            writeln!(f, "warning: {w}")?;
        }
        writeln!(f, "outputs:   {}", self.out_dir.display())?;
        if let Some(t) = &self.threshold_file {
            writeln!(f, "threshold: {}", t.display())?;
        }
        write!(f, "report:    {}", self.report.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::report::tests::metrics_at;

    fn table(threshold: f64) -> String {
        EvalSummary {
            out_dir: "run/eval-test".into(),
            report: "run/eval-test/report.html".into(),
            threshold_file: Some("run/threshold.json".into()),
            metrics: metrics_at(threshold),
        }
        .to_string()
    }

    /// A tiny threshold keeps its value in the terminal table (not `0.0000`).
    #[test]
    fn tiny_threshold_is_shown_with_its_value() {
        let text = table(3.3e-7);
        assert!(
            text.contains("threshold 3.3e-7 (highest reaching sensitivity 95% on val)"),
            "{text}"
        );
        assert!(text.contains("at 3.3e-7 "), "{text}");
        assert!(!text.contains("0.0000 ("), "{text}");
        let text = table(0.41234);
        assert!(
            text.contains("threshold 0.4123 (highest reaching"),
            "{text}"
        );
        assert!(text.contains("at 0.4123 "), "{text}");
    }
}

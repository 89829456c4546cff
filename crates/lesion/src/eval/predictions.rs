//! `predictions.csv`: one row per image of the evaluated split, in the split's row order.
//!
//! - Two classes: `path,label,class,probability,prediction,predicted_class,logit,source_index`,
//!   the prediction taken at the chosen threshold.
//! - N classes: `path,label,class,p_<class 0>,...,p_<class N-1>,predicted,predicted_class,
//!   predicted_probability,source_index`, where `label` and `predicted` are class indices
//!   (label order, the order of the `p_` columns), `predicted` is the argmax (the first on
//!   ties) and `predicted_probability` its probability; with a malignant group, also
//!   `malignant_probability` (the summed probability of the group) and `malignant_prediction`
//!   (`1` when it is at least the chosen threshold) before `source_index`. Every probability
//!   is written in Rust's shortest round-trip form, so the per-class figures of
//!   `metrics.json` can be recomputed from the file exactly.

use std::path::Path;

use super::PREDICTIONS_FILE;
use crate::fsutil::write_atomic;
use crate::infer::SplitPredictions;
use crate::manifest::Manifest;
use crate::{Error, Result};

/// The path of each row's image, relative to the input folder (`#<source index>` for an
/// index the manifest lacks).
pub(super) fn image_paths(manifest: &Manifest, preds: &SplitPredictions) -> Vec<String> {
    preds
        .source_index
        .iter()
        .map(|&i| {
            manifest
                .images
                .get(i as usize)
                .map_or_else(|| format!("#{i}"), |e| e.path.clone())
        })
        .collect()
}

/// Writes `predictions.csv` to `path`.
pub(super) fn write(
    path: &Path,
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: f64,
) -> Result<()> {
    write_atomic(path, &predictions_csv(preds, paths, classes, threshold)?)
}

/// The header of `predictions.csv`.
const HEADER: [&str; 8] = [
    "path",
    "label",
    "class",
    "probability",
    "prediction",
    "predicted_class",
    "logit",
    "source_index",
];

/// `predictions.csv`; probabilities are written in Rust's shortest round-trip form, so
/// metrics recomputed from the file equal those in `metrics.json` exactly. The csv crate's
/// defaults are RFC 4180 with `\n` line ends: a field is quoted only when it holds a comma,
/// a quote, `\r` or `\n`, and quotes inside are doubled.
pub(super) fn predictions_csv(
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: f64,
) -> Result<Vec<u8>> {
    let encode = |reason: String| Error::Encode {
        what: PREDICTIONS_FILE.into(),
        reason,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER).map_err(|e| encode(e.to_string()))?;
    let name = |k: usize| classes.get(k).map_or("?", String::as_str);
    for i in 0..preds.len() {
        let pred = usize::from(preds.probs[i] >= threshold);
        let row: [&str; 8] = [
            &paths[i],
            &preds.labels[i].to_string(),
            name(preds.labels[i]),
            &preds.probs[i].to_string(),
            &pred.to_string(),
            name(pred),
            &preds.logits[i].to_string(),
            &preds.source_index[i].to_string(),
        ];
        w.write_record(row).map_err(|e| encode(e.to_string()))?;
    }
    w.into_inner().map_err(|e| encode(e.to_string()))
}

/// Writes the N-class `predictions.csv` (see the module docs) to `path`; `threshold` is
/// the malignant group's chosen threshold, `None` without a group.
pub(super) fn write_multiclass(
    path: &Path,
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: Option<f64>,
) -> Result<()> {
    write_atomic(path, &multiclass_csv(preds, paths, classes, threshold)?)
}

pub(super) fn multiclass_csv(
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: Option<f64>,
) -> Result<Vec<u8>> {
    let encode = |reason: String| Error::Encode {
        what: PREDICTIONS_FILE.into(),
        reason,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = vec!["path".into(), "label".into(), "class".into()];
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    header.extend(["predicted", "predicted_class", "predicted_probability"].map(String::from));
    if threshold.is_some() {
        header.extend(["malignant_probability", "malignant_prediction"].map(String::from));
    }
    header.push("source_index".into());
    w.write_record(&header).map_err(|e| encode(e.to_string()))?;
    let name = |k: usize| classes.get(k).map_or("?", String::as_str);
    for i in 0..preds.len() {
        let row_probs = &preds.class_probs[i];
        let pred = crate::infer::argmax(row_probs);
        let mut row: Vec<String> = vec![
            paths[i].clone(),
            preds.labels[i].to_string(),
            name(preds.labels[i]).to_string(),
        ];
        row.extend(row_probs.iter().map(f64::to_string));
        row.extend([
            pred.to_string(),
            name(pred).to_string(),
            row_probs[pred].to_string(),
        ]);
        if let Some(t) = threshold {
            let p = preds.probs[i];
            row.extend([p.to_string(), u8::from(p >= t).to_string()]);
        }
        row.push(preds.source_index[i].to_string());
        w.write_record(&row).map_err(|e| encode(e.to_string()))?;
    }
    w.into_inner().map_err(|e| encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `predictions.csv` of one benign image at `path`, as text.
    fn one_row(path: &str) -> String {
        let p = SplitPredictions {
            source_index: vec![0],
            labels: vec![0],
            logits: vec![-1.0],
            probs: vec![0.25],
            outputs: 1,
            ..SplitPredictions::default()
        };
        let classes = ["benign".to_string(), "malignant".to_string()];
        let csv = predictions_csv(&p, &[path.to_string()], &classes, 0.5).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let row = csv.split_once('\n').unwrap().1;
        row.strip_suffix(",0,benign,0.25,0,benign,-1,0\n")
            .unwrap()
            .to_string()
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(one_row("a/b.jpg"), "a/b.jpg");
        assert_eq!(one_row("a,b"), "\"a,b\"");
        assert_eq!(one_row("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn predictions_csv_quotes_awkward_names() {
        let p = SplitPredictions {
            source_index: vec![3, 9, 4],
            labels: vec![0, 1, 1],
            logits: vec![-1.25, 0.1, -16.118_095],
            probs: vec![0.2227, 0.525, 1e-7],
            outputs: 1,
            ..SplitPredictions::default()
        };
        let paths: Vec<String> = vec![
            "a,b \"c\"\nd.jpg".into(),
            "plain/x.jpg".into(),
            "cr\rhere.jpg".into(),
        ];
        let classes = ["benign".to_string(), "mal,ignant".to_string()];
        let csv = predictions_csv(&p, &paths, &classes, 0.5).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "path,label,class,probability,prediction,predicted_class,logit,source_index\n\
             \"a,b \"\"c\"\"\nd.jpg\",0,benign,0.2227,0,benign,-1.25,3\n\
             plain/x.jpg,1,\"mal,ignant\",0.525,1,\"mal,ignant\",0.1,9\n\
             \"cr\rhere.jpg\",1,\"mal,ignant\",0.0000001,0,benign,-16.118095,4\n"
        );
    }

    #[test]
    fn multiclass_csv_has_a_column_per_class() {
        let p = SplitPredictions {
            source_index: vec![5, 2],
            labels: vec![2, 0],
            logits: vec![0.0; 6],
            outputs: 3,
            class_probs: vec![vec![0.25, 0.25, 0.5], vec![0.4, 0.4, 0.2]],
            probs: vec![0.75, 0.6],
        };
        let classes = ["mel".to_string(), "nv".to_string(), "b,cc".to_string()];
        let paths = ["a.jpg".to_string(), "b.jpg".to_string()];
        let csv = multiclass_csv(&p, &paths, &classes, Some(0.7)).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "path,label,class,p_mel,p_nv,\"p_b,cc\",predicted,predicted_class,\
             predicted_probability,malignant_probability,malignant_prediction,source_index\n\
             a.jpg,2,\"b,cc\",0.25,0.25,0.5,2,\"b,cc\",0.5,0.75,1,5\n\
             b.jpg,0,mel,0.4,0.4,0.2,0,mel,0.4,0.6,0,2\n"
        );
        let csv = multiclass_csv(&p, &paths, &classes, None).unwrap();
        let text = String::from_utf8(csv).unwrap();
        assert!(text.starts_with("path,label,class,p_mel,p_nv,\"p_b,cc\",predicted,predicted_class,predicted_probability,source_index\n"), "{text}");
        assert!(
            text.ends_with("b.jpg,0,mel,0.4,0.4,0.2,0,mel,0.4,2\n"),
            "{text}"
        );
    }
}

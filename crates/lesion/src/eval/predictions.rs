//! `predictions.csv`: one row per image of the evaluated split, in the split's row order:
//! `path,label,class,probability,prediction,predicted_class,logit,source_index`, the
//! prediction taken at the chosen threshold.

use std::fmt::Write as _;
use std::path::Path;

use crate::fsutil::write_atomic;
use crate::infer::SplitPredictions;
use crate::manifest::Manifest;
use crate::Result;

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
    write_atomic(
        path,
        predictions_csv(preds, paths, classes, threshold).as_bytes(),
    )
}

/// RFC 4180 quoting for a field that needs it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `predictions.csv`; probabilities are written in Rust's shortest round-trip form, so
/// metrics recomputed from the file equal those in `metrics.json` exactly.
fn predictions_csv(
    preds: &SplitPredictions,
    paths: &[String],
    classes: &[String],
    threshold: f64,
) -> String {
    let mut s = String::from(
        "path,label,class,probability,prediction,predicted_class,logit,source_index\n",
    );
    let name = |k: usize| classes.get(k).map_or("?", String::as_str);
    for i in 0..preds.len() {
        let pred = usize::from(preds.probs[i] >= threshold);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{}",
            csv_field(&paths[i]),
            preds.labels[i],
            csv_field(name(preds.labels[i])),
            preds.probs[i],
            pred,
            csv_field(name(pred)),
            preds.logits[i],
            preds.source_index[i]
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("a/b.jpg"), "a/b.jpg");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn predictions_csv_quotes_awkward_names() {
        let p = SplitPredictions {
            source_index: vec![3, 9, 4],
            labels: vec![0, 1, 1],
            logits: vec![-1.25, 0.1, -16.118_095],
            probs: vec![0.2227, 0.525, 1e-7],
        };
        let paths: Vec<String> = vec![
            "a,b \"c\"\nd.jpg".into(),
            "plain/x.jpg".into(),
            "cr\rhere.jpg".into(),
        ];
        let classes = ["benign".to_string(), "mal,ignant".to_string()];
        assert_eq!(
            predictions_csv(&p, &paths, &classes, 0.5),
            "path,label,class,probability,prediction,predicted_class,logit,source_index\n\
             \"a,b \"\"c\"\"\nd.jpg\",0,benign,0.2227,0,benign,-1.25,3\n\
             plain/x.jpg,1,\"mal,ignant\",0.525,1,\"mal,ignant\",0.1,9\n\
             \"cr\rhere.jpg\",1,\"mal,ignant\",0.0000001,0,benign,-16.118095,4\n"
        );
    }
}

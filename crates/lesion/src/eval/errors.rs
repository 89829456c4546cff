//! The most confident errors at the chosen threshold ([`ErrorCase`]), which `errors.png`
//! shows as the model saw them and the report lists.

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;

use super::{plots, ERRORS_FILE, MAX_ERRORS_SHOWN};
use crate::infer::SplitPredictions;
use crate::loader::PreparedDataset;
use crate::shard::Shard;
use crate::split::Split;
use crate::Result;

/// An image the model got wrong, for `errors.png` and the report.
#[derive(Debug, Clone)]
pub struct ErrorCase {
    /// Row of `predictions.csv` (0-based, header excluded).
    pub row: usize,
    pub source_index: u32,
    /// Path relative to the input folder.
    pub path: String,
    pub label: usize,
    pub probability: f64,
}

/// The most confident false negatives (malignant, lowest probability first) and false
/// positives (benign, highest probability first) at `threshold`.
pub fn confident_errors(
    preds: &SplitPredictions,
    paths: &[String],
    threshold: f64,
    max_each: usize,
) -> (Vec<ErrorCase>, Vec<ErrorCase>) {
    let case = |i: usize| ErrorCase {
        row: i,
        source_index: preds.source_index[i],
        path: paths[i].clone(),
        label: preds.labels[i],
        probability: preds.probs[i],
    };
    let mut fns: Vec<usize> = (0..preds.len())
        .filter(|&i| preds.labels[i] == 1 && preds.probs[i] < threshold)
        .collect();
    fns.sort_by(|&a, &b| preds.probs[a].total_cmp(&preds.probs[b]).then(a.cmp(&b)));
    let mut fps: Vec<usize> = (0..preds.len())
        .filter(|&i| preds.labels[i] == 0 && preds.probs[i] >= threshold)
        .collect();
    fps.sort_by(|&a, &b| preds.probs[b].total_cmp(&preds.probs[a]).then(a.cmp(&b)));
    (
        fns.into_iter().take(max_each).map(case).collect(),
        fps.into_iter().take(max_each).map(case).collect(),
    )
}

/// The stored (resized, unnormalised) images of `wanted` source indices of `split`,
/// exactly as the model saw them.
pub(super) fn split_images(
    data: &PreparedDataset,
    split: Split,
    wanted: &[u32],
) -> Result<HashMap<u32, RgbImage>> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let size = data.image_size();
    for entry in data.manifest().shards_of(split, 0) {
        let shard = Shard::open(data.dir().join(&entry.file))?;
        for (row, src) in shard.source_index().iter().enumerate() {
            if wanted.contains(src) {
                out.insert(*src, crate::prep::chw_to_image(shard.image(row), size));
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    Ok(out)
}

/// Draws `errors.png` into `dir`: the most confident errors at `threshold`, which it
/// returns (false negatives, false positives) for the report.
pub(super) fn draw_errors(
    dir: &Path,
    preds: &SplitPredictions,
    paths: &[String],
    data: &PreparedDataset,
    split: Split,
    threshold: f64,
) -> Result<(Vec<ErrorCase>, Vec<ErrorCase>)> {
    let (fns, fps) = confident_errors(preds, paths, threshold, MAX_ERRORS_SHOWN);
    let wanted: Vec<u32> = fns.iter().chain(&fps).map(|c| c.source_index).collect();
    let images = split_images(data, split, &wanted)?;
    plots::error_grid(&fns, &fps, &images, threshold, &dir.join(ERRORS_FILE))?;
    Ok((fns, fps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(labels: Vec<usize>, probs: Vec<f64>) -> SplitPredictions {
        SplitPredictions {
            source_index: (0..labels.len() as u32).collect(),
            logits: vec![0.0; labels.len()],
            labels,
            probs,
            outputs: 1,
            ..SplitPredictions::default()
        }
    }

    #[test]
    fn confident_errors_are_ordered_by_confidence() {
        let p = preds(vec![1, 1, 0, 0, 1, 0], vec![0.1, 0.3, 0.9, 0.6, 0.8, 0.2]);
        let paths: Vec<String> = (0..6).map(|i| format!("x/{i}.jpg")).collect();
        let (fns, fps) = confident_errors(&p, &paths, 0.5, 8);
        assert_eq!(fns.iter().map(|c| c.row).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(fps.iter().map(|c| c.row).collect::<Vec<_>>(), [2, 3]);
        let (fns, _) = confident_errors(&p, &paths, 0.5, 1);
        assert_eq!(fns.len(), 1);
        assert_eq!(fns[0].path, "x/0.jpg");
    }
}

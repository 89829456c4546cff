//! Probabilistic scores: Brier score, log loss, the reliability diagram and expected
//! calibration error.

use serde::{Deserialize, Serialize};

use super::confusion::ratio;
use super::numpy::{np_mean, np_sum};
use super::{bad, check_inputs, CALIBRATION_BINS};
use crate::Result;

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Exclusive lower edge (inclusive for the first bin, so that `p = 0` is counted).
    pub lower: f64,
    /// Inclusive upper edge.
    pub upper: f64,
    pub count: u64,
    /// Mean predicted probability in the bin; 0 when `count == 0`.
    pub mean_predicted: f64,
    /// Fraction of malignant samples in the bin; 0 when `count == 0`.
    pub observed_frequency: f64,
}

/// Expected calibration error with the per-bin data behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `sum_b (count_b / n) * |mean_predicted_b - observed_frequency_b|`.
    pub ece: f64,
    /// All bins, empty ones included, in increasing order.
    pub bins: Vec<CalibrationBin>,
}

/// Brier score, the mean of `(y - p)^2` (`brier_score_loss`).
pub fn brier_score(labels: &[usize], probs: &[f64]) -> Result<f64> {
    check_inputs(labels, probs)?;
    let sq: Vec<f64> = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            let d = y as f64 - p;
            d * d
        })
        .collect();
    Ok(np_mean(&sq))
}

/// Mean binary cross-entropy in nats (`log_loss`), with the clipping described in the
/// module docs.
pub fn log_loss(labels: &[usize], probs: &[f64]) -> Result<f64> {
    check_inputs(labels, probs)?;
    let eps = f64::EPSILON;
    let losses: Vec<f64> = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            // scikit-learn builds the two columns `[1 - p, p]` first and clips each, so
            // the benign term clips `1 - p`, not `p`.
            let q = if y == 1 { p } else { 1.0 - p };
            -q.clamp(eps, 1.0 - eps).ln()
        })
        .collect();
    Ok(np_mean(&losses))
}

/// Reliability data and expected calibration error with `n_bins` equal-width bins
/// (edges as in the module docs). `n_bins` must be at least 1.
pub fn calibration(labels: &[usize], probs: &[f64], n_bins: usize) -> Result<Calibration> {
    check_inputs(labels, probs)?;
    if n_bins == 0 {
        return Err(bad("calibration needs at least one bin"));
    }
    // `np.linspace(0, 1, n_bins + 1)` computes `k * (1 / n_bins)`, which is not always the
    // nearest double to `k / n_bins`; the last edge is exactly 1.
    let step = 1.0 / n_bins as f64;
    let mut edges: Vec<f64> = (0..=n_bins).map(|k| k as f64 * step).collect();
    edges[n_bins] = 1.0;
    let interior = &edges[1..n_bins];
    let mut sum_p = vec![Vec::new(); n_bins];
    let mut positives = vec![0u64; n_bins];
    for (&y, &p) in labels.iter().zip(probs) {
        // `np.searchsorted(interior, p)` (side="left"): the first edge >= p.
        let b = interior.partition_point(|&e| e < p);
        sum_p[b].push(p);
        positives[b] += (y == 1) as u64;
    }
    let n = labels.len() as f64;
    let mut ece = 0.0;
    let mut bins = Vec::with_capacity(n_bins);
    for b in 0..n_bins {
        let count = sum_p[b].len() as u64;
        let (mean_predicted, observed_frequency) = if count == 0 {
            (0.0, 0.0)
        } else {
            (np_sum(&sum_p[b]) / count as f64, ratio(positives[b], count))
        };
        ece += count as f64 / n * (mean_predicted - observed_frequency).abs();
        bins.push(CalibrationBin {
            lower: edges[b],
            upper: edges[b + 1],
            count,
            mean_predicted,
            observed_frequency,
        });
    }
    Ok(Calibration { ece, bins })
}

/// Expected calibration error with [`CALIBRATION_BINS`] bins.
pub fn expected_calibration_error(labels: &[usize], probs: &[f64]) -> Result<f64> {
    Ok(calibration(labels, probs, CALIBRATION_BINS)?.ece)
}

#[cfg(test)]
mod tests {
    use super::super::tests::close;
    use super::*;

    #[test]
    fn brier_and_log_loss() {
        let y = [1, 0];
        let p = [0.8, 0.4];
        assert!(close(brier_score(&y, &p).unwrap(), (0.04 + 0.16) / 2.0));
        let expect = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!(close(log_loss(&y, &p).unwrap(), expect));
        // A certain mistake is clipped to -ln(eps) instead of infinity.
        let ll = log_loss(&[1, 0], &[0.0, 1.0]).unwrap();
        assert!(close(ll, -f64::EPSILON.ln()), "{ll}");
    }

    #[test]
    fn calibration_bins() {
        // Perfectly calibrated: each bin's frequency equals its (constant) prediction.
        let y = [1, 0, 0, 0, 1, 1, 1, 0];
        let p = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let cal = calibration(&y, &p, 10).unwrap();
        assert_eq!(cal.ece, 0.0);
        assert_eq!(cal.bins.len(), 10);
        assert_eq!(cal.bins[2].count, 4);
        assert_eq!(cal.bins[2].mean_predicted, 0.25);
        assert_eq!(cal.bins[7].observed_frequency, 0.75);
        // Edges: 0 and 0.1 fall in bin 0, 0.3 in (0.2, 0.3], 1 in the last bin.
        let cal = calibration(&[0, 0, 1, 1], &[0.0, 0.1, 0.3, 1.0], 10).unwrap();
        let counts: Vec<u64> = cal.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![2, 0, 1, 0, 0, 0, 0, 0, 0, 1]);
        // Bin 0: predicted 0.05, observed 0; bin 2: 0.3 vs 1; bin 9: 1 vs 1.
        let expect = 2.0 / 4.0 * 0.05 + 1.0 / 4.0 * 0.7;
        assert!(close(cal.ece, expect), "{}", cal.ece);
    }
}

//! How a probability or a decision threshold reads on screen: the one rule that the
//! terminal output, the eval report and its figures follow (`lesion-serve`'s web page
//! applies the same rule in JavaScript). Files meant for programs (`metrics.json`,
//! `predictions.csv`, `threshold.json`, the HTTP API's JSON) keep full precision.
//!
//! Between 0.0001 and 0.9999 (inclusive) both are written with 4 decimals (`0.4123`).
//! Outside that range 4 decimals would read `0.0000` or `1.0000`: a certainty no model
//! output has, and a threshold that says nothing. There:
//! - a [`probability`] is written as a bound, `< 0.0001` or `> 0.9999` (a sigmoid that
//!   saturated to exactly 0 or 1 included: the figure is rounding, not certainty);
//! - a [`threshold`] keeps its value, in a form that parses back as a number (so it can be
//!   given to `--threshold`): below 0.0001 in scientific notation with two significant
//!   digits (`3.3e-7`), above 0.9999 with enough decimals that its distance to 1 keeps two
//!   significant digits (`0.99999967`). Exactly 0 and 1 are written `0` and `1`.
//!
//! A value that is not finite is written `n/a`.

/// Lowest value written with 4 decimals.
pub const LOW: f64 = 1e-4;
/// Highest value written with 4 decimals.
pub const HIGH: f64 = 1.0 - 1e-4;

/// A probability for people: `0.4123`, `< 0.0001` or `> 0.9999` (see the module docs).
pub fn probability(p: f64) -> String {
    if !p.is_finite() {
        "n/a".into()
    } else if p < LOW {
        "< 0.0001".into()
    } else if p > HIGH {
        "> 0.9999".into()
    } else {
        format!("{p:.4}")
    }
}

/// A decision threshold for people: `0.4123`, `3.3e-7`, `0.99999967`, `0` or `1` (see the
/// module docs).
pub fn threshold(t: f64) -> String {
    if !t.is_finite() {
        "n/a".into()
    } else if t == 0.0 || t == 1.0 {
        format!("{t:.0}")
    } else if t > 0.0 && t < LOW {
        format!("{t:.1e}")
    } else if t > HIGH && t < 1.0 {
        // Two significant digits of 1 - t, then the zeros that adds at the end trimmed.
        let decimals = (-(1.0 - t).log10()).floor() as usize + 2;
        let s = format!("{t:.decimals$}");
        s.trim_end_matches('0').to_string()
    } else {
        format!("{t:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities() {
        for (p, want) in [
            (0.0, "< 0.0001"),
            (3.3e-7, "< 0.0001"),
            (0.00005, "< 0.0001"),
            (0.0001, "0.0001"),
            (0.5, "0.5000"),
            (0.41234, "0.4123"),
            (0.9999, "0.9999"),
            (0.99996, "> 0.9999"),
            (1.0, "> 0.9999"),
            (f64::NAN, "n/a"),
        ] {
            assert_eq!(probability(p), want, "{p:e}");
        }
    }

    #[test]
    fn thresholds() {
        for (t, want) in [
            (0.0, "0"),
            (3.3e-7, "3.3e-7"),
            (3.2964e-7, "3.3e-7"),
            (0.00005, "5.0e-5"),
            (0.0001, "0.0001"),
            (0.5, "0.5000"),
            (0.41234, "0.4123"),
            (0.9999, "0.9999"),
            (0.99996, "0.99996"),
            (1.0 - 3.3e-7, "0.99999967"),
            (1.0, "1"),
            (f64::INFINITY, "n/a"),
        ] {
            assert_eq!(threshold(t), want, "{t:e}");
        }
    }

    /// A threshold reads back as nearly the same value: to 5e-5 with 4 decimals, and to 5%
    /// of its distance to 0 or 1 (two significant digits) in the tails.
    #[test]
    fn thresholds_read_back() {
        for t in [
            1e-12,
            3.3e-7,
            7.5e-5,
            0.0001,
            0.3,
            0.9999,
            0.99996,
            1.0 - 1e-9,
        ] {
            let back: f64 = threshold(t).parse().unwrap();
            let tolerance = if t < LOW {
                0.05 * t
            } else if t > HIGH {
                0.05 * (1.0 - t)
            } else {
                5e-5
            };
            assert!((back - t).abs() <= tolerance, "{t:e} -> {back:e}");
        }
    }
}

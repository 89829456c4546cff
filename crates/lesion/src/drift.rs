//! Input drift: what a run's training images looked like ([`InputProfile`], written by
//! `lesion-train` into the run as [`PROFILE_FILE`]) and the rules that call a new image, or
//! a whole set of them, markedly different from them.
//!
//! ## What is measured ([`ImageStats`])
//!
//! Of each image: its original `width` and `height` (before resizing), from which the
//! **short side** `min(width, height)` px and the **aspect ratio** `width / height`; and its
//! **mean colour**, the mean of each RGB channel in `[0, 1]` over the pixels of the image
//! *as the model sees it* (resized to the run's `S x S` with its resize policy, before
//! normalisation). The training images are measured on view 0 of the train split's shards
//! (through [`PreparedDataset::loader`], so a fold run measures its own training folds),
//! with the original sizes of [`crate::manifest::ImageEntry`]; new images on exactly the
//! same preprocessing ([`crate::predict::Predictor::preprocess_checked`]).
//!
//! ## The profile (`input_profile.json`)
//!
//! `images` (count), `image_size`, `short_side` and `aspect` ([`Spread`]: `min`, `p0_5`,
//! `p99_5`, `max`, `mean`, `sd`; percentiles by linear interpolation, numpy's default),
//! `pixel_mean` and `pixel_std` (per channel, over every pixel of every training image,
//! population SD), and `image_mean` (one [`Spread`] per channel of the images' mean colours).
//!
//! ## The rules
//!
//! One image is **markedly different** ([`InputProfile::image_warnings`]) when a quantity
//! lies outside its accepted range `[lo, hi]`:
//! - short side: `lo = min(min, p0_5 / 2)`, `hi = max(max, p99_5 * 2)` ([`SIZE_FACTOR`]);
//! - aspect ratio: `lo = min(min, p0_5 / 1.25)`, `hi = max(max, p99_5 * 1.25)`
//!   ([`ASPECT_FACTOR`]);
//! - each channel's mean colour: `lo = min(min, p0_5 - m)`, `hi = max(max, p99_5 + m)` with
//!   `m = max(0.05, sd)` ([`COLOUR_MARGIN`]).
//!
//! The range always contains the whole training range (`min..max`), so no training image is
//! ever flagged; the widened percentiles add a margin where the training images cluster
//! tightly (extreme training images only widen the range: the check gets quieter, never
//! louder).
//!
//! A **set** of images ([`InputProfile::set_drift`]) gets a warning when any of its images
//! is markedly different (with their number and share), and when its mean colour (the mean
//! of its images' mean colours) lies more than [`SET_COLOUR_SD`] (2) training SDs of the
//! per-image mean colour from the training mean, in any channel (the SD floored at 0.01).
//! The training set itself is at 0 SD and has no outlier by construction.
//!
//! A run without a profile (trained before profiles existed) gets no check and no warning.

use std::path::Path;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::fsutil::{read_json, write_json_atomic};
use crate::loader::{LoaderOptions, PreparedDataset};
use crate::split::Split;
use crate::{Error, Result};

/// The profile's file in a run folder.
pub const PROFILE_FILE: &str = "input_profile.json";
/// Value of [`InputProfile::format`].
pub const PROFILE_FORMAT: &str = "lesion-input-profile";
pub const PROFILE_FORMAT_VERSION: u32 = 1;
/// How far beyond the training 0.5–99.5 percentiles a short side may be (a factor).
pub const SIZE_FACTOR: f64 = 2.0;
/// How far beyond the training 0.5–99.5 percentiles an aspect ratio may be (a factor).
pub const ASPECT_FACTOR: f64 = 1.25;
/// The least margin beyond the training 0.5–99.5 percentiles of a channel's mean colour
/// (in `[0, 1]` units); the margin is the larger of this and the channel's SD.
pub const COLOUR_MARGIN: f64 = 0.05;
/// How many training SDs of the per-image mean colour a set's mean colour may be away.
pub const SET_COLOUR_SD: f64 = 2.0;
/// Floor of that SD (training images of one colour would otherwise flag any change).
const MIN_COLOUR_SD: f64 = 0.01;
const CHANNELS: [&str; 3] = ["red", "green", "blue"];

/// A distribution summarised: extremes, 0.5th and 99.5th percentiles, mean and SD.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub p0_5: f64,
    pub p99_5: f64,
    pub max: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub sd: f64,
}

impl Spread {
    /// The summary of `values` (at least one, all finite).
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            min: v[0],
            p0_5: percentile(&v, 0.5),
            p99_5: percentile(&v, 99.5),
            max: v[v.len() - 1],
            mean,
            sd: var.sqrt(),
        }
    }
}

/// The `q`th percentile of sorted `v` by linear interpolation between the closest ranks
/// (numpy's default `linear` method).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// What the drift rules measure of one image (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageStats {
    /// Original size, before resizing.
    pub width: u32,
    pub height: u32,
    /// Mean of each channel, in `[0, 1]`, of the resized image.
    pub mean: [f64; 3],
}

impl ImageStats {
    /// The stats of an image of original size `width x height` whose resized pixels are
    /// `chw` (`[3, S, S]` u8, channel-major as in the shards).
    pub fn of_chw(width: u32, height: u32, chw: &[u8]) -> Self {
        let plane = chw.len() / 3;
        let mut mean = [0.0; 3];
        for (c, m) in mean.iter_mut().enumerate() {
            let sum: u64 = chw[c * plane..(c + 1) * plane]
                .iter()
                .map(|&v| u64::from(v))
                .sum();
            *m = sum as f64 / plane.max(1) as f64 / 255.0;
        }
        Self {
            width,
            height,
            mean,
        }
    }

    pub fn short_side(&self) -> f64 {
        f64::from(self.width.min(self.height))
    }

    pub fn aspect(&self) -> f64 {
        f64::from(self.width) / f64::from(self.height.max(1))
    }
}

/// `input_profile.json`: what the run's training images looked like (module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputProfile {
    pub format: String,
    pub format_version: u32,
    /// Training images measured.
    pub images: usize,
    /// Side of the resized images the colours were measured on.
    pub image_size: u32,
    pub short_side: Spread,
    pub aspect: Spread,
    /// Per channel, over every pixel of every training image, in `[0, 1]`.
    pub pixel_mean: [f64; 3],
    pub pixel_std: [f64; 3],
    /// Per channel, the distribution of the images' mean colours.
    pub image_mean: [Spread; 3],
}

/// Accumulates training images into an [`InputProfile`].
#[derive(Debug, Default)]
pub struct ProfileBuilder {
    stats: Vec<ImageStats>,
    /// Per channel, the sum of the pixel values (0-255) and of their squares: exact.
    sum: [u64; 3],
    sum_sq: [u64; 3],
    pixels: u64,
    image_size: u32,
}

impl ProfileBuilder {
    /// Adds one image: its original size and its resized pixels (`[3, S, S]` u8). Its mean
    /// colour is [`ImageStats::of_chw`]'s, the very arithmetic that checks a new image, so
    /// a training image measures the same in both.
    pub fn push(&mut self, width: u32, height: u32, chw: &[u8], image_size: u32) {
        let plane = chw.len() / 3;
        for c in 0..3 {
            for &v in &chw[c * plane..(c + 1) * plane] {
                self.sum[c] += u64::from(v);
                self.sum_sq[c] += u64::from(v) * u64::from(v);
            }
        }
        self.pixels += plane as u64;
        self.image_size = image_size;
        self.stats.push(ImageStats::of_chw(width, height, chw));
    }

    /// The profile; `None` without images.
    pub fn finish(self) -> Option<InputProfile> {
        if self.stats.is_empty() {
            return None;
        }
        let n = self.pixels.max(1) as f64;
        let mut pixel_mean = [0.0; 3];
        let mut pixel_std = [0.0; 3];
        for c in 0..3 {
            let mean = self.sum[c] as f64 / n;
            let var = (self.sum_sq[c] as f64 / n - mean * mean).max(0.0);
            pixel_mean[c] = mean / 255.0;
            pixel_std[c] = var.sqrt() / 255.0;
        }
        let of = |f: &dyn Fn(&ImageStats) -> f64| {
            Spread::of(&self.stats.iter().map(f).collect::<Vec<_>>())
        };
        Some(InputProfile {
            format: PROFILE_FORMAT.into(),
            format_version: PROFILE_FORMAT_VERSION,
            images: self.stats.len(),
            image_size: self.image_size,
            short_side: of(&|s| s.short_side()),
            aspect: of(&|s| s.aspect()),
            pixel_mean,
            pixel_std,
            image_mean: [of(&|s| s.mean[0]), of(&|s| s.mean[1]), of(&|s| s.mean[2])],
        })
    }
}

/// A quantity's accepted range: `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Range {
    pub fn contains(&self, v: f64) -> bool {
        v >= self.lo && v <= self.hi
    }
}

/// The set-level findings of [`InputProfile::set_drift`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetDrift {
    pub images: usize,
    /// Images with at least one markedly different quantity.
    pub outliers: usize,
    pub outlier_share: f64,
    /// Images outside the short-side, aspect-ratio and mean-colour ranges.
    pub outside_size: usize,
    pub outside_aspect: usize,
    pub outside_colour: usize,
    /// The set's mean colour (mean of its images' mean colours), per channel.
    pub mean_colour: [f64; 3],
    /// Its distance from the training mean in training SDs, per channel (signed).
    pub colour_shift_sd: [f64; 3],
    /// What the findings call for (empty when nothing differs markedly).
    pub warnings: Vec<String>,
}

impl InputProfile {
    /// Measures the training split of `data` (view 0, see the module docs).
    pub fn of_prepared(data: &PreparedDataset) -> Result<Option<Self>> {
        let size = data.image_size();
        let norm = data.manifest().normalization;
        let images = &data.manifest().images;
        let mut builder = ProfileBuilder::default();
        let loader = data.loader(Split::Train, LoaderOptions::eval(64), &Device::Cpu)?;
        for batch in loader {
            let batch = batch?;
            let x: Vec<f32> = batch
                .images
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let per = 3 * (size as usize).pow(2);
            let plane = per / 3;
            for (k, &src) in batch.source_index.iter().enumerate() {
                let entry = images.get(src as usize).ok_or_else(|| Error::BadArtifact {
                    path: data.dir().to_path_buf(),
                    reason: format!("a shard names image {src}, which the manifest lacks"),
                })?;
                // The loader's `(x / 255 - mean) / std`, undone: within 1e-3 of the
                // stored byte, so rounding gives it back exactly.
                let raw: Vec<u8> = x[k * per..(k + 1) * per]
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = i / plane;
                        ((v * norm.std[c] + norm.mean[c]) * 255.0)
                            .round()
                            .clamp(0.0, 255.0) as u8
                    })
                    .collect();
                builder.push(entry.width, entry.height, &raw, size);
            }
        }
        Ok(builder.finish())
    }

    /// Reads `dir`'s profile: `None` when the run has none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(PROFILE_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let p: Self = read_json(&path)?;
        if p.format != PROFILE_FORMAT || p.format_version != PROFILE_FORMAT_VERSION {
            return Err(Error::BadArtifact {
                path,
                reason: format!(
                    "not an input profile of this version (format {} {}, expected {} {})",
                    p.format, p.format_version, PROFILE_FORMAT, PROFILE_FORMAT_VERSION
                ),
            });
        }
        Ok(Some(p))
    }

    /// Writes the profile into the run folder `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json_atomic(dir.join(PROFILE_FILE), self)
    }

    pub fn short_side_range(&self) -> Range {
        factor_range(&self.short_side, SIZE_FACTOR)
    }

    pub fn aspect_range(&self) -> Range {
        factor_range(&self.aspect, ASPECT_FACTOR)
    }

    /// Channel `c`'s accepted mean colour.
    pub fn colour_range(&self, c: usize) -> Range {
        let s = &self.image_mean[c];
        let m = COLOUR_MARGIN.max(s.sd);
        Range {
            lo: s.min.min(s.p0_5 - m),
            hi: s.max.max(s.p99_5 + m),
        }
    }

    /// Why one image is markedly different from the training images (empty when it is
    /// not): one sentence per quantity out of range.
    pub fn image_warnings(&self, s: &ImageStats) -> Vec<String> {
        let mut out = Vec::new();
        let r = self.short_side_range();
        if !r.contains(s.short_side()) {
            out.push(format!(
                "image size {}x{} px: its short side ({}) is outside the training range \
                 ({:.0} to {:.0} px)",
                s.width,
                s.height,
                s.short_side(),
                r.lo,
                r.hi
            ));
        }
        let r = self.aspect_range();
        if !r.contains(s.aspect()) {
            out.push(format!(
                "aspect ratio {:.2} ({}x{}) is outside the training range ({:.2} to {:.2})",
                s.aspect(),
                s.width,
                s.height,
                r.lo,
                r.hi
            ));
        }
        let off: Vec<String> = (0..3)
            .filter_map(|c| {
                let r = self.colour_range(c);
                (!r.contains(s.mean[c])).then(|| {
                    format!(
                        "{} {:.3} (training {:.3} to {:.3})",
                        CHANNELS[c], s.mean[c], r.lo, r.hi
                    )
                })
            })
            .collect();
        if !off.is_empty() {
            out.push(format!(
                "mean colour outside the training range: {}",
                off.join(", ")
            ));
        }
        out
    }

    fn is_colour_outlier(&self, s: &ImageStats) -> bool {
        (0..3).any(|c| !self.colour_range(c).contains(s.mean[c]))
    }

    /// The set-level findings for `stats` (see the module docs); `None` for an empty set.
    pub fn set_drift(&self, stats: &[ImageStats]) -> Option<SetDrift> {
        if stats.is_empty() {
            return None;
        }
        let n = stats.len();
        let count = |f: &dyn Fn(&ImageStats) -> bool| stats.iter().filter(|s| f(s)).count();
        let (size, aspect) = (self.short_side_range(), self.aspect_range());
        let outside_size = count(&|s| !size.contains(s.short_side()));
        let outside_aspect = count(&|s| !aspect.contains(s.aspect()));
        let outside_colour = count(&|s| self.is_colour_outlier(s));
        let outliers = count(&|s| {
            !size.contains(s.short_side())
                || !aspect.contains(s.aspect())
                || self.is_colour_outlier(s)
        });
        let mut mean_colour = [0.0; 3];
        let mut colour_shift_sd = [0.0; 3];
        for c in 0..3 {
            mean_colour[c] = stats.iter().map(|s| s.mean[c]).sum::<f64>() / n as f64;
            let t = &self.image_mean[c];
            colour_shift_sd[c] = (mean_colour[c] - t.mean) / t.sd.max(MIN_COLOUR_SD);
        }
        let mut warnings = Vec::new();
        let share = outliers as f64 / n as f64;
        if outliers > 0 {
            let what: Vec<String> = [
                (outside_size, "image size"),
                (outside_aspect, "aspect ratio"),
                (outside_colour, "mean colour"),
            ]
            .iter()
            .filter(|(k, _)| *k > 0)
            .map(|(k, name)| format!("{k} by {name}"))
            .collect();
            warnings.push(format!(
                "{outliers} of {n} images ({:.1}%) differ markedly from the run's training \
                 images ({}): the model has not seen inputs like them",
                100.0 * share,
                what.join(", ")
            ));
        }
        let shifted: Vec<String> = (0..3)
            .filter(|&c| colour_shift_sd[c].abs() > SET_COLOUR_SD)
            .map(|c| {
                format!(
                    "{} {:.3} vs {:.3} ({:+.1} SD)",
                    CHANNELS[c], mean_colour[c], self.image_mean[c].mean, colour_shift_sd[c]
                )
            })
            .collect();
        if !shifted.is_empty() {
            warnings.push(format!(
                "the images' mean colour differs markedly from the training images' \
                 (more than {SET_COLOUR_SD} SD): {}",
                shifted.join(", ")
            ));
        }
        Some(SetDrift {
            images: n,
            outliers,
            outlier_share: share,
            outside_size,
            outside_aspect,
            outside_colour,
            mean_colour,
            colour_shift_sd,
            warnings,
        })
    }
}

/// `[min(min, p0_5 / f), max(max, p99_5 * f)]`.
fn factor_range(s: &Spread, f: f64) -> Range {
    Range {
        lo: s.min.min(s.p0_5 / f),
        hi: s.max.max(s.p99_5 * f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_linearly_as_numpy() {
        // numpy.percentile(np.arange(201), [0.5, 99.5]) == [1.0, 199.0];
        // numpy.percentile([1, 2, 4, 8], [0.5, 99.5]) == [1.015, 7.94],
        // numpy.std([1, 2, 4, 8]) == 2.680951323690902.
        let v: Vec<f64> = (0..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 1.0);
        assert_eq!(percentile(&v, 99.5), 199.0);
        let s = Spread::of(&[8.0, 1.0, 4.0, 2.0]);
        assert!((s.p0_5 - 1.015).abs() < 1e-12, "{}", s.p0_5);
        assert!((s.p99_5 - 7.94).abs() < 1e-12, "{}", s.p99_5);
        assert_eq!((s.min, s.max, s.mean), (1.0, 8.0, 3.75));
        assert!((s.sd - 2.680951323690902).abs() < 1e-12, "{}", s.sd);
    }

    /// Image `i` of [`profile`]'s `n`: its size and its one-colour 2x2 pixels.
    fn image(i: usize, n: usize) -> (u32, u32, Vec<u8>) {
        let w = 600 + (i as u32 * 7) % 200;
        let h = 500 + (i as u32 * 11) % 200;
        let r = 128 + (51 * i / n) as u8;
        let b = 77 + 25 * (i % 3) as u8;
        let chw = [[r; 4], [102; 4], [b; 4]].concat();
        (w, h, chw)
    }

    /// A profile of `n` images whose sizes and colours are spread evenly.
    fn profile(n: usize) -> InputProfile {
        let mut b = ProfileBuilder::default();
        for i in 0..n {
            let (w, h, chw) = image(i, n);
            b.push(w, h, &chw, 2);
        }
        b.finish().unwrap()
    }

    #[test]
    fn profile_sums_pixels_and_images() {
        let mut b = ProfileBuilder::default();
        // Two 1x2 images: red {0, 255} and {255, 255}; green 51 everywhere; blue {51, 102}
        // and {0, 0}.
        b.push(10, 20, &[0, 255, 51, 51, 51, 102], 1);
        b.push(30, 10, &[255, 255, 51, 51, 0, 0], 1);
        let p = b.finish().unwrap();
        assert_eq!(p.images, 2);
        assert_eq!(p.pixel_mean[0], 0.75);
        // Red pixels {0, 1, 1, 1}: population SD sqrt(0.1875).
        assert!((p.pixel_std[0] - 0.1875f64.sqrt()).abs() < 1e-12);
        assert_eq!(p.pixel_std[1], 0.0);
        assert!((p.pixel_mean[2] - 0.15).abs() < 1e-12);
        assert_eq!(p.short_side.min, 10.0);
        assert_eq!(p.short_side.max, 10.0);
        assert_eq!(p.aspect.min, 0.5);
        assert_eq!(p.aspect.max, 3.0);
        assert_eq!(p.image_mean[0].mean, 0.75);
        assert_eq!(p.image_mean[2].min, 0.0);
        assert!((p.image_mean[2].max - 0.3).abs() < 1e-12);
        assert!(ProfileBuilder::default().finish().is_none());
    }

    #[test]
    fn training_images_are_never_flagged() {
        let n = 300;
        let p = profile(n);
        let mut stats = Vec::new();
        for i in 0..n {
            let (w, h, chw) = image(i, n);
            let s = ImageStats::of_chw(w, h, &chw);
            assert!(p.image_warnings(&s).is_empty(), "image {i}: {s:?}");
            stats.push(s);
        }
        let d = p.set_drift(&stats).unwrap();
        assert_eq!(d.outliers, 0);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert!(d.colour_shift_sd.iter().all(|z| z.abs() < 1e-6));
    }

    #[test]
    fn extreme_sizes_and_tints_are_flagged() {
        let p = profile(300);
        let typical = ImageStats {
            width: 700,
            height: 600,
            mean: [0.6, 0.4, 0.4],
        };
        assert!(p.image_warnings(&typical).is_empty());
        let wide = ImageStats {
            width: 4000,
            height: 300,
            ..typical
        };
        let w = p.image_warnings(&wide);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("aspect ratio 13.33 (4000x300)"), "{w:?}");
        let tiny = ImageStats {
            width: 120,
            height: 100,
            ..typical
        };
        let w = p.image_warnings(&tiny);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("image size 120x100 px: its short side (100)"),
            "{w:?}"
        );
        let blue = ImageStats {
            mean: [0.2, 0.4, 0.9],
            ..typical
        };
        let w = p.image_warnings(&blue);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("red 0.200") && w[0].contains("blue 0.900"),
            "{w:?}"
        );
        assert!(!w[0].contains("green"), "{w:?}");

        // A set: one wide image in ten, the rest typical.
        let mut set = vec![typical; 9];
        set.push(wide);
        let d = p.set_drift(&set).unwrap();
        assert_eq!((d.outliers, d.outside_size, d.outside_aspect), (1, 0, 1));
        assert_eq!(d.outside_colour, 0);
        assert!((d.outlier_share - 0.1).abs() < 1e-12);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(
            d.warnings[0].starts_with("1 of 10 images (10.0%)"),
            "{:?}",
            d.warnings
        );
        // A tinted set: every image shifted, and the set's mean far away.
        let d = p.set_drift(&[blue; 5]).unwrap();
        assert_eq!(d.outliers, 5);
        assert!(
            d.colour_shift_sd[2] > SET_COLOUR_SD,
            "{:?}",
            d.colour_shift_sd
        );
        assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
        assert!(d.warnings[1].contains("blue"), "{:?}", d.warnings);
    }

    #[test]
    fn ranges_hold_the_training_range_and_widen_the_percentiles() {
        let p = profile(300);
        let s = p.short_side;
        let r = p.short_side_range();
        assert_eq!(r.lo, s.min.min(s.p0_5 / SIZE_FACTOR));
        assert_eq!(r.hi, s.max.max(s.p99_5 * SIZE_FACTOR));
        assert!(r.lo <= s.min && r.hi >= s.max);
        let c = p.colour_range(1);
        // Green is 0.4 everywhere: SD 0, so the margin is the floor.
        assert!((c.lo - (0.4 - COLOUR_MARGIN)).abs() < 1e-6, "{c:?}");
        assert!((c.hi - (0.4 + COLOUR_MARGIN)).abs() < 1e-6, "{c:?}");
    }

    #[test]
    fn stats_of_chw_bytes() {
        // 2x1 image: red {255, 0}, green {51, 51}, blue {0, 0}.
        let s = ImageStats::of_chw(4000, 300, &[255, 0, 51, 51, 0, 0]);
        assert_eq!(s.mean, [0.5, 0.2, 0.0]);
        assert_eq!(s.short_side(), 300.0);
        assert!((s.aspect() - 4000.0 / 300.0).abs() < 1e-12);
    }

    #[test]
    fn profile_reads_back_and_old_runs_have_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(InputProfile::read(tmp.path()).unwrap(), None);
        let p = profile(20);
        p.write(tmp.path()).unwrap();
        assert_eq!(InputProfile::read(tmp.path()).unwrap(), Some(p));
        std::fs::write(
            tmp.path().join(PROFILE_FILE),
            r#"{"format": "something-else"}"#,
        )
        .unwrap();
        assert!(InputProfile::read(tmp.path()).is_err());
    }
}

//! A deterministic synthetic dermoscopy-like dataset, for demos, smoke tests and
//! benchmarks where the real images are not at hand.
//!
//! Layout written: `out/Benign/benign_NNNNN.jpg` and `out/Malignant/malignant_NNNNN.jpg`
//! (baseline JPEG, quality 90, 8-bit RGB, 200-320 px per side, about a third non-square),
//! the same folder layout `lesion-prep` reads, and [`MARKER_FILE`] (hidden, so prep skips
//! it) recording the seed and count.
//!
//! `--force` replaces only a folder that holds nothing but what this module writes (see
//! [`OUTPUT_KIND`]), so a folder of real photos is never deleted.
//!
//! The classes differ the way the ABCD rule of dermoscopy describes: benign lesions are
//! round or elliptic, symmetric, with a smooth border and one even brown; malignant ones are
//! asymmetric, with an irregular (noisy, lobed) border and several colours (dark brown,
//! black, blue-grey, red). Both sit on skin-toned, unevenly lit, slightly noisy backgrounds,
//! sometimes crossed by hairs, at random positions, sizes and rotations, and the strength
//! of each cue varies from image to image, so the task is learnable but not trivial.
//!
//! Every image is drawn from its own `ChaCha8Rng` stream keyed by `(seed, class, index)`,
//! so the files are byte-identical whatever the thread count.

use std::f32::consts::{PI, TAU};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::IoContext;
use crate::fsutil::{self, OutputKind, StagingDir};
use crate::{Error, Result};

/// Class folder names, in label order (`0` = benign, `1` = malignant).
pub const CLASS_DIRS: [&str; 2] = ["Benign", "Malignant"];

/// JPEG quality of the written files.
pub const JPEG_QUALITY: u8 = 90;

/// The file marking a folder as synthetic data: JSON with `format` ([`SYNTH_FORMAT`]),
/// `seed`, `per_class` and `crate_version`.
pub const MARKER_FILE: &str = ".lesion-synth.json";
/// Value of the marker's `format`.
pub const SYNTH_FORMAT: &str = "lesion-synthetic-dataset";

/// What [`generate`] writes, for `--force`: a folder holding only the class folders of
/// generated images (`<class>/<class lowercase>_NNNNN.jpg`) and [`MARKER_FILE`]. The
/// layout alone decides; the marker is not required.
pub const OUTPUT_KIND: OutputKind = OutputKind {
    what: "a synthetic dataset (a folder holding only the Benign/ and Malignant/ images \
           lesion-prep synth writes)",
    is_ours: holds_only_synthetic_images,
};

fn holds_only_synthetic_images(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let mut classes = 0;
    for e in entries {
        let Ok(e) = e else { return false };
        let name = e.file_name();
        let Ok(meta) = e.file_type() else {
            return false;
        };
        if name == MARKER_FILE && meta.is_file() {
            continue;
        }
        let Some(class) = CLASS_DIRS.iter().find(|c| name == **c) else {
            return false;
        };
        if !meta.is_dir() || !holds_only_images_of(&e.path(), class) {
            return false;
        }
        classes += 1;
    }
    classes > 0
}

fn holds_only_images_of(dir: &Path, class: &str) -> bool {
    let prefix = format!("{}_", class.to_ascii_lowercase());
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        let Ok(e) = e else { return false };
        let name = e.file_name();
        let digits = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".jpg"));
        e.file_type().is_ok_and(|t| t.is_file())
            && digits.is_some_and(|d| d.len() >= 5 && d.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynthSummary {
    /// The dataset folder (holding `Benign/` and `Malignant/`).
    pub root: PathBuf,
    /// Images per class folder.
    pub per_class: usize,
    /// Images written in total.
    pub images: usize,
    /// Total size of the JPEG files in bytes.
    pub bytes: u64,
}

/// Writes `per_class` synthetic images into each of `out/Benign/` and `out/Malignant/`.
///
/// Output is deterministic for a given `seed`. The folder is built beside `out` and renamed
/// into place at the end, so `out` is either complete or untouched. An existing synthetic
/// dataset ([`OUTPUT_KIND`]) is refused with [`Error::OutputExists`] unless `force` (then
/// it is replaced only once the new folder is complete); an existing empty folder is simply
/// replaced; anything else is refused with [`Error::NotOurOutput`].
pub fn generate(
    out: &Path,
    per_class: usize,
    seed: u64,
    progress: bool,
    force: bool,
) -> Result<SynthSummary> {
    if per_class == 0 {
        return Err(Error::InvalidOption(
            "the number of images per class must be at least 1".into(),
        ));
    }
    let stage = StagingDir::new(out, force, OUTPUT_KIND, &[])?;
    for dir in CLASS_DIRS {
        let p = stage.path().join(dir);
        fs::create_dir(&p).with_path(&p)?;
    }
    fsutil::write_json_atomic(
        stage.path().join(MARKER_FILE),
        &serde_json::json!({
            "format": SYNTH_FORMAT,
            "seed": seed,
            "per_class": per_class,
            "crate_version": env!("CARGO_PKG_VERSION"),
        }),
    )?;

    let total = per_class * CLASS_DIRS.len();
    let bar = progress_bar(progress, total);
    let bytes = AtomicU64::new(0);
    (0..total)
        .into_par_iter()
        .try_for_each(|job| -> Result<()> {
            let (class, index) = (job / per_class, job % per_class);
            let img = render(class, index, seed);
            let mut jpeg = Vec::with_capacity(32 * 1024);
            JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
                .encode_image(&img)
                .map_err(|e| Error::BadImage {
                    path: file_path(stage.path(), class, index),
                    reason: format!("cannot encode JPEG: {e}"),
                })?;
            let path = file_path(stage.path(), class, index);
            fs::write(&path, &jpeg).with_path(&path)?;
            bytes.fetch_add(jpeg.len() as u64, Ordering::Relaxed);
            bar.inc(1);
            Ok(())
        })?;
    bar.finish_and_clear();
    let root = stage.commit()?;
    Ok(SynthSummary {
        root,
        per_class,
        images: total,
        bytes: bytes.into_inner(),
    })
}

fn file_path(root: &Path, class: usize, index: usize) -> PathBuf {
    let dir = CLASS_DIRS[class];
    root.join(dir)
        .join(format!("{}_{index:05}.jpg", dir.to_ascii_lowercase()))
}

fn progress_bar(show: bool, len: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix:>7} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix("synth")
}

/// Renders image `index` of `class` (`0` benign, `1` malignant) for `seed`.
///
/// Pure and deterministic: the same arguments always give the same pixels.
pub fn render(class: usize, index: usize, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // One stream per image: independent of how many images come before it.
    rng.set_stream(((class as u64) << 40) | index as u64);
    Scene::sample(class == 1, &mut rng).draw(&mut rng)
}

/// Smooth 2-D value noise on a coarse lattice (bilinear with smoothstep), in [-1, 1].
struct Noise {
    grid: Vec<f32>,
    n: usize,
    cell: f32,
}

impl Noise {
    fn new(rng: &mut ChaCha8Rng, extent: f32, cells: usize) -> Self {
        let n = cells + 2;
        let grid = (0..n * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Noise {
            grid,
            n,
            cell: extent / cells as f32,
        }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let fx = (x / self.cell).clamp(0.0, (self.n - 2) as f32 - 1e-3);
        let fy = (y / self.cell).clamp(0.0, (self.n - 2) as f32 - 1e-3);
        let (ix, iy) = (fx as usize, fy as usize);
        let s = smooth(fx - ix as f32);
        let t = smooth(fy - iy as f32);
        let g = |i: usize, j: usize| self.grid[j * self.n + i];
        let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * s;
        let bottom = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * s;
        top + (bottom - top) * t
    }
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// A coloured blob inside a malignant lesion (lesion-local coordinates, in pixels).
struct Patch {
    u: f32,
    v: f32,
    radius: f32,
    colour: [f32; 3],
    strength: f32,
}

/// A hair: a quadratic Bezier curve.
struct Hair {
    p: [[f32; 2]; 3],
    width: f32,
    colour: [f32; 3],
}

/// Everything random about one image, drawn before any pixel is computed.
struct Scene {
    w: u32,
    h: u32,
    skin: [f32; 3],
    light_dir: [f32; 2],
    light_slope: f32,
    vignette: f32,
    cx: f32,
    cy: f32,
    /// Rotation of the lesion's axes (radians) and its minor/major axis ratio.
    cos_r: f32,
    sin_r: f32,
    aspect: f32,
    /// Border radius (pixels) sampled at `RADIAL` evenly spaced angles.
    radius: Vec<f32>,
    max_radius: f32,
    edge: f32,
    opacity: f32,
    base: [f32; 3],
    centre_dark: f32,
    texture: f32,
    patches: Vec<Patch>,
    hairs: Vec<Hair>,
    pixel_noise: f32,
}

const RADIAL: usize = 512;

impl Scene {
    fn sample(malignant: bool, rng: &mut ChaCha8Rng) -> Self {
        let side = rng.random_range(200u32..=320);
        let (w, h) = if rng.random_bool(0.35) {
            let short = (side as f32 * rng.random_range(0.7f32..0.95)) as u32;
            if rng.random_bool(0.5) {
                (side, short.max(200))
            } else {
                (short.max(200), side)
            }
        } else {
            (side, side)
        };
        let (wf, hf) = (w as f32, h as f32);
        let m = wf.min(hf);

        let r = rng.random_range(190.0f32..240.0);
        let skin = [
            r,
            r * rng.random_range(0.70f32..0.84),
            r * rng.random_range(0.58f32..0.74),
        ];
        let a: f32 = rng.random_range(0.0..TAU);
        let light_dir = [a.cos(), a.sin()];
        let light_slope = rng.random_range(0.0f32..0.25) / m;
        let vignette = rng.random_range(0.05f32..0.45);

        let cx = wf * (0.5 + rng.random_range(-0.12f32..0.12));
        let cy = hf * (0.5 + rng.random_range(-0.12f32..0.12));
        let rot: f32 = rng.random_range(0.0..TAU);
        let r0 = m * rng.random_range(0.16f32..0.30);

        // Border: a sum of angular harmonics. Benign: few, tiny (smooth, symmetric outline).
        // Malignant: low orders with large amplitudes (asymmetry, lobes) plus high orders
        // (ragged edge), with the overall irregularity itself drawn, so some are mild.
        let mut harmonics: Vec<(f32, f32, f32)> = Vec::new();
        let aspect;
        if malignant {
            aspect = rng.random_range(0.6f32..1.0);
            let irregular = rng.random_range(0.25f32..1.0);
            for k in 1..=6 {
                let amp = irregular * rng.random_range(0.03f32..0.16) / (k as f32).sqrt();
                harmonics.push((k as f32, amp, rng.random_range(0.0..TAU)));
            }
            for k in 7..=24 {
                // Falling off with order, so the edge is ragged rather than star-shaped.
                let amp = irregular * rng.random_range(0.0f32..0.06) / k as f32 * 4.0;
                harmonics.push((k as f32, amp, rng.random_range(0.0..TAU)));
            }
        } else {
            aspect = rng.random_range(0.72f32..1.0);
            for k in [2.0f32, 3.0, 4.0] {
                harmonics.push((
                    k,
                    rng.random_range(0.0f32..0.02),
                    rng.random_range(0.0..TAU),
                ));
            }
        }
        // Malignant lobes: angular Gaussian bumps on one side break the symmetry outright.
        let lobes: Vec<(f32, f32, f32)> = if malignant {
            (0..rng.random_range(0usize..=3))
                .map(|_| {
                    (
                        rng.random_range(0.0..TAU),
                        rng.random_range(0.1f32..0.35),
                        rng.random_range(0.25f32..0.7),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let radius: Vec<f32> = (0..RADIAL)
            .map(|i| {
                let phi = i as f32 * TAU / RADIAL as f32;
                let mut f = 1.0;
                for &(k, amp, ph) in &harmonics {
                    f += amp * (k * phi + ph).sin();
                }
                for &(at, amp, width) in &lobes {
                    let d = angle_diff(phi, at);
                    f += amp * (-(d * d) / (2.0 * width * width)).exp();
                }
                r0 * f.max(0.35)
            })
            .collect();
        let max_radius = radius.iter().copied().fold(0.0, f32::max);

        let (edge, opacity, base, centre_dark, texture, patches);
        if malignant {
            edge = rng.random_range(1.0f32..4.5);
            opacity = rng.random_range(0.85f32..1.0);
            let r = rng.random_range(85.0f32..135.0);
            base = [
                r,
                r * rng.random_range(0.55f32..0.68),
                r * rng.random_range(0.40f32..0.58),
            ];
            centre_dark = rng.random_range(0.0f32..0.25);
            texture = rng.random_range(6.0f32..16.0);
            const PALETTE: [[f32; 3]; 5] = [
                [72.0, 42.0, 30.0],    // dark brown
                [34.0, 26.0, 28.0],    // black
                [112.0, 122.0, 142.0], // blue-grey
                [168.0, 68.0, 72.0],   // red
                [160.0, 110.0, 78.0],  // light brown
            ];
            patches = (0..rng.random_range(2usize..=5))
                .map(|_| {
                    let a: f32 = rng.random_range(0.0..TAU);
                    let d = r0 * rng.random_range(0.0f32..0.7);
                    Patch {
                        u: d * a.cos(),
                        v: d * a.sin(),
                        radius: r0 * rng.random_range(0.2f32..0.6),
                        colour: PALETTE[rng.random_range(0..PALETTE.len())],
                        strength: rng.random_range(0.55f32..1.0),
                    }
                })
                .collect();
        } else {
            edge = rng.random_range(0.8f32..2.5);
            opacity = rng.random_range(0.80f32..1.0);
            let r = rng.random_range(120.0f32..175.0);
            base = [
                r,
                r * rng.random_range(0.58f32..0.70),
                r * rng.random_range(0.42f32..0.58),
            ];
            centre_dark = rng.random_range(0.0f32..0.10);
            texture = rng.random_range(2.0f32..6.0);
            patches = Vec::new();
        }

        let hairs = if rng.random_bool(0.35) {
            (0..rng.random_range(1usize..=5))
                .map(|_| {
                    let mut pt = || {
                        [
                            rng.random_range(-0.1f32..1.1) * wf,
                            rng.random_range(-0.1f32..1.1) * hf,
                        ]
                    };
                    let p = [pt(), pt(), pt()];
                    let g = rng.random_range(25.0f32..70.0);
                    Hair {
                        p,
                        width: rng.random_range(0.5f32..1.4),
                        colour: [g, g * 0.8, g * 0.7],
                    }
                })
                .collect()
        } else {
            Vec::new()
        };

        Scene {
            w,
            h,
            skin,
            light_dir,
            light_slope,
            vignette,
            cx,
            cy,
            cos_r: rot.cos(),
            sin_r: rot.sin(),
            aspect,
            radius,
            max_radius,
            edge,
            opacity,
            base,
            centre_dark,
            texture,
            patches,
            hairs,
            pixel_noise: rng.random_range(2.0f32..6.0),
        }
    }

    fn draw(&self, rng: &mut ChaCha8Rng) -> RgbImage {
        let (wf, hf) = (self.w as f32, self.h as f32);
        let extent = wf.max(hf);
        let skin_noise = Noise::new(rng, extent, 6);
        let lesion_noise = Noise::new(rng, extent, 14);
        let patch_noise = Noise::new(rng, extent, 9);
        let reach = self.max_radius + 3.0 * self.edge;

        let mut buf = vec![[0f32; 3]; (self.w * self.h) as usize];
        for y in 0..self.h {
            for x in 0..self.w {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let s = 1.0 + 0.06 * skin_noise.at(px, py);
                let mut c = [self.skin[0] * s, self.skin[1] * s, self.skin[2] * s];

                let (dx, dy) = (px - self.cx, py - self.cy);
                if dx.abs() < reach && dy.abs() < reach {
                    // Lesion-local frame: rotated, minor axis stretched to a circle.
                    let u = dx * self.cos_r + dy * self.sin_r;
                    let v = (-dx * self.sin_r + dy * self.cos_r) / self.aspect;
                    let dist = (u * u + v * v).sqrt();
                    let phi = v.atan2(u).rem_euclid(TAU);
                    let rad = self.radius[((phi / TAU * RADIAL as f32) as usize).min(RADIAL - 1)];
                    let inside = ((rad - dist) / self.edge + 0.5).clamp(0.0, 1.0);
                    if inside > 0.0 {
                        let rel = (dist / rad).min(1.0);
                        let dark = 1.0 - self.centre_dark * (1.0 - rel * rel);
                        let t = self.texture * lesion_noise.at(px, py);
                        let mut l = [
                            self.base[0] * dark + t,
                            self.base[1] * dark + t,
                            self.base[2] * dark + t,
                        ];
                        for p in &self.patches {
                            let d = ((u - p.u).powi(2) + (v - p.v).powi(2)).sqrt() / p.radius;
                            let wgt = (1.0 - d + 0.35 * patch_noise.at(px + p.u, py + p.v))
                                .clamp(0.0, 1.0);
                            l = mix(l, p.colour, smooth(wgt) * p.strength);
                        }
                        c = mix(c, l, inside * self.opacity);
                    }
                }
                buf[(y * self.w + x) as usize] = c;
            }
        }

        for hair in &self.hairs {
            self.draw_hair(&mut buf, hair);
        }

        let diag = (wf * wf + hf * hf).sqrt() / 2.0;
        let mut img = RgbImage::new(self.w, self.h);
        for (i, px) in img.pixels_mut().enumerate() {
            let (x, y) = (
                (i as u32 % self.w) as f32 + 0.5,
                (i as u32 / self.w) as f32 + 0.5,
            );
            let (dx, dy) = (x - wf / 2.0, y - hf / 2.0);
            let r = (dx * dx + dy * dy).sqrt() / diag;
            let light = (1.0
                + self.light_slope * (dx * self.light_dir[0] + dy * self.light_dir[1]))
                * (1.0 - self.vignette * r * r);
            let c = buf[i];
            let mut out = [0u8; 3];
            for ch in 0..3 {
                let n = rng.random_range(-1.0f32..1.0) * self.pixel_noise;
                out[ch] = (c[ch] * light + n).round().clamp(0.0, 255.0) as u8;
            }
            *px = Rgb(out);
        }
        img
    }

    /// Blends one hair into `buf`. Coverage is accumulated first (max over the curve's
    /// overlapping stamps) so a hair is evenly dark along its length.
    fn draw_hair(&self, buf: &mut [[f32; 3]], hair: &Hair) {
        let [p0, p1, p2] = hair.p;
        let len = (p2[0] - p0[0]).hypot(p2[1] - p0[1]) + (p1[0] - p0[0]).hypot(p1[1] - p0[1]);
        let steps = (len * 2.0).max(1.0) as usize;
        let r = hair.width + 1.0;
        let mut cover = vec![0f32; buf.len()];
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let q =
                |k: usize| (1.0 - t).powi(2) * p0[k] + 2.0 * (1.0 - t) * t * p1[k] + t * t * p2[k];
            let (hx, hy) = (q(0), q(1));
            let x0 = (hx - r).floor().max(0.0) as u32;
            let x1 = ((hx + r).ceil().max(0.0) as u32).min(self.w);
            let y0 = (hy - r).floor().max(0.0) as u32;
            let y1 = ((hy + r).ceil().max(0.0) as u32).min(self.h);
            for y in y0..y1 {
                for x in x0..x1 {
                    let d = (x as f32 + 0.5 - hx).hypot(y as f32 + 0.5 - hy);
                    let a = (hair.width - d + 0.5).clamp(0.0, 1.0);
                    let k = (y * self.w + x) as usize;
                    cover[k] = cover[k].max(a);
                }
            }
        }
        for (c, &a) in buf.iter_mut().zip(&cover) {
            if a > 0.0 {
                *c = mix(*c, hair.colour, 0.85 * a);
            }
        }
    }
}

/// Smallest signed difference between two angles, in (-PI, PI].
fn angle_diff(a: f32, b: f32) -> f32 {
    let d = (a - b).rem_euclid(TAU);
    if d > PI {
        d - TAU
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};

    /// Mean and spread of the lesion: pixels much darker than the image's brightest decile.
    fn lesion_stats(img: &RgbImage) -> (usize, f32) {
        let lum: Vec<f32> = img
            .pixels()
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .collect();
        let mut sorted = lum.clone();
        sorted.sort_by(f32::total_cmp);
        let bright = sorted[sorted.len() * 9 / 10];
        let dark: Vec<&Rgb<u8>> = img
            .pixels()
            .zip(&lum)
            .filter(|(_, &l)| l < bright * 0.7)
            .map(|(p, _)| p)
            .collect();
        let n = dark.len().max(1) as f32;
        let mean: Vec<f32> = (0..3)
            .map(|c| dark.iter().map(|p| f32::from(p[c])).sum::<f32>() / n)
            .collect();
        let spread = dark
            .iter()
            .map(|p| {
                (0..3)
                    .map(|c| (f32::from(p[c]) - mean[c]).powi(2))
                    .sum::<f32>()
            })
            .sum::<f32>()
            / n;
        (dark.len(), spread.sqrt())
    }

    #[test]
    fn render_is_deterministic_and_varied() {
        let a = render(0, 3, 11);
        assert_eq!(a, render(0, 3, 11));
        assert_ne!(a, render(0, 4, 11));
        assert_ne!(a, render(0, 3, 12));
        assert_ne!(a, render(1, 3, 11));
        let mut non_square = 0;
        for i in 0..40 {
            let img = render(i % 2, i, 5);
            let (w, h) = img.dimensions();
            assert!(
                (200..=320).contains(&w) && (200..=320).contains(&h),
                "{w}x{h}"
            );
            non_square += usize::from(w != h);
        }
        assert!(
            (4..=30).contains(&non_square),
            "{non_square} of 40 non-square"
        );
    }

    #[test]
    fn classes_differ_in_colour_variety() {
        // Malignant lesions carry several colours; benign ones one. Averaged over images,
        // the colour spread inside the lesion must separate the classes.
        let spread = |class| {
            (0..12)
                .map(|i| {
                    let (n, s) = lesion_stats(&render(class, i, 3));
                    assert!(n > 1500, "class {class} image {i}: lesion of {n} pixels");
                    s
                })
                .sum::<f32>()
                / 12.0
        };
        let (benign, malignant) = (spread(0), spread(1));
        assert!(
            malignant > benign * 1.4,
            "benign {benign}, malignant {malignant}"
        );
    }

    #[test]
    fn generate_writes_decodable_jpegs_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("synth");
        let summary = generate(&out, 3, 9, false, false).unwrap();
        assert_eq!(summary.images, 6);
        assert_eq!(summary.root, out);
        let mut total = 0u64;
        for (class, dir) in CLASS_DIRS.iter().enumerate() {
            let mut names: Vec<String> = fs::read_dir(out.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let prefix = dir.to_ascii_lowercase();
            assert_eq!(
                names,
                (0..3)
                    .map(|i| format!("{prefix}_{i:05}.jpg"))
                    .collect::<Vec<_>>()
            );
            for (i, name) in names.iter().enumerate() {
                let p = out.join(dir).join(name);
                let bytes = fs::read(&p).unwrap();
                total += bytes.len() as u64;
                let img = decode_rgb(&bytes, &p, DEFAULT_MAX_PIXELS).unwrap();
                assert_eq!(img.dimensions(), render(class, i, 9).dimensions());
            }
        }
        assert_eq!(summary.bytes, total);
        // Only the dataset folder is left: no staging leftovers.
        let entries: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        let marker: serde_json::Value = crate::fsutil::read_json(out.join(MARKER_FILE)).unwrap();
        assert_eq!(marker["format"], SYNTH_FORMAT);
        assert_eq!(
            (marker["seed"].as_u64(), marker["per_class"].as_u64()),
            (Some(9), Some(3))
        );

        // Non-empty output is refused without force and kept intact.
        let before = fs::read(out.join("Benign/benign_00000.jpg")).unwrap();
        assert!(matches!(
            generate(&out, 2, 10, false, false),
            Err(Error::OutputExists { .. })
        ));
        assert_eq!(
            fs::read(out.join("Benign/benign_00000.jpg")).unwrap(),
            before
        );
        // With force it is replaced, and the same seed gives byte-identical files.
        generate(&out, 3, 9, false, true).unwrap();
        assert_eq!(
            fs::read(out.join("Benign/benign_00000.jpg")).unwrap(),
            before
        );
        generate(&out, 2, 10, false, true).unwrap();
        assert!(!out.join("Benign/benign_00002.jpg").exists());

        // An existing empty folder is fine.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        assert_eq!(generate(&empty, 1, 0, false, false).unwrap().images, 2);
        assert!(matches!(
            generate(&out, 0, 0, false, true),
            Err(Error::InvalidOption(_))
        ));
    }

    #[test]
    fn force_replaces_only_synthetic_data() {
        let tmp = tempfile::tempdir().unwrap();
        let photos = tmp.path().join("photos");
        fs::create_dir_all(photos.join("Benign")).unwrap();
        fs::write(photos.join("Benign/IMG_0001.jpg"), b"a user's photo").unwrap();
        for force in [false, true] {
            let err = generate(&photos, 1, 0, false, force).unwrap_err();
            assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(msg.starts_with(&photos.display().to_string()), "{msg}");
            assert!(msg.contains("is not a synthetic dataset"), "{msg}");
        }
        assert_eq!(
            fs::read(photos.join("Benign/IMG_0001.jpg")).unwrap(),
            b"a user's photo"
        );
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

        // Synthetic data with a user's file added is not replaced either ...
        let out = tmp.path().join("synth");
        generate(&out, 2, 1, false, false).unwrap();
        fs::write(out.join("Malignant/mine.jpg"), b"mine").unwrap();
        assert!(matches!(
            generate(&out, 2, 1, false, true),
            Err(Error::NotOurOutput { .. })
        ));
        assert_eq!(fs::read(out.join("Malignant/mine.jpg")).unwrap(), b"mine");
        // ... while synthetic data without the marker is.
        fs::remove_file(out.join("Malignant/mine.jpg")).unwrap();
        fs::remove_file(out.join(MARKER_FILE)).unwrap();
        generate(&out, 1, 1, false, true).unwrap();
        assert!(out.join(MARKER_FILE).is_file());
        assert!(!out.join("Benign/benign_00001.jpg").exists());
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let tmp = tempfile::tempdir().unwrap();
        let one = tmp.path().join("one");
        let many = tmp.path().join("many");
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| generate(&one, 4, 77, false, false))
            .unwrap();
        rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| generate(&many, 4, 77, false, false))
            .unwrap();
        for dir in CLASS_DIRS {
            for i in 0..4 {
                let name = format!("{}/{}_{i:05}.jpg", dir, dir.to_ascii_lowercase());
                assert_eq!(
                    fs::read(one.join(&name)).unwrap(),
                    fs::read(many.join(&name)).unwrap()
                );
            }
        }
    }
}

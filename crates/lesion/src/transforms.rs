//! The notebook's training augmentations (torchvision/Pillow semantics) and ImageNet
//! normalisation.
//!
//! Images are `image::RgbImage` (u8, HWC, row-major, 3 interleaved channels). Shard
//! buffers from [`to_chw`] are u8 CHW (planar R, G, B); normalised output is `f32`, CHW.
//!
//! Resizing reproduces Pillow's `Image.resize(.., BILINEAR)` bit for bit in structure
//! (separable two-pass resample, 22-bit fixed-point weights, 8-bit intermediate), and
//! rotation reproduces Pillow's `Image.rotate(.., NEAREST)` (which torchvision's `rotate`
//! calls for PIL images), so that prepared tensors match the notebook's.

use image::{imageops, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// ImageNet channel means (RGB), as torchvision's `Normalize`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One draw of the notebook's random augmentation, recorded in the manifest.
///
/// Applied in this order: centre crop of half the side then bilinear resize back (when
/// `center_crop`), rotation by `rotation_deg` (counter-clockwise, nearest, zero fill),
/// vertical flip, horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Augmentation {
    pub center_crop: bool,
    pub rotation_deg: f32,
    pub vflip: bool,
    pub hflip: bool,
}

impl Augmentation {
    /// Draws the notebook's parameters: crop p=0.5, rotation uniform in [-30, 30],
    /// vflip p=0.2, hflip p=0.2.
    ///
    /// Always consumes the same four draws in this order (crop, rotation, vflip, hflip),
    /// so a seeded generator gives the same sequence of augmentations on every platform.
    pub fn sample<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let center_crop = rng.random_bool(0.5);
        let rotation_deg = rng.random_range(-30.0f32..=30.0);
        let vflip = rng.random_bool(0.2);
        let hflip = rng.random_bool(0.2);
        Augmentation {
            center_crop,
            rotation_deg,
            vflip,
            hflip,
        }
    }

    /// Applies this augmentation to a square image, keeping its size.
    ///
    /// The crop is half the side (112 of 224 in the notebook), so this works at any input
    /// size; a non-square image gets a half-width by half-height crop.
    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let mut out = if self.center_crop && w >= 2 && h >= 2 {
            crop_centre_resize(img, w / 2, h / 2, w, h)
        } else {
            img.clone()
        };
        if self.rotation_deg != 0.0 {
            out = rotate_nearest(&out, self.rotation_deg);
        }
        if self.vflip {
            imageops::flip_vertical_in_place(&mut out);
        }
        if self.hflip {
            imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }
}

/// Crops the centred `crop x crop` box and resizes it to `out x out` with Pillow's BILINEAR.
///
/// The box starts at `(w - crop) / 2` (integer division), as the notebook's
/// `img.crop((c - 56, c - 56, c + 56, c + 56))` with `c = w // 2` for even sizes.
///
/// # Panics
/// If `crop` is zero or larger than the image.
pub fn center_crop_resize(img: &RgbImage, crop: u32, out: u32) -> RgbImage {
    crop_centre_resize(img, crop, crop, out, out)
}

fn crop_centre_resize(img: &RgbImage, cw: u32, ch: u32, ow: u32, oh: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    assert!(
        cw > 0 && ch > 0 && cw <= w && ch <= h,
        "crop {cw}x{ch} does not fit in {w}x{h}"
    );
    // Pillow crops first and then resizes the crop on its own, so the filter sees the crop's
    // edges as image edges (it does not read pixels outside the box).
    let cropped = imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    resize_bilinear(&cropped, ow, oh)
}

/// Horizontal flip (mirror left-right), as torchvision's `hflip`.
pub fn hflip(img: &RgbImage) -> RgbImage {
    imageops::flip_horizontal(img)
}

/// Vertical flip (mirror top-bottom), as torchvision's `vflip`.
pub fn vflip(img: &RgbImage) -> RgbImage {
    imageops::flip_vertical(img)
}

// ---------------------------------------------------------------------------------------
// Pillow BILINEAR resampling (libImaging/Resample.c).

/// Pillow's fixed-point precision for 8-bit images: 32 bits - 8 (sample) - 2 (headroom).
const PRECISION_BITS: u32 = 22;

/// Resizes the whole image to `out_w x out_h` exactly as Pillow's
/// `Image.resize((out_w, out_h), Image.BILINEAR)`.
///
/// When upscaling this is plain bilinear interpolation (support 1, half-pixel centres);
/// when downscaling the triangle filter is widened by the scale factor, so it averages
/// (antialiases) rather than skipping pixels.
pub fn resize_bilinear(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    resize_bilinear_box(img, [0.0, 0.0, w as f32, h as f32], out_w, out_h)
}

/// Pillow's `Image.resize((out_w, out_h), Image.BILINEAR, box=src_box)`: resamples the
/// region `src_box = [x0, y0, x1, y1]` (pixel-edge coordinates, may be fractional) of `img`.
///
/// Unlike cropping first, the filter may read pixels just outside the box (as Pillow does).
///
/// # Panics
/// If the image or output is empty, or the box is empty or outside the image.
pub fn resize_bilinear_box(img: &RgbImage, src_box: [f32; 4], out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let [x0, y0, x1, y1] = src_box;
    assert!(w > 0 && h > 0 && out_w > 0 && out_h > 0, "empty image");
    assert!(
        0.0 <= x0 && x0 < x1 && x1 <= w as f32 && 0.0 <= y0 && y0 < y1 && y1 <= h as f32,
        "box {src_box:?} is not inside the {w}x{h} image"
    );
    let need_h = out_w != w || x0 != 0.0 || x1 != out_w as f32;
    let need_v = out_h != h || y0 != 0.0 || y1 != out_h as f32;
    if !need_h && !need_v {
        return img.clone();
    }
    let horiz = Coeffs::new(w as usize, x0, x1, out_w as usize);
    let vert = Coeffs::new(h as usize, y0, y1, out_h as usize);
    let src = img.as_raw();

    if !need_h {
        let out = resample_vertical(src, w as usize, &vert, 0);
        return RgbImage::from_raw(w, out_h, out).expect("buffer size matches");
    }
    // Only the rows the vertical pass will read are resampled horizontally.
    let first_row = vert.bounds[0].0;
    let last_row = vert.bounds[vert.bounds.len() - 1].0 + vert.bounds[vert.bounds.len() - 1].1;
    let tmp = resample_horizontal(src, w as usize, first_row, last_row, &horiz);
    if !need_v {
        return RgbImage::from_raw(out_w, out_h, tmp).expect("buffer size matches");
    }
    let out = resample_vertical(&tmp, out_w as usize, &vert, first_row);
    RgbImage::from_raw(out_w, out_h, out).expect("buffer size matches")
}

/// Per-output-pixel input windows and fixed-point weights for one axis
/// (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Coeffs {
    /// `(first input index, number of taps)` per output index.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output index (zero-padded).
    weights: Vec<i32>,
    ksize: usize,
}

impl Coeffs {
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize) -> Self {
        // Pillow's box is C `float`; the subtraction happens in float before widening.
        let scale = f64::from(in1 - in0) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = 1.0 * filterscale; // bilinear filter support
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C `(int)` truncates toward zero; that, not floor, is what Pillow does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let taps = (xmax - xmin).max(0) as usize;
            let mut ww = 0.0f64;
            for (x, kx) in k.iter_mut().enumerate().take(taps) {
                let w = bilinear_filter(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let row = &mut weights[xx * ksize..xx * ksize + taps];
            for (dst, &kx) in row.iter_mut().zip(&k) {
                let v = if ww != 0.0 { kx / ww } else { kx };
                let fixed = v * f64::from(1u32 << PRECISION_BITS);
                *dst = if v < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((xmin as usize, taps));
        }
        Coeffs {
            bounds,
            weights,
            ksize,
        }
    }
}

fn bilinear_filter(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `clip8`: rounding was pre-added, so shift and clamp.
#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Horizontal pass over source rows `row0..row1` of an RGB buffer `in_w` pixels wide.
fn resample_horizontal(src: &[u8], in_w: usize, row0: usize, row1: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; out_w * (row1 - row0) * 3];
    for (y, out_row) in (row0..row1).zip(out.chunks_exact_mut(out_w * 3)) {
        let in_row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, taps) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + taps];
            let half = 1i32 << (PRECISION_BITS - 1);
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (&kx, p) in k
                .iter()
                .zip(in_row[xmin * 3..(xmin + taps) * 3].chunks_exact(3))
            {
                s0 += i32::from(p[0]) * kx;
                s1 += i32::from(p[1]) * kx;
                s2 += i32::from(p[2]) * kx;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    out
}

/// Vertical pass; `row_offset` is the source row that `src`'s first row corresponds to.
fn resample_vertical(src: &[u8], w: usize, c: &Coeffs, row_offset: usize) -> Vec<u8> {
    let out_h = c.bounds.len();
    let stride = w * 3;
    let mut out = vec![0u8; stride * out_h];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, taps) = c.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &c.weights[yy * c.ksize..yy * c.ksize + taps];
        acc.fill(half);
        // Row-by-row accumulation keeps memory access sequential; integer sums are exact,
        // so the order does not change the result.
        for (i, &ky) in k.iter().enumerate() {
            let in_row = &src[(ymin + i) * stride..(ymin + i + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Pillow NEAREST rotation (Image.rotate + libImaging/Geometry.c ImagingTransformAffine).

/// torchvision `rotate(img, deg)`: counter-clockwise about the centre, nearest, fill 0.
///
/// Reproduces what torchvision does for PIL images, `Image.rotate(deg, NEAREST,
/// expand=False, center=None, fillcolor=0)`: the same special cases (0, 180, and 90/270 on
/// square images are exact transposes), the same inverse matrix with its coefficients
/// rounded to 15 decimals, the same half-pixel centre convention and the same 16.16
/// fixed-point stepping.
pub fn rotate_nearest(img: &RgbImage, deg: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    // Python's float `%`: result in [0, 360) for a positive divisor.
    let angle = f64::from(deg).rem_euclid(360.0);
    if angle == 0.0 {
        return img.clone();
    }
    if angle == 180.0 {
        return imageops::rotate180(img);
    }
    if w == h && angle == 90.0 {
        // Pillow's ROTATE_90 is counter-clockwise; image's rotate270 is the same turn.
        return imageops::rotate270(img);
    }
    if w == h && angle == 270.0 {
        return imageops::rotate90(img);
    }

    let a = -angle.to_radians();
    let (cos, sin) = (round15(a.cos()), round15(a.sin()));
    let mut m = [cos, sin, 0.0, round15(-a.sin()), cos, 0.0];
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    // Python: transform(-cx, -cy) = a*x + b*y + c (c = 0), then add the centre back.
    m[2] += m[0] * -cx + m[1] * -cy;
    m[5] += m[3] * -cx + m[4] * -cy;
    m[2] += cx;
    m[5] += cy;
    transform_affine_nearest(img, w, h, &m)
}

/// Python's `round(v, 15)`: correctly rounded to 15 decimal places.
fn round15(v: f64) -> f64 {
    format!("{v:.15}").parse().expect("formatted float parses")
}

/// `ImagingTransformAffine` with NEAREST: output pixel `(x, y)` takes input pixel
/// `m · (x + 0.5, y + 0.5)`, or 0 where that falls outside.
fn transform_affine_nearest(img: &RgbImage, out_w: u32, out_h: u32, m: &[f64; 6]) -> RgbImage {
    let (in_w, in_h) = (img.width() as i64, img.height() as i64);
    let mut out = RgbImage::new(out_w, out_h);
    let src = img.as_raw();
    let dst_stride = out_w as usize * 3;
    let dst = out.as_mut();
    let mut put = |x: usize, y: usize, xin: i64, yin: i64| {
        if (0..in_w).contains(&xin) && (0..in_h).contains(&yin) {
            let s = (yin as usize * in_w as usize + xin as usize) * 3;
            let d = y * dst_stride + x * 3;
            dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    };

    if m[1] == 0.0 && m[3] == 0.0 {
        // ImagingScaleAffine (only reached when the rotation rounds to no shear).
        let mut xo = m[2] + m[0] * 0.5;
        let mut yo = m[5] + m[4] * 0.5;
        let mut xintab = Vec::with_capacity(out_w as usize);
        for _ in 0..out_w {
            xintab.push(coord(xo));
            xo += m[0];
        }
        for y in 0..out_h as usize {
            let yi = coord(yo);
            for (x, &xi) in xintab.iter().enumerate() {
                put(x, y, xi, yi);
            }
            yo += m[4];
        }
        return out;
    }

    let check_fixed = |x: f64, y: f64| {
        (x * m[0] + y * m[1] + m[2]).abs() < 32768.0 && (x * m[3] + y * m[4] + m[5]).abs() < 32768.0
    };
    let (fw, fh) = (f64::from(out_w), f64::from(out_h));
    if check_fixed(0.0, 0.0) && check_fixed(fw, fh) && check_fixed(0.0, fh) && check_fixed(fw, 0.0)
    {
        // affine_fixed: 16.16 fixed point, as Pillow uses whenever coordinates fit.
        let fix = |v: f64| (v * 65536.0 + 0.5).floor() as i32;
        let (a0, a1, a3, a4) = (fix(m[0]), fix(m[1]), fix(m[3]), fix(m[4]));
        let mut a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5);
        let mut a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5);
        for y in 0..out_h as usize {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..out_w as usize {
                put(x, y, i64::from(xx >> 16), i64::from(yy >> 16));
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
    } else {
        let mut xo = m[2] + m[1] * 0.5 + m[0] * 0.5;
        let mut yo = m[5] + m[4] * 0.5 + m[3] * 0.5;
        for y in 0..out_h as usize {
            let (mut xx, mut yy) = (xo, yo);
            for x in 0..out_w as usize {
                put(x, y, coord(xx), coord(yy));
                xx += m[0];
                yy += m[3];
            }
            xo += m[1];
            yo += m[4];
        }
    }
    out
}

/// Pillow's `COORD`: truncation, with every negative coordinate mapped outside.
#[inline]
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

// ---------------------------------------------------------------------------------------
// Layout and normalisation.

/// Converts a u8 CHW buffer to normalised f32 CHW: `(x / 255 - mean[c]) / std[c]`.
///
/// Computed in f32 in the same order as torchvision's `ToTensor` + `Normalize`, so the
/// result is bit-identical to PyTorch's.
///
/// # Panics
/// If `chw.len()` is not a multiple of 3 or `out` has a different length.
pub fn normalize_chw(chw: &[u8], mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    assert!(
        chw.len().is_multiple_of(3),
        "CHW buffer length {} is not 3 planes",
        chw.len()
    );
    assert_eq!(chw.len(), out.len(), "input and output lengths differ");
    let plane = chw.len() / 3;
    if plane == 0 {
        return;
    }
    for (c, (src, dst)) in chw
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .enumerate()
    {
        for (o, &x) in dst.iter_mut().zip(src) {
            *o = (f32::from(x) / 255.0 - mean[c]) / std[c];
        }
    }
}

/// Converts an HWC image to a u8 CHW buffer (the shard layout).
pub fn to_chw(img: &RgbImage) -> Vec<u8> {
    let plane = img.width() as usize * img.height() as usize;
    let mut out = vec![0u8; plane * 3];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0];
        g[i] = px[1];
        b[i] = px[2];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / (w - 1).max(1)) as u8, (y * 7 % 256) as u8, 77])
        })
    }

    #[test]
    fn coefficients_upscale_are_plain_bilinear() {
        // 2 -> 4: centres at 0.25, 0.75, 1.25, 1.75 in input pixel units.
        let c = Coeffs::new(2, 0.0, 2.0, 4);
        assert_eq!(c.ksize, 3);
        assert_eq!(c.bounds, vec![(0, 1), (0, 2), (0, 2), (1, 1)]);
        let one = 1 << PRECISION_BITS;
        assert_eq!(&c.weights[0..1], &[one]);
        assert_eq!(&c.weights[3..5], &[3 * one / 4, one / 4]);
        assert_eq!(&c.weights[6..8], &[one / 4, 3 * one / 4]);
    }

    #[test]
    fn coefficients_downscale_widen_the_filter() {
        // 4 -> 2 (scale 2): support 2, triangle of half-width 2 around centres 1 and 3.
        let c = Coeffs::new(4, 0.0, 4.0, 2);
        assert_eq!(c.ksize, 5);
        assert_eq!(c.bounds, vec![(0, 3), (1, 3)]);
        let one = f64::from(1u32 << PRECISION_BITS);
        // Weights at distances 0.5, 0.5, 1.5 (scaled by 1/2): 0.75, 0.75, 0.25 -> /1.75.
        let expect = [0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75].map(|v| (v * one + 0.5) as i32);
        assert_eq!(&c.weights[0..3], &expect);
    }

    #[test]
    fn resize_upscale_values() {
        // One row 0, 255 upscaled to 4: bilinear gives 0, 64, 191, 255 (Pillow's values).
        let img = RgbImage::from_fn(2, 1, |x, _| Rgb([if x == 0 { 0 } else { 255 }; 3]));
        let out = resize_bilinear(&img, 4, 1);
        let row: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        assert_eq!(row, vec![0, 64, 191, 255]);
    }

    #[test]
    fn resize_downscale_averages() {
        // 0, 100, 200, 40 -> 2 pixels: each output is a 3-tap triangle (weights .75, .75,
        // .25 and mirrored) over a window clamped at the image edge, renormalised.
        let vals = [0u8, 100, 200, 40];
        let img = RgbImage::from_fn(4, 1, |x, _| Rgb([vals[x as usize]; 3]));
        let out = resize_bilinear(&img, 2, 1);
        let left = (0.0 * 0.75 + 100.0 * 0.75 + 200.0 * 0.25) / 1.75;
        let right = (100.0 * 0.25 + 200.0 * 0.75 + 40.0 * 0.75) / 1.75;
        assert_eq!(out.get_pixel(0, 0)[0], (left + 0.5f64).floor() as u8);
        assert_eq!(out.get_pixel(1, 0)[0], (right + 0.5f64).floor() as u8);
    }

    #[test]
    fn resize_identity_and_constant() {
        let img = gradient(17, 9);
        assert_eq!(resize_bilinear(&img, 17, 9), img);
        let flat = RgbImage::from_pixel(37, 23, Rgb([12, 200, 255]));
        for (w, h) in [(5, 5), (100, 61), (37, 7), (1, 1)] {
            let out = resize_bilinear(&flat, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| *p == Rgb([12, 200, 255])), "{w}x{h}");
        }
    }

    #[test]
    fn resize_box_matches_crop_in_the_interior() {
        let img = gradient(40, 40);
        let via_box = resize_bilinear_box(&img, [10.0, 10.0, 30.0, 30.0], 40, 40);
        let via_crop = center_crop_resize(&img, 20, 40);
        // They differ only at the borders (box reads outside pixels, crop clamps).
        for y in 2..38 {
            for x in 2..38 {
                assert_eq!(
                    via_box.get_pixel(x, y),
                    via_crop.get_pixel(x, y),
                    "({x},{y})"
                );
            }
        }
    }

    #[test]
    fn rotate_special_angles_are_exact_transposes() {
        let img = gradient(8, 8);
        assert_eq!(rotate_nearest(&img, 0.0), img);
        assert_eq!(rotate_nearest(&img, 360.0), img);
        assert_eq!(rotate_nearest(&img, 180.0), imageops::rotate180(&img));
        // Counter-clockwise: the top-right pixel moves to the top-left.
        let r = rotate_nearest(&img, 90.0);
        assert_eq!(r.get_pixel(0, 0), img.get_pixel(7, 0));
        assert_eq!(rotate_nearest(&img, -90.0), imageops::rotate90(&img));
    }

    #[test]
    fn rotate_is_counter_clockwise_with_zero_fill() {
        // A marker right of centre must end up above the centre after +90 degrees, also on
        // a non-square image that takes the general affine path.
        let mut img = RgbImage::from_pixel(41, 31, Rgb([10, 10, 10]));
        img.put_pixel(30, 15, Rgb([255, 0, 0]));
        let r = rotate_nearest(&img, 90.0);
        assert_eq!(r.dimensions(), (41, 31));
        let (x, y) = r
            .enumerate_pixels()
            .find(|(_, _, p)| p[0] == 255)
            .map(|(x, y, _)| (x, y))
            .unwrap();
        assert_eq!((x, y), (20, 5));
        // Corners of a 30-degree rotation come from outside the source: zero fill.
        let r = rotate_nearest(&gradient(64, 64), 30.0);
        assert_eq!(*r.get_pixel(0, 0), Rgb([0, 0, 0]));
        assert_eq!(*r.get_pixel(63, 63), Rgb([0, 0, 0]));
        assert_ne!(*r.get_pixel(32, 32), Rgb([0, 0, 0]));
    }

    #[test]
    fn round15_matches_python() {
        // Python: round(math.cos(-math.radians(30.0)), 15) == 0.866025403784439
        let a = -30f64.to_radians();
        assert_eq!(round15(a.cos()), 0.866025403784439);
        assert_eq!(round15(a.sin()), -0.5);
    }

    #[test]
    fn flips() {
        let img = gradient(5, 3);
        assert_eq!(hflip(&img).get_pixel(0, 1), img.get_pixel(4, 1));
        assert_eq!(vflip(&img).get_pixel(3, 0), img.get_pixel(3, 2));
    }

    #[test]
    fn chw_layout_and_normalisation() {
        let img = RgbImage::from_fn(2, 2, |x, y| Rgb([(x + 2 * y) as u8, 10 + x as u8, 255]));
        let chw = to_chw(&img);
        assert_eq!(chw, vec![0, 1, 2, 3, 10, 11, 10, 11, 255, 255, 255, 255]);
        let mut out = vec![0f32; 12];
        normalize_chw(&chw, IMAGENET_MEAN, IMAGENET_STD, &mut out);
        assert_eq!(out[0], (0.0 - 0.485) / 0.229);
        assert_eq!(out[5], (11.0f32 / 255.0 - 0.456) / 0.224);
        assert_eq!(out[11], (1.0 - 0.406) / 0.225);
    }

    #[test]
    fn sample_is_deterministic_and_in_range() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..2000)
                .map(|_| Augmentation::sample(&mut rng))
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42));
        assert_ne!(a, draw(43));
        assert!(a.iter().all(|g| (-30.0..=30.0).contains(&g.rotation_deg)));
        let frac = |f: fn(&Augmentation) -> bool| a.iter().filter(|g| f(g)).count() as f64 / 2000.0;
        assert!((frac(|g| g.center_crop) - 0.5).abs() < 0.05);
        assert!((frac(|g| g.vflip) - 0.2).abs() < 0.04);
        assert!((frac(|g| g.hflip) - 0.2).abs() < 0.04);
        assert!((frac(|g| g.rotation_deg > 0.0) - 0.5).abs() < 0.05);
    }

    #[test]
    fn apply_composes_in_order() {
        let img = gradient(32, 32);
        let none = Augmentation::default();
        assert_eq!(none.apply(&img), img);
        let all = Augmentation {
            center_crop: true,
            rotation_deg: 12.0,
            vflip: true,
            hflip: true,
        };
        let manual = hflip(&vflip(&rotate_nearest(
            &center_crop_resize(&img, 16, 32),
            12.0,
        )));
        assert_eq!(all.apply(&img), manual);
        // Works at other sizes and keeps them.
        assert_eq!(all.apply(&gradient(57, 57)).dimensions(), (57, 57));
        assert_eq!(all.apply(&gradient(40, 24)).dimensions(), (40, 24));
    }
}

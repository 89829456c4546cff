//! Grad-CAM (Selvaraju et al. 2017) of the malignant logit on `layer4`, and its rendering
//! as a colour overlay on the input photo.
//!
//! - Input: an NCHW f32 batch `[b, 3, S, S]`, normalised as the model was trained.
//! - The model runs in eval mode up to `layer4`, whose activation `A` `[b, 512, h, w]`
//!   (`h = w = ceil(S / 32)`, e.g. 4x4 at 112 px, 7x7 at 224 px) becomes a
//!   [`candle_core::Var`]; mean-pool and head follow, and `d(sum of logits)/dA` gives every
//!   image's own gradient at once (in eval mode the images of a batch do not interact).
//! - CAM = `ReLU(sum_c alpha_c A_c)` with `alpha_c` the spatial mean of the gradient of
//!   channel `c`: a `[h, w]` f32 map per image, in the logit's units (not normalised).
//! - [`overlay`] upsamples it bilinearly (PyTorch's `align_corners=False`) to the photo,
//!   min-max normalises it to [0, 1] (as the `pytorch-grad-cam` package does: colours show
//!   where the evidence is strongest relative to the rest of the image; [`Cam::max`] keeps
//!   its absolute size), maps it through the jet colour map and alpha-blends it over the
//!   photo (transparent where the heat is lowest), as an `RgbImage` (u8, HWC).
//!
//! Only the model's own forward pieces are used, so the CAM explains exactly the network
//! that [`crate::infer::eval_logits`] runs (without test-time augmentation).

use candle_core::{Tensor, Var};
use image::{imageops, Rgb, RgbImage};

use crate::image_io::ResizePolicy;
use crate::model::{Mode, ResNet18};
use crate::{Error, Result};

/// Longest side of an overlay image: large photos are shown reduced (a heatmap of a
/// 7x7 grid has no detail worth 12 megapixels).
pub const OVERLAY_MAX_SIDE: u32 = 512;
/// Shortest longest side of an overlay image: tiny inputs are enlarged so that the
/// heatmap can be seen.
pub const OVERLAY_MIN_SIDE: u32 = 256;
/// Opacity of the colour map where the heat is highest.
const MAX_ALPHA: f32 = 0.6;

/// One image's class activation map on the `layer4` grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    /// Grid width and height (layer4's spatial size).
    pub width: usize,
    pub height: usize,
    /// `height * width` non-negative values, row-major, in logit units.
    pub values: Vec<f32>,
    /// The malignant logit of the image (no test-time augmentation).
    pub logit: f32,
}

impl Cam {
    /// Largest value of the map (0 when nothing in the image raises the malignant logit).
    pub fn max(&self) -> f32 {
        self.values.iter().copied().fold(0.0, f32::max)
    }

    /// Smallest value of the map.
    pub fn min(&self) -> f32 {
        self.values.iter().copied().fold(f32::INFINITY, f32::min)
    }

    /// The map upsampled bilinearly to `width x height` (row-major) and min-max normalised
    /// to [0, 1]; all zeros when the map is flat.
    pub fn upsample(&self, width: u32, height: u32) -> Vec<f32> {
        let (min, max) = (self.min(), self.max());
        let range = max - min;
        let (w, h) = (width as usize, height as usize);
        if range <= 0.0 || !range.is_finite() || w == 0 || h == 0 {
            return vec![0.0; w * h];
        }
        let xs = axis_taps(self.width, w);
        let ys = axis_taps(self.height, h);
        let g = |x: usize, y: usize| self.values[y * self.width + x];
        let mut out = Vec::with_capacity(w * h);
        for &(y0, y1, ty) in &ys {
            for &(x0, x1, tx) in &xs {
                let top = g(x0, y0) * (1.0 - tx) + g(x1, y0) * tx;
                let bottom = g(x0, y1) * (1.0 - tx) + g(x1, y1) * tx;
                out.push((top * (1.0 - ty) + bottom * ty - min) / range);
            }
        }
        out
    }
}

/// Source indices and weight of each output position of a bilinear resize from `n_in` to
/// `n_out` samples, with PyTorch's `align_corners=False` convention (edge-clamped).
fn axis_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Grad-CAM of the malignant logit for every image of `images` `[b, 3, S, S]`.
pub fn grad_cam(model: &ResNet18, images: &Tensor) -> Result<Vec<Cam>> {
    let eval = Mode {
        train: false,
        grad: false,
    };
    let mut x = model.stem().forward_mode(images, eval)?;
    for n in 1..=4 {
        x = model.layer(n).forward_mode(&x, eval)?;
    }
    let (b, _, h, w) = x.dims4()?;
    // The only tracked tensor: the backward pass stops here, and the head's weights are
    // used detached, so nothing else is differentiated.
    let activation = Var::from_tensor(&x)?;
    let a = activation.as_tensor();
    let pooled = a.mean((2, 3))?;
    let logits = model.head().forward_mode(&pooled, eval)?; // [b, 1]
    let grads = logits.sum_all()?.backward()?;
    let grad = grads.get(a).ok_or_else(|| {
        Error::Candle(candle_core::Error::Msg(
            "Grad-CAM: no gradient reached layer4".into(),
        ))
    })?;
    let alpha = grad.mean_keepdim((2, 3))?; // [b, 512, 1, 1]
    let cam = a.detach().broadcast_mul(&alpha)?.sum(1)?.relu()?; // [b, h, w]
    let cam: Vec<f32> = cam
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let logits: Vec<f32> = logits
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(cam
        .chunks_exact(h * w)
        .zip(logits)
        .take(b)
        .map(|(values, logit)| Cam {
            width: w,
            height: h,
            values: values.to_vec(),
            logit,
        })
        .collect())
}

/// The jet colour map (blue, cyan, yellow, red) at `v` in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel = |centre: f32| {
        let c = 1.5 - (4.0 * v - centre).abs();
        (c.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// The size an overlay of a `w x h` photo is drawn at: the photo's own size, reduced so
/// that its longest side is at most [`OVERLAY_MAX_SIDE`] or enlarged to at least
/// [`OVERLAY_MIN_SIDE`], keeping the aspect ratio.
pub fn overlay_size(w: u32, h: u32) -> (u32, u32) {
    let long = w.max(h).max(1);
    let target = long.clamp(OVERLAY_MIN_SIDE, OVERLAY_MAX_SIDE);
    if target == long {
        return (w, h);
    }
    let s = f64::from(target) / f64::from(long);
    let scale = |v: u32| ((f64::from(v) * s).round() as u32).max(1);
    (scale(w), scale(h))
}

/// `photo` at [`overlay_size`]: all of it that an overlay needs, so a caller can keep this
/// instead of a large decoded photo (an overlay of the result equals one of the photo).
pub fn display_image(photo: &RgbImage) -> RgbImage {
    let (w, h) = overlay_size(photo.width(), photo.height());
    if (w, h) == photo.dimensions() {
        photo.clone()
    } else {
        imageops::resize(photo, w, h, imageops::FilterType::Triangle)
    }
}

/// Draws `cam` over `photo` (the decoded image before resizing, or its
/// [`display_image`]), at [`overlay_size`].
///
/// The CAM covers what the model saw: the whole photo under [`ResizePolicy::Stretch`], the
/// centred square under [`ResizePolicy::Crop`] (the cut-off margins get no colour).
pub fn overlay(photo: &RgbImage, cam: &Cam, policy: ResizePolicy) -> RgbImage {
    let mut out = display_image(photo);
    let (w, h) = out.dimensions();
    let (x0, y0, side_w, side_h) = match policy {
        ResizePolicy::Stretch => (0, 0, w, h),
        ResizePolicy::Crop => {
            let side = w.min(h);
            ((w - side) / 2, (h - side) / 2, side, side)
        }
    };
    let heat = cam.upsample(side_w, side_h);
    for y in 0..side_h {
        for x in 0..side_w {
            let v = heat[(y * side_w + x) as usize];
            if v <= 0.0 {
                continue;
            }
            let colour = jet(v);
            let alpha = MAX_ALPHA * v.sqrt();
            let px = out.get_pixel_mut(x0 + x, y0 + y);
            *px = Rgb(std::array::from_fn(|c| {
                (f32::from(px[c]) * (1.0 - alpha) + f32::from(colour[c]) * alpha).round() as u8
            }));
        }
    }
    out
}

/// Encodes an RGB image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::Encode {
            what: "PNG".into(),
            reason: e.to_string(),
        })?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn upsample_matches_pytorch_bilinear() {
        // (F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4),
        //                mode="bilinear", align_corners=False) - 1) / 3
        let cam = Cam {
            width: 2,
            height: 2,
            values: vec![1.0, 2.0, 3.0, 4.0],
            logit: 0.0,
        };
        let up = cam.upsample(4, 4);
        let expect = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, e) in up.iter().zip(expect) {
            assert!((a - e / 3.0).abs() < 1e-6, "{up:?}");
        }
        let zero = Cam {
            values: vec![2.0; 4],
            ..cam
        };
        assert!(zero.upsample(3, 5).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
    }

    #[test]
    fn overlay_sizes_keep_aspect() {
        assert_eq!(overlay_size(300, 200), (300, 200));
        assert_eq!(overlay_size(4000, 3000), (512, 384));
        assert_eq!(overlay_size(32, 32), (256, 256));
        assert_eq!(overlay_size(64, 16), (256, 64));
    }

    #[test]
    fn overlay_colours_only_the_hot_region() {
        let photo = RgbImage::from_pixel(300, 300, Rgb([200, 180, 160]));
        let cam = Cam {
            width: 2,
            height: 2,
            values: vec![0.0, 0.0, 0.0, 5.0],
            logit: 1.0,
        };
        let out = overlay(&photo, &cam, ResizePolicy::Stretch);
        assert_eq!(out.dimensions(), (300, 300));
        assert_eq!(*out.get_pixel(10, 10), Rgb([200, 180, 160]));
        let hot = out.get_pixel(290, 290);
        assert!(hot[0] > hot[2], "{hot:?}");
        // Crop: the margins of a wide photo stay untouched.
        let wide = RgbImage::from_pixel(400, 200, Rgb([10, 10, 10]));
        let out = overlay(&wide, &cam, ResizePolicy::Crop);
        assert_eq!(*out.get_pixel(399, 199), Rgb([10, 10, 10]));
        assert_ne!(*out.get_pixel(295, 195), Rgb([10, 10, 10]));
        // Keeping only the display-sized copy of a large photo changes nothing.
        let big = RgbImage::from_fn(1200, 900, |x, y| Rgb([(x % 251) as u8, (y % 241) as u8, 7]));
        for policy in [ResizePolicy::Stretch, ResizePolicy::Crop] {
            assert_eq!(
                overlay(&display_image(&big), &cam, policy),
                overlay(&big, &cam, policy)
            );
        }
    }

    #[test]
    fn grad_cam_equals_weighted_activation_for_gap_head() {
        // With global average pooling, alpha_c = dlogit/dpooled_c / (h*w); the CAM is then
        // ReLU(sum_c alpha_c A_c). Check shapes, non-negativity and batch independence.
        let varmap = VarMap::new();
        let model = ResNet18::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            0.0,
            1,
        )
        .unwrap();
        crate::model::init_seeded(&varmap, 3).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let cams = grad_cam(&model, &x).unwrap();
        assert_eq!(cams.len(), 2);
        assert_eq!((cams[0].width, cams[0].height), (2, 2));
        assert!(cams.iter().all(|c| c.values.iter().all(|&v| v >= 0.0)));
        let single = grad_cam(&model, &x.narrow(0, 1, 1).unwrap()).unwrap();
        for (a, b) in single[0].values.iter().zip(&cams[1].values) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        let logits = crate::infer::eval_logits(&model, &x, false).unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!((logits[0] - cams[0].logit).abs() < 1e-4);
    }
}

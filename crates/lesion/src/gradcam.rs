//! Grad-CAM (Selvaraju et al. 2017) of one class's logit on `layer4`, and its rendering
//! as a colour overlay on the input photo.
//!
//! - Input: an NCHW f32 batch `[b, 3, S, S]`, normalised as the model was trained.
//! - The model runs in eval mode up to `layer4`, whose activation `A` `[b, 512, h, w]`
//!   (`h = w = ceil(S / 32)`, e.g. 4x4 at 112 px, 7x7 at 224 px) becomes a
//!   [`candle_core::Var`]; mean-pool and head follow (logits `[b, outputs]`).
//! - The explained score of each image is chosen from its logits ([`CamTarget`]): for N > 2
//!   classes class `k`'s logit `y_k`; for the two-class head (one logit `y`) the malignant
//!   class is `y` and the benign class `-y` (its log-odds). `d(sum over images of the
//!   chosen scores)/dA` gives every image's own gradient at once (in eval mode the images
//!   of a batch do not interact).
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

use crate::classes::Classes;
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
    /// The image's logits `[outputs]` (no test-time augmentation).
    pub logits: Vec<f32>,
    /// The score the map explains.
    pub target: CamTarget,
}

/// The score a CAM explains: head output `output`, negated for the benign class of the
/// two-class head (whose one logit is the malignant class's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CamTarget {
    /// The class explained (its label).
    pub class: usize,
    /// The head output whose gradient is used.
    pub output: usize,
    /// Whether the score is minus that output.
    pub negate: bool,
}

impl CamTarget {
    /// The target of class `label`: output `label` for N > 2 classes; for two classes the
    /// one logit, negated for label 0.
    pub fn of_class(classes: &Classes, label: usize) -> Self {
        if classes.is_binary() {
            Self {
                class: label,
                output: 0,
                negate: label == 0,
            }
        } else {
            Self {
                class: label,
                output: label,
                negate: false,
            }
        }
    }

    /// The explained score among an image's logits.
    pub fn score(&self, logits: &[f32]) -> f32 {
        let y = logits[self.output];
        if self.negate {
            -y
        } else {
            y
        }
    }
}

impl Cam {
    /// Largest value of the map (0 when nothing in the image raises the explained score).
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

/// Grad-CAM for every image of `images` `[b, 3, S, S]`, of the score `target` chooses
/// from each image's logits.
pub fn grad_cam(
    model: &ResNet18,
    images: &Tensor,
    target: &dyn Fn(&[f32]) -> CamTarget,
) -> Result<Vec<Cam>> {
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
    let logits = model.head().forward_mode(&pooled, eval)?; // [b, outputs]
    let outputs = logits.dim(1)?;
    let values: Vec<f32> = logits
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let targets: Vec<CamTarget> = values.chunks_exact(outputs).map(target).collect();
    if let Some(t) = targets.iter().find(|t| t.output >= outputs) {
        return Err(Error::InvalidOption(format!(
            "Grad-CAM: output {} of a head with {outputs}",
            t.output
        )));
    }
    // +1 or -1 at each image's chosen output, 0 elsewhere: the gradient of the summed
    // scores is each image's own score's gradient, and multiplying by 1 is exact.
    let mut mask = vec![0f32; b * outputs];
    for (i, t) in targets.iter().enumerate() {
        mask[i * outputs + t.output] = if t.negate { -1.0 } else { 1.0 };
    }
    let mask = Tensor::from_vec(mask, (b, outputs), logits.device())?.to_dtype(logits.dtype())?;
    let grads = logits.mul(&mask)?.sum_all()?.backward()?;
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
    Ok(cam
        .chunks_exact(h * w)
        .zip(values.chunks_exact(outputs))
        .zip(targets)
        .take(b)
        .map(|((values, logits), target)| Cam {
            width: w,
            height: h,
            values: values.to_vec(),
            logits: logits.to_vec(),
            target,
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
    use std::collections::HashMap;

    const POSITIVE: CamTarget = CamTarget {
        class: 1,
        output: 0,
        negate: false,
    };

    fn seeded(outputs: usize, seed: u64) -> (VarMap, ResNet18) {
        let varmap = VarMap::new();
        let model = ResNet18::new(
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            0.0,
            outputs,
        )
        .unwrap();
        crate::model::init_seeded(&varmap, seed).unwrap();
        (varmap, model)
    }

    /// Grad-CAM written out independently: the gradient of `sign * sum over images of
    /// logits[:, output]` (a column taken with `narrow`), without ReLU, so that the sign of
    /// the map is visible.
    fn reference_map(model: &ResNet18, x: &Tensor, output: usize, sign: f64) -> Vec<Vec<f32>> {
        let eval = Mode {
            train: false,
            grad: false,
        };
        let mut a = model.stem().forward_mode(x, eval).unwrap();
        for n in 1..=4 {
            a = model.layer(n).forward_mode(&a, eval).unwrap();
        }
        let var = Var::from_tensor(&a).unwrap();
        let logits = model
            .head()
            .forward_mode(&var.as_tensor().mean((2, 3)).unwrap(), eval)
            .unwrap();
        let score = logits.narrow(1, output, 1).unwrap().sum_all().unwrap();
        let grads = (score * sign).unwrap().backward().unwrap();
        let alpha = grads
            .get(var.as_tensor())
            .unwrap()
            .mean_keepdim((2, 3))
            .unwrap();
        let map = var
            .as_tensor()
            .broadcast_mul(&alpha)
            .unwrap()
            .sum(1)
            .unwrap();
        (0..x.dim(0).unwrap())
            .map(|i| {
                map.get(i)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    }

    /// A fixed pseudo-random `[b, 3, side, side]` input (the same in every run, unlike
    /// candle's unseedable CPU RNG).
    fn input(b: usize, side: usize) -> Tensor {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let v: Vec<f32> = (0..b * 3 * side * side)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_vec(v, (b, 3, side, side), &Device::Cpu).unwrap()
    }

    fn relu(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| x.max(0.0)).collect()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-3),
                "{what}: {a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn two_class_cams_are_the_logit_s_and_its_negation_s() {
        let (_vm, model) = seeded(1, 3);
        let classes = Classes::benign_malignant();
        let x = input(3, 128);
        let malignant = grad_cam(&model, &x, &|_| CamTarget::of_class(&classes, 1)).unwrap();
        let benign = grad_cam(&model, &x, &|_| CamTarget::of_class(&classes, 0)).unwrap();
        let plus = reference_map(&model, &x, 0, 1.0);
        let mut signs = (0, 0);
        for i in 0..3 {
            // The malignant map is exactly the plain sum-of-logits gradient's.
            assert_eq!(malignant[i].values, relu(&plus[i]), "image {i}");
            assert_eq!(malignant[i].target, POSITIVE);
            assert_eq!(
                benign[i].target,
                CamTarget {
                    class: 0,
                    output: 0,
                    negate: true
                }
            );
            let minus: Vec<f32> = plus[i].iter().map(|v| -v).collect();
            assert_close(&benign[i].values, &relu(&minus), "benign");
            for (m, b) in malignant[i].values.iter().zip(&benign[i].values) {
                assert!(*m == 0.0 || *b == 0.0, "a cell feeds both classes: {m} {b}");
                signs.0 += usize::from(*m > 0.0);
                signs.1 += usize::from(*b > 0.0);
            }
        }
        assert!(signs.0 > 0 && signs.1 > 0, "both maps have heat: {signs:?}");
    }

    #[test]
    fn n_class_cam_of_class_k_is_logit_k_s_and_follows_a_swapped_head() {
        let (varmap, model) = seeded(3, 5);
        let classes = Classes::new(vec!["a".into(), "b".into(), "c".into()], &[]).unwrap();
        let x = input(2, 64);
        let cams: Vec<Vec<Cam>> = (0..3)
            .map(|k| grad_cam(&model, &x, &|_| CamTarget::of_class(&classes, k)).unwrap())
            .collect();
        for (k, per_class) in cams.iter().enumerate() {
            let reference = reference_map(&model, &x, k, 1.0);
            for (i, cam) in per_class.iter().enumerate() {
                assert_eq!(
                    cam.target,
                    CamTarget {
                        class: k,
                        output: k,
                        negate: false
                    }
                );
                assert_close(&cam.values, &relu(&reference[i]), "class map");
            }
        }
        assert_ne!(cams[0][0].values, cams[2][0].values, "classes differ");
        let logits = crate::infer::eval_logits(&model, &x, false).unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert_close(&cams[1][1].logits, &logits[3..6], "logits");

        // The same network with the rows of classes 0 and 2 swapped in the last layer:
        // its class 0 is the original class 2.
        let mut tensors: HashMap<String, Tensor> = crate::model::snapshot(&varmap).unwrap();
        for name in ["fc.6.weight", "fc.6.bias"] {
            let t = &tensors[name];
            let rows = [2usize, 1, 0].map(|r| t.narrow(0, r, 1).unwrap());
            let swapped = Tensor::cat(&rows, 0).unwrap();
            tensors.insert(name.into(), swapped);
        }
        let swapped = ResNet18::from_tensors(tensors, &Device::Cpu, 0.0, 3).unwrap();
        let s0 = grad_cam(&swapped, &x, &|_| CamTarget::of_class(&classes, 0)).unwrap();
        for i in 0..2 {
            assert_close(&s0[i].values, &cams[2][i].values, "swapped head");
            assert_eq!(s0[i].logits[0], cams[2][i].logits[2]);
        }

        // A target chosen per image from its logits: the most probable class.
        let argmax = |l: &[f32]| {
            let k = (0..3).fold(0, |b, k| if l[k] > l[b] { k } else { b });
            CamTarget::of_class(&classes, k)
        };
        let chosen = grad_cam(&model, &x, &argmax).unwrap();
        for (i, cam) in chosen.iter().enumerate() {
            assert_eq!(cam.values, cams[cam.target.class][i].values);
        }
    }

    #[test]
    fn upsample_matches_pytorch_bilinear() {
        // (F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4),
        //                mode="bilinear", align_corners=False) - 1) / 3
        let cam = Cam {
            width: 2,
            height: 2,
            values: vec![1.0, 2.0, 3.0, 4.0],
            logits: vec![0.0],
            target: POSITIVE,
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
            logits: vec![1.0],
            target: POSITIVE,
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
        let (_varmap, model) = seeded(1, 3);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &Device::Cpu).unwrap();
        let cams = grad_cam(&model, &x, &|_| POSITIVE).unwrap();
        assert_eq!(cams.len(), 2);
        assert_eq!((cams[0].width, cams[0].height), (2, 2));
        assert!(cams.iter().all(|c| c.values.iter().all(|&v| v >= 0.0)));
        let single = grad_cam(&model, &x.narrow(0, 1, 1).unwrap(), &|_| POSITIVE).unwrap();
        for (a, b) in single[0].values.iter().zip(&cams[1].values) {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        let logits = crate::infer::eval_logits(&model, &x, false).unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!((logits[0] - cams[0].logits[0]).abs() < 1e-4);
    }
}

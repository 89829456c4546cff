//! The augmentations against torchvision/Pillow reference outputs
//! (`shared/fixtures/transforms_expected.safetensors`, made by `make_fixtures.py`).
//!
//! Tensors there are u8 HWC `[224, 224, 3]` except `expect.normalized_chw`, f32 CHW
//! `[3, 224, 224]`. Tolerances are the fixture README's: resize within 2 levels per
//! pixel, rotations identical on at least 99% of pixels, flips and normalisation exact
//! (normalisation within 1e-6).

mod common;

use image::RgbImage;
use lesion::image_io::{decode_rgb, DEFAULT_MAX_PIXELS};
use lesion::transforms::{
    center_crop_resize, hflip, normalize_chw, rotate_nearest, to_chw, vflip, Augmentation,
    IMAGENET_MEAN, IMAGENET_STD,
};
use safetensors::{Dtype, SafeTensors};

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Self {
        let path = common::fixture("transforms_expected.safetensors");
        Fixture {
            bytes: std::fs::read(&path).unwrap(),
        }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    fn image(&self, name: &str) -> RgbImage {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        assert_eq!(t.shape(), &[224, 224, 3], "{name}");
        RgbImage::from_raw(224, 224, t.data().to_vec()).unwrap()
    }

    fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    }
}

/// (largest absolute difference, fraction of identical samples).
fn compare(ours: &RgbImage, expect: &RgbImage) -> (u8, f64) {
    assert_eq!(ours.dimensions(), expect.dimensions());
    let (a, b) = (ours.as_raw(), expect.as_raw());
    let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    (max, same as f64 / a.len() as f64)
}

/// Fraction of pixels (all three channels) identical.
fn identical_pixels(ours: &RgbImage, expect: &RgbImage) -> f64 {
    let same = ours
        .pixels()
        .zip(expect.pixels())
        .filter(|(a, b)| a == b)
        .count();
    same as f64 / (ours.width() * ours.height()) as f64
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn test_card_png_decodes_to_the_input_tensor() {
    let fx = Fixture::load();
    let path = common::fixture("test_card.png");
    let img = decode_rgb(&std::fs::read(&path).unwrap(), &path, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(img, fx.image("input.image"));
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn center_crop_resize_matches_pillow_bilinear() {
    let fx = Fixture::load();
    let input = fx.image("input.image");
    let expect = fx.image("expect.center_crop_112_resize_224");
    let ours = center_crop_resize(&input, 112, 224);
    let (max, same) = compare(&ours, &expect);
    println!(
        "crop 112 + resize 224: max |diff| = {max}, identical samples = {:.4}%",
        same * 100.0
    );
    assert!(max <= 2, "max difference {max} > 2");

    // The same through the augmentation (crop only).
    let aug = Augmentation {
        center_crop: true,
        ..Default::default()
    };
    assert_eq!(aug.apply(&input), ours);
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn rotations_match_torchvision() {
    let fx = Fixture::load();
    let input = fx.image("input.image");
    for (deg, name) in [
        (30.0f32, "expect.rotate_+30.0"),
        (-12.5, "expect.rotate_-12.5"),
    ] {
        let ours = rotate_nearest(&input, deg);
        let frac = identical_pixels(&ours, &fx.image(name));
        println!("rotate {deg:+}: {:.4}% of pixels identical", frac * 100.0);
        assert!(
            frac >= 0.99,
            "rotate {deg}: only {:.4}% identical",
            frac * 100.0
        );
    }
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn flips_are_exact() {
    let fx = Fixture::load();
    let input = fx.image("input.image");
    assert_eq!(hflip(&input), fx.image("expect.hflip"));
    assert_eq!(vflip(&input), fx.image("expect.vflip"));
    let both = Augmentation {
        hflip: true,
        ..Default::default()
    };
    assert_eq!(both.apply(&input), fx.image("expect.hflip"));
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn normalisation_matches_to_tensor_and_normalize() {
    let fx = Fixture::load();
    let input = fx.image("input.image");
    let (shape, expect) = fx.f32s("expect.normalized_chw");
    assert_eq!(shape, vec![3, 224, 224]);
    let chw = to_chw(&input);
    let mut ours = vec![0f32; chw.len()];
    normalize_chw(&chw, IMAGENET_MEAN, IMAGENET_STD, &mut ours);
    let max = ours
        .iter()
        .zip(&expect)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let exact = ours.iter().zip(&expect).filter(|(a, b)| a == b).count();
    println!(
        "normalize: max |diff| = {max:e}, bit-identical = {exact}/{}",
        expect.len()
    );
    assert!(max <= 1e-6, "max difference {max}");
}

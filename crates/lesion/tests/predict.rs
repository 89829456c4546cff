//! Prediction end to end on tiny self-made data: preprocessing identical to prep's, the
//! threshold rules, test-time augmentation, the `lesion-predict` command's per-file
//! handling, and a Grad-CAM known-answer test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use image::{imageops, Rgb, RgbImage};
use lesion::image_io::ResizePolicy;
use lesion::infer::sigmoid;
use lesion::loader::{LoaderOptions, PreparedDataset};
use lesion::model::Trainable;
use lesion::predict::{self, OutputFormat, PredictOptions, Predictor};
use lesion::prep::{self, PrepOptions};
use lesion::run::{self as run_folder, fixtures};
use lesion::split::Split;
use lesion::train::{self, Monitor, TrainConfig};
use lesion::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A 32-px synthetic dataset prepared with `--resize crop` and a one-epoch run on it,
/// shared by the tests of this file (built once).
struct Trained {
    _dir: tempfile::TempDir,
    images: PathBuf,
    prepared: PathBuf,
    run: PathBuf,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        lesion::synth::generate(&images, 10, 5, false, false).unwrap();
        let prepared = dir.path().join("prepared");
        let mut opts = PrepOptions::new(&images, &prepared);
        opts.size = 32;
        opts.resize = ResizePolicy::Crop;
        opts.augment = false;
        opts.progress = false;
        prep::run(&opts).unwrap();
        let run = dir.path().join("run");
        let cfg = common::cpu_train_config(&prepared, &run, 1, 8);
        train::train(&cfg, false).unwrap();
        Trained {
            _dir: dir,
            images,
            prepared,
            run,
        }
    })
}

fn cpu() -> Device {
    Device::Cpu
}

fn err_text<T: std::fmt::Debug>(r: lesion::Result<T>) -> (Error, String) {
    let e = r.unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn preprocessing_is_exactly_prep_s_for_val_and_test() {
    let t = trained();
    let p = Predictor::load(&t.run, &cpu(), Some(0.5)).unwrap();
    assert_eq!(
        p.resize_policy(),
        ResizePolicy::Crop,
        "recorded in config.json"
    );
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    assert_eq!(p.image_size(), 32);
    let data = PreparedDataset::open(&t.prepared).unwrap();
    let mut checked = 0;
    for split in [Split::Val, Split::Test] {
        for batch in data.loader(split, LoaderOptions::eval(64), &cpu()).unwrap() {
            let batch = batch.unwrap();
            for (row, &src) in batch.source_index.iter().enumerate() {
                let rel = &data.manifest().images[src as usize].path;
                let path = t.images.join(rel);
                let img = p.decode(&fs::read(&path).unwrap(), &path).unwrap();
                let ours = p.preprocess(&img);
                let theirs: Vec<f32> = batch
                    .images
                    .get(row)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(ours, theirs, "{rel} differs from its prepared tensor");
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "only {checked} images compared");
}

#[test]
fn labels_follow_the_threshold() {
    let t = trained();
    let imgs: Vec<RgbImage> = (0..4).map(|i| lesion::synth::render(i % 2, i, 9)).collect();
    let at = |th: f64| {
        Predictor::load(&t.run, &cpu(), Some(th))
            .unwrap()
            .predict_images(&imgs, false)
            .unwrap()
    };
    let mid = at(0.5);
    for p in &mid {
        assert!((0.0..=1.0).contains(&p.probability.unwrap()));
        assert!((p.probability.unwrap() - sigmoid(f64::from(p.logits[0]))).abs() < 1e-12);
        assert_eq!(p.malignant.unwrap(), p.probability.unwrap() >= 0.5);
        assert_eq!(
            p.label,
            if p.malignant.unwrap() {
                "Malignant"
            } else {
                "Benign"
            }
        );
    }
    assert!(at(0.0)
        .iter()
        .all(|p| p.malignant.unwrap() && p.label == "Malignant"));
    assert!(at(1.0)
        .iter()
        .all(|p| !p.malignant.unwrap() || p.probability.unwrap() == 1.0));
    // A threshold exactly at an image's probability calls it malignant (>=, as lesion-eval).
    let exact = at(mid[0].probability.unwrap());
    assert!(exact[0].malignant.unwrap());
    let (e, msg) = err_text(Predictor::load(&t.run, &cpu(), Some(1.5)));
    assert!(matches!(e, Error::InvalidOption(_)), "{msg}");
    assert!(msg.contains("[0, 1]"), "{msg}");
    assert!(Predictor::load(&t.run, &cpu(), Some(f64::NAN)).is_err());
}

#[test]
fn run_without_threshold_is_a_clear_error_unless_one_is_given() {
    let t = trained();
    // lesion-eval has not run on the shared run: no threshold.json.
    let (e, msg) = err_text(Predictor::load(&t.run, &cpu(), None));
    assert!(matches!(e, Error::BadArtifact { .. }), "{msg}");
    assert!(msg.contains("threshold.json"), "{msg}");
    assert!(msg.contains("lesion-eval"), "{msg}");
    assert!(msg.contains("--threshold"), "{msg}");
    let p = Predictor::load(&t.run, &cpu(), Some(0.3)).unwrap();
    assert_eq!(p.threshold(), Some(0.3));
    assert!(p.threshold_overridden());
    assert_eq!(p.describe_threshold(), "0.3000 (given with --threshold)");
    assert!(!p.default_tta());
}

#[test]
fn the_run_s_threshold_is_used_and_checked_against_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = fixtures::write_untrained_run(&dir.path().join("r"), 32, 1, Some(0.37)).unwrap();
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    assert_eq!(p.threshold(), Some(0.37));
    assert!(!p.threshold_overridden());
    assert!(
        p.describe_threshold().contains("Youden"),
        "{}",
        p.describe_threshold()
    );
    assert_eq!(p.model_id(), format!("r@{}", &p.checkpoint_sha256()[..12]));
    // The fixture records its resize policy.
    assert_eq!(p.resize_policy(), ResizePolicy::Stretch);
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    // A config.json without one, whose prepared dataset does not exist: stretch, with a
    // warning.
    fixtures::forget_resize_policy(&run).unwrap();
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    assert_eq!(p.resize_policy(), ResizePolicy::Stretch);
    assert!(
        p.warnings().iter().any(|w| w.contains("stretch")),
        "{:?}",
        p.warnings()
    );
    // An explicit threshold wins.
    assert_eq!(
        Predictor::load(&run, &cpu(), Some(0.9))
            .unwrap()
            .threshold(),
        Some(0.9)
    );

    // A threshold chosen for another checkpoint is refused.
    let path = run.join("threshold.json");
    let mut t: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    t["checkpoint_sha256"] = "ab".repeat(32).into();
    fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    let (_, msg) = err_text(Predictor::load(&run, &cpu(), None));
    assert!(msg.contains("another checkpoint"), "{msg}");
    assert!(msg.contains("--threshold"), "{msg}");
    // ... unless one is given.
    assert!(Predictor::load(&run, &cpu(), Some(0.5)).is_ok());

    // A threshold outside [0, 1] in the file.
    t["threshold"] = 3.0.into();
    fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    let (_, msg) = err_text(Predictor::load(&run, &cpu(), None));
    assert!(msg.contains("not a probability"), "{msg}");
}

/// A copy of the shared run's `config.json` and `best.safetensors` in `dir`, with its
/// configuration changed by `edit`.
fn copy_of_run(dir: &Path, edit: impl FnOnce(&mut lesion::run::RunConfig)) -> PathBuf {
    let t = trained();
    fs::create_dir_all(dir).unwrap();
    fs::copy(t.run.join("best.safetensors"), dir.join("best.safetensors")).unwrap();
    let mut config = run_folder::read_config(&t.run).unwrap();
    edit(&mut config);
    run_folder::write_config(dir, &config).unwrap();
    dir.to_path_buf()
}

#[test]
fn the_resize_policy_is_recorded_or_for_an_old_run_read_from_its_prepared_data() {
    let t = trained();
    let tmp = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(t.run.join("config.json")).unwrap();
    assert!(text.contains("\"resize\": \"crop\""), "{text}");

    // A new run needs no prepared data: the recorded policy is used, without a word.
    let gone = tmp.path().join("gone");
    let new = copy_of_run(&tmp.path().join("new"), |c| c.train.data = gone.clone());
    let p = Predictor::load(&new, &cpu(), Some(0.5)).unwrap();
    assert_eq!(p.resize_policy(), ResizePolicy::Crop);
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());

    // An old run (config.json without `resize`) reads the policy from its prepared data...
    let old = copy_of_run(&tmp.path().join("old"), |c| c.resize = None);
    let text = fs::read_to_string(old.join("config.json")).unwrap();
    assert!(!text.contains("resize"), "{text}");
    let p = Predictor::load(&old, &cpu(), Some(0.5)).unwrap();
    assert_eq!(p.resize_policy(), ResizePolicy::Crop);
    assert!(p.warnings().is_empty(), "{:?}", p.warnings());

    // ... and without them assumes stretch, with a warning.
    let old_gone = copy_of_run(&tmp.path().join("old-gone"), |c| {
        c.resize = None;
        c.train.data = gone.clone();
    });
    let p = Predictor::load(&old_gone, &cpu(), Some(0.5)).unwrap();
    assert_eq!(p.resize_policy(), ResizePolicy::Stretch);
    assert!(
        p.warnings()
            .iter()
            .any(|w| w.contains("assuming `stretch`")),
        "{:?}",
        p.warnings()
    );
}

#[test]
fn missing_run_pieces_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (e, msg) = err_text(Predictor::load(&dir.path().join("nope"), &cpu(), Some(0.5)));
    assert!(
        msg.contains("nope") && msg.contains("no such folder"),
        "{msg}"
    );
    assert_eq!(e.exit_code(), 2);
    let (_, msg) = err_text(Predictor::load(dir.path(), &cpu(), Some(0.5)));
    assert!(msg.contains("config.json"), "{msg}");
    let run = fixtures::write_untrained_run(&dir.path().join("r"), 32, 1, Some(0.5)).unwrap();
    fs::remove_file(run.join("best.safetensors")).unwrap();
    let (e, msg) = err_text(Predictor::load(&run, &cpu(), None));
    assert!(matches!(e, Error::BadArtifact { .. }), "{msg}");
    assert!(msg.contains("best.safetensors"), "{msg}");
    fs::write(run.join("best.safetensors"), b"garbage").unwrap();
    let (_, msg) = err_text(Predictor::load(&run, &cpu(), Some(0.5)));
    assert!(msg.contains("best.safetensors"), "{msg}");
}

#[test]
fn tta_is_the_mean_logit_of_the_image_and_its_flips() {
    let dir = tempfile::tempdir().unwrap();
    let run = fixtures::write_untrained_run(&dir.path().join("r"), 32, 2, Some(0.5)).unwrap();
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    // At the model's own size resizing is the identity, so flipping before preprocessing
    // equals flipping the tensor.
    let imgs: Vec<RgbImage> = (0..3)
        .map(|i| imageops::resize(&lesion::synth::render(1, i, 3), 32, 32, imageops::Triangle))
        .collect();
    let with = p.predict_images(&imgs, true).unwrap();
    let plain = p.predict_images(&imgs, false).unwrap();
    let h: Vec<RgbImage> = imgs.iter().map(imageops::flip_horizontal).collect();
    let v: Vec<RgbImage> = imgs.iter().map(imageops::flip_vertical).collect();
    let hp = p.predict_images(&h, false).unwrap();
    let vp = p.predict_images(&v, false).unwrap();
    for i in 0..imgs.len() {
        let mean = (plain[i].logits[0] + hp[i].logits[0] + vp[i].logits[0]) / 3.0;
        assert!(
            (with[i].logits[0] - mean).abs() < 1e-4,
            "image {i}: tta {} vs mean {mean}",
            with[i].logits[0]
        );
        assert!((with[i].probability.unwrap() - sigmoid(f64::from(mean))).abs() < 1e-4);
    }
    // Not trivially equal: the flips do change the logits of an asymmetric image.
    assert!((0..3).any(|i| (plain[i].logits[0] - hp[i].logits[0]).abs() > 1e-6));
    // Batching does not change results.
    let one = p.predict_images(&imgs[1..2], true).unwrap();
    assert!((one[0].logits[0] - with[1].logits[0]).abs() < 1e-4);
}

#[test]
fn predict_bytes_reports_bad_files_and_keeps_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let run = fixtures::write_untrained_run(&dir.path().join("r"), 32, 2, Some(0.5)).unwrap();
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    let good = png(&lesion::synth::render(0, 1, 1));
    let truncated = jpeg(&lesion::synth::render(0, 2, 1));
    let truncated = &truncated[..truncated.len() / 2];
    let (a, b, c) = (Path::new("a.png"), Path::new("b.txt"), Path::new("c.jpg"));
    let out = p.predict_bytes(
        &[(a, &good), (b, b"hello, not an image"), (c, truncated)],
        false,
    );
    assert!(out[0].is_ok());
    let e1 = out[1].as_ref().unwrap_err().to_string();
    assert!(e1.contains("b.txt") && e1.contains("not an image"), "{e1}");
    let e2 = out[2].as_ref().unwrap_err().to_string();
    assert!(e2.contains("c.jpg") && e2.contains("truncated"), "{e2}");
    let direct = p
        .predict_images(&[lesion::synth::render(0, 1, 1)], false)
        .unwrap();
    assert!((direct[0].logits[0] - out[0].as_ref().unwrap().logits[0]).abs() < 1e-5);
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    buf.into_inner()
}

#[test]
fn predict_command_handles_folders_bad_files_formats_and_heatmaps() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::create_dir_all(input.join("sub")).unwrap();
    fs::copy(
        t.images.join("Benign/benign_00000.jpg"),
        input.join("one.jpg"),
    )
    .unwrap();
    // Recognised by content, whatever the extension.
    fs::write(
        input.join("sub/two.data"),
        png(&lesion::synth::render(1, 3, 5)),
    )
    .unwrap();
    fs::write(input.join("notes.txt"), "not an image").unwrap();
    fs::write(input.join(".hidden.jpg"), "skipped silently").unwrap();
    let full = jpeg(&lesion::synth::render(1, 4, 5));
    fs::write(input.join("sub/cut.jpg"), &full[..full.len() / 2]).unwrap();
    let named_bad = dir.path().join("named.txt");
    fs::write(&named_bad, "named explicitly, so it is tried").unwrap();

    let heat = dir.path().join("heat");
    let mut opts = PredictOptions::new(
        &t.run,
        vec![
            input.clone(),
            named_bad.clone(),
            dir.path().join("missing.jpg"),
        ],
    );
    opts.threshold = Some(0.5);
    opts.device = "cpu".into();
    opts.explain = Some(heat.clone());
    opts.batch_size = 2;
    let report = predict::run(&opts).unwrap();
    let by_name = |n: &str| {
        report
            .results
            .iter()
            .find(|r| r.path.ends_with(n))
            .unwrap_or_else(|| panic!("{n} missing from {:?}", report.results))
    };
    assert_eq!(report.results.len(), 5, "{:#?}", report.results);
    // Argument order, folders sorted, unreadable paths in their place.
    let order: Vec<String> = report
        .results
        .iter()
        .map(|r| r.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        order,
        ["one.jpg", "cut.jpg", "two.data", "named.txt", "missing.jpg"],
        "{order:?}"
    );
    assert_eq!(report.failures(), 3);
    for ok in ["one.jpg", "two.data"] {
        let r = by_name(ok);
        assert!(r.is_ok(), "{r:?}");
        let png_path = r.heatmap.as_ref().unwrap();
        let img = image::open(png_path).unwrap().to_rgb8();
        assert!(
            img.width().max(img.height()) >= 256,
            "{:?}",
            img.dimensions()
        );
    }
    assert!(heat.join("one.gradcam.png").is_file());
    assert!(heat.join("sub/two.gradcam.png").is_file());
    assert!(by_name("cut.jpg")
        .error
        .as_deref()
        .unwrap()
        .contains("truncated"));
    assert!(by_name("named.txt")
        .error
        .as_deref()
        .unwrap()
        .contains("not an image"));
    assert!(by_name("missing.jpg")
        .error
        .as_deref()
        .unwrap()
        .contains("cannot read"));
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].path.ends_with("notes.txt"));

    let table = report.render(OutputFormat::Table);
    assert!(table.starts_with("path"), "{table}");
    assert!(table.contains("error: "), "{table}");
    let csv = report.render(OutputFormat::Csv);
    assert_eq!(csv.lines().count(), 6, "{csv}");
    assert_eq!(
        csv.lines().next().unwrap(),
        "path,probability,label,threshold,error"
    );
    let json: serde_json::Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 5);
    assert_eq!(json["threshold"], 0.5);
    let prob = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("one.jpg"))
        .unwrap()["probability"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&prob));

    // Heatmaps are not overwritten without --force.
    let err = predict::run(&opts).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    opts.force = true;
    assert_eq!(predict::run(&opts).unwrap().failures(), 3);
}

// ------------------------------------------------------------------------------------
// Grad-CAM known answer.

const CAM_SIZE: u32 = 64;

/// A skin-toned, unevenly lit, noisy 64x64 image; malignant ones carry a dark blob in
/// corner `corner` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
fn corner_image(corner: Option<usize>, rng: &mut ChaCha8Rng) -> RgbImage {
    let s = CAM_SIZE as f32;
    let base = [
        rng.random_range(185.0..215.0f32),
        rng.random_range(140.0..170.0),
        rng.random_range(115.0..140.0),
    ];
    let (gx, gy) = (
        rng.random_range(-20.0..20.0f32),
        rng.random_range(-20.0..20.0f32),
    );
    let blob = corner.map(|c| {
        let q = s / 4.0;
        let cx = if c % 2 == 0 { q } else { 3.0 * q } + rng.random_range(-3.0..3.0);
        let cy = if c < 2 { q } else { 3.0 * q } + rng.random_range(-3.0..3.0);
        (cx, cy, rng.random_range(7.0..10.0f32))
    });
    RgbImage::from_fn(CAM_SIZE, CAM_SIZE, |x, y| {
        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
        let light = gx * (fx / s - 0.5) + gy * (fy / s - 0.5);
        let mut px = base.map(|c| c + light + rng.random_range(-10.0..10.0));
        if let Some((cx, cy, r)) = blob {
            let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
            let a = (r + 1.0 - d).clamp(0.0, 1.0);
            let ink = [55.0, 35.0, 30.0];
            for c in 0..3 {
                px[c] = px[c] * (1.0 - a) + ink[c] * a;
            }
        }
        Rgb(px.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

/// Share of the upsampled heat in each quadrant (same order as the corners).
fn quadrant_shares(heat: &[f32], side: usize) -> [f32; 4] {
    let mut q = [0f32; 4];
    for y in 0..side {
        for x in 0..side {
            q[usize::from(x >= side / 2) + 2 * usize::from(y >= side / 2)] += heat[y * side + x];
        }
    }
    let total: f32 = q.iter().sum();
    q.map(|v| v / total.max(f32::MIN_POSITIVE))
}

#[test]
fn grad_cam_puts_the_heat_on_the_blob_that_defines_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for (class, name) in ["Benign", "Malignant"].iter().enumerate() {
        fs::create_dir_all(images.join(name)).unwrap();
        for i in 0..40 {
            let corner = (class == 1).then_some(i % 4);
            let img = corner_image(corner, &mut rng);
            img.save(images.join(name).join(format!("{i:03}.png")))
                .unwrap();
        }
    }
    let prepared = dir.path().join("prepared");
    let mut opts = PrepOptions::new(&images, &prepared);
    opts.size = CAM_SIZE;
    opts.augment = false;
    opts.progress = false;
    prep::run(&opts).unwrap();
    let run = dir.path().join("run");
    let summary = train::train(
        &TrainConfig {
            data: prepared,
            out: run.clone(),
            epochs: 4,
            batch_size: 16,
            patience: 4,
            // Validation AUC saturates at 1 after the first epoch; the loss keeps improving.
            monitor: Monitor::ValLoss,
            trainable: Trainable::All,
            lr_backbone: 1e-3,
            weights: "none".into(),
            device: "cpu".into(),
            ..TrainConfig::default()
        },
        false,
    )
    .unwrap();
    let best = &summary.history[summary.best_epoch - 1];
    assert!(best.val_acc > 0.9, "the blob was not learned: {summary}");

    let p = Predictor::load(&run, &cpu(), Some(0.5)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for corner in 0..4 {
        let img = corner_image(Some(corner), &mut rng);
        let e = p.explain(&img).unwrap();
        assert_eq!((e.cam.width, e.cam.height), (2, 2));
        assert!(e.cam.max() > 0.0, "no positive evidence at all");
        let heat = e.cam.upsample(CAM_SIZE, CAM_SIZE);
        let shares = quadrant_shares(&heat, CAM_SIZE as usize);
        let hottest = (0..4)
            .max_by(|&a, &b| shares[a].total_cmp(&shares[b]))
            .unwrap();
        println!(
            "corner {corner}: heat shares {shares:.2?}, p = {:.3}",
            e.prediction.probability.unwrap()
        );
        // Most heat: the blob's quadrant holds the largest share by a clear margin (on a
        // 2x2 grid one hot cell alone would give 0.77, a flat map 0.25 each), and the
        // hottest pixel lies in it.
        assert_eq!(hottest, corner, "corner {corner}: heat shares {shares:?}");
        for other in (0..4).filter(|&q| q != corner) {
            assert!(
                shares[corner] > 1.5 * shares[other],
                "corner {corner}: heat shares {shares:?}"
            );
        }
        assert!(shares[corner] > 0.4, "corner {corner}: {shares:?}");
        let peak = (0..heat.len())
            .max_by(|&a, &b| heat[a].total_cmp(&heat[b]))
            .unwrap();
        let (px, py) = (peak % CAM_SIZE as usize, peak / CAM_SIZE as usize);
        let half = CAM_SIZE as usize / 2;
        assert_eq!(
            usize::from(px >= half) + 2 * usize::from(py >= half),
            corner,
            "corner {corner}: hottest pixel at ({px}, {py})"
        );
        assert!(
            e.prediction.probability.unwrap() > 0.5,
            "corner {corner}: {:?}",
            e.prediction
        );
        assert_eq!(e.overlay.dimensions(), (256, 256));
    }
    let plain = p
        .predict_images(&[corner_image(None, &mut rng)], false)
        .unwrap();
    assert!(plain[0].probability.unwrap() < 0.5, "{:?}", plain[0]);
}

// ------------------------------------------------------------------------------------
// Runs with more than two classes.

const THREE: [&str; 3] = ["melanoma", "nevus", "seborrheic_keratosis"];

/// An untrained run at `size` px with the classes [`THREE`] (3 logits, seeded weights) and
/// the malignant group `malignant`; with `threshold`, a `threshold.json` for its checkpoint.
fn three_class_run(dir: &Path, size: usize, malignant: &[&str], threshold: Option<f64>) -> PathBuf {
    use candle_nn::{VarBuilder, VarMap};
    use lesion::run::checkpoint::{self, TrainState};
    let run = fixtures::write_untrained_run(dir, size, 4, threshold).unwrap();
    let varmap = VarMap::new();
    lesion::model::ResNet18::new(
        VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu),
        0.25,
        3,
    )
    .unwrap();
    lesion::model::init_seeded(&varmap, 4).unwrap();
    let best = run.join(run_folder::BEST_FILE);
    let tensors = lesion::model::snapshot(&varmap).unwrap();
    checkpoint::save(&best, &tensors, &TrainState::new(4, 0.0)).unwrap();
    let mut config = run_folder::read_config(&run).unwrap();
    config.class_names = THREE.iter().map(|s| s.to_string()).collect();
    config.malignant = malignant.iter().map(|s| s.to_string()).collect();
    run_folder::write_config(&run, &config).unwrap();
    let t = run.join(run_folder::THRESHOLD_FILE);
    if t.exists() {
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&t).unwrap()).unwrap();
        v["checkpoint_sha256"] = lesion::fsutil::sha256_file(&best).unwrap().into();
        fs::write(&t, serde_json::to_vec(&v).unwrap()).unwrap();
    }
    run
}

/// softmax in f64, written out for the test.
fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = x
        .iter()
        .map(|&v| (f64::from(v) - f64::from(m)).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn photos(n: usize) -> Vec<RgbImage> {
    (0..n)
        .map(|i| lesion::synth::render(i % 2, i, 13))
        .collect()
}

#[test]
fn n_class_predictions_carry_every_class_and_the_top_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = three_class_run(&dir.path().join("r"), 32, &[], None);
    // No malignant group: no threshold needed, none accepted.
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    assert_eq!(p.threshold(), None);
    assert!(p.describe_threshold().contains("most probable class"));
    assert_eq!(p.class_names(), THREE);
    let (e, msg) = err_text(Predictor::load(&run, &cpu(), Some(0.5)));
    assert!(matches!(e, Error::InvalidOption(_)), "{msg}");
    assert!(
        msg.contains("--threshold") && msg.contains("melanoma, nevus"),
        "{msg}"
    );

    let imgs = photos(6);
    let preds = p.predict_images(&imgs, false).unwrap();
    let mut tops = std::collections::HashSet::new();
    for pred in &preds {
        assert_eq!(pred.logits.len(), 3);
        let expect = softmax(&pred.logits);
        for (a, b) in pred.probabilities.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-12, "{pred:?}");
        }
        assert!((pred.probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let top = (0..3)
            .max_by(|&a, &b| expect[a].total_cmp(&expect[b]))
            .unwrap();
        assert_eq!(pred.top, top);
        assert_eq!(pred.class, top);
        assert_eq!(pred.label, THREE[top]);
        assert_eq!(pred.top_probability(), pred.probabilities[top]);
        assert_eq!((pred.probability, pred.malignant), (None, None));
        let ranked = pred.top_k(5);
        assert_eq!(ranked.len(), 3);
        assert_eq!(ranked[0], (top, pred.probabilities[top]));
        assert!(ranked[0].1 >= ranked[1].1 && ranked[1].1 >= ranked[2].1);
        tops.insert(top);
    }
    // The logits are the model's: the same as the evaluation path's for the same input.
    let x = p.preprocess(&imgs[0]);
    let s = p.image_size() as usize;
    let model = lesion::model::ResNet18::from_tensors(
        lesion::run::checkpoint::load_model(p.checkpoint(), &cpu()).unwrap(),
        &cpu(),
        0.25,
        3,
    )
    .unwrap();
    let t = candle_core::Tensor::from_vec(x, (1, 3, s, s), &cpu()).unwrap();
    let direct: Vec<f32> = lesion::infer::eval_logits(&model, &t, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in direct.iter().zip(&preds[0].logits) {
        assert!((a - b).abs() < 1e-5, "{direct:?} vs {:?}", preds[0].logits);
    }
    // TTA averages all three logits over the flips (at the model's own size resizing is
    // the identity, so flipping the photo is flipping the tensor).
    let small = imageops::resize(&imgs[0], 32, 32, imageops::Triangle);
    let with = p
        .predict_images(std::slice::from_ref(&small), true)
        .unwrap();
    let plain = p
        .predict_images(std::slice::from_ref(&small), false)
        .unwrap();
    let h = p
        .predict_images(&[imageops::flip_horizontal(&small)], false)
        .unwrap();
    let v = p
        .predict_images(&[imageops::flip_vertical(&small)], false)
        .unwrap();
    for k in 0..3 {
        let mean = (plain[0].logits[k] + h[0].logits[k] + v[0].logits[k]) / 3.0;
        assert!(
            (with[0].logits[k] - mean).abs() < 1e-4,
            "{with:?} vs {mean}"
        );
    }
    assert_eq!(with[0].probabilities, softmax(&with[0].logits));
    println!("top classes seen: {tops:?}");
}

#[test]
fn with_a_malignant_group_the_threshold_decides_on_its_summed_probability() {
    let dir = tempfile::tempdir().unwrap();
    // Without threshold.json the run needs one, as a two-class run does.
    let bare = three_class_run(&dir.path().join("bare"), 32, &["melanoma"], None);
    let (_, msg) = err_text(Predictor::load(&bare, &cpu(), None));
    assert!(
        msg.contains("lesion-eval") && msg.contains("--threshold"),
        "{msg}"
    );

    let run = three_class_run(
        &dir.path().join("r"),
        32,
        &["melanoma", "seborrheic_keratosis"],
        Some(0.4),
    );
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    assert_eq!(p.threshold(), Some(0.4));
    let imgs = photos(6);
    let preds = p.predict_images(&imgs, false).unwrap();
    for pred in &preds {
        let q = &pred.probabilities;
        let group = q[0] + q[2];
        assert!((pred.probability.unwrap() - group).abs() < 1e-15);
        let malignant = pred.probability.unwrap() >= 0.4;
        assert_eq!(pred.malignant, Some(malignant));
        // The answer is the most probable class on the decided side.
        let expect = if malignant {
            if q[2] > q[0] {
                2
            } else {
                0
            }
        } else {
            1
        };
        assert_eq!(pred.class, expect, "{pred:?}");
        assert_eq!(pred.label, THREE[expect]);
    }
    // At the extremes every image is called one way.
    let at = |t: f64| {
        Predictor::load(&run, &cpu(), Some(t))
            .unwrap()
            .predict_images(&imgs, false)
            .unwrap()
    };
    assert!(at(0.0)
        .iter()
        .all(|p| p.malignant == Some(true) && p.class != 1));
    assert!(at(1.0)
        .iter()
        .all(|p| p.malignant == Some(false) && p.label == "nevus"));
}

#[test]
fn predict_command_reports_n_classes_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    // 64 px: layer4's grid is 2x2, so maps of different classes can differ.
    let run = three_class_run(&dir.path().join("r"), 64, &[], None);
    let input = dir.path().join("in");
    fs::create_dir_all(&input).unwrap();
    for i in 0..3 {
        fs::write(
            input.join(format!("p{i}.png")),
            png(&lesion::synth::render(i % 2, i, 21)),
        )
        .unwrap();
    }
    fs::write(input.join("bad.jpg"), b"\xff\xd8\xff\xe0 cut").unwrap();
    let mut opts = PredictOptions::new(&run, vec![input.clone()]);
    opts.device = "cpu".into();
    let report = predict::run(&opts).unwrap();
    assert_eq!(report.failures(), 1);
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    let direct: Vec<_> = (0..3)
        .map(|i| {
            let img = lesion::synth::render(i % 2, i, 21);
            p.predict_images(&[img], false).unwrap().remove(0)
        })
        .collect();

    // Table: the most probable class and its probability.
    let table = report.render(OutputFormat::Table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["path", "probability", "class"]
    );
    assert!(lines[1].contains("error: "), "{table}");
    for (i, d) in direct.iter().enumerate() {
        let cells: Vec<&str> = lines[i + 2].split_whitespace().collect();
        assert!(cells[0].ends_with(&format!("p{i}.png")), "{table}");
        assert_eq!(cells[1], format!("{:.4}", d.top_probability()), "{table}");
        assert_eq!(cells[2], THREE[d.top], "{table}");
    }

    // CSV: one p_<class> column per class, in class order.
    let csv = report.render(OutputFormat::Csv);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "path,label,p_melanoma,p_nevus,p_seborrheic_keratosis,error"
    );
    assert!(
        rows[1].contains("bad.jpg,,,,,") && !rows[1].ends_with(','),
        "{csv}"
    );
    for (i, d) in direct.iter().enumerate() {
        let f: Vec<&str> = rows[i + 2].split(',').collect();
        assert_eq!(f[1], THREE[d.top]);
        for k in 0..3 {
            assert_eq!(f[2 + k], format!("{:.6}", d.probabilities[k]), "{csv}");
        }
        assert_eq!(f[5], "");
    }

    // JSON: an object class -> probability, in class order; no threshold.
    let json: serde_json::Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
    assert_eq!(json["classes"], serde_json::json!(THREE));
    assert!(json.get("threshold").is_none(), "{json}");
    let text = report.render(OutputFormat::Json);
    let first = text.find("\"melanoma\": ").unwrap();
    assert!(first < text[first..].find("\"nevus\": ").unwrap() + first);
    for (i, d) in direct.iter().enumerate() {
        let r = &json["results"][i + 1];
        assert_eq!(r["label"], THREE[d.top]);
        assert!(
            r.get("probability").is_none() && r.get("malignant").is_none(),
            "{r}"
        );
        for k in 0..3 {
            // Batches of different sizes agree to float rounding.
            let got = r["probabilities"][THREE[k]].as_f64().unwrap();
            assert!((got - d.probabilities[k]).abs() < 1e-6, "{got} vs {d:?}");
        }
    }

    // --top-k: the K most probable, most probable first.
    opts.top_k = Some(2);
    let report2 = predict::run(&opts).unwrap();
    let table = report2.render(OutputFormat::Table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["path", "top", "2"]
    );
    for (i, d) in direct.iter().enumerate() {
        let ranked = d.top_k(2);
        let expect = format!(
            "{} {:.4}, {} {:.4}",
            THREE[ranked[0].0], ranked[0].1, THREE[ranked[1].0], ranked[1].1
        );
        assert!(lines[i + 2].ends_with(&expect), "{table}\nwanted {expect}");
    }
    opts.top_k = Some(0);
    let (_, msg) = err_text(predict::run(&opts));
    assert!(msg.contains("--top-k"), "{msg}");
    opts.top_k = None;

    // Heatmaps explain each image's class, or the one asked for.
    opts.inputs = vec![input.join("p0.png"), input.join("p1.png")];
    opts.explain = Some(dir.path().join("heat"));
    let report = predict::run(&opts).unwrap();
    for (i, r) in report.results.iter().enumerate() {
        assert_eq!(r.explained.as_deref(), Some(THREE[direct[i].top]), "{r:?}");
    }
    let default_png = fs::read(dir.path().join("heat/p0.gradcam.png")).unwrap();
    let other = (direct[0].top + 1) % 3;
    opts.explain_class = Some(THREE[other].to_uppercase());
    opts.force = true;
    let report = predict::run(&opts).unwrap();
    assert!(report
        .results
        .iter()
        .all(|r| r.explained.as_deref() == Some(THREE[other])));
    let asked = fs::read(dir.path().join("heat/p0.gradcam.png")).unwrap();
    let img = lesion::synth::render(0, 0, 21);
    let e = p
        .explain_images(std::slice::from_ref(&img), Some(other))
        .unwrap()
        .remove(0);
    let d = p
        .explain_images(std::slice::from_ref(&img), None)
        .unwrap()
        .remove(0);
    assert_eq!((e.class, e.cam.target.class), (other, other));
    assert_eq!(d.class, direct[0].top);
    assert_ne!(e.cam.values, d.cam.values, "two classes, one map");
    assert_ne!(asked, default_png, "the heatmap of another class");
    opts.explain_class = Some("basal_cell".into());
    let (e, msg) = err_text(predict::run(&opts));
    assert_eq!(e.exit_code(), 2, "{msg}");
    assert!(
        msg.contains("--explain-class") && msg.contains("melanoma, nevus, seborrheic_keratosis"),
        "{msg}"
    );
}

#[test]
fn two_class_heatmaps_explain_the_malignant_logit_unless_benign_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let run = fixtures::write_untrained_run(&dir.path().join("r"), 32, 2, Some(0.5)).unwrap();
    let p = Predictor::load(&run, &cpu(), None).unwrap();
    let imgs = photos(3);
    let default = p.explain_images(&imgs, None).unwrap();
    let malignant = p.explain_images(&imgs, Some(1)).unwrap();
    let benign = p.explain_images(&imgs, Some(0)).unwrap();
    for i in 0..3 {
        assert_eq!(default[i].class, 1);
        assert_eq!(default[i].cam, malignant[i].cam);
        assert_eq!(benign[i].class, 0);
        assert!(benign[i].cam.target.negate);
        // Opposite evidence: no cell is positive in both maps.
        for (a, b) in default[i].cam.values.iter().zip(&benign[i].cam.values) {
            assert!(*a == 0.0 || *b == 0.0);
        }
        assert_eq!(benign[i].prediction, default[i].prediction);
    }
    let mut opts = PredictOptions::new(&run, vec![dir.path().join("x.png")]);
    fs::write(dir.path().join("x.png"), png(&imgs[0])).unwrap();
    opts.device = "cpu".into();
    opts.explain = Some(dir.path().join("heat"));
    let report = predict::run(&opts).unwrap();
    // The default keeps the two-class report as it is: no `explained` field.
    assert_eq!(report.results[0].explained, None);
    let json = report.render(OutputFormat::Json);
    assert!(
        !json.contains("explained") && !json.contains("probabilities"),
        "{json}"
    );
    opts.explain_class = Some("benign".into());
    opts.force = true;
    let report = predict::run(&opts).unwrap();
    assert_eq!(report.results[0].explained.as_deref(), Some("Benign"));
}

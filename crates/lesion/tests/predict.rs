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
        assert_eq!(p.label, if p.malignant.unwrap() { "Malignant" } else { "Benign" });
    }
    assert!(at(0.0)
        .iter()
        .all(|p| p.malignant.unwrap() && p.label == "Malignant"));
    assert!(at(1.0).iter().all(|p| !p.malignant.unwrap() || p.probability.unwrap() == 1.0));
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

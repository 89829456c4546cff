//! External test sets (`lesion-eval --run RUN --images FOLDER`) and the input-drift
//! warnings of evaluation and prediction, on tiny synthetic photos.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use image::{ImageFormat, RgbImage};
use lesion::drift::PROFILE_FILE;
use lesion::eval::EvalOptions;
use lesion::manifest::Manifest;
use lesion::predict::{self, OutputFormat, PredictOptions};
use lesion::split::Split;
use serde_json::Value;
use testkit::data;

const BIN: &str = env!("CARGO_BIN_EXE_lesion-eval");

/// The photos, their prepared dataset and a one-epoch run on it, built once.
struct Trained {
    _dir: tempfile::TempDir,
    photos: PathBuf,
    prepared: PathBuf,
    run: PathBuf,
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let photos = data::write_photos(&dir.path().join("photos"), data::PER_CLASS);
        let prepared = data::prepare(&photos, &dir.path().join("prepared"));
        let run = data::train(&prepared, &dir.path().join("run"));
        Trained {
            _dir: dir,
            photos,
            prepared,
            run,
        }
    })
}

/// A copy of the trained run in `dir`.
fn run_copy(dir: &Path) -> PathBuf {
    let to = dir.join("run");
    testkit::tree::copy_tree(&trained().run, &to);
    to
}

fn write_png(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data::encode(img, ImageFormat::Png)).unwrap();
}

/// `n` new photos (not the training ones) of synth class `class` in `dir/folder/`.
fn write_new_photos(dir: &Path, folder: &str, class: usize, n: usize) {
    for i in 0..n {
        let (w, h) = (70 + (i as u32 * 13) % 50, 66 + (i as u32 * 29) % 50);
        let img = data::photo(class, 40 + i, w, h);
        write_png(&dir.join(folder).join(format!("{folder}_{i:02}.png")), &img);
    }
}

/// A strongly blue-tinted photo.
fn tinted(class: usize, index: usize) -> RgbImage {
    let mut img = data::photo(class, index, 96, 80);
    for p in img.pixels_mut() {
        p.0 = [p.0[0] / 8, p.0[1] / 2, 255];
    }
    img
}

fn eval_bin(args: &[&str]) -> testkit::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--device", "cpu", "-q", "--bootstrap", "50"]);
    testkit::process::run(cmd, Duration::from_secs(300))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

/// The rows of a `predictions.csv` without quoted fields, as header name → value maps.
fn csv_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let text = fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            assert!(!l.contains('"'), "{l}");
            head.iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn external_folder_is_evaluated_whole_with_the_run_s_threshold_and_marked_external() {
    let t = trained();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_copy(tmp.path());
    assert!(run.join(PROFILE_FILE).is_file(), "lesion-train writes it");
    let ext = tmp.path().join("Hospital B");
    write_new_photos(&ext, "benign", 0, 6);
    write_new_photos(&ext, "malignant", 1, 6);
    fs::write(
        ext.join("benign/broken.jpg"),
        b"\xff\xd8\xff not really a jpeg",
    )
    .unwrap();

    // No threshold yet, and no prepared data to choose one on: say which command makes it.
    let out = eval_bin(&["--run", s(&run), "--images", s(&ext)]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("lesion-eval --run") && out.stderr.contains("--data"),
        "{}",
        out.stderr
    );
    assert!(!run.join("eval-external-Hospital B").exists());

    // With the run's prepared data, the threshold is chosen on its validation split.
    let out = eval_bin(&[
        "--run",
        s(&run),
        "--images",
        s(&ext),
        "--data",
        s(&t.prepared),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stderr.contains("benign/broken.jpg"),
        "the unreadable file is named: {}",
        out.stderr
    );
    assert!(out.stdout.contains("external test set:"), "{}", out.stdout);
    let dir = run.join("eval-external-Hospital B");
    let m = read_json(&dir.join("metrics.json"));
    let saved = read_json(&run.join("threshold.json"));
    assert_eq!(m["threshold"], saved, "the threshold is saved into the run");
    // ... and is the one `lesion-eval --run RUN --data PREPARED` chooses.
    let summary = lesion::eval::run(&EvalOptions {
        run: run.clone(),
        data: t.prepared.clone(),
        bootstrap: 0,
        device: "cpu".into(),
        progress: false,
        ..EvalOptions::default()
    })
    .unwrap();
    let by_eval = summary.metrics.binary.unwrap().threshold;
    assert_eq!(
        m["threshold"]["threshold"].as_f64().unwrap(),
        by_eval.threshold
    );
    let threshold = by_eval.threshold;

    // The data are recorded as external, and every readable image is evaluated.
    let d = &m["data"];
    assert_eq!(d["kind"], "external");
    assert_eq!(d["images"], 12);
    assert_eq!(d["per_class"], serde_json::json!([6, 6]));
    assert_eq!(d["rejected"][0]["path"], "benign/broken.jpg");
    assert_eq!(d["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(m["split"], "test");
    assert_eq!(m["class_names"], serde_json::json!(["Benign", "Malignant"]));
    let warnings = m["warnings"].to_string();
    assert!(warnings.contains("benign/broken.jpg"), "{warnings}");

    // The figures are those of its own predictions.csv, at the run's threshold.
    let rows = csv_rows(&dir.join("predictions.csv"));
    assert_eq!(rows.len(), 12);
    let labels: Vec<usize> = rows.iter().map(|r| r["label"].parse().unwrap()).collect();
    let probs: Vec<f64> = rows
        .iter()
        .map(|r| r["probability"].parse().unwrap())
        .collect();
    assert_eq!(labels.iter().filter(|&&y| y == 1).count(), 6);
    assert!(rows[0]["path"].starts_with("benign/"), "{:?}", rows[0]);
    for (at, thr) in [
        ("at_chosen_threshold", threshold),
        ("at_default_threshold", 0.5),
    ] {
        let want = lesion::metrics::evaluate(&labels, &probs, thr).unwrap();
        let got = &m[at];
        assert_eq!(got["threshold"].as_f64().unwrap(), thr);
        assert_eq!(got["roc_auc"].as_f64().unwrap(), want.roc_auc);
        assert_eq!(got["sensitivity"].as_f64().unwrap(), want.sensitivity);
        assert_eq!(got["specificity"].as_f64().unwrap(), want.specificity);
        assert_eq!(got["accuracy"].as_f64().unwrap(), want.accuracy);
        assert_eq!(got["n"], 12);
    }
    for r in &rows {
        let p: f64 = r["probability"].parse().unwrap();
        assert_eq!(r["prediction"], u8::from(p >= threshold).to_string());
    }

    // The report says so at the top.
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    let folder = fs::canonicalize(&ext).unwrap();
    let notice = format!(
        "External test set: <code>{}</code> (12 images) — not from the run's prepared data",
        folder.display()
    );
    let at = html
        .find(&notice)
        .unwrap_or_else(|| panic!("no notice in the report"));
    assert!(at < html.find("id=\"disclaimer\"").unwrap(), "at the top");
    assert!(html.contains("external split"), "the header names the data");
    assert!(
        html.contains("external set: 12 (6 Benign, 6 Malignant); none of the run&#39;s own splits"),
        "the configuration table gives the folder's counts"
    );
    for f in [
        "roc.png",
        "pr.png",
        "confusion.png",
        "calibration.png",
        "errors.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }

    // Each image's probability is exactly what lesion-predict gives for the same file.
    let report = predict::run(&PredictOptions {
        tta: Some(false),
        device: "cpu".into(),
        progress: false,
        ..PredictOptions::new(&run, vec![ext.clone()])
    })
    .unwrap();
    let by_file: HashMap<String, f64> = report
        .results
        .iter()
        .filter_map(|r| {
            let rel = r.path.strip_prefix(&ext).ok()?.to_str()?.to_string();
            Some((rel, r.probability?))
        })
        .collect();
    assert_eq!(by_file.len(), 12);
    for r in &rows {
        let p: f64 = r["probability"].parse().unwrap();
        assert_eq!(by_file[&r["path"]], p, "{}", r["path"]);
    }

    // An existing evaluation is not replaced without --force, and is with it.
    let again = ["--run", s(&run), "--images", s(&ext)];
    let out = eval_bin(&again);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let out = eval_bin(&[&again[..], &["--force"]].concat());
    assert_eq!(out.code, Some(0), "{}", out.all());
    // --strict makes the unreadable file an error that names it.
    let out = eval_bin(&[&again[..], &["--force", "--strict"]].concat());
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("broken.jpg"), "{}", out.stderr);
}

#[test]
fn folders_map_to_the_run_s_classes_or_fail_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = data::untrained_run(&tmp.path().join("run"), 64);
    let ext = tmp.path().join("ext");
    write_new_photos(&ext, "Benign", 0, 3);
    write_new_photos(&ext, "MALIGNANT", 1, 3);
    write_new_photos(&ext, "vascular", 0, 2);

    let out = eval_bin(&["--run", s(&run), "--images", s(&ext)]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("vascular/") && out.stderr.contains("Benign, Malignant"),
        "names the folder and the run's classes: {}",
        out.stderr
    );
    assert!(out.stderr.contains("--group vascular="), "{}", out.stderr);

    // Skipped with `-`; folder names match the run's classes ignoring case.
    let out = eval_bin(&[
        "--run",
        s(&run),
        "--images",
        s(&ext),
        "--group",
        "vascular=-",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let m = read_json(&run.join("eval-external-ext/metrics.json"));
    assert_eq!(m["data"]["per_class"], serde_json::json!([3, 3]));
    assert_eq!(m["threshold"]["threshold"], 0.5, "the run's threshold.json");
    // A run without an input profile says nothing about drift.
    assert_eq!(m["data"]["drift"], Value::Null);
    assert!(!m["warnings"].to_string().contains("differ markedly"));

    // Filed under a class of the run, by file or by option, into another folder.
    let map = tmp.path().join("map.txt");
    fs::write(&map, "# vascular lesions are benign\nvascular = Benign\n").unwrap();
    let out_dir = tmp.path().join("out");
    let out = eval_bin(&[
        "--run",
        s(&run),
        "--images",
        s(&ext),
        "--classes",
        s(&map),
        "--out",
        s(&out_dir),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let m = read_json(&out_dir.join("metrics.json"));
    assert_eq!(m["data"]["per_class"], serde_json::json!([5, 3]));
    let folders = m["data"]["folders"].as_array().unwrap();
    let vascular = folders.iter().find(|f| f["folder"] == "vascular").unwrap();
    assert_eq!(vascular["class"], "Benign");
    assert_eq!(
        (&vascular["files"], &vascular["images"]),
        (&2.into(), &2.into())
    );
    // A mapping naming a class the run lacks is refused with the run's classes.
    let out = eval_bin(&[
        "--run",
        s(&run),
        "--images",
        s(&ext),
        "--group",
        "vascular=Vascular",
        "--force",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.stderr.contains("`Vascular`"), "{}", out.stderr);
}

#[test]
fn n_class_run_on_an_external_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let names = testkit::classes::ISIC2017;
    let run = testkit::classes::untrained_class_run(
        &tmp.path().join("run"),
        64,
        3,
        &names,
        &["melanoma"],
        Some(0.4),
    );
    let ext = tmp.path().join("clinic");
    for (k, name) in names.iter().enumerate() {
        write_new_photos(&ext, name, k, 2);
    }
    let out = eval_bin(&["--run", s(&run), "--images", s(&ext)]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    let dir = run.join("eval-external-clinic");
    let m = read_json(&dir.join("metrics.json"));
    assert_eq!(m["data"]["per_class"], serde_json::json!([2, 2, 2]));
    assert_eq!(m["multiclass"]["n"], 6);
    assert_eq!(m["malignant"], serde_json::json!(["melanoma"]));
    assert_eq!(m["threshold"]["threshold"], 0.4);
    let rows = csv_rows(&dir.join("predictions.csv"));
    let labels: Vec<usize> = rows.iter().map(|r| r["label"].parse().unwrap()).collect();
    let probs: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            names
                .map(|n| r[&format!("p_{n}")].parse().unwrap())
                .to_vec()
        })
        .collect();
    let want = lesion::metrics::evaluate_multiclass(&labels, &probs).unwrap();
    assert_eq!(m["multiclass"]["accuracy"].as_f64().unwrap(), want.accuracy);
    assert_eq!(m["multiclass"]["macro_f1"].as_f64().unwrap(), want.macro_f1);
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("(6 images) — not from the run's prepared data"));
}

#[test]
fn drift_warnings_fire_for_odd_inputs_and_never_for_the_training_images() {
    let t = trained();
    let tmp = tempfile::tempdir().unwrap();
    let run = run_copy(tmp.path());
    let predict_files = |files: Vec<PathBuf>| {
        predict::run(&PredictOptions {
            threshold: Some(0.5),
            device: "cpu".into(),
            progress: false,
            ..PredictOptions::new(&run, files)
        })
        .unwrap()
    };

    // The training images: no warning at all.
    let manifest = Manifest::load(&t.prepared).unwrap();
    let train: Vec<PathBuf> = manifest
        .images
        .iter()
        .filter(|e| e.split == Split::Train)
        .map(|e| t.photos.join(&e.path))
        .collect();
    assert!(train.len() >= 8, "{}", train.len());
    let report = predict_files(train.clone());
    for r in &report.results {
        assert!(r.is_ok(), "{r:?}");
        assert!(
            r.warnings.is_empty(),
            "{}: {:?}",
            r.path.display(),
            r.warnings
        );
    }
    assert!(
        !report
            .warnings
            .iter()
            .any(|w| w.contains("differ markedly")),
        "{:?}",
        report.warnings
    );
    let json: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
    for r in json["results"].as_array().unwrap() {
        assert!(r.get("warnings").is_none(), "{r}");
    }

    // A 4000x300 photo and a strongly tinted one: per image, and once for the set.
    let odd = tmp.path().join("odd");
    write_png(&odd.join("wide.png"), &data::photo(0, 3, 4000, 300));
    write_png(&odd.join("tinted.png"), &tinted(0, 4));
    let report = predict_files(vec![odd.join("wide.png"), odd.join("tinted.png")]);
    let wide = &report.results[0].warnings;
    assert!(
        wide.iter()
            .any(|w| w.starts_with("aspect ratio 13.33 (4000x300) is outside the training range")),
        "{wide:?}"
    );
    let tint = &report.results[1].warnings;
    assert!(
        tint.iter().any(|w| w.starts_with("mean colour outside the training range:")
            && w.contains("blue")),
        "{tint:?}"
    );
    assert!(!tint.iter().any(|w| w.contains("aspect")), "{tint:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("2 of 2 image(s) differ markedly")),
        "{:?}",
        report.warnings
    );
    let json: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
    assert_eq!(json["results"][0]["warnings"], serde_json::json!(wide));
    let csv = report.render(OutputFormat::Csv);
    assert!(
        csv.starts_with("path,probability,label,threshold,error,warnings\n"),
        "{csv}"
    );
    assert!(csv.contains("aspect ratio 13.33"), "{csv}");
    let table = report.render(OutputFormat::Table);
    assert!(table.contains("\n  warning: aspect ratio 13.33"), "{table}");

    // An external set of tinted photos: the set's warnings in metrics.json and the report.
    let ext = tmp.path().join("tinted-set");
    for i in 0..3 {
        write_png(&ext.join(format!("Benign/b{i}.png")), &tinted(0, 20 + i));
        write_png(
            &ext.join(format!("Malignant/m{i}.png")),
            &data::photo(1, 20 + i, 90, 90),
        );
    }
    let out = eval_bin(&[
        "--run",
        s(&run),
        "--images",
        s(&ext),
        "--data",
        s(&t.prepared),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(out.stderr.contains("input drift"), "{}", out.stderr);
    let dir = run.join("eval-external-tinted-set");
    let m = read_json(&dir.join("metrics.json"));
    let drift = &m["data"]["drift"];
    assert_eq!(drift["images"], 6);
    assert!(drift["outside_colour"].as_u64().unwrap() >= 3, "{drift}");
    let paths: Vec<&str> = m["data"]["drift_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for i in 0..3 {
        assert!(
            paths.contains(&format!("Benign/b{i}.png").as_str()),
            "{paths:?}"
        );
    }
    let html = fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains("differ markedly from the run"),
        "report warns"
    );
}

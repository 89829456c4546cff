//! `lesion-predict` on a run with three classes: what it prints in each format, `--top-k`,
//! `--explain-class` and their mistakes, and the help text.

use std::process::Command;
use std::time::Duration;

use testkit::classes::{untrained_class_run, ISIC2017};
use testkit::data::{jpeg, png};
use testkit::process::{run, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-predict");

fn predict(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["--device", "cpu", "--quiet"]).args(args);
    run(cmd, Duration::from_secs(300))
}

#[test]
fn three_classes_print_the_top_class_top_k_and_every_probability() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = untrained_class_run(&dir.path().join("r"), 32, 3, &ISIC2017, &[], None);
    let shots = dir.path().join("shots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("a.jpg"), jpeg(0, 1)).unwrap();
    std::fs::write(shots.join("b.png"), png(1, 2)).unwrap();
    let r = run_dir.to_str().unwrap();
    let s = shots.to_str().unwrap();

    let json = predict(&["--run", r, s, "--format", "json"]);
    assert_eq!(json.code, Some(0), "{}", json.all());
    let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(j["classes"], serde_json::json!(ISIC2017));
    let mut rows = Vec::new();
    for res in j["results"].as_array().unwrap() {
        let probs: Vec<f64> = ISIC2017
            .iter()
            .map(|c| res["probabilities"][c].as_f64().unwrap())
            .collect();
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{res}");
        let top = (0..3)
            .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
            .unwrap();
        assert_eq!(res["label"], ISIC2017[top]);
        rows.push((top, probs));
    }

    let table = predict(&["--run", r, s]);
    assert_eq!(table.code, Some(0), "{}", table.all());
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.stdout);
    for (line, (top, probs)) in lines[1..].iter().zip(&rows) {
        assert!(
            line.ends_with(&format!("{:.4}  {}", probs[*top], ISIC2017[*top])),
            "{line}"
        );
    }

    let top3 = predict(&["--run", r, s, "--top-k", "3"]);
    assert_eq!(top3.code, Some(0), "{}", top3.all());
    for (line, (_, probs)) in top3.stdout.lines().skip(1).zip(&rows) {
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let expect: Vec<String> = order
            .iter()
            .map(|&k| format!("{} {:.4}", ISIC2017[k], probs[k]))
            .collect();
        assert!(line.ends_with(&expect.join(", ")), "{line}");
    }

    let csv = predict(&["--run", r, s, "--format", "csv"]);
    assert_eq!(
        csv.stdout.lines().next().unwrap(),
        "path,label,p_melanoma,p_nevus,p_seborrheic_keratosis,error"
    );
    for (line, (top, probs)) in csv.stdout.lines().skip(1).zip(&rows) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[1], ISIC2017[*top]);
        for k in 0..3 {
            assert_eq!(f[2 + k], format!("{:.6}", probs[k]));
        }
    }

    // Mistakes name the option and what is allowed.
    let heat = dir.path().join("heat");
    let h = heat.to_str().unwrap();
    let bad = predict(&["--run", r, s, "--explain", h, "--explain-class", "bcc"]);
    assert_eq!(bad.code, Some(2), "{}", bad.all());
    assert!(
        bad.stderr.contains("--explain-class")
            && bad.stderr.contains("melanoma, nevus, seborrheic_keratosis"),
        "{}",
        bad.stderr
    );
    assert!(!heat.exists(), "nothing written for a refused option");
    let zero = predict(&["--run", r, s, "--top-k", "0"]);
    assert_eq!(zero.code, Some(2), "{}", zero.all());
    assert!(zero.stderr.contains("--top-k"), "{}", zero.stderr);
    let thr = predict(&["--run", r, s, "--threshold", "0.5"]);
    assert_eq!(thr.code, Some(2), "{}", thr.all());
    assert!(thr.stderr.contains("--threshold"), "{}", thr.stderr);

    let ok = predict(&[
        "--run",
        r,
        s,
        "--explain",
        h,
        "--explain-class",
        "Nevus",
        "--format",
        "json",
    ]);
    assert_eq!(ok.code, Some(0), "{}", ok.all());
    let j: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    for res in j["results"].as_array().unwrap() {
        assert_eq!(res["explained"], "nevus", "{res}");
        assert!(std::path::Path::new(res["heatmap"].as_str().unwrap()).is_file());
    }
}

#[test]
fn help_describes_classes_top_k_and_the_explained_class() {
    let mut cmd = Command::new(BIN);
    cmd.arg("--help");
    let out = run(cmd, Duration::from_secs(60));
    assert_eq!(out.code, Some(0));
    // Help text wraps at the terminal's width.
    let text = out.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "--top-k <K>",
        "--explain-class <CLASS>",
        "most probable class",
        "malignant classes",
    ] {
        assert!(
            text.contains(needle),
            "help lacks {needle}:\n{}",
            out.stdout
        );
    }
}

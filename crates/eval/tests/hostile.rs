//! Hostile but fair inputs to `lesion-eval`: one row per case, run by
//! `testkit::run_table` (see `crates/testkit/src/hostile.rs` for what every row checks).
//! `LESION_HOSTILE_CASE=name cargo test -p lesion-eval --test hostile` runs one case.

use std::fs;

use lesion::eval::EvalOptions;
use testkit::data::{self, flip_byte, truncate_file};
use testkit::{Case, Invocation, Output, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-eval");

fn eval(run: &str, data: &str) -> Invocation {
    Invocation::new(["--run", run, "--data", data]).args([
        "--bootstrap",
        "0",
        "--device",
        "cpu",
        "-q",
    ])
}

/// A trained run (`run/`) and the prepared dataset it was trained on (`prepared/`).
fn run_and_data(sb: &Sandbox) {
    sb.trained_run("run");
    sb.prepared("prepared");
}

const MISSING: &[&str] = &["does not exist", "no such", "not found", "missing"];

const CASES: &[Case] = &[
    // Defect 1: --force replaces only an evaluation folder.
    Case::new("force_onto_a_folder_that_is_not_an_evaluation", |sb| {
        run_and_data(sb);
        sb.write("run/eval-test/my-notes.txt", "reading list");
        sb.write("run/eval-test/figures/fig1.txt", "draft");
        eval("run", "prepared").arg("--force")
    })
    .exits(2)
    .stderr(&[
        &["eval-test"],
        &[
            "not an eval",
            "not a lesion",
            "does not look",
            "not one of",
            "refus",
            "unrelated",
        ],
    ])
    .unchanged(&["run/eval-test", "prepared"]),
    Case::new("force_replaces_its_own_evaluation", |sb| {
        run_and_data(sb);
        lesion::eval::run(&options(sb)).unwrap();
        eval("run", "prepared").arg("--force")
    })
    .unchanged(&["prepared"])
    .check(evaluated),
    // Defect 5: bad input exits 2.
    Case::new("data_missing", |sb| {
        sb.trained_run("run");
        eval("run", "nowhere")
    })
    .exits(2)
    .stderr(&[&["nowhere"], MISSING])
    .unchanged(&["run"]),
    Case::new("truncated_best_checkpoint", |sb| {
        run_and_data(sb);
        truncate_file(&sb.path("run/best.safetensors"), 0.5);
        eval("run", "prepared")
    })
    .exits(2)
    .stderr(&[
        &["best.safetensors"],
        &["truncated", "safetensors", "corrupt", "incomplete"],
    ])
    .unchanged(&["run", "prepared"]),
    Case::new("run_missing", |sb| {
        sb.prepared("prepared");
        eval("nowhere", "prepared")
    })
    .exits(2)
    .stderr(&[
        &["nowhere"],
        &["no such", "does not exist", "not found", "missing"],
    ])
    .unchanged(&["prepared"]),
    // What already works, kept from regressing.
    Case::new("evaluates", |sb| {
        run_and_data(sb);
        eval("run", "prepared")
    })
    .output(&[&["threshold"]])
    .unchanged(&["prepared"])
    .check(evaluated),
    Case::new("existing_evaluation_without_force", |sb| {
        run_and_data(sb);
        lesion::eval::run(&options(sb)).unwrap();
        eval("run", "prepared")
    })
    .exits(2)
    .stderr(&[&["eval-test"], &["already exists"], &["--force"]])
    .unchanged(&["run", "prepared"]),
    Case::new("data_prepared_at_another_size", |sb| {
        sb.trained_run("run");
        let photos = sb.photos("my-photos");
        let mut o = data::prep_options(&photos, &sb.path("prepared"));
        o.size = 48;
        lesion::prep::run(&o).unwrap();
        eval("run", "prepared")
    })
    .exits(2)
    .stderr(&[&["prepared"], &["image size"], &["--size 32"]])
    .unchanged(&["run", "prepared"]),
    Case::new("tampered_shard", |sb| {
        run_and_data(sb);
        flip_byte(&sb.path("prepared/test/shard-00000.safetensors"), -9);
        eval("run", "prepared")
    })
    .exits(2)
    .stderr(&[&["shard-00000"], &["SHA-256"]])
    .unchanged(&["run", "prepared"]),
    Case::new("run_folder_that_is_not_a_run", |sb| {
        sb.prepared("prepared");
        sb.write("documents/best.safetensors", "not a checkpoint");
        eval("documents", "prepared")
    })
    .exits(2)
    .stderr(&[&["documents"], &["config.json", "not a lesion run"]])
    .unchanged(&["documents", "prepared"]),
    Case::new("checkpoint_without_tensors", |sb| {
        run_and_data(sb);
        // A well-formed safetensors file that holds nothing.
        sb.write("run/empty.safetensors", b"\x08\0\0\0\0\0\0\0{}      ");
        eval("run/empty.safetensors", "prepared")
    })
    .exits(2)
    .stderr(&[
        &["empty.safetensors"],
        &["missing", "not a lesion checkpoint"],
    ])
    .unchanged(&["run", "prepared"]),
    Case::new("conflicting_threshold_options", |sb| {
        run_and_data(sb);
        eval("run", "prepared").args([
            "--threshold-method",
            "youden",
            "--target-sensitivity",
            "0.9",
        ])
    })
    .exits(2)
    .stderr(&[&["--target-sensitivity"]])
    .unchanged(&["run", "prepared"]),
    Case::new("malignant_names_a_class_the_run_lacks", |sb| {
        run_and_data(sb);
        eval("run", "prepared").args(["--malignant", "melanoma"])
    })
    .exits(2)
    .stderr(&[&["melanoma"], &["Benign, Malignant"]])
    .unchanged(&["run", "prepared"]),
    Case::new("missing_data_option", |_| Invocation::new(["--run", "run"]))
        .exits(2)
        .stderr(&[&["--data"]]),
    Case::new("unknown_option", |_| {
        Invocation::new(["--run", "r", "--data", "d", "--frobnicate"])
    })
    .exits(2)
    .stderr(&[&["--frobnicate"]]),
    Case::new("help", |_| Invocation::new(["--help"])).output(&[&["Usage"], &["--force"]]),
];

#[test]
fn hostile_inputs() {
    testkit::run_table(BIN, CASES);
}

fn options(sb: &Sandbox) -> EvalOptions {
    EvalOptions {
        run: sb.path("run"),
        data: sb.path("prepared"),
        bootstrap: 0,
        device: "cpu".into(),
        progress: false,
        ..EvalOptions::default()
    }
}

fn evaluated(sb: &Sandbox, _: &Output) -> Result<(), String> {
    let metrics = sb.path("run/eval-test/metrics.json");
    let v: serde_json::Value = serde_json::from_slice(
        &fs::read(&metrics).map_err(|e| format!("{}: {e}", metrics.display()))?,
    )
    .map_err(|e| format!("{}: {e}", metrics.display()))?;
    match v["split"].as_str() {
        Some("test") => Ok(()),
        other => Err(format!("metrics.json has split {other:?}")),
    }
}

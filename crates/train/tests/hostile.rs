//! Hostile but fair inputs to `lesion-train`: one row per case, run by
//! `testkit::run_table` (see `crates/testkit/src/hostile.rs` for what every row checks).
//! `LESION_HOSTILE_CASE=name cargo test -p lesion-train --test hostile` runs one case.

use std::fs;
use std::net::TcpListener;
use std::path::Path;

use testkit::data::{self, flip_byte, jpeg};
use testkit::{Case, Invocation, Output, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-train");

/// One quick CPU epoch from random weights.
const FAST: [(&str, &str); 4] = [
    ("--epochs", "1"),
    ("--batch-size", "4"),
    ("--weights", "none"),
    ("--device", "cpu"),
];

fn train(data: &str, out: &str) -> Invocation {
    train_with(data, out, &[])
}

/// [`train`] with some of its options replaced or added.
fn train_with(data: &str, out: &str, options: &[(&str, &str)]) -> Invocation {
    let mut inv = Invocation::new(["--data", data, "--out", out, "-q"]);
    for (k, v) in FAST {
        if !options.iter().any(|(o, _)| *o == k) {
            inv = inv.args([k, v]);
        }
    }
    for (k, v) in options {
        inv = inv.args([k, v]);
    }
    inv
}

fn train_with_weights(data: &str, out: &str, weights: &str) -> Invocation {
    train_with(data, out, &[("--weights", weights)])
}

fn resume(run: &str) -> Invocation {
    Invocation::new(["--resume", run, "-q"])
}

const MISSING: &[&str] = &["does not exist", "no such", "not found", "missing"];
const NON_FINITE: &[&str] = &["nan", "non-finite", "not finite", "infinite"];

const CASES: &[Case] = &[
    // Defect 5: bad input exits 2.
    Case::new("data_missing", |_| train("nowhere", "run"))
        .exits(2)
        .stderr(&[&["nowhere"], MISSING])
        .check(no_run),
    Case::new("data_is_not_prepared", |sb| {
        sb.photos("my-photos");
        train("my-photos", "run")
    })
    .exits(2)
    .stderr(&[&["my-photos"], &["manifest", "not a prepared"]])
    .unchanged(&["my-photos"])
    .check(no_run),
    Case::new("deleted_shard", |sb| {
        sb.prepared("prepared");
        fs::remove_file(sb.path("prepared/train/shard-v0-00000.safetensors")).unwrap();
        train("prepared", "run")
    })
    .exits(2)
    .stderr(&[&["shard-v0-00000"], MISSING])
    .unchanged(&["prepared"])
    .check(no_run),
    Case::new("weights_file_missing", |sb| {
        sb.prepared("prepared");
        train_with_weights("prepared", "run", "nothere.safetensors")
    })
    .exits(2)
    .stderr(&[&["nothere.safetensors"], MISSING])
    .unchanged(&["prepared"])
    .check(no_run),
    Case::new("resume_missing_folder", |_| resume("nowhere"))
        .exits(2)
        .stderr(&[&["nowhere"], MISSING]),
    // Defect 3: a Hub that accepts the connection and never answers.
    Case::new("hub_that_never_answers", |sb| {
        sb.prepared("prepared");
        // Connections complete in the listen backlog and are never read or answered.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("127.0.0.1:{}", silent.local_addr().unwrap().port());
        train_with_weights("prepared", "run", "imagenet")
            .env("HF_ENDPOINT", format!("http://{endpoint}"))
            .env("LESION_HUB_TIMEOUT_SECS", "2")
            .expect_stderr(endpoint)
            .keep(silent)
    })
    .exits_one_of(&[1, 2])
    .stderr(&[
        &[
            "timed out",
            "timeout",
            "did not answer",
            "no answer",
            "not answer",
        ],
        &["--weights none"],
    ])
    .unchanged(&["prepared"])
    .check(no_run)
    .timeout_s(60),
    Case::new("hub_offline_fails_at_once", |sb| {
        sb.prepared("prepared");
        train_with_weights("prepared", "run", "imagenet").env("HF_HUB_OFFLINE", "1")
    })
    .exits_one_of(&[1, 2])
    .stderr(&[
        &["HF_HUB_OFFLINE"],
        &["--weights none"],
        &["--weights PATH"],
    ])
    .unchanged(&["prepared"])
    .check(no_run)
    .timeout_s(30),
    Case::new("hub_that_refuses_connections", |sb| {
        sb.prepared("prepared");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        train_with_weights("prepared", "run", "imagenet")
            .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .env("LESION_HUB_TIMEOUT_SECS", "2")
            .expect_stderr(format!("127.0.0.1:{port}"))
    })
    .exits_one_of(&[1, 2])
    .stderr(&[&["could not be reached", "refused"], &["--weights none"]])
    .check(no_run)
    .timeout_s(60),
    // Defect 6: divergence names only files that exist; NaN weights are refused.
    Case::new("divergence_names_only_files_that_exist", |sb| {
        sb.prepared("prepared");
        train_with(
            "prepared",
            "run",
            &[("--lr-head", "1e30"), ("--batch-size", "2")],
        )
    })
    .exits_one_of(&[1, 2])
    .stderr(&[&["diverged"], &["learning rate", "--lr"]])
    .unchanged(&["prepared"])
    .check(|sb, out| {
        for file in ["last.safetensors", "best.safetensors"] {
            if out.stderr.contains(file) && !sb.path("run").join(file).is_file() {
                return Err(format!("the message names {file}, which does not exist"));
            }
        }
        Ok(())
    }),
    Case::new("weights_with_nan_are_refused", |sb| {
        sb.prepared("prepared");
        data::write_weights(&sb.path("poisoned.safetensors"), true);
        train_with_weights("prepared", "run", "poisoned.safetensors")
    })
    .exits(2)
    .stderr(&[&["poisoned.safetensors"], NON_FINITE])
    .unchanged(&["prepared", "poisoned.safetensors"])
    .check(no_run),
    Case::new("weights_file_that_is_not_safetensors", |sb| {
        sb.prepared("prepared");
        sb.write("fake.safetensors", jpeg(0, 1));
        train_with_weights("prepared", "run", "fake.safetensors")
    })
    .exits(2)
    .stderr(&[&["fake.safetensors"], &["safetensors"]])
    .unchanged(&["prepared", "fake.safetensors"])
    .check(no_run),
    Case::new("good_weights_file_is_used", |sb| {
        sb.prepared("prepared");
        data::write_weights(&sb.path("start.safetensors"), false);
        train_with_weights("prepared", "run", "start.safetensors")
    })
    .unchanged(&["prepared", "start.safetensors"])
    .check(run_complete),
    // Defects 7 and 9: what resume does with options agrees with what the folder shows.
    Case::new("resume_with_a_new_head_learning_rate", |sb| {
        sb.trained_run("run");
        resume("run").args(["--epochs", "2", "--lr-head", "0.5"])
    })
    .exits_one_of(&[0, 2])
    .check(|sb, out| match out.code {
        Some(2) if out.stderr.contains("--lr-head") => Ok(()),
        Some(2) => Err("refused without naming --lr-head".into()),
        _ => {
            let cfg = read_json(&sb.path("run/config.json"))?;
            match cfg["train"]["lr_head"].as_f64() {
                Some(0.5) => Ok(()),
                other => Err(format!(
                    "--lr-head 0.5 accepted but config.json says {other:?}"
                )),
            }
        }
    }),
    Case::new("resume_refuses_a_new_batch_size", |sb| {
        sb.trained_run("run");
        resume("run").args(["--epochs", "2", "--batch-size", "8"])
    })
    .exits(2)
    .stderr(&[&["--batch-size"]])
    .unchanged(&["run"]),
    Case::new("resume_refuses_new_data", |sb| {
        sb.trained_run("run");
        sb.prepared("prepared");
        resume("run").args(["--data", "prepared"])
    })
    .exits(2)
    .stderr(&[&["--data"]])
    .unchanged(&["run", "prepared"]),
    Case::new("resume_of_a_finished_run_adds_epochs", |sb| {
        sb.trained_run("run");
        resume("run").args(["--epochs", "2"])
    })
    .check(|sb, _| {
        let history = fs::read_to_string(sb.path("run/history.csv")).map_err(|e| e.to_string())?;
        match history.lines().count() {
            3 => Ok(()),
            n => Err(format!(
                "history.csv has {n} lines after 2 epochs:\n{history}"
            )),
        }
    }),
    // Defect 8: temporary files of dead processes are cleaned up.
    Case::new("stale_temp_files_of_a_dead_process_are_removed", |sb| {
        sb.trained_run("run");
        let pid = data::dead_pid();
        sb.write(
            format!("run/.last.safetensors.tmp-{pid}-0"),
            vec![0u8; 1 << 20],
        );
        sb.write(format!("run/.curves.png.tmp-{pid}-1"), vec![0u8; 1024]);
        resume("run").args(["--epochs", "2"])
    })
    .check(|sb, _| {
        let left = entries_containing(&sb.path("run"), ".tmp-");
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("temporary files survived: {left:?}")),
        }
    }),
    Case::new("temp_file_of_a_live_process_is_kept", |sb| {
        sb.trained_run("run");
        sb.write(format!("run/{}", live_temp()), b"in use");
        resume("run").args(["--epochs", "2"])
    })
    .check(|sb, _| match fs::read(sb.path("run").join(live_temp())) {
        Ok(b) if b == b"in use" => Ok(()),
        _ => Err(format!("{} was removed or changed", live_temp())),
    }),
    // What already works, kept from regressing.
    Case::new("trains_one_epoch", |sb| {
        sb.prepared("prepared");
        train("prepared", "run")
    })
    .output(&[&["run folder"]])
    .unchanged(&["prepared"])
    .check(run_complete),
    Case::new("tampered_shard_is_caught_before_training", |sb| {
        sb.prepared("prepared");
        flip_byte(&sb.path("prepared/train/shard-v0-00000.safetensors"), -5);
        train("prepared", "run")
    })
    .exits(2)
    .stderr(&[&["shard-v0-00000"], &["SHA-256"]])
    .unchanged(&["prepared"])
    .check(no_run),
    Case::new("force_refuses_a_folder_that_is_not_a_run", |sb| {
        sb.prepared("prepared");
        sb.write("documents/thesis.txt", "chapter 1");
        train("prepared", "documents").arg("--force")
    })
    .exits(2)
    .stderr(&[&["documents"], &["not a lesion run", "not a run"]])
    .unchanged(&["prepared", "documents"]),
    Case::new("existing_run_without_force", |sb| {
        sb.prepared("prepared");
        sb.trained_run("run");
        train("prepared", "run")
    })
    .exits(2)
    .stderr(&[&["run"], &["already exists"]])
    .unchanged(&["prepared", "run"]),
    Case::new("negative_learning_rate", |sb| {
        sb.prepared("prepared");
        train("prepared", "run").arg("--lr-head=-1")
    })
    .exits(2)
    .stderr(&[&["--lr-head"]])
    .check(no_run),
    // Options for imbalanced data: a bad value exits 2 naming the option, before any run.
    Case::new("label_smoothing_of_one", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--label-smoothing", "1")])
    })
    .exits(2)
    .stderr(&[&["--label-smoothing"], &["[0, 1)"]])
    .check(no_run),
    Case::new("label_smoothing_not_a_number", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--label-smoothing", "NaN")])
    })
    .exits(2)
    .stderr(&[&["--label-smoothing"]])
    .check(no_run),
    Case::new("unknown_schedule", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--schedule", "linear")])
    })
    .exits(2)
    .stderr(&[&["--schedule"], &["linear"]])
    .check(no_run),
    Case::new("unknown_sampler", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--sampler", "weighted")])
    })
    .exits(2)
    .stderr(&[&["--sampler"], &["weighted"]])
    .check(no_run),
    Case::new("unknown_class_weights", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--class-weights", "inverse")])
    })
    .exits(2)
    .stderr(&[&["--class-weights"], &["inverse"]])
    .check(no_run),
    Case::new("unknown_recipe", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--recipe", "best")])
    })
    .exits(2)
    .stderr(&[&["--recipe"], &["best"]])
    .check(no_run),
    Case::new("unknown_monitor", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--monitor", "val_f1")])
    })
    .exits(2)
    .stderr(&[&["--monitor"], &["val_f1"]])
    .check(no_run),
    Case::new("warmup_without_a_schedule", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--warmup-epochs", "1")])
    })
    .exits(2)
    .stderr(&[&["--warmup-epochs"], &["--schedule"]])
    .check(no_run),
    Case::new("warmup_as_long_as_the_run", |sb| {
        sb.prepared("prepared");
        train_with(
            "prepared",
            "run",
            &[("--schedule", "cosine"), ("--warmup-epochs", "1")],
        )
    })
    .exits(2)
    .stderr(&[&["--warmup-epochs 1"], &["--epochs 1"]])
    .check(no_run),
    Case::new("resume_refuses_a_new_schedule", |sb| {
        sb.trained_run("run");
        resume("run").args(["--epochs", "2", "--schedule", "cosine"])
    })
    .exits(2)
    .stderr(&[&["--schedule"], &["--resume"]])
    .unchanged(&["run"]),
    Case::new("resume_of_a_scheduled_run_refuses_new_epochs", |sb| {
        sb.trained_run("run");
        let path = sb.path("run/config.json");
        let mut cfg = read_json(&path).unwrap();
        cfg["train"]["schedule"] = "cosine".into();
        sb.write("run/config.json", serde_json::to_vec_pretty(&cfg).unwrap());
        resume("run").args(["--epochs", "3"])
    })
    .exits(2)
    .stderr(&[&["--epochs 3"], &["cosine"]])
    .unchanged(&["run"]),
    Case::new("trains_with_a_balanced_sampler_and_a_schedule", |sb| {
        sb.prepared("prepared");
        train_with(
            "prepared",
            "run",
            &[
                ("--epochs", "2"),
                ("--sampler", "balanced"),
                ("--schedule", "onecycle"),
                ("--monitor", "val_balanced_acc"),
            ],
        )
    })
    .output(&[&["val_balanced_acc"]])
    .unchanged(&["prepared"])
    .check(|sb, out| {
        run_complete(sb, out)?;
        let cfg = read_json(&sb.path("run/config.json"))?;
        let t = &cfg["train"];
        match (&t["sampler"], &t["schedule"], &t["monitor"]) {
            (s, k, m) if s == "balanced" && k == "onecycle" && m == "val_balanced_acc" => {}
            other => return Err(format!("config.json records {other:?}")),
        }
        let history = fs::read_to_string(sb.path("run/history.csv")).map_err(|e| e.to_string())?;
        match history.lines().next() {
            Some(h) if h.contains(",val_balanced_acc,") && history.lines().count() == 3 => Ok(()),
            _ => Err(format!("history.csv:\n{history}")),
        }
    }),
    Case::new("device_not_in_this_build", |sb| {
        sb.prepared("prepared");
        train_with("prepared", "run", &[("--device", "metal")])
    })
    .exits(2)
    .stderr(&[&["metal"], &["unavailable"]])
    .check(no_run),
    Case::new("missing_data_option", |_| Invocation::new(["--out", "run"]))
        .exits(2)
        .stderr(&[&["--data"]]),
    Case::new("unknown_option", |_| {
        Invocation::new(["--data", "d", "--out", "r", "--frobnicate"])
    })
    .exits(2)
    .stderr(&[&["--frobnicate"]]),
    Case::new("help", |_| Invocation::new(["--help"])).output(&[&["Usage"], &["--resume"]]),
];

#[test]
fn hostile_inputs() {
    testkit::run_table(BIN, CASES);
}

fn live_temp() -> String {
    format!(".history.csv.tmp-{}-0", std::process::id())
}

/// A refused run leaves no run folder behind.
fn no_run(sb: &Sandbox, _: &Output) -> Result<(), String> {
    match sb.path("run").exists() {
        false => Ok(()),
        true => Err("a run folder was created".into()),
    }
}

fn run_complete(sb: &Sandbox, _: &Output) -> Result<(), String> {
    let run = sb.path("run");
    let missing: Vec<&str> = [
        "config.json",
        "best.safetensors",
        "last.safetensors",
        "history.csv",
        "curves.png",
    ]
    .into_iter()
    .filter(|f| !run.join(f).is_file())
    .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(format!("the run lacks {missing:?}")),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn entries_containing(dir: &Path, part: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

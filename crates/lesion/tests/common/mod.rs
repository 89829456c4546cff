//! Helpers shared by the integration tests; each test file includes them with `mod common;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lesion::prep::PrepSummary;
use lesion::split::Split;
use lesion::train::{Monitor, TrainConfig};

/// The files every finished training run holds.
pub const RUN_FILES: [&str; 5] = [
    "config.json",
    "best.safetensors",
    "last.safetensors",
    "history.csv",
    "curves.png",
];

/// The project's `shared/` folder (fixtures and real data, never committed):
/// `$LESION_SHARED_DIR` when set, else `shared/` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("LESION_SHARED_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A file of `shared/fixtures/`, checked to exist (tests that need it are `#[ignore]`d, so a
/// missing fixture is a setup problem worth a clear message).
pub fn fixture(name: &str) -> PathBuf {
    let path = shared_dir().join("fixtures").join(name);
    assert!(
        path.is_file(),
        "fixture {} not found; set LESION_SHARED_DIR to the shared folder",
        path.display()
    );
    path
}

/// Images per class of each split, as prep reported them.
pub fn split_counts(summary: &PrepSummary) -> Vec<(Split, Vec<usize>)> {
    summary
        .counts
        .iter()
        .map(|c| (c.split, c.per_class.clone()))
        .collect()
}

/// A CPU training run from random initialisation, selected on validation AUC.
pub fn cpu_train_config(data: &Path, out: &Path, epochs: usize, batch_size: usize) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs,
        batch_size,
        monitor: Monitor::ValAuc,
        weights: "none".into(),
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// `history.csv` without its two timing columns, which differ between runs.
pub fn history_without_timings(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
        .collect()
}

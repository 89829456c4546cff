//! Helpers shared by the integration tests; each test file includes them with `mod common;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lesion::prep::PrepSummary;
use lesion::split::Split;
use lesion::train::{Monitor, TrainConfig};

// testkit's helpers for the workspace and `shared/`, compiled into these tests: `lesion`
// cannot dev-depend on testkit, which depends on it. The file uses only std, and its
// `CARGO_MANIFEST_DIR` is `crates/<name>` in either crate.
#[path = "../../../testkit/src/shared.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::{history_without_timings, isic2017, repo, shared_dir};

/// The files every finished training run holds.
pub const RUN_FILES: [&str; 5] = [
    "config.json",
    "best.safetensors",
    "last.safetensors",
    "history.csv",
    "curves.png",
];

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

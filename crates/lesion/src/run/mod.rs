//! The run folder: what `lesion-train` writes and `lesion-eval`, `lesion-predict` and
//! `lesion-serve` read. This module owns its layout, the names and formats of its files,
//! creating it and opening it again, as [`crate::manifest`] and [`crate::shard`] own the
//! prepared-data folder; the stages go through it rather than naming files themselves.
//!
//! ```text
//! runs/<name>/               contents                                      written by
//! ├── config.json            RunConfig: options, inputs, preprocessing     train (start)
//! ├── history.csv            one EpochRecord per epoch                     train (each epoch)
//! ├── curves.png             loss and accuracy per epoch                   train (each epoch)
//! ├── best.safetensors       best epoch's checkpoint, its val predictions  train (improved)
//! ├── last.safetensors       latest epoch's checkpoint: the resume point   train (each epoch)
//! ├── threshold.json         Threshold chosen on val for best.safetensors  eval
//! ├── threshold-<stem>.json  the same for <stem>.safetensors               eval
//! ├── eval-<split>/          evaluation of best.safetensors (crate::eval)  eval
//! └── eval-<split>-<stem>/   evaluation of <stem>.safetensors              eval
//! ```
//!
//! `lesion-train --resume` continues a run from `last.safetensors` and `history.csv`, and
//! rewrites `config.json` when an option that may change on resume changes.
//!
//! Atomicity: every file is written to a temporary sibling and renamed into place
//! ([`crate::fsutil::write_atomic`]), so a kill leaves the previous version or the new one,
//! never a mix. After each epoch train writes `best.safetensors`, `last.safetensors`
//! (the resume point), then `history.csv` and `curves.png`, so the history never shows an
//! epoch that cannot be resumed from; the checkpoints carry their epoch's history row, which
//! resuming restores when a kill came before the history was written. An evaluation folder
//! is built in a staging folder and renamed into place whole; its threshold file is written
//! only after that, so prediction never uses the threshold of an unfinished evaluation.
//!
//! Runs whose `config.json` lacks `resize` (written by a `lesion` that did not record it)
//! still open: [`RunConfig::resize`] is then `None`, and [`Run::resize_policy`] reads the
//! policy from the manifest of the prepared dataset at `train.data`, falling back to
//! `stretch` (prep's default) with a warning when that manifest cannot be read. A run that
//! records it is read without its prepared data.
//!
//! Submodules: [`config`] (`config.json`), [`checkpoint`] (the safetensors files),
//! [`history`] (`history.csv`), [`threshold`] (`threshold*.json`), [`fixtures`] (an
//! untrained run folder for tests and benchmarks).

pub mod checkpoint;
pub mod config;
pub mod fixtures;
pub mod history;
mod open;
pub mod threshold;

use std::path::Path;

use crate::fsutil::{self, read_json, write_json_atomic, OutputKind};
use crate::split::Split;
use crate::{Error, Result};

pub use config::{Monitor, RunConfig, TrainConfig};
pub use history::EpochRecord;
pub use open::{Run, MIN_IMAGE_SIZE};
pub use threshold::{
    read_threshold, read_threshold_file, threshold_path, Threshold, ThresholdMethod,
};

/// [`RunConfig`] as JSON.
pub const CONFIG_FILE: &str = "config.json";
/// The checkpoint of the best epoch; the one evaluation and prediction use by default.
pub const BEST_FILE: &str = "best.safetensors";
/// The checkpoint of the latest epoch, from which a run resumes.
pub const LAST_FILE: &str = "last.safetensors";
/// The per-epoch [`EpochRecord`]s.
pub const HISTORY_FILE: &str = "history.csv";
/// Loss and accuracy curves of the epochs so far.
pub const CURVES_FILE: &str = "curves.png";
/// The [`Threshold`] of the best checkpoint.
pub const THRESHOLD_FILE: &str = "threshold.json";

/// Name of the folder, inside the run folder, that holds the evaluation of `checkpoint` (a
/// file of the run) on `split`: `eval-<split>` for `best.safetensors`,
/// `eval-<split>-<stem>` for any other.
pub fn eval_dir_name(split: Split, checkpoint: &Path) -> String {
    let suffix = threshold::checkpoint_suffix(checkpoint)
        .map(|s| format!("-{s}"))
        .unwrap_or_default();
    format!("eval-{}{suffix}", split.name())
}

/// What a run folder is, for `--force`: one whose `config.json` train wrote.
pub const OUTPUT_KIND: OutputKind = OutputKind {
    what: "a lesion run folder (one with the config.json lesion-train writes)",
    is_ours: is_run_folder,
};

fn is_run_folder(dir: &Path) -> bool {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Marker {
        manifest_sha256: String,
        train: serde_json::Value,
    }
    read_json::<Marker>(dir.join(CONFIG_FILE)).is_ok()
}

/// Creates an empty run folder; an existing one is replaced only with `force`, and only if
/// it is a run folder or empty, never when it is, holds or lies inside one of `inputs`
/// ([`fsutil::check_output`]: `--force` cannot delete an unrelated directory).
pub fn create(dir: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    fsutil::check_output(dir, force, &OUTPUT_KIND, inputs)?;
    if std::fs::symlink_metadata(dir).is_ok() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Writes `<dir>/config.json` atomically.
pub fn write_config(dir: &Path, config: &RunConfig) -> Result<()> {
    write_json_atomic(dir.join(CONFIG_FILE), config)
}

/// Reads `<dir>/config.json` as it is, without the checks of [`Run::open`] and
/// [`Run::resolve`] (resuming reads its own run).
pub fn read_config(dir: &Path) -> Result<RunConfig> {
    let path = fsutil::marker_file(dir, CONFIG_FILE, || {
        format!("not a lesion run folder (no {CONFIG_FILE}; lesion-train writes it)")
    })?;
    read_json(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_folders_follow_the_checkpoint() {
        let run = Path::new("runs/x");
        assert_eq!(
            eval_dir_name(Split::Test, &run.join(BEST_FILE)),
            "eval-test"
        );
        assert_eq!(
            eval_dir_name(Split::Val, &run.join(LAST_FILE)),
            "eval-val-last"
        );
    }

    #[test]
    fn create_refuses_to_replace_what_is_not_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r");
        create(&run, false, &[]).unwrap();
        // Empty: may be used.
        create(&run, false, &[]).unwrap();
        create(&run, true, &[]).unwrap();
        std::fs::write(run.join("notes.txt"), "mine").unwrap();
        for force in [false, true] {
            let err = create(&run, force, &[]).unwrap_err();
            assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(msg.contains("is not a lesion run folder"), "{msg}");
        }
        // A config.json that is not a run's does not make it one.
        std::fs::write(run.join(CONFIG_FILE), "{}").unwrap();
        assert!(create(&run, true, &[]).is_err());
        assert!(run.join("notes.txt").is_file());
        std::fs::write(
            run.join(CONFIG_FILE),
            r#"{"manifest_sha256": "00", "train": {}}"#,
        )
        .unwrap();
        assert!(matches!(
            create(&run, false, &[]),
            Err(Error::OutputExists { .. })
        ));
        create(&run, true, &[]).unwrap();
        assert!(!run.join("notes.txt").exists());
    }

    #[test]
    fn create_never_replaces_a_run_holding_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r");
        let data = run.join("prepared");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("manifest.json"), "{}").unwrap();
        std::fs::write(
            run.join(CONFIG_FILE),
            r#"{"manifest_sha256": "00", "train": {}}"#,
        )
        .unwrap();
        let err = create(&run, true, &[&data]).unwrap_err();
        assert!(matches!(err, Error::NotOurOutput { .. }), "{err:?}");
        assert!(err.to_string().contains("holds the input"), "{err}");
        assert!(data.join("manifest.json").is_file());
        let err = create(&data.join("run"), true, &[&data]).unwrap_err();
        assert!(err.to_string().contains("inside the input folder"), "{err}");
        assert!(!data.join("run").exists());
    }
}

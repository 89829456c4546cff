//! The workspace's own files and the project's `shared/` folder (real data, never committed),
//! for the tests marked `#[ignore]` that read it, and helpers those tests share.
//! `lesion`'s own integration tests compile this file too (`tests/common`), so it uses only std.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (scripts are run from there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$LESION_SHARED_DIR` when set, else `shared/` beside the workspace root.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("LESION_SHARED_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo().join("../shared"),
    }
}

/// The ISIC 2017 folder (`Benign/`, `Malignant/`, `meta/`, `labels.csv`), checked to exist.
pub fn isic2017() -> PathBuf {
    let dir = shared_dir().join("data/isic2017-256");
    assert!(
        dir.is_dir(),
        "{} not found; set LESION_SHARED_DIR to the shared folder",
        dir.display()
    );
    dir
}

/// The rows of a run's `history.csv` without its two timing columns, which differ between
/// otherwise identical runs.
pub fn history_without_timings(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("history.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
        .collect()
}

/// Runs `scripts/<script> args...` with `$LESION_TEST_PYTHON` (default `python3`; the
/// metric checks need numpy and scikit-learn), echoing its stdout and stderr into the test's
/// output; panics when the interpreter cannot be started.
pub fn python_script(script: &str, args: &[&Path]) -> Output {
    let python = std::env::var("LESION_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(repo().join("scripts").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

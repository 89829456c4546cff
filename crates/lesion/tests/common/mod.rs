//! Helpers shared by the integration tests; each test file includes them with `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;

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

//! Test helpers of the lesion workspace (dev-only, never published).
//!
//! - [`classes`]: untrained runs with more than two classes (N logits).
//! - [`data`]: tiny but real inputs: a folder of JPEG/PNG lesion photos (64-128 px, drawn by
//!   `lesion::synth`), a prepared dataset, a one-epoch run, an untrained run, a weights file;
//!   each built once per test process and copied where a test needs it.
//! - [`tree`]: a snapshot of a folder tree (every path, non-UTF-8 names included, with the
//!   SHA-256 of every file), to prove that nothing a user owns changed.
//! - [`process`]: runs a binary with arguments and environment under a hard timeout (killed
//!   when it runs over) and returns its exit code, stdout and stderr.
//! - [`shared`]: the workspace root, the `shared/` folder and its ISIC 2017 data, for the
//!   ignored tests that read it.
//! - [`hostile`]: the table of hostile-input cases each stage binary's `tests/hostile.rs`
//!   declares, and the runner that checks every case's exit code, messages and untouched
//!   trees.

pub mod classes;
pub mod data;
pub mod hostile;
pub mod process;
pub mod shared;
pub mod tree;

pub use hostile::{run_table, Case, Invocation, Sandbox};
pub use process::Output;
pub use tree::snapshot;

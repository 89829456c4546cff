//! `manifest.json`: the description of a prepared dataset, written by `lesion-prep` and read
//! by every later stage.
//!
//! It records everything needed to reproduce or audit the data: every option, the class
//! names (their position is the label stored in shards), per-split and per-class counts,
//! normalisation constants, every shard with its SHA-256, every accepted image (path
//! relative to the input folder, class, split, content hash, and for train the augmentation
//! drawn for each view), the rejected files with reasons and the duplicate groups.
//!
//! Shard rows point back into [`Manifest::images`] through their `source_index`.
//!
//! K-fold data (`lesion-prep --folds K`, layout in [`crate::prep`]): [`Manifest::folds`] is
//! `K`, every image of the pool (all images but the test split) has `split: train` and
//! [`ImageEntry::fold`] `Some(f)`, and [`Manifest::fold_counts`] holds each fold's per-class
//! counts. [`Manifest::counts`] counts images by their `split`, so the pool is the train
//! count and the val count is 0 (the val shards hold a clean copy of the pool, selected by
//! fold when the data are read: [`crate::loader::PreparedDataset::with_fold`]). Without
//! folds these fields are absent from the file.
//!
//! A grouped split (`lesion-prep --groups`) records each image's group
//! ([`ImageEntry::group`]) and the grouping options ([`PrepRecord::groups`]); both are
//! absent otherwise.
//!
//! Input file names are stored as [`crate::fsutil::os_str_to_string`] writes them: valid
//! UTF-8 as it is, other names (and names that read like its escapes) escaped, so every
//! file keeps its own name.
//!
//! Shard paths are confined to the dataset folder: [`Manifest::load`] refuses, before any
//! shard is opened, a path that is absolute, empty, has a `.`, `..` or empty segment, a
//! backslash, a colon or a NUL. A shard that is a symbolic link is followed only when it
//! stays inside the folder (checked by [`crate::verify`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::classes::Classes;
use crate::fsutil;
use crate::image_io::ResizePolicy;
use crate::split::Split;
use crate::transforms::Augmentation;
use crate::{Error, Result};

/// File name of the manifest inside a prepared-dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of [`Manifest::format`].
pub const MANIFEST_FORMAT: &str = "lesion-prepared-dataset";
/// Version of the layout described here; bumped on incompatible changes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// The options that shaped the data (thread count and output path are left out: they do
/// not change a single byte of the result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepRecord {
    /// The input folder as given on the command line.
    pub input: String,
    pub image_size: u32,
    pub resize: ResizePolicy,
    pub val: f64,
    pub test: f64,
    pub seed: u64,
    pub shard_size: usize,
    pub views: u32,
    pub augment: bool,
    pub strict: bool,
    pub max_pixels: u64,
    /// `--folds K --no-test`: no test split was held out (`test` unused); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_test: bool,
    /// `--groups`: how images were grouped for the split; absent without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupRecord>,
}

/// The grouping options of a grouped split (`lesion-prep --groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The groups CSV file as given on the command line.
    pub file: String,
    /// Its group column.
    pub group_column: String,
    /// Its image column (the one chosen when not given).
    pub image_column: String,
    /// `--ungrouped ok`: images the file did not group were each their own group.
    pub ungrouped_ok: bool,
}

/// Channel statistics applied when batches are loaded: `(x / 255 - mean[c]) / std[c]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Image counts of one split, per class (indexed like [`Manifest::classes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub split: Split,
    pub per_class: Vec<usize>,
    pub total: usize,
}

/// Image counts of one fold of K-fold data, per class (indexed like [`Manifest::classes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldCounts {
    pub fold: u32,
    pub per_class: Vec<usize>,
    pub total: usize,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Path relative to the prepared-dataset folder, `/`-separated, never leaving it.
    pub file: String,
    pub split: Split,
    pub view: u32,
    pub count: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// One accepted input image. Its position in [`Manifest::images`] is its source index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Path relative to the input folder, `/`-separated, names as
    /// [`crate::fsutil::os_str_to_string`] writes them.
    pub path: String,
    /// Class index.
    pub class: u8,
    pub split: Split,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size of the decoded original, before resizing.
    pub width: u32,
    pub height: u32,
    /// Train only, with augmentation on: the augmentation drawn for view `v` at position `v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentations: Option<Vec<Augmentation>>,
    /// K-fold data only: the fold (`0..K`) of a pool image; `None` for test images and
    /// for data without folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u32>,
    /// With `--groups`: the image's group as the groups file names it (`None` when the
    /// file gave it none, or without `--groups`). Every image of a group is in one split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A file of the input folder that was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedFile {
    /// Path relative to the input folder, like [`ImageEntry::path`].
    pub path: String,
    pub reason: String,
}

/// Byte-identical input files (same class; copies across class folders are rejected).
/// All members share one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuplicateGroup {
    pub sha256: String,
    /// Paths relative to the input folder.
    pub paths: Vec<String>,
    /// Source indices of the members.
    pub indices: Vec<u32>,
    pub split: Split,
    /// K-fold data: the fold of the members (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u32>,
}

/// How one folder of the input became a class: recorded for every folder when a class
/// mapping (`--classes`, `--group`) is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderClass {
    /// The folder's name, as [`crate::fsutil::os_str_to_string`] writes it.
    pub folder: String,
    /// The class its images were filed under; `None` (`null`) when it was skipped.
    pub class: Option<String>,
    /// Files found below it, rejected ones included (0 when skipped: it is not read).
    pub files: usize,
    /// Images accepted from it.
    pub images: usize,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Version of the `lesion` crate that wrote it.
    pub crate_version: String,
    /// Class names; a class's position is its label. With two classes label 1 is the
    /// positive class.
    pub classes: Vec<String>,
    /// For more than two classes, the ones that form the malignant group (binary view of
    /// evaluation and prediction); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub malignant: Vec<String>,
    /// With a class mapping, every folder of the input (in name order) with its class or
    /// `None` when skipped; empty when the classes are the folders themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<FolderClass>,
    pub image_size: u32,
    pub resize: ResizePolicy,
    /// Number of augmented views of each training image (1 when augmentation is off).
    pub views: u32,
    pub augment: bool,
    pub seed: u64,
    pub options: PrepRecord,
    pub normalization: Normalization,
    /// Images per split (by [`ImageEntry::split`]; with folds the pool counts as train).
    pub counts: Vec<SplitCounts>,
    /// Number of folds of the pool; 0: none (then absent from the file).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folds: u32,
    /// With folds, the images of each fold `0..folds`, in fold order; else empty (absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold_counts: Vec<FoldCounts>,
    pub shards: Vec<ShardEntry>,
    pub images: Vec<ImageEntry>,
    pub rejected: Vec<RejectedFile>,
    pub duplicates: Vec<DuplicateGroup>,
}

impl Manifest {
    /// Reads `<dir>/manifest.json` and checks its format and version.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = fsutil::marker_file(dir, MANIFEST_FILE, || {
            format!(
                "not a prepared dataset (no {MANIFEST_FILE}); \
                 `lesion-prep IMAGES --out {}` writes one",
                dir.display()
            )
        })?;
        let m: Manifest = fsutil::read_json(&path)?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::BadArtifact {
                path,
                reason: format!("not a prepared-dataset manifest (format `{}`)", m.format),
            });
        }
        if m.format_version != MANIFEST_FORMAT_VERSION {
            return Err(Error::BadArtifact {
                path,
                reason: format!(
                    "manifest format version {}, this build reads {MANIFEST_FORMAT_VERSION}",
                    m.format_version
                ),
            });
        }
        for f in &m.folders {
            if let Some(class) = f.class.as_ref().filter(|c| !m.classes.contains(c)) {
                return Err(Error::BadArtifact {
                    path,
                    reason: format!(
                        "folder `{}` is filed under class `{class}`, which is not one of the \
                         classes {}",
                        f.folder,
                        m.classes.join(", ")
                    ),
                });
            }
        }
        for (k, entry) in m.shards.iter().enumerate() {
            if let Err(why) = check_shard_path(&entry.file) {
                return Err(Error::BadArtifact {
                    path,
                    reason: format!(
                        "shard {k} (`{}`) {why}; shard paths must name a file inside the \
                         dataset folder",
                        entry.file.escape_debug()
                    ),
                });
            }
        }
        Ok(m)
    }

    /// Writes `<dir>/manifest.json` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        fsutil::write_json_atomic(dir.as_ref().join(MANIFEST_FILE), self)
    }

    /// The classes and their positive group, checked.
    pub fn classes(&self) -> Result<Classes> {
        Classes::new(self.classes.clone(), &self.malignant)
    }

    /// The folders a class mapping skipped, in name order.
    pub fn skipped_folders(&self) -> impl Iterator<Item = &str> {
        self.folders
            .iter()
            .filter(|f| f.class.is_none())
            .map(|f| f.folder.as_str())
    }

    /// Counts of one split.
    pub fn counts(&self, split: Split) -> Option<&SplitCounts> {
        self.counts.iter().find(|c| c.split == split)
    }

    /// Counts of one fold (K-fold data only).
    pub fn fold_counts(&self, fold: u32) -> Option<&FoldCounts> {
        self.fold_counts.iter().find(|c| c.fold == fold)
    }

    /// Shards of `split` (and, for train, `view`), in row order.
    pub fn shards_of(&self, split: Split, view: u32) -> impl Iterator<Item = &ShardEntry> {
        self.shards
            .iter()
            .filter(move |s| s.split == split && s.view == view)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why a shard path from a manifest could name something outside the dataset folder.
fn check_shard_path(file: &str) -> std::result::Result<(), &'static str> {
    if file.is_empty() {
        return Err("is empty");
    }
    if file.starts_with('/') || Path::new(file).is_absolute() {
        return Err("is absolute");
    }
    if file.contains(['\\', ':', '\0']) {
        return Err("holds a backslash, colon or NUL");
    }
    for segment in file.split('/') {
        match segment {
            ".." => return Err("leaves the dataset folder (`..`)"),
            "" | "." => return Err("has an empty or `.` segment"),
            _ => {}
        }
    }
    if !Path::new(file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err("is not a plain relative path");
    }
    Ok(())
}

/// SHA-256 of `<dir>/manifest.json`: identifies a prepared dataset (the manifest lists
/// every shard's hash), so later stages record it to tie their results to their data.
pub fn manifest_sha256(dir: impl AsRef<Path>) -> Result<String> {
    fsutil::sha256_file(dir.as_ref().join(MANIFEST_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_err(dir: &Path) -> Error {
        Manifest::load(dir).unwrap_err()
    }

    #[test]
    fn a_folder_that_is_not_prepared_is_named_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = load_err(&tmp.path().join("nope"));
        assert_eq!(
            missing.to_string(),
            format!("{}: no such folder", tmp.path().join("nope").display())
        );
        assert_eq!(missing.exit_code(), 2);

        let empty = load_err(tmp.path());
        let text = empty.to_string();
        assert!(
            text.starts_with(&format!("{}: not a prepared dataset", tmp.path().display()))
                && text.contains("lesion-prep"),
            "{text}"
        );
        assert_eq!(empty.exit_code(), 2);
    }
}

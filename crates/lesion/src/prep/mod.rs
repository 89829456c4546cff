//! The `prep` stage: from a folder of class sub-folders of images to a prepared dataset of
//! safetensors shards (see [`crate::shard`]) described by a manifest (see
//! [`crate::manifest`]).
//!
//! Classes: every folder directly inside the input is a class, named as the folder is
//! written (a folder holding files but no image, such as `meta/`, is ignored with a
//! warning; an empty one is an error); the names are sorted by their bytes and a class's
//! position is its label (`u8` in shards, so at most 256). A class mapping (`--classes FILE`, `--group FOLDER=CLASS`,
//! format in [`mapping`]) files folders under other classes, merging them, or skips them;
//! folders it does not mention keep their own name. With two classes the positive class
//! is label 1: `--positive NAME`, else the class named `Malignant` (any case), else the
//! second name. With more, `--malignant` names the classes of the malignant group. The
//! manifest records the classes, the malignant group, and with a mapping every folder's
//! class and counts; with two folders `Benign/` and `Malignant/` and no mapping it is
//! exactly what it was before classes were configurable.
//!
//! Output folder layout:
//! - `train/shard-v{view}-{k:05}.safetensors`: `views` augmented copies of the train split,
//!   the same rows in the same order in every view;
//! - `val/shard-{k:05}.safetensors`, `test/shard-{k:05}.safetensors`: never augmented;
//! - `manifest.json`, `samples.png` (three training images per class).
//!
//! Every shard holds `images` u8 `[n, 3, S, S]` (CHW), `labels` u8 `[n]` and `source_index`
//! u32 `[n]`. Rows within a split are in a seeded random order, so any window of shards is a
//! mix of classes.
//!
//! K-fold layout (`--folds K`): the test split is held out as without folds (the same
//! images for the same seed and fractions: the three-way split is drawn, then its train and
//! val parts are merged), or not at all with `--no-test`. The other images form the
//! *pool*: each has `split: train` and a fold `0..K` (`ImageEntry::fold`) from
//! [`crate::split::stratified_group_kfold`] (stratified by class, each group of
//! byte-identical files in one fold). The folder then holds
//! - `train/shard-v{view}-{k:05}.safetensors`: the augmented views of every pool image,
//!   exactly as the train split above;
//! - `val/shard-{k:05}.safetensors`: the clean (never augmented) image of every pool image,
//!   in the same row order as the train shards;
//! - `test/shard-{k:05}.safetensors` unless `--no-test` (then no `test/` folder).
//!
//! So fold `i`'s training rows are the train rows whose image has a fold other than `i`,
//! and its validation rows the val rows whose image has fold `i`
//! ([`crate::loader::PreparedDataset::with_fold`]): every fold reads one prepared folder.
//! The manifest's `counts` count images by split (the pool as train, val 0, test 0 with
//! `--no-test`); `folds` is K and `fold_counts` each fold's per-class counts.
//!
//! Grouped split (`--groups FILE.csv`, format and matching rules in [`groups`]): every image
//! gets the group the file gives it, groups joined by byte-identical copies are one group,
//! and [`crate::split::stratified_group_split`] keeps every group in one split, each class's
//! split sizes within its largest group of the ungrouped sizes. The manifest records each
//! image's group and the options. Without `--groups` nothing changes.
//!
//! Memory stays bounded whatever the dataset size: pass 1 decodes and resizes each file
//! exactly once, in parallel chunks, and appends the `S x S` RGB result (HWC u8) to a
//! staging file on disk; pass 2 splits, then reads those rows back one chunk at a time
//! (positioned reads, not a mapping, so nothing stays resident) and streams them into
//! shards. Output is byte-identical for any thread count: file order is sorted, results are
//! gathered in order, and every augmentation comes from its own RNG seeded by
//! `(seed, source index, view)`.
//!
//! The passes, one file each:
//! - `mapping.rs`: the class mapping's format and parser;
//! - `discover.rs` (pass 0): the folders, the classes and the sorted list of input files;
//! - `stage.rs` (pass 1): decoding, hashing and resizing into the staging file; rejected
//!   files and conflicting copies;
//! - `groups.rs`: the groups file of a grouped split and how its rows name images;
//! - `assign.rs` (pass 2a): splits, counts, duplicate groups, augmentation draws;
//! - `shards.rs` (pass 2b): row order, augmentation, shard writing, sample previews;
//!
//! This file holds the options, the summary and [`run`], which chains the passes in a
//! staging folder, writes the manifest and commits the folder.
//!
//! `--force` replaces only a prepared dataset (a folder whose `manifest.json` is one prep
//! writes, see [`OUTPUT_KIND`]) or an empty folder, and never the input folder, a folder
//! holding it or one inside it ([`crate::fsutil::check_output`]).

mod assign;
pub(crate) mod discover;
pub mod groups;
pub mod mapping;
mod shards;
mod stage;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::IoContext;
use crate::fsutil::{self, OutputKind, StagingDir};
use crate::image_io::{self, ResizePolicy};
use crate::manifest::{
    DuplicateGroup, FoldCounts, FolderClass, ImageEntry, Manifest, Normalization, PrepRecord,
    RejectedFile, SplitCounts, MANIFEST_FILE, MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION,
};
use crate::split::Split;
use crate::transforms::{IMAGENET_MEAN, IMAGENET_STD};
use crate::{Error, Result};
use assign::{assign_splits, count_groups, draw_augmentations};
use discover::{discover, ClassChoice};
use shards::{write_samples, write_shards};
use stage::{reject_conflicting_copies, stage_images, StagedRows, STAGED_IMAGES};

pub use crate::verify::{verify, VerifyReport};
pub use assign::augmentation_rng;
pub use groups::GroupOptions;
pub use mapping::ClassMap;
pub use shards::chw_to_image;

/// File name of the sample grid inside a prepared-dataset folder.
pub const SAMPLES_FILE: &str = "samples.png";

/// What prep's output is, for `--force`: a folder with a prepared-dataset manifest.
pub const OUTPUT_KIND: OutputKind = OutputKind {
    what: "a prepared dataset (a folder with the manifest.json lesion-prep writes)",
    is_ours: |dir| fsutil::has_format_marker(dir, MANIFEST_FILE, MANIFEST_FORMAT),
};

/// Options of [`run`]. [`PrepOptions::new`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepOptions {
    /// Folder holding one sub-folder per class.
    pub input: PathBuf,
    /// Prepared-dataset folder to create.
    pub out: PathBuf,
    /// Side of the square output images (224).
    pub size: u32,
    /// How non-square images become square (stretch).
    pub resize: ResizePolicy,
    /// Validation fraction of each class (0.2).
    pub val: f64,
    /// Test fraction of each class (0.2).
    pub test: f64,
    /// Seed of the split, the row order and the augmentations (42).
    pub seed: u64,
    /// Most images per shard file (1024).
    pub shard_size: usize,
    /// Independently augmented copies of the training split (1).
    pub views: u32,
    /// Apply the notebook's training augmentation (true).
    pub augment: bool,
    /// Make any unusable input file fatal instead of reporting and skipping it (false).
    pub strict: bool,
    /// Replace an existing output folder (false).
    pub force: bool,
    /// Decompression-bomb guard: most pixels an input image may declare.
    pub max_pixels: u64,
    /// Worker threads; `None` uses rayon's global pool (one per core).
    pub threads: Option<usize>,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
    /// Class mapping file (`--classes`, format in [`mapping`]); read when prep runs.
    pub classes_file: Option<PathBuf>,
    /// `--group FOLDER=CLASS` mappings, after the file's.
    pub groups: Vec<String>,
    /// The positive class (label 1) of two; `None`: `Malignant` if present, else the
    /// second name.
    pub positive: Option<String>,
    /// The malignant classes of more than two (names, matched ignoring case).
    pub malignant: Vec<String>,
    /// Cross-validation folds of the pool (`--folds K`, at least 2); 0: none (layout in
    /// the module docs).
    pub folds: u32,
    /// With folds: hold out no test split, every image is in the pool (`--no-test`).
    pub no_test: bool,
    /// `--groups FILE.csv` and its options: a grouped split; `None`: groups are only
    /// byte-identical copies.
    pub grouping: Option<GroupOptions>,
}

impl PrepOptions {
    pub fn new(input: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out: out.into(),
            size: 224,
            resize: ResizePolicy::default(),
            val: 0.2,
            test: 0.2,
            seed: 42,
            shard_size: 1024,
            views: 1,
            augment: true,
            strict: false,
            force: false,
            max_pixels: image_io::DEFAULT_MAX_PIXELS,
            threads: None,
            progress: true,
            classes_file: None,
            groups: Vec::new(),
            positive: None,
            malignant: Vec::new(),
            folds: 0,
            no_test: false,
            grouping: None,
        }
    }

    /// The class mapping of `--classes` and `--group` (empty without either). Reads the
    /// file.
    pub fn class_map(&self) -> Result<ClassMap> {
        let mut map = match &self.classes_file {
            Some(path) => ClassMap::parse_file(path)?,
            None => ClassMap::default(),
        };
        for g in &self.groups {
            map.push_group(g)?;
        }
        Ok(map)
    }

    /// Checks the options' values and combinations.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if !(8..=4096).contains(&self.size) {
            return bad(format!("--size {} is outside 8..=4096", self.size));
        }
        if !(self.val > 0.0 && self.val < 1.0) {
            return bad(format!("--val {} must be between 0 and 1", self.val));
        }
        if !(self.test > 0.0 && self.test < 1.0) {
            return bad(format!("--test {} must be between 0 and 1", self.test));
        }
        if self.val + self.test >= 1.0 {
            return bad(format!(
                "--val {} plus --test {} leaves no training images",
                self.val, self.test
            ));
        }
        if self.folds == 1 {
            return bad("--folds must be at least 2 (or absent: no folds)".into());
        }
        if self.no_test && self.folds == 0 {
            return bad(
                "--no-test needs --folds K: without folds the test split is the only held-out \
                 evaluation"
                    .into(),
            );
        }
        if self.shard_size == 0 {
            return bad("--shard-size must be at least 1".into());
        }
        if self.views == 0 {
            return bad("--views must be at least 1".into());
        }
        if self.views > 1 && !self.augment {
            return bad("--views > 1 needs augmentation (drop --no-augment)".into());
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1".into());
        }
        if self.max_pixels == 0 {
            return bad("--max-pixels must be at least 1".into());
        }
        if self.positive.is_some() && !self.malignant.is_empty() {
            return bad(
                "--positive (two classes) and --malignant (more than two) exclude each other"
                    .into(),
            );
        }
        let mut groups = ClassMap::default();
        for g in &self.groups {
            groups.push_group(g)?;
        }
        if let Some(g) = &self.grouping {
            if g.group_column.trim().is_empty() {
                return bad("--group-column must name a column".into());
            }
            if g.image_column.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return bad("--image-column must name a column".into());
            }
        }
        Ok(())
    }

    fn record(&self) -> PrepRecord {
        PrepRecord {
            input: fsutil::path_to_string(&self.input),
            image_size: self.size,
            resize: self.resize,
            val: self.val,
            test: self.test,
            seed: self.seed,
            shard_size: self.shard_size,
            views: self.views,
            augment: self.augment,
            strict: self.strict,
            max_pixels: self.max_pixels,
            no_test: self.no_test,
            groups: None,
        }
    }
}

/// What [`run`] did, for the final report.
#[derive(Debug, Clone)]
pub struct PrepSummary {
    /// The committed output folder.
    pub out: PathBuf,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// The malignant group of more than two classes (empty for two: label 1 is positive).
    pub malignant: Vec<String>,
    /// With a class mapping, every input folder's class (`None`: skipped) and counts.
    pub folders: Vec<FolderClass>,
    pub counts: Vec<SplitCounts>,
    /// Cross-validation folds (0: none).
    pub folds: u32,
    /// With folds, each fold's counts.
    pub fold_counts: Vec<FoldCounts>,
    /// Input files examined (accepted + rejected).
    pub files: usize,
    /// Images accepted.
    pub images: usize,
    pub views: u32,
    pub shards: usize,
    pub rejected: Vec<RejectedFile>,
    pub duplicates: Vec<DuplicateGroup>,
    /// With `--groups`: the groups of the split (those of the file joined by byte-identical
    /// copies, and each ungrouped image); `None` without `--groups`.
    pub groups: Option<usize>,
    /// Non-fatal remarks (ignored folders, skipped hidden files, ...).
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

impl PrepSummary {
    /// Input files processed per second over the whole run.
    pub fn images_per_second(&self) -> f64 {
        self.files as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl PrepSummary {
    /// The per-fold count table of K-fold data (nothing without folds).
    fn fmt_folds(&self, f: &mut fmt::Formatter<'_>, widths: &[usize]) -> fmt::Result {
        if self.fold_counts.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  {} folds of the pool (fold i: validation of `lesion-train --fold i`):",
            self.folds
        )?;
        for c in &self.fold_counts {
            write!(f, "  {:<6}", format!("fold {}", c.fold))?;
            for (n, &w) in c.per_class.iter().zip(widths) {
                write!(f, " {n:>w$}")?;
            }
            writeln!(f, " {:>8}", c.total)?;
        }
        Ok(())
    }

    /// The label of every class, its positive or malignant role, and the grouping.
    fn fmt_classes(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binary = self.classes.len() == 2;
        let labels: Vec<String> = self
            .classes
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let role = if binary && k == 1 {
                    " (positive)"
                } else if self.malignant.contains(c) {
                    " (malignant)"
                } else {
                    ""
                };
                format!("{k} {c}{role}")
            })
            .collect();
        writeln!(f, "classes: {}", labels.join(", "))?;
        if self.folders.is_empty() {
            return Ok(());
        }
        writeln!(f, "class mapping (folder: images):")?;
        let width = self
            .classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0);
        for c in &self.classes {
            let members: Vec<String> = self
                .folders
                .iter()
                .filter(|d| d.class.as_ref() == Some(c))
                .map(|d| format!("{}/: {}", d.folder, d.images))
                .collect();
            writeln!(f, "  {c:<width$} <- {}", members.join(", "))?;
        }
        let skipped: Vec<String> = self
            .folders
            .iter()
            .filter(|d| d.class.is_none())
            .map(|d| format!("{}/", d.folder))
            .collect();
        if !skipped.is_empty() {
            writeln!(f, "  skipped: {} (not read)", skipped.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for PrepSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "prepared {} images from {} files in {:.1} s ({:.0} images/s)",
            self.images,
            self.files,
            self.elapsed.as_secs_f64(),
            self.images_per_second()
        )?;
        let widths: Vec<usize> = self
            .classes
            .iter()
            .map(|c| c.chars().count().max(10))
            .collect();
        write!(f, "  {:<6}", "split")?;
        for (c, &w) in self.classes.iter().zip(&widths) {
            write!(f, " {c:>w$}")?;
        }
        writeln!(f, " {:>8}", "total")?;
        for c in &self.counts {
            // With folds the val split is the held-out fold and the train split the pool.
            let name = match c.split {
                Split::Val | Split::Test if self.folds > 0 && c.total == 0 => continue,
                Split::Train if self.folds > 0 => "pool",
                split => split.name(),
            };
            write!(f, "  {name:<6}")?;
            for (n, &w) in c.per_class.iter().zip(&widths) {
                write!(f, " {n:>w$}")?;
            }
            write!(f, " {:>8}", c.total)?;
            if c.split == Split::Train && self.views > 1 {
                write!(f, "  x {} views", self.views)?;
            }
            writeln!(f)?;
        }
        self.fmt_folds(f, &widths)?;
        self.fmt_classes(f)?;
        if self.rejected.is_empty() {
            writeln!(f, "rejected files: none")?;
        } else {
            writeln!(
                f,
                "rejected files: {} (listed in the manifest)",
                self.rejected.len()
            )?;
            for r in &self.rejected {
                writeln!(f, "  {}: {}", r.path, r.reason)?;
            }
        }
        if self.duplicates.is_empty() {
            writeln!(f, "duplicates: none")?;
        } else {
            writeln!(
                f,
                "duplicates: {} groups of byte-identical files, each kept within one split",
                self.duplicates.len()
            )?;
            for d in &self.duplicates {
                let to = match d.fold {
                    Some(fold) => format!("fold {fold}"),
                    None => d.split.name().to_string(),
                };
                writeln!(f, "  {} -> {to}", d.paths.join(" = "))?;
            }
        }
        if let Some(n) = self.groups {
            writeln!(f, "groups: {n}, each within one split")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "output: {} ({} shards)", self.out.display(), self.shards)
    }
}

/// Prepares a dataset; see the module docs. Returns after the output folder is committed.
pub fn run(opts: &PrepOptions) -> Result<PrepSummary> {
    opts.validate()?;
    match opts.threads {
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| Error::InvalidOption(format!("--threads {n}: {e}")))?;
            pool.install(|| run_in_pool(opts))
        }
        None => run_in_pool(opts),
    }
}

fn run_in_pool(opts: &PrepOptions) -> Result<PrepSummary> {
    let start = Instant::now();
    let map = opts.class_map()?;
    let choice = ClassChoice {
        map: &map,
        positive: opts.positive.as_deref(),
        malignant: &opts.malignant,
    };
    let mut discovery = discover(&opts.input, &choice)?;
    let group_table = opts.grouping.as_ref().map(groups::read_table).transpose()?;
    let mut inputs: Vec<&Path> = vec![&opts.input];
    inputs.extend(opts.grouping.as_ref().map(|g| g.file.as_path()));
    let stage = StagingDir::new(&opts.out, opts.force, OUTPUT_KIND, &inputs)?;
    let staged_path = stage.path().join(STAGED_IMAGES);
    let (images, mut rejected) = stage_images(opts, &discovery.files, &staged_path)?;
    let (mut images, staged_row) = reject_conflicting_copies(opts, images, &mut rejected)?;
    let mut record = opts.record();
    if let (Some(table), Some(grouping)) = (&group_table, &opts.grouping) {
        let attached = groups::attach(table, grouping, &mut images, &discovery.classes)?;
        discovery.warnings.extend(attached.warnings);
        record.groups = Some(groups::record(table, grouping));
    }
    let folders = if map.is_empty() {
        Vec::new()
    } else {
        count_images(std::mem::take(&mut discovery.folders), &images)
    };
    let (counts, duplicates) = assign_splits(opts, &discovery, &mut images)?;
    let fold_counts = count_folds(&images, discovery.classes.len(), opts.folds);
    let n_groups = opts.grouping.as_ref().map(|_| count_groups(&images));
    let views = draw_augmentations(opts, &mut images);

    let staged_rows = StagedRows {
        path: &staged_path,
        rows: &staged_row,
    };
    let n_classes = discovery.classes.len();
    let (shards, samples) =
        write_shards(opts, stage.path(), &images, staged_rows, views, n_classes)?;
    fs::remove_file(&staged_path).with_path(&staged_path)?;
    write_samples(
        samples,
        &discovery.classes,
        opts.size,
        &stage.path().join(SAMPLES_FILE),
    )?;

    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        format_version: MANIFEST_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        classes: discovery.classes.clone(),
        malignant: discovery.malignant.clone(),
        folders: folders.clone(),
        image_size: opts.size,
        resize: opts.resize,
        views,
        augment: opts.augment,
        seed: opts.seed,
        options: record,
        normalization: Normalization {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        },
        counts: counts.clone(),
        folds: opts.folds,
        fold_counts: fold_counts.clone(),
        shards,
        images,
        rejected: rejected.clone(),
        duplicates: duplicates.clone(),
    };
    manifest.save(stage.path())?;
    let n_shards = manifest.shards.len();
    let n_images = manifest.images.len();
    drop(manifest);
    let out = stage.commit()?;
    Ok(PrepSummary {
        out,
        classes: discovery.classes,
        malignant: discovery.malignant,
        folders,
        counts,
        folds: opts.folds,
        fold_counts,
        files: discovery.files.len(),
        images: n_images,
        views,
        shards: n_shards,
        rejected,
        duplicates,
        groups: n_groups,
        warnings: discovery.warnings,
        elapsed: start.elapsed(),
    })
}

/// Each fold's per-class image counts (empty without folds).
fn count_folds(images: &[ImageEntry], n_classes: usize, folds: u32) -> Vec<FoldCounts> {
    let mut out: Vec<FoldCounts> = (0..folds)
        .map(|fold| FoldCounts {
            fold,
            per_class: vec![0; n_classes],
            total: 0,
        })
        .collect();
    for im in images {
        if let Some(c) = im.fold.and_then(|f| out.get_mut(f as usize)) {
            c.per_class[im.class as usize] += 1;
            c.total += 1;
        }
    }
    out
}

/// Fills in the accepted images of every folder (an image's path starts with its folder).
fn count_images(mut folders: Vec<FolderClass>, images: &[ImageEntry]) -> Vec<FolderClass> {
    for im in images {
        let top = im.path.split_once('/').map_or(im.path.as_str(), |(t, _)| t);
        if let Some(f) = folders.iter_mut().find(|f| f.folder == top) {
            f.images += 1;
        }
    }
    folders
}

fn bad_dataset(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn progress_bar(show: bool, len: usize, prefix: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix:>7} [{elapsed_precise}] {wide_bar} {pos}/{len} {rate} ETA {eta}",
    )
    .expect("valid template")
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} images/s", state.per_sec());
        },
    )
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_prefix(prefix)
}

/// Rows handled per parallel step: enough to keep every thread busy, few enough that the
/// decoded images in flight stay small.
fn chunk_len() -> usize {
    16 * rayon::current_num_threads()
}

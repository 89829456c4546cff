//! The `prep` stage: from a folder of class sub-folders of images to a prepared dataset of
//! safetensors shards (see [`crate::shard`]) described by a manifest (see
//! [`crate::manifest`]).
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
//! Memory stays bounded whatever the dataset size: pass 1 decodes and resizes each file
//! exactly once, in parallel chunks, and appends the `S x S` RGB result (HWC u8) to a
//! staging file on disk; pass 2 splits, then reads those rows back one chunk at a time
//! (positioned reads, not a mapping, so nothing stays resident) and streams them into
//! shards. Output is byte-identical for any thread count: file order is sorted, results are
//! gathered in order, and every augmentation comes from its own RNG seeded by
//! `(seed, source index, view)`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::IoContext;
use crate::fsutil::{self, StagingDir};
use crate::image_io::{self, ResizePolicy};
use crate::manifest::{
    DuplicateGroup, ImageEntry, Manifest, Normalization, PrepRecord, RejectedFile, ShardEntry,
    SplitCounts, MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION,
};
use crate::shard::{Shard, ShardMeta, ShardWriter};
use crate::split::{self, Split};
use crate::transforms::{self, Augmentation, IMAGENET_MEAN, IMAGENET_STD};
use crate::{plot, Error, Result};

/// Class names in label order; class folders are matched to them case-insensitively.
pub const CLASS_NAMES: [&str; 2] = ["Benign", "Malignant"];

/// File name of the sample grid inside a prepared-dataset folder.
pub const SAMPLES_FILE: &str = "samples.png";

const STAGED_IMAGES: &str = ".staged-images.u8";

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
        }
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
        Ok(())
    }

    fn record(&self) -> PrepRecord {
        PrepRecord {
            input: self.input.display().to_string(),
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
        }
    }
}

/// What [`run`] did, for the final report.
#[derive(Debug, Clone)]
pub struct PrepSummary {
    /// The committed output folder.
    pub out: PathBuf,
    pub classes: Vec<String>,
    pub counts: Vec<SplitCounts>,
    /// Input files examined (accepted + rejected).
    pub files: usize,
    /// Images accepted.
    pub images: usize,
    pub views: u32,
    pub shards: usize,
    pub rejected: Vec<RejectedFile>,
    pub duplicates: Vec<DuplicateGroup>,
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
        write!(f, "  {:<6}", "split")?;
        for c in &self.classes {
            write!(f, " {c:>10}")?;
        }
        writeln!(f, " {:>8}", "total")?;
        for c in &self.counts {
            write!(f, "  {:<6}", c.split.name())?;
            for n in &c.per_class {
                write!(f, " {n:>10}")?;
            }
            write!(f, " {:>8}", c.total)?;
            if c.split == Split::Train && self.views > 1 {
                write!(f, "  x {} views", self.views)?;
            }
            writeln!(f)?;
        }
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
                writeln!(f, "  {} -> {}", d.paths.join(" = "), d.split.name())?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        write!(f, "output: {} ({} shards)", self.out.display(), self.shards)
    }
}

/// One input file, in processing order.
#[derive(Debug, Clone)]
struct InputFile {
    abs: PathBuf,
    /// Relative to the input folder, `/`-separated.
    rel: String,
    class: u8,
}

#[derive(Debug)]
struct Discovery {
    files: Vec<InputFile>,
    class_dirs: Vec<PathBuf>,
    warnings: Vec<String>,
}

fn bad_dataset(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)
        .with_path(dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .with_path(dir)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Lists every file below `dir` (recursively, hidden entries skipped), sorted by path.
fn list_files(
    dir: &Path,
    rel: &str,
    class: u8,
    depth: usize,
    out: &mut Vec<InputFile>,
    hidden: &mut usize,
) -> Result<()> {
    for e in sorted_entries(dir)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') {
            *hidden += 1;
            continue;
        }
        let child_rel = format!("{rel}/{name}");
        // An entry that cannot be examined (e.g. a dangling link) is passed on as a file,
        // so that reading it fails and it is reported rather than silently skipped.
        let Ok(meta) = fs::metadata(&path) else {
            out.push(InputFile {
                abs: path,
                rel: child_rel,
                class,
            });
            continue;
        };
        if meta.is_dir() {
            // A symlink loop would otherwise recurse forever.
            if depth >= 16 {
                return Err(bad_dataset(&path, "folders nested too deeply"));
            }
            list_files(&path, &child_rel, class, depth + 1, out, hidden)?;
        } else if meta.is_file() {
            out.push(InputFile {
                abs: path,
                rel: child_rel,
                class,
            });
        }
    }
    Ok(())
}

/// Pass 0: finds the class folders and lists their files.
fn discover(input: &Path) -> Result<Discovery> {
    match fs::metadata(input) {
        Err(_) => return Err(bad_dataset(input, "input folder does not exist")),
        Ok(m) if !m.is_dir() => return Err(bad_dataset(input, "input is not a folder")),
        Ok(_) => {}
    }
    let mut warnings = Vec::new();
    let mut class_dirs: Vec<Option<(String, PathBuf)>> = vec![None; CLASS_NAMES.len()];
    let mut loose_files = 0usize;
    for e in sorted_entries(input)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            if !name.starts_with('.') {
                loose_files += 1;
            }
            continue;
        }
        match CLASS_NAMES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(&name))
        {
            Some(k) => {
                if let Some((other, _)) = &class_dirs[k] {
                    return Err(bad_dataset(
                        input,
                        format!(
                            "two folders for class {}: {other}/ and {name}/",
                            CLASS_NAMES[k]
                        ),
                    ));
                }
                class_dirs[k] = Some((name, path));
            }
            None if name.starts_with('.') => {}
            None => warnings.push(format!(
                "ignored folder {name}/ (not a class folder; expected {})",
                expected_folders()
            )),
        }
    }
    if loose_files > 0 {
        warnings.push(format!(
            "ignored {loose_files} file(s) directly inside the input folder (images belong in {})",
            expected_folders()
        ));
    }
    let found: Vec<&str> = class_dirs
        .iter()
        .flatten()
        .map(|(n, _)| n.as_str())
        .collect();
    if found.len() < 2 {
        let have = if found.is_empty() {
            "found none".to_string()
        } else {
            format!("found only {}/", found.join("/, "))
        };
        return Err(bad_dataset(
            input,
            format!(
                "need at least two class folders, {have} (expected {}, matched case-insensitively)",
                expected_folders()
            ),
        ));
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut hidden = 0;
    for (k, entry) in class_dirs.into_iter().enumerate() {
        let (name, path) = entry.expect("all classes present");
        let before = files.len();
        list_files(&path, &name, k as u8, 0, &mut files, &mut hidden)?;
        if files.len() == before {
            return Err(bad_dataset(&path, "class folder is empty"));
        }
        dirs.push(path);
    }
    if hidden > 0 {
        warnings.push(format!(
            "skipped {hidden} hidden files or folders (names starting with '.')"
        ));
    }
    Ok(Discovery {
        files,
        class_dirs: dirs,
        warnings,
    })
}

fn expected_folders() -> String {
    CLASS_NAMES
        .iter()
        .map(|c| format!("{c}/"))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Result of decoding one input file in pass 1.
struct Decoded {
    sha256: String,
    width: u32,
    height: u32,
    /// `S x S` RGB, HWC.
    pixels: Vec<u8>,
}

fn decode_one(
    file: &InputFile,
    size: u32,
    resize: ResizePolicy,
    max_pixels: u64,
) -> Result<Decoded> {
    let bytes = fs::read(&file.abs).with_path(&file.abs)?;
    let sha256 = fsutil::sha256_hex(&bytes);
    let img = image_io::decode_rgb(&bytes, &file.abs, max_pixels)?;
    drop(bytes);
    let (width, height) = img.dimensions();
    let resized = image_io::resize_square(&img, size, resize);
    drop(img);
    Ok(Decoded {
        sha256,
        width,
        height,
        pixels: resized.into_raw(),
    })
}

/// Why a file was rejected, without its path (the manifest stores the path separately).
fn reason_of(e: &Error) -> String {
    match e {
        Error::BadImage { reason, .. } => reason.clone(),
        Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
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

/// Reads staged row `i` (positioned read: safe from any thread, leaves nothing mapped).
fn read_row(file: &File, path: &Path, i: usize, buf: &mut [u8]) -> Result<()> {
    let offset = i as u64 * buf.len() as u64;
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(buf, offset).with_path(path)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let n = file
                .seek_read(&mut buf[done..], offset + done as u64)
                .with_path(path)?;
            if n == 0 {
                return Err(Error::io(path, std::io::ErrorKind::UnexpectedEof.into()));
            }
            done += n;
        }
        Ok(())
    }
}

/// The RNG of one augmentation draw: a function of `(seed, source index, view)` only, so
/// results do not depend on scheduling.
pub fn augmentation_rng(seed: u64, source_index: u32, view: u32) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..12].copy_from_slice(&source_index.to_le_bytes());
    key[12..16].copy_from_slice(&view.to_le_bytes());
    key[16..24].copy_from_slice(b"lesionAG");
    ChaCha8Rng::from_seed(key)
}

/// The RNG that orders the rows of one split.
fn order_rng(seed: u64, split: Split) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = split as u8;
    key[16..24].copy_from_slice(b"lesionOR");
    ChaCha8Rng::from_seed(key)
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
    let discovery = discover(&opts.input)?;
    let stage = StagingDir::new(&opts.out, opts.force)?;
    let staged_path = stage.path().join(STAGED_IMAGES);
    let (images, mut rejected) = stage_images(opts, &discovery.files, &staged_path)?;
    let (mut images, staged_row) = reject_conflicting_copies(opts, images, &mut rejected)?;
    let (counts, duplicates) = assign_splits(opts, &discovery, &mut images)?;

    // Augmentation draws are cheap and recorded in the manifest, so make them all up front.
    let views = if opts.augment { opts.views } else { 1 };
    if opts.augment {
        for (i, im) in images.iter_mut().enumerate() {
            if im.split == Split::Train {
                let draws = (0..views)
                    .map(|v| Augmentation::sample(&mut augmentation_rng(opts.seed, i as u32, v)))
                    .collect();
                im.augmentations = Some(draws);
            }
        }
    }

    let staged_rows = StagedRows {
        path: &staged_path,
        rows: &staged_row,
    };
    let (shards, samples) = write_shards(opts, stage.path(), &images, staged_rows, views)?;
    fs::remove_file(&staged_path).with_path(&staged_path)?;

    let grid: Vec<(RgbImage, String)> = samples
        .into_iter()
        .enumerate()
        .flat_map(|(k, v)| {
            v.into_iter().map(move |(i, chw)| {
                (
                    chw_to_image(&chw, opts.size),
                    format!("{} (label {k}, #{i})", CLASS_NAMES[k]),
                )
            })
        })
        .collect();
    plot::image_grid(&grid, 3, &stage.path().join(SAMPLES_FILE))?;

    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        format_version: MANIFEST_FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").to_string(),
        classes: CLASS_NAMES.iter().map(|c| c.to_string()).collect(),
        image_size: opts.size,
        resize: opts.resize,
        views,
        augment: opts.augment,
        seed: opts.seed,
        options: opts.record(),
        normalization: Normalization {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        },
        counts: counts.clone(),
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
        classes: CLASS_NAMES.iter().map(|c| c.to_string()).collect(),
        counts,
        files: discovery.files.len(),
        images: n_images,
        views,
        shards: n_shards,
        rejected,
        duplicates,
        warnings: discovery.warnings,
        elapsed: start.elapsed(),
    })
}

/// Pass 1: reads, hashes, decodes and resizes every file exactly once, in parallel chunks,
/// appending each accepted image (`S x S` RGB, HWC u8) to the staging file in file order.
/// Returns the accepted images (row k of the staging file is entry k) and the rejected files.
fn stage_images(
    opts: &PrepOptions,
    files: &[InputFile],
    staged_path: &Path,
) -> Result<(Vec<ImageEntry>, Vec<RejectedFile>)> {
    let mut staged =
        BufWriter::with_capacity(1 << 20, File::create(staged_path).with_path(staged_path)?);
    let mut images = Vec::with_capacity(files.len());
    let mut rejected = Vec::new();
    let bar = progress_bar(opts.progress, files.len(), "decode");
    for chunk in files.chunks(chunk_len()) {
        let results: Vec<Result<Decoded>> = chunk
            .par_iter()
            .map(|f| decode_one(f, opts.size, opts.resize, opts.max_pixels))
            .collect();
        for (file, result) in chunk.iter().zip(results) {
            match result {
                Ok(d) => {
                    staged.write_all(&d.pixels).with_path(staged_path)?;
                    images.push(ImageEntry {
                        path: file.rel.clone(),
                        class: file.class,
                        split: Split::Train,
                        sha256: d.sha256,
                        width: d.width,
                        height: d.height,
                        augmentations: None,
                    });
                }
                Err(e) if opts.strict => {
                    bar.abandon();
                    return Err(match e {
                        Error::BadImage { .. } => e,
                        other => Error::BadImage {
                            path: file.abs.clone(),
                            reason: reason_of(&other),
                        },
                    });
                }
                Err(e) => {
                    let reason = reason_of(&e);
                    bar.println(format!("warning: skipped {}: {reason}", file.rel));
                    rejected.push(RejectedFile {
                        path: file.rel.clone(),
                        reason,
                    });
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    staged
        .into_inner()
        .map_err(|e| Error::io(staged_path, e.into_error()))?;
    Ok((images, rejected))
}

/// Byte-identical files in different class folders contradict each other: all their copies
/// are rejected (the split keeps copies together, so no single label could be right).
/// Returns the kept images and, for each, its row in the staging file.
fn reject_conflicting_copies(
    opts: &PrepOptions,
    images: Vec<ImageEntry>,
    rejected: &mut Vec<RejectedFile>,
) -> Result<(Vec<ImageEntry>, Vec<u32>)> {
    let mut class_of: HashMap<&str, (u8, bool)> = HashMap::new();
    for im in &images {
        let e = class_of
            .entry(im.sha256.as_str())
            .or_insert((im.class, false));
        e.1 |= e.0 != im.class;
    }
    let conflicting: Vec<bool> = images
        .iter()
        .map(|im| class_of[im.sha256.as_str()].1)
        .collect();
    drop(class_of);
    let mut kept = Vec::with_capacity(images.len());
    let mut rows = Vec::with_capacity(images.len());
    for (k, im) in images.into_iter().enumerate() {
        if !conflicting[k] {
            kept.push(im);
            rows.push(k as u32);
            continue;
        }
        let reason =
            "byte-identical copies exist in more than one class folder (conflicting labels)";
        if opts.strict {
            return Err(Error::BadImage {
                path: opts.input.join(&im.path),
                reason: reason.into(),
            });
        }
        rejected.push(RejectedFile {
            path: im.path,
            reason: reason.into(),
        });
    }
    Ok((kept, rows))
}

/// Pass 2a: checks every class can fill every split, assigns splits (byte-identical files
/// together) and returns the per-split counts and the duplicate groups.
fn assign_splits(
    opts: &PrepOptions,
    discovery: &Discovery,
    images: &mut [ImageEntry],
) -> Result<(Vec<SplitCounts>, Vec<DuplicateGroup>)> {
    let n_classes = CLASS_NAMES.len();
    let mut per_class = vec![0usize; n_classes];
    for im in images.iter() {
        per_class[im.class as usize] += 1;
    }
    if let Some(k) = per_class.iter().position(|&n| n == 0) {
        return Err(bad_dataset(
            &discovery.class_dirs[k],
            format!(
                "no usable images in class {} (all files rejected)",
                CLASS_NAMES[k]
            ),
        ));
    }
    split::split_counts(&per_class, opts.val, opts.test, opts.seed)
        .map_err(|e| too_few(opts, e))?;

    let labels: Vec<usize> = images.iter().map(|i| i.class as usize).collect();
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let groups: Vec<usize> = images
        .iter()
        .enumerate()
        .map(|(i, im)| *first_of.entry(im.sha256.as_str()).or_insert(i))
        .collect();
    drop(first_of);
    let assignment = split::stratified_split(&labels, &groups, opts.val, opts.test, opts.seed)
        .map_err(|e| with_dataset_path(e, &opts.input))?;
    if assignment.len() != images.len() {
        return Err(Error::InvalidOption(format!(
            "split returned {} assignments for {} images",
            assignment.len(),
            images.len()
        )));
    }
    for (im, &sp) in images.iter_mut().zip(&assignment) {
        im.split = sp;
    }
    let counts = Split::ALL
        .into_iter()
        .map(|sp| {
            let mut pc = vec![0usize; n_classes];
            for im in images.iter().filter(|im| im.split == sp) {
                pc[im.class as usize] += 1;
            }
            SplitCounts {
                split: sp,
                total: pc.iter().sum(),
                per_class: pc,
            }
        })
        .collect();
    Ok((counts, duplicate_groups(images, &groups)?))
}

/// Where pass 1 left each image's pixels.
#[derive(Clone, Copy)]
struct StagedRows<'a> {
    path: &'a Path,
    /// Row in the staging file of each image (by source index).
    rows: &'a [u32],
}

/// Pass 2b: streams every split into shards (train: `views` times) and returns the shard
/// entries and the sample previews.
fn write_shards(
    opts: &PrepOptions,
    stage: &Path,
    images: &[ImageEntry],
    staged_rows: StagedRows<'_>,
    views: u32,
) -> Result<(Vec<ShardEntry>, Samples)> {
    let staged = File::open(staged_rows.path).with_path(staged_rows.path)?;
    let total_rows: usize = images
        .iter()
        .map(|im| {
            if im.split == Split::Train {
                views as usize
            } else {
                1
            }
        })
        .sum();
    let bar = progress_bar(opts.progress, total_rows, "write");
    let ctx = WriteContext {
        opts,
        stage,
        images,
        staged: &staged,
        staged_rows,
        views,
        bar: &bar,
    };
    // Hashing and writing a shard is sequential; a dedicated thread does it while the pool
    // prepares the next rows.
    let result = std::thread::scope(|scope| -> Result<_> {
        let (tx, rx) = sync_channel(2);
        let writer = scope.spawn(move || write_jobs(rx));
        let produced = produce_shards(&ctx, &tx);
        drop(tx);
        let written = match writer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match produced? {
            Some(samples) => Ok((written?, samples)),
            None => Err(written
                .err()
                .unwrap_or_else(|| Error::InvalidOption("shard writer stopped early".into()))),
        }
    });
    bar.finish_and_clear();
    result
}

/// What pass 2 needs to turn staged rows into shards.
struct WriteContext<'a> {
    opts: &'a PrepOptions,
    stage: &'a Path,
    images: &'a [ImageEntry],
    staged: &'a File,
    staged_rows: StagedRows<'a>,
    views: u32,
    bar: &'a ProgressBar,
}

/// Work for the shard-writing thread, in file order.
enum WriteJob {
    Open {
        path: PathBuf,
        meta: ShardMeta,
        labels: Vec<u8>,
        rows: Vec<u32>,
        entry: ShardEntry,
    },
    /// The next CHW image rows of the open shard.
    Rows(Vec<Vec<u8>>),
    Close,
}

/// The shard-writing thread: writes, hashes and commits shards as jobs arrive.
fn write_jobs(rx: Receiver<WriteJob>) -> Result<Vec<ShardEntry>> {
    let mut open: Option<(ShardWriter, ShardEntry)> = None;
    let mut done = Vec::new();
    for job in rx {
        match job {
            WriteJob::Open {
                path,
                meta,
                labels,
                rows,
                entry,
            } => open = Some((ShardWriter::create(path, meta, &labels, &rows)?, entry)),
            WriteJob::Rows(rows) => {
                let (w, _) = open.as_mut().expect("Rows after Open");
                for r in rows {
                    w.push_image(&r)?;
                }
            }
            WriteJob::Close => {
                let (w, mut entry) = open.take().expect("Close after Open");
                let info = w.finish()?;
                entry.bytes = info.bytes;
                entry.sha256 = info.sha256;
                done.push(entry);
            }
        }
    }
    Ok(done)
}

/// Training-image previews per class: `(source index, CHW row)`.
type Samples = Vec<Vec<(u32, Vec<u8>)>>;

/// Prepares every shard's rows in parallel and hands them to the writer thread. Returns
/// `None` when the writer hung up (it failed; its error is the one to report).
fn produce_shards(ctx: &WriteContext<'_>, tx: &SyncSender<WriteJob>) -> Result<Option<Samples>> {
    let opts = ctx.opts;
    let row = 3 * opts.size as usize * opts.size as usize;
    let mut samples: Samples = vec![Vec::new(); CLASS_NAMES.len()];
    for sp in Split::ALL {
        let mut order: Vec<u32> = (0..ctx.images.len() as u32)
            .filter(|&i| ctx.images[i as usize].split == sp)
            .collect();
        order.shuffle(&mut order_rng(opts.seed, sp));
        let dir = ctx.stage.join(sp.name());
        fs::create_dir(&dir).with_path(&dir)?;
        let split_views = if sp == Split::Train { ctx.views } else { 1 };
        for view in 0..split_views {
            for (k, rows) in order.chunks(opts.shard_size).enumerate() {
                let file = if sp == Split::Train {
                    format!("{}/shard-v{view}-{k:05}.safetensors", sp.name())
                } else {
                    format!("{}/shard-{k:05}.safetensors", sp.name())
                };
                let open = WriteJob::Open {
                    path: ctx.stage.join(&file),
                    meta: ShardMeta {
                        split: sp,
                        view,
                        image_size: opts.size,
                        count: rows.len(),
                    },
                    labels: rows.iter().map(|&i| ctx.images[i as usize].class).collect(),
                    rows: rows.to_vec(),
                    entry: ShardEntry {
                        file,
                        split: sp,
                        view,
                        count: rows.len(),
                        bytes: 0,
                        sha256: String::new(),
                    },
                };
                if tx.send(open).is_err() {
                    return Ok(None);
                }
                for chunk in rows.chunks(chunk_len()) {
                    let out: Vec<Vec<u8>> = chunk
                        .par_iter()
                        .map(|&i| {
                            let mut hwc = vec![0u8; row];
                            let staged = ctx.staged_rows;
                            let r = staged.rows[i as usize] as usize;
                            read_row(ctx.staged, staged.path, r, &mut hwc)?;
                            let img = RgbImage::from_raw(opts.size, opts.size, hwc)
                                .expect("row holds S*S*3 bytes");
                            let aug = ctx.images[i as usize]
                                .augmentations
                                .as_ref()
                                .map(|a| a[view as usize]);
                            Ok(match aug {
                                Some(a) => transforms::to_chw(&a.apply(&img)),
                                None => transforms::to_chw(&img),
                            })
                        })
                        .collect::<Result<_>>()?;
                    if sp == Split::Train && view == 0 {
                        for (&i, chw) in chunk.iter().zip(&out) {
                            let class = &mut samples[ctx.images[i as usize].class as usize];
                            if class.len() < 3 {
                                class.push((i, chw.clone()));
                            }
                        }
                    }
                    if tx.send(WriteJob::Rows(out)).is_err() {
                        return Ok(None);
                    }
                    ctx.bar.inc(chunk.len() as u64);
                }
                if tx.send(WriteJob::Close).is_err() {
                    return Ok(None);
                }
            }
        }
    }
    Ok(Some(samples))
}

/// Rewords the split's "class too small" error with the class name and the dataset path.
fn too_few(opts: &PrepOptions, e: Error) -> Error {
    match e {
        Error::BadDataset { reason, .. } => {
            let mut reason = reason;
            for (k, name) in CLASS_NAMES.iter().enumerate() {
                reason = reason.replace(&format!("class {k} "), &format!("class {name} "));
            }
            bad_dataset(
                &opts.input,
                format!("too few images for the split fractions: {reason}"),
            )
        }
        other => other,
    }
}

/// The split reports dataset problems without a path; they concern the input folder.
fn with_dataset_path(e: Error, input: &Path) -> Error {
    match e {
        Error::BadDataset { path, reason } if path.as_os_str().is_empty() => {
            bad_dataset(input, reason)
        }
        other => other,
    }
}

fn duplicate_groups(images: &[ImageEntry], groups: &[usize]) -> Result<Vec<DuplicateGroup>> {
    let mut members: HashMap<usize, Vec<u32>> = HashMap::new();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i as u32);
    }
    let mut out: Vec<DuplicateGroup> = members
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|m| {
            let first = &images[m[0] as usize];
            if m.iter().any(|&i| images[i as usize].split != first.split) {
                return Err(Error::InvalidOption(format!(
                    "split put copies of {} in different splits",
                    first.path
                )));
            }
            Ok(DuplicateGroup {
                sha256: first.sha256.clone(),
                paths: m.iter().map(|&i| images[i as usize].path.clone()).collect(),
                split: first.split,
                indices: m,
            })
        })
        .collect::<Result<_>>()?;
    out.sort_by_key(|d| d.indices[0]);
    Ok(out)
}

/// Converts a CHW row back to an image (for previews).
pub fn chw_to_image(chw: &[u8], size: u32) -> RgbImage {
    let plane = size as usize * size as usize;
    let mut hwc = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        hwc.extend_from_slice(&[chw[p], chw[plane + p], chw[2 * plane + p]]);
    }
    RgbImage::from_raw(size, size, hwc).expect("3*S*S bytes")
}

/// Result of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub shards_checked: usize,
    pub bytes_checked: u64,
    /// One line per problem, naming the file.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// `Ok(self)` when everything matched, else [`Error::BadArtifact`] listing the problems.
    pub fn into_result(self) -> Result<Self> {
        if self.is_ok() {
            Ok(self)
        } else {
            Err(Error::BadArtifact {
                path: self.dir.clone(),
                reason: format!(
                    "verification failed ({} problem(s)):\n  {}",
                    self.problems.len(),
                    self.problems.join("\n  ")
                ),
            })
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            write!(
                f,
                "{}: OK ({} shards, {:.1} MB re-hashed, all match the manifest)",
                self.dir.display(),
                self.shards_checked,
                self.bytes_checked as f64 / 1e6
            )
        } else {
            writeln!(
                f,
                "{}: {} problem(s) in {} shards:",
                self.dir.display(),
                self.problems.len(),
                self.shards_checked
            )?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            Ok(())
        }
    }
}

/// Re-hashes every shard of a prepared dataset against its manifest and checks each
/// shard's header and rows (split, view, count, labels, source indices) against it.
///
/// Returns `Err` only when the manifest itself cannot be read; mismatches are listed in the
/// report.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::load(dir)?;
    let per_shard: Vec<(u64, Vec<String>)> = manifest
        .shards
        .par_iter()
        .map(|entry| check_shard(dir, &manifest, entry))
        .collect();
    let mut problems = Vec::new();
    let mut bytes = 0;
    for (b, p) in per_shard {
        bytes += b;
        problems.extend(p);
    }
    for c in &manifest.counts {
        let views = if c.split == Split::Train {
            manifest.views.max(1)
        } else {
            1
        };
        for view in 0..views {
            let rows: usize = manifest.shards_of(c.split, view).map(|s| s.count).sum();
            if rows != c.total {
                problems.push(format!(
                    "{} view {view}: shards hold {rows} rows, counts say {}",
                    c.split.name(),
                    c.total
                ));
            }
        }
    }
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        shards_checked: manifest.shards.len(),
        bytes_checked: bytes,
        problems,
    })
}

fn check_shard(dir: &Path, manifest: &Manifest, entry: &ShardEntry) -> (u64, Vec<String>) {
    let path = dir.join(&entry.file);
    let mut problems = Vec::new();
    let sha = match fsutil::sha256_file(&path) {
        Ok(s) => s,
        Err(e) => return (0, vec![format!("{}: cannot read: {e}", entry.file)]),
    };
    let bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if sha != entry.sha256 {
        problems.push(format!(
            "{}: SHA-256 mismatch (manifest {}, file {sha})",
            entry.file, entry.sha256
        ));
        return (bytes, problems);
    }
    let shard = match Shard::open(&path) {
        Ok(s) => s,
        Err(e) => return (bytes, vec![format!("{}: {e}", entry.file)]),
    };
    let m = shard.meta();
    if m.split != entry.split || m.view != entry.view || m.count != entry.count {
        problems.push(format!(
            "{}: header says {} view {} with {} rows, manifest says {} view {} with {}",
            entry.file,
            m.split.name(),
            m.view,
            m.count,
            entry.split.name(),
            entry.view,
            entry.count
        ));
    }
    if m.image_size != manifest.image_size {
        problems.push(format!(
            "{}: image size {}, manifest says {}",
            entry.file, m.image_size, manifest.image_size
        ));
    }
    for (&si, &label) in shard.source_index().iter().zip(shard.labels()) {
        match manifest.images.get(si as usize) {
            None => {
                problems.push(format!("{}: source index {si} out of range", entry.file));
                break;
            }
            Some(im) if im.class != label || im.split != entry.split => {
                problems.push(format!(
                    "{}: row for {} has label {label} in {}, manifest says class {} in {}",
                    entry.file,
                    im.path,
                    entry.split.name(),
                    im.class,
                    im.split.name()
                ));
                break;
            }
            Some(_) => {}
        }
    }
    (bytes, problems)
}

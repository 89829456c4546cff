//! Verification of a prepared dataset (`lesion-prep verify`, and every stage before it
//! reads one): re-hashes every shard against its manifest and checks each shard's header
//! and rows against it, and the row totals against the per-split counts.
//!
//! K-fold data ([`crate::prep`]'s layout) are checked for fold consistency too: a fold
//! `0..K` on every pool image and none elsewhere, the per-fold counts, copies of one file in
//! one fold, and val shards that hold the pool (the clean copy of the train split).
//!
//! Only regular files inside the dataset folder are read: the manifest's shard paths are
//! confined when it is loaded ([`Manifest::load`]), and a shard that is a symbolic link
//! to somewhere outside the folder, or not a regular file (a FIFO or device could block or
//! never end), is reported without being opened.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::fsutil;
use crate::manifest::{Manifest, ShardEntry};
use crate::shard::Shard;
use crate::split::Split;
use crate::{Error, Result};

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
    problems.extend(check_folds(&manifest));
    for c in &manifest.counts {
        // With folds the val shards hold a clean copy of the pool, counted as train.
        let total = match (manifest.folds, c.split) {
            (1.., Split::Val) => manifest.counts(Split::Train).map_or(0, |t| t.total),
            _ => c.total,
        };
        let views = if c.split == Split::Train {
            manifest.views.max(1)
        } else {
            1
        };
        // A manifest may claim any number of views; only those its shards hold are counted,
        // so that an absurd claim is one problem rather than billions.
        let held = manifest
            .shards
            .iter()
            .filter(|s| s.split == c.split)
            .map(|s| s.view.saturating_add(1))
            .max()
            .unwrap_or(0);
        if views > held.max(1) {
            problems.push(format!(
                "{}: the manifest says {views} views, the shards hold {held}",
                c.split.name()
            ));
        }
        for view in 0..views.min(held.max(1)) {
            let rows = manifest
                .shards_of(c.split, view)
                .fold(0usize, |sum, s| sum.saturating_add(s.count));
            if rows != total {
                problems.push(format!(
                    "{} view {view}: shards hold {rows} rows, counts say {total}",
                    c.split.name(),
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

/// Why the shard file at `path` must not be read: a link leading out of `dir`, or not a
/// regular file.
fn outside_or_special(dir: &Path, path: &Path) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        return Some("not a regular file".into());
    }
    let real = fs::canonicalize(path).ok()?;
    let root = fs::canonicalize(dir).ok()?;
    (!real.starts_with(&root)).then(|| {
        format!(
            "a symbolic link to {}, outside the dataset folder",
            real.display()
        )
    })
}

fn check_shard(dir: &Path, manifest: &Manifest, entry: &ShardEntry) -> (u64, Vec<String>) {
    let path = dir.join(&entry.file);
    let mut problems = Vec::new();
    if let Some(why) = outside_or_special(dir, &path) {
        return (0, vec![format!("{}: {why}; not read", entry.file)]);
    }
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
    // With folds the val shards hold the pool, whose images are of the train split.
    let image_split = if manifest.folds > 0 && entry.split == Split::Val {
        Split::Train
    } else {
        entry.split
    };
    for (&si, &label) in shard.source_index().iter().zip(shard.labels()) {
        match manifest.images.get(si as usize) {
            None => {
                problems.push(format!("{}: source index {si} out of range", entry.file));
                break;
            }
            Some(im) if im.class != label || im.split != image_split => {
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

/// The fold consistency of a manifest (see the module docs), one line per problem.
fn check_folds(manifest: &Manifest) -> Vec<String> {
    let k = manifest.folds;
    let mut problems = Vec::new();
    if k == 0 {
        if let Some(im) = manifest.images.iter().find(|im| im.fold.is_some()) {
            problems.push(format!(
                "{}: has a fold, but the manifest has no folds",
                im.path
            ));
        }
        if !manifest.fold_counts.is_empty() {
            problems.push("fold counts without folds".into());
        }
        return problems;
    }
    if k == 1 {
        problems.push("1 fold: cross-validation needs at least 2".into());
    }
    let n_classes = manifest.classes.len();
    let mut counts = vec![vec![0usize; n_classes]; k as usize];
    let mut bad = Vec::new();
    for im in &manifest.images {
        match (im.split, im.fold) {
            (Split::Train, Some(f)) if f < k => {
                if let Some(n) = counts[f as usize].get_mut(im.class as usize) {
                    *n += 1;
                }
            }
            (Split::Train, Some(f)) => bad.push(format!("{}: fold {f} of {k}", im.path)),
            (Split::Train, None) => bad.push(format!("{}: a pool image without a fold", im.path)),
            (Split::Val, _) => bad.push(format!(
                "{}: in the val split of K-fold data (the folds are the validation)",
                im.path
            )),
            (Split::Test, Some(f)) => bad.push(format!("{}: a test image in fold {f}", im.path)),
            (Split::Test, None) => {}
        }
    }
    if bad.len() > 10 {
        let more = bad.len() - 10;
        bad.truncate(10);
        bad.push(format!("... and {more} more images with a wrong fold"));
    }
    problems.extend(bad);
    let recorded: Vec<(u32, &[usize], usize)> = manifest
        .fold_counts
        .iter()
        .map(|c| (c.fold, c.per_class.as_slice(), c.total))
        .collect();
    let actual: Vec<(u32, &[usize], usize)> = counts
        .iter()
        .enumerate()
        .map(|(f, c)| (f as u32, c.as_slice(), c.iter().sum()))
        .collect();
    if recorded != actual {
        problems.push(format!(
            "fold counts: the manifest says {recorded:?}, its images give {actual:?} \
             (fold, per class, total)"
        ));
    }
    for d in &manifest.duplicates {
        let folds: Vec<Option<u32>> = d
            .indices
            .iter()
            .filter_map(|&i| manifest.images.get(i as usize).map(|im| im.fold))
            .collect();
        if folds.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!(
                "copies {} are in different folds {folds:?}",
                d.paths.join(" = ")
            ));
        }
    }
    problems
}

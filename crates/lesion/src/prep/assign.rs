//! Pass 2a of `prep`: everything decided per image before its pixels are read back: the
//! split of each image (stratified by class, byte-identical files kept together), with
//! `--folds K` the fold of each pool image, the per-split counts, the duplicate groups, and
//! the augmentation of each training view.

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::discover::Discovery;
use super::{bad_dataset, PrepOptions};
use crate::manifest::{DuplicateGroup, ImageEntry, SplitCounts};
use crate::split::{self, Split};
use crate::transforms::Augmentation;
use crate::{Error, Result};

/// Pass 2a: checks every class can fill every split, assigns splits (byte-identical files
/// together) and returns the per-split counts and the duplicate groups.
pub(super) fn assign_splits(
    opts: &PrepOptions,
    discovery: &Discovery,
    images: &mut [ImageEntry],
) -> Result<(Vec<SplitCounts>, Vec<DuplicateGroup>)> {
    let names = &discovery.classes;
    let n_classes = names.len();
    let mut per_class = vec![0usize; n_classes];
    for im in images.iter() {
        per_class[im.class as usize] += 1;
    }
    if let Some(k) = per_class.iter().position(|&n| n == 0) {
        return Err(bad_dataset(
            &discovery.class_dirs[k],
            format!(
                "no usable images in class {} (all files rejected)",
                names[k]
            ),
        ));
    }
    if !opts.no_test {
        split::split_counts(&per_class, opts.val, opts.test, opts.seed)
            .map_err(|e| too_few(opts, names, e))?;
    }

    let labels: Vec<usize> = images.iter().map(|i| i.class as usize).collect();
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    let groups: Vec<usize> = images
        .iter()
        .enumerate()
        .map(|(i, im)| *first_of.entry(im.sha256.as_str()).or_insert(i))
        .collect();
    drop(first_of);
    if opts.no_test {
        for im in images.iter_mut() {
            im.split = Split::Train;
        }
    } else {
        let assignment = split::stratified_split(&labels, &groups, opts.val, opts.test, opts.seed)
            .map_err(|e| with_dataset_path(e, names, &opts.input))?;
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
    }
    if opts.folds > 0 {
        assign_folds(opts, names, &labels, &groups, images)?;
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

/// `--folds K`: the train and val images form the pool (`split: train`), and each pool image
/// gets a fold from [`split::stratified_group_kfold`] (stratified by class, each group in
/// one fold). Every class needs at least K pool images, and every fold an image of every
/// class.
fn assign_folds(
    opts: &PrepOptions,
    names: &[String],
    labels: &[usize],
    groups: &[usize],
    images: &mut [ImageEntry],
) -> Result<()> {
    let k = opts.folds as usize;
    let pool: Vec<usize> = (0..images.len())
        .filter(|&i| images[i].split != Split::Test)
        .collect();
    let mut per_class = vec![0usize; names.len()];
    for &i in &pool {
        images[i].split = Split::Train;
        per_class[labels[i]] += 1;
    }
    let after_test = if opts.no_test {
        ""
    } else {
        " (after the test split)"
    };
    if let Some(c) = per_class.iter().position(|&n| n < k) {
        return Err(bad_dataset(
            &opts.input,
            format!(
                "class {} has {} image(s) in the cross-validation pool{after_test}, fewer than \
                 --folds {k}: every fold needs an image of each class (use fewer folds{})",
                names[c],
                per_class[c],
                if opts.no_test {
                    ""
                } else {
                    ", a smaller --test or --no-test"
                }
            ),
        ));
    }
    let pool_labels: Vec<usize> = pool.iter().map(|&i| labels[i]).collect();
    let pool_groups: Vec<usize> = pool.iter().map(|&i| groups[i]).collect();
    let folds = split::stratified_group_kfold(&pool_labels, &pool_groups, k, Some(opts.seed))
        .map_err(|e| with_dataset_path(e, names, &opts.input))?;
    if folds.len() != pool.len() {
        return Err(Error::InvalidOption(format!(
            "fold assignment returned {} folds for {} images",
            folds.len(),
            pool.len()
        )));
    }
    let mut per_fold = vec![vec![0usize; names.len()]; k];
    for (&i, &f) in pool.iter().zip(&folds) {
        images[i].fold = Some(f);
        per_fold[f as usize][labels[i]] += 1;
    }
    for (f, counts) in per_fold.iter().enumerate() {
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(bad_dataset(
                &opts.input,
                format!(
                    "fold {f} of {k} has no image of class {}: its groups are too large to \
                     spread over {k} folds (use fewer folds)",
                    names[c]
                ),
            ));
        }
    }
    Ok(())
}

/// Rewords the split's "class too small" error with the class name and the dataset path.
fn too_few(opts: &PrepOptions, names: &[String], e: Error) -> Error {
    match e {
        Error::BadDataset { reason, .. } => {
            let hint = if names.len() > 2 {
                "; skip a class's folders with --group FOLDER=- or merge them into another \
                 class with --group FOLDER=CLASS"
            } else {
                ""
            };
            bad_dataset(
                &opts.input,
                format!(
                    "too few images for the split fractions: {}{hint}",
                    name_class(&reason, names)
                ),
            )
        }
        other => other,
    }
}

/// The split reports dataset problems without a path (they concern the input folder) and
/// names classes by label.
fn with_dataset_path(e: Error, names: &[String], input: &Path) -> Error {
    match e {
        Error::BadDataset { path, reason } if path.as_os_str().is_empty() => {
            bad_dataset(input, name_class(&reason, names))
        }
        other => other,
    }
}

/// The split's messages start with `class {label}` when they concern one class; this puts
/// the class's name in its place.
fn name_class(reason: &str, names: &[String]) -> String {
    for (k, name) in names.iter().enumerate() {
        let label = format!("class {k}");
        if let Some(rest) = reason.strip_prefix(&label) {
            if rest.starts_with([' ', ':']) {
                return format!("class {name}{rest}");
            }
        }
    }
    reason.to_string()
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
            if m.iter().any(|&i| images[i as usize].fold != first.fold) {
                return Err(Error::InvalidOption(format!(
                    "fold assignment put copies of {} in different folds",
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

/// Draws the augmentation of every view of every training image (cheap, and recorded in the
/// manifest, so all up front) and returns the number of views to write (1 without
/// augmentation).
pub(super) fn draw_augmentations(opts: &PrepOptions, images: &mut [ImageEntry]) -> u32 {
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
    views
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

//! Stratified train/val/test split reproducing scikit-learn's per-class counts.
//!
//! The notebook calls `train_test_split(.., stratify=y)` twice: test fraction `test` on
//! everything, then `val / (1 - test)` of the rest. [`split_counts`] reproduces the per-class
//! sizes of those calls exactly (`StratifiedShuffleSplit` with `_approximate_mode`);
//! [`stratified_split`] then assigns concrete items so that duplicates (items sharing a
//! group id) never straddle two splits. Which items land where differs from scikit-learn
//! (its permutation comes from NumPy's generator); the counts do not.
//!
//! [`stratified_group_kfold`] assigns items to K folds with scikit-learn's
//! `StratifiedGroupKFold` algorithm (exactly its folds when unseeded).
//!
//! All randomness comes from `rand_chacha::ChaCha8Rng` seeded with the caller's seed, so a
//! split is identical on every platform and thread count.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The three splits of a prepared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// The lowercase name used for folders and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// RNG streams, so that the count plan and the item assignment draw independently.
const STREAM_COUNTS: u64 = 0;
const STREAM_ASSIGN: u64 = 1;

/// A dataset-level error without a file to name; callers that know the dataset root
/// should put it in `path`.
fn bad_dataset(reason: String) -> Error {
    Error::BadDataset {
        path: PathBuf::new(),
        reason,
    }
}

fn check_fractions(val: f64, test: f64) -> Result<()> {
    let open_unit = |f: f64| f > 0.0 && f < 1.0;
    if !open_unit(test) {
        return Err(Error::InvalidOption(format!(
            "test fraction must be in (0, 1), got {test}"
        )));
    }
    if !open_unit(val) {
        return Err(Error::InvalidOption(format!(
            "validation fraction must be in (0, 1), got {val}"
        )));
    }
    if val + test >= 1.0 {
        return Err(Error::InvalidOption(format!(
            "validation ({val}) and test ({test}) fractions leave nothing to train on"
        )));
    }
    Ok(())
}

/// One group id per label.
fn check_lengths(labels: &[usize], groups: &[usize]) -> Result<()> {
    if labels.len() != groups.len() {
        return Err(Error::InvalidOption(format!(
            "{} labels but {} group ids",
            labels.len(),
            groups.len()
        )));
    }
    Ok(())
}

/// The checks both train/val/test splitters make before splitting.
fn check_split_inputs(labels: &[usize], groups: &[usize], val: f64, test: f64) -> Result<()> {
    check_lengths(labels, groups)?;
    check_fractions(val, test)?;
    if labels.is_empty() {
        return Err(bad_dataset("no images to split".into()));
    }
    Ok(())
}

/// The items of each group, groups in order of first appearance (so that a split does not
/// depend on the group ids). A group whose items `first` and `i` have different labels is a
/// [`Error::BadDataset`] (empty `path`) with the message `mixed(group, first, i)`.
fn groups_by_first_item(
    labels: &[usize],
    groups: &[usize],
    mixed: impl Fn(usize, usize, usize) -> String,
) -> Result<Vec<Vec<usize>>> {
    let mut group_items: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        let items = group_items.entry(g).or_default();
        if let Some(&first) = items.first() {
            if labels[first] != labels[i] {
                return Err(bad_dataset(mixed(g, first, i)));
            }
        }
        items.push(i);
    }
    let mut by_first: Vec<Vec<usize>> = group_items.into_values().collect();
    by_first.sort_by_key(|items| items[0]);
    Ok(by_first)
}

/// scikit-learn's `_approximate_mode`: the floor of each class's proportional share of
/// `n_draws`, then the remaining draws one each to the classes with the largest
/// remainders, exact ties broken at random.
fn approximate_mode<R: Rng + ?Sized>(
    class_counts: &[usize],
    n_draws: usize,
    rng: &mut R,
) -> Vec<usize> {
    let total: usize = class_counts.iter().sum();
    if total == 0 {
        return vec![0; class_counts.len()];
    }
    // Same float operations as NumPy: counts / counts.sum() * n_draws.
    let continuous: Vec<f64> = class_counts
        .iter()
        .map(|&c| c as f64 / total as f64 * n_draws as f64)
        .collect();
    let mut floored: Vec<usize> = continuous.iter().map(|c| c.floor() as usize).collect();
    let mut need = n_draws.saturating_sub(floored.iter().sum());
    if need > 0 {
        let remainder: Vec<f64> = continuous
            .iter()
            .zip(&floored)
            .map(|(c, &f)| c - f as f64)
            .collect();
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let mut inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add_now = inds.len().min(need);
            inds.shuffle(rng);
            for &i in &inds[..add_now] {
                floored[i] += 1;
            }
            need -= add_now;
            if need == 0 {
                break;
            }
        }
    }
    floored
}

/// One stratified `train_test_split(test_size=fraction)`: per-class `(keep, held_out)`.
fn split_once<R: Rng + ?Sized>(
    class_counts: &[usize],
    fraction: f64,
    rng: &mut R,
) -> (Vec<usize>, Vec<usize>) {
    let n: usize = class_counts.iter().sum();
    // sklearn's _validate_shuffle_split: n_test = ceil(test_size * n), n_train = n - n_test.
    let n_test = ((fraction * n as f64).ceil() as usize).min(n);
    let n_train = n - n_test;
    let train = approximate_mode(class_counts, n_train, rng);
    let rest: Vec<usize> = class_counts
        .iter()
        .zip(&train)
        .map(|(c, t)| c - t)
        .collect();
    let test = approximate_mode(&rest, n_test, rng);
    (train, test)
}

/// Per-class `[train, val, test]` sizes of the notebook's two stratified
/// `train_test_split` calls, for classes of the given sizes (in the given order).
///
/// Errors if a fraction is out of range, or if some class would get no image in some split
/// (the message names the class index, its size and the sizes it would get).
pub fn split_counts(
    class_counts: &[usize],
    val: f64,
    test: f64,
    seed: u64,
) -> Result<Vec<[usize; 3]>> {
    check_fractions(val, test)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_COUNTS);
    let names: Vec<usize> = (0..class_counts.len()).collect();
    plan_counts(class_counts, &names, val, test, &mut rng)
}

/// `names[c]` is the label that class `c` is reported as in errors.
fn plan_counts(
    class_counts: &[usize],
    names: &[usize],
    val: f64,
    test: f64,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<[usize; 3]>> {
    let (dev, test_counts) = split_once(class_counts, test, rng);
    let (train, val_counts) = split_once(&dev, val / (1.0 - test), rng);
    let plan: Vec<[usize; 3]> = (0..class_counts.len())
        .map(|c| [train[c], val_counts[c], test_counts[c]])
        .collect();
    for ((&n, counts), name) in class_counts.iter().zip(&plan).zip(names) {
        if counts.contains(&0) {
            return Err(bad_dataset(format!(
                "class {name} has only {n} image(s): a split with validation fraction {val} and \
                 test fraction {test} would give it train {}, val {}, test {}; every split \
                 needs at least one image of each class",
                counts[0], counts[1], counts[2]
            )));
        }
    }
    Ok(plan)
}

/// Assigns every item to a split.
///
/// `labels[i]` is item i's class; `groups[i]` is its group id (items with equal ids, e.g.
/// byte-identical duplicates, always land in the same split). Per-class counts equal
/// scikit-learn's two `train_test_split` calls (test fraction `test`, then `val / (1 - test)`
/// of the rest). Deterministic for a given `seed`.
///
/// Multi-item groups are placed first (in seeded random order, each into a split of its
/// class chosen with probability proportional to the room left there); singletons then fill
/// the remaining per-class counts exactly. Only if a group is larger than the room left in
/// every split of its class do the counts deviate, by at most that group's size.
///
/// Errors: [`Error::InvalidOption`] for mismatched lengths or fractions out of range;
/// [`Error::BadDataset`] (with an empty `path`, for the caller to fill in with the dataset
/// root) for an empty input, a class too small to give every split an image, or a group
/// whose items have different labels.
pub fn stratified_split(
    labels: &[usize],
    groups: &[usize],
    val: f64,
    test: f64,
    seed: u64,
) -> Result<Vec<Split>> {
    check_split_inputs(labels, groups, val, test)?;

    // Classes in label order; only labels that occur are classes (as np.unique).
    let mut class_items: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        class_items.entry(l).or_default().push(i);
    }
    let classes: Vec<usize> = class_items.keys().copied().collect();
    let counts: Vec<usize> = class_items.values().map(Vec::len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_COUNTS);
    let plan = plan_counts(&counts, &classes, val, test, &mut rng)?;

    let by_first = groups_by_first_item(labels, groups, |g, first, i| {
        format!(
            "items {first} and {i} are duplicates (group {g}) but have different labels \
             ({} and {})",
            labels[first], labels[i]
        )
    })?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_ASSIGN);
    let mut out = vec![Split::Train; labels.len()];
    for (ci, &class) in classes.iter().enumerate() {
        let mut multi: Vec<&Vec<usize>> = Vec::new();
        let mut single: Vec<usize> = Vec::new();
        for items in by_first.iter().filter(|items| labels[items[0]] == class) {
            if items.len() > 1 {
                multi.push(items);
            } else {
                single.push(items[0]);
            }
        }
        let mut room = plan[ci].map(|n| n as i64);
        multi.shuffle(&mut rng);
        for items in multi {
            let size = items.len() as i64;
            let fits: Vec<usize> = (0..3).filter(|&s| room[s] >= size).collect();
            let s = if fits.is_empty() {
                // No split has room for the whole group: the least harm is the fullest room.
                (0..3)
                    .max_by_key(|&s| (room[s], std::cmp::Reverse(s)))
                    .unwrap_or(0)
            } else {
                let total: i64 = fits.iter().map(|&s| room[s]).sum();
                let mut pick = rng.random_range(0..total);
                let mut chosen = fits[fits.len() - 1];
                for &s in &fits {
                    if pick < room[s] {
                        chosen = s;
                        break;
                    }
                    pick -= room[s];
                }
                chosen
            };
            room[s] -= size;
            for &i in items {
                out[i] = Split::ALL[s];
            }
        }
        single.shuffle(&mut rng);
        let mut next = single.into_iter();
        for s in 0..3 {
            for i in next.by_ref().take(room[s].max(0) as usize) {
                out[i] = Split::ALL[s];
            }
        }
        debug_assert!(next.next().is_none(), "rooms always hold every singleton");

        for split in Split::ALL {
            if !class_items[&class].iter().any(|&i| out[i] == split) {
                return Err(bad_dataset(format!(
                    "class {class}: its duplicate groups are too large to give the {} split \
                     an image (planned train {}, val {}, test {})",
                    split.name(),
                    plan[ci][0],
                    plan[ci][1],
                    plan[ci][2]
                )));
            }
        }
    }
    Ok(out)
}

/// Stream of the group order in [`stratified_group_split`].
const STREAM_GROUP_ASSIGN: u64 = 3;

/// Assigns every item to a split keeping every group whole, for groups that are larger
/// than byte-identical duplicates (several photos of one lesion, the lesions of one
/// patient).
///
/// `labels[i]` is item i's class and `groups[i]` its group id; a group must hold one class
/// only. The per-class targets are those of the ungrouped split ([`split_counts`]: the
/// same sizes as scikit-learn's two stratified `train_test_split` calls). Since every group
/// has one class, each class is placed on its own: its groups in seeded random order,
/// then stably sorted largest first, each to the split with the most room left (target
/// minus placed; ties to a split still without an image of the class, then to train, then
/// val). Singletons, which come last, fill the rooms exactly when there are enough of them.
/// A split still without an image of the class then takes one group from a split with
/// several, when both stay within the bound below.
///
/// Bound: every per-class split count is within `L` of its target, `L` the size of that
/// class's largest group (a group is placed only into the split with the most room,
/// which is positive while items remain, so no split overshoots by `L` or more; and were a
/// split short by more than `L` at the end, every split placed into would have had more
/// than `L` room left before each placement and so still room after it, leaving items
/// unplaced); the move that fills an empty split is made only within it.
///
/// Errors: as [`stratified_split`], and [`Error::BadDataset`] (empty `path`) when a class's
/// groups are too large to give every split an image within that bound, or a group holds two classes (the
/// message names the group id and two of its items).
pub fn stratified_group_split(
    labels: &[usize],
    groups: &[usize],
    val: f64,
    test: f64,
    seed: u64,
) -> Result<Vec<Split>> {
    check_split_inputs(labels, groups, val, test)?;
    let mut class_size: BTreeMap<usize, usize> = BTreeMap::new();
    for &l in labels {
        *class_size.entry(l).or_default() += 1;
    }
    let classes: Vec<usize> = class_size.keys().copied().collect();
    let counts: Vec<usize> = class_size.values().copied().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_COUNTS);
    let plan = plan_counts(&counts, &classes, val, test, &mut rng)?;

    let by_first = groups_by_first_item(labels, groups, |g, first, i| {
        format!(
            "group {g} holds items of different classes: item {first} (label {}) and item {i} \
             (label {})",
            labels[first], labels[i]
        )
    })?;

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(STREAM_GROUP_ASSIGN);
    let mut out = vec![Split::Train; labels.len()];
    for (ci, &class) in classes.iter().enumerate() {
        let mut members: Vec<&Vec<usize>> = by_first
            .iter()
            .filter(|items| labels[items[0]] == class)
            .collect();
        members.shuffle(&mut rng);
        members.sort_by_key(|items| std::cmp::Reverse(items.len()));
        let largest = members.first().map_or(0, |items| items.len()) as i64;
        let mut room = plan[ci].map(|n| n as i64);
        let mut placed: [Vec<&Vec<usize>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for items in members {
            // The most room; on a tie a split still without an image of the class, then the
            // lowest split (max_by_key keeps the last maximum, so iterate in reverse).
            let s = (0..3)
                .rev()
                .max_by_key(|&s| (room[s], placed[s].is_empty()))
                .expect("three splits");
            room[s] -= items.len() as i64;
            placed[s].push(items);
        }
        // A split left without an image of the class takes one group from a split that
        // has two or more, if both then stay within `largest` of their targets (the move
        // that keeps the larger of the two deviations smallest).
        for e in 0..3 {
            if !placed[e].is_empty() {
                continue;
            }
            let mut best: Option<(i64, usize, usize)> = None;
            for d in (0..3).filter(|&d| placed[d].len() > 1) {
                for (k, items) in placed[d].iter().enumerate() {
                    let size = items.len() as i64;
                    let (to, from) = (room[e] - size, room[d] + size);
                    let worst = to.abs().max(from.abs());
                    if worst <= largest && best.is_none_or(|(w, _, _)| worst < w) {
                        best = Some((worst, d, k));
                    }
                }
            }
            if let Some((_, d, k)) = best {
                let items = placed[d].remove(k);
                room[d] += items.len() as i64;
                room[e] -= items.len() as i64;
                placed[e].push(items);
            }
        }
        if let Some(s) = (0..3).find(|&s| placed[s].is_empty()) {
            return Err(bad_dataset(format!(
                "class {class}: its groups are too large to give the {} split an image \
                 (planned train {}, val {}, test {}; largest group {largest} images)",
                Split::ALL[s].name(),
                plan[ci][0],
                plan[ci][1],
                plan[ci][2],
            )));
        }
        for (s, groups) in placed.iter().enumerate() {
            for &i in groups.iter().flat_map(|items| items.iter()) {
                out[i] = Split::ALL[s];
            }
        }
    }
    Ok(out)
}

/// Stream of the group shuffle in [`stratified_group_kfold`] with a seed.
const STREAM_GROUP_FOLDS: u64 = 2;

/// NumPy's sum of a contiguous run of `f64` (`np.add.reduce` along a row): its pairwise
/// summation, eight accumulators over blocks of at most 128 values; below eight values a
/// plain left-to-right loop.
fn np_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, v| acc + v)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[whole..] {
            res += v;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        np_pairwise_sum(&a[..half]) + np_pairwise_sum(&a[half..])
    }
}

/// NumPy's `np.std(.., ddof=0)` along a contiguous row (pairwise sums).
fn np_std_row(row: &[f64]) -> f64 {
    let n = row.len() as f64;
    let mean = np_pairwise_sum(row) / n;
    let squares: Vec<f64> = row.iter().map(|v| (v - mean) * (v - mean)).collect();
    (np_pairwise_sum(&squares) / n).sqrt()
}

/// NumPy's `np.std(.., ddof=0, axis=0)` of one column of a row-major matrix: NumPy adds
/// whole rows into the result one after another, so these sums run left to right.
fn np_std_column(column: &[f64]) -> f64 {
    let n = column.len() as f64;
    let mean = column.iter().fold(0.0, |acc, v| acc + v) / n;
    let var = column
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .fold(0.0, |acc, v| acc + v)
        / n;
    var.sqrt()
}

/// NumPy's `np.isclose(a, b)` with its default tolerances (`rtol=1e-5`, `atol=1e-8`).
fn np_isclose(a: f64, b: f64) -> bool {
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-8 + 1e-5 * b.abs()
}

/// Assigns every item to one of `k` folds, keeping groups whole and the class
/// proportions of the folds as even as the groups allow.
///
/// `labels[i]` is item i's class and `groups[i]` its group id (any values; only their
/// order matters, as in `np.unique`). Returns the fold (`0..k`) of every item.
///
/// The algorithm is scikit-learn's `StratifiedGroupKFold`: per-group class counts; groups
/// ordered by the standard deviation of their class counts, largest first (a stable sort,
/// so equal deviations keep their order); each group to the fold that minimises the mean
/// over classes of the standard deviation over folds of `fold count / class size`, near
/// ties (`np.isclose`) going to the fold with fewer items, exact ties to the lower fold.
///
/// `seed: None` is `StratifiedGroupKFold(shuffle=False)`: groups start in ascending id
/// order, and every item gets exactly scikit-learn's fold. `Some(seed)` first shuffles
/// the group order with `ChaCha8Rng` (deterministic on every platform); scikit-learn's
/// `shuffle=True` draws from NumPy's generator, so seeded folds do not match its folds,
/// only its algorithm.
///
/// Errors: [`Error::InvalidOption`] for `k < 2` or mismatched lengths; [`Error::BadDataset`]
/// (empty `path`, for the caller to fill in) for no items, fewer groups than folds, `k`
/// larger than every class (scikit-learn's check), or a group whose items have different
/// labels (the message names the group id and two of its items).
pub fn stratified_group_kfold(
    labels: &[usize],
    groups: &[usize],
    k: usize,
    seed: Option<u64>,
) -> Result<Vec<u32>> {
    check_lengths(labels, groups)?;
    if k < 2 {
        return Err(Error::InvalidOption(format!(
            "cross-validation needs at least 2 folds, got {k}"
        )));
    }
    if labels.is_empty() {
        return Err(bad_dataset("no images to split into folds".into()));
    }

    // Classes and groups as np.unique sees them: sorted values, indexed by rank.
    let mut class_size: BTreeMap<usize, usize> = BTreeMap::new();
    for &l in labels {
        *class_size.entry(l).or_default() += 1;
    }
    let class_index: BTreeMap<usize, usize> = class_size
        .keys()
        .enumerate()
        .map(|(i, &l)| (l, i))
        .collect();
    let y_cnt: Vec<f64> = class_size.values().map(|&n| n as f64).collect();
    let n_classes = y_cnt.len();
    if class_size.values().all(|&n| k > n) {
        return Err(bad_dataset(format!(
            "{k} folds but no class has {k} images (largest class: {})",
            class_size.values().max().copied().unwrap_or(0)
        )));
    }

    let mut first_of_group: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        let first = *first_of_group.entry(g).or_insert(i);
        if labels[first] != labels[i] {
            return Err(bad_dataset(format!(
                "group {g} holds items of different classes: item {first} (label {}) and \
                 item {i} (label {})",
                labels[first], labels[i]
            )));
        }
    }
    let n_groups = first_of_group.len();
    if k > n_groups {
        return Err(bad_dataset(format!(
            "{k} folds need at least {k} groups, but there are only {n_groups}"
        )));
    }
    let group_index: BTreeMap<usize, usize> = first_of_group
        .keys()
        .enumerate()
        .map(|(i, &g)| (g, i))
        .collect();
    let group_of: Vec<usize> = groups.iter().map(|g| group_index[g]).collect();

    let mut counts = vec![vec![0.0f64; n_classes]; n_groups];
    for (&l, &g) in labels.iter().zip(&group_of) {
        counts[g][class_index[&l]] += 1.0;
    }

    let mut order: Vec<usize> = (0..n_groups).collect();
    if let Some(seed) = seed {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(STREAM_GROUP_FOLDS);
        order.shuffle(&mut rng);
    }
    let spread: Vec<f64> = counts.iter().map(|c| np_std_row(c)).collect();
    // np.argsort(-std, kind="stable"): descending, equal values keep their order.
    order.sort_by(|&a, &b| spread[b].total_cmp(&spread[a]));

    let mut per_fold = vec![vec![0.0f64; n_classes]; k];
    let mut fold_of_group = vec![0u32; n_groups];
    let mut column = Vec::with_capacity(k);
    for g in order {
        let group_counts = &counts[g];
        let mut best = 0;
        let mut min_eval = f64::INFINITY;
        let mut min_samples = f64::INFINITY;
        for f in 0..k {
            for (c, n) in group_counts.iter().enumerate() {
                per_fold[f][c] += n;
            }
            let std_per_class: Vec<f64> = (0..n_classes)
                .map(|c| {
                    column.clear();
                    column.extend(per_fold.iter().map(|row| row[c] / y_cnt[c]));
                    np_std_column(&column)
                })
                .collect();
            for (c, n) in group_counts.iter().enumerate() {
                per_fold[f][c] -= n;
            }
            let fold_eval = np_pairwise_sum(&std_per_class) / n_classes as f64;
            let samples = per_fold[f].iter().fold(0.0, |acc, v| acc + v);
            if fold_eval < min_eval || (np_isclose(fold_eval, min_eval) && samples < min_samples) {
                min_eval = fold_eval;
                min_samples = samples;
                best = f;
            }
        }
        for (c, n) in group_counts.iter().enumerate() {
            per_fold[best][c] += n;
        }
        fold_of_group[g] = best as u32;
    }
    Ok(group_of.iter().map(|&g| fold_of_group[g]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels_for(counts: &[usize]) -> Vec<usize> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
            .collect()
    }

    fn tally(labels: &[usize], splits: &[Split], classes: usize) -> Vec<[usize; 3]> {
        let mut t = vec![[0usize; 3]; classes];
        for (&l, &s) in labels.iter().zip(splits) {
            t[l][Split::ALL.iter().position(|&x| x == s).unwrap()] += 1;
        }
        t
    }

    /// Values from ../shared/fixtures/split_counts.json (scikit-learn), hard-coded so that
    /// the plain `cargo test` checks them too.
    const SKLEARN_CASES: [([usize; 2], [[usize; 3]; 2]); 4] = [
        ([6289, 5590], [[3773, 1258, 1258], [3354, 1118, 1118]]),
        ([160, 40], [[96, 32, 32], [24, 8, 8]]),
        ([1800, 1497], [[1080, 360, 360], [897, 300, 300]]),
        ([7, 5], [[3, 2, 2], [3, 1, 1]]),
    ];

    #[test]
    fn counts_match_scikit_learn() {
        for (input, expect) in SKLEARN_CASES {
            for seed in [0, 42, 7] {
                let got = split_counts(&input, 0.2, 0.2, seed).unwrap();
                assert_eq!(got, expect.to_vec(), "input {input:?} seed {seed}");
            }
        }
    }

    #[test]
    fn assignment_has_exact_counts() {
        for (input, expect) in SKLEARN_CASES {
            let labels = labels_for(&input);
            let groups: Vec<usize> = (0..labels.len()).collect();
            let splits = stratified_split(&labels, &groups, 0.2, 0.2, 42).unwrap();
            assert_eq!(tally(&labels, &splits, 2), expect.to_vec(), "{input:?}");
        }
    }

    #[test]
    fn approximate_mode_values() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // 9 of [7, 5]: 5.25 and 3.75 -> floors 5, 3; the larger remainder gets the last.
        assert_eq!(approximate_mode(&[7, 5], 9, &mut rng), vec![5, 4]);
        // Exact shares need no rounding.
        assert_eq!(approximate_mode(&[10, 30], 20, &mut rng), vec![5, 15]);
        // Three equal remainders, one draw left: exactly one class gets it, seed-dependent.
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let got = approximate_mode(&[1, 1, 1], 1, &mut rng);
            assert_eq!(got.iter().sum::<usize>(), 1);
            seen.insert(got);
        }
        assert_eq!(seen.len(), 3, "ties are broken at random");
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let labels = labels_for(&[300, 120]);
        let groups: Vec<usize> = (0..labels.len()).collect();
        let a = stratified_split(&labels, &groups, 0.2, 0.2, 42).unwrap();
        assert_eq!(a, stratified_split(&labels, &groups, 0.2, 0.2, 42).unwrap());
        let b = stratified_split(&labels, &groups, 0.2, 0.2, 43).unwrap();
        assert_ne!(a, b);
        assert_eq!(tally(&labels, &a, 2), tally(&labels, &b, 2));
    }

    #[test]
    fn duplicate_groups_stay_together_and_counts_stay_exact() {
        let labels = labels_for(&[160, 40]);
        // Pairs and triples of duplicates in both classes, interleaved with singletons.
        let mut groups: Vec<usize> = (0..labels.len()).collect();
        for i in (0..150).step_by(5) {
            groups[i + 1] = groups[i];
            if i % 10 == 0 {
                groups[i + 2] = groups[i];
            }
        }
        for i in (160..196).step_by(6) {
            groups[i + 1] = groups[i];
        }
        for seed in 0..20 {
            let splits = stratified_split(&labels, &groups, 0.2, 0.2, seed).unwrap();
            assert_eq!(
                tally(&labels, &splits, 2),
                vec![[96, 32, 32], [24, 8, 8]],
                "seed {seed}"
            );
            for (i, &g) in groups.iter().enumerate() {
                let first = groups.iter().position(|&x| x == g).unwrap();
                assert_eq!(
                    splits[i], splits[first],
                    "group {g} split apart (seed {seed})"
                );
            }
        }
    }

    #[test]
    fn group_ids_need_not_be_dense() {
        let labels = labels_for(&[20, 10]);
        let groups: Vec<usize> = (0..labels.len()).map(|i| 1_000_000 + (i / 2) * 7).collect();
        let splits = stratified_split(&labels, &groups, 0.2, 0.2, 1).unwrap();
        for i in (0..labels.len()).step_by(2) {
            assert_eq!(splits[i], splits[i + 1]);
        }
        assert_eq!(tally(&labels, &splits, 2), vec![[12, 4, 4], [6, 2, 2]]);
    }

    #[test]
    fn errors() {
        let labels = labels_for(&[50, 50]);
        let groups: Vec<usize> = (0..100).collect();
        for (val, test) in [
            (0.2, 0.0),
            (0.2, 1.0),
            (0.0, 0.2),
            (0.5, 0.5),
            (0.2, f64::NAN),
        ] {
            let e = stratified_split(&labels, &groups, val, test, 0).unwrap_err();
            assert!(matches!(e, Error::InvalidOption(_)), "{val} {test}: {e}");
        }
        assert!(matches!(
            stratified_split(&labels, &groups[..99], 0.2, 0.2, 0),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            stratified_split(&[], &[], 0.2, 0.2, 0),
            Err(Error::BadDataset { .. })
        ));

        // Label 3 has 2 images: 60/20/20 cannot give it one in every split.
        let mut labels = labels_for(&[40]);
        labels.extend([3, 3]);
        let groups: Vec<usize> = (0..labels.len()).collect();
        match stratified_split(&labels, &groups, 0.2, 0.2, 0) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(
                    reason.starts_with("class 3 has only 2 image(s)"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }

        // One group across two classes.
        let labels = labels_for(&[10, 10]);
        let mut groups: Vec<usize> = (0..20).collect();
        groups[15] = 4;
        match stratified_split(&labels, &groups, 0.2, 0.2, 0) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(reason.contains("items 4 and 15"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_group_is_an_error_only_when_a_split_would_be_empty() {
        // 10 images of one class all duplicates of each other: cannot be split.
        let labels = labels_for(&[30, 10]);
        let mut groups: Vec<usize> = (0..40).collect();
        for g in groups.iter_mut().skip(30) {
            *g = 30;
        }
        let e = stratified_split(&labels, &groups, 0.2, 0.2, 0).unwrap_err();
        assert!(e.to_string().contains("class 1"), "{e}");
    }

    #[test]
    fn numpy_pairwise_sum_order() {
        // Below eight values: left to right, so 1 is lost against 1e16 then cancelled.
        assert_eq!(np_pairwise_sum(&[1e16, 1.0, -1e16]), 0.0);
        // Eight or more: eight accumulators, 1 + 1 survives in its own lane pair.
        let mut v = vec![0.0; 16];
        v[0] = 1e16;
        v[8] = -1e16;
        v[1] = 1.0;
        v[9] = 1.0;
        assert_eq!(np_pairwise_sum(&v), 2.0);
        assert_eq!(np_pairwise_sum(&[]), 0.0);
        assert_eq!(np_std_row(&[1.0, 3.0]), 1.0);
        assert_eq!(np_std_column(&[2.0, 2.0, 2.0]), 0.0);
    }

    #[test]
    fn group_kfold_errors() {
        let labels = labels_for(&[6, 4]);
        let groups: Vec<usize> = (0..10).collect();
        for k in [0, 1] {
            let e = stratified_group_kfold(&labels, &groups, k, None).unwrap_err();
            assert!(matches!(e, Error::InvalidOption(_)), "k {k}: {e}");
        }
        assert!(matches!(
            stratified_group_kfold(&labels, &groups[..9], 3, None),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            stratified_group_kfold(&[], &[], 3, None),
            Err(Error::BadDataset { .. })
        ));
        // Ten items in four groups cannot make five folds.
        let few: Vec<usize> = (0..10).map(|i| i % 4).collect();
        let labels_few = vec![0; 10];
        match stratified_group_kfold(&labels_few, &few, 5, None) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(reason.contains("only 4"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Seven folds, but classes of 6 and 4.
        match stratified_group_kfold(&labels, &groups, 7, None) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(reason.contains("largest class: 6"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Group 3 holds item 3 (class 0) and item 8 (class 1).
        let mut mixed = groups.clone();
        mixed[8] = 3;
        match stratified_group_kfold(&labels, &mixed, 3, None) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(reason.contains("group 3"), "{reason}");
                assert!(
                    reason.contains("item 3") && reason.contains("item 8"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_kfold_hand_computed() {
        // Spreads: group 10 ([3, 0]) 1.5, every other group 0.5, so 10 goes first (fold 0 on
        // a tie of empty folds), then 20, 30, 40 even class 0 out in fold 1; 50 meets equal
        // scores and equal fold sizes (3 and 3) and takes fold 0, 60 then evens class 1.
        // scikit-learn's StratifiedGroupKFold(2) gives test folds [0, 1, 2, 6], [3, 4, 5, 7].
        let labels = [0, 0, 0, 0, 0, 0, 1, 1];
        let groups = [10, 10, 10, 20, 30, 40, 50, 60];
        let folds = stratified_group_kfold(&labels, &groups, 2, None).unwrap();
        assert_eq!(folds, vec![0, 0, 0, 1, 1, 1, 0, 1]);
    }

    /// Group ids for `sizes` (per class, the sizes of its groups), items class by class.
    fn grouped(sizes: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
        let (mut labels, mut groups) = (Vec::new(), Vec::new());
        let mut next = 0;
        for (c, class_sizes) in sizes.iter().enumerate() {
            for &n in class_sizes {
                labels.extend(std::iter::repeat_n(c, n));
                groups.extend(std::iter::repeat_n(next, n));
                next += 1;
            }
        }
        (labels, groups)
    }

    fn check_grouped(sizes: &[Vec<usize>], val: f64, test: f64, seed: u64) -> Vec<Split> {
        let (labels, groups) = grouped(sizes);
        let splits = stratified_group_split(&labels, &groups, val, test, seed).unwrap();
        for (i, &g) in groups.iter().enumerate() {
            let first = groups.iter().position(|&x| x == g).unwrap();
            assert_eq!(splits[i], splits[first], "group {g} split apart");
        }
        let per_class: Vec<usize> = sizes.iter().map(|s| s.iter().sum()).collect();
        let target = split_counts(&per_class, val, test, seed).unwrap();
        let got = tally(&labels, &splits, sizes.len());
        for (c, class_sizes) in sizes.iter().enumerate() {
            let largest = *class_sizes.iter().max().unwrap();
            for s in 0..3 {
                let diff = got[c][s].abs_diff(target[c][s]);
                assert!(
                    diff <= largest,
                    "class {c} split {s}: {} vs target {} (largest group {largest})",
                    got[c][s],
                    target[c][s]
                );
                assert!(got[c][s] > 0);
            }
        }
        splits
    }

    #[test]
    fn grouped_split_singletons_meet_the_targets_exactly() {
        let (labels, groups) = grouped(&[vec![1; 160], vec![1; 40]]);
        let splits = stratified_group_split(&labels, &groups, 0.2, 0.2, 3).unwrap();
        assert_eq!(tally(&labels, &splits, 2), vec![[96, 32, 32], [24, 8, 8]]);
    }

    #[test]
    fn grouped_split_hand_computed() {
        // Class 0: 12 images, targets [6, 3, 3]; groups of 5, 3, 2, 1, 1 (items 0-4, 5-7,
        // 8-9, 10, 11). Rooms: 5 -> train (1, 3, 3); 3 -> val on the tie (1, 0, 3); 2 -> test
        // (1, 0, 1); 1 -> train on the tie (0, 0, 1); 1 -> test.
        let sizes = [vec![5, 3, 2, 1, 1], vec![1; 6]];
        let (labels, groups) = grouped(&sizes);
        let splits = stratified_group_split(&labels, &groups, 0.2, 0.2, 0).unwrap();
        assert_eq!(split_counts(&[12, 6], 0.2, 0.2, 0).unwrap()[0], [6, 3, 3]);
        use Split::{Test, Train, Val};
        let expect = [
            Train, Train, Train, Train, Train, Val, Val, Val, Test, Test, Train, Test,
        ];
        assert_eq!(splits[..12], expect);
    }

    #[test]
    fn grouped_split_without_small_groups_stays_within_one_group() {
        // Only groups of 4 in class 0: its targets are not multiples of 4, so no split
        // meets them exactly, yet every split stays within 4 of its target.
        let sizes = [vec![4; 12], vec![1; 20]];
        check_grouped(&sizes, 0.2, 0.2, 5);
    }

    #[test]
    fn grouped_split_is_deterministic_and_seed_dependent() {
        let sizes = [
            vec![3, 1, 2, 1, 1, 4, 1, 2, 1, 1, 1, 2, 3, 1, 1, 1],
            vec![2, 1, 1, 1, 2, 1, 1],
        ];
        let a = check_grouped(&sizes, 0.2, 0.2, 1);
        assert_eq!(a, check_grouped(&sizes, 0.2, 0.2, 1));
        assert_ne!(a, check_grouped(&sizes, 0.2, 0.2, 2));
    }

    #[test]
    fn grouped_split_errors() {
        let (labels, mut groups) = grouped(&[vec![1; 10], vec![1; 10]]);
        groups[15] = groups[4];
        match stratified_group_split(&labels, &groups, 0.2, 0.2, 0) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(
                    reason.contains("group 4") && reason.contains("item 15"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // One class in two groups cannot fill three splits.
        let (labels, groups) = grouped(&[vec![1; 20], vec![5, 5]]);
        match stratified_group_split(&labels, &groups, 0.2, 0.2, 0) {
            Err(Error::BadDataset { reason, .. }) => {
                assert!(reason.starts_with("class 1:"), "{reason}");
                assert!(reason.contains("largest group 5"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            stratified_group_split(&labels, &groups[1..], 0.2, 0.2, 0),
            Err(Error::InvalidOption(_))
        ));
        assert!(matches!(
            stratified_group_split(&labels, &groups, 0.5, 0.5, 0),
            Err(Error::InvalidOption(_))
        ));
    }

    #[test]
    fn grouped_split_gives_every_split_an_image_when_groups_allow() {
        // Four pairs for targets [5, 1, 2]: most room alone would put three pairs in train.
        let sizes = [vec![2; 4], vec![1; 12]];
        let splits = check_grouped(&sizes, 0.2, 0.2, 0);
        let (labels, _) = grouped(&sizes);
        assert_eq!(tally(&labels, &splits, 2)[0], [4, 2, 2]);
        // Three groups of four: the third goes to val on the tie, test then takes one
        // from train.
        check_grouped(&[vec![4; 3], vec![1; 20]], 0.2, 0.2, 0);
    }

    proptest::proptest! {
        #[test]
        fn grouped_split_of_equal_groups_stays_within_one_group(
            size in 2usize..=5,
            groups in 3usize..12,
            singles in 10usize..40,
            seed in 0u64..100,
        ) {
            let sizes = [vec![size; groups], vec![1; singles]];
            let (labels, group_ids) = grouped(&sizes);
            match stratified_group_split(&labels, &group_ids, 0.2, 0.2, seed) {
                Ok(_) => {
                    check_grouped(&sizes, 0.2, 0.2, seed);
                }
                Err(Error::BadDataset { reason, .. }) => {
                    proptest::prop_assert!(reason.starts_with("class"), "{}", reason);
                }
                Err(e) => panic!("{e}"),
            }
        }

        #[test]
        fn grouped_split_stays_within_one_group_of_the_targets(
            a in proptest::collection::vec(1usize..=6, 15..60),
            b in proptest::collection::vec(1usize..=6, 15..40),
            c in proptest::collection::vec(1usize..=3, 0..30),
            seed in 0u64..1000,
            val in 0.1f64..0.3,
            test in 0.1f64..0.3,
        ) {
            let mut sizes = vec![a, b];
            if c.len() >= 15 {
                sizes.push(c);
            }
            check_grouped(&sizes, val, test, seed);
        }
    }
}

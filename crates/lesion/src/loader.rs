//! The batch loader used by `train` and `eval`: reads a prepared dataset's memory-mapped
//! shards and yields normalised batches.
//!
//! A [`Batch`] holds `images`: f32 `[b, 3, S, S]` (NCHW, `(x / 255 - mean[c]) / std[c]` with
//! the manifest's mean/std), `labels`: f32 `[b]` (0.0 benign, 1.0 malignant), and the rows'
//! `source_index` (into the manifest's image list) and `u8` labels on the host.
//!
//! Order: without shuffling, shards in file order and rows in shard order. With shuffling,
//! the shard order is permuted per epoch and rows are permuted within consecutive windows
//! of [`SHUFFLE_WINDOW_SHARDS`] shards, so only a few shards are being read at any time
//! (page-cache friendly on datasets larger than memory) while batches still mix shards.
//! Everything is a function of `(seed, epoch, split)`. Train batches come from view
//! `epoch % views`, so with `--views K` each of K consecutive epochs sees other augmentations.
//!
//! With [`Sampler::Balanced`] a pass instead draws as many rows as the split holds, with
//! replacement, each draw a class chosen uniformly among the classes present and then a row
//! of that class chosen uniformly: the distribution of PyTorch's
//! `WeightedRandomSampler(weights=1/count[y], num_samples=n, replacement=True)`, seeded by
//! `(seed, epoch, split)` through its own ChaCha8 stream. The draws are then ordered as
//! shuffling orders rows: by windows of [`SHUFFLE_WINDOW_SHARDS`] shards in a permuted shard
//! order, shuffled within each window, so that a pass reads a few shards at a time and the
//! shards' pages do not accumulate in memory. Which rows are drawn, and how often, is the
//! sampler's; only their order is windowed.
//!
//! K-fold data ([`crate::prep`] documents the layout): [`PreparedDataset::with_fold`] selects
//! fold `i`; then [`Split::Train`] is the train shards' rows whose image is in another fold
//! and [`Split::Val`] the val shards' rows whose image is in fold `i` (clean images), and
//! every pass, length and order above is over those rows only: the selection keeps the
//! shards and the rows' order within them, and shuffling and balanced draws work on the
//! selected rows as they do on whole shards. The test split is never selected. Without a
//! fold, the train and val splits of K-fold data have no rows and
//! [`PreparedDataset::loader`] refuses them, naming `--fold`.
//!
//! A background thread builds the next host batches (normalisation is the costly part) while
//! the caller computes; one finished batch waits in the channel while the thread holds the
//! next. A batch of 128 at 224 px is 77 MB of f32, so the queue is kept short: one waiting
//! batch is what overlaps loading with compute (a direct hand-over leaves the training loop
//! waiting on normalisation), and each further one only adds its size to the peak memory.
//! Measurements are in `docs/benchmarks.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classes::Classes;
use crate::manifest::Manifest;
use crate::shard::Shard;
use crate::split::Split;
use crate::transforms::normalize_chw;
use crate::verify::{self, VerifyReport};
use crate::{Error, Result};

/// Number of consecutive (shuffled) shards whose rows are mixed together.
pub const SHUFFLE_WINDOW_SHARDS: usize = 4;
/// Finished batches that may wait in the channel besides the one the loader holds (see the
/// module docs for why one).
const PREFETCH: usize = 1;

/// A prepared dataset opened for reading.
#[derive(Debug)]
pub struct PreparedDataset {
    dir: PathBuf,
    manifest: Manifest,
    /// Shards of each (split, view), in file order.
    shards: HashMap<(Split, u32), Vec<Arc<Shard>>>,
    /// The selected fold of K-fold data, if any.
    fold: Option<FoldSelection>,
}

/// A fold of K-fold data: for each train or val `(split, view)`, the rows of each of its
/// shards (in shard order) that the fold reads, ascending.
#[derive(Debug)]
struct FoldSelection {
    fold: u32,
    rows: HashMap<(Split, u32), Vec<Arc<[u32]>>>,
}

/// The shards a pass reads and, with a fold, the rows of each that it reads.
struct PassShards {
    shards: Vec<Arc<Shard>>,
    /// `None`: every row of every shard.
    rows: Option<Vec<Arc<[u32]>>>,
}

impl PassShards {
    fn len(&self) -> usize {
        match &self.rows {
            Some(rows) => rows.iter().map(|r| r.len()).sum(),
            None => self.shards.iter().map(|s| s.len()).sum(),
        }
    }
}

impl PreparedDataset {
    /// Reads the manifest and maps every shard it lists, checking each shard's header
    /// against it (use [`PreparedDataset::verify`] to re-hash the contents too).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::load(&dir)?;
        let mut shards: HashMap<(Split, u32), Vec<Arc<Shard>>> = HashMap::new();
        for entry in &manifest.shards {
            let path = dir.join(&entry.file);
            let shard = Shard::open(&path)?;
            let m = shard.meta();
            if m.split != entry.split
                || m.view != entry.view
                || m.count != entry.count
                || m.image_size != manifest.image_size
            {
                return Err(Error::BadArtifact {
                    path,
                    reason: "shard header disagrees with manifest.json".into(),
                });
            }
            shards
                .entry((entry.split, entry.view))
                .or_default()
                .push(Arc::new(shard));
        }
        Ok(Self {
            dir,
            manifest,
            shards,
            fold: None,
        })
    }

    /// [`PreparedDataset::open`], then [`PreparedDataset::with_fold`] when `fold` is given;
    /// K-fold data without a fold is refused here (naming `--fold`) rather than at its
    /// first pass.
    pub fn open_fold(dir: impl AsRef<Path>, fold: Option<u32>) -> Result<Self> {
        let data = Self::open(dir)?;
        match fold {
            Some(f) => data.with_fold(f),
            None if data.folds() > 0 => Err(data.fold_needed()),
            None => Ok(data),
        }
    }

    /// Selects fold `fold` of K-fold data (see the module docs): from then on the train
    /// split is the other folds' (augmented) rows and the val split this fold's clean rows,
    /// for [`len`](Self::len), [`eval_order`](Self::eval_order),
    /// [`epoch_rows`](Self::epoch_rows) and [`loader`](Self::loader). Errors
    /// ([`Error::InvalidOption`]) when the data have no folds or `fold` is not below their
    /// number.
    pub fn with_fold(mut self, fold: u32) -> Result<Self> {
        let k = self.manifest.folds;
        if k == 0 {
            return Err(Error::InvalidOption(format!(
                "--fold {fold}: {} was prepared without folds (`lesion-prep IMAGES --out DIR \
                 --folds K` prepares K folds)",
                self.dir.display()
            )));
        }
        if fold >= k {
            return Err(Error::InvalidOption(format!(
                "--fold {fold}: {} has {k} folds, numbered 0 to {}",
                self.dir.display(),
                k - 1
            )));
        }
        let images = &self.manifest.images;
        let fold_of = |si: u32| images.get(si as usize).and_then(|im| im.fold);
        let mut rows = HashMap::new();
        for (&(split, view), shards) in &self.shards {
            let keep: fn(Option<u32>, u32) -> bool = match split {
                Split::Train => |f: Option<u32>, i: u32| f.is_some_and(|f| f != i),
                Split::Val => |f: Option<u32>, i: u32| f == Some(i),
                Split::Test => continue,
            };
            let selected = shards
                .iter()
                .map(|shard| {
                    (0..shard.len() as u32)
                        .filter(|&r| keep(fold_of(shard.source_index()[r as usize]), fold))
                        .collect()
                })
                .collect();
            rows.insert((split, view), selected);
        }
        self.fold = Some(FoldSelection { fold, rows });
        Ok(self)
    }

    /// Number of cross-validation folds of the data (0: none).
    pub fn folds(&self) -> u32 {
        self.manifest.folds
    }

    /// The selected fold ([`PreparedDataset::with_fold`]).
    pub fn fold(&self) -> Option<u32> {
        self.fold.as_ref().map(|f| f.fold)
    }

    /// The error for reading the train or val split of K-fold data without a fold.
    fn fold_needed(&self) -> Error {
        let k = self.manifest.folds;
        Error::InvalidOption(format!(
            "{} is prepared for {k}-fold cross-validation: pass --fold I (I from 0 to {}) to \
             train on the other folds and validate on fold I",
            self.dir.display(),
            k.saturating_sub(1)
        ))
    }

    /// Re-hashes every shard against the manifest; an error lists every mismatch.
    pub fn verify(&self) -> Result<VerifyReport> {
        verify::verify(&self.dir)?.into_result()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Side S of the square images.
    pub fn image_size(&self) -> u32 {
        self.manifest.image_size
    }

    /// Class names; a class's position is its label.
    pub fn class_names(&self) -> &[String] {
        &self.manifest.classes
    }

    /// The classes and their positive group, checked.
    pub fn classes(&self) -> Result<Classes> {
        self.manifest.classes()
    }

    /// Number of augmented views of the train split.
    pub fn views(&self) -> u32 {
        self.manifest.views.max(1)
    }

    /// Number of images in `split` (one view); with a fold, the fold's (module docs).
    pub fn len(&self, split: Split) -> usize {
        if self.is_selected(split) {
            return self.pass_shards(split, 0).len();
        }
        self.manifest.counts(split).map_or(0, |c| c.total)
    }

    /// Images of each class in `split` (one view), indexed by label; with a fold, the
    /// fold's.
    pub fn class_counts(&self, split: Split) -> Vec<usize> {
        let mut counts = vec![0; self.manifest.classes.len()];
        if self.is_selected(split) {
            let pass = self.pass_shards(split, 0);
            for (shard, rows) in pass.shards.iter().zip(pass.rows.iter().flatten()) {
                for &r in rows.iter() {
                    let y = usize::from(shard.labels()[r as usize]);
                    if let Some(c) = counts.get_mut(y) {
                        *c += 1;
                    }
                }
            }
        } else if let Some(c) = self.manifest.counts(split) {
            for (n, &m) in counts.iter_mut().zip(&c.per_class) {
                *n = m;
            }
        }
        counts
    }

    /// Whether `split`'s rows are chosen by fold: the train and val splits of K-fold data.
    fn is_selected(&self, split: Split) -> bool {
        self.manifest.folds > 0 && split != Split::Test
    }

    /// Source indices and labels of `split` in the order an evaluation pass
    /// ([`LoaderOptions::eval`]) yields them, from the shards' index arrays (no image is read).
    pub fn eval_order(&self, split: Split) -> (Vec<u32>, Vec<u8>) {
        self.epoch_rows(split, &LoaderOptions::eval(1))
    }

    /// Source indices and labels of the rows a [`PreparedDataset::loader`] pass with `opts`
    /// yields, in its order, from the shards' index arrays (no image is read).
    pub fn epoch_rows(&self, split: Split, opts: &LoaderOptions) -> (Vec<u32>, Vec<u8>) {
        let pass = self.epoch_shards(split, opts.epoch);
        let shards = &pass.shards;
        let mut order = pass_order(&pass, split, opts);
        if opts.drop_last && opts.batch_size > 0 {
            order.truncate(order.len() / opts.batch_size * opts.batch_size);
        }
        order
            .into_iter()
            .map(|(s, r)| {
                let shard = &shards[s as usize];
                (shard.source_index()[r as usize], shard.labels()[r as usize])
            })
            .unzip()
    }

    /// Shards (and, with a fold, rows) that an epoch of `split` reads.
    fn epoch_shards(&self, split: Split, epoch: u64) -> PassShards {
        let view = match split {
            Split::Train => (epoch % self.views() as u64) as u32,
            _ => 0,
        };
        self.pass_shards(split, view)
    }

    /// Shards (and, with a fold, rows) of `(split, view)`; none for the train and val
    /// splits of K-fold data without a fold.
    fn pass_shards(&self, split: Split, view: u32) -> PassShards {
        let shards = self.shards.get(&(split, view)).cloned().unwrap_or_default();
        if !self.is_selected(split) {
            return PassShards { shards, rows: None };
        }
        match &self.fold {
            Some(sel) => PassShards {
                rows: Some(sel.rows.get(&(split, view)).cloned().unwrap_or_default()),
                shards,
            },
            None => PassShards {
                shards: Vec::new(),
                rows: None,
            },
        }
    }

    /// Starts a pass over `split`; batches are created on `device`.
    pub fn loader(
        &self,
        split: Split,
        opts: LoaderOptions,
        device: &Device,
    ) -> Result<BatchLoader> {
        if opts.batch_size == 0 {
            return Err(Error::InvalidOption("batch size must be at least 1".into()));
        }
        if self.is_selected(split) && self.fold.is_none() {
            return Err(self.fold_needed());
        }
        let pass = self.epoch_shards(split, opts.epoch);
        let order = pass_order(&pass, split, &opts);
        let shards = pass.shards;
        let num_batches = if opts.drop_last {
            order.len() / opts.batch_size
        } else {
            order.len().div_ceil(opts.batch_size)
        };
        let size = self.image_size() as usize;
        let norm = self.manifest.normalization;
        let batch_size = opts.batch_size;
        let (tx, rx) = sync_channel(PREFETCH);
        let handle = std::thread::Builder::new()
            .name(format!("lesion-loader-{}", split.name()))
            .spawn(move || {
                let per = 3 * size * size;
                // Once a shard's last row of the pass is read, the whole shard is released:
                // the kernel maps pages around those it reads, and a balanced pass leaves
                // rows undrawn, so releasing only the rows read would leave pages behind.
                let mut last_read = vec![usize::MAX; shards.len()];
                for (i, &(s, _)) in order.iter().enumerate() {
                    last_read[s as usize] = i;
                }
                let mut position = 0;
                for rows in order.chunks(batch_size).take(num_batches) {
                    let b = rows.len();
                    let mut images = vec![0f32; b * per];
                    let mut label_u8 = Vec::with_capacity(b);
                    let mut source_index = Vec::with_capacity(b);
                    for (k, &(s, r)) in rows.iter().enumerate() {
                        let shard = &shards[s as usize];
                        let r = r as usize;
                        normalize_chw(
                            shard.image(r),
                            norm.mean,
                            norm.std,
                            &mut images[k * per..(k + 1) * per],
                        );
                        shard.release(r);
                        label_u8.push(shard.labels()[r]);
                        source_index.push(shard.source_index()[r]);
                        if last_read[s as usize] == position {
                            (0..shard.len()).for_each(|row| shard.release(row));
                        }
                        position += 1;
                    }
                    let batch = HostBatch {
                        images,
                        label_u8,
                        source_index,
                    };
                    // The consumer stopped early: nothing left to do.
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io(&self.dir, e))?;
        Ok(BatchLoader {
            rx: Some(rx),
            handle: Some(handle),
            device: device.clone(),
            size,
            remaining: num_batches,
        })
    }
}

/// Which rows a training epoch visits (`--sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// Every row once, in the shuffled order of the module docs.
    #[default]
    Shuffle,
    /// As many draws as rows, with replacement, classes equally likely (module docs).
    Balanced,
}

option_names!(Sampler, "sampler", {
    Sampler::Shuffle => "shuffle",
    Sampler::Balanced => "balanced",
});

/// How one pass over a split is ordered and cut into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Shuffle (with [`Sampler::Shuffle`]); [`Sampler::Balanced`] draws at random anyway.
    pub shuffle: bool,
    pub seed: u64,
    /// Selects the shuffle permutation and, for train, the view (`epoch % views`).
    pub epoch: u64,
    /// Skip the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    pub sampler: Sampler,
}

impl LoaderOptions {
    /// In order, every row, view 0: for validation, test and inference.
    pub fn eval(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle: false,
            seed: 0,
            epoch: 0,
            drop_last: false,
            sampler: Sampler::Shuffle,
        }
    }

    /// Shuffled with `(seed, epoch)`, keeping the last partial batch (as PyTorch's default).
    pub fn train(batch_size: usize, seed: u64, epoch: u64) -> Self {
        Self {
            batch_size,
            shuffle: true,
            seed,
            epoch,
            drop_last: false,
            sampler: Sampler::Shuffle,
        }
    }

    /// These options with `sampler`.
    pub fn with_sampler(self, sampler: Sampler) -> Self {
        Self { sampler, ..self }
    }
}

/// The `(shard, row)` pairs a pass over `pass` visits, in order, by `opts.sampler`. With a
/// fold, the order is drawn over the selected rows (as if each shard held only those) and
/// then mapped to the rows' places in their shards.
fn pass_order(pass: &PassShards, split: Split, opts: &LoaderOptions) -> Vec<(u32, u32)> {
    let shards = &pass.shards;
    let mut order = match (opts.sampler, &pass.rows) {
        (Sampler::Shuffle, None) => {
            let lens: Vec<usize> = shards.iter().map(|s| s.len()).collect();
            epoch_order(&lens, split, opts)
        }
        (Sampler::Shuffle, Some(rows)) => {
            let lens: Vec<usize> = rows.iter().map(|r| r.len()).collect();
            epoch_order(&lens, split, opts)
        }
        (Sampler::Balanced, None) => {
            let labels: Vec<&[u8]> = shards.iter().map(|s| s.labels()).collect();
            balanced_order(&labels, split, opts)
        }
        (Sampler::Balanced, Some(rows)) => {
            let labels: Vec<Vec<u8>> = shards
                .iter()
                .zip(rows)
                .map(|(s, rows)| rows.iter().map(|&r| s.labels()[r as usize]).collect())
                .collect();
            let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
            balanced_order(&refs, split, opts)
        }
    };
    if let Some(rows) = &pass.rows {
        for (s, r) in &mut order {
            *r = rows[*s as usize][*r as usize];
        }
    }
    order
}

/// The order in which a pass visits `(shard, row)` pairs (see the module docs).
pub fn epoch_order(shard_lens: &[usize], split: Split, opts: &LoaderOptions) -> Vec<(u32, u32)> {
    let mut shards: Vec<u32> = (0..shard_lens.len() as u32).collect();
    let mut out = Vec::with_capacity(shard_lens.iter().sum());
    if !opts.shuffle {
        for s in shards {
            out.extend((0..shard_lens[s as usize] as u32).map(|r| (s, r)));
        }
        return out;
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&opts.seed.to_le_bytes());
    key[8..16].copy_from_slice(&opts.epoch.to_le_bytes());
    key[16] = split as u8;
    key[24..32].copy_from_slice(b"lesionLD");
    let mut rng = ChaCha8Rng::from_seed(key);
    shards.shuffle(&mut rng);
    for window in shards.chunks(SHUFFLE_WINDOW_SHARDS) {
        let start = out.len();
        for &s in window {
            out.extend((0..shard_lens[s as usize] as u32).map(|r| (s, r)));
        }
        out[start..].shuffle(&mut rng);
    }
    out
}

/// The rows a [`Sampler::Balanced`] pass draws (see the module docs), given the labels of
/// each shard's rows: as many `(shard, row)` draws as there are rows.
pub fn balanced_order(
    shard_labels: &[&[u8]],
    split: Split,
    opts: &LoaderOptions,
) -> Vec<(u32, u32)> {
    let mut by_class: Vec<Vec<(u32, u32)>> = Vec::new();
    for (s, labels) in shard_labels.iter().enumerate() {
        for (r, &y) in labels.iter().enumerate() {
            let y = usize::from(y);
            if by_class.len() <= y {
                by_class.resize_with(y + 1, Vec::new);
            }
            by_class[y].push((s as u32, r as u32));
        }
    }
    by_class.retain(|rows| !rows.is_empty());
    let n: usize = by_class.iter().map(Vec::len).sum();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&opts.seed.to_le_bytes());
    key[8..16].copy_from_slice(&opts.epoch.to_le_bytes());
    key[16] = split as u8;
    key[24..32].copy_from_slice(b"lesionBS");
    let mut rng = ChaCha8Rng::from_seed(key);
    let draws: Vec<(u32, u32)> = (0..n)
        .map(|_| {
            let rows = &by_class[rng.random_range(0..by_class.len())];
            rows[rng.random_range(0..rows.len())]
        })
        .collect();
    drop(by_class);
    let mut shards: Vec<usize> = (0..shard_labels.len()).collect();
    shards.shuffle(&mut rng);
    let mut window_of = vec![0; shard_labels.len()];
    for (position, &s) in shards.iter().enumerate() {
        window_of[s] = position / SHUFFLE_WINDOW_SHARDS;
    }
    let mut windows = vec![Vec::new(); shards.len().div_ceil(SHUFFLE_WINDOW_SHARDS)];
    for draw in draws {
        windows[window_of[draw.0 as usize]].push(draw);
    }
    let mut out = Vec::with_capacity(n);
    for mut window in windows {
        window.shuffle(&mut rng);
        out.extend(window);
    }
    out
}

/// One batch; see the module docs for shapes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// f32 `[b, 3, S, S]`, normalised.
    pub images: Tensor,
    /// f32 `[b]`, 0.0 or 1.0.
    pub labels: Tensor,
    /// Each row's index into the manifest's image list.
    pub source_index: Vec<u32>,
    /// Each row's class index.
    pub label_u8: Vec<u8>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.label_u8.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label_u8.is_empty()
    }
}

/// A batch as built by the background thread; tensors are created on the consumer's thread
/// (accelerator contexts are per thread).
struct HostBatch {
    images: Vec<f32>,
    label_u8: Vec<u8>,
    source_index: Vec<u32>,
}

/// Iterator over the batches of one pass; dropping it stops the background thread.
#[derive(Debug)]
pub struct BatchLoader {
    rx: Option<Receiver<HostBatch>>,
    handle: Option<JoinHandle<()>>,
    device: Device,
    size: usize,
    remaining: usize,
}

impl Iterator for BatchLoader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let host = match self.rx.as_ref()?.recv() {
            Ok(b) => b,
            Err(_) => {
                self.remaining = 0;
                let panicked = self
                    .handle
                    .take()
                    .map(|h| h.join().is_err())
                    .unwrap_or(false);
                let why = if panicked {
                    "batch loader thread panicked"
                } else {
                    "batch loader thread stopped early"
                };
                return Some(Err(Error::InvalidOption(why.into())));
            }
        };
        self.remaining -= 1;
        let b = host.label_u8.len();
        let s = self.size;
        let labels: Vec<f32> = host.label_u8.iter().map(|&l| l as f32).collect();
        let make = || -> Result<Batch> {
            Ok(Batch {
                images: Tensor::from_vec(host.images, (b, 3, s, s), &self.device)?,
                labels: Tensor::from_vec(labels, b, &self.device)?,
                source_index: host.source_index,
                label_u8: host.label_u8,
            })
        };
        Some(make())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for BatchLoader {}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channel first unblocks a producer waiting to send.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::ResizePolicy;
    use crate::manifest::*;
    use crate::shard::{write_shard, ShardMeta};
    use crate::transforms::{IMAGENET_MEAN, IMAGENET_STD};

    const S: u32 = 4;

    /// Pixel value of every byte of a row: identifies the image and the view.
    fn value(source: u32, view: u32) -> u8 {
        (source * 3 + view * 100) as u8
    }

    /// Writes `ids`' rows of `split` in shards of `chunk` rows for `views` views, each row's
    /// pixels `value(id, px_view(view))` and its label `id % 2`.
    fn write_shards(
        dir: &Path,
        split: Split,
        ids: &[u32],
        views: u32,
        chunk: usize,
        px_view: impl Fn(u32) -> u32,
    ) -> Vec<ShardEntry> {
        std::fs::create_dir(dir.join(split.name())).unwrap();
        let mut shards = Vec::new();
        for view in 0..views {
            for (k, rows) in ids.chunks(chunk).enumerate() {
                let file = format!("{}/v{view}-{k}.safetensors", split.name());
                let meta = ShardMeta {
                    split,
                    view,
                    image_size: S,
                    count: rows.len(),
                };
                let px: Vec<u8> = rows
                    .iter()
                    .flat_map(|&i| vec![value(i, px_view(view)); 3 * (S * S) as usize])
                    .collect();
                let labels: Vec<u8> = rows.iter().map(|&i| (i % 2) as u8).collect();
                let info = write_shard(dir.join(&file), meta, &px, &labels, rows).unwrap();
                shards.push(ShardEntry {
                    file,
                    split,
                    view,
                    count: rows.len(),
                    bytes: info.bytes,
                    sha256: info.sha256,
                });
            }
        }
        shards
    }

    /// What differs between the hand-made datasets' manifests.
    struct Layout {
        shard_size: usize,
        counts: Vec<SplitCounts>,
        folds: u32,
        fold_counts: Vec<FoldCounts>,
    }

    /// Saves a two-class, two-view manifest of these parts in `dir` and opens it.
    fn open_dataset(
        dir: tempfile::TempDir,
        layout: Layout,
        shards: Vec<ShardEntry>,
        images: Vec<ImageEntry>,
    ) -> (tempfile::TempDir, PreparedDataset) {
        let record = PrepRecord {
            input: "in".into(),
            image_size: S,
            resize: ResizePolicy::Stretch,
            val: 0.2,
            test: 0.2,
            seed: 1,
            shard_size: layout.shard_size,
            views: 2,
            augment: true,
            strict: false,
            max_pixels: 1000,
            no_test: false,
            groups: None,
        };
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            format_version: MANIFEST_FORMAT_VERSION,
            crate_version: "test".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            malignant: Vec::new(),
            folders: Vec::new(),
            image_size: S,
            resize: ResizePolicy::Stretch,
            views: 2,
            augment: true,
            seed: 1,
            options: record,
            normalization: Normalization {
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            counts: layout.counts,
            folds: layout.folds,
            fold_counts: layout.fold_counts,
            shards,
            images,
            rejected: vec![],
            duplicates: vec![],
        };
        manifest.save(dir.path()).unwrap();
        let ds = PreparedDataset::open(dir.path()).unwrap();
        (dir, ds)
    }

    /// A hand-made dataset: train 10 images in shards of 4/4/2 with 2 views, val 5, test 3.
    fn tiny_dataset() -> (tempfile::TempDir, PreparedDataset) {
        let dir = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        let mut shards = Vec::new();
        let mut counts = Vec::new();
        let plan = [
            (Split::Train, 10usize, 2u32),
            (Split::Val, 5, 1),
            (Split::Test, 3, 1),
        ];
        for (split, n, views) in plan {
            let first = images.len() as u32;
            for i in 0..n as u32 {
                images.push(ImageEntry {
                    path: format!("x/{}.png", first + i),
                    class: ((first + i) % 2) as u8,
                    split,
                    sha256: String::new(),
                    width: S,
                    height: S,
                    augmentations: None,
                    fold: None,
                    group: None,
                });
            }
            let ids: Vec<u32> = (first..first + n as u32).collect();
            shards.extend(write_shards(dir.path(), split, &ids, views, 4, |view| view));
            let per_class = vec![n - n / 2, n / 2];
            counts.push(SplitCounts {
                split,
                per_class,
                total: n,
            });
        }
        let layout = Layout {
            shard_size: 4,
            counts,
            folds: 0,
            fold_counts: Vec::new(),
        };
        open_dataset(dir, layout, shards, images)
    }

    /// Fold of pool image `i` in [`folded_dataset`].
    fn fold_of(i: u32) -> u32 {
        i % 3
    }

    /// Hand-made K-fold data: a pool of 12 images (sources 0..12, fold `i % 3`, class
    /// `i % 2`) whose train shards (2 views) and val shards (clean) hold the pool in the same
    /// scrambled order in shards of 5/5/2, and a test split of 3 (sources 12..15).
    fn folded_dataset() -> (tempfile::TempDir, PreparedDataset) {
        let dir = tempfile::tempdir().unwrap();
        let pool: Vec<u32> = vec![7, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6];
        let test: Vec<u32> = vec![13, 12, 14];
        let mut images = Vec::new();
        for i in 0..15u32 {
            let in_pool = i < 12;
            images.push(ImageEntry {
                path: format!("x/{i}.png"),
                class: (i % 2) as u8,
                split: if in_pool { Split::Train } else { Split::Test },
                sha256: String::new(),
                width: S,
                height: S,
                augmentations: None,
                fold: in_pool.then(|| fold_of(i)),
                group: None,
            });
        }
        let mut shards = Vec::new();
        for (split, ids, views) in [
            (Split::Train, &pool, 2u32),
            (Split::Val, &pool, 1),
            (Split::Test, &test, 1),
        ] {
            // Val rows are clean: the pixels of view 0, whatever the view.
            let px_view = |view| if split == Split::Train { view + 1 } else { 0 };
            shards.extend(write_shards(dir.path(), split, ids, views, 5, px_view));
        }
        let counts = vec![
            SplitCounts {
                split: Split::Train,
                per_class: vec![6, 6],
                total: 12,
            },
            SplitCounts {
                split: Split::Val,
                per_class: vec![0, 0],
                total: 0,
            },
            SplitCounts {
                split: Split::Test,
                per_class: vec![1, 2],
                total: 3,
            },
        ];
        let fold_counts = (0..3)
            .map(|f| FoldCounts {
                fold: f,
                per_class: vec![2, 2],
                total: 4,
            })
            .collect();
        let layout = Layout {
            shard_size: 5,
            counts,
            folds: 3,
            fold_counts,
        };
        open_dataset(dir, layout, shards, images)
    }

    /// The source indices of every batch of a pass, and checks each row's pixels against
    /// `value(source, px_view)`.
    fn pass_sources(
        ds: &PreparedDataset,
        split: Split,
        opts: LoaderOptions,
        px_view: impl Fn(u32) -> u32,
    ) -> Vec<u32> {
        let mut seen = Vec::new();
        for b in ds.loader(split, opts, &Device::Cpu).unwrap() {
            let b = b.unwrap();
            let px = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let per = 3 * (S * S) as usize;
            for (row, &si) in b.source_index.iter().enumerate() {
                let v = value(si, px_view(si)) as f32 / 255.0;
                let want = (v - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
                assert!((px[row * per] - want).abs() < 1e-6, "row of {si}");
                assert_eq!(u32::from(b.label_u8[row]), si % 2);
            }
            seen.extend(b.source_index);
        }
        seen
    }

    #[test]
    fn a_fold_selects_its_training_and_validation_rows() {
        let (_dir, ds) = folded_dataset();
        let pool_order = [7u32, 2, 11, 0, 5, 9, 1, 4, 10, 3, 8, 6];
        for fold in 0..3 {
            let ds = PreparedDataset::open(ds.dir())
                .unwrap()
                .with_fold(fold)
                .unwrap();
            assert_eq!((ds.fold(), ds.folds()), (Some(fold), 3));
            let held: Vec<u32> = pool_order
                .iter()
                .copied()
                .filter(|&i| fold_of(i) == fold)
                .collect();
            let rest: Vec<u32> = pool_order
                .iter()
                .copied()
                .filter(|&i| fold_of(i) != fold)
                .collect();
            assert_eq!((ds.len(Split::Train), ds.len(Split::Val)), (8, 4));
            assert_eq!(ds.len(Split::Test), 3, "the test split is not selected");
            // Evaluation order: the pool's row order, restricted to the fold.
            let (val, labels) = ds.eval_order(Split::Val);
            assert_eq!(val, held);
            assert!(val
                .iter()
                .zip(&labels)
                .all(|(&i, &y)| u32::from(y) == i % 2));
            assert_eq!(ds.eval_order(Split::Train).0, rest);
            assert_eq!(ds.eval_order(Split::Test).0, [13, 12, 14]);
            let mut want = vec![0; 2];
            for &i in &held {
                want[(i % 2) as usize] += 1;
            }
            assert_eq!(ds.class_counts(Split::Val), want);
            assert_eq!(
                ds.class_counts(Split::Train).iter().sum::<usize>(),
                8,
                "{:?}",
                ds.class_counts(Split::Train)
            );
            // Validation batches are the clean rows of the held-out fold.
            assert_eq!(
                pass_sources(&ds, Split::Val, LoaderOptions::eval(3), |_| 0),
                held
            );
            // Training epochs: a permutation of the other folds' rows, view epoch % 2.
            for epoch in 0..2u64 {
                let opts = LoaderOptions::train(3, 9, epoch);
                let seen = pass_sources(&ds, Split::Train, opts, |_| epoch as u32 + 1);
                assert_eq!(seen, ds.epoch_rows(Split::Train, &opts).0);
                let mut sorted = seen.clone();
                sorted.sort();
                let mut want = rest.clone();
                want.sort();
                assert_eq!(sorted, want, "every training row of the fold once");
                assert_ne!(seen, rest, "shuffled");
            }
            // Balanced draws come from the fold's training rows only.
            let opts = LoaderOptions::train(4, 9, 0).with_sampler(Sampler::Balanced);
            let drawn = pass_sources(&ds, Split::Train, opts, |_| 1);
            assert_eq!(drawn.len(), 8);
            assert!(drawn.iter().all(|i| rest.contains(i)), "{drawn:?}");
            assert_eq!(drawn, ds.epoch_rows(Split::Train, &opts).0);
        }
    }

    #[test]
    fn folded_data_without_a_fold_names_the_option() {
        let (dir, ds) = folded_dataset();
        assert_eq!((ds.fold(), ds.folds()), (None, 3));
        assert_eq!((ds.len(Split::Train), ds.len(Split::Val)), (0, 0));
        assert!(ds.eval_order(Split::Val).0.is_empty());
        for split in [Split::Train, Split::Val] {
            let err = ds
                .loader(split, LoaderOptions::eval(2), &Device::Cpu)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("3-fold cross-validation")
                    && text.contains("--fold I (I from 0 to 2)"),
                "{text}"
            );
        }
        // The test split needs no fold.
        let test = pass_sources(&ds, Split::Test, LoaderOptions::eval(2), |_| 0);
        assert_eq!(test, [13, 12, 14]);
        let err = PreparedDataset::open_fold(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("--fold I"), "{err}");
        assert_eq!(err.exit_code(), 2);
        let ok = PreparedDataset::open_fold(dir.path(), Some(2)).unwrap();
        assert_eq!(ok.fold(), Some(2));
        let err = ds.with_fold(3).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)));
        assert!(
            err.to_string().contains("--fold 3: ")
                && err.to_string().contains("has 3 folds, numbered 0 to 2"),
            "{err}"
        );
    }

    #[test]
    fn a_fold_of_data_without_folds_is_refused() {
        let (dir, ds) = tiny_dataset();
        assert_eq!(ds.folds(), 0);
        assert_eq!(ds.class_counts(Split::Train), [5, 5]);
        let err = ds.with_fold(0).unwrap_err();
        assert!(matches!(err, Error::InvalidOption(_)));
        assert!(
            err.to_string().contains("--fold 0: ")
                && err.to_string().contains("prepared without folds"),
            "{err}"
        );
        let plain = PreparedDataset::open_fold(dir.path(), None).unwrap();
        assert_eq!(plain.len(Split::Train), 10);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let lens = [4, 4, 4, 4, 4, 3];
        let o = LoaderOptions::train(8, 7, 0);
        let a = epoch_order(&lens, Split::Train, &o);
        let mut sorted = a.clone();
        sorted.sort();
        let all: Vec<(u32, u32)> = epoch_order(&lens, Split::Train, &LoaderOptions::eval(8));
        assert_eq!(sorted, all, "every row exactly once");
        assert_eq!(all[..5], [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]);
        assert_eq!(
            a,
            epoch_order(&lens, Split::Train, &o),
            "same (seed, epoch)"
        );
        assert_ne!(a, all);
        assert_ne!(
            a,
            epoch_order(&lens, Split::Train, &LoaderOptions::train(8, 7, 1))
        );
        assert_ne!(
            a,
            epoch_order(&lens, Split::Train, &LoaderOptions::train(8, 8, 0))
        );
        // The first window draws only from SHUFFLE_WINDOW_SHARDS distinct shards.
        let first: std::collections::BTreeSet<u32> = a[..16].iter().map(|p| p.0).collect();
        assert!(first.len() <= SHUFFLE_WINDOW_SHARDS);
    }

    #[test]
    fn the_default_shuffle_order_is_pinned() {
        let o = LoaderOptions::train(8, 42, 3);
        assert_eq!(o.sampler, Sampler::Shuffle);
        let order = epoch_order(&[3, 2, 4], Split::Train, &o);
        assert_eq!(order, GOLDEN_SHUFFLE);
    }

    /// Pinned: a run's results depend on this order staying as it is.
    const GOLDEN_SHUFFLE: [(u32, u32); 9] = [
        (0, 1),
        (0, 2),
        (1, 1),
        (2, 3),
        (2, 2),
        (1, 0),
        (0, 0),
        (2, 0),
        (2, 1),
    ];

    /// 900 rows of class 0 and 100 of class 1 in 10 shards of 100.
    fn nine_to_one() -> Vec<Vec<u8>> {
        (0..10)
            .map(|s| {
                (0..100)
                    .map(|r| u8::from((s * 100 + r) % 10 == 3))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn balanced_draws_classes_evenly_with_replacement() {
        let labels = nine_to_one();
        let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let opts = LoaderOptions::train(32, 7, 0).with_sampler(Sampler::Balanced);
        let order = balanced_order(&refs, Split::Train, &opts);
        assert_eq!(order.len(), 1000, "as many draws as rows");
        let class = |&(s, r): &(u32, u32)| labels[s as usize][r as usize];
        let minority: Vec<&(u32, u32)> = order.iter().filter(|p| class(p) == 1).collect();
        // Binomial(1000, 1/2): mean 500, sd 15.8; 5 sd either side.
        assert!(
            (421..=579).contains(&minority.len()),
            "{} minority draws of 1000",
            minority.len()
        );
        // With replacement: rows repeat, and the 100 minority rows are nearly all drawn
        // (each is missed with probability (1 - 1/200)^1000, about 0.7%).
        let distinct: std::collections::BTreeSet<_> = minority.iter().collect();
        assert!(
            distinct.len() < minority.len() && distinct.len() >= 90,
            "{}",
            distinct.len()
        );
        assert_eq!(
            order,
            balanced_order(&refs, Split::Train, &opts),
            "same (seed, epoch)"
        );
        // Read by windows of shards, as shuffling reads.
        let first: std::collections::BTreeSet<u32> = order[..200].iter().map(|p| p.0).collect();
        assert!(first.len() <= SHUFFLE_WINDOW_SHARDS, "{first:?}");
        let all: std::collections::BTreeSet<u32> = order.iter().map(|p| p.0).collect();
        assert_eq!(all.len(), 10);
        for other in [
            LoaderOptions::train(32, 7, 1),
            LoaderOptions::train(32, 8, 0),
        ] {
            let other = other.with_sampler(Sampler::Balanced);
            assert_ne!(order, balanced_order(&refs, Split::Train, &other));
        }
    }

    #[test]
    fn balanced_skips_classes_without_rows() {
        // Classes 0 and 2 only (class 1 has no row): each about half of the draws.
        let labels: Vec<Vec<u8>> = vec![vec![0; 50], vec![2; 10]];
        let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let opts = LoaderOptions::train(4, 1, 0).with_sampler(Sampler::Balanced);
        let order = balanced_order(&refs, Split::Train, &opts);
        assert_eq!(order.len(), 60);
        let twos = order.iter().filter(|&&(s, _)| s == 1).count();
        // Binomial(60, 1/2): sd 3.9; 5 sd either side.
        assert!((11..=49).contains(&twos), "{twos}");
        assert!(order
            .iter()
            .all(|&(s, r)| (r as usize) < labels[s as usize].len()));
    }

    #[test]
    fn a_balanced_loader_yields_the_drawn_rows() {
        let (_dir, ds) = tiny_dataset();
        let opts = LoaderOptions::train(3, 5, 1).with_sampler(Sampler::Balanced);
        let loader = ds.loader(Split::Train, opts, &Device::Cpu).unwrap();
        assert_eq!(loader.len(), 4);
        let mut seen = Vec::new();
        for b in loader {
            let b = b.unwrap();
            let px = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let per = 3 * (S * S) as usize;
            for (row, &si) in b.source_index.iter().enumerate() {
                // View 1 (epoch 1 of 2 views), the row's own label.
                let want = (value(si, 1) as f32 / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
                assert!((px[row * per] - want).abs() < 1e-6);
                assert_eq!(b.label_u8[row] as u32, si % 2);
            }
            seen.extend(b.source_index);
        }
        assert_eq!(seen.len(), 10);
        let again: Vec<u32> = ds
            .loader(Split::Train, opts, &Device::Cpu)
            .unwrap()
            .flat_map(|b| b.unwrap().source_index)
            .collect();
        assert_eq!(seen, again);
        let (rows, labels) = ds.epoch_rows(Split::Train, &opts);
        assert_eq!(rows, seen, "epoch_rows follows the sampler");
        assert!(rows
            .iter()
            .zip(&labels)
            .all(|(&si, &y)| u32::from(y) == si % 2));
        let shuffled: Vec<u32> = ds
            .loader(Split::Train, LoaderOptions::train(3, 5, 1), &Device::Cpu)
            .unwrap()
            .flat_map(|b| b.unwrap().source_index)
            .collect();
        let mut once = shuffled.clone();
        once.sort();
        assert_eq!(
            once,
            (0..10).collect::<Vec<u32>>(),
            "shuffle visits every row once"
        );
    }

    #[test]
    fn sampler_names() {
        for name in ["shuffle", "balanced"] {
            assert_eq!(name.parse::<Sampler>().unwrap().to_string(), name);
        }
        let err = "weighted".parse::<Sampler>().unwrap_err().to_string();
        assert!(
            err.contains("`weighted`") && err.contains("balanced"),
            "{err}"
        );
    }

    #[test]
    fn batches_are_normalised_and_labelled() {
        let (_dir, ds) = tiny_dataset();
        assert_eq!(ds.len(Split::Train), 10);
        assert_eq!(ds.len(Split::Val), 5);
        assert_eq!(ds.image_size(), S);
        assert_eq!(ds.class_names(), ["Benign", "Malignant"]);
        ds.verify().unwrap();

        let batches: Vec<Batch> = ds
            .loader(Split::Val, LoaderOptions::eval(2), &Device::Cpu)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let src: Vec<u32> = batches
            .iter()
            .flat_map(|b| b.source_index.clone())
            .collect();
        assert_eq!(src, [10, 11, 12, 13, 14]);
        let b = &batches[0];
        assert_eq!(b.images.dims(), &[2, 3, S as usize, S as usize]);
        assert_eq!(b.labels.to_vec1::<f32>().unwrap(), [0.0, 1.0]);
        assert_eq!(b.label_u8, [0, 1]);
        let px = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let per = (S * S) as usize;
        for (row, &si) in b.source_index.iter().enumerate() {
            for c in 0..3 {
                let v = value(si, 0) as f32 / 255.0;
                let want = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                let got = px[row * 3 * per + c * per];
                assert!((got - want).abs() < 1e-6, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn train_epochs_select_views_and_drop_last() {
        let (_dir, ds) = tiny_dataset();
        for epoch in 0..3u64 {
            let opts = LoaderOptions {
                drop_last: true,
                ..LoaderOptions::train(3, 5, epoch)
            };
            let loader = ds.loader(Split::Train, opts, &Device::Cpu).unwrap();
            assert_eq!(loader.len(), 3);
            let mut seen = Vec::new();
            for b in loader {
                let b = b.unwrap();
                assert_eq!(b.len(), 3);
                let px = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let per = 3 * (S * S) as usize;
                for (row, &si) in b.source_index.iter().enumerate() {
                    let v = value(si, (epoch % 2) as u32) as f32 / 255.0;
                    let want = (v - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
                    assert!((px[row * per] - want).abs() < 1e-6);
                    assert_eq!(b.label_u8[row] as u32, si % 2);
                }
                seen.extend(b.source_index);
            }
            assert_eq!(seen.len(), 9);
            let again: Vec<u32> = ds
                .loader(Split::Train, opts, &Device::Cpu)
                .unwrap()
                .flat_map(|b| b.unwrap().source_index)
                .collect();
            assert_eq!(seen, again, "deterministic for (seed, epoch)");
        }
    }

    #[test]
    fn dropping_a_loader_early_stops_its_thread() {
        let (_dir, ds) = tiny_dataset();
        let mut loader = ds
            .loader(Split::Train, LoaderOptions::train(1, 0, 0), &Device::Cpu)
            .unwrap();
        assert!(loader.next().unwrap().is_ok());
        drop(loader); // must not hang
    }

    #[test]
    fn verify_reports_a_flipped_byte() {
        let (dir, ds) = tiny_dataset();
        let path = dir.path().join("val/v0-0.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = ds.verify().unwrap_err().to_string();
        assert!(
            err.contains("val/v0-0.safetensors: SHA-256 mismatch"),
            "{err}"
        );
    }
}

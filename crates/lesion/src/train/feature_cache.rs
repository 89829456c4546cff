//! The on-disk cache of the frozen prefix's output, used with `--freeze-bn`.
//!
//! With frozen BatchNorm ([`crate::model::ResNet18::set_freeze_bn`]) the stages before the
//! first trainable one (stem, `layer1`, `layer2` for the notebook's `--trainable layer3`)
//! are a fixed function of each stored image: the train split stores every augmented view
//! as its own image, and the frozen weights never change. So the first epoch that reads a
//! view first runs the prefix once over the whole view, streams its output to a file, and
//! that epoch and every later one reading the view train from the file through
//! [`ResNet18::forward_from`], running only the trainable stages. Validation (view 0 of the
//! val split, in eval mode) is cached the same way.
//!
//! Files: `<run>/cache/<split>-v<view>.feat`, one per split and view; the folder is part of
//! the run (replaced with it by `--force`, reused by `--resume`) and is deleted when
//! training finishes. Layout, little-endian:
//! - 8 bytes magic `LESFEAT\0`, u64 header length `L`, `L` bytes of JSON [`Header`]: the
//!   [`CacheKey`], the row count, each row's shape `[c, h, w]` (or `[512]` for the head's
//!   input) and each row's `source_index` in the split's natural order (shards in file order,
//!   rows in shard order, as an unshuffled pass reads them);
//! - then the rows in that order, each the prefix output of one image as f32.
//!
//! A file is written to a temporary sibling and renamed when complete. It is used only when
//! its key equals the current one (format version, split, view, prepared manifest's SHA-256,
//! the view's shard hashes, the frozen parameters' SHA-256, image size, stage, dtype, and for
//! K-fold data the fold, whose rows of the split the file holds), its
//! rows are the view's images in the current order, and its length is exactly what the
//! header implies; anything else (an older run, a truncated file, other weights) is rebuilt.
//!
//! Memory: building holds one batch of images and its prefix output; reading holds one batch
//! of features (`[b, 128, S/8, S/8]` f32 at stage 3: 100 KB per image at 112 px, 400 KB at
//! 224 px) read with plain reads, so RSS does not grow with the dataset; the file itself is
//! `rows x row size` (10000 images at 224 px: 4 GB per view).
//!
//! The batches a cached epoch yields are the rows, order and labels that the loader gives
//! ([`PreparedDataset::epoch_rows`]), and the prefix of an image does not depend on the
//! other images of its batch (the CPU kernels compute each image's output with the same
//! arithmetic whatever the batch holds), so a cached run's weights equal the uncached
//! `--freeze-bn` run's. `LESION_FEATURE_CACHE=off` turns the cache off (for that comparison
//! and for timing).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::classes::Classes;
use crate::fsutil::AtomicFile;
use crate::infer::SplitPredictions;
use crate::loader::{BatchLoader, LoaderOptions, PreparedDataset};
use crate::model::{ResNet18, Trainable};
use crate::run::TrainConfig;
use crate::split::Split;
use crate::{Error, Result};

/// Bumped whenever the file layout or what the rows mean changes.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"LESFEAT\0";
/// The folder of the run that holds the cache files.
pub const CACHE_DIR: &str = "cache";
/// Environment variable that turns the cache off when `0` or `off`.
pub const ENV_SWITCH: &str = "LESION_FEATURE_CACHE";

/// Everything a cache file's contents depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub format_version: u32,
    pub split: String,
    pub view: u32,
    pub manifest_sha256: String,
    /// SHA-256 of each shard of this split and view, in manifest order.
    pub shard_sha256: Vec<String>,
    /// SHA-256 of the frozen parameters and running statistics ([`frozen_sha256`]).
    pub frozen_sha256: String,
    pub image_size: u32,
    /// The stage the rows feed ([`ResNet18::forward_from`]).
    pub stage: usize,
    pub dtype: String,
    /// K-fold data: the selected fold, whose rows of the split the file holds (absent
    /// without one, so that a file's key reads the same as without folds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<u32>,
}

/// The JSON header of a cache file (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub key: CacheKey,
    pub rows: usize,
    /// Shape of one row.
    pub dims: Vec<usize>,
    /// Each row's index into the manifest's image list.
    pub source_index: Vec<u32>,
}

/// SHA-256 over the name, shape and f32 little-endian values of every variable of the stages
/// before `stage` (running statistics included), in name order.
pub fn frozen_sha256(varmap: &VarMap, stage: usize) -> Result<String> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().filter(|n| stage_of(n) < stage).collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in names {
        let t = data[name].as_tensor();
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}", t.dims()).as_bytes());
        for v in t.flatten_all()?.to_vec1::<f32>()? {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The model stage a parameter belongs to: 0 stem, 1..=4 `layerN`, 5 head.
fn stage_of(name: &str) -> usize {
    match name.split('.').next() {
        Some("layer1") => 1,
        Some("layer2") => 2,
        Some("layer3") => 3,
        Some("layer4") => 4,
        Some("fc") => 5,
        _ => 0,
    }
}

/// Whether `LESION_FEATURE_CACHE` leaves the cache on.
fn enabled_by_env() -> bool {
    !matches!(
        std::env::var(ENV_SWITCH).as_deref().map(str::trim),
        Ok("0" | "off" | "false")
    )
}

/// The cache of one training run; see the module docs.
#[derive(Debug)]
pub struct FeatureCache {
    dir: PathBuf,
    stage: usize,
    batch_size: usize,
    manifest_sha256: Option<String>,
}

impl FeatureCache {
    /// The cache a training run with `cfg` uses: [`FeatureCache::new`] unless
    /// `LESION_FEATURE_CACHE` turns it off.
    pub fn for_run(cfg: &TrainConfig) -> Option<Self> {
        Self::new(cfg).filter(|_| enabled_by_env())
    }

    /// The cache for a run with `cfg`, or `None` when it does not apply: `freeze_bn` off or
    /// `trainable = all` (nothing frozen). Nothing is written until batches are asked for.
    pub fn new(cfg: &TrainConfig) -> Option<Self> {
        let stage = cfg.trainable.first_stage();
        if !cfg.freeze_bn || cfg.trainable == Trainable::All {
            return None;
        }
        Some(Self {
            dir: cfg.out.join(CACHE_DIR),
            stage,
            batch_size: cfg.batch_size,
            manifest_sha256: None,
        })
    }

    /// The stage the cached rows feed.
    pub fn stage(&self) -> usize {
        self.stage
    }

    /// The folder of the cache files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The batches of one training pass with `opts`: as [`PreparedDataset::loader`] would
    /// give them, but as cached prefix outputs; the view's file is built first when missing
    /// or stale.
    pub fn train_batches(
        &mut self,
        data: &PreparedDataset,
        model: &ResNet18,
        varmap: &VarMap,
        opts: LoaderOptions,
        device: &Device,
    ) -> Result<CachedBatches> {
        let view = (opts.epoch % u64::from(data.views())) as u32;
        let file = self.open_or_build(data, model, varmap, Split::Train, view, device)?;
        let (source_index, label_u8) = data.epoch_rows(Split::Train, &opts);
        CachedBatches::new(file, source_index, label_u8, opts.batch_size, device)
    }

    /// Eval-mode predictions on the validation split, from its cached prefix (built first
    /// when missing or stale) through `eval_model`, which must have the frozen weights of
    /// `varmap`. Equal to [`crate::infer::predict_split`] without test-time augmentation.
    pub fn predict_val(
        &mut self,
        data: &PreparedDataset,
        model: &ResNet18,
        eval_model: &ResNet18,
        varmap: &VarMap,
        classes: &Classes,
        device: &Device,
    ) -> Result<SplitPredictions> {
        let file = self.open_or_build(data, model, varmap, Split::Val, 0, device)?;
        let opts = LoaderOptions::eval(self.batch_size);
        let (source_index, label_u8) = data.epoch_rows(Split::Val, &opts);
        let labels: Vec<usize> = label_u8.iter().map(|&y| usize::from(y)).collect();
        let mut logits = Vec::new();
        for batch in CachedBatches::new(
            file,
            source_index.clone(),
            label_u8,
            opts.batch_size,
            device,
        )? {
            let batch = batch?;
            let out = eval_model.forward_from(batch.stage, &batch.input, false, None)?;
            logits.extend(out.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(SplitPredictions::from_logits(
            classes,
            source_index,
            labels,
            logits,
        ))
    }

    /// Deletes the cache folder (training finished); a failure only leaves clutter, so it is
    /// reported and otherwise ignored.
    pub fn remove(&self) {
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!(
                    "warning: could not remove the feature cache {}: {e}",
                    self.dir.display()
                );
            }
        }
    }

    fn key(
        &mut self,
        data: &PreparedDataset,
        varmap: &VarMap,
        split: Split,
        view: u32,
    ) -> Result<CacheKey> {
        let manifest_sha256 = match &self.manifest_sha256 {
            Some(h) => h.clone(),
            None => {
                let h = crate::manifest::manifest_sha256(data.dir())?;
                self.manifest_sha256 = Some(h.clone());
                h
            }
        };
        Ok(CacheKey {
            format_version: FORMAT_VERSION,
            split: split.name().to_string(),
            view,
            manifest_sha256,
            shard_sha256: data
                .manifest()
                .shards
                .iter()
                .filter(|s| s.split == split && s.view == view)
                .map(|s| s.sha256.clone())
                .collect(),
            frozen_sha256: frozen_sha256(varmap, self.stage)?,
            image_size: data.image_size(),
            stage: self.stage,
            dtype: "f32".into(),
            fold: data.fold(),
        })
    }

    fn path(&self, split: Split, view: u32) -> PathBuf {
        self.dir.join(format!("{}-v{view}.feat", split.name()))
    }

    fn open_or_build(
        &mut self,
        data: &PreparedDataset,
        model: &ResNet18,
        varmap: &VarMap,
        split: Split,
        view: u32,
        device: &Device,
    ) -> Result<CacheFile> {
        let key = self.key(data, varmap, split, view)?;
        let (source_index, _) = data.epoch_rows(split, &natural_order(view));
        let path = self.path(split, view);
        if path.exists() {
            match CacheFile::open(&path, &key, &source_index)? {
                Ok(file) => return Ok(file),
                Err(why) => eprintln!("feature cache {} {why}: rebuilding it", path.display()),
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        crate::fsutil::remove_stale_temps(&self.dir);
        eprintln!(
            "caching the frozen layers' output of {} images ({} split, view {view}) in {}",
            source_index.len(),
            split.name(),
            path.display()
        );
        build(
            &path,
            key.clone(),
            &source_index,
            data,
            model,
            split,
            view,
            self.batch_size,
            device,
        )?;
        match CacheFile::open(&path, &key, &source_index)? {
            Ok(file) => Ok(file),
            Err(why) => Err(Error::BadArtifact {
                path,
                reason: format!("the feature cache just written {why}"),
            }),
        }
    }
}

/// Every row of `view` in file order, as the cache stores them.
fn natural_order(view: u32) -> LoaderOptions {
    LoaderOptions {
        epoch: u64::from(view),
        ..LoaderOptions::eval(1)
    }
}

/// Runs the frozen prefix over every image of `split`/`view` in natural order and streams
/// the rows to `path` (temporary sibling, renamed when complete).
#[allow(clippy::too_many_arguments)]
fn build(
    path: &Path,
    key: CacheKey,
    source_index: &[u32],
    data: &PreparedDataset,
    model: &ResNet18,
    split: Split,
    view: u32,
    batch_size: usize,
    device: &Device,
) -> Result<()> {
    let stage = key.stage;
    let opts = LoaderOptions {
        batch_size,
        ..natural_order(view)
    };
    let mut file = AtomicFile::create(path)?;
    let temp_err = |e: std::io::Error| Error::io(path, e);
    let mut out = BufWriter::with_capacity(1 << 20, &mut file);
    let mut header = Some(key);
    let mut written = 0usize;
    let mut bytes = Vec::new();
    for batch in data.loader(split, opts, device)? {
        let batch = batch?;
        if batch.source_index[..] != source_index[written..written + batch.len()] {
            return Err(Error::BadArtifact {
                path: data.dir().to_path_buf(),
                reason: format!(
                    "the {} split's rows changed while its features were being cached",
                    split.name()
                ),
            });
        }
        let features = model.forward_prefix(&batch.images, stage)?;
        if let Some(key) = header.take() {
            let header = Header {
                key,
                rows: source_index.len(),
                dims: features.dims()[1..].to_vec(),
                source_index: source_index.to_vec(),
            };
            let json =
                serde_json::to_vec(&header).map_err(|e| temp_err(std::io::Error::other(e)))?;
            out.write_all(MAGIC).map_err(temp_err)?;
            out.write_all(&(json.len() as u64).to_le_bytes())
                .map_err(temp_err)?;
            out.write_all(&json).map_err(temp_err)?;
        }
        bytes.clear();
        for v in features.flatten_all()?.to_vec1::<f32>()? {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        out.write_all(&bytes).map_err(temp_err)?;
        written += batch.len();
    }
    if header.is_some() || written != source_index.len() {
        return Err(Error::BadArtifact {
            path: data.dir().to_path_buf(),
            reason: format!(
                "the {} split yielded {written} of its {} rows",
                split.name(),
                source_index.len()
            ),
        });
    }
    out.flush().map_err(temp_err)?;
    drop(out);
    file.commit()
}

/// An opened, checked cache file.
#[derive(Debug)]
struct CacheFile {
    path: PathBuf,
    file: File,
    data_offset: u64,
    dims: Vec<usize>,
    /// Row of each source index.
    slots: HashMap<u32, usize>,
    stage: usize,
}

impl CacheFile {
    /// The file at `path` if it holds `key`'s rows for `source_index` in full; else why not
    /// (the inner `Err`). Only failing to read it at all is an error.
    fn open(
        path: &Path,
        key: &CacheKey,
        source_index: &[u32],
    ) -> Result<std::result::Result<Self, String>> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut fixed = [0u8; 16];
        if len < 16 || file.read_exact(&mut fixed).is_err() || &fixed[..8] != MAGIC {
            return Ok(Err("is not a feature cache file".into()));
        }
        let header_len = u64::from_le_bytes(fixed[8..].try_into().expect("8 bytes"));
        if header_len > len - 16 {
            return Ok(Err("is truncated (header)".into()));
        }
        let mut json = vec![0u8; header_len as usize];
        file.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
        let header: Header = match serde_json::from_slice(&json) {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("has an unreadable header ({e})"))),
        };
        if &header.key != key {
            return Ok(Err(
                "was made from other data, weights or settings".to_string()
            ));
        }
        if header.rows != source_index.len() || header.source_index != source_index {
            return Ok(Err("holds other images than the prepared split".into()));
        }
        let row = header.dims.iter().product::<usize>() as u64 * 4;
        let data_offset = 16 + header_len;
        let expected = data_offset + row * header.rows as u64;
        if len != expected || row == 0 {
            return Ok(Err(format!(
                "is {len} bytes, its header implies {expected} (truncated or damaged)"
            )));
        }
        let slots = header
            .source_index
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i))
            .collect();
        Ok(Ok(Self {
            path: path.to_path_buf(),
            file,
            data_offset,
            dims: header.dims,
            slots,
            stage: key.stage,
        }))
    }

    fn row_len(&self) -> usize {
        self.dims.iter().product()
    }
}

/// One batch for the trainable stages: `input` is what [`ResNet18::forward_from`] takes at
/// `stage` (`[b, ...dims]` f32), with each row's label and source index.
#[derive(Debug, Clone)]
pub struct FeatureBatch {
    pub input: Tensor,
    pub stage: usize,
    pub label_u8: Vec<u8>,
    pub source_index: Vec<u32>,
}

impl FeatureBatch {
    pub fn len(&self) -> usize {
        self.label_u8.len()
    }

    pub fn is_empty(&self) -> bool {
        self.label_u8.is_empty()
    }
}

/// The batches of one pass read from a cache file, in the loader's order.
#[derive(Debug)]
pub struct CachedBatches {
    file: CacheFile,
    source_index: Vec<u32>,
    label_u8: Vec<u8>,
    batch_size: usize,
    next: usize,
    device: Device,
    bytes: Vec<u8>,
}

impl CachedBatches {
    fn new(
        file: CacheFile,
        source_index: Vec<u32>,
        label_u8: Vec<u8>,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::InvalidOption("batch size must be at least 1".into()));
        }
        Ok(Self {
            file,
            source_index,
            label_u8,
            batch_size,
            next: 0,
            device: device.clone(),
            bytes: Vec::new(),
        })
    }

    fn read(&mut self, rows: std::ops::Range<usize>) -> Result<FeatureBatch> {
        let row_len = self.file.row_len();
        let row_bytes = row_len * 4;
        let mut values = Vec::with_capacity(rows.len() * row_len);
        self.bytes.resize(row_bytes, 0);
        for &source in &self.source_index[rows.clone()] {
            let slot = *self
                .file
                .slots
                .get(&source)
                .ok_or_else(|| Error::BadArtifact {
                    path: self.file.path.clone(),
                    reason: format!("has no row for image {source}"),
                })?;
            let offset = self.file.data_offset + (slot * row_bytes) as u64;
            let path = &self.file.path;
            self.file
                .file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| self.file.file.read_exact(&mut self.bytes))
                .map_err(|e| Error::io(path, e))?;
            values.extend(
                self.bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            );
        }
        let mut shape = vec![rows.len()];
        shape.extend_from_slice(&self.file.dims);
        Ok(FeatureBatch {
            input: Tensor::from_vec(values, shape, &self.device)?,
            stage: self.file.stage,
            label_u8: self.label_u8[rows.clone()].to_vec(),
            source_index: self.source_index[rows].to_vec(),
        })
    }
}

impl Iterator for CachedBatches {
    type Item = Result<FeatureBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.source_index.len() {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.source_index.len());
        let rows = self.next..end;
        self.next = end;
        Some(self.read(rows))
    }
}

/// The training batches of an epoch: cached prefix outputs when `cache` is on, else the
/// loader's images (stage 0).
#[derive(Debug)]
pub enum TrainBatches {
    Images(BatchLoader),
    Cached(CachedBatches),
}

impl TrainBatches {
    /// One training pass with `opts`, through `cache` when there is one.
    pub fn new(
        cache: Option<&mut FeatureCache>,
        data: &PreparedDataset,
        model: &ResNet18,
        varmap: &VarMap,
        opts: LoaderOptions,
        device: &Device,
    ) -> Result<Self> {
        Ok(match cache {
            Some(cache) => {
                TrainBatches::Cached(cache.train_batches(data, model, varmap, opts, device)?)
            }
            None => TrainBatches::Images(data.loader(Split::Train, opts, device)?),
        })
    }
}

impl Iterator for TrainBatches {
    type Item = Result<FeatureBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            TrainBatches::Cached(c) => c.next(),
            TrainBatches::Images(loader) => Some(loader.next()?.map(|b| FeatureBatch {
                input: b.images,
                stage: 0,
                label_u8: b.label_u8,
                source_index: b.source_index,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_belong_to_their_stage() {
        for (name, stage) in [
            ("conv1.weight", 0),
            ("bn1.running_var", 0),
            ("layer1.0.conv1.weight", 1),
            ("layer2.1.bn2.bias", 2),
            ("layer3.0.downsample.1.running_mean", 3),
            ("layer4.1.conv2.weight", 4),
            ("fc.6.bias", 5),
        ] {
            assert_eq!(stage_of(name), stage, "{name}");
        }
    }
}

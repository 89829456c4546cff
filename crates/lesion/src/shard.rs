//! The shard format of a prepared dataset: one safetensors file per block of images.
//!
//! Tensors (little-endian, C order), stored in this byte order after the header:
//! - `source_index`: `U32 [n]`, each row's index into the manifest's image list;
//! - `labels`: `U8 [n]`, class indices (`0` = benign, `1` = malignant);
//! - `images`: `U8 [n, 3, S, S]`, RGB, CHW per image, not normalised (normalisation happens
//!   when batches are loaded, so shards are 4x smaller than f32).
//!
//! `__metadata__` (all strings): `format` = `lesion-shard`, `format_version`, `split`,
//! `view` (augmented view number, `0` for val/test), `image_size` (S), `count` (n).
//!
//! [`ShardWriter`] streams rows to disk (memory does not grow with the shard) and hashes
//! the file while writing it; [`Shard`] memory-maps a file and hands out zero-copy slices.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::json;

use crate::error::IoContext;
use crate::fsutil::{AtomicFile, HashingWriter};
use crate::split::Split;
use crate::{Error, Result};

/// Value of the `format` metadata key.
pub const SHARD_FORMAT: &str = "lesion-shard";
/// Version of the shard layout described in this module.
pub const SHARD_FORMAT_VERSION: u32 = 1;

/// The descriptive part of a shard (its `__metadata__`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMeta {
    pub split: Split,
    /// Augmented view number (train); always 0 for val and test.
    pub view: u32,
    /// Side S of the square images.
    pub image_size: u32,
    /// Number of rows n.
    pub count: usize,
}

impl ShardMeta {
    /// Bytes of one image row: `3 * S * S`.
    pub fn image_bytes(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }
}

/// What a finished shard file looks like on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFileInfo {
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
    pub bytes: u64,
}

fn split_from_name(name: &str) -> Option<Split> {
    Split::ALL.into_iter().find(|s| s.name() == name)
}

fn header_bytes(meta: &ShardMeta) -> Result<Vec<u8>> {
    let n = meta.count;
    let images = n
        .checked_mul(meta.image_bytes())
        .ok_or_else(|| Error::InvalidOption("shard too large".into()))?;
    let mut metadata = BTreeMap::new();
    metadata.insert("format", SHARD_FORMAT.to_string());
    metadata.insert("format_version", SHARD_FORMAT_VERSION.to_string());
    metadata.insert("split", meta.split.name().to_string());
    metadata.insert("view", meta.view.to_string());
    metadata.insert("image_size", meta.image_size.to_string());
    metadata.insert("count", n.to_string());
    let s = meta.image_size as usize;
    let header = json!({
        "__metadata__": metadata,
        "source_index": {"dtype": "U32", "shape": [n], "data_offsets": [0, 4 * n]},
        "labels": {"dtype": "U8", "shape": [n], "data_offsets": [4 * n, 5 * n]},
        "images": {"dtype": "U8", "shape": [n, 3, s, s], "data_offsets": [5 * n, 5 * n + images]},
    });
    let mut text = serde_json::to_vec(&header).expect("JSON of plain values");
    // safetensors readers expect the data section to start 8-byte aligned.
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    Ok(out)
}

/// Streams one shard to disk: labels and source indices are given up front, images are
/// pushed one row at a time in the same order. The file appears (atomically) on
/// [`ShardWriter::finish`].
#[derive(Debug)]
pub struct ShardWriter {
    out: HashingWriter<BufWriter<AtomicFile>>,
    path: PathBuf,
    meta: ShardMeta,
    pushed: usize,
}

impl ShardWriter {
    /// Starts `path`; `labels` and `source_index` must both have `meta.count` entries.
    pub fn create(
        path: impl AsRef<Path>,
        meta: ShardMeta,
        labels: &[u8],
        source_index: &[u32],
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if labels.len() != meta.count || source_index.len() != meta.count {
            return Err(Error::InvalidOption(format!(
                "{}: shard of {} rows given {} labels and {} source indices",
                path.display(),
                meta.count,
                labels.len(),
                source_index.len()
            )));
        }
        let file = AtomicFile::create(&path)?;
        let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        out.write_all(&header_bytes(&meta)?).with_path(&path)?;
        let mut idx = Vec::with_capacity(4 * source_index.len());
        for &i in source_index {
            idx.extend_from_slice(&i.to_le_bytes());
        }
        out.write_all(&idx).with_path(&path)?;
        out.write_all(labels).with_path(&path)?;
        Ok(Self {
            out,
            path,
            meta,
            pushed: 0,
        })
    }

    /// Appends the next image row (`3 * S * S` bytes, CHW).
    pub fn push_image(&mut self, chw: &[u8]) -> Result<()> {
        if chw.len() != self.meta.image_bytes() {
            return Err(Error::InvalidOption(format!(
                "{}: image row of {} bytes, expected {}",
                self.path.display(),
                chw.len(),
                self.meta.image_bytes()
            )));
        }
        if self.pushed == self.meta.count {
            return Err(Error::InvalidOption(format!(
                "{}: more than {} images pushed",
                self.path.display(),
                self.meta.count
            )));
        }
        self.out.write_all(chw).with_path(&self.path)?;
        self.pushed += 1;
        Ok(())
    }

    /// Finishes the file (fsync + rename into place) and returns its hash and size.
    pub fn finish(self) -> Result<ShardFileInfo> {
        if self.pushed != self.meta.count {
            return Err(Error::InvalidOption(format!(
                "{}: {} images pushed, expected {}",
                self.path.display(),
                self.pushed,
                self.meta.count
            )));
        }
        let bytes = self.out.written();
        let (buf, sha256) = self.out.finish();
        let file = buf
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.commit()?;
        Ok(ShardFileInfo {
            path: self.path,
            sha256,
            bytes,
        })
    }
}

/// Writes a whole shard from in-memory rows (`images` holds `count` CHW rows back to back).
pub fn write_shard(
    path: impl AsRef<Path>,
    meta: ShardMeta,
    images: &[u8],
    labels: &[u8],
    source_index: &[u32],
) -> Result<ShardFileInfo> {
    let mut w = ShardWriter::create(path, meta, labels, source_index)?;
    if images.len() != meta.count * meta.image_bytes() {
        return Err(Error::InvalidOption(format!(
            "{} image bytes for {} rows of {}",
            images.len(),
            meta.count,
            meta.image_bytes()
        )));
    }
    for row in images.chunks_exact(meta.image_bytes().max(1)) {
        w.push_image(row)?;
    }
    w.finish()
}

/// A memory-mapped shard. Rows are read straight from the page cache; nothing is copied
/// until the caller copies.
///
/// The file must not be modified while it is open (a truncated mapping faults on access);
/// prepared datasets are written once and never changed in place.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    meta: ShardMeta,
    source_index: Vec<u32>,
    labels: std::ops::Range<usize>,
    images: std::ops::Range<usize>,
}

impl Shard {
    /// Maps `path` and checks that it is a well-formed lesion shard.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).with_path(&path)?;
        // SAFETY: the mapping is read-only and prepared shards are never modified in place
        // (they are written to a temporary file and renamed); see the type's docs.
        let map = unsafe { Mmap::map(&file) }.with_path(&path)?;
        let bad = |reason: String| Error::Safetensors {
            path: path.clone(),
            reason,
        };
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let kv = metadata
            .metadata()
            .as_ref()
            .ok_or_else(|| bad("no __metadata__".into()))?;
        let get = |k: &str| {
            kv.get(k)
                .map(String::as_str)
                .ok_or_else(|| bad(format!("metadata key `{k}` missing")))
        };
        if get("format")? != SHARD_FORMAT {
            return Err(bad(format!("not a {SHARD_FORMAT} file")));
        }
        let version: u32 = get("format_version")?.parse().unwrap_or(0);
        if version != SHARD_FORMAT_VERSION {
            return Err(bad(format!(
                "shard format version {version}, this build reads {SHARD_FORMAT_VERSION}"
            )));
        }
        let split = split_from_name(get("split")?)
            .ok_or_else(|| bad(format!("unknown split `{}`", kv["split"])))?;
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("metadata `{k}` is not a number")))
        };
        let meta = ShardMeta {
            split,
            view: num("view")? as u32,
            image_size: num("image_size")? as u32,
            count: num("count")? as usize,
        };
        let n = meta.count;
        let s = meta.image_size as usize;
        let tensor = |name: &str, dtype: Dtype, shape: Vec<usize>| {
            let info = metadata
                .info(name)
                .ok_or_else(|| bad(format!("tensor `{name}` missing")))?;
            if info.dtype != dtype || info.shape != shape {
                return Err(bad(format!(
                    "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                    info.dtype, info.shape
                )));
            }
            Ok(data_start + info.data_offsets.0..data_start + info.data_offsets.1)
        };
        let idx = tensor("source_index", Dtype::U32, vec![n])?;
        let labels = tensor("labels", Dtype::U8, vec![n])?;
        let images = tensor("images", Dtype::U8, vec![n, 3, s, s])?;
        let source_index = map[idx]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Self {
            path,
            map,
            meta,
            source_index,
            labels,
            images,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// Number of rows n.
    pub fn len(&self) -> usize {
        self.meta.count
    }

    pub fn is_empty(&self) -> bool {
        self.meta.count == 0
    }

    /// Side S of the square images.
    pub fn image_size(&self) -> u32 {
        self.meta.image_size
    }

    /// Row `i`'s image: `3 * S * S` bytes, CHW, borrowed from the mapping.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.meta.image_bytes();
        let start = self.images.start + i * per;
        &self.map[start..start + per]
    }

    /// Drops row `i`'s pages from this process's resident set (they stay in the page cache;
    /// reading the row again maps them back). A loader that has copied a row calls this, so
    /// that a pass over a dataset does not grow the process's RSS by the dataset's size. Only
    /// pages wholly inside the row are dropped; errors are ignored (it is advice).
    pub fn release(&self, i: usize) {
        // The smallest page size of the platforms we build for; on a system with larger
        // pages the misaligned advice fails and is ignored.
        const PAGE: usize = if cfg!(target_os = "macos") {
            16384
        } else {
            4096
        };
        let per = self.meta.image_bytes();
        let start = self.images.start + i * per;
        let (lo, hi) = (start.next_multiple_of(PAGE), (start + per) / PAGE * PAGE);
        if hi <= lo {
            return;
        }
        // SAFETY: the mapping is read-only and backed by a file that is never modified (see
        // the type's docs), so dropped pages read back with the same contents, and slices
        // borrowed from the mapping stay valid.
        #[cfg(unix)]
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
        };
    }

    /// All rows' images, `[n, 3, S, S]`.
    pub fn images(&self) -> &[u8] {
        &self.map[self.images.clone()]
    }

    /// Class index of every row.
    pub fn labels(&self) -> &[u8] {
        &self.map[self.labels.clone()]
    }

    /// Index into the manifest's image list of every row.
    pub fn source_index(&self) -> &[u32] {
        &self.source_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let meta = ShardMeta {
            split: Split::Train,
            view: 2,
            image_size: 5,
            count: 3,
        };
        let images: Vec<u8> = (0..3 * 75).map(|i| (i * 7 % 256) as u8).collect();
        let labels = [0u8, 1, 1];
        let idx = [7u32, 70_000, 3];
        let info = write_shard(&path, meta, &images, &labels, &idx).unwrap();
        assert_eq!(info.sha256, crate::fsutil::sha256_file(&path).unwrap());
        assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());

        let shard = Shard::open(&path).unwrap();
        assert_eq!(*shard.meta(), meta);
        assert_eq!(shard.labels(), labels);
        assert_eq!(shard.source_index(), idx);
        assert_eq!(shard.image(1), &images[75..150]);
        assert_eq!(shard.images(), &images[..]);

        // Any safetensors reader sees the same tensors.
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("images").unwrap();
        assert_eq!(t.shape(), &[3, 3, 5, 5]);
        assert_eq!(t.data(), &images[..]);
        let t = st.tensor("source_index").unwrap();
        assert_eq!(t.dtype(), Dtype::U32);
        assert_eq!(&t.data()[4..8], &70_000u32.to_le_bytes());
    }

    #[test]
    fn released_rows_read_back_unchanged() {
        // 48x48 rows are 6912 bytes, so each holds at least one whole page to drop.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let (side, count) = (48, 4);
        let per = 3 * side * side;
        let meta = ShardMeta {
            split: Split::Train,
            view: 0,
            image_size: side as u32,
            count,
        };
        let images: Vec<u8> = (0..count * per).map(|i| (i * 13 % 251) as u8).collect();
        write_shard(&path, meta, &images, &[0, 1, 0, 1], &[0, 1, 2, 3]).unwrap();
        let shard = Shard::open(&path).unwrap();
        for i in 0..count {
            let before = shard.image(i).to_vec();
            shard.release(i);
            assert_eq!(shard.image(i), &before[..]);
            assert_eq!(shard.image(i), &images[i * per..(i + 1) * per]);
        }
    }

    #[test]
    fn writer_rejects_wrong_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let meta = ShardMeta {
            split: Split::Val,
            view: 0,
            image_size: 2,
            count: 2,
        };
        let mut w = ShardWriter::create(&path, meta, &[0, 1], &[0, 1]).unwrap();
        w.push_image(&[0; 12]).unwrap();
        assert!(w.push_image(&[0; 11]).is_err());
        assert!(w.finish().is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn open_rejects_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"not a shard at all").unwrap();
        let err = Shard::open(&path).unwrap_err();
        assert!(err.to_string().contains("x.safetensors"), "{err}");
    }
}

//! Pass 2b of `prep`: orders each split's rows (seeded by `(seed, split)`), reads them back
//! from the staging file, applies each view's augmentation, converts HWC to CHW and streams
//! them into shards. The pool prepares rows in parallel chunks while one writer thread
//! writes, hashes and commits shards in file order ([`WriteJob`]). The first three training
//! rows of each class (view 0) are kept as sample previews. With folds, the val shards are
//! the pool's (train split's) rows in the train shards' order, never augmented; a split
//! without images (the test split with `--no-test`) gets no folder and no shard.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use image::RgbImage;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::stage::{read_row, StagedRows};
use super::{chunk_len, progress_bar, PrepOptions};
use crate::error::IoContext;
use crate::manifest::{ImageEntry, ShardEntry};
use crate::shard::{ShardMeta, ShardWriter};
use crate::split::Split;
use crate::transforms;
use crate::{plot, Error, Result};

/// Pass 2b: streams every split into shards (train: `views` times) and returns the shard
/// entries and the sample previews.
pub(super) fn write_shards(
    opts: &PrepOptions,
    stage: &Path,
    images: &[ImageEntry],
    staged_rows: StagedRows<'_>,
    views: u32,
    n_classes: usize,
) -> Result<(Vec<ShardEntry>, Samples)> {
    let staged = File::open(staged_rows.path).with_path(staged_rows.path)?;
    // With folds each pool image is also written once, clean, into the val shards.
    let clean_copy = usize::from(opts.folds > 0);
    let total_rows: usize = images
        .iter()
        .map(|im| {
            if im.split == Split::Train {
                views as usize + clean_copy
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
        n_classes,
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
    n_classes: usize,
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
pub(super) type Samples = Vec<Vec<(u32, Vec<u8>)>>;

/// Prepares every shard's rows in parallel and hands them to the writer thread. Returns
/// `None` when the writer hung up (it failed; its error is the one to report).
fn produce_shards(ctx: &WriteContext<'_>, tx: &SyncSender<WriteJob>) -> Result<Option<Samples>> {
    let opts = ctx.opts;
    let row = 3 * opts.size as usize * opts.size as usize;
    let mut samples: Samples = vec![Vec::new(); ctx.n_classes];
    for sp in Split::ALL {
        // The split whose images the shards hold: with folds, the val shards hold the pool.
        let members = if opts.folds > 0 && sp == Split::Val {
            Split::Train
        } else {
            sp
        };
        let mut order: Vec<u32> = (0..ctx.images.len() as u32)
            .filter(|&i| ctx.images[i as usize].split == members)
            .collect();
        order.shuffle(&mut order_rng(opts.seed, members));
        if order.is_empty() {
            continue;
        }
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
                                .filter(|_| sp == Split::Train)
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

/// The RNG that orders the rows of one split.
fn order_rng(seed: u64, split: Split) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8] = split as u8;
    key[16..24].copy_from_slice(b"lesionOR");
    ChaCha8Rng::from_seed(key)
}

/// Writes the preview grid of the training samples (a row per class), labelled with class
/// and source index.
pub(super) fn write_samples(
    samples: Samples,
    classes: &[String],
    size: u32,
    path: &Path,
) -> Result<()> {
    let grid: Vec<(RgbImage, String)> = samples
        .into_iter()
        .enumerate()
        .flat_map(|(k, v)| {
            v.into_iter().map(move |(i, chw)| {
                (
                    chw_to_image(&chw, size),
                    format!("{} (label {k}, #{i})", classes[k]),
                )
            })
        })
        .collect();
    plot::image_grid(&grid, 3, path)
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

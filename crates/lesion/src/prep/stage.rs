//! Pass 1 of `prep`: reads, hashes, decodes and resizes every input file exactly once and
//! appends each accepted image (`S x S` RGB, HWC u8, `3 * S * S` bytes a row) to a staging
//! file inside the output's staging folder; later passes read the rows back by position.
//! Unreadable files are rejected with a reason (or fail the run with `strict`), and so are
//! byte-identical copies filed under different classes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use super::discover::InputFile;
use super::{chunk_len, progress_bar, PrepOptions};
use crate::error::IoContext;
use crate::fsutil;
use crate::image_io::{self, ResizePolicy};
use crate::manifest::{ImageEntry, RejectedFile};
use crate::split::Split;
use crate::{Error, Result};

/// Name of the staging file inside the output's staging folder (removed before commit).
pub(super) const STAGED_IMAGES: &str = ".staged-images.u8";

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

/// Pass 1: reads, hashes, decodes and resizes every file exactly once, in parallel chunks,
/// appending each accepted image (`S x S` RGB, HWC u8) to the staging file in file order.
/// Returns the accepted images (row k of the staging file is entry k) and the rejected files.
pub(super) fn stage_images(
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
                        fold: None,
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
pub(super) fn reject_conflicting_copies(
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

/// Where pass 1 left each image's pixels.
#[derive(Clone, Copy)]
pub(super) struct StagedRows<'a> {
    pub(super) path: &'a Path,
    /// Row in the staging file of each image (by source index).
    pub(super) rows: &'a [u32],
}

/// Reads staged row `i` (positioned read: safe from any thread, leaves nothing mapped).
pub(super) fn read_row(file: &File, path: &Path, i: usize, buf: &mut [u8]) -> Result<()> {
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

//! Tiny but real test inputs: photo folders, prepared datasets, runs and weights files.
//!
//! Photos are `lesion::synth` lesions scaled to 64-128 px per side (non-square), JPEG and
//! PNG alternately; prepared datasets are [`IMAGE_SIZE`] px (the smallest the model takes)
//! so that a one-epoch CPU run takes seconds in the debug profile.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{imageops, DynamicImage, ImageFormat, RgbImage};
use lesion::prep::PrepOptions;
use lesion::train::{Monitor, TrainConfig};

/// Side of the prepared images: the smallest ResNet-18 input the stages accept.
pub const IMAGE_SIZE: u32 = lesion::run::MIN_IMAGE_SIZE;

/// Photos per class of [`write_photos`]' default folder: enough for prep's 60/20/20 split to
/// put both classes in every split.
pub const PER_CLASS: usize = 8;

/// Synthetic lesion `index` of `class` (0 benign, 1 malignant), scaled to `w x h`.
pub fn photo(class: usize, index: usize, w: u32, h: u32) -> RgbImage {
    let full = lesion::synth::render(class, index, 5);
    imageops::resize(&full, w, h, imageops::FilterType::Triangle)
}

/// `img` encoded as `format` (JPEG, PNG, BMP, ...).
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, format)
        .expect("encoding a small RGB image");
    out.into_inner()
}

/// A photo of `class` as JPEG bytes (96 x 80 px).
pub fn jpeg(class: usize, index: usize) -> Vec<u8> {
    encode(&photo(class, index, 96, 80), ImageFormat::Jpeg)
}

/// A photo of `class` as PNG bytes (72 x 88 px).
pub fn png(class: usize, index: usize) -> Vec<u8> {
    encode(&photo(class, index, 72, 88), ImageFormat::Png)
}

/// Writes `per_class` photos into each of `root/Benign/` and `root/Malignant/`
/// (`benign_00.jpg`, `benign_01.png`, ...: even indices JPEG, odd PNG; 64-128 px per side).
pub fn write_photos(root: &Path, per_class: usize) -> PathBuf {
    for (class, dir) in lesion::synth::CLASS_DIRS.iter().enumerate() {
        write_folder(root, dir, class, per_class, &dir.to_ascii_lowercase());
    }
    root.to_path_buf()
}

/// Writes `n` photos into each `root/<folder>/` of `folders` (`<folder>_00.jpg`,
/// `<folder>_01.png`, ...: even indices JPEG, odd PNG; 64-128 px per side). Folder `k` draws
/// `lesion::synth` class `k` (1 looks malignant, every other benign), so no two files are
/// alike; any number of folders, for multi-class inputs.
pub fn write_class_photos(root: &Path, folders: &[(&str, usize)]) -> PathBuf {
    for (class, &(dir, n)) in folders.iter().enumerate() {
        write_folder(root, dir, class, n, dir);
    }
    root.to_path_buf()
}

/// `n` photos of `lesion::synth` class `class` in `root/<dir>/`, named `<stem>_NN.jpg|png`.
fn write_folder(root: &Path, dir: &str, class: usize, n: usize, stem: &str) {
    let folder = root.join(dir);
    fs::create_dir_all(&folder).unwrap();
    for i in 0..n {
        let (w, h) = (64 + (i as u32 * 23) % 65, 64 + (i as u32 * 41) % 65);
        let img = photo(class, i, w, h);
        let (format, ext) = if i % 2 == 0 {
            (ImageFormat::Jpeg, "jpg")
        } else {
            (ImageFormat::Png, "png")
        };
        fs::write(
            folder.join(format!("{stem}_{i:02}.{ext}")),
            encode(&img, format),
        )
        .unwrap();
    }
}

/// The prep options of the test datasets: [`IMAGE_SIZE`] px, shards of 4 rows, quiet.
pub fn prep_options(images: &Path, out: &Path) -> PrepOptions {
    let mut o = PrepOptions::new(images, out);
    o.size = IMAGE_SIZE;
    o.shard_size = 4;
    o.progress = false;
    o
}

/// Prepares `images` into `out` with [`prep_options`].
pub fn prepare(images: &Path, out: &Path) -> PathBuf {
    lesion::prep::run(&prep_options(images, out))
        .unwrap_or_else(|e| panic!("preparing {}: {e}", images.display()))
        .out
}

/// The training options of the test runs: CPU, random initialisation, one epoch of batches
/// of 4, selected on validation AUC.
pub fn train_config(data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        epochs: 1,
        batch_size: 4,
        monitor: Monitor::ValAuc,
        weights: "none".into(),
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// Trains the prepared dataset `data` for one epoch into the run folder `out`.
pub fn train(data: &Path, out: &Path) -> PathBuf {
    lesion::train::train(&train_config(data, out), false)
        .unwrap_or_else(|e| panic!("training on {}: {e}", data.display()))
        .run_dir
}

/// A run folder with seeded random weights at `size` px and threshold 0.5 (see
/// `lesion::run::fixtures`): enough for prediction, which does not need its data.
pub fn untrained_run(dir: &Path, size: usize) -> PathBuf {
    lesion::run::fixtures::write_untrained_run(dir, size, 7, Some(0.5))
        .unwrap_or_else(|e| panic!("writing a run in {}: {e}", dir.display()))
}

/// Writes a ResNet-18 state dict (torchvision names, seeded random values) as safetensors:
/// what `lesion-train --weights PATH` loads. With `poison`, one element of `conv1.weight`
/// is NaN.
pub fn write_weights(path: &Path, poison: bool) -> PathBuf {
    let varmap = VarMap::new();
    lesion::model::ResNet18::new(
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        0.25,
        1,
    )
    .unwrap();
    lesion::model::init_seeded(&varmap, 3).unwrap();
    let mut tensors: HashMap<String, Tensor> = lesion::model::snapshot(&varmap).unwrap();
    if poison {
        let w = &tensors["conv1.weight"];
        let mut values = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let middle = values.len() / 2;
        values[middle] = f32::NAN;
        let poisoned = Tensor::from_vec(values, w.dims(), &Device::Cpu).unwrap();
        tensors.insert("conv1.weight".into(), poisoned);
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
    path.to_path_buf()
}

/// The process id of a process that has exited (a child started and reaped here), for
/// names like `.x.tmp-PID-0` that a stale-file cleanup must recognise as dead.
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("starting a short-lived process");
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// The first `len` bytes of `bytes` (a truncated file).
pub fn truncated(bytes: &[u8], len: usize) -> Vec<u8> {
    bytes[..len.min(bytes.len())].to_vec()
}

/// Whether file permissions keep this process out (false for root, which reads
/// everything), for cases about unreadable files.
#[cfg(unix)]
pub fn permissions_apply(scratch: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = scratch.join(".permission-probe");
    fs::write(&probe, b"x").unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o000)).unwrap();
    let denied = fs::read(&probe).is_err();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(&probe).unwrap();
    denied
}

/// Flips every bit of the byte at `offset` (from the end when negative) of the file `path`.
pub fn flip_byte(path: &Path, offset: i64) {
    let mut bytes = fs::read(path).unwrap();
    let i = if offset < 0 {
        bytes.len() - offset.unsigned_abs() as usize
    } else {
        offset as usize
    };
    bytes[i] ^= 0xFF;
    fs::write(path, bytes).unwrap();
}

/// Rewrites the JSON file `path` through `edit`.
pub fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Cuts the file `path` to `fraction` of its length.
pub fn truncate_file(path: &Path, fraction: f64) {
    let bytes = fs::read(path).unwrap();
    let keep = (bytes.len() as f64 * fraction) as usize;
    fs::write(path, &bytes[..keep]).unwrap();
}

/// Creates a named pipe at `path`: opening it for reading blocks until a writer comes, so
/// a program that opens it when it should not hangs (and a timeout shows it).
#[cfg(unix)]
pub fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("running mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A BMP header declaring a `w x h` 24-bit image, with no pixel data: a decompression bomb
/// that a decoder must refuse from the header alone.
pub fn bmp_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(54);
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&54u32.to_le_bytes()); // file size (a lie, as bombs do)
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    b.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    b
}

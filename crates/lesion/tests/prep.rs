//! End-to-end tests of the prep stage on tiny images made here (no shared data needed).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use lesion::image_io::{self, ResizePolicy};
use lesion::loader::{LoaderOptions, PreparedDataset};
use lesion::manifest::Manifest;
use lesion::prep::{self, PrepOptions};
use lesion::split::Split;
use lesion::transforms;
use lesion::Error;

const S: u32 = 32;

/// A small lesion-like picture: a disc whose colour depends on the class, with per-image
/// texture so that no two files are identical.
fn picture(class: u8, i: u32, w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
        let r = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        let noise = ((x * 31 + y * 17 + i * 101) % 23) as u8;
        if r < w.min(h) as f32 / 3.0 {
            match class {
                0 => Rgb([150 + noise, 90 + noise, 60]),
                _ => Rgb([40 + noise, 20, 30 + noise]),
            }
        } else {
            Rgb([220 - noise, 190, 170 + noise])
        }
    })
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    out
}

/// Writes `n[0]` benign and `n[1]` malignant images into `<root>/<folders[k]>/`, alternating
/// PNG and JPEG with varied sizes; every third file has a misleading extension (content
/// decides, not the name).
fn make_dataset(root: &Path, folders: [&str; 2], n: [u32; 2]) -> PathBuf {
    for (k, folder) in folders.iter().enumerate() {
        let dir = root.join(folder);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..n[k] {
            let (w, h) = (40 + (i % 3) * 8, 36 + (i % 2) * 12);
            let img = picture(k as u8, i + 100 * k as u32, w, h);
            let (bytes, ext) = if i % 2 == 0 {
                (encode(&img, ImageFormat::Png), "png")
            } else {
                (encode(&img, ImageFormat::Jpeg), "jpg")
            };
            let ext = if i % 3 == 2 { "img" } else { ext };
            fs::write(
                dir.join(format!("{}{i:02}.{ext}", &folder[..1].to_lowercase())),
                bytes,
            )
            .unwrap();
        }
    }
    root.to_path_buf()
}

fn options(input: &Path, out: &Path) -> PrepOptions {
    let mut o = PrepOptions::new(input, out);
    o.size = S;
    o.shard_size = 4;
    o.progress = false;
    o
}

fn bad_dataset_reason(e: &Error) -> (&Path, &str) {
    match e {
        Error::BadDataset { path, reason } => (path, reason),
        other => panic!("expected BadDataset, got {other:?}"),
    }
}

/// Nothing but the named entries is left in `dir` (no `.partial-*` or temp files).
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
}

fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn round_trip_prepares_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [10, 10]);
    let out = tmp.path().join("prepared");
    let summary = prep::run(&options(&input, &out)).unwrap();
    assert_eq!(summary.out, out);
    assert_eq!((summary.files, summary.images), (20, 20));
    assert!(summary.rejected.is_empty() && summary.duplicates.is_empty());
    // scikit-learn's counts for 10 + 10 at 60/20/20: 6/2/2 per class.
    let per = common::split_counts(&summary);
    assert_eq!(
        per,
        [
            (Split::Train, vec![6, 6]),
            (Split::Val, vec![2, 2]),
            (Split::Test, vec![2, 2])
        ]
    );
    let text = summary.to_string();
    assert!(text.contains("prepared 20 images from 20 files"), "{text}");
    assert!(text.contains(&out.display().to_string()), "{text}");

    assert_only(tmp.path(), &["in", "prepared"]);
    assert_only(
        &out,
        &["manifest.json", "samples.png", "train", "val", "test"],
    );
    assert_only(
        &out.join("train"),
        &[
            "shard-v0-00000.safetensors",
            "shard-v0-00001.safetensors",
            "shard-v0-00002.safetensors",
        ],
    );
    let samples = image::open(out.join("samples.png")).unwrap();
    assert!(samples.width() > 3 * 100 && samples.height() > 2 * 100);

    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.classes, ["Benign", "Malignant"]);
    assert_eq!((m.image_size, m.views, m.seed), (S, 1, 42));
    assert_eq!(m.resize, ResizePolicy::Stretch);
    assert_eq!(m.normalization.mean, transforms::IMAGENET_MEAN);
    assert_eq!(m.images.len(), 20);
    assert_eq!(m.images[0].path, "Benign/b00.png");
    assert_eq!(m.images[19].path, "Malignant/m09.jpg");
    assert_eq!((m.images[1].width, m.images[1].height), (48, 48));
    for im in &m.images {
        assert_eq!(im.class, u8::from(im.path.starts_with("Malignant")));
        let bytes = fs::read(input.join(&im.path)).unwrap();
        assert_eq!(im.sha256, lesion::fsutil::sha256_hex(&bytes));
        let augs = im.augmentations.as_ref();
        assert_eq!(augs.map(Vec::len), (im.split == Split::Train).then_some(1));
    }
    assert_eq!(m.shards.iter().map(|s| s.count).sum::<usize>(), 20);

    // Every row holds exactly the decoded, resized (and for train, augmented) source image.
    let ds = PreparedDataset::open(&out).unwrap();
    ds.verify().unwrap();
    let mut seen = 0;
    for split in Split::ALL {
        for batch in ds
            .loader(split, LoaderOptions::eval(3), &Device::Cpu)
            .unwrap()
        {
            let batch = batch.unwrap();
            let px = batch
                .images
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let per = (3 * S * S) as usize;
            for (row, &si) in batch.source_index.iter().enumerate() {
                let im = &m.images[si as usize];
                assert_eq!(im.split, split);
                assert_eq!(batch.label_u8[row], im.class);
                let path = input.join(&im.path);
                let decoded =
                    image_io::decode_rgb(&fs::read(&path).unwrap(), &path, u64::MAX).unwrap();
                let mut img = image_io::resize_square(&decoded, S, ResizePolicy::Stretch);
                if let Some(a) = &im.augmentations {
                    img = a[0].apply(&img);
                }
                let mut want = vec![0f32; per];
                let n = &m.normalization;
                transforms::normalize_chw(&transforms::to_chw(&img), n.mean, n.std, &mut want);
                assert_eq!(&px[row * per..(row + 1) * per], &want[..], "{}", im.path);
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 20);
}

#[test]
fn output_is_byte_identical_for_any_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [9, 7]);
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let out = tmp.path().join(format!("out{threads}"));
        let mut o = options(&input, &out);
        o.threads = Some(threads);
        o.views = 2;
        o.shard_size = 3;
        prep::run(&o).unwrap();
        runs.push(tree(&out));
    }
    assert!(
        runs[0].len() > 8,
        "{:?}",
        runs[0].iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(runs[0]
        .iter()
        .any(|f| f.0.ends_with("shard-v1-00000.safetensors")));
    let names = |r: &Vec<(String, Vec<u8>)>| r.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&runs[0]), names(&runs[1]));
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert!(a.1 == b.1, "{} differs between 1 and 2 threads", a.0);
    }
}

/// A PNG whose header declares `w x h` pixels, followed by the start of a deflate stream
/// (a real bomb is a few MB of compressed zeros; the header alone must get it refused).
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&w.to_be_bytes());
    chunk.extend_from_slice(&h.to_be_bytes());
    chunk.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&chunk);
    png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[0x78, 0x9c, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2]);
    png.extend_from_slice(&(idat.len() as u32 - 4).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

/// Adds one file of each kind of bad input to `dir` and returns (name, exact reason).
fn add_bad_files(dir: &Path) -> Vec<(&'static str, String)> {
    let img = picture(0, 999, 40, 40);
    let png = encode(&img, ImageFormat::Png);
    let mut corrupt = png.clone();
    for b in &mut corrupt[60..100] {
        *b ^= 0x5A;
    }
    fs::write(dir.join("corrupt.png"), &corrupt).unwrap();
    let jpeg = encode(&img, ImageFormat::Jpeg);
    fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    fs::write(dir.join("empty.jpg"), b"").unwrap();
    fs::write(dir.join("notes.jpg"), b"benign, seen 2017-03-02\n").unwrap();
    fs::write(dir.join("bomb.png"), png_bomb(100_000, 100_000)).unwrap();
    std::os::unix::fs::symlink(dir.join("gone.jpg"), dir.join("dangling.jpg")).unwrap();
    vec![
        (
            "bomb.png",
            "too large: 100000x100000 = 10000000000 pixels exceeds the limit of 100000000".into(),
        ),
        (
            "corrupt.png",
            "truncated or corrupt PNG: Format error decoding Png: Corrupt deflate stream. \
            BadCodeLengthHuffmanTree"
                .into(),
        ),
        (
            "dangling.jpg",
            "cannot read: No such file or directory (os error 2)".into(),
        ),
        ("empty.jpg", "empty file".into()),
        ("notes.jpg", "not an image (unrecognised format)".into()),
        (
            "truncated.jpg",
            "truncated or corrupt JPEG: the file ends before the end-of-image marker".into(),
        ),
    ]
}

#[test]
fn bad_files_are_reported_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [10, 10]);
    let bad = add_bad_files(&input.join("Benign"));
    let out = tmp.path().join("prepared");
    let summary = prep::run(&options(&input, &out)).unwrap();
    assert_eq!((summary.files, summary.images), (26, 20));
    let got: Vec<(String, String)> = summary
        .rejected
        .iter()
        .map(|r| (r.path.clone(), r.reason.clone()))
        .collect();
    let want: Vec<(String, String)> = bad
        .iter()
        .map(|(n, r)| (format!("Benign/{n}"), r.clone()))
        .collect();
    assert_eq!(got, want);
    let text = summary.to_string();
    assert!(text.contains("rejected files: 6"), "{text}");
    assert!(text.contains("Benign/empty.jpg: empty file"), "{text}");
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.rejected, summary.rejected);
    assert_eq!(m.images.len(), 20);
    assert_eq!(m.counts[0].per_class, [6, 6]);
}

#[test]
fn strict_makes_a_bad_file_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [10, 10]);
    fs::write(input.join("Malignant/empty.jpg"), b"").unwrap();
    let out = tmp.path().join("prepared");
    let mut o = options(&input, &out);
    o.strict = true;
    let err = prep::run(&o).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: empty file",
            input.join("Malignant/empty.jpg").display()
        )
    );
    assert_eq!(err.exit_code(), 2);
    assert_only(tmp.path(), &["in"]);
}

#[test]
fn missing_folder_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("nowhere");
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    assert_eq!(
        bad_dataset_reason(&err),
        (input.as_path(), "input folder does not exist")
    );
    assert_eq!(err.exit_code(), 2);
    assert_only(tmp.path(), &[]);
}

#[test]
fn one_class_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A hidden folder is not a class.
    let input = make_dataset(&tmp.path().join("in"), ["benign", ".other"], [5, 5]);
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    assert_eq!(
        bad_dataset_reason(&err),
        (
            input.as_path(),
            "need at least two class folders, found only benign/"
        )
    );
    assert_eq!(err.exit_code(), 2);
    assert_only(tmp.path(), &["in"]);
}

#[test]
fn empty_class_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 0]);
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    let mal = input.join("Malignant");
    assert_eq!(
        bad_dataset_reason(&err),
        (
            mal.as_path(),
            "class folder is empty (skip it with --group Malignant=-)"
        )
    );
    assert_eq!(err.exit_code(), 2);

    // A class whose every file is unusable is empty too.
    fs::write(mal.join("x.jpg"), b"").unwrap();
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    assert_eq!(
        bad_dataset_reason(&err),
        (
            mal.as_path(),
            "no usable images in class Malignant (all files rejected)"
        )
    );
    assert_only(tmp.path(), &["in"]);
}

#[test]
fn too_few_images_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [10, 2]);
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    assert_eq!(
        bad_dataset_reason(&err),
        (
            input.as_path(),
            "too few images for the split fractions: class Malignant has only 2 image(s): a \
             split with validation fraction 0.2 and test fraction 0.2 would give it train 1, \
             val 0, test 1; every split needs at least one image of each class"
        )
    );
    assert_eq!(err.exit_code(), 2);
    assert_only(tmp.path(), &["in"]);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let out = tmp.path().join("prepared");
    prep::run(&options(&input, &out)).unwrap();
    let old = fs::read(out.join("manifest.json")).unwrap();
    let err = prep::run(&options(&input, &out)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} already exists; pass --force to overwrite it",
            out.display()
        )
    );
    assert_eq!(err.exit_code(), 2);
    assert_eq!(fs::read(out.join("manifest.json")).unwrap(), old);

    // A forced run that fails keeps the old output ...
    let mut o = options(&input, &out);
    o.force = true;
    o.seed = 9;
    fs::write(input.join("Benign/bad.jpg"), b"").unwrap();
    o.strict = true;
    prep::run(&o).unwrap_err();
    assert_eq!(fs::read(out.join("manifest.json")).unwrap(), old);
    // ... and one that succeeds replaces it.
    o.strict = false;
    prep::run(&o).unwrap();
    assert_eq!(Manifest::load(&out).unwrap().seed, 9);
    assert_only(tmp.path(), &["in", "prepared"]);
}

#[test]
fn duplicates_are_kept_in_one_split() {
    let tmp = tempfile::tempdir().unwrap();
    // Folder names in any case: class names as written, `malignant` is label 1.
    let input = make_dataset(&tmp.path().join("in"), ["BENIGN", "malignant"], [12, 10]);
    fs::write(input.join("README.txt"), b"photos by class").unwrap();
    for (src, dst) in [
        ("BENIGN/b00.png", "BENIGN/b00-copy.png"),
        ("BENIGN/b01.jpg", "BENIGN/b01-copy.jpg"),
        ("BENIGN/b01.jpg", "BENIGN/b01-copy2.jpg"),
        ("malignant/m03.jpg", "malignant/m03-again.jpg"),
        // The same picture in both classes contradicts itself: both copies are rejected.
        ("BENIGN/b04.png", "malignant/m04-mislabelled.png"),
    ] {
        fs::copy(input.join(src), input.join(dst)).unwrap();
    }
    let out = tmp.path().join("prepared");
    let summary = prep::run(&options(&input, &out)).unwrap();
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.starts_with("ignored 1 file(s) directly inside the input folder")),
        "{:?}",
        summary.warnings
    );
    let reason = "byte-identical copies exist in more than one class folder (conflicting labels)";
    let rejected: Vec<(&str, &str)> = summary
        .rejected
        .iter()
        .map(|r| (r.path.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        rejected,
        [
            ("BENIGN/b04.png", reason),
            ("malignant/m04-mislabelled.png", reason)
        ]
    );
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.classes, ["BENIGN", "malignant"]);
    let groups: Vec<Vec<String>> = m.duplicates.iter().map(|d| d.paths.clone()).collect();
    assert_eq!(
        groups,
        [
            vec!["BENIGN/b00-copy.png", "BENIGN/b00.png"],
            vec![
                "BENIGN/b01-copy.jpg",
                "BENIGN/b01-copy2.jpg",
                "BENIGN/b01.jpg"
            ],
            vec!["malignant/m03-again.jpg", "malignant/m03.jpg"],
        ]
    );
    for d in &m.duplicates {
        for &i in &d.indices {
            assert_eq!(m.images[i as usize].split, d.split);
            assert_eq!(m.images[i as usize].sha256, d.sha256);
        }
    }
    // Per-class counts follow scikit-learn's rule on the images kept (14 benign, 11
    // malignant): test 5 = 3 + 2, then val 5 = 3 + 2 of the remaining 11 + 9.
    let per: Vec<Vec<usize>> = m.counts.iter().map(|c| c.per_class.clone()).collect();
    assert_eq!(per, [vec![8, 7], vec![3, 2], vec![3, 2]]);
    assert!(summary.to_string().contains("duplicates: 3 groups"));
}

#[test]
fn verify_detects_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let out = tmp.path().join("prepared");
    prep::run(&options(&input, &out)).unwrap();
    let report = prep::verify(&out).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.shards_checked, 4);
    assert!(report.to_string().ends_with("all match the manifest)"));

    let shard = out.join("train/shard-v0-00000.safetensors");
    let mut bytes = fs::read(&shard).unwrap();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0x01;
    fs::write(&shard, bytes).unwrap();
    let report = prep::verify(&out).unwrap();
    assert_eq!(report.problems.len(), 1);
    assert!(
        report.problems[0].starts_with("train/shard-v0-00000.safetensors: SHA-256 mismatch"),
        "{}",
        report.problems[0]
    );
    // A damaged prepared folder is input the user gave that is inconsistent.
    let err = report.into_result().unwrap_err();
    assert_eq!(err.exit_code(), 2);

    fs::remove_file(out.join("val/shard-00000.safetensors")).unwrap();
    let report = prep::verify(&out).unwrap();
    assert_eq!(report.problems.len(), 2);
    assert!(report.problems[1].starts_with("val/shard-00000.safetensors: cannot read"));
}

// ---------------------------------------------------------------------------------------
// Nothing the user owns is replaced, stale temporaries are cleaned, manifests stay inside
// their folder, and every file name survives.

/// Every file below `dir` (links not followed) with its bytes, for before/after checks.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push((p.clone(), fs::read(&p).unwrap()));
            } else {
                out.push((p.clone(), Vec::new()));
            }
        }
    }
    out.sort();
    out
}

/// The message of a refusal to use an output location (exit code 2).
fn refusal(err: Error) -> String {
    assert_eq!(err.exit_code(), 2, "{err}");
    match err {
        Error::NotOurOutput { .. } => err.to_string(),
        other => panic!("expected NotOurOutput, got {other:?}"),
    }
}

#[test]
fn force_never_deletes_the_input_or_a_folder_that_is_not_a_prepared_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("parent");
    let input = make_dataset(&parent.join("images"), ["Benign", "Malignant"], [5, 5]);
    let unrelated = tmp.path().join("documents");
    fs::create_dir(&unrelated).unwrap();
    fs::write(unrelated.join("thesis.txt"), b"precious").unwrap();
    // A prepared dataset that the user put the input inside: ours, but it holds the input.
    let prepared_parent = tmp.path().join("prepared-parent");
    prep::run(&options(&input, &prepared_parent)).unwrap();
    let nested_input = prepared_parent.join("images");
    make_dataset(&nested_input, ["Benign", "Malignant"], [5, 5]);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&input, tmp.path().join("link")).unwrap();
    let before = snapshot(tmp.path());

    let mut cases: Vec<(PathBuf, PathBuf, String)> = vec![
        (input.clone(), input.clone(), "is the input".into()),
        (input.clone(), input.join("."), "is the input".into()),
        (input.clone(), parent.clone(), "holds the input".into()),
        (
            input.clone(),
            input.join("Benign/prepared"),
            "lies inside the input folder".into(),
        ),
        (
            nested_input.clone(),
            prepared_parent.clone(),
            "holds the input".into(),
        ),
        (
            input.clone(),
            unrelated.clone(),
            "is not a prepared dataset".into(),
        ),
    ];
    #[cfg(unix)]
    cases.push((
        input.clone(),
        tmp.path().join("link"),
        "is the input".into(),
    ));
    for (from, out, why) in cases {
        for force in [true, false] {
            let mut o = options(&from, &out);
            o.force = force;
            let msg = refusal(prep::run(&o).unwrap_err());
            assert!(
                msg.starts_with(&out.display().to_string()),
                "{out:?}: {msg}"
            );
            assert!(msg.contains(&why), "{out:?}: {msg}");
            assert_eq!(snapshot(tmp.path()), before, "{out:?} force {force}");
        }
    }
    // A manifest.json of something else does not make a folder ours.
    fs::write(unrelated.join("manifest.json"), br#"{"format": "web-app"}"#).unwrap();
    let mut o = options(&input, &unrelated);
    o.force = true;
    let msg = refusal(prep::run(&o).unwrap_err());
    assert!(msg.contains("is not a prepared dataset"), "{msg}");
    assert_eq!(fs::read(unrelated.join("thesis.txt")).unwrap(), b"precious");
}

#[test]
fn an_empty_output_folder_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let out = tmp.path().join("prepared");
    fs::create_dir(&out).unwrap();
    prep::run(&options(&input, &out)).unwrap();
    assert!(out.join("manifest.json").is_file());
    assert_only(tmp.path(), &["in", "prepared"]);
}

#[cfg(target_os = "linux")]
#[test]
fn stale_staging_of_a_killed_prep_is_removed() {
    let mut done = std::process::Command::new("true").spawn().unwrap();
    let dead = done.id();
    done.wait().unwrap();
    let mut running = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let live = running.id();

    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let stale = tmp.path().join(format!("prepared.partial-{dead}"));
    fs::create_dir_all(stale.join("train")).unwrap();
    fs::write(stale.join(".staged-images.u8"), vec![0u8; 4096]).unwrap();
    let busy = format!("prepared.partial-{live}");
    fs::create_dir(tmp.path().join(&busy)).unwrap();
    let theirs = format!("other.partial-{dead}");
    fs::create_dir(tmp.path().join(&theirs)).unwrap();
    fs::write(tmp.path().join("notes.partial-x"), b"mine").unwrap();

    prep::run(&options(&input, &tmp.path().join("prepared"))).unwrap();
    running.kill().unwrap();
    running.wait().unwrap();
    assert_only(
        tmp.path(),
        &["in", "prepared", &busy, &theirs, "notes.partial-x"],
    );
}

/// Rewrites the manifest of `dir` with `edit` applied to its JSON.
fn tamper_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn shard_paths_that_leave_the_dataset_are_refused_before_anything_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let out = tmp.path().join("prepared");
    prep::run(&options(&input, &out)).unwrap();
    let original = fs::read(out.join("manifest.json")).unwrap();
    // A copy of a real shard outside the folder: its hash matches, so only the path
    // check can tell.
    let shard = fs::read(out.join("val/shard-00000.safetensors")).unwrap();
    fs::write(tmp.path().join("outside.safetensors"), &shard).unwrap();

    for (bad, why) in [
        ("../../../../etc/passwd", "leaves the dataset folder"),
        ("../outside.safetensors", "leaves the dataset folder"),
        ("val/../../outside.safetensors", "leaves the dataset folder"),
        ("/etc/passwd", "is absolute"),
        ("", "is empty"),
        ("val//shard-00000.safetensors", "empty or `.` segment"),
        ("./val/shard-00000.safetensors", "empty or `.` segment"),
        ("..\\outside.safetensors", "backslash"),
        ("C:/outside.safetensors", "colon"),
    ] {
        fs::write(out.join("manifest.json"), &original).unwrap();
        tamper_manifest(&out, |v| {
            let k = v["shards"]
                .as_array()
                .unwrap()
                .iter()
                .position(|s| s["file"] == "val/shard-00000.safetensors")
                .unwrap();
            v["shards"][k]["file"] = bad.into();
        });
        for err in [
            prep::verify(&out).unwrap_err(),
            PreparedDataset::open(&out).err().unwrap(),
        ] {
            match &err {
                Error::BadArtifact { path, reason } => {
                    assert_eq!(path, &out.join("manifest.json"));
                    assert!(
                        reason.contains(&format!("(`{}`)", bad.escape_debug())),
                        "{reason}"
                    );
                    assert!(reason.contains(why), "{bad}: {reason}");
                }
                other => panic!("{bad}: expected BadArtifact, got {other:?}"),
            }
        }
    }
}

#[cfg(unix)]
#[test]
fn a_shard_linked_to_outside_the_dataset_is_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [5, 5]);
    let out = tmp.path().join("prepared");
    prep::run(&options(&input, &out)).unwrap();
    let shard = out.join("val/shard-00000.safetensors");
    let outside = tmp.path().join("outside.safetensors");
    fs::rename(&shard, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &shard).unwrap();
    let report = prep::verify(&out).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        report.problems[0].starts_with("val/shard-00000.safetensors: a symbolic link to"),
        "{}",
        report.problems[0]
    );
    assert!(report.problems[0].contains("outside the dataset folder"));
    // A link that stays inside the folder is followed.
    let inside = out.join("val/real.safetensors");
    fs::remove_file(&shard).unwrap();
    fs::rename(&outside, &inside).unwrap();
    std::os::unix::fs::symlink("real.safetensors", &shard).unwrap();
    assert!(prep::verify(&out).unwrap().is_ok());
}

#[cfg(unix)]
#[test]
fn file_names_that_are_not_utf8_stay_distinct() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let input = make_dataset(&tmp.path().join("in"), ["Benign", "Malignant"], [6, 6]);
    let benign = input.join("Benign");
    // Two names that differ only in a byte that is not UTF-8, and a valid name that reads
    // like the escape of one of them.
    let img = |i: u32| encode(&picture(0, 500 + i, 40, 40), ImageFormat::Png);
    fs::write(benign.join(OsStr::from_bytes(b"x\xff.png")), img(1)).unwrap();
    fs::write(benign.join(OsStr::from_bytes(b"x\xfe.png")), img(2)).unwrap();
    fs::write(benign.join("x\\xFF.png"), img(3)).unwrap();
    fs::write(benign.join("é ü.png"), img(4)).unwrap();
    let out = tmp.path().join("prepared");
    prep::run(&options(&input, &out)).unwrap();
    let manifest = Manifest::load(&out).unwrap();
    let mut paths: Vec<&str> = manifest.images.iter().map(|im| im.path.as_str()).collect();
    paths.sort();
    let n = paths.len();
    paths.dedup();
    assert_eq!(paths.len(), n, "two files share a name: {paths:?}");
    for want in [
        "Benign/x\\xFF.png",
        "Benign/x\\xFE.png",
        "Benign/x\\\\xFF.png",
        "Benign/é ü.png",
        "Benign/b00.png",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}");
    }
    // Valid names are written byte for byte.
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(text.contains("\"Benign/é ü.png\""));
    for p in &paths {
        let bytes = lesion::fsutil::unescape_to_bytes(p);
        assert!(input.join(OsStr::from_bytes(&bytes)).is_file(), "{p}");
    }
}

#[test]
fn synthetic_data_is_prepared_without_warnings_about_its_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("synth");
    lesion::synth::generate(&images, 6, 3, false, false).unwrap();
    assert!(images.join(lesion::synth::MARKER_FILE).is_file());
    let summary = prep::run(&options(&images, &tmp.path().join("prepared"))).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.files, 12);
}

// ---------------------------------------------------------------------------------------
// Classes from the folders.

/// A two-class input whose bytes depend on no compressing encoder (BMP): 9 benign and 7
/// malignant pictures, a byte-identical pair inside Benign, a copy filed in both classes,
/// an unreadable file, and a folder of notes beside the classes (as ISIC's `meta/`).
fn binary_golden_input(root: &Path) -> PathBuf {
    for (k, folder) in ["Benign", "Malignant"].into_iter().enumerate() {
        let dir = root.join(folder);
        fs::create_dir_all(&dir).unwrap();
        let n = [9, 7][k];
        for i in 0..n {
            let (w, h) = (40 + (i % 3) * 8, 36 + (i % 2) * 12);
            let img = picture(k as u8, i + 100 * k as u32, w, h);
            fs::write(
                dir.join(format!("{}{i:02}.bmp", &folder[..1])),
                encode(&img, ImageFormat::Bmp),
            )
            .unwrap();
        }
    }
    fs::copy(
        root.join("Benign/B03.bmp"),
        root.join("Benign/B03-copy.bmp"),
    )
    .unwrap();
    fs::copy(
        root.join("Benign/B05.bmp"),
        root.join("Malignant/M05-also.bmp"),
    )
    .unwrap();
    fs::write(root.join("Malignant/notes.bmp"), b"not a picture").unwrap();
    fs::create_dir(root.join("meta")).unwrap();
    fs::write(root.join("meta/duplicates.txt"), b"B03 B03-copy\n").unwrap();
    root.to_path_buf()
}

/// SHA-256 of `manifest.json` with the input path and crate version replaced by fixed
/// words (the manifest lists every shard's SHA-256, so this covers the shards too), and
/// of `samples.png`.
fn golden_hashes(input: &Path, out: &Path) -> (String, String) {
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    let text = text.replace(&input.display().to_string(), "INPUT").replace(
        &format!("\"crate_version\": \"{}\"", env!("CARGO_PKG_VERSION")),
        "\"crate_version\": \"VERSION\"",
    );
    assert!(text.contains("\"input\": \"INPUT\"") && text.contains("VERSION"));
    let samples = fs::read(out.join("samples.png")).unwrap();
    (
        lesion::fsutil::sha256_hex(text.as_bytes()),
        lesion::fsutil::sha256_hex(&samples),
    )
}

/// Two folders `Benign/` and `Malignant/` with default class options give, byte for byte,
/// the manifest, shards and sample grid that prep wrote before classes came from the
/// folders (hashes recorded from that version; a change to decoding, resizing or
/// augmentation changes them too and must be a deliberate one).
#[test]
fn benign_malignant_output_is_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let input = binary_golden_input(&tmp.path().join("in"));
    let out = tmp.path().join("prepared");
    let mut o = options(&input, &out);
    o.views = 2;
    o.shard_size = 3;
    let summary = prep::run(&o).unwrap();
    assert_eq!(summary.classes, ["Benign", "Malignant"]);
    assert_eq!((summary.files, summary.images), (19, 16));
    assert_eq!(
        summary.warnings,
        ["ignored folder meta/ (none of its 1 file(s) is an image)"]
    );
    let (manifest, samples) = golden_hashes(&input, &out);
    println!("manifest {manifest}\nsamples {samples}");
    assert_eq!(manifest, GOLDEN_MANIFEST, "manifest.json changed");
    assert_eq!(samples, GOLDEN_SAMPLES, "samples.png changed");
    prep::verify(&out).unwrap().into_result().unwrap();
}

const GOLDEN_MANIFEST: &str = "15021200b6193e7b5532c868d6e29b95b041f7887aa2cd75678c0312c5e71702";
const GOLDEN_SAMPLES: &str = "7e7517a4332a15d8d99165b77ce1c6a55b419c6009ae3608e67a199412d674e0";

/// A picture of folder `k`, image `i`: the disc's colour depends on `k`, and the corner
/// pixel holds `(k, i)`, so that no two files are alike.
fn folder_picture(k: usize, i: u32) -> Vec<u8> {
    let mut img = picture(0, i, 40 + (i % 3) * 8, 36 + (i % 2) * 12);
    for p in img.pixels_mut() {
        if p[0] > 100 && p[0] < 200 {
            p[1] = p[1].wrapping_add(40 * k as u8);
        }
    }
    img.put_pixel(0, 0, Rgb([k as u8, i as u8, 77]));
    encode(&img, ImageFormat::Png)
}

/// Writes `n` PNG pictures into `<root>/<folder>/` for every `(folder, n)`.
fn make_folders(root: &Path, folders: &[(&str, u32)]) -> PathBuf {
    for (k, &(folder, n)) in folders.iter().enumerate() {
        let dir = root.join(folder);
        fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            fs::write(dir.join(format!("{i:02}.png")), folder_picture(k, i)).unwrap();
        }
    }
    root.to_path_buf()
}

/// Every image's label is the class its folder is filed under (`None`: no image may come
/// from it), in the manifest and in the shards.
fn assert_labels(out: &Path, class_of_folder: &[(&str, Option<&str>)]) {
    let m = Manifest::load(out).unwrap();
    let label = |path: &str| -> u8 {
        let folder = path.split('/').next().unwrap();
        let (_, class) = class_of_folder
            .iter()
            .find(|(f, _)| *f == folder)
            .unwrap_or_else(|| panic!("{path}: folder not expected"));
        let class = class.unwrap_or_else(|| panic!("{path}: from a skipped folder"));
        m.classes.iter().position(|c| c == class).unwrap() as u8
    };
    for im in &m.images {
        assert_eq!(im.class, label(&im.path), "{}", im.path);
    }
    let ds = PreparedDataset::open(out).unwrap();
    let mut rows = 0;
    for split in Split::ALL {
        for batch in ds
            .loader(split, LoaderOptions::eval(4), &Device::Cpu)
            .unwrap()
        {
            let batch = batch.unwrap();
            for (row, &si) in batch.source_index.iter().enumerate() {
                let im = &m.images[si as usize];
                assert_eq!(batch.label_u8[row], label(&im.path), "{}", im.path);
                rows += 1;
            }
        }
    }
    assert_eq!(rows, m.images.len());
}

#[test]
fn three_folders_are_three_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_folders(
        &tmp.path().join("in"),
        &[
            ("nevus", 10),
            ("melanoma", 10),
            ("seborrheic_keratosis", 10),
        ],
    );
    let out = tmp.path().join("prepared");
    let mut o = options(&input, &out);
    o.malignant = vec!["MELANOMA".into()];
    let summary = prep::run(&o).unwrap();
    let names = ["melanoma", "nevus", "seborrheic_keratosis"];
    assert_eq!(summary.classes, names);
    assert_eq!(summary.malignant, ["melanoma"]);
    assert!(summary.folders.is_empty());
    // scikit-learn's counts for 10 + 10 + 10 (scripts/fixtures/split_counts_nclass.json).
    assert_eq!(
        common::split_counts(&summary),
        [
            (Split::Train, vec![6, 6, 6]),
            (Split::Val, vec![2, 2, 2]),
            (Split::Test, vec![2, 2, 2])
        ]
    );
    let text = summary.to_string();
    assert!(
        text.contains("classes: 0 melanoma (malignant), 1 nevus, 2 seborrheic_keratosis\n"),
        "{text}"
    );
    assert!(
        text.contains("  split    melanoma      nevus seborrheic_keratosis    total\n"),
        "{text}"
    );
    assert!(
        text.contains("  train           6          6                    6       18\n"),
        "{text}"
    );

    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.classes, names);
    assert_eq!(m.malignant, ["melanoma"]);
    let classes = m.classes().unwrap();
    assert_eq!(classes.outputs(), 3);
    assert_eq!(classes.positive_group(), Some(&[0usize][..]));
    // Files are listed class by class in label order.
    assert_eq!(m.images[0].path, "melanoma/00.png");
    assert_eq!(m.images[10].path, "nevus/00.png");
    assert_eq!(m.images[29].path, "seborrheic_keratosis/09.png");
    assert_labels(
        &out,
        &[
            ("melanoma", Some("melanoma")),
            ("nevus", Some("nevus")),
            ("seborrheic_keratosis", Some("seborrheic_keratosis")),
        ],
    );
    // No mapping: nothing about folders in the manifest.
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(!text.contains("\"folders\""));
    // The sample grid has a row of three per class.
    let grid = image::open(out.join("samples.png")).unwrap();
    assert!(grid.height() > 3 * 100, "{}", grid.height());
    prep::verify(&out).unwrap().into_result().unwrap();
}

/// The HAM10000-like tree of the grouping tests and its mapping as `--group` values.
fn seven_folders(root: &Path) -> PathBuf {
    let input = make_folders(
        root,
        &[
            ("akiec", 3),
            ("bcc", 4),
            ("bkl", 4),
            ("df", 3),
            ("mel", 5),
            ("nv", 12),
            ("vasc", 2),
        ],
    );
    // The same picture in two folders of one class is a duplicate; in folders of two
    // classes a contradiction.
    fs::copy(input.join("mel/00.png"), input.join("bcc/mel-00.png")).unwrap();
    fs::copy(input.join("nv/03.png"), input.join("akiec/nv-03.png")).unwrap();
    input
}

const HAM_GROUPS: [&str; 7] = [
    "mel=Malignant",
    "bcc=Malignant",
    "AKIEC = Malignant",
    "nv=Benign",
    "bkl=Benign",
    "df=Benign",
    "vasc=-",
];

#[test]
fn groups_merge_folders_into_classes_and_skip_some() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seven_folders(&tmp.path().join("in"));
    let out = tmp.path().join("prepared");
    let mut o = options(&input, &out);
    o.groups = HAM_GROUPS.iter().map(|g| g.to_string()).collect();
    let summary = prep::run(&o).unwrap();
    assert_eq!(summary.classes, ["Benign", "Malignant"]);
    assert!(summary.malignant.is_empty());
    // 33 files (vasc/ is not read); the copy of mel/00.png in bcc/ is a duplicate within
    // Malignant, the nv/ picture copied into akiec/ a contradiction rejected in both places.
    assert_eq!((summary.files, summary.images), (33, 31));
    let rejected: Vec<&str> = summary.rejected.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(rejected, ["nv/03.png", "akiec/nv-03.png"]);
    let dups: Vec<Vec<String>> = summary.duplicates.iter().map(|d| d.paths.clone()).collect();
    assert_eq!(dups, [vec!["bcc/mel-00.png", "mel/00.png"]]);
    let per_class: Vec<usize> = (0..2)
        .map(|k| summary.counts.iter().map(|c| c.per_class[k]).sum())
        .collect();
    assert_eq!(per_class, [18, 13]);

    let m = Manifest::load(&out).unwrap();
    let folders: Vec<(&str, Option<&str>, usize, usize)> = m
        .folders
        .iter()
        .map(|f| (f.folder.as_str(), f.class.as_deref(), f.files, f.images))
        .collect();
    assert_eq!(
        folders,
        [
            ("akiec", Some("Malignant"), 4, 3),
            ("bcc", Some("Malignant"), 5, 5),
            ("bkl", Some("Benign"), 4, 4),
            ("df", Some("Benign"), 3, 3),
            ("mel", Some("Malignant"), 5, 5),
            ("nv", Some("Benign"), 12, 11),
            ("vasc", None, 0, 0),
        ]
    );
    assert_eq!(m.skipped_folders().collect::<Vec<_>>(), ["vasc"]);
    assert!(m.classes().unwrap().is_binary());
    assert!(m.malignant.is_empty());
    assert_labels(
        &out,
        &[
            ("akiec", Some("Malignant")),
            ("bcc", Some("Malignant")),
            ("mel", Some("Malignant")),
            ("bkl", Some("Benign")),
            ("df", Some("Benign")),
            ("nv", Some("Benign")),
            ("vasc", None),
        ],
    );
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        text.contains("\"folder\": \"vasc\",\n      \"class\": null,"),
        "{text}"
    );

    let text = summary.to_string();
    for line in [
        "classes: 0 Benign, 1 Malignant (positive)\n",
        "class mapping (folder: images):\n",
        "  Benign    <- bkl/: 4, df/: 3, nv/: 11\n",
        "  Malignant <- akiec/: 3, bcc/: 5, mel/: 5\n",
        "  skipped: vasc/ (not read)\n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
}

#[test]
fn a_classes_file_maps_like_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seven_folders(&tmp.path().join("in"));
    let by_groups = tmp.path().join("by-groups");
    let mut o = options(&input, &by_groups);
    o.groups = HAM_GROUPS.iter().map(|g| g.to_string()).collect();
    prep::run(&o).unwrap();

    let map = tmp.path().join("ham.txt");
    let mut text = String::from("# HAM10000 as benign / malignant\n\n");
    for g in &HAM_GROUPS[..6] {
        text.push_str(&format!("  {}\n", g.replace('=', " = ")));
    }
    fs::write(&map, text).unwrap();
    let by_file = tmp.path().join("by-file");
    let mut o = options(&input, &by_file);
    o.classes_file = Some(map);
    o.groups = vec![HAM_GROUPS[6].to_string()];
    prep::run(&o).unwrap();
    assert_eq!(tree(&by_groups), tree(&by_file));
}

#[test]
fn merging_into_more_than_two_classes_with_a_malignant_group() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seven_folders(&tmp.path().join("in"));
    let out = tmp.path().join("prepared");
    let mut o = options(&input, &out);
    // Rare classes merged: akiec and df into `other`; vasc skipped.
    o.groups = ["akiec=other", "df=other", "vasc=-"]
        .map(String::from)
        .to_vec();
    o.malignant = vec!["mel".into(), "bcc".into()];
    let summary = prep::run(&o).unwrap();
    assert_eq!(summary.classes, ["bcc", "bkl", "mel", "nv", "other"]);
    assert_eq!(summary.malignant, ["bcc", "mel"]);
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.malignant, ["bcc", "mel"]);
    assert_eq!(
        m.classes().unwrap().positive_group(),
        Some(&[0usize, 2][..])
    );
    let counts: Vec<usize> = (0..5)
        .map(|k| m.counts.iter().map(|c| c.per_class[k]).sum())
        .collect();
    // The copy of mel/00.png in bcc/ now spans two classes: both are rejected.
    assert_eq!(counts, [4, 4, 4, 11, 6]);
    assert!(summary
        .to_string()
        .contains("  other <- akiec/: 3, df/: 3\n"));
}

#[test]
fn the_positive_class_of_two_is_label_one() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |folders: &[(&str, u32)], positive: Option<&str>| -> Vec<String> {
        let root = tempfile::tempdir_in(tmp.path()).unwrap();
        let input = make_folders(&root.path().join("in"), folders);
        let out = root.path().join("prepared");
        let mut o = options(&input, &out);
        o.positive = positive.map(String::from);
        let summary = prep::run(&o).unwrap();
        let pairs: Vec<(&str, Option<&str>)> = folders.iter().map(|f| (f.0, Some(f.0))).collect();
        assert_labels(&out, &pairs);
        assert!(Manifest::load(&out).unwrap().malignant.is_empty());
        summary.classes
    };
    let mel_nev = [("melanoma", 5), ("nevus", 6)];
    // Neither is called Malignant: the second name is positive, unless --positive says.
    assert_eq!(run(&mel_nev, None), ["melanoma", "nevus"]);
    assert_eq!(run(&mel_nev, Some("melanoma")), ["nevus", "melanoma"]);
    assert_eq!(run(&mel_nev, Some("Nevus")), ["melanoma", "nevus"]);
    // Malignant in any case is positive, though it sorts first.
    assert_eq!(
        run(&[("MALIGNANT", 5), ("benign", 5)], None),
        ["benign", "MALIGNANT"]
    );
    assert_eq!(
        run(&[("Malignant", 5), ("Benign", 5)], Some("Benign")),
        ["Malignant", "Benign"]
    );
}

/// The `BadDataset` or `InvalidOption` message of a prep that must fail before writing.
fn refused(tmp: &Path, o: &PrepOptions) -> String {
    let err = prep::run(o).unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(!o.out.exists(), "{err}");
    assert!(
        !fs::read_dir(tmp).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".partial")),
        "{err}"
    );
    err.to_string()
}

#[test]
fn class_options_that_cannot_work_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seven_folders(&tmp.path().join("in"));
    let out = tmp.path().join("prepared");
    let with = |groups: &[&str], positive: Option<&str>, malignant: &[&str]| {
        let mut o = options(&input, &out);
        o.groups = groups.iter().map(|g| g.to_string()).collect();
        o.positive = positive.map(String::from);
        o.malignant = malignant.iter().map(|m| m.to_string()).collect();
        refused(tmp.path(), &o)
    };
    let i = input.display();
    assert_eq!(
        with(&["mel=Malignant", "mell=Malignant"], None, &[]),
        format!(
            "{i}: --group mell=Malignant maps folder `mell`, which is not a folder of the \
             input (its folders: akiec/, bcc/, bkl/, df/, mel/, nv/, vasc/)"
        )
    );
    let all_benign: Vec<String> = ["akiec", "bcc", "bkl", "df", "mel", "nv"]
        .iter()
        .map(|f| format!("{f}=Lesion"))
        .collect();
    let mut groups: Vec<&str> = all_benign.iter().map(String::as_str).collect();
    groups.push("vasc=-");
    assert_eq!(
        with(&groups, None, &[]),
        format!(
            "{i}: the class mapping leaves only class `Lesion` (from akiec/, bcc/, bkl/, df/, \
             mel/, nv/) (1 folder(s) skipped); a classifier needs at least two classes"
        )
    );
    assert_eq!(
        with(&["mel=Malignant", "bcc=malignant"], None, &[]),
        "invalid option: classes `Malignant` (from mel/) and `malignant` (from bcc/) differ \
         only in case; give them one spelling"
    );
    assert_eq!(
        with(&["mel=-", "MEL=x"], None, &[]),
        "invalid option: folder `MEL` is mapped twice: by --group mel=- and by --group MEL=x"
    );
    assert_eq!(
        with(&[], Some("mel"), &[]),
        "invalid option: --positive `mel` is for two classes; with 7 (akiec, bcc, bkl, df, \
         mel, nv, vasc) name the malignant ones with --malignant"
    );
    assert_eq!(
        with(&[], None, &["mel", "melanoma"]),
        "invalid option: --malignant `melanoma` is not one of the classes akiec, bcc, bkl, \
         df, mel, nv, vasc"
    );
    let binary = &HAM_GROUPS[..];
    assert_eq!(
        with(binary, None, &["Malignant"]),
        "invalid option: --malignant is for more than two classes; with two (Benign, \
         Malignant) name the positive class with --positive"
    );
    assert_eq!(
        with(binary, Some("nevus"), &[]),
        "invalid option: --positive `nevus` is not one of the classes Benign, Malignant"
    );
    assert_eq!(
        with(&[], Some("mel"), &["bcc"]),
        "invalid option: --positive (two classes) and --malignant (more than two) exclude \
         each other"
    );
    // A class too small to split, among many: the message says how to merge or skip it.
    assert_eq!(
        with(&[], None, &[]),
        format!(
            "{i}: too few images for the split fractions: class df has only 3 image(s): a \
             split with validation fraction 0.2 and test fraction 0.2 would give it train 2, \
             val 0, test 1; every split needs at least one image of each class; skip a \
             class's folders with --group FOLDER=- or merge them into another class with \
             --group FOLDER=CLASS"
        )
    );
}

#[test]
fn a_malformed_classes_file_is_named_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seven_folders(&tmp.path().join("in"));
    let map = tmp.path().join("groups.txt");
    fs::write(&map, "# groups\nmel = Malignant\nnv Benign\n").unwrap();
    let mut o = options(&input, &tmp.path().join("prepared"));
    o.classes_file = Some(map.clone());
    assert_eq!(
        refused(tmp.path(), &o),
        format!(
            "{}: line 3 (`nv Benign`): no `=`; each line is `folder = class` (class `-` \
             skips the folder), `#` starts a comment line",
            map.display()
        )
    );
    o.classes_file = Some(tmp.path().join("missing.txt"));
    let msg = refused(tmp.path(), &o);
    assert!(
        msg.starts_with(&format!("{}: ", tmp.path().join("missing.txt").display())),
        "{msg}"
    );
}

#[test]
fn folders_differing_only_in_case_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_folders(
        &tmp.path().join("in"),
        &[("Benign", 5), ("Malignant", 5), ("benign", 5)],
    );
    let o = options(&input, &tmp.path().join("prepared"));
    assert_eq!(
        refused(tmp.path(), &o),
        format!(
            "{}: two folders for class Benign: Benign/ and benign/ (class folders are matched \
             ignoring case)",
            input.display()
        )
    );
}

/// A manifest as prep wrote it for two classes before class lists were configurable: no
/// `malignant`, no `folders`.
const BINARY_MANIFEST: &str = r#"{
  "format": "lesion-prepared-dataset",
  "format_version": 1,
  "crate_version": "0.1.0",
  "classes": ["Benign", "Malignant"],
  "image_size": 32,
  "resize": "stretch",
  "views": 1,
  "augment": true,
  "seed": 42,
  "options": {
    "input": "in", "image_size": 32, "resize": "stretch", "val": 0.2, "test": 0.2,
    "seed": 42, "shard_size": 4, "views": 1, "augment": true, "strict": false,
    "max_pixels": 100000000
  },
  "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
  "counts": [
    {"split": "train", "per_class": [6, 6], "total": 12},
    {"split": "val", "per_class": [2, 2], "total": 4},
    {"split": "test", "per_class": [2, 2], "total": 4}
  ],
  "shards": [],
  "images": [],
  "rejected": [],
  "duplicates": []
}"#;

#[test]
fn a_binary_manifest_without_class_extras_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("manifest.json"), BINARY_MANIFEST).unwrap();
    let m = Manifest::load(tmp.path()).unwrap();
    assert_eq!(m.classes, ["Benign", "Malignant"]);
    assert!(m.malignant.is_empty() && m.folders.is_empty());
    assert_eq!(m.skipped_folders().count(), 0);
    let classes = m.classes().unwrap();
    assert!(classes.is_binary());
    assert_eq!(classes.positive_group(), Some(&[1usize][..]));
    assert_eq!(m.counts(Split::Val).unwrap().per_class, [2, 2]);
    // Saving it again adds nothing.
    m.save(tmp.path()).unwrap();
    let again = fs::read_to_string(tmp.path().join("manifest.json")).unwrap();
    assert!(!again.contains("malignant\"") && !again.contains("folders"));

    // A folder filed under a class the manifest does not list is an inconsistency.
    let mut v: serde_json::Value = serde_json::from_str(BINARY_MANIFEST).unwrap();
    v["folders"] = serde_json::json!([
        {"folder": "mel", "class": "Melanoma", "files": 3, "images": 3}
    ]);
    fs::write(tmp.path().join("manifest.json"), v.to_string()).unwrap();
    match Manifest::load(tmp.path()).unwrap_err() {
        Error::BadArtifact { reason, .. } => assert_eq!(
            reason,
            "folder `mel` is filed under class `Melanoma`, which is not one of the classes \
             Benign, Malignant"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_folder_without_images_is_a_class_only_when_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let input = make_folders(&tmp.path().join("in"), &[("mel", 5), ("nv", 5)]);
    fs::create_dir(input.join("docs")).unwrap();
    fs::write(input.join("docs/README.md"), b"# photos").unwrap();
    let summary = prep::run(&options(&input, &tmp.path().join("a"))).unwrap();
    assert_eq!(summary.classes, ["mel", "nv"]);
    assert_eq!(
        summary.warnings,
        ["ignored folder docs/ (none of its 1 file(s) is an image)"]
    );
    // Named by the mapping, it is a class, and one without images.
    let mut o = options(&input, &tmp.path().join("b"));
    o.groups = vec!["docs=Documents".into()];
    assert_eq!(
        refused(tmp.path(), &o),
        format!(
            "{}: no usable images in class Documents (all files rejected)",
            input.join("docs").display()
        )
    );
    // Skipped, it is not even listed.
    let mut o = options(&input, &tmp.path().join("c"));
    o.groups = vec!["docs=-".into()];
    let summary = prep::run(&o).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.folders[0].folder, "docs");
    assert_eq!(summary.folders[0].class, None);
    // An empty folder is a mistake to point out, not a folder to ignore.
    fs::create_dir(input.join("bcc")).unwrap();
    let o = options(&input, &tmp.path().join("d"));
    assert_eq!(
        refused(tmp.path(), &o),
        format!(
            "{}: class folder is empty (skip it with --group bcc=-)",
            input.join("bcc").display()
        )
    );
}

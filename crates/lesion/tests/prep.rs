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
    let input = make_dataset(&tmp.path().join("in"), ["benign", "other"], [5, 5]);
    let err = prep::run(&options(&input, &tmp.path().join("out"))).unwrap_err();
    assert_eq!(
        bad_dataset_reason(&err),
        (
            input.as_path(),
            "need at least two class folders, found only benign/ \
             (expected Benign/ and Malignant/, matched case-insensitively)"
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
        (mal.as_path(), "class folder is empty")
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
    // Folder names in any case; a stray folder is ignored with a warning.
    let input = make_dataset(&tmp.path().join("in"), ["BENIGN", "malignant"], [12, 10]);
    fs::create_dir(input.join("notes")).unwrap();
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
            .any(|w| w.starts_with("ignored folder notes/")),
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

//! Fuzz-style tests of the parsers that read what users hand us: the image decoder path
//! (`image_io`), the prepared dataset's `manifest.json` (`manifest`, `loader`, `verify`)
//! and its safetensors shards (`shard`, `verify`).
//!
//! Each property feeds random bytes and mutations of a valid file (bit flips, overwritten
//! bytes and 32-bit words, insertions, deletions, truncation, spliced copies; for JSON also
//! values replaced at random places) and asserts that the parser neither panics nor hangs
//! (a watchdog bounds each property) and that every failure is the documented error
//! variant naming the file. Case counts are small so that `cargo test` stays fast; the seed
//! is fixed so that a failure reproduces. A longer session:
//! `PROPTEST_CASES=20000 PROPTEST_RNG_SEED=$RANDOM cargo test -p lesion --test fuzz`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use image::{imageops, DynamicImage, ImageFormat};
use lesion::image_io::{decode_rgb, resize_square, ResizePolicy};
use lesion::loader::PreparedDataset;
use lesion::manifest::Manifest;
use lesion::shard::Shard;
use lesion::Error;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::Value;

/// The seed of every property unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x0001_e510_2026;

/// Pixel limit of the decoder under test: small, so that a header declaring a huge image is
/// refused rather than allocated.
const MAX_PIXELS: u64 = 1 << 22;

/// A runner of `cases` cases (unless `PROPTEST_CASES` says otherwise) that writes no
/// regression files into the source tree.
fn runner(cases: u32) -> TestRunner {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config.max_shrink_iters = 512;
    TestRunner::new(config)
}

/// Runs `body` on another thread and fails if it takes longer than `limit` (a hang): the
/// parsers must give up on bad input, not spin.
fn within(limit: Duration, what: &str, body: impl FnOnce() + Send + 'static) {
    let (done, wait) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        body();
        let _ = done.send(());
    });
    match wait.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// One change to a byte string; positions wrap around its length.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// A 32-bit word with an interesting value (sizes, lengths, counts live in these).
    SetWord(usize, u32, bool),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// Copies `len` bytes from one place over another.
    Splice(usize, usize, usize),
}

fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7F),
        Just(0xFF),
        Just(0xFFFF),
        Just(0x1_0000),
        Just(0x7FFF_FFFF),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![Just(0u8), Just(0xFF), Just(0x7F), Just(0x80), any::<u8>()];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (any::<usize>(), byte).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        (any::<usize>(), interesting_u32(), any::<bool>())
            .prop_map(|(p, v, be)| Mutation::SetWord(p, v, be)),
        (any::<usize>(), vec(any::<u8>(), 1..32)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..128).prop_map(|(p, n)| Mutation::Remove(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), 1usize..512)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

/// Up to `n` mutations.
fn mutations(n: usize) -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..=n)
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        if let Mutation::Insert(_, b) = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match m {
        Mutation::FlipBit(p, b) => bytes[p % len] ^= 1 << b,
        Mutation::SetByte(p, v) => bytes[p % len] = *v,
        Mutation::SetWord(p, v, big_endian) => {
            let word = if *big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let at = p % len;
            for (i, b) in word.iter().enumerate().take(len - at) {
                bytes[at + i] = *b;
            }
        }
        Mutation::Insert(p, b) => {
            let at = p % (len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(p, n) => {
            let at = p % len;
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(p) => bytes.truncate(p % len),
        Mutation::Splice(from, to, n) => {
            let (from, to) = (from % len, to % len);
            let n = (*n).min(len - from).min(len - to);
            let chunk = bytes[from..from + n].to_vec();
            bytes[to..to + n].copy_from_slice(&chunk);
        }
    }
}

fn mutated(base: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for m in ms {
        apply(&mut bytes, m);
    }
    bytes
}

/// A small prepared dataset (synthetic photos, 32 px, shards of 4 rows) built once.
fn dataset() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let photos = lesion::synth::generate(&tmp.path().join("photos"), 6, 3, false, false)
            .unwrap()
            .root;
        let mut o = lesion::prep::PrepOptions::new(&photos, tmp.path().join("prepared"));
        o.size = 32;
        o.shard_size = 4;
        o.progress = false;
        let out = lesion::prep::run(&o).unwrap().out;
        (tmp, out)
    })
    .1
}

/// Valid image files to mutate: a synthetic JPEG (as `lesion-prep synth` writes them), and
/// PNG, BMP and TIFF encodings of a smaller one.
fn images() -> &'static [(&'static str, Vec<u8>)] {
    static IMAGES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let jpeg = fs::read(
            dataset()
                .parent()
                .unwrap()
                .join("photos/Malignant/malignant_00001.jpg"),
        )
        .unwrap();
        let small = imageops::resize(
            &lesion::synth::render(0, 2, 3),
            40,
            28,
            imageops::FilterType::Triangle,
        );
        let encode = |format| {
            let mut out = std::io::Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(small.clone())
                .write_to(&mut out, format)
                .unwrap();
            out.into_inner()
        };
        vec![
            ("jpeg", jpeg),
            ("png", encode(ImageFormat::Png)),
            ("bmp", encode(ImageFormat::Bmp)),
            ("tiff", encode(ImageFormat::Tiff)),
        ]
    })
}

/// Decodes `bytes` as `lesion-prep` and `lesion-predict` do: an image within the pixel
/// limit that resizes to the model's input, or [`Error::BadImage`] naming the file.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("upload/photo.jpg");
    match decode_rgb(bytes, path, MAX_PIXELS) {
        Ok(img) => {
            let (w, h) = img.dimensions();
            prop_assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= MAX_PIXELS);
            let square = resize_square(&img, 32, ResizePolicy::Crop);
            prop_assert_eq!(square.dimensions(), (32, 32));
        }
        Err(Error::BadImage { path: p, reason }) => {
            prop_assert_eq!(p.as_path(), path);
            prop_assert!(!reason.is_empty());
        }
        Err(other) => prop_assert!(false, "not BadImage: {other:?}"),
    }
    Ok(())
}

#[test]
fn image_decoder_survives_mutated_images() {
    images();
    within(Duration::from_secs(120), "decoding mutated images", || {
        let strategy = (0..images().len(), mutations(6));
        runner(400)
            .run(&strategy, |(which, ms)| {
                check_decode(&mutated(&images()[which].1, &ms))
            })
            .unwrap();
    });
}

#[test]
fn image_decoder_survives_random_bytes() {
    within(Duration::from_secs(60), "decoding random bytes", || {
        // Each format's magic bytes, so that the random rest reaches that format's decoder.
        let magic = prop_oneof![
            Just(Vec::new()),
            Just(vec![0xFF, 0xD8, 0xFF, 0xE0]),
            Just(b"\x89PNG\r\n\x1a\n".to_vec()),
            Just(b"BM".to_vec()),
            Just(b"II*\0".to_vec()),
            Just(b"RIFF\0\0\0\0WEBPVP8 ".to_vec()),
            Just(b"GIF89a".to_vec()),
        ];
        runner(300)
            .run(&(magic, vec(any::<u8>(), 0..600)), |(mut head, tail)| {
                head.extend_from_slice(&tail);
                check_decode(&head)
            })
            .unwrap();
    });
}

/// Every JSON pointer of `v` (objects and arrays included).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                pointers(child, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A JSON value a hostile or broken manifest might hold.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        interesting_u32().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(-1)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1e300)),
        Just(Value::from("")),
        Just(Value::from("../outside.safetensors")),
        Just(Value::from("/nonexistent/shard.safetensors")),
        Just(Value::from("train")),
        Just(Value::from("val/shard-00000.safetensors")),
        "[a-z/._-]{0,24}".prop_map(Value::from),
        Just(Value::Array(Vec::new())),
        Just(Value::Object(Default::default())),
    ]
}

/// Replaces the value at `pointer` (removes it when `value` is `None`).
fn edit(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        if let Some(v) = value {
            *doc = v;
        }
        return;
    };
    match (doc.pointer_mut(parent), value) {
        (Some(Value::Object(map)), Some(v)) => {
            map.insert(key.to_string(), v);
        }
        (Some(Value::Object(map)), None) => {
            map.remove(key);
        }
        // An earlier edit may have shortened the array.
        (Some(Value::Array(items)), v) if key.parse::<usize>().is_ok_and(|i| i < items.len()) => {
            let i: usize = key.parse().unwrap();
            match v {
                Some(v) => items[i] = v,
                None => {
                    items.remove(i);
                }
            }
        }
        _ => {}
    }
}

/// Copies the dataset into `dir` with `manifest` as its manifest.json.
fn dataset_with_manifest(dir: &Path, manifest: &[u8]) {
    copy_dir(dataset(), dir);
    fs::write(dir.join("manifest.json"), manifest).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Loads, opens and verifies a dataset whose manifest may be anything: each step succeeds
/// or fails with an error about the dataset's files, never panics.
fn check_manifest(dir: &Path) -> Result<(), TestCaseError> {
    let about_the_data = |e: &Error| {
        matches!(
            e,
            Error::Json { .. }
                | Error::BadArtifact { .. }
                | Error::Io { .. }
                | Error::Safetensors { .. }
        )
    };
    match Manifest::load(dir) {
        Ok(_) => {}
        Err(e) => {
            prop_assert!(
                matches!(e, Error::Json { .. } | Error::BadArtifact { .. }),
                "{e:?}"
            );
            prop_assert!(e.to_string().contains("manifest.json"), "{e}");
            return Ok(());
        }
    }
    if let Err(e) = PreparedDataset::open(dir) {
        prop_assert!(about_the_data(&e), "open: {e:?}");
    }
    match lesion::verify::verify(dir) {
        Ok(report) => {
            for p in &report.problems {
                prop_assert!(!p.is_empty());
            }
        }
        Err(e) => prop_assert!(about_the_data(&e), "verify: {e:?}"),
    }
    Ok(())
}

#[test]
fn manifest_parser_survives_mutated_bytes() {
    let base = fs::read(dataset().join("manifest.json")).unwrap();
    within(
        Duration::from_secs(120),
        "reading mutated manifests",
        move || {
            runner(200)
                .run(&mutations(4), |ms| {
                    let tmp = tempfile::tempdir().unwrap();
                    dataset_with_manifest(tmp.path(), &mutated(&base, &ms));
                    check_manifest(tmp.path())
                })
                .unwrap();
        },
    );
}

#[test]
fn manifest_parser_survives_hostile_values() {
    let base: Value =
        serde_json::from_slice(&fs::read(dataset().join("manifest.json")).unwrap()).unwrap();
    let mut paths = Vec::new();
    pointers(&base, String::new(), &mut paths);
    paths.retain(|p| !p.is_empty());
    within(
        Duration::from_secs(120),
        "reading manifests with hostile values",
        move || {
            let edits = vec(
                (
                    any::<usize>(),
                    proptest::option::weighted(0.9, json_value()),
                ),
                1..4,
            );
            runner(300)
                .run(&edits, |edits| {
                    let mut doc = base.clone();
                    for (at, value) in edits {
                        edit(&mut doc, &paths[at % paths.len()], value);
                    }
                    let tmp = tempfile::tempdir().unwrap();
                    dataset_with_manifest(tmp.path(), &serde_json::to_vec(&doc).unwrap());
                    check_manifest(tmp.path())
                })
                .unwrap();
        },
    );
}

/// Opens a shard whose bytes may be anything: a well-formed shard whose rows are all
/// readable, or [`Error::Safetensors`] naming the file.
fn check_shard(path: &Path) -> Result<(), TestCaseError> {
    match Shard::open(path) {
        Ok(shard) => {
            let n = shard.len();
            prop_assert_eq!(shard.labels().len(), n);
            prop_assert_eq!(shard.source_index().len(), n);
            let per = shard.meta().image_bytes();
            for i in 0..n {
                prop_assert_eq!(shard.image(i).len(), per);
            }
            prop_assert_eq!(shard.images().len(), n * per);
        }
        Err(Error::Safetensors { path: p, .. }) => prop_assert_eq!(p.as_path(), path),
        Err(other) => prop_assert!(false, "not Safetensors: {other:?}"),
    }
    Ok(())
}

#[test]
fn shard_reader_survives_mutated_shards() {
    let shard = dataset().join("val/shard-00000.safetensors");
    let base = fs::read(&shard).unwrap();
    let header = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    within(
        Duration::from_secs(120),
        "opening mutated shards",
        move || {
            // Half the mutations land in the length prefix and JSON header, where the structure is.
            let in_header = mutations(4).prop_map(move |ms| {
                ms.into_iter()
                    .map(|m| match m {
                        Mutation::FlipBit(p, b) => Mutation::FlipBit(p % header, b),
                        Mutation::SetByte(p, v) => Mutation::SetByte(p % header, v),
                        Mutation::SetWord(p, v, be) => Mutation::SetWord(p % header, v, be),
                        other => other,
                    })
                    .collect::<Vec<_>>()
            });
            let strategy = prop_oneof![mutations(4), in_header];
            runner(400)
                .run(&strategy, |ms| {
                    let tmp = tempfile::tempdir().unwrap();
                    let path = tmp.path().join("shard-00000.safetensors");
                    fs::write(&path, mutated(&base, &ms)).unwrap();
                    check_shard(&path)
                })
                .unwrap();
        },
    );
}

#[test]
fn verify_catches_every_changed_shard() {
    let rel = "train/shard-v0-00001.safetensors";
    let base = fs::read(dataset().join(rel)).unwrap();
    within(
        Duration::from_secs(120),
        "verifying mutated shards",
        move || {
            runner(100)
                .run(&mutations(3), |ms| {
                    let bytes = mutated(&base, &ms);
                    let tmp = tempfile::tempdir().unwrap();
                    copy_dir(dataset(), tmp.path());
                    fs::write(tmp.path().join(rel), &bytes).unwrap();
                    let report = lesion::verify::verify(tmp.path()).unwrap();
                    if bytes == base {
                        prop_assert!(report.is_ok(), "{report}");
                    } else {
                        prop_assert!(
                            report.problems.iter().any(|p| p.contains(rel)),
                            "a changed {rel} passed verification: {report}"
                        );
                    }
                    Ok(())
                })
                .unwrap();
        },
    );
}

/// Counts and view numbers at the ends of their ranges: verification reports them as
/// problems promptly instead of overflowing a sum or looping over (and describing) four
/// billion views.
#[test]
fn verify_reports_absurd_counts_and_views() {
    for (pointer, value) in [
        ("/shards/0/count", Value::from(u64::MAX)),
        ("/views", Value::from(u32::MAX)),
        ("/shards/0/view", Value::from(u32::MAX)),
    ] {
        let mut doc: Value =
            serde_json::from_slice(&fs::read(dataset().join("manifest.json")).unwrap()).unwrap();
        edit(&mut doc, pointer, Some(value.clone()));
        let tmp = tempfile::tempdir().unwrap();
        dataset_with_manifest(tmp.path(), &serde_json::to_vec(&doc).unwrap());
        let dir = tmp.path().to_path_buf();
        within(
            Duration::from_secs(20),
            &format!("verify with {pointer} = {value}"),
            move || {
                let report = lesion::verify::verify(&dir).unwrap();
                assert!(!report.is_ok() && report.problems.len() < 20, "{report}");
            },
        );
    }
}

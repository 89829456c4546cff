//! K-fold preparation (`lesion-prep --folds K [--no-test]`) on small synthetic photo
//! folders: the fold of every image, the stratification, duplicates, the layout of the
//! train and val shards, fold selection over them, and the errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lesion::image_io::{self, ResizePolicy};
use lesion::loader::PreparedDataset;
use lesion::manifest::Manifest;
use lesion::prep::{self, PrepOptions};
use lesion::shard::Shard;
use lesion::split::Split;
use lesion::{transforms, Error};
use testkit::data::{edit_json, prep_options, write_class_photos, IMAGE_SIZE};

/// 14 benign and 11 malignant photos, no two alike.
fn photos(root: &Path) -> PathBuf {
    write_class_photos(root, &[("Benign", 14), ("Malignant", 11)])
}

fn fold_options(images: &Path, out: &Path, folds: u32) -> PrepOptions {
    let mut o = prep_options(images, out);
    o.folds = folds;
    o.views = 2;
    o
}

/// Every shard row of `(split, view)` as `(source index, CHW bytes)`, in row order.
fn rows(dir: &Path, m: &Manifest, split: Split, view: u32) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in m.shards_of(split, view) {
        let shard = Shard::open(dir.join(&entry.file)).unwrap();
        for (r, &si) in shard.source_index().iter().enumerate() {
            out.push((si, shard.image(r).to_vec()));
        }
    }
    out
}

#[test]
fn a_folded_prep_puts_every_pool_image_in_one_stratified_fold() {
    let tmp = tempfile::tempdir().unwrap();
    let input = photos(&tmp.path().join("in"));
    let out = tmp.path().join("cv");
    let summary = prep::run(&fold_options(&input, &out, 3)).unwrap();
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.folds, 3);
    let json = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        !m.options.no_test && !json.contains("no_test"),
        "held-out test: no field"
    );

    // The test split is the one a prep without folds holds out (same seed and fractions).
    let plain = prep::run(&prep_options(&input, &tmp.path().join("plain"))).unwrap();
    let plain_m = Manifest::load(&plain.out).unwrap();
    let test_of = |m: &Manifest| -> BTreeSet<String> {
        m.images
            .iter()
            .filter(|im| im.split == Split::Test)
            .map(|im| im.path.clone())
            .collect()
    };
    assert_eq!(test_of(&m), test_of(&plain_m));
    assert_eq!(test_of(&m).len(), 5, "20% of 14 and of 11, rounded up");

    // Every pool image has exactly one fold, test images none, and no image is in val.
    let mut per_fold: BTreeMap<u32, [usize; 2]> = BTreeMap::new();
    for im in &m.images {
        match im.split {
            Split::Train => {
                let f = im.fold.expect("a pool image has a fold");
                assert!(f < 3);
                per_fold.entry(f).or_default()[im.class as usize] += 1;
            }
            Split::Test => assert_eq!(im.fold, None, "{}", im.path),
            Split::Val => panic!("{} is in the val split", im.path),
        }
    }
    let pool = m.images.len() - 5;
    assert_eq!(pool, 20);
    // Stratified: with no multi-image group, a class's counts differ by at most 1.
    for class in 0..2 {
        let counts: Vec<usize> = per_fold.values().map(|c| c[class]).collect();
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "class {class}: {counts:?}");
    }
    // The manifest's counts: the pool as train, val 0; fold counts as the images say.
    assert_eq!(m.counts(Split::Train).unwrap().total, pool);
    assert_eq!(m.counts(Split::Val).unwrap().total, 0);
    assert_eq!(m.counts(Split::Test).unwrap().total, 5);
    for (f, c) in &per_fold {
        let fc = m.fold_counts(*f).unwrap();
        assert_eq!(fc.per_class, c.to_vec());
        assert_eq!(fc.total, c[0] + c[1]);
    }
    assert_eq!(summary.fold_counts, m.fold_counts);

    // The summary prints the pool and a table of the folds.
    let text = summary.to_string();
    assert!(
        text.contains("  pool ") && !text.contains("  val "),
        "{text}"
    );
    for (f, c) in &per_fold {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("fold {f} ")))
            .unwrap_or_else(|| panic!("no fold {f} line in:\n{text}"));
        let numbers: Vec<&str> = line.split_whitespace().skip(2).collect();
        assert_eq!(
            numbers,
            [
                c[0].to_string(),
                c[1].to_string(),
                (c[0] + c[1]).to_string()
            ],
            "{line}"
        );
    }

    // Train shards: both augmented views of every pool image; val shards: the clean image of
    // every pool image, in the same row order.
    let train0 = rows(&out, &m, Split::Train, 0);
    let train1 = rows(&out, &m, Split::Train, 1);
    let val = rows(&out, &m, Split::Val, 0);
    let order = |r: &[(u32, Vec<u8>)]| r.iter().map(|(s, _)| *s).collect::<Vec<u32>>();
    assert_eq!(order(&val), order(&train0));
    assert_eq!(order(&train1), order(&train0));
    assert_eq!(val.len(), pool);
    // The clean prepared image of an input file: decoded and resized.
    let clean = |rel: &str| {
        let path = input.join(rel);
        let decoded = image_io::decode_rgb(&fs::read(&path).unwrap(), &path, u64::MAX).unwrap();
        image_io::resize_square(&decoded, IMAGE_SIZE, ResizePolicy::Stretch)
    };
    let mut augmented_differs = 0;
    for ((si, clean_row), (_, aug_row)) in val.iter().zip(&train1) {
        let im = &m.images[*si as usize];
        assert_eq!(im.split, Split::Train);
        let img = clean(&im.path);
        assert_eq!(clean_row, &transforms::to_chw(&img), "{}", im.path);
        let aug = im
            .augmentations
            .as_ref()
            .expect("pool images are augmented")[1];
        assert_eq!(
            aug_row,
            &transforms::to_chw(&aug.apply(&img)),
            "{}",
            im.path
        );
        augmented_differs += usize::from(aug_row != clean_row);
    }
    assert!(
        augmented_differs > pool / 2,
        "{augmented_differs} of {pool}"
    );
    assert!(order(&rows(&out, &m, Split::Test, 0))
        .iter()
        .all(|&si| m.images[si as usize].split == Split::Test));

    // Each fold's rows: training the other folds', validation its own, disjoint and
    // covering the pool; over the folds, every pool image is validated exactly once.
    let pool_set: BTreeSet<u32> = order(&val).into_iter().collect();
    let mut validated = Vec::new();
    for f in 0..3 {
        let ds = PreparedDataset::open(&out).unwrap().with_fold(f).unwrap();
        let (train, _) = ds.eval_order(Split::Train);
        let (held, labels) = ds.eval_order(Split::Val);
        assert!(held.iter().all(|&si| m.images[si as usize].fold == Some(f)));
        assert!(train
            .iter()
            .all(|&si| m.images[si as usize].fold != Some(f)));
        let t: BTreeSet<u32> = train.iter().copied().collect();
        let h: BTreeSet<u32> = held.iter().copied().collect();
        assert!(t.is_disjoint(&h));
        assert_eq!(&t | &h, pool_set);
        assert_eq!(held.len(), m.fold_counts(f).unwrap().total);
        assert_eq!(ds.len(Split::Val), held.len());
        assert_eq!(ds.len(Split::Train), pool - held.len());
        assert_eq!(ds.len(Split::Test), 5);
        assert!(held
            .iter()
            .zip(&labels)
            .all(|(&si, &y)| m.images[si as usize].class == y));
        validated.extend(held);
    }
    validated.sort();
    assert_eq!(validated, pool_set.into_iter().collect::<Vec<_>>());
    prep::verify(&out).unwrap().into_result().unwrap();
}

#[test]
fn no_test_folds_keep_copies_together_and_hold_no_test_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let input = photos(&tmp.path().join("in"));
    // Byte-identical copies: a pair and a triple.
    fs::copy(
        input.join("Benign/Benign_00.jpg"),
        input.join("Benign/copy_a.jpg"),
    )
    .unwrap();
    for name in ["copy_b.png", "copy_c.png"] {
        fs::copy(
            input.join("Malignant/Malignant_01.png"),
            input.join("Malignant").join(name),
        )
        .unwrap();
    }
    let out = tmp.path().join("cv");
    let mut o = fold_options(&input, &out, 4);
    o.no_test = true;
    let summary = prep::run(&o).unwrap();
    let m = Manifest::load(&out).unwrap();
    assert_eq!((m.folds, m.images.len()), (4, 28));
    assert!(m.options.no_test, "the manifest records --no-test");
    assert!(m
        .images
        .iter()
        .all(|im| im.split == Split::Train && im.fold.is_some()));
    assert_eq!(m.counts(Split::Test).unwrap().total, 0);
    assert_eq!(m.shards_of(Split::Test, 0).count(), 0);
    assert!(!out.join("test").exists(), "no test folder");
    assert!(!summary.to_string().contains("  test "), "{summary}");
    assert_eq!(m.duplicates.len(), 2);
    for d in &m.duplicates {
        let line = format!("{} -> fold {}", d.paths.join(" = "), d.fold.unwrap());
        assert!(summary.to_string().contains(&line), "{line}: {summary}");
        let folds: BTreeSet<Option<u32>> = d
            .indices
            .iter()
            .map(|&i| m.images[i as usize].fold)
            .collect();
        assert_eq!(folds.len(), 1, "{:?} in folds {folds:?}", d.paths);
    }
    assert_eq!(
        m.fold_counts.iter().map(|c| c.total).sum::<usize>(),
        28,
        "{:?}",
        m.fold_counts
    );
    let ds = PreparedDataset::open(&out).unwrap();
    assert_eq!(ds.len(Split::Test), 0);
    prep::verify(&out).unwrap().into_result().unwrap();

    // verify sees a copy moved to another fold, and counts that disagree.
    let (copy, other) = (m.duplicates[0].indices[1] as usize, {
        let f = m.images[m.duplicates[0].indices[0] as usize].fold.unwrap();
        (f + 1) % 4
    });
    edit_json(&out.join("manifest.json"), |v| {
        v["images"][copy]["fold"] = other.into();
    });
    let report = prep::verify(&out).unwrap();
    let text = report.problems.join("\n");
    assert!(
        text.contains("are in different folds") && text.contains("fold counts:"),
        "{text}"
    );
    edit_json(&out.join("manifest.json"), |v| {
        v["images"][copy]["fold"] = serde_json::Value::Null;
    });
    let text = prep::verify(&out).unwrap().problems.join("\n");
    assert!(text.contains("a pool image without a fold"), "{text}");
}

#[test]
fn folds_keep_the_groups_of_a_groups_file_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let input = photos(&tmp.path().join("in"));
    // Groups of 1 to 3 photos of one class: lesion ids L0, L1, ... in file order.
    let mut csv = String::from("image_id,lesion_id\n");
    let mut lesion = 0;
    for (class, n) in [("Benign", 14), ("Malignant", 11)] {
        let mut i = 0;
        while i < n {
            let size = 1 + lesion % 3;
            for j in i..(i + size).min(n) {
                csv.push_str(&format!("{class}_{j:02},L{lesion}\n"));
            }
            i += size;
            lesion += 1;
        }
    }
    let groups = tmp.path().join("groups.csv");
    fs::write(&groups, csv).unwrap();
    let out = tmp.path().join("cv");
    let mut o = fold_options(&input, &out, 3);
    o.grouping = Some(prep::GroupOptions::new(&groups));
    prep::run(&o).unwrap();
    let m = Manifest::load(&out).unwrap();
    let mut fold_of: BTreeMap<String, BTreeSet<Option<u32>>> = BTreeMap::new();
    let mut split_of: BTreeMap<String, BTreeSet<Split>> = BTreeMap::new();
    for im in &m.images {
        let g = im.group.clone().expect("every image is grouped");
        fold_of.entry(g.clone()).or_default().insert(im.fold);
        split_of.entry(g).or_default().insert(im.split);
    }
    assert_eq!(fold_of.len(), lesion);
    assert!(fold_of.values().any(|f| f.contains(&None)), "a test split");
    for (g, folds) in &fold_of {
        assert_eq!(folds.len(), 1, "group {g} in folds {folds:?}");
        assert_eq!(
            split_of[g].len(),
            1,
            "group {g} in splits {:?}",
            split_of[g]
        );
    }
    let multi = fold_of
        .keys()
        .filter(|g| {
            m.images
                .iter()
                .filter(|im| im.group.as_ref() == Some(g))
                .count()
                > 1
        })
        .count();
    assert!(multi >= 5, "{multi} multi-image groups");
    prep::verify(&out).unwrap().into_result().unwrap();

    // verify names a group moved across folds.
    let (i, im) = m
        .images
        .iter()
        .enumerate()
        .find(|(_, im)| {
            im.fold.is_some() && m.images.iter().filter(|o| o.group == im.group).count() > 1
        })
        .unwrap();
    let moved = (im.fold.unwrap() + 1) % 3;
    edit_json(&out.join("manifest.json"), |v| {
        v["images"][i]["fold"] = moved.into();
    });
    let text = prep::verify(&out).unwrap().problems.join("\n");
    let group = im.group.as_deref().unwrap();
    assert!(
        text.contains(&format!("group `{group}` crosses folds")),
        "{text}"
    );
}

#[test]
fn fold_options_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let input = photos(&tmp.path().join("in"));
    let reason = |o: &PrepOptions| prep::run(o).unwrap_err();

    // A class with fewer pool images than folds: 11 malignant, 9 after the test split.
    let err = reason(&fold_options(&input, &tmp.path().join("a"), 10));
    assert!(matches!(err, Error::BadDataset { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("class Malignant has 9 image(s) in the cross-validation pool")
            && msg.contains("--folds 10"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), 2);
    // Without a test split the pool holds all 11: 11 folds work, 12 do not.
    let mut o = fold_options(&input, &tmp.path().join("b"), 12);
    o.no_test = true;
    let msg = reason(&o).to_string();
    assert!(msg.contains("class Malignant has 11 image(s)"), "{msg}");

    let mut o = fold_options(&input, &tmp.path().join("c"), 1);
    let err = reason(&o);
    assert!(matches!(err, Error::InvalidOption(_)) && err.to_string().contains("--folds"));
    o.folds = 0;
    o.no_test = true;
    let err = reason(&o);
    assert!(
        matches!(err, Error::InvalidOption(_)) && err.to_string().contains("--no-test needs"),
        "{err}"
    );
    assert!(!tmp.path().join("c").exists());
}

#[test]
fn the_binary_takes_folds_and_refuses_val_with_them() {
    let tmp = tempfile::tempdir().unwrap();
    let input = photos(&tmp.path().join("in"));
    let bin = env!("CARGO_BIN_EXE_lesion-prep");
    let out = tmp.path().join("cv");
    let run = |args: &[&str]| {
        Command::new(bin)
            .arg(&input)
            .args(["--size", "32", "--quiet", "--out"])
            .args(args)
            .output()
            .unwrap()
    };
    let ok = run(&[out.to_str().unwrap(), "--folds", "2", "--no-test"]);
    assert!(ok.status.success(), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("2 folds of the pool") && stdout.contains("fold 1"),
        "{stdout}"
    );
    assert_eq!(Manifest::load(&out).unwrap().folds, 2);
    let bad = run(&[
        tmp.path().join("x").to_str().unwrap(),
        "--folds",
        "2",
        "--val",
        "0.1",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--val 0.1 cannot be given with --folds 2"),
        "{stderr}"
    );
    assert!(!tmp.path().join("x").exists());
}

//! Grouped splits (`lesion-prep --groups FILE.csv`): no group crosses splits, per-class
//! split sizes stay within one group of the ungrouped targets, `verify` checks the groups,
//! and bad groups files fail with a clear message. The last test runs on the real ISIC 2017
//! folder (ignored by default; `.ci/run` runs ignored tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lesion::manifest::{GroupRecord, Manifest};
use lesion::prep::{self, GroupOptions, PrepOptions};
use lesion::split::{split_counts, Split};
use testkit::data::{self, png};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-prep");

/// A small deterministic generator (xorshift64*), so that the groups are seeded.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

/// Splits `names` (in order) into consecutive groups of 1-4, named `{prefix}-{k}`.
fn random_groups(names: &[String], prefix: &str, rng: &mut Rng) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut k = 0;
    let mut i = 0;
    while i < names.len() {
        let size = 1 + rng.below(4) as usize;
        for name in names.iter().skip(i).take(size) {
            out.push((name.clone(), format!("{prefix}-{k}")));
        }
        i += size;
        k += 1;
    }
    out
}

/// The file names (relative to `root/dir`) in `root/dir`, sorted.
fn names_in(root: &Path, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn write_csv(path: &Path, header: &str, rows: &[(String, String)]) -> PathBuf {
    let mut text = format!("{header}\n");
    for (image, group) in rows {
        text.push_str(&format!("{image},{group}\n"));
    }
    fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// `benign` and `malignant` photos under `root/images` in seeded random groups of 1-4, and
/// `root/g.csv` (header `header`) naming each photo's group.
fn grouped_photos(
    root: &Path,
    (benign, malignant): (usize, usize),
    seed: u64,
    header: &str,
) -> (PathBuf, PathBuf) {
    let images = data::write_class_photos(
        &root.join("images"),
        &[("Benign", benign), ("Malignant", malignant)],
    );
    let mut rng = Rng(seed);
    let mut rows = Vec::new();
    for dir in ["Benign", "Malignant"] {
        rows.extend(random_groups(&names_in(&images, dir), dir, &mut rng));
    }
    let csv = write_csv(&root.join("g.csv"), header, &rows);
    (images, csv)
}

fn options(images: &Path, out: &Path, csv: &Path) -> PrepOptions {
    let mut o = data::prep_options(images, out);
    o.grouping = Some(GroupOptions::new(csv));
    o
}

/// Per group, the splits its images are in.
fn splits_of_groups(m: &Manifest) -> BTreeMap<String, BTreeSet<Split>> {
    let mut out: BTreeMap<String, BTreeSet<Split>> = BTreeMap::new();
    for im in &m.images {
        if let Some(g) = &im.group {
            out.entry(g.clone()).or_default().insert(im.split);
        }
    }
    out
}

/// Every per-class split count is within `largest[class]` of the ungrouped target.
fn assert_near_targets(m: &Manifest, largest: &[usize], seed: u64) {
    let per_class: Vec<usize> = (0..m.classes.len())
        .map(|c| m.images.iter().filter(|im| im.class as usize == c).count())
        .collect();
    let target = split_counts(&per_class, 0.2, 0.2, seed).unwrap();
    for (k, split) in Split::ALL.into_iter().enumerate() {
        let got = &m.counts(split).unwrap().per_class;
        for c in 0..per_class.len() {
            println!(
                "{} class {c}: {} (target {}, largest group {})",
                split.name(),
                got[c],
                target[c][k],
                largest[c]
            );
            assert!(
                got[c].abs_diff(target[c][k]) <= largest[c],
                "{} class {c}: {} images, target {}, largest group {}",
                split.name(),
                got[c],
                target[c][k],
                largest[c]
            );
        }
    }
}

#[test]
fn groups_stay_in_one_split_near_the_stratified_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let images = data::write_class_photos(
        &tmp.path().join("images"),
        &[("Benign", 60), ("Malignant", 30)],
    );
    // A byte-identical copy in its own file group joins that group with benign_00's.
    fs::copy(
        images.join("Benign/Benign_00.jpg"),
        images.join("Benign/copy.jpg"),
    )
    .unwrap();
    let mut rng = Rng(0x5eed);
    let mut rows = Vec::new();
    for (k, dir) in ["Benign", "Malignant"].iter().enumerate() {
        let names: Vec<String> = names_in(&images, dir)
            .into_iter()
            .filter(|n| n != "copy.jpg")
            .enumerate()
            // The three ways of naming an image: stem, file name, relative path.
            .map(|(i, n)| match i % 3 {
                0 => n.rsplit_once('.').unwrap().0.to_string(),
                1 => n,
                _ => format!("{dir}/{n}"),
            })
            .collect();
        rows.extend(random_groups(&names, &format!("L{k}"), &mut rng));
    }
    rows.push(("copy.jpg".into(), "Lcopy".into()));
    let csv = write_csv(&tmp.path().join("meta.csv"), "image,lesion_id", &rows);

    let out = tmp.path().join("prepared");
    let summary = prep::run(&options(&images, &out, &csv)).unwrap();
    println!("{summary}");
    let m = Manifest::load(&out).unwrap();
    assert_eq!(m.images.len(), 91);

    // Every image carries the group the file gave it.
    let given: BTreeMap<String, String> = rows.iter().cloned().collect();
    let file_groups: BTreeSet<&str> = given.values().map(String::as_str).collect();
    for im in &m.images {
        let name = im.path.rsplit_once('/').unwrap().1;
        let stem = name.rsplit_once('.').unwrap().0;
        let expect = [im.path.as_str(), name, stem]
            .iter()
            .find_map(|k| given.get(*k))
            .unwrap_or_else(|| panic!("{} not in the file", im.path));
        assert_eq!(im.group.as_deref(), Some(expect.as_str()), "{}", im.path);
    }
    // One group (benign_00's and Lcopy) fewer than the file's, for the copy.
    assert_eq!(summary.groups, Some(file_groups.len() - 1));
    assert!(summary.to_string().contains(&format!(
        "groups: {}, each within one split",
        file_groups.len() - 1
    )));
    assert_eq!(
        m.options.groups,
        Some(GroupRecord {
            file: csv.to_str().unwrap().into(),
            group_column: "lesion_id".into(),
            image_column: "image".into(),
            ungrouped_ok: false,
        })
    );

    // No group crosses splits, the copy joined its twin's group, and the counts are near
    // the ungrouped split's.
    let crossing: Vec<_> = splits_of_groups(&m)
        .into_iter()
        .filter(|(_, s)| s.len() > 1)
        .collect();
    assert!(crossing.is_empty(), "{crossing:?}");
    let split_of = |path: &str| m.images.iter().find(|im| im.path == path).unwrap().split;
    let twin_group = m
        .images
        .iter()
        .find(|im| im.path == "Benign/Benign_00.jpg")
        .unwrap()
        .group
        .clone()
        .unwrap();
    for im in m
        .images
        .iter()
        .filter(|im| im.group.as_deref() == Some(&twin_group))
    {
        assert_eq!(im.split, split_of("Benign/copy.jpg"), "{}", im.path);
    }
    let mut sizes: BTreeMap<(u8, &str), usize> = BTreeMap::new();
    for im in &m.images {
        *sizes
            .entry((im.class, im.group.as_deref().unwrap()))
            .or_default() += 1;
    }
    // The copy's group and its twin's count as one.
    let copy_twin = sizes[&(0, twin_group.as_str())] + 1;
    let largest: Vec<usize> = (0..2u8)
        .map(|c| {
            sizes
                .iter()
                .filter(|((k, _), _)| *k == c)
                .map(|(_, &n)| n)
                .chain((c == 0).then_some(copy_twin))
                .max()
                .unwrap()
        })
        .collect();
    assert!(largest.iter().all(|&n| n <= 5), "{largest:?}");
    assert_near_targets(&m, &largest, 42);

    let report = prep::verify(&out).unwrap();
    assert!(report.is_ok(), "{report}");

    // A group moved across splits by hand is named by verify.
    let manifest_path = out.join("manifest.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let images_json = doc["images"].as_array_mut().unwrap();
    let (i, j) = {
        let groups: Vec<Option<&str>> = images_json.iter().map(|im| im["group"].as_str()).collect();
        (0..groups.len())
            .find_map(|i| {
                (i + 1..groups.len())
                    .find(|&j| groups[j] == groups[i])
                    .map(|j| (i, j))
            })
            .unwrap()
    };
    let group = images_json[i]["group"].as_str().unwrap().to_string();
    let moved = if images_json[j]["split"] == "test" {
        "val"
    } else {
        "test"
    };
    images_json[j]["split"] = moved.into();
    let moved_path = images_json[j]["path"].as_str().unwrap().to_string();
    fs::write(&manifest_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let report = prep::verify(&out).unwrap();
    let line = report
        .problems
        .iter()
        .find(|p| p.starts_with(&format!("group `{group}` crosses splits")))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(line.contains(&format!("{moved_path} in {moved}")), "{line}");
}

#[test]
fn grouped_splits_are_deterministic_and_follow_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, csv) = grouped_photos(tmp.path(), (24, 16), 7, "image_id,lesion_id");
    let run = |name: &str, seed: u64| {
        let out = tmp.path().join(name);
        let mut o = options(&images, &out, &csv);
        o.seed = seed;
        prep::run(&o).unwrap();
        fs::read(out.join("manifest.json")).unwrap()
    };
    let a = run("a", 1);
    assert_eq!(a, run("b", 1));
    let splits = |bytes: &[u8]| -> Vec<Split> {
        let m: Manifest = serde_json::from_slice(bytes).unwrap();
        m.images.iter().map(|im| im.split).collect()
    };
    assert_ne!(splits(&a), splits(&run("c", 2)));
}

/// Runs `lesion-prep` with `args` in `dir` (a preparation small and quiet); returns the
/// exit code, stdout and stderr.
fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).args(args);
    if args.first() != Some(&"verify") {
        cmd.args(["--size", "32", "--shard-size", "4", "-q"]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `Benign/benign_NN.jpg|png` and `Malignant/malignant_NN.jpg|png`, 8 of each, in `dir/photos`.
fn photos(dir: &Path) -> PathBuf {
    data::write_photos(&dir.join("photos"), 8)
}

/// One group per pair of images of a class, named by stem.
fn pair_rows() -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for class in ["benign", "malignant"] {
        for i in 0..8 {
            rows.push((format!("{class}_{i:02}"), format!("{class}-{}", i / 2)));
        }
    }
    rows
}

#[test]
fn hostile_groups_files_fail_with_the_file_and_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    photos(dir);
    let expect_fail = |args: &[&str], needles: &[&str]| {
        let (code, _, err) = cli(dir, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{n}` not in {err}");
        }
        assert!(!dir.join("out").exists(), "{args:?} wrote an output");
    };
    fn prep_with(csv: &str) -> Vec<&str> {
        vec!["photos", "--out", "out", "--groups", csv]
    }

    // Missing file.
    expect_fail(&prep_with("nope.csv"), &["nope.csv"]);
    // Empty file.
    fs::write(dir.join("empty.csv"), "").unwrap();
    expect_fail(&prep_with("empty.csv"), &["empty.csv: empty"]);
    // No group column; the header is listed and the option named.
    write_csv(&dir.join("nocol.csv"), "image,patient", &pair_rows());
    expect_fail(
        &prep_with("nocol.csv"),
        &[
            "nocol.csv: no column `lesion_id`",
            "`image`, `patient`",
            "--group-column",
        ],
    );
    // A custom group column that does not exist.
    let mut args = prep_with("nocol.csv");
    args.extend(["--group-column", "lesion"]);
    expect_fail(&args, &["no column `lesion`"]);
    // Images missing from the file: the first few and the count.
    let rows = pair_rows();
    write_csv(&dir.join("some.csv"), "image,lesion_id", &rows[..9]);
    expect_fail(
        &prep_with("some.csv"),
        &[
            "some.csv: 7 of 16 images have no group in it",
            "Malignant/malignant_01.png",
            "and 2 more",
            "--ungrouped ok",
        ],
    );
    // A group of two classes.
    let mut mixed = pair_rows();
    mixed[15].1 = "benign-0".into();
    write_csv(&dir.join("mixed.csv"), "image,lesion_id", &mixed);
    expect_fail(
        &prep_with("mixed.csv"),
        &[
            "mixed.csv: group `benign-0` holds images of two classes",
            "Benign/benign_00.jpg (Benign)",
            "Malignant/malignant_07.png (Malignant)",
        ],
    );
    // A name that fits two images.
    fs::write(dir.join("photos/Malignant/benign_03.png"), png(1, 40)).unwrap();
    let mut ambiguous = pair_rows();
    ambiguous.push(("Malignant/benign_03".into(), "m-extra".into()));
    write_csv(&dir.join("ambiguous.csv"), "image,lesion_id", &ambiguous);
    expect_fail(
        &prep_with("ambiguous.csv"),
        &[
            "ambiguous.csv: line 5: `benign_03` names more than one image",
            "Benign/benign_03.png and Malignant/benign_03.png",
        ],
    );
    fs::remove_file(dir.join("photos/Malignant/benign_03.png")).unwrap();
    // Options of --groups without it are usage errors.
    let (code, _, err) = cli(dir, &["photos", "--out", "out", "--ungrouped", "ok"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--groups"), "{err}");
}

#[test]
fn bom_crlf_files_work_and_ungrouped_images_can_be_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    photos(dir);
    // BOM, CRLF, quoted fields, an extra column, a row naming no image.
    let mut text = String::from("\u{feff}\"lesion_id\",dx,\"image_id\"\r\n");
    for (image, group) in pair_rows() {
        text.push_str(&format!("\"{group}\",nv,{image}\r\n"));
    }
    text.push_str("L9,nv,ISIC_0000000\r\n");
    fs::write(dir.join("bom.csv"), text).unwrap();
    let (code, out, err) = cli(dir, &["photos", "--out", "out", "--groups", "bom.csv"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("groups: 8, each within one split"), "{out}");
    assert!(
        out.contains(
            "1 row(s) of bom.csv name no accepted image of the input: line 18 `ISIC_0000000`"
        ),
        "{out}"
    );
    let m = Manifest::load(dir.join("out")).unwrap();
    assert_eq!(m.options.groups.as_ref().unwrap().image_column, "image_id");
    assert!(splits_of_groups(&m).values().all(|s| s.len() == 1));
    let (code, out, err) = cli(dir, &["verify", "out"]);
    assert_eq!(code, 0, "{out}{err}");

    // Half the images ungrouped: an error, unless --ungrouped ok.
    let rows = pair_rows();
    write_csv(&dir.join("half.csv"), "image,lesion_id", &rows[..8]);
    let (code, _, err) = cli(dir, &["photos", "--out", "o2", "--groups", "half.csv"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = cli(
        dir,
        &[
            "photos",
            "--out",
            "o2",
            "--groups",
            "half.csv",
            "--ungrouped",
            "ok",
        ],
    );
    assert_eq!(code, 0, "{err}");
    // 4 benign pairs and 8 malignant singletons.
    assert!(out.contains("groups: 12, each within one split"), "{out}");
    assert!(
        out.contains("8 image(s) have no group in half.csv"),
        "{out}"
    );
    let m = Manifest::load(dir.join("o2")).unwrap();
    assert_eq!(m.images.iter().filter(|im| im.group.is_none()).count(), 8);
    assert!(m.options.groups.as_ref().unwrap().ungrouped_ok);
}

#[test]
fn without_groups_the_manifest_has_no_group_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let images = photos(tmp.path());
    let out = data::prepare(&images, &tmp.path().join("out"));
    let text = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        !text.contains("\"group"),
        "a group field in an ungrouped manifest"
    );
}

/// The real ISIC 2017 folder with a derived grouping: its six byte-identical pairs
/// (`meta/exact_duplicate_groups.txt`) as groups of two (under different names, so that
/// the file, not the hashes, groups them), every other image in seeded random groups of 1-4
/// within its class.
#[test]
#[ignore = "needs ../shared/data"]
fn grouped_isic2017_is_verified() {
    let input = testkit::shared::isic2017();
    let pairs = fs::read_to_string(input.join("meta/exact_duplicate_groups.txt")).unwrap();
    let mut rows = Vec::new();
    let mut paired = BTreeSet::new();
    for (k, line) in pairs.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        for id in line.split_whitespace() {
            rows.push((id.to_string(), format!("dup-{k}")));
            paired.insert(id.to_string());
        }
    }
    assert_eq!(paired.len(), 12);
    let mut rng = Rng(2017);
    for dir in ["Benign", "Malignant"] {
        let stems: Vec<String> = names_in(&input, dir)
            .into_iter()
            .map(|n| n.rsplit_once('.').unwrap().0.to_string())
            .filter(|s| !paired.contains(s))
            .collect();
        rows.extend(random_groups(&stems, dir, &mut rng));
    }
    let tmp = tempfile::tempdir().unwrap();
    let csv = write_csv(&tmp.path().join("lesions.csv"), "image_id,lesion_id", &rows);
    let out = tmp.path().join("prepared");
    let mut o = PrepOptions::new(&input, &out);
    o.size = 32;
    o.progress = false;
    o.grouping = Some(GroupOptions::new(&csv));
    let summary = prep::run(&o).unwrap();
    println!("{summary}");
    assert_eq!(summary.images, 2750);
    let m = Manifest::load(&out).unwrap();
    let groups = splits_of_groups(&m);
    assert_eq!(summary.groups, Some(groups.len()));
    let crossing: Vec<_> = groups.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(crossing.is_empty(), "{crossing:?}");
    // Each duplicate pair is one group of two.
    for k in 0..6 {
        let n = m
            .images
            .iter()
            .filter(|im| im.group.as_deref() == Some(&format!("dup-{k}")))
            .count();
        assert_eq!(n, 2, "dup-{k}");
    }
    assert_near_targets(&m, &[4, 4], 42);
    let (code, stdout, stderr) = {
        let r = Command::new(BIN).arg("verify").arg(&out).output().unwrap();
        (
            r.status.code(),
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    };
    println!("{stdout}");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn grouped_folds_pass_verify_and_a_group_moved_across_folds_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, csv) = grouped_photos(tmp.path(), (30, 20), 11, "image,lesion_id");
    let out = tmp.path().join("folds");
    let mut o = options(&images, &out, &csv);
    o.folds = 3;
    prep::run(&o).unwrap();
    let report = prep::verify(&out).unwrap();
    assert!(report.is_ok(), "{report}");

    let manifest_path = out.join("manifest.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();
    let images_json = doc["images"].as_array_mut().unwrap();
    let j = (1..images_json.len())
        .find(|&j| {
            images_json[j]["fold"].is_u64()
                && images_json[..j]
                    .iter()
                    .any(|im| im["group"] == images_json[j]["group"])
        })
        .unwrap();
    let group = images_json[j]["group"].as_str().unwrap().to_string();
    let fold = images_json[j]["fold"].as_u64().unwrap();
    images_json[j]["fold"] = ((fold + 1) % 3).into();
    fs::write(&manifest_path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let report = prep::verify(&out).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with(&format!("group `{group}` crosses folds: "))),
        "{report}"
    );
}

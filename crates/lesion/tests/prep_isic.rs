//! Prep on the real ISIC 2017 folder (`shared/data/isic2017-256`: 2,229 benign + 521
//! malignant 256x256 JPEGs with six byte-identical pairs). Ignored by default: `.ci/run`
//! runs it with `--include-ignored`.

mod common;

use std::collections::HashMap;
use std::fs;

use candle_core::Device;
use lesion::loader::{LoaderOptions, PreparedDataset};
use lesion::manifest::Manifest;
use lesion::prep::{self, PrepOptions};
use lesion::split::Split;

/// Peak resident set size of this process so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs ../shared/data"]
fn prepares_isic2017_at_224() {
    let input = common::isic2017();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("prepared");
    let mut opts = PrepOptions::new(&input, &out);
    opts.progress = false;
    let summary = prep::run(&opts).unwrap();
    let peak_mib = peak_rss_kib() / 1024;
    println!("{summary}");
    println!(
        "prep: {:.1} images/s, peak RSS {peak_mib} MiB",
        summary.images_per_second()
    );
    assert!(peak_mib < 1024, "peak RSS {peak_mib} MiB");
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_eq!(summary.images, 2750);

    // scikit-learn's rule for 2,229 + 521 (train_test_split(test_size=0.2), then 0.25 of the
    // rest, stratified): the first split keeps n_train = 2750 - ceil(0.2 * 2750) = 2200,
    // allotted 2200 * 2229/2750 = 1783.2 and 2200 * 521/2750 = 416.8; flooring leaves one
    // to the larger remainder (malignant): 1783 + 417, so test = 446 + 104. The second split
    // of those 2200 keeps 2200 - ceil(0.25 * 2200) = 1650 for training: 1337.25 and 312.75,
    // the spare one again to malignant: 1337 + 313, leaving val = 446 + 104.
    let per = common::split_counts(&summary);
    assert_eq!(
        per,
        [
            (Split::Train, vec![1337, 313]),
            (Split::Val, vec![446, 104]),
            (Split::Test, vec![446, 104]),
        ]
    );

    // The six listed duplicate pairs are detected and stay within one split each.
    let m = Manifest::load(&out).unwrap();
    let by_stem: HashMap<String, usize> = m
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let stem = im.path.rsplit('/').next().unwrap();
            (stem.split('.').next().unwrap().to_string(), i)
        })
        .collect();
    let listed = fs::read_to_string(input.join("meta/exact_duplicate_groups.txt")).unwrap();
    let pairs: Vec<Vec<&str>> = listed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(pairs.len(), 6);
    assert_eq!(m.duplicates.len(), 6);
    for pair in &pairs {
        let idx: Vec<u32> = pair.iter().map(|id| by_stem[*id] as u32).collect();
        let group = m
            .duplicates
            .iter()
            .find(|d| d.indices.contains(&idx[0]))
            .unwrap_or_else(|| panic!("{pair:?} not detected"));
        let mut want = idx.clone();
        want.sort();
        assert_eq!(group.indices, want);
        let splits: Vec<Split> = idx.iter().map(|&i| m.images[i as usize].split).collect();
        assert_eq!(splits[0], splits[1], "{pair:?} split apart");
    }

    let report = prep::verify(&out).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.shards_checked, 2 + 1 + 1);

    // The loader reads the real shards back with the manifest's labels.
    let ds = PreparedDataset::open(&out).unwrap();
    let mut malignant = 0;
    let mut rows = 0;
    for batch in ds
        .loader(Split::Val, LoaderOptions::eval(64), &Device::Cpu)
        .unwrap()
    {
        let batch = batch.unwrap();
        assert_eq!(batch.images.dims()[1..], [3, 224, 224]);
        malignant += batch.label_u8.iter().filter(|&&l| l == 1).count();
        rows += batch.len();
    }
    assert_eq!((rows, malignant), (550, 104));
}

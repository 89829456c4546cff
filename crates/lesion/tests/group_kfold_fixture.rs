//! `stratified_group_kfold` against scikit-learn's `StratifiedGroupKFold(shuffle=False)`:
//! the fold of every item in `tests/fixtures/group_kfold.json`
//! (made by `scripts/fixtures/make_group_kfold_fixture.py`).

use lesion::split::stratified_group_kfold;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/group_kfold.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn folds_equal_scikit_learn() {
    let cases = cases();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let labels = usizes(&case["labels"]);
        let groups = usizes(&case["groups"]);
        let expect: Vec<u32> = usizes(&case["folds"]).iter().map(|&f| f as u32).collect();
        let got = stratified_group_kfold(&labels, &groups, k, None).unwrap();
        assert_eq!(got, expect, "{name}");
    }
}

#[test]
fn seeded_folds_keep_groups_whole_and_stratify() {
    for case in &cases() {
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let labels = usizes(&case["labels"]);
        let groups = usizes(&case["groups"]);
        let a = stratified_group_kfold(&labels, &groups, k, Some(7)).unwrap();
        assert_eq!(
            a,
            stratified_group_kfold(&labels, &groups, k, Some(7)).unwrap()
        );
        let b = stratified_group_kfold(&labels, &groups, k, Some(8)).unwrap();
        assert_ne!(a, b, "{name}: the seed moves groups");
        for folds in [&a, &b] {
            for (i, &g) in groups.iter().enumerate() {
                let first = groups.iter().position(|&x| x == g).unwrap();
                assert_eq!(folds[i], folds[first], "{name}: group {g} split");
            }
            // Every class's fold counts stay within the largest group of the even share.
            let largest = groups
                .iter()
                .map(|g| groups.iter().filter(|&x| x == g).count())
                .max()
                .unwrap() as f64;
            let mut classes = labels.clone();
            classes.sort_unstable();
            classes.dedup();
            for &c in &classes {
                let n = labels.iter().filter(|&&l| l == c).count() as f64;
                for f in 0..k as u32 {
                    let m = labels
                        .iter()
                        .zip(folds.iter())
                        .filter(|&(&l, &x)| l == c && x == f)
                        .count() as f64;
                    assert!(
                        (m - n / k as f64).abs() <= largest,
                        "{name}: class {c} fold {f} has {m} of {n}"
                    );
                }
            }
        }
    }
}

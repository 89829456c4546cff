//! The stratified split against scikit-learn's per-class counts (two `train_test_split`
//! calls, test 0.2 then 0.25): two classes from `shared/fixtures/split_counts.json`, more
//! from `scripts/fixtures/split_counts_nclass.json` (committed, so always checked).

mod common;

use lesion::split::{split_counts, stratified_split, Split};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = common::fixture("split_counts.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v.as_array().unwrap().clone()
}

fn count(v: &Value, split: &str, class: &str) -> usize {
    v[split][class].as_u64().unwrap() as usize
}

#[test]
#[ignore = "needs ../shared fixtures"]
fn per_class_counts_equal_scikit_learn() {
    let cases = cases();
    assert_eq!(cases.len(), 5);
    for case in &cases {
        let (nb, nm) = (
            count(case, "input", "benign"),
            count(case, "input", "malignant"),
        );
        let expect: Vec<[usize; 3]> = ["benign", "malignant"]
            .iter()
            .map(|c| {
                [
                    count(case, "train", c),
                    count(case, "val", c),
                    count(case, "test", c),
                ]
            })
            .collect();
        let planned = split_counts(&[nb, nm], 0.2, 0.2, 42).unwrap();
        assert_eq!(planned, expect, "plan for {nb} + {nm}");

        let labels: Vec<usize> = std::iter::repeat_n(0, nb)
            .chain(std::iter::repeat_n(1, nm))
            .collect();
        let groups: Vec<usize> = (0..labels.len()).collect();
        let splits = stratified_split(&labels, &groups, 0.2, 0.2, 42).unwrap();
        let mut got = vec![[0usize; 3]; 2];
        for (&l, s) in labels.iter().zip(&splits) {
            got[l][Split::ALL.iter().position(|x| x == s).unwrap()] += 1;
        }
        println!("{nb} benign + {nm} malignant -> [train, val, test] = {got:?}");
        assert_eq!(got, expect, "assignment for {nb} + {nm}");
    }
}

/// `scripts/fixtures/split_counts_nclass.json` (committed; made by the script beside it).
fn nclass_cases() -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/fixtures/split_counts_nclass.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn as_counts(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as usize)
        .collect()
}

/// For more than two classes (and ISIC 2017's two), the per-class counts are one of
/// scikit-learn's outcomes (the only one where no two remainders tie), for several seeds,
/// and the assignment has them.
#[test]
fn n_class_counts_are_scikit_learns() {
    let cases = nclass_cases();
    assert_eq!(cases.len(), 9);
    let mut exact = 0;
    for case in &cases {
        let input = as_counts(&case["input"]);
        let outcomes: Vec<Vec<[usize; 3]>> = case["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                o.as_array()
                    .unwrap()
                    .iter()
                    .map(|c| as_counts(c).try_into().unwrap())
                    .collect()
            })
            .collect();
        for seed in [0, 7, 42] {
            let planned = split_counts(&input, 0.2, 0.2, seed);
            if outcomes.iter().any(|o| o.iter().any(|c| c.contains(&0))) {
                // scikit-learn leaves some class out of some split: refused here.
                let e = planned.unwrap_err().to_string();
                assert!(e.contains("every split needs at least one image"), "{e}");
                continue;
            }
            let planned = planned.unwrap();
            assert!(
                outcomes.contains(&planned),
                "{input:?} seed {seed}: {planned:?} is not among {outcomes:?}"
            );
            if outcomes.len() == 1 {
                exact += 1;
            }
            let labels: Vec<usize> = input
                .iter()
                .enumerate()
                .flat_map(|(c, &n)| std::iter::repeat_n(c, n))
                .collect();
            let groups: Vec<usize> = (0..labels.len()).collect();
            let splits = stratified_split(&labels, &groups, 0.2, 0.2, seed).unwrap();
            let mut got = vec![[0usize; 3]; input.len()];
            for (&l, s) in labels.iter().zip(&splits) {
                got[l][Split::ALL.iter().position(|x| x == s).unwrap()] += 1;
            }
            assert_eq!(got, planned, "assignment for {input:?} seed {seed}");
        }
    }
    // ISIC 2017 as two and as three classes, 10 + 10 + 10, 5 + 5 + 5 + 5 and
    // 12 + 9 + 5 + 30 have no ties.
    assert_eq!(exact, 5 * 3);
}

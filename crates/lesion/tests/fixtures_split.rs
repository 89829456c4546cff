//! The stratified split against scikit-learn's per-class counts
//! (`shared/fixtures/split_counts.json`: two `train_test_split` calls, test 0.2 then 0.25).

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

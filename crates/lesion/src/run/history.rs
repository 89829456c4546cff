//! Per-epoch training history: `history.csv` in the run folder and the data for
//! `curves.png`.
//!
//! Columns: `epoch,train_loss,train_acc,val_loss,val_acc,val_auc,val_balanced_acc,lr_head,
//! lr_layer4,lr_layer3,lr_backbone,seconds,images_per_s`. `val_balanced_acc` is left out
//! for runs with the notebook's options on two classes
//! ([`crate::run::TrainConfig::records_balanced_accuracy`]), whose history keeps the
//! notebook's columns; files without it are read with it NaN.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// One row of `history.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: f64,
    pub val_acc: f64,
    /// NaN when the validation split holds a single class.
    pub val_auc: f64,
    /// Mean recall of the classes present in the validation split (scikit-learn's
    /// `balanced_accuracy_score`), at threshold 0.5 for two classes, of the most probable
    /// class otherwise; NaN in rows read from a file that lacks the column.
    pub val_balanced_acc: f64,
    /// The learning rate of each group at the epoch's last step.
    pub lr_head: f64,
    pub lr_layer4: f64,
    pub lr_layer3: f64,
    /// 0 when the stem to layer2 are frozen.
    pub lr_backbone: f64,
    /// Wall time of the epoch, training and validation.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_s: f64,
}

const HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,val_balanced_acc,\
lr_head,lr_layer4,lr_layer3,lr_backbone,seconds,images_per_s";
/// The header of files without the `val_balanced_acc` column.
const HEADER_WITHOUT_BALANCED_ACC: &str = "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,\
lr_head,lr_layer4,lr_layer3,lr_backbone,seconds,images_per_s";
/// Fields of a row.
const FIELDS: usize = 13;

/// Renders the records as CSV with a header line, with or without the `val_balanced_acc`
/// column.
pub fn to_csv(records: &[EpochRecord], balanced_acc: bool) -> String {
    let mut s = String::from(if balanced_acc {
        HEADER
    } else {
        HEADER_WITHOUT_BALANCED_ACC
    });
    s.push('\n');
    for r in records {
        s.push_str(&row(r, balanced_acc));
        s.push('\n');
    }
    s
}

/// One record as a CSV line of `history.csv` (without the line break): every column, less
/// `val_balanced_acc` when it is NaN (not recorded), as files without the column hold it.
pub fn to_row(r: &EpochRecord) -> String {
    row(r, !r.val_balanced_acc.is_nan())
}

fn row(r: &EpochRecord, balanced_acc: bool) -> String {
    let balanced = if balanced_acc {
        format!(",{:.6}", r.val_balanced_acc)
    } else {
        String::new()
    };
    format!(
        "{},{:.6},{:.6},{:.6},{:.6},{:.6}{balanced},{:e},{:e},{:e},{:e},{:.3},{:.2}",
        r.epoch,
        r.train_loss,
        r.train_acc,
        r.val_loss,
        r.val_acc,
        r.val_auc,
        r.lr_head,
        r.lr_layer4,
        r.lr_layer3,
        r.lr_backbone,
        r.seconds,
        r.images_per_s
    )
}

/// Parses a line written by [`to_row`], or one without `val_balanced_acc` (12 fields, as
/// files and checkpoints without the column hold); the error says which field is wrong.
pub fn parse_row(line: &str) -> std::result::Result<EpochRecord, String> {
    let mut f: Vec<&str> = line.split(',').collect();
    if f.len() == FIELDS - 1 {
        f.insert(6, "NaN");
    }
    if f.len() != FIELDS {
        return Err(format!("expected {FIELDS} fields, found {}", f.len()));
    }
    let num = |k: usize| -> std::result::Result<f64, String> {
        f[k].parse::<f64>()
            .map_err(|e| format!("field {}: {e}", k + 1))
    };
    Ok(EpochRecord {
        epoch: f[0].parse().map_err(|e| format!("epoch: {e}"))?,
        train_loss: num(1)?,
        train_acc: num(2)?,
        val_loss: num(3)?,
        val_acc: num(4)?,
        val_auc: num(5)?,
        val_balanced_acc: num(6)?,
        lr_head: num(7)?,
        lr_layer4: num(8)?,
        lr_layer3: num(9)?,
        lr_backbone: num(10)?,
        seconds: num(11)?,
        images_per_s: num(12)?,
    })
}

/// Writes `history.csv` atomically ([`to_csv`]).
pub fn write(path: &Path, records: &[EpochRecord], balanced_acc: bool) -> Result<()> {
    write_atomic(path, to_csv(records, balanced_acc).as_bytes())
}

/// Reads a `history.csv` written by [`write()`] (used when resuming a run).
pub fn read(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let bad = |line: usize, why: String| Error::BadArtifact {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    let mut lines = text.lines();
    let fields = match lines.next() {
        Some(HEADER) => FIELDS,
        Some(HEADER_WITHOUT_BALANCED_ACC) => FIELDS - 1,
        _ => return Err(bad(1, "unexpected header".into())),
    };
    lines
        .enumerate()
        .map(|(i, line)| match line.split(',').count() {
            // A row must have its header's columns.
            n if n != fields => Err(bad(i + 2, format!("expected {fields} fields, found {n}"))),
            _ => parse_row(line).map_err(|why| bad(i + 2, why)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip() {
        let rec = EpochRecord {
            epoch: 3,
            train_loss: 0.5,
            train_acc: 0.75,
            val_loss: 0.625,
            val_acc: 0.8125,
            val_auc: f64::NAN,
            val_balanced_acc: 0.6875,
            lr_head: 1e-2,
            lr_layer4: 1e-3,
            lr_layer3: 1e-3,
            lr_backbone: 0.0,
            seconds: 12.5,
            images_per_s: 40.25,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        write(&path, std::slice::from_ref(&rec), true).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].epoch, 3);
        assert_eq!(back[0].val_acc, 0.8125);
        assert!(back[0].val_auc.is_nan());
        assert_eq!(back[0].val_balanced_acc, 0.6875);
        assert_eq!(back[0].lr_head, 1e-2);
        assert_eq!(back[0].images_per_s, 40.25);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,val_balanced_acc,lr_head,"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_balanced_accuracy_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        let notebook_columns = "epoch,train_loss,train_acc,val_loss,val_acc,val_auc,lr_head,\
                                lr_layer4,lr_layer3,lr_backbone,seconds,images_per_s\n\
                                1,0.693000,0.500000,0.690000,0.550000,0.600000,1e-2,1e-3,1e-3,\
                                0e0,12.500,40.25\n";
        std::fs::write(&path, notebook_columns).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].val_acc, back[0].val_auc), (0.55, 0.6));
        assert!(back[0].val_balanced_acc.is_nan());
        assert_eq!((back[0].lr_head, back[0].lr_backbone), (1e-2, 0.0));
        assert_eq!(back[0].images_per_s, 40.25);
        // Rewritten without the column, it is the same file; with it, the column is NaN.
        assert_eq!(to_csv(&back, false), notebook_columns);
        // A checkpoint's row (`to_row`) leaves out a balanced accuracy that was not recorded.
        assert_eq!(to_row(&back[0]), notebook_columns.lines().nth(1).unwrap());
        write(&path, &back, true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("1,0.693000,0.500000,0.690000,0.550000,0.600000,NaN,1e-2,"),
            "{text}"
        );
        // A row with the other layout's width is refused by line.
        std::fs::write(
            &path,
            format!("{HEADER}\n{}\n", "1,2,3,4,5,6,7,8,9,10,11,12"),
        )
        .unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("expected 13 fields"),
            "{err}"
        );
    }

    #[test]
    fn rejects_wrong_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        std::fs::write(&path, "a,b\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("unexpected header"), "{err}");
    }
}

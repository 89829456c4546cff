//! Hostile but fair inputs to `lesion-predict`: one row per case, run by
//! `testkit::run_table` (see `crates/testkit/src/hostile.rs` for what every row checks).
//! `LESION_HOSTILE_CASE=name cargo test -p lesion-predict --test hostile` runs one case.

use std::collections::BTreeSet;
use std::fs;

use lesion::predict::PredictOptions;
use testkit::data::{self, jpeg, png, truncated};
use testkit::{Case, Invocation, Output, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-predict");

/// `lesion-predict --run run` on the CPU, then `inputs` (not `--quiet`: the summary on
/// stderr lists skipped files).
fn predict<const N: usize>(inputs: [&str; N]) -> Invocation {
    Invocation::new(["--run", "run", "--device", "cpu"]).args(inputs)
}

/// A run folder (`run/`, untrained) and two photos (`shots/a.jpg`, `shots/b.png`).
fn run_and_shots(sb: &Sandbox) {
    sb.untrained_run("run");
    sb.write("shots/a.jpg", jpeg(0, 1));
    sb.write("shots/b.png", png(1, 2));
}

const MISSING: &[&str] = &["does not exist", "no such", "not found", "missing"];

const CASES: &[Case] = &[
    // Defect 1: --force replaces only heatmaps it wrote.
    Case::new("force_onto_a_foreign_file_in_the_explain_folder", |sb| {
        run_and_shots(sb);
        sb.write("heatmaps/a.gradcam.png", "my own notes, not a heatmap");
        predict(["--explain", "heatmaps", "--force", "shots"])
    })
    .exits(2)
    .stderr(&[
        &["a.gradcam.png"],
        &[
            "not a heatmap",
            "not a lesion",
            "does not look",
            "not one of",
            "refus",
            "not written by",
        ],
    ])
    .unchanged(&["heatmaps", "shots"]),
    Case::new("force_replaces_its_own_heatmaps", |sb| {
        run_and_shots(sb);
        let mut o = PredictOptions::new(sb.path("run"), vec![sb.path("shots")]);
        o.device = "cpu".into();
        o.explain = Some(sb.path("heatmaps"));
        o.progress = false;
        lesion::predict::run(&o).unwrap();
        predict(["--explain", "heatmaps", "--force", "shots"])
    })
    .output(&[&["a.jpg"], &["b.png"]])
    .unchanged(&["shots"])
    .check(|sb, _| {
        for name in ["a.gradcam.png", "b.gradcam.png"] {
            let bytes =
                fs::read(sb.path("heatmaps").join(name)).map_err(|e| format!("{name}: {e}"))?;
            if !bytes.starts_with(b"\x89PNG") {
                return Err(format!("{name} is not a PNG"));
            }
        }
        Ok(())
    }),
    // Defect 5: bad input exits 2.
    Case::new("run_missing", |sb| {
        sb.write("shots/a.jpg", jpeg(0, 1));
        Invocation::new(["--run", "nowhere", "--device", "cpu", "shots"])
    })
    .exits(2)
    .stderr(&[&["nowhere"], MISSING])
    .unchanged(&["shots"]),
    // Defect 11: predictions stay traceable to files whose names are not UTF-8.
    Case::new("names_differing_in_a_non_utf8_byte_stay_distinct", |sb| {
        sb.untrained_run("run");
        sb.write(non_utf8(b"shots/x\xff.jpg"), jpeg(0, 3));
        sb.write(non_utf8(b"shots/x\xfe.jpg"), jpeg(1, 4));
        predict(["--format", "csv", "shots"])
    })
    .unchanged(&["shots"])
    .check(|_, out| {
        let rows: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.contains("shots/x"))
            .map(|l| l.split(',').next().unwrap_or(""))
            .collect();
        let distinct: BTreeSet<&&str> = rows.iter().collect();
        match (rows.len(), distinct.len()) {
            (2, 2) => Ok(()),
            _ => Err(format!("the two files are reported as {rows:?}")),
        }
    }),
    // The "also" list: one vocabulary for a zero-byte file.
    Case::new("zero_byte_file_is_called_empty", |sb| {
        run_and_shots(sb);
        sb.write("shots/empty.jpg", []);
        predict(["shots"])
    })
    .exits_one_of(&[0, 1])
    .output(&[&["empty.jpg"], &["empty file"]])
    .unchanged(&["shots"]),
    // What already works, kept from regressing.
    Case::new("predicts", |sb| {
        run_and_shots(sb);
        predict(["shots"])
    })
    .output(&[&["a.jpg"], &["b.png"]])
    .unchanged(&["shots", "run"]),
    Case::new("one_corrupt_file_among_good_ones", |sb| {
        run_and_shots(sb);
        sb.write("shots/cut.jpg", truncated(&jpeg(0, 5), 700));
        predict(["--format", "csv", "shots"])
    })
    .exits(1)
    .stderr(&[&["cut.jpg"], &["truncated"]])
    .unchanged(&["shots"])
    .check(good_ones_predicted),
    Case::new("one_missing_file_among_good_ones", |sb| {
        run_and_shots(sb);
        predict([
            "--format",
            "csv",
            "shots/a.jpg",
            "shots/gone.jpg",
            "shots/b.png",
        ])
    })
    .exits(1)
    .stderr(&[&["gone.jpg"], MISSING])
    .unchanged(&["shots"])
    .check(good_ones_predicted),
    Case::new("one_unreadable_file_among_good_ones", |sb| {
        use std::os::unix::fs::PermissionsExt;
        if !data::permissions_apply(sb.root()) {
            return Invocation::skip("file permissions do not apply to this user (root)");
        }
        run_and_shots(sb);
        let locked = sb.write("shots/locked.jpg", jpeg(1, 6));
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        predict(["--format", "csv", "shots"])
    })
    .exits(1)
    .stderr(&[&["locked.jpg"], &["permission"]])
    .check(good_ones_predicted),
    Case::new("text_file_named_as_an_image", |sb| {
        run_and_shots(sb);
        sb.write("shots/notes.jpg", "not a photo");
        predict([
            "--format",
            "csv",
            "shots/a.jpg",
            "shots/notes.jpg",
            "shots/b.png",
        ])
    })
    .exits(1)
    .stderr(&[&["notes.jpg"], &["not an image", "unrecognised"]])
    .unchanged(&["shots"])
    .check(good_ones_predicted),
    Case::new("decompression_bomb_among_good_ones", |sb| {
        run_and_shots(sb);
        sb.write("shots/bomb.bmp", data::bmp_bomb(60_000, 60_000));
        predict(["--format", "csv", "shots"])
    })
    .exits(1)
    .stderr(&[&["bomb.bmp"], &["too large"]])
    .unchanged(&["shots"])
    .check(good_ones_predicted),
    Case::new("existing_heatmap_without_force", |sb| {
        run_and_shots(sb);
        sb.write("heatmaps/a.gradcam.png", png(0, 9));
        predict(["--explain", "heatmaps", "shots"])
    })
    .exits(2)
    .stderr(&[&["a.gradcam.png"], &["already exists"], &["--force"]])
    .unchanged(&["heatmaps", "shots"]),
    Case::new("run_without_a_checkpoint", |sb| {
        run_and_shots(sb);
        fs::remove_file(sb.path("run/best.safetensors")).unwrap();
        predict(["shots"])
    })
    .exits(2)
    .stderr(&[&["best.safetensors"], MISSING])
    .unchanged(&["shots", "run"]),
    Case::new("threshold_out_of_range", |sb| {
        run_and_shots(sb);
        predict(["--threshold", "1.5", "shots"])
    })
    .exits(2)
    .stderr(&[&["1.5"], &["threshold"]]),
    Case::new("batch_size_zero", |sb| {
        run_and_shots(sb);
        predict(["--batch-size", "0", "shots"])
    })
    .exits(2)
    .stderr(&[&["--batch-size"]]),
    Case::new("missing_run_option", |_| Invocation::new(["a.jpg"]))
        .exits(2)
        .stderr(&[&["--run"]]),
    Case::new("unknown_option", |_| {
        Invocation::new(["--run", "r", "--frobnicate", "a.jpg"])
    })
    .exits(2)
    .stderr(&[&["--frobnicate"]]),
    Case::new("help", |_| Invocation::new(["--help"])).output(&[&["Usage"], &["--explain"]]),
];

#[test]
fn hostile_inputs() {
    testkit::run_table(BIN, CASES);
}

fn non_utf8(bytes: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes).into()
}

/// `a.jpg` and `b.png` have a CSV row with a probability between 0 and 1.
fn good_ones_predicted(_: &Sandbox, out: &Output) -> Result<(), String> {
    for name in ["a.jpg", "b.png"] {
        let row = out
            .stdout
            .lines()
            .find(|l| l.contains(name))
            .ok_or_else(|| format!("no row for {name}"))?;
        let p: Option<f64> = row.split(',').nth(1).and_then(|f| f.trim().parse().ok());
        if !p.is_some_and(|p| (0.0..=1.0).contains(&p)) {
            return Err(format!("{name}: no probability in `{row}`"));
        }
    }
    Ok(())
}

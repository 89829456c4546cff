//! Hostile but fair inputs to `lesion-prep`: one row per case, run by
//! `testkit::run_table` (see `crates/testkit/src/hostile.rs` for what every row checks).
//! `LESION_HOSTILE_CASE=name cargo test -p lesion-prep --test hostile` runs one case.

use std::fs;
use std::path::Path;

use testkit::data::{self, bmp_bomb, edit_json, flip_byte, jpeg, png, truncated};
use testkit::{Case, Invocation, Output, Sandbox};

const BIN: &str = env!("CARGO_BIN_EXE_lesion-prep");

/// Small, fast preparation of whatever the case names.
const FAST: [&str; 5] = ["--size", "32", "--shard-size", "4", "-q"];

fn prep(input: &str, out: &str) -> Invocation {
    Invocation::new([input, "--out", out]).args(FAST)
}

/// Words that name "missing".
const MISSING: &[&str] = &["does not exist", "no such", "not found", "missing"];
/// Words that name "this output would destroy the input".
const IS_INPUT: &[&str] = &["input", "contains", "inside"];
/// Words that name "not an output of ours".
const NOT_OURS: &[&str] = &[
    "not a prepared",
    "not a lesion",
    "does not look",
    "not one of",
    "refus",
    "unrelated",
];
/// Words that name "a path outside the dataset folder".
const OUTSIDE: &[&str] = &[
    "outside",
    "escape",
    "leaves",
    "not inside",
    "not within",
    "absolute",
];

const CASES: &[Case] = &[
    // Defect 1: --force deletes whatever is at --out.
    Case::new("force_out_is_the_input", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "my-photos").arg("--force")
    })
    .exits(2)
    .stderr(&[&["my-photos"], IS_INPUT])
    .unchanged(&["my-photos"]),
    Case::new("force_out_is_an_ancestor_of_the_input", |sb| {
        sb.photos("parent/images");
        sb.write("parent/notes.txt", "field notes");
        prep("parent/images", "parent").arg("--force")
    })
    .exits(2)
    .stderr(&[&["parent"], IS_INPUT])
    .unchanged(&["parent"]),
    Case::new("force_out_is_a_class_folder_of_the_input", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "my-photos/Benign").arg("--force")
    })
    .exits(2)
    .stderr(&[&["Benign"], IS_INPUT])
    .unchanged(&["my-photos"]),
    Case::new("force_out_holds_unrelated_files", |sb| {
        sb.photos("my-photos");
        sb.write("documents/thesis.txt", "chapter 1");
        sb.write("documents/figures/fig1.png", png(0, 40));
        prep("my-photos", "documents").arg("--force")
    })
    .exits(2)
    .stderr(&[&["documents"], NOT_OURS])
    .unchanged(&["documents", "my-photos"]),
    Case::new("synth_force_onto_a_photo_folder", |sb| {
        sb.photos("my-photos");
        Invocation::new([
            "synth",
            "--out",
            "my-photos",
            "--per-class",
            "2",
            "--force",
            "-q",
        ])
    })
    .exits(2)
    .stderr(&[&["my-photos"], NOT_OURS])
    .unchanged(&["my-photos"]),
    Case::new("force_replaces_its_own_prepared_dataset", |sb| {
        sb.photos("my-photos");
        sb.prepared("prepared");
        prep("my-photos", "prepared").arg("--force")
    })
    .unchanged(&["my-photos"])
    .check(has_manifest),
    Case::new("existing_out_without_force", |sb| {
        sb.photos("my-photos");
        sb.prepared("prepared");
        prep("my-photos", "prepared")
    })
    .exits(2)
    .stderr(&[&["prepared"], &["already exists"], &["--force"]])
    .unchanged(&["my-photos", "prepared"]),
    // Defect 5: bad input exits 2.
    Case::new("verify_missing_folder", |_| {
        Invocation::new(["verify", "nowhere"])
    })
    .exits(2)
    .stderr(&[&["nowhere"], MISSING]),
    Case::new("verify_a_folder_that_is_not_prepared", |sb| {
        sb.photos("my-photos");
        Invocation::new(["verify", "my-photos"])
    })
    .exits(2)
    .stderr(&[&["my-photos"], &["manifest", "not a prepared"]])
    .unchanged(&["my-photos"]),
    Case::new("unreadable_class_folder", unreadable_class_folder)
        .exits(2)
        .stderr(&[&["Malignant"], &["permission", "cannot read", "unreadable"]]),
    // Defect 8: staging folders of dead processes are cleaned up.
    Case::new("stale_staging_folder_of_a_dead_process_is_removed", |sb| {
        sb.photos("my-photos");
        let stale = format!("prepared.partial-{}", data::dead_pid());
        sb.write(
            format!("{stale}/train/shard-v0-00000.safetensors"),
            vec![0u8; 4096],
        );
        prep("my-photos", "prepared")
    })
    .unchanged(&["my-photos"])
    .check(|sb, _| {
        manifest_ok(sb)?;
        let left = entries_containing(sb.root(), ".partial-");
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("stale staging folders survived: {left:?}")),
        }
    }),
    Case::new("staging_folder_of_a_live_process_is_kept", |sb| {
        sb.photos("my-photos");
        // This test process is alive: its staging folder may be in use.
        sb.write(format!("{}/manifest.json", live_partial()), "{}");
        prep("my-photos", "prepared")
    })
    .unchanged(&["my-photos"])
    .check(|sb, _| {
        let kept = sb.path(live_partial()).join("manifest.json");
        match fs::read(&kept) {
            Ok(b) if b == b"{}" => Ok(()),
            _ => Err(format!("{} was removed or changed", kept.display())),
        }
    }),
    // Defect 10: manifest shard paths stay inside the dataset.
    Case::new("verify_shard_path_that_climbs_out", |sb| {
        sb.prepared("prepared");
        set_first_shard_file(sb, "../../../../etc/passwd");
        Invocation::new(["verify", "prepared"])
    })
    .exits(2)
    .stderr(&[&["../../../../etc/passwd"], OUTSIDE])
    .unchanged(&["prepared"]),
    Case::new("verify_absolute_shard_path", |sb| {
        sb.prepared("prepared");
        set_first_shard_file(sb, "/etc/passwd");
        Invocation::new(["verify", "prepared"])
    })
    .exits(2)
    .stderr(&[&["/etc/passwd"], OUTSIDE])
    .unchanged(&["prepared"]),
    Case::new("verify_does_not_open_a_file_outside", |sb| {
        sb.prepared("prepared");
        // Opening a pipe with no writer blocks: a verify that opens it hangs.
        data::mkfifo(&sb.path("outside.fifo"));
        set_first_shard_file(sb, "../outside.fifo");
        Invocation::new(["verify", "prepared"])
    })
    .exits(2)
    .stderr(&[&["outside.fifo"], OUTSIDE])
    .unchanged(&["prepared"])
    .timeout_s(30),
    // Defect 11: names are stored losslessly.
    Case::new(
        "names_differing_in_a_non_utf8_byte_stay_two_entries",
        |sb| {
            sb.photos("my-photos");
            sb.write(
                non_utf8("my-photos/Benign/lesion", 0xFF, ".jpg"),
                jpeg(0, 30),
            );
            sb.write(
                non_utf8("my-photos/Benign/lesion", 0xFE, ".jpg"),
                jpeg(0, 31),
            );
            prep("my-photos", "prepared")
        },
    )
    .unchanged(&["my-photos"])
    .check(|sb, _| {
        let manifest = read_json(&sb.path("prepared/manifest.json"))?;
        let paths: Vec<String> = manifest["images"]
            .as_array()
            .ok_or("manifest has no images")?
            .iter()
            .map(|im| im["path"].to_string())
            .filter(|p| p.contains("Benign/lesion"))
            .collect();
        let distinct: std::collections::BTreeSet<&String> = paths.iter().collect();
        match (paths.len(), distinct.len()) {
            (2, 2) => Ok(()),
            _ => Err(format!("the two files are recorded as {paths:?}")),
        }
    }),
    // What already works, kept from regressing.
    Case::new("prepares_and_leaves_the_photos_untouched", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared")
    })
    .output(&[&["prepared"], &["rejected files: none"]])
    .unchanged(&["my-photos"])
    .check(has_manifest),
    Case::new("bad_files_are_reported_and_skipped", |sb| {
        sb.photos("my-photos");
        sb.write("my-photos/Benign/empty.jpg", []);
        sb.write("my-photos/Benign/cut.jpg", truncated(&jpeg(0, 20), 900));
        sb.write("my-photos/Malignant/notes.txt", "not a photo");
        let mut broken = png(1, 21);
        broken.truncate(60);
        sb.write("my-photos/Malignant/broken.png", broken);
        sb.write("my-photos/Malignant/bomb.bmp", bmp_bomb(50_000, 50_000));
        prep("my-photos", "prepared")
    })
    .output(&[
        &["empty.jpg"],
        &["empty file"],
        &["cut.jpg"],
        &["notes.txt"],
        &["not an image"],
        &["broken.png"],
        &["truncated"],
        &["bomb.bmp"],
        &["too large"],
    ])
    .unchanged(&["my-photos"])
    .check(has_manifest),
    Case::new("strict_stops_at_the_first_bad_file", |sb| {
        sb.photos("my-photos");
        sb.write("my-photos/Benign/cut.jpg", truncated(&jpeg(0, 20), 900));
        prep("my-photos", "prepared").arg("--strict")
    })
    .exits(2)
    .stderr(&[&["cut.jpg"], &["truncated"]])
    .unchanged(&["my-photos"])
    .check(|sb, _| {
        let left = entries_containing(sb.root(), "prepared");
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("a failed run left {left:?}")),
        }
    }),
    // Every folder is a class: a stray one too small to split says how to leave it out.
    Case::new("stray_folder_is_a_class_too_small_to_split", |sb| {
        sb.photos("my-photos");
        sb.write("my-photos/Unsorted/x.jpg", jpeg(0, 60));
        prep("my-photos", "prepared")
    })
    .exits(2)
    .stderr(&[&["Unsorted"], &["only 1 image"], &["--group FOLDER=-"]])
    .unchanged(&["my-photos"]),
    Case::new("stray_folder_skipped_with_group", |sb| {
        sb.photos("my-photos");
        sb.write("my-photos/Unsorted/x.jpg", jpeg(0, 60));
        prep("my-photos", "prepared").args(["--group", "unsorted=-"])
    })
    .output(&[&["skipped: Unsorted/"]])
    .unchanged(&["my-photos"])
    .check(|sb, _| {
        let m = read_json(&sb.path("prepared/manifest.json"))?;
        expect_classes(&m, &["Benign", "Malignant"])?;
        let skipped = &m["folders"][2];
        match (skipped["folder"].as_str(), skipped["class"].is_null()) {
            (Some("Unsorted"), true) => Ok(()),
            _ => Err(format!("folders recorded as {}", m["folders"])),
        }
    }),
    // Classes from the folders, grouped, reordered.
    Case::new("three_class_folders_are_three_classes", |sb| {
        data::write_class_photos(
            &sb.path("derm"),
            &[("nevus", 8), ("melanoma", 8), ("sk", 8)],
        );
        prep("derm", "prepared").args(["--malignant", "melanoma"])
    })
    .output(&[&["0 melanoma (malignant), 1 nevus, 2 sk"]])
    .unchanged(&["derm"])
    .check(|sb, _| {
        let m = read_json(&sb.path("prepared/manifest.json"))?;
        expect_classes(&m, &["melanoma", "nevus", "sk"])?;
        match m["malignant"].as_array().map(Vec::as_slice) {
            Some([v]) if v == "melanoma" => Ok(()),
            _ => Err(format!("malignant recorded as {}", m["malignant"])),
        }
    }),
    Case::new("group_merges_two_folders_into_one_class", |sb| {
        data::write_class_photos(&sb.path("derm"), &[("mel", 6), ("bcc", 6), ("nv", 8)]);
        prep("derm", "prepared").args(["--group", "mel=Malignant", "--group", "bcc=Malignant"])
    })
    .output(&[
        &["Malignant <- bcc/: 6, mel/: 6"],
        &["1 Malignant (positive)"],
    ])
    .unchanged(&["derm"])
    .check(|sb, _| {
        let m = read_json(&sb.path("prepared/manifest.json"))?;
        expect_classes(&m, &["nv", "Malignant"])
    }),
    Case::new("positive_makes_a_class_label_one", |sb| {
        data::write_class_photos(&sb.path("derm"), &[("melanoma", 8), ("nevus", 8)]);
        prep("derm", "prepared").args(["--positive", "melanoma"])
    })
    .output(&[&["0 nevus, 1 melanoma (positive)"]])
    .check(|sb, _| {
        let m = read_json(&sb.path("prepared/manifest.json"))?;
        expect_classes(&m, &["nevus", "melanoma"])
    }),
    Case::new("group_names_a_folder_that_does_not_exist", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared").args(["--group", "Malignent=-"])
    })
    .exits(2)
    .stderr(&[&["Malignent"], &["not a folder of the input"]])
    .unchanged(&["my-photos"])
    .check(nothing_prepared),
    Case::new("mapping_that_leaves_one_class", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared").args([
            "--group",
            "Benign=Lesion",
            "--group",
            "Malignant=Lesion",
        ])
    })
    .exits(2)
    .stderr(&[&["only class `Lesion`"], &["at least two"]])
    .unchanged(&["my-photos"])
    .check(nothing_prepared),
    Case::new("malformed_classes_file", |sb| {
        sb.photos("my-photos");
        sb.write(
            "groups.txt",
            "# two classes\nBenign = Benign\nMalignant: Malignant\n",
        );
        prep("my-photos", "prepared").args(["--classes", "groups.txt"])
    })
    .exits(2)
    .stderr(&[&["groups.txt"], &["line 3"], &["folder = class"]])
    .unchanged(&["my-photos", "groups.txt"])
    .check(nothing_prepared),
    Case::new("missing_classes_file", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared").args(["--classes", "groups.txt"])
    })
    .exits(2)
    .stderr(&[&["groups.txt"], MISSING])
    .check(nothing_prepared),
    Case::new("folders_differing_only_in_case", |sb| {
        sb.photos("my-photos");
        sb.write("my-photos/benign/x.jpg", jpeg(0, 60));
        prep("my-photos", "prepared")
    })
    .exits(2)
    .stderr(&[&["Benign/ and benign/"], &["case"]])
    .unchanged(&["my-photos"])
    .check(nothing_prepared),
    Case::new("malignant_with_two_classes", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared").args(["--malignant", "Malignant"])
    })
    .exits(2)
    .stderr(&[&["--malignant"], &["--positive"]])
    .check(nothing_prepared),
    Case::new("missing_input_folder", |_| prep("nowhere", "prepared"))
        .exits(2)
        .stderr(&[&["nowhere"], MISSING]),
    Case::new("input_without_class_folders", |sb| {
        sb.write("flat/a.jpg", jpeg(0, 1));
        sb.write("flat/b.jpg", jpeg(1, 1));
        prep("flat", "prepared")
    })
    .exits(2)
    .stderr(&[&["flat"], &["class folder"]])
    .unchanged(&["flat"]),
    Case::new("one_class_only", |sb| {
        sb.photos("my-photos");
        fs::remove_dir_all(sb.path("my-photos/Malignant")).unwrap();
        prep("my-photos", "prepared")
    })
    .exits(2)
    .stderr(&[&["my-photos"], &["found only"]])
    .unchanged(&["my-photos"]),
    Case::new("empty_class_folder", |sb| {
        sb.photos("my-photos");
        fs::remove_dir_all(sb.path("my-photos/Malignant")).unwrap();
        sb.mkdir("my-photos/Malignant");
        prep("my-photos", "prepared")
    })
    .exits(2)
    .stderr(&[&["Malignant"], &["empty"]])
    .unchanged(&["my-photos"]),
    Case::new("option_value_out_of_range", |sb| {
        sb.photos("my-photos");
        prep("my-photos", "prepared").args(["--val", "1.5"])
    })
    .exits(2)
    .stderr(&[&["--val"]])
    .unchanged(&["my-photos"]),
    Case::new("missing_out_option", |sb| {
        sb.photos("my-photos");
        Invocation::new(["my-photos"])
    })
    .exits(2)
    .stderr(&[&["--out"]]),
    Case::new("unknown_option", |_| {
        Invocation::new(["in", "--out", "out", "--frobnicate"])
    })
    .exits(2)
    .stderr(&[&["--frobnicate"]]),
    Case::new("help", |_| Invocation::new(["--help"])).output(&[&["Usage"], &["--out"]]),
    Case::new("verify_a_good_dataset", |sb| {
        sb.prepared("prepared");
        Invocation::new(["verify", "prepared"])
    })
    .output(&[&["OK"]])
    .unchanged(&["prepared"]),
    Case::new("verify_a_tampered_shard", |sb| {
        sb.prepared("prepared");
        flip_byte(&sb.path("prepared/val/shard-00000.safetensors"), -7);
        Invocation::new(["verify", "prepared"])
    })
    .exits(2)
    .stderr(&[&["shard-00000"], &["SHA-256"]])
    .unchanged(&["prepared"]),
    Case::new("verify_a_truncated_manifest", |sb| {
        sb.prepared("prepared");
        data::truncate_file(&sb.path("prepared/manifest.json"), 0.5);
        Invocation::new(["verify", "prepared"])
    })
    .exits(2)
    .stderr(&[&["manifest.json"], &["JSON", "truncated"]])
    .unchanged(&["prepared"]),
];

#[test]
fn hostile_inputs() {
    testkit::run_table(BIN, CASES);
}

fn unreadable_class_folder(sb: &Sandbox) -> Invocation {
    use std::os::unix::fs::PermissionsExt;
    if !data::permissions_apply(sb.root()) {
        return Invocation::skip("file permissions do not apply to this user (root)");
    }
    sb.photos("my-photos");
    let dir = sb.path("my-photos/Malignant");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o000)).unwrap();
    prep("my-photos", "prepared").keep(RestoreMode(dir))
}

/// Gives a folder its permissions back, so that the sandbox can be deleted.
struct RestoreMode(std::path::PathBuf);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o755));
    }
}

fn live_partial() -> String {
    format!("prepared.partial-{}", std::process::id())
}

fn non_utf8(prefix: &str, byte: u8, suffix: &str) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut name = prefix.as_bytes().to_vec();
    name.push(byte);
    name.extend_from_slice(suffix.as_bytes());
    std::ffi::OsString::from_vec(name).into()
}

fn set_first_shard_file(sb: &Sandbox, file: &str) {
    edit_json(&sb.path("prepared/manifest.json"), |m| {
        m["shards"][0]["file"] = file.into();
    });
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The manifest lists exactly `want` as its classes.
fn expect_classes(manifest: &serde_json::Value, want: &[&str]) -> Result<(), String> {
    let got: Vec<&str> = manifest["classes"]
        .as_array()
        .ok_or("manifest has no classes")?
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    match got == want {
        true => Ok(()),
        false => Err(format!("classes {got:?}, expected {want:?}")),
    }
}

/// A refused run leaves no output and no staging folder.
fn nothing_prepared(sb: &Sandbox, _: &Output) -> Result<(), String> {
    let left = entries_containing(sb.root(), "prepared");
    match left.is_empty() {
        true => Ok(()),
        false => Err(format!("a refused run left {left:?}")),
    }
}

fn has_manifest(sb: &Sandbox, _: &Output) -> Result<(), String> {
    manifest_ok(sb)
}

fn manifest_ok(sb: &Sandbox) -> Result<(), String> {
    let m = read_json(&sb.path("prepared/manifest.json"))?;
    match m["format"].as_str() {
        Some("lesion-prepared-dataset") => Ok(()),
        other => Err(format!("prepared/manifest.json has format {other:?}")),
    }
}

/// Names of the entries of `dir` that contain `part`.
fn entries_containing(dir: &Path, part: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

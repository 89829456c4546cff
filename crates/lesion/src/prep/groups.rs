//! `--groups FILE.csv`: which images belong together (photos of one lesion, lesions of one
//! patient), so that the split keeps each group in one split.
//!
//! The file is CSV with a header row (RFC 4180 quoting, `\n` or `\r\n` line ends, an
//! optional UTF-8 byte-order mark, surrounding spaces of fields ignored). Two columns are
//! read, named exactly as in the header:
//! - the group column (`--group-column`, default `lesion_id`): any text; rows with the same
//!   text are one group. An empty cell gives its image no group.
//! - the image column (`--image-column`; default: the first of [`IMAGE_COLUMNS`] the header
//!   has). It names an image by its path relative to the input folder, or a trailing part
//!   of it (down to the file name), each with or without the file's extension:
//!   `Benign/ISIC_0012127.jpg`, `ISIC_0012127.jpg` and `ISIC_0012127` all name
//!   `Benign/ISIC_0012127.jpg`. A longer path whose trailing part is an image's whole
//!   relative path names that image too (`/data/isic/Benign/ISIC_0012127.jpg`). Backslashes
//!   count as `/`, and a leading `./` is dropped. Names are compared exactly (case
//!   included). A name that fits two images is an error naming both: write more of
//!   the path.
//!
//! Only accepted images are matched (rejected files need no group). An image named by two
//! rows with different groups is an error; an accepted image with no group is an error
//! listing the first few, unless `--ungrouped ok`, which makes each such image its own
//! group. Rows naming no accepted image are counted in a warning. A group whose images are
//! of two classes is an error naming the group and one image of each class.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::fsutil;
use crate::manifest::{GroupRecord, ImageEntry};
use crate::{Error, Result};

/// Default of `--group-column` (HAM10000's and the ISIC archive's lesion column).
pub const DEFAULT_GROUP_COLUMN: &str = "lesion_id";

/// The image columns tried, in order, when `--image-column` is not given (HAM10000:
/// `image_id`; ISIC 2019/2020: `image`, `image_name`; ISIC archive: `isic_id`).
pub const IMAGE_COLUMNS: [&str; 6] = [
    "image_id",
    "image",
    "image_name",
    "isic_id",
    "file",
    "filename",
];

/// How many missing images, unmatched rows, ... an error or warning spells out.
const SHOWN: usize = 5;

/// The grouping options of prep (`--groups`, `--group-column`, `--image-column`,
/// `--ungrouped ok`).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    /// The CSV file.
    pub file: PathBuf,
    /// Header of the group column.
    pub group_column: String,
    /// Header of the image column; `None`: the first of [`IMAGE_COLUMNS`] present.
    pub image_column: Option<String>,
    /// Images the file gives no group become groups of their own instead of an error.
    pub ungrouped_ok: bool,
}

impl GroupOptions {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            group_column: DEFAULT_GROUP_COLUMN.to_string(),
            image_column: None,
            ungrouped_ok: false,
        }
    }
}

/// One data row of the file: its line number (1-based, as an editor shows it), the image
/// cell and the group cell, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) line: u64,
    pub(super) image: String,
    pub(super) group: String,
}

/// The two columns of the groups file.
#[derive(Debug, Clone)]
pub(super) struct GroupTable {
    pub(super) path: PathBuf,
    pub(super) image_column: String,
    pub(super) group_column: String,
    pub(super) rows: Vec<Row>,
}

fn bad_csv(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads the groups file: checks its header names both columns and that it has rows.
pub(super) fn read_table(opts: &GroupOptions) -> Result<GroupTable> {
    let path = &opts.file;
    let bytes = fs::read(path).with_path(path)?;
    parse_table(path, &bytes, opts)
}

fn parse_table(path: &Path, bytes: &[u8], opts: &GroupOptions) -> Result<GroupTable> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(bad_csv(
            path,
            "empty; expected a CSV header row naming an image column and a group column",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let csv_error = |e: csv::Error| bad_csv(path, describe_csv_error(bytes, &e));
    let header: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_string)
        .collect();
    let columns = || {
        header
            .iter()
            .map(|h| format!("`{h}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let find = |name: &str| -> Result<Option<usize>> {
        let hits: Vec<usize> = (0..header.len()).filter(|&i| header[i] == name).collect();
        match hits.as_slice() {
            [] => Ok(None),
            [i] => Ok(Some(*i)),
            _ => Err(bad_csv(
                path,
                format!("the header names column `{name}` {} times", hits.len()),
            )),
        }
    };
    let group_at = find(&opts.group_column)?.ok_or_else(|| {
        bad_csv(
            path,
            format!(
                "no column `{}` (the header has {}); name the group column with \
                 --group-column",
                opts.group_column,
                columns()
            ),
        )
    })?;
    let (image_column, image_at) = match &opts.image_column {
        Some(name) => {
            let at = find(name)?.ok_or_else(|| {
                bad_csv(
                    path,
                    format!("no column `{name}` (the header has {})", columns()),
                )
            })?;
            (name.clone(), at)
        }
        None => {
            let mut found = None;
            for name in IMAGE_COLUMNS {
                if let Some(at) = find(name)? {
                    found = Some((name.to_string(), at));
                    break;
                }
            }
            found.ok_or_else(|| {
                bad_csv(
                    path,
                    format!(
                        "no image column: none of {} (the header has {}); name it with \
                         --image-column",
                        IMAGE_COLUMNS
                            .iter()
                            .map(|c| format!("`{c}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        columns()
                    ),
                )
            })?
        }
    };
    if image_at == group_at {
        return Err(bad_csv(
            path,
            format!("the image column and the group column are both `{image_column}`"),
        ));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map_or(0, |p| line_at(bytes, p.byte()));
        rows.push(Row {
            line,
            image: record.get(image_at).unwrap_or_default().to_string(),
            group: record.get(group_at).unwrap_or_default().to_string(),
        });
    }
    if rows.is_empty() {
        return Err(bad_csv(path, "has a header but no rows"));
    }
    Ok(GroupTable {
        path: path.to_path_buf(),
        image_column,
        group_column: opts.group_column.clone(),
        rows,
    })
}

/// The line (1-based) of the record the reader places at byte `byte`. The reader places a
/// record where the previous one ended (before any blank lines, and in `\r\n` files on
/// the `\n`), and its own line count misses `\r\n` ends, so the line is counted here: line
/// ends (`\n`, `\r\n` or a lone `\r`) before the record's first byte.
fn line_at(bytes: &[u8], byte: u64) -> u64 {
    let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(bytes.len());
    while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
        start += 1;
    }
    let ends = bytes[..start]
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    1 + ends as u64
}

/// A CSV reader error in the file's own line numbers.
fn describe_csv_error(bytes: &[u8], e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos: Some(pos),
            expected_len,
            len,
        } => format!(
            "line {} has {len} field(s), the header has {expected_len}",
            line_at(bytes, pos.byte())
        ),
        csv::ErrorKind::Utf8 { pos: Some(pos), .. } => {
            format!("line {} is not UTF-8 text", line_at(bytes, pos.byte()))
        }
        _ => format!("not readable as CSV: {e}"),
    }
}

/// What [`attach`] found, for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Attached {
    /// Accepted images the file gave no group (each its own group).
    pub(super) ungrouped: usize,
    /// Remarks for the summary (rows naming no image, ungrouped images).
    pub(super) warnings: Vec<String>,
}

/// `Benign/x.jpg` -> `Benign/x`; a name without an extension (or a dot file) is kept.
fn without_extension(path: &str) -> &str {
    let name_at = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_at..].rfind('.') {
        Some(dot) if dot > 0 => &path[..name_at + dot],
        _ => path,
    }
}

/// Finds images by the names a groups file may use (see the module docs).
struct NameIndex {
    /// Every trailing part of every image path (down to the file name), with and without
    /// the extension.
    tails: HashMap<String, Vec<usize>>,
    /// Every whole image path, with and without the extension.
    whole: HashMap<String, Vec<usize>>,
}

impl NameIndex {
    fn new(paths: &[&str]) -> Self {
        let mut tails: HashMap<String, Vec<usize>> = HashMap::new();
        let mut whole: HashMap<String, Vec<usize>> = HashMap::new();
        let add = |map: &mut HashMap<String, Vec<usize>>, key: &str, i: usize| {
            let entry = map.entry(key.to_string()).or_default();
            if entry.last() != Some(&i) {
                entry.push(i);
            }
        };
        for (i, path) in paths.iter().enumerate() {
            for form in [*path, without_extension(path)] {
                add(&mut whole, form, i);
                let mut start = 0;
                loop {
                    add(&mut tails, &form[start..], i);
                    match form[start..].find('/') {
                        Some(slash) => start += slash + 1,
                        None => break,
                    }
                }
            }
        }
        Self { tails, whole }
    }

    /// The images `name` fits: those whose path ends with it, else the image whose whole
    /// path is the longest trailing part of it.
    fn lookup(&self, name: &str) -> &[usize] {
        if let Some(hits) = self.tails.get(name) {
            return hits;
        }
        let mut start = 0;
        while let Some(slash) = name[start..].find('/') {
            start += slash + 1;
            if let Some(hits) = self.whole.get(&name[start..]) {
                return hits;
            }
        }
        &[]
    }
}

/// A name as written in the file, brought to the manifest's `/`-separated form.
fn normalise(name: &str) -> String {
    let mut name = name.replace('\\', "/");
    while let Some(rest) = name.strip_prefix("./") {
        name = rest.to_string();
    }
    name
}

/// `a, b, c, d, e and 7 more`.
fn first_few(items: &[String]) -> String {
    let shown = items[..items.len().min(SHOWN)].join(", ");
    match items.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Sets [`ImageEntry::group`] of every accepted image from the table (see the module
/// docs for the matching rules and errors). `classes` names the labels, for errors.
pub(super) fn attach(
    table: &GroupTable,
    opts: &GroupOptions,
    images: &mut [ImageEntry],
    classes: &[String],
) -> Result<Attached> {
    let path = table.path.as_path();
    let paths: Vec<&str> = images.iter().map(|im| im.path.as_str()).collect();
    let index = NameIndex::new(&paths);
    // Per image: its group and the line that gave it.
    let mut given: Vec<Option<(&str, u64)>> = vec![None; images.len()];
    let mut unmatched: Vec<String> = Vec::new();
    for row in &table.rows {
        let name = normalise(&row.image);
        let hits = if name.is_empty() {
            &[][..]
        } else {
            index.lookup(&name)
        };
        match hits {
            [] => unmatched.push(format!("line {} `{}`", row.line, row.image)),
            [i] => {
                if row.group.is_empty() {
                    continue;
                }
                match given[*i] {
                    Some((g, line)) if g != row.group => {
                        return Err(bad_csv(
                            path,
                            format!(
                                "image {} is given two groups: `{g}` (line {line}) and `{}` \
                                 (line {})",
                                images[*i].path, row.group, row.line
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => given[*i] = Some((row.group.as_str(), row.line)),
                }
            }
            [a, b, ..] => {
                return Err(bad_csv(
                    path,
                    format!(
                        "line {}: `{}` names more than one image: {} and {}; write more of \
                         the path (relative to the input folder) in column `{}`",
                        row.line, row.image, images[*a].path, images[*b].path, table.image_column
                    ),
                ));
            }
        }
    }

    let missing: Vec<String> = images
        .iter()
        .zip(&given)
        .filter(|(_, g)| g.is_none())
        .map(|(im, _)| im.path.clone())
        .collect();
    if !missing.is_empty() && !opts.ungrouped_ok {
        return Err(bad_csv(
            path,
            format!(
                "{} of {} images have no group in it (not listed, or an empty `{}`): {}; \
                 list them, or pass --ungrouped ok to make each its own group",
                missing.len(),
                images.len(),
                table.group_column,
                first_few(&missing)
            ),
        ));
    }

    // One class per group.
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, g) in given.iter().enumerate() {
        let Some((group, _)) = *g else { continue };
        let first = *first_of.entry(group).or_insert(i);
        if images[first].class != images[i].class {
            let class = |k: usize| {
                let c = images[k].class as usize;
                classes.get(c).cloned().unwrap_or_else(|| c.to_string())
            };
            return Err(bad_csv(
                path,
                format!(
                    "group `{group}` holds images of two classes: {} ({}) and {} ({}); a \
                     group must be of one class",
                    images[first].path,
                    class(first),
                    images[i].path,
                    class(i)
                ),
            ));
        }
    }

    let mut out = Attached {
        ungrouped: missing.len(),
        warnings: Vec::new(),
    };
    if !unmatched.is_empty() {
        out.warnings.push(format!(
            "{} row(s) of {} name no accepted image of the input: {}",
            unmatched.len(),
            path.display(),
            first_few(&unmatched)
        ));
    }
    if !missing.is_empty() {
        out.warnings.push(format!(
            "{} image(s) have no group in {} and are each their own group (--ungrouped ok): {}",
            missing.len(),
            path.display(),
            first_few(&missing)
        ));
    }
    for (im, g) in images.iter_mut().zip(given) {
        im.group = g.map(|(group, _)| group.to_string());
    }
    Ok(out)
}

/// The grouping options as the manifest records them.
pub(super) fn record(table: &GroupTable, opts: &GroupOptions) -> GroupRecord {
    GroupRecord {
        file: fsutil::path_to_string(&opts.file),
        group_column: table.group_column.clone(),
        image_column: table.image_column.clone(),
        ungrouped_ok: opts.ungrouped_ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Split;

    fn opts() -> GroupOptions {
        GroupOptions::new("groups.csv")
    }

    fn parse(text: &str, opts: &GroupOptions) -> Result<GroupTable> {
        parse_table(Path::new("groups.csv"), text.as_bytes(), opts)
    }

    fn reason(e: Error) -> String {
        match e {
            Error::BadDataset { path, reason } => {
                assert_eq!(path, Path::new("groups.csv"));
                reason
            }
            other => panic!("{other:?}"),
        }
    }

    fn image(path: &str, class: u8) -> ImageEntry {
        ImageEntry {
            path: path.to_string(),
            class,
            split: Split::Train,
            sha256: String::new(),
            width: 1,
            height: 1,
            augmentations: None,
            group: None,
            fold: None,
        }
    }

    fn rows(t: &GroupTable) -> Vec<(u64, &str, &str)> {
        t.rows
            .iter()
            .map(|r| (r.line, r.image.as_str(), r.group.as_str()))
            .collect()
    }

    #[test]
    fn bom_crlf_quotes_and_spaces() {
        let text = "\u{feff}lesion_id,image_id,dx\r\nHAM_1,ISIC_1,nv\r\n\"HAM, 2\", ISIC_2 ,\"m\"\"el\"\r\nHAM_1,\"ISIC\n3\",nv\r\n";
        let t = parse(text, &opts()).unwrap();
        assert_eq!(t.image_column, "image_id");
        assert_eq!(
            rows(&t),
            [
                (2, "ISIC_1", "HAM_1"),
                (3, "ISIC_2", "HAM, 2"),
                (4, "ISIC\n3", "HAM_1")
            ]
        );
    }

    #[test]
    fn line_numbers_with_lf_crlf_bom_and_blank_lines() {
        for text in [
            "image,lesion_id\na,1\n\nb,2\n",
            "image,lesion_id\r\na,1\r\n\r\nb,2\r\n",
            "\u{feff}image,lesion_id\r\na,1\r\n\r\nb,2",
            "image,lesion_id\ra,1\r\rb,2\r",
        ] {
            let t = parse(text, &opts()).unwrap();
            assert_eq!(rows(&t), [(2, "a", "1"), (4, "b", "2")], "{text:?}");
        }
    }

    #[test]
    fn image_column_default_order_and_override() {
        let t = parse("file,image,lesion_id\na,b,g\n", &opts()).unwrap();
        assert_eq!((t.image_column.as_str(), rows(&t)[0].1), ("image", "b"));
        let mut o = opts();
        o.image_column = Some("file".into());
        o.group_column = "image".into();
        let t = parse("file,image,lesion_id\na,b,g\n", &o).unwrap();
        assert_eq!(rows(&t), [(2, "a", "b")]);
    }

    #[test]
    fn header_errors() {
        let r = reason(parse("image_id,patient\nx,1\n", &opts()).unwrap_err());
        assert_eq!(
            r,
            "no column `lesion_id` (the header has `image_id`, `patient`); name the group \
             column with --group-column"
        );
        let r = reason(parse("name,lesion_id\nx,1\n", &opts()).unwrap_err());
        assert!(r.starts_with("no image column: none of `image_id`"), "{r}");
        assert!(r.contains("--image-column"), "{r}");
        let mut o = opts();
        o.image_column = Some("path".into());
        let r = reason(parse("image,lesion_id\nx,1\n", &o).unwrap_err());
        assert!(r.starts_with("no column `path`"), "{r}");
        let r = reason(parse("image,lesion_id,lesion_id\nx,1,2\n", &opts()).unwrap_err());
        assert_eq!(r, "the header names column `lesion_id` 2 times");
        assert_eq!(
            reason(parse("", &opts()).unwrap_err()),
            "empty; expected a CSV header row naming an image column and a group column"
        );
        assert_eq!(
            reason(parse("\u{feff}image,lesion_id\r\n", &opts()).unwrap_err()),
            "has a header but no rows"
        );
        assert_eq!(
            reason(parse("image,lesion_id\nx,1\ny\n", &opts()).unwrap_err()),
            "line 3 has 1 field(s), the header has 2"
        );
        assert_eq!(
            reason(parse("image,lesion_id\r\nx,1\r\n\r\ny,2,3\r\n", &opts()).unwrap_err()),
            "line 4 has 3 field(s), the header has 2"
        );
        let bytes = b"image,lesion_id\r\nx,1\r\n\xff,1\r\n";
        assert_eq!(
            reason(parse_table(Path::new("groups.csv"), bytes, &opts()).unwrap_err()),
            "line 3 is not UTF-8 text"
        );
    }

    fn table(text: &str) -> GroupTable {
        parse(text, &opts()).unwrap()
    }

    fn groups_of(images: &[ImageEntry]) -> Vec<Option<&str>> {
        images.iter().map(|im| im.group.as_deref()).collect()
    }

    #[test]
    fn names_match_paths_stems_and_longer_paths() {
        let mut images = vec![
            image("Benign/ISIC_1.jpg", 0),
            image("Benign/sub/ISIC_2.png", 0),
            image("Malignant/ISIC_3.jpeg", 1),
            image("Malignant/x.y.jpg", 1),
        ];
        let t = table(
            "image,lesion_id\n\
             ISIC_1,a\n\
             sub/ISIC_2.png,a\n\
             C:\\data\\isic\\Malignant\\ISIC_3,b\n\
             ./Malignant/x.y,c\n\
             ISIC_9,z\n\
             ,z\n",
        );
        let got = attach(&t, &opts(), &mut images, &[]).unwrap();
        assert_eq!(
            groups_of(&images),
            [Some("a"), Some("a"), Some("b"), Some("c")]
        );
        assert_eq!(got.ungrouped, 0);
        assert_eq!(
            got.warnings,
            [
                "2 row(s) of groups.csv name no accepted image of the input: line 6 `ISIC_9`, \
              line 7 ``"
            ]
        );
    }

    #[test]
    fn a_longer_path_must_end_in_a_whole_image_path() {
        // `other/Malignant/x.jpg` is not `Benign/x.jpg`, though both end in `x.jpg`.
        let mut images = vec![image("Benign/x.jpg", 0)];
        let t = table("image,lesion_id\nother/Malignant/x.jpg,a\nBenign/x.jpg,a\n");
        let got = attach(&t, &opts(), &mut images, &[]).unwrap();
        assert_eq!(groups_of(&images), [Some("a")]);
        assert!(got.warnings[0].contains("line 2 `other/Malignant/x.jpg`"));
    }

    #[test]
    fn ambiguous_names_are_errors_naming_both_files() {
        let mut images = vec![
            image("Benign/ISIC_1.jpg", 0),
            image("Malignant/ISIC_1.png", 1),
        ];
        let t = table("image,lesion_id\nISIC_1,a\n");
        let r = reason(attach(&t, &opts(), &mut images, &[]).unwrap_err());
        assert_eq!(
            r,
            "line 2: `ISIC_1` names more than one image: Benign/ISIC_1.jpg and \
             Malignant/ISIC_1.png; write more of the path (relative to the input folder) \
             in column `image`"
        );
        // The whole path is unambiguous.
        let t = table("image,lesion_id\nBenign/ISIC_1,a\nMalignant/ISIC_1.png,b\n");
        attach(&t, &opts(), &mut images, &[]).unwrap();
        assert_eq!(groups_of(&images), [Some("a"), Some("b")]);
    }

    #[test]
    fn two_groups_for_one_image_is_an_error_one_repeated_is_not() {
        let mut images = vec![image("B/x.jpg", 0)];
        let t = table("image,lesion_id\nx,a\nx.jpg,a\nB/x,b\n");
        let r = reason(attach(&t, &opts(), &mut images, &[]).unwrap_err());
        assert_eq!(
            r,
            "image B/x.jpg is given two groups: `a` (line 2) and `b` (line 4)"
        );
    }

    #[test]
    fn missing_images_are_listed_unless_ungrouped_ok() {
        let mut images: Vec<ImageEntry> = (0..9).map(|i| image(&format!("B/{i}.jpg"), 0)).collect();
        // 0 and 1 grouped, 2 has an empty group, the others are not listed.
        let t = table("image,lesion_id\n0,g\n1,g\n2,\n");
        let r = reason(attach(&t, &opts(), &mut images, &[]).unwrap_err());
        assert_eq!(
            r,
            "7 of 9 images have no group in it (not listed, or an empty `lesion_id`): \
             B/2.jpg, B/3.jpg, B/4.jpg, B/5.jpg, B/6.jpg and 2 more; list them, or pass \
             --ungrouped ok to make each its own group"
        );
        let mut o = opts();
        o.ungrouped_ok = true;
        let got = attach(&t, &o, &mut images, &[]).unwrap();
        assert_eq!(got.ungrouped, 7);
        assert_eq!(&groups_of(&images)[..3], [Some("g"), Some("g"), None]);
        assert_eq!(got.warnings.len(), 1);
        assert!(got.warnings[0].starts_with("7 image(s) have no group in groups.csv"));
    }

    #[test]
    fn a_group_of_two_classes_is_an_error_naming_it_and_both_files() {
        let mut images = vec![
            image("Benign/a.jpg", 0),
            image("Benign/b.jpg", 0),
            image("Malignant/c.jpg", 1),
        ];
        let t = table("image,lesion_id\na,L1\nb,L2\nc,L2\n");
        let classes = ["Benign".to_string(), "Malignant".to_string()];
        let r = reason(attach(&t, &opts(), &mut images, &classes).unwrap_err());
        assert_eq!(
            r,
            "group `L2` holds images of two classes: Benign/b.jpg (Benign) and \
             Malignant/c.jpg (Malignant); a group must be of one class"
        );
    }

    #[test]
    fn extensions_come_off_the_file_name_only() {
        assert_eq!(without_extension("a.b/c"), "a.b/c");
        assert_eq!(without_extension("a/c.jpg"), "a/c");
        assert_eq!(without_extension("a/.hidden"), "a/.hidden");
        assert_eq!(without_extension("x.tar.gz"), "x.tar");
    }
}

//! The class mapping of `prep` (`--classes FILE`, `--group FOLDER=CLASS`): which class each
//! folder of the input is filed under, or that it is skipped.
//!
//! File format (UTF-8 text), one mapping per line:
//!
//! ```text
//! # HAM10000 as benign / malignant; vascular lesions left out
//! mel   = Malignant
//! bcc   = Malignant
//! akiec = Malignant
//! nv    = Benign
//! bkl   = Benign
//! df    = Benign
//! vasc  = -
//! ```
//!
//! - `folder = class`, split at the first `=`; spaces around either side are ignored;
//! - class `-` skips the folder (it is not read, and is reported and recorded as skipped);
//! - blank lines and lines whose first non-blank character is `#` are ignored;
//! - folder names are matched to the input's folders ignoring ASCII case; a name that
//!   matches no folder is an error (a typo guard), and so is a folder mapped twice;
//! - folders the mapping does not mention keep their own name as their class.
//!
//! `--group FOLDER=CLASS` adds one such line; the file's lines come first.

use std::fs;
use std::path::Path;

use crate::error::IoContext;
use crate::{Error, Result};

/// The class that skips a folder.
pub const SKIP: &str = "-";

/// One `folder = class` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMapEntry {
    /// Folder name as given (matched to the input's folders ignoring ASCII case).
    pub folder: String,
    /// The class, `None` to skip the folder.
    pub class: Option<String>,
    /// Where it was given, for messages: `--group mel=Malignant` or `map.txt line 3`.
    pub origin: String,
}

/// A mapping from folder names to classes, in the order given. Built by
/// [`ClassMap::parse_file`], [`ClassMap::parse_text`] and [`ClassMap::push_group`], which
/// refuse malformed lines and folders mapped twice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassMap {
    entries: Vec<ClassMapEntry>,
}

impl ClassMap {
    pub fn entries(&self) -> &[ClassMapEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads a mapping file (format in the module docs). Errors name the file, and for a
    /// malformed line its number.
    pub fn parse_file(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).with_path(path)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            bad_file(
                path,
                format!(
                    "not UTF-8 text (invalid byte at offset {}); a class mapping is lines of \
             `folder = class`",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        let mut map = ClassMap::default();
        map.parse_text(&text, path)?;
        Ok(map)
    }

    /// Adds the lines of a mapping file's text; `path` names it in messages.
    pub fn parse_text(&mut self, text: &str, path: &Path) -> Result<()> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (k, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = format!("{} line {}", path.display(), k + 1);
            let entry = parse_entry(line, origin).map_err(|why| {
                bad_file(
                    path,
                    format!(
                        "line {} (`{}`): {why}; each line is `folder = class` (class `-` \
                         skips the folder), `#` starts a comment line",
                        k + 1,
                        line.escape_debug()
                    ),
                )
            })?;
            self.push(entry)?;
        }
        Ok(())
    }

    /// Adds one `--group FOLDER=CLASS` (`CLASS` `-` skips the folder).
    pub fn push_group(&mut self, spec: &str) -> Result<()> {
        let entry = parse_entry(spec.trim(), format!("--group {spec}")).map_err(|why| {
            Error::InvalidOption(format!(
                "--group `{}`: {why}; expected FOLDER=CLASS (CLASS `-` skips the folder)",
                spec.escape_debug()
            ))
        })?;
        self.push(entry)
    }

    fn push(&mut self, entry: ClassMapEntry) -> Result<()> {
        if let Some(prev) = self
            .entries
            .iter()
            .find(|e| e.folder.eq_ignore_ascii_case(&entry.folder))
        {
            return Err(Error::InvalidOption(format!(
                "folder `{}` is mapped twice: by {} and by {}",
                entry.folder, prev.origin, entry.origin
            )));
        }
        self.entries.push(entry);
        Ok(())
    }
}

fn bad_file(path: &Path, reason: String) -> Error {
    Error::BadDataset {
        path: path.to_path_buf(),
        reason,
    }
}

/// `folder = class` without surrounding blanks; the error says what is wrong.
fn parse_entry(line: &str, origin: String) -> std::result::Result<ClassMapEntry, String> {
    let Some((folder, class)) = line.split_once('=') else {
        return Err("no `=`".into());
    };
    let (folder, class) = (folder.trim(), class.trim());
    if folder.is_empty() {
        return Err("no folder name before `=`".into());
    }
    if class.is_empty() {
        return Err("no class after `=`".into());
    }
    if folder.contains(['/', '\\']) {
        return Err(format!(
            "`{folder}` is a path, not the name of a folder inside the input folder"
        ));
    }
    if class
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        return Err("a class name cannot hold a slash, backslash or control character".into());
    }
    Ok(ClassMapEntry {
        folder: folder.to_string(),
        class: (class != SKIP).then(|| class.to_string()),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(folder: &str, class: Option<&str>, origin: &str) -> ClassMapEntry {
        ClassMapEntry {
            folder: folder.into(),
            class: class.map(Into::into),
            origin: origin.into(),
        }
    }

    #[test]
    fn file_lines_comments_blanks_and_skips() {
        let mut map = ClassMap::default();
        let text = "\u{feff}# HAM10000\n\nmel = Malignant\r\n  bcc=Malignant  \n\t# vascular\n\
                    vasc = -\nnv = Benign keratosis = odd\n";
        map.parse_text(text, Path::new("map.txt")).unwrap();
        assert_eq!(
            map.entries(),
            [
                entry("mel", Some("Malignant"), "map.txt line 3"),
                entry("bcc", Some("Malignant"), "map.txt line 4"),
                entry("vasc", None, "map.txt line 6"),
                entry("nv", Some("Benign keratosis = odd"), "map.txt line 7"),
            ]
        );
        map.push_group(" df = Benign ").unwrap();
        assert_eq!(
            map.entries()[4],
            entry("df", Some("Benign"), "--group  df = Benign ")
        );
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        for (text, line, why) in [
            ("mel = Malignant\nbcc Malignant\n", 2, "no `=`"),
            ("# c\n\n = Benign\n", 3, "no folder name before `=`"),
            ("nv =\n", 1, "no class after `=`"),
            ("a/b = x\n", 1, "`a/b` is a path"),
            (
                "mel = Malignant/Melanoma\n",
                1,
                "a class name cannot hold a slash",
            ),
        ] {
            let err = ClassMap::default()
                .parse_text(text, Path::new("dir/map.txt"))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("dir/map.txt: line {line} (`"))
                    && msg.contains(&format!("`): {why}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_folder_mapped_twice_is_refused_ignoring_case() {
        let mut map = ClassMap::default();
        map.parse_text("mel = Malignant\n", Path::new("m.txt"))
            .unwrap();
        let err = map.push_group("MEL=-").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option: folder `MEL` is mapped twice: by m.txt line 1 and by --group MEL=-"
        );
        let err = ClassMap::default().push_group("melanoma").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option: --group `melanoma`: no `=`; expected FOLDER=CLASS (CLASS `-` \
             skips the folder)"
        );
    }

    #[test]
    fn files_that_cannot_be_read_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none.txt");
        let err = ClassMap::parse_file(&missing).unwrap_err();
        assert!(err.to_string().starts_with(&missing.display().to_string()));
        assert_eq!(err.exit_code(), 2);
        let binary = tmp.path().join("map.bin");
        fs::write(&binary, b"mel = Mal\xffignant\n").unwrap();
        let err = ClassMap::parse_file(&binary).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not UTF-8 text (invalid byte at offset 9); a class mapping is lines of \
                 `folder = class`",
                binary.display()
            )
        );
    }
}

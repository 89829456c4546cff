//! Pass 0 of `prep`: finds the class folders of the input folder (matched to
//! [`CLASS_NAMES`] case-insensitively) and lists every file below them, sorted by path, so
//! that the processing order and therefore every source index is independent of the file
//! system's listing order. Hidden entries are skipped and counted; loose files and
//! unrecognised folders become warnings. Names become the manifest's text through
//! [`fsutil::os_str_to_string`], so names that are not UTF-8 stay distinct.

use std::fs;
use std::path::{Path, PathBuf};

use super::{bad_dataset, CLASS_NAMES};
use crate::error::IoContext;
use crate::fsutil;
use crate::Result;

/// One input file, in processing order.
#[derive(Debug, Clone)]
pub(super) struct InputFile {
    pub(super) abs: PathBuf,
    /// Relative to the input folder, `/`-separated, each name as
    /// [`fsutil::os_str_to_string`] writes it.
    pub(super) rel: String,
    pub(super) class: u8,
}

#[derive(Debug)]
pub(super) struct Discovery {
    pub(super) files: Vec<InputFile>,
    pub(super) class_dirs: Vec<PathBuf>,
    pub(super) warnings: Vec<String>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)
        .with_path(dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .with_path(dir)?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Lists every file below `dir` (recursively, hidden entries skipped), sorted by path.
fn list_files(
    dir: &Path,
    rel: &str,
    class: u8,
    depth: usize,
    out: &mut Vec<InputFile>,
    hidden: &mut usize,
) -> Result<()> {
    for e in sorted_entries(dir)? {
        let name = fsutil::os_str_to_string(&e.file_name());
        let path = e.path();
        if name.starts_with('.') {
            *hidden += 1;
            continue;
        }
        let child_rel = format!("{rel}/{name}");
        // An entry that cannot be examined (e.g. a dangling link) is passed on as a file,
        // so that reading it fails and it is reported rather than silently skipped.
        let Ok(meta) = fs::metadata(&path) else {
            out.push(InputFile {
                abs: path,
                rel: child_rel,
                class,
            });
            continue;
        };
        if meta.is_dir() {
            // A symlink loop would otherwise recurse forever.
            if depth >= 16 {
                return Err(bad_dataset(&path, "folders nested too deeply"));
            }
            list_files(&path, &child_rel, class, depth + 1, out, hidden)?;
        } else if meta.is_file() {
            out.push(InputFile {
                abs: path,
                rel: child_rel,
                class,
            });
        }
    }
    Ok(())
}

/// Pass 0: finds the class folders and lists their files.
pub(super) fn discover(input: &Path) -> Result<Discovery> {
    match fs::metadata(input) {
        Err(_) => return Err(bad_dataset(input, "input folder does not exist")),
        Ok(m) if !m.is_dir() => return Err(bad_dataset(input, "input is not a folder")),
        Ok(_) => {}
    }
    let mut warnings = Vec::new();
    let mut class_dirs: Vec<Option<(String, PathBuf)>> = vec![None; CLASS_NAMES.len()];
    let mut loose_files = 0usize;
    for e in sorted_entries(input)? {
        let name = fsutil::os_str_to_string(&e.file_name());
        let path = e.path();
        let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            if !name.starts_with('.') {
                loose_files += 1;
            }
            continue;
        }
        match CLASS_NAMES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(&name))
        {
            Some(k) => {
                if let Some((other, _)) = &class_dirs[k] {
                    return Err(bad_dataset(
                        input,
                        format!(
                            "two folders for class {}: {other}/ and {name}/",
                            CLASS_NAMES[k]
                        ),
                    ));
                }
                class_dirs[k] = Some((name, path));
            }
            None if name.starts_with('.') => {}
            None => warnings.push(format!(
                "ignored folder {name}/ (not a class folder; expected {})",
                expected_folders()
            )),
        }
    }
    if loose_files > 0 {
        warnings.push(format!(
            "ignored {loose_files} file(s) directly inside the input folder (images belong in {})",
            expected_folders()
        ));
    }
    let found: Vec<&str> = class_dirs
        .iter()
        .flatten()
        .map(|(n, _)| n.as_str())
        .collect();
    if found.len() < 2 {
        let have = if found.is_empty() {
            "found none".to_string()
        } else {
            format!("found only {}/", found.join("/, "))
        };
        return Err(bad_dataset(
            input,
            format!(
                "need at least two class folders, {have} (expected {}, matched case-insensitively)",
                expected_folders()
            ),
        ));
    }
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut hidden = 0;
    for (k, entry) in class_dirs.into_iter().enumerate() {
        let (name, path) = entry.expect("all classes present");
        let before = files.len();
        list_files(&path, &name, k as u8, 0, &mut files, &mut hidden)?;
        if files.len() == before {
            return Err(bad_dataset(&path, "class folder is empty"));
        }
        dirs.push(path);
    }
    if hidden > 0 {
        warnings.push(format!(
            "skipped {hidden} hidden files or folders (names starting with '.')"
        ));
    }
    Ok(Discovery {
        files,
        class_dirs: dirs,
        warnings,
    })
}

fn expected_folders() -> String {
    CLASS_NAMES
        .iter()
        .map(|c| format!("{c}/"))
        .collect::<Vec<_>>()
        .join(" and ")
}

//! Pass 0 of `prep`: finds the folders of the input folder, decides the classes and lists
//! every file below them, sorted, so that the processing order and therefore every source
//! index is independent of the file system's listing order.
//!
//! Classes: every folder directly inside the input is a class named as the folder is
//! written, unless the class mapping ([`super::mapping`]) files it under another class or
//! skips it. A folder the mapping does not name and that holds files but no image (no file
//! with an image extension or starting like an image, such as a `meta/` folder of notes)
//! is ignored with a warning; an empty one is an error. Folder names that differ only in
//! ASCII case are refused (they would be one class on a case-insensitive file system). Class names are sorted by their bytes (the
//! order of PyTorch's `ImageFolder`); with two classes the positive one is moved to label 1:
//! `--positive`, else the class named `Malignant` ignoring case, else the second.
//!
//! Files are listed class by class in label order, each class's folders in name order, each
//! folder's files by path. Hidden entries are skipped and counted; loose files become a
//! warning. Names become the manifest's text through [`fsutil::os_str_to_string`], so names
//! that are not UTF-8 stay distinct.

use std::fs;
use std::path::{Path, PathBuf};

use super::bad_dataset;
use super::mapping::ClassMap;
use crate::classes::Classes;
use crate::error::IoContext;
use crate::fsutil;
use crate::manifest::FolderClass;
use crate::{Error, Result};

/// One input file, in processing order.
#[derive(Debug, Clone)]
pub(crate) struct InputFile {
    pub(crate) abs: PathBuf,
    /// Relative to the input folder, `/`-separated, each name as
    /// [`fsutil::os_str_to_string`] writes it.
    pub(crate) rel: String,
    pub(crate) class: u8,
}

#[derive(Debug)]
pub(crate) struct Discovery {
    pub(crate) files: Vec<InputFile>,
    /// Class names in label order.
    pub(crate) classes: Vec<String>,
    /// The malignant classes of more than two (empty for two).
    pub(crate) malignant: Vec<String>,
    /// Per class, the path its errors name: its folder, or the input folder when the class
    /// gathers several.
    pub(crate) class_dirs: Vec<PathBuf>,
    /// Every folder of the input, in name order, with its class (`images` still 0).
    pub(crate) folders: Vec<FolderClass>,
    pub(crate) warnings: Vec<String>,
}

/// What decides the classes besides the folders.
pub(crate) struct ClassChoice<'a> {
    pub(crate) map: &'a ClassMap,
    pub(crate) positive: Option<&'a str>,
    pub(crate) malignant: &'a [String],
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

/// A folder directly inside the input.
struct Folder {
    name: String,
    path: PathBuf,
    /// Its class after the mapping; `None` when skipped.
    class: Option<String>,
    /// Named by the mapping (then it is a class even without images, or skipped).
    mapped: bool,
    /// Holds files but no image, and the mapping does not name it: not a class.
    ignored: bool,
    /// The files below it, listed once it is known not to be skipped.
    files: Vec<InputFile>,
}

/// Extensions of the formats the decoder reads (matched ignoring case).
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"];

/// Whether any of `files` has an image extension or starts like an image (extensions are
/// checked first, so a folder of photos costs no read).
fn holds_images(files: &[InputFile]) -> bool {
    let by_name = files.iter().any(|f| {
        f.abs
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
    });
    by_name || files.iter().any(|f| sniff(&f.abs))
}

/// Whether a file starts like an image format the `image` crate knows.
fn sniff(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(64);
    fs::File::open(path)
        .and_then(|f| f.take(64).read_to_end(&mut head))
        .is_ok()
        && image::guess_format(&head).is_ok()
}

/// Pass 0: finds the folders, decides the classes and lists the files.
pub(crate) fn discover(input: &Path, choice: &ClassChoice<'_>) -> Result<Discovery> {
    match fs::metadata(input) {
        Err(_) => return Err(bad_dataset(input, "input folder does not exist")),
        Ok(m) if !m.is_dir() => return Err(bad_dataset(input, "input is not a folder")),
        Ok(_) => {}
    }
    let mut warnings = Vec::new();
    let mut folders: Vec<Folder> = Vec::new();
    let mut loose_files = 0usize;
    for e in sorted_entries(input)? {
        let name = fsutil::os_str_to_string(&e.file_name());
        let path = e.path();
        let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir());
        if name.starts_with('.') {
            continue;
        }
        if !is_dir {
            loose_files += 1;
            continue;
        }
        if let Some(other) = folders.iter().find(|f| f.name.eq_ignore_ascii_case(&name)) {
            return Err(bad_dataset(
                input,
                format!(
                    "two folders for class {}: {}/ and {name}/ (class folders are matched \
                     ignoring case)",
                    other.name, other.name
                ),
            ));
        }
        folders.push(Folder {
            class: Some(name.clone()),
            name,
            path,
            mapped: false,
            ignored: false,
            files: Vec::new(),
        });
    }
    if loose_files > 0 {
        warnings.push(format!(
            "ignored {loose_files} file(s) directly inside the input folder (images belong in \
             one sub-folder per class)"
        ));
    }
    apply_map(input, choice.map, &mut folders)?;

    // Each class folder's files (skipped folders are not read); folders without images
    // that the mapping does not name are not classes.
    let mut hidden = 0;
    for f in folders.iter_mut().filter(|f| f.class.is_some()) {
        let mut hidden_here = 0;
        list_files(&f.path, &f.name, 0, 0, &mut f.files, &mut hidden_here)?;
        if f.files.is_empty() {
            return Err(bad_dataset(
                &f.path,
                format!(
                    "class folder is empty (skip it with --group {}=-)",
                    shell_word(&f.name)
                ),
            ));
        }
        if f.mapped || holds_images(&f.files) {
            hidden += hidden_here;
        } else {
            warnings.push(format!(
                "ignored folder {}/ (none of its {} file(s) is an image)",
                f.name,
                f.files.len()
            ));
            f.ignored = true;
        }
    }
    folders.retain(|f| !f.ignored);
    let classes = choose_classes(input, choice, &folders)?;
    let names = classes.names();

    let records: Vec<FolderClass> = folders
        .iter()
        .map(|f| FolderClass {
            folder: f.name.clone(),
            class: f.class.clone(),
            files: f.files.len(),
            images: 0,
        })
        .collect();
    let mut files = Vec::new();
    let mut class_dirs = Vec::with_capacity(names.len());
    for (k, class) in names.iter().enumerate() {
        let members: Vec<usize> = (0..folders.len())
            .filter(|&i| folders[i].class.as_ref() == Some(class))
            .collect();
        for &i in &members {
            files.extend(
                std::mem::take(&mut folders[i].files)
                    .into_iter()
                    .map(|mut f| {
                        f.class = k as u8;
                        f
                    }),
            );
        }
        class_dirs.push(match members[..] {
            [only] => folders[only].path.clone(),
            _ => input.to_path_buf(),
        });
    }
    if hidden > 0 {
        warnings.push(format!(
            "skipped {hidden} hidden files or folders (names starting with '.')"
        ));
    }
    Ok(Discovery {
        files,
        classes: names.to_vec(),
        malignant: classes.malignant_record(),
        class_dirs,
        folders: records,
        warnings,
    })
}

/// Files every mapped folder under its class (or skips it); a mapping that names no folder
/// of the input is an error.
fn apply_map(input: &Path, map: &ClassMap, folders: &mut [Folder]) -> Result<()> {
    for entry in map.entries() {
        let Some(f) = folders
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case(&entry.folder))
        else {
            return Err(bad_dataset(
                input,
                format!(
                    "{} maps folder `{}`, which is not a folder of the input (its folders: {})",
                    entry.origin,
                    entry.folder,
                    folder_list(folders.iter().map(|f| f.name.as_str()))
                ),
            ));
        };
        f.class = entry.class.clone();
        f.mapped = true;
    }
    Ok(())
}

/// The classes in label order, checked, with the positive class of two at label 1 and the
/// malignant group of more.
fn choose_classes(input: &Path, choice: &ClassChoice<'_>, folders: &[Folder]) -> Result<Classes> {
    let mut names: Vec<String> = folders.iter().filter_map(|f| f.class.clone()).collect();
    names.sort();
    names.dedup();
    for (i, a) in names.iter().enumerate() {
        if let Some(b) = names[..i].iter().find(|b| b.eq_ignore_ascii_case(a)) {
            return Err(Error::InvalidOption(format!(
                "classes `{b}` (from {}) and `{a}` (from {}) differ only in case; give them \
                 one spelling",
                folders_of(folders, b),
                folders_of(folders, a)
            )));
        }
    }
    if names.len() < 2 {
        let skipped = folders.iter().filter(|f| f.class.is_none()).count();
        let reason = if choice.map.is_empty() {
            match folders.first() {
                None => "need at least two class folders, found none".to_string(),
                Some(f) => format!("need at least two class folders, found only {}/", f.name),
            }
        } else {
            let left = match names.first() {
                None => "no class".to_string(),
                Some(n) => format!("only class `{n}` (from {})", folders_of(folders, n)),
            };
            format!(
                "the class mapping leaves {left} ({skipped} folder(s) skipped); a classifier \
                 needs at least two classes"
            )
        };
        return Err(bad_dataset(input, reason));
    }
    let find = |name: &str, option: &str| -> Result<String> {
        names
            .iter()
            .find(|n| n.as_str() == name)
            .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(name)))
            .cloned()
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "{option} `{name}` is not one of the classes {}",
                    names.join(", ")
                ))
            })
    };
    if names.len() == 2 {
        if !choice.malignant.is_empty() {
            return Err(Error::InvalidOption(format!(
                "--malignant is for more than two classes; with two ({}) name the positive \
                 class with --positive",
                names.join(", ")
            )));
        }
        let positive = match choice.positive {
            Some(p) => find(p, "--positive")?,
            None => names
                .iter()
                .find(|n| n.eq_ignore_ascii_case("Malignant"))
                .unwrap_or(&names[1])
                .clone(),
        };
        if names[0] == positive {
            names.swap(0, 1);
        }
        return Classes::new(names, &[]);
    }
    if let Some(p) = choice.positive {
        return Err(Error::InvalidOption(format!(
            "--positive `{p}` is for two classes; with {} ({}) name the malignant ones with \
             --malignant",
            names.len(),
            names.join(", ")
        )));
    }
    let malignant = choice
        .malignant
        .iter()
        .map(|m| find(m, "--malignant"))
        .collect::<Result<Vec<_>>>()?;
    Classes::new(names, &malignant)
}

/// `a/, b/` for the folders filed under `class`.
fn folders_of(folders: &[Folder], class: &str) -> String {
    folder_list(
        folders
            .iter()
            .filter(|f| f.class.as_deref() == Some(class))
            .map(|f| f.name.as_str()),
    )
}

fn folder_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let list: Vec<String> = names.map(|n| format!("{n}/")).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// `name` as one shell word, for advice that the user may paste.
fn shell_word(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.,+@%".contains(c));
    if plain && !name.is_empty() {
        name.to_string()
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

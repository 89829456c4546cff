//! Snapshots and copies of folder trees.
//!
//! A snapshot maps every path below a root (relative, as `PathBuf`, so names that are not
//! UTF-8 keep their bytes) to what is there: `dir`, `link -> TARGET`, or the file's
//! SHA-256. Two equal snapshots mean the tree is byte-identical, names included.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Every entry below `root` (not `root` itself) with its kind and content hash; an absent
/// `root` gives `{"": "absent"}` so that creating it later shows as a change, and a file
/// `root` gives `{"": HASH}`.
///
/// Symbolic links are recorded with their target and not followed. An entry that cannot be
/// read is recorded as `unreadable: ERROR` rather than failing the snapshot.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if fs::symlink_metadata(root).is_err() {
        out.insert(PathBuf::new(), "absent".to_string());
        return out;
    }
    if root.is_file() {
        let hash = lesion::fsutil::sha256_file(root).unwrap_or_else(|e| format!("unreadable: {e}"));
        out.insert(PathBuf::new(), hash);
        return out;
    }
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(dir: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.insert(rel.to_path_buf(), format!("unreadable: {e}"));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = rel.join(entry.file_name());
        let what = match fs::symlink_metadata(&path) {
            Err(e) => format!("unreadable: {e}"),
            Ok(m) if m.file_type().is_symlink() => match fs::read_link(&path) {
                Ok(t) => format!("link -> {}", t.display()),
                Err(e) => format!("unreadable link: {e}"),
            },
            Ok(m) if m.is_dir() => {
                walk(&path, &rel, out);
                "dir".to_string()
            }
            Ok(m) if m.is_file() => match lesion::fsutil::sha256_file(&path) {
                Ok(h) => h,
                Err(e) => format!("unreadable: {e}"),
            },
            Ok(_) => "special file".to_string(),
        };
        out.insert(rel, what);
    }
}

/// The differences between two snapshots, one line each (`added`, `removed`, `changed`).
pub fn diff(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            None => lines.push(format!("removed {}", path.display())),
            Some(now) if now != was => lines.push(format!("changed {}", path.display())),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        lines.push(format!("added {}", path.display()));
    }
    lines
}

/// Copies the tree at `from` to `to` (created; files, folders and symbolic links).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn names_that_differ_in_a_non_utf8_byte_stay_apart() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(OsStr::from_bytes(b"a\xff.jpg")), b"one").unwrap();
        fs::write(dir.path().join(OsStr::from_bytes(b"a\xfe.jpg")), b"one").unwrap();
        let snap = snapshot(dir.path());
        assert_eq!(snap.len(), 2);
        assert!(snap.contains_key(Path::new(OsStr::from_bytes(b"a\xfe.jpg"))));
    }

    #[test]
    fn diff_names_every_change() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/keep"), b"1").unwrap();
        fs::write(dir.path().join("edit"), b"1").unwrap();
        fs::write(dir.path().join("gone"), b"1").unwrap();
        let before = snapshot(dir.path());
        fs::write(dir.path().join("edit"), b"2").unwrap();
        fs::remove_file(dir.path().join("gone")).unwrap();
        fs::write(dir.path().join("new"), b"1").unwrap();
        let mut d = diff(&before, &snapshot(dir.path()));
        d.sort();
        assert_eq!(d, ["added new", "changed edit", "removed gone"]);

        let copy = dir.path().join("copy");
        copy_tree(&dir.path().join("sub"), &copy);
        assert_eq!(snapshot(&copy), snapshot(&dir.path().join("sub")));
        assert_eq!(
            snapshot(&dir.path().join("nothing")),
            BTreeMap::from([(PathBuf::new(), "absent".to_string())])
        );
    }
}

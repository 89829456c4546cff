//! File-system helpers shared by every stage: atomic file writes, staged output folders
//! and streaming SHA-256.
//!
//! The rule they implement: an artifact is either complete or absent. A file is written to
//! a temporary sibling, flushed to disk and renamed over its target; a whole output folder is
//! built in `<out>.partial-<pid>` beside the target and renamed into place at the very end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::{Error, Result};

/// Distinguishes temporary names created by one process (several threads may write
/// siblings of the same target at once).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name_of(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidOption(format!("{} has no file name", path.display())))
}

/// Flushes a directory's entry table so that a rename inside it survives a crash.
/// Best effort: not every platform lets a directory be opened for this.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file being written atomically: data goes to a hidden temporary sibling of the target,
/// and [`AtomicFile::commit`] fsyncs it and renames it over the target. Dropping an
/// uncommitted `AtomicFile` deletes the temporary, so the target is never half-written.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Starts writing `target`; its folder must exist.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let name = file_name_of(&target)?;
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = parent_of(&target).join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_path(&temp)?;
        Ok(Self {
            target,
            temp,
            file: Some(file),
        })
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The underlying temporary file (unbuffered: wrap it in a `BufWriter` for small writes).
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Flushes the data to disk and renames the temporary over the target.
    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("file present until commit");
        file.sync_all().with_path(&self.temp)?;
        drop(file);
        fs::rename(&self.temp, &self.target).with_path(&self.target)?;
        sync_dir(parent_of(&self.target));
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary sibling, fsync, rename).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).with_path(path)?;
    f.commit()
}

/// Serialises `value` as pretty JSON (with a final newline) and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(
    path: impl AsRef<Path>,
    value: &T,
) -> Result<()> {
    let path = path.as_ref();
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = fs::read(path).with_path(path)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Why `dir` cannot be used as an input folder — it does not exist, or is a file — or
/// `None` when it is a folder.
pub fn missing_folder_reason(dir: &Path) -> Option<String> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("not a folder".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("no such folder".into()),
        Err(e) => Some(format!("cannot read: {e}")),
    }
}

/// An output folder under construction.
///
/// Everything is written into `<out>.partial-<pid>` beside the target; [`StagingDir::commit`]
/// renames it to `<out>`. An existing `<out>` is refused with [`Error::OutputExists`] unless
/// `force`, in which case it is replaced only at commit time, so a failed run leaves the
/// previous results intact. Dropping an uncommitted stage deletes it.
#[derive(Debug)]
pub struct StagingDir {
    target: PathBuf,
    path: PathBuf,
    force: bool,
    committed: bool,
}

impl StagingDir {
    /// Creates the staging folder for `target` (its parent folders are created if needed).
    pub fn new(target: impl AsRef<Path>, force: bool) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        if !force && fs::symlink_metadata(&target).is_ok() {
            return Err(Error::OutputExists { path: target });
        }
        let name = file_name_of(&target)?;
        let parent = parent_of(&target);
        fs::create_dir_all(parent).with_path(parent)?;
        let path = parent.join(format!("{name}.partial-{}", std::process::id()));
        // Left over by an earlier process that had our pid and was killed: it is ours to reuse.
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_dir_all(&path).with_path(&path)?;
        }
        fs::create_dir(&path).with_path(&path)?;
        Ok(Self {
            target,
            path,
            force,
            committed: false,
        })
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The final location.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the staged folder into place and returns the final path.
    ///
    /// With `force`, an existing target is first renamed aside and deleted only after the
    /// new folder is in place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut aside = None;
        if fs::symlink_metadata(&self.target).is_ok() {
            if !self.force {
                return Err(Error::OutputExists {
                    path: self.target.clone(),
                });
            }
            let name = file_name_of(&self.target)?;
            let old = parent_of(&self.target).join(format!("{name}.old-{}", std::process::id()));
            if fs::symlink_metadata(&old).is_ok() {
                remove_any(&old)?;
            }
            fs::rename(&self.target, &old).with_path(&self.target)?;
            aside = Some(old);
        }
        if let Err(e) = fs::rename(&self.path, &self.target) {
            if let Some(old) = &aside {
                let _ = fs::rename(old, &self.target);
            }
            return Err(Error::io(&self.target, e));
        }
        self.committed = true;
        sync_dir(parent_of(&self.target));
        if let Some(old) = aside {
            remove_any(&old)?;
        }
        Ok(self.target.clone())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).with_path(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path).with_path(path)
    } else {
        fs::remove_file(path).with_path(path)
    }
}

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file, read in blocks (memory does not grow with its size).
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let file = File::open(path).with_path(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A writer that hashes everything passing through it, so a file's SHA-256 is known when
/// writing ends without reading it back.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Returns the inner writer and the lowercase hex SHA-256 of all bytes written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"three").unwrap();
            // dropped without commit
        }
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind");
    }

    #[test]
    fn staging_refuses_existing_and_replaces_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stage = StagingDir::new(&out, false).unwrap();
        write_atomic(stage.path().join("x"), b"1").unwrap();
        assert!(stage.path().starts_with(dir.path()));
        stage.commit().unwrap();
        assert_eq!(fs::read(out.join("x")).unwrap(), b"1");

        let err = StagingDir::new(&out, false).unwrap_err();
        assert!(matches!(err, Error::OutputExists { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);

        // A failed forced run leaves the previous output untouched.
        {
            let stage = StagingDir::new(&out, true).unwrap();
            write_atomic(stage.path().join("y"), b"2").unwrap();
        }
        assert!(out.join("x").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let stage = StagingDir::new(&out, true).unwrap();
        write_atomic(stage.path().join("y"), b"2").unwrap();
        stage.commit().unwrap();
        assert!(!out.join("x").exists());
        assert_eq!(fs::read(out.join("y")).unwrap(), b"2");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sha256_matches_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&p).unwrap(), expected);
        assert_eq!(sha256_hex(b"abc"), expected);
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!(w.written(), 3);
        assert_eq!(w.finish().1, expected);
    }
}

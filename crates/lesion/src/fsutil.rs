//! File-system helpers shared by every stage: atomic file writes, staged output folders,
//! the rules for where an output may go, stale temporary files, file names as text, and
//! streaming SHA-256.
//!
//! The rule they implement: an artifact is either complete or absent, and nothing the user
//! owns is replaced. A file is written to a temporary sibling `.<name>.tmp-<pid>-<n>`,
//! flushed to disk and renamed over its target; a whole output folder is built in
//! `<out>.partial-<pid>` beside the target and renamed into place at the very end (an
//! existing target is first renamed to `<out>.old-<pid>`, deleted once the new one is in
//! place). An existing output is replaced only when the stage recognises it as its own
//! ([`OutputKind`]), and never when it is, holds or lies inside one of the stage's inputs
//! ([`check_output`]).
//!
//! A killed process leaves its temporaries behind; [`remove_stale_temps`] deletes those
//! whose process is gone. Liveness is read from `/proc`, so on other systems (or without
//! `/proc`) nothing is deleted. Only the `.tmp-` and `.partial-` forms above are touched:
//! a `.old-` folder may be the only copy of a previous output, so it is left for the user.
//!
//! File names become text through [`os_str_to_string`], losslessly (see there).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
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

fn file_name_of(path: &Path) -> Result<&OsStr> {
    path.file_name()
        .ok_or_else(|| Error::InvalidOption(format!("{} has no file name", path.display())))
}

/// `<prefix><name><suffix>` without passing the name through a lossy conversion.
fn decorated(prefix: &str, name: &OsStr, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(name);
    s.push(suffix);
    s
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
        let temp = parent_of(&target).join(decorated(
            ".",
            name,
            &format!(".tmp-{}-{n}", std::process::id()),
        ));
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

/// `<dir>/<file>`, the file that makes `dir` an artifact folder of ours (a prepared
/// dataset's manifest, a run's config), or [`Error::BadArtifact`] naming `dir` and why:
/// no such folder, not a folder, or `not_ours()` (what the folder is not, and what writes
/// one) when the file is absent.
pub fn marker_file(dir: &Path, file: &str, not_ours: impl FnOnce() -> String) -> Result<PathBuf> {
    let reason = match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => "not a folder".into(),
        Ok(_) if dir.join(file).is_file() => return Ok(dir.join(file)),
        Ok(_) => not_ours(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => "no such folder".into(),
        Err(e) => format!("cannot read: {e}"),
    };
    Err(Error::BadArtifact {
        path: dir.to_path_buf(),
        reason,
    })
}

/// A kind of output folder, so that an existing one is replaced only when the stage that
/// writes this kind recognises it as its own.
#[derive(Debug, Clone, Copy)]
pub struct OutputKind {
    /// What the stage writes, for messages ("a prepared dataset (a folder with the
    /// manifest.json lesion-prep writes)").
    pub what: &'static str,
    /// Whether an existing folder is one the stage wrote.
    pub is_ours: fn(&Path) -> bool,
}

/// Whether `<dir>/<file>` is a JSON object whose `format` field is `format`: how the
/// stages mark the folders they write.
pub fn has_format_marker(dir: &Path, file: &str, format: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Marker {
        format: String,
    }
    let path = dir.join(file);
    if !fs::metadata(&path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
        .is_some_and(|m| m.format == format)
}

/// `path` made absolute, with the symbolic links of its existing part resolved and the
/// `.` and `..` of the rest applied, so that two spellings of one place compare equal.
pub fn resolve_path(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(d) => d.join(path),
            Err(_) => path.to_path_buf(),
        }
    };
    let comps: Vec<Component> = abs.components().collect();
    for k in (1..=comps.len()).rev() {
        let head: PathBuf = comps[..k].iter().collect();
        let Ok(mut out) = fs::canonicalize(&head) else {
            continue;
        };
        for c in &comps[k..] {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::Normal(n) => out.push(n),
                _ => {}
            }
        }
        return out;
    }
    abs
}

/// Refuses an output location that is one of `inputs`, holds one (replacing it would
/// delete the input) or lies inside one (the output would become part of the input).
/// Paths are compared with symbolic links resolved.
pub fn check_not_input(out: &Path, inputs: &[&Path]) -> Result<()> {
    let o = resolve_path(out);
    for input in inputs {
        let i = resolve_path(input);
        let reason = if o == i {
            format!("is the input {} itself", input.display())
        } else if i.starts_with(&o) {
            format!(
                "holds the input {}, which replacing it would delete",
                input.display()
            )
        } else if o.starts_with(&i) {
            format!("lies inside the input folder {}", input.display())
        } else {
            continue;
        };
        return Err(Error::NotOurOutput {
            path: out.to_path_buf(),
            reason: format!(
                "not used as an output: it {reason}; choose a folder outside the input"
            ),
        });
    }
    Ok(())
}

fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Whether an existing `target` may be replaced: nothing there, an empty folder, or an
/// output of `kind` with `force`. Anything else is refused; without `force` an output of
/// `kind` is [`Error::OutputExists`].
fn check_replaceable(target: &Path, force: bool, kind: &OutputKind) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(target) else {
        return Ok(());
    };
    if meta.is_dir() && is_empty_dir(target) {
        return Ok(());
    }
    if !(kind.is_ours)(target) {
        return Err(Error::NotOurOutput {
            path: target.to_path_buf(),
            reason: format!(
                "exists and is not {}; refusing to replace it, with or without --force \
                 (move it away or choose another output)",
                kind.what
            ),
        });
    }
    if !force {
        return Err(Error::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// Checks that a new output of `kind` may be written at `target`: it must not be, hold or
/// lie inside one of `inputs` ([`check_not_input`]), and an existing `target` that is not
/// an empty folder must be an output of `kind` and `force` given.
pub fn check_output(target: &Path, force: bool, kind: &OutputKind, inputs: &[&Path]) -> Result<()> {
    check_not_input(target, inputs)?;
    check_replaceable(target, force, kind)
}

/// An output folder under construction.
///
/// Everything is written into `<out>.partial-<pid>` beside the target; [`StagingDir::commit`]
/// renames it to `<out>`. The location is checked with [`check_output`] when the stage is
/// created and again at commit; an existing output is replaced only at commit time, so a
/// failed run leaves the previous results intact. Dropping an uncommitted stage deletes it.
#[derive(Debug)]
pub struct StagingDir {
    target: PathBuf,
    path: PathBuf,
    force: bool,
    kind: OutputKind,
    committed: bool,
}

impl StagingDir {
    /// Creates the staging folder for an output of `kind` at `target` (its parent folders
    /// are created if needed), after [`check_output`]. Stale staging folders of `target`
    /// left by killed processes are removed first.
    pub fn new(
        target: impl AsRef<Path>,
        force: bool,
        kind: OutputKind,
        inputs: &[&Path],
    ) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        check_output(&target, force, &kind, inputs)?;
        let name = file_name_of(&target)?;
        let parent = parent_of(&target);
        fs::create_dir_all(parent).with_path(parent)?;
        remove_stale(parent, Some(name));
        let path = parent.join(decorated(
            "",
            name,
            &format!(".partial-{}", std::process::id()),
        ));
        // Left over by an earlier process that had our pid and was killed: it is ours to reuse.
        if fs::symlink_metadata(&path).is_ok() {
            remove_any(&path)?;
        }
        fs::create_dir(&path).with_path(&path)?;
        Ok(Self {
            target,
            path,
            force,
            kind,
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
    /// An existing target (checked again: it may have changed while the stage was built)
    /// is first renamed aside and deleted only after the new folder is in place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let mut aside = None;
        if fs::symlink_metadata(&self.target).is_ok() {
            check_replaceable(&self.target, self.force, &self.kind)?;
            let name = file_name_of(&self.target)?;
            let old = parent_of(&self.target).join(decorated(
                "",
                name,
                &format!(".old-{}", std::process::id()),
            ));
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

/// One of the temporary names this module creates, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TempName<'a> {
    /// `.<target>.tmp-<pid>-<n>`: an [`AtomicFile`] being written.
    Atomic { target: &'a str, pid: u32 },
    /// `<target>.partial-<pid>`: a [`StagingDir`] being built.
    Partial { target: &'a str, pid: u32 },
}

fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_temp_name(name: &str) -> Option<TempName<'_>> {
    if let Some(rest) = name.strip_prefix('.') {
        if let Some((head, n)) = rest.rsplit_once('-') {
            if let (Some((target, pid)), Some(_)) = (head.rsplit_once(".tmp-"), decimal::<u64>(n)) {
                if let (false, Some(pid)) = (target.is_empty(), decimal(pid)) {
                    return Some(TempName::Atomic { target, pid });
                }
            }
        }
    }
    let (target, pid) = name.rsplit_once(".partial-")?;
    match (target.is_empty(), decimal(pid)) {
        (false, Some(pid)) => Some(TempName::Partial { target, pid }),
        _ => None,
    }
}

/// Whether process `pid` is known to have exited: `/proc` is there and has no entry for
/// it. Elsewhere nothing is known, and nothing is deleted.
fn process_is_gone(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if cfg!(target_os = "linux") {
        let proc = Path::new("/proc");
        proc.join("self").exists() && fs::symlink_metadata(proc.join(pid.to_string())).is_err()
    } else {
        false
    }
}

fn remove_stale(dir: &Path, only_for: Option<&OsStr>) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some(temp) = parse_temp_name(name) else {
            continue;
        };
        let (target, pid) = match temp {
            TempName::Atomic { target, pid } | TempName::Partial { target, pid } => (target, pid),
        };
        if only_for.is_some_and(|t| t != OsStr::new(target)) || !process_is_gone(pid) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let shape_ok = match temp {
            TempName::Atomic { .. } => meta.is_file(),
            TempName::Partial { .. } => meta.is_dir(),
        };
        if shape_ok && remove_any(&path).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}

/// Deletes, in `dir`, the temporary files and folders this module names (see the module
/// docs) whose process has exited, and returns their paths. Anything else is left alone,
/// as are temporaries of live processes, and everything where liveness cannot be read
/// (no `/proc`). Failures to delete are ignored: a stale temporary is only clutter.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    remove_stale(dir, None)
}

/// A file name or path as text, losslessly, for manifests, CSV files and reports.
///
/// Valid UTF-8 is kept byte for byte, unless it already reads like an escape (holds `\\`
/// or `\x` followed by two hex digits). Such names, and names that are not valid UTF-8,
/// are written with every backslash doubled and every byte that is not part of valid
/// UTF-8 as `\xHH` (uppercase hex). [`unescape_to_bytes`] inverts this, so two different
/// names never give the same text. On systems whose names are not byte strings (Windows),
/// a name that is not valid Unicode is converted lossily.
pub fn os_str_to_string(name: &OsStr) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        escape_bytes(name.as_bytes())
    }
    #[cfg(not(unix))]
    {
        match name.to_str() {
            Some(s) => escape_bytes(s.as_bytes()),
            None => name.to_string_lossy().into_owned(),
        }
    }
}

/// [`os_str_to_string`] of a whole path.
pub fn path_to_string(path: &Path) -> String {
    os_str_to_string(path.as_os_str())
}

fn is_hex_escape(b: &[u8]) -> bool {
    b.len() >= 4
        && b[0] == b'\\'
        && b[1] == b'x'
        && b[2].is_ascii_hexdigit()
        && b[3].is_ascii_hexdigit()
}

fn reads_like_escape(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| b[i..].starts_with(b"\\\\") || is_hex_escape(&b[i..]))
}

fn escape_bytes(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if !reads_like_escape(s) {
            return s.to_string();
        }
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The bytes of the name [`os_str_to_string`] turned into `text`.
pub fn unescape_to_bytes(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let escaped = reads_like_escape(text);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if escaped && b[i..].starts_with(b"\\\\") {
            out.push(b'\\');
            i += 2;
        } else if escaped && is_hex_escape(&b[i..]) {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
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

    /// A test kind: a folder holding a file `ours`.
    const TEST_KIND: OutputKind = OutputKind {
        what: "a test output",
        is_ours: |p| p.join("ours").is_file(),
    };

    fn staged(out: &Path, force: bool, inputs: &[&Path], file: &str) -> Result<PathBuf> {
        let stage = StagingDir::new(out, force, TEST_KIND, inputs)?;
        write_atomic(stage.path().join("ours"), b"")?;
        write_atomic(stage.path().join(file), file.as_bytes())?;
        stage.commit()
    }

    #[test]
    fn staging_refuses_existing_and_replaces_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stage = StagingDir::new(&out, false, TEST_KIND, &[]).unwrap();
        write_atomic(stage.path().join("x"), b"1").unwrap();
        write_atomic(stage.path().join("ours"), b"").unwrap();
        assert!(stage.path().starts_with(dir.path()));
        stage.commit().unwrap();
        assert_eq!(fs::read(out.join("x")).unwrap(), b"1");

        let err = StagingDir::new(&out, false, TEST_KIND, &[]).unwrap_err();
        assert!(matches!(err, Error::OutputExists { .. }), "{err}");
        assert_eq!(err.exit_code(), 2);

        // A failed forced run leaves the previous output untouched.
        {
            let stage = StagingDir::new(&out, true, TEST_KIND, &[]).unwrap();
            write_atomic(stage.path().join("y"), b"2").unwrap();
        }
        assert!(out.join("x").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        staged(&out, true, &[], "y").unwrap();
        assert!(!out.join("x").exists());
        assert_eq!(fs::read(out.join("y")).unwrap(), b"y");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Every file below `dir` with its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.clone(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    fn refusal(err: Error) -> String {
        assert_eq!(err.exit_code(), 2, "{err}");
        match err {
            Error::NotOurOutput { .. } => err.to_string(),
            other => panic!("expected NotOurOutput, got {other:?}"),
        }
    }

    #[test]
    fn force_never_replaces_what_is_not_ours_or_an_input() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let photos = root.join("photos");
        fs::create_dir_all(photos.join("Benign")).unwrap();
        fs::write(photos.join("Benign/a.jpg"), b"user photo").unwrap();
        let before = snapshot(root);

        // A folder of someone else's files, with or without --force.
        for force in [false, true] {
            let msg = refusal(StagingDir::new(&photos, force, TEST_KIND, &[]).unwrap_err());
            assert!(msg.starts_with(&photos.display().to_string()), "{msg}");
            assert!(msg.contains("is not a test output"), "{msg}");
        }
        // The input itself, an ancestor of it, a folder inside it: even when they look
        // like our own output.
        fs::write(photos.join("ours"), b"").unwrap();
        fs::write(root.join("ours"), b"").unwrap();
        let before_marked = snapshot(root);
        let cases = [
            (photos.clone(), "is the input"),
            (photos.join("."), "is the input"),
            (root.to_path_buf(), "holds the input"),
            (photos.join("Benign/new"), "lies inside the input folder"),
        ];
        for (out, why) in cases {
            let msg = refusal(StagingDir::new(&out, true, TEST_KIND, &[&photos]).unwrap_err());
            assert!(msg.contains(why), "{out:?}: {msg}");
            assert!(msg.contains(&photos.display().to_string()), "{msg}");
        }
        // Through a symbolic link, too.
        #[cfg(unix)]
        {
            let link = root.join("link");
            std::os::unix::fs::symlink(&photos, &link).unwrap();
            let msg = refusal(StagingDir::new(&link, true, TEST_KIND, &[&photos]).unwrap_err());
            assert!(msg.contains("is the input"), "{msg}");
            let msg = refusal(
                StagingDir::new(&photos, true, TEST_KIND, &[&link.join("Benign")]).unwrap_err(),
            );
            assert!(msg.contains("holds the input"), "{msg}");
            fs::remove_file(&link).unwrap();
        }
        assert_eq!(snapshot(root), before_marked);
        fs::remove_file(photos.join("ours")).unwrap();
        fs::remove_file(root.join("ours")).unwrap();
        assert_eq!(snapshot(root), before);

        // An empty folder may be used; a file may not.
        let empty = root.join("empty");
        fs::create_dir(&empty).unwrap();
        staged(&empty, false, &[&photos], "z").unwrap();
        assert_eq!(fs::read(empty.join("z")).unwrap(), b"z");
        let file = root.join("file.txt");
        fs::write(&file, b"text").unwrap();
        refusal(StagingDir::new(&file, true, TEST_KIND, &[]).unwrap_err());
        assert_eq!(fs::read(&file).unwrap(), b"text");

        // A folder that became someone else's while the stage was built is kept.
        let out = root.join("out");
        let stage = StagingDir::new(&out, true, TEST_KIND, &[]).unwrap();
        fs::create_dir(&out).unwrap();
        fs::write(out.join("mine.txt"), b"mine").unwrap();
        refusal(stage.commit().unwrap_err());
        assert_eq!(fs::read(out.join("mine.txt")).unwrap(), b"mine");
    }

    #[test]
    fn temp_names_are_recognised_exactly() {
        assert_eq!(
            parse_temp_name(".last.safetensors.tmp-123-4"),
            Some(TempName::Atomic {
                target: "last.safetensors",
                pid: 123
            })
        );
        assert_eq!(
            parse_temp_name("eval-test.partial-77"),
            Some(TempName::Partial {
                target: "eval-test",
                pid: 77
            })
        );
        for other in [
            "last.safetensors",
            ".last.safetensors.tmp-123",
            ".last.safetensors.tmp-12a-4",
            "last.safetensors.tmp-123-4",
            "..tmp-1-2",
            ".partial-5",
            "x.partial-",
            "x.partial-5b",
            "x.old-5",
            "photos.partial-99999999999999",
        ] {
            assert_eq!(parse_temp_name(other), None, "{other}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = running.id();
        let me = std::process::id();

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let touch = |name: &str| fs::write(d.join(name), name).unwrap();
        let mkdir = |name: &str| fs::create_dir(d.join(name)).unwrap();
        touch(&format!(".last.safetensors.tmp-{dead}-0"));
        mkdir(&format!("eval-test.partial-{dead}"));
        fs::write(d.join(format!("eval-test.partial-{dead}/x")), b"x").unwrap();
        let kept = [
            format!(".last.safetensors.tmp-{live}-0"),
            format!(".curves.png.tmp-{me}-3"),
            format!("eval-test.partial-{live}"),
            format!("notes.tmp-{dead}-0"),
            format!("eval-test.old-{dead}"),
            format!("photos.partial-{dead}x"),
            "config.json".to_string(),
        ];
        for k in &kept {
            if k.contains("partial") || k.contains("old") {
                mkdir(k);
            } else {
                touch(k);
            }
        }
        // A folder with a file's temporary name (and the reverse) is not ours.
        mkdir(&format!(".odd.tmp-{dead}-1"));
        touch(&format!("odd.partial-{dead}"));

        let removed = remove_stale_temps(d);
        running.kill().unwrap();
        running.wait().unwrap();
        assert_eq!(
            removed,
            vec![
                d.join(format!(".last.safetensors.tmp-{dead}-0")),
                d.join(format!("eval-test.partial-{dead}")),
            ]
        );
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = kept.to_vec();
        want.push(format!(".odd.tmp-{dead}-1"));
        want.push(format!("odd.partial-{dead}"));
        want.sort();
        assert_eq!(left, want);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn staging_removes_its_own_stale_partials_only() {
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stale = dir.path().join(format!("out.partial-{dead}"));
        let other = dir.path().join(format!("other.partial-{dead}"));
        fs::create_dir(&stale).unwrap();
        fs::create_dir(&other).unwrap();
        staged(&out, false, &[], "a").unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
    }

    #[test]
    fn names_become_text_losslessly() {
        for plain in ["a.jpg", "Benign/ä é.png", "x\\y", "back\\", "a,b \"c\".jpg"] {
            assert_eq!(os_str_to_string(OsStr::new(&plain)), plain);
        }
        // Valid names that read like an escape are escaped too, so they stay distinct.
        assert_eq!(os_str_to_string(OsStr::new("a\\x41")), "a\\\\x41");
        assert_eq!(os_str_to_string(OsStr::new("a\\\\b")), "a\\\\\\\\b");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let name = |b: &[u8]| os_str_to_string(OsStr::from_bytes(b));
            assert_eq!(name(b"a\xff.jpg"), "a\\xFF.jpg");
            assert_eq!(name(b"a\xfe.jpg"), "a\\xFE.jpg");
            assert_eq!(name(b"\\\xc3"), "\\\\\\xC3");
            // Every name over a small alphabet maps to its own text, and back.
            let alphabet: [u8; 6] = [b'a', b'\\', b'x', b'4', b'F', 0xff];
            let mut seen = std::collections::HashMap::new();
            let mut names: Vec<Vec<u8>> = vec![Vec::new()];
            for _ in 0..5 {
                let mut longer = Vec::new();
                for n in &names {
                    for &c in &alphabet {
                        let mut m = n.clone();
                        m.push(c);
                        longer.push(m);
                    }
                }
                for n in &longer {
                    let text = name(n);
                    assert_eq!(unescape_to_bytes(&text), *n, "{text}");
                    if let Ok(s) = std::str::from_utf8(n) {
                        if !s.contains("\\\\") && !s.contains("\\x") {
                            assert_eq!(text, s);
                        }
                    }
                    if let Some(prev) = seen.insert(text.clone(), n.clone()) {
                        panic!("{prev:?} and {n:?} both give {text}");
                    }
                }
                names = longer;
            }
        }
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

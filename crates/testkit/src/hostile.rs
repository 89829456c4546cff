//! The hostile-input suite: each stage binary's `tests/hostile.rs` is a table of [`Case`]s
//! handed to [`run_table`].
//!
//! A case builds its inputs in a fresh [`Sandbox`] (a temporary folder that is the child's
//! working directory, so arguments are short relative paths that the messages repeat) and
//! returns the [`Invocation`]. The runner snapshots the trees the case lists as the user's,
//! runs the binary under a hard timeout, and checks:
//! - the exit code;
//! - that stderr holds every needle group of the case (a group is a list of alternatives,
//!   matched case-insensitively: the offending path, and a word naming the problem);
//! - that every listed tree is byte-identical afterwards;
//! - what holds for every case: no timeout, no panic, a failure says `error:`, and no
//!   `caused by:` line repeats what the line above it already said;
//! - the case's own extra check, if any.
//!
//! Every case runs, then the test fails once listing every failed case with its reasons and
//! output. `LESION_HOSTILE_CASE=substring` runs only the matching cases.

use std::any::Any;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::data;
use crate::process::{self, Output, Running};
use crate::tree;

/// The exit status a case expects.
#[derive(Debug, Clone, Copy)]
pub enum Exit {
    Code(i32),
    /// Any of these codes (for behaviour the issue allows either way; the case's check
    /// then tells the two apart).
    OneOf(&'static [i32]),
}

/// Something that must appear on stderr: any one of the alternatives (case-insensitive).
pub type Needle = &'static [&'static str];

/// A stage run finished: checks of the outcome that a table row cannot express.
pub type Check = fn(&Sandbox, &Output) -> Result<(), String>;

/// Talks to a running child (a server); the runner stops it afterwards if it still runs.
pub type During = Box<dyn FnOnce(&mut Running) -> Result<(), String>>;

/// One row of a hostile-input table. Built with [`Case::new`] and the `const` setters, so
/// that a table is a `const` slice.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    /// Builds the inputs in the sandbox and says how to run the binary.
    pub setup: fn(&Sandbox) -> Invocation,
    pub exit: Exit,
    /// Needles that stderr must hold.
    pub stderr: &'static [Needle],
    /// Needles that stdout or stderr must hold (for results and reports on stdout).
    pub output: &'static [Needle],
    /// Sandbox-relative trees that must be byte-identical afterwards.
    pub unchanged: &'static [&'static str],
    pub check: Option<Check>,
    /// Hard limit: the child is killed (and the case fails) after this long.
    pub timeout_s: u64,
}

impl Case {
    /// A case expecting exit code 0, no messages, no unchanged trees, a 120 s limit.
    pub const fn new(name: &'static str, setup: fn(&Sandbox) -> Invocation) -> Self {
        Case {
            name,
            setup,
            exit: Exit::Code(0),
            stderr: &[],
            output: &[],
            unchanged: &[],
            check: None,
            timeout_s: 120,
        }
    }

    pub const fn exits(mut self, code: i32) -> Self {
        self.exit = Exit::Code(code);
        self
    }

    pub const fn exits_one_of(mut self, codes: &'static [i32]) -> Self {
        self.exit = Exit::OneOf(codes);
        self
    }

    pub const fn stderr(mut self, needles: &'static [Needle]) -> Self {
        self.stderr = needles;
        self
    }

    pub const fn output(mut self, needles: &'static [Needle]) -> Self {
        self.output = needles;
        self
    }

    pub const fn unchanged(mut self, trees: &'static [&'static str]) -> Self {
        self.unchanged = trees;
        self
    }

    pub const fn check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }

    pub const fn timeout_s(mut self, seconds: u64) -> Self {
        self.timeout_s = seconds;
        self
    }
}

/// How to run the binary for one case.
pub struct Invocation {
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// Needles known only at run time (a port, a process id): each must appear on stderr.
    pub stderr: Vec<String>,
    pub during: Option<During>,
    /// Kept alive until the case has been judged (a listener, a guard that restores
    /// permissions).
    pub keep: Vec<Box<dyn Any>>,
    /// Why the case cannot run here (reported, not failed).
    pub skip: Option<String>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("args", &self.args)
            .field("env", &self.env)
            .field("stderr", &self.stderr)
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl Invocation {
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Invocation {
            args: args.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: Vec::new(),
            stderr: Vec::new(),
            during: None,
            keep: Vec::new(),
            skip: None,
        }
    }

    /// A case that cannot run in this environment, and why.
    pub fn skip(reason: impl Into<String>) -> Self {
        let mut inv = Invocation::new(Vec::<OsString>::new());
        inv.skip = Some(reason.into());
        inv
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn expect_stderr(mut self, needle: impl Into<String>) -> Self {
        self.stderr.push(needle.into());
        self
    }

    pub fn during(mut self, f: impl FnOnce(&mut Running) -> Result<(), String> + 'static) -> Self {
        self.during = Some(Box::new(f));
        self
    }

    pub fn keep(mut self, value: impl Any) -> Self {
        self.keep.push(Box::new(value));
        self
    }
}

/// Inputs built once per table run and copied into each sandbox that asks for them.
#[derive(Debug)]
struct Fixtures {
    dir: tempfile::TempDir,
    photos: OnceLock<PathBuf>,
    prepared: OnceLock<PathBuf>,
    trained: OnceLock<PathBuf>,
    untrained: OnceLock<PathBuf>,
}

impl Fixtures {
    fn new() -> Self {
        Fixtures {
            dir: tempfile::Builder::new()
                .prefix("lesion-fixtures-")
                .tempdir()
                .unwrap(),
            photos: OnceLock::new(),
            prepared: OnceLock::new(),
            trained: OnceLock::new(),
            untrained: OnceLock::new(),
        }
    }

    fn photos(&self) -> &Path {
        self.photos
            .get_or_init(|| data::write_photos(&self.dir.path().join("photos"), data::PER_CLASS))
    }

    fn prepared(&self) -> &Path {
        self.prepared
            .get_or_init(|| data::prepare(self.photos(), &self.dir.path().join("prepared")))
    }

    fn trained(&self) -> &Path {
        self.trained
            .get_or_init(|| data::train(self.prepared(), &self.dir.path().join("trained")))
    }

    fn untrained(&self) -> &Path {
        self.untrained
            .get_or_init(|| data::untrained_run(&self.dir.path().join("untrained"), 64))
    }
}

/// The working folder of one case.
#[derive(Debug)]
pub struct Sandbox<'a> {
    dir: tempfile::TempDir,
    fixtures: &'a Fixtures,
}

impl Sandbox<'_> {
    /// The folder itself (the child's working directory).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `rel` inside the sandbox.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating its folders) and returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Creates a folder (and its parents).
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    fn copy_of(&self, template: &Path, rel: impl AsRef<Path>) -> PathBuf {
        let to = self.path(rel);
        tree::copy_tree(template, &to);
        to
    }

    /// A folder of [`data::PER_CLASS`] photos per class (`Benign/`, `Malignant/`) at `rel`.
    pub fn photos(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.copy_of(self.fixtures.photos(), rel)
    }

    /// A prepared dataset (of [`Sandbox::photos`]) at `rel`.
    pub fn prepared(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.copy_of(self.fixtures.prepared(), rel)
    }

    /// A finished one-epoch run at `rel`, trained on a prepared dataset equal to
    /// [`Sandbox::prepared`] (its `config.json` names the shared copy, which resuming uses).
    pub fn trained_run(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.copy_of(self.fixtures.trained(), rel)
    }

    /// A run folder with random weights, 64 px, threshold 0.5, no data of its own.
    pub fn untrained_run(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.copy_of(self.fixtures.untrained(), rel)
    }
}

/// Runs every case of `cases` against the binary `bin` (see the module docs) and fails the
/// test, listing each failed case, if any failed.
pub fn run_table(bin: &str, cases: &[Case]) {
    let filter = std::env::var("LESION_HOSTILE_CASE").ok();
    let fixtures = Fixtures::new();
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in cases {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        ran += 1;
        let started = std::time::Instant::now();
        match run_case(bin, case, &fixtures) {
            Ok(None) => println!(
                "ok      {} ({:.1} s)",
                case.name,
                started.elapsed().as_secs_f64()
            ),
            Ok(Some(why)) => println!("skipped {}: {why}", case.name),
            Err(report) => {
                println!(
                    "FAILED  {} ({:.1} s)",
                    case.name,
                    started.elapsed().as_secs_f64()
                );
                failed.push(report);
            }
        }
    }
    assert!(ran > 0, "no case matches LESION_HOSTILE_CASE={filter:?}");
    assert!(
        failed.is_empty(),
        "{} of {ran} hostile-input cases of {bin} failed:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// `Ok(None)` passed, `Ok(Some(why))` skipped, `Err(report)` failed.
fn run_case(bin: &str, case: &Case, fixtures: &Fixtures) -> Result<Option<String>, String> {
    let sandbox = Sandbox {
        dir: tempfile::Builder::new()
            .prefix(&format!("hostile-{}-", case.name))
            .tempdir()
            .unwrap(),
        fixtures,
    };
    let inv = (case.setup)(&sandbox);
    if let Some(why) = inv.skip {
        return Ok(Some(why));
    }
    let before: Vec<_> = case
        .unchanged
        .iter()
        .map(|t| tree::snapshot(&sandbox.path(t)))
        .collect();

    let mut cmd = Command::new(bin);
    cmd.args(&inv.args).current_dir(sandbox.root());
    for key in [
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "RUST_BACKTRACE",
    ] {
        cmd.env_remove(key);
    }
    // An empty Hub cache of its own, outside every tree a case protects.
    let hf_home = sandbox.path(".hf-home");
    cmd.env("HF_HOME", &hf_home)
        .env("RAYON_NUM_THREADS", "2")
        .env("NO_COLOR", "1");
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    let mut running = process::spawn(cmd, Duration::from_secs(case.timeout_s));
    let mut problems = Vec::new();
    if let Some(during) = inv.during {
        if let Err(e) = during(&mut running) {
            problems.push(e);
        }
        running.terminate();
    }
    let out = running.finish();

    problems.extend(judge(case, &inv.stderr, &out));
    for (t, was) in case.unchanged.iter().zip(&before) {
        let changes = tree::diff(was, &tree::snapshot(&sandbox.path(t)));
        if !changes.is_empty() {
            let shown = changes
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = match changes.len() {
                n if n > 12 => format!(" and {} more", n - 12),
                _ => String::new(),
            };
            problems.push(format!("{t} changed: {shown}{more}"));
        }
    }
    if let Some(check) = case.check {
        if let Err(e) = check(&sandbox, &out) {
            problems.push(e);
        }
    }
    if problems.is_empty() {
        return Ok(None);
    }
    let args: Vec<String> = inv
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let envs: Vec<String> = inv
        .env
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    Err(format!(
        "--- {name}: {envs}{bin} {args}\n  {problems}\n  exit: {code:?} after {secs:.1} s\n  \
         stdout: {stdout}\n  stderr: {stderr}",
        name = case.name,
        envs = envs.iter().map(|e| format!("{e} ")).collect::<String>(),
        bin = Path::new(bin).file_name().unwrap().to_string_lossy(),
        args = args.join(" "),
        problems = problems.join("\n  "),
        code = out.code,
        secs = out.elapsed.as_secs_f64(),
        stdout = excerpt(&out.stdout),
        stderr = excerpt(&out.stderr),
    ))
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 1500;
    let t = text.trim_end();
    if t.len() <= MAX {
        return t.replace('\n', "\n    ");
    }
    let mut cut = MAX;
    while !t.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} [...]", &t[..cut]).replace('\n', "\n    ")
}

/// What is wrong with `out` for `case`, one line each.
fn judge(case: &Case, dynamic: &[String], out: &Output) -> Vec<String> {
    let mut problems = Vec::new();
    if out.timed_out {
        problems.push(format!(
            "killed after the {} s limit (a hang)",
            case.timeout_s
        ));
    }
    match (case.exit, out.code) {
        (Exit::Code(want), Some(got)) if want == got => {}
        (Exit::OneOf(want), Some(got)) if want.contains(&got) => {}
        (want, got) => problems.push(format!("exit code {got:?}, expected {want:?}")),
    }
    let stderr = out.stderr.to_lowercase();
    let all = out.all().to_lowercase();
    for needle in case.stderr {
        if !needle.iter().any(|n| stderr.contains(&n.to_lowercase())) {
            problems.push(format!("stderr lacks {}", describe(needle)));
        }
    }
    for needle in case.output {
        if !needle.iter().any(|n| all.contains(&n.to_lowercase())) {
            problems.push(format!("output lacks {}", describe(needle)));
        }
    }
    for needle in dynamic {
        if !stderr.contains(&needle.to_lowercase()) {
            problems.push(format!("stderr lacks `{needle}`"));
        }
    }
    problems.extend(common_rules(out));
    problems
}

fn describe(needle: Needle) -> String {
    match needle {
        [one] => format!("`{one}`"),
        many => format!(
            "any of {}",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What every run must respect, whatever the case: no panic, a failure that says `error:`,
/// and no cause printed twice.
pub fn common_rules(out: &Output) -> Vec<String> {
    let mut problems = Vec::new();
    if out.stderr.contains("panicked at") {
        problems.push("panicked".into());
    }
    if out.code.is_some_and(|c| c != 0) && !out.stderr.lines().any(|l| l.starts_with("error")) {
        problems.push("failed without an `error:` line on stderr".into());
    }
    let lines: Vec<&str> = out.stderr.lines().collect();
    for pair in lines.windows(2) {
        if let Some(cause) = pair[1].trim_start().strip_prefix("caused by: ") {
            if !cause.is_empty() && pair[0].contains(cause) {
                problems.push(format!(
                    "cause printed twice: `{}` repeats `{}`",
                    pair[1].trim(),
                    pair[0]
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(code: i32, stderr: &str) -> Output {
        Output {
            code: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
            timed_out: false,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_repeated_cause_is_reported() {
        let twice = output(
            2,
            "error: data/x: No such file or directory (os error 2)\n  caused by: No such file or directory (os error 2)\n",
        );
        assert_eq!(common_rules(&twice).len(), 1);
        let once = output(
            2,
            "error: training failed\n  caused by: data/x: no manifest.json\n",
        );
        assert!(common_rules(&once).is_empty());
        assert_eq!(common_rules(&output(1, "oops\n")).len(), 1);
    }

    #[test]
    fn needles_are_alternatives_and_case_insensitive() {
        let case = Case::new("t", |_| Invocation::new(["x"]))
            .exits(2)
            .stderr(&[&["PHOTOS"], &["refus", "not a prepared"]]);
        let out = output(2, "error: photos: Not a prepared dataset\n");
        assert!(judge(&case, &[], &out).is_empty());
        let out = output(2, "error: photos: something else\n");
        assert_eq!(judge(&case, &[], &out).len(), 1);
        assert_eq!(judge(&case, &["port 9".into()], &out).len(), 2);
    }
}

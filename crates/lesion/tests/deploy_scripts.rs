//! The cross-validation scripts and scheduler files: `scripts/cv.sh`, the Slurm array
//! (`deploy/slurm`) and the Kubernetes Jobs (`deploy/k8s`), run with stub binaries that log
//! their argv instead of training. Every scheduler's task for fold I must run exactly the
//! lesion-train command that `scripts/cv.sh all` runs for fold I (and the same aggregation),
//! with the scheduler's index variable set by hand. Needs `bash`; no scheduler.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// K of the fake prepared folder.
const K: usize = 3;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn cv_sh() -> PathBuf {
    repo().join("scripts/cv.sh")
}

/// A scratch folder with stub `lesion-{prep,train,eval}` binaries, a prepared folder whose
/// manifest has [`K`] folds, and a CV folder path (with a space, to catch lost quoting).
struct Sandbox {
    dir: tempfile::TempDir,
}

/// One logged invocation: the binary's name, then its arguments.
type Call = Vec<String>;

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for name in ["lesion-prep", "lesion-train", "lesion-eval", "sbatch"] {
            let script = if name == "sbatch" {
                // sbatch's --parsable answer is the job id; the stub numbers its calls from 100
                // and logs the environment the job would get.
                "#!/bin/sh\n\
                 n=$(cat \"$STUB_LOG.n\" 2>/dev/null || echo 100)\n\
                 echo $((n + 1)) >\"$STUB_LOG.n\"\n\
                 { printf 'sbatch'; for a in \"$@\"; do printf '\\t%s' \"$a\"; done; \
                   printf '\\tPREPARED=%s\\tCV_DIR=%s\\tLESION_REPO=%s\\n' \"$PREPARED\" \"$CV_DIR\" \"$LESION_REPO\"; \
                 } >>\"$STUB_LOG\"\n\
                 echo \"$n\"\n"
                    .to_string()
            } else {
                "#!/bin/sh\n\
                 { printf '%s' \"$(basename \"$0\")\"; for a in \"$@\"; do printf '\\t%s' \"$a\"; done; printf '\\n'; } >>\"$STUB_LOG\"\n"
                    .to_string()
            };
            let path = bin.join(name);
            fs::write(&path, script).unwrap();
            make_executable(&path);
        }
        let prepared = dir.path().join("prepared");
        fs::create_dir(&prepared).unwrap();
        // The layout lesion-prep writes (pretty JSON); keys nested deeper, before the top-level
        // one, must not be taken for K.
        fs::write(
            prepared.join("manifest.json"),
            format!(
                "{{\n  \"format\": \"lesion-prepared\",\n  \"images\": [\n    {{\n      \"path\": \"a.png\",\n      \"fold\": 7,\n      \"folds\": 9\n    }}\n  ],\n  \"folds\": {K}\n}}\n"
            ),
        )
        .unwrap();
        Sandbox { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn prepared(&self) -> String {
        self.path("prepared").to_str().unwrap().to_string()
    }

    fn cv_dir(&self) -> String {
        self.path("cv runs").to_str().unwrap().to_string()
    }

    /// A command with the stubs as `$LESION_BIN`, logging into `log`, run in the scratch
    /// folder (not the checkout: the scripts must not depend on the working directory).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, log: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(self.dir.path())
            .env("LESION_BIN", self.path("bin"))
            .env("STUB_LOG", self.path(log))
            .env_remove("TRAIN_ARGS")
            .env_remove("EVAL_ARGS")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_SUBMIT_DIR")
            .env_remove("LESION_REPO")
            .env_remove("JOB_COMPLETION_INDEX");
        cmd
    }

    /// The calls logged into `log` (none when the file was never written).
    fn calls(&self, log: &str) -> Vec<Call> {
        match fs::read_to_string(self.path(log)) {
            Ok(text) => text
                .lines()
                .map(|l| l.split('\t').map(str::to_string).collect())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `scripts/cv.sh all PREPARED CV_DIR train_args...` with `EVAL_ARGS=eval_args`: its calls.
    fn reference_all(&self, train_args: &[&str], eval_args: &str) -> Vec<Call> {
        let out = self
            .command(cv_sh(), "all.log")
            .arg("all")
            .arg(self.prepared())
            .arg(self.cv_dir())
            .args(train_args)
            .env("EVAL_ARGS", eval_args)
            .output()
            .unwrap();
        assert_success(&out, "cv.sh all");
        self.calls("all.log")
    }
}

#[cfg(unix)]
fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_usage_error(out: &Output, what: &str, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{what}: stderr lacks {needle:?}: {stderr}"
    );
}

fn call(parts: &[&str]) -> Call {
    parts.iter().map(|s| s.to_string()).collect()
}

fn train_call(sb: &Sandbox, fold: usize, extra: &[&str]) -> Call {
    let fold_s = fold.to_string();
    let out = format!("{}/fold-{fold}", sb.cv_dir());
    let mut c = call(&[
        "lesion-train",
        "--data",
        &sb.prepared(),
        "--fold",
        &fold_s,
        "--out",
        &out,
    ]);
    c.extend(extra.iter().map(|s| s.to_string()));
    c
}

fn eval_call(sb: &Sandbox, extra: &[&str]) -> Call {
    let mut c = call(&[
        "lesion-eval",
        "--cv",
        &sb.cv_dir(),
        "--data",
        &sb.prepared(),
    ]);
    c.extend(extra.iter().map(|s| s.to_string()));
    c
}

#[test]
fn all_trains_every_fold_of_the_manifest_then_aggregates() {
    let sb = Sandbox::new();
    let calls = sb.reference_all(&["--epochs", "2", "two words"], "--force -q");
    let mut want: Vec<Call> = (0..K)
        .map(|i| train_call(&sb, i, &["--epochs", "2", "two words"]))
        .collect();
    want.push(eval_call(&sb, &["--force", "-q"]));
    assert_eq!(calls, want);
}

#[test]
fn prep_fold_and_eval_run_the_contract_commands() {
    let sb = Sandbox::new();
    let out = sb
        .command(cv_sh(), "prep.log")
        .args(["prep", "photos", "out dir", "5", "--size", "64"])
        .output()
        .unwrap();
    assert_success(&out, "cv.sh prep");
    assert_eq!(
        sb.calls("prep.log"),
        vec![call(&[
            "lesion-prep",
            "photos",
            "--out",
            "out dir",
            "--folds",
            "5",
            "--size",
            "64"
        ])]
    );
    // Each command is echoed before it runs.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lesion-prep photos --out out\\ dir --folds 5 --size 64"),
        "{stderr}"
    );

    let out = sb
        .command(cv_sh(), "fold.log")
        .args(["fold", "2"])
        .arg(sb.prepared())
        .arg(sb.cv_dir())
        .arg("--seed=3")
        .output()
        .unwrap();
    assert_success(&out, "cv.sh fold 2");
    assert_eq!(
        sb.calls("fold.log"),
        vec![train_call(&sb, 2, &["--seed=3"])]
    );

    let out = sb
        .command(cv_sh(), "eval.log")
        .arg("eval")
        .arg(sb.prepared())
        .arg(sb.cv_dir())
        .args(["--out", "elsewhere"])
        .output()
        .unwrap();
    assert_success(&out, "cv.sh eval");
    assert_eq!(
        sb.calls("eval.log"),
        vec![eval_call(&sb, &["--out", "elsewhere"])]
    );

    let out = sb
        .command(cv_sh(), "folds.log")
        .arg("folds")
        .arg(sb.prepared())
        .output()
        .unwrap();
    assert_success(&out, "cv.sh folds");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{K}\n"));
}

#[test]
fn bad_fold_indices_and_arguments_exit_2_without_running_anything() {
    let sb = Sandbox::new();
    for bad in ["3", "10", "-1", "x", "1.5", "01", " 1", ""] {
        let out = sb
            .command(cv_sh(), "bad.log")
            .args(["fold", bad])
            .arg(sb.prepared())
            .arg(sb.cv_dir())
            .output()
            .unwrap();
        assert_usage_error(&out, &format!("fold {bad:?}"), "fold index");
    }
    let out = sb
        .command(cv_sh(), "bad.log")
        .args(["fold", "3"])
        .arg(sb.prepared())
        .arg(sb.cv_dir())
        .output()
        .unwrap();
    assert_usage_error(&out, "fold 3", "has 3 folds (0..2)");

    // A folder that is not prepared, and one prepared without folds.
    let missing = sb.path("missing");
    let out = sb
        .command(cv_sh(), "bad.log")
        .args(["fold", "0"])
        .arg(&missing)
        .arg(sb.cv_dir())
        .output()
        .unwrap();
    assert_usage_error(&out, "no manifest", "no manifest.json");
    let plain = sb.path("plain");
    fs::create_dir(&plain).unwrap();
    fs::write(plain.join("manifest.json"), "{\n  \"format\": \"x\"\n}\n").unwrap();
    for args in [vec!["fold", "0"], vec!["all"]] {
        let out = sb
            .command(cv_sh(), "bad.log")
            .args(&args)
            .arg(&plain)
            .arg(sb.cv_dir())
            .output()
            .unwrap();
        assert_usage_error(&out, &format!("{args:?} without folds"), "has no folds");
    }

    // Wrong shapes print the usage.
    for args in [
        vec![],
        vec!["bogus"],
        vec!["fold", "0"],
        vec!["eval", "p"],
        vec!["prep", "a", "b"],
    ] {
        let out = sb.command(cv_sh(), "bad.log").args(&args).output().unwrap();
        assert_usage_error(&out, &format!("{args:?}"), "Usage:");
    }
    let out = sb
        .command(cv_sh(), "bad.log")
        .args(["prep", "a", "b", "five"])
        .output()
        .unwrap();
    assert_usage_error(&out, "prep K=five", "K 'five'");

    assert!(
        sb.calls("bad.log").is_empty(),
        "a rejected call ran a binary"
    );
}

#[test]
fn a_failing_binary_fails_cv_sh_all_with_its_code() {
    let sb = Sandbox::new();
    let train = sb.path("bin/lesion-train");
    fs::write(&train, "#!/bin/sh\nexit 7\n").unwrap();
    make_executable(&train);
    let out = sb
        .command(cv_sh(), "fail.log")
        .arg("all")
        .arg(sb.prepared())
        .arg(sb.cv_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(
        sb.calls("fail.log").is_empty(),
        "eval ran after a failed fold"
    );
}

#[test]
fn slurm_array_tasks_run_the_folds_of_cv_sh_all() {
    let sb = Sandbox::new();
    let train_args = ["--epochs", "2", "--seed", "7"];
    let reference = sb.reference_all(&train_args, "--force");
    let sbatch = repo().join("deploy/slurm/cv.sbatch");
    for i in 0..K {
        let log = format!("slurm-{i}.log");
        let out = sb
            .command("bash", &log)
            .arg(&sbatch)
            .env("SLURM_ARRAY_TASK_ID", i.to_string())
            .env("SLURM_SUBMIT_DIR", repo())
            .env("PREPARED", sb.prepared())
            .env("CV_DIR", sb.cv_dir())
            .env("TRAIN_ARGS", train_args.join(" "))
            .output()
            .unwrap();
        assert_success(&out, &format!("cv.sbatch task {i}"));
        assert_eq!(sb.calls(&log), vec![reference[i].clone()], "task {i}");
    }
    let out = sb
        .command("bash", "slurm-eval.log")
        .arg(repo().join("deploy/slurm/cv-eval.sbatch"))
        .env("LESION_REPO", repo())
        .env("PREPARED", sb.prepared())
        .env("CV_DIR", sb.cv_dir())
        .env("EVAL_ARGS", "--force")
        .output()
        .unwrap();
    assert_success(&out, "cv-eval.sbatch");
    assert_eq!(sb.calls("slurm-eval.log"), vec![reference[K].clone()]);

    // An index past K, and no index at all.
    let out = sb
        .command("bash", "slurm-bad.log")
        .arg(&sbatch)
        .env("SLURM_ARRAY_TASK_ID", K.to_string())
        .env("SLURM_SUBMIT_DIR", repo())
        .env("PREPARED", sb.prepared())
        .env("CV_DIR", sb.cv_dir())
        .output()
        .unwrap();
    assert_usage_error(&out, "task K", "out of range");
    let out = sb
        .command("bash", "slurm-bad.log")
        .arg(&sbatch)
        .env("SLURM_SUBMIT_DIR", repo())
        .env("PREPARED", sb.prepared())
        .env("CV_DIR", sb.cv_dir())
        .output()
        .unwrap();
    assert_usage_error(&out, "no task id", "SLURM_ARRAY_TASK_ID");
    // Submitted from outside the checkout without LESION_REPO: Slurm runs a copy of the
    // script, so it cannot find cv.sh beside itself.
    let out = sb
        .command("bash", "slurm-bad.log")
        .arg(&sbatch)
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("SLURM_SUBMIT_DIR", sb.dir.path())
        .env("PREPARED", sb.prepared())
        .env("CV_DIR", sb.cv_dir())
        .output()
        .unwrap();
    assert_usage_error(&out, "outside the checkout", "set LESION_REPO");
    assert!(sb.calls("slurm-bad.log").is_empty());
}

#[test]
fn slurm_submit_sizes_the_array_from_the_manifest_and_chains_the_aggregation() {
    let sb = Sandbox::new();
    let path = format!(
        "{}:{}",
        sb.path("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = sb
        .command(repo().join("deploy/slurm/submit.sh"), "submit.log")
        .arg("prepared")
        .arg("cv runs")
        .args(["-p", "gpu"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_success(&out, "submit.sh");
    let slurm = repo().join("deploy/slurm");
    let env_tail = [
        format!("PREPARED={}", sb.prepared()),
        format!("CV_DIR={}", sb.cv_dir()),
        format!("LESION_REPO={}", repo().display()),
    ];
    let mut folds = call(&[
        "sbatch",
        "--parsable",
        "--export=ALL",
        &format!("--array=0-{}", K - 1),
        "-p",
        "gpu",
        slurm.join("cv.sbatch").to_str().unwrap(),
    ]);
    folds.extend(env_tail.iter().cloned());
    let mut agg = call(&[
        "sbatch",
        "--parsable",
        "--export=ALL",
        "--dependency=afterok:100",
        "-p",
        "gpu",
        slurm.join("cv-eval.sbatch").to_str().unwrap(),
    ]);
    agg.extend(env_tail.iter().cloned());
    assert_eq!(sb.calls("submit.log"), vec![folds, agg]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("folds: job 100 (array 0-2), aggregation: job 101"));
}

/// The container of a Kubernetes Job manifest: its `command` (a one-line flow sequence, which
/// is JSON), the one `args` item that calls cv.sh, and its `- {name: N, value: V}` env entries.
struct Container {
    command: Vec<String>,
    script: String,
    env: HashMap<String, String>,
}

fn job_container(file: &str) -> Container {
    let path = repo().join("deploy/k8s").join(file);
    let text = fs::read_to_string(&path).unwrap();
    let one = |what: &str, pick: &dyn Fn(&str) -> Option<String>| {
        let found: Vec<String> = text.lines().filter_map(|l| pick(l.trim())).collect();
        assert_eq!(found.len(), 1, "{file}: expected one {what}, got {found:?}");
        found.into_iter().next().unwrap()
    };
    let command = one("command", &|l| {
        l.strip_prefix("command: ").map(str::to_string)
    });
    let script = one("cv.sh call", &|l| {
        l.strip_prefix("- ")
            .filter(|s| s.starts_with("exec cv.sh "))
            .map(str::to_string)
    });
    let mut env = HashMap::new();
    for line in text.lines().map(str::trim) {
        let entry = line
            .strip_prefix("- {name: ")
            .and_then(|rest| rest.trim_end_matches('}').split_once(", value: "));
        if let Some((name, value)) = entry {
            env.insert(name.to_string(), value.trim_matches('"').to_string());
        }
    }
    Container {
        command: serde_json::from_str(&command).unwrap(),
        script,
        env,
    }
}

impl Container {
    /// Runs the container's command as the pod would, with `cv.sh` from the checkout on
    /// PATH (the image installs it as /usr/local/bin/cv.sh) and the manifest's environment,
    /// paths replaced by the sandbox's.
    fn run(&self, sb: &Sandbox, log: &str, env: &[(&str, String)]) -> Output {
        let path = format!(
            "{}:{}",
            repo().join("scripts").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = sb.command(&self.command[0], log);
        cmd.args(&self.command[1..])
            .arg(&self.script)
            .env("PATH", path);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

#[test]
fn kubernetes_indexed_job_pods_run_the_folds_of_cv_sh_all() {
    let sb = Sandbox::new();
    let job = job_container("cv-job.yaml");
    let text = fs::read_to_string(repo().join("deploy/k8s/cv-job.yaml")).unwrap();
    assert!(text.contains("\n  completionMode: Indexed\n"));
    assert!(text.contains("claimName: lesion-data"));
    let train_args: Vec<&str> = job.env["TRAIN_ARGS"].split_whitespace().collect();
    assert!(!train_args.is_empty());
    let eval = job_container("cv-eval-job.yaml");
    let reference = sb.reference_all(&train_args, &eval.env["EVAL_ARGS"]);
    let paths = [("PREPARED", sb.prepared()), ("CV_DIR", sb.cv_dir())];
    for i in 0..K {
        let log = format!("k8s-{i}.log");
        let mut env = paths.to_vec();
        env.push(("JOB_COMPLETION_INDEX", i.to_string()));
        let out = job.run(&sb, &log, &env);
        assert_success(&out, &format!("pod {i}"));
        assert_eq!(sb.calls(&log), vec![reference[i].clone()], "pod {i}");
    }
    let out = eval.run(&sb, "k8s-eval.log", &paths);
    assert_success(&out, "eval pod");
    assert_eq!(sb.calls("k8s-eval.log"), vec![reference[K].clone()]);

    let mut env = paths.to_vec();
    env.push(("JOB_COMPLETION_INDEX", K.to_string()));
    let out = job.run(&sb, "k8s-bad.log", &env);
    assert_usage_error(&out, "pod K", "out of range");
    assert!(sb.calls("k8s-bad.log").is_empty());
}

#[test]
fn kubernetes_prep_job_runs_cv_sh_prep() {
    let sb = Sandbox::new();
    let job = job_container("cv-prep-job.yaml");
    let out = job.run(&sb, "k8s-prep.log", &[]);
    assert_success(&out, "prep pod");
    let mut want = call(&[
        "lesion-prep",
        &job.env["IMAGES"],
        "--out",
        &job.env["PREPARED"],
        "--folds",
        &job.env["K"],
    ]);
    want.extend(job.env["PREP_ARGS"].split_whitespace().map(str::to_string));
    assert_eq!(sb.calls("k8s-prep.log"), vec![want]);
}

/// The Slurm array, the Indexed Job and the prep Job are all written for the same K.
#[test]
fn schedulers_agree_on_k() {
    let sbatch = fs::read_to_string(repo().join("deploy/slurm/cv.sbatch")).unwrap();
    let job = fs::read_to_string(repo().join("deploy/k8s/cv-job.yaml")).unwrap();
    let array: Vec<&str> = sbatch
        .lines()
        .filter_map(|l| l.strip_prefix("#SBATCH --array="))
        .collect();
    assert_eq!(array, ["0-4"]);
    let completions: Vec<&str> = job
        .lines()
        .filter_map(|l| l.trim().strip_prefix("completions: "))
        .collect();
    assert_eq!(completions, ["5"]);
    assert_eq!(job_container("cv-prep-job.yaml").env["K"], "5");
}

#[test]
fn scripts_parse_and_pass_shellcheck_when_installed() {
    let scripts = [
        "scripts/cv.sh",
        "deploy/slurm/cv.sbatch",
        "deploy/slurm/cv-eval.sbatch",
        "deploy/slurm/submit.sh",
    ];
    for s in scripts {
        let out = Command::new("bash")
            .arg("-n")
            .arg(repo().join(s))
            .output()
            .unwrap();
        assert_success(&out, &format!("bash -n {s}"));
    }
    // shellcheck (a Debian package) is not everywhere; .ci/run installs it.
    match Command::new("shellcheck")
        .current_dir(repo())
        .args(scripts)
        .output()
    {
        Ok(out) => assert_success(
            &out,
            &format!("shellcheck: {}", String::from_utf8_lossy(&out.stdout)),
        ),
        Err(e) => eprintln!("shellcheck not run: {e}"),
    }
}

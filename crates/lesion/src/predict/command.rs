//! The `lesion-predict` command: its options, collecting the input files, predicting them
//! in batches (with a progress bar), writing Grad-CAM heatmaps, and the report with its
//! table, CSV and JSON renderings.
//!
//! A two-class run reports the malignant probability and the label at the threshold (table
//! `path probability label`, CSV `path,probability,label,threshold,error`). A run with more
//! classes reports every class's probability, in class order: the table shows the most
//! probable class and its probability (or the `--top-k` most probable), the CSV has one
//! `p_<class>` column per class, the JSON an object class → probability; with a malignant
//! group they add its probability and the decision at the threshold.
//!
//! Paths are written as [`fsutil::path_to_string`] does (names that are not UTF-8 escaped,
//! so that every row can be traced to its file). Heatmaps are never written onto an input
//! file or inside an input folder, and `force` replaces only PNG files.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use super::predictor::{Predictor, DEFAULT_BATCH_SIZE};
use crate::device::parse_device;
use crate::fsutil::{self, write_atomic};
use crate::gradcam::{self, Cam};
use crate::image_io::ResizePolicy;
use crate::{Error, Result};

/// Output format of [`PredictReport::render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Csv,
    Json,
}

/// Every option of `lesion-predict`.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictOptions {
    /// The run folder.
    pub run: PathBuf,
    /// Image files and folders (searched recursively).
    pub inputs: Vec<PathBuf>,
    /// Decision threshold instead of the run's.
    pub threshold: Option<f64>,
    /// Test-time augmentation; `None` follows the run's threshold.
    pub tta: Option<bool>,
    /// auto, cpu, cuda, cuda:N or metal.
    pub device: String,
    /// Folder for Grad-CAM heatmaps (one PNG per image).
    pub explain: Option<PathBuf>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Overwrite existing heatmap files.
    pub force: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// The table lists the K most probable classes of each image.
    pub top_k: Option<usize>,
    /// The class the heatmaps explain (a class name; default: each image's answer).
    pub explain_class: Option<String>,
}

impl PredictOptions {
    pub fn new(run: impl Into<PathBuf>, inputs: Vec<PathBuf>) -> Self {
        Self {
            run: run.into(),
            inputs,
            threshold: None,
            tta: None,
            device: "auto".into(),
            explain: None,
            batch_size: DEFAULT_BATCH_SIZE,
            force: false,
            progress: false,
            top_k: None,
            explain_class: None,
        }
    }
}

/// One input file found by [`collect_inputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// Where its heatmap goes, relative to the `--explain` folder.
    pub heatmap_name: PathBuf,
    /// Why it cannot be read at all (it is reported as failed, in its place).
    pub problem: Option<String>,
}

/// A file of a searched folder that is not an image, or a path that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    #[serde(serialize_with = "path_text")]
    pub path: PathBuf,
    pub reason: String,
}

/// What the command line's paths hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Files to predict, in argument order (folders sorted by path), including those that
    /// cannot be read (with their [`InputFile::problem`]).
    pub files: Vec<InputFile>,
    /// Files inside folders whose content is not an image (reported, not failures).
    pub skipped: Vec<Skipped>,
}

/// Expands files and folders: a named file is always tried (and fails if it is not an
/// image); a folder is searched recursively (hidden entries skipped) and its files are
/// kept when their first bytes are those of an image format, whatever their extension.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut names = HashSet::new();
    for arg in paths {
        let unreadable = |path: &Path, e: std::io::Error| InputFile {
            path: path.to_path_buf(),
            heatmap_name: PathBuf::new(),
            problem: Some(format!("cannot read: {e}")),
        };
        match fs::metadata(arg) {
            Err(e) => inputs.files.push(unreadable(arg, e)),
            Ok(m) if m.is_dir() => {
                let mut files = Vec::new();
                walk(arg, 0, &mut files)?;
                for path in files {
                    match sniff(&path) {
                        Ok(true) => {
                            let rel = path.strip_prefix(arg).unwrap_or(&path).to_path_buf();
                            let heatmap_name = unique_name(&rel, &mut names);
                            inputs.files.push(InputFile {
                                path,
                                heatmap_name,
                                problem: None,
                            });
                        }
                        Ok(false) => {
                            // The words prep uses for the same files.
                            let empty = fs::metadata(&path).is_ok_and(|m| m.len() == 0);
                            let reason = if empty {
                                "empty file"
                            } else {
                                "not an image (unrecognised content)"
                            };
                            inputs.skipped.push(Skipped {
                                path,
                                reason: reason.into(),
                            })
                        }
                        Err(e) => inputs.files.push(unreadable(&path, e)),
                    }
                }
            }
            Ok(_) => {
                let rel = PathBuf::from(arg.file_name().unwrap_or(arg.as_os_str()));
                let heatmap_name = unique_name(&rel, &mut names);
                inputs.files.push(InputFile {
                    path: arg.clone(),
                    heatmap_name,
                    problem: None,
                });
            }
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    if depth > 32 {
        return Err(Error::InvalidOption(format!(
            "{}: folders nested too deeply (a symlink loop?)",
            dir.display()
        )));
    }
    let mut entries = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, depth + 1, out)?,
            // A dangling link is passed on so that reading it is reported.
            _ => out.push(path),
        }
    }
    Ok(())
}

/// Whether a file starts like an image the decoder knows.
fn sniff(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::with_capacity(64);
    fs::File::open(path)?.take(64).read_to_end(&mut head)?;
    Ok(image::guess_format(&head).is_ok())
}

/// `<rel without extension>.gradcam.png`, suffixed `-2`, `-3`, ... when already taken.
fn unique_name(rel: &Path, taken: &mut HashSet<PathBuf>) -> PathBuf {
    let stem = rel.with_extension("");
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!("-{n}")
        };
        let mut name = stem.clone().into_os_string();
        name.push(format!("{suffix}.gradcam.png"));
        let name = PathBuf::from(name);
        if taken.insert(name.clone()) {
            return name;
        }
        n += 1;
    }
}

/// The outcome for one input file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileResult {
    #[serde(serialize_with = "path_text")]
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malignant: Option<bool>,
    /// Every class's probability, in class order. Written to JSON for runs with more than
    /// two classes (a two-class run's malignant probability says it all, and its JSON keeps
    /// its form).
    #[serde(skip_serializing_if = "ClassProbabilities::is_binary_or_none")]
    pub probabilities: Option<ClassProbabilities>,
    /// The class the heatmap explains (when not the two-class default, the malignant logit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explained: Option<String>,
    /// The Grad-CAM PNG written for it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_path_text"
    )]
    pub heatmap: Option<PathBuf>,
    /// Why it could not be predicted (or its heatmap written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the image differs markedly from the run's training images
    /// ([`crate::drift::InputProfile::image_warnings`]); empty when it does not, or when the
    /// run has no input profile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Class names and their probabilities, in class order; serialised as a JSON object in
/// that order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbabilities(pub Vec<(String, f64)>);

impl ClassProbabilities {
    fn is_binary_or_none(p: &Option<Self>) -> bool {
        p.as_ref().is_none_or(|p| p.0.len() <= 2)
    }

    /// The `k` most probable classes, most probable first (equal ones in class order).
    pub fn top_k(&self, k: usize) -> Vec<(&str, f64)> {
        let mut v: Vec<(usize, &(String, f64))> = self.0.iter().enumerate().collect();
        v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1).then(a.0.cmp(&b.0)));
        v.into_iter()
            .take(k)
            .map(|(_, (n, p))| (n.as_str(), *p))
            .collect()
    }
}

impl Serialize for ClassProbabilities {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, p) in &self.0 {
            m.serialize_entry(name, p)?;
        }
        m.end()
    }
}

fn path_text<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&fsutil::path_to_string(path))
}

fn optional_path_text<S: serde::Serializer>(
    path: &Option<PathBuf>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match path {
        Some(p) => path_text(p, s),
        None => s.serialize_none(),
    }
}

impl FileResult {
    fn failed(path: PathBuf, error: String) -> Self {
        Self {
            path,
            probability: None,
            label: None,
            malignant: None,
            probabilities: None,
            explained: None,
            heatmap: None,
            error: Some(error),
            warnings: Vec::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// What [`run`] found.
#[derive(Debug, Clone, Serialize)]
pub struct PredictReport {
    pub model_id: String,
    /// The class names, in label order (written to JSON for more than two classes).
    #[serde(skip_serializing_if = "two_or_fewer")]
    pub classes: Vec<String>,
    /// The decision threshold on the malignant probability; `None` without a malignant
    /// group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub threshold_source: String,
    pub tta: bool,
    pub resize: ResizePolicy,
    pub device: String,
    /// One entry per input file, in input order (failures included).
    pub results: Vec<FileResult>,
    /// Non-image files found in folders.
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
    /// The table lists this many most probable classes per image.
    #[serde(skip)]
    pub top_k: Option<usize>,
}

fn two_or_fewer(v: &[String]) -> bool {
    v.len() <= 2
}

impl PredictReport {
    fn is_binary(&self) -> bool {
        self.classes.len() <= 2
    }

    /// Whether some image differs markedly from the run's training images: the CSV then
    /// ends with a `warnings` column (the reasons joined by `; `).
    fn any_drift(&self) -> bool {
        self.results.iter().any(|r| !r.warnings.is_empty())
    }

    /// Files that could not be predicted.
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| !r.is_ok()).count()
    }

    /// The results as a table, CSV or JSON document (ending with a newline).
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => {
                let mut s = serde_json::to_string_pretty(self).expect("report serialises");
                s.push('\n');
                s
            }
        }
    }

    fn table(&self) -> String {
        let table = if self.is_binary() && self.top_k.is_none() {
            self.binary_table()
        } else {
            self.class_table()
        };
        self.with_drift_lines(table)
    }

    /// `table` with, under each row of an image that differs markedly from the training
    /// images, one indented `warning:` line per reason.
    fn with_drift_lines(&self, table: String) -> String {
        if self.results.iter().all(|r| r.warnings.is_empty()) {
            return table;
        }
        let mut lines = table.lines();
        let mut s = String::new();
        if let Some(head) = lines.next() {
            s.push_str(head);
            s.push('\n');
        }
        for (line, r) in lines.zip(&self.results) {
            s.push_str(line);
            s.push('\n');
            for w in &r.warnings {
                let _ = writeln!(s, "  warning: {w}");
            }
        }
        s
    }

    /// Table of a run with more classes, or with `--top-k`: the most probable class and its
    /// probability (or the K most probable as `name probability, ...`), then, with a
    /// malignant group, its probability and the decision with the answer's class.
    fn class_table(&self) -> String {
        let (paths, width) = self.path_column();
        let p = crate::display::probability;
        let decision = |r: &FileResult| -> Option<(String, String)> {
            let prob = r.probability?;
            let label = r.label.as_deref().unwrap_or("");
            let text = if self.is_binary() {
                label.to_string()
            } else if r.malignant? {
                format!("malignant ({label})")
            } else {
                format!("benign ({label})")
            };
            Some((p(prob), text))
        };
        // Per file: the classes cell and, with a malignant group, (p(malignant), decision);
        // `None` for a failed file.
        type Row = (String, Option<(String, String)>);
        let cells: Vec<Option<Row>> = self
            .results
            .iter()
            .map(|r| {
                if r.error.is_some() {
                    return None;
                }
                let probs = r.probabilities.as_ref()?;
                let classes = match self.top_k {
                    Some(k) => probs
                        .top_k(k)
                        .iter()
                        .map(|(n, q)| format!("{n} {}", p(*q)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    None => {
                        let (n, q) = probs.top_k(1)[0];
                        format!("{:>11}  {n}", p(q))
                    }
                };
                Some((classes, decision(r)))
            })
            .collect();
        let head = match self.top_k {
            Some(k) => format!("top {k}"),
            None => format!("{:>11}  class", "probability"),
        };
        let class_width = cells
            .iter()
            .flatten()
            .map(|(c, _)| c.chars().count())
            .chain([head.chars().count()])
            .max()
            .unwrap_or(0);
        let grouped = self.threshold.is_some();
        let mut s = format!("{:<width$}  ", "path");
        if grouped {
            let _ = writeln!(s, "{head:<class_width$}  p(malignant)  decision");
        } else {
            let _ = writeln!(s, "{head}");
        }
        for ((r, path), cell) in self.results.iter().zip(&paths).zip(&cells) {
            match cell {
                Some((classes, Some((prob, text)))) if grouped => {
                    let _ = writeln!(
                        s,
                        "{path:<width$}  {classes:<class_width$}  {prob:>12}  {text}"
                    );
                }
                Some((classes, _)) => {
                    let _ = writeln!(s, "{path:<width$}  {classes}");
                }
                None => {
                    let e = r.error.as_deref().unwrap_or("no result");
                    let _ = writeln!(s, "{path:<width$}  error: {e}");
                }
            }
        }
        s
    }

    /// Each result's path as printed, and the width of the column that holds them.
    fn path_column(&self) -> (Vec<String>, usize) {
        let paths: Vec<String> = self
            .results
            .iter()
            .map(|r| fsutil::path_to_string(&r.path))
            .collect();
        let width = paths
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        (paths, width)
    }

    fn binary_table(&self) -> String {
        let (paths, width) = self.path_column();
        let mut s = format!("{:<width$}  {:>11}  label\n", "path", "probability");
        for (r, p) in self.results.iter().zip(&paths) {
            match (&r.error, r.probability, &r.label) {
                (None, Some(prob), Some(label)) => {
                    let prob = crate::display::probability(prob);
                    let _ = writeln!(s, "{p:<width$}  {prob:>11}  {label}");
                }
                (error, _, _) => {
                    let e = error.as_deref().unwrap_or("no result");
                    let _ = writeln!(s, "{p:<width$}  {:>11}  error: {e}", "-");
                }
            }
        }
        s
    }

    /// `path,probability,label,threshold,error` for two classes; for more
    /// `path,label,p_<class>...,error`, with a malignant group
    /// `path,label,p_<class>...,malignant_probability,threshold,error`; then `warnings` when
    /// some image differs markedly from the training images; one row per file:
    /// RFC 4180 quoting only where a field holds a comma, a quote or a line break (quotes
    /// doubled), rows ended by `\n`.
    fn csv(&self) -> String {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .quote_style(csv::QuoteStyle::Necessary)
            .double_quote(true)
            .from_writer(Vec::new());
        if !self.is_binary() {
            return self.class_csv(w);
        }
        let in_memory = "a CSV row is written to memory";
        let drift = self.any_drift();
        let mut head = vec!["path", "probability", "label", "threshold", "error"];
        if drift {
            head.push("warnings");
        }
        w.write_record(&head).expect(in_memory);
        let threshold = self.threshold.map(|t| t.to_string()).unwrap_or_default();
        for r in &self.results {
            let probability = r.probability.map(|p| format!("{p:.6}")).unwrap_or_default();
            let mut row = vec![
                fsutil::path_to_string(&r.path),
                probability,
                r.label.clone().unwrap_or_default(),
                threshold.clone(),
                r.error.clone().unwrap_or_default(),
            ];
            if drift {
                row.push(r.warnings.join("; "));
            }
            w.write_record(&row).expect(in_memory);
        }
        let bytes = w.into_inner().expect(in_memory);
        String::from_utf8(bytes).expect("every field is a Rust string")
    }

    fn class_csv(&self, mut w: csv::Writer<Vec<u8>>) -> String {
        let in_memory = "a CSV row is written to memory";
        let mut head = vec!["path".to_string(), "label".to_string()];
        head.extend(self.classes.iter().map(|c| format!("p_{c}")));
        if self.threshold.is_some() {
            head.extend(["malignant_probability".into(), "threshold".into()]);
        }
        head.push("error".into());
        let drift = self.any_drift();
        if drift {
            head.push("warnings".into());
        }
        w.write_record(&head).expect(in_memory);
        let threshold = self.threshold.map(|t| t.to_string());
        for r in &self.results {
            let mut row = vec![
                fsutil::path_to_string(&r.path),
                r.label.clone().unwrap_or_default(),
            ];
            match &r.probabilities {
                Some(p) => row.extend(p.0.iter().map(|(_, q)| format!("{q:.6}"))),
                None => row.extend(self.classes.iter().map(|_| String::new())),
            }
            if let Some(t) = &threshold {
                row.push(r.probability.map(|p| format!("{p:.6}")).unwrap_or_default());
                row.push(t.clone());
            }
            row.push(r.error.clone().unwrap_or_default());
            if drift {
                row.push(r.warnings.join("; "));
            }
            w.write_record(&row).expect(in_memory);
        }
        let bytes = w.into_inner().expect(in_memory);
        String::from_utf8(bytes).expect("every field is a Rust string")
    }
}

/// The `lesion-predict` command: loads the run, predicts every image (in batches, with a
/// progress bar when asked), writes heatmaps when asked. Per-file problems end up in the
/// report's results; only problems with the run or the options are errors.
pub fn run(opts: &PredictOptions) -> Result<PredictReport> {
    if opts.batch_size == 0 {
        return Err(Error::InvalidOption(
            "--batch-size must be at least 1".into(),
        ));
    }
    if opts.inputs.is_empty() {
        return Err(Error::InvalidOption(
            "no input: name image files or folders".into(),
        ));
    }
    if opts.top_k == Some(0) {
        return Err(Error::InvalidOption("--top-k must be at least 1".into()));
    }
    let device = parse_device(&opts.device)?;
    let mut predictor = Predictor::load(&opts.run, &device, opts.threshold)?;
    predictor.set_batch_size(opts.batch_size);
    let explain_class = opts
        .explain_class
        .as_deref()
        .map(|name| predictor.class_index("--explain-class", name))
        .transpose()?;
    let class_names = predictor.class_names().to_vec();
    let tta = opts.tta.unwrap_or_else(|| predictor.default_tta());
    let mut warnings = predictor.warnings().to_vec();
    if let Some(t) = predictor.run_threshold() {
        if t.tta != tta && !predictor.threshold_overridden() {
            warnings.push(format!(
                "the threshold was chosen on probabilities {} test-time augmentation, these are \
                 scored {} it",
                if t.tta { "with" } else { "without" },
                if tta { "with" } else { "without" },
            ));
        }
    }

    let inputs = collect_inputs(&opts.inputs)?;
    if let Some(dir) = &opts.explain {
        check_heatmap_targets(dir, &opts.inputs, &inputs.files, opts.force)?;
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut results: HashMap<usize, FileResult> = HashMap::new();
    let bar = progress_bar(
        opts.progress && inputs.files.len() > opts.batch_size,
        inputs.files.len(),
    );
    let chunk = opts.batch_size;
    for (c, files) in inputs.files.chunks(chunk).enumerate() {
        // Only the model input and, for heatmaps, a display-sized copy outlive decoding,
        // so memory stays small whatever the photos' resolution.
        let explain = opts.explain.is_some();
        // The model input, its drift warnings, the display copy for a heatmap.
        type Decoded = (Vec<f32>, Vec<String>, Option<RgbImage>);
        let decoded: Vec<Result<Decoded>> = files
            .par_iter()
            .map(|f| {
                if let Some(problem) = &f.problem {
                    return Err(Error::BadImage {
                        path: f.path.clone(),
                        reason: problem.clone(),
                    });
                }
                let bytes = fs::read(&f.path).map_err(|e| Error::io(&f.path, e))?;
                let img = predictor.decode(&bytes, &f.path)?;
                let (input, _, drift) = predictor.preprocess_checked(&img);
                Ok((input, drift, explain.then(|| gradcam::display_image(&img))))
            })
            .collect();
        let mut ok = Vec::new();
        let mut inputs_f32 = Vec::new();
        let mut shown = Vec::new();
        let mut drift = Vec::new();
        for (i, d) in decoded.into_iter().enumerate() {
            match d {
                Ok((x, w, img)) => {
                    ok.push(i);
                    inputs_f32.push(x);
                    drift.push(w);
                    shown.push(img);
                }
                Err(e) => {
                    results.insert(
                        c * chunk + i,
                        FileResult::failed(files[i].path.clone(), reason_of(&e)),
                    );
                }
            }
        }
        let preds = predictor.predict_preprocessed(&inputs_f32, tta)?;
        let cams = match &opts.explain {
            Some(_) => Some(predictor.cams_preprocessed(&inputs_f32, explain_class)?),
            None => None,
        };
        let written: Vec<Option<Result<PathBuf>>> = ok
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                let (dir, cams, img) = (opts.explain.as_ref()?, cams.as_ref()?, shown[k].as_ref()?);
                Some(write_heatmap(
                    &predictor,
                    img,
                    cams[k].clone(),
                    &dir.join(&files[i].heatmap_name),
                ))
            })
            .collect();
        for (((&i, pred), heat), k) in ok.iter().zip(preds).zip(written).zip(0..) {
            let path = files[i].path.clone();
            let explained = cams.as_ref().and_then(|c| {
                let class = c[k].target.class;
                (class_names.len() > 2 || explain_class.is_some())
                    .then(|| class_names[class].clone())
            });
            let mut r = FileResult {
                path,
                probability: pred.probability,
                label: Some(pred.label),
                malignant: pred.malignant,
                probabilities: Some(ClassProbabilities(
                    class_names
                        .iter()
                        .cloned()
                        .zip(pred.probabilities)
                        .collect(),
                )),
                explained: None,
                heatmap: None,
                error: None,
                warnings: std::mem::take(&mut drift[k]),
            };
            match heat {
                Some(Ok(p)) => {
                    r.heatmap = Some(p);
                    r.explained = explained;
                }
                Some(Err(e)) => r.error = Some(format!("heatmap not written: {e}")),
                None => {}
            }
            results.insert(c * chunk + i, r);
        }
        bar.inc(files.len() as u64);
    }
    bar.finish_and_clear();
    let ordered: Vec<FileResult> = (0..inputs.files.len())
        .map(|i| results.remove(&i).expect("every file has a result"))
        .collect();
    let drifted = ordered.iter().filter(|r| !r.warnings.is_empty()).count();
    if drifted > 0 {
        warnings.push(format!(
            "{drifted} of {} image(s) differ markedly from the run's training images (size, \
             aspect ratio or colour; each one's warnings say how): the model has not seen \
             inputs like them, treat their predictions with suspicion",
            ordered.len()
        ));
    }
    Ok(PredictReport {
        model_id: predictor.model_id().to_string(),
        classes: class_names,
        threshold: predictor.threshold(),
        threshold_source: predictor.describe_threshold(),
        tta,
        resize: predictor.resize_policy(),
        device: crate::device::describe(&device),
        results: ordered,
        skipped: inputs.skipped,
        warnings,
        top_k: opts.top_k,
    })
}

/// Refuses heatmap locations that would change an input: the `--explain` folder inside an
/// input folder, a heatmap onto an input file; and an existing heatmap without `force`,
/// or one that is not a PNG file (not something this command wrote) even with it.
fn check_heatmap_targets(
    dir: &Path,
    args: &[PathBuf],
    files: &[InputFile],
    force: bool,
) -> Result<()> {
    let folders: Vec<(PathBuf, &PathBuf)> = args
        .iter()
        .filter(|a| a.is_dir())
        .map(|a| (fsutil::resolve_path(a), a))
        .collect();
    let input_files: HashSet<PathBuf> = files
        .iter()
        .map(|f| fsutil::resolve_path(&f.path))
        .collect();
    let inside = |p: &Path| {
        folders
            .iter()
            .find(|(f, _)| p.starts_with(f))
            .map(|(_, a)| a)
    };
    if let Some(folder) = inside(&fsutil::resolve_path(dir)) {
        return Err(Error::NotOurOutput {
            path: dir.to_path_buf(),
            reason: format!(
                "not used for heatmaps: it lies inside the input folder {}; choose a folder \
                 outside it",
                folder.display()
            ),
        });
    }
    for f in files.iter().filter(|f| f.problem.is_none()) {
        let target = dir.join(&f.heatmap_name);
        let resolved = fsutil::resolve_path(&target);
        if input_files.contains(&resolved) || inside(&resolved).is_some() {
            return Err(Error::NotOurOutput {
                path: target,
                reason: "not written: this heatmap would replace or join the inputs; choose \
                         another --explain folder"
                    .into(),
            });
        }
        let Ok(meta) = fs::symlink_metadata(&target) else {
            continue;
        };
        if !force {
            return Err(Error::OutputExists { path: target });
        }
        if !(meta.is_file() && is_png(&target)) {
            return Err(Error::NotOurOutput {
                path: target,
                reason: "exists and is not a heatmap (a PNG file); refusing to replace it, \
                         with or without --force"
                    .into(),
            });
        }
    }
    Ok(())
}

fn is_png(path: &Path) -> bool {
    let mut head = [0u8; 8];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"\x89PNG\r\n\x1a\n"
}

fn write_heatmap(
    predictor: &Predictor,
    image: &RgbImage,
    cam: Cam,
    path: &Path,
) -> Result<PathBuf> {
    let png = gradcam::encode_png(&predictor.explanation(image, cam).overlay)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(path, &png)?;
    Ok(path.to_path_buf())
}

/// A file's problem without repeating its path (the report shows it beside).
fn reason_of(e: &Error) -> String {
    match e {
        Error::BadImage { reason, .. } => reason.clone(),
        Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    }
}

fn progress_bar(show: bool, len: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "predict [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr()).with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str, probability: f64, label: &str) -> FileResult {
        FileResult {
            path: PathBuf::from(path),
            probability: Some(probability),
            label: Some(label.into()),
            malignant: Some(label == "Malignant"),
            probabilities: Some(ClassProbabilities(vec![
                ("Benign".into(), 1.0 - probability),
                ("Malignant".into(), probability),
            ])),
            explained: None,
            heatmap: None,
            error: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn drift_warnings_add_a_csv_column_and_table_lines_only_when_present() {
        let mut report = PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            top_k: None,
            threshold: Some(0.5),
            threshold_source: "0.5000".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results: vec![ok("a.jpg", 0.25, "Benign"), ok("b.jpg", 0.75, "Malignant")],
            skipped: Vec::new(),
            warnings: Vec::new(),
        };
        let plain_csv = "path,probability,label,threshold,error\n\
                         a.jpg,0.250000,Benign,0.5,\n\
                         b.jpg,0.750000,Malignant,0.5,\n";
        assert_eq!(report.render(OutputFormat::Csv), plain_csv);
        let plain_table = report.render(OutputFormat::Table);
        assert!(!plain_table.contains("warning"), "{plain_table}");
        let json = report.render(OutputFormat::Json);
        assert!(!json.contains("\"warnings\": [\""), "{json}");

        report.results[1].warnings = vec!["aspect ratio 13.33".into(), "mean colour".into()];
        assert_eq!(
            report.render(OutputFormat::Csv),
            "path,probability,label,threshold,error,warnings\n\
             a.jpg,0.250000,Benign,0.5,,\n\
             b.jpg,0.750000,Malignant,0.5,,aspect ratio 13.33; mean colour\n"
        );
        let table = report.render(OutputFormat::Table);
        assert_eq!(
            table,
            format!("{plain_table}  warning: aspect ratio 13.33\n  warning: mean colour\n")
        );
        let v: serde_json::Value =
            serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(v["results"][0].get("warnings"), None);
        assert_eq!(
            v["results"][1]["warnings"],
            serde_json::json!(["aspect ratio 13.33", "mean colour"])
        );
    }

    fn refusal(err: Error) -> String {
        assert_eq!(err.exit_code(), 2, "{err}");
        match err {
            Error::NotOurOutput { .. } => err.to_string(),
            other => panic!("expected NotOurOutput, got {other:?}"),
        }
    }

    #[test]
    fn heatmaps_never_replace_inputs_or_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let photos = tmp.path().join("photos");
        fs::create_dir_all(&photos).unwrap();
        let png = b"\x89PNG\r\n\x1a\n rest";
        fs::write(photos.join("a.jpg"), b"\xff\xd8\xff\xe0 jpeg").unwrap();
        // A user's PNG whose name is the heatmap name of a.jpg.
        fs::write(photos.join("a.gradcam.png"), png).unwrap();
        let args = vec![photos.clone()];
        let inputs = collect_inputs(&args).unwrap();

        // The input folder itself, or a folder inside it.
        for dir in [photos.clone(), photos.join("heatmaps")] {
            for force in [false, true] {
                let msg =
                    refusal(check_heatmap_targets(&dir, &args, &inputs.files, force).unwrap_err());
                assert!(msg.contains("lies inside the input folder"), "{msg}");
            }
        }
        // A heatmap that would land on an input file named on the command line.
        let file_args = vec![photos.join("a.jpg"), photos.join("a.gradcam.png")];
        let named = collect_inputs(&file_args).unwrap();
        let msg =
            refusal(check_heatmap_targets(&photos, &file_args, &named.files, true).unwrap_err());
        assert!(msg.contains("would replace or join the inputs"), "{msg}");
        assert_eq!(fs::read(photos.join("a.gradcam.png")).unwrap(), png);

        // Elsewhere: an existing heatmap needs --force, and must be a PNG to be replaced.
        let heat = tmp.path().join("heat");
        fs::create_dir_all(&heat).unwrap();
        check_heatmap_targets(&heat, &args, &inputs.files, false).unwrap();
        fs::write(heat.join("a.gradcam.png"), png).unwrap();
        assert!(matches!(
            check_heatmap_targets(&heat, &args, &inputs.files, false),
            Err(Error::OutputExists { .. })
        ));
        check_heatmap_targets(&heat, &args, &inputs.files, true).unwrap();
        fs::write(heat.join("a.gradcam.png"), b"my notes").unwrap();
        let msg = refusal(check_heatmap_targets(&heat, &args, &inputs.files, true).unwrap_err());
        assert!(msg.contains("is not a heatmap"), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn names_that_are_not_utf8_stay_distinct_in_every_rendering() {
        use std::os::unix::ffi::OsStrExt;
        let name = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let report = PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            top_k: None,
            threshold: Some(0.5),
            threshold_source: "0.5000".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results: vec![
                ok("in/é.jpg", 0.25, "Benign"),
                FileResult {
                    heatmap: Some(name(b"h/a\xff.gradcam.png")),
                    ..ok("x", 0.5, "Malignant")
                },
                FileResult::failed(name(b"in/a\xfe.jpg"), "cannot read: x".into()),
            ],
            skipped: vec![Skipped {
                path: name(b"in/b\xff.txt"),
                reason: "not an image".into(),
            }],
            warnings: Vec::new(),
        };
        let mut report = report;
        report.results[1].path = name(b"in/a\xff.jpg");
        let csv = report.render(OutputFormat::Csv);
        assert!(csv.contains("\nin/é.jpg,"), "{csv}");
        assert!(csv.contains("\nin/a\\xFF.jpg,"), "{csv}");
        assert!(csv.contains("\nin/a\\xFE.jpg,"), "{csv}");
        let table = report.render(OutputFormat::Table);
        assert!(table.contains("in/a\\xFF.jpg") && table.contains("in/a\\xFE.jpg"));
        let json: serde_json::Value =
            serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(json["results"][0]["path"], "in/é.jpg");
        assert_eq!(json["results"][1]["path"], "in/a\\xFF.jpg");
        assert_eq!(json["results"][1]["heatmap"], "h/a\\xFF.gradcam.png");
        assert_eq!(json["results"][2]["path"], "in/a\\xFE.jpg");
        assert_eq!(json["skipped"][0]["path"], "in/b\\xFF.txt");
    }

    #[test]
    fn csv_quotes_commas_quotes_and_line_breaks_only() {
        let report = PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            top_k: None,
            threshold: Some(0.375),
            threshold_source: "0.3750 (given with --threshold)".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results: vec![
                ok("in/plain.jpg", 0.25, "Benign"),
                ok("in/a,b.jpg", 0.5, "Malignant"),
                ok("in/say \"hi\".jpg", 0.1234564, "Benign"),
                FileResult::failed(
                    PathBuf::from("in/two\nlines\r.jpg"),
                    "cannot read: bad, \"very\" bad".into(),
                ),
            ],
            skipped: Vec::new(),
            warnings: Vec::new(),
        };
        assert_eq!(
            report.render(OutputFormat::Csv),
            "path,probability,label,threshold,error\n\
             in/plain.jpg,0.250000,Benign,0.375,\n\
             \"in/a,b.jpg\",0.500000,Malignant,0.375,\n\
             \"in/say \"\"hi\"\".jpg\",0.123456,Benign,0.375,\n\
             \"in/two\nlines\r.jpg\",,,0.375,\"cannot read: bad, \"\"very\"\" bad\"\n"
        );
    }

    /// The table reads probabilities by the rule of `crate::display`: never `0.0000`.
    #[test]
    fn table_shows_extreme_probabilities_as_bounds() {
        let report = PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            top_k: None,
            threshold: Some(3.3e-7),
            threshold_source: "3.3e-7 (given with --threshold)".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results: vec![
                ok("a.jpg", 2e-9, "Benign"),
                ok("b.jpg", 0.41234, "Malignant"),
                ok("c.jpg", 1.0, "Malignant"),
            ],
            skipped: Vec::new(),
            warnings: Vec::new(),
        };
        assert_eq!(
            report.render(OutputFormat::Table),
            "path   probability  label\n\
             a.jpg     < 0.0001  Benign\n\
             b.jpg       0.4123  Malignant\n\
             c.jpg     > 0.9999  Malignant\n"
        );
    }

    fn three(path: &str, p: [f64; 3], label: &str, malignant: Option<bool>) -> FileResult {
        let names = ["mel", "nev", "sk"];
        FileResult {
            path: PathBuf::from(path),
            probability: malignant.map(|_| p[0]),
            label: Some(label.into()),
            malignant,
            probabilities: Some(ClassProbabilities(
                names.iter().map(|n| n.to_string()).zip(p).collect(),
            )),
            explained: None,
            heatmap: None,
            error: None,
            warnings: Vec::new(),
        }
    }

    fn three_class_report(threshold: Option<f64>, results: Vec<FileResult>) -> PredictReport {
        PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["mel".into(), "nev".into(), "sk".into()],
            threshold,
            threshold_source: "x".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results,
            skipped: Vec::new(),
            warnings: Vec::new(),
            top_k: None,
        }
    }

    #[test]
    fn a_malignant_group_adds_its_probability_and_the_decision() {
        let mut report = three_class_report(
            Some(0.25),
            vec![
                three("a.jpg", [0.3, 0.6, 0.1], "mel", Some(true)),
                three("bb.jpg", [0.2, 0.3, 0.5], "sk", Some(false)),
                FileResult::failed(PathBuf::from("c.jpg"), "cannot read: gone".into()),
            ],
        );
        assert_eq!(
            report.render(OutputFormat::Table),
            "path    probability  class  p(malignant)  decision\n\
             a.jpg        0.6000  nev          0.3000  malignant (mel)\n\
             bb.jpg       0.5000  sk           0.2000  benign (sk)\n\
             c.jpg   error: cannot read: gone\n"
        );
        assert_eq!(
            report.render(OutputFormat::Csv),
            "path,label,p_mel,p_nev,p_sk,malignant_probability,threshold,error\n\
             a.jpg,mel,0.300000,0.600000,0.100000,0.300000,0.25,\n\
             bb.jpg,sk,0.200000,0.300000,0.500000,0.200000,0.25,\n\
             c.jpg,,,,,,0.25,cannot read: gone\n"
        );
        let json = report.render(OutputFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["threshold"], 0.25);
        assert_eq!(v["classes"], serde_json::json!(["mel", "nev", "sk"]));
        assert_eq!(v["results"][0]["probability"], 0.3);
        assert_eq!(v["results"][0]["malignant"], true);
        assert_eq!(v["results"][1]["probabilities"]["sk"], 0.5);
        // The object keeps class order, not alphabetical order of some other kind.
        let a = json.find("\"mel\": 0.3").unwrap();
        let b = json.find("\"nev\": 0.6").unwrap();
        let c = json.find("\"sk\": 0.1").unwrap();
        assert!(a < b && b < c, "{json}");

        report.top_k = Some(2);
        assert_eq!(
            report.render(OutputFormat::Table),
            "path    top 2                   p(malignant)  decision\n\
             a.jpg   nev 0.6000, mel 0.3000        0.3000  malignant (mel)\n\
             bb.jpg  sk 0.5000, nev 0.3000         0.2000  benign (sk)\n\
             c.jpg   error: cannot read: gone\n"
        );
    }

    #[test]
    fn without_a_group_only_the_classes_show() {
        let mut report =
            three_class_report(None, vec![three("a.jpg", [0.2, 0.2, 0.6], "sk", None)]);
        assert_eq!(
            report.render(OutputFormat::Table),
            "path   probability  class\na.jpg       0.6000  sk\n"
        );
        assert_eq!(
            report.render(OutputFormat::Csv),
            "path,label,p_mel,p_nev,p_sk,error\na.jpg,sk,0.200000,0.200000,0.600000,\n"
        );
        // Equal probabilities rank in class order.
        report.top_k = Some(3);
        assert_eq!(
            report.render(OutputFormat::Table),
            "path   top 3\na.jpg  sk 0.6000, mel 0.2000, nev 0.2000\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert!(v.get("threshold").is_none());
        assert!(v["results"][0].get("probability").is_none());
    }

    /// A two-class run with --top-k lists both classes and keeps its label.
    #[test]
    fn two_classes_with_top_k() {
        let mut report = PredictReport {
            model_id: "r@0123456789ab".into(),
            classes: vec!["Benign".into(), "Malignant".into()],
            threshold: Some(0.5),
            threshold_source: "0.5000".into(),
            tta: false,
            resize: ResizePolicy::Stretch,
            device: "cpu".into(),
            results: vec![ok("a.jpg", 0.75, "Malignant")],
            skipped: Vec::new(),
            warnings: Vec::new(),
            top_k: Some(2),
        };
        assert_eq!(
            report.render(OutputFormat::Table),
            "path   top 2                            p(malignant)  decision\n\
             a.jpg  Malignant 0.7500, Benign 0.2500        0.7500  Malignant\n"
        );
        report.top_k = None;
        assert_eq!(
            report.render(OutputFormat::Table),
            "path   probability  label\na.jpg       0.7500  Malignant\n"
        );
    }
}

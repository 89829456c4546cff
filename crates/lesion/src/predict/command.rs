//! The `lesion-predict` command: its options, collecting the input files, predicting them
//! in batches (with a progress bar), writing Grad-CAM heatmaps, and the report with its
//! table, CSV and JSON renderings.

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
use crate::fsutil::write_atomic;
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
                        Ok(false) => inputs.skipped.push(Skipped {
                            path,
                            reason: "not an image (unrecognised content)".into(),
                        }),
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
    pub path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub malignant: Option<bool>,
    /// The Grad-CAM PNG written for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<PathBuf>,
    /// Why it could not be predicted (or its heatmap written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FileResult {
    fn failed(path: PathBuf, error: String) -> Self {
        Self {
            path,
            probability: None,
            label: None,
            malignant: None,
            heatmap: None,
            error: Some(error),
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
    pub threshold: f64,
    pub threshold_source: String,
    pub tta: bool,
    pub resize: ResizePolicy,
    pub device: String,
    /// One entry per input file, in input order (failures included).
    pub results: Vec<FileResult>,
    /// Non-image files found in folders.
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<String>,
}

impl PredictReport {
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
        let paths: Vec<String> = self
            .results
            .iter()
            .map(|r| r.path.display().to_string())
            .collect();
        let width = paths
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
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

    /// `path,probability,label,threshold,error`, one row per file: RFC 4180 quoting only
    /// where a field holds a comma, a quote or a line break (quotes doubled), rows ended by
    /// `\n`.
    fn csv(&self) -> String {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .quote_style(csv::QuoteStyle::Necessary)
            .double_quote(true)
            .from_writer(Vec::new());
        let in_memory = "a CSV row of five fields is written to memory";
        w.write_record(["path", "probability", "label", "threshold", "error"])
            .expect(in_memory);
        let threshold = self.threshold.to_string();
        for r in &self.results {
            let probability = r.probability.map(|p| format!("{p:.6}")).unwrap_or_default();
            w.write_record([
                r.path.display().to_string().as_str(),
                &probability,
                r.label.as_deref().unwrap_or(""),
                &threshold,
                r.error.as_deref().unwrap_or(""),
            ])
            .expect(in_memory);
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
    let device = parse_device(&opts.device)?;
    let mut predictor = Predictor::load(&opts.run, &device, opts.threshold)?;
    predictor.set_batch_size(opts.batch_size);
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
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if !opts.force {
            if let Some(f) = inputs
                .files
                .iter()
                .filter(|f| f.problem.is_none())
                .map(|f| dir.join(&f.heatmap_name))
                .find(|p| p.exists())
            {
                return Err(Error::OutputExists { path: f });
            }
        }
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
        let decoded: Vec<Result<(Vec<f32>, Option<RgbImage>)>> = files
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
                Ok((
                    predictor.preprocess(&img),
                    explain.then(|| gradcam::display_image(&img)),
                ))
            })
            .collect();
        let mut ok = Vec::new();
        let mut inputs_f32 = Vec::new();
        let mut shown = Vec::new();
        for (i, d) in decoded.into_iter().enumerate() {
            match d {
                Ok((x, img)) => {
                    ok.push(i);
                    inputs_f32.push(x);
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
            Some(_) => Some(predictor.cams_preprocessed(&inputs_f32)?),
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
        for ((&i, pred), heat) in ok.iter().zip(preds).zip(written) {
            let path = files[i].path.clone();
            let mut r = FileResult {
                path,
                probability: Some(pred.probability),
                label: Some(pred.label),
                malignant: Some(pred.malignant),
                heatmap: None,
                error: None,
            };
            match heat {
                Some(Ok(p)) => r.heatmap = Some(p),
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
    Ok(PredictReport {
        model_id: predictor.model_id().to_string(),
        threshold: predictor.threshold(),
        threshold_source: predictor.describe_threshold(),
        tta,
        resize: predictor.resize_policy(),
        device: crate::device::describe(&device),
        results: ordered,
        skipped: inputs.skipped,
        warnings,
    })
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
            heatmap: None,
            error: None,
        }
    }

    #[test]
    fn csv_quotes_commas_quotes_and_line_breaks_only() {
        let report = PredictReport {
            model_id: "r@0123456789ab".into(),
            threshold: 0.375,
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
            threshold: 3.3e-7,
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
}

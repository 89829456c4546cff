//! The evaluation figures (PNG, RGB8), drawn with plotters through
//! [`crate::plot::render_png`] and its embedded font: ROC and precision-recall curves with
//! the operating points, confusion-matrix heatmaps, the reliability diagram, and the grid
//! of the most confident errors.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{BinaryView, ErrorCase, MulticlassSection, CALIBRATION_FILE, CONFUSION_FILE, ROC_FILE};
use crate::display;
use crate::metrics::{self, BinaryMetrics, Calibration, ConfusionMatrix, PrCurve, RocCurve};
use crate::plot::{font_family, render_png, Canvas};
use crate::Result;

type DrawResult = std::result::Result<(), Box<dyn StdError>>;

const CURVE: RGBColor = RGBColor(31, 119, 180);
const CHANCE: RGBColor = RGBColor(150, 150, 150);
/// Colours of the operating points, in the order they are given.
const MARKS: [RGBColor; 3] = [
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];
const LIGHT_GRID: RGBColor = RGBColor(238, 238, 238);
const FN_COLOR: RGBColor = RGBColor(214, 39, 40);
const FP_COLOR: RGBColor = RGBColor(255, 127, 14);

/// A chart on unit-scaled axes, as ROC, PR and the reliability diagram draw.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A line of `width` px with its legend entry.
fn line(
    chart: &mut Chart<'_, '_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    label: impl Into<String>,
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(width)))?
        .label(label)
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
        });
    Ok(())
}

/// The operating points at `at(mark)`, each with its legend entry `label(mark)`.
fn operating_points(
    chart: &mut Chart<'_, '_>,
    marks: &[Mark],
    at: impl Fn(&Mark) -> (f64, f64),
    label: impl Fn(&Mark) -> String,
) -> DrawResult {
    for m in marks {
        let c = m.rgb();
        let p = at(m);
        chart
            .draw_series([
                Circle::new(p, 7, c.filled()),
                Circle::new(p, 7, BLACK.stroke_width(1)),
            ])?
            .label(label(m))
            .legend(move |(x, y)| Circle::new((x + 10, y), 6, c.filled()));
    }
    Ok(())
}

/// The legend box, at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((font_family(), 14))
        .draw()?;
    Ok(())
}

fn white(w: u32, h: u32) -> Vec<u8> {
    vec![255u8; (w * h * 3) as usize]
}

fn text_style(size: u32, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: (font_family(), size).into_font(),
        color: color.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// An operating point on the evaluated split.
#[derive(Debug, Clone)]
pub struct Mark {
    pub label: String,
    pub threshold: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub precision: f64,
    /// Index into the mark colours.
    pub color: usize,
}

impl Mark {
    pub fn from_metrics(label: &str, m: &BinaryMetrics, color: usize) -> Self {
        Self {
            label: label.to_string(),
            threshold: m.threshold,
            sensitivity: m.sensitivity,
            specificity: m.specificity,
            precision: m.precision,
            color,
        }
    }

    fn rgb(&self) -> RGBColor {
        MARKS[self.color % MARKS.len()]
    }
}

/// The legend and panel title of the chosen threshold's operating point.
fn chosen_label(threshold: f64) -> String {
    format!(
        "threshold {} (chosen on val)",
        display::threshold(threshold)
    )
}

/// Draws the ROC, PR, confusion and calibration figures of `m` into `dir`, named by
/// `files` in that order, the curves from `roc_curve` and `pr_curve`, with the operating
/// points at 0.5 and at the chosen threshold.
pub(super) fn draw_metrics(
    dir: &Path,
    m: &BinaryView,
    roc_curve: &RocCurve,
    pr_curve: &PrCurve,
    class_names: &[String],
    files: &[&str; 4],
) -> Result<()> {
    let thr = m.threshold.threshold;
    let marks = [
        Mark::from_metrics("threshold 0.5", &m.at_default_threshold, 0),
        Mark::from_metrics(&chosen_label(thr), &m.at_chosen_threshold, 1),
    ];
    roc(
        roc_curve,
        m.at_default_threshold.roc_auc,
        &marks,
        &dir.join(files[0]),
    )?;
    let prevalence = m.at_default_threshold.n_positive as f64 / m.at_default_threshold.n as f64;
    pr(
        pr_curve,
        m.at_default_threshold.average_precision,
        prevalence,
        &marks,
        &dir.join(files[1]),
    )?;
    confusion(
        &[
            (
                "threshold 0.5".to_string(),
                m.at_default_threshold.confusion_matrix,
            ),
            (chosen_label(thr), m.at_chosen_threshold.confusion_matrix),
        ],
        class_names,
        &dir.join(files[2]),
    )?;
    calibration(&m.calibration, &dir.join(files[3]))
}

/// An 800x700 curve chart on `[0, 1] x [0, y_max]`, as ROC and PR draw it: `title`, the
/// axis names, labels and light grid, the series `draw` adds, and their legend at
/// `legend_at`.
fn curve_png(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    y_max: f64,
    legend_at: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> DrawResult,
) -> Result<()> {
    let (w, h) = (800, 700);
    render_png(
        white(w, h),
        (w, h),
        path,
        |root: &Canvas<'_>| -> DrawResult {
            let font = font_family();
            let mut chart = ChartBuilder::on(root)
                .caption(title, (font, 24))
                .margin(16)
                .x_label_area_size(50)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..1f64, 0f64..y_max)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .label_style((font, 14))
                .axis_desc_style((font, 16))
                .light_line_style(LIGHT_GRID)
                .draw()?;
            draw(&mut chart)?;
            legend(&mut chart, legend_at)
        },
    )
}

/// The ROC curve (800x700) with the chance diagonal and the operating points.
pub fn roc(curve: &RocCurve, auc: f64, marks: &[Mark], path: &Path) -> Result<()> {
    let axes = (
        "false positive rate (1 - specificity)",
        "true positive rate (sensitivity)",
    );
    let legend_at = SeriesLabelPosition::LowerRight;
    curve_png(path, "ROC curve", axes, 1.0, legend_at, |chart| {
        line(chart, vec![(0.0, 0.0), (1.0, 1.0)], CHANCE, 1, "chance")?;
        let pts: Vec<(f64, f64)> = curve
            .fpr
            .iter()
            .copied()
            .zip(curve.tpr.iter().copied())
            .collect();
        line(chart, pts, CURVE, 3, format!("model (AUC {auc:.3})"))?;
        operating_points(
            chart,
            marks,
            |m| (1.0 - m.specificity, m.sensitivity),
            |m| {
                format!(
                    "{}: sens {:.2}, spec {:.2}",
                    m.label, m.sensitivity, m.specificity
                )
            },
        )
    })
}

/// The precision-recall curve (800x700, steps as scikit-learn draws it) with the
/// prevalence baseline and the operating points.
pub fn pr(curve: &PrCurve, ap: f64, prevalence: f64, marks: &[Mark], path: &Path) -> Result<()> {
    let axes = ("recall (sensitivity)", "precision (PPV)");
    let legend_at = SeriesLabelPosition::LowerLeft;
    let title = "Precision-recall curve";
    curve_png(path, title, axes, 1.02, legend_at, |chart| {
        line(
            chart,
            vec![(0.0, prevalence), (1.0, prevalence)],
            CHANCE,
            1,
            format!("chance (prevalence {prevalence:.3})"),
        )?;
        // matplotlib's drawstyle="steps-post" over scikit-learn's arrays.
        let mut pts = Vec::with_capacity(2 * curve.recall.len());
        for i in 0..curve.recall.len() {
            if i > 0 {
                pts.push((curve.recall[i], curve.precision[i - 1]));
            }
            pts.push((curve.recall[i], curve.precision[i]));
        }
        line(chart, pts, CURVE, 3, format!("model (AP {ap:.3})"))?;
        operating_points(
            chart,
            marks,
            |m| (m.sensitivity, m.precision),
            |m| {
                format!(
                    "{}: recall {:.2}, precision {:.2}",
                    m.label, m.sensitivity, m.precision
                )
            },
        )
    })
}

/// White to blue by `f` in [0, 1].
fn heat(f: f64) -> RGBColor {
    let f = f.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 69.0), mix(255.0, 148.0))
}

/// Confusion matrices side by side (560x520 each): rows are the true class, columns the
/// prediction; each cell shows its count and its share of the row, shaded by that share.
/// One cell of a confusion heat map at `(x, y)`, `cell` pixels square: filled with
/// [`heat`]`(share)` and outlined; returns the ink its text needs to stand out.
fn heat_cell<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (x, y): (i32, i32),
    cell: i32,
    share: f64,
) -> std::result::Result<RGBColor, DrawingAreaErrorKind<DB::ErrorType>> {
    let square = [(x, y), (x + cell, y + cell)];
    area.draw(&Rectangle::new(square, heat(share).filled()))?;
    area.draw(&Rectangle::new(square, BLACK.stroke_width(1)))?;
    Ok(if share > 0.55 { WHITE } else { BLACK })
}

pub fn confusion(
    mats: &[(String, ConfusionMatrix)],
    class_names: &[String],
    path: &Path,
) -> Result<()> {
    let (pw, h) = (560u32, 520u32);
    let w = pw * mats.len().max(1) as u32;
    let name = |k: usize| class_names.get(k).cloned().unwrap_or_else(|| k.to_string());
    render_png(
        white(w, h),
        (w, h),
        path,
        |root: &Canvas<'_>| -> DrawResult {
            let areas = root.split_evenly((1, mats.len().max(1)));
            for (area, (title, cm)) in areas.iter().zip(mats) {
                area.draw_text(
                    title,
                    &text_style(22, BLACK, HPos::Center, VPos::Top),
                    (pw as i32 / 2, 14),
                )?;
                let cell = 170i32;
                let (x0, y0) = (170i32, 120i32);
                area.draw_text(
                    "predicted",
                    &text_style(17, BLACK, HPos::Center, VPos::Bottom),
                    (x0 + cell, y0 - 34),
                )?;
                area.draw_text(
                    "true",
                    &text_style(17, BLACK, HPos::Right, VPos::Bottom),
                    (x0 - 14, y0 - 6),
                )?;
                // [true][predicted]
                let counts = [[cm.tn, cm.fp], [cm.fn_, cm.tp]];
                let tags = [["TN", "FP"], ["FN", "TP"]];
                for t in 0..2 {
                    let row_total: u64 = counts[t].iter().sum();
                    area.draw_text(
                        &name(t),
                        &text_style(17, BLACK, HPos::Right, VPos::Center),
                        (x0 - 14, y0 + t as i32 * cell + cell / 2),
                    )?;
                    for p in 0..2 {
                        if t == 0 {
                            area.draw_text(
                                &name(p),
                                &text_style(17, BLACK, HPos::Center, VPos::Bottom),
                                (x0 + p as i32 * cell + cell / 2, y0 - 6),
                            )?;
                        }
                        let n = counts[t][p];
                        let share = if row_total > 0 {
                            n as f64 / row_total as f64
                        } else {
                            0.0
                        };
                        let (cx, cy) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                        let ink = heat_cell(area, (cx, cy), cell, share)?;
                        area.draw_text(
                            tags[t][p],
                            &text_style(14, ink, HPos::Left, VPos::Top),
                            (cx + 8, cy + 6),
                        )?;
                        area.draw_text(
                            &n.to_string(),
                            &text_style(34, ink, HPos::Center, VPos::Center),
                            (cx + cell / 2, cy + cell / 2 - 10),
                        )?;
                        area.draw_text(
                            &format!("{:.1}% of {}", share * 100.0, name(t)),
                            &text_style(14, ink, HPos::Center, VPos::Center),
                            (cx + cell / 2, cy + cell / 2 + 26),
                        )?;
                    }
                }
                let sens = cm.sensitivity();
                let spec = cm.specificity();
                area.draw_text(
                    &format!("sensitivity {sens:.3}   specificity {spec:.3}"),
                    &text_style(16, BLACK, HPos::Center, VPos::Top),
                    (x0 + cell, y0 + 2 * cell + 18),
                )?;
            }
            Ok(())
        },
    )
}

/// The reliability diagram (800x800): observed malignant frequency against mean predicted
/// probability per bin, with the diagonal of perfect calibration, each bin's count, and a
/// histogram of the counts underneath.
pub fn calibration(cal: &Calibration, path: &Path) -> Result<()> {
    calibration_with(
        cal,
        (
            "observed fraction malignant",
            "predicted probability of malignancy",
        ),
        "Reliability diagram",
        path,
    )
}

/// The reliability diagram with the given `(y, x)` axis names and title.
fn calibration_with(
    cal: &Calibration,
    (y_desc, x_desc): (&str, &str),
    title: &str,
    path: &Path,
) -> Result<()> {
    let (w, h) = (800, 800);
    render_png(
        white(w, h),
        (w, h),
        path,
        |root: &Canvas<'_>| -> DrawResult {
            let font = font_family();
            let (top, bottom) = root.split_vertically(590);
            let mut chart = ChartBuilder::on(&top)
                .caption(
                    format!("{title} (ECE {:.3}, {} bins)", cal.ece, cal.bins.len()),
                    (font, 24),
                )
                .margin(16)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..1f64, 0f64..1.1f64)?;
            chart
                .configure_mesh()
                .y_desc(y_desc)
                .label_style((font, 14))
                .axis_desc_style((font, 16))
                .light_line_style(LIGHT_GRID)
                .draw()?;
            line(
                &mut chart,
                vec![(0.0, 0.0), (1.0, 1.0)],
                CHANCE,
                1,
                "perfect calibration",
            )?;
            let used: Vec<_> = cal.bins.iter().filter(|b| b.count > 0).collect();
            let pts: Vec<(f64, f64)> = used
                .iter()
                .map(|b| (b.mean_predicted, b.observed_frequency))
                .collect();
            line(&mut chart, pts.clone(), CURVE, 2, "model (non-empty bins)")?;
            // Marker area grows with the bin's count, so a bin of one image does not look
            // as trustworthy as a bin of hundreds.
            let most = used.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
            chart.draw_series(used.iter().map(|b| {
                let r = 3.0 + 7.0 * (b.count as f64 / most).sqrt();
                Circle::new(
                    (b.mean_predicted, b.observed_frequency),
                    r.round() as i32,
                    CURVE.filled(),
                )
            }))?;
            let label =
                TextStyle::from((font, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(used.iter().map(|b| {
                Text::new(
                    format!("n={}", b.count),
                    (b.mean_predicted, b.observed_frequency + 0.025),
                    label.clone(),
                )
            }))?;
            legend(&mut chart, SeriesLabelPosition::LowerRight)?;

            let max = cal.bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
            let mut hist = ChartBuilder::on(&bottom)
                .margin_left(16)
                .margin_right(16)
                .margin_bottom(10)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..1f64, 0f64..max * 1.15)?;
            hist.configure_mesh()
                .x_desc(x_desc)
                .y_desc("images")
                .y_labels(4)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .label_style((font, 14))
                .axis_desc_style((font, 16))
                .light_line_style(LIGHT_GRID)
                .draw()?;
            hist.draw_series(cal.bins.iter().map(|b| {
                Rectangle::new(
                    [(b.lower + 0.005, 0.0), (b.upper - 0.005, b.count as f64)],
                    CURVE.mix(0.6).filled(),
                )
            }))?;
            Ok(())
        },
    )
}

/// Colours of the per-class curves (matplotlib's tab10), cycled.
const CLASS_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Draws the N-class figures into `dir`: `roc.png` (one one-vs-rest curve per class),
/// `confusion.png` (the N×N matrix) and `calibration.png` (the top class).
pub(super) fn draw_multiclass(
    dir: &Path,
    mc: &MulticlassSection,
    labels: &[usize],
    probs: &[Vec<f64>],
) -> Result<()> {
    let mut curves = Vec::new();
    for (k, name) in mc.class_names.iter().enumerate() {
        let fig = &mc.metrics.per_class[k];
        if let Some(auc) = fig.roc_auc {
            let is_k: Vec<usize> = labels.iter().map(|&y| usize::from(y == k)).collect();
            let p_k: Vec<f64> = probs.iter().map(|r| r[k]).collect();
            let curve = metrics::roc_curve(&is_k, &p_k, true)?;
            curves.push((format!("{} (AUC {auc:.3})", ellipsize(name, 24)), curve));
        }
    }
    let title = match mc.metrics.macro_roc_auc {
        Some(a) => format!("One-vs-rest ROC curves (macro AUC {a:.3})"),
        None => "One-vs-rest ROC curves".to_string(),
    };
    roc_per_class(&curves, &title, &dir.join(ROC_FILE))?;
    confusion_n(
        &mc.metrics.confusion_matrix,
        &mc.metrics.confusion_normalized,
        &mc.class_names,
        &dir.join(CONFUSION_FILE),
    )?;
    calibration_with(
        &mc.metrics.top_class_calibration,
        (
            "observed accuracy",
            "confidence (probability of the predicted class)",
        ),
        "Top-class reliability",
        &dir.join(CALIBRATION_FILE),
    )
}

/// One ROC curve per class (800x700), each labelled with its AUC in the legend.
pub fn roc_per_class(curves: &[(String, RocCurve)], title: &str, path: &Path) -> Result<()> {
    let axes = (
        "false positive rate (1 - specificity)",
        "true positive rate (recall)",
    );
    curve_png(
        path,
        title,
        axes,
        1.0,
        SeriesLabelPosition::LowerRight,
        |chart| {
            line(chart, vec![(0.0, 0.0), (1.0, 1.0)], CHANCE, 1, "chance")?;
            for (k, (label, curve)) in curves.iter().enumerate() {
                let pts: Vec<(f64, f64)> = curve
                    .fpr
                    .iter()
                    .copied()
                    .zip(curve.tpr.iter().copied())
                    .collect();
                line(
                    chart,
                    pts,
                    CLASS_COLORS[k % CLASS_COLORS.len()],
                    2,
                    label.clone(),
                )?;
            }
            Ok(())
        },
    )
}

/// The side of the square N×N confusion matrix's grid, in px.
const GRID_PX: i32 = 640;
/// Class names of the N×N confusion matrix are shortened to this many characters.
const NAME_CHARS: usize = 20;
/// Size of the class names of the N×N confusion matrix.
const NAME_PX: u32 = 15;

/// Where the N×N grid starts and its cell size: room on the left for the row names and
/// above for the column names (written upwards), from the longest name (DejaVu Sans
/// averages about 0.62 em per character).
fn confusion_layout(names: &[String]) -> (i32, i32, i32) {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(1);
    let text = (longest as f64 * f64::from(NAME_PX) * 0.62).ceil() as i32;
    let cell = GRID_PX / names.len().max(1) as i32;
    ((text + 30).max(80), (text + 70).max(110), cell)
}

/// The N×N confusion matrix: rows the true class, columns the prediction; each cell is
/// shaded by its share of the row (`normalized`) and shows its count, with the share
/// underneath while the cell is large enough. Class names are shortened to fit; column
/// names are written diagonally.
pub fn confusion_n(
    counts: &[Vec<u64>],
    normalized: &[Vec<f64>],
    class_names: &[String],
    path: &Path,
) -> Result<()> {
    let n = counts.len().max(1) as i32;
    let short = |k: usize| {
        ellipsize(
            &class_names.get(k).cloned().unwrap_or_else(|| k.to_string()),
            NAME_CHARS,
        )
    };
    let (x0, y0, cell) = confusion_layout(&(0..n as usize).map(short).collect::<Vec<_>>());
    let (w, h) = ((x0 + cell * n + 40) as u32, (y0 + cell * n + 50) as u32);
    // Font sizes scale with the cell: 34 px counts in a 213 px cell (3 classes), 20 px in
    // an 80 px cell (8 classes).
    let count_px = (cell as f64 * 0.25).clamp(12.0, 34.0) as u32;
    let share_px = (cell as f64 * 0.15).clamp(10.0, 15.0) as u32;
    render_png(
        white(w, h),
        (w, h),
        path,
        |root: &Canvas<'_>| -> DrawResult {
            root.draw_text(
                "Confusion matrix (shading: share of the true class)",
                &text_style(22, BLACK, HPos::Center, VPos::Top),
                (w as i32 / 2, 14),
            )?;
            root.draw_text(
                "predicted",
                &text_style(17, BLACK, HPos::Center, VPos::Top),
                (x0 + cell * n / 2, y0 + cell * n + 14),
            )?;
            root.draw_text(
                "true",
                &text_style(17, BLACK, HPos::Right, VPos::Bottom),
                (x0 - 14, y0 - 6),
            )?;
            for t in 0..n as usize {
                root.draw_text(
                    &short(t),
                    &text_style(NAME_PX, BLACK, HPos::Right, VPos::Center),
                    (x0 - 10, y0 + t as i32 * cell + cell / 2),
                )?;
                // Column names run upwards above the grid, so that long names of many
                // classes do not overlap.
                root.draw(&Text::new(
                    short(t),
                    (x0 + t as i32 * cell + cell / 2, y0 - 8),
                    TextStyle::from((font_family(), NAME_PX).into_font())
                        .transform(FontTransform::Rotate270)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                ))?;
            }
            for t in 0..n as usize {
                for p in 0..n as usize {
                    let share = normalized[t][p];
                    let (cx, cy) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                    let ink = heat_cell(root, (cx, cy), cell, share)?;
                    let big = cell >= 60;
                    let dy = if big { count_px as i32 / 3 } else { 0 };
                    root.draw_text(
                        &counts[t][p].to_string(),
                        &text_style(count_px, ink, HPos::Center, VPos::Center),
                        (cx + cell / 2, cy + cell / 2 - dy),
                    )?;
                    if big {
                        root.draw_text(
                            &format!("{:.0}%", share * 100.0),
                            &text_style(share_px, ink, HPos::Center, VPos::Center),
                            (cx + cell / 2, cy + cell / 2 + count_px as i32 / 2 + 2),
                        )?;
                    }
                }
            }
            Ok(())
        },
    )
}

/// Shortens `s` to at most `max` characters, keeping both ends.
pub(super) fn ellipsize(s: &str, max: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max || max < 5 {
        return s.to_string();
    }
    let tail = (max - 1) / 2;
    let head = max - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

const TILE: u32 = 176;
const COLS: u32 = 4;
const GAP: u32 = 14;
const CAPTION: u32 = 40;
const HEADING: u32 = 40;

/// The headings of the error grid's two sections.
fn error_headings(threshold: f64) -> [String; 2] {
    let t = display::threshold(threshold);
    [
        format!("False negatives: malignant lesions scored below {t} (most confident first)"),
        format!("False positives: benign lesions scored at or above {t} (most confident first)"),
    ]
}

/// The error grid: the most confident false negatives, then the most confident false
/// positives, each image with its malignant probability and file name. `images` maps source
/// indices to the stored images; a missing one is drawn as a grey tile.
pub fn error_grid(
    false_negatives: &[ErrorCase],
    false_positives: &[ErrorCase],
    images: &HashMap<u32, RgbImage>,
    threshold: f64,
    path: &Path,
) -> Result<()> {
    let rows = |n: usize| (n as u32).div_ceil(COLS).max(1);
    let section_h = |n: usize| HEADING + rows(n) * (TILE + CAPTION + GAP);
    let w = GAP + COLS * (TILE + GAP);
    let h = GAP + section_h(false_negatives.len()) + section_h(false_positives.len());
    let mut buf = white(w, h);
    let [fn_heading, fp_heading] = error_headings(threshold);
    let sections = [
        (fn_heading, false_negatives, FN_COLOR),
        (fp_heading, false_positives, FP_COLOR),
    ];
    // Tile origins, and the images pasted in before plotters draws the text.
    let mut tiles = Vec::new();
    let mut y = GAP;
    for (s, (_, cases, _)) in sections.iter().enumerate() {
        for (k, case) in cases.iter().enumerate() {
            let (cx, cy) = (k as u32 % COLS, k as u32 / COLS);
            let x0 = GAP + cx * (TILE + GAP);
            let y0 = y + HEADING + cy * (TILE + CAPTION + GAP);
            let tile = match images.get(&case.source_index) {
                Some(img) => image::imageops::resize(img, TILE, TILE, FilterType::Triangle),
                None => RgbImage::from_pixel(TILE, TILE, image::Rgb([200, 200, 200])),
            };
            for (px, py, p) in tile.enumerate_pixels() {
                let o = (((y0 + py) * w + x0 + px) * 3) as usize;
                buf[o..o + 3].copy_from_slice(&p.0);
            }
            tiles.push((s, k, x0 as i32, y0 as i32));
        }
        tiles.push((s, usize::MAX, 0, y as i32));
        y += section_h(cases.len());
    }
    render_png(buf, (w, h), path, |root: &Canvas<'_>| -> DrawResult {
        let max_chars = (TILE / 7) as usize;
        for &(s, k, x0, y0) in &tiles {
            let (heading, cases, color) = &sections[s];
            if k == usize::MAX {
                root.draw_text(
                    heading,
                    &text_style(17, *color, HPos::Left, VPos::Top),
                    (GAP as i32, y0 + 8),
                )?;
                if cases.is_empty() {
                    root.draw_text(
                        "none at this threshold",
                        &text_style(15, BLACK, HPos::Left, VPos::Top),
                        (GAP as i32, y0 + HEADING as i32 + 8),
                    )?;
                }
                continue;
            }
            let case = &cases[k];
            let t = TILE as i32;
            for d in 0..3 {
                root.draw(&Rectangle::new(
                    [(x0 - 1 - d, y0 - 1 - d), (x0 + t + d, y0 + t + d)],
                    color.stroke_width(1),
                ))?;
            }
            root.draw_text(
                &format!("p(malignant) = {}", display::probability(case.probability)),
                &text_style(14, BLACK, HPos::Center, VPos::Top),
                (x0 + t / 2, y0 + t + 5),
            )?;
            let name = Path::new(&case.path)
                .file_name()
                .map_or_else(|| case.path.clone(), |n| n.to_string_lossy().into_owned());
            root.draw_text(
                &ellipsize(&name, max_chars),
                &text_style(13, RGBColor(60, 60, 60), HPos::Center, VPos::Top),
                (x0 + t / 2, y0 + t + 22),
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny threshold keeps its value in the figures' text (not `0.000`).
    #[test]
    fn figure_texts_show_a_tiny_threshold() {
        assert_eq!(chosen_label(3.3e-7), "threshold 3.3e-7 (chosen on val)");
        assert_eq!(chosen_label(0.41234), "threshold 0.4123 (chosen on val)");
        let [fns, fps] = error_headings(3.3e-7);
        assert_eq!(
            fns,
            "False negatives: malignant lesions scored below 3.3e-7 (most confident first)"
        );
        assert_eq!(
            fps,
            "False positives: benign lesions scored at or above 3.3e-7 (most confident first)"
        );
    }

    #[test]
    fn ellipsize_keeps_both_ends() {
        assert_eq!(ellipsize("short.jpg", 20), "short.jpg");
        let s = ellipsize("ISIC_0012345_downsampled.jpg", 15);
        assert_eq!(s.chars().count(), 15);
        assert!(s.starts_with("ISIC_00") && s.ends_with("ed.jpg"), "{s}");
    }

    #[test]
    fn heat_runs_from_white_to_blue() {
        assert_eq!(heat(0.0), RGBColor(247, 251, 255));
        assert_eq!(heat(1.0), RGBColor(8, 69, 148));
    }

    /// At 8 classes with long names every cell still holds its count, the names are
    /// shortened, and the figure stays within a screen's width. Set `LESION_PLOT_DIR` to
    /// keep the PNG for a look.
    #[test]
    fn confusion_matrix_reads_at_eight_classes() {
        let names: Vec<String> = [
            "actinic keratosis",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevus",
            "squamous cell carcinoma",
            "vascular lesion",
        ]
        .map(String::from)
        .to_vec();
        let counts: Vec<Vec<u64>> = (0..8u64)
            .map(|t| {
                (0..8u64)
                    .map(|p| {
                        if t == p {
                            120 + t
                        } else {
                            (t * 7 + p * 3) % 11
                        }
                    })
                    .collect()
            })
            .collect();
        let normalized: Vec<Vec<f64>> = counts
            .iter()
            .map(|r| {
                let s: u64 = r.iter().sum();
                r.iter().map(|&v| v as f64 / s as f64).collect()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        confusion_n(&counts, &normalized, &names, &path).unwrap();
        if let Some(keep) = std::env::var_os("LESION_PLOT_DIR") {
            std::fs::copy(&path, std::path::Path::new(&keep).join("confusion-8.png")).unwrap();
        }
        let img = image::open(&path).unwrap().to_rgb8();
        // "squamous c…carcinoma": 20 characters, 186 px of text.
        let short: Vec<String> = names.iter().map(|n| ellipsize(n, NAME_CHARS)).collect();
        let (x0, y0, cell) = confusion_layout(&short);
        assert_eq!((x0, y0, cell), (216, 256, 80));
        assert_eq!((img.width(), img.height()), (896, 946));
        // A diagonal cell is shaded by its share, with its count written in white.
        let (cx, cy) = (x0 + 3 * cell, y0 + 3 * cell);
        let px = |x: i32, y: i32| img.get_pixel(x as u32, y as u32).0;
        assert_eq!(
            px(cx + 3, cy + 3),
            [
                heat(normalized[3][3]).0,
                heat(normalized[3][3]).1,
                heat(normalized[3][3]).2
            ]
        );
        let white = (cx..cx + cell)
            .flat_map(|x| (cy..cy + cell).map(move |y| (x, y)))
            .filter(|&(x, y)| px(x, y) == [255, 255, 255])
            .count();
        assert!(
            white > 30,
            "no count written in the cell ({white} white pixels)"
        );
    }
}

//! PNG figures: image grids (`samples.png`) and line charts (`curves.png`).
//!
//! Drawing happens in an in-memory RGB8 buffer (`[h, w, 3]`, row-major) through plotters'
//! `BitMapBackend::with_buffer`; the buffer is encoded to PNG with the `image` crate and
//! written atomically. Text uses DejaVu Sans embedded in the binary (registered as plotters'
//! `sans-serif` family), so no system fonts are needed.

use std::io::Cursor;
use std::path::Path;
use std::sync::Once;

use image::{ImageFormat, RgbImage};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{fsutil, Error, Result};

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn ensure_font() {
    REGISTER.call_once(|| {
        // The font is compiled in and known good; a failure here is a build defect.
        if register_font(FONT, FontStyle::Normal, FONT_BYTES).is_err() {
            panic!("embedded DejaVu Sans does not parse");
        }
    });
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::BadArtifact {
        path: path.to_path_buf(),
        reason: format!("cannot draw figure: {e}"),
    }
}

/// Encodes an RGB8 buffer as PNG and writes it atomically.
fn save_png(buf: Vec<u8>, (w, h): (u32, u32), path: &Path) -> Result<()> {
    let img = RgbImage::from_raw(w, h, buf).expect("buffer is w*h*3");
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| plot_error(path, e))?;
    fsutil::write_atomic(path, &png)
}

const PAD: u32 = 10;
const CAPTION_H: u32 = 26;
/// Images smaller than this are enlarged (nearest neighbour, integer factor) so that
/// captions fit under them.
const MIN_TILE: u32 = 160;

/// Draws `images` in a grid of `cols` columns, each with its caption underneath, on white,
/// and writes it as a PNG. Tiles are as large as the largest image (small images are
/// enlarged by an integer factor).
pub fn image_grid<S: AsRef<str>>(images: &[(RgbImage, S)], cols: u32, path: &Path) -> Result<()> {
    ensure_font();
    let cols = cols.max(1).min(images.len().max(1) as u32);
    let rows = (images.len() as u32).div_ceil(cols).max(1);
    let max_w = images
        .iter()
        .map(|(i, _)| i.width())
        .max()
        .unwrap_or(1)
        .max(1);
    let max_h = images
        .iter()
        .map(|(i, _)| i.height())
        .max()
        .unwrap_or(1)
        .max(1);
    let scale = MIN_TILE.div_ceil(max_w.max(max_h)).max(1);
    let (tw, th) = (max_w * scale, max_h * scale);
    let width = cols * (tw + PAD) + PAD;
    let height = rows * (th + CAPTION_H + PAD) + PAD;
    let mut buf = vec![255u8; (width * height * 3) as usize];
    for (k, (img, _)) in images.iter().enumerate() {
        let (cx, cy) = (k as u32 % cols, k as u32 / cols);
        let x0 = PAD + cx * (tw + PAD) + (tw - img.width() * scale) / 2;
        let y0 = PAD + cy * (th + CAPTION_H + PAD) + (th - img.height() * scale) / 2;
        for y in 0..img.height() * scale {
            for x in 0..img.width() * scale {
                let p = img.get_pixel(x / scale, y / scale).0;
                let o = (((y0 + y) * width + x0 + x) * 3) as usize;
                buf[o..o + 3].copy_from_slice(&p);
            }
        }
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let style = TextStyle::from((FONT, 16).into_font()).color(&BLACK).pos(
            plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Top,
            ),
        );
        for (k, (_, caption)) in images.iter().enumerate() {
            let (cx, cy) = (k as u32 % cols, k as u32 / cols);
            let x = PAD + cx * (tw + PAD) + tw / 2;
            let y = PAD + cy * (th + CAPTION_H + PAD) + th + 4;
            root.draw_text(caption.as_ref(), &style, (x as i32, y as i32))
                .map_err(|e| plot_error(path, e))?;
        }
        root.present().map_err(|e| plot_error(path, e))?;
    }
    save_png(buf, (width, height), path)
}

/// One chart: a title, axis labels and named series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Panel<'a, S: AsRef<str>> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [(S, Vec<(f64, f64)>)],
}

/// Axis range covering every point, padded by 5% so lines do not sit on the frame.
fn bounds(series: &[(impl AsRef<str>, Vec<(f64, f64)>)]) -> ((f64, f64), (f64, f64)) {
    let pts = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return ((0.0, 1.0), (0.0, 1.0));
    }
    let widen = |a: f64, b: f64| {
        let span = if b - a > 1e-12 {
            b - a
        } else {
            a.abs().max(1.0)
        };
        (a - 0.05 * span, b + 0.05 * span)
    };
    (widen(x0, x1), widen(y0, y1))
}

fn draw_panel<DB: DrawingBackend, S: AsRef<str>>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel<'_, S>,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let ((x0, x1), (y0, y1)) = bounds(panel.series);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    // Epochs are counts: label them 1, 2, 3 rather than 1.0, 2.0, 3.0.
    let integer_x = panel
        .series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .all(|&(x, _)| x.fract() == 0.0);
    let x_fmt = |x: &f64| {
        if x.fract().abs() < 1e-9 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    if integer_x {
        mesh.x_label_formatter(&x_fmt);
    }
    mesh.x_desc(panel.x_label)
        .y_desc(panel.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (k, (name, points)) in panel.series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let finite: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(
                finite.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_ref())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(finite.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Side-by-side charts of `panel_width x height` pixels each, written as one PNG.
pub fn panels<S: AsRef<str>>(
    panels: &[Panel<'_, S>],
    panel_width: u32,
    height: u32,
    path: &Path,
) -> Result<()> {
    ensure_font();
    let n = panels.len().max(1) as u32;
    let (width, height) = (panel_width * n, height);
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
        let areas = root.split_evenly((1, n as usize));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| plot_error(path, e))?;
        }
        root.present().map_err(|e| plot_error(path, e))?;
    }
    save_png(buf, (width, height), path)
}

/// One line chart (800x500) of named `(x, y)` series.
pub fn line_chart<S: AsRef<str>>(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(S, Vec<(f64, f64)>)],
    path: &Path,
) -> Result<()> {
    let panel = Panel {
        title,
        x_label,
        y_label,
        series,
    };
    panels(&[panel], 800, 500, path)
}

/// The training curves figure (1400x500): loss (left) and accuracy (right) per epoch, train
/// vs validation, the notebook's last plot. Epochs are numbered from 1.
pub fn training_curves(
    train_loss: &[f64],
    val_loss: &[f64],
    train_acc: &[f64],
    val_acc: &[f64],
    path: &Path,
) -> Result<()> {
    let pts = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, &y)| ((i + 1) as f64, y))
            .collect()
    };
    let loss = [("train", pts(train_loss)), ("val", pts(val_loss))];
    let acc = [("train", pts(train_acc)), ("val", pts(val_acc))];
    panels(
        &[
            Panel {
                title: "Loss",
                x_label: "epoch",
                y_label: "loss",
                series: &loss,
            },
            Panel {
                title: "Accuracy",
                x_label: "epoch",
                y_label: "accuracy",
                series: &acc,
            },
        ],
        700,
        500,
        path,
    )
}

/// The drawing area [`render_png`] hands to its callback: plotters over an RGB8 canvas.
pub type Canvas<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The font family every figure uses (the embedded DejaVu Sans), registered on first use;
/// pass it to plotters' text styles, e.g. `(font_family(), 16)`.
pub fn font_family() -> &'static str {
    ensure_font();
    FONT
}

/// Lets another module compose a figure from plotters primitives: `draw` paints on `buf`
/// (RGB8 `[height, width, 3]`, row-major; white, or with images already pasted in), which
/// is then written as a PNG atomically.
pub fn render_png(
    mut buf: Vec<u8>,
    (width, height): (u32, u32),
    path: &Path,
    draw: impl FnOnce(&Canvas<'_>) -> std::result::Result<(), Box<dyn std::error::Error>>,
) -> Result<()> {
    ensure_font();
    if buf.len() != (width as usize) * (height as usize) * 3 {
        return Err(plot_error(
            path,
            format!("canvas holds {} bytes, not {width}x{height}x3", buf.len()),
        ));
    }
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))?;
    }
    save_png(buf, (width, height), path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GenericImageView;

    fn non_white(img: &RgbImage) -> usize {
        img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    #[test]
    fn grid_has_expected_size_images_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let red = RgbImage::from_pixel(200, 200, image::Rgb([200, 0, 0]));
        let blue = RgbImage::from_pixel(200, 200, image::Rgb([0, 0, 200]));
        let items = vec![
            (red.clone(), "Benign"),
            (red.clone(), "Benign"),
            (red, "Benign"),
            (blue.clone(), "Malignant"),
            (blue.clone(), "Malignant"),
            (blue, "Malignant"),
        ];
        image_grid(&items, 3, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (3 * 210 + 10, 2 * (200 + 26 + 10) + 10));
        assert_eq!(img.get_pixel(110, 110).0, [200, 0, 0]);
        assert_eq!(img.get_pixel(110, 10 + 236 + 100).0, [0, 0, 200]);
        // Caption strip under the first tile holds dark (text) pixels.
        let dark = (10..210)
            .flat_map(|x| (212..236).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 20, "caption not drawn ({dark} dark pixels)");
    }

    #[test]
    fn small_images_are_enlarged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let items = [(RgbImage::from_pixel(16, 16, image::Rgb([0, 255, 0])), "x")];
        image_grid(&items, 3, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (160 + 20, 160 + 26 + 20));
    }

    #[test]
    fn charts_are_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("line.png");
        let series = vec![
            ("a".to_string(), vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.25)]),
            ("b".to_string(), vec![(0.0, 0.0), (2.0, 1.0)]),
        ];
        line_chart("t", "x", "y", &series, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500));
        assert!(non_white(&img) > 2000, "{}", non_white(&img));

        let path = dir.path().join("curves.png");
        training_curves(
            &[0.7, 0.5, 0.4],
            &[0.72, 0.6, 0.55],
            &[0.6, 0.7, 0.8],
            &[0.6, 0.65, 0.7],
            &path,
        )
        .unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (1400, 500));
        let left = img.view(0, 0, 700, 500).to_image();
        let right = img.view(700, 0, 700, 500).to_image();
        assert!(non_white(&left) > 2000 && non_white(&right) > 2000);

        // Degenerate input (no points, a single point) still draws axes.
        let empty: Vec<(&str, Vec<(f64, f64)>)> = vec![("none", vec![]), ("one", vec![(1.0, 1.0)])];
        line_chart("empty", "x", "y", &empty, &dir.path().join("e.png")).unwrap();
    }
}

//! PNG plots with plotters: loss and accuracy curves, decision regions of 2-D problems.
//!
//! Text uses a DejaVu Sans font compiled into the binary (plotters' `ab_glyph` backend), so
//! plotting needs neither fontconfig nor system fonts. Every PNG is rendered to a temporary
//! file and renamed into place.

use super::log::LogRow;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *ONCE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Other("the built-in plot font does not load".into()))
    }
}

fn perr(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Other(format!("plotting {}: {e}", path.display()))
}

/// Renders with `draw` into a temporary PNG beside `path`, then renames it over `path`.
fn render_atomic(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file path", path.display())))?;
    // The extension tells the backend to encode PNG.
    let tmp = dir.join(format!(
        ".{}.{}.tmp.png",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(path)(&e))?;
        draw(&root)?;
        root.present().map_err(|e| perr(path)(&e))?;
        drop(root);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A named curve: label, colour, points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// A line chart of several named series over epochs.
fn curves(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series<'_>],
) -> Result<()> {
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        if y.is_finite() {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        x1 = x1.max(x);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    render_atomic(path, (800, 500), |root| {
        let e = perr(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 24))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x1 + 0.5, (y0 - pad)..(y1 + pad))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc(ylabel)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
        for (label, color, data) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(data.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|x| e(&x))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
        Ok(())
    })
}

/// `dir/loss.png` and `dir/accuracy.png` from the log rows.
pub fn plot_curves(dir: &Path, rows: &[LogRow]) -> Result<()> {
    let loss: Vec<(f64, f64)> = rows.iter().map(|r| (r.epoch as f64, r.loss)).collect();
    curves(
        &dir.join("loss.png"),
        "training loss",
        "epoch",
        "mean cross-entropy",
        &[("train loss", RED, loss)],
    )?;
    let tr: Vec<(f64, f64)> = rows.iter().map(|r| (r.epoch as f64, r.train_acc)).collect();
    let te: Vec<(f64, f64)> = rows.iter().map(|r| (r.epoch as f64, r.test_acc)).collect();
    curves(
        &dir.join("accuracy.png"),
        "accuracy",
        "epoch",
        "fraction correct",
        &[("train", BLUE, tr), ("test", RGBColor(0, 150, 0), te)],
    )
}

/// A line chart of named series (e.g. a benchmark quantity against depth), one colour each.
pub fn series_png(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let named: Vec<Series<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| (name.as_str(), class_color(i), pts.clone()))
        .collect();
    curves(path, title, xlabel, ylabel, &named)
}

/// Class colours: saturated for points, light for regions.
fn class_color(c: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    P[c % P.len()]
}

fn light(c: RGBColor) -> RGBColor {
    let l = |v: u8| (255.0 - (255.0 - v as f64) * 0.35) as u8;
    RGBColor(l(c.0), l(c.1), l(c.2))
}

/// Bounds `[x0, x1, y0, y1]` around points `[m, 2]` with a 10 % margin.
pub fn bounds_of(points: &[f32]) -> [f32; 4] {
    let mut b = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    for p in points.chunks_exact(2) {
        if p[0].is_finite() && p[1].is_finite() {
            b = [
                b[0].min(p[0]),
                b[1].max(p[0]),
                b[2].min(p[1]),
                b[3].max(p[1]),
            ];
        }
    }
    if !b[0].is_finite() {
        return [-1.0, 1.0, -1.0, 1.0];
    }
    let mx = ((b[1] - b[0]) * 0.1).max(1e-3);
    let my = ((b[3] - b[2]) * 0.1).max(1e-3);
    [b[0] - mx, b[1] + mx, b[2] - my, b[3] + my]
}

/// Decision regions of a 2-D classifier over `bounds` (`[x0, x1, y0, y1]`), with the labelled
/// points `[m, 2]` on top. `classify` maps points `[k, 2]` to class indices.
pub fn plot_regions(
    path: &Path,
    classify: &mut dyn FnMut(&[f32]) -> Result<Vec<usize>>,
    points: &[f32],
    labels: &[usize],
    bounds: [f32; 4],
    title: &str,
) -> Result<()> {
    const G: usize = 160;
    let [x0, x1, y0, y1] = bounds;
    let (dx, dy) = ((x1 - x0) / G as f32, (y1 - y0) / G as f32);
    let mut grid = Vec::with_capacity(2 * G * G);
    for i in 0..G {
        for j in 0..G {
            grid.push(x0 + (j as f32 + 0.5) * dx);
            grid.push(y0 + (i as f32 + 0.5) * dy);
        }
    }
    let mut classes = Vec::with_capacity(G * G);
    for chunk in grid.chunks(2 * 4096) {
        let c = classify(chunk)?;
        if c.len() != chunk.len() / 2 {
            return Err(Error::Shape(format!(
                "classifier returned {} classes for {} points",
                c.len(),
                chunk.len() / 2
            )));
        }
        classes.extend(c);
    }
    render_atomic(path, (700, 700), |root| {
        let e = perr(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 22))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(&x))?;
        chart
            .draw_series(grid.chunks_exact(2).zip(&classes).map(|(p, &c)| {
                let (cx, cy) = (p[0] - 0.5 * dx, p[1] - 0.5 * dy);
                Rectangle::new(
                    [(cx, cy), (cx + dx, cy + dy)],
                    light(class_color(c)).filled(),
                )
            }))
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(points.chunks_exact(2).zip(labels).map(|(p, &l)| {
                EmptyElement::at((p[0], p[1]))
                    + Circle::new((0, 0), 3, class_color(l).filled())
                    + Circle::new((0, 0), 3, BLACK.mix(0.6))
            }))
            .map_err(|x| e(&x))?;
        Ok(())
    })
}

/// One panel of [`heatmaps_png`]: a row-major `rows x cols` map (row 0 at the top).
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub rows: usize,
    pub cols: usize,
    /// Values outside `range` are clamped; NaN pixels are left white (e.g. "below threshold").
    pub values: &'a [f64],
}

/// A viridis-like colour for `t` in `[0, 1]` (linear between five anchors).
fn colormap(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let x = t.clamp(0.0, 1.0) * (A.len() - 1) as f64;
    let i = (x.floor() as usize).min(A.len() - 2);
    let f = x - i as f64;
    let mix = |a: f64, b: f64| (a + (b - a) * f).round() as u8;
    RGBColor(
        mix(A[i].0, A[i + 1].0),
        mix(A[i].1, A[i + 1].1),
        mix(A[i].2, A[i + 1].2),
    )
}

/// Heatmaps side by side with one shared colour scale `range` and a colour bar labelled
/// `scale_label` underneath.
pub fn heatmaps_png(
    path: &Path,
    title: &str,
    panels: &[Heatmap<'_>],
    range: (f64, f64),
    scale_label: &str,
) -> Result<()> {
    let (v0, v1) = range;
    if panels.is_empty() || !(v0.is_finite() && v1.is_finite() && v0 < v1) {
        return Err(Error::Input(format!(
            "heatmaps: need at least one panel and a finite range with min < max (got {} panels, {v0}..{v1})",
            panels.len()
        )));
    }
    for p in panels {
        if p.rows == 0 || p.cols == 0 || p.rows.checked_mul(p.cols) != Some(p.values.len()) {
            return Err(Error::Shape(format!(
                "heatmap '{}': {} values do not fill {} x {}",
                p.title,
                p.values.len(),
                p.rows,
                p.cols
            )));
        }
    }
    const PANEL: u32 = 320;
    let size = (PANEL * panels.len() as u32, PANEL + 130);
    render_atomic(path, size, |root| {
        let e = perr(path);
        let root = root.titled(title, (FAMILY, 22)).map_err(|x| e(&x))?;
        let (top, bottom) = root.split_vertically(PANEL + 10);
        for (area, p) in top.split_evenly((1, panels.len())).iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(p.title, (FAMILY, 17))
                .margin(12)
                .build_cartesian_2d(0..p.cols as i32, 0..p.rows as i32)
                .map_err(|x| e(&x))?;
            chart
                .plotting_area()
                .fill(&RGBColor(250, 250, 250))
                .map_err(|x| e(&x))?;
            let cells = p.values.iter().enumerate().filter_map(|(k, &v)| {
                let (i, j) = ((k / p.cols) as i32, (k % p.cols) as i32);
                let y = p.rows as i32 - 1 - i;
                (!v.is_nan()).then(|| {
                    Rectangle::new(
                        [(j, y), (j + 1, y + 1)],
                        colormap((v - v0) / (v1 - v0)).filled(),
                    )
                })
            });
            chart.draw_series(cells).map_err(|x| e(&x))?;
            chart
                .plotting_area()
                .draw(&Rectangle::new(
                    [(0, 0), (p.cols as i32, p.rows as i32)],
                    BLACK.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
        }
        let mut bar = ChartBuilder::on(&bottom)
            .margin_left(40)
            .margin_right(40)
            .margin_bottom(5)
            .x_label_area_size(45)
            .build_cartesian_2d(v0..v1, 0.0..1.0)
            .map_err(|x| e(&x))?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_y_axis()
            .x_desc(scale_label)
            .x_labels(9)
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
        const STEPS: usize = 200;
        let dv = (v1 - v0) / STEPS as f64;
        bar.draw_series((0..STEPS).map(|k| {
            let a = v0 + k as f64 * dv;
            Rectangle::new(
                [(a, 0.0), (a + dv, 1.0)],
                colormap((k as f64 + 0.5) / STEPS as f64).filled(),
            )
        }))
        .map_err(|x| e(&x))?;
        Ok(())
    })
}

/// Paths in the plane (e.g. the characteristics of a transport flow): each a grey line from a
/// blue start to a red end, with `extra` points (e.g. samples of the target) in green beneath.
pub fn paths_png(
    path: &Path,
    title: &str,
    paths: &[Vec<(f64, f64)>],
    extra: &[(f64, f64)],
) -> Result<()> {
    let flat: Vec<f32> = paths
        .iter()
        .flatten()
        .chain(extra)
        .flat_map(|&(x, y)| [x as f32, y as f32])
        .collect();
    let [x0, x1, y0, y1] = bounds_of(&flat).map(f64::from);
    render_atomic(path, (700, 700), |root| {
        let e = perr(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style((FAMILY, 14))
            .draw()
            .map_err(|x| e(&x))?;
        let green = RGBColor(44, 160, 44);
        chart
            .draw_series(
                extra
                    .iter()
                    .map(|&p| Circle::new(p, 2, green.mix(0.5).filled())),
            )
            .map_err(|x| e(&x))?;
        for p in paths {
            chart
                .draw_series(LineSeries::new(p.iter().copied(), BLACK.mix(0.25)))
                .map_err(|x| e(&x))?;
        }
        let ends = |first: bool| {
            paths
                .iter()
                .filter_map(move |p| if first { p.first() } else { p.last() })
                .copied()
        };
        chart
            .draw_series(ends(true).map(|p| Circle::new(p, 2, class_color(0).filled())))
            .map_err(|x| e(&x))?;
        chart
            .draw_series(ends(false).map(|p| Circle::new(p, 2, class_color(1).filled())))
            .map_err(|x| e(&x))?;
        Ok(())
    })
}

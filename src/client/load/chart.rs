//! A chart of a run, SVG or PNG by the file's extension: throughput (and
//! failures) per second on top, p50/p90/p99 latency per second below.
//!
//! Labels are laid out with a TrueType font read at run time (plotters'
//! pure-Rust `ab_glyph` text, no fontconfig): `BIBLIOTECA_FONT` names one,
//! else the usual DejaVu Sans locations are tried (Debian's
//! `fonts-dejavu-core`). Both formats need it: even SVG text is measured.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;

use super::report::{LoadReport, OperationRow, Point};
use biblioteca_protocol::Operacion;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct ChartError {
    pub path: String,
    pub reason: String,
}

/// Where a font is looked for when `BIBLIOTECA_FONT` is not set.
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/run/current-system/sw/share/X11/fonts/DejaVuSans.ttf",
];

/// The chart formats, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartFormat {
    Svg,
    Png,
}

impl ChartFormat {
    pub fn from_path(path: &Path) -> Option<ChartFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(ChartFormat::Svg),
            "png" => Some(ChartFormat::Png),
            _ => None,
        }
    }
}

/// One run: throughput and failures per second, latency percentiles per second.
pub fn draw(report: &LoadReport, path: &Path) -> Result<(), ChartError> {
    let series = &report.series;
    let per_second = |f: fn(&Point) -> f64| series.iter().map(|p| (p.t_s as f64, f(p))).collect();
    let title = format!(
        "{} clients: {} requests, {:.1} req/s, {} failures",
        report.clients, report.total.requests, report.total.rps, report.total.failures
    );
    let top_panel = Panel {
        caption: title,
        x_desc: "seconds",
        y_desc: "requests/s",
        lines: vec![
            Line::new("req/s", BLUE, per_second(|p| p.rps)),
            Line::new("failures/s", RED, per_second(|p| p.failures_s)),
        ],
        bars: Vec::new(),
        legend: SeriesLabelPosition::UpperRight,
    };
    let bottom_panel = Panel {
        caption: "latency per second".into(),
        x_desc: "seconds",
        y_desc: "ms",
        lines: vec![
            Line::new("p50", GREEN, per_second(|p| p.p50_ms)),
            Line::new("p90", ORANGE, per_second(|p| p.p90_ms)),
            Line::new("p99", RED, per_second(|p| p.p99_ms)),
        ],
        bars: Vec::new(),
        legend: SeriesLabelPosition::UpperRight,
    };
    two_panels(path, &top_panel, &bottom_panel)
}

/// The course experiment: throughput, and loan latency (mean with one
/// standard deviation either side, and p99), against the number of clients.
pub fn draw_experiment(reports: &[LoadReport], path: &Path) -> Result<(), ChartError> {
    let prestamo = |r: &LoadReport| -> OperationRow {
        r.operations
            .iter()
            .find(|o| o.operacion == Operacion::Prestamo.as_str())
            .unwrap_or(&r.total)
            .clone()
    };
    let per_client_count = |f: &dyn Fn(&LoadReport) -> f64| -> Vec<(f64, f64)> {
        reports.iter().map(|r| (r.clients as f64, f(r))).collect()
    };
    let top_panel = Panel {
        caption: "throughput by number of clients".into(),
        x_desc: "clients",
        y_desc: "requests/s",
        lines: vec![Line::new("req/s", BLUE, per_client_count(&|r| r.total.rps))],
        bars: Vec::new(),
        // The x axis starts at 0 clients: the left side is empty.
        legend: SeriesLabelPosition::UpperLeft,
    };
    let bottom_panel = Panel {
        caption: "loan latency: mean ± 1 stddev, p99".into(),
        x_desc: "clients",
        y_desc: "ms",
        lines: vec![
            Line::new("mean", GREEN, per_client_count(&|r| prestamo(r).mean_ms)),
            Line::new("p99", RED, per_client_count(&|r| prestamo(r).p99_ms)),
        ],
        bars: reports
            .iter()
            .map(|r| {
                let f = prestamo(r);
                let x = r.clients as f64;
                (
                    x,
                    (f.mean_ms - f.stddev_ms).max(0.0),
                    f.mean_ms + f.stddev_ms,
                )
            })
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    };
    two_panels(path, &top_panel, &bottom_panel)
}

const SIZE: (u32, u32) = (1000, 720);

/// Registers the label font once per process; the error says how to get one.
fn font() -> Result<(), &'static String> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(load_font).as_ref().map(|_| ())
}

fn load_font() -> Result<(), String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("BIBLIOTECA_FONT") {
        Some(p) => vec![PathBuf::from(p)],
        None => FONTS.iter().map(PathBuf::from).collect(),
    };
    for p in &candidates {
        let Ok(bytes) = std::fs::read(p) else {
            continue;
        };
        // plotters keeps fonts for the life of the process; this runs once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        return register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", p.display()));
    }
    Err(format!(
        "no font for the chart labels (looked at {}); install fonts-dejavu-core or set \
         BIBLIOTECA_FONT to a .ttf file",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A named series of (x, y) points.
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn new(label: &'static str, color: RGBColor, points: Vec<(f64, f64)>) -> Line {
        Line {
            label,
            color,
            points,
        }
    }
}

/// One half of a chart: its lines and optional vertical bars (x, low, high).
struct Panel {
    caption: String,
    x_desc: &'static str,
    y_desc: &'static str,
    lines: Vec<Line>,
    bars: Vec<(f64, f64, f64)>,
    legend: SeriesLabelPosition,
}

const ORANGE: RGBColor = RGBColor(230, 140, 0);

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// Two panels, one above the other, in the format the extension asks for.
fn two_panels(path: &Path, top_panel: &Panel, bottom_panel: &Panel) -> Result<(), ChartError> {
    let fail = |reason: String| ChartError {
        path: path.display().to_string(),
        reason,
    };
    let format = ChartFormat::from_path(path)
        .ok_or_else(|| fail("the file name must end in .svg or .png".into()))?;
    font().map_err(|e| fail(e.clone()))?;
    match format {
        ChartFormat::Svg => draw_on(
            SVGBackend::new(path, SIZE).into_drawing_area(),
            top_panel,
            bottom_panel,
        ),
        ChartFormat::Png => draw_on(
            BitMapBackend::new(path, SIZE).into_drawing_area(),
            top_panel,
            bottom_panel,
        ),
    }
    .map_err(fail)
}

fn draw_on<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    top_panel: &Panel,
    bottom_panel: &Panel,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    panel(&top, top_panel)?;
    panel(&bottom, bottom_panel)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), String> {
    let xs = p.lines.iter().flat_map(|l| l.points.iter().map(|q| q.0));
    let ys = p.lines.iter().flat_map(|l| l.points.iter().map(|q| q.1));
    let xmax = xs.fold(1.0, f64::max);
    let ymax = ys.chain(p.bars.iter().map(|b| b.2)).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for l in &p.lines {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(l.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if !p.bars.is_empty() {
        chart
            .draw_series(p.bars.iter().map(|&(x, low, high)| {
                ErrorBar::new_vertical(x, low, (low + high) / 2.0, high, BLACK.stroke_width(1), 10)
            }))
            .map_err(|e| err(&e))?
            .label("±1 stddev")
            .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(p.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::{Aggregate, Sample};
    use biblioteca_protocol::Operacion;
    use std::time::Duration;

    fn report() -> LoadReport {
        let mut a = Aggregate::new();
        for i in 0..300u64 {
            a.record(
                &Sample {
                    operacion: Operacion::Prestamo,
                    latency: Some(Duration::from_micros(2000 + 37 * i)),
                    failure: None,
                },
                Duration::from_millis(10 * i),
            );
        }
        a.report(4, 0, Duration::from_secs(3))
    }

    fn temp(ext: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("biblioteca-grafico-{}.{ext}", std::process::id()))
    }

    /// The bytes of a run chart drawn into a temporary file of this extension.
    fn drawn(ext: &str) -> Vec<u8> {
        let path = temp(ext);
        draw(&report(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    }

    #[test]
    fn writes_an_svg() {
        let svg = String::from_utf8(drawn("svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("p99") && svg.contains("requests/s"));
    }

    #[test]
    fn writes_a_png_with_drawn_lines() {
        let bytes = drawn("png");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        // IHDR: width and height, big-endian, at offsets 16 and 20.
        assert_eq!(&bytes[16..24], &[0, 0, 3, 232, 0, 0, 2, 208]);
        // A blank white image compresses to almost nothing; lines and text do not.
        assert!(
            bytes.len() > 10_000,
            "PNG suspiciously small: {}",
            bytes.len()
        );
    }

    #[test]
    fn draws_the_experiment_chart() {
        let reports: Vec<LoadReport> = [4, 6, 10]
            .iter()
            .map(|&n| LoadReport {
                clients: n,
                ..report()
            })
            .collect();
        let path = temp("exp.svg");
        draw_experiment(&reports, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("loan latency") && svg.contains("stddev") && svg.contains("clients"));
    }

    #[test]
    fn other_extensions_are_refused() {
        let e = draw(&report(), Path::new("/tmp/chart.jpg")).unwrap_err();
        assert!(e.reason.contains(".svg or .png"), "{e}");
        assert_eq!(
            ChartFormat::from_path(Path::new("a/B.PNG")),
            Some(ChartFormat::Png)
        );
    }
}

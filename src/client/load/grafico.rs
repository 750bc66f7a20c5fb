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

use super::informe::{FilaOp, Informe, Punto};
use biblioteca_protocol::Operacion;

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct GraficoError {
    pub path: String,
    pub reason: String,
}

/// Where a font is looked for when `BIBLIOTECA_FONT` is not set.
const FUENTES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/run/current-system/sw/share/X11/fonts/DejaVuSans.ttf",
];

/// The chart formats, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formato {
    Svg,
    Png,
}

impl Formato {
    pub fn de(path: &Path) -> Option<Formato> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Formato::Svg),
            "png" => Some(Formato::Png),
            _ => None,
        }
    }
}

/// One run: throughput and failures per second, latency percentiles per second.
pub fn dibujar(informe: &Informe, path: &Path) -> Result<(), GraficoError> {
    let serie = &informe.serie;
    let por_segundo = |f: fn(&Punto) -> f64| serie.iter().map(|p| (p.t_s as f64, f(p))).collect();
    let title = format!(
        "{} clients: {} requests, {:.1} req/s, {} failures",
        informe.clientes, informe.total.peticiones, informe.total.rps, informe.total.fallos
    );
    let arriba = Panel {
        caption: title,
        x_desc: "seconds",
        y_desc: "requests/s",
        lineas: vec![
            Linea::new("req/s", BLUE, por_segundo(|p| p.rps)),
            Linea::new("failures/s", RED, por_segundo(|p| p.fallos_s)),
        ],
        barras: Vec::new(),
        leyenda: SeriesLabelPosition::UpperRight,
    };
    let abajo = Panel {
        caption: "latency per second".into(),
        x_desc: "seconds",
        y_desc: "ms",
        lineas: vec![
            Linea::new("p50", GREEN, por_segundo(|p| p.p50_ms)),
            Linea::new("p90", NARANJA, por_segundo(|p| p.p90_ms)),
            Linea::new("p99", RED, por_segundo(|p| p.p99_ms)),
        ],
        barras: Vec::new(),
        leyenda: SeriesLabelPosition::UpperRight,
    };
    dos_paneles(path, &arriba, &abajo)
}

/// The course experiment: throughput, and loan latency (mean with one
/// standard deviation either side, and p99), against the number of clients.
pub fn dibujar_experimento(informes: &[Informe], path: &Path) -> Result<(), GraficoError> {
    let prestamo = |r: &Informe| -> FilaOp {
        r.operaciones
            .iter()
            .find(|o| o.operacion == Operacion::Prestamo.as_str())
            .unwrap_or(&r.total)
            .clone()
    };
    let por_clientes = |f: &dyn Fn(&Informe) -> f64| -> Vec<(f64, f64)> {
        informes.iter().map(|r| (r.clientes as f64, f(r))).collect()
    };
    let arriba = Panel {
        caption: "throughput by number of clients".into(),
        x_desc: "clients",
        y_desc: "requests/s",
        lineas: vec![Linea::new("req/s", BLUE, por_clientes(&|r| r.total.rps))],
        barras: Vec::new(),
        // The x axis starts at 0 clients: the left side is empty.
        leyenda: SeriesLabelPosition::UpperLeft,
    };
    let abajo = Panel {
        caption: "loan latency: mean ± 1 stddev, p99".into(),
        x_desc: "clients",
        y_desc: "ms",
        lineas: vec![
            Linea::new("mean", GREEN, por_clientes(&|r| prestamo(r).media_ms)),
            Linea::new("p99", RED, por_clientes(&|r| prestamo(r).p99_ms)),
        ],
        barras: informes
            .iter()
            .map(|r| {
                let f = prestamo(r);
                let x = r.clientes as f64;
                (
                    x,
                    (f.media_ms - f.desviacion_ms).max(0.0),
                    f.media_ms + f.desviacion_ms,
                )
            })
            .collect(),
        leyenda: SeriesLabelPosition::UpperLeft,
    };
    dos_paneles(path, &arriba, &abajo)
}

const TAMANO: (u32, u32) = (1000, 720);

/// Registers the label font once per process; the error says how to get one.
fn fuente() -> Result<(), &'static String> {
    static FUENTE: OnceLock<Result<(), String>> = OnceLock::new();
    FUENTE.get_or_init(cargar_fuente).as_ref().map(|_| ())
}

fn cargar_fuente() -> Result<(), String> {
    let candidatas: Vec<PathBuf> = match std::env::var_os("BIBLIOTECA_FONT") {
        Some(p) => vec![PathBuf::from(p)],
        None => FUENTES.iter().map(PathBuf::from).collect(),
    };
    for p in &candidatas {
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
        candidatas
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A named series of (x, y) points.
struct Linea {
    label: &'static str,
    color: RGBColor,
    puntos: Vec<(f64, f64)>,
}

impl Linea {
    fn new(label: &'static str, color: RGBColor, puntos: Vec<(f64, f64)>) -> Linea {
        Linea {
            label,
            color,
            puntos,
        }
    }
}

/// One half of a chart: its lines and optional vertical bars (x, low, high).
struct Panel {
    caption: String,
    x_desc: &'static str,
    y_desc: &'static str,
    lineas: Vec<Linea>,
    barras: Vec<(f64, f64, f64)>,
    leyenda: SeriesLabelPosition,
}

const NARANJA: RGBColor = RGBColor(230, 140, 0);

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// Two panels, one above the other, in the format the extension asks for.
fn dos_paneles(path: &Path, arriba: &Panel, abajo: &Panel) -> Result<(), GraficoError> {
    let fail = |reason: String| GraficoError {
        path: path.display().to_string(),
        reason,
    };
    let formato =
        Formato::de(path).ok_or_else(|| fail("the file name must end in .svg or .png".into()))?;
    fuente().map_err(|e| fail(e.clone()))?;
    match formato {
        Formato::Svg => dibujar_en(
            SVGBackend::new(path, TAMANO).into_drawing_area(),
            arriba,
            abajo,
        ),
        Formato::Png => dibujar_en(
            BitMapBackend::new(path, TAMANO).into_drawing_area(),
            arriba,
            abajo,
        ),
    }
    .map_err(fail)
}

fn dibujar_en<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    arriba: &Panel,
    abajo: &Panel,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(TAMANO.1 / 2);
    panel(&top, arriba)?;
    panel(&bottom, abajo)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), String> {
    let xs = p.lineas.iter().flat_map(|l| l.puntos.iter().map(|q| q.0));
    let ys = p.lineas.iter().flat_map(|l| l.puntos.iter().map(|q| q.1));
    let xmax = xs.fold(1.0, f64::max);
    let ymax = ys.chain(p.barras.iter().map(|b| b.2)).fold(1.0, f64::max) * 1.1;
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
    for l in &p.lineas {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(
                l.puntos.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(l.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if !p.barras.is_empty() {
        chart
            .draw_series(p.barras.iter().map(|&(x, low, high)| {
                ErrorBar::new_vertical(x, low, (low + high) / 2.0, high, BLACK.stroke_width(1), 10)
            }))
            .map_err(|e| err(&e))?
            .label("±1 stddev")
            .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(p.leyenda.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::informe::{Agregado, Muestra};
    use biblioteca_protocol::Operacion;
    use std::time::Duration;

    fn informe() -> Informe {
        let mut a = Agregado::new().unwrap();
        for i in 0..300u64 {
            a.record(
                &Muestra {
                    operacion: Operacion::Prestamo,
                    latencia: Some(Duration::from_micros(2000 + 37 * i)),
                    fallo: None,
                },
                Duration::from_millis(10 * i),
            );
        }
        a.informe(4, 0, Duration::from_secs(3))
    }

    fn temp(ext: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("biblioteca-grafico-{}.{ext}", std::process::id()))
    }

    /// The bytes of a run chart drawn into a temporary file of this extension.
    fn dibujado(ext: &str) -> Vec<u8> {
        let path = temp(ext);
        dibujar(&informe(), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        bytes
    }

    #[test]
    fn writes_an_svg() {
        let svg = String::from_utf8(dibujado("svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("p99") && svg.contains("requests/s"));
    }

    #[test]
    fn writes_a_png_with_drawn_lines() {
        let bytes = dibujado("png");
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
        let informes: Vec<Informe> = [4, 6, 10]
            .iter()
            .map(|&n| Informe {
                clientes: n,
                ..informe()
            })
            .collect();
        let path = temp("exp.svg");
        dibujar_experimento(&informes, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("loan latency") && svg.contains("stddev") && svg.contains("clients"));
    }

    #[test]
    fn other_extensions_are_refused() {
        let e = dibujar(&informe(), Path::new("/tmp/chart.jpg")).unwrap_err();
        assert!(e.reason.contains(".svg or .png"), "{e}");
        assert_eq!(Formato::de(Path::new("a/B.PNG")), Some(Formato::Png));
    }
}

//! An SVG chart of a run: throughput (and failures) per second on top,
//! p50/p90/p99 latency per second below.

use std::path::Path;

use plotters::prelude::*;

use super::informe::{Informe, Punto};

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct GraficoError {
    pub path: String,
    pub reason: String,
}

pub fn dibujar(informe: &Informe, path: &Path) -> Result<(), GraficoError> {
    dibujar_inner(informe, path).map_err(|reason| GraficoError {
        path: path.display().to_string(),
        reason,
    })
}

/// A named series: label, colour, and the value it takes from each second.
type Linea = (&'static str, RGBColor, fn(&Punto) -> f64);

fn err(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

fn dibujar_inner(informe: &Informe, path: &Path) -> Result<(), String> {
    let serie = &informe.serie;
    let xmax = serie.last().map(|p| p.t_s as f64).unwrap_or(1.0).max(1.0);
    let rps_max = serie.iter().map(|p| p.rps).fold(1.0, f64::max) * 1.1;
    let lat_max = serie.iter().map(|p| p.p99_ms).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(360);
    let title = format!(
        "{} clients: {} requests, {:.1} req/s, {} failures",
        informe.clientes, informe.total.peticiones, informe.total.rps, informe.total.fallos
    );
    panel(
        &top,
        (&title, "requests/s"),
        serie,
        (xmax, rps_max),
        &[
            ("req/s", BLUE, |p| p.rps),
            ("failures/s", RED, |p| p.fallos_s),
        ],
    )?;
    panel(
        &bottom,
        ("latency per second", "ms"),
        serie,
        (xmax, lat_max),
        &[
            ("p50", GREEN, |p| p.p50_ms),
            ("p90", RGBColor(230, 140, 0), |p| p.p90_ms),
            ("p99", RED, |p| p.p99_ms),
        ],
    )?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    (caption, y_desc): (&str, &str),
    serie: &[Punto],
    (xmax, ymax): (f64, f64),
    lines: &[Linea],
) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for &(label, color, f) in lines {
        chart
            .draw_series(LineSeries::new(
                serie.iter().map(|p| (p.t_s as f64, f(p))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::load::informe::{Agregado, Muestra};
    use crate::protocol::Operacion;
    use std::time::Duration;

    #[test]
    fn writes_an_svg() {
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
        let r = a.informe(4, 0, Duration::from_secs(3));
        let path =
            std::env::temp_dir().join(format!("biblioteca-grafico-{}.svg", std::process::id()));
        dibujar(&r, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg") && svg.contains("p99") && svg.contains("requests/s"));
    }
}

//! The benchmark's printed table and the performance targets checked against it.

use serde::Serialize;

use super::suelo::Suelo;
use super::{Fila, Memoria, Nuestro, Reporte};

/// One performance target and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Objetivo {
    pub descripcion: String,
    pub medido: String,
    /// `None`: this run did not measure what the target needs.
    pub cumplido: Option<bool>,
}

/// pgbench's CPU per transaction in a row, when it was measured.
fn pgbench_us(f: &Fila) -> Option<f64> {
    f.cpu
        .iter()
        .find(|c| c.sistema == "pgbench")?
        .partes
        .iter()
        .find(|p| p.parte == "total")
        .map(|p| p.us_por_peticion)
}

/// The best ratio the transport floor allows in row `f`.
fn mejor_ratio(f: &Fila, suelo: &[Suelo]) -> Option<f64> {
    let s = suelo.iter().find(|s| s.en_vuelo == f.clientes)?;
    Some(s.mejor_ratio(pgbench_us(f)?))
}

/// Ours at 16 clients ≥ 70% of pgbench (with the bound the transport floor
/// sets); ours at 64 ≥ 90% of ours at 16; p99 at 10 clients ≤ 10 ms; every
/// service < 30 MB peak RSS.
pub fn objetivos(filas: &[Fila], memoria: &[Memoria], suelo: &[Suelo]) -> Vec<Objetivo> {
    let en = |n: usize| filas.iter().find(|f| f.clientes == n);
    let mut out = Vec::new();
    out.push(match en(16) {
        Some(f) => Objetivo {
            descripcion: "16 clients: ours >= 70% of pgbench".into(),
            medido: {
                let mut limites = Vec::new();
                if let Some(m) = mejor_ratio(f, suelo) {
                    limites.push(format!(
                        "the ZeroMQ hops alone allow at most {:.0}%",
                        m * 100.0
                    ));
                }
                if let Some(e) = &f.esqueleto {
                    limites.push(format!(
                        "the skeleton reached {:.0}%",
                        e.ratio(&f.pgbench) * 100.0
                    ));
                }
                if limites.is_empty() {
                    format!("{:.0}%", f.ratio * 100.0)
                } else {
                    format!("{:.0}% ({})", f.ratio * 100.0, limites.join("; "))
                }
            },
            cumplido: Some(f.ratio >= 0.70),
        },
        None => sin_medir("16 clients: ours >= 70% of pgbench"),
    });
    out.push(match (en(16), en(64)) {
        (Some(a), Some(b)) if a.nuestro.rps > 0.0 => {
            let r = b.nuestro.rps / a.nuestro.rps;
            Objetivo {
                descripcion: "64 clients: ours >= 90% of ours at 16".into(),
                medido: format!("{:.0}%", r * 100.0),
                cumplido: Some(r >= 0.90),
            }
        }
        _ => sin_medir("64 clients: ours >= 90% of ours at 16"),
    });
    out.push(match en(10) {
        Some(f) => Objetivo {
            descripcion: "10 clients: ours p99 <= 10 ms".into(),
            medido: format!("{:.2} ms", f.nuestro.p99_ms),
            cumplido: Some(f.nuestro.p99_ms <= 10.0),
        },
        None => sin_medir("10 clients: ours p99 <= 10 ms"),
    });
    let peor = memoria.iter().max_by_key(|m| m.vm_hwm_kb);
    out.push(match peor {
        Some(m) => Objetivo {
            descripcion: "every service < 30 MB peak RSS".into(),
            medido: format!("largest {} {:.1} MB", m.servicio, mb(m.vm_hwm_kb)),
            cumplido: Some(m.vm_hwm_kb < 30 * 1024),
        },
        None => sin_medir("every service < 30 MB peak RSS"),
    });
    out
}

fn sin_medir(d: &str) -> Objetivo {
    Objetivo {
        descripcion: d.into(),
        medido: "not measured".into(),
        cumplido: None,
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The human-readable report (Markdown tables, pasteable into the docs).
pub fn tabla(r: &Reporte) -> String {
    let mut s = format!(
        "machine: {}\nreplication: {}; services scheduled {}; {} books; {} s per step\n\n",
        r.maquina, r.replicacion, r.scheduling, r.libros, r.duracion_s
    );
    s.push_str(
        "| clients | pgbench tps | pgbench p50 | pgbench p99 | ours req/s | ours pairs/s | ours p50 | ours p99 | ours fails | ours/pgbench |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for f in &r.filas {
        let p = &f.pgbench;
        let o = &f.nuestro;
        s.push_str(&format!(
            "| {} | {:.0}{} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.2} |\n",
            f.clientes,
            p.tps,
            if p.abortado { " (aborted)" } else { "" },
            p.p50_ms,
            p.p99_ms,
            o.rps,
            o.pares_s,
            o.p50_ms,
            o.p99_ms,
            o.fallos,
            f.ratio
        ));
    }
    s.push_str(&tabla_extra(
        &r.filas,
        |f| f.almacenamiento.as_ref(),
        "storage manager alone (same load sent straight to its ROUTER)",
        "storage",
    ));
    s.push_str(&tabla_extra(
        &r.filas,
        |f| f.esqueleto.as_ref(),
        "skeleton (forwarding-only load manager and actor, the real storage manager: \
         the ceiling of this shape here)",
        "skeleton",
    ));
    s.push_str("\nlatencies in ms, per request (one loan or one return)\n");
    s.push_str(&tabla_cpu(&r.filas));
    s.push_str(&tabla_suelo(&r.filas, &r.suelo));
    s.push_str("\n| service | peak RSS (VmHWM) |\n|---|--:|\n");
    for m in &r.memoria {
        s.push_str(&format!("| {} | {:.1} MB |\n", m.servicio, mb(m.vm_hwm_kb)));
    }
    s.push_str("\n| target | measured | met |\n|---|---|---|\n");
    for o in &r.objetivos {
        let met = match o.cumplido {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        s.push_str(&format!("| {} | {} | {met} |\n", o.descripcion, o.medido));
    }
    s
}

/// One optional system's rows (`--almacenamiento`, `--esqueleto`), if run.
fn tabla_extra(
    filas: &[Fila],
    de: fn(&Fila) -> Option<&Nuestro>,
    titulo: &str,
    nombre: &str,
) -> String {
    if !filas.iter().any(|f| de(f).is_some()) {
        return String::new();
    }
    let mut s = format!(
        "\n{titulo}:\n\n\
         | clients | {nombre} req/s | {nombre} p50 | {nombre} p99 | {nombre} fails | {nombre}/pgbench |\n\
         |--:|--:|--:|--:|--:|--:|\n"
    );
    for f in filas {
        if let Some(a) = de(f) {
            let ratio = a.ratio(&f.pgbench);
            s.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {} | {ratio:.2} |\n",
                f.clientes, a.rps, a.p50_ms, a.p99_ms, a.fallos
            ));
        }
    }
    s
}

/// CPU microseconds per request of each part, one row per system and client count.
fn tabla_cpu(filas: &[Fila]) -> String {
    let Some(partes) = filas
        .iter()
        .flat_map(|f| f.cpu.iter())
        .map(|c| c.partes.iter().map(|p| p.parte.clone()).collect::<Vec<_>>())
        .max_by_key(Vec::len)
    else {
        return String::new();
    };
    let mut s = format!(
        "\nCPU time per request (us; all processes of each part, both cores):\n\n| clients | system | {} |\n|--:|---|{}\n",
        partes.join(" | "),
        "--:|".repeat(partes.len())
    );
    for f in filas {
        for c in &f.cpu {
            let celdas: Vec<String> = partes
                .iter()
                .map(|n| match c.partes.iter().find(|p| &p.parte == n) {
                    Some(p) if p.us_por_peticion >= 0.5 || n == "total" => {
                        format!("{:.0}", p.us_por_peticion)
                    }
                    _ => "-".into(),
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                f.clientes,
                c.sistema,
                celdas.join(" | ")
            ));
        }
    }
    s
}

/// The transport floor and the best ratio it leaves at each client count.
fn tabla_suelo(filas: &[Fila], suelo: &[Suelo]) -> String {
    if suelo.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\ntransport floor (ZeroMQ alone, idle machine: one TCP hop, both ends; a request makes {} hops):\n\n\
         | clients | us per hop | us per request | pgbench us | best possible ours/pgbench | measured |\n\
         |--:|--:|--:|--:|--:|--:|\n",
        super::suelo::SALTOS
    );
    for p in suelo {
        let fila = filas.iter().find(|f| f.clientes == p.en_vuelo);
        let pgb = fila.and_then(pgbench_us);
        let celda = |v: Option<f64>, f: fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {:.1} | {:.0} | {} | {} | {} |\n",
            p.en_vuelo,
            p.us_por_salto,
            p.us_por_peticion(),
            celda(pgb, |v| format!("{v:.0}")),
            celda(pgb.map(|u| p.mejor_ratio(u)), |v| format!("{v:.2}")),
            celda(fila.map(|f| f.ratio), |v| format!("{v:.2}")),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgbench::Resultado;

    fn fila(clientes: usize, pgb: f64, ours: f64, p99: f64) -> Fila {
        Fila {
            clientes,
            pgbench: Resultado {
                tps: pgb,
                ..Resultado::default()
            },
            nuestro: Nuestro {
                peticiones: 1,
                fallos: 0,
                rps: ours,
                pares_s: ours / 2.0,
                p50_ms: 1.0,
                p99_ms: p99,
            },
            almacenamiento: None,
            esqueleto: None,
            ratio: ours / pgb,
            ratios: vec![ours / pgb],
            cpu: Vec::new(),
        }
    }

    #[test]
    fn targets() {
        let filas = [
            fila(10, 1000.0, 900.0, 9.0),
            fila(16, 1000.0, 690.0, 12.0),
            fila(64, 1000.0, 650.0, 30.0),
        ];
        let mem = [Memoria {
            servicio: "carga".into(),
            vm_hwm_kb: 12_000,
        }];
        let o = objetivos(&filas, &mem, &[]);
        let met: Vec<_> = o.iter().map(|o| o.cumplido).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true), Some(true)]);
        assert_eq!(o[0].medido, "69%");
        assert_eq!(objetivos(&[], &[], &[])[0].cumplido, None);
    }

    #[test]
    fn cpu_table_has_a_row_per_system_and_a_dash_for_idle_parts() {
        use crate::{cpu::CostoParte, CpuSistema};
        let c = |p: &str, us: f64| CostoParte {
            parte: p.into(),
            us_por_peticion: us,
        };
        let mut f = fila(16, 1000.0, 500.0, 9.0);
        f.cpu = vec![
            CpuSistema {
                sistema: "pgbench",
                partes: vec![c("pg primary", 300.0), c("carga", 0.1), c("total", 300.1)],
            },
            CpuSistema {
                sistema: "ours",
                partes: vec![c("pg primary", 350.0), c("carga", 60.4), c("total", 410.4)],
            },
        ];
        let t = tabla_cpu(std::slice::from_ref(&f));
        assert!(
            t.contains("| clients | system | pg primary | carga | total |"),
            "{t}"
        );
        assert!(t.contains("| 16 | pgbench | 300 | - | 300 |"), "{t}");
        assert!(t.contains("| 16 | ours | 350 | 60 | 410 |"), "{t}");
        assert_eq!(tabla_cpu(&[fila(1, 1.0, 1.0, 1.0)]), "");

        // pgbench's 300 us plus 6 hops of 10 us: at best 300 / 360.
        let suelo = [Suelo {
            en_vuelo: 16,
            idas_y_vueltas: 100,
            us_por_salto: 10.0,
        }];
        let t = tabla_suelo(std::slice::from_ref(&f), &suelo);
        assert!(t.contains("| 16 | 10.0 | 60 | 300 | 0.83 | 0.50 |"), "{t}");
        let o = objetivos(std::slice::from_ref(&f), &[], &suelo);
        assert_eq!(o[0].medido, "50% (the ZeroMQ hops alone allow at most 83%)");
        assert_eq!(tabla_suelo(&[], &[]), "");

        f.esqueleto = Some(Nuestro {
            rps: 620.0,
            ..f.nuestro.clone()
        });
        let o = objetivos(std::slice::from_ref(&f), &[], &suelo);
        assert_eq!(
            o[0].medido,
            "50% (the ZeroMQ hops alone allow at most 83%; the skeleton reached 62%)"
        );
        let t = tabla_extra(
            std::slice::from_ref(&f),
            |f| f.esqueleto.as_ref(),
            "sk",
            "skeleton",
        );
        assert!(t.contains("| clients | skeleton req/s |"), "{t}");
        assert!(t.contains("| 16 | 620 | 1.00 | 9.00 | 0 | 0.62 |"), "{t}");
        assert_eq!(
            tabla_extra(&[f], |f| f.almacenamiento.as_ref(), "x", "storage"),
            ""
        );
    }
}

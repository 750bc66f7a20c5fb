//! The benchmark's printed table and the performance targets checked against it.

use serde::Serialize;

use super::floor::Floor;
use super::{BenchReport, BenchStep, Memory, Ours};

/// One performance target and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub description: String,
    pub measured: String,
    /// `None`: this run did not measure what the target needs.
    pub met: Option<bool>,
}

/// pgbench's CPU per transaction in a row, when it was measured.
fn pgbench_us(f: &BenchStep) -> Option<f64> {
    f.cpu
        .iter()
        .find(|c| c.system == "pgbench")?
        .parts
        .iter()
        .find(|p| p.part == "total")
        .map(|p| p.us_per_request)
}

/// The best ratio the transport floor allows in row `f`.
fn best_ratio(f: &BenchStep, floor: &[Floor]) -> Option<f64> {
    let s = floor.iter().find(|s| s.in_flight == f.clients)?;
    Some(s.best_ratio(pgbench_us(f)?))
}

/// Ours at 16 clients ≥ 70% of pgbench (with the bound the transport floor
/// sets); ours at 64 ≥ 90% of ours at 16; p99 at 10 clients ≤ 10 ms; every
/// service < 30 MB peak RSS.
pub fn targets(rows: &[BenchStep], memory: &[Memory], floor: &[Floor]) -> Vec<Target> {
    let at = |n: usize| rows.iter().find(|f| f.clients == n);
    let mut out = Vec::new();
    out.push(match at(16) {
        Some(f) => Target {
            description: "16 clients: ours >= 70% of pgbench".into(),
            measured: {
                let mut limits = Vec::new();
                if let Some(m) = best_ratio(f, floor) {
                    limits.push(format!(
                        "the ZeroMQ hops alone allow at most {:.0}%",
                        m * 100.0
                    ));
                }
                if let Some(e) = &f.skeleton {
                    limits.push(format!(
                        "the skeleton reached {:.0}%",
                        e.ratio(&f.pgbench) * 100.0
                    ));
                }
                if limits.is_empty() {
                    format!("{:.0}%", f.ratio * 100.0)
                } else {
                    format!("{:.0}% ({})", f.ratio * 100.0, limits.join("; "))
                }
            },
            met: Some(f.ratio >= 0.70),
        },
        None => unmeasured("16 clients: ours >= 70% of pgbench"),
    });
    out.push(match (at(16), at(64)) {
        (Some(a), Some(b)) if a.ours.rps > 0.0 => {
            let r = b.ours.rps / a.ours.rps;
            Target {
                description: "64 clients: ours >= 90% of ours at 16".into(),
                measured: format!("{:.0}%", r * 100.0),
                met: Some(r >= 0.90),
            }
        }
        _ => unmeasured("64 clients: ours >= 90% of ours at 16"),
    });
    out.push(match at(10) {
        Some(f) => Target {
            description: "10 clients: ours p99 <= 10 ms".into(),
            measured: format!("{:.2} ms", f.ours.p99_ms),
            met: Some(f.ours.p99_ms <= 10.0),
        },
        None => unmeasured("10 clients: ours p99 <= 10 ms"),
    });
    let worst = memory.iter().max_by_key(|m| m.vm_hwm_kb);
    out.push(match worst {
        Some(m) => Target {
            description: "every service < 30 MB peak RSS".into(),
            measured: format!("largest {} {:.1} MB", m.service, mb(m.vm_hwm_kb)),
            met: Some(m.vm_hwm_kb < 30 * 1024),
        },
        None => unmeasured("every service < 30 MB peak RSS"),
    });
    out
}

fn unmeasured(d: &str) -> Target {
    Target {
        description: d.into(),
        measured: "not measured".into(),
        met: None,
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The human-readable report (Markdown tables, pasteable into the docs).
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "machine: {}\nreplication: {}; services scheduled {}; {} books{}; {} s per step\n\n",
        r.machine,
        r.replication,
        r.scheduling,
        r.books,
        if r.books == super::GUIDE_BOOKS {
            " (the guide's catalogue)"
        } else {
            ""
        },
        r.duration_s
    );
    s.push_str(
        "| clients | pgbench tps | pgbench p50 | pgbench p99 | ours req/s | ours pairs/s | ours p50 | ours p99 | ours fails | ours/pgbench |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for f in &r.rows {
        let p = &f.pgbench;
        let o = &f.ours;
        s.push_str(&format!(
            "| {} | {:.0}{} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.2} |\n",
            f.clients,
            p.tps,
            if p.aborted { " (aborted)" } else { "" },
            p.p50_ms,
            p.p99_ms,
            o.rps,
            o.pairs_s,
            o.p50_ms,
            o.p99_ms,
            o.failures,
            f.ratio
        ));
    }
    s.push_str(&extra_table(
        &r.rows,
        |f| f.storage_alone.as_ref(),
        "storage manager alone (same load sent straight to its ROUTER)",
        "storage",
    ));
    s.push_str(&extra_table(
        &r.rows,
        |f| f.skeleton.as_ref(),
        "skeleton (forwarding-only load manager and actor, the real storage manager: \
         the ceiling of this shape here)",
        "skeleton",
    ));
    s.push_str("\nlatencies in ms, per request (one loan or one return)\n");
    s.push_str(&cpu_table(&r.rows));
    s.push_str(&switches_table(&r.rows));
    s.push_str(&floor_table(&r.rows, &r.floor));
    s.push_str("\n| service | peak RSS (VmHWM) |\n|---|--:|\n");
    for m in &r.memory {
        s.push_str(&format!("| {} | {:.1} MB |\n", m.service, mb(m.vm_hwm_kb)));
    }
    s.push_str("\n| target | measured | met |\n|---|---|---|\n");
    for o in &r.targets {
        let met = match o.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        s.push_str(&format!("| {} | {} | {met} |\n", o.description, o.measured));
    }
    s
}

/// One optional system's rows (`--almacenamiento`, `--esqueleto`), if run.
fn extra_table(
    rows: &[BenchStep],
    of: fn(&BenchStep) -> Option<&Ours>,
    title: &str,
    name: &str,
) -> String {
    if !rows.iter().any(|f| of(f).is_some()) {
        return String::new();
    }
    let mut s = format!(
        "\n{title}:\n\n\
         | clients | {name} req/s | {name} p50 | {name} p99 | {name} fails | {name}/pgbench |\n\
         |--:|--:|--:|--:|--:|--:|\n"
    );
    for f in rows {
        if let Some(a) = of(f) {
            let ratio = a.ratio(&f.pgbench);
            s.push_str(&format!(
                "| {} | {:.0} | {:.2} | {:.2} | {} | {ratio:.2} |\n",
                f.clients, a.rps, a.p50_ms, a.p99_ms, a.failures
            ));
        }
    }
    s
}

/// CPU microseconds per request of each part, one row per system and client count.
fn cpu_table(rows: &[BenchStep]) -> String {
    let Some(parts) = rows
        .iter()
        .flat_map(|f| f.cpu.iter())
        .map(|c| c.parts.iter().map(|p| p.part.clone()).collect::<Vec<_>>())
        .max_by_key(Vec::len)
    else {
        return String::new();
    };
    let mut s = format!(
        "\nCPU time per request (us; all processes of each part, both cores):\n\n| clients | system | {} |\n|--:|---|{}\n",
        parts.join(" | "),
        "--:|".repeat(parts.len())
    );
    for f in rows {
        for c in &f.cpu {
            let cells: Vec<String> = parts
                .iter()
                .map(|n| match c.parts.iter().find(|p| &p.part == n) {
                    Some(p) if p.us_per_request >= 0.5 || n == "total" => {
                        format!("{:.0}", p.us_per_request)
                    }
                    _ => "-".into(),
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                f.clients,
                c.system,
                cells.join(" | ")
            ));
        }
    }
    s
}

/// Context switches per request of each part, one row per system and
/// client count (see [`crate::switches`]).
fn switches_table(rows: &[BenchStep]) -> String {
    let Some(parts) = rows
        .iter()
        .flat_map(|f| f.cpu.iter())
        .map(|c| {
            c.switches
                .iter()
                .map(|p| p.part.clone())
                .collect::<Vec<_>>()
        })
        .max_by_key(Vec::len)
        .filter(|p| !p.is_empty())
    else {
        return String::new();
    };
    let mut s = format!(
        "\nContext switches per request (voluntary + involuntary, every thread of each part):\n\n| clients | system | {} |\n|--:|---|{}\n",
        parts.join(" | "),
        "--:|".repeat(parts.len())
    );
    for f in rows {
        for c in &f.cpu {
            let cells: Vec<String> = parts
                .iter()
                .map(|n| match c.switches.iter().find(|p| &p.part == n) {
                    Some(p) => format!("{:.1}", p.per_request),
                    None => "-".into(),
                })
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                f.clients,
                c.system,
                cells.join(" | ")
            ));
        }
    }
    s
}

/// The transport floor and the best ratio it leaves at each client count.
fn floor_table(rows: &[BenchStep], floor: &[Floor]) -> String {
    if floor.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\ntransport floor (ZeroMQ alone, idle machine: one TCP hop, both ends; a request makes {} hops):\n\n\
         | clients | us per hop | us per request | pgbench us | best possible ours/pgbench | measured |\n\
         |--:|--:|--:|--:|--:|--:|\n",
        super::floor::HOPS
    );
    for p in floor {
        let row = rows.iter().find(|f| f.clients == p.in_flight);
        let pgb = row.and_then(pgbench_us);
        let cell = |v: Option<f64>, f: fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "| {} | {:.1} | {:.0} | {} | {} | {} |\n",
            p.in_flight,
            p.us_per_hop,
            p.us_per_request(),
            cell(pgb, |v| format!("{v:.0}")),
            cell(pgb.map(|u| p.best_ratio(u)), |v| format!("{v:.2}")),
            cell(row.map(|f| f.ratio), |v| format!("{v:.2}")),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgbench::PgbenchResult;

    fn row(clients: usize, pgb: f64, ours: f64, p99: f64) -> BenchStep {
        BenchStep {
            clients,
            pgbench: PgbenchResult {
                tps: pgb,
                ..PgbenchResult::default()
            },
            ours: Ours {
                requests: 1,
                failures: 0,
                rps: ours,
                pairs_s: ours / 2.0,
                p50_ms: 1.0,
                p99_ms: p99,
            },
            storage_alone: None,
            skeleton: None,
            ratio: ours / pgb,
            ratios: vec![ours / pgb],
            cpu: Vec::new(),
        }
    }

    #[test]
    fn targets_are_checked_against_the_rows() {
        let rows = [
            row(10, 1000.0, 900.0, 9.0),
            row(16, 1000.0, 690.0, 12.0),
            row(64, 1000.0, 650.0, 30.0),
        ];
        let mem = [Memory {
            service: "carga".into(),
            vm_hwm_kb: 12_000,
        }];
        let o = targets(&rows, &mem, &[]);
        let met: Vec<_> = o.iter().map(|o| o.met).collect();
        assert_eq!(met, [Some(false), Some(true), Some(true), Some(true)]);
        assert_eq!(o[0].measured, "69%");
        assert_eq!(targets(&[], &[], &[])[0].met, None);
    }

    #[test]
    fn cpu_and_switches_tables_have_a_row_per_system_and_a_dash_for_idle_parts() {
        use crate::{cpu::PartCost, switches::PartSwitches, SystemCpu};
        let c = |p: &str, us: f64| PartCost {
            part: p.into(),
            us_per_request: us,
        };
        let sw = |p: &str, n: f64| PartSwitches {
            part: p.into(),
            per_request: n,
        };
        let mut f = row(16, 1000.0, 500.0, 9.0);
        f.cpu = vec![
            SystemCpu {
                system: "pgbench",
                parts: vec![c("pg primary", 300.0), c("carga", 0.1), c("total", 300.1)],
                switches: vec![sw("pg primary", 9.04), sw("total", 9.04)],
            },
            SystemCpu {
                system: "ours",
                parts: vec![c("pg primary", 350.0), c("carga", 60.4), c("total", 410.4)],
                switches: vec![sw("pg primary", 5.0), sw("carga", 2.26), sw("total", 7.26)],
            },
        ];
        let t = switches_table(std::slice::from_ref(&f));
        assert!(
            t.contains("| clients | system | pg primary | carga | total |"),
            "{t}"
        );
        assert!(t.contains("| 16 | pgbench | 9.0 | - | 9.0 |"), "{t}");
        assert!(t.contains("| 16 | ours | 5.0 | 2.3 | 7.3 |"), "{t}");
        assert_eq!(switches_table(&[row(1, 1.0, 1.0, 1.0)]), "");
        let t = cpu_table(std::slice::from_ref(&f));
        assert!(
            t.contains("| clients | system | pg primary | carga | total |"),
            "{t}"
        );
        assert!(t.contains("| 16 | pgbench | 300 | - | 300 |"), "{t}");
        assert!(t.contains("| 16 | ours | 350 | 60 | 410 |"), "{t}");
        assert_eq!(cpu_table(&[row(1, 1.0, 1.0, 1.0)]), "");

        // pgbench's 300 us plus 6 hops of 10 us: at best 300 / 360.
        let floor = [Floor {
            in_flight: 16,
            round_trips: 100,
            us_per_hop: 10.0,
        }];
        let t = floor_table(std::slice::from_ref(&f), &floor);
        assert!(t.contains("| 16 | 10.0 | 60 | 300 | 0.83 | 0.50 |"), "{t}");
        let o = targets(std::slice::from_ref(&f), &[], &floor);
        assert_eq!(
            o[0].measured,
            "50% (the ZeroMQ hops alone allow at most 83%)"
        );
        assert_eq!(floor_table(&[], &[]), "");

        f.skeleton = Some(Ours {
            rps: 620.0,
            ..f.ours.clone()
        });
        let o = targets(std::slice::from_ref(&f), &[], &floor);
        assert_eq!(
            o[0].measured,
            "50% (the ZeroMQ hops alone allow at most 83%; the skeleton reached 62%)"
        );
        let t = extra_table(
            std::slice::from_ref(&f),
            |f| f.skeleton.as_ref(),
            "sk",
            "skeleton",
        );
        assert!(t.contains("| clients | skeleton req/s |"), "{t}");
        assert!(t.contains("| 16 | 620 | 1.00 | 9.00 | 0 | 0.62 |"), "{t}");
        assert_eq!(
            extra_table(&[f], |f| f.storage_alone.as_ref(), "x", "storage"),
            ""
        );
    }
}

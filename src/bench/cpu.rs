//! Where the CPU goes: CPU time per request of each part of a system under
//! load, read from `/proc` before and after a measured step.
//!
//! On a machine this small every part competes for the same cores, so CPU
//! time per request explains a throughput ratio better than the ratio itself
//! (which swings with the disk and the neighbours): it is what one request
//! costs, whatever else the machine was doing. A part is a set of processes:
//! a PostgreSQL node is its postmaster, its live children and the children it
//! has already reaped (`cutime`/`cstime`: pgbench's backends end with each
//! run); the client is this process and the children it has waited for
//! (pgbench).

use serde::Serialize;

/// The processes of one part of the system.
#[derive(Debug, Clone)]
pub enum Parte {
    /// A PostgreSQL node: the postmaster and everything under it.
    Postgres(i32),
    /// Service processes, each counted with its threads.
    Procesos(Vec<u32>),
    /// This process (the load generator runs in it) and its waited-for children.
    Este,
}

/// CPU seconds of each named part at one moment.
#[derive(Debug, Clone, Default)]
pub struct Instantanea(Vec<(String, f64)>);

/// CPU time per request of one part, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostoParte {
    pub parte: String,
    pub us_por_peticion: f64,
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Fields of `/proc/PID/stat` after the command name: (ppid, utime+stime,
/// cutime+cstime) in ticks.
fn stat(pid: &str) -> Option<(i32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = f.get(1)?.parse().ok()?;
    Some((ppid, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Every process's parent, for finding a postmaster's children.
fn padres() -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<i32>().ok()?;
        let (ppid, propio, _) = stat(&name)?;
        Some((ppid, propio))
    })
    .collect()
}

impl Parte {
    fn ticks(&self, tabla: &[(i32, u64)]) -> u64 {
        match self {
            Parte::Postgres(pm) => {
                let (_, propio, hijos_muertos) = stat(&pm.to_string()).unwrap_or_default();
                let vivos: u64 = tabla
                    .iter()
                    .filter(|(ppid, _)| ppid == pm)
                    .map(|(_, t)| t)
                    .sum();
                propio + hijos_muertos + vivos
            }
            Parte::Procesos(pids) => pids
                .iter()
                .filter_map(|p| stat(&p.to_string()))
                .map(|(_, t, _)| t)
                .sum(),
            Parte::Este => stat("self").map_or(0, |(_, t, c)| t + c),
        }
    }
}

/// The parts to watch, by name.
#[derive(Debug, Clone, Default)]
pub struct Partes(Vec<(String, Parte)>);

impl Partes {
    pub fn new() -> Partes {
        Partes(Vec::new())
    }

    pub fn con(mut self, nombre: &str, parte: Parte) -> Partes {
        self.0.push((nombre.to_string(), parte));
        self
    }

    pub fn ahora(&self) -> Instantanea {
        let tabla = padres();
        let hz = ticks();
        Instantanea(
            self.0
                .iter()
                .map(|(n, p)| (n.clone(), p.ticks(&tabla) as f64 / hz))
                .collect(),
        )
    }
}

impl Instantanea {
    /// Microseconds of CPU per request of each part between `self` and
    /// `despues`, in the order the parts were named, plus the total.
    pub fn por_peticion(&self, despues: &Instantanea, peticiones: u64) -> Vec<CostoParte> {
        if peticiones == 0 {
            return Vec::new();
        }
        let mut out: Vec<CostoParte> = self
            .0
            .iter()
            .filter_map(|(n, antes)| {
                let (_, ahora) = despues.0.iter().find(|(m, _)| m == n)?;
                let d = ahora - antes;
                Some(CostoParte {
                    parte: n.clone(),
                    us_por_peticion: d.max(0.0) * 1e6 / peticiones as f64,
                })
            })
            .collect();
        let total = out.iter().map(|c| c.us_por_peticion).sum();
        out.push(CostoParte {
            parte: "total".into(),
            us_por_peticion: total,
        });
        out
    }
}

/// The mean cost of each part over several runs (parts as in the first run).
pub fn promedio(corridas: &[Vec<CostoParte>]) -> Vec<CostoParte> {
    let Some(primera) = corridas.first() else {
        return Vec::new();
    };
    primera
        .iter()
        .map(|c| {
            let valores: Vec<f64> = corridas
                .iter()
                .filter_map(|r| r.iter().find(|d| d.parte == c.parte))
                .map(|d| d.us_por_peticion)
                .collect();
            CostoParte {
                parte: c.parte.clone(),
                us_por_peticion: valores.iter().sum::<f64>() / valores.len().max(1) as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_charged_for_the_work_it_does() {
        let partes = Partes::new().con("yo", Parte::Este);
        let antes = partes.ahora();
        // 50 ms of this process's CPU (not of wall time, which a loaded
        // machine stretches): at 100 ticks/s that is several ticks.
        let cpu = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
                .map(std::time::Duration::from)
                .unwrap()
        };
        let start = cpu();
        let mut x = 0u64;
        while cpu() - start < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert_ne!(x, 42);
        let costos = antes.por_peticion(&partes.ahora(), 1000);
        let yo = costos.iter().find(|c| c.parte == "yo").unwrap();
        // 50 ms over 1000 requests is 50 us each; allow for tick rounding.
        assert!(
            yo.us_por_peticion >= 20.0 && yo.us_por_peticion <= 200.0,
            "{costos:?}"
        );
        assert_eq!(costos.last().unwrap().parte, "total");
    }

    #[test]
    fn mean_over_runs() {
        let c = |p: &str, us: f64| CostoParte {
            parte: p.into(),
            us_por_peticion: us,
        };
        let m = promedio(&[
            vec![c("a", 10.0), c("total", 10.0)],
            vec![c("a", 30.0), c("total", 30.0)],
        ]);
        assert_eq!(m, vec![c("a", 20.0), c("total", 20.0)]);
        assert!(promedio(&[]).is_empty());
    }

    #[test]
    fn stat_survives_a_command_name_with_spaces_and_parentheses() {
        // Our own stat line parses; a missing process gives None.
        assert!(stat("self").is_some());
        assert!(stat("999999999").is_none());
    }
}

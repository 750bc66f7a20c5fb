//! One step of the benchmark: both systems (and optionally the storage
//! manager alone and the skeleton pipeline) at one client count, repeated
//! and alternated, with the CPU each part spent per request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::esqueleto::Esqueleto;
use super::{cpu, pgbench, BenchError, CpuSistema, Fila, Nuestro, Opciones};
use biblioteca_client::load::{self, spec, Opciones as CargaOpciones};
use biblioteca_cluster::{Cluster, APP_DB, SUPERUSER};
use biblioteca_protocol::config::ClientConfig;
use biblioteca_runtime::shutdown::Shutdown;
use biblioteca_stack::Stack;

/// The run whose `key` is the median (the lower one of an even count): a
/// real run, so its latencies belong with its throughput.
fn mediana<T: Clone>(v: &[T], key: fn(&T) -> f64) -> Option<T> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| key(&v[a]).total_cmp(&key(&v[b])));
    let mid = idx.get(idx.len().saturating_sub(1) / 2)?;
    v.get(*mid).cloned()
}

/// The parts whose CPU time is counted: both PostgreSQL nodes, each service
/// and the client (pgbench, or the load generator in this process).
/// The skeleton's processes ([`Esqueleto`]) count under the load manager and
/// the actors: only one system runs at a time, and the idle one's
/// heartbeats are noise.
pub(super) fn partes(
    cluster: &Cluster,
    stack: &Stack,
    esqueleto: Option<&Esqueleto>,
) -> cpu::Partes {
    let pids = |v: Vec<Option<u32>>| cpu::Parte::Procesos(v.into_iter().flatten().collect());
    let mut partes = cpu::Partes::new();
    for (nombre, nodo) in [
        ("pg primary", cluster.primary()),
        ("pg standby", cluster.standby()),
    ] {
        if let Some(pm) = nodo.postmaster_pid() {
            partes = partes.con(nombre, cpu::Parte::Postgres(pm));
        }
    }
    partes
        .con("almacenamiento", pids(vec![stack.storage.pid()]))
        .con(
            "carga",
            pids(vec![
                stack.carga.pid(),
                esqueleto.and_then(|e| e.carga.pid()),
            ]),
        )
        .con(
            "actors",
            pids(
                stack
                    .actors
                    .iter()
                    .map(|(_, s)| s.pid())
                    .chain([esqueleto.and_then(|e| e.actor.pid())])
                    .collect(),
            ),
        )
        .con("client", cpu::Parte::Este)
}

/// Where each system's load goes.
pub(super) struct Destinos {
    /// The load manager (the pipeline).
    pub(super) frontend: String,
    /// The storage manager's ROUTER (`--almacenamiento`).
    pub(super) storage: Option<String>,
    /// The skeleton's load manager (`--esqueleto`).
    pub(super) esqueleto: Option<String>,
}

/// Runs the two systems against one cluster and stack.
pub(super) struct Medidor<'a> {
    pub(super) partes: cpu::Partes,
    pub(super) cluster: &'a Cluster,
    pub(super) pg_dir: PathBuf,
    pub(super) libros: u64,
    pub(super) catalogo: Vec<String>,
    pub(super) shutdown: &'a Shutdown,
    pub(super) ctx: zmq::Context,
}

impl Medidor<'_> {
    /// One client count: every system `repeticiones` times, alternated, each
    /// run from freshly vacuumed and checkpointed tables ([`Self::preparar`]).
    pub(super) fn paso(
        &self,
        n: usize,
        opts: &Opciones,
        run: &mut u32,
        destinos: &Destinos,
    ) -> Result<Fila, BenchError> {
        let (mut pgbs, mut ours) = (Vec::new(), Vec::new());
        let (mut cpu_pgb, mut cpu_ours) = (Vec::new(), Vec::new());
        // The optional systems: (name, endpoint, runs, CPU per run).
        let mut extra: Vec<(&'static str, &str, Vec<Nuestro>, Vec<_>)> = [
            ("storage alone", destinos.storage.as_deref()),
            ("skeleton", destinos.esqueleto.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, ep)| Some((name, ep?, Vec::new(), Vec::new())))
        .collect();
        for rep in 1..=opts.repeticiones {
            *run += 1;
            let tag = if opts.repeticiones > 1 {
                format!(" (run {rep}/{})", opts.repeticiones)
            } else {
                String::new()
            };
            self.preparar()?;
            eprintln!("{n:>3} clients: pgbench{tag} ...");
            let antes = self.partes.ahora();
            let r = self.pgbench(n, opts.duracion, *run)?;
            cpu_pgb.push(self.cpu(&antes, r.transacciones));
            pgbs.push(r);
            eprintln!("{n:>3} clients: pipeline{tag} ...");
            self.preparar()?;
            let antes = self.partes.ahora();
            let r = self.nuestro(n, opts.duracion, *run, &destinos.frontend)?;
            cpu_ours.push(self.cpu(&antes, r.peticiones));
            ours.push(r);
            for (name, endpoint, runs, cpus) in &mut extra {
                *run += 1;
                self.preparar()?;
                eprintln!("{n:>3} clients: {name}{tag} ...");
                let antes = self.partes.ahora();
                let r = self.nuestro(n, opts.duracion, *run, endpoint)?;
                cpus.push(self.cpu(&antes, r.peticiones));
                runs.push(r);
            }
        }
        let ratios = pgbs.iter().zip(&ours).map(|(p, o)| o.ratio(p)).collect();
        let (Some(pgbench), Some(nuestro)) = (mediana(&pgbs, |r| r.tps), mediana(&ours, |r| r.rps))
        else {
            return Err(BenchError::Opciones("no run was measured".into()));
        };
        let mut cpu = vec![
            CpuSistema {
                sistema: "pgbench",
                partes: cpu::promedio(&cpu_pgb),
            },
            CpuSistema {
                sistema: "ours",
                partes: cpu::promedio(&cpu_ours),
            },
        ];
        for (sistema, _, runs, cpus) in &extra {
            // Each run against the pgbench run of its own repetition.
            let por_corrida: Vec<String> = runs
                .iter()
                .zip(&pgbs)
                .map(|(r, p)| format!("{:.2}", r.ratio(p)))
                .collect();
            eprintln!(
                "{n:>3} clients: {sistema}/pgbench per run: {}",
                por_corrida.join(", ")
            );
            cpu.push(CpuSistema {
                sistema,
                partes: cpu::promedio(cpus),
            });
        }
        let de = |name: &str| {
            let (_, _, runs, _) = extra.iter().find(|e| e.0 == name)?;
            mediana(runs, |r| r.rps)
        };
        Ok(Fila {
            clientes: n,
            ratio: nuestro.ratio(&pgbench),
            ratios,
            almacenamiento: de("storage alone"),
            esqueleto: de("skeleton"),
            pgbench,
            nuestro,
            cpu,
        })
    }

    /// CPU per request since `antes`. The short wait lets the postmaster reap
    /// the backends of a pgbench run that just ended, so they are counted.
    fn cpu(&self, antes: &cpu::Instantanea, peticiones: u64) -> Vec<cpu::CostoParte> {
        std::thread::sleep(Duration::from_millis(300));
        antes.por_peticion(&self.partes.ahora(), peticiones)
    }

    /// Before each run: a `VACUUM` of the catalogue's tables and a
    /// checkpoint, so every run starts from the same kind of state and
    /// neither a vacuum nor a checkpoint lands in the middle of one.
    /// Autovacuum is off on the benchmark's cluster (see `super::run`): it
    /// would clean up after one system while the other is being measured,
    /// charging that system seconds of CPU it did not cause.
    fn preparar(&self) -> Result<(), BenchError> {
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrumpido);
        }
        let primary = self.cluster.primary();
        primary.sql_as(SUPERUSER, APP_DB, "VACUUM")?;
        primary.sql_as(SUPERUSER, "postgres", "CHECKPOINT")?;
        Ok(())
    }

    pub(super) fn pgbench(
        &self,
        clientes: usize,
        d: Duration,
        run: u32,
    ) -> Result<pgbench::Resultado, BenchError> {
        let p = self.cluster.primary();
        let r = pgbench::Corrida {
            pg: &p.pg,
            dir: &self.pg_dir,
            port: p.port,
            clientes,
            duracion: d,
            libros: self.libros,
            run,
        }
        .ejecutar()?;
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrumpido);
        }
        Ok(r)
    }

    /// Closed-loop loan/return users against `endpoint`.
    pub(super) fn nuestro(
        &self,
        clientes: usize,
        d: Duration,
        run: u32,
        endpoint: &str,
    ) -> Result<Nuestro, BenchError> {
        let opts = CargaOpciones {
            cliente: ClientConfig {
                endpoints: vec![endpoint.to_string()],
                ..ClientConfig::default()
            },
            clientes,
            duracion: Some(d),
            peticiones: None,
            espera: None,
            tasa: None,
            // Returns only: a user without a loan borrows instead, so each
            // virtual user alternates a loan and the return of that book.
            mezcla: spec::Mezcla::parse("devolucion=1").map_err(BenchError::Opciones)?,
            catalogo: self.catalogo.clone(),
            usuarios: 1,
            prefijo: format!("bench{run}-{}", load::prefijo_nuevo()),
            semilla: u64::from(run) + 1,
        };
        let parar = Arc::new(AtomicBool::new(false));
        let hecho = Arc::new(AtomicBool::new(false));
        let vigia = {
            let (parar, hecho, sd) = (parar.clone(), hecho.clone(), self.shutdown.clone());
            std::thread::spawn(move || {
                while !hecho.load(Ordering::SeqCst) {
                    if sd.is_triggered() {
                        parar.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let informe = load::ejecutar(&opts, &self.ctx, &parar, |_| {});
        hecho.store(true, Ordering::SeqCst);
        let _ = vigia.join();
        if self.shutdown.is_triggered() {
            return Err(BenchError::Interrumpido);
        }
        let t = informe?.total;
        Ok(Nuestro {
            peticiones: t.peticiones,
            fallos: t.fallos,
            rps: t.rps,
            pares_s: t.rps / 2.0,
            p50_ms: t.p50_ms,
            p99_ms: t.p99_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::mediana;

    #[test]
    fn median_run() {
        let v = [3.0, 1.0, 2.0];
        assert_eq!(mediana(&v, |x| *x), Some(2.0));
        assert_eq!(mediana(&[4.0, 1.0], |x| *x), Some(1.0));
        assert_eq!(mediana::<f64>(&[], |x| *x), None);
    }
}

//! The load generator behind `biblioteca-solicitante carga`.
//!
//! Each virtual client has its own Lazy Pirate client (one REQ socket, so at
//! most one request in flight per virtual client, exactly like a person at a
//! terminal) and its own virtual users, whose requests follow coherent
//! sequences ([`usuario`]). The virtual clients are spread over one thread
//! per core ([`hilo`]: closed and open loop, think times). Samples go over a
//! channel to the calling thread, which aggregates them
//! ([`informe`]) and reports progress once a second. They travel in batches
//! (at most [`LOTE`] apart): one wake-up of the aggregator per sample was a
//! measurable share of the generator's CPU, taken from the system under test.

pub mod csv;
pub mod grafico;
mod hilo;
pub mod informe;
pub mod spec;
pub mod usuario;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pirate::ClientError;
use biblioteca_protocol::config::ClientConfig;

pub use informe::Informe;
use informe::{Agregado, Muestra};
use spec::{Espera, Mezcla};

/// Label for replies that could not be parsed.
pub const RESPUESTA_INVALIDA: &str = "RespuestaInvalida";
/// How long a sleeping client may go without checking the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// Longest a virtual client holds finished samples before handing them over.
const LOTE: Duration = Duration::from_millis(50);

/// Samples of one load thread, each with its completion time since the start.
type Lote = Vec<(Duration, Muestra)>;
/// Virtual clients (REQ sockets) per ZeroMQ context, under libzmq's 1023.
const POR_CONTEXTO: usize = 1000;

/// Raises the open-file limit to what `clientes` sockets need (a ZeroMQ
/// socket holds an eventfd and a TCP connection), or says how far short the
/// hard limit falls.
pub fn abrir_ficheros(clientes: usize) -> Result<(), LoadError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = (clientes as u64) * 2 + 256;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard);
    if needed > hard {
        return Err(LoadError::Opciones(format!(
            "{clientes} clients need about {needed} open files but the limit is {hard}; \
             raise it (ulimit -n) or use fewer clients"
        )));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load options: {0}")]
    Opciones(String),
    #[error("histogram: {0}")]
    Histograma(#[from] hdrhistogram::CreationError),
    #[error("virtual client failed: {0}")]
    Cliente(#[from] ClientError),
    #[error("cannot start a virtual client: {0}")]
    Hilo(String),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Opciones {
    pub cliente: ClientConfig,
    pub clientes: usize,
    /// Stop after this long (whichever of duration and count comes first).
    pub duracion: Option<Duration>,
    /// Stop after this many requests in total.
    pub peticiones: Option<u64>,
    /// Closed-loop think time between a reply and the next request.
    pub espera: Option<Espera>,
    /// Open loop: total requests per second across all clients.
    pub tasa: Option<f64>,
    pub mezcla: Mezcla,
    pub catalogo: Vec<String>,
    /// Virtual users per virtual client.
    pub usuarios: usize,
    /// Prefix of user names; a fresh one per run keeps old loans out of the way.
    pub prefijo: String,
    pub semilla: u64,
}

impl Opciones {
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Opciones(m.to_string()));
        if self.clientes == 0 || self.clientes > 10_000 {
            return bad("clientes must be between 1 and 10000");
        }
        if self.duracion.is_none() && self.peticiones.is_none() {
            return bad("give a duration or a request count");
        }
        if self.catalogo.is_empty() {
            return bad("the book catalogue is empty");
        }
        if self.usuarios == 0 {
            return bad("usuarios must be at least 1");
        }
        if self.espera.is_some() && self.tasa.is_some() {
            return bad("think time (closed loop) and rate (open loop) exclude each other");
        }
        Ok(())
    }
}

/// A fresh user-name prefix: `carga-` and 8 hex digits.
pub fn prefijo_nuevo() -> String {
    let id = crate::new_request_id();
    format!("carga-{}", id.get(2..10).unwrap_or("00000000"))
}

/// What the progress line shows, once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Avance {
    pub elapsed: Duration,
    pub total: Option<Duration>,
    pub peticiones: u64,
    pub fallos: u64,
    /// Requests completed in the last interval, per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for Avance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self
            .total
            .map(|t| format!("/{}s", t.as_secs()))
            .unwrap_or_default();
        write!(
            f,
            "{}s{total}  {} requests  {:.1} req/s  {} failures  p50 {:.1} ms  p99 {:.1} ms",
            self.elapsed.as_secs(),
            self.peticiones,
            self.rps,
            self.fallos,
            self.p50_ms,
            self.p99_ms
        )
    }
}

/// Runs one load test; `parar` ends it early (the report covers what ran).
pub fn ejecutar(
    opts: &Opciones,
    ctx: &zmq::Context,
    parar: &Arc<AtomicBool>,
    mut on_avance: impl FnMut(&Avance),
) -> Result<Informe, LoadError> {
    opts.validate()?;
    let mut agregado = Agregado::new()?;
    let inicio = Instant::now();
    let inicio_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let contador = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<Lote>();
    abrir_ficheros(opts.clientes)?;
    // One thread per core (as pgbench -j), each with every n-th client; more
    // when a thread would hold more clients than one context has sockets.
    let n = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(opts.clientes.div_ceil(POR_CONTEXTO))
        .min(opts.clientes);
    let mut hilos = Vec::with_capacity(n);
    for t in 0..n {
        let worker = hilo::Hilo {
            ks: (t..opts.clientes).step_by(n).collect(),
            opts: opts.clone(),
            inicio,
            contador: contador.clone(),
            parar: parar.clone(),
            tx: tx.clone(),
        };
        // libzmq caps a context at 1023 sockets (this binding cannot raise it).
        let ctx = if opts.clientes > POR_CONTEXTO {
            zmq::Context::new()
        } else {
            ctx.clone()
        };
        let h = std::thread::Builder::new()
            .name(format!("carga-{t}"))
            .spawn(move || worker.run(ctx))
            .map_err(|e| LoadError::Hilo(e.to_string()));
        match h {
            Ok(h) => hilos.push(h),
            Err(e) => {
                parar.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut ultimo = Instant::now();
    let mut previas = 0;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(lote) => {
                for (t, m) in &lote {
                    agregado.record(m, *t);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let dt = ultimo.elapsed();
        if dt >= Duration::from_secs(1) {
            agregado.avanzar(inicio.elapsed());
            let (p50_ms, p99_ms) = agregado.p50_p99();
            let peticiones = agregado.peticiones();
            on_avance(&Avance {
                elapsed: inicio.elapsed(),
                total: opts.duracion,
                peticiones,
                fallos: agregado.fallos(),
                rps: (peticiones - previas) as f64 / dt.as_secs_f64(),
                p50_ms,
                p99_ms,
            });
            previas = peticiones;
            ultimo = Instant::now();
        }
    }
    let mut fallo = None;
    for h in hilos {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fallo = Some(LoadError::Cliente(e)),
            Err(_) => fallo = Some(LoadError::Hilo("a load thread panicked".into())),
        }
    }
    if let Some(e) = fallo {
        if agregado.peticiones() == 0 {
            return Err(e);
        }
        tracing::warn!(error = %e, "a virtual client stopped early");
    }
    Ok(agregado.informe(opts.clientes, inicio_unix, inicio.elapsed()))
}

/// Client counts of `--experimento`.
pub const EXPERIMENTO: [usize; 3] = [4, 6, 10];
/// Duration of each experiment step unless `--duracion` says otherwise.
pub const EXPERIMENTO_DURACION: Duration = Duration::from_secs(120);

/// One aggregated row per run: the experiment's table.
pub fn tabla_experimento(informes: &[Informe]) -> String {
    let mut out = format!(
        "{:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "CLIENTS", "REQS", "REQ/S", "FAILS", "MEAN", "STDDEV", "P50", "P90", "P99", "MAX"
    );
    for r in informes {
        let t = &r.total;
        out.push_str(&format!(
            "{:>7} {:>9} {:>9.1} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            r.clientes,
            t.peticiones,
            t.rps,
            t.fallos,
            t.media_ms,
            t.desviacion_ms,
            t.p50_ms,
            t.p90_ms,
            t.p99_ms,
            t.max_ms
        ));
    }
    out.push_str("latencies in ms");
    out
}

#[cfg(test)]
mod tests;

//! The load generator behind `biblioteca-solicitante carga`.
//!
//! Each virtual client is a thread with its own Lazy Pirate [`Client`] (one REQ
//! socket, so at most one request in flight per virtual client, exactly like
//! a person at a terminal) and its own virtual users, whose requests follow
//! coherent sequences ([`usuario`]). Closed loop: send, wait for the reply,
//! think (`espera`), repeat. Open loop (`tasa`): each client sends on a fixed
//! schedule and latency is measured from the *scheduled* time, so a slow
//! system is not hidden by clients that fell behind (coordinated omission).
//! Samples go over a channel to the calling thread, which aggregates them
//! ([`informe`]) and reports progress once a second. They travel in batches
//! (at most [`LOTE`] apart): one wake-up of the aggregator per sample was a
//! measurable share of the generator's CPU, taken from the system under test.

pub mod csv;
pub mod grafico;
pub mod informe;
pub mod spec;
pub mod usuario;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::pirate::{Client, ClientError};
use crate::config::ClientConfig;

pub use informe::Informe;
use informe::{Agregado, Muestra, SIN_RESPUESTA};
use spec::{Espera, Mezcla};
use usuario::{Rng, Usuario};

/// Label for replies that could not be parsed.
pub const RESPUESTA_INVALIDA: &str = "RespuestaInvalida";
/// How long a sleeping client may go without checking the stop flag.
const TICK: Duration = Duration::from_millis(100);
/// Longest a virtual client holds finished samples before handing them over.
const LOTE: Duration = Duration::from_millis(50);

/// Samples of one virtual client, each with its completion time since the start.
type Lote = Vec<(Duration, Muestra)>;

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
    let id = crate::client::new_request_id();
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
    let mut hilos = Vec::with_capacity(opts.clientes);
    for k in 0..opts.clientes {
        let worker = Worker {
            k,
            opts: opts.clone(),
            inicio,
            contador: contador.clone(),
            parar: parar.clone(),
            tx: tx.clone(),
        };
        let ctx = ctx.clone();
        let h = std::thread::Builder::new()
            .name(format!("vc-{k}"))
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
            Err(_) => fallo = Some(LoadError::Hilo("a virtual client panicked".into())),
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

/// One virtual client: its socket, its users, its schedule.
struct Worker {
    k: usize,
    opts: Opciones,
    inicio: Instant,
    contador: Arc<AtomicU64>,
    parar: Arc<AtomicBool>,
    tx: mpsc::Sender<Lote>,
}

impl Worker {
    fn run(self, ctx: zmq::Context) -> Result<(), ClientError> {
        let mut lote = Lote::new();
        let mut entregado = Instant::now();
        let result = self.bucle(ctx, &mut lote, &mut entregado);
        if !lote.is_empty() {
            let _ = self.tx.send(lote);
        }
        result
    }

    fn bucle(
        &self,
        ctx: zmq::Context,
        lote: &mut Lote,
        entregado: &mut Instant,
    ) -> Result<(), ClientError> {
        let o = &self.opts;
        let mut client = Client::with_context(ctx, o.cliente.clone())?;
        let mut rng = Rng::new(o.semilla ^ (self.k as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        let mut usuarios: Vec<Usuario> = (0..o.usuarios)
            .map(|u| Usuario::new(format!("{}-c{}-u{u}", o.prefijo, self.k)))
            .collect();
        let fin = o.duracion.map(|d| self.inicio + d);
        let intervalo = o
            .tasa
            .map(|r| Duration::from_secs_f64(o.clientes as f64 / r));
        // Clients are staggered over one interval so arrivals spread evenly.
        let mut siguiente = self.inicio
            + intervalo
                .map(|i| i.mul_f64(self.k as f64 / o.clientes as f64))
                .unwrap_or_default();
        loop {
            let programado = match intervalo {
                Some(i) => {
                    if !self.dormir_hasta(siguiente, fin) {
                        break;
                    }
                    let t = siguiente;
                    siguiente += i;
                    t
                }
                None => Instant::now(),
            };
            if self.parar.load(Ordering::SeqCst) || fin.is_some_and(|f| Instant::now() >= f) {
                break;
            }
            if let Some(n) = o.peticiones {
                if self.contador.fetch_add(1, Ordering::SeqCst) >= n {
                    break;
                }
            }
            let u = rng.below(usuarios.len());
            let Some(usuario) = usuarios.get_mut(u) else {
                break;
            };
            let p = usuario.siguiente(&mut rng, &o.mezcla, &o.catalogo);
            let result = client.request(&p);
            let latencia = programado.elapsed();
            let muestra = match &result {
                Ok(r) => {
                    usuario.observar(&p, Some(r));
                    Muestra {
                        operacion: p.operacion,
                        latencia: Some(latencia),
                        fallo: if r.exito {
                            None
                        } else {
                            Some(r.error.map(|c| c.as_str()).unwrap_or("SinCodigo"))
                        },
                    }
                }
                Err(ClientError::Unknown { .. }) => {
                    usuario.observar(&p, None);
                    Muestra {
                        operacion: p.operacion,
                        latencia: None,
                        fallo: Some(SIN_RESPUESTA),
                    }
                }
                Err(ClientError::MalformedReply { .. }) => Muestra {
                    operacion: p.operacion,
                    latencia: Some(latencia),
                    fallo: Some(RESPUESTA_INVALIDA),
                },
                Err(_) => return result.map(|_| ()),
            };
            lote.push((self.inicio.elapsed(), muestra));
            if entregado.elapsed() >= LOTE {
                if self.tx.send(std::mem::take(lote)).is_err() {
                    break;
                }
                *entregado = Instant::now();
            }
            if let Some(e) = o.espera {
                let think = e.min + (e.max.saturating_sub(e.min)).mul_f64(rng.unit());
                if !self.dormir_hasta(Instant::now() + think, fin) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sleeps until `t`; false when the run ends first.
    fn dormir_hasta(&self, t: Instant, fin: Option<Instant>) -> bool {
        loop {
            if self.parar.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if fin.is_some_and(|f| now >= f || t >= f) {
                return false;
            }
            if now >= t {
                return true;
            }
            std::thread::sleep((t - now).min(TICK));
        }
    }
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

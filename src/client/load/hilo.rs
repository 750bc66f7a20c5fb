//! One load thread: many virtual clients multiplexed on one thread.
//!
//! Each virtual client keeps its own Lazy Pirate [`Client`] (one REQ socket,
//! so at most one request in flight, like a person at a terminal) and its own
//! virtual users; the thread polls the sockets of every client waiting for a
//! reply and starts the requests that are due. A thread per virtual client
//! cost a wake-up of that thread per reply on top of the ZeroMQ I/O thread's,
//! and thousands of think-time users (Locust-style runs) would have meant
//! thousands of threads; a few threads (one per core, as `pgbench -j`) serve
//! them all.
//!
//! Closed loop: the next request starts when the reply has arrived (plus the
//! think time, `espera`). Open loop (`tasa`): each client sends on a fixed
//! schedule and latency counts from the *scheduled* time, so a slow system is
//! not hidden by clients that fell behind (coordinated omission).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::informe::{Muestra, SIN_RESPUESTA};
use super::usuario::{Rng, Usuario};
use super::{Lote, Opciones, LOTE, RESPUESTA_INVALIDA, TICK};
use crate::pirate::{encode, new_request_id, Client, ClientError, InFlight};
use biblioteca_protocol::Peticion;

/// Where one virtual client is.
enum Estado {
    /// Its next request starts at this time.
    Listo(Instant),
    /// A request is out: which, the try in flight, and when it was due.
    Esperando {
        p: Peticion,
        /// Which of the client's users sent it.
        u: usize,
        vuelo: InFlight,
        programado: Instant,
    },
    /// No more requests (duration over, count reached, or stopped).
    Hecho,
}

/// One virtual client: its socket, its users, its schedule.
struct Virtual {
    client: Client,
    usuarios: Vec<Usuario>,
    rng: Rng,
    estado: Estado,
    /// Open loop: the time between two requests of this client.
    intervalo: Option<Duration>,
}

/// The virtual clients `ks` of a run, on the calling thread.
pub(super) struct Hilo {
    pub(super) ks: Vec<usize>,
    pub(super) opts: Opciones,
    pub(super) inicio: Instant,
    pub(super) contador: Arc<AtomicU64>,
    pub(super) parar: Arc<AtomicBool>,
    pub(super) tx: mpsc::Sender<Lote>,
}

impl Hilo {
    pub(super) fn run(self, ctx: zmq::Context) -> Result<(), ClientError> {
        let o = &self.opts;
        let intervalo = o
            .tasa
            .map(|r| Duration::from_secs_f64(o.clientes as f64 / r));
        let mut vs = Vec::with_capacity(self.ks.len());
        // Clients start staggered over one interval (open loop) or one
        // longest think time, so arrivals spread evenly instead of every
        // client's first request landing at once.
        let escalonado = intervalo.or(o.espera.map(|e| e.max)).unwrap_or_default();
        for &k in &self.ks {
            let primero = self.inicio + escalonado.mul_f64(k as f64 / o.clientes as f64);
            vs.push(Virtual {
                client: Client::with_context(ctx.clone(), o.cliente.clone())?,
                usuarios: (0..o.usuarios)
                    .map(|u| Usuario::new(format!("{}-c{k}-u{u}", o.prefijo)))
                    .collect(),
                rng: Rng::new(o.semilla ^ (k as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f)),
                estado: Estado::Listo(primero),
                intervalo,
            });
        }
        let mut lote = Lote::new();
        let mut entregado = Instant::now();
        let result = self.bucle(&mut vs, &mut lote, &mut entregado);
        if !lote.is_empty() {
            let _ = self.tx.send(lote);
        }
        result
    }

    fn bucle(
        &self,
        vs: &mut [Virtual],
        lote: &mut Lote,
        entregado: &mut Instant,
    ) -> Result<(), ClientError> {
        let fin = self.opts.duracion.map(|d| self.inicio + d);
        loop {
            let now = Instant::now();
            let cerrar = self.parar.load(Ordering::SeqCst) || fin.is_some_and(|f| now >= f);
            for v in vs.iter_mut() {
                match v.estado {
                    Estado::Listo(_) if cerrar => v.estado = Estado::Hecho,
                    Estado::Listo(t) if t <= now => self.empezar(v, t)?,
                    _ => {}
                }
            }
            if vs.iter().all(|v| matches!(v.estado, Estado::Hecho)) {
                return Ok(());
            }
            for i in esperar(vs, now)? {
                let Some(v) = vs.get_mut(i) else {
                    continue;
                };
                if let Some(m) = self.atender(v)? {
                    lote.push((self.inicio.elapsed(), m));
                }
            }
            if entregado.elapsed() >= LOTE && !lote.is_empty() {
                if self.tx.send(std::mem::take(lote)).is_err() {
                    return Ok(());
                }
                *entregado = Instant::now();
            }
        }
    }

    /// Starts the next request of `v`, due at `programado`.
    fn empezar(&self, v: &mut Virtual, programado: Instant) -> Result<(), ClientError> {
        if let Some(n) = self.opts.peticiones {
            if self.contador.fetch_add(1, Ordering::SeqCst) >= n {
                v.estado = Estado::Hecho;
                return Ok(());
            }
        }
        let u = v.rng.below(v.usuarios.len());
        let Some(usuario) = v.usuarios.get(u) else {
            v.estado = Estado::Hecho;
            return Ok(());
        };
        let mut p = usuario.siguiente(&mut v.rng, &self.opts.mezcla, &self.opts.catalogo);
        // The id is fixed before the first try, so every retry carries it.
        p.id = Some(new_request_id());
        // Closed loop: latency counts from the send, not from when it was due.
        let programado = if v.intervalo.is_some() {
            programado
        } else {
            Instant::now()
        };
        let vuelo = v.client.begin(encode(&p))?;
        v.estado = Estado::Esperando {
            p,
            u,
            vuelo,
            programado,
        };
        Ok(())
    }

    /// A reply arrived or a deadline passed: the sample, if the request ended.
    fn atender(&self, v: &mut Virtual) -> Result<Option<Muestra>, ClientError> {
        let Estado::Esperando { vuelo, .. } = &mut v.estado else {
            return Ok(None);
        };
        let respuesta = match v.client.receive() {
            Ok(Some(r)) => Ok(r),
            Ok(None) if Instant::now() < vuelo.deadline() => return Ok(None),
            Ok(None) => {
                if v.client.expire(vuelo)? {
                    return Ok(None);
                }
                Err(None)
            }
            Err(ClientError::MalformedReply { .. }) => Err(Some(RESPUESTA_INVALIDA)),
            Err(e) => return Err(e),
        };
        let Estado::Esperando {
            p, u, programado, ..
        } = std::mem::replace(&mut v.estado, Estado::Hecho)
        else {
            return Ok(None);
        };
        let latencia = programado.elapsed();
        let usuario = v.usuarios.get_mut(u);
        let muestra = match respuesta {
            Ok(r) => {
                if let Some(u) = usuario {
                    u.observar(&p, Some(&r));
                }
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
            // Every try went unanswered: the outcome is unknown.
            Err(None) => {
                if let Some(u) = usuario {
                    u.observar(&p, None);
                }
                Muestra {
                    operacion: p.operacion,
                    latencia: None,
                    fallo: Some(SIN_RESPUESTA),
                }
            }
            Err(Some(code)) => Muestra {
                operacion: p.operacion,
                latencia: Some(latencia),
                fallo: Some(code),
            },
        };
        v.estado = Estado::Listo(self.siguiente(v, programado));
        Ok(Some(muestra))
    }

    /// When `v`'s next request is due.
    fn siguiente(&self, v: &mut Virtual, programado: Instant) -> Instant {
        if let Some(i) = v.intervalo {
            return programado + i;
        }
        match self.opts.espera {
            Some(e) => {
                let think = e.min + (e.max.saturating_sub(e.min)).mul_f64(v.rng.unit());
                Instant::now() + think
            }
            None => Instant::now(),
        }
    }
}

/// Waits for a reply on any waiting client's socket, a deadline, or the
/// next due start; returns the clients that need attention.
fn esperar(vs: &[Virtual], now: Instant) -> Result<Vec<usize>, ClientError> {
    let mut hasta = now + TICK;
    let mut quien = Vec::new();
    let mut items = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        match &v.estado {
            Estado::Listo(t) => hasta = hasta.min(*t),
            Estado::Esperando { vuelo, .. } => {
                hasta = hasta.min(vuelo.deadline());
                match v.client.socket() {
                    Some(s) => {
                        items.push(s.as_poll_item(zmq::POLLIN));
                        quien.push(i);
                    }
                    // No socket (a send failed): only the deadline matters.
                    None => hasta = now,
                }
            }
            Estado::Hecho => {}
        }
    }
    let d = hasta.saturating_duration_since(now);
    // Round up so a deadline under a millisecond away does not spin.
    let ms = d.as_millis() as i64 + i64::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    biblioteca_runtime::net::poll(&mut items, ms)?;
    let mut atender = vec![false; vs.len()];
    for (i, it) in quien.iter().zip(&items) {
        if it.is_readable() {
            if let Some(a) = atender.get_mut(*i) {
                *a = true;
            }
        }
    }
    // Expired tries too (one that is also readable gets its reply first).
    let now = Instant::now();
    for (a, v) in atender.iter_mut().zip(vs) {
        if let Estado::Esperando { vuelo, .. } = &v.estado {
            *a |= vuelo.deadline() <= now;
        }
    }
    Ok(atender
        .iter()
        .enumerate()
        .filter(|(_, a)| **a)
        .map(|(i, _)| i)
        .collect())
}

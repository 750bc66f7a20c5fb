//! The transport floor: the CPU one ZeroMQ TCP hop costs on this machine,
//! measured with nothing but ZeroMQ, and the best ratio any pipeline of this
//! shape could reach against pgbench here.
//!
//! A request through the pipeline crosses [`SALTOS`] TCP hops (client → load
//! manager → actor → storage manager → actor → load manager → client), and
//! with libzmq each one wakes the sender's I/O thread, the receiver's I/O
//! thread and the receiving application thread. That work does not depend on
//! what the services do with a message, so it bounds what trimming them can
//! achieve. The measurement is the best case for the transport: two
//! ZeroMQ contexts in this process (each with its own I/O thread, as two
//! processes would have), `n` REQ sockets polled by one thread — like the
//! load generator — sending a request-sized message to a ROUTER that echoes
//! it at once, on an otherwise idle machine. CPU is this process's, counted
//! by [`cpu`](super::cpu) like every other part, divided by the hops made.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::{Parte, Partes};
use biblioteca_runtime::net::{self, NetError};
use biblioteca_stack::launch::free_port;

/// TCP hops one write request makes through the pipeline.
pub const SALTOS: u32 = 6;
/// The size of a typical loan request on the wire.
const CUERPO: usize = 160;
const POLL_MS: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum SueloError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Launch(#[from] biblioteca_stack::launch::LaunchError),
    #[error(transparent)]
    Ficheros(#[from] biblioteca_client::load::LoadError),
    #[error("the echo thread: {0}")]
    Hilo(std::io::Error),
    #[error("no round trip completed in {0:?}")]
    SinDatos(Duration),
}

/// The transport floor at one number of requests in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suelo {
    pub en_vuelo: usize,
    pub idas_y_vueltas: u64,
    /// CPU microseconds per hop, both ends together.
    pub us_por_salto: f64,
}

impl Suelo {
    /// CPU per request of [`SALTOS`] hops.
    pub fn us_por_peticion(&self) -> f64 {
        self.us_por_salto * f64::from(SALTOS)
    }

    /// The best ours/pgbench ratio on 2 busy cores when a pgbench
    /// transaction costs `pgbench_us` of CPU: the database work plus the hops
    /// and nothing else (no service work, no extra database cost, a client
    /// as cheap as pgbench's).
    pub fn mejor_ratio(&self, pgbench_us: f64) -> f64 {
        if pgbench_us <= 0.0 {
            return 0.0;
        }
        pgbench_us / (pgbench_us + self.us_por_peticion())
    }
}

/// Echoes every message on `router` until `stop`.
fn eco(router: &zmq::Socket, stop: &AtomicBool) -> Result<(), NetError> {
    while !stop.load(Ordering::Relaxed) {
        let mut items = [router.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, POLL_MS)?;
        while let Some(frames) = net::try_recv(router)? {
            router.send_multipart(frames, zmq::DONTWAIT)?;
        }
    }
    Ok(())
}

/// Measures `en_vuelo` request/reply pairs kept in flight for `duracion`
/// (after a short warm-up).
pub fn medir(en_vuelo: usize, duracion: Duration) -> Result<Suelo, SueloError> {
    // Both ends' sockets live in this process: twice a load run's files.
    biblioteca_client::load::abrir_ficheros(2 * en_vuelo)?;
    let endpoint = format!("tcp://127.0.0.1:{}", free_port()?);
    let ctx_eco = zmq::Context::new();
    let router = net::socket(&ctx_eco, zmq::ROUTER)?;
    net::bind(&router, &endpoint)?;
    let stop = Arc::new(AtomicBool::new(false));
    let hilo = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("bench-eco".into())
            .spawn(move || eco(&router, &stop))
            .map_err(SueloError::Hilo)?
    };
    let resultado = clientes(en_vuelo, duracion, &endpoint);
    stop.store(true, Ordering::Relaxed);
    let eco = hilo.join();
    let suelo = resultado?;
    match eco {
        Ok(r) => r?,
        Err(_) => return Err(SueloError::Hilo(std::io::Error::other("panicked"))),
    }
    Ok(suelo)
}

fn clientes(en_vuelo: usize, duracion: Duration, endpoint: &str) -> Result<Suelo, SueloError> {
    let ctx = zmq::Context::new();
    let n = en_vuelo.max(1);
    let socks = (0..n)
        .map(|_| {
            let s = net::socket(&ctx, zmq::REQ)?;
            net::connect(&s, endpoint)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>, NetError>>()?;
    let cuerpo = [b'x'; CUERPO];
    for s in &socks {
        s.send(&cuerpo[..], 0).map_err(NetError::from)?;
    }
    let calentamiento = (duracion / 5).min(Duration::from_millis(500));
    let contar = |hasta: Instant| -> Result<u64, SueloError> {
        let mut hechas = 0;
        while Instant::now() < hasta {
            let mut items: Vec<zmq::PollItem> =
                socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
            zmq::poll(&mut items, POLL_MS).map_err(NetError::from)?;
            for (item, s) in items.iter().zip(&socks) {
                if item.is_readable() && net::try_recv(s)?.is_some() {
                    hechas += 1;
                    s.send(&cuerpo[..], 0).map_err(NetError::from)?;
                }
            }
        }
        Ok(hechas)
    };
    contar(Instant::now() + calentamiento)?;
    let proceso = Partes::new().con("zeromq", Parte::Este);
    let antes = proceso.ahora();
    let hechas = contar(Instant::now() + duracion)?;
    if hechas == 0 {
        return Err(SueloError::SinDatos(duracion));
    }
    // Two hops per round trip; the first part is this process.
    let us_por_salto = antes
        .por_peticion(&proceso.ahora(), 2 * hechas)
        .first()
        .map_or(0.0, |c| c.us_por_peticion);
    Ok(Suelo {
        en_vuelo: n,
        idas_y_vueltas: hechas,
        us_por_salto,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_round_trips_and_their_cpu() {
        let s = medir(4, Duration::from_millis(400)).expect("floor");
        assert_eq!(s.en_vuelo, 4);
        assert!(s.idas_y_vueltas > 10, "{s:?}");
        // A hop costs something, and far less than a millisecond.
        assert!(s.us_por_salto > 0.0 && s.us_por_salto < 1000.0, "{s:?}");
        assert!((s.us_por_peticion() - 6.0 * s.us_por_salto).abs() < 1e-9);
    }

    #[test]
    fn best_ratio_adds_only_the_hops() {
        let s = Suelo {
            en_vuelo: 16,
            idas_y_vueltas: 1,
            us_por_salto: 25.0,
        };
        // 350 / (350 + 150)
        assert!((s.mejor_ratio(350.0) - 0.7).abs() < 1e-9);
        assert_eq!(s.mejor_ratio(0.0), 0.0);
    }
}

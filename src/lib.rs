//! biblioteca: a library's loans across machines.
//!
//! Clients send `prestamo`, `devolucion`, `renovacion` and `consulta` requests
//! over ZeroMQ to the load manager (`biblioteca-carga`), which publishes write
//! operations to actor processes (`biblioteca-actor`); actors and the load
//! manager talk to the storage manager (`biblioteca-almacenamiento`), the only
//! process that touches PostgreSQL.
//!
//! # Layout
//!
//! - [`protocol`]: every message on every socket, parsing and validation.
//! - [`config`]: TOML configuration of each service (`parse` / `parse_reader`).
//! - [`shutdown`]: the stop/reload flags handed to every `run` function, and
//!   the signal loop that drives them.
//! - [`logging`], [`notify`]: tracing setup (journald or stderr) and sd-notify.
//! - [`net`]: small ZeroMQ helpers shared by every socket thread.
//! - [`sched`]: the CPU scheduling policy the services' threads run under.
//! - [`request_log`]: per-request log lines, at most so many a second at
//!   `info`, the rest at `debug` and summarized.
//! - [`storage`]: the storage manager (ROUTER front-end, pooled workers, SQL).
//! - [`carga`]: the load manager (client front-end, PUB to actors, outcomes).
//! - [`actor`]: an actor serving one operation.
//! - [`client`]: the requesting side (single requests, files, retries).
//! - [`cluster`]: creating and driving local PostgreSQL primary/standby pairs
//!   (used by the demo and the tests).
//! - [`stack`]: the whole service stack on one host with generated configs
//!   (the demo and the end-to-end tests start the system through it).
//! - [`demo`]: `biblioteca-demo`: a local cluster, every service, and the
//!   guide's scenario narrated step by step.
//! - [`failover`]: `biblioteca-failover`: status, promote, rejoin and
//!   switchover of the PostgreSQL nodes, re-pointing the storage manager.
//! - [`bench`]: `biblioteca-bench`: the whole pipeline against `pgbench`
//!   running the same transactions.
//! - [`security`]: CURVE keys, the ZAP handler and who may talk to whom.
//! - [`launch`]: starting service binaries as child processes with their own
//!   sd-notify socket (used by the demo and the tests).

pub mod actor;
pub mod bench;
pub mod carga;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod failover;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod launch;
pub mod logging;
pub mod net;
pub mod notify;
pub mod protocol;
pub mod request_log;
pub mod sched;
pub mod security;
pub mod shutdown;
pub mod stack;
pub mod storage;

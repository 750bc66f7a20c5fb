//! What every process on the wire shares: the ZeroMQ socket helpers
//! ([`net`]), CURVE and ZAP ([`security`]), signals and the stop/reload flags
//! ([`shutdown`]), sd-notify readiness and watchdog ([`notify`]), logging to
//! journald or the terminal ([`logging`], [`request_log`]) and the CPU
//! scheduling policy of service threads ([`sched`]).
//!
//! The services, the client and the operator tools depend on it; it knows
//! nothing about loans (that is each service's crate) nor about PostgreSQL.

pub mod logging;
pub mod net;
pub mod notify;
pub mod request_log;
pub mod sched;
pub mod security;
pub mod shutdown;

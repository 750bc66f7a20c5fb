//! Tracing setup shared by every binary. A service started by systemd
//! (`JOURNAL_STREAM` or `INVOCATION_ID` set, and the journal's socket there)
//! logs to journald; everything else, and every interactive command
//! ([`init_terminal`]), writes human-readable lines to stderr, so a person at
//! a terminal sees them even on a machine that runs journald. `RUST_LOG`
//! overrides the default `info` level.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Journald,
    Stderr,
}

/// Journald only for a process systemd started (it sets `JOURNAL_STREAM`
/// when stdout/stderr go to the journal, `INVOCATION_ID` for every unit),
/// and only when the journal's socket exists.
pub fn service_destination(started_by_systemd: bool, socket_exists: bool) -> Destination {
    if started_by_systemd && socket_exists {
        Destination::Journald
    } else {
        Destination::Stderr
    }
}

fn started_by_systemd() -> bool {
    ["JOURNAL_STREAM", "INVOCATION_ID"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Installs the global subscriber of a service; call once, first thing in `main`.
pub fn init(service: &str) {
    let socket = std::path::Path::new(JOURNAL_SOCKET).exists();
    install(service, service_destination(started_by_systemd(), socket));
}

/// Installs the global subscriber of an interactive command: always stderr.
pub fn init_terminal(command: &str) {
    install(command, Destination::Stderr);
}

fn install(name: &str, destination: Destination) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if destination == Destination::Journald {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(journald.with_syslog_identifier(name.to_string()))
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_only_for_systemd_services_with_a_journal() {
        assert_eq!(service_destination(true, true), Destination::Journald);
        assert_eq!(service_destination(false, true), Destination::Stderr);
        assert_eq!(service_destination(true, false), Destination::Stderr);
    }
}

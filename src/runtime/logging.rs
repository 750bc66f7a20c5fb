//! Tracing setup shared by every binary: journald when its socket exists (the
//! service runs under systemd), human-readable stderr otherwise. `RUST_LOG`
//! overrides the default `info` level.

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::path::Path::new(JOURNAL_SOCKET).exists() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(journald.with_syslog_identifier(service.to_string()))
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

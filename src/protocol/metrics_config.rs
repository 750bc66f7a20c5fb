//! The `[metrics]` section every service's configuration carries: whether
//! the HTTP endpoint (`/metrics`, `/liveness`, `/readiness`, and `/primary`
//! on the storage manager) runs, and where it listens.
//!
//! Each service has a fixed default port ([`PORT_CARGA`], [`PORT_ALMACENAMIENTO`],
//! [`actor_port`]) on 127.0.0.1, so an operator and the deployment files can
//! find it without reading the configuration; the keys mirror the NixOS
//! options (`metrics.enable`, `listenAddress`, `port`).

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::Operacion;

/// Default port of `biblioteca-carga`'s metrics endpoint.
pub const PORT_CARGA: u16 = 9555;
/// Default port of `biblioteca-almacenamiento`'s metrics endpoint.
pub const PORT_ALMACENAMIENTO: u16 = 9570;

/// Default port of an actor's metrics endpoint: one per operation, so the
/// three actors of one host (`biblioteca-actor@prestamo` …) do not collide.
pub fn actor_port(op: Operacion) -> u16 {
    match op {
        Operacion::Prestamo => 9571,
        Operacion::Devolucion => 9572,
        Operacion::Renovacion => 9573,
        // Never an actor's operation (validation refuses it).
        Operacion::Consulta => 9574,
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve the HTTP endpoint; false: no listener at all.
    pub enabled: bool,
    /// Address to listen on (an IP address; `0.0.0.0` or `::` for every
    /// interface).
    pub listen_address: String,
    /// TCP port; absent: the service's fixed default (see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen_address: "127.0.0.1".into(),
            port: None,
        }
    }
}

impl MetricsConfig {
    /// A configuration that serves nothing (tests that start many services).
    pub fn off() -> MetricsConfig {
        MetricsConfig {
            enabled: false,
            ..MetricsConfig::default()
        }
    }

    /// On `127.0.0.1:port`.
    pub fn on_port(port: u16) -> MetricsConfig {
        MetricsConfig {
            port: Some(port),
            ..MetricsConfig::default()
        }
    }

    /// `host:port` to bind, with `default_port` when none is configured
    /// (IPv6 addresses bracketed).
    pub fn listen(&self, default_port: u16) -> String {
        let port = self.port.unwrap_or(default_port);
        if self.listen_address.contains(':') {
            format!("[{}]:{port}", self.listen_address)
        } else {
            format!("{}:{port}", self.listen_address)
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && self.listen_address.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "metrics.listen_address = {:?} is not an IP address",
                self.listen_address
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let m = MetricsConfig::default();
        assert_eq!(m.listen(PORT_CARGA), "127.0.0.1:9555");
        let v6 = MetricsConfig {
            listen_address: "::".into(),
            port: Some(1234),
            ..MetricsConfig::default()
        };
        assert_eq!(v6.listen(PORT_CARGA), "[::]:1234");
        let bad = MetricsConfig {
            listen_address: "localhost".into(),
            ..MetricsConfig::default()
        };
        assert!(bad.validate().is_err());
        assert!(MetricsConfig {
            enabled: false,
            ..bad
        }
        .validate()
        .is_ok());
    }
}

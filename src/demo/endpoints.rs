//! What the demo tells its user: every endpoint, ready-to-paste `psql`
//! commands for both database nodes, where the logs are, and a ready
//! `failover.toml` for running `biblioteca-failover` by hand.

use biblioteca_protocol::metrics_config::{actor_port, PORT_ALMACENAMIENTO, PORT_CARGA};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Demo, DemoError};
use biblioteca_failover::config::{FailoverConfig, FailoverNode, ReloadMethod, StorageTarget};
use biblioteca_runtime::security::ClientCurve;

#[derive(Debug, Clone, Serialize)]
pub struct DbNode {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub psql: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    pub endpoints: Vec<String>,
    pub config: PathBuf,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

/// The content of `endpoints.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub data_dir: PathBuf,
    pub client_endpoint: String,
    pub database: Vec<DbNode>,
    pub services: Vec<ServiceInfo>,
    pub failover_config: PathBuf,
    /// `--seguro`: the pgpass file holding every role's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgpass: Option<PathBuf>,
    /// `--seguro`: the client key pair and the load manager's public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_curve: Option<ClientCurve>,
}

fn psql(port: u16, pgpass: Option<&Path>) -> String {
    let env = pgpass
        .map(|p| format!("PGPASSFILE={} ", p.display()))
        .unwrap_or_default();
    format!("{env}psql -h 127.0.0.1 -p {port} -U app -d library")
}

/// `endpoints` and the service's metrics URL, when it serves one.
fn with_metrics(
    mut endpoints: Vec<String>,
    svc: &biblioteca_stack::launch::Service,
    default_port: u16,
) -> Vec<String> {
    if let Some(port) = biblioteca_stack::metrics_port(svc, default_port) {
        endpoints.push(format!("http://127.0.0.1:{port}/metrics"));
    }
    endpoints
}

impl Endpoints {
    pub fn of(demo: &Demo) -> Endpoints {
        let ports = demo.stack.ports();
        let database = demo
            .cluster
            .nodes()
            .iter()
            .map(|n| DbNode {
                name: n.name.clone(),
                host: "127.0.0.1".into(),
                port: n.port,
                data_dir: n.data_dir.clone(),
                log: n.log_file.clone(),
                psql: psql(n.port, demo.passwords.as_ref().map(|p| p.pgpass.as_path())),
            })
            .collect();
        let mut services = vec![
            ServiceInfo {
                name: "biblioteca-almacenamiento".into(),
                endpoints: with_metrics(
                    vec![ports.storage_endpoint()],
                    &demo.stack.storage,
                    PORT_ALMACENAMIENTO,
                ),
                config: demo.stack.storage.spec().config_path(),
                log: demo.stack.storage.log_path(),
                pid: demo.stack.storage.pid(),
            },
            ServiceInfo {
                name: "biblioteca-carga".into(),
                endpoints: with_metrics(
                    vec![
                        ports.frontend_endpoint(),
                        ports.publisher_endpoint(),
                        ports.backchannel_endpoint(),
                    ],
                    &demo.stack.carga,
                    PORT_CARGA,
                ),
                config: demo.stack.carga.spec().config_path(),
                log: demo.stack.carga.log_path(),
                pid: demo.stack.carga.pid(),
            },
        ];
        for (op, svc) in &demo.stack.actors {
            services.push(ServiceInfo {
                name: format!("biblioteca-actor@{op}"),
                endpoints: with_metrics(vec![], svc, actor_port(*op)),
                config: svc.spec().config_path(),
                log: svc.log_path(),
                pid: svc.pid(),
            });
        }
        Endpoints {
            data_dir: demo.dir.clone(),
            client_endpoint: ports.frontend_endpoint(),
            database,
            services,
            failover_config: demo.dir.join("failover.toml"),
            pgpass: demo.passwords.as_ref().map(|p| p.pgpass.clone()),
            client_curve: demo.stack.spec().client_curve(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), DemoError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| DemoError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn print(&self, dir: &Path) {
        println!(
            "\nbiblioteca is running (everything lives in {}):",
            dir.display()
        );
        println!("  clients (REQ)            {}", self.client_endpoint);
        for s in &self.services {
            let eps = if s.endpoints.is_empty() {
                String::new()
            } else {
                s.endpoints.join(" ")
            };
            println!("  {:<24} {eps}", s.name);
            println!("  {:<24} log: {}", "", s.log.display());
        }
        println!("\nDatabase (database `library`, role `app`):");
        for n in &self.database {
            println!(
                "  {:<8} {}:{}   {} -c \"SELECT isbn, ejemplares FROM libros;\"",
                n.name, n.host, n.port, n.psql
            );
        }
        println!("\nTry it:");
        let keys = self
            .client_curve
            .as_ref()
            .map(|c| {
                format!(
                    " --secret-key-file {} --carga-key {}",
                    c.secret_key_file.display(),
                    c.carga_key
                )
            })
            .unwrap_or_default();
        println!("  biblioteca-solicitante{keys} consulta 978-0134685991");
        println!("  biblioteca-solicitante{keys} prestamo 978-0134685991 usuario_test_1");
        println!("  biblioteca-solicitante{keys} status");
        if self.client_curve.is_some() {
            println!("  (CURVE is on: clients without an allowed key, like the guide's Python clients, are refused)");
            if let Some(p) = &self.pgpass {
                println!(
                    "  Passwords: {} (mode 0600); psql reads it through PGPASSFILE as shown above.",
                    p.display()
                );
            }
        } else {
            println!("  python3 test_cliente.py prestamo 978-0134685991 usuario_test_1   (the guide's client, unchanged)");
        }
        println!("\nFailover by hand:");
        let cfg = self.failover_config.display();
        println!("  biblioteca-failover --config {cfg} status");
        println!("  biblioteca-failover --config {cfg} promote");
        println!("  biblioteca-failover --config {cfg} rejoin --node primary");
        println!("  biblioteca-failover --config {cfg} switchover");
        println!(
            "\nAll of this is also in {}.",
            dir.join("endpoints.json").display()
        );
    }
}

/// Writes `failover.toml` (nodes managed from this host, the storage manager
/// reloaded by SIGHUP through its pid file) and the pid file it names. A
/// `--seguro` demo adds the superuser's password file to every node and the
/// operator's CURVE key for the storage manager's status.
pub fn write_failover_config(demo: &Demo) -> Result<PathBuf, DemoError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { path, source }
    };
    let pid_file = demo.stack.run_dir().join("almacenamiento.pid");
    let pid = demo
        .stack
        .storage
        .pid()
        .map(|p| p.to_string())
        .unwrap_or_default();
    std::fs::write(&pid_file, pid + "\n").map_err(io(&pid_file))?;
    let config = FailoverConfig {
        nodes: demo
            .cluster
            .nodes()
            .iter()
            .map(|n| FailoverNode {
                name: n.name.clone(),
                conninfo: n.conninfo("postgres", "library"),
                password_file: demo.passwords.as_ref().map(|p| p.superuser.clone()),
                data_dir: Some(n.data_dir.clone()),
                start: None,
                stop: None,
                log_file: Some(n.log_file.clone()),
            })
            .collect(),
        storage: StorageTarget {
            endpoint: demo.stack.ports().storage_endpoint(),
            config: Some(demo.stack.storage.spec().config_path()),
            reload: ReloadMethod::Pid,
            pid_file: Some(pid_file),
            curve: demo.stack.spec().operator_curve(),
            ..StorageTarget::default()
        },
        synchronous: !demo.config.asynchronous,
        ..FailoverConfig::default()
    };
    let path = demo.dir.join("failover.toml");
    let text = toml::to_string(&config).unwrap_or_default();
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(path)
}

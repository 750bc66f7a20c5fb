//! `biblioteca-almacenamiento`: the storage manager (ROUTER front-end, pooled
//! PostgreSQL workers, exactly-once writes, failover between nodes), plus the
//! one-shot `migrate` and `seed` commands.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use biblioteca_protocol::config::{self, NodeConfig, NodeRole, StorageConfig, Validate};
use biblioteca_protocol::config_roles;
use biblioteca_runtime::logging;
use biblioteca_runtime::shutdown;
use biblioteca_storage as storage;

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-almacenamiento",
    version,
    about = "The biblioteca storage manager: the only process that talks to PostgreSQL",
    long_about = "The biblioteca storage manager: the only process that talks to PostgreSQL.\n\n\
        Without a subcommand it serves requests on a ROUTER socket (default tcp://*:5570). \
        SIGHUP re-reads --config (database nodes and timeouts) and the roles drop-in that \
        biblioteca-failover writes (STATE_DIR/roles.toml, overriding the nodes' roles); \
        SIGTERM stops after in-flight requests. Flags override the file at start only."
)]
struct Cli {
    /// TOML configuration; flags override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// ROUTER endpoint, e.g. tcp://*:5570.
    #[arg(long, value_name = "EP", global = true)]
    bind: Option<String>,
    /// Connection string of the primary, e.g. "host=127.0.0.1 port=55432 user=app dbname=library".
    #[arg(long, value_name = "CONNINFO", global = true)]
    primary: Option<String>,
    /// Connection string of a standby (repeat for several); replaces the configured standbys.
    #[arg(long, value_name = "CONNINFO", global = true)]
    standby: Vec<String>,
    /// Worker threads (each uses one pooled database connection at a time).
    #[arg(long, value_name = "N", global = true)]
    workers: Option<usize>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve requests (the default).
    Serve,
    /// Apply pending schema migrations on the primary and exit: a deployment
    /// step, run as the role owning the schema (the storage manager itself
    /// only checks the schema is migrated). Grants the application role (the
    /// user of the configured primary's conninfo) its row privileges.
    Migrate {
        /// Connect with this connection string instead of the configured primary,
        /// e.g. "host=10.0.0.1 user=biblioteca_owner dbname=library".
        #[arg(long, value_name = "CONNINFO")]
        conninfo: Option<String>,
        /// Connect to the configured primary as this role, e.g. biblioteca_owner.
        #[arg(long, value_name = "ROLE")]
        user: Option<String>,
        /// File holding that role's password (never given on the command line).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
        /// The role to grant SELECT, INSERT, UPDATE on the tables (default:
        /// the user of the configured primary's conninfo).
        #[arg(long, value_name = "ROLE")]
        app_role: Option<String>,
    },
    /// Add a generated catalogue for load tests (idempotent: existing books are kept).
    Seed {
        /// Number of books (ISBNs 979-XXXXXXXXXX, numbered from 1).
        #[arg(long, value_name = "N")]
        libros: u64,
        /// Copies of each new book.
        #[arg(long, value_name = "K", default_value_t = 5)]
        ejemplares: i32,
    },
}

fn apply_flags(cli: &Cli, cfg: &mut StorageConfig) {
    if let Some(v) = &cli.bind {
        cfg.bind = v.clone();
    }
    if let Some(v) = cli.workers {
        cfg.workers = v;
    }
    let nodes = &mut cfg.database.nodes;
    if let Some(conninfo) = &cli.primary {
        match nodes.iter_mut().find(|n| n.role == NodeRole::Primary) {
            Some(n) => n.conninfo = conninfo.clone(),
            None => nodes.push(NodeConfig {
                name: "primary".into(),
                conninfo: conninfo.clone(),
                role: NodeRole::Primary,
            }),
        }
    }
    if !cli.standby.is_empty() {
        nodes.retain(|n| n.role != NodeRole::Standby);
        for (i, conninfo) in cli.standby.iter().enumerate() {
            let name = if i == 0 {
                "standby".to_string()
            } else {
                format!("standby{}", i + 1)
            };
            nodes.push(NodeConfig {
                name,
                conninfo: conninfo.clone(),
                role: NodeRole::Standby,
            });
        }
    }
}

fn main() -> anyhow::Result<()> {
    logging::init("biblioteca-almacenamiento");
    let cli = Cli::parse();
    let mut cfg: StorageConfig = match cli.config.as_deref() {
        Some(path) => {
            let loaded = config_roles::load_storage(path).context("configuration")?;
            storage::warn_unknown_roles(&loaded);
            loaded.config
        }
        None => config::load(None).context("configuration")?,
    };
    apply_flags(&cli, &mut cfg);
    cfg.validate().context("configuration")?;
    storage::check_config(&cfg).context("configuration")?;
    if cli.check_config {
        println!("configuration OK");
        return Ok(());
    }
    match cli.command {
        None | Some(Command::Serve) => {
            let path = cli.config.clone();
            shutdown::run_with_signals("front-end", move |sd| {
                storage::run(cfg, path, sd).map_err(Into::into)
            })
        }
        Some(Command::Migrate {
            conninfo,
            user,
            password_file,
            app_role,
        }) => {
            let how = storage::MigrateAs {
                conninfo,
                user,
                password_file,
                app_role,
            };
            let applied = storage::migrate(&cfg, &how).context("migrate")?;
            if applied.is_empty() {
                println!("schema up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(())
        }
        Some(Command::Seed { libros, ejemplares }) => {
            anyhow::ensure!(ejemplares >= 0, "--ejemplares must not be negative");
            let added = storage::seed(&cfg, libros, ejemplares).context("seed")?;
            println!(
                "{added} books added ({} already present); ISBNs {} to {}",
                libros - added.min(libros),
                biblioteca_protocol::catalogue::isbn(1),
                biblioteca_protocol::catalogue::isbn(libros.max(1))
            );
            Ok(())
        }
    }
}

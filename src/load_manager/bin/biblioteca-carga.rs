//! `biblioteca-carga`: the load manager (client front-end, PUB to actors,
//! back-channel for outcomes, `consulta` straight to the storage manager).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use biblioteca_load_manager as load_manager;
use biblioteca_protocol::config::{self, LoadManagerConfig, Validate};
use biblioteca_runtime::logging;
use biblioteca_runtime::shutdown;

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-carga",
    version,
    about = "The biblioteca load manager: clients on a ROUTER, write requests published to actors"
)]
struct Cli {
    /// TOML configuration; flags override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// ROUTER endpoint for clients (REQ or DEALER), e.g. tcp://*:5555.
    #[arg(long, value_name = "EP")]
    frontend: Option<String>,
    /// PUB endpoint for actors, e.g. tcp://*:5556.
    #[arg(long, value_name = "EP")]
    publisher: Option<String>,
    /// PULL endpoint on which actors report outcomes and heartbeats, e.g. tcp://*:5557.
    #[arg(long, value_name = "EP")]
    backchannel: Option<String>,
    /// The storage manager, for consulta, e.g. tcp://127.0.0.1:5570.
    #[arg(long, value_name = "EP")]
    storage: Option<String>,
    /// How long a client waits for an outcome before ServicioNoDisponible, e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    logging::init("biblioteca-carga");
    let cli = Cli::parse();
    let mut cfg: LoadManagerConfig =
        config::load(cli.config.as_deref()).context("configuration")?;
    if let Some(v) = cli.frontend {
        cfg.frontend = v;
    }
    if let Some(v) = cli.publisher {
        cfg.publisher = v;
    }
    if let Some(v) = cli.backchannel {
        cfg.backchannel = v;
    }
    if let Some(v) = cli.storage {
        cfg.storage = v;
    }
    if let Some(v) = cli.deadline {
        cfg.deadline = v;
    }
    cfg.validate().context("configuration")?;
    biblioteca_runtime::security::check(cfg.curve.as_ref()).context("configuration")?;
    if cli.check_config {
        println!("configuration OK");
        return Ok(());
    }
    shutdown::run_with_signals("broker", move |sd| {
        load_manager::run(cfg, sd).map_err(Into::into)
    })
}

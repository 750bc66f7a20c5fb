//! `biblioteca-actor`: executes one write operation (`prestamo`,
//! `devolucion` or `renovacion`) published by the load manager.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use biblioteca_actor as actor;
use biblioteca_protocol::config::{self, ActorConfig, Validate};
use biblioteca_protocol::Operacion;
use biblioteca_runtime::logging;
use biblioteca_runtime::shutdown;

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-actor",
    version,
    about = "A biblioteca actor: executes one operation's requests against the storage manager"
)]
struct Cli {
    /// TOML configuration; flags override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The operation served (its topic): prestamo, devolucion or renovacion.
    #[arg(long, value_name = "OP", value_parser = parse_operacion)]
    operacion: Option<Operacion>,
    /// The load manager's PUB endpoint, e.g. tcp://127.0.0.1:5556.
    #[arg(long, value_name = "EP")]
    subscribe: Option<String>,
    /// The load manager's back-channel, e.g. tcp://127.0.0.1:5557.
    #[arg(long, value_name = "EP")]
    report: Option<String>,
    /// The storage manager, e.g. tcp://127.0.0.1:5570.
    #[arg(long, value_name = "EP")]
    storage: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn parse_operacion(s: &str) -> Result<Operacion, String> {
    match Operacion::parse(s) {
        Some(op) if op.is_write() => Ok(op),
        _ => Err(format!(
            "{s:?}: expected prestamo, devolucion or renovacion"
        )),
    }
}

fn main() -> anyhow::Result<()> {
    logging::init("biblioteca-actor");
    let cli = Cli::parse();
    let mut cfg: ActorConfig = config::load(cli.config.as_deref()).context("configuration")?;
    if let Some(v) = cli.operacion {
        cfg.operacion = v;
    }
    if let Some(v) = cli.subscribe {
        cfg.subscribe = v;
    }
    if let Some(v) = cli.report {
        cfg.report = v;
    }
    if let Some(v) = cli.storage {
        cfg.storage = v;
    }
    cfg.validate().context("configuration")?;
    biblioteca_runtime::security::check(cfg.curve.as_ref()).context("configuration")?;
    if cli.check_config {
        println!("configuration OK");
        return Ok(());
    }
    shutdown::run_with_signals("actor", move |sd| actor::run(cfg, sd).map_err(Into::into))
}

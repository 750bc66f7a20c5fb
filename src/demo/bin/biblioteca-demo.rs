//! `biblioteca-demo`: a primary and a standby, every service, on this machine.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use biblioteca_demo::{self as demo, DemoConfig};
use biblioteca_stack::StackPorts;

/// Runs the whole biblioteca system locally: a PostgreSQL primary with a
/// streaming standby, the storage manager, the load manager and one actor per
/// operation. Stays up until Ctrl-C, then stops and removes everything.
#[derive(Debug, Parser)]
#[command(name = "biblioteca-demo", version)]
struct Args {
    /// Directory for the cluster, configs and logs (default: a new temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the directory when the demo ends (servers are stopped either way).
    #[arg(long)]
    keep: bool,
    /// Run the reference scenario, print each step and its result, and exit
    /// (non-zero if any expected result does not hold).
    #[arg(long)]
    scenario: bool,
    #[arg(long, default_value_t = 55432)]
    primary_port: u16,
    /// The first standby's port; further standbys take the next ports.
    #[arg(long, default_value_t = 55433)]
    standby_port: u16,
    /// How many standbys (1 to 9); with two or more the primary commits
    /// once any one of them has the transaction (quorum `ANY 1`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    standbys: u8,
    /// Commit without waiting for the standby (faster; the newest loans can be
    /// lost in a failover).
    #[arg(long)]
    asynchronous: bool,
    /// Where the biblioteca-* binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Secure everything: CURVE on every ZeroMQ endpoint (keys generated into
    /// DATA_DIR/claves), scram-sha-256 passwords for the database roles
    /// (DATA_DIR/secretos, DATA_DIR/pgpass). The Python guide clients speak
    /// plaintext and are refused.
    #[arg(long = "seguro")]
    secure: bool,
}

fn main() -> anyhow::Result<()> {
    biblioteca_runtime::logging::init_terminal("biblioteca-demo");
    let args = Args::parse();
    let config = DemoConfig {
        data_dir: args.data_dir,
        keep: args.keep,
        scenario: args.scenario,
        primary_port: args.primary_port,
        standby_port: args.standby_port,
        standbys: usize::from(args.standbys),
        ports: StackPorts::default(),
        asynchronous: args.asynchronous,
        bin_dir: args.bin_dir,
        secure: args.secure,
    };
    biblioteca_runtime::shutdown::run_with_signals("demo", move |shutdown| {
        demo::run(config, shutdown).context("biblioteca-demo failed")
    })
}

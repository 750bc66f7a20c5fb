//! `biblioteca-bench-failover`: our automatic failover against Patroni
//! 3.0.2, alternated on the same machine (see `biblioteca_bench::failover`).
//! Needs root, etcd-server and patroni (Debian packages). Not for a shared
//! machine: the figures are only meaningful on an idle one.

use anyhow::Context;
use clap::Parser;

use biblioteca_bench::failover::{self, Options, System};

#[derive(Debug, Parser)]
#[command(name = "biblioteca-bench-failover", version)]
struct Args {
    /// Rounds; each runs every system once, in turn.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Only our agent (a quick check of the harness).
    #[arg(long)]
    only_ours: bool,
    /// Working directory (removed trial by trial).
    #[arg(long, default_value = "/tmp/biblioteca-bench-failover")]
    dir: std::path::PathBuf,
    /// Print the trials as JSON as well.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    biblioteca_runtime::logging::init_terminal("biblioteca-bench-failover");
    let args = Args::parse();
    let systems = if args.only_ours {
        vec![System::Ours]
    } else {
        System::ALL.to_vec()
    };
    let opts = Options {
        trials: args.trials,
        systems: systems.clone(),
        dir: args.dir,
    };
    let trials = failover::run(&opts).context("biblioteca-bench-failover failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&trials)?);
    }
    println!("{}", failover::table(&trials, &systems));
    Ok(())
}

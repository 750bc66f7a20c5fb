//! `biblioteca-bench`: the end-to-end pipeline against `pgbench` running the
//! same transactions, on a throw-away local cluster (see `biblioteca_bench`).

use anyhow::Context;
use clap::Parser;

use biblioteca_bench::{self as bench, BenchOptions};

/// Creates a PostgreSQL primary with a synchronous standby and every service
/// on free ports in a temporary directory, seeds a catalogue, then for each
/// client count runs pgbench with the storage manager's loan/return
/// transactions and our load generator through the whole pipeline, and
/// prints throughput, latency, the ratio, peak RSS per service and the
/// performance targets. Everything is removed at the end.
#[derive(Debug, Parser)]
#[command(name = "biblioteca-bench", version)]
struct Args {
    #[command(flatten)]
    opts: BenchOptions,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    biblioteca_runtime::logging::init_terminal("biblioteca-bench");
    let args = Args::parse();
    let opts = args.opts;
    let json = args.json;
    biblioteca_runtime::shutdown::run_with_signals("bench", move |shutdown| {
        let report = bench::run(&opts, &shutdown).context("biblioteca-bench failed")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{}", bench::table(&report));
        }
        Ok(())
    })
}

//! `biblioteca-bench`: the end-to-end pipeline against `pgbench` running the
//! same transactions, on a throw-away local cluster (see `biblioteca::bench`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use biblioteca_bench::{self as bench, Opciones};
use biblioteca_client::load::spec;
use biblioteca_runtime::sched::Scheduling;

/// Creates a PostgreSQL primary with a synchronous standby and every service
/// on free ports in a temporary directory, seeds a catalogue, then for each
/// client count runs pgbench with the storage manager's loan/return
/// transactions and our load generator through the whole pipeline, and
/// prints throughput, latency, the ratio, peak RSS per service and the
/// performance targets. Everything is removed at the end.
#[derive(Debug, Parser)]
#[command(name = "biblioteca-bench", version)]
struct Args {
    /// Client counts, comma-separated (10 is there for the p99 target).
    #[arg(long, value_delimiter = ',', default_value = "1,4,10,16,64")]
    clientes: Vec<usize>,
    /// Duration of each step (each system, each client count), e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = spec::duracion)]
    duracion: std::time::Duration,
    /// Books in the generated catalogue.
    #[arg(long, default_value_t = 1000)]
    libros: u64,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Keep the temporary directory (server and service logs).
    #[arg(long)]
    keep: bool,
    /// Also send the same load straight to the storage manager, to split the
    /// pipeline's cost between the database tier and the ZeroMQ hops.
    #[arg(long)]
    almacenamiento: bool,
    /// Also run the skeleton: a load manager and an actor that only forward
    /// frames (biblioteca-esqueleto) in front of the real storage manager,
    /// the ceiling for any pipeline of this shape here.
    #[arg(long)]
    esqueleto: bool,
    /// Runs of each system per client count, alternated (pgbench, ours, ...):
    /// the table shows the median run, CPU per request is averaged. Use 3 or
    /// more on a machine whose speed swings between runs.
    #[arg(long, default_value_t = 1)]
    repeticiones: u32,
    /// The services' CPU scheduling policy: batch (their default) or normal
    /// (the kernel's default, for a baseline run).
    #[arg(long, default_value_t = Scheduling::default())]
    scheduling: Scheduling,
    /// Where the biblioteca-* binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    biblioteca_runtime::logging::init_terminal("biblioteca-bench");
    let args = Args::parse();
    let opts = Opciones {
        clientes: args.clientes,
        duracion: args.duracion,
        libros: args.libros,
        bin_dir: args.bin_dir,
        conservar: args.keep,
        almacenamiento: args.almacenamiento,
        repeticiones: args.repeticiones,
        scheduling: args.scheduling,
        esqueleto: args.esqueleto,
    };
    let json = args.json;
    biblioteca_runtime::shutdown::run_with_signals("bench", move |shutdown| {
        let report = bench::run(&opts, &shutdown).context("biblioteca-bench failed")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{}", bench::tabla(&report));
        }
        Ok(())
    })
}

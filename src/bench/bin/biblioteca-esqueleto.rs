//! `biblioteca-esqueleto`: one forwarding stage of the benchmark's skeleton
//! pipeline (see `biblioteca_bench::skeleton`); `biblioteca-bench
//! --esqueleto` starts and stops it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use biblioteca_bench::skeleton::{self, SkeletonConfig};
use biblioteca_runtime::logging;
use biblioteca_runtime::shutdown;

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-esqueleto",
    version,
    about = "A load manager or actor that only forwards frames: the benchmark's ceiling for the pipeline's shape"
)]
struct Cli {
    /// TOML configuration (`scheduling`, and `[stage]` with `kind = "load_manager"`
    /// or `"actor"` and its endpoints), as `biblioteca-bench` writes it.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
}

fn main() -> anyhow::Result<()> {
    logging::init("biblioteca-esqueleto");
    let cli = Cli::parse();
    let cfg = SkeletonConfig::parse(&cli.config).context("configuration")?;
    shutdown::run_with_signals("esqueleto", move |sd| {
        skeleton::run(&cfg, &sd).map_err(Into::into)
    })
}

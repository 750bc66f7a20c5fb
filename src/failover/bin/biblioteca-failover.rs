//! `biblioteca-failover`: inspect the PostgreSQL nodes and change which one is
//! the primary (promote, rejoin, switchover), re-pointing the storage manager.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use biblioteca_failover::promote::{promote, PromoteOptions};
use biblioteca_failover::{agent, degrade, rejoin, status, switchover, FailoverConfig, Progress};

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-failover",
    version,
    about = "Inspect the PostgreSQL nodes and move the primary role between them",
    long_about = "Inspect the PostgreSQL nodes and move the primary role between them.\n\n\
        Every command prints one line per step. A failure says what state it left\n\
        things in and what to do next; commands can be re-run and resume."
)]
struct Cli {
    /// Failover configuration (TOML): [[nodes]] and [storage].
    #[arg(short, long, default_value = "/etc/biblioteca/failover.toml")]
    config: PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// node_exporter textfile directory for the run's metrics (overrides
    /// `textfile_dir` in the configuration).
    #[arg(long, value_name = "DIR")]
    textfile_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// One row per node (role, timeline, LSN, lag, replication) and where the
    /// storage manager serves from.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Promote a standby after the primary failed, then re-point the storage manager.
    Promote {
        /// The standby to promote (default: the reachable standby that
        /// received the most WAL).
        #[arg(long)]
        node: Option<String>,
        /// Promote even if the standby has not replayed everything the old
        /// primary is known to have flushed.
        #[arg(long)]
        allow_data_loss: bool,
    },
    /// Turn a former primary into a standby of the current primary
    /// (pg_rewind, or a fresh base backup when rewinding fails).
    Rejoin {
        /// The former primary (must be managed on this host: data_dir).
        #[arg(long)]
        node: String,
    },
    /// Planned swap with both nodes up: hold writes, wait for the standby to
    /// replay everything, promote it, rejoin the old primary as its standby.
    Switchover {
        /// The standby to promote (default: the streaming standby that
        /// replayed the most).
        #[arg(long)]
        node: Option<String>,
    },
    /// Switch synchronous replication off by hand (planned work on the
    /// standbys): the storage manager does it, records it and reports
    /// `degradada` until `restore`.
    Degrade,
    /// The automatic mode (opt-in, `[auto] enabled = true`): one agent per
    /// database host and one beside each storage manager, coordinated
    /// through etcd (docs/failover.md, "Automatic failover").
    Agent {
        /// This host's database node (default: `[auto] node`).
        #[arg(long)]
        node: Option<String>,
    },
    /// Withdraw `degrade`: synchronous replication comes back once enough
    /// standbys stream and have replayed everything.
    Restore,
}

impl Command {
    /// The `action` label of a command that changes something (`status`
    /// records nothing).
    fn action(&self) -> Option<&'static str> {
        match self {
            Command::Status { .. } => None,
            Command::Promote { .. } => Some("promote"),
            Command::Rejoin { .. } => Some("rejoin"),
            Command::Switchover { .. } => Some("switchover"),
            Command::Degrade => Some("degrade"),
            Command::Restore => Some("restore"),
            // A service, not a run: its health is the unit's.
            Command::Agent { .. } => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent is a service (journald under systemd); the rest are commands.
    if matches!(cli.command, Some(Command::Agent { .. })) {
        biblioteca_runtime::logging::init("biblioteca-failover");
    } else {
        biblioteca_runtime::logging::init_terminal("biblioteca-failover");
    }
    let mut cfg: FailoverConfig = match biblioteca_protocol::config::parse(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!(
                "  next:  fix {} (see docs/failover.md)",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("{}: configuration is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("error: no command given; try `biblioteca-failover --help`");
        return ExitCode::from(2);
    };
    if let Some(dir) = cli.textfile_dir {
        cfg.textfile_dir = Some(dir);
    }
    let progress = Progress::default();
    let action = command.action();
    let started = (biblioteca_metrics::unix_now(), std::time::Instant::now());
    let result = match command {
        Command::Status { json } => {
            let report = status::collect(&cfg);
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("error: {e}"),
                }
            } else {
                print!("{}", status::render(&report));
            }
            Ok(())
        }
        Command::Promote {
            node,
            allow_data_loss,
        } => promote(
            &cfg,
            &PromoteOptions {
                node,
                allow_data_loss,
            },
            &progress,
        )
        .map(|_| ()),
        Command::Rejoin { node } => rejoin::rejoin(&cfg, &node, &progress),
        Command::Switchover { node } => switchover::switchover(&cfg, node.as_deref(), &progress),
        Command::Degrade => degrade::degrade(&cfg, &progress),
        Command::Agent { node } => agent::run(&cfg, node.as_deref()),
        Command::Restore => degrade::restore(&cfg, &progress),
    };
    if let (Some(dir), Some(action)) = (&cfg.textfile_dir, action) {
        let took = started.1.elapsed();
        let written =
            biblioteca_metrics::textfile::record_run(dir, action, started.0, took, result.is_ok());
        if let Err(e) = written {
            eprintln!(
                "warning: cannot write the textfile metrics in {}: {e}",
                dir.display()
            );
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

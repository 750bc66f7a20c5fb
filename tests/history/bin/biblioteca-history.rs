//! biblioteca-history: records a workload's history against running load
//! managers, resolves its unknown outcomes, and checks it against snapshots
//! of the database nodes (see the crate's documentation and
//! tests/lab/partitions.sh).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use biblioteca_history::checker::{self, Kind, Violation};
use biblioteca_history::record::{self, Mark, Record};
use biblioteca_history::resolve::{self, Resolution};
use biblioteca_history::scenario::{self, Row, Sample};
use biblioteca_history::snapshot::{self, Snapshot};
use biblioteca_history::workload::{self, Plan, Workload};
use biblioteca_protocol::catalogue;
use biblioteca_protocol::config::{self, ClientConfig};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(about = "Record, resolve and check a history of requests under faults")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs client sessions for a while and writes the history (JSON lines).
    Run {
        /// A client configuration (endpoints, CURVE key), as biblioteca-solicitante's.
        #[arg(long)]
        config: PathBuf,
        /// Starts every request id and user name of this run.
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 5)]
        clients: usize,
        #[arg(long)]
        seconds: u64,
        /// Default: from the clock (printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Books to borrow (repeat).
        #[arg(long = "isbn", required = true)]
        isbns: Vec<String>,
        /// Fault marks to merge into the history (JSON lines).
        #[arg(long)]
        marks: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Resolves every unknown outcome through the configured endpoints.
    Resolve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        history: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Checks a resolved history against node snapshots; appends its row to
    /// the table file; exits 1 on any violation.
    Check {
        #[arg(long)]
        name: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        history: PathBuf,
        #[arg(long)]
        resolved: PathBuf,
        /// Snapshot directory of the final primary.
        #[arg(long = "final")]
        final_: PathBuf,
        /// NAME=DIR: snapshot of a node that was primary before (repeat).
        #[arg(long)]
        old: Vec<String>,
        /// Copies per book before the workload (the `copies` query's output).
        #[arg(long)]
        initial: PathBuf,
        #[arg(long)]
        samples: Option<PathBuf>,
        #[arg(long)]
        restarts: Option<u32>,
        #[arg(long)]
        table: Option<PathBuf>,
        /// No write may be acknowledged between the first fault mark (plus
        /// a second for replies on their way) and the heal.
        #[arg(long)]
        no_acks_during_fault: bool,
    },
    /// Prints the table file as Markdown.
    Table { table: PathBuf },
    /// Prints the query of a snapshot file: solicitudes, prestamos or copies.
    Sql { file: String },
    /// Prints valid ISBNs of the test catalogue, one a line.
    Isbns {
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            config,
            prefix,
            clients,
            seconds,
            seed,
            isbns,
            marks,
            out,
        } => {
            let cfg: ClientConfig = config::load(Some(&config))?;
            let seed = seed.unwrap_or_else(biblioteca_history::now_ms);
            eprintln!("history: {prefix}: seed {seed}, {clients} clients, {seconds} s");
            let plan = Plan {
                endpoints: cfg.endpoints,
                curve: cfg.curve,
                prefix,
                isbns,
                seed,
                budgets: vec![workload::PATIENT, workload::IMPATIENT],
            };
            let run = Workload::start(&plan, clients)?;
            std::thread::sleep(Duration::from_secs(seconds));
            let history = run.finish();
            let marks: Vec<Mark> = match marks {
                Some(m) if m.exists() => record::read_lines(&m)?,
                _ => Vec::new(),
            };
            eprintln!("history: {} requests, {} marks", history.len(), marks.len());
            record::write_lines(&out, &record::merge(history, marks))?;
        }
        Command::Resolve {
            config,
            history,
            out,
        } => {
            let cfg: ClientConfig = config::load(Some(&config))?;
            let (entries, _) = record::split(record::read_lines::<Record>(&history)?);
            let resolved = resolve::resolve(&cfg.endpoints, cfg.curve, &entries)?;
            record::write_lines(&out, &resolved)?;
        }
        Command::Check {
            name,
            prefix,
            history,
            resolved,
            final_,
            old,
            initial,
            samples,
            restarts,
            table,
            no_acks_during_fault,
        } => {
            let (entries, marks) = record::split(record::read_lines::<Record>(&history)?);
            let resolved: Vec<Resolution> = record::read_lines(&resolved)?;
            if resolved.len() != entries.len() {
                bail!(
                    "{} resolutions for {} requests",
                    resolved.len(),
                    entries.len()
                );
            }
            let node = Snapshot::load(&final_)?;
            let old = old
                .iter()
                .map(|o| {
                    let (n, dir) = o.split_once('=').context("--old NAME=DIR")?;
                    Ok((n.to_string(), Snapshot::load(Path::new(dir))?))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let initial: HashMap<String, i64> =
                snapshot::parse_copies(&std::fs::read_to_string(&initial)?)?;
            let samples: Vec<Sample> = match samples {
                Some(s) => record::read_lines(&s)?,
                None => Vec::new(),
            };
            let mut violations =
                checker::check(&node, &old, &prefix, &entries, &resolved, &initial);
            let p = scenario::primaries(&samples);
            if p.most_accepting > 1 {
                violations.push(Violation {
                    kind: Kind::Other,
                    text: format!(
                        "{} primaries with a synchronous standby in one sampling round",
                        p.most_accepting
                    ),
                });
            }
            if no_acks_during_fault {
                violations.extend(
                    scenario::acked_during_fault(&entries, &marks, 1000)
                        .into_iter()
                        .map(|text| Violation {
                            kind: Kind::Other,
                            text,
                        }),
                );
            }
            let row = Row::new(
                &name,
                &entries,
                &resolved,
                &marks,
                &violations,
                &samples,
                restarts,
            );
            for v in violations.iter().take(40) {
                eprintln!("{name}: VIOLATION {v}");
            }
            print!("{}", scenario::render(std::slice::from_ref(&row)));
            if let Some(t) = table {
                let mut rows: Vec<Row> = if t.exists() {
                    record::read_lines(&t)?
                } else {
                    Vec::new()
                };
                rows.push(row);
                record::write_lines(&t, &rows)?;
            }
            if !violations.is_empty() {
                std::process::exit(1);
            }
        }
        Command::Table { table } => {
            let rows: Vec<Row> = record::read_lines(&table)?;
            print!("{}", scenario::render(&rows));
        }
        Command::Isbns { count, from } => {
            for i in from..from + count {
                println!("{}", catalogue::isbn(i));
            }
        }
        Command::Sql { file } => match snapshot::FILES.iter().find(|(f, _)| *f == file) {
            Some((_, q)) => println!("{q}"),
            None => bail!("no snapshot file {file}: solicitudes, prestamos or copies"),
        },
    }
    Ok(())
}

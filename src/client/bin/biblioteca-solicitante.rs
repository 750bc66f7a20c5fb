//! `biblioteca-solicitante`: sends requests to the load manager and prints the replies.
//!
//! Exit status: 0 when the request succeeded, 1 when it was answered with
//! `exito: false`, 2 when its outcome is unknown or the client failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};

use biblioteca_client::load::spec::{self, Mix, ThinkTime};
use biblioteca_client::load::{self, chart, csv, LoadOptions, LoadReport, Progress};
use biblioteca_client::request_file::{self, Event};
use biblioteca_client::status::{self, Service};
use biblioteca_client::{render, Client, ClientError};
use biblioteca_protocol::config::{self, ClientConfig, Validate};
use biblioteca_protocol::{Operacion, Peticion, Respuesta};
use biblioteca_runtime::logging;
use biblioteca_runtime::security::ClientCurve;

const DEFAULT_STORAGE: &str = "tcp://127.0.0.1:5570";
/// `status` waits at most this long per service unless `--timeout` says otherwise.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "biblioteca-solicitante",
    version,
    about = "Send loan requests to the biblioteca load manager and print the replies",
    long_about = "Send loan requests to the biblioteca load manager and print the replies.\n\n\
        Requests are retried (Lazy Pirate: reply deadline, fresh socket, same request id, next \
        endpoint), so a retried write is applied at most once.\n\n\
        Exit status: 0 success, 1 answered with exito:false, 2 outcome unknown or client error."
)]
struct Cli {
    /// Load-manager endpoint (repeat for several; tried in order when one does not answer).
    #[arg(long = "endpoint", value_name = "EP", global = true)]
    endpoints: Vec<String>,
    /// TOML configuration (endpoints, timeout, retries); flags override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Per-try reply deadline, e.g. 6s or 1500ms.
    #[arg(long, value_name = "DURATION", global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Tries per request (the same request id each time).
    #[arg(long, value_name = "N", global = true)]
    retries: Option<u32>,
    /// Print replies (and summaries) as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// CURVE: this client's secret key file (from `biblioteca-claves generar`);
    /// needs --carga-key. Overrides `[curve]` of the configuration.
    #[arg(long, value_name = "PATH", global = true, requires = "carga_key")]
    secret_key_file: Option<PathBuf>,
    /// CURVE: the load manager's public key (a .key file or the Z85 key).
    #[arg(long, value_name = "KEY", global = true, requires = "secret_key_file")]
    carga_key: Option<String>,
    /// CURVE: the storage manager's public key, for `status` and
    /// `resultado --storage` (this client's key must be on its allow list).
    #[arg(long, value_name = "KEY", global = true, requires = "carga_key")]
    storage_key: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug)]
struct Write {
    /// The book's ISBN (10 or 13 digits, optionally hyphenated).
    isbn: String,
    /// Who borrows (letters, digits, `_ - . @`).
    usuario: String,
    /// Request id (default: a fresh `s-<16 hex>`); reuse one to retry safely by hand.
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Borrow a copy of a book.
    Prestamo(Write),
    /// Return a borrowed book.
    Devolucion(Write),
    /// Renew a loan (at most twice).
    Renovacion(Write),
    /// Show a book's availability (and the user's loan, when USUARIO is given).
    Consulta {
        /// The book's ISBN.
        isbn: String,
        /// Also show this user's loan of the book.
        usuario: Option<String>,
        /// Request id (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
    },
    /// Look up the stored outcome of a request by its id (through the load
    /// manager, or straight from the storage manager with --storage).
    #[command(name = "resultado")]
    Lookup {
        /// The request id (as printed by a request or its error).
        id: String,
        /// Ask this storage-manager endpoint instead (with CURVE on, needs
        /// --storage-key and this client's key on its allow list).
        #[arg(long, value_name = "EP")]
        storage: Option<String>,
    },
    /// Send a file of requests: `OPERACION ISBN USUARIO` per line (# comments;
    /// PRES, DEVO, RENO, CONS short forms), then print a summary.
    #[command(name = "archivo")]
    File {
        /// The request file.
        file: PathBuf,
    },
    /// Generate load: concurrent virtual clients with coherent per-user
    /// sequences; prints a latency/throughput report per operation.
    #[command(name = "carga")]
    Load(LoadArgs),
    /// Show the health of the load manager(s) and the storage manager in one table.
    Status {
        /// Storage-manager endpoint.
        #[arg(long, value_name = "EP", default_value = DEFAULT_STORAGE)]
        storage: String,
    },
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Concurrent virtual clients (each has one REQ socket: one request in flight).
    #[arg(long = "clientes", value_name = "N", default_value_t = 4)]
    clients: usize,
    /// Run this long, e.g. 30s, 2m (default 1m unless --peticiones is given).
    #[arg(long = "duracion", value_name = "D", value_parser = spec::duration)]
    duration: Option<Duration>,
    /// Stop after this many requests in total.
    #[arg(long = "peticiones", value_name = "N")]
    requests: Option<u64>,
    /// Closed loop: think time between a reply and the next request, e.g. 0.5s..2s.
    #[arg(long = "espera", value_name = "MIN..MAX", value_parser = spec::think)]
    think: Option<ThinkTime>,
    /// Open loop: total request rate across clients, e.g. 500/s (latency counts from the scheduled send time).
    #[arg(long = "tasa", value_name = "R/s", value_parser = spec::rate, conflicts_with = "think")]
    rate: Option<f64>,
    /// Operation mix by weight.
    #[arg(long = "mezcla", value_name = "OP=W,..", value_parser = Mix::parse,
          default_value = "prestamo=40,devolucion=40,renovacion=20")]
    mix: Mix,
    /// Catalogue size, as seeded by `biblioteca-almacenamiento seed --libros N`
    /// (default: the guide's four books).
    #[arg(long = "libros", value_name = "N")]
    books: Option<u64>,
    /// Virtual users per virtual client.
    #[arg(long = "usuarios", value_name = "N", default_value_t = 4)]
    users: usize,
    /// Write Locust-style PREFIX_stats.csv and PREFIX_stats_history.csv.
    #[arg(long, value_name = "PREFIX")]
    csv: Option<PathBuf>,
    /// Draw throughput and latency percentiles over time into FILE.svg or FILE.png
    /// (the extension picks the format).
    #[arg(long = "grafico", value_name = "FILE.svg|FILE.png")]
    chart: Option<PathBuf>,
    /// Run 4, 6 and 10 clients for 2 minutes each (--duracion shortens) and print one table;
    /// with --grafico, one chart of the three steps (FILE) and one per step (FILE_4c...).
    #[arg(long = "experimento")]
    experiment: bool,
    /// Seed of the request sequences (default: random).
    #[arg(long = "semilla", value_name = "N")]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    logging::init_terminal("biblioteca-solicitante");
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn client_config(cli: &Cli) -> anyhow::Result<ClientConfig> {
    let mut cfg: ClientConfig = config::load(cli.config.as_deref())?;
    if !cli.endpoints.is_empty() {
        cfg.endpoints = cli.endpoints.clone();
    }
    if let Some(t) = cli.timeout {
        cfg.timeout = t;
    }
    if let Some(r) = cli.retries {
        cfg.retries = r;
    }
    if let (Some(secret_key_file), Some(carga_key)) = (&cli.secret_key_file, &cli.carga_key) {
        cfg.curve = Some(ClientCurve {
            secret_key_file: secret_key_file.clone(),
            carga_key: carga_key.clone(),
            storage_key: cli.storage_key.clone(),
        });
    }
    cfg.validate()?;
    biblioteca_runtime::security::check(cfg.curve.as_ref())?;
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = client_config(&cli)?;
    if cli.check_config {
        println!("configuration ok: {}", serde_json::to_string(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(command) = &cli.command else {
        anyhow::bail!("no command given; see --help");
    };
    let request = |operacion, isbn: &str, usuario: &str, id: &Option<String>| Peticion {
        operacion,
        isbn: isbn.to_string(),
        usuario: usuario.to_string(),
        id: id.clone(),
    };
    match command {
        Command::Prestamo(w) => single(
            &cli,
            cfg,
            request(Operacion::Prestamo, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Devolucion(w) => single(
            &cli,
            cfg,
            request(Operacion::Devolucion, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Renovacion(w) => single(
            &cli,
            cfg,
            request(Operacion::Renovacion, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Consulta { isbn, usuario, id } => single(
            &cli,
            cfg,
            request(
                Operacion::Consulta,
                isbn,
                usuario.as_deref().unwrap_or_default(),
                id,
            ),
        ),
        Command::Lookup { id, storage } => lookup(&cli, cfg, id, storage.as_deref()),
        Command::File { file } => file_run(&cli, cfg, file),
        Command::Status { storage } => status_table(&cli, &cfg, storage),
        Command::Load(args) => load_run(&cli, cfg, args),
    }
}

/// Exit status for one reply.
fn exit_for(r: &Respuesta) -> ExitCode {
    if r.exito {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_reply(cli: &Cli, r: &Respuesta) -> anyhow::Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{}", render::line(r));
    }
    Ok(())
}

fn report(cli: &Cli, result: Result<Respuesta, ClientError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(r) => {
            print_reply(cli, &r)?;
            Ok(exit_for(&r))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn single(cli: &Cli, cfg: ClientConfig, p: Peticion) -> anyhow::Result<ExitCode> {
    let mut client = Client::new(cfg)?;
    report(cli, client.request(&p))
}

fn lookup(
    cli: &Cli,
    mut cfg: ClientConfig,
    id: &str,
    storage: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut client = match storage {
        None => Client::new(cfg)?,
        Some(ep) => {
            cfg.endpoints = vec![ep.to_string()];
            Client::new(cfg)?.towards_storage()?
        }
    };
    let frame = serde_json::to_vec(&serde_json::json!({"operacion": "resultado", "id": id}))?;
    report(cli, client.raw(&frame))
}

fn file_run(cli: &Cli, cfg: ClientConfig, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let lines = request_file::parse(&text);
    let mut client = Client::new(cfg)?;
    let json = cli.json;
    let mut balance = request_file::send(&mut client, &lines, |event| match event {
        Event::Reply {
            line,
            reply,
            latency,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"line": line.number, "latency_ms": ms(latency), "respuesta": reply})
                );
            } else {
                println!(
                    "line {:>4} {:>8.1} ms  {}",
                    line.number,
                    ms(latency),
                    render::line(reply)
                );
            }
        }
        Event::Failure { line, error } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"line": line.number, "error": error.to_string(), "id": error.request_id()})
                );
            } else {
                println!("line {:>4}              ? {}", line.number, error);
            }
        }
        Event::Invalid(bad) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"line": bad.number, "invalid": bad.reason})
                );
            } else {
                println!(
                    "line {:>4}              ✗ malformed: {}",
                    bad.number, bad.reason
                );
            }
        }
    });
    if json {
        println!("{}", serde_json::to_string(&balance.to_json())?);
    } else {
        println!("{}", balance.text());
    }
    let unknown = balance.errors.contains_key(request_file::NO_REPLY);
    Ok(if unknown {
        ExitCode::from(2)
    } else if balance.total_errors() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_table(cli: &Cli, cfg: &ClientConfig, storage: &str) -> anyhow::Result<ExitCode> {
    let timeout = cli.timeout.unwrap_or(cfg.timeout.min(STATUS_TIMEOUT));
    let mut services: Vec<Service> = cfg
        .endpoints
        .iter()
        .map(|ep| Service {
            name: "carga".into(),
            endpoint: ep.clone(),
        })
        .collect();
    services.push(Service {
        name: status::ALMACENAMIENTO.into(),
        endpoint: storage.to_string(),
    });
    let started = Instant::now();
    let rows = status::query_with(&zmq::Context::new(), &services, timeout, cfg.curve.as_ref());
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "status collected"
    );
    if cli.json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!("{}", status::table(&rows));
    }
    Ok(if rows.iter().all(|f| f.up) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn load_run(cli: &Cli, cfg: ClientConfig, a: &LoadArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // A second signal while stopping kills the process as usual.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let seed = match a.seed {
        Some(s) => s,
        None => {
            let id = biblioteca_client::new_request_id();
            u64::from_str_radix(id.trim_start_matches("s-"), 16)?
        }
    };
    let base = LoadOptions {
        client: cfg,
        clients: a.clients,
        duration: match (a.duration, a.requests) {
            (None, None) => Some(Duration::from_secs(60)),
            (d, _) => d,
        },
        requests: a.requests,
        think: a.think,
        rate: a.rate,
        mix: a.mix.clone(),
        catalogue: spec::catalogue(a.books),
        users: a.users,
        prefix: load::fresh_prefix(),
        seed,
    };
    let ctx = zmq::Context::new();
    if !a.experiment {
        let report = one_load(&base, &ctx, &stop)?;
        outputs(cli, a, &report, "")?;
        if !cli.json {
            println!("{}", report.text());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut reports = Vec::new();
    for n in load::EXPERIMENT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let opts = LoadOptions {
            clients: n,
            duration: Some(a.duration.unwrap_or(load::EXPERIMENT_DURATION)),
            prefix: format!("{}-n{n}", base.prefix),
            ..base.clone()
        };
        eprintln!("experiment: {n} clients");
        let report = one_load(&opts, &ctx, &stop)?;
        outputs(cli, a, &report, &format!("_{n}c"))?;
        reports.push(report);
    }
    if let Some(file) = &a.chart {
        chart::draw_experiment(&reports, file)?;
        eprintln!("wrote {}", file.display());
    }
    if cli.json {
        println!("{}", serde_json::json!({ "experimento": reports }));
    } else {
        println!("{}", load::experiment_table(&reports));
    }
    Ok(ExitCode::SUCCESS)
}

fn one_load(
    opts: &LoadOptions,
    ctx: &zmq::Context,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<LoadReport> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("{} clients starting", opts.clients));
    let report = load::run(opts, ctx, stop, |a: &Progress| {
        bar.set_message(a.to_string());
        bar.tick();
    });
    bar.finish_and_clear();
    Ok(report?)
}

/// CSV files and the chart of one run (`suffix` tells experiment steps apart).
fn outputs(cli: &Cli, a: &LoadArgs, report: &LoadReport, suffix: &str) -> anyhow::Result<()> {
    if let Some(prefix) = &a.csv {
        let mut p = prefix.as_os_str().to_os_string();
        p.push(suffix);
        let (s, h) = csv::write(report, &PathBuf::from(p))?;
        eprintln!("wrote {} and {}", s.display(), h.display());
    }
    if let Some(file) = &a.chart {
        let path = if suffix.is_empty() {
            file.clone()
        } else {
            let stem = file.file_stem().unwrap_or_default().to_string_lossy();
            let ext = file.extension().unwrap_or_default().to_string_lossy();
            file.with_file_name(format!("{stem}{suffix}.{ext}"))
        };
        chart::draw(report, &path)?;
        eprintln!("wrote {}", path.display());
    }
    if cli.json && suffix.is_empty() {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

//! `biblioteca-solicitante`: sends requests to the load manager and prints the replies.
//!
//! Exit status: 0 when the request succeeded, 1 when it was answered with
//! `exito: false`, 2 when its outcome is unknown or the client failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use biblioteca::client::archivo::{self, Evento};
use biblioteca::client::status::{self, Servicio};
use biblioteca::client::{render, Client, ClientError};
use biblioteca::config::{self, ClientConfig, Validate};
use biblioteca::logging;
use biblioteca::protocol::{Operacion, Peticion, Respuesta};

const DEFAULT_STORAGE: &str = "tcp://127.0.0.1:5570";
/// `status` waits at most this long per service unless `--timeout-ms` says otherwise.
const STATUS_TIMEOUT_MS: u64 = 2000;

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
    /// TOML configuration (endpoints, timeout_ms, retries); flags override it.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Per-try reply deadline in milliseconds.
    #[arg(long, value_name = "N", global = true)]
    timeout_ms: Option<u64>,
    /// Tries per request (the same request id each time).
    #[arg(long, value_name = "N", global = true)]
    retries: Option<u32>,
    /// Print replies (and summaries) as JSON.
    #[arg(long, global = true)]
    json: bool,
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
    /// Look up the stored outcome of a request by its id (asks the storage manager).
    Resultado {
        /// The request id (as printed by a request or its error).
        id: String,
        /// Storage-manager endpoint.
        #[arg(long, value_name = "EP", default_value = DEFAULT_STORAGE)]
        storage: String,
    },
    /// Send a file of requests: `OPERACION ISBN USUARIO` per line (# comments;
    /// PRES, DEVO, RENO, CONS short forms), then print a summary.
    Archivo {
        /// The request file.
        file: PathBuf,
    },
    /// Show the health of the load manager(s) and the storage manager in one table.
    Status {
        /// Storage-manager endpoint.
        #[arg(long, value_name = "EP", default_value = DEFAULT_STORAGE)]
        storage: String,
    },
}

fn main() -> ExitCode {
    logging::init("biblioteca-solicitante");
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
    if let Some(t) = cli.timeout_ms {
        cfg.timeout_ms = t;
    }
    if let Some(r) = cli.retries {
        cfg.retries = r;
    }
    cfg.validate()?;
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
    let peticion = |operacion, isbn: &str, usuario: &str, id: &Option<String>| Peticion {
        operacion,
        isbn: isbn.to_string(),
        usuario: usuario.to_string(),
        id: id.clone(),
    };
    match command {
        Command::Prestamo(w) => single(
            &cli,
            cfg,
            peticion(Operacion::Prestamo, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Devolucion(w) => single(
            &cli,
            cfg,
            peticion(Operacion::Devolucion, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Renovacion(w) => single(
            &cli,
            cfg,
            peticion(Operacion::Renovacion, &w.isbn, &w.usuario, &w.id),
        ),
        Command::Consulta { isbn, usuario, id } => single(
            &cli,
            cfg,
            peticion(
                Operacion::Consulta,
                isbn,
                usuario.as_deref().unwrap_or_default(),
                id,
            ),
        ),
        Command::Resultado { id, storage } => resultado(&cli, cfg, id, storage),
        Command::Archivo { file } => file_run(&cli, cfg, file),
        Command::Status { storage } => status_table(&cli, &cfg, storage),
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
        println!("{}", render::linea(r));
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

fn resultado(
    cli: &Cli,
    mut cfg: ClientConfig,
    id: &str,
    storage: &str,
) -> anyhow::Result<ExitCode> {
    cfg.endpoints = vec![storage.to_string()];
    let mut client = Client::new(cfg)?;
    let frame = serde_json::to_vec(&serde_json::json!({"operacion": "resultado", "id": id}))?;
    report(cli, client.raw(&frame))
}

fn file_run(cli: &Cli, cfg: ClientConfig, file: &PathBuf) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let lineas = archivo::parse(&text);
    let mut client = Client::new(cfg)?;
    let json = cli.json;
    let mut balance = archivo::enviar(&mut client, &lineas, |evento| match evento {
        Evento::Respuesta {
            linea,
            respuesta,
            latencia,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"linea": linea.numero, "latencia_ms": ms(latencia), "respuesta": respuesta})
                );
            } else {
                println!(
                    "line {:>4} {:>8.1} ms  {}",
                    linea.numero,
                    ms(latencia),
                    render::linea(respuesta)
                );
            }
        }
        Evento::Fallo { linea, error } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"linea": linea.numero, "error": error.to_string(), "id": error.request_id()})
                );
            } else {
                println!("line {:>4}              ? {}", linea.numero, error);
            }
        }
        Evento::Invalida(bad) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"linea": bad.numero, "invalida": bad.motivo})
                );
            } else {
                println!(
                    "line {:>4}              ✗ malformed: {}",
                    bad.numero, bad.motivo
                );
            }
        }
    });
    if json {
        println!("{}", serde_json::to_string(&balance.to_json())?);
    } else {
        println!("{}", balance.texto());
    }
    let unknown = balance.errores.contains_key(archivo::SIN_RESPUESTA);
    Ok(if unknown {
        ExitCode::from(2)
    } else if balance.total_errores() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_table(cli: &Cli, cfg: &ClientConfig, storage: &str) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_millis(
        cli.timeout_ms
            .unwrap_or(cfg.timeout_ms.min(STATUS_TIMEOUT_MS)),
    );
    let mut servicios: Vec<Servicio> = cfg
        .endpoints
        .iter()
        .map(|ep| Servicio {
            nombre: "carga".into(),
            endpoint: ep.clone(),
        })
        .collect();
    servicios.push(Servicio {
        nombre: "almacenamiento".into(),
        endpoint: storage.to_string(),
    });
    let started = Instant::now();
    let filas = status::consultar(&zmq::Context::new(), &servicios, timeout);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "status collected"
    );
    if cli.json {
        println!("{}", serde_json::to_string(&filas)?);
    } else {
        println!("{}", status::tabla(&filas));
    }
    Ok(if filas.iter().all(|f| f.up) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

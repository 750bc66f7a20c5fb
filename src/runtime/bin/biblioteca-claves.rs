//! `biblioteca-claves`: CURVE key pairs for the services and clients.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use biblioteca_runtime::logging;
use biblioteca_runtime::security::keys::{self, KeyPair};

/// Creates and inspects the CURVE key pairs (ZeroMQ Z85 format) that the
/// `[curve]` sections of the biblioteca configurations name.
#[derive(Debug, Parser)]
#[command(name = "biblioteca-claves", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes DIR/NAME.key (the public key) and DIR/NAME.key_secret (both
    /// keys, mode 0600), then prints the public key.
    Generar {
        /// Name of the pair, e.g. carga, almacenamiento, actor-prestamo, cliente-ana.
        name: String,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Replace an existing pair of that name.
        #[arg(long)]
        force: bool,
    },
    /// Prints the public key of a key file (public or secret).
    Publica {
        /// A NAME.key or NAME.key_secret file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    logging::init_terminal("biblioteca-claves");
    match Cli::parse().command {
        Command::Generar { name, dir, force } => {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
                && !name.starts_with('.');
            anyhow::ensure!(
                valid,
                "NAME may hold letters, digits and - _ . @ (and not start with a dot)"
            );
            let pair = KeyPair::generate()?;
            let (public, secret) = pair.save(&dir, &name, force).with_context(|| {
                format!("cannot write the key pair {name} (use --force to replace it)")
            })?;
            eprintln!(
                "wrote {} and {} (keep the latter private)",
                public.display(),
                secret.display()
            );
            println!("{}", pair.public);
        }
        Command::Publica { file } => println!("{}", keys::load_public(&file)?),
    }
    Ok(())
}

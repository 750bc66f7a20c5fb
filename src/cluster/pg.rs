//! Running PostgreSQL's programs: finding the bin directory, dropping to the
//! `postgres` user when we are root (the server refuses to run as root), and
//! turning a failed command into a [`ClusterError`] that names the command and
//! carries its stderr.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::ClusterError;

const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Where PostgreSQL's binaries are and as whom they run.
#[derive(Debug, Clone)]
pub struct PgBin {
    /// Directory holding `initdb`, `pg_ctl`, `psql`, ...
    pub bin_dir: PathBuf,
    /// Set when we are root: every program runs as this user via `runuser`.
    pub run_as: Option<PgUser>,
}

/// The unprivileged account PostgreSQL runs as when we are root.
#[derive(Debug, Clone)]
pub struct PgUser {
    pub name: String,
    pub uid: nix::unistd::Uid,
    pub gid: nix::unistd::Gid,
}

impl PgBin {
    /// `PG_BIN`, else the Debian PostgreSQL 15 directory, else `pg_config --bindir`;
    /// as root, also looks up the `postgres` account.
    pub fn detect() -> Result<PgBin, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(ClusterError::NoPostgresUser)?;
            Some(PgUser {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };
        Ok(PgBin { bin_dir, run_as })
    }

    /// A command for PostgreSQL program `bin`, wrapped in `runuser` when root.
    /// It runs in `cwd` so `postgres` never starts in a directory it cannot read.
    pub fn command(&self, bin: &str, cwd: &Path) -> Command {
        let program = self.bin_dir.join(bin);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(&user.name).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(cwd).stdin(Stdio::null());
        // A cluster secured by `Cluster::require_passwords` keeps its
        // credentials there; its programs authenticate from it.
        let pgpass = cwd.join(super::auth::PGPASS);
        if pgpass.is_file() {
            cmd.env("PGPASSFILE", pgpass);
        }
        cmd
    }

    /// Runs `bin args..` to completion; a non-zero exit is an error carrying stderr.
    pub fn run<I, S>(&self, bin: &str, args: I, cwd: &Path) -> Result<Output, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(bin, cwd);
        cmd.args(args);
        run_command(&mut cmd)
    }

    /// Creates `dir` (and parents) and, when root, hands it to the PostgreSQL user.
    pub fn make_dir(&self, dir: &Path) -> Result<(), ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        self.give(dir)
    }

    /// Hands an existing file or directory to the PostgreSQL user (no-op unless root).
    pub fn give(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some(user) = &self.run_as {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
                ClusterError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::from(e),
                }
            })?;
        }
        Ok(())
    }
}

fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.join("pg_ctl").exists() {
            Ok(dir)
        } else {
            Err(ClusterError::NoBinaries(format!(
                "PG_BIN={} has no pg_ctl",
                dir.display()
            )))
        };
    }
    let debian = PathBuf::from(DEBIAN_BIN);
    if debian.join("pg_ctl").exists() {
        return Ok(debian);
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            ClusterError::NoBinaries(format!(
                "no PG_BIN, no {DEBIAN_BIN} and pg_config failed: {e}"
            ))
        })?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && dir.join("pg_ctl").exists() {
        Ok(dir)
    } else {
        Err(ClusterError::NoBinaries(format!(
            "no PG_BIN, no {DEBIAN_BIN}, and pg_config --bindir gave {:?} without pg_ctl",
            dir
        )))
    }
}

/// Runs a prepared command; a non-zero exit becomes [`ClusterError::Command`].
pub fn run_command(cmd: &mut Command) -> Result<Output, ClusterError> {
    let shown = describe(cmd);
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ClusterError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(ClusterError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr,
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The `synchronous_standby_names` value making commits wait for `quorum`
/// of `names`: `""` for none, `"a"` for one (PostgreSQL reports it `sync`),
/// `ANY k ("a", "b", ...)` for several (reported `quorum`).
pub fn synchronous_standby_names(names: &[&str], quorum: usize) -> String {
    let quoted = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    match names {
        [] => String::new(),
        [one] => quoted(one),
        many => format!(
            "ANY {} ({})",
            quorum.clamp(1, many.len()),
            many.iter()
                .map(|n| quoted(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_standby_names_by_count() {
        assert_eq!(synchronous_standby_names(&[], 1), "");
        assert_eq!(synchronous_standby_names(&["standby"], 1), "\"standby\"");
        assert_eq!(
            synchronous_standby_names(&["s1", "s2", "s3"], 2),
            "ANY 2 (\"s1\", \"s2\", \"s3\")"
        );
        assert_eq!(
            synchronous_standby_names(&["s1", "s2"], 5),
            "ANY 2 (\"s1\", \"s2\")"
        );
    }
}

//! Running PostgreSQL's programs: finding the bin directory, dropping to the
//! `postgres` user when we are root (the server refuses to run as root), and
//! turning a failed command into a [`ClusterError`] that names the command and
//! carries its stderr. Every command has a deadline ([`run_command`]): one
//! that overruns is killed with its process group and the error names it.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    let out = run_within(
        Command::new("pg_config").arg("--bindir"),
        Duration::from_secs(30),
    )
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

/// Copying a whole data directory may take long on a big database; every
/// other step (pg_ctl, psql, systemctl, a configured shell command) is quick
/// or hung.
const COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `cmd` may run: [`COPY_TIMEOUT`] for pg_basebackup and
/// pg_rewind, [`STEP_TIMEOUT`] for anything else.
pub fn timeout_for(cmd: &Command) -> Duration {
    let copies = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .any(|a| {
            let a = a.to_string_lossy();
            a.ends_with("pg_basebackup") || a.ends_with("pg_rewind")
        });
    if copies {
        COPY_TIMEOUT
    } else {
        STEP_TIMEOUT
    }
}

/// Runs a prepared command within [`timeout_for`] it; a non-zero exit
/// becomes [`ClusterError::Command`], an overrun [`ClusterError::Timeout`].
pub fn run_command(cmd: &mut Command) -> Result<Output, ClusterError> {
    let timeout = timeout_for(cmd);
    run_within(cmd, timeout)
}

/// Reads a child's pipe on its own thread, so a chatty child never blocks.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// [`run_command`] with an explicit deadline. The command runs in its own
/// process group, so on a timeout everything it started is killed with it.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Result<Output, ClusterError> {
    let shown = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ClusterError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let until = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                kill_group(&mut child);
                return Err(ClusterError::Timeout {
                    what: format!("`{shown}` (killed)"),
                    secs: timeout.as_secs(),
                });
            }
            Err(source) => {
                kill_group(&mut child);
                return Err(ClusterError::Spawn {
                    command: shown,
                    source,
                });
            }
        }
    };
    // A daemon the command left behind may hold its pipes: wait briefly.
    let grace = Duration::from_secs(2);
    let out = Output {
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    };
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

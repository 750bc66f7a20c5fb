//! What the failover tool does to the files and processes of a node this
//! host manages: start, stop, `pg_rewind`, `pg_basebackup`, reading
//! `pg_controldata`, and writing the settings that make it a standby.
//!
//! Programs run through [`biblioteca_cluster`]'s [`PgBin`] (as `postgres` when we
//! are root) and a node's start/stop through its [`Node`], unless the config
//! gives `start`/`stop` commands, which run under `sh -c`. `pg_rewind` and
//! `pg_basebackup` overwrite the target's configuration files with the
//! source's (port, included files, synchronous list), so [`save_conf`] keeps
//! the target's own and [`restore_conf`] puts them back before
//! [`configure_standby`] adds what a standby needs.
//!
//! A source node with a `password_file` reaches those programs through a
//! pgpass file (mode 0600, readable by the PostgreSQL user): a temporary one
//! named by `PGPASSFILE` for `pg_rewind` and `pg_basebackup`, removed after
//! the run; a lasting `<data_dir>.pgpass` named by `passfile=` in a rejoined
//! standby's `primary_conninfo`. The password is never on a command line, in
//! a configuration file the server logs, or in our output.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::pg::Lsn;
use super::{FailoverConfig, FailoverError, FailoverNode, Result};
use biblioteca_cluster::{pg::run_command, Node, PgBin, StopMode};

/// PostgreSQL programs and how to run them on this host.
#[derive(Debug, Clone)]
pub struct Local {
    pub pg: PgBin,
}

/// The configuration files of a data directory, as they were.
#[derive(Debug, Clone)]
pub struct SavedConf(Vec<(PathBuf, Vec<u8>)>);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FailoverError + '_ {
    move |e| FailoverError::Command {
        command: format!("access {}", path.display()),
        reason: e.to_string(),
    }
}

/// The TCP port in a conninfo (5432 when absent).
pub fn port_of(conninfo: &str) -> u16 {
    conninfo
        .parse::<postgres::Config>()
        .ok()
        .and_then(|c| c.get_ports().first().copied())
        .unwrap_or(5432)
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A pgpass line giving `password` to any server, database and user: the
/// file serves exactly one source.
fn pgpass_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

/// A conninfo value: single-quoted, with `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A private pgpass file for one program run; removed on drop.
struct TempPgpass {
    dir: PathBuf,
    file: PathBuf,
}

impl Drop for TempPgpass {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Local {
    pub fn new(cfg: &FailoverConfig) -> Result<Local> {
        let mut pg = PgBin::detect()?;
        if let Some(dir) = &cfg.pg_bin {
            pg.bin_dir = dir.clone();
        }
        Ok(Local { pg })
    }

    fn data_dir<'a>(&self, n: &'a FailoverNode) -> Result<&'a Path> {
        n.data_dir.as_deref().ok_or_else(|| {
            FailoverError::stuck(
                format!("node {} has no data_dir in the failover config", n.name),
                "this host does not manage its files",
                format!(
                    "run this command on {}'s host, or set data_dir for it",
                    n.name
                ),
            )
        })
    }

    /// The cluster library's view of a managed node.
    pub fn node(&self, n: &FailoverNode) -> Result<Node> {
        let data_dir = self.data_dir(n)?.to_path_buf();
        let base_dir = data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let dir_name = data_dir
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| n.name.clone());
        Ok(Node {
            name: n.name.clone(),
            port: port_of(&n.conninfo),
            log_file: n
                .log_file
                .clone()
                .unwrap_or_else(|| base_dir.join(format!("{dir_name}.log"))),
            socket_dir: base_dir.clone(),
            base_dir,
            data_dir,
            pg: self.pg.clone(),
        })
    }

    /// Writes `path` as a pgpass file for `source`'s password (if it has
    /// one), owned by the PostgreSQL user; whether it did.
    fn write_pgpass(&self, path: &Path, source: &FailoverNode) -> Result<bool> {
        let Some(password) = source.password()? else {
            return Ok(false);
        };
        biblioteca_runtime::security::secrets::write_private(path, &pgpass_line(&password))
            .map_err(|e| FailoverError::Command {
                command: format!("write {}", path.display()),
                reason: e.to_string(),
            })?;
        self.pg.give(path)?;
        Ok(true)
    }

    /// A temporary pgpass for a program connecting to `source`; `None` when
    /// `source` has no `password_file`.
    fn temp_pgpass(&self, source: &FailoverNode) -> Result<Option<TempPgpass>> {
        if source.password_file.is_none() {
            return Ok(None);
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("biblioteca-failover-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
        }
        let temp = TempPgpass {
            file: dir.join("pgpass"),
            dir,
        };
        self.pg.give(&temp.dir)?;
        self.write_pgpass(&temp.file, source)?;
        Ok(Some(temp))
    }

    /// Runs PostgreSQL program `bin` on node `node` against `source`, with
    /// `source`'s password in a temporary `PGPASSFILE`.
    fn run_against<I, S>(
        &self,
        bin: &str,
        node: &Node,
        source: &FailoverNode,
        args: I,
    ) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let pgpass = self.temp_pgpass(source)?;
        let mut cmd = self.pg.command(bin, &node.base_dir);
        cmd.args(args);
        if let Some(p) = &pgpass {
            cmd.env("PGPASSFILE", &p.file);
        }
        Ok(run_command(&mut cmd)?)
    }

    fn shell(command: &str) -> Result<()> {
        run_command(Command::new("sh").arg("-c").arg(command))?;
        Ok(())
    }

    /// Whether a postmaster runs for the node's data directory; `None` when
    /// only start/stop commands are configured (then ask the server instead).
    pub fn is_running(&self, n: &FailoverNode) -> Option<bool> {
        self.node(n).ok().map(|node| node.is_running())
    }

    /// Clean shutdown (`pg_ctl stop -m fast`): connected standbys receive all
    /// WAL up to the shutdown checkpoint before the server exits.
    pub fn stop(&self, n: &FailoverNode) -> Result<()> {
        match &n.stop {
            Some(cmd) => Self::shell(cmd),
            None => Ok(self.node(n)?.stop(StopMode::Fast)?),
        }
    }

    pub fn start(&self, n: &FailoverNode) -> Result<()> {
        match &n.start {
            Some(cmd) => Self::shell(cmd),
            None => Ok(self.node(n)?.start()?),
        }
    }

    /// `pg_controldata`: the cluster state and the latest checkpoint's location.
    pub fn control_data(&self, n: &FailoverNode) -> Result<(String, Option<Lsn>)> {
        let node = self.node(n)?;
        let out = self.pg.run(
            "pg_controldata",
            [node.data_dir.as_os_str()],
            &node.base_dir,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let state = field("Database cluster state:").unwrap_or_default();
        let checkpoint = field("Latest checkpoint location:").and_then(|v| v.parse().ok());
        Ok((state, checkpoint))
    }

    /// `pg_rewind` from `source` (a running primary).
    pub fn rewind(&self, n: &FailoverNode, source: &FailoverNode) -> Result<String> {
        let node = self.node(n)?;
        let out = self.run_against(
            "pg_rewind",
            &node,
            source,
            [
                "--target-pgdata".as_ref(),
                node.data_dir.as_os_str(),
                "--source-server".as_ref(),
                source.conninfo.as_ref(),
            ],
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim_start_matches("pg_rewind: "))
            .unwrap_or("done")
            .to_string())
    }

    /// Replaces the node's data with a fresh base backup of `source`.
    pub fn basebackup(&self, n: &FailoverNode, source: &FailoverNode) -> Result<()> {
        let node = self.node(n)?;
        let dir = &node.data_dir;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io(&path))?;
        }
        self.run_against(
            "pg_basebackup",
            &node,
            source,
            [
                "-D".as_ref(),
                dir.as_os_str(),
                "-d".as_ref(),
                source.conninfo.as_ref(),
                "-X".as_ref(),
                "stream".as_ref(),
                "-c".as_ref(),
                "fast".as_ref(),
            ],
        )?;
        Ok(())
    }

    /// Every `*.conf` at the top of the data directory.
    pub fn save_conf(&self, n: &FailoverNode) -> Result<SavedConf> {
        let dir = self.data_dir(n)?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "conf") {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                files.push((path, bytes));
            }
        }
        Ok(SavedConf(files))
    }

    pub fn restore_conf(&self, saved: &SavedConf) -> Result<()> {
        for (path, bytes) in &saved.0 {
            std::fs::write(path, bytes).map_err(io(path))?;
            self.pg.give(path)?;
        }
        Ok(())
    }

    /// Makes the data directory start as a standby of `primary`: its own
    /// port, `primary_conninfo` with `application_name` = the node's name
    /// (and `passfile=<data_dir>.pgpass` when `primary` has a password file),
    /// the slot, no leftover primary-only settings, and `standby.signal`.
    pub fn configure_standby(
        &self,
        n: &FailoverNode,
        primary: &FailoverNode,
        slot: &str,
    ) -> Result<()> {
        let dir = self.data_dir(n)?;
        let auto = dir.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        const REPLACED: [&str; 5] = [
            "port",
            "primary_conninfo",
            "primary_slot_name",
            "synchronous_standby_names",
            "default_transaction_read_only",
        ];
        let mut text: String = old
            .lines()
            .filter(|l| {
                let key = l.split('=').next().unwrap_or_default().trim();
                !REPLACED.contains(&key)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let mut conninfo = format!("{} application_name={}", primary.conninfo, n.name);
        if !conninfo.contains("connect_timeout") {
            conninfo.push_str(&format!(
                " connect_timeout={}",
                super::follow::STANDBY_CONNECT_TIMEOUT
            ));
        }
        let passfile = passfile_of(dir);
        if self.write_pgpass(&passfile, primary)? {
            conninfo.push_str(&format!(
                " passfile={}",
                conninfo_value(&passfile.to_string_lossy())
            ));
        }
        text.push_str(&format!(
            "# written by biblioteca-failover rejoin\nport = {}\nprimary_conninfo = {}\nprimary_slot_name = {}\n",
            port_of(&n.conninfo),
            quote(&conninfo),
            quote(slot)
        ));
        std::fs::write(&auto, text).map_err(io(&auto))?;
        self.pg.give(&auto)?;
        let recovery = dir.join("recovery.signal");
        if recovery.exists() {
            std::fs::remove_file(&recovery).map_err(io(&recovery))?;
        }
        let signal = dir.join("standby.signal");
        std::fs::write(&signal, "").map_err(io(&signal))?;
        self.pg.give(&signal)?;
        Ok(())
    }
}

/// The lasting pgpass file of a standby whose data directory is `dir`:
/// beside it, since `pg_rewind` and `pg_basebackup` rewrite what is inside.
fn passfile_of(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".pgpass");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_quotes() {
        assert_eq!(port_of("host=127.0.0.1 port=26432 user=postgres"), 26432);
        assert_eq!(port_of("host=127.0.0.1"), 5432);
        assert_eq!(quote("a'b"), "'a''b'");
        assert_eq!(pgpass_line("a:b\\c"), "*:*:*:*:a\\:b\\\\c\n");
        assert_eq!(conninfo_value("/x/it's"), "'/x/it\\'s'");
        assert_eq!(
            passfile_of(Path::new("/var/lib/pg/main")),
            PathBuf::from("/var/lib/pg/main.pgpass")
        );
    }

    #[test]
    fn a_rejoined_standby_gets_a_passfile_not_a_password() {
        let dir = std::env::temp_dir().join(format!("fo-local-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("standby");
        std::fs::create_dir_all(&data).unwrap();
        let pw = dir.join("postgres.password");
        std::fs::write(&pw, "s3cr3t:x\n").unwrap();
        let node = |name: &str, password_file: Option<PathBuf>| FailoverNode {
            name: name.into(),
            conninfo: "host=127.0.0.1 port=5999 user=postgres dbname=library".into(),
            password_file,
            data_dir: Some(dir.join(name)),
            start: None,
            stop: None,
            log_file: None,
        };
        let local = Local {
            pg: PgBin {
                bin_dir: PathBuf::from("/nonexistent"),
                run_as: None,
            },
        };
        local
            .configure_standby(
                &node("standby", None),
                &node("primary", Some(pw)),
                "standby",
            )
            .unwrap();
        let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
        assert!(!auto.contains("s3cr3t"), "{auto}");
        assert!(auto.contains("passfile=''"), "{auto}");
        let passfile = passfile_of(&data);
        assert_eq!(
            std::fs::read_to_string(&passfile).unwrap(),
            "*:*:*:*:s3cr3t\\:x\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&passfile).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let temp = local
            .temp_pgpass(&node("primary", Some(dir.join("postgres.password"))))
            .unwrap()
            .unwrap();
        let temp_dir = temp.dir.clone();
        assert!(temp.file.is_file());
        drop(temp);
        assert!(!temp_dir.exists(), "the temporary pgpass outlived its run");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

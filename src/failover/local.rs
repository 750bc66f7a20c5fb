//! What the failover tool does to the files and processes of a node this
//! host manages: start, stop, `pg_rewind`, `pg_basebackup`, reading
//! `pg_controldata`, and writing the settings that make it a standby.
//!
//! Programs run through [`crate::cluster`]'s [`PgBin`] (as `postgres` when we
//! are root) and a node's start/stop through its [`Node`], unless the config
//! gives `start`/`stop` commands, which run under `sh -c`. `pg_rewind` and
//! `pg_basebackup` overwrite the target's configuration files with the
//! source's (port, included files, synchronous list), so [`save_conf`] keeps
//! the target's own and [`restore_conf`] puts them back before
//! [`configure_standby`] adds what a standby needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::pg::Lsn;
use super::{FailoverConfig, FailoverError, FailoverNode, Result};
use crate::cluster::{pg::run_command, Node, PgBin, StopMode};

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
        let out = self.pg.run(
            "pg_rewind",
            [
                "--target-pgdata".as_ref(),
                node.data_dir.as_os_str(),
                "--source-server".as_ref(),
                source.conninfo.as_ref(),
            ],
            &node.base_dir,
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
        self.pg.run(
            "pg_basebackup",
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
            &node.base_dir,
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
    /// port, `primary_conninfo` with `application_name` = the node's name,
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
        let conninfo = format!("{} application_name={}", primary.conninfo, n.name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_quotes() {
        assert_eq!(port_of("host=127.0.0.1 port=26432 user=postgres"), 26432);
        assert_eq!(port_of("host=127.0.0.1"), 5432);
        assert_eq!(quote("a'b"), "'a''b'");
    }
}

//! The degraded-mode record: `state_dir/replicacion.json` on the
//! application host, read at start, changed by the monitor (on disk first:
//! temporary file, fsync, rename, fsync of the directory) and by the
//! workers, which count writes acknowledged while degraded and put the
//! first one on disk before its reply leaves.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use biblioteca_protocol::config::{
    ReplicationMode, ReplicationRecord, ReplicationState, DEGRADAR_FILE, REPLICACION_FILE,
};

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The record, shared by the monitor (which changes state) and the workers
/// (which count writes acknowledged while degraded).
pub struct Replication {
    dir: Option<PathBuf>,
    registro: Mutex<ReplicationRecord>,
}

/// Reads the record from `dir` (a missing file: synchronous).
pub fn load(dir: Option<&Path>) -> ReplicationRecord {
    let Some(path) = dir.map(|d| d.join(REPLICACION_FILE)) else {
        return ReplicationRecord::default();
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::error!(file = %path.display(), error = %e, "unreadable degraded-mode record: treating it as degraded until a standby confirms");
            ReplicationRecord {
                estado: ReplicationState::Degradada,
                motivo: Some("automatica".into()),
                ..ReplicationRecord::default()
            }
        }),
        Err(_) => ReplicationRecord::default(),
    }
}

impl Replication {
    pub fn new(dir: Option<&Path>) -> Replication {
        let registro = load(dir);
        if registro.estado == ReplicationState::Degradada {
            tracing::warn!(
                primario = registro.primario.as_deref().unwrap_or("?"),
                escrituras = registro.escrituras,
                "DEGRADED: synchronous replication was switched off before this start"
            );
        }
        Replication {
            dir: dir.map(Path::to_path_buf),
            registro: Mutex::new(registro),
        }
    }

    pub fn registro(&self) -> ReplicationRecord {
        lock(&self.registro).clone()
    }

    /// Writes the record: temporary file, fsync, rename, fsync the directory.
    fn persist(&self, r: &ReplicationRecord) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(REPLICACION_FILE);
        let tmp = dir.join(format!("{REPLICACION_FILE}.tmp"));
        let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Replaces the record, on disk first.
    pub(super) fn set(&self, r: ReplicationRecord) -> std::io::Result<()> {
        self.update(|old| *old = r)
    }

    /// Changes the record under its lock (workers count writes meanwhile),
    /// on disk first; nothing is written when nothing changed.
    pub(super) fn update(&self, f: impl FnOnce(&mut ReplicationRecord)) -> std::io::Result<()> {
        let mut guard = lock(&self.registro);
        let mut r = guard.clone();
        f(&mut r);
        if r != *guard {
            self.persist(&r)?;
            if r.estado != guard.estado {
                super::metrics::get().replication_changed(r.estado);
            }
            *guard = r;
        }
        Ok(())
    }

    /// Called before a write's success leaves: while degraded, counts it,
    /// and the first one is on disk before anyone hears of it.
    pub fn note_write(&self) {
        let mut guard = lock(&self.registro);
        if guard.estado != ReplicationState::Degradada {
            return;
        }
        guard.escrituras += 1;
        if guard.escrituras == 1 {
            if let Err(e) = self.persist(&guard) {
                tracing::error!(error = %e, "cannot record a write acknowledged in degraded mode");
            }
        }
    }

    /// `datos.replicacion` of the status reply.
    pub fn status(&self, modo: ReplicationMode) -> Value {
        let r = self.registro();
        json!({
            "modo": modo,
            "estado": r.estado,
            "motivo": r.motivo,
            "desde_unix": r.desde_unix,
            "primario": r.primario,
            "standby_lsn": r.standby_lsn,
            "primario_lsn": r.primario_lsn,
            "escrituras_degradadas": r.escrituras,
        })
    }

    pub(super) fn manual_requested(&self) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| d.join(DEGRADAR_FILE).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_degraded_write_is_on_disk() {
        let dir = std::env::temp_dir().join(format!("bib-repl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = Replication::new(Some(&dir));
        r.note_write();
        assert_eq!(load(Some(&dir)).escrituras, 0);
        r.set(ReplicationRecord {
            estado: ReplicationState::Degradada,
            ..ReplicationRecord::default()
        })
        .unwrap();
        r.note_write();
        assert_eq!(load(Some(&dir)).escrituras, 1);
        let again = Replication::new(Some(&dir));
        assert_eq!(again.registro().estado, ReplicationState::Degradada);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

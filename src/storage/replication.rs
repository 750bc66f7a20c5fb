//! The degraded mode: what the storage manager does when the primary's
//! synchronous standbys are gone, and how it records that.
//!
//! Every monitor tick looks at the writer's `synchronous_standby_names` and
//! `pg_stat_replication` on a connection of its own (the pool may be full of
//! workers waiting for a standby). With `replicacion = "disponible"`, once
//! fewer standbys stream than the commit needs for `degradar_tras`, or
//! at once when `state_dir/replicacion.degradar` asks for it, synchronous
//! replication is switched off on the primary (`ALTER SYSTEM`, reload; the
//! commits that were waiting complete). The fact is written to
//! `state_dir/replicacion.json` and fsynced BEFORE the switch, and the first
//! write acknowledged while degraded is recorded there before its reply
//! leaves, so the record survives the primary and tells `biblioteca-failover
//! promote` whether a standby may lack acknowledged writes. Synchronous
//! replication comes back once enough standbys stream and have replayed
//! everything; the record is cleared only after they confirmed a position
//! past the switch. Each change is a WARN line, an `eventos_failover` row
//! and the `replicacion` object of the status reply.

use std::time::{Duration, Instant};

use super::nodes::Backend;
use super::replication_record::{now_unix, Replication};
use biblioteca_protocol::config::{ReplicationMode, ReplicationRecord, ReplicationState};

/// The writer's replication as one query sees it. `$1` is how many
/// standbys a commit waits for: the k-th highest confirmed flush position
/// is what every acknowledged commit reached.
const OBSERVE_SQL: &str = "SELECT current_setting('synchronous_standby_names'),
        pg_current_wal_lsn()::text,
        (SELECT count(*) FROM pg_stat_replication
          WHERE state = 'streaming' AND sync_state <> 'async')::int,
        (SELECT flush_lsn::text FROM pg_stat_replication
          WHERE state = 'streaming' AND sync_state <> 'async'
          ORDER BY flush_lsn DESC NULLS LAST OFFSET $1 - 1 LIMIT 1),
        coalesce((SELECT string_agg(application_name, ',') FROM pg_stat_replication
          WHERE state = 'streaming'), '')";

/// Standbys that stream and have replayed everything the primary wrote.
const CAUGHT_UP_SQL: &str = "SELECT application_name FROM pg_stat_replication
  WHERE state = 'streaming' AND replay_lsn >= pg_current_wal_lsn()";

/// What one tick saw on the writer.
#[derive(Debug, Clone)]
struct Observed {
    sync_names: String,
    wal_lsn: String,
    /// Streaming standbys that count for commits.
    sync_streaming: usize,
    /// The position every acknowledged commit reached, when enough stream.
    confirmed: Option<String>,
    streaming: Vec<String>,
}

pub use biblioteca_protocol::sync_names::{members, required};

/// What the tick decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Degrade { motivo: &'static str },
    Restore,
}

/// The policy as a pure function. `missing_for`: how long fewer standbys
/// than required have streamed; `caught_up`: of the saved synchronous
/// standbys, how many stream with everything replayed.
pub fn decide(
    registro: &ReplicationRecord,
    modo: ReplicationMode,
    degradar_tras: Duration,
    manual: bool,
    missing_for: Option<Duration>,
    caught_up: usize,
) -> Decision {
    match registro.estado {
        ReplicationState::Sincrona if manual => Decision::Degrade { motivo: "manual" },
        ReplicationState::Sincrona => match missing_for {
            Some(d) if modo == ReplicationMode::Disponible && d >= degradar_tras => {
                Decision::Degrade {
                    motivo: "automatica",
                }
            }
            _ => Decision::Nothing,
        },
        ReplicationState::Degradada if manual => Decision::Nothing,
        ReplicationState::Degradada => {
            let needed = required(registro.nombres_sincronos.as_deref().unwrap_or(""));
            if caught_up >= needed {
                Decision::Restore
            } else {
                Decision::Nothing
            }
        }
    }
}

/// The monitor thread's side: its own connection to the writer and timers.
#[derive(Default)]
pub struct Watch {
    client: Option<(String, postgres::Client)>,
    /// Since when fewer standbys stream than commits need.
    missing_since: Option<Instant>,
    /// The last position the standbys confirmed while they were there.
    last_confirmed: Option<String>,
    /// After switching synchronous replication back on: the primary's
    /// position then; the record is cleared once standbys confirm it.
    restoring_from: Option<String>,
    warned_waiting: bool,
}

impl Watch {
    /// The open connection to `node` (taken out; [`Watch::tick`] puts it
    /// back), or a new one.
    fn take_client(&mut self, node: &super::nodes::Node) -> Option<postgres::Client> {
        if let Some((name, c)) = self.client.take() {
            if name == node.cfg.name && !c.is_closed() {
                return Some(c);
            }
        }
        {
            match node.pg.connect(postgres::NoTls) {
                Ok(mut c) => {
                    // Never wait for a standby here: the records this
                    // session writes are for operators.
                    let set = c.batch_execute(
                        "SET synchronous_commit = local; SET statement_timeout = 3000",
                    );
                    if let Err(e) = set {
                        tracing::debug!(error = %e, "replication watch: cannot set up its session");
                        return None;
                    }
                    Some(c)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "replication watch: cannot connect to the writer");
                    None
                }
            }
        }
    }

    /// One look at the writer and, when the policy says so, one change.
    pub fn tick(&mut self, backend: &Backend, replication: &Replication) {
        let Some((_, node)) = backend.writer() else {
            return;
        };
        let writer = node.cfg.name.clone();
        let registro = replication.registro();
        if registro.estado == ReplicationState::Degradada
            && registro.primario.as_deref().is_some_and(|p| p != writer)
        {
            self.close_after_failover(replication, &registro, &writer);
            return;
        }
        let Some(mut c) = self.take_client(node) else {
            return;
        };
        let names: Vec<String> = backend.nodes.iter().map(|n| n.cfg.name.clone()).collect();
        super::metrics::observe_standbys(&mut c, &names);
        if self.step(&mut c, backend, replication, &writer, registro) {
            self.client = Some((writer, c));
        }
    }

    /// The tick on an open connection; false when the connection failed.
    fn step(
        &mut self,
        c: &mut postgres::Client,
        backend: &Backend,
        replication: &Replication,
        writer: &str,
        registro: ReplicationRecord,
    ) -> bool {
        let writer = writer.to_string();
        let manual = replication.manual_requested();
        let k = required(
            registro
                .nombres_sincronos
                .as_deref()
                .filter(|_| registro.estado == ReplicationState::Degradada)
                .unwrap_or(""),
        );
        let obs = match observe(c, k) {
            Ok(o) => o,
            Err(e) => {
                tracing::debug!(error = %e, "replication watch: query failed");
                return false;
            }
        };
        let cfg = &backend.config;
        match registro.estado {
            ReplicationState::Sincrona => {
                if obs.sync_names.trim().is_empty() {
                    // Asynchronous by configuration: nothing to degrade.
                    self.missing_since = None;
                    return true;
                }
                if obs.sync_streaming >= required(&obs.sync_names) {
                    self.missing_since = None;
                    self.warned_waiting = false;
                    self.last_confirmed = obs.confirmed.clone().or(self.last_confirmed.take());
                } else {
                    self.missing_since.get_or_insert_with(Instant::now);
                    if cfg.replicacion == ReplicationMode::Estricta && !self.warned_waiting {
                        self.warned_waiting = true;
                        tracing::warn!(
                            synchronous_standby_names = %obs.sync_names,
                            streaming = %obs.streaming.join(","),
                            "synchronous standbys missing: commits wait for them (replicacion = estricta)"
                        );
                    }
                }
            }
            ReplicationState::Degradada => {
                let updated = replication.update(|r| {
                    r.primario_lsn = Some(obs.wal_lsn.clone());
                    if manual {
                        r.motivo = Some("manual".into());
                    }
                });
                if let Err(e) = updated {
                    tracing::error!(error = %e, "cannot update the degraded-mode record");
                }
                if let Some(from) = self.restoring_from.clone() {
                    if obs.sync_streaming >= required(&obs.sync_names) {
                        self.missing_since = None;
                        self.confirm_restored(c, replication, &writer, &obs, &from);
                    } else {
                        let since = *self.missing_since.get_or_insert_with(Instant::now);
                        let limit = cfg.degradar_tras;
                        if cfg.replicacion == ReplicationMode::Disponible
                            && since.elapsed() >= limit
                        {
                            tracing::warn!("the standbys left again before confirming: synchronous replication switched off again");
                            if set_sync_names(c, "").is_ok() {
                                self.restoring_from = None;
                                self.missing_since = None;
                            }
                        }
                    }
                    return true;
                }
            }
        }
        let caught_up = if registro.estado == ReplicationState::Degradada {
            let saved = members(registro.nombres_sincronos.as_deref().unwrap_or(""));
            match c.query(CAUGHT_UP_SQL, &[]) {
                Ok(rows) => rows
                    .iter()
                    .filter(|r| saved.contains(&r.get::<_, String>(0)))
                    .count(),
                Err(_) => 0,
            }
        } else {
            0
        };
        let decision = decide(
            &registro,
            cfg.replicacion,
            cfg.degradar_tras,
            manual,
            self.missing_since.map(|s| s.elapsed()),
            caught_up,
        );
        match decision {
            Decision::Nothing => {}
            Decision::Degrade { motivo } => self.degrade(
                c,
                replication,
                &writer,
                &obs,
                motivo,
                cfg.degradar_tras.as_secs(),
            ),
            Decision::Restore => self.restore(c, &writer, &registro),
        }
        true
    }

    fn degrade(
        &mut self,
        c: &mut postgres::Client,
        replication: &Replication,
        writer: &str,
        obs: &Observed,
        motivo: &'static str,
        after_secs: u64,
    ) {
        let registro = ReplicationRecord {
            estado: ReplicationState::Degradada,
            motivo: Some(motivo.into()),
            desde_unix: Some(now_unix()),
            primario: Some(writer.to_string()),
            nombres_sincronos: Some(obs.sync_names.clone()),
            standby_lsn: obs.confirmed.clone().or(self.last_confirmed.clone()),
            primario_lsn: Some(obs.wal_lsn.clone()),
            escrituras: 0,
        };
        // On disk before the switch: from the switch on, writes may be
        // acknowledged that no standby has.
        if let Err(e) = replication.set(registro.clone()) {
            tracing::error!(error = %e, "cannot record the degraded mode: synchronous replication stays on");
            return;
        }
        if let Err(e) = set_sync_names(c, "") {
            tracing::error!(
                error = %e,
                "cannot switch synchronous replication off on {writer}: the application role needs GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names and EXECUTE on pg_reload_conf() (README, Database roles)"
            );
            let _ = replication.set(ReplicationRecord::default());
            return;
        }
        let detalle = match motivo {
            "manual" => format!(
                "biblioteca-failover degrade: {writer} commits without waiting for {}",
                obs.sync_names
            ),
            _ => format!(
                "synchronous standbys {} gone for {after_secs} s (streaming: {}); {writer} commits without them; standby confirmed up to {}",
                obs.sync_names,
                if obs.streaming.is_empty() { "none".to_string() } else { obs.streaming.join(",") },
                registro.standby_lsn.as_deref().unwrap_or("?")
            ),
        };
        tracing::warn!(
            motivo,
            "DEGRADED: synchronous replication switched off: {detalle}"
        );
        record(c, "degradada", writer, &detalle);
        self.missing_since = None;
    }

    fn restore(&mut self, c: &mut postgres::Client, writer: &str, registro: &ReplicationRecord) {
        let names = registro.nombres_sincronos.clone().unwrap_or_default();
        if let Err(e) = set_sync_names(c, &names) {
            tracing::error!(error = %e, "cannot switch synchronous replication back on on {writer}");
            return;
        }
        match c.query_one("SELECT pg_current_wal_lsn()::text", &[]) {
            Ok(row) => {
                let from: String = row.get(0);
                tracing::info!(synchronous_standby_names = %names, from = %from, "synchronous replication switched back on; waiting for the standbys to confirm");
                self.restoring_from = Some(from);
            }
            Err(e) => {
                tracing::debug!(error = %e, "replication watch: cannot read the WAL position")
            }
        }
    }

    fn confirm_restored(
        &mut self,
        c: &mut postgres::Client,
        replication: &Replication,
        writer: &str,
        obs: &Observed,
        from: &str,
    ) {
        let registro = replication.registro();
        let names = registro.nombres_sincronos.clone().unwrap_or_default();
        let past = obs.confirmed.as_deref().is_some_and(|confirmed| {
            c.query_one(
                "SELECT $1::text::pg_lsn >= $2::text::pg_lsn",
                &[&confirmed, &from],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
        });
        if obs.sync_names != names || !past {
            return;
        }
        if let Err(e) = replication.set(ReplicationRecord {
            desde_unix: Some(now_unix()),
            ..ReplicationRecord::default()
        }) {
            tracing::error!(error = %e, "cannot record the end of the degraded mode");
            return;
        }
        self.restoring_from = None;
        let detalle = format!(
            "synchronous replication restored on {writer} ({names}); {} writes were acknowledged while degraded, standbys confirmed up to {}",
            registro.escrituras,
            obs.confirmed.as_deref().unwrap_or("?")
        );
        tracing::warn!("SYNCHRONOUS again: {detalle}");
        record(c, "sincrona", writer, &detalle);
    }

    /// Writes moved to another node (a promotion): the old primary's
    /// degraded record no longer describes the writer.
    fn close_after_failover(
        &mut self,
        replication: &Replication,
        registro: &ReplicationRecord,
        writer: &str,
    ) {
        tracing::warn!(
            old = registro.primario.as_deref().unwrap_or("?"),
            escrituras = registro.escrituras,
            "writes moved to {writer}: closing the degraded-mode record of the old primary"
        );
        if replication
            .set(ReplicationRecord {
                desde_unix: Some(now_unix()),
                ..ReplicationRecord::default()
            })
            .is_ok()
        {
            self.restoring_from = None;
            self.missing_since = None;
        }
    }
}

fn observe(c: &mut postgres::Client, k: usize) -> Result<Observed, postgres::Error> {
    let row = c.query_one("SELECT current_setting('synchronous_standby_names')", &[])?;
    let names: String = row.get(0);
    let k = if names.trim().is_empty() {
        k.max(1)
    } else {
        required(&names)
    };
    let k = i32::try_from(k).unwrap_or(1);
    let row = c.query_one(OBSERVE_SQL, &[&k])?;
    let streaming: String = row.get(4);
    Ok(Observed {
        sync_names: row.get(0),
        wal_lsn: row.get(1),
        sync_streaming: usize::try_from(row.get::<_, i32>(2)).unwrap_or(0),
        confirmed: row.get(3),
        streaming: streaming
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// `ALTER SYSTEM SET synchronous_standby_names`, reload, and wait until
/// this session sees it (the reload is asynchronous).
fn set_sync_names(c: &mut postgres::Client, names: &str) -> Result<(), postgres::Error> {
    let quoted = names.replace('\'', "''");
    c.batch_execute(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{quoted}'"
    ))?;
    c.batch_execute("SELECT pg_reload_conf()")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: String = c
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])?
            .get(0);
        if now == names || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Best effort: the change is already logged; the table is for operators.
fn record(c: &mut postgres::Client, evento: &str, writer: &str, detalle: &str) {
    let result = c.execute(
        "INSERT INTO eventos_failover (nodo_anterior, nodo_nuevo, evento, detalle) VALUES ($1, $1, $2, $3)",
        &[&writer, &evento, &detalle],
    );
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot record the replication change in eventos_failover");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_standbys() {
        assert_eq!(required("standby"), 1);
        assert_eq!(required("\"a\", \"b\""), 1);
        assert_eq!(required("ANY 2 (a, b, c)"), 2);
        assert_eq!(required("any 1 (\"s1\", \"s2\")"), 1);
        assert_eq!(required("FIRST 2 (a, b)"), 2);
        assert_eq!(required("3 (a, b, c)"), 3);
        assert_eq!(members("ANY 1 (\"s1\", \"s2\")"), vec!["s1", "s2"]);
        assert_eq!(members("\"standby\""), vec!["standby"]);
    }

    #[test]
    fn the_policy() {
        let sync = ReplicationRecord::default();
        let five = Duration::from_secs(5);
        let gone = |s| Some(Duration::from_secs(s));
        use ReplicationMode::*;
        assert_eq!(
            decide(&sync, Estricta, five, false, gone(60), 0),
            Decision::Nothing
        );
        assert_eq!(
            decide(&sync, Disponible, five, false, gone(4), 0),
            Decision::Nothing
        );
        assert_eq!(
            decide(&sync, Disponible, five, false, gone(5), 0),
            Decision::Degrade {
                motivo: "automatica"
            }
        );
        assert_eq!(
            decide(&sync, Estricta, five, true, None, 0),
            Decision::Degrade { motivo: "manual" }
        );
        let degraded = ReplicationRecord {
            estado: ReplicationState::Degradada,
            nombres_sincronos: Some("ANY 2 (a, b, c)".into()),
            ..ReplicationRecord::default()
        };
        assert_eq!(
            decide(&degraded, Disponible, five, false, None, 1),
            Decision::Nothing
        );
        assert_eq!(
            decide(&degraded, Estricta, five, false, None, 2),
            Decision::Restore
        );
        assert_eq!(
            decide(&degraded, Disponible, five, true, None, 3),
            Decision::Nothing,
            "a manual degradation holds until restore"
        );
    }
}

//! Versioned schema migrations, embedded in the binary.
//!
//! Each file in `migrations/` is applied once, in version order, and recorded
//! in `schema_migrations`. All pending migrations run in ONE transaction that
//! first takes an advisory lock, so storage managers starting together apply
//! them exactly once and a failing migration leaves the schema untouched. The
//! files themselves are idempotent (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`)
//! so a database created by hand with the same tables is adopted.

use postgres::Client;

/// An arbitrary constant naming this schema's advisory lock.
const LOCK_KEY: i64 = 0x6269_626c_696f;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "esquema",
        sql: include_str!("migrations/0001_esquema.sql"),
    },
    Migration {
        version: 2,
        name: "catalogo_inicial",
        sql: include_str!("migrations/0002_catalogo_inicial.sql"),
    },
    Migration {
        version: 3,
        name: "eventos_failover",
        sql: include_str!("migrations/0003_eventos_failover.sql"),
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("database: {0}")]
    Db(#[from] postgres::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i32,
        name: &'static str,
        source: postgres::Error,
    },
}

/// Applies every pending migration; returns the versions applied now.
pub fn apply(client: &mut Client) -> Result<Vec<i32>, MigrationError> {
    let mut tx = client.transaction()?;
    // Waiting for another instance's migrations is fine; the pool's short
    // timeouts are for requests, not for this.
    tx.batch_execute(
        "SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = '5min'; \
         SET LOCAL client_min_messages = warning",
    )?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version  integer PRIMARY KEY,
             nombre   text NOT NULL,
             aplicada timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        tx.batch_execute(m.sql)
            .and_then(|_| {
                tx.execute(
                    "INSERT INTO schema_migrations (version, nombre) VALUES ($1, $2)",
                    &[&m.version, &m.name],
                )
            })
            .map_err(|source| MigrationError::Failed {
                version: m.version,
                name: m.name,
                source,
            })?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
    }
    tx.commit()?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_files_non_empty() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        assert!(MIGRATIONS.iter().all(|m| !m.sql.trim().is_empty()));
        assert_eq!(MIGRATIONS[0].version, 1);
    }
}

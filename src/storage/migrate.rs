//! Versioned schema migrations, embedded in the binary.
//!
//! Each file in `migrations/` is applied once, in version order, and recorded
//! in `schema_migrations`. All pending migrations run in ONE transaction that
//! first takes an advisory lock, so storage managers starting together apply
//! them exactly once and a failing migration leaves the schema untouched. The
//! files themselves are idempotent (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`)
//! so a database created by hand with the same tables is adopted.
//!
//! Migrations are a deployment step (`biblioteca-almacenamiento migrate`),
//! run as the role that owns the schema. The same transaction grants the
//! application role only the row privileges the storage manager needs
//! ([`grant`]); the storage manager itself never changes the schema, it only
//! [`check`]s at start that every migration it knows has been applied.

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
    Migration {
        version: 4,
        name: "funciones_escritura",
        sql: include_str!("migrations/0004_funciones_escritura.sql"),
    },
    Migration {
        version: 5,
        name: "lote",
        sql: include_str!("migrations/0005_lote.sql"),
    },
    Migration {
        version: 6,
        name: "eventos_replicacion",
        sql: include_str!("migrations/0006_eventos_replicacion.sql"),
    },
    Migration {
        version: 7,
        name: "lote_libros",
        sql: include_str!("migrations/0007_lote_libros.sql"),
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
    #[error("the schema lacks migrations {missing:?}: run `biblioteca-almacenamiento migrate` as the schema owner (e.g. --user biblioteca_owner) before starting the storage manager")]
    Behind { missing: Vec<i32> },
    #[error("cannot grant {role} its privileges: {source}")]
    Grant {
        role: String,
        source: postgres::Error,
    },
}

/// The tables the storage manager reads and writes (never deletes from).
pub const APP_TABLES: &[&str] = &["libros", "prestamos", "solicitudes", "eventos_failover"];
/// The sequences behind their `serial` ids.
const APP_SEQUENCES: &[&str] = &["prestamos_id_seq", "eventos_failover_id_seq"];

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Applies every pending migration and, when `app_role` is given, grants
/// it `SELECT, INSERT, UPDATE` on [`APP_TABLES`], `USAGE` on their
/// sequences and `SELECT` on `schema_migrations` (for [`check`]); all in one
/// transaction. Returns the versions applied now.
pub fn apply_and_grant(
    client: &mut Client,
    app_role: Option<&str>,
) -> Result<Vec<i32>, MigrationError> {
    let mut tx = client.transaction()?;
    let applied = apply_in(&mut tx)?;
    if let Some(role) = app_role {
        grant(&mut tx, role)?;
    }
    tx.commit()?;
    Ok(applied)
}

/// The grants of [`apply_and_grant`]; idempotent.
pub fn grant(tx: &mut postgres::Transaction<'_>, role: &str) -> Result<(), MigrationError> {
    let role_q = quote_ident(role);
    let sql = format!(
        "GRANT SELECT, INSERT, UPDATE ON {} TO {role_q}; \
         GRANT USAGE ON SEQUENCE {} TO {role_q}; \
         GRANT SELECT ON schema_migrations TO {role_q}; \
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role_q}",
        APP_TABLES.join(", "),
        APP_SEQUENCES.join(", ")
    );
    tx.batch_execute(&sql)
        .map_err(|source| MigrationError::Grant {
            role: role.to_string(),
            source,
        })?;
    tracing::info!(role, "row and function privileges granted");
    Ok(())
}

/// The storage manager's start-time check: every known migration applied.
/// A schema newer than this binary is only logged.
pub fn check(client: &mut Client) -> Result<(), MigrationError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])?
        .get(0);
    let done: Vec<i32> = if exists {
        client
            .query("SELECT version FROM schema_migrations", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect()
    } else {
        Vec::new()
    };
    let missing: Vec<i32> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !done.contains(v))
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::Behind { missing });
    }
    let newer: Vec<i32> = done
        .iter()
        .copied()
        .filter(|v| !MIGRATIONS.iter().any(|m| m.version == *v))
        .collect();
    if !newer.is_empty() {
        tracing::warn!(versions = ?newer, "the schema has migrations this binary does not know");
    }
    Ok(())
}

/// Applies every pending migration inside `tx`; returns the versions applied.
fn apply_in(tx: &mut postgres::Transaction<'_>) -> Result<Vec<i32>, MigrationError> {
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

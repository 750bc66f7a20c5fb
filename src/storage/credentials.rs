//! Telling "the database is not there yet" from "the database refuses us".
//!
//! At start the storage manager waits for a writable node, because nodes come
//! up in any order. A node that answers but rejects the application role's
//! credentials will not change its mind, so that is fatal at start with a
//! clear message instead of a retry loop (the password itself is never in it).

use postgres::error::SqlState;

use super::nodes::Backend;
use biblioteca_protocol::config::NodeRole;

/// Why some reachable node refused our credentials, if one did.
pub(super) fn refused(backend: &Backend) -> Option<String> {
    let has_password = backend.config.database.password_file.is_some();
    backend
        .nodes
        .iter()
        .filter(|n| n.cfg.role != NodeRole::Fenced)
        .find_map(|n| {
            let e = n.pg.connect(postgres::NoTls).err()?;
            let code = e.code();
            let why = if code == Some(&SqlState::INVALID_PASSWORD)
                || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
            {
                e.as_db_error().map(|d| d.message().to_string())?
            } else if !has_password && chain(&e).contains("password missing") {
                "the server asks for a password and database.password_file is not set".into()
            } else {
                return None;
            };
            Some(format!("node {}: {why}", n.cfg.name))
        })
}

/// The error and its sources, where the driver keeps the detail.
fn chain(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

//! The pooled database connection: a `postgres::Client` plus the statements
//! already prepared on it.
//!
//! The write path sends the same few statements (one write-function call per
//! operation) thousands of times a second. Prepared once per connection, each
//! request is a Bind/Execute/Sync of a named statement, which skips the
//! server's parse, analysis and planning of an unnamed one (what pgbench
//! `-M prepared` does too). The cache lives with the connection because a
//! prepared statement only exists in the session that prepared it; r2d2
//! drops both together.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use postgres::types::Type;
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;

/// A pooled connection; derefs to the client for everything unprepared.
pub struct Connection {
    client: Client,
    sentencias: HashMap<&'static str, Statement>,
}

impl Connection {
    /// The statement for `sql`, prepared with `types` on first use on this
    /// connection (one extra round trip, once).
    pub fn preparada(
        &mut self,
        sql: &'static str,
        types: &[Type],
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.sentencias.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare_typed(sql, types)?;
        self.sentencias.insert(sql, s.clone());
        Ok(s)
    }
}

impl Deref for Connection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// `r2d2_postgres`' manager, handing out [`Connection`]s.
#[derive(Debug)]
pub struct Manager(pub PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Connection, postgres::Error> {
        Ok(Connection {
            client: self.0.connect()?,
            sentencias: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

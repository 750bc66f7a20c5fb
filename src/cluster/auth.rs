//! Password authentication for a local cluster ([`Cluster::require_passwords`]).
//!
//! A cluster is created with trust on loopback; this switches it to
//! `scram-sha-256` for every role, with `pg_hba.conf` lines only for what
//! each role needs: `app` and the schema owner to database `library`,
//! `replicator` for replication, the superuser for administration (including
//! the replication connections of `pg_basebackup` and of a standby rejoined
//! by `biblioteca-failover`). Passwords are generated,
//! set as SCRAM verifiers computed here (the password itself never appears
//! in SQL text, a command line or a server log), and written to files only
//! their owner can read: one per role under `secretos/` and a `pgpass` file
//! at the top of the cluster directory. [`PgBin`](super::PgBin) hands that
//! `pgpass` to every PostgreSQL program it runs in the directory, and the
//! standby streams with it (`passfile` in its `primary_conninfo`).

use std::path::{Path, PathBuf};

use super::{
    append, Cluster, ClusterError, Node, APP_DB, APP_USER, OWNER_USER, REPLICATION_USER,
    STANDBY_NAME, SUPERUSER,
};
use biblioteca_runtime::security::secrets;

/// File name of the pgpass file at the top of a secured cluster directory.
pub const PGPASS: &str = "pgpass";
const HBA: &str = "# biblioteca cluster: scram-sha-256 for every role, only where it is needed\n\
local   all          postgres                     scram-sha-256\n\
host    library      app          127.0.0.1/32    scram-sha-256\n\
host    library      biblioteca_owner 127.0.0.1/32 scram-sha-256\n\
host    all          postgres     127.0.0.1/32    scram-sha-256\n\
host    replication  replicator   127.0.0.1/32    scram-sha-256\n\
host    replication  postgres     127.0.0.1/32    scram-sha-256\n";

/// Where a secured cluster keeps its passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwords {
    /// `host:port:db:user:password` lines for every role (mode 0600).
    pub pgpass: PathBuf,
    /// The `app` role's password alone: the storage manager's `database.password_file`.
    pub app: PathBuf,
    /// The schema owner's password, for `biblioteca-almacenamiento migrate`.
    pub owner: PathBuf,
    pub replicator: PathBuf,
    pub superuser: PathBuf,
}

impl Passwords {
    /// The files of a cluster directory.
    pub fn in_dir(dir: &Path) -> Passwords {
        let secretos = dir.join("secretos");
        Passwords {
            pgpass: dir.join(PGPASS),
            app: secretos.join(format!("{APP_USER}.password")),
            owner: secretos.join(format!("{OWNER_USER}.password")),
            replicator: secretos.join(format!("{REPLICATION_USER}.password")),
            superuser: secretos.join(format!("{SUPERUSER}.password")),
        }
    }
}

fn sec(
    path: &Path,
) -> impl FnOnce(biblioteca_runtime::security::SecurityError) -> ClusterError + '_ {
    move |e| ClusterError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Cluster {
    /// Gives `app`, the schema owner, `replicator` and the superuser
    /// generated passwords and switches both nodes to `scram-sha-256` (see
    /// the module docs).
    pub fn require_passwords(&self) -> Result<Passwords, ClusterError> {
        let files = Passwords::in_dir(self.dir());
        let roles = [
            (APP_USER, "*", &files.app),
            (OWNER_USER, "*", &files.owner),
            (REPLICATION_USER, "replication", &files.replicator),
            (SUPERUSER, "*", &files.superuser),
        ];
        let mut pgpass = String::new();
        let mut verifiers = Vec::new();
        for (role, db, file) in roles {
            let password = secrets::password(24).map_err(sec(file))?;
            secrets::write_private(file, &format!("{password}\n")).map_err(sec(file))?;
            pgpass.push_str(&format!("127.0.0.1:*:{db}:{role}:{password}\n"));
            verifiers.push((
                role,
                postgres_protocol::password::scram_sha_256(password.as_bytes()),
            ));
        }
        if let Some(dir) = files.app.parent() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| ClusterError::Io {
                    path: dir.to_path_buf(),
                    source,
                },
            )?;
        }
        self.set_verifiers(&verifiers)?;
        // PostgreSQL programs run as its user when we are root: they must read it.
        secrets::write_private(&files.pgpass, &pgpass).map_err(sec(&files.pgpass))?;
        self.primary().pg.give(&files.pgpass)?;
        let standby_source = format!(
            "host=127.0.0.1 port={} user={REPLICATION_USER} application_name={STANDBY_NAME} passfile={}",
            self.primary().port,
            files.pgpass.display()
        );
        append(
            &self.standby().data_dir.join("postgresql.auto.conf"),
            &format!("primary_conninfo = '{standby_source}'\n"),
        )?;
        for n in self.nodes() {
            secure_node(n)?;
        }
        self.wait_streaming(std::time::Duration::from_secs(60))?;
        Ok(files)
    }

    /// `ALTER ROLE .. PASSWORD 'SCRAM-SHA-256$..'` over the still-trusted
    /// loopback, on a connection of our own (nothing on a command line).
    fn set_verifiers(&self, verifiers: &[(&str, String)]) -> Result<(), ClusterError> {
        let p = self.primary();
        let conninfo = p.conninfo(SUPERUSER, "postgres");
        let mut client = postgres::Client::connect(&conninfo, postgres::NoTls).map_err(|e| {
            ClusterError::State {
                node: p.name.clone(),
                what: format!("cannot connect as {SUPERUSER}: {e}"),
            }
        })?;
        let mut sql = String::from("SET password_encryption = 'scram-sha-256';");
        for (role, verifier) in verifiers {
            sql.push_str(&format!("ALTER ROLE {role} PASSWORD '{verifier}';"));
        }
        client.batch_execute(&sql).map_err(|e| ClusterError::State {
            node: p.name.clone(),
            what: format!("cannot set the role passwords: {e}"),
        })
    }
}

/// `password_encryption`, the scram-only `pg_hba.conf`, then a reload.
fn secure_node(n: &Node) -> Result<(), ClusterError> {
    append(
        &n.data_dir.join("postgresql.conf"),
        "password_encryption = 'scram-sha-256'\n",
    )?;
    let hba = n.data_dir.join("pg_hba.conf");
    std::fs::write(&hba, HBA).map_err(|source| ClusterError::Io {
        path: hba.clone(),
        source,
    })?;
    n.pg.give(&hba)?;
    n.reload()
}

/// Whether `APP_DB` is reachable as `APP_USER` with `password` (tests).
pub fn app_login(node: &Node, password: &str) -> Result<(), postgres::Error> {
    let mut cfg: postgres::Config = node.conninfo(APP_USER, APP_DB).parse()?;
    cfg.password(password);
    cfg.connect(postgres::NoTls).map(|_| ())
}

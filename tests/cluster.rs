//! The local PostgreSQL pair itself: replication, roles, SIGKILL and restart,
//! promotion. No services involved.

use std::time::Duration;

use biblioteca_cluster::{wait_until, Cluster, ClusterSpec, StopMode, OWNER_USER};
use biblioteca_stack::launch::free_port;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bib-{tag}-{}", std::process::id()))
}

#[test]
fn primary_and_standby_replicate_and_survive_kill_and_promotion() {
    let dir = temp_dir("cluster");
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(&dir);
    spec.primary_port = free_port().unwrap();
    spec.standby_port = free_port().unwrap();
    let cluster = Cluster::create(spec).unwrap_or_else(|e| panic!("create: {e}"));
    let (p, s) = (cluster.primary(), cluster.standby());

    assert_eq!(
        p.sql_as(
            "postgres",
            "postgres",
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        )
        .unwrap(),
        "standby|streaming|sync"
    );
    assert_eq!(
        p.sql("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            .unwrap(),
        "app|f"
    );
    assert!(!p.is_in_recovery().unwrap());
    assert!(s.is_in_recovery().unwrap());

    // `app` owns nothing: the schema owner creates the table and grants rows.
    assert!(
        p.sql("CREATE TABLE t (x int)").is_err(),
        "app changed the schema"
    );
    p.sql_as(
        OWNER_USER,
        "library",
        "CREATE TABLE t (x int); GRANT SELECT, INSERT ON t TO app",
    )
    .unwrap();
    p.sql("INSERT INTO t VALUES (1), (2)").unwrap();
    // Synchronous commit: the row is on the standby's disk; replay is quick.
    wait_until(Duration::from_secs(3), "replay on the standby", || {
        Ok(s.sql("SELECT count(*) FROM t")
            .map(|c| c == "2")
            .unwrap_or(false))
    })
    .unwrap();
    assert!(
        s.sql("INSERT INTO t VALUES (3)").is_err(),
        "standby is read-only"
    );

    // A crash of the primary, then a restart: data survives, streaming resumes.
    p.kill9().unwrap();
    assert!(!p.is_running());
    p.start().unwrap();
    cluster.wait_streaming(Duration::from_secs(30)).unwrap();
    assert_eq!(p.sql("SELECT sum(x) FROM t").unwrap(), "3");

    // Failover: the standby becomes a writable primary and does not wait for
    // a synchronous standby of its own.
    p.stop(StopMode::Fast).unwrap();
    s.promote().unwrap();
    assert!(!s.is_in_recovery().unwrap());
    s.sql("INSERT INTO t VALUES (4)").unwrap();
    assert_eq!(s.sql("SELECT sum(x) FROM t").unwrap(), "7");

    drop(cluster);
    assert!(!dir.exists(), "drop removes the directory");
}

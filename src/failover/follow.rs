//! After a promotion with several standbys: the other standbys follow the
//! new primary, and commits wait for them again.
//!
//! A standby that received no more WAL than the new primary (promote picks
//! the most advanced one) can follow its new timeline as it is: its
//! `primary_conninfo` is changed to the new primary's host and port (user,
//! password file and `application_name` kept) with `ALTER SYSTEM` and a
//! reload, which restarts its WAL receiver, after a replication slot for it
//! was made on the new primary. Only a standby that does not stream within
//! the wait (it went past the fork) needs `pg_rewind`: it is rejoined when
//! this host manages it, otherwise the operator is told to.

use std::time::{Duration, Instant};

use super::pg::{self, Role};
use super::{FailoverConfig, FailoverError, FailoverNode, Progress, Result};

/// Splits a conninfo into `key=value` pairs, honouring single quotes.
fn pairs(conninfo: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((key, value));
    }
}

fn render(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            if v.is_empty() || v.contains([' ', '\'', '\\']) {
                format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `current` (a standby's `primary_conninfo`) pointed at the server of
/// `primary` (an administrative conninfo): its host and port replace the
/// old ones, everything else (user, passfile, application_name) stays.
pub fn retarget(current: &str, primary: &str, application_name: &str) -> String {
    let new = pairs(primary);
    let mut out: Vec<(String, String)> = pairs(current)
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "host" | "hostaddr" | "port"))
        .collect();
    for (k, v) in new {
        if matches!(k.as_str(), "host" | "hostaddr" | "port") {
            out.push((k, v));
        }
    }
    if current.trim().is_empty() {
        out.extend(
            pairs(primary)
                .into_iter()
                .filter(|(k, _)| k == "user" || k == "password"),
        );
    }
    if !out.iter().any(|(k, _)| k == "application_name") {
        out.push(("application_name".into(), application_name.into()));
    }
    with_silent_network_bounds(&mut out);
    render(&out)
}

/// Options of a standby's `primary_conninfo` for a silent network: a
/// connection attempt to a primary behind a silent cut is given up after
/// 5 s (the walreceiver runs its own connect loop and ignores
/// `connect_timeout`; `TCP_USER_TIMEOUT` also bounds the SYN
/// retransmissions, which otherwise back off to 15 and 31 s) and retried
/// after `wal_retrieve_retry_interval`, so a standby streams again within
/// seconds of a heal (the lab measured 15.4 s without it; docs/failover.md,
/// "Network faults").
pub const STANDBY_CONNINFO: [(&str, &str); 2] =
    [("connect_timeout", "2"), ("tcp_user_timeout", "5000")];

/// Adds each of [`STANDBY_CONNINFO`] that `pairs` does not set.
pub fn with_silent_network_bounds(pairs: &mut Vec<(String, String)>) {
    for (k, v) in STANDBY_CONNINFO {
        if !pairs.iter().any(|(have, _)| have == k) {
            pairs.push((k.into(), v.into()));
        }
    }
}

/// `conninfo` with [`STANDBY_CONNINFO`] added where it sets none.
pub fn standby_conninfo(conninfo: &str) -> String {
    let mut out = pairs(conninfo);
    with_silent_network_bounds(&mut out);
    render(&out)
}

/// Whether two conninfos name the same server (host, hostaddr, port).
pub fn same_server(a: &str, b: &str) -> bool {
    let server = |c: &str| {
        let mut p: Vec<(String, String)> = pairs(c)
            .into_iter()
            .filter(|(k, _)| matches!(k.as_str(), "host" | "hostaddr" | "port"))
            .collect();
        p.sort();
        p
    };
    server(a) == server(b)
}

/// Points every reachable standby other than `new` and `old` at `new`,
/// then sets the new primary's synchronous standbys; returns the names of
/// the standbys that stream from it.
pub fn follow(
    cfg: &FailoverConfig,
    new: &FailoverNode,
    old: Option<&str>,
    progress: &Progress,
) -> Result<Vec<String>> {
    let others: Vec<&FailoverNode> = cfg
        .nodes
        .iter()
        .filter(|n| n.name != new.name && Some(n.name.as_str()) != old)
        .collect();
    let mut streaming = Vec::new();
    for s in &others {
        let probe = pg::probe(s, cfg.connect_timeout());
        if probe.role != Role::Standby {
            progress.warn(format!(
                "{} is {} and does not follow {} (run `rejoin --node {}` once it is up)",
                s.name, probe.role, new.name, s.name
            ));
            continue;
        }
        match repoint_standby(cfg, s, new, progress) {
            Ok(true) => streaming.push(s.name.clone()),
            Ok(false) if s.managed() => {
                progress.warn(format!(
                    "{} does not stream from {}: its timeline went past the fork; rejoining it (pg_rewind)",
                    s.name, new.name
                ));
                match super::rejoin::rebuild_standby(cfg, s, new, progress) {
                    Ok(()) => streaming.push(s.name.clone()),
                    Err(e) => progress.warn(format!(
                        "{} could not be rejoined: {}; run `rejoin --node {}`",
                        s.name,
                        pg::short_error(&e),
                        s.name
                    )),
                }
            }
            Ok(false) => progress.warn(format!(
                "{} does not stream from {}; on its host run `biblioteca-failover rejoin --node {}`",
                s.name, new.name, s.name
            )),
            Err(e) => progress.warn(format!(
                "cannot re-point {}: {}; run `rejoin --node {}`",
                s.name,
                pg::short_error(&e),
                s.name
            )),
        }
    }
    if cfg.synchronous && !streaming.is_empty() {
        let names: Vec<&str> = others.iter().map(|n| n.name.as_str()).collect();
        let value = pg::sync_names(&names, cfg.quorum.min(streaming.len()));
        let mut c = pg::connect(new, cfg.connect_timeout())?;
        pg::set_sync_standbys(&mut c, &new.name, &value)?;
        progress.step(format!(
            "synchronous_standby_names = {value} on {}: commits wait for its standbys again",
            new.name
        ));
    }
    Ok(streaming)
}

/// Slot on `new`, `primary_conninfo` on `s`, reload; whether `s` then
/// streams from `new`.
fn repoint_standby(
    cfg: &FailoverConfig,
    s: &FailoverNode,
    new: &FailoverNode,
    progress: &Progress,
) -> Result<bool> {
    let slot = pg::slot_name(&s.name);
    let mut primary = pg::connect(new, cfg.connect_timeout())?;
    pg::ensure_slot(&mut primary, &new.name, &slot)?;
    let mut c = pg::connect(s, cfg.connect_timeout())?;
    let current: String = c
        .query_one("SELECT current_setting('primary_conninfo')", &[])
        .map_err(FailoverError::db(&s.name))?
        .get(0);
    let conninfo = retarget(&current, &new.conninfo, &s.name);
    pg::alter_system(
        &mut c,
        &s.name,
        &format!("primary_conninfo = '{}'", conninfo.replace('\'', "''")),
    )?;
    pg::alter_system(&mut c, &s.name, &format!("primary_slot_name = '{slot}'"))?;
    progress.step(format!(
        "{} re-pointed at {} (primary_conninfo reloaded, slot {slot})",
        s.name, new.name
    ));
    let wait = cfg.streaming_timeout.min(Duration::from_secs(30));
    let deadline = Instant::now() + wait;
    loop {
        let streams = pg::replicas(&mut primary, &new.name)?
            .iter()
            .any(|r| r.application_name == s.name && r.state == "streaming");
        if streams {
            progress.step(format!("{} streams from {}", s.name, new.name));
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_credentials_and_name() {
        let current = "user=replicator passfile='/var/lib/x y.pgpass' host=127.0.0.1 port=26401 application_name=standby2";
        let out = retarget(
            current,
            "host=10.0.0.5 port=5433 user=postgres dbname=library",
            "standby2",
        );
        assert_eq!(
            out,
            "user=replicator passfile='/var/lib/x y.pgpass' application_name=standby2 host=10.0.0.5 port=5433 connect_timeout=2 tcp_user_timeout=5000"
        );
        let fresh = retarget("", "host=h port=1 user=postgres dbname=library", "s3");
        assert_eq!(
            fresh,
            "host=h port=1 user=postgres application_name=s3 connect_timeout=2 tcp_user_timeout=5000"
        );
    }
}

//! The etcd v3 client of the automatic mode: etcd's JSON gateway (`/v3/*`,
//! the grpc-gateway every etcd 3.4 member serves on its client port) over a
//! blocking HTTP client.
//!
//! Why the gateway and not the `etcd-client` crate: the agent is a
//! synchronous loop like every service here, and the gateway keeps it so
//! (no tokio runtime, no gRPC stack, no protoc at build time); a request
//! that hangs is bounded by the HTTP client's timeout, so an unreachable or
//! quorum-less member costs one timeout and the next endpoint is tried
//! (`etcd-client` lets one failing endpoint fail the client, its issue
//! #39); Patroni speaks the same gateway. Keys and values are base64 on the
//! wire and 64-bit integers are JSON strings (proto3's JSON mapping).
//!
//! Reads are linearizable (etcd's default), so a member cut from its
//! quorum cannot answer one: "no leader key" always means the cluster said
//! so, never a stale member.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (down, cut off, or without quorum).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered with something this client cannot use.
    #[error("etcd: {0}")]
    Protocol(String),
}

pub type EtcdResult<T> = std::result::Result<T, EtcdError>;

/// One key as etcd returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A client over every member's endpoint; the last one that answered is
/// tried first.
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    current: AtomicUsize,
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> EtcdResult<String> {
    let text = v.as_str().unwrap_or_default();
    let bytes = B64
        .decode(text)
        .map_err(|e| EtcdError::Protocol(format!("bad base64 {text:?}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| EtcdError::Protocol(e.to_string()))
}

fn parse_kv(v: &Value) -> EtcdResult<Kv> {
    Ok(Kv {
        key: unb64(&v["key"])?,
        value: unb64(&v["value"])?,
        create_revision: int(&v["create_revision"]),
        mod_revision: int(&v["mod_revision"]),
        lease: int(&v["lease"]),
    })
}

/// The smallest key greater than every key starting with `prefix`.
fn range_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".to_string()
}

impl Etcd {
    /// `endpoints`: `http://host:port` of each member; `timeout` bounds every
    /// request to one member.
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .build(),
            current: AtomicUsize::new(0),
        }
    }

    /// POSTs `body` to `path` on the members in turn, from the last good one.
    fn call(&self, path: &str, body: &Value) -> EtcdResult<Value> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => {
                    let v: Value = resp
                        .into_json()
                        .map_err(|e| EtcdError::Protocol(format!("{url}: {e}")))?;
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                // An answer with an error status is etcd's own refusal
                // (e.g. "lease not found"): no other member would differ.
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    if code >= 500 && text.contains("timed out") {
                        errors.push(format!("{url}: {code} {}", text.trim()));
                        continue;
                    }
                    return Err(EtcdError::Protocol(format!(
                        "{url}: {code} {}",
                        text.trim()
                    )));
                }
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        Err(EtcdError::Unreachable(errors.join("; ")))
    }

    pub fn get(&self, key: &str) -> EtcdResult<Option<Kv>> {
        let v = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        match v["kvs"].as_array().and_then(|a| a.first()) {
            Some(kv) => Ok(Some(parse_kv(kv)?)),
            None => Ok(None),
        }
    }

    /// Every key under `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> EtcdResult<Vec<Kv>> {
        let v = self.call(
            "/v3/kv/range",
            &json!({ "key": b64(prefix), "range_end": b64(&range_end(prefix)) }),
        )?;
        v["kvs"]
            .as_array()
            .map(|a| a.iter().map(parse_kv).collect())
            .unwrap_or(Ok(Vec::new()))
    }

    /// Writes `key` (attached to `lease` unless 0); returns the revision.
    pub fn put(&self, key: &str, value: &str, lease: i64) -> EtcdResult<i64> {
        let v = self.call(
            "/v3/kv/put",
            &json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() }),
        )?;
        Ok(int(&v["header"]["revision"]))
    }

    /// Writes `key` only if its `mod_revision` is `expected` (0: only if it
    /// does not exist). Returns the new revision, or `None` when the
    /// comparison failed (someone else changed it first).
    pub fn put_if(
        &self,
        key: &str,
        expected: i64,
        value: &str,
        lease: i64,
    ) -> EtcdResult<Option<i64>> {
        let compare = json!([{
            "key": b64(key),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": expected.to_string(),
        }]);
        let put = json!([{ "request_put": {
            "key": b64(key), "value": b64(value), "lease": lease.to_string()
        }}]);
        let v = self.call("/v3/kv/txn", &json!({ "compare": compare, "success": put }))?;
        Ok(v["succeeded"]
            .as_bool()
            .unwrap_or(false)
            .then(|| int(&v["header"]["revision"])))
    }

    /// Writes `key` (no lease) only while `guard` still has `mod_revision`
    /// `expected`: a write fenced by the leader key's revision.
    pub fn put_guarded(
        &self,
        key: &str,
        value: &str,
        guard: &str,
        expected: i64,
    ) -> EtcdResult<bool> {
        let compare = json!([{
            "key": b64(guard), "target": "MOD", "result": "EQUAL",
            "mod_revision": expected.to_string(),
        }]);
        let put = json!([{ "request_put": { "key": b64(key), "value": b64(value) } }]);
        let v = self.call("/v3/kv/txn", &json!({ "compare": compare, "success": put }))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Deletes `key` only if its `mod_revision` is `expected`.
    pub fn delete_if(&self, key: &str, expected: i64) -> EtcdResult<bool> {
        let compare = json!([{
            "key": b64(key), "target": "MOD", "result": "EQUAL",
            "mod_revision": expected.to_string(),
        }]);
        let del = json!([{ "request_delete_range": { "key": b64(key) } }]);
        let v = self.call("/v3/kv/txn", &json!({ "compare": compare, "success": del }))?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    pub fn delete(&self, key: &str) -> EtcdResult<()> {
        self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))
            .map(|_| ())
    }

    /// A new lease of `ttl`; returns its id.
    pub fn grant(&self, ttl: Duration) -> EtcdResult<i64> {
        let v = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": ttl.as_secs().max(1).to_string() }),
        )?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Protocol(format!("lease grant answered {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; `false` when it no longer exists (expired).
    pub fn keepalive(&self, id: i64) -> EtcdResult<bool> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        Ok(int(&v["result"]["TTL"]) > 0)
    }

    /// Whether the first member that answers is the etcd leader (its
    /// `member_id` equals `leader`; ids are unsigned 64-bit).
    pub fn is_leader(&self) -> EtcdResult<bool> {
        let v = self.call("/v3/maintenance/status", &json!({}))?;
        let id = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
        Ok(id(&v["header"]["member_id"]).is_some()
            && id(&v["header"]["member_id"]) == id(&v["leader"]))
    }

    pub fn revoke(&self, id: i64) -> EtcdResult<()> {
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end() {
        assert_eq!(range_end("/b/members/"), "/b/members0");
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(unb64(&json!(b64("héllo"))).ok().as_deref(), Some("héllo"));
    }
}

//! Test support: a recorded history of client requests under faults and the
//! checker that judges it. The chaos suite (tests/chaos) drives it in
//! process; the lab's network-fault scenarios (tests/lab/partitions.sh)
//! drive the `biblioteca-history` binary from a client host of their own.
//!
//! [`workload`] runs the clients and records every request; [`resolve`]
//! settles the outcomes the clients never learnt; [`snapshot`] reads a
//! node's rows; [`checker`] holds the invariants; [`record`] is the history
//! file (JSON lines, fault marks included); [`scenario`] is the lab's table
//! row, with the primaries sampled on every node; [`report`] the chaos
//! suite's per-fault table.

pub mod checker;
pub mod record;
pub mod report;
pub mod resolve;
pub mod scenario;
pub mod snapshot;
pub mod workload;

/// Milliseconds since the Unix epoch: the one clock of histories, marks and
/// samples, which different processes on one host write.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! One row of the lab's scenario table, and the primaries seen by the
//! sampler: a script asks every database node twice a second whether it is
//! in recovery, its timeline and how many standbys stream to it as
//! synchronous (`sync` or `quorum`), and appends one JSON line per node and
//! round. A node that is primary with a synchronous standby can acknowledge
//! writes; two of them in one round is a split brain.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checker::{Kind, Violation};
use crate::record::Mark;
use crate::resolve::Resolution;
use crate::workload::Entry;

/// One node in one sampling round; `None` fields: the node did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub t: u64,
    pub round: u64,
    pub node: String,
    pub primary: Option<bool>,
    pub timeline: Option<u64>,
    pub sync: Option<u32>,
}

/// The most primaries of one round: any, and with a synchronous standby.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Primaries {
    pub most: usize,
    pub most_accepting: usize,
    /// Timelines seen on primaries over the run.
    pub timelines: usize,
}

pub fn primaries(samples: &[Sample]) -> Primaries {
    let mut rounds: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    let mut timelines = std::collections::BTreeSet::new();
    for s in samples.iter().filter(|s| s.primary == Some(true)) {
        let r = rounds.entry(s.round).or_default();
        r.0 += 1;
        r.1 += usize::from(s.sync.unwrap_or(0) > 0);
        if let Some(t) = s.timeline {
            timelines.insert(t);
        }
    }
    Primaries {
        most: rounds.values().map(|r| r.0).max().unwrap_or(0),
        most_accepting: rounds.values().map(|r| r.1).max().unwrap_or(0),
        timelines: timelines.len(),
    }
}

/// One scenario's line of the table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub ops: usize,
    pub acknowledged: usize,
    pub unknown_applied: usize,
    pub unknown_never: usize,
    pub unresolved: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub violations: usize,
    pub primaries: Primaries,
    pub restarts: Option<u32>,
    /// From the last heal mark to the end of the first write acknowledged
    /// after it.
    pub heal_to_write_ms: Option<u64>,
    /// The longest a write with a definitive reply took, all its tries.
    #[serde(default)]
    pub slowest_write_ms: u64,
}

impl Row {
    pub fn new(
        scenario: &str,
        history: &[Entry],
        resolved: &[Resolution],
        marks: &[Mark],
        violations: &[Violation],
        samples: &[Sample],
        restarts: Option<u32>,
    ) -> Row {
        let count = |k: Kind| violations.iter().filter(|v| v.kind == k).count();
        let mut row = Row {
            scenario: scenario.into(),
            ops: history.len(),
            acknowledged: history.iter().filter(|e| e.definitive()).count(),
            lost: count(Kind::Lost),
            duplicated: count(Kind::Duplicated),
            violations: violations.len(),
            primaries: primaries(samples),
            restarts,
            ..Row::default()
        };
        row.slowest_write_ms = history
            .iter()
            .filter(|e| e.op.is_write() && e.definitive())
            .map(|e| e.end.saturating_sub(e.start))
            .max()
            .unwrap_or(0);
        for r in resolved {
            match r {
                Resolution::Applied(_) => row.unknown_applied += 1,
                Resolution::NotApplied => row.unknown_never += 1,
                Resolution::Unresolved(_) => row.unresolved += 1,
                _ => {}
            }
        }
        let heal = marks.iter().filter(|m| m.mark == "heal").map(|m| m.t).max();
        row.heal_to_write_ms = heal.and_then(|h| {
            history
                .iter()
                .filter(|e| e.op.is_write() && e.ok() && e.end >= h)
                .map(|e| e.end - h)
                .min()
        });
        row
    }
}

/// Writes acknowledged while a fault was on: from the first fault mark
/// (plus `slack_ms` for replies already on their way) to the heal mark.
pub fn acked_during_fault(history: &[Entry], marks: &[Mark], slack_ms: u64) -> Vec<String> {
    let start = marks.iter().filter(|m| m.mark != "heal").map(|m| m.t).min();
    let heal = marks.iter().filter(|m| m.mark == "heal").map(|m| m.t).max();
    let (Some(start), Some(heal)) = (start, heal) else {
        return Vec::new();
    };
    history
        .iter()
        .filter(|e| e.op.is_write() && e.definitive())
        .filter(|e| e.end > start + slack_ms && e.end < heal)
        .map(|e| format!("{} acknowledged {} ms into the fault", e.id, e.end - start))
        .collect()
}

/// The table as Markdown, for the terminal and docs/failover.md.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | ops | acknowledged | unknown→applied / never | unresolved | lost | duplicated | \
         most primaries (with sync standby) | storage-manager restarts | heal → first ack write | slowest answered write |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} ({}) | {} | {} | {:.1} s |",
            r.scenario,
            r.ops,
            r.acknowledged,
            r.unknown_applied,
            r.unknown_never,
            r.unresolved,
            r.lost,
            r.duplicated,
            r.primaries.most,
            r.primaries.most_accepting,
            r.restarts.map_or("-".into(), |n| n.to_string()),
            r.heal_to_write_ms
                .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            r.slowest_write_ms as f64 / 1000.0,
        );
    }
    s
}

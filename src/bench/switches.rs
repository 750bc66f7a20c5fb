//! Context switches per request of each part of a system under load
//! (voluntary + involuntary, every thread of every process of the part),
//! read from `/proc/PID/task/TID/status`.
//!
//! A thread's counters vanish with it, and PostgreSQL's backends end with
//! their connections (pgbench's at the end of its run), so while a run lasts
//! a thread of [`Watch`] samples the PostgreSQL nodes' tasks every
//! [`SAMPLE`] and keeps the last count it saw of each: a backend that ends
//! loses at most its last [`SAMPLE`] of switches. The services, whose
//! threads live through the run, are read at its start and end only. The
//! client part adds the waited-for children (pgbench) from `getrusage`.
//! The sampler runs in this process, so its own few switches and its CPU
//! (reading ~100 small files four times a second) count under the client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::cpu::{Part, Parts};

/// How often the PostgreSQL nodes' tasks are read during a run.
pub const SAMPLE: Duration = Duration::from_millis(250);

/// Context switches per request of one part.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartSwitches {
    pub part: String,
    pub per_request: f64,
}

/// Voluntary + involuntary switches of one task, from its status file.
fn task_switches(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut total = 0;
    let mut seen = 0;
    for line in s.lines() {
        let v = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
        if let Some(v) = v {
            total += v.trim().parse::<u64>().ok()?;
            seen += 1;
        }
    }
    (seen == 2).then_some(total)
}

/// `(pid, tid) → switches` of every thread of process `pid`.
fn process_tasks(pid: &str, out: &mut Vec<((u32, u32), u64)>) {
    let Ok(n) = pid.parse::<u32>() else {
        return;
    };
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(v) = task_switches(&format!("/proc/{pid}/task/{tid}/status")) {
            out.push(((n, tid), v));
        }
    }
}

/// The children of `parent` (from `/proc/*/stat`).
fn children(parent: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        let s = std::fs::read_to_string(format!("/proc/{name}/stat")).ok()?;
        let rest = s.get(s.rfind(')')? + 2..)?;
        let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(name)
    })
    .collect()
}

/// Every task of `part` with its switches.
fn tasks(part: &Part) -> Vec<((u32, u32), u64)> {
    let mut out = Vec::new();
    match part {
        Part::Postgres(pm) => {
            process_tasks(&pm.to_string(), &mut out);
            for c in children(*pm) {
                process_tasks(&c, &mut out);
            }
        }
        Part::Processes(pids) => {
            for p in pids {
                process_tasks(&p.to_string(), &mut out);
            }
        }
        Part::OwnProcess => process_tasks(&std::process::id().to_string(), &mut out),
    }
    out
}

/// Switches of the waited-for children of this process (pgbench).
fn reaped_children() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0, |u| {
        (u.voluntary_context_switches() + u.involuntary_context_switches()).max(0) as u64
    })
}

/// What one part's tasks did since the run started.
#[derive(Debug, Default)]
struct Tally {
    /// (pid, tid) → (count when first seen, last count seen).
    tasks: HashMap<(u32, u32), (u64, u64)>,
    /// Switches of tasks whose id was reused by a new task.
    retired: u64,
}

impl Tally {
    /// `first`: the run's start, when what a task did before does not count.
    fn note(&mut self, seen: Vec<((u32, u32), u64)>, first: bool) {
        for (key, v) in seen {
            match self.tasks.get_mut(&key) {
                Some((base, last)) if v >= *last => *last = v,
                // A smaller count under a known id: a new task took it.
                Some((base, last)) => {
                    self.retired += last.saturating_sub(*base);
                    (*base, *last) = (0, v);
                }
                None => {
                    let base = if first { v } else { 0 };
                    self.tasks.insert(key, (base, v));
                }
            }
        }
    }

    fn total(&self) -> u64 {
        self.retired
            + self
                .tasks
                .values()
                .map(|(b, l)| l.saturating_sub(*b))
                .sum::<u64>()
    }
}

type Tallies = Arc<Mutex<Vec<(String, Part, Tally)>>>;

/// Counts context switches of every part from [`Watch::start`] to
/// [`Watch::finish`].
pub struct Watch {
    tallies: Tallies,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
    children_before: u64,
}

impl Watch {
    pub fn start(parts: &Parts) -> Watch {
        let tallies: Vec<(String, Part, Tally)> = parts
            .entries()
            .iter()
            .map(|(name, part)| {
                let mut t = Tally::default();
                t.note(tasks(part), true);
                (name.clone(), part.clone(), t)
            })
            .collect();
        let tallies = Arc::new(Mutex::new(tallies));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (tallies, stop) = (tallies.clone(), stop.clone());
            std::thread::Builder::new()
                .name("bench-switches".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(SAMPLE);
                        sample(&tallies, true);
                    }
                })
                .ok()
        };
        Watch {
            tallies,
            stop,
            sampler,
            children_before: reaped_children(),
        }
    }

    /// Switches per request of each part since [`Watch::start`], in the
    /// order the parts were named, plus the total.
    pub fn finish(mut self, requests: u64) -> Vec<PartSwitches> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        sample(&self.tallies, false);
        if requests == 0 {
            return Vec::new();
        }
        let children = reaped_children().saturating_sub(self.children_before);
        let tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PartSwitches> = tallies
            .iter()
            .map(|(name, part, t)| {
                let extra = if matches!(part, Part::OwnProcess) {
                    children
                } else {
                    0
                };
                PartSwitches {
                    part: name.clone(),
                    per_request: (t.total() + extra) as f64 / requests as f64,
                }
            })
            .collect();
        let total = out.iter().map(|p| p.per_request).sum();
        out.push(PartSwitches {
            part: "total".into(),
            per_request: total,
        });
        out
    }
}

/// One reading of the parts' tasks: only PostgreSQL's while the run lasts
/// (`during`), every part at its end.
fn sample(tallies: &Tallies, during: bool) {
    let mut tallies = tallies.lock().unwrap_or_else(|p| p.into_inner());
    for (_, part, tally) in tallies.iter_mut() {
        if during && !matches!(part, Part::Postgres(_)) {
            continue;
        }
        tally.note(tasks(part), false);
    }
}

/// The mean of several runs (parts as in the first run).
pub fn average(runs: &[Vec<PartSwitches>]) -> Vec<PartSwitches> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|d| d.part == c.part))
                .map(|d| d.per_request)
                .collect();
            PartSwitches {
                part: c.part.clone(),
                per_request: values.iter().sum::<f64>() / values.len().max(1) as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_thread_of_this_process_is_counted() {
        let parts = Parts::new().with("yo", Part::OwnProcess);
        let w = Watch::start(&parts);
        // Each sleep ends in a voluntary switch, in a thread born after the
        // start (counted from zero) and alive at the end (services' threads
        // are read at the start and the end only).
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(1));
            }
            done_tx.send(()).unwrap();
            exit_rx.recv().ok();
        });
        done_rx.recv().unwrap();
        let s = w.finish(10);
        exit_tx.send(()).unwrap();
        t.join().unwrap();
        let me = s.iter().find(|p| p.part == "yo").unwrap();
        assert!(me.per_request >= 5.0, "{s:?}");
        assert_eq!(s.last().unwrap().part, "total");
    }

    #[test]
    fn a_reused_task_id_keeps_what_the_old_task_did() {
        let mut t = Tally::default();
        t.note(vec![((1, 1), 100)], true);
        t.note(vec![((1, 1), 130)], false);
        // The id now belongs to a new task with fewer switches.
        t.note(vec![((1, 1), 5)], false);
        t.note(vec![((2, 2), 7)], false);
        assert_eq!(t.total(), 30 + 5 + 7);
    }

    #[test]
    fn reads_both_counters() {
        assert!(task_switches("/proc/self/status").is_some());
        assert!(task_switches("/proc/999999999/status").is_none());
    }
}

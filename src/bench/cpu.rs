//! Where the CPU goes: CPU time per request of each part of a system under
//! load, read from `/proc` before and after a measured step.
//!
//! On a machine this small every part competes for the same cores, so CPU
//! time per request explains a throughput ratio better than the ratio itself
//! (which swings with the disk and the neighbours): it is what one request
//! costs, whatever else the machine was doing. A part is a set of processes:
//! a PostgreSQL node is its postmaster, its live children and the children it
//! has already reaped (`cutime`/`cstime`: pgbench's backends end with each
//! run); the client is this process and the children it has waited for
//! (pgbench).

use serde::Serialize;

/// The processes of one part of the system.
#[derive(Debug, Clone)]
pub enum Part {
    /// A PostgreSQL node: the postmaster and everything under it.
    Postgres(i32),
    /// Service processes, each counted with its threads.
    Processes(Vec<u32>),
    /// This process (the load generator runs in it) and its waited-for children.
    OwnProcess,
}

/// CPU seconds of each named part at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(Vec<(String, f64)>);

/// CPU time per request of one part, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartCost {
    pub part: String,
    pub us_per_request: f64,
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Fields of `/proc/PID/stat` after the command name: (ppid, utime+stime,
/// cutime+cstime) in ticks.
fn stat(pid: &str) -> Option<(i32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let ppid = f.get(1)?.parse().ok()?;
    Some((ppid, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// Every process's parent, for finding a postmaster's children.
fn parents() -> Vec<(i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.parse::<i32>().ok()?;
        let (ppid, own, _) = stat(&name)?;
        Some((ppid, own))
    })
    .collect()
}

impl Part {
    fn ticks(&self, table: &[(i32, u64)]) -> u64 {
        match self {
            Part::Postgres(pm) => {
                let (_, own, reaped_children) = stat(&pm.to_string()).unwrap_or_default();
                let alive: u64 = table
                    .iter()
                    .filter(|(ppid, _)| ppid == pm)
                    .map(|(_, t)| t)
                    .sum();
                own + reaped_children + alive
            }
            Part::Processes(pids) => pids
                .iter()
                .filter_map(|p| stat(&p.to_string()))
                .map(|(_, t, _)| t)
                .sum(),
            Part::OwnProcess => stat("self").map_or(0, |(_, t, c)| t + c),
        }
    }
}

/// The parts to watch, by name.
#[derive(Debug, Clone, Default)]
pub struct Parts(Vec<(String, Part)>);

impl Parts {
    pub fn new() -> Parts {
        Parts(Vec::new())
    }

    /// The parts, by name, in the order they were named.
    pub fn entries(&self) -> &[(String, Part)] {
        &self.0
    }

    pub fn with(mut self, name: &str, part: Part) -> Parts {
        self.0.push((name.to_string(), part));
        self
    }

    pub fn now_snapshot(&self) -> Snapshot {
        let table = parents();
        let hz = ticks();
        Snapshot(
            self.0
                .iter()
                .map(|(n, p)| (n.clone(), p.ticks(&table) as f64 / hz))
                .collect(),
        )
    }
}

impl Snapshot {
    /// Microseconds of CPU per request of each part between `self` and
    /// `after`, in the order the parts were named, plus the total.
    pub fn per_request(&self, after: &Snapshot, requests: u64) -> Vec<PartCost> {
        if requests == 0 {
            return Vec::new();
        }
        let mut out: Vec<PartCost> = self
            .0
            .iter()
            .filter_map(|(n, before)| {
                let (_, now_snapshot) = after.0.iter().find(|(m, _)| m == n)?;
                let d = now_snapshot - before;
                Some(PartCost {
                    part: n.clone(),
                    us_per_request: d.max(0.0) * 1e6 / requests as f64,
                })
            })
            .collect();
        let total = out.iter().map(|c| c.us_per_request).sum();
        out.push(PartCost {
            part: "total".into(),
            us_per_request: total,
        });
        out
    }
}

/// The mean cost of each part over several runs (parts as in the first run).
pub fn average(runs: &[Vec<PartCost>]) -> Vec<PartCost> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|c| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.iter().find(|d| d.part == c.part))
                .map(|d| d.us_per_request)
                .collect();
            PartCost {
                part: c.part.clone(),
                us_per_request: values.iter().sum::<f64>() / values.len().max(1) as f64,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_charged_for_the_work_it_does() {
        let parts = Parts::new().with("yo", Part::OwnProcess);
        let before = parts.now_snapshot();
        // 50 ms of this process's CPU (not of wall time, which a loaded
        // machine stretches): at 100 ticks/s that is several ticks.
        let cpu = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
                .map(std::time::Duration::from)
                .unwrap()
        };
        let start = cpu();
        let mut x = 0u64;
        while cpu() - start < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert_ne!(x, 42);
        let costs = before.per_request(&parts.now_snapshot(), 1000);
        let me = costs.iter().find(|c| c.part == "yo").unwrap();
        // 50 ms over 1000 requests is 50 us each; allow for tick rounding.
        assert!(
            me.us_per_request >= 20.0 && me.us_per_request <= 200.0,
            "{costs:?}"
        );
        assert_eq!(costs.last().unwrap().part, "total");
    }

    #[test]
    fn mean_over_runs() {
        let c = |p: &str, us: f64| PartCost {
            part: p.into(),
            us_per_request: us,
        };
        let m = average(&[
            vec![c("a", 10.0), c("total", 10.0)],
            vec![c("a", 30.0), c("total", 30.0)],
        ]);
        assert_eq!(m, vec![c("a", 20.0), c("total", 20.0)]);
        assert!(average(&[]).is_empty());
    }

    #[test]
    fn stat_survives_a_command_name_with_spaces_and_parentheses() {
        // Our own stat line parses; a missing process gives None.
        assert!(stat("self").is_some());
        assert!(stat("999999999").is_none());
    }
}

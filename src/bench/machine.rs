//! What the benchmark ran on (cores, CPU model, memory) and how much memory
//! each service process reached (`VmHWM` from `/proc/PID/status`).

use serde::Serialize;

/// The machine, as the report prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub memory_mb: u64,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            memory_mb: field(&meminfo, "MemTotal")
                .and_then(|v| kb(&v))
                .map_or(0, |k| k / 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), {} MB RAM, Linux {}",
            self.nproc, self.cpu, self.memory_mb, self.kernel
        )
    }
}

/// The value of the first `key: value` line of a /proc file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `1234 kB` → 1234.
fn kb(v: &str) -> Option<u64> {
    v.split_whitespace().next()?.parse().ok()
}

/// Peak resident set size of a process in KiB, while it runs.
pub fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&status, "VmHWM").and_then(|v| kb(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields() {
        let status = "Name:\tx\nVmPeak:\t  20000 kB\nVmHWM:\t    8123 kB\n";
        assert_eq!(field(status, "VmHWM").and_then(|v| kb(&v)), Some(8123));
        assert_eq!(field(status, "VmRSS"), None);
        assert!(vm_hwm_kb(std::process::id()).is_some_and(|k| k > 0));
    }
}

//! node_exporter's textfile collector, for tools that run briefly
//! (`biblioteca-failover`): the metrics are written to `DIR/NAME.prom`
//! through a temporary file in the same directory and a rename, so the
//! collector never reads half a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::{GaugeF, Label};

const LAST_SUCCESS: &str = "biblioteca_failover_last_success_timestamp_seconds";

/// Records one run of a tool's `action` in `dir/biblioteca_failover_<action>.prom`:
/// when it last ran, how long it took, whether it succeeded, and when it
/// last succeeded (kept from the previous file when this run failed).
pub fn record_run(
    dir: &Path,
    action: &'static str,
    started_unix: f64,
    took: Duration,
    success: bool,
) -> std::io::Result<PathBuf> {
    let name = format!("biblioteca_failover_{action}");
    let previous_success = std::fs::read_to_string(dir.join(format!("{name}.prom")))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(LAST_SUCCESS))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        });
    let mut registry = Registry::with_prefix("biblioteca_failover");
    let label: Label = [("action", action)];
    let gauge = |registry: &mut Registry, metric: &str, help: &str, value: f64| {
        let family = Family::<Label, GaugeF>::default();
        family.get_or_create(&label).set(value);
        registry.register(metric, help, family);
    };
    gauge(
        &mut registry,
        "last_run_timestamp_seconds",
        "When the action last started",
        started_unix,
    );
    gauge(
        &mut registry,
        "last_duration_seconds",
        "How long its last run took",
        took.as_secs_f64(),
    );
    gauge(
        &mut registry,
        "last_run_success",
        "1 when its last run succeeded",
        f64::from(u8::from(success)),
    );
    let last_success = if success {
        Some(started_unix)
    } else {
        previous_success
    };
    gauge(
        &mut registry,
        "last_success_timestamp_seconds",
        "When it last succeeded (0: never)",
        last_success.unwrap_or(0.0),
    );
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    write(dir, &name, &text)
}

/// Writes `text` (the Prometheus text format) to `dir/name.prom` atomically.
pub fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let target = dir.join(format!("{name}.prom"));
    // node_exporter skips files not ending in .prom, so the temporary one
    // is never read.
    let tmp = dir.join(format!(".{name}.prom.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| target)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_run_keeps_the_last_success() {
        let dir = std::env::temp_dir().join(format!("textfile-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = std::time::Duration::from_millis(1500);
        super::record_run(&dir, "promote", 1000.0, d, true).unwrap();
        let p = super::record_run(&dir, "promote", 2000.0, d, false).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(
                "biblioteca_failover_last_success_timestamp_seconds{action=\"promote\"} 1000"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "biblioteca_failover_last_run_timestamp_seconds{action=\"promote\"} 2000"
            ),
            "{text}"
        );
        assert!(
            text.contains("biblioteca_failover_last_run_success{action=\"promote\"} 0"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = super::write(&dir, "x", "a 1\n").unwrap();
        super::write(&dir, "x", "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

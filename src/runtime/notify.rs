//! sd-notify messages: readiness, status, reload, stop and watchdog.
//!
//! Every function is a no-op without systemd (no `NOTIFY_SOCKET`), and none of
//! them unsets `NOTIFY_SOCKET`, so a service can notify many times.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd-notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` expects.
pub fn reloading() {
    let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0);
    let mono = format!("MONOTONIC_USEC={usec}");
    send(&[NotifyState::Reloading, NotifyState::Custom(&mono)]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining in-flight requests"),
    ]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for, if any.
///
/// Read as libsystemd's `sd_watchdog_enabled` does: `WATCHDOG_USEC` sets the
/// interval, and `WATCHDOG_PID`, when present, must name this process (when
/// absent the watchdog applies to it). The sd-notify crate insists on
/// `WATCHDOG_PID`, which a test harness cannot know before spawning.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

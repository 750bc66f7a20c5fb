//! Per-request log lines that stay readable, and affordable, under load.
//!
//! The load manager and the actors log one line per request: the guide
//! (step 3.1) follows an actor's log to watch loans and returns go by. Under
//! load that is thousands of lines a second. Each costs its service several
//! µs of CPU (formatting, then a write or a journald datagram; about 3 % of
//! a request's CPU in the benchmark), journald its own share, and past
//! journald's rate limit (10 000 messages per 30 s per unit by default) the
//! journal drops a unit's messages wholesale, warnings included. So a service
//! writes at most `per_second` request lines a second at `info`; the others
//! go to `debug` (`RUST_LOG=debug` shows every one) and are counted, and one
//! `info` line a second says how many were not shown. A handful of requests,
//! as in the guide, are all logged at `info`.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// The per-second budget of request lines at `info`.
#[derive(Debug)]
pub struct RequestLog {
    /// 0: no limit.
    per_second: u32,
    window: Instant,
    shown: u32,
    hidden: u64,
}

/// Milliseconds from `from` to `to` (0 when `to` is earlier), for the
/// latency field of request lines.
pub fn ms_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_millis() as u64
}

/// Logs a request line at `info` when `$admit` is true, else at `debug`.
#[macro_export]
macro_rules! request_line {
    ($admit:expr, $($arg:tt)+) => {
        if $admit {
            tracing::info!($($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

impl RequestLog {
    pub fn new(per_second: u32, now: Instant) -> RequestLog {
        RequestLog {
            per_second,
            window: now,
            shown: 0,
            hidden: 0,
        }
    }

    /// Whether the next request line goes out at `info` (counted otherwise).
    pub fn admit(&mut self, now: Instant) -> bool {
        self.roll(now);
        if self.per_second == 0 || self.shown < self.per_second {
            self.shown += 1;
            true
        } else {
            self.hidden += 1;
            false
        }
    }

    /// Once a second has passed: the summary of the lines not shown in it,
    /// if any, and a new window. Call it from the service's timers too, so
    /// the summary of a burst comes out when the burst ends.
    pub fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) < WINDOW {
            return None;
        }
        let hidden = std::mem::take(&mut self.hidden);
        self.window = now;
        self.shown = 0;
        if hidden == 0 {
            return None;
        }
        tracing::info!(
            not_shown = hidden,
            limit = self.per_second,
            "{hidden} more requests in the last second, logged at debug level only \
             (at most {} request lines a second at info; RUST_LOG=debug shows all)",
            self.per_second
        );
        Some(hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_first_lines_of_each_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut log = RequestLog::new(3, t0);
        let admitted: Vec<bool> = (0..5).map(|_| log.admit(t0)).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        // Still inside the window: nothing to summarize yet.
        assert_eq!(log.roll(t0 + Duration::from_millis(999)), None);
        // The timer closes the window: two were not shown.
        assert_eq!(log.roll(t0 + WINDOW), Some(2));
        assert_eq!(log.roll(t0 + 2 * WINDOW), None);
        // A new window starts with a full budget.
        let later = t0 + 3 * WINDOW;
        assert!((0..3).all(|_| log.admit(later)));
        assert!(!log.admit(later));
        // admit() itself closes an old window before counting.
        assert!(log.admit(later + WINDOW));
    }

    #[test]
    fn zero_means_every_line_at_info() {
        let t0 = Instant::now();
        let mut log = RequestLog::new(0, t0);
        assert!((0..10_000).all(|_| log.admit(t0)));
        assert_eq!(log.roll(t0 + WINDOW), None);
    }
}

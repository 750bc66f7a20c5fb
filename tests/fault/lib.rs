//! Fault injection for the liveness tests: test support, not service code.
//! The services link it only when built with the `fault-injection` feature
//! (off by default, so shipped builds have none); it lives under `tests/`
//! because its one job is to crash a thread the way a bug would.
//!
//! With `BIBLIOTECA_FAULT_FILE` naming a file, a thread checking in under
//! the name the file holds removes the file and panics: one panic per write,
//! so the restarted process runs normally.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable naming the trigger file.
pub const FAULT_FILE_ENV: &str = "BIBLIOTECA_FAULT_FILE";

/// How often one thread looks at the file.
const EVERY: Duration = Duration::from_millis(20);

fn trigger_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os(FAULT_FILE_ENV).map(PathBuf::from))
        .as_ref()
}

thread_local! {
    static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Panics when the trigger file names `thread` (and this thread removed it).
#[allow(clippy::panic)] // Panicking is the point: the tests make a thread die.
pub fn maybe_panic(thread: &str) {
    let Some(file) = trigger_file() else {
        return;
    };
    let now = Instant::now();
    if LAST.with(|l| l.get().is_some_and(|t| now.duration_since(t) < EVERY)) {
        return;
    }
    LAST.with(|l| l.set(Some(now)));
    let named = std::fs::read_to_string(file).is_ok_and(|t| t.trim() == thread);
    if named && std::fs::remove_file(file).is_ok() {
        panic!("fault injected into {thread}");
    }
}

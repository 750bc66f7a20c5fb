//! The services under hostile conditions, against real processes: a thread
//! that panics, signal storms under load, and a flood of junk on every
//! socket a stranger can reach.
//!
//! The panic case needs the binaries built with the `fault-injection`
//! feature (`tests/all.sh` does): each service is told through
//! `BIBLIOTECA_FAULT_FILE` which thread should die, must exit non-zero naming
//! it, and, restarted by this test as systemd's `Restart=` would, serve again
//! with nothing lost. Without the feature no thread dies and the case fails.

// A harness-less test is not compiled with cfg(test): allow what tests may do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod flood;
mod panics;
mod signals;

use biblioteca_protocol::Operacion;
use common::{run_suite, World, WorldSpec};
use std::time::Duration;

fn main() {
    run_suite(
        "hostile",
        || {
            let dir =
                std::env::temp_dir().join(format!("bib-hostile-fault-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            // Inherited by every service the world starts.
            std::env::set_var(panics::FAULT_FILE_ENV, dir.join("fault"));
            World::start(WorldSpec {
                tag: "hostile",
                ports: None,
                actors: Operacion::WRITES.to_vec(),
                deadline: Duration::from_millis(5000),
            })
        },
        &[
            (
                "a_panicking_thread_ends_its_service",
                panics::a_panicking_thread_ends_its_service,
            ),
            (
                "signal_storms_change_nothing",
                signals::signal_storms_change_nothing,
            ),
            (
                "a_flood_of_junk_changes_nothing",
                flood::a_flood_of_junk_changes_nothing,
            ),
        ],
    )
}

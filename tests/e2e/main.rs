//! End-to-end suite: ONE primary/standby pair and ONE set of services (real
//! binaries, free ports) for every case; the runner (tests/common) tears them
//! down even when a case fails.
//!
//! Cases: the guide's parts 2-4 step by step, the last-copy race, idempotency
//! (same id twice, same id concurrently, two actors on one topic), every kind
//! of bad input on every socket, sd-notify readiness, and
//! `ServicioNoDisponible` while the loan actors are down followed by a retry
//! under the same id applied once, and the load generator's report checked
//! against the database, and the services' threads' scheduling policy.

// A harness-less test is not compiled with cfg(test): allow what tests may do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod guide;
mod idempotency;
mod load_generator;
mod outage;
mod usuarios;

use biblioteca_protocol::Operacion;
use common::{run_suite, World, WorldSpec};
use std::time::Duration;

fn main() {
    run_suite(
        "e2e",
        || {
            World::start(WorldSpec {
                tag: "e2e",
                ports: None,
                actors: Operacion::WRITES.to_vec(),
                deadline: Duration::from_millis(5000),
            })
        },
        &[
            ("sd_notify_ready", outage::sd_notify_ready),
            ("sd_notify_reload", outage::sd_notify_reload),
            (
                "sd_notify_watchdog_and_stop",
                outage::sd_notify_watchdog_and_stop,
            ),
            ("services_batch_scheduled", outage::services_batch_scheduled),
            ("guide_parts_2_to_4", guide::parts_2_to_4),
            ("business_errors", guide::business_errors),
            ("last_copy_race", idempotency::last_copy_race),
            ("same_id_twice", idempotency::same_id_twice),
            ("same_id_concurrently", idempotency::same_id_concurrently),
            ("two_loan_actors", idempotency::two_loan_actors),
            ("bad_input", bad_input::bad_input_everywhere),
            ("unicode_users", usuarios::one_user_per_name_in_any_form),
            ("actor_down_then_retry", outage::actor_down_then_retry),
            (
                "load_generator_agrees_with_the_database",
                load_generator::load_generator_agrees_with_the_database,
            ),
        ],
    )
}

//! The storage manager's write scheduling against a real primary with a
//! synchronous standby: a book's writes queue in the storage manager and run
//! as one transaction per batch. Each case starts its own storage manager
//! with one or two workers, so the test decides what queues: a row lock held
//! from a test session stalls the worker, the requests sent meanwhile wait
//! in the storage manager, and releasing the lock lets them run as batches.
//! Which requests shared a transaction is read back from the database
//! (`xmin` of the rows they wrote), not assumed.
//!
//! Cases: the last copy raced inside one batch (one winner) with the same
//! request id twice in that batch (applied once); no request starves behind a
//! hot book's backlog; reads are not stuck behind a book's queued writes; a
//! worker whose backend is terminated mid-batch loses and duplicates nothing
//! (another book in that batch neither); several books' writes share one
//! transaction, with business refusals among them that change nothing for
//! the others; two storage managers' concurrent batches of the same books,
//! queued in opposite orders, do not deadlock; requests of several books in
//! one multi-request message share a transaction with no worker stalled.

// A harness-less test is not compiled with cfg(test): allow what tests may do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod cross_book;

use biblioteca_protocol::Operacion;
use common::{run_suite, World, WorldSpec};
use std::time::Duration;

fn main() {
    run_suite(
        "scheduling",
        || {
            World::start(WorldSpec {
                tag: "scheduling",
                ports: None,
                actors: vec![Operacion::Prestamo],
                deadline: Duration::from_millis(5000),
            })
        },
        &[
            (
                "last_copy_and_duplicate_id_in_one_batch",
                cases::last_copy_and_duplicate_id_in_one_batch,
            ),
            ("no_request_starves", cases::no_request_starves),
            (
                "reads_are_not_stuck_behind_writes",
                cases::reads_are_not_stuck_behind_writes,
            ),
            (
                "backend_terminated_mid_batch",
                cases::backend_terminated_mid_batch,
            ),
            (
                "refusals_inside_a_cross_book_batch",
                cross_book::refusals_inside_a_cross_book_batch,
            ),
            (
                "requests_arriving_together_share_a_transaction",
                cross_book::requests_arriving_together_share_a_transaction,
            ),
            (
                "concurrent_cross_book_batches_do_not_deadlock",
                cross_book::concurrent_cross_book_batches_do_not_deadlock,
            ),
        ],
    )
}

use super::*;
use std::sync::mpsc::{channel, Receiver};

/// A test job: a number, and the book it writes (`None`: a read).
#[derive(Debug, Clone, PartialEq, Eq)]
struct T(u32, Option<&'static str>);

impl Work for T {
    fn book(&self) -> Option<&str> {
        self.1
    }
}

fn r(n: u32) -> T {
    T(n, None)
}

fn w(n: u32, book: &'static str) -> T {
    T(n, Some(book))
}

fn setup(n: usize, q: usize) -> (Dispatch<T>, Vec<Receiver<Vec<T>>>) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
    (Dispatch::new(tx, q), rx)
}

fn numbers(v: Vec<T>) -> Vec<u32> {
    v.into_iter().map(|t| t.0).collect()
}

#[test]
fn idle_workers_first_then_queue_then_full() {
    let (mut d, rx) = setup(2, 1);
    assert_eq!(d.submit(r(1)), Ok(()));
    assert_eq!(d.submit(r(2)), Ok(()));
    assert_eq!(d.submit(r(3)), Ok(()));
    assert_eq!(d.queued(), 1);
    assert_eq!(d.submit(r(4)), Err((Refused::Full, r(4))));
    // Worker 0 took job 1 (last in, first out from a fresh start).
    assert_eq!(rx[0].try_recv(), Ok(vec![r(1)]));
    assert_eq!(rx[1].try_recv(), Ok(vec![r(2)]));
    d.done(1);
    assert_eq!(rx[1].try_recv(), Ok(vec![r(3)]));
    assert_eq!(d.queued(), 0);
    d.done(1);
    d.done(1); // a duplicate report changes nothing
    assert_eq!(d.submit(r(5)), Ok(()));
    assert_eq!(rx[1].try_recv(), Ok(vec![r(5)]));
    assert_eq!(d.submit(r(6)), Ok(()));
    assert_eq!(d.queued(), 1);
}

#[test]
fn the_most_recently_idle_worker_is_reused() {
    let (mut d, rx) = setup(3, 4);
    for j in 0..3 {
        assert_eq!(d.submit(r(j)), Ok(()));
    }
    d.done(2);
    d.done(0);
    assert_eq!(d.submit(r(9)), Ok(()));
    assert_eq!(numbers(rx[0].try_iter().flatten().collect()), vec![0, 9]);
}

#[test]
fn exited_workers_are_skipped_and_closed_dispatch_refuses() {
    let (mut d, mut rx) = setup(2, 4);
    drop(rx.remove(0)); // worker 0 exited
    assert_eq!(d.submit(w(1, "a")), Ok(()));
    // Worker 0's channel is closed: the job went to worker 1 instead.
    assert_eq!(rx[0].try_recv(), Ok(vec![w(1, "a")]));
    assert_eq!(d.queued(), 0);
    assert_eq!(d.submit(w(2, "a")), Ok(()));
    assert_eq!(d.queued(), 1);
    d.done(1);
    assert_eq!(rx[0].try_recv(), Ok(vec![w(2, "a")]));
    d.close();
    assert_eq!(d.submit(r(3)), Err((Refused::Gone, r(3))));
}

#[test]
fn a_books_writes_wait_for_its_batch_and_then_go_together_in_order() {
    let (mut d, rx) = setup(4, 100);
    d.submit(w(1, "a")).unwrap();
    // Idle workers remain, but book a has a batch in flight: these queue.
    for n in 2..=5 {
        d.submit(w(n, "a")).unwrap();
    }
    d.submit(w(6, "b")).unwrap();
    assert_eq!(d.queued(), 4);
    let first: Vec<_> = rx.iter().flat_map(|c| c.try_iter()).collect();
    assert_eq!(first, vec![vec![w(1, "a")], vec![w(6, "b")]]);
    // The worker that ran book a's batch reports: the rest of a, in order,
    // in one batch.
    d.done(0);
    let next: Vec<_> = rx.iter().flat_map(|c| c.try_iter()).collect();
    assert_eq!(next.len(), 1);
    assert_eq!(numbers(next[0].clone()), vec![2, 3, 4, 5]);
    assert_eq!(d.queued(), 0);
}

#[test]
fn reads_do_not_wait_behind_a_books_writes() {
    let (mut d, rx) = setup(2, 100);
    d.submit(w(1, "a")).unwrap();
    d.submit(w(2, "a")).unwrap();
    d.submit(r(3)).unwrap();
    assert_eq!(rx[1].try_recv(), Ok(vec![r(3)]));
    assert_eq!(d.queued(), 1);
}

#[test]
fn batches_are_bounded_and_a_continuously_hot_book_starves_nobody() {
    let (mut d, rx) = setup(1, 10_000);
    d.submit(w(0, "hot")).unwrap();
    let backlog = MAX_BATCH as u32 + 8;
    for n in 1..=backlog {
        d.submit(w(n, "hot")).unwrap();
    }
    d.submit(w(1000, "cold")).unwrap();
    d.submit(r(2000)).unwrap();
    assert_eq!(rx[0].try_recv(), Ok(vec![w(0, "hot")]));
    // Five more hot writes arrive during every batch, for ever.
    let mut next_hot = backlog + 1;
    let mut order = Vec::new();
    for _ in 0..6 {
        for _ in 0..5 {
            d.submit(w(next_hot, "hot")).unwrap();
            next_hot += 1;
        }
        d.done(0);
        order.push(numbers(rx[0].try_recv().expect("work for the idle worker")));
    }
    assert!(order.iter().all(|b| b.len() <= MAX_BATCH), "{order:?}");
    // The cold book became ready while the hot one ran: its turn is next,
    // and the batch fills up with the hot book's oldest writes.
    let mut first = vec![1000];
    first.extend(1..MAX_BATCH as u32);
    assert_eq!(order[0], first);
    // The read waits for the work older than it, never for all the hot
    // writes that keep coming after it.
    let read_at = order
        .iter()
        .position(|b| b == &vec![2000])
        .expect("read served");
    assert_eq!(read_at, 2, "{order:?}");
    // (A book's turn takes all it has queued, newer writes too, up to the bound.)
    assert_eq!(order[1][0], MAX_BATCH as u32, "{order:?}");
    let hot: Vec<u32> = order
        .iter()
        .flatten()
        .copied()
        .filter(|n| *n < 1000)
        .collect();
    assert!(hot.windows(2).all(|p| p[0] + 1 == p[1]), "{hot:?}");
}

#[test]
fn the_oldest_waiting_work_goes_first() {
    let (mut d, rx) = setup(1, 100);
    d.submit(r(0)).unwrap();
    d.submit(w(1, "a")).unwrap();
    d.submit(r(2)).unwrap();
    d.submit(w(3, "b")).unwrap();
    d.submit(w(4, "a")).unwrap();
    let mut order = vec![rx[0].try_recv().unwrap()];
    while d.queued() > 0 {
        d.done(0);
        order.push(rx[0].try_recv().unwrap());
    }
    let order: Vec<_> = order.into_iter().map(numbers).collect();
    // Book a's turn came first; book b, ready too, joined its batch.
    assert_eq!(order, vec![vec![0], vec![1, 4, 3], vec![2]]);
}

#[test]
fn while_holding_writes_of_several_books_go_to_one_worker() {
    let (mut d, rx) = setup(4, 100);
    d.hold();
    for (n, b) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
        d.submit(w(n, b)).unwrap();
    }
    d.submit(r(5)).unwrap();
    assert!(
        rx.iter().all(|c| c.try_recv().is_err()),
        "placed while holding"
    );
    d.release();
    let got: Vec<Vec<u32>> = rx.iter().flat_map(|c| c.try_iter()).map(numbers).collect();
    // One batch for the three books (each book's writes in order), the read
    // on a worker of its own.
    assert_eq!(got, vec![vec![1, 3, 2, 4], vec![5]]);
    assert_eq!(d.queued(), 0);
    // Books in flight keep their later writes queued, even across batches.
    d.submit(w(6, "b")).unwrap();
    d.submit(w(7, "d")).unwrap();
    assert_eq!(d.queued(), 1);
    let d_batch: Vec<_> = rx.iter().flat_map(|c| c.try_iter()).collect();
    assert_eq!(d_batch, vec![vec![w(7, "d")]]);
}

#[test]
fn while_holding_the_queue_is_full_only_when_nothing_can_be_placed() {
    let (mut d, rx) = setup(1, 2);
    d.hold();
    // Beyond max_queue, held work is placed first to make room.
    for n in 0..4 {
        d.submit(w(n, "a")).unwrap();
    }
    let first = rx[0].try_recv().unwrap();
    assert_eq!(numbers(first), vec![0, 1]);
    assert_eq!(d.queued(), 2);
    assert_eq!(d.submit(w(9, "b")), Err((Refused::Full, w(9, "b"))));
    // A finished worker takes nothing until the release.
    d.done(0);
    assert!(rx[0].try_recv().is_err());
    d.release();
    assert_eq!(numbers(rx[0].try_recv().unwrap()), vec![2, 3]);
}

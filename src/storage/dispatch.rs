//! Which storage worker gets the next request.
//!
//! Each worker has a channel of its own and the front-end hands a job only to
//! a worker it knows is idle (a worker is idle again once its reply reaches
//! the front-end). The alternative, every worker waiting on one shared
//! receiver behind a mutex, costs a second wake-up per request (the mutex
//! passes to the next waiter each time a job is taken): on two cores that was
//! a measurable share of the storage manager's CPU. Idle workers are reused
//! last-in first-out, so a few warm threads (and their pooled connections)
//! serve a light load. Jobs that find every worker busy wait in a bounded
//! queue; beyond it the caller answers `ServicioOcupado`.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;

/// Why a job was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Every worker is busy and the queue is full.
    Full,
    /// Every worker has exited.
    Gone,
}

pub(super) struct Dispatch<J> {
    workers: Vec<Sender<J>>,
    idle: Vec<usize>,
    queue: VecDeque<J>,
    max_queue: usize,
}

impl<J> Dispatch<J> {
    /// `workers[i]` is the channel of worker `i`; all start idle.
    pub(super) fn new(workers: Vec<Sender<J>>, max_queue: usize) -> Dispatch<J> {
        let idle = (0..workers.len()).rev().collect();
        Dispatch {
            workers,
            idle,
            queue: VecDeque::new(),
            max_queue,
        }
    }

    /// Hands `job` to an idle worker, or queues it.
    pub(super) fn submit(&mut self, job: J) -> Result<(), (Refused, J)> {
        if self.workers.is_empty() {
            return Err((Refused::Gone, job));
        }
        let mut job = job;
        while let Some(i) = self.idle.pop() {
            match self.hand(i, job) {
                Ok(()) => return Ok(()),
                Err(back) => job = back,
            }
        }
        if self.queue.len() >= self.max_queue {
            return Err((Refused::Full, job));
        }
        self.queue.push_back(job);
        Ok(())
    }

    /// Worker `i` finished a job: give it the oldest queued one, if any.
    pub(super) fn done(&mut self, i: usize) {
        if i >= self.workers.len() || self.idle.contains(&i) {
            return;
        }
        match self.queue.pop_front() {
            Some(job) => {
                if let Err(job) = self.hand(i, job) {
                    self.queue.push_front(job);
                }
            }
            None => self.idle.push(i),
        }
    }

    /// Jobs waiting for a worker.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Closes every channel: each worker exits after its current job.
    pub(super) fn close(&mut self) {
        self.workers.clear();
        self.idle.clear();
    }

    /// A worker whose channel is closed has exited: it never becomes idle
    /// again, and the job goes back to the caller.
    fn hand(&mut self, i: usize, job: J) -> Result<(), J> {
        match self.workers.get(i) {
            Some(w) => w.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver};

    fn setup(n: usize, q: usize) -> (Dispatch<u32>, Vec<Receiver<u32>>) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| channel()).unzip();
        (Dispatch::new(tx, q), rx)
    }

    #[test]
    fn idle_workers_first_then_queue_then_full() {
        let (mut d, rx) = setup(2, 1);
        assert_eq!(d.submit(1), Ok(()));
        assert_eq!(d.submit(2), Ok(()));
        assert_eq!(d.submit(3), Ok(()));
        assert_eq!(d.queued(), 1);
        assert_eq!(d.submit(4), Err((Refused::Full, 4)));
        // Worker 0 took job 1 (last in, first out from a fresh start).
        assert_eq!(rx[0].try_recv(), Ok(1));
        assert_eq!(rx[1].try_recv(), Ok(2));
        d.done(1);
        assert_eq!(rx[1].try_recv(), Ok(3));
        assert_eq!(d.queued(), 0);
        d.done(1);
        d.done(1); // a duplicate report changes nothing
        assert_eq!(d.submit(5), Ok(()));
        assert_eq!(rx[1].try_recv(), Ok(5));
        assert_eq!(d.submit(6), Ok(()));
        assert_eq!(d.queued(), 1);
    }

    #[test]
    fn the_most_recently_idle_worker_is_reused() {
        let (mut d, rx) = setup(3, 4);
        for j in 0..3 {
            assert_eq!(d.submit(j), Ok(()));
        }
        d.done(2);
        d.done(0);
        assert_eq!(d.submit(9), Ok(()));
        assert_eq!(rx[0].try_iter().collect::<Vec<_>>(), vec![0, 9]);
    }

    #[test]
    fn exited_workers_are_skipped_and_closed_dispatch_refuses() {
        let (mut d, mut rx) = setup(2, 4);
        drop(rx.remove(0)); // worker 0 exited
        assert_eq!(d.submit(1), Ok(()));
        // Worker 0's channel is closed: the job went to worker 1 instead.
        assert_eq!(rx[0].try_recv(), Ok(1));
        assert_eq!(d.queued(), 0);
        assert_eq!(d.submit(2), Ok(()));
        assert_eq!(d.queued(), 1);
        d.close();
        assert_eq!(d.submit(3), Err((Refused::Gone, 3)));
    }
}

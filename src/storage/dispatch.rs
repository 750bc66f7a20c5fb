//! Which storage worker gets the next request, and which writes go together.
//!
//! Each worker has a channel of its own and the front-end hands work only to
//! a worker it knows is idle (a worker is idle again once its replies reach
//! the front-end). The alternative, every worker waiting on one shared
//! receiver behind a mutex, costs a second wake-up per request (the mutex
//! passes to the next waiter each time a job is taken): on two cores that was
//! a measurable share of the storage manager's CPU. Idle workers are reused
//! last-in first-out, so a few warm threads (and their pooled connections)
//! serve a light load.
//!
//! Writes queue per book: at most one worker at a time runs a book's writes,
//! and when it is free it takes every write queued for that book (up to
//! [`MAX_BATCH`], oldest first) to run them in one transaction. A hot book's
//! requests thus wait here, in order, instead of as row-lock waiters inside
//! PostgreSQL each holding a backend and a worker, and one commit (one
//! synchronous-standby round trip) serves the whole batch. Reads have no
//! book lane: any idle worker takes them at once. When work waits for a
//! worker, the oldest read and the book whose turn it is (books take turns
//! in the order they became ready) compete by age, so neither reads nor a
//! continuously hot book can starve the rest. Beyond `max_queue` waiting
//! jobs the caller answers `ServicioOcupado`.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::Sender;

/// Writes of one book run in one transaction at most this many at a time:
/// a bound on a batch's statement time and on how long other books wait.
pub(super) const MAX_BATCH: usize = 32;

/// Why a job was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Every worker is busy and the queue is full.
    Full,
    /// Every worker has exited.
    Gone,
}

/// A job the dispatcher can place.
pub(super) trait Work {
    /// The book whose writes this job belongs with; `None` for reads.
    fn book(&self) -> Option<&str>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    /// Running a read, or a batch of the named book's writes.
    Busy(Option<String>),
    /// Its channel is closed: the thread has exited.
    Gone,
}

/// A book's queued writes; `running`: one of its batches is in flight.
struct Lane<J> {
    queue: VecDeque<(u64, J)>,
    running: bool,
}

pub(super) struct Dispatch<J> {
    workers: Vec<Sender<Vec<J>>>,
    state: Vec<State>,
    idle: Vec<usize>,
    reads: VecDeque<(u64, J)>,
    /// Books with queued writes or a batch in flight.
    lanes: HashMap<String, Lane<J>>,
    /// Books with queued writes and no batch in flight, in turn order.
    ready: VecDeque<String>,
    queued: usize,
    max_queue: usize,
    /// Arrival number of the next job (decides reads against books).
    seq: u64,
}

impl<J: Work> Dispatch<J> {
    /// `workers[i]` is the channel of worker `i`; all start idle.
    pub(super) fn new(workers: Vec<Sender<Vec<J>>>, max_queue: usize) -> Dispatch<J> {
        let n = workers.len();
        Dispatch {
            workers,
            state: vec![State::Idle; n],
            idle: (0..n).rev().collect(),
            reads: VecDeque::new(),
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            queued: 0,
            max_queue,
            seq: 0,
        }
    }

    /// Hands `job` to an idle worker, or queues it (writes behind their
    /// book's batch in flight).
    pub(super) fn submit(&mut self, job: J) -> Result<(), (Refused, J)> {
        if self.workers.is_empty() || self.state.iter().all(|s| *s == State::Gone) {
            return Err((Refused::Gone, job));
        }
        let book = job.book().map(str::to_string);
        let free = match &book {
            None => true,
            Some(b) => !self.lanes.contains_key(b),
        };
        let mut job = job;
        if free {
            while let Some(i) = self.idle.pop() {
                match self.give(i, vec![job], book.clone()) {
                    Ok(()) => return Ok(()),
                    Err(mut back) => match back.pop() {
                        Some(j) => job = j,
                        None => return Ok(()),
                    },
                }
            }
        }
        if self.queued >= self.max_queue {
            return Err((Refused::Full, job));
        }
        self.queued += 1;
        let seq = self.seq;
        self.seq += 1;
        match book {
            None => self.reads.push_back((seq, job)),
            Some(b) => {
                let lane = self.lanes.entry(b.clone()).or_insert_with(|| Lane {
                    queue: VecDeque::new(),
                    running: false,
                });
                lane.queue.push_back((seq, job));
                if !lane.running && lane.queue.len() == 1 {
                    self.ready.push_back(b);
                }
            }
        }
        // Work can wait while a worker is idle only if a worker exited
        // under it; place what waits now.
        self.place_waiting();
        Ok(())
    }

    /// Worker `i` delivered its replies: its book may run its next batch,
    /// and the worker takes the oldest waiting work, if any.
    pub(super) fn done(&mut self, i: usize) {
        let Some(State::Busy(book)) = self.state.get(i).cloned() else {
            return;
        };
        self.state[i] = State::Idle;
        if let Some(b) = book {
            self.book_finished(&b);
        }
        self.idle.push(i);
        self.place_waiting();
    }

    /// Workers running a job.
    pub(super) fn busy(&self) -> usize {
        self.state
            .iter()
            .filter(|s| matches!(s, State::Busy(_)))
            .count()
    }

    /// Jobs waiting for a worker.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Closes every channel: each worker exits after its current work.
    pub(super) fn close(&mut self) {
        self.workers.clear();
        self.idle.clear();
        self.state.iter_mut().for_each(|s| *s = State::Gone);
    }

    fn book_finished(&mut self, b: &str) {
        let Some(lane) = self.lanes.get_mut(b) else {
            return;
        };
        lane.running = false;
        if lane.queue.is_empty() {
            self.lanes.remove(b);
        } else {
            self.ready.push_back(b.to_string());
        }
    }

    /// Gives waiting work to idle workers while both exist.
    fn place_waiting(&mut self) {
        while !self.idle.is_empty() {
            let Some((jobs, book)) = self.next_work() else {
                return;
            };
            let Some(i) = self.idle.pop() else {
                return;
            };
            if let Err(back) = self.give(i, jobs, book.clone()) {
                self.put_back(back, book);
            }
        }
    }

    /// The oldest of: the first waiting read, the batch of the book whose
    /// turn it is.
    fn next_work(&mut self) -> Option<(Vec<J>, Option<String>)> {
        let read_seq = self.reads.front().map(|(s, _)| *s);
        let book_seq = self
            .ready
            .front()
            .and_then(|b| self.lanes.get(b))
            .and_then(|l| l.queue.front())
            .map(|(s, _)| *s);
        let take_read = match (read_seq, book_seq) {
            (Some(r), Some(b)) => r < b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_read {
            let (_, job) = self.reads.pop_front()?;
            self.queued -= 1;
            return Some((vec![job], None));
        }
        let b = self.ready.pop_front()?;
        let lane = self.lanes.get_mut(&b)?;
        let n = lane.queue.len().min(MAX_BATCH);
        let jobs: Vec<J> = lane.queue.drain(..n).map(|(_, j)| j).collect();
        self.queued -= jobs.len();
        lane.running = true;
        Some((jobs, Some(b)))
    }

    /// Work a worker could not take goes back to the front of its queue,
    /// numbered as older than anything waiting.
    fn put_back(&mut self, jobs: Vec<J>, book: Option<String>) {
        self.queued += jobs.len();
        let oldest = self.reads.front().map(|(s, _)| *s).unwrap_or(self.seq);
        match book {
            None => {
                for j in jobs.into_iter().rev() {
                    self.reads.push_front((oldest.saturating_sub(1), j));
                }
            }
            Some(b) => {
                let lane = self.lanes.entry(b.clone()).or_insert_with(|| Lane {
                    queue: VecDeque::new(),
                    running: false,
                });
                for j in jobs.into_iter().rev() {
                    lane.queue.push_front((oldest.saturating_sub(1), j));
                }
                lane.running = false;
                self.ready.push_front(b);
            }
        }
    }

    /// Sends `jobs` to worker `i`; a closed channel marks the worker gone
    /// and the jobs come back.
    fn give(&mut self, i: usize, jobs: Vec<J>, book: Option<String>) -> Result<(), Vec<J>> {
        let Some(w) = self.workers.get(i) else {
            return Err(jobs);
        };
        if let Some(b) = &book {
            self.lanes
                .entry(b.clone())
                .or_insert_with(|| Lane {
                    queue: VecDeque::new(),
                    running: false,
                })
                .running = true;
        }
        match w.send(jobs) {
            Ok(()) => {
                self.state[i] = State::Busy(book);
                Ok(())
            }
            Err(e) => {
                self.state[i] = State::Gone;
                if let Some(b) = &book {
                    if let Some(lane) = self.lanes.get_mut(b) {
                        lane.running = false;
                        if lane.queue.is_empty() {
                            self.lanes.remove(b);
                        }
                    }
                }
                Err(e.0)
            }
        }
    }
}

#[cfg(test)]
#[path = "dispatch/tests.rs"]
mod tests;

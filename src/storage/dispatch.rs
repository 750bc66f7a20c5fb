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
//! and a worker that takes writes takes every write queued for the book whose
//! turn it is and then for the next ready books (up to [`MAX_BATCH`] in all,
//! each book's oldest first) to run them in one transaction. A hot book's
//! requests thus wait here, in order, instead of as row-lock waiters inside
//! PostgreSQL each holding a backend and a worker, and one commit (one
//! synchronous-standby round trip) serves the whole batch, whatever the
//! books. Batches form only from what is already here: while the front-end
//! drains its sockets it [`hold`](Dispatch::hold)s placement, so the writes
//! that arrived together go to one worker together; nothing ever waits for a
//! batch to fill. Reads have no
//! book lane: any idle worker takes them at once. When work waits for a
//! worker, the oldest read and the book whose turn it is (books take turns
//! in the order they became ready) compete by age, so neither reads nor a
//! continuously hot book can starve the rest. Beyond `max_queue` waiting
//! jobs the caller answers `ServicioOcupado`.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::Sender;

/// Writes run in one transaction at most this many at a time: a bound on a
/// batch's statement time and on how long other books wait.
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
    /// Running a read (no books), or a batch of the named books' writes.
    Busy(Vec<String>),
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
    /// Placement waits for [`release`](Dispatch::release).
    holding: bool,
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
            holding: false,
        }
    }

    /// Until [`release`](Dispatch::release), jobs only queue and finished
    /// workers only become idle: what arrives together is placed together.
    pub(super) fn hold(&mut self) {
        self.holding = true;
    }

    /// Places what queued while holding (writes of several books in one
    /// batch).
    pub(super) fn release(&mut self) {
        self.holding = false;
        self.place_waiting();
    }

    /// Hands `job` to an idle worker, or queues it (writes behind their
    /// book's batch in flight; everything while holding).
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
        if free && !self.holding {
            while let Some(i) = self.idle.pop() {
                match self.give(i, vec![job], book.iter().cloned().collect()) {
                    Ok(()) => return Ok(()),
                    Err(mut back) => match back.pop() {
                        Some(j) => job = j,
                        None => return Ok(()),
                    },
                }
            }
        }
        if self.queued >= self.max_queue {
            // Held work may fit idle workers: the queue is full only
            // when it cannot be placed.
            self.place_waiting();
            if self.queued >= self.max_queue {
                return Err((Refused::Full, job));
            }
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
        // under it (or placement is held); place what waits now.
        if !self.holding {
            self.place_waiting();
        }
        Ok(())
    }

    /// Worker `i` delivered its replies: its book may run its next batch,
    /// and the worker takes the oldest waiting work, if any.
    pub(super) fn done(&mut self, i: usize) {
        let Some(State::Busy(books)) = self.state.get(i).cloned() else {
            return;
        };
        self.state[i] = State::Idle;
        for b in &books {
            self.book_finished(b);
        }
        self.idle.push(i);
        if !self.holding {
            self.place_waiting();
        }
    }

    /// Jobs waiting for a worker.
    #[cfg(test)]
    fn queued(&self) -> usize {
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
            let Some((jobs, books)) = self.next_work() else {
                return;
            };
            let Some(i) = self.idle.pop() else {
                self.put_back(jobs, books);
                return;
            };
            if let Err(back) = self.give(i, jobs, books.clone()) {
                self.put_back(back, books);
            }
        }
    }

    /// The oldest of: the first waiting read, the batch that starts with the
    /// book whose turn it is (and takes the next ready books' writes while
    /// it has room).
    fn next_work(&mut self) -> Option<(Vec<J>, Vec<String>)> {
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
            return Some((vec![job], Vec::new()));
        }
        let mut jobs: Vec<J> = Vec::new();
        let mut books = Vec::new();
        while jobs.len() < MAX_BATCH {
            let Some(b) = self.ready.pop_front() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&b) else {
                continue;
            };
            let n = lane.queue.len().min(MAX_BATCH - jobs.len());
            jobs.extend(lane.queue.drain(..n).map(|(_, j)| j));
            lane.running = true;
            books.push(b);
        }
        self.queued -= jobs.len();
        (!jobs.is_empty()).then_some((jobs, books))
    }

    /// Work a worker could not take goes back to the front of its queues,
    /// numbered as older than anything waiting, its books first in turn.
    fn put_back(&mut self, jobs: Vec<J>, books: Vec<String>) {
        self.queued += jobs.len();
        let oldest = self.reads.front().map(|(s, _)| *s).unwrap_or(self.seq);
        let older = oldest.saturating_sub(1);
        if books.is_empty() {
            for j in jobs.into_iter().rev() {
                self.reads.push_front((older, j));
            }
            return;
        }
        for j in jobs.into_iter().rev() {
            let Some(b) = j.book().map(str::to_string) else {
                self.reads.push_front((older, j));
                continue;
            };
            self.lanes
                .entry(b)
                .or_insert_with(|| Lane {
                    queue: VecDeque::new(),
                    running: false,
                })
                .queue
                .push_front((older, j));
        }
        for b in books.into_iter().rev() {
            if let Some(lane) = self.lanes.get_mut(&b) {
                lane.running = false;
                if lane.queue.is_empty() {
                    self.lanes.remove(&b);
                    continue;
                }
            }
            self.ready.retain(|r| *r != b);
            self.ready.push_front(b);
        }
    }

    /// Sends `jobs` to worker `i`; a closed channel marks the worker gone
    /// and the jobs come back.
    fn give(&mut self, i: usize, jobs: Vec<J>, books: Vec<String>) -> Result<(), Vec<J>> {
        let Some(w) = self.workers.get(i) else {
            return Err(jobs);
        };
        for b in &books {
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
                self.state[i] = State::Busy(books);
                Ok(())
            }
            Err(e) => {
                self.state[i] = State::Gone;
                for b in &books {
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

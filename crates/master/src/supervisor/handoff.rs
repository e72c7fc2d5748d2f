//! Connection handoff, the master's part (issue 12): the only process that
//! knows both generations routes a draining worker's connections to a
//! worker of the serving generation, and decides, once and on this loop,
//! whether each batch moved.
//!
//! A `Handoff` batch goes to the least loaded ready worker of the serving
//! generation as `Adopt` (the descriptors pass through the master, which
//! closes its copies once sent). When that worker answers `Adopted` in time,
//! the batch is committed: the sender gets `HandoffResult` (and closes its
//! copies of the accepted connections), the receiver `AdoptOutcome { commit:
//! true }` (and serves them). When the receiver dies, cannot be sent to, or
//! does not answer within [`ADOPT_TIMEOUT`], or when no generation serves,
//! nothing moved: the sender keeps every connection, and a receiver that
//! answers late is told to close its copies. Never to a starting or
//! rolled-back generation, whose workers were never told to serve.
//!
//! This file never blocks: every send is a spawned task.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use river_ipc::{HandedConn, HandedKind, ToWorker};

use super::*;
use crate::process::WorkerHandle;

/// How long a receiver may take to answer `Adopt`.
pub(super) const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A worker as the master's events name it.
#[derive(Clone)]
pub(super) struct WorkerRef {
    pub(super) generation: u64,
    pub(super) index: usize,
    pub(super) pid: u32,
    pub(super) handle: WorkerHandle,
}

impl WorkerRef {
    fn is(&self, generation: u64, index: usize, pid: u32) -> bool {
        (self.generation, self.index, self.pid) == (generation, index, pid)
    }
}

/// A batch on its way: sent to `receiver` as master batch number `batch`.
pub(super) struct InFlight {
    sender: WorkerRef,
    /// The sender's own number for it.
    sender_batch: u64,
    receiver: WorkerRef,
    kinds: Vec<HandedKind>,
    deadline: Instant,
}

/// The batches in flight.
#[derive(Default)]
pub(super) struct Handoffs {
    next: u64,
    in_flight: HashMap<u64, InFlight>,
    /// Connections given to a receiver but not yet reported in its `Load`:
    /// spreads a burst of batches over the serving workers.
    assigned: HashMap<u32, u64>,
}

impl Supervisor {
    /// A draining worker's batch (already checked against its descriptors).
    pub(super) fn on_handoff(
        &mut self,
        from: (u64, usize, u32),
        batch: u64,
        conns: Vec<HandedConn>,
        fds: Vec<OwnedFd>,
    ) {
        let (generation, index, pid) = from;
        let Some(sender) = self.worker_ref(generation, index, pid) else {
            return; // gone or replaced: its descriptors close here
        };
        let refuse = |why: &str| {
            tracing::info!(generation, pid, batch, why, "handoff batch refused");
            sender.handle.send(ToWorker::HandoffResult {
                batch,
                accepted: vec![false; conns.len()],
            });
        };
        let from_draining = self
            .generations
            .iter()
            .any(|g| g.number == generation && g.state == State::Draining);
        if !from_draining {
            return refuse("the sender's generation is not draining");
        }
        let Some(receiver) = self.least_loaded_serving() else {
            return refuse("no serving worker");
        };
        self.handoffs.next += 1;
        let number = self.handoffs.next;
        *self.handoffs.assigned.entry(receiver.pid).or_default() += conns.len() as u64;
        let kinds = conns.iter().map(HandedConn::kind).collect();
        tracing::debug!(
            batch = number,
            from = pid,
            to = receiver.pid,
            connections = conns.len(),
            "handing over"
        );
        receiver.handle.send_adopt(
            ToWorker::Adopt {
                batch: number,
                conns,
            },
            fds,
            number,
            self.events_tx.clone(),
        );
        self.handoffs.in_flight.insert(
            number,
            InFlight {
                sender,
                sender_batch: batch,
                receiver,
                kinds,
                deadline: Instant::now() + ADOPT_TIMEOUT,
            },
        );
    }

    /// A receiver's answer to `Adopt`: the batch is committed.
    pub(super) fn on_adopted(&mut self, from: (u64, usize, u32), batch: u64, accepted: Vec<bool>) {
        let (generation, index, pid) = from;
        let matches = self
            .handoffs
            .in_flight
            .get(&batch)
            .is_some_and(|f| f.receiver.is(generation, index, pid));
        if !matches {
            // Late (already aborted), or not this worker's: close its copies.
            if let Some(worker) = self.worker_ref(generation, index, pid) {
                worker.handle.send(ToWorker::AdoptOutcome {
                    batch,
                    commit: false,
                });
            }
            return;
        }
        let Some(flight) = self.handoffs.in_flight.remove(&batch) else {
            return;
        };
        if accepted.len() != flight.kinds.len() {
            tracing::error!(pid, batch, "a worker answered Adopt with the wrong length");
            return self.abort_flight(batch, flight, "a malformed answer");
        }
        // The sender first: should the master die between the two sends,
        // a connection is closed rather than served twice.
        flight.sender.handle.send(ToWorker::HandoffResult {
            batch: flight.sender_batch,
            accepted: accepted.clone(),
        });
        flight.receiver.handle.send(ToWorker::AdoptOutcome {
            batch,
            commit: true,
        });
        let moved = accepted.iter().filter(|a| **a).count() as u64;
        for (kind, _) in flight.kinds.iter().zip(&accepted).filter(|(_, a)| **a) {
            self.metrics.connection_handed_over(*kind); // metrics
        }
        if let Some(gen) = self.generation_mut(flight.sender.generation) {
            gen.handed_out += moved;
        }
        if let Some(gen) = self.generation_mut(flight.receiver.generation) {
            gen.handed_in += moved;
        }
        tracing::info!(
            batch,
            from = flight.sender.pid,
            to = flight.receiver.pid,
            moved,
            kept = accepted.len() as u64 - moved,
            "connections handed over"
        );
    }

    /// Nothing of `batch` moved: the sender keeps all, the receiver closes
    /// whatever it adopted.
    fn abort_flight(&mut self, batch: u64, flight: InFlight, why: &str) {
        tracing::warn!(
            batch,
            from = flight.sender.pid,
            to = flight.receiver.pid,
            why,
            "handoff batch aborted: the connections stay with the draining worker"
        );
        flight.sender.handle.send(ToWorker::HandoffResult {
            batch: flight.sender_batch,
            accepted: vec![false; flight.kinds.len()],
        });
        flight.receiver.handle.send(ToWorker::AdoptOutcome {
            batch,
            commit: false,
        });
    }

    /// An `Adopt` could not be sent.
    pub(super) fn on_adopt_unsent(&mut self, batch: u64) {
        if let Some(flight) = self.handoffs.in_flight.remove(&batch) {
            self.abort_flight(batch, flight, "the receiver cannot be reached");
        }
    }

    /// A worker exited: batches it was to adopt did not move.
    pub(super) fn handoff_worker_exited(&mut self, generation: u64, index: usize, pid: u32) {
        self.handoffs.assigned.remove(&pid);
        self.abort_flights("the receiver exited", |f| {
            f.receiver.is(generation, index, pid)
        });
    }

    /// Batches whose receiver did not answer in time.
    pub(super) fn handoff_tick(&mut self, now: Instant) {
        self.abort_flights("the receiver did not answer in time", |f| now >= f.deadline);
    }

    /// Abort every batch in flight that `doomed` picks.
    fn abort_flights(&mut self, why: &str, doomed: impl Fn(&InFlight) -> bool) {
        let (aborted, kept): (HashMap<_, _>, HashMap<_, _>) =
            std::mem::take(&mut self.handoffs.in_flight)
                .into_iter()
                .partition(|(_, flight)| doomed(flight));
        self.handoffs.in_flight = kept;
        for (batch, flight) in aborted {
            self.abort_flight(batch, flight, why);
        }
    }

    /// A worker reported its load: what was assigned to it is counted there.
    pub(super) fn handoff_load_reported(&mut self, pid: u32) {
        self.handoffs.assigned.remove(&pid);
    }

    fn worker_ref(&self, generation: u64, index: usize, pid: u32) -> Option<WorkerRef> {
        let gen = self.generations.iter().find(|g| g.number == generation)?;
        let handle = gen.slots.get(index)?.handle.as_ref()?;
        (handle.pid == pid).then(|| WorkerRef {
            generation,
            index,
            pid,
            handle: handle.clone(),
        })
    }

    /// The serving generation's ready, accepting worker with the fewest
    /// connections (its last report plus what was handed to it since).
    fn least_loaded_serving(&self) -> Option<WorkerRef> {
        let gen = self
            .generations
            .iter()
            .filter(|g| g.state == State::Serving)
            .max_by_key(|g| g.number)?;
        gen.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.ready && slot.accepting)
            .filter_map(|(index, slot)| {
                let handle = slot.handle.as_ref()?;
                let assigned = self.handoffs.assigned.get(&handle.pid).copied();
                Some((slot.connections + assigned.unwrap_or(0), index, handle))
            })
            .min_by_key(|(load, index, _)| (*load, *index))
            .map(|(_, index, handle)| WorkerRef {
                generation: gen.number,
                index,
                pid: handle.pid,
                handle: handle.clone(),
            })
    }

    /// Connections handed over from `retired` so far, and those still open
    /// in draining generations: the reload's answer.
    pub(super) fn handoff_counts(&self, retired: &[u64]) -> (u64, u64) {
        let handed = self
            .generations
            .iter()
            .filter(|g| retired.contains(&g.number))
            .map(|g| g.handed_out)
            .sum::<u64>()
            + self
                .retired_handed
                .iter()
                .filter(|(n, _)| retired.contains(n))
                .map(|(_, c)| c)
                .sum::<u64>();
        let draining = self
            .generations
            .iter()
            .filter(|g| g.state == State::Draining)
            .map(|g| g.connections())
            .sum();
        (handed, draining)
    }
}

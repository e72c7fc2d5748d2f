//! Worker events: messages, exits, replacement with backoff.

use std::time::{Duration, Instant};

use river_ipc::FromWorker;

use super::*;
use crate::process::{spawn_worker, WorkerEvent};

impl Supervisor {
    pub(super) async fn on_worker_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Message {
                generation,
                index,
                pid,
                message,
            } => {
                let Some(gen) = self.generation_mut(generation) else {
                    return;
                };
                let Some(slot) = gen.slots.get_mut(index) else {
                    return;
                };
                if slot.handle.as_ref().map(|h| h.pid) != Some(pid) {
                    return; // from a worker this slot has already replaced
                }
                match message {
                    FromWorker::Draining => {
                        slot.accepting = false;
                        self.settle_handovers();
                    }
                    FromWorker::Ready { .. } => {
                        slot.ready = true;
                        match gen.state {
                            // A replacement joins its generation at once.
                            State::Serving => {
                                slot.accepting = true;
                                if let Some(worker) = slot.handle.clone() {
                                    gen.serve(&worker);
                                }
                            }
                            // A new generation serves only once all its
                            // workers are ready (two-phase start), and its
                            // names were looked up once.
                            State::Starting
                                if gen.slots.iter().all(|s| s.ready) && gen.discovery_ready() =>
                            {
                                self.promote(generation).await;
                            }
                            _ => {}
                        }
                    }
                    FromWorker::Load { connections } => {
                        slot.connections = connections;
                        self.handoff_load_reported(pid);
                    }
                    // The watcher reports a Handoff with its descriptors as
                    // WorkerEvent::Handoff; one without them moves nothing.
                    FromWorker::Handoff { batch, conns } => {
                        if let Some(worker) = &slot.handle {
                            worker.send(river_ipc::ToWorker::HandoffResult {
                                batch,
                                accepted: vec![false; conns.len()],
                            });
                        }
                    }
                    FromWorker::Adopted { batch, accepted } => {
                        self.on_adopted((generation, index, pid), batch, accepted)
                    }
                    FromWorker::Failed { error } => {
                        tracing::error!(generation, pid, "worker failed to start: {error}");
                        if gen.state == State::Starting {
                            self.abort_starting(generation, error);
                        }
                    }
                }
            }
            WorkerEvent::Exited {
                generation,
                index,
                pid,
                status,
            } => {
                // metrics: fold its counts before its slot can be reused
                self.metrics.worker_exited(generation, index);
                self.on_worker_exit(generation, index, pid, status);
                self.start_deferred_when_room().await;
            }
            WorkerEvent::Discovery(event) => self.on_discovery_event(event).await,
            WorkerEvent::Handoff {
                generation,
                index,
                pid,
                batch,
                conns,
                fds,
            } => self.on_handoff((generation, index, pid), batch, conns, fds),
            WorkerEvent::AdoptUnsent { batch } => self.on_adopt_unsent(batch),
        }
    }

    pub(super) fn on_worker_exit(&mut self, number: u64, index: usize, pid: u32, status: String) {
        let shutting_down = self.shutdown.is_some();
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        let Some(slot) = gen.slots.get_mut(index) else {
            return;
        };
        if slot.handle.as_ref().map(|h| h.pid) != Some(pid) {
            return;
        }
        slot.handle = None;
        slot.ready = false;
        slot.accepting = false;
        slot.connections = 0;
        self.handoff_worker_exited(number, index, pid);
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        let Some(slot) = gen.slots.get_mut(index) else {
            return;
        };
        match gen.state {
            State::Starting => {
                let error = format!("worker {pid} exited during start-up: {status}");
                self.abort_starting(number, error);
                return;
            }
            State::Serving if !shutting_down => {
                tracing::warn!(generation = number, pid, %status, "worker died: replacing it");
                if slot.started_at.elapsed() >= STABLE_AFTER {
                    slot.failures = 0;
                }
                let delay = restart_delay(slot.failures);
                slot.failures += 1;
                slot.restart_at = Some(Instant::now() + delay);
            }
            _ => tracing::info!(generation = number, pid, %status, "worker exited"),
        }
        self.remove_finished();
        self.settle_handovers();
    }

    /// Drop generations with no worker left and none to restart.
    pub(super) fn remove_finished(&mut self) {
        let metrics = &mut self.metrics;
        let retired_handed = &mut self.retired_handed;
        self.generations.retain(|gen| {
            let done = gen
                .slots
                .iter()
                .all(|s| s.handle.is_none() && s.restart_at.is_none());
            if done {
                // metrics: drop its board, record how its drain ended
                let drained = gen.drain_started.map(|t| t.elapsed().as_secs_f64());
                metrics.generation_finished(gen.number, drained);
                if gen.handed_out > 0 {
                    retired_handed.push((gen.number, gen.handed_out));
                    let excess = retired_handed.len().saturating_sub(16);
                    retired_handed.drain(..excess);
                }
            }
            if done && gen.state == State::Draining {
                tracing::info!(
                    generation = gen.number,
                    drain_secs = gen.drain_started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                    "generation drained"
                );
            }
            !done
        });
    }

    pub(super) async fn restart_due_workers(&mut self, now: Instant) {
        if self.shutdown.is_some() || self.successor.is_some() {
            return;
        }
        let events = self.events_tx.clone();
        for gen in &mut self.generations {
            if gen.state != State::Serving {
                continue;
            }
            for (index, slot) in gen.slots.iter_mut().enumerate() {
                if slot.restart_at.is_none_or(|at| now < at) {
                    continue;
                }
                match spawn_worker(gen.number, index, &gen.inputs, events.clone()) {
                    Ok(handle) => {
                        self.metrics.worker_spawned(gen.number, index, true); // metrics
                        tracing::info!(
                            generation = gen.number,
                            pid = handle.pid,
                            "replacement worker started"
                        );
                        slot.handle = Some(handle);
                        slot.started_at = now;
                        slot.restart_at = None;
                    }
                    Err(err) => {
                        tracing::error!(
                            generation = gen.number,
                            "cannot start replacement worker: {err}"
                        );
                        slot.restart_at = Some(now + restart_delay(slot.failures));
                        slot.failures += 1;
                    }
                }
            }
        }
    }
}

/// 0 for the first failure, then 100 ms doubling up to MAX_RESTART_DELAY.
pub(super) fn restart_delay(failures: u32) -> Duration {
    crate::process::restart_delay(failures, MAX_RESTART_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_grows_and_is_capped() {
        assert_eq!(restart_delay(0), Duration::ZERO);
        assert_eq!(restart_delay(1), Duration::from_millis(100));
        assert_eq!(restart_delay(2), Duration::from_millis(200));
        assert_eq!(restart_delay(5), Duration::from_millis(1600));
        assert_eq!(restart_delay(40), MAX_RESTART_DELAY);
    }
}

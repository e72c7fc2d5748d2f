//! Service discovery in the supervisor: a generation's readiness waits for
//! its resolver's first pass; a reload whose new names do not resolve is
//! rolled back naming them; changed sets go to every worker of the serving
//! generation; a worker starts serving only after it has every set.

use std::time::Instant;

use river_ipc::ToWorker;

use super::*;
use crate::discovery::{DiscoveryEvent, Outcome};
use crate::process::WorkerHandle;

impl Generation {
    /// Whether discovery lets this generation serve: no names, or the first
    /// pass is over.
    pub(super) fn discovery_ready(&self) -> bool {
        self.discovery.as_ref().is_none_or(|d| d.first_pass_done())
    }

    /// The messages that make `worker` serve: every discovered set, then `Serve`.
    fn serve_messages(&self) -> Vec<ToWorker> {
        let mut messages: Vec<ToWorker> = self
            .discovery
            .as_ref()
            .map(|d| d.sets().into_iter().map(ToWorker::Discovered).collect())
            .unwrap_or_default();
        messages.push(ToWorker::Serve);
        messages
    }

    /// Tell `worker` to serve, with the discovered sets first.
    pub(super) fn serve(&self, worker: &WorkerHandle) {
        worker.send_many(self.serve_messages());
    }

    /// Tell every worker to serve, with the discovered sets first.
    pub(super) fn serve_all(&self) {
        let messages = self.serve_messages();
        for worker in self.alive() {
            worker.send_many(messages.clone());
        }
    }
}

impl Supervisor {
    pub(super) async fn on_discovery_event(&mut self, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Exited {
                generation,
                pid,
                status,
            } => {
                if let Some(d) = self
                    .generation_mut(generation)
                    .and_then(|g| g.discovery.as_mut())
                {
                    d.on_exit(pid, &status);
                }
            }
            DiscoveryEvent::Message {
                generation,
                pid,
                message,
            } => {
                if let river_ipc::FromResolver::Failed { service, name, .. } = &message {
                    self.metrics.discovery_failed(service, name); // metrics
                }
                let Some(gen) = self.generation_mut(generation) else {
                    return;
                };
                let Some(d) = gen.discovery.as_mut() else {
                    return;
                };
                match d.on_message(pid, message) {
                    Outcome::Nothing | Outcome::Invalid => {}
                    // A starting generation's workers get the sets with Serve.
                    Outcome::Changed(set) => {
                        if gen.state == State::Serving {
                            gen.send_all(&ToWorker::Discovered(set));
                        }
                    }
                    Outcome::FirstPassDone => self.on_first_pass(generation).await,
                }
            }
        }
    }

    /// Generation `number`'s names were each looked up once. Those that gave
    /// nothing take the serving generation's set of the same name; if some
    /// still have none, a reload is rolled back naming them, while a first
    /// generation starts anyway (those services answer 503 until an answer
    /// comes).
    async fn on_first_pass(&mut self, number: u64) {
        let serving = self
            .generations
            .iter()
            .position(|g| g.state == State::Serving && g.number != number);
        let previous = serving.and_then(|i| self.generations[i].discovery.take());
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        if gen.state != State::Starting {
            if let (Some(i), Some(previous)) = (serving, previous) {
                self.generations[i].discovery = Some(previous);
            }
            return;
        }
        let unresolved = match gen.discovery.as_mut() {
            Some(d) => {
                d.inherit(previous.as_ref());
                d.unresolved()
            }
            None => Vec::new(),
        };
        if let (Some(i), Some(previous)) = (serving, previous) {
            self.generations[i].discovery = Some(previous);
        }
        if !unresolved.is_empty() {
            let names: Vec<String> = unresolved
                .iter()
                .map(|(service, name, error)| format!("`{name}` (service {service}): {error}"))
                .collect();
            if serving.is_some() {
                self.abort_starting(
                    number,
                    format!("service discovery: cannot resolve {}", names.join("; ")),
                );
                return;
            }
            for name in &names {
                tracing::error!(
                    generation = number,
                    "service discovery: cannot resolve {name}: answering 503 while retrying"
                );
            }
        }
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        if gen.slots.iter().all(|s| s.ready) {
            self.promote(number).await;
        }
    }

    /// Each tick: restart resolvers that died; stop those of generations
    /// that no longer serve (their workers keep the sets they have).
    pub(super) fn discovery_tick(&mut self, now: Instant) {
        let events = self.events_tx.clone();
        let shutting_down = self.shutdown.is_some();
        for gen in &mut self.generations {
            let Some(d) = gen.discovery.as_mut() else {
                continue;
            };
            if gen.state == State::Draining || shutting_down {
                d.stop();
            } else {
                d.restart_if_due(now, &events);
            }
        }
    }
}

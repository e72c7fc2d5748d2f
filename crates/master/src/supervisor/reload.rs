//! Reloads: validate, make room under the draining cap, start, promote, and
//! answer the caller once the retired generations stopped accepting.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_ipc::{ControlResponse, ToWorker};

use super::*;
use river_config::Config;

use crate::discovery::GenerationDiscovery;
use crate::inputs::GenerationInputs;
use crate::process::spawn_worker;

/// A reload's answer, held until the generations it retired stop accepting: from
/// then on every fresh connection sees the new configuration.
pub(super) struct Handover {
    pub(super) retired: Vec<u64>,
    pub(super) waiters: Vec<Reply>,
    pub(super) response: ControlResponse,
    /// A worker that never acknowledges must not hold the answer forever.
    pub(super) deadline: Instant,
    pub(super) promoted: Instant,
}

/// A validated generation waiting for killed draining generations to exit, so
/// that starting it never exceeds `1 + workers × (1 + max-draining-generations)`
/// processes.
pub(super) struct DeferredStart {
    pub(super) inputs: GenerationInputs,
    pub(super) waiters: Vec<Reply>,
    /// The generations killed to make room.
    pub(super) room_for: Vec<u64>,
    /// Start anyway by then (a killed worker that outlives SIGKILL's grace).
    pub(super) deadline: Instant,
}

/// A reload whose configuration is being loaded, off the event loop.
pub(super) struct Validation {
    pub(super) waiters: Vec<Reply>,
    pub(super) started: Instant,
}

impl Supervisor {
    /// A reload is under way: validating, waiting for room, or starting.
    pub(super) fn reloading(&self) -> bool {
        self.validating.is_some()
            || self.deferred_start.is_some()
            || self.generations.iter().any(|g| g.state == State::Starting)
    }

    /// Coalescing: while a reload is under way, every further request joins
    /// one follow-up reload, however many arrive. The configuration is loaded
    /// in a child process (`config_source`); [`Supervisor::on_config_loaded`]
    /// goes on from there.
    pub(super) async fn request_reload(&mut self, waiters: Vec<Reply>) {
        if self.shutdown.is_some() {
            for waiter in waiters {
                let _ = waiter.send(ControlResponse::ReloadFailed {
                    error: "the master is shutting down".into(),
                });
            }
            return;
        }
        if let Some(error) = self.reload_refusal() {
            tracing::error!("reload refused: {error}");
            for waiter in waiters {
                let _ = waiter.send(ControlResponse::ReloadFailed {
                    error: error.clone(),
                });
            }
            return;
        }
        if self.reloading() {
            self.pending_reload
                .get_or_insert_with(Vec::new)
                .extend(waiters);
            return;
        }
        self.notify.reloading();
        self.metrics.reload_begins(); // metrics: the reload history
        self.validating = Some(Validation {
            waiters,
            started: Instant::now(),
        });
        let source = self.source.clone();
        let loaded = self.loaded_tx.clone();
        tokio::spawn(async move {
            let _ = loaded.send(source.load_isolated().await);
        });
    }

    /// The reload's configuration is loaded (or refused): start its generation.
    /// A result that arrives after a shutdown began is dropped.
    pub(super) async fn on_config_loaded(&mut self, loaded: Result<Config, String>) {
        let Some(Validation { waiters, started }) = self.validating.take() else {
            return;
        };
        let config = match loaded {
            Ok(config) => config,
            Err(err) => {
                return self.reject_reload(waiters, "reload rejected, configuration unchanged", err)
            }
        };
        tracing::info!(
            millis = started.elapsed().as_millis() as u64,
            "configuration validated"
        );
        match GenerationInputs::prepare(config, &self.listeners) {
            Ok(inputs) => {
                self.metrics.reload_validated(); // metrics
                self.make_room_then_start(inputs, waiters).await
            }
            Err(err) => self.reject_reload(waiters, "reload rolled back", err),
        }
    }

    /// Answer a reload that failed before any worker started; nothing changed.
    pub(super) fn reject_reload(
        &mut self,
        waiters: Vec<Reply>,
        outcome: &str,
        error: impl std::fmt::Display,
    ) {
        tracing::error!("{outcome}:\n{error}");
        self.metrics.reload_rejected(&error.to_string()); // metrics
        for waiter in waiters {
            let _ = waiter.send(ControlResponse::ReloadFailed {
                error: error.to_string(),
            });
        }
        self.notify_serving(outcome);
    }

    /// Promoting a new generation turns the serving one into one more draining
    /// generation. When that would exceed `max-draining-generations`, the oldest
    /// draining ones are killed first and the new generation starts once they
    /// have exited: killing them only after it is ready would briefly run
    /// `workers` processes more than the cap promises.
    pub(super) async fn make_room_then_start(
        &mut self,
        inputs: GenerationInputs,
        waiters: Vec<Reply>,
    ) {
        let max_draining = inputs.config.system.max_draining_generations;
        let draining: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| g.state == State::Draining)
            .map(|g| g.number)
            .collect();
        let serving = self.generations.iter().any(|g| g.state == State::Serving);
        let excess = (draining.len() + usize::from(serving)).saturating_sub(max_draining);
        let room_for: Vec<u64> = draining.into_iter().take(excess).collect();
        if room_for.is_empty() {
            return self.start_generation(inputs, waiters).await;
        }
        for number in &room_for {
            self.kill_generation_now(
                *number,
                KillReason::GenerationCap,
                "max-draining-generations: making room for the new generation",
            );
        }
        self.deferred_start = Some(DeferredStart {
            inputs,
            waiters,
            room_for,
            deadline: Instant::now() + KILL_GRACE,
        });
    }

    /// Start the deferred generation once the generations killed for it are gone.
    pub(super) async fn start_deferred_when_room(&mut self) {
        let Some(deferred) = &self.deferred_start else {
            return;
        };
        let gone = !self
            .generations
            .iter()
            .any(|g| deferred.room_for.contains(&g.number));
        if !gone && Instant::now() < deferred.deadline {
            return;
        }
        if !gone {
            tracing::warn!(
                generations = ?deferred.room_for,
                "killed generations still alive: starting the new generation anyway"
            );
        }
        if let Some(deferred) = self.deferred_start.take() {
            self.start_generation(deferred.inputs, deferred.waiters)
                .await;
        }
    }

    pub(super) async fn start_generation(&mut self, inputs: GenerationInputs, waiters: Vec<Reply>) {
        let number = self.next_generation;
        self.next_generation += 1;
        let started = Instant::now();
        let config = inputs.config.clone();
        // metrics: the generation's stats board, the reload's spawn phase
        self.metrics
            .generation_starting(number, Some(&inputs.stats), &config);
        let startup_timeout = Duration::from_secs(config.system.worker_startup_timeout_secs);
        let mut generation = Generation {
            number,
            inputs,
            state: State::Starting,
            slots: Vec::new(),
            started,
            deadline: Some(started + startup_timeout),
            kill_at: None,
            drain_started: None,
            waiters,
            discovery: GenerationDiscovery::start(number, &config, &self.events_tx),
            handed_in: 0,
            handed_out: 0,
        };
        for index in 0..config.system.workers {
            match spawn_worker(number, index, &generation.inputs, self.events_tx.clone()) {
                Ok(handle) => {
                    self.metrics.worker_spawned(number, index, false); // metrics
                    generation.slots.push(Slot::new(handle))
                }
                Err(err) => {
                    self.generations.push(generation);
                    self.abort_starting(number, err.to_string());
                    return;
                }
            }
        }
        self.metrics.generation_spawned(number); // metrics
        tracing::info!(
            generation = number,
            workers = config.system.workers,
            "generation started"
        );
        self.generations.push(generation);
    }

    /// Tear down every generation still starting (shutdown, retirement).
    pub(super) fn abort_all_starting(&mut self, error: &str) {
        let starting: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| g.state == State::Starting)
            .map(|g| g.number)
            .collect();
        for number in starting {
            self.abort_starting(number, error.to_owned());
        }
    }

    /// Tear down a generation that failed to start; the serving one is untouched.
    pub(super) fn abort_starting(&mut self, number: u64, error: String) {
        let Some(position) = self.generations.iter().position(|g| g.number == number) else {
            return;
        };
        let mut gen = self.generations.remove(position);
        tracing::error!(generation = number, "reload rolled back: {error}");
        // metrics: its workers' counts are folded as they exit
        self.metrics.generation_rolled_back(number, &error);
        gen.signal_all(Signal::SIGKILL);
        for waiter in gen.waiters.drain(..) {
            let _ = waiter.send(ControlResponse::ReloadFailed {
                error: error.clone(),
            });
        }
        // Its workers' exits are reaped by their watchers; its new sockets close
        // with `gen`. A coalesced reload waiting behind it runs on the next tick.
        self.notify_serving("reload rolled back");
    }

    /// Tell systemd the reload is over, whatever its outcome, if anything serves.
    pub(super) fn notify_serving(&self, outcome: &str) {
        if let Some(gen) = self.generations.iter().find(|g| g.state == State::Serving) {
            self.notify
                .ready(&format!("{outcome}; generation {} serving", gen.number));
        }
    }

    /// Every worker of generation `number` is Ready: it serves, and the
    /// serving generation drains. Listeners the new generation does not use
    /// close at once (the master's copy here, the draining workers' copies
    /// as they stop accepting), so a removed port refuses connections.
    pub(super) async fn promote(&mut self, number: u64) {
        let now = Instant::now();
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        gen.state = State::Serving;
        gen.deadline = None;
        for slot in &mut gen.slots {
            slot.accepting = true;
        }
        gen.serve_all();
        let sockets = gen.inputs.sockets.clone();
        for gen in &mut self.generations {
            if gen.number != number {
                gen.inputs.retain_sockets(&sockets);
            }
        }
        let retired = self.drain_serving();
        self.metrics
            .generation_promoted(number, retired.first().copied()); // metrics
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        let millis = gen.started.elapsed().as_millis() as u64;
        let workers = gen.slots.len();
        // Filled in when the answer leaves (settle_handovers).
        let handoff = gen.inputs.config.system.connection_handoff.then_some(0);
        let response = ControlResponse::Reloaded {
            generation: number,
            workers,
            millis,
            handed_over: handoff,
            draining: handoff,
        };
        let handover = Handover {
            retired,
            waiters: std::mem::take(&mut gen.waiters),
            response,
            deadline: now + HANDOVER_TIMEOUT,
            promoted: now,
        };
        self.handovers.push(handover);
        self.listeners.commit(&sockets);
        tracing::info!(generation = number, workers, millis, "generation serving");
        if !self.take_over_if_due(number, workers, millis) {
            self.notify.ready(&format!("generation {number} serving"));
        }
        self.remove_finished();
        self.settle_handovers();
        if let Some(waiters) = self.pending_reload.take() {
            self.request_reload_boxed(waiters).await;
        }
    }

    /// Every serving generation but the newest starts draining (its
    /// deadline from its own config); their numbers.
    pub(super) fn drain_serving(&mut self) -> Vec<u64> {
        let now = Instant::now();
        let newest = self
            .generations
            .iter()
            .filter(|g| g.state == State::Serving)
            .map(|g| g.number)
            .max();
        let keep = if self.successor.is_some() {
            None
        } else {
            newest
        };
        let mut retired = Vec::new();
        for gen in &mut self.generations {
            if gen.state != State::Serving || Some(gen.number) == keep {
                continue;
            }
            retired.push(gen.number);
            let drain = Duration::from_secs(gen.inputs.config.system.drain_timeout_secs);
            gen.state = State::Draining;
            gen.drain_started = Some(now);
            gen.deadline = Some(now + drain);
            for slot in &mut gen.slots {
                slot.restart_at = None;
            }
            gen.send_all(&ToWorker::Drain {
                deadline_secs: drain.as_secs(),
            });
            tracing::info!(
                generation = gen.number,
                drain_timeout_secs = drain.as_secs(),
                "generation draining"
            );
        }
        retired
    }

    /// Break the async recursion promote -> reload -> (later) promote.
    pub(super) fn request_reload_boxed(
        &mut self,
        waiters: Vec<Reply>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(self.request_reload(waiters))
    }

    /// Answer the reloads whose retired generations no longer accept.
    pub(super) fn settle_handovers(&mut self) {
        let now = Instant::now();
        let generations = &self.generations;
        let still_accepting = |number: &u64| {
            generations
                .iter()
                .filter(|g| g.number == *number)
                .flat_map(|g| &g.slots)
                .any(|slot| slot.accepting && slot.handle.is_some())
        };
        let (done, waiting): (Vec<Handover>, Vec<Handover>) = self
            .handovers
            .drain(..)
            .partition(|h| now >= h.deadline || !h.retired.iter().any(still_accepting));
        self.handovers = waiting;
        for mut handover in done {
            // metrics: the reload's drain-start phase
            self.metrics
                .drain_started(&handover.retired, handover.promoted.elapsed().as_secs_f64());
            if let ControlResponse::Reloaded {
                handed_over: Some(handed),
                draining: Some(draining),
                ..
            } = &mut handover.response
            {
                (*handed, *draining) = self.handoff_counts(&handover.retired);
            }
            for waiter in handover.waiters {
                let _ = waiter.send(handover.response.clone());
            }
        }
    }
}

//! The master's event loop: generations of workers, reloads, supervision,
//! shutdown. Single-threaded: every state change happens on this loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_config::Config;
use river_ipc::{
    ControlResponse, FromWorker, GenerationState, GenerationStatus, StatusReport, ToWorker,
    WorkerStatus,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::inputs::GenerationInputs;
use crate::listeners::ListenerSet;
use crate::notify::Notifier;
use crate::process::{spawn_worker, WorkerEvent, WorkerHandle};

/// Grace between SIGTERM and SIGKILL for a worker being killed.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// A fast shutdown waits this long for workers before SIGKILL.
const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A worker that lived this long is healthy again: its restart backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How long a reload's answer waits for retired workers to stop accepting.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the configuration comes from, re-read on every reload.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded,
}

impl ConfigSource {
    /// Command-line overrides, applied again on every reload.
    pub fn with_overrides(self, threads_per_service: Option<usize>) -> LoadConfig {
        LoadConfig {
            source: self,
            threads_per_service,
        }
    }
}

/// A config source plus the command-line settings that win over the file.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    source: ConfigSource,
    threads_per_service: Option<usize>,
}

impl LoadConfig {
    pub fn load(&self) -> Result<Config, river_config::ConfigError> {
        let mut config = match &self.source {
            ConfigSource::File(path) => river_config::load(path)?,
            ConfigSource::Embedded => river_config::embedded_default(),
        };
        if let Some(threads) = self.threads_per_service {
            config.system.threads_per_service = threads.max(1);
        }
        Ok(config)
    }
}

/// Requests from the control socket.
pub enum Command {
    Reload {
        /// None: the caller does not wait for the outcome.
        reply: Option<oneshot::Sender<ControlResponse>>,
    },
    Status {
        reply: oneshot::Sender<ControlResponse>,
    },
    Stop {
        graceful: bool,
    },
    ReopenLogs,
}

type Reply = oneshot::Sender<ControlResponse>;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("the first generation failed to start: {0}")]
    FirstGeneration(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Serving,
    Draining,
}

struct Slot {
    handle: Option<WorkerHandle>,
    ready: bool,
    /// Between Ready and its Draining acknowledgement (or exit).
    accepting: bool,
    connections: u64,
    rss_bytes: u64,
    started_at: Instant,
    failures: u32,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(handle: WorkerHandle) -> Slot {
        Slot {
            handle: Some(handle),
            ready: false,
            accepting: false,
            connections: 0,
            rss_bytes: 0,
            started_at: Instant::now(),
            failures: 0,
            restart_at: None,
        }
    }
}

struct Generation {
    number: u64,
    inputs: GenerationInputs,
    state: State,
    slots: Vec<Slot>,
    started: Instant,
    /// Starting: when to give up waiting for Ready. Draining: when to kill.
    deadline: Option<Instant>,
    /// Set once SIGTERM went out: when to send SIGKILL.
    kill_at: Option<Instant>,
    drain_started: Option<Instant>,
    /// Callers waiting for this generation's reload outcome.
    waiters: Vec<Reply>,
}

impl Generation {
    fn alive(&self) -> impl Iterator<Item = &WorkerHandle> {
        self.slots.iter().filter_map(|slot| slot.handle.as_ref())
    }

    fn connections(&self) -> u64 {
        self.slots.iter().map(|slot| slot.connections).sum()
    }

    fn rss_bytes(&self) -> u64 {
        self.slots.iter().map(|slot| slot.rss_bytes).sum()
    }

    fn signal_all(&self, signal: Signal) {
        for worker in self.alive() {
            worker.signal(signal);
        }
    }

    fn send_all(&self, message: &ToWorker) {
        for worker in self.alive() {
            worker.send(message.clone());
        }
    }
}

/// A reload's answer, held until the generations it retired stop accepting: from
/// then on every fresh connection sees the new configuration.
struct Handover {
    retired: Vec<u64>,
    waiters: Vec<Reply>,
    response: ControlResponse,
    /// A worker that never acknowledges must not hold the answer forever.
    deadline: Instant,
}

/// A validated generation waiting for killed draining generations to exit, so
/// that starting it never exceeds `1 + workers × (1 + max-draining-generations)`
/// processes.
struct DeferredStart {
    inputs: GenerationInputs,
    waiters: Vec<Reply>,
    /// The generations killed to make room.
    room_for: Vec<u64>,
    /// Start anyway by then (a killed worker that outlives SIGKILL's grace).
    deadline: Instant,
}

struct Shutdown {
    graceful: bool,
    /// When the remaining workers are sent SIGTERM (graceful) or SIGKILL (fast).
    deadline: Instant,
    escalated: bool,
}

pub struct Supervisor {
    source: LoadConfig,
    listeners: ListenerSet,
    generations: Vec<Generation>,
    next_generation: u64,
    events_tx: mpsc::UnboundedSender<WorkerEvent>,
    events_rx: mpsc::UnboundedReceiver<WorkerEvent>,
    /// Reload requests that arrived while a generation was starting: one follow-up.
    pending_reload: Option<Vec<Reply>>,
    deferred_start: Option<DeferredStart>,
    shutdown: Option<Shutdown>,
    last_memory_sample: Instant,
    notify: Notifier,
    handovers: Vec<Handover>,
}

impl Supervisor {
    pub fn new(source: LoadConfig, listeners: ListenerSet) -> Supervisor {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Supervisor {
            source,
            listeners,
            generations: Vec::new(),
            next_generation: 1,
            events_tx,
            events_rx,
            pending_reload: None,
            deferred_start: None,
            shutdown: None,
            last_memory_sample: Instant::now(),
            notify: Notifier::from_env(),
            handovers: Vec::new(),
        }
    }

    /// Run generation 1 from `first` (prepared before daemonizing, so that its
    /// errors reach the terminal), then serve until shut down.
    pub async fn run(
        mut self,
        first: GenerationInputs,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), MasterError> {
        let mut hup = signal(SignalKind::hangup()).map_err(MasterError::Signals)?;
        let mut quit = signal(SignalKind::quit()).map_err(MasterError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(MasterError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(MasterError::Signals)?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(MasterError::Signals)?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let (first_reply, mut first_outcome) = oneshot::channel();
        self.start_generation(first, vec![first_reply]).await;
        let mut first_done = false;

        loop {
            if self.shutdown.is_some() && self.generations.is_empty() {
                break;
            }
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.on_worker_event(event).await,
                Some(command) = commands.recv() => self.on_command(command).await,
                _ = hup.recv() => {
                    tracing::info!(by = "SIGHUP", "reload requested");
                    self.request_reload(Vec::new()).await;
                }
                _ = quit.recv() => self.begin_shutdown(true),
                _ = term.recv() => self.begin_shutdown(false),
                _ = int.recv() => self.begin_shutdown(false),
                _ = usr1.recv() => self.reopen_logs(),
                _ = tick.tick() => self.on_tick().await,
                outcome = &mut first_outcome, if !first_done => {
                    first_done = true;
                    if let Ok(ControlResponse::ReloadFailed { error }) = outcome {
                        self.begin_shutdown(false);
                        self.wait_for_exit().await;
                        return Err(MasterError::FirstGeneration(error));
                    }
                }
            }
        }
        self.listeners.close_all();
        tracing::info!("master exiting");
        Ok(())
    }

    /// After a failed start: reap what is left before returning.
    async fn wait_for_exit(&mut self) {
        while !self.generations.is_empty() {
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.on_worker_event(event).await,
                _ = tokio::time::sleep(TICK) => self.on_tick().await,
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Reload { reply } => {
                tracing::info!(by = "control socket", "reload requested");
                match reply {
                    Some(reply) => self.request_reload(vec![reply]).await,
                    None => self.request_reload(Vec::new()).await,
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(ControlResponse::Status(self.status()));
            }
            Command::Stop { graceful } => self.begin_shutdown(graceful),
            Command::ReopenLogs => self.reopen_logs(),
        }
    }

    /// USR1: the master reopens each generation's access log (it may be root-only)
    /// and hands the new file to the workers.
    fn reopen_logs(&mut self) {
        tracing::info!("reopening logs");
        for gen in &mut self.generations {
            match gen.inputs.reopen_access_log() {
                Ok(Some(file)) => {
                    for worker in gen.alive() {
                        worker.send_with_file(ToWorker::ReopenLogs, file.clone());
                    }
                }
                Ok(None) => gen.send_all(&ToWorker::ReopenLogs),
                Err(err) => tracing::error!(generation = gen.number, "{err}"),
            }
        }
    }

    fn starting(&self) -> bool {
        self.deferred_start.is_some() || self.generations.iter().any(|g| g.state == State::Starting)
    }

    /// Coalescing: while a generation is starting, every further request joins
    /// one follow-up reload, however many arrive.
    async fn request_reload(&mut self, waiters: Vec<Reply>) {
        if self.shutdown.is_some() {
            for waiter in waiters {
                let _ = waiter.send(ControlResponse::ReloadFailed {
                    error: "the master is shutting down".into(),
                });
            }
            return;
        }
        if self.starting() {
            self.pending_reload
                .get_or_insert_with(Vec::new)
                .extend(waiters);
            return;
        }
        self.notify.reloading();
        let started = Instant::now();
        let config = match self.source.load() {
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
            Ok(inputs) => self.make_room_then_start(inputs, waiters).await,
            Err(err) => self.reject_reload(waiters, "reload rolled back", err),
        }
    }

    /// Answer a reload that failed before any worker started; nothing changed.
    fn reject_reload(&self, waiters: Vec<Reply>, outcome: &str, error: impl std::fmt::Display) {
        tracing::error!("{outcome}:\n{error}");
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
    async fn make_room_then_start(&mut self, inputs: GenerationInputs, waiters: Vec<Reply>) {
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
    async fn start_deferred_when_room(&mut self) {
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

    async fn start_generation(&mut self, inputs: GenerationInputs, waiters: Vec<Reply>) {
        let number = self.next_generation;
        self.next_generation += 1;
        let started = Instant::now();
        let config = inputs.config.clone();
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
        };
        for index in 0..config.system.workers {
            match spawn_worker(number, index, &generation.inputs, self.events_tx.clone()).await {
                Ok(handle) => generation.slots.push(Slot::new(handle)),
                Err(err) => {
                    self.generations.push(generation);
                    self.abort_starting(number, err.to_string());
                    return;
                }
            }
        }
        tracing::info!(
            generation = number,
            workers = config.system.workers,
            "generation started"
        );
        self.generations.push(generation);
    }

    fn generation_mut(&mut self, number: u64) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.number == number)
    }

    async fn on_worker_event(&mut self, event: WorkerEvent) {
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
                        slot.accepting = true;
                        if gen.state == State::Starting && gen.slots.iter().all(|s| s.ready) {
                            self.promote(generation).await;
                        }
                    }
                    FromWorker::Load { connections } => slot.connections = connections,
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
                self.on_worker_exit(generation, index, pid, status);
                self.start_deferred_when_room().await;
            }
        }
    }

    fn on_worker_exit(&mut self, number: u64, index: usize, pid: u32, status: String) {
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
    fn remove_finished(&mut self) {
        self.generations.retain(|gen| {
            let done = gen
                .slots
                .iter()
                .all(|s| s.handle.is_none() && s.restart_at.is_none());
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

    /// Tear down a generation that failed to start; the serving one is untouched.
    fn abort_starting(&mut self, number: u64, error: String) {
        let Some(position) = self.generations.iter().position(|g| g.number == number) else {
            return;
        };
        let mut gen = self.generations.remove(position);
        tracing::error!(generation = number, "reload rolled back: {error}");
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
    fn notify_serving(&self, outcome: &str) {
        if let Some(gen) = self.generations.iter().find(|g| g.state == State::Serving) {
            self.notify
                .ready(&format!("{outcome}; generation {} serving", gen.number));
        }
    }

    async fn promote(&mut self, number: u64) {
        let now = Instant::now();
        let mut retired = Vec::new();
        for gen in &mut self.generations {
            if gen.state == State::Serving {
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
        }
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        gen.state = State::Serving;
        gen.deadline = None;
        let millis = gen.started.elapsed().as_millis() as u64;
        let workers = gen.slots.len();
        let response = ControlResponse::Reloaded {
            generation: number,
            workers,
            millis,
        };
        let handover = Handover {
            retired,
            waiters: std::mem::take(&mut gen.waiters),
            response,
            deadline: now + HANDOVER_TIMEOUT,
        };
        let sockets = gen.inputs.sockets.clone();
        self.handovers.push(handover);
        self.listeners.commit(&sockets);
        tracing::info!(generation = number, workers, millis, "generation serving");
        self.notify.ready(&format!("generation {number} serving"));
        self.remove_finished();
        self.settle_handovers();
        if let Some(waiters) = self.pending_reload.take() {
            self.request_reload_boxed(waiters).await;
        }
    }

    /// Break the async recursion promote -> reload -> (later) promote.
    fn request_reload_boxed(
        &mut self,
        waiters: Vec<Reply>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(self.request_reload(waiters))
    }

    /// Answer the reloads whose retired generations no longer accept.
    fn settle_handovers(&mut self) {
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
        for handover in done {
            for waiter in handover.waiters {
                let _ = waiter.send(handover.response.clone());
            }
        }
    }

    /// SIGKILL at once, for a generation that must be gone before another starts.
    fn kill_generation_now(&mut self, number: u64, reason: &str) {
        self.signal_to_kill(number, reason, Signal::SIGKILL, Duration::ZERO);
    }

    /// SIGTERM, then SIGKILL after the grace.
    fn kill_generation(&mut self, number: u64, reason: &str) {
        self.signal_to_kill(number, reason, Signal::SIGTERM, KILL_GRACE);
    }

    fn signal_to_kill(&mut self, number: u64, reason: &str, signal: Signal, grace: Duration) {
        let Some(gen) = self.generation_mut(number) else {
            return;
        };
        tracing::warn!(
            generation = number,
            reason,
            connections_cut = gen.connections(),
            "killing draining generation"
        );
        gen.signal_all(signal);
        gen.kill_at = Some(Instant::now() + grace);
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        // Starting generations that missed their deadline.
        let late: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| g.state == State::Starting && g.deadline.is_some_and(|d| now >= d))
            .map(|g| g.number)
            .collect();
        for number in late {
            self.abort_starting(
                number,
                "workers did not report ready within worker-startup-timeout-secs".into(),
            );
        }
        // Draining generations past their deadline, then SIGKILL after the grace.
        let overdue: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| {
                g.state == State::Draining
                    && g.kill_at.is_none()
                    && g.deadline.is_some_and(|d| now >= d)
            })
            .map(|g| g.number)
            .collect();
        for number in overdue {
            self.kill_generation(number, "drain-timeout-secs reached");
        }
        for gen in &self.generations {
            if gen.kill_at.is_some_and(|at| now >= at) {
                gen.signal_all(Signal::SIGKILL);
            }
        }
        if now.duration_since(self.last_memory_sample) >= MEMORY_SAMPLE_EVERY {
            self.last_memory_sample = now;
            self.sample_memory();
        }
        self.restart_due_workers(now).await;
        self.start_deferred_when_room().await;
        self.advance_shutdown(now);
        self.settle_handovers();
        if !self.starting() {
            if let Some(waiters) = self.pending_reload.take() {
                self.request_reload(waiters).await;
            }
        }
    }

    /// RSS of every worker, and the draining-memory-limit-mb cap.
    fn sample_memory(&mut self) {
        for gen in &mut self.generations {
            for slot in &mut gen.slots {
                if let Some(handle) = &slot.handle {
                    slot.rss_bytes = rss_bytes(handle.pid).unwrap_or(0);
                }
            }
        }
        let Some(limit_mb) = self
            .generations
            .iter()
            .find(|g| g.state == State::Serving)
            .and_then(|g| g.inputs.config.system.draining_memory_limit_mb)
        else {
            return;
        };
        let limit = limit_mb.saturating_mul(1024 * 1024);
        loop {
            let draining: Vec<(u64, u64)> = self
                .generations
                .iter()
                .filter(|g| g.state == State::Draining && g.kill_at.is_none())
                .map(|g| (g.number, g.rss_bytes()))
                .collect();
            let total: u64 = draining.iter().map(|(_, rss)| rss).sum();
            match draining.first() {
                Some((oldest, _)) if total > limit => {
                    tracing::warn!(
                        total_rss_bytes = total,
                        limit_mb,
                        "draining workers over the memory limit"
                    );
                    self.kill_generation(*oldest, "draining-memory-limit-mb exceeded");
                }
                _ => return,
            }
        }
    }

    async fn restart_due_workers(&mut self, now: Instant) {
        if self.shutdown.is_some() {
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
                match spawn_worker(gen.number, index, &gen.inputs, events.clone()).await {
                    Ok(handle) => {
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

    fn begin_shutdown(&mut self, graceful: bool) {
        if let Some(shutdown) = &self.shutdown {
            if graceful || !shutdown.graceful {
                return;
            }
        }
        tracing::info!(graceful, "shutting down");
        self.notify.stopping();
        let now = Instant::now();
        let mut drain = Duration::ZERO;
        let starting: Vec<u64> = self
            .generations
            .iter()
            .filter(|g| g.state == State::Starting)
            .map(|g| g.number)
            .collect();
        for number in starting {
            self.abort_starting(number, "the master is shutting down".into());
        }
        let deferred = self.deferred_start.take().map(|d| d.waiters);
        for waiter in self
            .pending_reload
            .take()
            .into_iter()
            .chain(deferred)
            .flatten()
        {
            let _ = waiter.send(ControlResponse::ReloadFailed {
                error: "the master is shutting down".into(),
            });
        }
        for gen in &mut self.generations {
            for slot in &mut gen.slots {
                slot.restart_at = None;
            }
            if graceful {
                drain = drain.max(Duration::from_secs(
                    gen.inputs.config.system.drain_timeout_secs,
                ));
                gen.send_all(&ToWorker::Quit);
            } else {
                gen.signal_all(Signal::SIGTERM);
            }
        }
        self.shutdown = Some(Shutdown {
            graceful,
            deadline: now + if graceful { drain } else { FAST_SHUTDOWN_GRACE },
            escalated: false,
        });
        self.remove_finished();
    }

    fn advance_shutdown(&mut self, now: Instant) {
        let Some(shutdown) = &mut self.shutdown else {
            return;
        };
        if shutdown.escalated || now < shutdown.deadline {
            return;
        }
        shutdown.escalated = true;
        if shutdown.graceful {
            let numbers: Vec<u64> = self.generations.iter().map(|g| g.number).collect();
            for number in numbers {
                self.kill_generation(number, "graceful shutdown timed out");
            }
        } else {
            for gen in &self.generations {
                gen.signal_all(Signal::SIGKILL);
            }
        }
    }

    fn status(&self) -> StatusReport {
        let now = Instant::now();
        StatusReport {
            master_pid: std::process::id(),
            generations: self
                .generations
                .iter()
                .map(|gen| GenerationStatus {
                    generation: gen.number,
                    state: match gen.state {
                        State::Starting => GenerationState::Starting,
                        State::Serving => GenerationState::Serving,
                        State::Draining => GenerationState::Draining,
                    },
                    workers: gen
                        .slots
                        .iter()
                        .filter_map(|slot| {
                            slot.handle.as_ref().map(|handle| WorkerStatus {
                                pid: handle.pid,
                                rss_bytes: rss_bytes(handle.pid).unwrap_or(slot.rss_bytes),
                                connections: slot.connections,
                            })
                        })
                        .collect(),
                    drain_deadline_secs: match gen.state {
                        State::Draining => gen
                            .deadline
                            .map(|d| d.saturating_duration_since(now).as_secs()),
                        _ => None,
                    },
                })
                .collect(),
        }
    }
}

/// 0 for the first failure, then 100 ms doubling up to MAX_RESTART_DELAY.
fn restart_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exponent = (failures - 1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(MAX_RESTART_DELAY)
}

/// Resident set size from /proc/PID/statm (pages).
fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
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

    #[test]
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 100 * 1024, "rss {rss}");
    }
}

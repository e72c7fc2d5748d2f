//! The master's event loop: generations of workers, reloads, supervision,
//! shutdown. Single-threaded: every state change happens on this loop.

mod generation;
mod health;
mod reload;
mod scrape;
mod shutdown;
mod workers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_config::Config;
use river_ipc::{ControlResponse, KillReason, ReloadTrigger, ToWorker};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::inputs::GenerationInputs;
use crate::listeners::ListenerSet;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::process::WorkerEvent;

use generation::{Generation, Slot, State};
use reload::{DeferredStart, Handover};
use shutdown::Shutdown;

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
        /// Who asked (the reload history).
        trigger: ReloadTrigger,
    },
    /// A scrape of the metrics listener: the exposition text.
    Metrics {
        reply: oneshot::Sender<String>,
    },
    /// `riverctl history`.
    History {
        reply: oneshot::Sender<ControlResponse>,
    },
    Status {
        reply: oneshot::Sender<ControlResponse>,
    },
    Stop {
        graceful: bool,
    },
    ReopenLogs,
}

pub(super) type Reply = oneshot::Sender<ControlResponse>;

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("the first generation failed to start: {0}")]
    FirstGeneration(String),
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
    /// Counters, stats boards and reload history (`crate::metrics`).
    metrics: Metrics,
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
            metrics: Metrics::new(),
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
                    self.metrics.reload_requested(ReloadTrigger::Sighup); // metrics
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
            Command::Reload { reply, trigger } => {
                tracing::info!(by = %trigger, "reload requested");
                self.metrics.reload_requested(trigger); // metrics
                match reply {
                    Some(reply) => self.request_reload(vec![reply]).await,
                    None => self.request_reload(Vec::new()).await,
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(ControlResponse::Status(self.status()));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.render_metrics());
            }
            Command::History { reply } => {
                let _ = reply.send(ControlResponse::History(self.metrics.history()));
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

    fn generation_mut(&mut self, number: u64) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.number == number)
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
            self.kill_generation(number, KillReason::Deadline, "drain-timeout-secs reached");
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
}

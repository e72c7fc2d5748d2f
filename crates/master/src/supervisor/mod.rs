//! The master's event loop: generations of workers, reloads, supervision,
//! shutdown. Single-threaded: every state change happens on this loop.

mod discovery;
mod generation;
mod handoff;
mod health;
mod reload;
mod scrape;
mod shutdown;
mod upgrade;
mod workers;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_ipc::{ControlResponse, KillReason, ReloadTrigger, ToWorker};
use tokio::sync::{mpsc, oneshot};

use crate::config_source::LoadConfig;
use crate::inputs::GenerationInputs;
use crate::listeners::ListenerSet;
use crate::metrics::http::MetricsService;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::process::WorkerEvent;
use crate::signals::{Action, Signals};

use generation::{Generation, Slot, State};
use reload::{DeferredStart, Handover, Validation};
use shutdown::Shutdown;
use upgrade::{PendingUpgrade, Predecessor, Successor, UpgradeEvent};

use crate::control::Control;
use crate::pidfile::PidFile;
use crate::upgrade::{Invocation, Link};

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
    Upgrade {
        binary: Option<std::path::PathBuf>,
        reply: oneshot::Sender<ControlResponse>,
    },
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
    /// The reload whose configuration is being loaded, and where the result
    /// arrives.
    validating: Option<Validation>,
    loaded_tx: mpsc::UnboundedSender<Result<river_config::Config, String>>,
    loaded_rx: mpsc::UnboundedReceiver<Result<river_config::Config, String>>,
    /// Reload requests that arrived while one was under way: one follow-up.
    pending_reload: Option<Vec<Reply>>,
    deferred_start: Option<DeferredStart>,
    shutdown: Option<Shutdown>,
    last_memory_sample: Instant,
    notify: Notifier,
    handovers: Vec<Handover>,
    /// Counters, stats boards and reload history (`crate::metrics`).
    metrics: Metrics,
    /// The Prometheus listener, if configured.
    metrics_service: Option<MetricsService>,
    /// How this master was started, to start a successor the same way.
    invocation: Invocation,
    identity: river_ipc::MasterIdentity,
    control: Option<Control>,
    pid_file: Option<PidFile>,
    /// A binary upgrade this master started.
    upgrade: Option<PendingUpgrade>,
    /// Set once this master retired for a new one.
    successor: Option<Successor>,
    /// Set when this master was started by a binary upgrade.
    predecessor: Option<Predecessor>,
    upgrade_tx: mpsc::UnboundedSender<UpgradeEvent>,
    upgrade_rx: mpsc::UnboundedReceiver<UpgradeEvent>,
    /// Connection handoff batches in flight.
    handoffs: handoff::Handoffs,
    /// Connections handed out by generations already gone: (number, count),
    /// the last few, for a reload answered after its retired generation left.
    retired_handed: Vec<(u64, u64)>,
}

/// What the master's start-up hands the supervisor besides config and sockets.
pub struct Setup {
    pub invocation: Invocation,
    pub control: Option<Control>,
    pub metrics: Option<MetricsService>,
    /// The pid file, written already (None when started by an upgrade: the
    /// file is written at take-over).
    pub pid_file: Option<PidFile>,
    /// Set when started by a binary upgrade.
    pub takeover: Option<Takeover>,
}

/// A new master's start after a binary upgrade.
pub struct Takeover {
    pub link: Link,
    pub next_generation: u64,
    pub pid_file: Option<std::path::PathBuf>,
}

impl Supervisor {
    /// Within the master's runtime.
    pub fn new(source: LoadConfig, listeners: ListenerSet, setup: Setup) -> Supervisor {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (loaded_tx, loaded_rx) = mpsc::unbounded_channel();
        let (upgrade_tx, upgrade_rx) = mpsc::unbounded_channel();
        let next_generation = setup.takeover.as_ref().map_or(1, |t| t.next_generation);
        let predecessor = setup
            .takeover
            .map(|t| Predecessor::new(t.link, t.pid_file, upgrade_tx.clone()));
        Supervisor {
            identity: river_ipc::MasterIdentity::this(&setup.invocation.binary),
            invocation: setup.invocation,
            control: setup.control,
            pid_file: setup.pid_file,
            upgrade: None,
            successor: None,
            predecessor,
            upgrade_tx,
            upgrade_rx,
            validating: None,
            loaded_tx,
            loaded_rx,
            source,
            listeners,
            generations: Vec::new(),
            next_generation,
            events_tx,
            events_rx,
            pending_reload: None,
            deferred_start: None,
            shutdown: None,
            last_memory_sample: Instant::now(),
            notify: Notifier::from_env(),
            handovers: Vec::new(),
            metrics: Metrics::new(),
            metrics_service: setup.metrics,
            handoffs: handoff::Handoffs::default(),
            retired_handed: Vec::new(),
        }
    }

    /// Run generation 1 from `first` (prepared before daemonizing, so that its
    /// errors reach the terminal), then serve until shut down.
    pub async fn run(
        mut self,
        first: GenerationInputs,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), MasterError> {
        let mut signals = Signals::install().map_err(MasterError::Signals)?;
        if self.predecessor.is_none() {
            if let Some(control) = &mut self.control {
                control.start();
            }
            if let Some(metrics) = &mut self.metrics_service {
                metrics.start();
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let (first_reply, mut first_outcome) = oneshot::channel();
        self.start_generation(first, vec![first_reply]).await;
        let mut first_done = false;

        loop {
            let leaving = self.shutdown.is_some() || self.successor.is_some();
            if leaving && self.generations.is_empty() {
                break;
            }
            tokio::select! {
                Some(event) = self.events_rx.recv() => self.on_worker_event(event).await,
                Some(command) = commands.recv() => self.on_command(command).await,
                Some(loaded) = self.loaded_rx.recv() => self.on_config_loaded(loaded).await,
                Some(action) = signals.recv() => self.on_signal(action).await,
                Some(event) = self.upgrade_rx.recv() => self.on_upgrade_event(event).await,
                _ = tick.tick() => self.on_tick().await,
                outcome = &mut first_outcome, if !first_done => {
                    first_done = true;
                    if let Ok(ControlResponse::ReloadFailed { error }) = outcome {
                        self.tell_predecessor_failed(&error).await;
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

    async fn on_signal(&mut self, action: Action) {
        match action {
            Action::Reload => {
                tracing::info!(by = "SIGHUP", "reload requested");
                self.metrics.reload_requested(ReloadTrigger::Sighup); // metrics
                self.request_reload(Vec::new()).await;
            }
            Action::GracefulStop => self.begin_shutdown(true),
            Action::FastStop => self.begin_shutdown(false),
            Action::ReopenLogs => self.reopen_logs(),
            Action::Upgrade => {
                tracing::info!(by = "SIGUSR2", "binary upgrade requested");
                self.request_upgrade(None, None);
            }
            Action::Ignore(name) => {
                tracing::warn!(signal = name, "ignoring a signal River does not use")
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
            Command::Upgrade { binary, reply } => {
                tracing::info!(by = "control socket", "binary upgrade requested");
                self.request_upgrade(binary, Some(reply));
            }
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
        self.discovery_tick(now);
        self.start_deferred_when_room().await;
        self.advance_shutdown(now);
        self.upgrade_tick(now);
        self.handoff_tick(now);
        self.settle_handovers();
        if !self.reloading() {
            if let Some(waiters) = self.pending_reload.take() {
                self.request_reload(waiters).await;
            }
        }
    }
}

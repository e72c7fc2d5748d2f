//! The master's metrics: what it counts itself (reloads, restarts, kills),
//! the workers' stats boards folded into monotonic totals ([`boards`]), the
//! reload history ([`history`]), the Prometheus encoding ([`encode`], names in
//! [`names`]) and the `GET /metrics` listener ([`http`]).
//!
//! The supervisor owns one [`Metrics`] and reports to it from a few marked
//! hooks (`// metrics:` comments): reload steps, worker spawns and exits,
//! kills of draining generations. A scrape is a `Command::Metrics` on the
//! supervisor's loop, which adds its view of the generations ([`Process`]).
//! This module never signals, spawns or decides anything.

pub mod boards;
pub mod encode;
pub mod history;
pub mod http;
pub mod names;

use std::sync::Arc;

use river_config::Config;
use river_ipc::stats::StatsBoard;
use river_ipc::{HandedKind, KillReason, ReloadOutcome, ReloadRecord, ReloadTrigger};

use boards::Boards;
use encode::{Observations, Scrape, OUTCOMES};
use history::{unix_now, Finished, History};

/// What the supervisor knows that the metrics do not: its generations now.
#[derive(Debug, Default)]
pub struct Process {
    /// The serving generation, if any.
    pub serving: Option<u64>,
    /// Live workers by state, as [`encode::STATES`].
    pub workers: [u64; 3],
    /// (generation, worker index, resident bytes) of each live worker.
    pub worker_memory: Vec<(u64, usize, u64)>,
    /// (service, name, backends) of the serving generation's discovered names.
    pub discovered: Vec<(String, String, u64)>,
}

pub struct Metrics {
    boards: Boards,
    history: History,
    /// By [`encode::OUTCOMES`].
    reloads: [u64; 3],
    reload_duration: Observations,
    last_reload_success: f64,
    worker_restarts: u64,
    /// By [`KillReason::ALL`].
    connections_cut: [u64; 3],
    workers_killed: [u64; 3],
    /// By [`HandedKind::ALL`].
    handed_over: [u64; 2],
    master_start: f64,
    /// Failed lookups by (service, name).
    discovery_errors: std::collections::BTreeMap<(String, String), u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn reason_index(reason: KillReason) -> usize {
    KillReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        let now = unix_now();
        Metrics {
            boards: Boards::default(),
            history: History::default(),
            reloads: [0; 3],
            reload_duration: Observations::new(names::RELOAD_BUCKETS.len()),
            // As Prometheus' own reload metric: the start counts as the last
            // good configuration until a reload succeeds.
            last_reload_success: now,
            worker_restarts: 0,
            connections_cut: [0; 3],
            workers_killed: [0; 3],
            handed_over: [0; 2],
            master_start: now,
            discovery_errors: Default::default(),
        }
    }

    fn finished(&mut self, finished: Option<Finished>) {
        let Some(Finished { outcome, seconds }) = finished else {
            return;
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.reloads[i] += 1;
        }
        self.reload_duration
            .observe(&names::RELOAD_BUCKETS, seconds);
        if outcome == ReloadOutcome::Ok {
            self.last_reload_success = unix_now();
        }
    }

    /// A reload was asked for (SIGHUP, riverctl, systemd).
    pub fn reload_requested(&mut self, trigger: ReloadTrigger) {
        self.history.requested(trigger);
    }

    /// The reload starts: the config is being read.
    pub fn reload_begins(&mut self) {
        self.history.begin();
    }

    /// Config valid, listeners bound, files read.
    pub fn reload_validated(&mut self) {
        self.history.validated();
    }

    /// Refused before any worker started.
    pub fn reload_rejected(&mut self, error: &str) {
        let finished = self.history.rejected(error);
        self.finished(finished);
    }

    /// Generation `number` is about to start its workers, counting on `board`.
    pub fn generation_starting(
        &mut self,
        number: u64,
        board: Option<&Arc<StatsBoard>>,
        config: &Config,
    ) {
        if let Some(board) = board {
            self.boards.add_generation(number, board.clone(), config);
        }
        self.history.spawning(number);
    }

    /// All of generation `number`'s workers were started.
    pub fn generation_spawned(&mut self, number: u64) {
        self.history.spawned(number);
    }

    /// A worker process of generation `number` took slot row `index`;
    /// `replacement`: it replaces one that died.
    pub fn worker_spawned(&mut self, number: u64, index: usize, replacement: bool) {
        self.boards.worker_spawned(number, index);
        if replacement {
            self.worker_restarts += 1;
        }
    }

    /// A worker process exited: its counts are folded into the totals.
    pub fn worker_exited(&mut self, number: u64, index: usize) {
        self.boards.worker_exited(number, index);
    }

    /// Generation `number` serves, `retired` drains.
    pub fn generation_promoted(&mut self, number: u64, retired: Option<u64>) {
        let finished = self.history.promoted(number, retired);
        self.finished(finished);
    }

    /// Generation `number` failed to start and is dropped (its workers may
    /// still be exiting).
    pub fn generation_rolled_back(&mut self, number: u64, error: &str) {
        let finished = self.history.rolled_back(number, error);
        self.finished(finished);
        self.boards.generation_gone(number);
    }

    /// The generations in `retired` stopped accepting, `seconds` after the
    /// promotion that retired them.
    pub fn drain_started(&mut self, retired: &[u64], seconds: f64) {
        self.history.drain_started(retired, seconds);
    }

    /// The master kills draining generation `number` and its `workers` live
    /// workers for `reason`; what they hold open is cut.
    pub fn generation_killed(&mut self, number: u64, reason: KillReason, workers: u64) {
        let connections = self.boards.connections(number);
        let i = reason_index(reason);
        self.connections_cut[i] += connections;
        self.workers_killed[i] += workers;
        self.history.killed(number, reason, connections);
    }

    /// Generation `number` has no worker left; it drained for `drain_secs`
    /// (None: it never drained, e.g. it served until shutdown).
    pub fn generation_finished(&mut self, number: u64, drain_secs: Option<f64>) {
        if let Some(seconds) = drain_secs {
            self.history.drained(number, seconds);
        }
        self.boards.generation_gone(number);
    }

    /// A connection of `kind` moved from a draining generation to the
    /// serving one (connection handoff).
    pub fn connection_handed_over(&mut self, kind: HandedKind) {
        if let Some(i) = HandedKind::ALL.iter().position(|k| *k == kind) {
            self.handed_over[i] += 1;
        }
    }

    pub fn history(&self) -> Vec<ReloadRecord> {
        self.history.records()
    }

    /// The last `n` reloads, for `riverctl status`.
    pub fn recent_reloads(&self, n: usize) -> Vec<ReloadRecord> {
        self.history.last(n)
    }

    /// Everything a scrape shows.
    pub fn scrape(&self, process: Process) -> Scrape {
        Scrape {
            services: self.boards.services(),
            upstream_health: process
                .serving
                .map(|n| self.boards.upstream_health(n))
                .unwrap_or_default(),
            generation: process.serving.unwrap_or(0),
            workers: process.workers,
            reloads: self.reloads,
            reload_duration: self.reload_duration.clone(),
            last_reload_success: self.last_reload_success,
            worker_restarts: self.worker_restarts,
            connections_cut: self.connections_cut,
            workers_killed: self.workers_killed,
            handed_over: self.handed_over,
            worker_memory: process.worker_memory,
            master_start: self.master_start,
            discovered: process.discovered,
            discovery_errors: self.discovery_errors.clone(),
        }
    }

    /// A resolver reported a failed lookup of `name` (service discovery).
    pub fn discovery_failed(&mut self, service: &str, name: &str) {
        *self
            .discovery_errors
            .entry((service.to_owned(), name.to_owned()))
            .or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, process: Process) -> String {
        self.scrape(process).encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::stats::StatsLayout;

    /// 100 services × 4 workers, every slot busy: the scrape must answer in
    /// well under 10 ms (the issue's budget).
    #[test]
    fn a_scrape_of_100_services_and_4_workers_is_fast() {
        let services: String = (0..100)
            .map(|i| {
                format!(
                    "    service{i} {{\n        listeners {{ \"127.0.0.1:{}\" }}\n        connectors {{ \"127.0.0.1:9\"; \"127.0.0.1:10\" }}\n    }}\n",
                    10000 + i
                )
            })
            .collect();
        let config = river_config::parse(
            &format!("system {{ workers 4; }}\nservices {{\n{services}}}\n"),
            "test.kdl",
        )
        .unwrap();
        let (board, _fd) = StatsBoard::create(StatsLayout::of(&config)).unwrap();
        let mut metrics = Metrics::new();
        metrics.generation_starting(1, Some(&board), &config);
        for worker in 0..4 {
            metrics.worker_spawned(1, worker, false);
            for service in 0..100 {
                let slot = board.slot(worker, service).unwrap();
                for i in 0..50u64 {
                    slot.request_done(200 + (i % 4) as u16 * 100, i * 1000, 10, 100);
                }
            }
        }
        let process = || Process {
            serving: Some(1),
            workers: [0, 4, 0],
            worker_memory: (0..4).map(|w| (1, w, 30 << 20)).collect(),
            discovered: Vec::new(),
        };
        let _warm = metrics.render(process());
        let runs = 20;
        let started = std::time::Instant::now();
        let mut bytes = 0;
        for _ in 0..runs {
            bytes = metrics.render(process()).len();
        }
        let each = started.elapsed() / runs;
        eprintln!("scrape of 100 services x 4 workers: {each:?}, {bytes} bytes");
        let budget = if cfg!(debug_assertions) { 50 } else { 10 };
        assert!(
            each < std::time::Duration::from_millis(budget),
            "a scrape took {each:?}"
        );
        let text = metrics.render(process());
        assert!(text.contains(r#"river_requests_total{service="service99",code_class="5xx"} 48"#));
    }

    #[test]
    fn reload_outcomes_are_counted() {
        let mut metrics = Metrics::new();
        metrics.reload_requested(ReloadTrigger::Sighup);
        metrics.reload_begins();
        metrics.reload_rejected("bad");
        metrics.reload_requested(ReloadTrigger::Sighup);
        metrics.reload_begins();
        metrics.reload_validated();
        metrics.generation_starting(2, None, &river_config::embedded_default());
        metrics.generation_spawned(2);
        metrics.generation_promoted(2, Some(1));
        metrics.generation_killed(1, KillReason::GenerationCap, 2);
        metrics.generation_finished(1, Some(0.5));
        let scrape = metrics.scrape(Process::default());
        assert_eq!(scrape.reloads, [1, 1, 0]);
        assert_eq!(scrape.reload_duration.counts.iter().sum::<u64>(), 2);
        assert_eq!(scrape.workers_killed, [0, 2, 0]);
        let history = metrics.history();
        assert_eq!(history.len(), 2);
        assert_eq!(
            history[1].drain.as_ref().unwrap().killed_by,
            Some(KillReason::GenerationCap)
        );
    }
}

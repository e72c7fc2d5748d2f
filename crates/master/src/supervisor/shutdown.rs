//! Graceful and fast shutdown, and killing generations with a grace.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use river_ipc::{ControlResponse, ToWorker};

use super::*;

pub(super) struct Shutdown {
    pub(super) graceful: bool,
    /// When the remaining workers are sent SIGTERM (graceful) or SIGKILL (fast).
    pub(super) deadline: Instant,
    pub(super) escalated: bool,
}

impl Supervisor {
    pub(super) fn begin_shutdown(&mut self, graceful: bool) {
        if let Some(shutdown) = &self.shutdown {
            if graceful || !shutdown.graceful {
                return;
            }
        }
        tracing::info!(graceful, "shutting down");
        self.fail_upgrade("the master is shutting down".into());
        self.notify.stopping();
        let now = Instant::now();
        let mut drain = Duration::ZERO;
        self.abort_all_starting("the master is shutting down");
        let deferred = self.deferred_start.take().map(|d| d.waiters);
        let validating = self.validating.take().map(|v| v.waiters);
        for waiter in self
            .pending_reload
            .take()
            .into_iter()
            .chain(deferred)
            .chain(validating)
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

    pub(super) fn advance_shutdown(&mut self, now: Instant) {
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
                self.kill_generation(number, KillReason::Deadline, "graceful shutdown timed out");
            }
        } else {
            for gen in &self.generations {
                gen.signal_all(Signal::SIGKILL);
            }
        }
    }

    /// SIGKILL at once, for a generation that must be gone before another starts.
    pub(super) fn kill_generation_now(&mut self, number: u64, rule: KillReason, reason: &str) {
        self.signal_to_kill(number, rule, reason, Signal::SIGKILL, Duration::ZERO);
    }

    /// SIGTERM, then SIGKILL after the grace.
    pub(super) fn kill_generation(&mut self, number: u64, rule: KillReason, reason: &str) {
        self.signal_to_kill(number, rule, reason, Signal::SIGTERM, KILL_GRACE);
    }

    /// `rule` is the metrics' reason label; `reason` the log's words.
    pub(super) fn signal_to_kill(
        &mut self,
        number: u64,
        rule: KillReason,
        reason: &str,
        signal: Signal,
        grace: Duration,
    ) {
        // metrics: river_draining_connections_cut_total and
        // river_draining_workers_killed_total, once per generation.
        if let Some(gen) = self.generation_mut(number) {
            if gen.kill_at.is_none() {
                let workers = gen.alive().count() as u64;
                self.metrics.generation_killed(number, rule, workers);
            }
        }
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
}

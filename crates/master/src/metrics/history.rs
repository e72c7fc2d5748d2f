//! The reload history: the last [`KEEP`] reloads, their trigger, outcome,
//! phase durations, error, and how the generation each one retired drained.
//!
//! The supervisor reports each step of a reload as it happens; reloads never
//! overlap (a request during one is coalesced into one follow-up), so there is
//! at most one in progress. `riverctl status` shows the last five,
//! `riverctl history` all of them.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use river_ipc::{DrainResult, KillReason, ReloadOutcome, ReloadRecord, ReloadTrigger};

/// Reloads remembered.
pub const KEEP: usize = 50;

/// The reload in progress: its record and when each phase started.
struct Current {
    index: u64,
    started: Instant,
    phase_started: Instant,
}

#[derive(Default)]
pub struct History {
    records: VecDeque<ReloadRecord>,
    reloads: u64,
    /// The trigger of the request that will start the next reload (the first
    /// of those coalesced).
    pending: Option<ReloadTrigger>,
    current: Option<Current>,
    /// Kills of draining generations not yet drained: (generation, rule,
    /// connections cut).
    kills: Vec<(u64, KillReason, u64)>,
}

/// What a finished reload adds to the counters.
pub struct Finished {
    pub outcome: ReloadOutcome,
    pub seconds: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl History {
    /// A reload was asked for; it starts now or after the one in progress.
    pub fn requested(&mut self, trigger: ReloadTrigger) {
        self.pending.get_or_insert(trigger);
    }

    /// The requested reload starts (validation begins).
    pub fn begin(&mut self) {
        let trigger = self.pending.take().unwrap_or(ReloadTrigger::Sighup);
        self.reloads += 1;
        let now = Instant::now();
        self.current = Some(Current {
            index: self.reloads,
            started: now,
            phase_started: now,
        });
        if self.records.len() == KEEP {
            self.records.pop_front();
        }
        self.records.push_back(ReloadRecord {
            number: self.reloads,
            trigger,
            started_unix_secs: unix_now(),
            outcome: ReloadOutcome::InProgress,
            generation: None,
            retired: None,
            phases: Default::default(),
            duration_ms: None,
            error: None,
            drain: None,
        });
    }

    fn current_mut(&mut self) -> Option<(&mut ReloadRecord, &mut Current)> {
        let current = self.current.as_mut()?;
        let record = self
            .records
            .iter_mut()
            .rev()
            .find(|r| r.number == current.index)?;
        Some((record, current))
    }

    /// Config read and validated, new listeners bound, files read.
    pub fn validated(&mut self) {
        if let Some((record, current)) = self.current_mut() {
            record.phases.validate_ms = Some(ms(current.phase_started));
            current.phase_started = Instant::now();
        }
    }

    /// Rejected before any worker started.
    pub fn rejected(&mut self, error: &str) -> Option<Finished> {
        let (record, current) = self.current_mut()?;
        if record.phases.validate_ms.is_none() {
            record.phases.validate_ms = Some(ms(current.phase_started));
        }
        record.error = Some(error.to_owned());
        self.finish(ReloadOutcome::Rejected)
    }

    /// Generation `number` starts its workers (room was made, if needed).
    /// Without a reload in progress (the first generation): nothing.
    pub fn spawning(&mut self, number: u64) {
        if let Some((record, current)) = self.current_mut() {
            if record.generation.is_none() {
                record.generation = Some(number);
                record.phases.room_ms = Some(ms(current.phase_started));
                current.phase_started = Instant::now();
            }
        }
    }

    /// Every worker of generation `number` was started.
    pub fn spawned(&mut self, number: u64) {
        if let Some((record, current)) = self.current_mut() {
            if record.generation == Some(number) {
                record.phases.spawn_ms = Some(ms(current.phase_started));
                current.phase_started = Instant::now();
            }
        }
    }

    /// Generation `number` serves; `retired` was serving before.
    pub fn promoted(&mut self, number: u64, retired: Option<u64>) -> Option<Finished> {
        let (record, current) = self.current_mut()?;
        if record.generation != Some(number) {
            return None;
        }
        record.phases.ready_ms = Some(ms(current.phase_started));
        record.retired = retired;
        self.finish(ReloadOutcome::Ok)
    }

    /// Generation `number` failed to start and was torn down.
    pub fn rolled_back(&mut self, number: u64, error: &str) -> Option<Finished> {
        let (record, current) = self.current_mut()?;
        if record.generation != Some(number) {
            return None;
        }
        if record.phases.spawn_ms.is_none() {
            record.phases.spawn_ms = Some(ms(current.phase_started));
        }
        record.error = Some(error.to_owned());
        self.finish(ReloadOutcome::RolledBack)
    }

    fn finish(&mut self, outcome: ReloadOutcome) -> Option<Finished> {
        let current = self.current.take()?;
        let record = self
            .records
            .iter_mut()
            .rev()
            .find(|r| r.number == current.index)?;
        let seconds = current.started.elapsed().as_secs_f64();
        record.outcome = outcome;
        record.duration_ms = Some(seconds * 1000.0);
        Some(Finished { outcome, seconds })
    }

    /// The generations in `retired` stopped accepting: the reload that
    /// retired them is fully in effect.
    pub fn drain_started(&mut self, retired: &[u64], since_promotion: f64) {
        for record in self.records.iter_mut().rev() {
            if record.outcome == ReloadOutcome::Ok
                && record.phases.drain_start_ms.is_none()
                && record.retired.is_some_and(|r| retired.contains(&r))
            {
                record.phases.drain_start_ms = Some(since_promotion * 1000.0);
                return;
            }
        }
    }

    /// The master killed draining generation `number`.
    pub fn killed(&mut self, number: u64, reason: KillReason, connections: u64) {
        if !self.kills.iter().any(|(n, _, _)| *n == number) {
            self.kills.push((number, reason, connections));
        }
    }

    /// Draining generation `number` has no worker left, `seconds` after its
    /// drain began.
    pub fn drained(&mut self, number: u64, seconds: f64) {
        let kill = self
            .kills
            .iter()
            .position(|(n, _, _)| *n == number)
            .map(|i| self.kills.swap_remove(i));
        if let Some(record) = self
            .records
            .iter_mut()
            .rev()
            .find(|r| r.retired == Some(number))
        {
            record.drain = Some(DrainResult {
                seconds,
                connections_cut: kill.map_or(0, |(_, _, cut)| cut),
                killed_by: kill.map(|(_, reason, _)| reason),
            });
        }
    }

    /// Oldest first.
    pub fn records(&self) -> Vec<ReloadRecord> {
        self.records.iter().cloned().collect()
    }

    /// The last `n`, oldest first.
    pub fn last(&self, n: usize) -> Vec<ReloadRecord> {
        let skip = self.records.len().saturating_sub(n);
        self.records.iter().skip(skip).cloned().collect()
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_recorded_phase_by_phase() {
        let mut history = History::default();
        history.requested(ReloadTrigger::Riverctl { uid: 0, pid: 9 });
        history.requested(ReloadTrigger::Sighup); // coalesced into the same one
        history.begin();
        history.validated();
        history.spawning(2);
        history.spawned(2);
        let finished = history.promoted(2, Some(1)).unwrap();
        assert_eq!(finished.outcome, ReloadOutcome::Ok);
        history.drain_started(&[1], 0.004);
        history.killed(1, KillReason::Deadline, 3);
        history.drained(1, 1.5);

        let [record] = history.records().try_into().unwrap();
        assert_eq!(record.number, 1);
        assert_eq!(record.trigger, ReloadTrigger::Riverctl { uid: 0, pid: 9 });
        assert_eq!(record.outcome, ReloadOutcome::Ok);
        assert_eq!((record.generation, record.retired), (Some(2), Some(1)));
        let p = &record.phases;
        assert!(p.validate_ms.is_some() && p.room_ms.is_some() && p.spawn_ms.is_some());
        assert!(p.ready_ms.is_some());
        assert_eq!(p.drain_start_ms, Some(4.0));
        assert!(record.duration_ms.is_some() && record.error.is_none());
        let drain = record.drain.unwrap();
        assert_eq!(drain.seconds, 1.5);
        assert_eq!(drain.connections_cut, 3);
        assert_eq!(drain.killed_by, Some(KillReason::Deadline));
    }

    #[test]
    fn failures_and_the_first_generation() {
        let mut history = History::default();
        // The first generation is no reload.
        history.spawning(1);
        history.spawned(1);
        assert!(history.promoted(1, None).is_none());
        assert!(history.records().is_empty());

        history.requested(ReloadTrigger::Sighup);
        history.begin();
        let rejected = history.rejected("line 3: bad").unwrap();
        assert_eq!(rejected.outcome, ReloadOutcome::Rejected);

        history.requested(ReloadTrigger::Systemd { uid: 0, pid: 5 });
        history.begin();
        history.validated();
        history.spawning(2);
        assert!(history.rolled_back(3, "not ours").is_none());
        let rolled = history.rolled_back(2, "injected").unwrap();
        assert_eq!(rolled.outcome, ReloadOutcome::RolledBack);

        let records = history.records();
        assert_eq!(records[0].outcome, ReloadOutcome::Rejected);
        assert_eq!(records[0].error.as_deref(), Some("line 3: bad"));
        assert!(records[0].phases.validate_ms.is_some());
        assert_eq!(records[1].outcome, ReloadOutcome::RolledBack);
        assert!(records[1].phases.spawn_ms.is_some());
        assert!(records[1].phases.ready_ms.is_none());
        // A generation that drains by itself cut nothing.
        history.drained(1, 0.2);
    }

    #[test]
    fn only_the_last_fifty_are_kept() {
        let mut history = History::default();
        for _ in 0..60 {
            history.requested(ReloadTrigger::Sighup);
            history.begin();
            history.rejected("bad");
        }
        let records = history.records();
        assert_eq!(records.len(), KEEP);
        assert_eq!(records[0].number, 11);
        assert_eq!(records[KEEP - 1].number, 60);
        let last = history.last(5);
        assert_eq!(last.len(), 5);
        assert_eq!(last[4].number, 60);
    }
}

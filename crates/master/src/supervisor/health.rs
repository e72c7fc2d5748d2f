//! Periodic health: worker memory, the draining memory cap, status reports.

use std::time::Instant;

use river_ipc::{GenerationState, GenerationStatus, StatusReport, WorkerStatus};

use super::*;

impl Supervisor {
    /// RSS of every worker, and the draining-memory-limit-mb cap.
    pub(super) fn sample_memory(&mut self) {
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
                    self.kill_generation(
                        *oldest,
                        KillReason::Memory,
                        "draining-memory-limit-mb exceeded",
                    );
                }
                _ => return,
            }
        }
    }

    pub(super) fn status(&self) -> StatusReport {
        let now = Instant::now();
        StatusReport {
            master_pid: std::process::id(),
            master: self.identity.clone(),
            retiring: self.retiring_masters(),
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
                    discovery: gen
                        .discovery
                        .as_ref()
                        .map(|d| d.status())
                        .unwrap_or_default(),
                    handed_over_in: gen.handed_in,
                    handed_over_out: gen.handed_out,
                })
                .collect(),
            reloads: self.metrics.recent_reloads(5),
        }
    }
}

/// Resident set size from /proc/PID/statm (pages).
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
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
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 100 * 1024, "rss {rss}");
    }
}

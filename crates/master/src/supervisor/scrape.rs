//! A metrics scrape: the supervisor's view of its generations (states, live
//! workers, their memory) added to what `crate::metrics` counted.

use super::health::rss_bytes;
use super::*;
use crate::metrics::Process;

impl Supervisor {
    /// The exposition text for `GET /metrics`.
    pub(super) fn render_metrics(&self) -> String {
        let mut process = Process::default();
        for gen in &self.generations {
            let state = match gen.state {
                State::Starting => 0,
                State::Serving => 1,
                State::Draining => 2,
            };
            if gen.state == State::Serving {
                process.serving = Some(gen.number);
                process.discovered = gen
                    .discovery
                    .as_ref()
                    .map(|d| d.backend_counts())
                    .unwrap_or_default();
            }
            for (index, slot) in gen.slots.iter().enumerate() {
                if let Some(handle) = &slot.handle {
                    process.workers[state] += 1;
                    let rss = rss_bytes(handle.pid).unwrap_or(slot.rss_bytes);
                    process.worker_memory.push((gen.number, index, rss));
                }
            }
        }
        self.metrics.render(process)
    }
}

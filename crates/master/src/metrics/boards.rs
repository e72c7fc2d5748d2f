//! The master's side of the stats boards: every live generation's board, and
//! the totals folded from workers that exited.
//!
//! A worker only ever adds to its slots. When it exits (crash, kill, drain),
//! the master adds the slot's counters to [`Boards::totals`] and zeroes the
//! slot, in one step on the event loop, before a replacement can be started
//! in that slot. A scrape is then totals + every live slot, which never goes
//! backwards: not across crashes, reloads, rollbacks or drains. A board stays
//! here until its generation is gone *and* its last worker has exited (a
//! rolled-back generation is dropped by the supervisor while its killed
//! workers are still being reaped).
//!
//! This file does not encode anything (see `encode`), and it does not decide
//! when a worker has exited (the supervisor tells it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use river_config::Config;
use river_ipc::stats::{upstream_addresses, Counters, StatsBoard};

/// One generation's board and what its slots mean.
struct GenerationBoard {
    board: Arc<StatsBoard>,
    /// Service names, in slot order.
    services: Vec<String>,
    /// Each service's upstreams, in health-bit order.
    upstreams: Vec<Vec<SocketAddr>>,
    /// Per worker index: a process may still write to the slot.
    alive: Vec<bool>,
    /// The supervisor no longer has this generation.
    gone: bool,
}

impl GenerationBoard {
    fn slots(&self, worker: usize) -> impl Iterator<Item = (usize, river_ipc::stats::Slot)> + '_ {
        (0..self.services.len()).filter_map(move |s| Some((s, self.board.slot(worker, s)?)))
    }
}

/// What a scrape shows for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTotals {
    pub counters: Counters,
    /// Open connections, every generation's live workers.
    pub connections: u64,
}

#[derive(Default)]
pub struct Boards {
    /// Folded from exited workers, by service name. A service removed by a
    /// reload keeps its totals (counters must not disappear mid-series).
    totals: BTreeMap<String, Counters>,
    live: BTreeMap<u64, GenerationBoard>,
}

impl Boards {
    /// Generation `number` starts with `board`, laid out for `config`.
    pub fn add_generation(&mut self, number: u64, board: Arc<StatsBoard>, config: &Config) {
        for service in &config.services {
            self.totals.entry(service.name.clone()).or_default();
        }
        self.live.insert(
            number,
            GenerationBoard {
                alive: vec![false; board.layout().workers],
                board,
                services: config.services.iter().map(|s| s.name.clone()).collect(),
                upstreams: config.services.iter().map(upstream_addresses).collect(),
                gone: false,
            },
        );
    }

    /// A worker process now writes to slot row `index` of generation `number`.
    pub fn worker_spawned(&mut self, number: u64, index: usize) {
        if let Some(alive) = self
            .live
            .get_mut(&number)
            .and_then(|g| g.alive.get_mut(index))
        {
            *alive = true;
        }
    }

    /// Worker `index` of generation `number` has exited: fold its slots into
    /// the totals and zero them for a replacement.
    pub fn worker_exited(&mut self, number: u64, index: usize) {
        let Some(generation) = self.live.get_mut(&number) else {
            return;
        };
        for (service, slot) in generation.slots(index) {
            let counters = slot.read().counters;
            if let Some(name) = generation.services.get(service) {
                self.totals.entry(name.clone()).or_default().add(&counters);
            }
            slot.clear();
        }
        if let Some(alive) = generation.alive.get_mut(index) {
            *alive = false;
        }
        self.drop_if_done(number);
    }

    /// The supervisor dropped generation `number`; its board goes once no
    /// process of it can write any more.
    pub fn generation_gone(&mut self, number: u64) {
        if let Some(generation) = self.live.get_mut(&number) {
            generation.gone = true;
        }
        self.drop_if_done(number);
    }

    fn drop_if_done(&mut self, number: u64) {
        let done = self
            .live
            .get(&number)
            .is_some_and(|g| g.gone && !g.alive.iter().any(|a| *a));
        if done {
            // Every slot was folded at its worker's exit; fold again anyway
            // (zero if so) so that nothing is lost if one never had an exit.
            if let Some(generation) = self.live.remove(&number) {
                for worker in 0..generation.alive.len() {
                    for (service, slot) in generation.slots(worker) {
                        let counters = slot.read().counters;
                        if let Some(name) = generation.services.get(service) {
                            self.totals.entry(name.clone()).or_default().add(&counters);
                        }
                    }
                }
            }
        }
    }

    /// Open connections in generation `number`'s live workers.
    pub fn connections(&self, number: u64) -> u64 {
        let Some(generation) = self.live.get(&number) else {
            return 0;
        };
        (0..generation.alive.len())
            .filter(|w| generation.alive[*w])
            .flat_map(|w| generation.slots(w))
            .map(|(_, slot)| slot.read().connections)
            .sum()
    }

    /// Per service: totals plus every live slot.
    pub fn services(&self) -> BTreeMap<String, ServiceTotals> {
        let mut out: BTreeMap<String, ServiceTotals> = self
            .totals
            .iter()
            .map(|(name, counters)| {
                (
                    name.clone(),
                    ServiceTotals {
                        counters: *counters,
                        connections: 0,
                    },
                )
            })
            .collect();
        for generation in self.live.values() {
            for worker in 0..generation.alive.len() {
                for (service, slot) in generation.slots(worker) {
                    let Some(name) = generation.services.get(service) else {
                        continue;
                    };
                    let values = slot.read();
                    let entry = out.entry(name.clone()).or_default();
                    entry.counters.add(&values.counters);
                    if generation.alive[worker] {
                        entry.connections += values.connections;
                    }
                }
            }
        }
        out
    }

    /// Generation `number`'s view of its upstreams: (service, upstream,
    /// healthy), healthy unless one of its live workers sees it down.
    pub fn upstream_health(&self, number: u64) -> Vec<(String, SocketAddr, bool)> {
        let Some(generation) = self.live.get(&number) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (service, upstreams) in generation.upstreams.iter().enumerate() {
            let views: Vec<_> = (0..generation.alive.len())
                .filter(|w| generation.alive[*w])
                .filter_map(|w| generation.board.slot(w, service))
                .map(|slot| slot.read())
                .collect();
            for (index, upstream) in upstreams.iter().enumerate() {
                let healthy = !views.iter().any(|v| v.upstream_down(index));
                out.push((generation.services[service].clone(), *upstream, healthy));
            }
        }
        out
    }

    #[cfg(test)]
    fn boards(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::stats::StatsLayout;

    fn config(workers: usize, services: &[&str]) -> Config {
        let services: String = services
            .iter()
            .enumerate()
            .map(|(i, name)| {
                format!(
                    "    {name} {{\n        listeners {{ \"127.0.0.1:{}\" }}\n        connectors {{ \"127.0.0.1:9\" }}\n    }}\n",
                    1000 + i
                )
            })
            .collect();
        river_config::parse(
            &format!("system {{ workers {workers}; }}\nservices {{\n{services}}}\n"),
            "test.kdl",
        )
        .unwrap()
    }

    fn start(boards: &mut Boards, number: u64, config: &Config) -> Arc<StatsBoard> {
        let (board, _fd) = StatsBoard::create(StatsLayout::of(config)).unwrap();
        boards.add_generation(number, board.clone(), config);
        for worker in 0..config.system.workers {
            boards.worker_spawned(number, worker);
        }
        board
    }

    fn requests(boards: &Boards, service: &str) -> u64 {
        boards.services()[service].counters.requests_total()
    }

    #[test]
    fn a_dead_workers_counts_are_folded_before_its_slot_is_reused() {
        let mut boards = Boards::default();
        let config = config(2, &["A", "B"]);
        let board = start(&mut boards, 1, &config);
        let worker0 = board.slot(0, 0).unwrap();
        for _ in 0..5 {
            worker0.request_done(200, 10, 0, 0);
        }
        worker0.connection_opened();
        board.slot(1, 0).unwrap().request_done(500, 10, 0, 0);
        assert_eq!(requests(&boards, "A"), 6);
        assert_eq!(boards.services()["A"].connections, 1);
        assert_eq!(boards.connections(1), 1);

        // Worker 0 dies: its 5 stay counted, its connection is gone, its slot is
        // zero for the replacement.
        boards.worker_exited(1, 0);
        assert_eq!(requests(&boards, "A"), 6);
        assert_eq!(boards.services()["A"].connections, 0);
        assert_eq!(worker0.read().counters.requests_total(), 0);
        boards.worker_spawned(1, 0);
        worker0.request_done(200, 10, 0, 0);
        assert_eq!(requests(&boards, "A"), 7);
        assert_eq!(requests(&boards, "B"), 0, "known services start at zero");
    }

    #[test]
    fn counters_survive_reloads_rollbacks_and_removed_services() {
        let mut boards = Boards::default();
        let first = config(1, &["A", "B"]);
        let g1 = start(&mut boards, 1, &first);
        g1.slot(0, 1).unwrap().request_done(200, 10, 0, 0);

        // A reload removes B and adds C; generation 1 drains and exits.
        let second = config(1, &["A", "C"]);
        let g2 = start(&mut boards, 2, &second);
        g2.slot(0, 1).unwrap().request_done(404, 10, 0, 0);
        let mut seen = Vec::new();
        seen.push(boards.services());
        boards.worker_exited(1, 0);
        boards.generation_gone(1);
        seen.push(boards.services());
        assert_eq!(boards.boards(), 1);

        // A rolled-back generation is dropped while its worker still lives:
        // what it counts until its exit is kept.
        let g3 = start(&mut boards, 3, &second);
        boards.generation_gone(3);
        g3.slot(0, 0).unwrap().request_done(200, 10, 0, 0);
        seen.push(boards.services());
        boards.worker_exited(3, 0);
        seen.push(boards.services());
        assert_eq!(boards.boards(), 1);

        // Generation 2 crashes and its worker is replaced.
        boards.worker_exited(2, 0);
        boards.worker_spawned(2, 0);
        seen.push(boards.services());

        for pair in seen.windows(2) {
            for (name, before) in &pair[0] {
                let after = &pair[1][name].counters;
                assert!(
                    after.requests_total() >= before.counters.requests_total(),
                    "{name} went backwards"
                );
            }
        }
        let last = seen.last().unwrap();
        assert_eq!(last["A"].counters.requests_total(), 1);
        assert_eq!(
            last["B"].counters.requests_total(),
            1,
            "B kept after removal"
        );
        assert_eq!(last["C"].counters.requests[3], 1);
    }

    #[test]
    fn an_upstream_is_healthy_unless_a_live_worker_sees_it_down() {
        let mut boards = Boards::default();
        let config = config(2, &["A"]);
        let board = start(&mut boards, 1, &config);
        let up = "127.0.0.1:9".parse().unwrap();
        assert_eq!(boards.upstream_health(1), [("A".to_owned(), up, true)]);
        board.slot(1, 0).unwrap().upstream_health(0, false);
        assert_eq!(boards.upstream_health(1), [("A".to_owned(), up, false)]);
        // The worker that saw it down died; its replacement starts healthy.
        boards.worker_exited(1, 1);
        assert_eq!(boards.upstream_health(1), [("A".to_owned(), up, true)]);
        assert!(boards.upstream_health(7).is_empty());
    }
}

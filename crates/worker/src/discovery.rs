//! Service discovery in a worker: the discovered sets the master relays
//! (`ToWorker::Discovered`) applied in place to each service's selector. A
//! service's upstreams are its literal addresses plus the current set of each
//! of its names; the union is recomputed on every change and handed to
//! [`Upstreams::update`], and the fast path's idle connections to removed
//! backends are closed.
//!
//! Does not resolve anything: the generation's resolver process does, and
//! the master relays the same sets to every worker, so that every worker
//! builds the same selector (Ketama maps a key to the same backend
//! everywhere).

use std::collections::HashMap;
use std::sync::Arc;

use river_config::{DiscoveredName, Service, ServiceKind, Upstream};
use river_ipc::{DiscoveredBackend, DiscoveredSet};

use crate::front::Front;
use crate::service::upstreams::Upstreams;

/// Every service of this worker that has names to discover.
#[derive(Default)]
pub struct Registry {
    services: HashMap<String, Discovered>,
}

struct Discovered {
    upstreams: Arc<Upstreams>,
    front: Arc<Front>,
    literal: Vec<Upstream>,
    names: Vec<DiscoveredName>,
    /// By name (as displayed): the version and backends last applied.
    sets: HashMap<String, (u64, Vec<DiscoveredBackend>)>,
}

impl Registry {
    /// Called at start-up for each service: remembers those with `discovery "Dns"`.
    pub fn register(
        &mut self,
        service: &Service,
        upstreams: Option<Arc<Upstreams>>,
        front: Arc<Front>,
    ) {
        let ServiceKind::Proxy(proxy) = &service.kind else {
            return;
        };
        let (Some(discovery), Some(upstreams)) = (&proxy.discovery, upstreams) else {
            return;
        };
        self.services.insert(
            service.name.clone(),
            Discovered {
                upstreams,
                front,
                literal: proxy.upstreams.clone(),
                names: discovery.names.clone(),
                sets: HashMap::new(),
            },
        );
    }

    /// Apply a set relayed by the master. Unknown services or names (a master
    /// bug) and sets older than the one applied are ignored.
    pub fn apply(&mut self, set: DiscoveredSet) {
        let Some(service) = self.services.get_mut(&set.service) else {
            tracing::warn!(
                service = set.service,
                "discovered set for an unknown service"
            );
            return;
        };
        if !service.names.iter().any(|n| n.name.to_string() == set.name) {
            tracing::warn!(
                service = set.service,
                name = set.name,
                "discovered set for an unknown name"
            );
            return;
        }
        if let Some((version, backends)) = service.sets.get_mut(&set.name) {
            if *version >= set.version {
                return; // stale: a newer one was applied
            }
            if *backends == set.backends {
                *version = set.version;
                return;
            }
        }
        service
            .sets
            .insert(set.name.clone(), (set.version, set.backends));
        let upstreams = service.union();
        match service.upstreams.update(&upstreams) {
            Ok(removed) => {
                tracing::info!(
                    service = set.service,
                    name = set.name,
                    upstreams = upstreams.len(),
                    removed = removed.len(),
                    "discovered set applied"
                );
                if !removed.is_empty() {
                    service.front.forget_upstreams(&removed);
                }
            }
            Err(err) => tracing::error!(service = set.service, "applying a discovered set: {err}"),
        }
    }
}

impl Discovered {
    /// Literal upstreams first (weight 1), then each name's backends in
    /// config order with the name's `tls-sni` and `proto`. The selector keys
    /// backends by address, so the order changes nothing but which entry wins
    /// for an address given twice; it is the same on every worker.
    fn union(&self) -> Vec<(Upstream, u16)> {
        let mut all: Vec<(Upstream, u16)> = self.literal.iter().map(|u| (u.clone(), 1)).collect();
        for name in &self.names {
            let Some((_, backends)) = self.sets.get(&name.name.to_string()) else {
                continue;
            };
            all.extend(backends.iter().map(|b| {
                (
                    Upstream {
                        address: b.address,
                        tls_sni: name.tls_sni.clone(),
                        proto: name.proto,
                    },
                    b.weight,
                )
            }));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use river_config::{
        HealthCheck, LoadBalance, Selection, SelectionKey, Upstream, UpstreamProto,
    };

    use crate::service::upstreams::Upstreams;

    fn up(port: u16) -> Upstream {
        Upstream {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_sni: None,
            proto: UpstreamProto::H1Only,
        }
    }

    fn lb(selection: Selection) -> LoadBalance {
        LoadBalance {
            selection,
            health_check: HealthCheck::None,
        }
    }

    fn counts(ups: &Upstreams, picks: usize) -> HashMap<u16, usize> {
        let mut counts = HashMap::new();
        for _ in 0..picks {
            *counts
                .entry(ups.select(b"", &[]).unwrap().address.port())
                .or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn a_set_is_replaced_in_place() {
        let ups = Upstreams::build(&[], &lb(Selection::RoundRobin)).unwrap();
        assert!(ups.is_empty());
        assert!(ups.select(b"", &[]).is_none());
        let removed = ups.update(&[(up(1), 1), (up(2), 1)]).unwrap();
        assert!(removed.is_empty());
        assert_eq!(counts(&ups, 100), HashMap::from([(1, 50), (2, 50)]));
        let removed = ups.update(&[(up(2), 1), (up(3), 1)]).unwrap();
        assert_eq!(removed, [up(1).address]);
        assert!(!ups.contains(up(1).address) && ups.contains(up(3).address));
        assert_eq!(counts(&ups, 100), HashMap::from([(2, 50), (3, 50)]));
        assert_eq!(ups.update(&[]).unwrap().len(), 2);
        assert!(ups.is_empty());
    }

    #[test]
    fn weights_are_honoured() {
        for selection in [Selection::RoundRobin, Selection::Random] {
            let ups = Upstreams::build(&[], &lb(selection)).unwrap();
            ups.update(&[(up(1), 1), (up(2), 3)]).unwrap();
            let counts = counts(&ups, 4000);
            let share = counts[&2] as f64 / 4000.0;
            assert!((0.70..0.80).contains(&share), "{selection:?}: {counts:?}");
        }
        let ups = Upstreams::build(
            &[],
            &lb(Selection::Ketama {
                key: SelectionKey::UriPath,
            }),
        )
        .unwrap();
        ups.update(&[(up(1), 1), (up(2), 3)]).unwrap();
        let heavy = (0..4000)
            .filter(|i| {
                let key = ups.key(None, &format!("/k/{i}"));
                ups.select(&key, &[]).unwrap().address.port() == 2
            })
            .count();
        let share = heavy as f64 / 4000.0;
        assert!((0.65..0.85).contains(&share), "ketama share {share}");
    }

    /// Two workers that reached the same set by different histories pick the
    /// same backend for every key.
    #[test]
    fn ketama_depends_only_on_the_set() {
        let ketama = lb(Selection::Ketama {
            key: SelectionKey::UriPath,
        });
        let one = Upstreams::build(&[up(9)], &ketama).unwrap();
        let two = Upstreams::build(&[up(9)], &ketama).unwrap();
        one.update(&[(up(9), 1), (up(1), 1), (up(5), 1)]).unwrap();
        one.update(&[(up(9), 1), (up(2), 1), (up(3), 1)]).unwrap();
        two.update(&[(up(9), 1), (up(3), 1), (up(2), 1)]).unwrap();
        for i in 0..500 {
            let key = one.key(None, &format!("/user/{i}"));
            assert_eq!(
                one.select(&key, &[]).unwrap().address,
                two.select(&key, &[]).unwrap().address
            );
        }
    }

    #[tokio::test]
    async fn health_state_of_staying_backends_is_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let with = |address| Upstream { address, ..up(1) };
        let ups = Upstreams::build(
            &[],
            &LoadBalance {
                selection: Selection::RoundRobin,
                health_check: HealthCheck::Tcp {
                    interval_ms: 3_600_000,
                },
            },
        )
        .unwrap();
        ups.update(&[(with(live), 1), (with(dead), 1)]).unwrap();
        ups.run_health_checks_once().await;
        // A third backend joins: the dead one stays out without a new probe.
        ups.update(&[(with(live), 1), (with(dead), 1), (up(7), 1)])
            .unwrap();
        for _ in 0..20 {
            assert_ne!(ups.select(b"", &[]).unwrap().address, dead);
        }
    }
}

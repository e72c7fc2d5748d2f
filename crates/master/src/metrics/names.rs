//! Every metric River exports: names as constants by family (as sozu's
//! `metrics/names.rs`), with their type, labels and help text. The encoder,
//! the man page (river-docgen) and the tests all read [`ALL`], so a metric
//! cannot be exported undocumented.

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One family: its name, type, labels and help text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Per service, counted by the workers on the stats board.
pub mod service {
    pub const REQUESTS: &str = "river_requests_total";
    pub const REQUEST_DURATION: &str = "river_request_duration_seconds";
    pub const UPSTREAM_ERRORS: &str = "river_upstream_errors_total";
    pub const BYTES_SENT: &str = "river_bytes_sent_total";
    pub const BYTES_RECEIVED: &str = "river_bytes_received_total";
    pub const CONNECTIONS_ACTIVE: &str = "river_connections_active";
    pub const RATE_LIMITED: &str = "river_rate_limited_total";
    pub const BLOCKED: &str = "river_blocked_total";
    pub const UPSTREAM_HEALTHY: &str = "river_upstream_healthy";
}

/// The process model, kept by the master itself.
pub mod process {
    pub const GENERATION: &str = "river_generation";
    pub const WORKERS: &str = "river_workers";
    pub const RELOADS: &str = "river_reloads_total";
    pub const RELOAD_DURATION: &str = "river_reload_duration_seconds";
    pub const LAST_RELOAD_SUCCESS: &str = "river_last_reload_success_timestamp_seconds";
    pub const WORKER_RESTARTS: &str = "river_worker_restarts_total";
    pub const CONNECTIONS_CUT: &str = "river_draining_connections_cut_total";
    pub const WORKERS_KILLED: &str = "river_draining_workers_killed_total";
    pub const WORKER_MEMORY: &str = "river_worker_resident_memory_bytes";
    pub const MASTER_START_TIME: &str = "river_master_start_time_seconds";
    pub const BUILD_INFO: &str = "river_build_info";
    pub const HANDED_OVER: &str = "river_connections_handed_over_total";
}

/// Service discovery (`discovery "Dns"`), kept by the master from its
/// resolvers' answers.
pub mod discovery {
    pub const DISCOVERED: &str = "river_upstream_discovered";
    pub const ERRORS: &str = "river_discovery_errors_total";
}

/// Every family, in the order of the exposition.
pub const ALL: &[Family] = &[
    Family {
        name: service::REQUESTS,
        kind: Kind::Counter,
        labels: &["service", "code_class"],
        help: "Requests answered, by service and status class (1xx..5xx; other: no response was sent).",
    },
    Family {
        name: service::REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &["service"],
        help: "Time from a request's head to the end of its response, by service.",
    },
    Family {
        name: service::UPSTREAM_ERRORS,
        kind: Kind::Counter,
        labels: &["service", "kind"],
        help: "Failed attempts at an upstream, by service and kind (connect, timeout, reset, invalid_response).",
    },
    Family {
        name: service::BYTES_SENT,
        kind: Kind::Counter,
        labels: &["service"],
        help: "Response body bytes sent to clients, by service.",
    },
    Family {
        name: service::BYTES_RECEIVED,
        kind: Kind::Counter,
        labels: &["service"],
        help: "Request body bytes received from clients, by service.",
    },
    Family {
        name: service::CONNECTIONS_ACTIVE,
        kind: Kind::Gauge,
        labels: &["service"],
        help: "Open client connections on the service's listeners, all generations.",
    },
    Family {
        name: service::RATE_LIMITED,
        kind: Kind::Counter,
        labels: &["service"],
        help: "Requests refused with 429 by rate-limiting, by service.",
    },
    Family {
        name: service::BLOCKED,
        kind: Kind::Counter,
        labels: &["service"],
        help: "Requests refused with 403 by a block-cidr-range filter, by service.",
    },
    Family {
        name: service::UPSTREAM_HEALTHY,
        kind: Kind::Gauge,
        labels: &["service", "upstream"],
        help: "1 if every serving worker's health check sees the upstream up, else 0.",
    },
    Family {
        name: process::GENERATION,
        kind: Kind::Gauge,
        labels: &[],
        help: "Number of the serving generation (0 while none serves).",
    },
    Family {
        name: process::WORKERS,
        kind: Kind::Gauge,
        labels: &["state"],
        help: "Live worker processes by their generation's state (starting, serving, draining).",
    },
    Family {
        name: process::RELOADS,
        kind: Kind::Counter,
        labels: &["outcome"],
        help: "Reloads by outcome (ok, rejected: nothing started, rolled_back: workers failed to start).",
    },
    Family {
        name: process::RELOAD_DURATION,
        kind: Kind::Histogram,
        labels: &[],
        help: "Time from a reload request to its outcome.",
    },
    Family {
        name: process::LAST_RELOAD_SUCCESS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Unix time of the last successful reload (of the master's start until one succeeds).",
    },
    Family {
        name: process::WORKER_RESTARTS,
        kind: Kind::Counter,
        labels: &[],
        help: "Workers started to replace a serving worker that died.",
    },
    Family {
        name: process::CONNECTIONS_CUT,
        kind: Kind::Counter,
        labels: &["reason"],
        help: "Connections open in draining workers the master killed, by rule (deadline, generation_cap, memory).",
    },
    Family {
        name: process::WORKERS_KILLED,
        kind: Kind::Counter,
        labels: &["reason"],
        help: "Draining workers the master killed, by rule (deadline, generation_cap, memory).",
    },
    Family {
        name: process::HANDED_OVER,
        kind: Kind::Counter,
        labels: &["kind"],
        help: "Connections a draining generation handed to the serving one on reload, by kind (idle: keep-alive between requests, tunnel: upgraded, e.g. WebSocket).",
    },
    Family {
        name: process::WORKER_MEMORY,
        kind: Kind::Gauge,
        labels: &["generation", "worker"],
        help: "Resident memory of each live worker, by generation and worker index.",
    },
    Family {
        name: process::MASTER_START_TIME,
        kind: Kind::Gauge,
        labels: &[],
        help: "Unix time the master started.",
    },
    Family {
        name: process::BUILD_INFO,
        kind: Kind::Gauge,
        labels: &["version"],
        help: "Always 1; the version of the running master.",
    },
    Family {
        name: discovery::DISCOVERED,
        kind: Kind::Gauge,
        labels: &["service", "name"],
        help: "Backends the serving generation currently has from a discovered DNS name.",
    },
    Family {
        name: discovery::ERRORS,
        kind: Kind::Counter,
        labels: &["service", "name"],
        help: "Failed lookups of a discovered DNS name (the last good set is kept).",
    },
];

/// Bounds (seconds) of `river_reload_duration_seconds`.
pub const RELOAD_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The family named `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    ALL.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for family in ALL {
            assert!(seen.insert(family.name), "{} twice", family.name);
            assert!(family.name.starts_with("river_"), "{}", family.name);
            assert!(
                family
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                family.name
            );
            // Counters end in _total; nothing else does.
            assert_eq!(
                family.kind == Kind::Counter,
                family.name.ends_with("_total"),
                "{}",
                family.name
            );
            assert!(!family.help.is_empty() && !family.help.contains('\n'));
        }
        assert_eq!(family(process::BUILD_INFO).unwrap().labels, ["version"]);
    }
}

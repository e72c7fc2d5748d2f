//! A scrape in the Prometheus text format (version 0.0.4), encoded by the
//! `prometheus` crate's `TextEncoder` from a [`Scrape`] the master fills.
//!
//! Why `prometheus` and not `prometheus-client`: the issue asks for
//! `text/plain; version=0.0.4`, which `prometheus`' encoder writes as is,
//! while `prometheus-client` writes OpenMetrics (`# EOF`, `_total` appended to
//! counter names). Its plain data model (no protobuf) is all we use: the
//! master builds the families from its own snapshot on each scrape, so no
//! registry, lock or background thread is involved.
//!
//! Known label values are exported at zero before anything happened (every
//! status class, error kind, reload outcome, kill rule), as HAProxy does, so
//! that rates and dashboards have a series from the first scrape.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use river_ipc::stats::{CODE_CLASSES, DURATION_BUCKETS, UPSTREAM_ERROR_KINDS};
use river_ipc::{HandedKind, KillReason, ReloadOutcome};

use super::boards::ServiceTotals;
use super::names::{self, discovery, process, service, Kind};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Outcomes counted by `river_reloads_total`, in [`Scrape::reloads`] order.
pub const OUTCOMES: [ReloadOutcome; 3] = [
    ReloadOutcome::Ok,
    ReloadOutcome::Rejected,
    ReloadOutcome::RolledBack,
];

/// Generation states of `river_workers`, in [`Scrape::workers`] order.
pub const STATES: [&str; 3] = ["starting", "serving", "draining"];

/// A histogram kept by the master: counts per bound (not cumulative; one more
/// for above the last bound), their sum, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observations {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Observations {
    pub fn new(bounds: usize) -> Observations {
        Observations {
            counts: vec![0; bounds + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, bounds: &[f64], value: f64) {
        let bucket = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
    }
}

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Scrape {
    pub services: BTreeMap<String, ServiceTotals>,
    /// The serving generation's upstreams: (service, upstream, healthy).
    pub upstream_health: Vec<(String, SocketAddr, bool)>,
    pub generation: u64,
    /// By [`STATES`].
    pub workers: [u64; 3],
    /// By [`OUTCOMES`].
    pub reloads: [u64; 3],
    pub reload_duration: Observations,
    pub last_reload_success: f64,
    pub worker_restarts: u64,
    /// By [`KillReason::ALL`].
    pub connections_cut: [u64; 3],
    pub workers_killed: [u64; 3],
    /// By [`HandedKind::ALL`] (connection handoff).
    pub handed_over: [u64; 2],
    /// (generation, worker index, bytes).
    pub worker_memory: Vec<(u64, usize, u64)>,
    pub master_start: f64,
    /// (service, name, backends) of the serving generation's discovered names.
    pub discovered: Vec<(String, String, u64)>,
    /// Failed lookups by (service, name), since the master started.
    pub discovery_errors: BTreeMap<(String, String), u64>,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::from_label(labels(pairs));
    let mut counter = Counter::default();
    counter.set_value(value);
    metric.set_counter(counter);
    metric
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::from_label(labels(pairs));
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

/// `counts` are per bound, not cumulative, with one more above the last bound.
fn histogram(pairs: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) -> Metric {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, count) in bounds.iter().zip(counts) {
        cumulative += count;
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*bound);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    let mut histogram = Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(counts.iter().sum());
    histogram.set_sample_sum(sum);
    let mut metric = Metric::from_label(labels(pairs));
    metric.set_histogram(histogram);
    metric
}

fn family(name: &str, metrics: Vec<Metric>) -> Option<MetricFamily> {
    let spec = names::family(name)?;
    if metrics.is_empty() {
        // The text format has no empty family; it is simply absent.
        return None;
    }
    let mut family = MetricFamily::default();
    family.set_name(spec.name.to_owned());
    family.set_help(spec.help.to_owned());
    family.set_field_type(match spec.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    family.set_metric(metrics);
    Some(family)
}

impl Scrape {
    fn families(&self) -> Vec<MetricFamily> {
        let per_service = |value: &dyn Fn(&ServiceTotals) -> f64, gauge_kind: bool| {
            self.services
                .iter()
                .map(|(name, totals)| {
                    let pairs = [("service", name.as_str())];
                    if gauge_kind {
                        gauge(&pairs, value(totals))
                    } else {
                        counter(&pairs, value(totals))
                    }
                })
                .collect::<Vec<_>>()
        };
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut errors = Vec::new();
        for (name, totals) in &self.services {
            let c = &totals.counters;
            for (class, n) in CODE_CLASSES.iter().zip(c.requests) {
                requests.push(counter(
                    &[("service", name), ("code_class", class)],
                    n as f64,
                ));
            }
            durations.push(histogram(
                &[("service", name)],
                &DURATION_BUCKETS,
                &c.duration,
                c.duration_sum_micros as f64 / 1e6,
            ));
            for (kind, n) in UPSTREAM_ERROR_KINDS.iter().zip(c.upstream_errors) {
                errors.push(counter(&[("service", name), ("kind", kind)], n as f64));
            }
        }
        let health = self
            .upstream_health
            .iter()
            .map(|(name, upstream, healthy)| {
                gauge(
                    &[("service", name), ("upstream", &upstream.to_string())],
                    f64::from(u8::from(*healthy)),
                )
            })
            .collect();
        let by_reason = |values: &[u64; 3]| {
            KillReason::ALL
                .iter()
                .zip(values)
                .map(|(reason, n)| counter(&[("reason", reason.as_str())], *n as f64))
                .collect::<Vec<_>>()
        };
        let version = river_ipc::VERSION;
        [
            family(service::REQUESTS, requests),
            family(service::REQUEST_DURATION, durations),
            family(service::UPSTREAM_ERRORS, errors),
            family(
                service::BYTES_SENT,
                per_service(&|t| t.counters.bytes_sent as f64, false),
            ),
            family(
                service::BYTES_RECEIVED,
                per_service(&|t| t.counters.bytes_received as f64, false),
            ),
            family(
                service::CONNECTIONS_ACTIVE,
                per_service(&|t| t.connections as f64, true),
            ),
            family(
                service::RATE_LIMITED,
                per_service(&|t| t.counters.rate_limited as f64, false),
            ),
            family(
                service::BLOCKED,
                per_service(&|t| t.counters.blocked as f64, false),
            ),
            family(service::UPSTREAM_HEALTHY, health),
            family(
                process::GENERATION,
                vec![gauge(&[], self.generation as f64)],
            ),
            family(
                process::WORKERS,
                STATES
                    .iter()
                    .zip(self.workers)
                    .map(|(state, n)| gauge(&[("state", state)], n as f64))
                    .collect(),
            ),
            family(
                process::RELOADS,
                OUTCOMES
                    .iter()
                    .zip(self.reloads)
                    .map(|(outcome, n)| counter(&[("outcome", outcome.as_str())], n as f64))
                    .collect(),
            ),
            family(
                process::RELOAD_DURATION,
                vec![histogram(
                    &[],
                    &names::RELOAD_BUCKETS,
                    &self.reload_duration.counts,
                    self.reload_duration.sum,
                )],
            ),
            family(
                process::LAST_RELOAD_SUCCESS,
                vec![gauge(&[], self.last_reload_success)],
            ),
            family(
                process::WORKER_RESTARTS,
                vec![counter(&[], self.worker_restarts as f64)],
            ),
            family(process::CONNECTIONS_CUT, by_reason(&self.connections_cut)),
            family(process::WORKERS_KILLED, by_reason(&self.workers_killed)),
            family(
                process::HANDED_OVER,
                HandedKind::ALL
                    .iter()
                    .zip(self.handed_over)
                    .map(|(kind, n)| counter(&[("kind", kind.as_str())], n as f64))
                    .collect(),
            ),
            family(
                process::WORKER_MEMORY,
                self.worker_memory
                    .iter()
                    .map(|(generation, worker, bytes)| {
                        gauge(
                            &[
                                ("generation", &generation.to_string()),
                                ("worker", &worker.to_string()),
                            ],
                            *bytes as f64,
                        )
                    })
                    .collect(),
            ),
            family(
                process::MASTER_START_TIME,
                vec![gauge(&[], self.master_start)],
            ),
            family(
                process::BUILD_INFO,
                vec![gauge(&[("version", version)], 1.0)],
            ),
            family(
                discovery::DISCOVERED,
                self.discovered
                    .iter()
                    .map(|(service, name, n)| {
                        gauge(&[("service", service), ("name", name)], *n as f64)
                    })
                    .collect(),
            ),
            family(
                discovery::ERRORS,
                self.discovery_errors
                    .iter()
                    .map(|((service, name), n)| {
                        counter(&[("service", service), ("name", name)], *n as f64)
                    })
                    .collect(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(err) = TextEncoder::new().encode(&self.families(), &mut out) {
            // Only empty families or names fail, and neither is built above.
            tracing::error!(error = %err, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::stats::Counters;

    fn sample() -> Scrape {
        let mut counters = Counters {
            requests: [0, 7, 0, 2, 1, 0],
            ..Counters::default()
        };
        counters.duration[0] = 6;
        counters.duration[5] = 3;
        counters.duration[DURATION_BUCKETS.len()] = 1;
        counters.duration_sum_micros = 61_500_000;
        counters.upstream_errors[0] = 1;
        counters.bytes_sent = 1234;
        let mut reload_duration = Observations::new(names::RELOAD_BUCKETS.len());
        reload_duration.observe(&names::RELOAD_BUCKETS, 0.02);
        reload_duration.observe(&names::RELOAD_BUCKETS, 120.0);
        Scrape {
            services: [(
                "we \"quote\"".to_owned(),
                ServiceTotals {
                    counters,
                    connections: 3,
                },
            )]
            .into(),
            upstream_health: vec![(
                "we \"quote\"".to_owned(),
                "[::1]:80".parse().unwrap(),
                false,
            )],
            generation: 4,
            workers: [0, 2, 2],
            reloads: [3, 1, 0],
            reload_duration,
            last_reload_success: 1.8e9,
            worker_restarts: 1,
            connections_cut: [2, 0, 0],
            workers_killed: [1, 0, 0],
            handed_over: [312, 5],
            worker_memory: vec![(4, 0, 12 << 20)],
            master_start: 1.7e9,
            discovered: vec![("we \"quote\"".to_owned(), "api.internal:80".to_owned(), 3)],
            discovery_errors: [(("we \"quote\"".to_owned(), "api.internal:80".to_owned()), 2)]
                .into(),
        }
    }

    #[test]
    fn every_family_is_exported_with_help_and_type() {
        let text = sample().encode();
        for family in names::ALL {
            assert!(
                text.contains(&format!("# HELP {} ", family.name)),
                "{} missing:\n{text}",
                family.name
            );
            assert!(text.contains(&format!(
                "# TYPE {} {}\n",
                family.name,
                family.kind.as_str()
            )));
        }
    }

    #[test]
    fn samples_are_as_prometheus_expects() {
        let text = sample().encode();
        let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        has(r#"river_requests_total{service="we \"quote\"",code_class="2xx"} 7"#);
        has(r#"river_requests_total{service="we \"quote\"",code_class="other"} 0"#);
        has(r#"river_request_duration_seconds_bucket{service="we \"quote\"",le="0.0005"} 6"#);
        has(r#"river_request_duration_seconds_bucket{service="we \"quote\"",le="0.025"} 9"#);
        has(r#"river_request_duration_seconds_bucket{service="we \"quote\"",le="60"} 9"#);
        has(r#"river_request_duration_seconds_bucket{service="we \"quote\"",le="+Inf"} 10"#);
        has(r#"river_request_duration_seconds_count{service="we \"quote\""} 10"#);
        has(r#"river_request_duration_seconds_sum{service="we \"quote\""} 61.5"#);
        has(r#"river_upstream_errors_total{service="we \"quote\"",kind="invalid_response"} 0"#);
        has(r#"river_connections_active{service="we \"quote\""} 3"#);
        has(r#"river_upstream_healthy{service="we \"quote\"",upstream="[::1]:80"} 0"#);
        has("river_generation 4");
        has(r#"river_workers{state="draining"} 2"#);
        has(r#"river_reloads_total{outcome="rolled_back"} 0"#);
        has("river_reload_duration_seconds_count 2");
        has(r#"river_reload_duration_seconds_bucket{le="0.025"} 1"#);
        has(r#"river_draining_connections_cut_total{reason="deadline"} 2"#);
        has(r#"river_draining_workers_killed_total{reason="memory"} 0"#);
        has(r#"river_connections_handed_over_total{kind="idle"} 312"#);
        has(r#"river_connections_handed_over_total{kind="tunnel"} 5"#);
        has(r#"river_worker_resident_memory_bytes{generation="4",worker="0"} 12582912"#);
        has(&format!(
            r#"river_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        ));
        has("river_last_reload_success_timestamp_seconds 1800000000");
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4");
    }

    #[test]
    fn families_without_series_are_left_out() {
        let text = Scrape::default().encode();
        assert!(!text.contains("river_requests_total"));
        assert!(!text.contains("river_worker_resident_memory_bytes"));
        assert!(text.contains("river_generation 0"));
    }
}

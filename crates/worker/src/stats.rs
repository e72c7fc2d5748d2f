//! What this worker counts for the master's metrics endpoint: per service,
//! requests by status class with their duration and body bytes, upstream
//! errors, refusals (CIDR blocks, rate limits), open connections and upstream
//! health.
//!
//! Counters live in this worker's slots of its generation's stats board, a
//! memfd the master sent with `Hello` (layout in `river_ipc::stats`). Every
//! call here is a relaxed atomic operation on that memory: no lock, no
//! syscall, no message on the request path. The master reads the board when
//! scraped and folds a slot into its totals once the worker has exited.
//!
//! This module does not decide when a request is done or which error is whose:
//! its callers do, in both request paths (`h1_proxy` and `app`), the
//! admission check, the accept loop and the health check.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::{Error, ErrorSource, ErrorType};
use river_config::{Config, Service};
use river_ipc::stats::{upstream_addresses, Slot, StatsBoard, StatsLayout};

pub use river_ipc::stats::UpstreamErrorKind;

/// This worker's view of its generation's stats board.
pub struct Stats {
    board: Arc<StatsBoard>,
    worker: usize,
}

impl Stats {
    /// Map the board the master sent (`fd`), as worker `worker` of a
    /// generation running `config`. Without a usable board the worker still
    /// counts, on a private board nobody reads: one code path either way.
    pub fn map(fd: Option<OwnedFd>, config: &Config, worker: usize) -> std::io::Result<Stats> {
        let layout = StatsLayout::of(config);
        let shared = fd.map(|fd| StatsBoard::map(&fd, layout));
        let board = match shared {
            Some(Ok(board)) => board,
            Some(Err(err)) => {
                tracing::warn!("counting without the stats board: {err}");
                private(layout)?
            }
            None => private(layout)?,
        };
        Ok(Stats { board, worker })
    }

    /// The counters of service number `index` (its position in the config).
    pub fn service(&self, index: usize, service: &Service) -> ServiceStats {
        let slot = self.board.slot(self.worker, index).or_else(|| {
            tracing::warn!(service = %service.name, "no stats slot: counting privately");
            let layout = StatsLayout {
                workers: 1,
                services: 1,
                health_words: self.board.layout().health_words,
            };
            private(layout).ok()?.slot(0, 0)
        });
        ServiceStats {
            slot: slot.map(Arc::new),
            upstreams: upstream_addresses(service).into(),
        }
    }
}

fn private(layout: StatsLayout) -> std::io::Result<Arc<StatsBoard>> {
    StatsBoard::private(layout).map_err(std::io::Error::other)
}

/// One service's counters in this worker. Cheap to clone.
#[derive(Clone)]
pub struct ServiceStats {
    /// None only if not even a private board could be mapped.
    slot: Option<Arc<Slot>>,
    /// Health-bit order of the upstreams.
    upstreams: Arc<[SocketAddr]>,
}

impl ServiceStats {
    /// Counters that go nowhere, for tests of the code that counts.
    #[cfg(test)]
    pub fn detached() -> ServiceStats {
        let layout = StatsLayout {
            workers: 1,
            services: 1,
            health_words: 0,
        };
        ServiceStats {
            slot: private(layout)
                .ok()
                .and_then(|b| b.slot(0, 0))
                .map(Arc::new),
            upstreams: Arc::from([]),
        }
    }

    /// A request is over: answered with `status` (0: no response was sent)
    /// after `duration`, with `received` request and `sent` response body bytes.
    pub fn request_done(&self, status: u16, duration: Duration, received: u64, sent: u64) {
        if let Some(slot) = &self.slot {
            let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            slot.request_done(status, micros, received, sent);
        }
    }

    /// An attempt at an upstream failed (each failed connect counts, also
    /// when another upstream then answers).
    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        if let Some(slot) = &self.slot {
            slot.upstream_error(kind);
        }
    }

    /// A request refused with 429 by `rate-limiting`.
    pub fn rate_limited(&self) {
        if let Some(slot) = &self.slot {
            slot.rate_limited();
        }
    }

    /// A request refused with 403 by a `block-cidr-range` filter.
    pub fn blocked(&self) {
        if let Some(slot) = &self.slot {
            slot.blocked();
        }
    }

    /// A connection was accepted on one of the service's listeners; it
    /// counts as open until the guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        if let Some(slot) = &self.slot {
            slot.connection_opened();
        }
        OpenConnection(self.slot.clone())
    }

    /// The health check found `upstream` healthy or not.
    pub fn upstream_health(&self, upstream: SocketAddr, healthy: bool) {
        let Some(slot) = &self.slot else { return };
        if let Some(index) = self.upstreams.iter().position(|a| *a == upstream) {
            slot.upstream_health(index, healthy);
        }
    }
}

/// An open connection, counted until dropped.
pub struct OpenConnection(Option<Arc<Slot>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.connection_closed();
        }
    }
}

/// What went wrong when connecting to an upstream (pingora's `fail_to_connect`).
pub fn connect_error_kind(error: &Error) -> UpstreamErrorKind {
    match error.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => UpstreamErrorKind::Timeout,
        _ => UpstreamErrorKind::Connect,
    }
}

/// The upstream error behind a request's final pingora error, if it is one
/// that happened after connecting (connect failures were counted per attempt).
pub fn exchange_error_kind(error: &Error) -> Option<UpstreamErrorKind> {
    if error.esource() != &ErrorSource::Upstream {
        return None;
    }
    match error.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(UpstreamErrorKind::Timeout),
        ErrorType::InvalidHTTPHeader
        | ErrorType::H1Error
        | ErrorType::H2Error
        | ErrorType::InvalidH2
        | ErrorType::H2Downgrade => Some(UpstreamErrorKind::InvalidResponse),
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
            Some(UpstreamErrorKind::Reset)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(workers: usize) -> Config {
        river_config::parse(
            &format!("system {{ workers {workers}; }}\nservices {{\n    A {{\n        listeners {{ \"127.0.0.1:1\" }}\n        connectors {{ \"127.0.0.1:2\"; \"127.0.0.1:3\" }}\n    }}\n    B {{\n        listeners {{ \"127.0.0.1:4\" }}\n        welcome-page\n    }}\n}}\n"),
            "test.kdl",
        )
        .unwrap()
    }

    #[test]
    fn a_worker_counts_into_its_own_slots_of_the_shared_board() {
        let config = config(2);
        let (master, fd) = StatsBoard::create(StatsLayout::of(&config)).unwrap();
        let stats = Stats::map(Some(fd), &config, 1).unwrap();
        let a = stats.service(0, &config.services[0]);
        a.request_done(200, Duration::from_millis(3), 5, 10);
        a.upstream_error(UpstreamErrorKind::Connect);
        a.blocked();
        a.rate_limited();
        a.upstream_health("127.0.0.1:3".parse().unwrap(), false);
        a.upstream_health("127.0.0.1:9".parse().unwrap(), false); // not ours: ignored
        let open = a.connection_opened();

        let seen = master.slot(1, 0).unwrap().read();
        assert_eq!(seen.counters.requests[1], 1);
        assert_eq!(seen.counters.duration_sum_micros, 3000);
        assert_eq!(
            (seen.counters.bytes_received, seen.counters.bytes_sent),
            (5, 10)
        );
        assert_eq!(seen.counters.upstream_errors[0], 1);
        assert_eq!((seen.counters.blocked, seen.counters.rate_limited), (1, 1));
        assert_eq!(seen.connections, 1);
        assert!(!seen.upstream_down(0) && seen.upstream_down(1));
        drop(open);
        assert_eq!(master.slot(1, 0).unwrap().read().connections, 0);
        // Worker 0's slots and service B's are untouched.
        assert_eq!(
            master.slot(0, 0).unwrap().read().counters.requests_total(),
            0
        );
        assert_eq!(
            master.slot(1, 1).unwrap().read().counters.requests_total(),
            0
        );
    }

    #[test]
    fn without_a_board_a_worker_still_counts() {
        let one = config(1);
        let stats = Stats::map(None, &one, 0).unwrap();
        stats
            .service(1, &one.services[1])
            .request_done(404, Duration::ZERO, 0, 0);
        // A board too small for the layout is refused, not overrun.
        let (_, small) = StatsBoard::create(StatsLayout {
            workers: 1,
            services: 1,
            health_words: 0,
        })
        .unwrap();
        let four = config(4);
        let stats = Stats::map(Some(small), &four, 3).unwrap();
        stats
            .service(1, &four.services[1])
            .request_done(200, Duration::ZERO, 0, 0);
        ServiceStats::detached().request_done(200, Duration::ZERO, 0, 0);
    }

    #[test]
    fn pingora_errors_are_classified() {
        let connect = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(connect_error_kind(&connect), UpstreamErrorKind::Timeout);
        let refused = Error::new(ErrorType::ConnectRefused);
        assert_eq!(connect_error_kind(&refused), UpstreamErrorKind::Connect);
        let upstream = Error::new_up;
        assert_eq!(
            exchange_error_kind(&upstream(ErrorType::ReadTimedout)),
            Some(UpstreamErrorKind::Timeout)
        );
        assert_eq!(
            exchange_error_kind(&upstream(ErrorType::InvalidHTTPHeader)),
            Some(UpstreamErrorKind::InvalidResponse)
        );
        assert_eq!(
            exchange_error_kind(&upstream(ErrorType::ConnectionClosed)),
            Some(UpstreamErrorKind::Reset)
        );
        assert_eq!(
            exchange_error_kind(&upstream(ErrorType::ConnectRefused)),
            None
        );
        let downstream = Error::new_down(ErrorType::ReadError);
        assert_eq!(exchange_error_kind(&downstream), None);
    }
}

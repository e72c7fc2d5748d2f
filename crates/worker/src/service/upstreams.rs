//! A proxy service's upstreams: selection (pingora-load-balancing), active
//! health checks, and the `HttpPeer` each upstream is reached through
//! (`tls-sni`, `proto`). The set can change while serving ([`Upstreams::update`],
//! service discovery); what decides a new set lives in `discovery.rs`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::stats::ServiceStats;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HealthCheck as PingoraHealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, FNVHash, Random, RoundRobin,
};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use river_config::{
    DiscoveredName, HealthCheck, LoadBalance, Selection, SelectionKey, Upstream, UpstreamProto,
};

/// A health check probe's own limit: a hung upstream is an unhealthy one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("building the upstream selector: {0}")]
    Selector(String),
}

/// The selection algorithms behind one type.
enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Fnv(LoadBalancer<FNVHash>),
    Ketama(LoadBalancer<Consistent>),
}

macro_rules! each_balancer {
    ($balancer:expr, $lb:ident => $body:expr) => {
        match $balancer {
            Balancer::RoundRobin($lb) => $body,
            Balancer::Random($lb) => $body,
            Balancer::Fnv($lb) => $body,
            Balancer::Ketama($lb) => $body,
        }
    };
}

/// The upstreams by address, as the selector sees them; replaced whole on
/// [`Upstreams::update`], shared with the health check probe.
type ByAddress = Arc<ArcSwap<HashMap<SocketAddr, Arc<Upstream>>>>;

pub struct Upstreams {
    balancer: Balancer,
    key: Option<SelectionKey>,
    by_address: ByAddress,
    /// The selector's backend set, read by pingora's `update`.
    pushed: Arc<Pushed>,
    /// Serializes updates (pingora's `Backends::update` must not overlap).
    updating: Mutex<()>,
    health: HealthCheck,
    plain_h1: bool,
}

impl Upstreams {
    #[cfg(test)]
    pub fn build(upstreams: &[Upstream], config: &LoadBalance) -> Result<Self, UpstreamError> {
        Self::build_with_names(upstreams, &[], config, ServiceStats::detached())
    }

    /// As [`Upstreams::build`], for a service whose upstreams also come from
    /// `names` (service discovery): they join through [`Upstreams::update`].
    /// `stats` hears about health changes (metrics: river_upstream_healthy).
    pub fn build_with_names(
        upstreams: &[Upstream],
        names: &[DiscoveredName],
        config: &LoadBalance,
        stats: ServiceStats,
    ) -> Result<Self, UpstreamError> {
        let plain_h1 = upstreams
            .iter()
            .map(|u| (&u.tls_sni, u.proto))
            .chain(names.iter().map(|n| (&n.tls_sni, n.proto)))
            .all(|(sni, proto)| sni.is_none() && proto == UpstreamProto::H1Only);
        let weighted: Vec<(Upstream, u16)> = upstreams.iter().map(|u| (u.clone(), 1)).collect();
        let (by_address, backends) = tables(&weighted);
        let by_address: ByAddress = Arc::new(ArcSwap::from_pointee(by_address));
        let pushed = Arc::new(Pushed(ArcSwap::from_pointee(backends)));
        let (balancer, key) = match config.selection {
            Selection::RoundRobin => (
                Balancer::RoundRobin(balancer(
                    &pushed,
                    &by_address,
                    &config.health_check,
                    &stats,
                )?),
                None,
            ),
            Selection::Random => (
                Balancer::Random(balancer(
                    &pushed,
                    &by_address,
                    &config.health_check,
                    &stats,
                )?),
                None,
            ),
            Selection::Fnv { key } => (
                Balancer::Fnv(balancer(
                    &pushed,
                    &by_address,
                    &config.health_check,
                    &stats,
                )?),
                Some(key),
            ),
            Selection::Ketama { key } => (
                Balancer::Ketama(balancer(
                    &pushed,
                    &by_address,
                    &config.health_check,
                    &stats,
                )?),
                Some(key),
            ),
        };
        Ok(Upstreams {
            balancer,
            key,
            by_address,
            pushed,
            updating: Mutex::new(()),
            health: config.health_check.clone(),
            plain_h1,
        })
    }

    /// Replace the upstream set in place, with a weight each (service
    /// discovery). Requests already past selection keep their upstream;
    /// backends that stay keep their health state (pingora keys it by
    /// address and weight). Returns the addresses no longer in the set.
    pub fn update(&self, upstreams: &[(Upstream, u16)]) -> Result<Vec<SocketAddr>, UpstreamError> {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let (by_address, backends) = tables(upstreams);
        let removed = self
            .by_address
            .load()
            .keys()
            .filter(|a| !by_address.contains_key(a))
            .copied()
            .collect();
        // The probe and `select` must know every address the selector can
        // yield: the map grows before the selector changes, and shrinks after.
        let mut union = HashMap::clone(&self.by_address.load());
        union.extend(by_address.iter().map(|(a, u)| (*a, u.clone())));
        self.by_address.store(Arc::new(union));
        self.pushed.0.store(Arc::new(backends));
        each_balancer!(&self.balancer, lb => futures_now(lb.update()))
            .map_err(|e| UpstreamError::Selector(e.to_string()))?;
        self.by_address.store(Arc::new(by_address));
        Ok(removed)
    }

    /// Whether `address` is one of the current upstreams.
    pub fn contains(&self, address: SocketAddr) -> bool {
        self.by_address.load().contains_key(&address)
    }

    pub fn len(&self) -> usize {
        self.by_address.load().len()
    }

    /// No upstream at all (a discovered service before its first answer).
    pub fn is_empty(&self) -> bool {
        self.by_address.load().is_empty()
    }

    /// Whether every upstream is reached over plain TCP with HTTP/1.1.
    /// Discovered names count with their `tls-sni` and `proto`.
    pub fn all_plain_h1(&self) -> bool {
        self.plain_h1
    }

    /// The selection key of a request: its URI path, or client address and path.
    pub fn key(&self, client: Option<IpAddr>, path: &str) -> Vec<u8> {
        match self.key {
            None => Vec::new(),
            Some(SelectionKey::UriPath) => path.as_bytes().to_vec(),
            Some(SelectionKey::SourceAddrAndUriPath) => {
                let client = client
                    .map(|ip| ip.to_canonical().to_string())
                    .unwrap_or_default();
                format!("{client}{path}").into_bytes()
            }
        }
    }

    /// Pick an upstream for `key`, skipping those in `tried` (failed connects of
    /// this request). Healthy ones first; when the health checks have marked
    /// every remaining one down, try one anyway: the check may be stale, and a
    /// failed attempt still ends in a 502.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<Arc<Upstream>> {
        let by_address = self.by_address.load();
        // Enough steps to visit every backend through the selector's fallback order.
        let steps = 64 + 4 * by_address.len();
        let untried = |b: &Backend| match &b.addr {
            PingoraAddr::Inet(addr) => !tried.contains(addr),
            _ => false,
        };
        let chosen = each_balancer!(&self.balancer, lb => {
            lb.select_with(key, steps, |b, healthy| healthy && untried(b))
                .or_else(|| lb.select_with(key, steps, |b, _| untried(b)))
        })?;
        match chosen.addr {
            PingoraAddr::Inet(addr) => by_address.get(&addr).cloned(),
            _ => None,
        }
    }

    /// One health check pass now (tests).
    #[cfg(test)]
    pub(crate) async fn run_health_checks_once(&self) {
        each_balancer!(&self.balancer, lb => lb.backends().run_health_check(false).await);
    }

    /// Run the health checks every `interval-ms` for as long as `self` lives.
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let interval = match &self.health {
            HealthCheck::None => return,
            HealthCheck::Tcp { interval_ms } | HealthCheck::Http { interval_ms, .. } => {
                Duration::from_millis((*interval_ms).max(1))
            }
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(upstreams) = weak.upgrade() else {
                    return;
                };
                each_balancer!(&upstreams.balancer, lb => lb.backends().run_health_check(true).await);
            }
        });
    }
}

/// The address table and the selector's backends for `upstreams`; the first
/// entry for an address wins (backends are keyed by address).
fn tables(
    upstreams: &[(Upstream, u16)],
) -> (HashMap<SocketAddr, Arc<Upstream>>, BTreeSet<Backend>) {
    let mut by_address = HashMap::new();
    let mut backends = BTreeSet::new();
    for (upstream, weight) in upstreams {
        if by_address.contains_key(&upstream.address) {
            continue;
        }
        by_address.insert(upstream.address, Arc::new(upstream.clone()));
        backends.insert(Backend {
            addr: PingoraAddr::Inet(upstream.address),
            weight: usize::from((*weight).max(1)),
            ext: Default::default(),
        });
    }
    (by_address, backends)
}

/// The selector's discovery: whatever set was last pushed. pingora's `Static`
/// cannot be changed from outside its crate.
struct Pushed(ArcSwap<BTreeSet<Backend>>);

/// pingora owns its discovery boxed; this shares ours.
struct SharedPushed(Arc<Pushed>);

#[async_trait]
impl ServiceDiscovery for SharedPushed {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0 .0.load()), HashMap::new()))
    }
}

fn balancer<S>(
    pushed: &Arc<Pushed>,
    upstreams: &ByAddress,
    health: &HealthCheck,
    stats: &ServiceStats,
) -> Result<LoadBalancer<S>, UpstreamError>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let mut backends = Backends::new(Box::new(SharedPushed(pushed.clone())));
    if !matches!(health, HealthCheck::None) {
        backends.set_health_check(Box::new(Probe::new(
            health.clone(),
            upstreams.clone(),
            stats.clone(),
        )));
    }
    let lb = LoadBalancer::from_backends(backends);
    // Pushed discovery completes without waiting.
    futures_now(lb.update()).map_err(|e| UpstreamError::Selector(e.to_string()))?;
    Ok(lb)
}

/// Poll a future that is known not to wait (pushed discovery) to completion.
fn futures_now<F: std::future::Future<Output = Result<()>>>(future: F) -> Result<()> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(Error::explain(
            ErrorType::InternalError,
            "pushed discovery did not complete at once",
        )),
    }
}

/// How the proxy reaches `upstream` (its timeouts are the caller's).
pub fn peer(upstream: &Upstream) -> HttpPeer {
    let sni = upstream.tls_sni.clone().unwrap_or_default();
    let mut peer = HttpPeer::new(upstream.address, upstream.tls_sni.is_some(), sni);
    match upstream.proto {
        UpstreamProto::H1Only => peer.options.set_http_version(1, 1),
        UpstreamProto::H2Only => peer.options.set_http_version(2, 2),
        UpstreamProto::H2OrH1 => peer.options.set_http_version(2, 1),
    }
    // pingora keeps an idle pooled connection until the upstream closes it;
    // nginx's `keepalive_timeout` (60 s) bounds it, and so closes those to
    // backends service discovery removed (the fast path's pool forgets them
    // at once).
    peer.options.idle_timeout = Some(POOLED_IDLE);
    peer
}

/// How long pingora's pool keeps an idle upstream connection.
pub const POOLED_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The active health check: a TCP connect, or `GET path` expecting 2xx over
/// the same TLS/ALPN settings the proxy uses for that upstream.
struct Probe {
    kind: HealthCheck,
    upstreams: ByAddress,
    http: HttpConnector,
    stats: ServiceStats,
}

impl Probe {
    fn new(kind: HealthCheck, upstreams: ByAddress, stats: ServiceStats) -> Self {
        Probe {
            kind,
            upstreams,
            http: HttpConnector::new(None),
            stats,
        }
    }

    async fn http_get(&self, upstream: &Upstream, path: &str) -> Result<()> {
        let mut peer = peer(upstream);
        peer.options.connection_timeout = Some(PROBE_TIMEOUT);
        peer.options.total_connection_timeout = Some(PROBE_TIMEOUT);
        peer.options.read_timeout = Some(PROBE_TIMEOUT);
        peer.options.write_timeout = Some(PROBE_TIMEOUT);
        let (mut session, _reused) = self.http.get_http_session(&peer).await?;
        let mut request = RequestHeader::build("GET", path.as_bytes(), None)?;
        let host = upstream
            .tls_sni
            .clone()
            .unwrap_or_else(|| upstream.address.to_string());
        request.insert_header("host", host)?;
        request.insert_header("user-agent", "river-health-check")?;
        session.set_write_timeout(Some(PROBE_TIMEOUT));
        session.set_read_timeout(Some(PROBE_TIMEOUT));
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session
            .response_header()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        // Probes do not reuse connections: closing is simplest and cheap at this rate.
        session.shutdown().await;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("health check status", status),
                format!("GET {path} answered {status}"),
            )
        }
    }
}

#[async_trait]
impl PingoraHealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let PingoraAddr::Inet(addr) = target.addr else {
            return Error::e_explain(ErrorType::InternalError, "not an inet upstream");
        };
        let Some(upstream) = self.upstreams.load().get(&addr).cloned() else {
            return Error::e_explain(ErrorType::InternalError, "unknown upstream");
        };
        match &self.kind {
            HealthCheck::None => Ok(()),
            HealthCheck::Tcp { .. } => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Error::e_explain(ErrorType::ConnectError, e.to_string()),
                    Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "health check connect"),
                }
            }
            HealthCheck::Http { path, .. } => {
                match tokio::time::timeout(PROBE_TIMEOUT * 2, self.http_get(&upstream, path)).await
                {
                    Ok(result) => result,
                    Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
                }
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let PingoraAddr::Inet(addr) = target.addr {
            self.stats.upstream_health(addr, healthy); // metrics: river_upstream_healthy
        }
        if healthy {
            tracing::info!(upstream = %target.addr, "upstream is healthy again");
        } else {
            tracing::warn!(upstream = %target.addr, "upstream failed its health check");
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        // One failed probe takes an upstream out, one good probe brings it back:
        // "out of rotation within two intervals".
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(port: u16) -> Upstream {
        Upstream {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_sni: None,
            proto: UpstreamProto::H1Only,
        }
    }

    fn build(selection: Selection) -> Upstreams {
        Upstreams::build(
            &[upstream(1), upstream(2), upstream(3)],
            &LoadBalance {
                selection,
                health_check: HealthCheck::None,
            },
        )
        .unwrap()
    }

    /// pingora's pool would otherwise keep connections to a backend that
    /// discovery removed until the backend closes them.
    #[test]
    fn pooled_upstream_connections_idle_out() {
        let peer = peer(&upstream(1));
        assert_eq!(peer.options.idle_timeout, Some(POOLED_IDLE));
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let ups = build(Selection::RoundRobin);
        let mut counts = HashMap::new();
        for _ in 0..99 {
            let chosen = ups.select(b"", &[]).unwrap().address;
            *counts.entry(chosen).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c == 33), "{counts:?}");
    }

    #[test]
    fn hashing_is_stable_per_key_and_skips_tried() {
        for selection in [
            Selection::Ketama {
                key: SelectionKey::UriPath,
            },
            Selection::Fnv {
                key: SelectionKey::UriPath,
            },
        ] {
            let ups = build(selection);
            let key = ups.key(None, "/some/path");
            let first = ups.select(&key, &[]).unwrap().address;
            for _ in 0..10 {
                assert_eq!(ups.select(&key, &[]).unwrap().address, first);
            }
            let second = ups.select(&key, &[first]).unwrap().address;
            assert_ne!(second, first);
            let third = ups.select(&key, &[first, second]).unwrap().address;
            assert!(third != first && third != second);
            assert!(ups.select(&key, &[first, second, third]).is_none());
        }
    }

    #[test]
    fn keys() {
        let ups = build(Selection::Ketama {
            key: SelectionKey::SourceAddrAndUriPath,
        });
        assert_eq!(
            ups.key(Some("10.0.0.1".parse().unwrap()), "/a"),
            b"10.0.0.1/a"
        );
        let rr = build(Selection::RoundRobin);
        assert!(rr.key(Some("10.0.0.1".parse().unwrap()), "/a").is_empty());
    }

    #[test]
    fn peers_follow_tls_and_proto() {
        let mut up = upstream(443);
        up.tls_sni = Some("example.com".into());
        up.proto = UpstreamProto::H2OrH1;
        let p = peer(&up);
        assert_eq!(p.sni, "example.com");
        assert!(p.is_tls());
        assert_eq!(p.options.alpn, pingora_core::protocols::ALPN::H2H1);
        let p = peer(&upstream(80));
        assert!(!p.is_tls());
        assert_eq!(p.options.alpn, pingora_core::protocols::ALPN::H1);
    }

    #[tokio::test]
    async fn tcp_health_check_marks_a_closed_port_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let ups = Upstreams::build(
            &[
                Upstream {
                    address: live,
                    tls_sni: None,
                    proto: UpstreamProto::H1Only,
                },
                Upstream {
                    address: dead,
                    tls_sni: None,
                    proto: UpstreamProto::H1Only,
                },
            ],
            &LoadBalance {
                selection: Selection::RoundRobin,
                health_check: HealthCheck::Tcp { interval_ms: 10 },
            },
        )
        .unwrap();
        each_balancer!(&ups.balancer, lb => lb.backends().run_health_check(false).await);
        for _ in 0..10 {
            assert_eq!(ups.select(b"", &[]).unwrap().address, live);
        }
        // With the only healthy one excluded, the unhealthy one is still tried.
        assert_eq!(ups.select(b"", &[live]).unwrap().address, dead);
    }
}

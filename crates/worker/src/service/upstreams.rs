//! A proxy service's upstreams: selection (pingora-load-balancing), active
//! health checks, and the `HttpPeer` each upstream is reached through
//! (`tls-sni`, `proto`). Both request paths select through it; connecting
//! is theirs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::http::Connector as HttpConnector;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_load_balancing::health_check::HealthCheck as PingoraHealthCheck;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, FNVHash, Random, RoundRobin,
};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};
use river_config::{HealthCheck, LoadBalance, Selection, SelectionKey, Upstream, UpstreamProto};

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

pub struct Upstreams {
    balancer: Balancer,
    key: Option<SelectionKey>,
    by_address: Arc<HashMap<SocketAddr, Upstream>>,
    health: HealthCheck,
}

impl Upstreams {
    pub fn build(upstreams: &[Upstream], config: &LoadBalance) -> Result<Self, UpstreamError> {
        let mut by_address = HashMap::new();
        for upstream in upstreams {
            // The first entry for an address wins; backends are keyed by address.
            by_address
                .entry(upstream.address)
                .or_insert_with(|| upstream.clone());
        }
        let by_address = Arc::new(by_address);
        let (balancer, key) = match config.selection {
            Selection::RoundRobin => (
                Balancer::RoundRobin(balancer(&by_address, &config.health_check)?),
                None,
            ),
            Selection::Random => (
                Balancer::Random(balancer(&by_address, &config.health_check)?),
                None,
            ),
            Selection::Fnv { key } => (
                Balancer::Fnv(balancer(&by_address, &config.health_check)?),
                Some(key),
            ),
            Selection::Ketama { key } => (
                Balancer::Ketama(balancer(&by_address, &config.health_check)?),
                Some(key),
            ),
        };
        Ok(Upstreams {
            balancer,
            key,
            by_address,
            health: config.health_check.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    /// Whether every upstream is reached over plain TCP with HTTP/1.1.
    pub fn all_plain_h1(&self) -> bool {
        self.by_address
            .values()
            .all(|u| u.tls_sni.is_none() && u.proto == UpstreamProto::H1Only)
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
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<&Upstream> {
        // Enough steps to visit every backend through the selector's fallback order.
        let steps = 64 + 4 * self.by_address.len();
        let untried = |b: &Backend| match &b.addr {
            PingoraAddr::Inet(addr) => !tried.contains(addr),
            _ => false,
        };
        let chosen = each_balancer!(&self.balancer, lb => {
            lb.select_with(key, steps, |b, healthy| healthy && untried(b))
                .or_else(|| lb.select_with(key, steps, |b, _| untried(b)))
        })?;
        match chosen.addr {
            PingoraAddr::Inet(addr) => self.by_address.get(&addr),
            _ => None,
        }
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

fn balancer<S>(
    upstreams: &Arc<HashMap<SocketAddr, Upstream>>,
    health: &HealthCheck,
) -> Result<LoadBalancer<S>, UpstreamError>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let backends = upstreams
        .keys()
        .map(|addr| Backend {
            addr: PingoraAddr::Inet(*addr),
            weight: 1,
            ext: Default::default(),
        })
        .collect();
    let mut backends = Backends::new(discovery::Static::new(backends));
    if !matches!(health, HealthCheck::None) {
        backends.set_health_check(Box::new(Probe::new(health.clone(), upstreams.clone())));
    }
    let lb = LoadBalancer::from_backends(backends);
    // Static discovery completes without waiting.
    futures_now(lb.update()).map_err(|e| UpstreamError::Selector(e.to_string()))?;
    Ok(lb)
}

/// Poll a future that is known not to wait (static discovery) to completion.
fn futures_now<F: std::future::Future<Output = Result<()>>>(future: F) -> Result<()> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(Error::explain(
            ErrorType::InternalError,
            "static discovery did not complete at once",
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
    peer
}

/// The active health check: a TCP connect, or `GET path` expecting 2xx over
/// the same TLS/ALPN settings the proxy uses for that upstream.
struct Probe {
    kind: HealthCheck,
    upstreams: Arc<HashMap<SocketAddr, Upstream>>,
    http: HttpConnector,
}

impl Probe {
    fn new(kind: HealthCheck, upstreams: Arc<HashMap<SocketAddr, Upstream>>) -> Self {
        Probe {
            kind,
            upstreams,
            http: HttpConnector::new(None),
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
        let Some(upstream) = self.upstreams.get(&addr) else {
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
                match tokio::time::timeout(PROBE_TIMEOUT * 2, self.http_get(upstream, path)).await {
                    Ok(result) => result,
                    Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
                }
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
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

//! The pingora application behind every River service. Proxy services forward
//! upstream; the others answer in `request_filter`, so keep-alive, draining and
//! logging behave the same for all of them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use river_config::{ProxyService, RequestFilter, Service, ServiceKind};

use crate::access_log::{AccessLog, Entry};
use crate::cidr::CidrBlocklist;
use crate::file_server::FileServer;
use crate::filters::{apply_all, compile_all, CompiledHeaderFilter, FilterError, HeaderPlan};
use crate::h1_proxy::Forwarder;
use crate::rate_limit::{RateLimitError, RateLimiter};
use crate::respond::{respond, respond_status, status_body};
use crate::stats::{connect_error_kind, exchange_error_kind, ServiceStats};
use crate::upstreams::{peer, UpstreamError, Upstreams};

/// One configured service, built once per generation.
pub struct RiverApp {
    name: String,
    logic: Logic,
    access_log: Option<AccessLog>,
    stats: ServiceStats,
}

enum Logic {
    Proxy(Arc<Proxy>),
    Files(FileServer),
    Static(Bytes),
}

pub(crate) struct Proxy {
    pub(crate) upstreams: Arc<Upstreams>,
    blocked: CidrBlocklist,
    rate_limiter: RateLimiter,
    upstream_request: Vec<CompiledHeaderFilter>,
    upstream_response: Vec<CompiledHeaderFilter>,
    /// This service's counters (metrics), also for the fast path.
    pub(crate) stats: ServiceStats,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service `{service}`: {source}")]
    Filter {
        service: String,
        source: FilterError,
    },
    #[error("service `{service}`: {source}")]
    RateLimit {
        service: String,
        source: RateLimitError,
    },
    #[error("service `{service}`: {source}")]
    Upstreams {
        service: String,
        source: UpstreamError,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("service `{service}`: file-server base-path {path}: {source}")]
    BasePath {
        service: String,
        path: String,
        source: std::io::Error,
    },
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    /// Upstreams this request failed to connect to, not to be picked again.
    tried: Vec<SocketAddr>,
    /// The upstream of the last attempt, for the access log.
    upstream: Option<SocketAddr>,
}

impl RiverApp {
    /// Build `service`; must run inside the worker's runtime (health checks
    /// are spawned on it).
    pub fn build(
        service: &Service,
        access_log: Option<AccessLog>,
        stats: ServiceStats,
    ) -> Result<Self, BuildError> {
        let logic = match &service.kind {
            ServiceKind::Proxy(proxy) => {
                Logic::Proxy(Arc::new(Proxy::build(&service.name, proxy, stats.clone())?))
            }
            ServiceKind::WelcomePage => Logic::Static(Bytes::from(crate::welcome::page())),
            ServiceKind::FileServer(files) => {
                Logic::Files(FileServer::new(&files.base_path).map_err(|source| {
                    BuildError::BasePath {
                        service: service.name.clone(),
                        path: files.base_path.display().to_string(),
                        source,
                    }
                })?)
            }
        };
        Ok(RiverApp {
            name: service.name.clone(),
            logic,
            access_log,
            stats,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A proxy service's upstreams, for service discovery to update.
    pub fn upstreams(&self) -> Option<Arc<Upstreams>> {
        match &self.logic {
            Logic::Proxy(proxy) => Some(proxy.upstreams.clone()),
            _ => None,
        }
    }

    /// The HTTP/1 fast path of this service, if it is a proxy whose upstreams
    /// all speak plain HTTP/1.1 (TLS and h2 upstreams stay with pingora).
    pub fn forwarder(&self) -> Option<Forwarder> {
        let Logic::Proxy(proxy) = &self.logic else {
            return None;
        };
        if !proxy.upstreams.all_plain_h1() {
            return None;
        }
        Some(Forwarder::new(
            proxy.clone(),
            self.access_log.clone(),
            HeaderPlan::new(&proxy.upstream_request),
            HeaderPlan::new(&proxy.upstream_response),
        ))
    }
}

impl Proxy {
    fn build(
        service: &str,
        config: &ProxyService,
        stats: ServiceStats,
    ) -> Result<Self, BuildError> {
        let filter_error = |source| BuildError::Filter {
            service: service.to_owned(),
            source,
        };
        let names = config.discovery.as_ref().map_or(&[][..], |d| &d.names[..]);
        let upstreams = Arc::new(
            Upstreams::build_with_names(
                &config.upstreams,
                names,
                &config.load_balance,
                stats.clone(),
            )
            .map_err(|source| BuildError::Upstreams {
                service: service.to_owned(),
                source,
            })?,
        );
        upstreams.spawn_health_checks();
        let blocked = CidrBlocklist::new(config.path_control.request_filters.iter().flat_map(
            |filter| match filter {
                RequestFilter::BlockCidrRange { addrs } => addrs.iter().copied(),
            },
        ));
        Ok(Proxy {
            upstreams,
            blocked,
            rate_limiter: RateLimiter::build(&config.rate_limiting).map_err(|source| {
                BuildError::RateLimit {
                    service: service.to_owned(),
                    source,
                }
            })?,
            upstream_request: compile_all(&config.path_control.upstream_request)
                .map_err(filter_error)?,
            upstream_response: compile_all(&config.path_control.upstream_response)
                .map_err(filter_error)?,
            stats,
        })
    }

    /// The request filters and rate limits: Some(status) refuses the request.
    pub(crate) fn admission(&self, client: Option<IpAddr>, path: &str) -> Option<u16> {
        // River answers 400 to blocked clients; 403 says what happened.
        if client.is_some_and(|ip| self.blocked.blocks(ip)) {
            self.stats.blocked(); // metrics: river_blocked_total
            return Some(403);
        }
        if !self.rate_limiter.is_empty() && !self.rate_limiter.admit(client, path) {
            self.stats.rate_limited(); // metrics: river_rate_limited_total
            return Some(429);
        }
        None
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    Some(session.as_downstream().client_addr()?.as_inet()?.ip())
}

#[async_trait]
impl ProxyHttp for RiverApp {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            started: Instant::now(),
            tried: Vec::new(),
            upstream: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, _ctx: &mut RequestCtx) -> Result<bool> {
        match &self.logic {
            Logic::Proxy(proxy) => {
                let client = client_ip(session);
                let refused = proxy.admission(client, session.req_header().uri.path());
                match refused {
                    Some(status) => {
                        respond_status(session, status).await?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            Logic::Files(files) => {
                files.serve(session).await?;
                Ok(true)
            }
            Logic::Static(body) => {
                respond(session, 200, "text/html; charset=utf-8", &[], body.clone()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Logic::Proxy(proxy) = &self.logic else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "service has no upstreams",
            ));
        };
        let key = proxy
            .upstreams
            .key(client_ip(session), session.req_header().uri.path());
        let Some(upstream) = proxy.upstreams.select(&key, &ctx.tried) else {
            // None at all: a discovered service before its first answer.
            if proxy.upstreams.is_empty() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no upstream discovered yet",
                ));
            }
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no upstream left to try",
            ));
        };
        ctx.upstream = Some(upstream.address);
        Ok(Box::new(peer(&upstream)))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // metrics: river_upstream_errors_total, every failed attempt
        self.stats.upstream_error(connect_error_kind(&e));
        // Nothing was sent yet, so any request may go to another upstream.
        if let (Logic::Proxy(proxy), Some(failed)) = (&self.logic, ctx.upstream) {
            ctx.tried.push(failed);
            if ctx.tried.len() < proxy.upstreams.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // As pingora's default, with a short body saying what happened.
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream => 502,
                pingora_core::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                pingora_core::ErrorSource::Internal | pingora_core::ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(err) = session
                .respond_error_with_body(code, status_body(code))
                .await
            {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An HTTP/1.0 request may come without Host; HTTP/1.1 upstreams
        // refuse that. Name the upstream, as nginx's default `$proxy_host`.
        if request.headers.get(http::header::HOST).is_none() {
            if let Some(upstream) = ctx.upstream {
                request.insert_header(http::header::HOST, upstream.to_string())?;
            }
        }
        if let Some(ip) = client_ip(session) {
            let forwarded = match request.headers.get("x-forwarded-for") {
                Some(prior) => format!("{}, {ip}", String::from_utf8_lossy(prior.as_bytes())),
                None => ip.to_string(),
            };
            request.insert_header("x-forwarded-for", forwarded)?;
        }
        let scheme = if session
            .as_downstream()
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some()
        {
            "https"
        } else {
            "http"
        };
        request.insert_header("x-forwarded-proto", scheme)?;
        if let Logic::Proxy(proxy) = &self.logic {
            apply_all(&proxy.upstream_request, request);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Logic::Proxy(proxy) = &self.logic {
            apply_all(&proxy.upstream_response, response);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let bytes_sent = session.as_downstream().body_bytes_sent();
        let duration = ctx.started.elapsed();
        // metrics: river_requests_total, river_request_duration_seconds,
        // river_bytes_*_total, river_upstream_errors_total (after connecting)
        if let Some(kind) = e.and_then(exchange_error_kind) {
            self.stats.upstream_error(kind);
        }
        self.stats.request_done(
            status,
            duration,
            session.as_downstream().body_bytes_read() as u64,
            bytes_sent as u64,
        );
        let Some(log) = &self.access_log else {
            return;
        };
        let request = session.req_header();
        let upstream = ctx.upstream.map(|a| a.to_string());
        log.log(&Entry {
            client: client_ip(session),
            method: request.method.as_str(),
            path: request.uri.path(),
            status,
            bytes_sent,
            upstream: upstream.as_deref(),
            duration,
        });
    }
}

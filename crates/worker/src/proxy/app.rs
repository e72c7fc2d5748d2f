//! The pingora application behind every River service (pingora-proxy's
//! phases only). Proxy services forward upstream; the others answer in
//! `request_filter`, so keep-alive, draining and logging behave the same for
//! all of them. What a service is lives in `service/`; the policies it calls
//! in `policy/`, the answers it writes in `content/`; the HTTP/1 rules it
//! applies to pingora's messages in `conform.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::Entry;
use crate::content::respond::{respond, respond_status, status_body};
use crate::policy::headers::apply_all;
use crate::proxy::conform;
use crate::service::upstreams::peer;
use crate::service::{Logic, Service};
use crate::stats::{connect_error_kind, exchange_error_kind};

/// The pingora application of one service.
pub struct RiverApp {
    service: Arc<Service>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    /// Upstreams this request failed to connect to, not to be picked again.
    tried: Vec<SocketAddr>,
    /// The upstream of the last attempt, for the access log.
    upstream: Option<SocketAddr>,
    /// Why the request did not end normally, when River decided it.
    error: Option<&'static str>,
    /// The request asks to upgrade: the connection becomes a tunnel.
    upgrade: bool,
}

impl RiverApp {
    pub fn new(service: Arc<Service>) -> Self {
        RiverApp { service }
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
            error: None,
            upgrade: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The HTTP/1 session checked every head it read; pingora re-reads
        // some (an escaped target), so the model runs on what it parsed.
        let refused = session
            .as_downstream()
            .as_http1()
            .and_then(|h1| conform::request(&h1.get_headers_raw_bytes()).err());
        if let Some(err) = refused {
            ctx.error = Some(err.code());
            session.as_downstream_mut().set_keepalive(None);
            respond_status(session, err.status()).await?;
            return Ok(true);
        }
        ctx.upgrade = conform::Asked::of(session.req_header()).upgrade.is_some();
        if !ctx.upgrade
            && session
                .req_header()
                .headers
                .contains_key(http::header::UPGRADE)
        {
            // Upgrade not named in Connection (or in HTTP/1.0) asks for
            // nothing (RFC 9110 §7.8): a hop-by-hop field pingora must not
            // take for an upgrade, nor forward.
            session
                .req_header_mut()
                .remove_header(&http::header::UPGRADE);
        }
        if ctx.upgrade {
            // Reads on an upgraded connection wait for tunnel-idle-secs, not
            // for a request body's client-body-secs.
            let idle = Duration::from_secs(self.service.timeouts.tunnel_idle_secs);
            session.as_downstream_mut().set_read_timeout(Some(idle));
        }
        match &self.service.logic {
            Logic::Proxy(proxy) => {
                let client = client_ip(session);
                let refused = proxy.admit(client, session.req_header().uri.path());
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
        let Logic::Proxy(proxy) = &self.service.logic else {
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
        let t = &self.service.timeouts;
        let mut peer = peer(&upstream);
        peer.options.connection_timeout = Some(Duration::from_secs(t.upstream_connect_secs));
        // Between two reads or writes; an upgraded connection is a tunnel,
        // idle for up to tunnel-idle-secs.
        let (read, send) = if ctx.upgrade {
            (t.tunnel_idle_secs, t.tunnel_idle_secs)
        } else {
            (t.upstream_read_secs, t.upstream_send_secs)
        };
        peer.options.read_timeout = Some(Duration::from_secs(read));
        peer.options.write_timeout = Some(Duration::from_secs(send));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // metrics: river_upstream_errors_total, every failed attempt
        self.service.stats.upstream_error(connect_error_kind(&e));
        // Nothing was sent yet, so any request may go to another upstream.
        if let (Logic::Proxy(proxy), Some(failed)) = (&self.service.logic, ctx.upstream) {
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
        // As pingora's default, with a short body saying what happened, and
        // nginx's statuses for timeouts: 504 for an upstream, 408 for a
        // client (both only when no response byte went out; pingora then
        // just closes).
        let timed_out = matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                pingora_core::ErrorSource::Upstream if timed_out => 504,
                pingora_core::ErrorSource::Upstream => 502,
                pingora_core::ErrorSource::Downstream => match e.etype() {
                    ErrorType::ReadTimedout => 408,
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
        if let Logic::Proxy(proxy) = &self.service.logic {
            apply_all(&proxy.upstream_request, request);
        }
        conform::upstream_request(request);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let asked = conform::Asked::of(session.req_header());
        if let Err(err) = conform::response(response, &asked) {
            ctx.error = Some(err.code());
            return Err(Error::explain(ErrorType::HTTPStatus(502), err.code()).into_up());
        }
        let status = response.status.as_u16();
        if (100..200).contains(&status) && status != 101 {
            let client = session.req_header().version;
            let drop = conform::drops_interim(status, client);
            session.as_downstream_mut().set_ignore_info_resp(drop);
            return Ok(());
        }
        if let Logic::Proxy(proxy) = &self.service.logic {
            apply_all(&proxy.upstream_response, response);
        }
        Ok(())
    }

    /// The one place a request served by pingora is finished: the access
    /// log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let bytes_sent = session.as_downstream().body_bytes_sent();
        let duration = ctx.started.elapsed();
        // metrics: river_requests_total, river_request_duration_seconds,
        // river_bytes_*_total, river_upstream_errors_total (after connecting)
        let stats = &self.service.stats;
        if let Some(kind) = e.and_then(exchange_error_kind) {
            stats.upstream_error(kind);
        }
        stats.request_done(
            status,
            duration,
            session.as_downstream().body_bytes_read() as u64,
            bytes_sent as u64,
        );
        let Some(log) = &self.service.access_log else {
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
            error: ctx.error.or_else(|| e.map(error_code)),
        });
    }
}

/// A short name for the access log of why pingora gave up on a request.
fn error_code(e: &Error) -> &'static str {
    use pingora_core::ErrorSource::{Downstream, Upstream};
    match (e.etype(), e.esource()) {
        (ErrorType::ConnectTimedout, _) => "upstream-connect-timeout",
        (ErrorType::ReadTimedout, Upstream) => "upstream-read-timeout",
        (ErrorType::WriteTimedout, Upstream) => "upstream-send-timeout",
        (ErrorType::ReadTimedout, Downstream) => "client-body-timeout",
        (ErrorType::WriteTimedout, Downstream) => "client-send-timeout",
        (ErrorType::Custom("InvalidChunk"), _) => "bad-chunked-body",
        (ErrorType::ConnectRefused | ErrorType::ConnectError, _) => "upstream-connect-failed",
        (ErrorType::ConnectionClosed, Upstream) => "upstream-closed",
        (
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
            Downstream,
        ) => "client-gone",
        (etype, _) => etype.as_str(),
    }
}

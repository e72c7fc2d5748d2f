//! The pingora application behind every River service. Proxy services forward
//! upstream; the others answer in `request_filter`, so keep-alive, draining and
//! logging behave the same for all of them.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use river_config::{ProxyService, Service, ServiceKind, Upstream};

use crate::filters::{apply_all, compile_all, CompiledHeaderFilter, FilterError};

/// One configured service, built once per generation.
pub struct RiverApp {
    name: String,
    logic: Logic,
}

enum Logic {
    Proxy(Proxy),
    Static(Bytes),
}

struct Proxy {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
    upstream_request: Vec<CompiledHeaderFilter>,
    upstream_response: Vec<CompiledHeaderFilter>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("service `{service}`: {source}")]
    Filter {
        service: String,
        source: FilterError,
    },
    #[error("service `{service}`: {what} is not supported by this build yet")]
    Unsupported { service: String, what: &'static str },
}

impl RiverApp {
    pub fn build(service: &Service) -> Result<Self, BuildError> {
        let logic = match &service.kind {
            ServiceKind::Proxy(proxy) => {
                Logic::Proxy(Proxy::build(proxy).map_err(|source| BuildError::Filter {
                    service: service.name.clone(),
                    source,
                })?)
            }
            ServiceKind::WelcomePage => Logic::Static(Bytes::from(crate::welcome::page())),
            ServiceKind::FileServer(_) => {
                return Err(BuildError::Unsupported {
                    service: service.name.clone(),
                    what: "file-server",
                })
            }
        };
        Ok(RiverApp {
            name: service.name.clone(),
            logic,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Proxy {
    fn build(config: &ProxyService) -> Result<Self, FilterError> {
        Ok(Proxy {
            upstreams: config.upstreams.clone(),
            next: AtomicUsize::new(0),
            upstream_request: compile_all(&config.path_control.upstream_request)?,
            upstream_response: compile_all(&config.path_control.upstream_response)?,
        })
    }

    fn pick(&self) -> &Upstream {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        &self.upstreams[index]
    }
}

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    match session.as_downstream().client_addr()? {
        pingora_core::protocols::l4::socket::SocketAddr::Inet(addr) => Some(addr.ip()),
        _ => None,
    }
}

async fn respond_static(session: &mut Session, body: &Bytes) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for RiverApp {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        match &self.logic {
            Logic::Proxy(_) => Ok(false),
            Logic::Static(body) => {
                respond_static(session, body).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let Logic::Proxy(proxy) = &self.logic else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "service has no upstreams",
            ));
        };
        let upstream = proxy.pick();
        let peer = HttpPeer::new(
            upstream.address,
            upstream.tls_sni.is_some(),
            upstream.tls_sni.clone().unwrap_or_default(),
        );
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
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
        _ctx: &mut (),
    ) -> Result<()> {
        if let Logic::Proxy(proxy) = &self.logic {
            apply_all(&proxy.upstream_response, response);
        }
        Ok(())
    }
}

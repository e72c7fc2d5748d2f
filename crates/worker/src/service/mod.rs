//! A configured service compiled for one generation: what it serves (a proxy
//! with its upstreams and policies, files, or a fixed page), and its
//! timeouts. Both request paths (`http1/` and `proxy/`) read it; it handles
//! no connection itself. Upstream selection and health checks are
//! `upstreams.rs`, here because both paths pick upstreams.

pub mod upstreams;

use std::sync::Arc;

use bytes::Bytes;
use river_config::{ProxyService, ServiceKind, Timeouts};

use crate::access_log::AccessLog;
use crate::content::file_server::FileServer;
use crate::policy::headers::{compile_all, CompiledHeaderFilter, FilterError};
use crate::policy::rate_limit::RateLimitError;
use crate::policy::Admission;
use crate::stats::ServiceStats;
use upstreams::{UpstreamError, Upstreams};

/// One configured service, built once per generation.
pub struct Service {
    pub name: String,
    pub logic: Logic,
    pub access_log: Option<AccessLog>,
    /// How long to wait for clients and upstreams, on both paths.
    pub timeouts: Timeouts,
    /// This service's counters on the generation's stats board (metrics).
    pub stats: ServiceStats,
}

/// What a service answers with.
pub enum Logic {
    Proxy(Arc<Proxy>),
    Files(FileServer),
    Static(Bytes),
}

/// A proxy service: its upstreams and the policies of its requests.
pub struct Proxy {
    pub upstreams: Arc<Upstreams>,
    admission: Admission,
    stats: ServiceStats,
    pub upstream_request: Vec<CompiledHeaderFilter>,
    pub upstream_response: Vec<CompiledHeaderFilter>,
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
    Tls(#[from] crate::listen::tls::TlsError),
    #[error("service `{service}`: file-server base-path {path}: {source}")]
    BasePath {
        service: String,
        path: String,
        source: std::io::Error,
    },
}

impl Service {
    /// Build `service`; must run inside the worker's runtime (health checks
    /// are spawned on it).
    pub fn build(
        service: &river_config::Service,
        access_log: Option<AccessLog>,
        stats: ServiceStats,
    ) -> Result<Self, BuildError> {
        let logic = match &service.kind {
            ServiceKind::Proxy(proxy) => {
                Logic::Proxy(Arc::new(Proxy::build(&service.name, proxy, stats.clone())?))
            }
            ServiceKind::WelcomePage => Logic::Static(Bytes::from(crate::content::welcome::page())),
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
        Ok(Service {
            name: service.name.clone(),
            logic,
            access_log,
            timeouts: service.timeouts,
            stats,
        })
    }

    /// A proxy service's upstreams, for service discovery to update.
    pub fn upstreams(&self) -> Option<Arc<Upstreams>> {
        match &self.logic {
            Logic::Proxy(proxy) => Some(proxy.upstreams.clone()),
            _ => None,
        }
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
        Ok(Proxy {
            upstreams,
            admission: Admission::build(config).map_err(|source| BuildError::RateLimit {
                service: service.to_owned(),
                source,
            })?,
            upstream_request: compile_all(&config.path_control.upstream_request)
                .map_err(filter_error)?,
            upstream_response: compile_all(&config.path_control.upstream_response)
                .map_err(filter_error)?,
            stats,
        })
    }

    /// This service's counters, for the request paths.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// The request filters and rate limits (see `Admission::check`), counted
    /// for the metrics: `Some(status)` refuses the request.
    pub fn admit(&self, client: Option<std::net::IpAddr>, path: &str) -> Option<u16> {
        let refused = self.admission.check(client, path);
        match refused {
            Some(403) => self.stats.blocked(), // metrics: river_blocked_total
            Some(429) => self.stats.rate_limited(), // metrics: river_rate_limited_total
            _ => {}
        }
        refused
    }
}

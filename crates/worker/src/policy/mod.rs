//! Request policies of a proxy service, one place both paths call: CIDR
//! blocks, rate limits, header filters. Decisions only: answering a refused
//! request is the caller's (`http1/` or `proxy/`).

pub mod cidr;
pub mod headers;
pub mod rate_limit;

use std::net::IpAddr;

use river_config::{ProxyService, RequestFilter};

use cidr::CidrBlocklist;
use rate_limit::{RateLimitError, RateLimiter};

/// The admission rules of one service: who may send requests, and how fast.
pub struct Admission {
    blocked: CidrBlocklist,
    rate_limiter: RateLimiter,
}

impl Admission {
    pub fn build(config: &ProxyService) -> Result<Self, RateLimitError> {
        let blocked = CidrBlocklist::new(config.path_control.request_filters.iter().flat_map(
            |filter| match filter {
                RequestFilter::BlockCidrRange { addrs } => addrs.iter().copied(),
            },
        ));
        Ok(Admission {
            blocked,
            rate_limiter: RateLimiter::build(&config.rate_limiting)?,
        })
    }

    /// The request filters and rate limits: `Some(status)` refuses the
    /// request, `None` admits it. Called once per request, before any
    /// upstream is picked.
    pub fn check(&self, client: Option<IpAddr>, path: &str) -> Option<u16> {
        // River answers 400 to blocked clients; 403 says what happened.
        if client.is_some_and(|ip| self.blocked.blocks(ip)) {
            return Some(403);
        }
        if !self.rate_limiter.is_empty() && !self.rate_limiter.admit(client, path) {
            return Some(429);
        }
        None
    }
}

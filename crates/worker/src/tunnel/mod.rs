//! Upgraded connections (WebSocket, any `Upgrade` River relays) on plaintext
//! client connections to plain HTTP/1.1 upstreams: after the `101`, River
//! copies bytes itself (`pipe.rs`), so that a draining worker can pause a
//! tunnel and hand both sockets to the serving generation (`handoff.rs`).
//! The request and the `101` are the fast path's (`http1/forward.rs`); TLS
//! clients, TLS or h2 upstreams and the odd cases stay on pingora's path.
//!
//! A tunnel is logged once, when it ends, by whichever worker holds it then:
//! one access-log line (status 101, bytes sent to the client, the time since
//! the upgrade request) and the service's request counters.

pub mod handoff;
pub mod pipe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;

use crate::access_log::{AccessLog, Entry};
use crate::handoff::{Handoff, Plain};
use crate::stats::ServiceStats;
use pipe::{Pipe, Side, Stop};

/// What a service's tunnels share.
pub struct Context {
    pub service: Arc<str>,
    pub access_log: Option<AccessLog>,
    pub stats: ServiceStats,
    /// `tunnel-idle-secs`.
    pub idle: Duration,
    /// The worker's handoff hub (tunnels exist only with handoff on).
    pub handoff: Option<Arc<Handoff>>,
}

/// What the access log needs of the upgrade request.
#[derive(Debug, Clone)]
pub struct Meta {
    pub client: Option<SocketAddr>,
    pub method: String,
    pub path: String,
    pub upstream: SocketAddr,
    /// When the upgrade request's head was read (wall clock: a moved tunnel
    /// is logged by another process).
    pub started_unix_micros: u64,
}

/// One upgraded connection.
pub struct Tunnel {
    pub pipe: Pipe<Plain, TcpStream>,
    pub meta: Meta,
}

/// After an offer the serving generation did not take, how long a tunnel
/// waits before it offers itself again (doubling up to [`RETRY_MAX`]): the
/// receiver may have died, or a newer generation may take it.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Copy until the tunnel ends, then log it; or hand it over when the worker
/// drains (then the receiver logs it). A tunnel the serving generation does
/// not take goes on here, and offers itself again later.
pub async fn serve(ctx: &Context, mut tunnel: Tunnel) {
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let pause = async {
            let Some(hub) = &ctx.handoff else {
                return std::future::pending().await;
            };
            if let Some((at, _)) = retry {
                tokio::time::sleep_until(at).await;
            }
            hub.wanted().await
        };
        let why = match tunnel.pipe.run(ctx.idle, pause).await {
            Stop::Paused => {
                if let Some(hub) = &ctx.handoff {
                    if handoff::offer(hub, &ctx.service, &mut tunnel).await {
                        return;
                    }
                }
                let wait = retry.map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_MAX));
                retry = Some((tokio::time::Instant::now() + wait, wait));
                continue;
            }
            Stop::Done => None,
            Stop::IdleTimeout => Some("tunnel-idle-timeout"),
            Stop::Failed(Side::Client) => Some("client-gone"),
            Stop::Failed(Side::Upstream) => Some("upstream-gone"),
        };
        log(ctx, &tunnel, why);
        return;
    }
}

/// The one place a River tunnel is finished: its access-log line and counters.
fn log(ctx: &Context, tunnel: &Tunnel, why: Option<&'static str>) {
    let meta = &tunnel.meta;
    let duration = unix_now_micros()
        .checked_sub(meta.started_unix_micros)
        .map_or(Duration::ZERO, Duration::from_micros);
    let (received, sent) = (tunnel.pipe.up.bytes, tunnel.pipe.down.bytes);
    // metrics: river_requests_total (1xx), river_request_duration_seconds,
    // river_bytes_*_total
    ctx.stats.request_done(101, duration, received, sent);
    let Some(log) = &ctx.access_log else {
        return;
    };
    let upstream = meta.upstream.to_string();
    log.log(&Entry {
        client: meta.client.map(|a| a.ip()),
        method: &meta.method,
        path: &meta.path,
        status: 101,
        bytes_sent: usize::try_from(sent).unwrap_or(usize::MAX),
        upstream: Some(&upstream),
        duration,
        error: why,
    });
}

/// `at` in microseconds since the Unix epoch.
pub fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn unix_now_micros() -> u64 {
    unix_micros(SystemTime::now())
}

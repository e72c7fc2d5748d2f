//! The `ServerApp` of a service: h2 connections go to pingora's proxy
//! (`proxy/`), every HTTP/1 connection to the HTTP/1 session (`http1/`),
//! which serves each request on River's fast path or hands it to pingora
//! through [`Pingora`]. It owns no protocol logic of its own.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

use crate::handoff::Handoff;
use crate::http1::forward::Forwarder;
use crate::http1::session::{General, Http1};
use crate::proxy::app::RiverApp;
use crate::service::Service;
use crate::tunnel::Tunnel;

/// A service's connection handler.
pub struct Front {
    http1: Http1<Pingora>,
    pingora: Arc<HttpProxy<RiverApp>>,
}

/// pingora's proxy, serving one HTTP/1 request at a time for the session.
pub struct Pingora {
    proxy: Arc<HttpProxy<RiverApp>>,
    client_body: Duration,
    keepalive_secs: u64,
}

impl Front {
    /// `handoff`: the worker's hub, with `connection-handoff true`.
    pub fn new(
        service: Arc<Service>,
        server_conf: &Arc<ServerConf>,
        handoff: Option<Arc<Handoff>>,
    ) -> Self {
        let forwarder = if fast_path_disabled() {
            None
        } else {
            Forwarder::for_service(&service)
        };
        let access_log = service.access_log.clone();
        let stats = service.stats.clone();
        let timeouts = service.timeouts;
        let name = service.name.clone();
        let pingora = Arc::new(pingora_proxy::http_proxy(
            server_conf,
            RiverApp::new(service),
        ));
        let general = Pingora {
            proxy: pingora.clone(),
            client_body: Duration::from_secs(timeouts.client_body_secs),
            keepalive_secs: timeouts.client_header_secs,
        };
        Front {
            http1: Http1::new(
                general, forwarder, access_log, stats, &timeouts, &name, handoff,
            ),
            pingora,
        }
    }

    /// The worker drains: close the idle upstream connections. A draining
    /// worker serves few more requests, and when River proxies to itself, an
    /// idle pooled connection is a keep-alive client that would hold some
    /// draining worker (maybe this one) open until its idle timeout.
    pub fn begin_drain(&self) {
        self.http1.begin_drain();
    }

    /// The worker's handoff hub turned active: idle connections offer
    /// themselves now.
    pub fn wake_idle(&self) {
        self.http1.wake_idle();
    }

    /// Serve a tunnel a draining worker handed over, to its end.
    pub async fn adopt_tunnel(&self, tunnel: Tunnel) {
        self.http1.resume_tunnel(tunnel).await;
    }

    /// Service discovery removed `removed`: close their idle pooled
    /// connections (requests in flight to them finish, and do not pool theirs).
    pub fn forget_upstreams(&self, removed: &[std::net::SocketAddr]) {
        self.http1.forget_upstreams(removed);
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.pingora.process_new(stream, shutdown).await;
        }
        self.http1.serve(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.begin_drain();
        self.http1.close_idle();
        self.pingora.cleanup().await;
    }
}

/// Test hook: with $RIVER_TEST_NO_FAST_PATH set, every HTTP/1 request goes
/// to pingora, so a test can run the same vectors through both paths.
/// Nothing else reads it.
fn fast_path_disabled() -> bool {
    std::env::var_os("RIVER_TEST_NO_FAST_PATH").is_some()
}

#[async_trait]
impl General for Pingora {
    async fn serve_one(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        // The session reads the next head itself (within client-header-secs);
        // this only tells pingora whether the connection may go on.
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(self.keepalive_secs)
        });
        // Between two reads of a request body (client-body-secs).
        session.set_read_timeout(Some(self.client_body));
        let reused = self.proxy.process_new_http(session, shutdown).await?;
        Some(reused.consume().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::buffered::WriteBuffered;
    use crate::listen::socket::Socket;

    /// Issue 10, item 7: what an idle keep-alive connection holds is its
    /// future (this), its socket with the write buffer, and tokio's task and
    /// I/O registration. Before, about 28 KiB; the bench is bench/idle.sh.
    #[tokio::test]
    async fn an_idle_connection_holds_little() {
        let source =
            "services { P { listeners { \"127.0.0.1:1\" }\n connectors { \"127.0.0.1:9\" } } }";
        let config = river_config::parse(source, "test.kdl").unwrap();
        let service = Arc::new(
            Service::build(
                &config.services[0],
                None,
                crate::stats::ServiceStats::detached(),
            )
            .unwrap(),
        );
        let front = Arc::new(Front::new(
            service,
            &Arc::new(ServerConf::default()),
            Some(Handoff::new().0),
        ));
        let (ours, _theirs) = tokio::net::UnixStream::pair().unwrap();
        let stream: Stream = Box::new(Socket::Unix(ours));
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let connection = front.process_new(stream, &shutdown);
        let future = std::mem::size_of_val(&*connection);
        // 480 with a `Sleep` (112 bytes) in the idle wait; 376 with the
        // wait's one `Notified` from `http1/alarm.rs`. The bound is the
        // allocator's size class (mimalloc: 384, then 448 and 512): one step
        // over it costs every idle connection 64 bytes or more. `cargo
        // +nightly rustc -p river-worker --lib -- -Zprint-type-sizes` shows
        // where it goes.
        assert!(future <= 384, "a connection's future is {future} bytes");
        let socket = std::mem::size_of::<WriteBuffered>();
        assert!(
            socket <= 72,
            "a socket with its write buffer is {socket} bytes"
        );
    }
}

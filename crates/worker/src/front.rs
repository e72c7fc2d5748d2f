//! The `ServerApp` of a service: each connection goes to River's HTTP/1 fast
//! path (`http1/`) when the service has one, or to pingora's proxy
//! (`proxy/`). It owns no protocol logic of its own.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;

use crate::http1::session::Forwarder;
use crate::proxy::app::RiverApp;
use crate::service::Service;

/// A service's connection handler: the forwarder when it can take the
/// connection, pingora otherwise.
pub struct Front {
    pingora: Arc<HttpProxy<RiverApp>>,
    forwarder: Option<Forwarder>,
}

impl Front {
    pub fn new(service: Arc<Service>, server_conf: &Arc<ServerConf>) -> Self {
        let forwarder = Forwarder::for_service(&service);
        let pingora = Arc::new(pingora_proxy::http_proxy(
            server_conf,
            RiverApp::new(service),
        ));
        Front { pingora, forwarder }
    }

    /// The worker drains: close the idle upstream connections. A draining
    /// worker serves few more requests, and when River proxies to itself, an
    /// idle pooled connection is a keep-alive client that would hold some
    /// draining worker (maybe this one) open until its idle timeout.
    pub fn begin_drain(&self) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.begin_drain();
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = match &self.forwarder {
            Some(forwarder) if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) => {
                Box::new(forwarder.serve(stream, shutdown).await?)
            }
            _ => stream,
        };
        self.pingora.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.begin_drain();
        if let Some(forwarder) = &self.forwarder {
            forwarder.close_idle();
        }
        self.pingora.cleanup().await;
    }
}

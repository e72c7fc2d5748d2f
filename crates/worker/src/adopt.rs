//! Connection handoff, the receiving side: connections a draining worker
//! handed over (`Adopt`) are rebuilt here, held until the master commits
//! the batch (`AdoptOutcome`), and then served exactly as if this worker had
//! accepted them: an idle keep-alive connection goes to its service's
//! HTTP/1 session, which reads the next request (the kernel kept whatever
//! the client sent meanwhile); a tunnel goes on copying. Each counts in this
//! worker's connections, balance board and service stats.
//!
//! A connection is refused (it stays with its sender) when this worker has
//! no service of that name listening in plain text on the address the
//! client connected to (a reload removed the service or the port), when it
//! says TLS, or when its socket cannot be used. The sending side and the
//! exchange are `handoff.rs`'s.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use river_config::ListenAddress;
use river_ipc::handoff::check_batch;
use river_ipc::HandedConn;
use tokio::sync::watch;

use crate::front::Front;
use crate::handoff::Plain;
use crate::listen::accept::ConnectionCount;
use crate::listen::buffered::WriteBuffered;
use crate::listen::socket::Socket;
use crate::stats::ServiceStats;
use crate::tunnel::{self, Tunnel};

/// A service connections may be handed to.
pub struct Target {
    pub front: Arc<Front>,
    pub stats: ServiceStats,
    /// Its plaintext listeners: a connection must have come in on one.
    pub plain: Vec<ListenAddress>,
}

enum Adoptee {
    Idle {
        target: Arc<Target>,
        socket: Socket,
    },
    Tunnel {
        target: Arc<Target>,
        tunnel: Box<Tunnel>,
    },
}

/// This worker's adoptions.
pub struct Adopter {
    services: HashMap<String, Arc<Target>>,
    /// Adopted, not yet committed: by the master's batch number.
    held: HashMap<u64, Vec<Adoptee>>,
    connections: ConnectionCount,
    shutdown: watch::Receiver<bool>,
}

impl Adopter {
    /// `shutdown`: pingora's flag, as for accepted connections.
    pub fn new(connections: ConnectionCount, shutdown: watch::Receiver<bool>) -> Adopter {
        Adopter {
            services: HashMap::new(),
            held: HashMap::new(),
            connections,
            shutdown,
        }
    }

    pub fn add_service(&mut self, name: &str, target: Target) {
        self.services.insert(name.to_owned(), Arc::new(target));
    }

    /// Take what `batch` can be given (`fds` as the frame carried them);
    /// which connections this worker accepts. Nothing is served before
    /// [`Adopter::settle`].
    pub fn adopt(&mut self, batch: u64, conns: Vec<HandedConn>, fds: Vec<OwnedFd>) -> Vec<bool> {
        if let Err(err) = check_batch(&conns, fds.len()) {
            tracing::warn!(batch, error = %err, "refusing a handoff batch");
            return vec![false; conns.len()];
        }
        let mut fds = fds.into_iter();
        let mut accepted = Vec::with_capacity(conns.len());
        let mut held = Vec::new();
        for conn in conns {
            let mine: Vec<OwnedFd> = fds.by_ref().take(conn.fds()).collect();
            let service = conn.service().to_owned();
            match self.adoptee(conn, mine) {
                Ok(adoptee) => {
                    held.push(adoptee);
                    accepted.push(true);
                }
                Err(why) => {
                    tracing::debug!(batch, %service, why, "refusing a handed connection");
                    accepted.push(false);
                }
            }
        }
        if !held.is_empty() {
            self.held.insert(batch, held);
        }
        accepted
    }

    fn adoptee(&self, conn: HandedConn, mut fds: Vec<OwnedFd>) -> Result<Adoptee, &'static str> {
        let target = self
            .services
            .get(conn.service())
            .ok_or("no service of that name")?
            .clone();
        match conn {
            HandedConn::Idle(idle) => {
                // kTLS handoff would go here: a TLS connection could move
                // once the kernel holds its session keys (TLS_TX/TLS_RX), and
                // the receiver would rebuild the record layer from them.
                // Without kTLS the session state is rustls', in the sender.
                if idle.tls {
                    return Err("a TLS connection");
                }
                let fd = fds.pop().ok_or("no descriptor")?;
                let plain = Plain::from_fd(fd).map_err(|_| "not a usable socket")?;
                if !came_in_on(&plain, &target.plain) {
                    return Err("no plaintext listener of the service on its address");
                }
                Ok(Adoptee::Idle {
                    target,
                    socket: Socket::from(plain),
                })
            }
            HandedConn::Tunnel(handed) => {
                let (Some(upstream), Some(client)) = (fds.pop(), fds.pop()) else {
                    return Err("no descriptors");
                };
                let tunnel = tunnel::handoff::resume(*handed, client, upstream)
                    .map_err(|_| "not usable sockets")?;
                if !came_in_on(&tunnel.pipe.client, &target.plain) {
                    return Err("no plaintext listener of the service on its address");
                }
                Ok(Adoptee::Tunnel {
                    target,
                    tunnel: Box::new(tunnel),
                })
            }
        }
    }

    /// The master decided on `batch`: serve what was adopted (`commit`), or
    /// close this worker's copies (the sender keeps the connections).
    pub fn settle(&mut self, batch: u64, commit: bool) {
        let Some(held) = self.held.remove(&batch) else {
            return;
        };
        if !commit {
            tracing::info!(batch, connections = held.len(), "handoff batch aborted");
            return;
        }
        tracing::info!(batch, connections = held.len(), "adopted connections");
        for adoptee in held {
            let guard = self.connections.open();
            match adoptee {
                Adoptee::Idle { target, socket } => {
                    // metrics: river_connections_active{service}
                    let counted = target.stats.connection_opened();
                    let shutdown = self.shutdown.clone();
                    tokio::spawn(async move {
                        let _guard = (guard, counted);
                        let stream: Stream = Box::new(WriteBuffered::new(socket));
                        target.front.process_new(stream, &shutdown).await;
                    });
                }
                Adoptee::Tunnel { target, tunnel } => {
                    let counted = target.stats.connection_opened();
                    tokio::spawn(async move {
                        let _guard = (guard, counted);
                        target.front.adopt_tunnel(*tunnel).await;
                    });
                }
            }
        }
    }

    /// No master will decide any more: close every held copy.
    pub fn drop_held(&mut self) {
        self.held.clear();
    }

    /// Nothing waits for the master's decision.
    pub fn is_idle(&self) -> bool {
        self.held.is_empty()
    }
}

/// Whether `socket`'s local address is one of `listeners` (a wildcard
/// listener matches any address on its port).
fn came_in_on(socket: &Plain, listeners: &[ListenAddress]) -> bool {
    match socket {
        Plain::Tcp(s) => {
            let Ok(local) = s.local_addr() else {
                return false;
            };
            listeners.iter().any(|l| match l {
                ListenAddress::Tcp(addr) => {
                    addr.port() == local.port()
                        && (addr.ip() == local.ip() || addr.ip().is_unspecified())
                }
                ListenAddress::Unix(_) => false,
            })
        }
        Plain::Unix(s) => {
            let Ok(local) = s.local_addr() else {
                return false;
            };
            let Some(path) = local.as_pathname() else {
                return false;
            };
            listeners
                .iter()
                .any(|l| matches!(l, ListenAddress::Unix(p) if p == path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_must_come_in_on_a_listener_of_the_service() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(at).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let plain = Plain::Tcp(accepted);
        let tcp = |s: &str| ListenAddress::Tcp(s.parse().unwrap());
        assert!(came_in_on(&plain, &[tcp(&at.to_string())]));
        assert!(came_in_on(
            &plain,
            &[tcp(&format!("0.0.0.0:{}", at.port()))]
        ));
        assert!(!came_in_on(&plain, &[tcp("127.0.0.1:1")]));
        assert!(!came_in_on(&plain, &[]));
        assert!(!came_in_on(
            &plain,
            &[ListenAddress::Unix("/tmp/x.sock".into())]
        ));
    }
}

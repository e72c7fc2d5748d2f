//! Moving a tunnel: a paused pipe (`pipe.rs`) offered to the serving
//! generation with both sockets and what its log line needs, and a tunnel
//! rebuilt from such an offer in the receiving worker. The hub, batching and
//! the rules of the exchange are `crate::handoff`'s.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::handoff::{duplicate, Handoff, Plain};
use crate::tunnel::pipe::{Half, Pipe};
use crate::tunnel::{Meta, Tunnel};
use river_ipc::{HandedConn, HandedTunnel};

/// Offer a paused tunnel; true if it moved (drop it without shutting its
/// sockets down), false if it stays (run its pipe on: whatever the pause
/// left unwritten is still in it).
pub async fn offer(hub: &Handoff, service: &str, tunnel: &mut Tunnel) -> bool {
    let fds = match (
        duplicate(tunnel.pipe.client.as_raw_fd()),
        duplicate(tunnel.pipe.upstream.as_raw_fd()),
    ) {
        (Ok(client), Ok(upstream)) => vec![client, upstream],
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "cannot duplicate a tunnel's sockets");
            return false;
        }
    };
    let (to_client, to_upstream) = tunnel.pipe.carried();
    let pipe = &tunnel.pipe;
    let meta = &tunnel.meta;
    let handed = HandedTunnel {
        service: service.to_owned(),
        client: meta.client,
        upstream: meta.upstream,
        method: meta.method.clone(),
        path: meta.path.clone(),
        started_unix_micros: meta.started_unix_micros,
        to_client_bytes: pipe.down.bytes,
        to_upstream_bytes: pipe.up.bytes,
        client_done: pipe.up.is_done(),
        upstream_done: pipe.down.is_done(),
        to_client,
        to_upstream,
    };
    hub.offer(HandedConn::Tunnel(Box::new(handed)), fds).await
}

/// The tunnel a draining worker handed over, on its two descriptors
/// (client, upstream).
pub fn resume(handed: HandedTunnel, client: OwnedFd, upstream: OwnedFd) -> io::Result<Tunnel> {
    let client = Plain::from_fd(client)?;
    let upstream = match Plain::from_fd(upstream)? {
        Plain::Tcp(stream) => stream,
        Plain::Unix(_) => return Err(io::Error::other("a tunnel's upstream is TCP")),
    };
    let HandedTunnel {
        client: client_addr,
        upstream: upstream_addr,
        method,
        path,
        started_unix_micros,
        to_client_bytes,
        to_upstream_bytes,
        client_done,
        upstream_done,
        to_client,
        to_upstream,
        ..
    } = handed;
    let pipe = Pipe {
        client,
        upstream,
        up: Half::resumed(to_upstream_bytes, client_done, to_upstream),
        down: Half::resumed(to_client_bytes, upstream_done, to_client),
    };
    Ok(Tunnel {
        pipe,
        meta: Meta {
            client: client_addr,
            method,
            path,
            upstream: upstream_addr,
            started_unix_micros,
        },
    })
}

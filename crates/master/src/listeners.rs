//! The master's listening sockets. The master binds every listener; workers
//! only receive copies. A socket's identity across reloads is its address, so an
//! unchanged listener keeps the same socket and never refuses a connection.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use river_config::{Config, ListenAddress};
use socket2::{Domain, SockAddr, Socket, Type};

/// Sockets shared by the generations that use them; the last user closes it.
pub type SharedSocket = Arc<OwnedFd>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    pub address: ListenAddress,
    pub source: io::Error,
}

/// Bind and listen on `address`. The socket is close-on-exec: a worker gets it
/// only through SCM_RIGHTS, never by inheritance.
pub fn bind(address: &ListenAddress, backlog: u32) -> io::Result<OwnedFd> {
    let socket = match address {
        ListenAddress::Tcp(addr) => {
            let socket = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&(*addr).into())?;
            socket
        }
        ListenAddress::Unix(path) => {
            remove_stale_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket
        }
    };
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// A socket file left by a previous run would make bind fail; anything else at
/// that path is not ours to delete.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    }
}

/// The sockets of the current configuration, by address.
#[derive(Default)]
pub struct ListenerSet {
    sockets: BTreeMap<ListenAddress, SharedSocket>,
    /// Set once a new master took the sockets over: Unix socket files are
    /// then its to remove, not ours.
    handed_over: bool,
}

impl ListenerSet {
    /// The sockets a new master inherited from the old one (binary upgrade).
    pub fn inherited(sockets: BTreeMap<ListenAddress, SharedSocket>) -> ListenerSet {
        ListenerSet {
            sockets,
            handed_over: false,
        }
    }

    /// The current sockets, for a new master to inherit.
    pub fn current(&self) -> Vec<(ListenAddress, SharedSocket)> {
        self.sockets
            .iter()
            .map(|(address, socket)| (address.clone(), socket.clone()))
            .collect()
    }

    /// A new master serves on these sockets now: close our copies, leave
    /// the Unix socket files to it.
    pub fn hand_over(&mut self) {
        self.handed_over = true;
        self.sockets.clear();
    }

    /// The sockets `config` needs: existing ones are reused, missing ones bound.
    /// Nothing changes here until [`ListenerSet::commit`]; on error, sockets
    /// bound by this call are closed when the partial result drops.
    pub fn prepare(
        &self,
        config: &Config,
    ) -> Result<Vec<(ListenAddress, SharedSocket)>, BindError> {
        let backlog = config.system.listen_backlog;
        let mut prepared = Vec::new();
        for listener in config.services.iter().flat_map(|s| &s.listeners) {
            let address = &listener.address;
            let socket = match self.sockets.get(address) {
                Some(existing) => existing.clone(),
                None => Arc::new(bind(address, backlog).map_err(|source| BindError {
                    address: address.clone(),
                    source,
                })?),
            };
            prepared.push((address.clone(), socket));
        }
        Ok(prepared)
    }

    /// Make `sockets` the current set. Sockets no longer listed stay open only
    /// while a draining generation still holds them.
    pub fn commit(&mut self, sockets: &[(ListenAddress, SharedSocket)]) {
        let stale: Vec<_> = self
            .sockets
            .keys()
            .filter(|address| !sockets.iter().any(|(a, _)| a == *address))
            .cloned()
            .collect();
        for address in stale {
            self.sockets.remove(&address);
            if let (ListenAddress::Unix(path), false) = (&address, self.handed_over) {
                let _ = std::fs::remove_file(path);
            }
        }
        self.sockets
            .extend(sockets.iter().map(|(a, s)| (a.clone(), s.clone())));
    }

    /// Close everything (shutdown), removing Unix socket files.
    pub fn close_all(&mut self) {
        self.commit(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn binds_tcp_and_accepts_connections_into_the_queue() {
        let fd = bind(&ListenAddress::Tcp("127.0.0.1:0".parse().unwrap()), 16).unwrap();
        let listener = std::net::TcpListener::from(fd);
        let addr = listener.local_addr().unwrap();
        TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
    }

    #[test]
    fn replaces_a_stale_unix_socket_but_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("river.sock");
        drop(bind(&ListenAddress::Unix(path.clone()), 16).unwrap());
        assert!(path.exists(), "closing the socket leaves the file behind");
        bind(&ListenAddress::Unix(path.clone()), 16).unwrap();

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"data").unwrap();
        assert!(bind(&ListenAddress::Unix(file.clone()), 16).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[test]
    fn busy_port_is_an_error() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = ListenAddress::Tcp(first.local_addr().unwrap());
        assert!(bind(&busy, 16).is_err());
    }
}

//! An accepted client socket with only what pingora's `IO` trait asks for.
//!
//! pingora's L4 stream carries per-connection fields River does not use
//! (timing accumulators, zero-sized read and write buffers, a receive
//! timestamp buffer, digests): ~380 bytes for as long as the connection
//! lives. This is the bare tokio socket. The write buffer, the peer address
//! and the socket digest are `buffered.rs`'s; TLS wraps the buffered socket.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A client connection accepted on an inherited listener.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

macro_rules! each {
    ($socket:expr, $s:ident => $body:expr) => {
        match $socket {
            Socket::Tcp($s) => $body,
            Socket::Unix($s) => $body,
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, data))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

/// A connection handed over by a draining worker, served as one accepted here.
impl From<crate::handoff::Plain> for Socket {
    fn from(plain: crate::handoff::Plain) -> Socket {
        match plain {
            crate::handoff::Plain::Tcp(s) => Socket::Tcp(s),
            crate::handoff::Plain::Unix(s) => Socket::Unix(s),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        each!(self, s => s.as_raw_fd())
    }
}

#[async_trait]
impl Shutdown for Socket {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for Socket {
    fn id(&self) -> UniqueIDType {
        self.as_raw_fd()
    }
}

/// No TLS at this layer (a TLS stream wraps the buffered socket).
impl Ssl for Socket {}

impl GetTimingDigest for Socket {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        // When the connection was established is not kept: River logs its
        // own durations, and pingora reads this only for its own logs.
        vec![None]
    }
}

impl GetProxyDigest for Socket {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

/// Made by the write buffer above, which knows the peer.
impl GetSocketDigest for Socket {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

/// Peeking is only for h2c detection, which River does not configure.
impl Peek for Socket {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_and_writes_through() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut ours = Socket::Unix(ours);
        let mut theirs = Socket::Unix(theirs);
        ours.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(ours.id(), ours.as_raw_fd());
        Shutdown::shutdown(&mut ours).await;
        assert_eq!(theirs.read(&mut got).await.unwrap(), 0);
    }
}

//! A plain downstream connection with a small write buffer.
//!
//! pingora's own listeners give every accepted stream L4 buffers in a step
//! (`UninitializedStream::handshake`) that is private to pingora; streams from
//! its bare `Listener::accept`, which River uses on inherited sockets, have none.
//! Unbuffered, every response leaves in two writes (header, then body): two
//! segments and two wake-ups for the client. This wrapper restores pingora's
//! default: a write buffer of `DEFAULT_L4_WRITE_BUFFER_SIZE`, flushed where
//! pingora flushes its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::{Stream as L4Stream, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, SocketDigest, TimingDigest,
};
use pingora_core::protocols::{Peek, Shutdown, Ssl, UniqueID, UniqueIDType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

#[derive(Debug)]
pub struct WriteBuffered(BufWriter<L4Stream>);

impl WriteBuffered {
    pub fn new(stream: L4Stream) -> Self {
        WriteBuffered(BufWriter::with_capacity(
            DEFAULT_L4_WRITE_BUFFER_SIZE,
            stream,
        ))
    }

    fn socket(&self) -> &L4Stream {
        self.0.get_ref()
    }
}

impl AsyncRead for WriteBuffered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteBuffered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for WriteBuffered {
    async fn shutdown(&mut self) {
        // What is buffered goes out before the socket closes.
        let _ = self.0.flush().await;
        Shutdown::shutdown(self.0.get_mut()).await;
    }
}

impl UniqueID for WriteBuffered {
    fn id(&self) -> UniqueIDType {
        self.socket().id()
    }
}

/// Plain connections: no TLS.
impl Ssl for WriteBuffered {}

impl GetTimingDigest for WriteBuffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.socket().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.socket().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.socket().get_write_pending_time()
    }
}

impl GetProxyDigest for WriteBuffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.socket().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.0.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for WriteBuffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.get_mut().set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for WriteBuffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.0.get_mut().try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn small_writes_leave_together_at_flush() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = L4Stream::from(tokio::net::UnixStream::from_std(ours).unwrap());
        let mut buffered = WriteBuffered::new(stream);
        let mut peer = theirs;
        peer.set_nonblocking(true).unwrap();

        buffered
            .write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        buffered.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 64];
        let early = peer.read(&mut got);
        assert_eq!(
            early.map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::WouldBlock),
            "nothing is sent before the flush"
        );
        buffered.flush().await.unwrap();
        let n = peer.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"HTTP/1.1 200 OK\r\n\r\nhello");

        // A write larger than the buffer goes straight out.
        let big = vec![b'x'; DEFAULT_L4_WRITE_BUFFER_SIZE * 2];
        buffered.write_all(&big).await.unwrap();
        let mut received = 0;
        while received < big.len() {
            match peer.read(&mut vec![0u8; big.len()]) {
                Ok(n) => received += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(received, big.len());
    }
}

//! A connection with bytes already read from it put back in front, so that the
//! HTTP/1 session can hand a request the fast path does not take (an upgrade,
//! a chunked upload, HTTP/1.0...) to pingora, which then reads it from the
//! start, and take the connection back afterwards.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{Peek, Shutdown, Ssl, Stream, ALPN};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug)]
pub struct Rewind<S = Stream> {
    unread: BytesMut,
    io: S,
}

impl<S> Rewind<S> {
    pub fn new(unread: BytesMut, io: S) -> Self {
        Rewind { unread, io }
    }

    /// The bytes not read yet, and the connection: what the HTTP/1 session
    /// takes back when pingora is done with a request.
    pub fn into_parts(self) -> (BytesMut, S) {
        (self.unread, self.io)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Rewind {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.io).await
    }
}

impl Ssl for Rewind {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.io.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.io.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.io.selected_alpn_proto()
    }
}

delegate_connection_info!(Rewind, io);

/// Peeking is only for h2c detection, which River does not configure; a
/// stream that says it cannot peek is read normally.
impl Peek for Rewind {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_the_put_back_bytes_first_then_the_connection() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut rewind = Rewind::new(BytesMut::from(&b"hello"[..]), server);
        let mut small = [0u8; 3];
        rewind.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = String::new();
        rewind.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "lo world");
    }
}

//! A downstream connection with a small write buffer.
//!
//! pingora's own listeners give every accepted stream L4 buffers in a step
//! (`UninitializedStream::handshake`) that is private to pingora; streams from
//! its bare `Listener::accept`, which River uses on inherited sockets, have none.
//! Unbuffered, every response leaves in two writes (header, then body): two
//! segments and two wake-ups for the client. This wrapper buffers up to
//! pingora's default `DEFAULT_L4_WRITE_BUFFER_SIZE`, flushed where pingora
//! flushes its own, and goes one better than a plain `BufWriter`: a write that
//! does not fit leaves *with* what is buffered in one `writev`, so a header and
//! a 4 KiB body are one syscall, not two. TLS streams sit on top of it, so
//! their records coalesce the same way.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE;
use pingora_core::protocols::{GetSocketDigest, Peek, Shutdown, SocketDigest, Ssl};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::listen::socket::Socket;

/// Buffers writes up to [`CAPACITY`]; see the module documentation.
///
/// Every idle connection holds one, so it holds only the socket and an empty
/// `Vec` (72 bytes): the capacity is a constant, and the peer's address is
/// asked of the kernel when a digest is made.
#[derive(Debug)]
pub struct WriteBuffered<W = Socket> {
    io: W,
    buf: Vec<u8>,
}

/// pingora's default write buffer.
const CAPACITY: usize = DEFAULT_L4_WRITE_BUFFER_SIZE;

impl<W: AsyncWrite + Unpin> WriteBuffered<W> {
    /// A downstream socket with pingora's default write buffer.
    pub fn new(io: W) -> Self {
        WriteBuffered {
            io,
            // Allocated by the first write: an idle connection holds none.
            buf: Vec::new(),
        }
    }

    /// Write out everything buffered, and give the buffer back: a flushed
    /// connection is usually one that waits for its next request.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.buf.drain(..n);
        }
        self.buf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for WriteBuffered<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteBuffered<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.buf.len() + data.len() <= CAPACITY {
                if this.buf.capacity() == 0 {
                    this.buf.reserve_exact(CAPACITY);
                }
                this.buf.extend_from_slice(data);
                return Poll::Ready(Ok(data.len()));
            }
            if this.buf.is_empty() {
                return Pin::new(&mut this.io).poll_write(cx, data);
            }
            // Buffered bytes first, then as much of `data` as the socket takes.
            let parts = [IoSlice::new(&this.buf), IoSlice::new(data)];
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            if n <= this.buf.len() {
                // Only (part of) the buffer left; go round with what remains.
                this.buf.drain(..n);
                continue;
            }
            let taken = n - this.buf.len();
            this.buf.clear();
            return Poll::Ready(Ok(taken));
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // A prefix is a valid answer; the caller writes the rest.
        match bufs.iter().find(|b| !b.is_empty()) {
            Some(first) => self.poll_write(cx, first),
            None => Poll::Ready(Ok(0)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for WriteBuffered {
    async fn shutdown(&mut self) {
        // What is buffered goes out before the socket closes.
        let _ = self.flush().await;
        Shutdown::shutdown(&mut self.io).await;
    }
}

/// No TLS at this layer (a TLS stream wraps this one).
impl Ssl for WriteBuffered {}

delegate_connection_info!(WriteBuffered, io, without socket digest);

/// The socket digest (peer address, fd) is made when pingora or the HTTP/1
/// session asks, once per request at most, instead of living as long as the
/// connection: ~400 bytes an idle connection does not hold.
impl GetSocketDigest for WriteBuffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        if let Some(digest) = self.io.get_socket_digest() {
            return Some(digest);
        }
        let digest = SocketDigest::from_raw_fd(self.io.as_raw_fd());
        // A TCP peer is asked of the kernel (`getpeername`) when wanted: once
        // a connection on the fast path, once a request on pingora's.
        if matches!(self.io, Socket::Unix(_)) {
            let _ = digest.peer_addr.set(None);
        }
        Some(Arc::new(digest))
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.io.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for WriteBuffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.io.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
    use std::io::Read;

    /// A socket stand-in that records every write call, takes at most
    /// `per_call` bytes per call and, when `stall` is set, answers every other
    /// call with Pending (waking at once), as a full socket buffer would.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        calls: Vec<usize>,
        per_call: Option<usize>,
        stall: bool,
        stalled: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(data)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            if this.stall {
                this.stalled = !this.stalled;
                if this.stalled {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            let mut room = this.per_call.unwrap_or(usize::MAX);
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(room);
                this.out.extend_from_slice(&buf[..take]);
                room -= take;
                n += take;
            }
            this.calls.push(n);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_socket_digest_is_made_when_asked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let buffered = WriteBuffered::new(Socket::Tcp(accepted));
        let digest = buffered.get_socket_digest().expect("a digest");
        assert_eq!(
            digest.peer_addr(),
            Some(&PingoraAddr::Inet(client.local_addr().unwrap()))
        );
        assert!(std::mem::size_of::<WriteBuffered>() <= 72);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_write_buffer() {
        let mut w = WriteBuffered::new(Recorder::default());
        assert_eq!(
            w.buf.capacity(),
            0,
            "nothing allocated before the first write"
        );
        w.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(w.buf.capacity(), 1460);
        w.flush().await.unwrap();
        assert_eq!(w.buf.capacity(), 0, "given back once flushed");
        assert_eq!(w.io.out, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_header_and_a_body_larger_than_the_buffer_leave_in_one_write() {
        let mut w = WriteBuffered::new(Recorder::default());
        let header = b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n";
        let body = vec![b'b'; 4096];
        w.write_all(header).await.unwrap();
        w.write_all(&body).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.io.calls, vec![header.len() + body.len()]);
        assert_eq!(&w.io.out[..header.len()], header);
        assert_eq!(&w.io.out[header.len()..], &body[..]);
    }

    #[tokio::test]
    async fn short_and_stalled_writes_lose_and_reorder_nothing() {
        for per_call in [1, 7, 100, 1459, 1460, 1461, 5000] {
            for stall in [false, true] {
                let io = Recorder {
                    per_call: Some(per_call),
                    stall,
                    ..Recorder::default()
                };
                let mut w = WriteBuffered::new(io);
                let mut expected = Vec::new();
                for (i, len) in [10, 3000, 1, 1460, 0, 200, 1300, 9000, 5]
                    .iter()
                    .enumerate()
                {
                    let chunk = vec![i as u8; *len];
                    w.write_all(&chunk).await.unwrap();
                    expected.extend_from_slice(&chunk);
                    if i % 3 == 2 {
                        w.flush().await.unwrap();
                    }
                }
                w.shutdown().await.unwrap();
                assert!(
                    w.io.out == expected,
                    "per_call {per_call}, stall {stall}: output differs"
                );
            }
        }
    }

    #[tokio::test]
    async fn small_writes_leave_together_at_flush() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = Socket::Unix(tokio::net::UnixStream::from_std(ours).unwrap());
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

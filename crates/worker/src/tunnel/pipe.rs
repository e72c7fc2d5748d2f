//! The byte pipe of an upgraded connection (WebSocket, any `Upgrade` River
//! relays): after the `101`, bytes are copied both ways between the client
//! and the upstream until both sides end, one fails, or the tunnel is silent
//! for `tunnel-idle-secs`.
//!
//! Why River's own loop and not pingora's: a tunnel inside pingora's proxy
//! future cannot give its sockets back, so it cannot move to another process
//! (connection handoff, `handoff.rs`). This loop can stop at a known point:
//! once asked to pause it reads nothing more, writes out what it already
//! read, and returns with both sockets; what the sink would not take within
//! [`PAUSE_FLUSH`] stays in [`Pipe::carried`] and travels with the sockets.
//!
//! Behaviour kept from the pingora path, and one thing better:
//! - backpressure both ways: a direction reads only once everything it read
//!   before was written, so a slow reader stalls its writer, never River's
//!   memory (at most one [`CHUNK`] per direction is held, and only while a
//!   write falls short: an idle tunnel holds no buffer);
//! - half-close: the end of one side's bytes is passed on as a shutdown of
//!   the other side's write half, and the other direction goes on (pingora
//!   ended the whole tunnel when either side finished);
//! - idle timeout: no byte in either direction for the limit ends the tunnel;
//! - byte counts per direction, for the access log.
//!
//! This file knows nothing of HTTP, logs or processes: `mod.rs` starts and
//! logs tunnels, `handoff.rs` moves them.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes read at a time, per direction.
pub const CHUNK: usize = 16 * 1024;
/// How long a pause waits for bytes already read to be written before it
/// gives up and carries them along instead.
pub const PAUSE_FLUSH: Duration = Duration::from_millis(200);
/// Reads per direction in one wake-up before yielding to other tasks.
const READS_PER_POLL: usize = 16;

thread_local! {
    /// Where a direction reads: bytes the sink takes at once never touch a
    /// buffer of the tunnel's own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
pub struct Half {
    /// Read from the source, not yet written to the sink (a short write).
    pending: Vec<u8>,
    /// The source ended (EOF read).
    eof: bool,
    /// ... and the sink's write half was shut down after it.
    shut: bool,
    /// Bytes written to the sink.
    pub bytes: u64,
}

impl Half {
    /// A direction resumed elsewhere (connection handoff): `bytes` already
    /// copied, `done` its source ended, `pending` read but not written.
    pub fn resumed(bytes: u64, done: bool, pending: Vec<u8>) -> Half {
        Half {
            pending,
            eof: done,
            shut: done,
            bytes,
        }
    }

    /// The source ended and the sink was told: nothing more goes this way.
    pub fn is_done(&self) -> bool {
        self.eof && self.shut && self.pending.is_empty()
    }
}

/// Which side of the tunnel an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Why [`Pipe::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Both sides ended their bytes.
    Done,
    /// Nothing moved either way for the idle limit.
    IdleTimeout,
    /// A read or write on that side failed (reset, broken pipe).
    Failed(Side),
    /// Asked to pause: nothing is read any more, and what was read is
    /// written, or in [`Pipe::carried`].
    Paused,
}

/// An upgraded connection's two sockets and the state of each direction.
pub struct Pipe<C, U> {
    pub client: C,
    pub upstream: U,
    /// Client to upstream.
    pub up: Half,
    /// Upstream to client.
    pub down: Half,
}

impl<C, U> Pipe<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(client: C, upstream: U) -> Self {
        Pipe {
            client,
            upstream,
            up: Half::default(),
            down: Half::default(),
        }
    }

    /// Bytes to send before anything read from now on: the part of the
    /// upstream's first read after the 101 (`to_client`) and the client's
    /// bytes read with the upgrade request (`to_upstream`).
    pub fn with_early_bytes(mut self, to_client: &[u8], to_upstream: &[u8]) -> Self {
        self.down.pending.extend_from_slice(to_client);
        self.up.pending.extend_from_slice(to_upstream);
        self
    }

    /// Copies of the bytes read and not written when a pause returned: (to
    /// the client, to the upstream). Normally both empty; they stay in the
    /// pipe for when it runs on here.
    pub fn carried(&self) -> (Vec<u8>, Vec<u8>) {
        (self.down.pending.clone(), self.up.pending.clone())
    }

    /// Copy both ways until the tunnel ends, fails, idles for `idle`, or
    /// `pause` completes and the pause is reached. After [`Stop::Paused`]
    /// the pipe may run again (with another `pause`).
    pub async fn run(&mut self, idle: Duration, pause: impl Future<Output = ()>) -> Stop {
        let mut pause = pin!(pause);
        let mut pausing: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut last = Instant::now();
        let mut idle_timer = pin!(tokio::time::sleep_until(last + idle));
        poll_fn(|cx| {
            if pausing.is_none() && pause.as_mut().poll(cx).is_ready() {
                pausing = Some(Box::pin(tokio::time::sleep(PAUSE_FLUSH)));
            }
            let mut moved = false;
            let paused = pausing.is_some();
            if let Poll::Ready(Err(side)) = poll_half(
                &mut self.up,
                &mut self.client,
                &mut self.upstream,
                Side::Client,
                cx,
                paused,
                &mut moved,
            ) {
                return Poll::Ready(Stop::Failed(side));
            }
            if let Poll::Ready(Err(side)) = poll_half(
                &mut self.down,
                &mut self.upstream,
                &mut self.client,
                Side::Upstream,
                cx,
                paused,
                &mut moved,
            ) {
                return Poll::Ready(Stop::Failed(side));
            }
            if self.up.is_done() && self.down.is_done() {
                return Poll::Ready(Stop::Done);
            }
            if let Some(flush) = &mut pausing {
                let flushed = self.up.pending.is_empty() && self.down.pending.is_empty();
                if flushed || flush.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Stop::Paused);
                }
            }
            let now = Instant::now();
            if moved {
                last = now;
            }
            if idle_timer.as_mut().poll(cx).is_ready() {
                if now >= last + idle {
                    return Poll::Ready(Stop::IdleTimeout);
                }
                // Bytes moved since the timer was set: set it again (and
                // register the wake-up).
                idle_timer.as_mut().reset(last + idle);
                let _ = idle_timer.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
    }
}

/// Move bytes one way, from `src` to `dst`, until either would block.
/// Ready(Ok) once this direction is done; Ready(Err) names the side that
/// failed (`from` is the source's side); Pending otherwise, with wake-ups
/// registered for whatever it waits on. While `paused`, nothing is read.
fn poll_half<S, D>(
    half: &mut Half,
    src: &mut S,
    dst: &mut D,
    from: Side,
    cx: &mut Context<'_>,
    paused: bool,
    moved: &mut bool,
) -> Poll<Result<(), Side>>
where
    S: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    let to = match from {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut reads = 0;
    loop {
        if !half.pending.is_empty() {
            match Pin::new(&mut *dst).poll_write(cx, &half.pending) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(to)),
                Poll::Ready(Ok(n)) => {
                    half.pending.drain(..n);
                    half.bytes += n as u64;
                    *moved = true;
                    if half.pending.is_empty() {
                        // An idle tunnel keeps no buffer.
                        half.pending = Vec::new();
                    }
                    continue;
                }
            }
        }
        if half.eof {
            if !half.shut {
                match Pin::new(&mut *dst).poll_shutdown(cx) {
                    Poll::Pending => return Poll::Pending,
                    // A sink that is gone already needs no shutdown.
                    Poll::Ready(_) => half.shut = true,
                }
            }
            return Poll::Ready(Ok(()));
        }
        if paused {
            return Poll::Pending;
        }
        if reads == READS_PER_POLL {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reads += 1;
        let step = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => Step::Wait,
                Poll::Ready(Err(_)) => Step::Fail(from),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Step::Eof,
                Poll::Ready(Ok(())) => {
                    let data = read.filled();
                    // Straight to the sink; only what it does not take now
                    // is kept.
                    match Pin::new(&mut *dst).poll_write(cx, data) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Step::Fail(to),
                        Poll::Ready(Ok(n)) => {
                            half.bytes += n as u64;
                            half.pending.extend_from_slice(&data[n..]);
                            Step::Moved
                        }
                        Poll::Pending => {
                            half.pending.extend_from_slice(data);
                            Step::Moved
                        }
                    }
                }
            }
        });
        match step {
            Step::Wait => return Poll::Pending,
            Step::Fail(side) => return Poll::Ready(Err(side)),
            Step::Eof => half.eof = true,
            Step::Moved => *moved = true,
        }
    }
}

enum Step {
    Wait,
    Fail(Side),
    Eof,
    Moved,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};

    /// (the test's client end, River's client end, River's upstream end,
    /// the test's upstream end), in memory.
    fn sides(capacity: usize) -> (DuplexStream, DuplexStream, DuplexStream, DuplexStream) {
        let (client, river_client) = duplex(capacity);
        let (river_up, upstream) = duplex(capacity);
        (client, river_client, river_up, upstream)
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        (a, b)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn copies_both_ways_and_passes_a_half_close_on() {
        let (mut client, a, b, mut upstream) = sides(1024);
        let mut pipe = Pipe::new(a, b).with_early_bytes(b"early", b"");
        let run = tokio::spawn(async move {
            let stop = pipe.run(HOUR, std::future::pending()).await;
            (stop, pipe.up.bytes, pipe.down.bytes)
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        // The upstream sees the bytes, then the client's end.
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still works after the half-close.
        upstream.write_all(b"world").await.unwrap();
        let mut back = [0u8; 10];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"earlyworld");
        upstream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert_eq!(run.await.unwrap(), (Stop::Done, 5, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_either_way_ends_the_tunnel_at_the_idle_limit() {
        let (mut client, a, b, mut upstream) = sides(1024);
        let started = Instant::now();
        let run = tokio::spawn(async move {
            let mut pipe = Pipe::new(a, b);
            let stop = pipe
                .run(Duration::from_secs(60), std::future::pending())
                .await;
            (stop, Instant::now())
        });
        // Traffic at 50 s, one way only, keeps it open past 60 s.
        tokio::time::sleep(Duration::from_secs(50)).await;
        upstream.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        client.read_exact(&mut one).await.unwrap();
        let (stop, ended) = run.await.unwrap();
        assert_eq!(stop, Stop::IdleTimeout);
        let lived = ended - started;
        assert!(
            lived >= Duration::from_secs(110) && lived < Duration::from_secs(112),
            "{lived:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_stalls_the_writer_not_rivers_memory() {
        // The in-memory streams hold 4 KiB each way: the upstream never reads.
        let (mut client, a, b, mut upstream) = sides(4096);
        let run =
            tokio::spawn(async move { Pipe::new(a, b).run(HOUR, std::future::pending()).await });
        let sent = Arc::new(AtomicBool::new(false));
        let done = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&vec![7u8; 1 << 20]).await.unwrap();
            done.store(true, Ordering::SeqCst);
            client
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !sent.load(Ordering::SeqCst),
            "1 MiB went into a tunnel nobody reads"
        );
        // Then the upstream reads: everything arrives, in order.
        let mut got = vec![0u8; 1 << 20];
        upstream.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
        let _client = writer.await.unwrap();
        run.abort();
    }

    /// Held back by the test: while a direction's sink does not read, River
    /// keeps at most one chunk for it.
    #[tokio::test]
    async fn a_stalled_direction_holds_at_most_one_chunk() {
        let (mut client, a, b, _upstream) = sides(4096);
        let mut pipe = Pipe::new(a, b);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&vec![1u8; 1 << 20]).await;
        });
        let stop = tokio::time::timeout(
            Duration::from_millis(300),
            pipe.run(HOUR, std::future::pending()),
        )
        .await;
        assert!(stop.is_err(), "the pipe ended: {stop:?}");
        assert!(pipe.up.pending.len() <= CHUNK, "{}", pipe.up.pending.len());
        assert!(pipe.up.bytes <= 4096, "{}", pipe.up.bytes);
        writer.abort();
    }

    /// Large writes both ways, a pause in the middle, then a new pipe on the
    /// same sockets (what a handoff does across processes): every byte
    /// arrives once, in order.
    #[tokio::test]
    async fn a_pause_mid_transfer_loses_and_duplicates_nothing() {
        const TOTAL: usize = 8 << 20;
        let pattern = |i: usize, salt: usize| ((i * 31 + salt) % 251) as u8;
        let (client, river_client) = tcp_pair().await;
        let (river_up, upstream) = tcp_pair().await;
        let pump = |stream: TcpStream, salt: usize| async move {
            let (mut r, mut w) = stream.into_split();
            let send = tokio::spawn(async move {
                let data: Vec<u8> = (0..TOTAL).map(|i| pattern(i, salt)).collect();
                for chunk in data.chunks(100_000) {
                    w.write_all(chunk).await.unwrap();
                }
                w
            });
            let mut got = vec![0u8; TOTAL];
            r.read_exact(&mut got).await.unwrap();
            let _w = send.await.unwrap();
            got
        };
        let client_side = tokio::spawn(pump(client, 1));
        let upstream_side = tokio::spawn(pump(upstream, 2));

        let mut pipe = Pipe::new(river_client, river_up);
        let mut pauses = 0;
        loop {
            let pause = tokio::time::sleep(Duration::from_millis(5));
            match pipe.run(HOUR, pause).await {
                Stop::Paused => {
                    pauses += 1;
                    // Rebuild as a receiving worker would.
                    let (to_client, to_upstream) = pipe.carried();
                    let (mut up, mut down) =
                        (std::mem::take(&mut pipe.up), std::mem::take(&mut pipe.down));
                    // What is carried travels; the copy in the old state goes.
                    up.pending.clear();
                    down.pending.clear();
                    pipe = Pipe {
                        client: pipe.client,
                        upstream: pipe.upstream,
                        up: Half::resumed(up.bytes, up.is_done(), to_upstream),
                        down: Half::resumed(down.bytes, down.is_done(), to_client),
                    };
                    if pipe.up.bytes as usize == TOTAL && pipe.down.bytes as usize == TOTAL {
                        break;
                    }
                }
                Stop::Done => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(pauses > 2, "{pauses}");
        let at_client = client_side.await.unwrap();
        let at_upstream = upstream_side.await.unwrap();
        assert!(at_client
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i, 2)));
        assert!(at_upstream
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i, 1)));
    }

    /// A pause whose sink will not take the bytes read gives up after
    /// PAUSE_FLUSH and carries them.
    #[tokio::test]
    async fn a_pause_against_a_full_sink_carries_what_it_read() {
        let (mut client, a, b, mut upstream) = sides(1024);
        let mut pipe = Pipe::new(a, b);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&[5u8; 3000]).await;
            client
        });
        let pause = tokio::time::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        assert_eq!(pipe.run(HOUR, pause).await, Stop::Paused);
        assert!(started.elapsed() >= Duration::from_millis(50) + PAUSE_FLUSH);
        let (to_client, to_upstream) = pipe.carried();
        assert!(to_client.is_empty());
        assert!(!to_upstream.is_empty() && to_upstream.len() <= CHUNK);
        // Written, then carried, then still in the client's socket: each
        // byte in exactly one place.
        let written = pipe.up.bytes as usize;
        let mut got = vec![0u8; written];
        upstream.read_exact(&mut got).await.unwrap();
        let mut rest = Vec::new();
        drop(pipe);
        let _ = writer.await;
        let _ =
            tokio::time::timeout(Duration::from_millis(100), upstream.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "read after the pause: {}", rest.len());
        assert!(written + to_upstream.len() <= 3000);
    }

    fn socket2_linger_zero(stream: &TcpStream) {
        use std::os::fd::AsFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        nix::sys::socket::setsockopt(&stream.as_fd(), nix::sys::socket::sockopt::Linger, &linger)
            .unwrap();
    }

    #[tokio::test]
    async fn a_reset_side_ends_the_tunnel() {
        let (client, river_client) = tcp_pair().await;
        let (river_up, _upstream) = tcp_pair().await;
        // SO_LINGER 0: the close is a reset.
        socket2_linger_zero(&client);
        let mut pipe = Pipe::new(river_client, river_up);
        drop(client);
        let stop = tokio::time::timeout(
            Duration::from_secs(5),
            pipe.run(HOUR, std::future::pending()),
        )
        .await;
        assert_eq!(stop, Ok(Stop::Failed(Side::Client)));
    }
}

//! One HTTP/1 client connection: the keep-alive loop, the request head
//! deadline, the message model applied to every request head, and then, per
//! request, River's own forwarder (`forward.rs`) or the general path
//! (pingora, behind [`General`]) with the bytes read so far put back.
//!
//! Every HTTP/1 request of every service passes here first, so the head
//! rules of `head.rs` (Host, framing, sizes) and the head deadline
//! (`client-header-secs`, a whole head including the wait for it) hold on
//! both paths. h2 connections never come here (`front.rs`).
//!
//! An idle keep-alive connection holds no buffer: the next request is read
//! into a per-thread scratch buffer and only copied into a buffer of its own
//! once bytes arrive, the per-request work lives in its own allocation, and
//! its wait holds one `Notified` for both its deadline and the worker's
//! wake-up (`alarm.rs`), no timer of its own.
//!
//! With connection handoff (`handoff.rs`), a plaintext connection is
//! *movable*: its responses keep it open even while the worker drains, and
//! once it is idle in a draining worker it offers its socket to the serving
//! generation; one that stays answers its next request with
//! `Connection: close`, as without handoff. An upgrade request on a movable
//! connection to plain HTTP/1.1 upstreams becomes River's own tunnel after
//! the `101` (`tunnel/`).

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use river_config::Timeouts;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::access_log::{AccessLog, Entry};
use crate::content::respond::{reason, status_body};
use crate::handoff::{duplicate, Handoff, Plain};
use crate::http1::alarm::Alarm;
use crate::http1::body::Framing;
use crate::http1::forward::{Forwarder, Job, Switched};
use crate::http1::head::{self, Parsed, RequestError, FAST_HEADERS, MAX_HEADERS};
use crate::http1::rewind::Rewind;
use crate::stats::ServiceStats;
use crate::tunnel::{self, Tunnel};

/// Bytes read at a time for a request head.
const HEAD_CHUNK: usize = 4096;
/// Between requests a connection keeps no buffer larger than this (a
/// pipelined request already read stays where it is).
const IDLE_BUFFER_MAX: usize = 16 * 1024;

thread_local! {
    /// Where an idle connection's next request is first read: the bytes are
    /// copied into the connection's own buffer only when there are some, so
    /// thousands of idle connections hold no read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

/// The general path: pingora's proxy, for one request at a time.
#[async_trait]
pub trait General: Send + Sync {
    /// Serve exactly one request, whose head (and maybe more) is at the
    /// front of `stream`. Returns the stream when the connection may carry
    /// another request, `None` when it is closed.
    async fn serve_one(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>;
}

/// The HTTP/1 side of one service.
pub struct Http1<G> {
    general: G,
    forwarder: Option<Forwarder>,
    access_log: Option<AccessLog>,
    stats: ServiceStats,
    client_header: Duration,
    /// Wakes connections waiting for a head: at their deadline, or between
    /// requests to close (no generation takes over) or to be handed over.
    alarm: Arc<Alarm>,
    /// Idle connections close when woken: no generation takes over.
    closing: AtomicBool,
    /// With `connection-handoff true`: where movable connections go when
    /// the worker drains, and River's tunnels (which exist only then).
    handoff: Option<Arc<Handoff>>,
    tunnels: tunnel::Context,
}

/// One client connection's state between requests: small, no buffer while
/// idle.
pub struct Conn {
    pub down: Stream,
    pub client: Option<IpAddr>,
    pub https: bool,
    /// Bytes from the client not yet used: the start of the next request.
    pub buf: BytesMut,
    /// An offer to hand it over was refused: it stays, and drains.
    pub stays: bool,
}

/// What happened to one request, for the access log.
pub struct Outcome {
    pub status: u16,
    pub bytes_sent: usize,
    pub upstream: Option<SocketAddr>,
    /// The client connection may carry another request.
    pub keep_alive: bool,
    /// Why the request did not end normally (a timeout, broken framing...).
    pub error: Option<&'static str>,
    /// The upstream switched protocols (101): a tunnel follows.
    pub switched: Option<Box<Switched>>,
}

/// What to do with a complete request head.
enum Decision {
    Partial,
    Refuse(RequestError),
    General,
    Fast(Box<Job>),
}

enum HeadRead {
    More,
    Closed,
    TimedOut,
    /// The worker drains with handoff: offer the idle connection.
    Handoff,
}

/// What became of a connection after one request on the fast path.
enum Served {
    KeepGoing,
    Closed,
    Upgraded(Box<Upgraded>),
}

/// An upgrade the upstream accepted, for the tunnel.
struct Upgraded {
    switched: Box<Switched>,
    method: String,
    path: String,
    started: std::time::SystemTime,
}

impl<G: General> Http1<G> {
    /// `service` names the service for handed-over connections; `handoff`
    /// is the worker's hub with `connection-handoff true`.
    pub fn new(
        general: G,
        forwarder: Option<Forwarder>,
        access_log: Option<AccessLog>,
        stats: ServiceStats,
        timeouts: &Timeouts,
        service: &str,
        handoff: Option<Arc<Handoff>>,
    ) -> Self {
        let tunnels = tunnel::Context {
            service: service.into(),
            access_log: access_log.clone(),
            stats: stats.clone(),
            idle: Duration::from_secs(timeouts.tunnel_idle_secs),
            handoff: handoff.clone(),
        };
        Http1 {
            general,
            forwarder,
            access_log,
            stats,
            client_header: Duration::from_secs(timeouts.client_header_secs),
            alarm: Alarm::new(),
            closing: AtomicBool::new(false),
            handoff,
            tunnels,
        }
    }

    /// Serve a tunnel handed over by a draining worker, to its end.
    pub async fn resume_tunnel(&self, tunnel: Tunnel) {
        tunnel::serve(&self.tunnels, tunnel).await;
    }

    /// A connection that may move: plaintext, with handoff on, not refused.
    fn movable(&self, c: &Conn) -> bool {
        self.handoff.is_some() && !c.https && !c.stays
    }

    /// The shutdown flag this connection's next request sees: a movable one
    /// stays open while handoff is possible; one that stays drains.
    fn shutdown_for<'a>(&'a self, c: &Conn, shutdown: &'a ShutdownWatch) -> &'a ShutdownWatch {
        match &self.handoff {
            Some(hub) if !c.https => hub.keep_alive_flag(c.stays).unwrap_or(shutdown),
            _ => shutdown,
        }
    }

    /// The worker drains: keep no upstream connection from now on.
    pub fn begin_drain(&self) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.begin_drain();
        }
    }

    /// Service discovery removed `removed`: close their idle pooled
    /// connections.
    pub fn forget_upstreams(&self, removed: &[SocketAddr]) {
        if let Some(forwarder) = &self.forwarder {
            forwarder.pool().forget(removed);
        }
    }

    /// No generation takes over (shutdown, master gone): connections
    /// waiting for a next request close when woken, now or by a later turn
    /// of the alarm (those that can still move offer themselves first,
    /// while the hub is active). One that starts waiting after this reads
    /// its request first: it may have been sent already.
    pub fn close_idle(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.alarm.wake_all();
    }

    /// The worker's handoff hub turned active: wake the idle connections,
    /// which offer themselves if they can move.
    pub fn wake_idle(&self) {
        self.alarm.wake_all();
    }

    /// Serve `down` until it closes.
    pub async fn serve(&self, down: Stream, shutdown: &ShutdownWatch) {
        self.alarm.ensure_ticking();
        let client = down
            .get_socket_digest()
            .and_then(|d| Some(d.peer_addr()?.as_inet()?.ip()));
        let mut c = Conn {
            https: down.get_ssl_digest().is_some(),
            down,
            client,
            buf: BytesMut::new(),
            stays: false,
        };
        loop {
            // The whole head, idle wait included, within one deadline: a
            // client trickling bytes cannot hold the connection longer.
            let deadline = tokio::time::Instant::now() + self.client_header;
            // Bytes of `c.buf` already parsed as a partial head: a head only
            // completes with a line feed, so bytes without one are not parsed
            // again (a head trickled in small pieces costs linear time).
            // (u32: a head is at most 64 KiB, and the connection's future is
            // kept small.)
            let mut parsed = 0u32;
            let decision = loop {
                let fresh = &c.buf[(parsed as usize).min(c.buf.len())..];
                if !c.buf.is_empty() && (fresh.contains(&b'\n') || c.buf.len() >= head::MAX_HEAD) {
                    match self.decide(&c) {
                        Decision::Partial => parsed = c.buf.len() as u32,
                        decision => break decision,
                    }
                }
                match self.read_head(&mut c, &deadline).await {
                    HeadRead::More => {}
                    HeadRead::Closed => {
                        if !c.buf.is_empty() {
                            tracing::debug!("client closed in the middle of a request head");
                        }
                        return;
                    }
                    HeadRead::TimedOut => {
                        if !c.buf.is_empty() {
                            // Part of a head, then silence: nginx's 408.
                            let why = "client-header-timeout";
                            Box::pin(self.refuse(&mut c, 408, why)).await;
                        }
                        return;
                    }
                    HeadRead::Handoff => {
                        if Box::pin(self.hand_over_idle(&mut c)).await {
                            return;
                        }
                        // It stays: its next request is answered with close,
                        // or at once when nothing will take over any more
                        // (graceful shutdown), as idle connections are then.
                        c.stays = true;
                        if self.handoff.as_ref().is_some_and(|hub| !hub.possible()) {
                            return;
                        }
                    }
                }
            };
            // A movable connection stays open after its response while it
            // may still move; one that stays drains as before.
            let shutdown = self.shutdown_for(&c, shutdown);
            // What follows, but for the hand-over to pingora (whose state is
            // boxed already), runs in its own allocation: the connection's
            // future is as large as its largest state, and it lives as long as
            // the connection, idle most of the time.
            match decision {
                Decision::Partial => unreachable!("the loop above only ends on a decision"),
                Decision::Refuse(err) => {
                    // After a head River cannot read, the rest of the
                    // connection cannot be framed: answer and close.
                    Box::pin(self.refuse(&mut c, err.status(), err.code())).await;
                    return;
                }
                Decision::General => {
                    let buf = for_pingora(std::mem::take(&mut c.buf));
                    let stream: Stream = Box::new(Rewind::new(buf, c.down));
                    let Some(back) = self.general.serve_one(stream, shutdown).await else {
                        return;
                    };
                    match back.into_any().downcast::<Rewind>() {
                        Ok(rewind) => (c.buf, c.down) = rewind.into_parts(),
                        Err(_) => {
                            tracing::error!("pingora returned a stream River did not give it");
                            return;
                        }
                    }
                }
                Decision::Fast(job) => match Box::pin(self.forward(&mut c, job, shutdown)).await {
                    Served::KeepGoing => {}
                    Served::Closed => return,
                    Served::Upgraded(upgraded) => {
                        Box::pin(self.tunnel(c, *upgraded)).await;
                        return;
                    }
                },
            }
            // Idle again: a large body grew the buffer; keep none of it.
            if c.buf.is_empty() {
                c.buf = BytesMut::new();
            } else if c.buf.capacity() > IDLE_BUFFER_MAX && c.buf.len() <= IDLE_BUFFER_MAX {
                c.buf = BytesMut::from(&c.buf[..]);
            }
        }
    }

    /// Serve `job` on the fast path and log it (an upgrade is logged when
    /// its tunnel ends).
    async fn forward(&self, c: &mut Conn, mut job: Box<Job>, shutdown: &ShutdownWatch) -> Served {
        let Some(forwarder) = &self.forwarder else {
            return Served::Closed;
        };
        let started = Instant::now();
        let wall = std::time::SystemTime::now();
        let declared_body = job.declared_body();
        let mut outcome = forwarder.handle(c, &mut job, shutdown).await;
        if let Some(switched) = outcome.switched.take() {
            return Served::Upgraded(Box::new(Upgraded {
                switched,
                method: job.method().to_owned(),
                path: job.path().to_owned(),
                started: wall,
            }));
        }
        // The body counts as received once forwarded upstream.
        let received = outcome.upstream.map_or(0, |_| declared_body);
        self.log(c, job.method(), job.path(), started, &outcome, received);
        if !outcome.keep_alive || c.down.flush().await.is_err() {
            let _ = c.down.shutdown().await;
            return Served::Closed;
        }
        Served::KeepGoing
    }

    /// The upstream switched protocols: copy both ways until the tunnel
    /// ends (or moves to another worker).
    async fn tunnel(&self, c: Conn, upgraded: Upgraded) {
        let Upgraded {
            switched,
            method,
            path,
            started,
        } = upgraded;
        // The tunnel runs on the bare socket (the write buffer is flushed):
        // a duplicate of its descriptor, so that the pipe owns a socket it
        // can hand over. Dropping the stream closes only the original.
        let client = match duplicate(c.down.id()).and_then(Plain::from_fd) {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "cannot take over an upgraded connection");
                return;
            }
        };
        let Conn { down, buf, .. } = c;
        drop(down);
        let Switched {
            up,
            upstream,
            early,
        } = *switched;
        let pipe = tunnel::pipe::Pipe::new(client, up).with_early_bytes(&early, &buf);
        let meta = tunnel::Meta {
            client: pipe.client.peer(),
            method,
            path,
            upstream,
            started_unix_micros: tunnel::unix_micros(started),
        };
        tunnel::serve(&self.tunnels, Tunnel { pipe, meta }).await;
    }

    /// Offer an idle connection to the serving generation; true if it moved
    /// (its socket lives on there; this copy is dropped, not shut down).
    async fn hand_over_idle(&self, c: &mut Conn) -> bool {
        let Some(hub) = &self.handoff else {
            return false;
        };
        // Nothing of a response may stay behind in the write buffer.
        if c.down.flush().await.is_err() {
            return true;
        }
        let fd = match duplicate(c.down.id()) {
            Ok(fd) => fd,
            Err(err) => {
                tracing::debug!(error = %err, "cannot duplicate an idle connection");
                return false;
            }
        };
        // As `serve` reads it: the socket digest's peer.
        let client = c
            .down
            .get_socket_digest()
            .and_then(|d| d.peer_addr()?.as_inet().copied());
        let conn = river_ipc::HandedConn::Idle(river_ipc::HandedIdle {
            service: self.tunnels.service.to_string(),
            client,
            tls: false,
        });
        hub.offer(conn, vec![fd]).await
    }

    /// Answer `status` to the head in `c.buf` and close the connection; the
    /// log says `why`.
    async fn refuse(&self, c: &mut Conn, status: u16, why: &'static str) {
        let started = Instant::now();
        let head_only = c.buf.starts_with(b"HEAD ");
        let outcome = answer(c, status, head_only, false).await;
        let _ = c.down.flush().await;
        let _ = c.down.shutdown().await;
        self.log_refusal(c, started, outcome, why);
    }

    /// Parse the head at the start of `c.buf` and decide who serves it.
    fn decide(&self, c: &Conn) -> Decision {
        with_request_head(&c.buf, |parsed| match parsed {
            Err(RequestError::Malformed) if unsupported_version(&c.buf) => {
                // A well-formed request line of another HTTP version:
                // pingora answers it (505, or 400) as it always has.
                Decision::General
            }
            Err(err) => Decision::Refuse(err),
            Ok(Parsed::Partial) => Decision::Partial,
            Ok(Parsed::Complete((request, headers))) => {
                // Upgrades become River's tunnels only on movable
                // connections: TLS ones stay with pingora.
                let upgrades = self.handoff.is_some() && !c.https;
                let job = self
                    .forwarder
                    .as_ref()
                    .and_then(|f| f.prepare(&request, headers, c.client, c.https, upgrades));
                match job {
                    Some(job) => Decision::Fast(Box::new(job)),
                    None => Decision::General,
                }
            }
        })
    }

    /// Read more of a request head until `deadline`; between requests, give
    /// up at once when told to close idle connections, or to offer them for
    /// handoff (one wake-up serves both: the hub says which).
    async fn read_head(&self, c: &mut Conn, deadline: &tokio::time::Instant) -> HeadRead {
        let idle = c.buf.is_empty();
        // Created before the checks: a wake-up from here on is not lost.
        let woken = self.alarm.until(*deadline);
        if tokio::time::Instant::now() >= *deadline {
            // Its slot may have fired already: read what is there (as a
            // timer polled after the read would let it), else time out.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let read = std::pin::pin!(read_some(&mut c.down, &mut c.buf));
            return match std::future::Future::poll(read, &mut cx) {
                Poll::Ready(Ok(0) | Err(_)) => HeadRead::Closed,
                Poll::Ready(Ok(_)) => HeadRead::More,
                Poll::Pending => HeadRead::TimedOut,
            };
        }
        if idle && self.handoff_wanted(c) {
            return HeadRead::Handoff;
        }
        tokio::select! {
            biased;
            read = read_some(&mut c.down, &mut c.buf) => match read {
                Ok(0) | Err(_) => HeadRead::Closed,
                Ok(_) => HeadRead::More,
            },
            _ = woken => {
                if tokio::time::Instant::now() >= *deadline {
                    HeadRead::TimedOut
                } else if !idle {
                    // Not yet its deadline (an early turn of the alarm's
                    // ring, or a wake-up for idle ones): read on.
                    HeadRead::More
                } else if self.handoff_wanted(c) {
                    HeadRead::Handoff
                } else if self.handoff.as_ref().is_some_and(|hub| hub.is_active()) {
                    // The wake-up was for movable connections (the worker
                    // drains with handoff): one that cannot move (TLS, or
                    // refused) waits for its next request, answered with
                    // `Connection: close`, as without handoff. Closing it
                    // now would race a request the client is sending.
                    HeadRead::More
                } else if self.closing.load(Ordering::Relaxed) {
                    HeadRead::Closed
                } else {
                    HeadRead::More
                }
            }
        }
    }

    /// The worker drains with handoff and this connection may move.
    fn handoff_wanted(&self, c: &Conn) -> bool {
        self.movable(c) && self.handoff.as_ref().is_some_and(|hub| hub.is_active())
    }

    fn log_refusal(&self, c: &Conn, started: Instant, outcome: Outcome, why: &'static str) {
        let outcome = Outcome {
            error: Some(why),
            ..outcome
        };
        let (method, path) = request_line_words(&c.buf);
        self.log(c, &method, &path, started, &outcome, 0);
    }

    /// The one place a request served here (fast path or refusal) is
    /// finished: the access log line.
    fn log(
        &self,
        c: &Conn,
        method: &str,
        path: &str,
        started: Instant,
        outcome: &Outcome,
        received: u64,
    ) {
        let duration = started.elapsed();
        // metrics: river_requests_total, river_request_duration_seconds,
        // river_bytes_*_total
        self.stats.request_done(
            outcome.status,
            duration,
            received,
            outcome.bytes_sent as u64,
        );
        let Some(log) = &self.access_log else {
            return;
        };
        let upstream = outcome.upstream.map(|a| a.to_string());
        log.log(&Entry {
            client: c.client,
            method,
            path,
            status: outcome.status,
            bytes_sent: outcome.bytes_sent,
            upstream: upstream.as_deref(),
            duration,
            error: outcome.error,
        });
    }
}

/// Run `f` on the request head at the start of `buf`, parsed with room for
/// [`FAST_HEADERS`] lines on the stack, or up to [`MAX_HEADERS`] when it has
/// more.
pub fn with_request_head<R>(
    buf: &[u8],
    f: impl FnOnce(Result<Parsed<(head::Request<'_>, &[httparse::Header<'_>])>, RequestError>) -> R,
) -> R {
    let mut headers = [httparse::EMPTY_HEADER; FAST_HEADERS];
    match head::parse_request(buf, &mut headers) {
        Err(RequestError::TooManyHeaders) => many_headers(buf, f),
        parsed => f(parsed),
    }
}

#[cold]
fn many_headers<R>(
    buf: &[u8],
    f: impl FnOnce(Result<Parsed<(head::Request<'_>, &[httparse::Header<'_>])>, RequestError>) -> R,
) -> R {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    f(head::parse_request(buf, &mut headers))
}

/// Whether the head's request line is well formed but for its HTTP version
/// (`HTTP/1.2`, `HTTP/2.0`): three words, a method of capitals. A request
/// line with bytes httparse refuses in the target (a control byte, a space
/// that makes a fourth word) is not: RFC 9112 §3.2 says not to auto-correct
/// it (pingora would escape it), and River answers 400.
fn unsupported_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let words = line
        .strip_suffix(b"\r")
        .unwrap_or(line)
        .split(|&b| b == b' ');
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    words.count() == 3
        && matches!(req.parse(line), Err(httparse::Error::Version))
        && line.first().is_some_and(u8::is_ascii_uppercase)
}

/// `buf`, starting with a request head for pingora, with that head
/// rewritten where pingora would read it differently (see
/// [`head_for_pingora`]). Parsed again here, off the connection's future:
/// only requests for pingora pay for it.
fn for_pingora(buf: BytesMut) -> BytesMut {
    let rewritten = with_request_head(&buf, |parsed| match parsed {
        Ok(Parsed::Complete((request, headers))) => {
            head_for_pingora(&buf, &request, headers).map(|head| (head, request.len))
        }
        _ => None,
    });
    let Some((head, len)) = rewritten else {
        return buf;
    };
    let mut out = BytesMut::from(&head[..]);
    out.extend_from_slice(&buf[len..]);
    out
}

/// A request head for pingora, rewritten where pingora would read it
/// differently from the model: a `Transfer-Encoding` the model reads as plain
/// `chunked` but pingora would not (`chunked, ` with an empty list element,
/// several field lines), and `Connection` over several lines (pingora reads
/// only the first: `keep-alive` then `close` would keep the connection). The
/// head again with one `Transfer-Encoding: chunked` line and one `Connection`
/// line listing every option, in order; None when it is fine as it is.
fn head_for_pingora(
    buf: &[u8],
    request: &head::Request<'_>,
    headers: &[httparse::Header<'_>],
) -> Option<Vec<u8>> {
    let named =
        |name: &'static str| move |h: &&httparse::Header<'_>| h.name.eq_ignore_ascii_case(name);
    let te_lines: Vec<&httparse::Header<'_>> =
        headers.iter().filter(named("transfer-encoding")).collect();
    let te_fine = match te_lines[..] {
        [] => true,
        [only] => only.value.trim_ascii().eq_ignore_ascii_case(b"chunked"),
        _ => false,
    };
    let rewrite_te = request.framing == Framing::Chunked && !te_fine;
    let connection: Vec<&httparse::Header<'_>> =
        headers.iter().filter(named("connection")).collect();
    let merge_connection = connection.len() > 1;
    if !rewrite_te && !merge_connection {
        return None;
    }
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let mut head = Vec::with_capacity(request.len);
    head.extend_from_slice(&buf[..=line_end]);
    let mut connection_written = false;
    for header in headers {
        let is_te = header.name.eq_ignore_ascii_case("transfer-encoding");
        let is_connection = header.name.eq_ignore_ascii_case("connection");
        if (is_te && rewrite_te) || (is_connection && merge_connection && connection_written) {
            continue;
        }
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        if is_connection && merge_connection {
            let options: Vec<&[u8]> = connection
                .iter()
                .flat_map(|h| h.value.split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|o| !o.is_empty())
                .collect();
            head.extend_from_slice(&options.join(&b", "[..]));
            connection_written = true;
        } else {
            head.extend_from_slice(header.value);
        }
        head.extend_from_slice(b"\r\n");
    }
    if rewrite_te {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Some(head)
}

/// Method and path of a request line, for the log of a refused request.
fn request_line_words(buf: &[u8]) -> (String, String) {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len().min(256))];
    let mut words = line.split(|&b| b == b' ');
    let word = |w: Option<&[u8]>| String::from_utf8_lossy(w.unwrap_or(b"")).into_owned();
    let method = word(words.next());
    let target = word(words.next());
    let path = target.split('?').next().unwrap_or("").to_owned();
    (method, path)
}

/// Read the next bytes of a request head into `buf` without holding a
/// buffer while waiting: they land in the thread's scratch buffer, then in
/// `buf` (allocated for them when it has no room). Same syscalls as a read
/// into `buf`; one small future, for the idle connection's state.
fn read_some<'a>(
    down: &'a mut Stream,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    poll_fn(move |cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *down).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Ready(Ok(())) => {
                    let got = read.filled();
                    if buf.capacity() - buf.len() < got.len() {
                        buf.reserve(got.len().max(HEAD_CHUNK));
                    }
                    buf.extend_from_slice(got);
                    Poll::Ready(Ok(got.len()))
                }
            }
        })
    })
}

/// Write a short response of River's own (an error or a refusal) and say
/// whether the connection may go on (`keep`).
pub async fn answer(c: &mut Conn, status: u16, head_only: bool, keep: bool) -> Outcome {
    let body = status_body(status);
    let mut out = Vec::with_capacity(128 + body.len());
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if keep { "" } else { "connection: close\r\n" }
    );
    let mut bytes_sent = 0;
    if !head_only {
        out.extend_from_slice(&body);
        bytes_sent = body.len();
    }
    let written = c.down.write_all(&out).await.is_ok();
    Outcome {
        status,
        bytes_sent,
        upstream: None,
        keep_alive: keep && written,
        error: None,
        switched: None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::service::Service;
    use pingora_core::protocols::l4::stream::Stream as L4Stream;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    #[test]
    fn refused_request_lines_are_named_for_the_log() {
        let (method, path) = request_line_words(b"GET /a?b HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/a"));
        let (method, path) = request_line_words(b"\x00\x01");
        assert_eq!((method.as_str(), path.as_str()), ("\u{0}\u{1}", ""));
    }

    #[test]
    fn only_another_http_version_goes_to_pingora() {
        assert!(unsupported_version(b"GET / HTTP/1.2\r\nhost: x\r\n\r\n"));
        // A space or a control byte in the target: refused, not escaped.
        assert!(!unsupported_version(
            b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n"
        ));
        assert!(!unsupported_version(
            b"GET /a\x01b HTTP/1.1\r\nhost: x\r\n\r\n"
        ));
        assert!(!unsupported_version(
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n"
        ));
        assert!(!unsupported_version(b"\x16\x03\x01\x00"));
    }

    /// The general path of the tests: records the bytes it was handed and
    /// closes the connection.
    #[derive(Default)]
    pub(crate) struct Recorder(Mutex<Vec<Vec<u8>>>);

    #[async_trait]
    impl General for Arc<Recorder> {
        async fn serve_one(&self, mut stream: Stream, _: &ShutdownWatch) -> Option<Stream> {
            let mut handed = vec![0u8; 64 * 1024];
            let n = stream.read(&mut handed).await.unwrap_or(0);
            handed.truncate(n);
            self.0.lock().unwrap().push(handed);
            None
        }
    }

    /// An upstream answering every request with `reply(request_head)`,
    /// keep-alive; the number of connections it accepted.
    pub(crate) async fn upstream(
        reply: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let reply = Arc::new(reply);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end + 4]).into_owned();
                            seen.drain(..end + 4);
                            let answer = reply(&head);
                            if answer.is_empty() {
                                return; // read the request, closed without answering
                            }
                            if answer != b"hang" && conn.write_all(&answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    pub(crate) const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// The HTTP/1 side of a service proxying to `upstream`, with `extra`
    /// service configuration, and what it handed to pingora.
    pub(crate) fn http1(
        upstream: SocketAddr,
        extra: &str,
    ) -> (Http1<Arc<Recorder>>, Arc<Recorder>) {
        let source = format!(
            "services {{ P {{ listeners {{ \"127.0.0.1:1\" }}\n connectors {{ \"{upstream}\" }}\n{extra} }} }}"
        );
        let config = river_config::parse(&source, "test.kdl").unwrap();
        let service = Service::build(
            &config.services[0],
            None,
            crate::stats::ServiceStats::detached(),
        )
        .unwrap();
        let forwarder =
            Forwarder::for_service(&service).expect("plain HTTP/1.1 upstreams take the fast path");
        let recorder = Arc::new(Recorder::default());
        let http1 = Http1::new(
            recorder.clone(),
            Some(forwarder),
            None,
            crate::stats::ServiceStats::detached(),
            &service.timeouts,
            "P",
            None,
        );
        (http1, recorder)
    }

    pub(crate) async fn ok_upstream() -> (Http1<Arc<Recorder>>, Arc<Recorder>, Arc<AtomicUsize>) {
        let (address, accepted) = upstream(|_| OK.to_vec()).await;
        let (http1, recorder) = http1(address, "");
        (http1, recorder, accepted)
    }

    /// A connected client socket, and the accepted end as pingora's stream.
    pub(crate) async fn connection() -> (TcpStream, Stream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, Box::new(L4Stream::from(accepted)))
    }

    /// Serve one connection on which the client sent `request` (and then
    /// its write side stays open); what the client received until River
    /// closed it.
    pub(crate) async fn exchange(http1: &Http1<Arc<Recorder>>, request: &[u8]) -> String {
        let (mut client, stream) = connection().await;
        client.write_all(request).await.unwrap();
        let (_tx, shutdown) = watch::channel(false);
        http1.serve(stream, &shutdown).await;
        let mut all = Vec::new();
        let _ = client.read_to_end(&mut all).await;
        String::from_utf8_lossy(&all).into_owned()
    }

    #[tokio::test]
    async fn forwards_plain_requests_and_hands_an_upgrade_to_pingora_intact() {
        let (http1, recorder, _) = ok_upstream().await;
        let upgrade =
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let answer = exchange(
            &http1,
            format!("GET /a HTTP/1.1\r\nHost: x\r\n\r\n{upgrade}").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert_eq!(*recorder.0.lock().unwrap(), [upgrade.as_bytes().to_vec()]);
    }

    #[tokio::test]
    async fn upstream_connections_are_reused_across_clients() {
        let (http1, _, accepted) = ok_upstream().await;
        for _ in 0..3 {
            let answer = exchange(
                &http1,
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(answer.ends_with("ok"), "{answer}");
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_draining_forwarder_keeps_no_upstream_connection() {
        let (http1, _, accepted) = ok_upstream().await;
        let close = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        exchange(&http1, close).await;
        let forwarder = http1.forwarder.as_ref().unwrap();
        assert_eq!(forwarder.pool().idle_count(), 1);
        http1.begin_drain();
        assert_eq!(forwarder.pool().idle_count(), 0);
        // Served on a new connection, which is not kept either.
        assert!(exchange(&http1, close).await.ends_with("ok"));
        assert_eq!(accepted.load(SeqCst), 2);
        assert_eq!(forwarder.pool().idle_count(), 0);
    }

    #[tokio::test]
    async fn http_1_0_goes_to_pingora_at_once() {
        let (http1, recorder, _) = ok_upstream().await;
        let answer = exchange(&http1, b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(answer, "");
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [b"GET / HTTP/1.0\r\n\r\n".to_vec()]
        );
    }

    /// RFC 9112 §3.2: a request without Host, with two, or with an invalid
    /// one gets 400 and reaches no upstream. (Before the model, the fast
    /// path forwarded two Hosts and invalid ones; pingora's path added one.)
    #[tokio::test]
    async fn host_rules_answer_400_before_any_path() {
        let (http1, recorder, accepted) = ok_upstream().await;
        for request in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ] {
            let answer = exchange(&http1, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
            assert!(answer.contains("connection: close\r\n"), "{answer}");
        }
        assert_eq!(accepted.load(SeqCst), 0);
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    /// Request framing River cannot read the way every recipient does is
    /// refused on both paths (the session decides before either): unknown
    /// codings 501 (nginx), TE with CL 400, disagreeing lengths 400.
    #[tokio::test]
    async fn request_framing_refusals() {
        let (http1, recorder, accepted) = ok_upstream().await;
        for (request, status) in [
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501"),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello", "400"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        ] {
            let answer = exchange(&http1, request.as_bytes()).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{request:?}: {answer}");
        }
        assert_eq!(accepted.load(SeqCst), 0);
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    /// Mangled requests never panic the parser, and whatever the fast path
    /// accepts goes upstream as one well-formed head: no header injected by
    /// CR or LF, no second request smuggled in, no hop-by-hop field.
    #[tokio::test]
    async fn mangled_requests_are_refused_or_forwarded_well_formed() {
        let (http1, _, _) = ok_upstream().await;
        let forwarder = http1.forwarder.as_ref().unwrap();
        let client: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let seeds: [&[u8]; 4] = [
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            b"HEAD / HTTP/1.1\r\nhost: x\r\nkeep-alive: 5\r\naccept: */*\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nProxy-Authorization: a\r\nContent-Length: 0,0\r\n\r\n",
        ];
        let noise = b"\r\n: \t\0\x7f\xffGET/HTTP1.0chunked,close";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let mut ready = 0;
        for round in 0..20_000 {
            let mut bytes = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() % (bytes.len() + 1);
                let byte = noise[next() % noise.len()];
                match next() % 3 {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => bytes[at] = byte,
                    _ => bytes.truncate(at),
                }
            }
            let job = with_request_head(&bytes, |parsed| match parsed {
                Ok(Parsed::Complete((req, headers))) => {
                    forwarder.prepare(&req, headers, client, false, true)
                }
                _ => None,
            });
            let Some(job) = job else { continue };
            ready += 1;
            let out = job.upstream_head();
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
            let mut upstream = httparse::Request::new(&mut headers);
            assert_eq!(
                upstream.parse(out),
                Ok(httparse::Status::Complete(out.len())),
                "{:?} became {:?}",
                String::from_utf8_lossy(&bytes),
                String::from_utf8_lossy(out)
            );
            let names: Vec<String> = upstream
                .headers
                .iter()
                .map(|h| h.name.to_ascii_lowercase())
                .collect();
            assert_eq!(
                names.iter().filter(|n| *n == "host").count(),
                1,
                "{names:?}"
            );
            for name in &names {
                assert!(!head::is_hop_by_hop(name.as_bytes()), "{names:?}");
            }
            assert!(names.iter().filter(|n| *n == "content-length").count() <= 1);
            assert_eq!(names.iter().filter(|n| *n == "x-forwarded-for").count(), 1);
        }
        // The mangling leaves enough requests intact to mean something.
        assert!(ready > 1000, "only {ready} parsed");
    }

    /// A client sending its head a byte every 30 s is cut off at the 60 s
    /// head deadline with a 408, not kept as long as it keeps trickling.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_off_at_the_deadline() {
        let (http1, _, _) = ok_upstream().await;
        let (mut client, stream) = connection().await;
        let started = tokio::time::Instant::now();
        let trickle = tokio::spawn(async move {
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
                if client.write_all(&[*byte]).await.is_err() {
                    return String::new();
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let mut all = String::new();
            let _ = client.read_to_string(&mut all).await;
            all
        });
        let (_tx, shutdown) = watch::channel(false);
        http1.serve(stream, &shutdown).await;
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(90), "cut off after {waited:?}");
        trickle.abort();
    }

    /// The deadline covers heads pingora would get too: a slowloris head
    /// that turns out to be an upgrade is cut off the same (before, a head
    /// the fast path handed over was timed per read only).
    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_for_pingora_gets_408() {
        let (http1, recorder, _) = ok_upstream().await;
        let (mut client, stream) = connection().await;
        client
            .write_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n")
            .await
            .unwrap();
        let (_tx, shutdown) = watch::channel(false);
        let started = tokio::time::Instant::now();
        let (mut reader, mut writer) = client.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if writer.write_all(b"X-A: b\r\n").await.is_err() {
                    break;
                }
            }
        });
        http1.serve(stream, &shutdown).await;
        assert!(started.elapsed() < Duration::from_secs(70));
        trickle.abort();
        let mut all = String::new();
        let _ = reader.read_to_string(&mut all).await;
        assert!(all.starts_with("HTTP/1.1 408 "), "{all}");
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn close_and_draining_end_the_connection_after_the_response() {
        let (http1, _, _) = ok_upstream().await;
        for (request, draining) in [
            (
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", true),
        ] {
            let (mut client, stream) = connection().await;
            client.write_all(request.as_bytes()).await.unwrap();
            let (_tx, shutdown) = watch::channel(draining);
            http1.serve(stream, &shutdown).await;
            let mut all = String::new();
            client.read_to_string(&mut all).await.unwrap();
            assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
            assert!(all.ends_with("ok"), "{all}");
        }
    }
}

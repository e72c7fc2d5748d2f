//! HTTP/1.1 proxying without pingora-proxy's per-request machinery.
//!
//! Profiles put a River worker on pingora-proxy's path at about 4× nginx's
//! user-space CPU per proxied request: a header map per message, a clone of the
//! request header, two futures joined over channels per request, large futures
//! moved around. The common case, a plain HTTP/1.1 request to upstreams that
//! speak plain HTTP/1.1, does not need any of it. Here, as in nginx, header
//! lines are copied from one buffer to the other, with the policies of the
//! pingora path in `proxy/app.rs`: admission (CIDR, rate limits), selection and
//! retries, header filters, X-Forwarded-*, access log, draining.
//!
//! Anything else goes to pingora with the bytes read so far put back in front
//! ([`Rewind`]): h2, upgrades (WebSocket), chunked or `Expect` uploads,
//! HTTP/1.0, unusual `Connection` tokens, absolute-form targets, anything
//! httparse or this module would have to guess about. So the odd cases keep
//! pingora's tested behaviour, and the fast path stays small.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::access_log::{AccessLog, Entry};
use crate::content::respond::{reason, status_body};
use crate::http1::chunked::ChunkedScanner;
use crate::http1::pool::Pool;
use crate::http1::rewind::Rewind;
use crate::policy::headers::HeaderPlan;
use crate::proxy::upstreams::CONNECT_TIMEOUT;
use crate::service::{Logic, Proxy, Service};

/// Requests with more header lines go to pingora (which allows more, or
/// answers the error).
const MAX_HEADERS: usize = 128;
/// A request or response head larger than this is not for the fast path.
const MAX_HEAD: usize = 64 * 1024;
/// As pingora: a keep-alive connection idle for this long is closed. A
/// request head must also be complete by then (nginx's client_header_timeout).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Read size for bodies.
const BODY_CHUNK: usize = 64 * 1024;
/// Between requests a connection keeps buffers up to this size.
const IDLE_BUFFER_MAX: usize = 16 * 1024;

/// The fast path of one proxy service.
pub struct Forwarder {
    proxy: Arc<Proxy>,
    access_log: Option<AccessLog>,
    request_plan: HeaderPlan,
    response_plan: HeaderPlan,
    pool: Pool,
    /// Wakes connections waiting between requests to close (no generation
    /// takes over).
    idle_close: Notify,
}

/// One client connection's state, reused from request to request.
struct Connection {
    down: Stream,
    client: Option<IpAddr>,
    https: bool,
    /// Bytes from the client not yet forwarded.
    buf: BytesMut,
    /// Bytes from the upstream not yet forwarded.
    resp: BytesMut,
    /// The head being written (to the upstream, then to the client).
    out: Vec<u8>,
    /// The current request's method and path, for the log and the policies.
    method: String,
    path: String,
}

impl Connection {
    fn shrink(&mut self) {
        for buf in [&mut self.buf, &mut self.resp] {
            if buf.capacity() > IDLE_BUFFER_MAX && buf.len() <= IDLE_BUFFER_MAX {
                let mut small = BytesMut::with_capacity(IDLE_BUFFER_MAX);
                small.extend_from_slice(buf);
                *buf = small;
            }
        }
    }
}

/// The parts of a request head the forwarder acts on.
struct Request {
    head_len: usize,
    body_len: u64,
    head_only: bool,
    client_close: bool,
}

enum Parsed {
    Partial,
    /// Not for the fast path: pingora takes the connection.
    Pass,
    Ready(Request),
}

/// What happened to one request, for the access log.
struct Outcome {
    status: u16,
    bytes_sent: usize,
    upstream: Option<SocketAddr>,
    keep_alive: bool,
}

/// Why an exchange with an upstream failed.
enum Failure {
    /// A pooled connection failed before any response byte: the upstream
    /// closed it meanwhile; the request may go again on a new connection.
    Stale,
    /// The upstream failed before the response head was sent on: 502.
    Upstream(String),
    /// The client went away, or the response broke off after its head was
    /// sent: the connection closes.
    Abort,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

impl Forwarder {
    /// The HTTP/1 fast path of `service`, if it is a proxy whose upstreams
    /// all speak plain HTTP/1.1 (TLS and h2 upstreams stay with pingora).
    pub fn for_service(service: &Service) -> Option<Forwarder> {
        let Logic::Proxy(proxy) = &service.logic else {
            return None;
        };
        if !proxy.upstreams.all_plain_h1() {
            return None;
        }
        Some(Forwarder {
            proxy: proxy.clone(),
            access_log: service.access_log.clone(),
            request_plan: HeaderPlan::new(&proxy.upstream_request),
            response_plan: HeaderPlan::new(&proxy.upstream_response),
            pool: Pool::default(),
            idle_close: Notify::new(),
        })
    }

    /// The worker drains: keep no upstream connection from now on.
    pub fn begin_drain(&self) {
        self.pool.close();
    }

    /// Close the connections waiting for a next request (no generation
    /// takes over).
    pub fn close_idle(&self) {
        self.idle_close.notify_waiters();
    }

    /// Serve `down` until it closes, or return it (with what was read of the
    /// next request) for pingora.
    pub async fn serve(&self, down: Stream, shutdown: &ShutdownWatch) -> Option<Rewind> {
        let client = down
            .get_socket_digest()
            .and_then(|d| Some(d.peer_addr()?.as_inet()?.ip()));
        let mut c = Connection {
            https: down.get_ssl_digest().is_some(),
            down,
            client,
            buf: BytesMut::with_capacity(4096),
            resp: BytesMut::with_capacity(4096),
            out: Vec::with_capacity(1024),
            method: String::new(),
            path: String::new(),
        };
        loop {
            // The whole head, idle wait included, within one deadline: a client
            // trickling bytes cannot hold the connection longer.
            let deadline = tokio::time::Instant::now() + KEEPALIVE_IDLE;
            let request = loop {
                match self.parse_request(&mut c) {
                    Parsed::Ready(request) => break request,
                    Parsed::Pass => return Some(Rewind::new(c.buf, c.down)),
                    Parsed::Partial if c.buf.len() >= MAX_HEAD => {
                        return Some(Rewind::new(c.buf, c.down))
                    }
                    Parsed::Partial => {}
                }
                match self.read_request_bytes(&mut c, deadline).await {
                    Ok(0) | Err(_) => {
                        if !c.buf.is_empty() {
                            tracing::debug!("client closed in the middle of a request head");
                        }
                        return None;
                    }
                    Ok(_) => {}
                }
            };
            let started = Instant::now();
            c.buf.advance(request.head_len);
            let outcome = self.handle(&mut c, &request, shutdown).await;
            if let Some(log) = &self.access_log {
                let upstream = outcome.upstream.map(|a| a.to_string());
                log.log(&Entry {
                    client: c.client,
                    method: &c.method,
                    path: &c.path,
                    status: outcome.status,
                    bytes_sent: outcome.bytes_sent,
                    upstream: upstream.as_deref(),
                    duration: started.elapsed(),
                });
            }
            if !outcome.keep_alive || c.down.flush().await.is_err() {
                let _ = c.down.shutdown().await;
                return None;
            }
            // A large body grew the buffers; an idle keep-alive connection
            // should not hold on to that.
            c.shrink();
        }
    }

    /// Read more of a request head until `deadline`; between requests, give
    /// up at once when told to close idle connections.
    async fn read_request_bytes(
        &self,
        c: &mut Connection,
        deadline: tokio::time::Instant,
    ) -> std::io::Result<usize> {
        c.buf.reserve(4096);
        tokio::select! {
            biased;
            read = c.down.read_buf(&mut c.buf) => read,
            _ = self.idle_close.notified(), if c.buf.is_empty() => Ok(0),
            _ = tokio::time::sleep_until(deadline) => Ok(0),
        }
    }

    /// Parse the head at the start of `c.buf` and write the upstream's request
    /// head into `c.out`.
    fn parse_request(&self, c: &mut Connection) -> Parsed {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&c.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Pass,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Pass;
        };
        // Origin-form only, visible ASCII only: what `http::Uri` surely accepts
        // the same way pingora would.
        if method == "CONNECT"
            || !target.starts_with('/')
            || !target.bytes().all(|b| b.is_ascii_graphic())
        {
            return Parsed::Pass;
        }
        let out = &mut c.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");

        let mut body_len = None;
        let mut client_close = false;
        let mut has_host = false;
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        let plan = &self.request_plan;
        for header in req.headers.iter() {
            let name = header.name.as_bytes();
            match Known::of(name) {
                Known::ContentLength => match (body_len, parse_length(header.value)) {
                    (None, Some(n)) => {
                        body_len = Some(n);
                        // Framing, not content: filters do not touch it.
                        write_header(out, name, header.value);
                    }
                    _ => return Parsed::Pass,
                },
                Known::TransferEncoding | Known::Upgrade | Known::Expect => return Parsed::Pass,
                Known::Connection => {
                    for token in header.value.split(|&b| b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            client_close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                            // Other hop-by-hop headers named: pingora sorts them out.
                            return Parsed::Pass;
                        }
                    }
                }
                Known::KeepAlive | Known::ProxyConnection => {}
                Known::Host => {
                    has_host = true;
                    if plan.keeps(name) {
                        write_header(out, name, header.value);
                    }
                }
                Known::XForwardedFor if c.client.is_some() => forwarded_for.push(header.value),
                Known::XForwardedProto => {}
                _ => {
                    if plan.keeps(name) {
                        write_header(out, name, header.value);
                    }
                }
            }
        }
        if !has_host {
            // pingora names the upstream in a Host it adds (proxy/app.rs).
            return Parsed::Pass;
        }
        if let Some(ip) = c.client {
            if plan.keeps(b"x-forwarded-for") {
                out.extend_from_slice(b"x-forwarded-for: ");
                for prior in &forwarded_for {
                    out.extend_from_slice(prior);
                    out.extend_from_slice(b", ");
                }
                use std::io::Write;
                let _ = write!(out, "{ip}\r\n");
            }
        }
        if plan.keeps(b"x-forwarded-proto") {
            out.extend_from_slice(if c.https {
                b"x-forwarded-proto: https\r\n"
            } else {
                b"x-forwarded-proto: http\r\n"
            });
        }
        for (name, value) in plan.appended() {
            write_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");

        c.method.clear();
        c.method.push_str(method);
        c.path.clear();
        c.path
            .push_str(target.split_once('?').map_or(target, |(path, _)| path));
        Parsed::Ready(Request {
            head_len,
            body_len: body_len.unwrap_or(0),
            head_only: method == "HEAD",
            client_close,
        })
    }

    /// Admit, pick an upstream and exchange; retry as the pingora path does.
    async fn handle(&self, c: &mut Connection, req: &Request, shutdown: &ShutdownWatch) -> Outcome {
        if let Some(status) = self.proxy.admission.check(c.client, &c.path) {
            // A refused request's body is not read; the connection closes
            // unless there is none.
            let keep = req.body_len == 0 && !req.client_close && !*shutdown.borrow();
            return self.answer(c, req, status, keep).await;
        }
        // The body goes with the head when it is already here, so the request
        // can be sent again as a whole.
        let buffered = (c.buf.len() as u64).min(req.body_len) as usize;
        c.out.extend_from_slice(&c.buf[..buffered]);
        c.buf.advance(buffered);
        let unread_body = req.body_len - buffered as u64;

        let upstreams = &self.proxy.upstreams;
        let key = upstreams.key(c.client, &c.path);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut pooled = true;
        loop {
            let Some(upstream) = upstreams.select(&key, &tried) else {
                return self.answer(c, req, 502, false).await;
            };
            let address = upstream.address;
            let reused = if pooled {
                self.pool.take(address)
            } else {
                None
            };
            let is_reused = reused.is_some();
            let mut up = match reused {
                Some(up) => up,
                None => match connect(address).await {
                    Ok(up) => up,
                    Err(err) => {
                        tracing::debug!(%address, error = %err, "connecting to upstream failed");
                        tried.push(address);
                        if tried.len() < upstreams.len() {
                            continue;
                        }
                        return self.bad_gateway(c, req, address).await;
                    }
                },
            };
            match self.exchange(c, &mut up, req, unread_body, shutdown).await {
                Ok((mut outcome, reusable)) => {
                    if reusable {
                        self.pool.put(address, up);
                    }
                    outcome.upstream = Some(address);
                    return outcome;
                }
                Err(Failure::Stale) if is_reused && unread_body == 0 => {
                    tracing::debug!(%address, "pooled upstream connection was closed; retrying");
                    pooled = false;
                }
                Err(Failure::Stale) => {
                    return self.bad_gateway(c, req, address).await;
                }
                Err(Failure::Upstream(reason)) => {
                    tracing::debug!(%address, reason, "upstream failed");
                    return self.bad_gateway(c, req, address).await;
                }
                Err(Failure::Abort) => {
                    return Outcome {
                        status: 0,
                        bytes_sent: 0,
                        upstream: Some(address),
                        keep_alive: false,
                    }
                }
            }
        }
    }

    /// Send the request on `up` and pass the response back. On success, also
    /// says whether `up` may serve another request.
    async fn exchange(
        &self,
        c: &mut Connection,
        up: &mut TcpStream,
        req: &Request,
        mut unread_body: u64,
        shutdown: &ShutdownWatch,
    ) -> Result<(Outcome, bool), Failure> {
        if up.write_all(&c.out).await.is_err() {
            return Err(Failure::Stale);
        }
        while unread_body > 0 {
            if c.buf.is_empty() {
                c.buf.reserve(BODY_CHUNK);
                match c.down.read_buf(&mut c.buf).await {
                    Ok(0) | Err(_) => return Err(Failure::Abort),
                    Ok(_) => {}
                }
            }
            let take = (c.buf.len() as u64).min(unread_body) as usize;
            if let Err(err) = up.write_all(&c.buf[..take]).await {
                return Err(Failure::Upstream(format!(
                    "sending the request body: {err}"
                )));
            }
            c.buf.advance(take);
            unread_body -= take as u64;
        }

        c.resp.clear();
        // Until the upstream sent anything, a failure may be a stale connection.
        let mut heard = false;
        let head = loop {
            match self.parse_response(c, req, shutdown) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(reason) => return Err(Failure::Upstream(reason)),
            }
            if c.resp.len() >= MAX_HEAD {
                return Err(Failure::Upstream("response head too large".into()));
            }
            c.resp.reserve(4096);
            match up.read_buf(&mut c.resp).await {
                Ok(0) | Err(_) if !heard => return Err(Failure::Stale),
                Ok(0) => return Err(Failure::Upstream("closed in the response head".into())),
                Err(err) => return Err(Failure::Upstream(err.to_string())),
                Ok(_) => heard = true,
            }
        };
        c.resp.advance(head.len);
        if c.down.write_all(&c.out).await.is_err() {
            return Err(Failure::Abort);
        }
        let bytes_sent = self.forward_body(c, up, head.framing).await?;
        let reusable = head.upstream_keep_alive && c.resp.is_empty();
        Ok((
            Outcome {
                status: head.status,
                bytes_sent,
                upstream: None,
                keep_alive: head.keep_alive,
            },
            reusable,
        ))
    }

    /// Parse the response head at the start of `c.resp` (skipping interim
    /// 1xx responses) and write the client's response head into `c.out`.
    fn parse_response(
        &self,
        c: &mut Connection,
        req: &Request,
        shutdown: &ShutdownWatch,
    ) -> Result<Option<ResponseHead>, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            let len = match resp.parse(&c.resp) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(format!("invalid response head: {err}")),
            };
            let (Some(version), Some(status)) = (resp.version, resp.code) else {
                return Err("invalid response head".into());
            };
            if status == 101 {
                return Err("101 Switching Protocols to a request without Upgrade".into());
            }
            if (100..200).contains(&status) {
                // Interim responses are dropped, as nginx does.
                c.resp.advance(len);
                continue;
            }
            let mut length = None;
            let mut chunked = None;
            let mut upstream_close = version == 0;
            for header in resp.headers.iter() {
                match Known::of(header.name.as_bytes()) {
                    Known::ContentLength => match (length, parse_length(header.value)) {
                        (_, None) => return Err("invalid Content-Length".into()),
                        (Some(a), Some(b)) if a != b => {
                            return Err("conflicting Content-Length".into())
                        }
                        (_, n) => length = n,
                    },
                    Known::TransferEncoding => {
                        let last = header.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                        chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                    }
                    Known::Connection => {
                        for token in header.value.split(|&b| b == b',') {
                            let token = token.trim_ascii();
                            if token.eq_ignore_ascii_case(b"close") {
                                upstream_close = true;
                            } else if version == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                                upstream_close = false;
                            }
                        }
                    }
                    _ => {}
                }
            }
            let framing = if req.head_only || status == 204 || status == 304 {
                Framing::Empty
            } else {
                match (chunked, length) {
                    (Some(true), _) => Framing::Chunked,
                    (Some(false), _) => Framing::Close,
                    (None, Some(n)) => Framing::Length(n),
                    (None, None) => Framing::Close,
                }
            };
            let keep_alive = !req.client_close && !*shutdown.borrow() && framing != Framing::Close;

            let out = &mut c.out;
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(itoa3(status).as_slice());
            out.push(b' ');
            out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
            let plan = &self.response_plan;
            for header in resp.headers.iter() {
                let name = header.name.as_bytes();
                match Known::of(name) {
                    Known::Connection | Known::KeepAlive | Known::ProxyConnection => {}
                    // With Transfer-Encoding, Content-Length is not the framing
                    // and must not reach the client.
                    Known::ContentLength if chunked.is_some() => {}
                    Known::ContentLength | Known::TransferEncoding => {
                        write_header(out, name, header.value)
                    }
                    _ => {
                        if plan.keeps(name) {
                            write_header(out, name, header.value);
                        }
                    }
                }
            }
            for (name, value) in plan.appended() {
                write_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
            if !keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            return Ok(Some(ResponseHead {
                len,
                status,
                framing,
                keep_alive,
                upstream_keep_alive: !upstream_close && framing != Framing::Close,
            }));
        }
    }

    /// Pass the response body from `up` to the client; returns its size.
    async fn forward_body(
        &self,
        c: &mut Connection,
        up: &mut TcpStream,
        framing: Framing,
    ) -> Result<usize, Failure> {
        let mut sent = 0usize;
        match framing {
            Framing::Empty => {}
            Framing::Length(total) => {
                let mut left = total;
                loop {
                    let take = (c.resp.len() as u64).min(left) as usize;
                    if take > 0 {
                        write_down(c, take).await?;
                        sent += take;
                        left -= take as u64;
                    }
                    if left == 0 {
                        break;
                    }
                    read_up(c, up).await?;
                }
            }
            Framing::Chunked => {
                let mut scanner = ChunkedScanner::default();
                loop {
                    let take = scanner.feed(&c.resp).map_err(|_| Failure::Abort)?;
                    if take > 0 {
                        write_down(c, take).await?;
                        sent += take;
                    }
                    if scanner.is_done() {
                        break;
                    }
                    read_up(c, up).await?;
                }
            }
            Framing::Close => loop {
                let take = c.resp.len();
                if take > 0 {
                    write_down(c, take).await?;
                    sent += take;
                }
                c.resp.reserve(BODY_CHUNK);
                match up.read_buf(&mut c.resp).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(Failure::Abort),
                }
            },
        }
        Ok(sent)
    }

    /// 502 after `address` failed; the connection closes, as pingora's does.
    async fn bad_gateway(&self, c: &mut Connection, req: &Request, address: SocketAddr) -> Outcome {
        let mut outcome = self.answer(c, req, 502, false).await;
        outcome.upstream = Some(address);
        outcome
    }

    /// Write a short response of River's own (an error or a refusal).
    async fn answer(&self, c: &mut Connection, req: &Request, status: u16, keep: bool) -> Outcome {
        let body = status_body(status);
        let out = &mut c.out;
        out.clear();
        use std::io::Write;
        let reason = reason(status);
        let _ = write!(
            out,
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if keep { "" } else { "connection: close\r\n" }
        );
        let mut bytes_sent = 0;
        if !req.head_only {
            out.extend_from_slice(&body);
            bytes_sent = body.len();
        }
        let written = c.down.write_all(&c.out).await.is_ok();
        Outcome {
            status,
            bytes_sent,
            upstream: None,
            keep_alive: keep && written,
        }
    }
}

struct ResponseHead {
    len: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
    upstream_keep_alive: bool,
}

/// Write the first `n` bytes of `c.resp` to the client.
async fn write_down(c: &mut Connection, n: usize) -> Result<(), Failure> {
    let result = c.down.write_all(&c.resp[..n]).await;
    c.resp.advance(n);
    result.map_err(|_| Failure::Abort)
}

/// Read more of the response body; the upstream closing early is an abort.
async fn read_up(c: &mut Connection, up: &mut TcpStream) -> Result<(), Failure> {
    c.resp.reserve(BODY_CHUNK);
    match up.read_buf(&mut c.resp).await {
        Ok(0) | Err(_) => Err(Failure::Abort),
        Ok(_) => Ok(()),
    }
}

async fn connect(address: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A status code's three digits (httparse only accepts three).
fn itoa3(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

/// Content-Length: digits only, no sign, no list.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The header names the forwarder treats specially.
#[derive(Debug, PartialEq, Eq)]
enum Known {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    Other,
}

impl Known {
    fn of(name: &[u8]) -> Known {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            4 if is("host") => Known::Host,
            6 if is("expect") => Known::Expect,
            7 if is("upgrade") => Known::Upgrade,
            10 if is("connection") => Known::Connection,
            10 if is("keep-alive") => Known::KeepAlive,
            14 if is("content-length") => Known::ContentLength,
            15 if is("x-forwarded-for") => Known::XForwardedFor,
            16 if is("proxy-connection") => Known::ProxyConnection,
            17 if is("transfer-encoding") => Known::TransferEncoding,
            17 if is("x-forwarded-proto") => Known::XForwardedProto,
            _ => Known::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1048576"), Some(1048576));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1,1",
            b" 1",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn special_headers_are_known_in_any_case() {
        assert_eq!(Known::of(b"Content-Length"), Known::ContentLength);
        assert_eq!(Known::of(b"TRANSFER-ENCODING"), Known::TransferEncoding);
        assert_eq!(Known::of(b"x-forwarded-proto"), Known::XForwardedProto);
        assert_eq!(Known::of(b"content-type"), Known::Other);
    }

    #[test]
    fn status_digits() {
        assert_eq!(&itoa3(200), b"200");
        assert_eq!(&itoa3(404), b"404");
        assert_eq!(&itoa3(999), b"999");
    }

    mod serving {
        use super::super::*;
        use pingora_core::protocols::l4::stream::Stream as L4Stream;
        use tokio::net::TcpListener;
        use tokio::sync::watch;

        /// An upstream answering `ok` to every request, keep-alive, and the
        /// forwarder of a service proxying to it.
        async fn forwarder() -> Forwarder {
            forwarder_counting().await.0
        }

        /// As `forwarder`, with the number of connections the upstream accepted.
        async fn forwarder_counting() -> (Forwarder, Arc<std::sync::atomic::AtomicUsize>) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(async move {
                loop {
                    let (mut conn, _) = listener.accept().await.unwrap();
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut seen = Vec::new();
                        let mut buf = [0u8; 4096];
                        loop {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                seen.drain(..end + 4);
                                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if conn.write_all(reply).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            let source = format!(
                "services {{ P {{ listeners {{ \"127.0.0.1:1\" }}\n connectors {{ \"{address}\" }} }} }}"
            );
            let config = river_config::parse(&source, "test.kdl").unwrap();
            let service = Service::build(&config.services[0], None).unwrap();
            let forwarder = Forwarder::for_service(&service)
                .expect("plain HTTP/1.1 upstreams take the fast path");
            (forwarder, accepted)
        }

        /// A connected client socket, and the accepted end as pingora's stream.
        async fn connection() -> (tokio::net::TcpStream, Stream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            (client, Box::new(L4Stream::from(accepted)))
        }

        /// One client connection with one `Connection: close` request, served
        /// to its end, answered `ok`.
        async fn serve_one_close(forwarder: &Forwarder) {
            let (mut client, stream) = connection().await;
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let (_tx, shutdown) = watch::channel(false);
            assert!(forwarder.serve(stream, &shutdown).await.is_none());
            assert!(read_some(&mut client).await.ends_with("ok"));
        }

        async fn read_some(client: &mut tokio::net::TcpStream) -> String {
            let mut buf = vec![0u8; 4096];
            let n = client.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }

        #[tokio::test]
        async fn forwards_plain_requests_and_hands_an_upgrade_to_pingora_intact() {
            let forwarder = forwarder().await;
            let (mut client, stream) = connection().await;
            let upgrade =
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
            client
                .write_all(format!("GET /a HTTP/1.1\r\nHost: x\r\n\r\n{upgrade}").as_bytes())
                .await
                .unwrap();
            let (_tx, shutdown) = watch::channel(false);
            let mut rest = forwarder
                .serve(stream, &shutdown)
                .await
                .expect("the upgrade is handed over");
            let answer = read_some(&mut client).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
            let mut handed = vec![0u8; upgrade.len()];
            rest.read_exact(&mut handed).await.unwrap();
            assert_eq!(String::from_utf8(handed).unwrap(), upgrade);
        }

        #[tokio::test]
        async fn upstream_connections_are_reused_across_clients() {
            let (forwarder, accepted) = forwarder_counting().await;
            for _ in 0..3 {
                serve_one_close(&forwarder).await;
            }
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn a_draining_forwarder_keeps_no_upstream_connection() {
            let (forwarder, accepted) = forwarder_counting().await;
            serve_one_close(&forwarder).await;
            assert_eq!(forwarder.pool.idle_count(), 1);
            forwarder.pool.close();
            assert_eq!(forwarder.pool.idle_count(), 0);
            // Served on a new connection, which is not kept either.
            serve_one_close(&forwarder).await;
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
            assert_eq!(forwarder.pool.idle_count(), 0);
        }

        #[tokio::test]
        async fn http_1_0_and_requests_without_host_go_to_pingora_at_once() {
            let forwarder = forwarder().await;
            for request in ["GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.1\r\n\r\n"] {
                let (mut client, stream) = connection().await;
                client.write_all(request.as_bytes()).await.unwrap();
                let (_tx, shutdown) = watch::channel(false);
                assert!(
                    forwarder.serve(stream, &shutdown).await.is_some(),
                    "{request}"
                );
            }
        }

        /// Mangled requests never panic the parser, and whatever it accepts
        /// goes upstream as one well-formed head: no header injected by CR or
        /// LF, no second request smuggled in.
        #[tokio::test]
        async fn mangled_requests_are_refused_or_forwarded_well_formed() {
            let forwarder = forwarder().await;
            let (_client, down) = connection().await;
            let mut c = Connection {
                down,
                client: Some("192.0.2.1".parse().unwrap()),
                https: false,
                buf: BytesMut::new(),
                resp: BytesMut::new(),
                out: Vec::new(),
                method: String::new(),
                path: String::new(),
            };
            let seeds: [&[u8]; 3] = [
                b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
                b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
                b"HEAD / HTTP/1.1\r\nhost: x\r\nkeep-alive: 5\r\naccept: */*\r\n\r\n",
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
                c.buf = BytesMut::from(&bytes[..]);
                let Parsed::Ready(request) = forwarder.parse_request(&mut c) else {
                    continue;
                };
                ready += 1;
                assert!(request.head_len <= bytes.len());
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
                let mut upstream = httparse::Request::new(&mut headers);
                assert_eq!(
                    upstream.parse(&c.out),
                    Ok(httparse::Status::Complete(c.out.len())),
                    "{:?} became {:?}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&c.out)
                );
                let names: Vec<String> = upstream
                    .headers
                    .iter()
                    .map(|h| h.name.to_ascii_lowercase())
                    .collect();
                assert!(names.contains(&"host".to_string()));
                for hop_by_hop in ["connection", "keep-alive", "transfer-encoding"] {
                    assert!(!names.iter().any(|n| n == hop_by_hop), "{names:?}");
                }
                assert_eq!(names.iter().filter(|n| *n == "x-forwarded-for").count(), 1);
            }
            // The mangling leaves enough requests intact to mean something.
            assert!(ready > 1000, "only {ready} parsed");
        }

        /// A client sending its head a byte every 30 s is cut off at the 60 s
        /// head deadline, not kept as long as it keeps trickling.
        #[tokio::test(start_paused = true)]
        async fn a_trickled_head_is_cut_off_at_the_deadline() {
            let forwarder = forwarder().await;
            let (mut client, stream) = connection().await;
            let started = tokio::time::Instant::now();
            let trickle = tokio::spawn(async move {
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
                    if client.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
            let (_tx, shutdown) = watch::channel(false);
            assert!(forwarder.serve(stream, &shutdown).await.is_none());
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(90), "cut off after {waited:?}");
            trickle.abort();
        }

        #[tokio::test]
        async fn close_and_draining_end_the_connection_after_the_response() {
            let forwarder = forwarder().await;
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
                assert!(forwarder.serve(stream, &shutdown).await.is_none());
                let mut all = String::new();
                client.read_to_string(&mut all).await.unwrap();
                assert!(all.contains("\r\nconnection: close\r\n"), "{all}");
                assert!(all.ends_with("ok"), "{all}");
            }
        }
    }
}

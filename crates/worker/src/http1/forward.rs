//! HTTP/1.1 proxying without pingora-proxy's per-request machinery: River's
//! fast path for one request at a time.
//!
//! Profiles put a River worker on pingora-proxy's path at about 4× nginx's
//! user-space CPU per proxied request: a header map per message, a clone of
//! the request header, two futures joined over channels per request, large
//! futures moved around. The common case, a plain HTTP/1.1 request to
//! upstreams that speak plain HTTP/1.1, does not need any of it. Here, as in
//! nginx, header lines are copied from one buffer to the other, with the
//! policies of the pingora path in `proxy/app.rs`: admission (CIDR, rate
//! limits), selection and retries, header filters, X-Forwarded-*, timeouts.
//!
//! Heads follow `head.rs` (framing, hop-by-hop fields, 1xx), chunked bodies
//! are re-framed by `chunked.rs`. Upgrade requests without a body are taken
//! when the session asks (plaintext clients, with connection handoff on):
//! `Upgrade` and `Connection: upgrade` go to the upstream, and a `101`
//! hands the upstream connection back for the session to make a tunnel of
//! (`tunnel/`). What this module does not take (h2, other upgrades, chunked
//! or `Expect` uploads, HTTP/1.0, `Connection` naming other fields,
//! absolute-form targets) the session hands to pingora. The connection loop
//! and the access log are `session.rs`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora_core::server::ShutdownWatch;
use river_config::Timeouts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::UpstreamErrorKind;

use crate::http1::body::{Framing, Remaining};
use crate::http1::chunked::ChunkedDecoder;
use crate::http1::head::{
    self, named_in_connection, Asked, Known, Parsed, ResponseError, FAST_HEADERS, MAX_HEADERS,
};
use crate::http1::pool::Pool;
use crate::http1::session::{answer, Conn, Outcome};
use crate::policy::headers::HeaderPlan;
use crate::service::{Logic, Proxy, Service};

/// Read size for bodies.
const BODY_CHUNK: usize = 64 * 1024;
/// Read size for response heads.
const HEAD_CHUNK: usize = 4096;

/// The fast path of one proxy service.
pub struct Forwarder {
    proxy: Arc<Proxy>,
    request_plan: HeaderPlan,
    response_plan: HeaderPlan,
    pool: Pool,
    limits: Limits,
}

/// A service's timeouts, as durations.
#[derive(Debug, Clone, Copy)]
struct Limits {
    client_body: Duration,
    connect: Duration,
    read: Duration,
    send: Duration,
}

/// One request the fast path takes, prepared from its head.
pub struct Job {
    /// The request head for the upstream, then the body bytes read with it.
    out: Vec<u8>,
    /// `METHOD path`, for the policies and the log.
    label: String,
    method_len: usize,
    /// Length of the client's head in the connection's buffer.
    head_len: usize,
    body: Remaining,
    head_only: bool,
    idempotent: bool,
    client_close: bool,
    /// The protocols of the request's `Upgrade`, when it asks to upgrade.
    upgrade: Option<Box<[u8]>>,
}

impl Job {
    /// The request body's length as the head declared it (before any of it
    /// is forwarded).
    pub fn declared_body(&self) -> u64 {
        self.body.0
    }

    pub fn method(&self) -> &str {
        &self.label[..self.method_len]
    }

    pub fn path(&self) -> &str {
        &self.label[self.method_len + 1..]
    }

    #[cfg(test)]
    pub(crate) fn upstream_head(&self) -> &[u8] {
        &self.out
    }
}

/// An upstream that answered `101 Switching Protocols`: the connection is a
/// tunnel from now on.
pub struct Switched {
    pub up: TcpStream,
    pub upstream: SocketAddr,
    /// Bytes the upstream sent after the 101's head (for the client).
    pub early: BytesMut,
}

/// Why an exchange with an upstream failed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// Not one byte of the request reached the upstream: any request may go
    /// again, on another connection.
    Unsent,
    /// A reused connection ended before any response byte: the upstream may
    /// have read the request. Only an idempotent one goes again.
    Stale,
    /// Before anything was sent to the client: answer `status` (502, 504).
    Upstream { status: u16, why: &'static str },
    /// The client stalled in its request body before any answer: 408.
    ClientTimeout,
    /// The client went away, or the response broke off after its head was
    /// sent: the connection closes.
    Abort { status: u16, why: &'static str },
}

/// A response on its way to the client.
struct Sent {
    status: u16,
    bytes_sent: usize,
    keep_alive: bool,
    /// The upstream connection may serve another request.
    reusable: bool,
    /// A 101 went to the client: the connection is a tunnel now.
    switched: bool,
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
            request_plan: HeaderPlan::new(&proxy.upstream_request),
            response_plan: HeaderPlan::new(&proxy.upstream_response),
            pool: Pool::default(),
            limits: Limits::of(&service.timeouts),
        })
    }

    /// The worker drains: keep no upstream connection from now on.
    pub fn begin_drain(&self) {
        self.pool.close();
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether the fast path takes `req` (already checked by the model);
    /// if so, the upstream's request head. An upgrade request is taken only
    /// when `upgrades` (the session can make a tunnel of it) and it has no
    /// body.
    pub fn prepare(
        &self,
        req: &head::Request<'_>,
        headers: &[httparse::Header<'_>],
        client: Option<IpAddr>,
        https: bool,
        upgrades: bool,
    ) -> Option<Job> {
        // Origin-form only, visible ASCII only: what `http::Uri` surely
        // accepts the same way pingora would.
        let target = req.target;
        let plan = &self.request_plan;
        // RFC 9110 §7.8: an upgrade needs both `Upgrade` and `Connection:
        // upgrade`; either alone goes to pingora, as before.
        let upgrade = req.upgrade && req.connection.upgrade;
        if req.version != 1
            || req.method == "CONNECT"
            || !target.starts_with('/')
            || !target.bytes().all(|b| b.is_ascii_graphic())
            || req.framing == Framing::Chunked
            || req.upgrade != upgrade
            || req.connection.upgrade != upgrade
            || (upgrade && (!upgrades || req.framing != Framing::Empty))
            // A filter that removes Upgrade would make it no upgrade.
            || (upgrade && !plan.keeps(b"upgrade"))
            || req.expect
            // Fields named in Connection: pingora strips them.
            || req.connection.names_fields
        {
            return None;
        }
        let mut upgrade_value: Option<Vec<u8>> = None;
        let mut out = Vec::with_capacity(req.len + 128);
        out.extend_from_slice(req.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for = false;
        for header in headers {
            let name = header.name.as_bytes();
            match Known::of(name) {
                // An upgrade keeps its protocols (all lines, in order).
                Known::Upgrade if upgrade => {
                    write_header(&mut out, b"upgrade", header.value);
                    let value = upgrade_value.get_or_insert_with(Vec::new);
                    if !value.is_empty() {
                        value.extend_from_slice(b", ");
                    }
                    value.extend_from_slice(header.value);
                }
                known if known.is_hop_by_hop() => {}
                // Framing, not content: written once, below.
                Known::ContentLength => {}
                Known::XForwardedFor if client.is_some() => forwarded_for = true,
                Known::XForwardedProto => {}
                _ => {
                    if plan.keeps(name) {
                        write_header(&mut out, name, header.value);
                    }
                }
            }
        }
        if let Some(n) = req.content_length {
            use std::io::Write;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        if let Some(ip) = client {
            if plan.keeps(b"x-forwarded-for") {
                out.extend_from_slice(b"x-forwarded-for: ");
                if forwarded_for {
                    for header in headers {
                        if Known::of(header.name.as_bytes()) == Known::XForwardedFor {
                            out.extend_from_slice(header.value);
                            out.extend_from_slice(b", ");
                        }
                    }
                }
                use std::io::Write;
                let _ = write!(out, "{ip}\r\n");
            }
        }
        if plan.keeps(b"x-forwarded-proto") {
            out.extend_from_slice(if https {
                b"x-forwarded-proto: https\r\n"
            } else {
                b"x-forwarded-proto: http\r\n"
            });
        }
        for (name, value) in plan.appended() {
            write_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        if upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        out.extend_from_slice(b"\r\n");

        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let mut label = String::with_capacity(req.method.len() + 1 + path.len());
        label.push_str(req.method);
        label.push(' ');
        label.push_str(path);
        Some(Job {
            out,
            label,
            method_len: req.method.len(),
            head_len: req.len,
            body: Remaining(req.framing.known_length().unwrap_or(0)),
            head_only: req.is_head(),
            idempotent: req.is_idempotent(),
            client_close: req.connection.close,
            upgrade: upgrade_value.map(Vec::into_boxed_slice),
        })
    }

    /// Admit, pick an upstream and exchange; retry when that is safe.
    pub async fn handle(&self, c: &mut Conn, job: &mut Job, shutdown: &ShutdownWatch) -> Outcome {
        c.buf.advance(job.head_len);
        if let Some(status) = self.proxy.admit(c.client, job.path()) {
            // A refused request's body is not read; the connection closes
            // unless there is none.
            let keep = job.body.is_done() && !job.client_close && !*shutdown.borrow();
            return answer(c, status, job.head_only, keep).await;
        }
        // The body goes with the head when it is already here, so the
        // request can be sent again as a whole.
        let buffered = job.body.take(c.buf.len());
        job.out.extend_from_slice(&c.buf[..buffered]);
        c.buf.advance(buffered);

        let upstreams = &self.proxy.upstreams;
        let key = upstreams.key(c.client, job.path());
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut pooled = true;
        let mut resp = BytesMut::new();
        loop {
            let Some(upstream) = upstreams.select(&key, &tried) else {
                // None at all: a discovered service before its first answer.
                let status = if upstreams.is_empty() { 503 } else { 502 };
                return answer(c, status, job.head_only, false).await;
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
                None => match connect(address, self.limits.connect).await {
                    Ok(up) => up,
                    Err(err) => {
                        tracing::debug!(%address, error = %err, "connecting to upstream failed");
                        let (status, why) = if err.kind() == std::io::ErrorKind::TimedOut {
                            (504, "upstream-connect-timeout")
                        } else {
                            (502, "upstream-connect-failed")
                        };
                        // metrics: river_upstream_errors_total, every failed attempt
                        self.count_upstream_error(why);
                        tried.push(address);
                        if tried.len() < upstreams.len() {
                            continue;
                        }
                        return self.error(c, job, status, why, address).await;
                    }
                },
            };
            resp.clear();
            match self.exchange(c, &mut up, job, &mut resp, shutdown).await {
                Ok(sent) if sent.switched => {
                    return Outcome {
                        status: 101,
                        bytes_sent: 0,
                        upstream: Some(address),
                        keep_alive: false,
                        error: None,
                        switched: Some(Box::new(Switched {
                            up,
                            upstream: address,
                            early: std::mem::take(&mut resp),
                        })),
                    };
                }
                Ok(sent) => {
                    // Not to an upstream that discovery removed meanwhile.
                    if sent.reusable && upstreams.contains(address) {
                        self.pool.put(address, up);
                    }
                    return Outcome {
                        status: sent.status,
                        bytes_sent: sent.bytes_sent,
                        upstream: Some(address),
                        keep_alive: sent.keep_alive,
                        error: None,
                        switched: None,
                    };
                }
                // Nothing went out: safe for any request.
                Err(Failure::Unsent) if is_reused => {
                    tracing::debug!(%address, "pooled upstream connection was closed; retrying");
                    pooled = false;
                }
                // The upstream may have read it: only an idempotent request
                // goes again (RFC 9110 §9.2.2), and only if River still has
                // all of it.
                Err(Failure::Stale) if is_reused && job.idempotent && job.body.0 == 0 => {
                    tracing::debug!(%address, "pooled upstream connection closed after the request; retrying");
                    pooled = false;
                }
                Err(Failure::Unsent | Failure::Stale) => {
                    let why = "upstream-closed-before-response";
                    self.count_upstream_error(why);
                    return self.error(c, job, 502, why, address).await;
                }
                Err(Failure::Upstream { status, why }) => {
                    tracing::debug!(%address, why, "upstream failed");
                    self.count_upstream_error(why);
                    return self.error(c, job, status, why, address).await;
                }
                Err(Failure::ClientTimeout) => {
                    return self
                        .error(c, job, 408, "client-body-timeout", address)
                        .await;
                }
                Err(Failure::Abort { status, why }) => {
                    self.count_upstream_error(why);
                    return Outcome {
                        status,
                        bytes_sent: 0,
                        upstream: Some(address),
                        keep_alive: false,
                        error: Some(why),
                        switched: None,
                    };
                }
            }
        }
    }

    /// metrics: river_upstream_errors_total, for a failure whose access-log
    /// code `why` blames the upstream (client failures are not counted).
    fn count_upstream_error(&self, why: &str) {
        if let Some(kind) = upstream_error_kind(why) {
            self.proxy.stats().upstream_error(kind);
        }
    }

    /// River's own error response after `address` failed; the connection
    /// closes, as pingora's does.
    async fn error(
        &self,
        c: &mut Conn,
        job: &Job,
        status: u16,
        why: &'static str,
        address: SocketAddr,
    ) -> Outcome {
        let mut outcome = answer(c, status, job.head_only, false).await;
        outcome.upstream = Some(address);
        outcome.error = Some(why);
        outcome
    }

    /// Send the request on `up` and pass the response back.
    async fn exchange(
        &self,
        c: &mut Conn,
        up: &mut TcpStream,
        job: &mut Job,
        resp: &mut BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Result<Sent, Failure> {
        let limits = self.limits;
        match write_up(up, &job.out, limits.send).await {
            Ok(()) => {}
            Err(WriteUp {
                written: 0,
                timed_out: false,
            }) => return Err(Failure::Unsent),
            Err(WriteUp {
                timed_out: true, ..
            }) => {
                return Err(Failure::Upstream {
                    status: 504,
                    why: "upstream-send-timeout",
                })
            }
            Err(WriteUp { .. }) => return Err(Failure::Stale),
        }
        while !job.body.is_done() {
            if c.buf.is_empty() {
                c.buf.reserve(BODY_CHUNK);
                match tokio::time::timeout(limits.client_body, c.down.read_buf(&mut c.buf)).await {
                    Err(_) => return Err(Failure::ClientTimeout),
                    Ok(Ok(0) | Err(_)) => {
                        return Err(Failure::Abort {
                            status: 0,
                            why: "client-closed-in-body",
                        })
                    }
                    Ok(Ok(_)) => {}
                }
            }
            let take = job.body.take(c.buf.len());
            match write_up(up, &c.buf[..take], limits.send).await {
                Ok(()) => {}
                Err(WriteUp { timed_out, .. }) => {
                    return Err(Failure::Upstream {
                        status: if timed_out { 504 } else { 502 },
                        why: if timed_out {
                            "upstream-send-timeout"
                        } else {
                            "upstream-send-failed"
                        },
                    })
                }
            }
            c.buf.advance(take);
        }

        // Until the upstream sent anything, a failure may be a stale connection.
        let mut heard = false;
        // The request stays in `job.out`, to go again if this connection
        // turns out stale.
        let mut out = Vec::with_capacity(512);
        let asked = Asked {
            head: job.head_only,
            upgrade: job.upgrade.as_deref(),
        };
        let response = loop {
            match self.response_head(resp, asked, job.client_close, shutdown, &mut out) {
                Ok(Some(Head::Final(response))) => break response,
                Ok(Some(Head::Interim { len, relay })) => {
                    resp.advance(len);
                    if relay
                        && (c.down.write_all(&out).await.is_err() || c.down.flush().await.is_err())
                    {
                        return Err(Failure::Abort {
                            status: 0,
                            why: "client-gone",
                        });
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    return Err(Failure::Upstream {
                        status: 502,
                        why: err.code(),
                    })
                }
            }
            resp.reserve(HEAD_CHUNK);
            match tokio::time::timeout(limits.read, up.read_buf(resp)).await {
                Err(_) => {
                    return Err(Failure::Upstream {
                        status: 504,
                        why: "upstream-read-timeout",
                    })
                }
                Ok(Ok(0) | Err(_)) if !heard => return Err(Failure::Stale),
                Ok(Ok(0)) => {
                    return Err(Failure::Upstream {
                        status: 502,
                        why: "upstream-closed-in-head",
                    })
                }
                Ok(Err(_)) => {
                    return Err(Failure::Upstream {
                        status: 502,
                        why: "upstream-read-failed",
                    })
                }
                Ok(Ok(_)) => heard = true,
            }
        };
        resp.advance(response.len);
        if c.down.write_all(&out).await.is_err() {
            return Err(Failure::Abort {
                status: response.status,
                why: "client-gone",
            });
        }
        if response.switched {
            // The 101 must reach the client before the tunnel's bytes.
            if c.down.flush().await.is_err() {
                return Err(Failure::Abort {
                    status: 101,
                    why: "client-gone",
                });
            }
            return Ok(Sent {
                status: 101,
                bytes_sent: 0,
                keep_alive: false,
                reusable: false,
                switched: true,
            });
        }
        let bytes_sent = self
            .forward_body(c, up, resp, response.framing, &mut out)
            .await
            .map_err(|why| Failure::Abort {
                status: response.status,
                why,
            })?;
        Ok(Sent {
            status: response.status,
            bytes_sent,
            keep_alive: response.keep_alive,
            reusable: response.upstream_reusable && resp.is_empty(),
            switched: false,
        })
    }

    /// Parse the response head at the start of `resp` and write what the
    /// client gets into `out`: `None` until the head is complete.
    fn response_head(
        &self,
        resp: &[u8],
        asked: Asked<'_>,
        client_close: bool,
        shutdown: &ShutdownWatch,
        out: &mut Vec<u8>,
    ) -> Result<Option<Head>, ResponseError> {
        with_response_head(resp, asked, |parsed| {
            let (response, headers) = match parsed? {
                Parsed::Partial => return Ok(None),
                Parsed::Complete(complete) => complete,
            };
            out.clear();
            if response.is_interim() {
                let relay = response.relays_interim();
                if relay {
                    write_status_line(out, response.status, response.reason);
                    self.write_fields(out, &response, headers);
                    out.extend_from_slice(b"\r\n");
                }
                return Ok(Some(Head::Interim {
                    len: response.len,
                    relay,
                }));
            }
            if response.status == 101 {
                // Asked for (the model refuses any other 101): the switch,
                // with the protocol the upstream chose.
                write_status_line(out, response.status, response.reason);
                self.write_fields(out, &response, headers);
                for header in headers {
                    if Known::of(header.name.as_bytes()) == Known::Upgrade {
                        write_header(out, b"upgrade", header.value);
                    }
                }
                for (name, value) in self.response_plan.appended() {
                    write_header(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"connection: upgrade\r\n\r\n");
                return Ok(Some(Head::Final(FinalHead {
                    len: response.len,
                    status: 101,
                    framing: Framing::Empty,
                    keep_alive: false,
                    upstream_reusable: false,
                    switched: true,
                })));
            }
            let keep_alive =
                !client_close && !*shutdown.borrow() && response.framing != Framing::UntilClose;
            write_status_line(out, response.status, response.reason);
            self.write_fields(out, &response, headers);
            match response.framing {
                Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
                Framing::Length(n) => write_length(out, n),
                // HEAD and 304 keep the length of what they describe;
                // 204 has none (RFC 9110 §8.6).
                Framing::Empty if response.status != 204 => {
                    if let Some(n) = response.content_length {
                        write_length(out, n);
                    }
                }
                Framing::Empty | Framing::UntilClose => {}
            }
            for (name, value) in self.response_plan.appended() {
                write_header(out, name.as_str().as_bytes(), value.as_bytes());
            }
            if !keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            }
            out.extend_from_slice(b"\r\n");
            Ok(Some(Head::Final(FinalHead {
                len: response.len,
                status: response.status,
                framing: response.framing,
                keep_alive,
                upstream_reusable: !response.close,
                switched: false,
            })))
        })
    }

    /// The header lines of a response the client may see: no hop-by-hop
    /// field, none named in `Connection`, no framing (written by the
    /// caller), nothing the filters remove.
    fn write_fields(
        &self,
        out: &mut Vec<u8>,
        response: &head::Response<'_>,
        headers: &[httparse::Header<'_>],
    ) {
        let plan = &self.response_plan;
        for header in headers {
            let name = header.name.as_bytes();
            match Known::of(name) {
                known if known.is_hop_by_hop() => {}
                Known::ContentLength => {}
                _ if response.connection.names_fields && named_in_connection(headers, name) => {}
                _ => {
                    if plan.keeps(name) {
                        write_header(out, name, header.value);
                    }
                }
            }
        }
    }

    /// Pass the response body from `up` to the client; returns its size, or
    /// why it broke off.
    async fn forward_body(
        &self,
        c: &mut Conn,
        up: &mut TcpStream,
        resp: &mut BytesMut,
        framing: Framing,
        out: &mut Vec<u8>,
    ) -> Result<usize, &'static str> {
        let read = self.limits.read;
        let mut sent = 0usize;
        match framing {
            Framing::Empty => {}
            Framing::Length(total) => {
                let mut left = Remaining(total);
                loop {
                    let take = left.take(resp.len());
                    if take > 0 {
                        write_down(c, resp, take).await?;
                        sent += take;
                    }
                    if left.is_done() {
                        break;
                    }
                    read_up(up, resp, read).await?;
                }
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    out.clear();
                    let taken = decoder.decode(resp, out).map_err(|e| e.code())?;
                    resp.advance(taken);
                    if !out.is_empty() {
                        if c.down.write_all(out).await.is_err() {
                            return Err("client-gone");
                        }
                        sent += out.len();
                    }
                    if decoder.is_done() {
                        break;
                    }
                    read_up(up, resp, read).await?;
                }
            }
            Framing::UntilClose => loop {
                let take = resp.len();
                if take > 0 {
                    write_down(c, resp, take).await?;
                    sent += take;
                }
                resp.reserve(BODY_CHUNK);
                match tokio::time::timeout(read, up.read_buf(resp)).await {
                    Err(_) => return Err("upstream-read-timeout"),
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Err("upstream-read-failed"),
                }
            },
        }
        Ok(sent)
    }
}

impl Limits {
    fn of(t: &Timeouts) -> Self {
        Limits {
            client_body: Duration::from_secs(t.client_body_secs),
            connect: Duration::from_secs(t.upstream_connect_secs),
            read: Duration::from_secs(t.upstream_read_secs),
            send: Duration::from_secs(t.upstream_send_secs),
        }
    }
}

enum Head {
    Interim { len: usize, relay: bool },
    Final(FinalHead),
}

struct FinalHead {
    len: usize,
    status: u16,
    framing: Framing,
    keep_alive: bool,
    upstream_reusable: bool,
    /// A 101: what follows is the tunnel's.
    switched: bool,
}

/// Run `f` on the response head at the start of `buf`, with room for
/// [`FAST_HEADERS`] lines on the stack, or up to [`MAX_HEADERS`] when it has
/// more (as pingora's path forwards).
fn with_response_head<R>(
    buf: &[u8],
    asked: Asked<'_>,
    f: impl FnOnce(Result<Parsed<(head::Response<'_>, &[httparse::Header<'_>])>, ResponseError>) -> R,
) -> R {
    let mut headers = [httparse::EMPTY_HEADER; FAST_HEADERS];
    match head::parse_response(buf, &mut headers, asked) {
        Err(ResponseError::TooManyHeaders) => many_response_headers(buf, asked, f),
        parsed => f(parsed),
    }
}

#[cold]
fn many_response_headers<R>(
    buf: &[u8],
    asked: Asked<'_>,
    f: impl FnOnce(Result<Parsed<(head::Response<'_>, &[httparse::Header<'_>])>, ResponseError>) -> R,
) -> R {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    f(head::parse_response(buf, &mut headers, asked))
}

/// A write to the upstream that failed: how much went out before.
struct WriteUp {
    written: usize,
    timed_out: bool,
}

/// Write all of `bytes` to the upstream, each write within `limit`.
async fn write_up(up: &mut TcpStream, bytes: &[u8], limit: Duration) -> Result<(), WriteUp> {
    let mut written = 0;
    while written < bytes.len() {
        match tokio::time::timeout(limit, up.write(&bytes[written..])).await {
            Ok(Ok(0) | Err(_)) => {
                return Err(WriteUp {
                    written,
                    timed_out: false,
                })
            }
            Ok(Ok(n)) => written += n,
            Err(_) => {
                return Err(WriteUp {
                    written,
                    timed_out: true,
                })
            }
        }
    }
    Ok(())
}

/// Write the first `n` bytes of `resp` to the client.
async fn write_down(c: &mut Conn, resp: &mut BytesMut, n: usize) -> Result<(), &'static str> {
    let result = c.down.write_all(&resp[..n]).await;
    resp.advance(n);
    result.map_err(|_| "client-gone")
}

/// Read more of the response body; the upstream closing early is an abort.
async fn read_up(
    up: &mut TcpStream,
    resp: &mut BytesMut,
    limit: Duration,
) -> Result<(), &'static str> {
    resp.reserve(BODY_CHUNK);
    match tokio::time::timeout(limit, up.read_buf(resp)).await {
        Err(_) => Err("upstream-read-timeout"),
        Ok(Ok(0)) => Err("upstream-closed-in-body"),
        Ok(Err(_)) => Err("upstream-read-failed"),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The kind of upstream failure an access-log code names, if the upstream is
/// to blame: `upstream-*` codes by what happened, the codes of a refused
/// response head or body framing as an invalid response.
fn upstream_error_kind(why: &str) -> Option<UpstreamErrorKind> {
    if why.starts_with("client-") {
        None
    } else if why.contains("timeout") {
        Some(UpstreamErrorKind::Timeout)
    } else if why == "upstream-connect-failed" {
        Some(UpstreamErrorKind::Connect)
    } else if why.starts_with("upstream-") {
        Some(UpstreamErrorKind::Reset)
    } else {
        Some(UpstreamErrorKind::InvalidResponse)
    }
}

async fn connect(address: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(address))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&itoa3(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "content-length: {n}\r\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_digits() {
        assert_eq!(&itoa3(200), b"200");
        assert_eq!(&itoa3(404), b"404");
        assert_eq!(&itoa3(999), b"999");
    }
}

//! The HTTP/1 conformance suite (issue 11): every vector runs against both of
//! River's HTTP/1 paths and must reach the same safe outcome on each.
//!
//! A vector is data (see [`vectors!`]): the exact bytes a raw client sends,
//! what a raw scripted upstream answers ([`Script`]), and the checks on what
//! the client received and on every byte that reached the upstream. Each
//! vector is its own `#[test]` (`v::NAME`), so that a failure is named.
//!
//! **Two paths.** One River runs two identical proxy services, each with its
//! own listener and its own scripted upstream. The *fast* run sends the
//! vector's bytes as they are. The *pingora* run forces pingora's path
//! ([`Force`]): by default it adds `Connection: x-river-pingora` and the
//! `X-River-Pingora: 1` field it names right after the request line (the fast
//! path hands any request with a `Connection` token other than close and
//! keep-alive to pingora, which then keeps the connection); for vectors that
//! must reach pingora before their head is complete (slowloris), it adds 130
//! filler field lines instead, more than the fast path takes. Some requests go
//! to pingora on both runs anyway (chunked or `Expect` uploads, HTTP/1.0,
//! upgrades, heads httparse refuses): those vectors say so. [`forcing_works`]
//! checks that the forced run really is served differently, so that a change
//! of the fast path's hand-over rules cannot silently make both runs the same.
//!
//! **Config.** Vectors about timeouts set a per-service block (issue 11, item
//! 4) with short values:
//! `timeouts { client-header-secs N client-body-secs N upstream-connect-secs N
//! upstream-read-secs N upstream-send-secs N tunnel-idle-secs N }`.
//!
//! **The differential test** ([`differential`]) sends a few hundred generated
//! requests through both paths and compares what reached the upstream and the
//! status the client saw.
//!
//! Vectors are written against RFC 9110/9112 and issue 11, not against what
//! River does today: many fail until the fixes land, and are the proof.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use river_tests::free_port;
use river_tests::raw::{
    Piece, RawClient, Read, Request, Response, Script, ScriptedUpstream, Step, Unanswered,
};
use river_tests::river::River;

/// How long a read waits for a response (a hang fails the check, not the run).
const READ_WITHIN: Duration = Duration::from_secs(10);
/// How long a close is waited for when a check wants one.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// After the client is done, time for the last bytes to reach the upstream.
const SETTLE: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// Vectors as data
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Pingora,
}

/// How the pingora run sends a vector down pingora's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Force {
    /// `Connection: x-river-pingora` + `X-River-Pingora: 1` after the request line.
    ConnectionToken,
    /// 130 `X-Pad-N: N` lines after the request line: httparse refuses more
    /// field lines than the fast path has room for (128) as soon as it sees
    /// them, so pingora gets the head while it is still arriving.
    ManyFields,
}

/// What the client does on one connection: send, then read.
#[derive(Debug, Clone)]
struct Exchange {
    /// On a new client connection (else on the current one).
    fresh: bool,
    send: Vec<Piece>,
    /// HTTP responses to read (pipelined requests read more than one).
    reads: usize,
    /// They answer HEAD requests.
    to_head: bool,
    /// Then this many raw bytes (a tunnel after a 101).
    raw: usize,
    within: Duration,
}

impl Exchange {
    fn new(send: Vec<Piece>) -> Exchange {
        Exchange {
            fresh: false,
            send,
            reads: 1,
            to_head: false,
            raw: 0,
            within: READ_WITHIN,
        }
    }
}

#[derive(Debug, Clone)]
struct Vector {
    exchanges: Vec<Exchange>,
    script: Script,
    /// Extra lines inside both services' blocks (a `timeouts { }` block).
    service: String,
    force: Force,
    checks: Vec<Check>,
    /// The services' upstream never completes a TCP connection
    /// ([`Unanswered`]); the scripted upstreams then see nothing.
    unanswered: bool,
}

/// A vector whose client sends `bytes` and reads one response; the upstream
/// serves (`200`, body `path=TARGET`).
fn request(bytes: impl Into<Vec<u8>>) -> Vector {
    pieces(vec![Piece::Bytes(bytes.into())])
}

fn pieces(send: Vec<Piece>) -> Vector {
    Vector {
        exchanges: vec![Exchange::new(send)],
        script: serve(),
        service: String::new(),
        force: Force::ConnectionToken,
        checks: Vec::new(),
        unanswered: false,
    }
}

impl Vector {
    /// The first request is a HEAD: its response has no body.
    fn answering_head(mut self) -> Self {
        self.exchanges[0].to_head = true;
        self
    }

    fn upstream(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    /// The upstream answers the first request on its first connection with
    /// `bytes`, then serves.
    fn answer(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.upstream(answer(bytes))
    }

    /// As [`Vector::answer`], then closes that connection.
    fn answer_close(self, bytes: impl Into<Vec<u8>>) -> Self {
        self.upstream(Script::first_then(
            vec![Step::Request, Step::Send(bytes.into()), Step::Close],
            vec![Step::Serve],
        ))
    }

    /// One more exchange.
    fn and(mut self, exchange: Exchange) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Then `GET /next` on the same connection: either River closed the
    /// connection, or the upstream's answer to it arrives, nothing else.
    fn then_next(self) -> Self {
        self.and(Exchange::new(vec![Piece::Bytes(get_next())]))
            .expect([Check::NextClean])
    }

    /// Then `GET /next` on a new connection, which must be served.
    fn then_next_fresh(self) -> Self {
        let mut next = Exchange::new(vec![Piece::Bytes(get_next())]);
        next.fresh = true;
        self.and(next).expect([Check::NextServed])
    }

    fn expect(mut self, checks: impl IntoIterator<Item = Check>) -> Self {
        self.checks.extend(checks);
        self
    }

    /// A `timeouts { }` block with these settings in both services.
    fn timeouts(mut self, settings: &[(&str, u64)]) -> Self {
        let mut block = String::from("        timeouts {\n");
        for (key, value) in settings {
            let _ = writeln!(block, "            {key} {value}");
        }
        block.push_str("        }\n");
        self.service = block;
        self
    }

    fn force(mut self, force: Force) -> Self {
        self.force = force;
        self
    }

    /// Connects to the upstream hang (see [`Unanswered`]).
    fn unanswered(mut self) -> Self {
        self.unanswered = true;
        self
    }
}

/// What the vector requires. Unless said otherwise a check is about the
/// first exchange's first response, or the first request upstream.
#[derive(Debug, Clone)]
enum Check {
    /// The status is one of these.
    Status(&'static [u16]),
    /// One of these statuses, or River closed without sending any byte.
    StatusOrClose(&'static [u16]),
    /// Exchange N's first response has one of these statuses.
    StatusAt(usize, &'static [u16]),
    /// A broken upstream response: the client gets a 502, or a response head
    /// and then a close before the body is complete; never `.0`, never a
    /// complete response; the connection closes.
    BrokenBody(&'static [u8]),
    /// As [`Check::BrokenBody`], or a complete response without `.0` whose
    /// body is `hello`: River may drop an invalid chunk extension or trailer
    /// (which it drops anyway) instead of failing the response.
    BrokenOrDropped(&'static [u8]),
    /// A bad chunked request body: refused (400 or a close, no complete
    /// request upstream, the connection closes), or forwarded once, re-framed,
    /// with the body `hello` and without `.0`.
    RefusedOrDropped(&'static [u8]),
    /// River closes the first connection after what it answered.
    Closed,
    /// Not one byte reached the upstream.
    NotForwarded,
    /// Exactly N complete requests to this path reached the upstream.
    Arrived(&'static str, usize),
    /// No upstream connection received these bytes.
    UpNever(&'static [u8]),
    /// At least one request reached the upstream, and none has this field.
    UpAbsent(&'static str),
    /// The first request upstream has exactly these lines of the field.
    UpLines(&'static str, &'static [&'static str]),
    UpBody(&'static [u8]),
    /// Every request upstream has no Transfer-Encoding, or exactly one
    /// `Transfer-Encoding: chunked` line.
    UpCleanFraming,
    /// The response has exactly these lines of the field.
    Lines(&'static str, &'static [&'static str]),
    Absent(&'static str),
    Body(&'static [u8]),
    /// The client never received these bytes (on any connection).
    Never(&'static [u8]),
    /// An interim response with this status came before the response.
    Interim(u16),
    NoInterim(u16),
    /// The last exchange (`GET /next`) found the connection closed, or got
    /// exactly `200` with `path=/next`.
    NextClean,
    /// The last exchange got `200` with `path=/next`.
    NextServed,
    /// The first exchange's first read ended (a response or a close) this soon.
    Within(Duration),
    Custom(&'static str, fn(&Run) -> Result<(), String>),
}

// ---------------------------------------------------------------------------
// Building bytes
// ---------------------------------------------------------------------------

const HOST: &str = "Host: localhost";

/// Lines joined by CRLF, and the empty line that ends a head.
fn head(lines: &[&str]) -> String {
    let mut head = lines.join("\r\n");
    head.push_str("\r\n\r\n");
    head
}

fn get() -> Vector {
    request(head(&["GET /v HTTP/1.1", HOST]))
}

fn get_next() -> Vec<u8> {
    head(&["GET /next HTTP/1.1", HOST]).into_bytes()
}

/// `POST /v` with `fields` and then `body`.
fn post(fields: &[&str], body: &str) -> Vector {
    let mut lines = vec!["POST /v HTTP/1.1", HOST];
    lines.extend_from_slice(fields);
    request(head(&lines) + body)
}

/// A chunked `POST /v` whose body is `body` as sent.
fn post_chunked(body: &str) -> Vector {
    post(&["Transfer-Encoding: chunked"], body)
}

/// A response `HTTP/1.1 200 OK` with these fields and this body.
fn ok(fields: &[&str], body: &str) -> Vec<u8> {
    let mut lines = vec!["HTTP/1.1 200 OK"];
    lines.extend_from_slice(fields);
    (head(&lines) + body).into_bytes()
}

/// A chunked `200` response whose body is `body` as sent, followed by a
/// forged second response on the same upstream connection.
fn chunked_then_forged(body: &str) -> Vec<u8> {
    let mut bytes = ok(&["Transfer-Encoding: chunked"], body);
    bytes.extend_from_slice(FORGED);
    bytes
}

/// A response that must never reach a client: an upstream's bytes after the
/// end of a response, which a framing mistake would take as the next one.
const FORGED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged";

fn serve() -> Script {
    Script::each(vec![Step::Serve])
}

/// The first request on the first connection gets `bytes`; then serve.
fn answer(bytes: impl Into<Vec<u8>>) -> Script {
    Script::first_then(
        vec![Step::Request, Step::Send(bytes.into()), Step::Serve],
        vec![Step::Serve],
    )
}

/// The first connection answers `/one` and then reads the next request and
/// closes without answering (the close crosses it); later connections serve.
fn stale_after_one() -> Script {
    Script::first_then(
        vec![
            Step::Request,
            Step::Send(ok(&["Content-Length: 8"], "path=one").to_vec()),
            Step::Request,
            Step::Close,
        ],
        vec![Step::Serve],
    )
}

/// `GET /one`, then `request` on the same connection: the stale-connection
/// retry vectors.
fn after_one(second: String) -> Vector {
    request(head(&["GET /one HTTP/1.1", HOST]))
        .and(Exchange::new(vec![Piece::Bytes(second.into_bytes())]))
        .upstream(stale_after_one())
}

fn bytes(text: &str) -> Piece {
    Piece::Bytes(text.as_bytes().to_vec())
}

fn pause(ms: u64) -> Piece {
    Piece::Pause(Duration::from_millis(ms))
}

/// `count` field lines `X-F-N: value-N` padded to `width` bytes of value.
fn many_fields(count: usize, width: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let value = format!("value-{i}-");
            format!(
                "X-F-{i}: {value}{}",
                "v".repeat(width.saturating_sub(value.len()))
            )
        })
        .collect()
}

/// A response with [`many_fields`].
fn ok_many_fields(count: usize, width: usize) -> Vec<u8> {
    let fields = many_fields(count, width);
    let mut lines = vec!["Content-Length: 5"];
    lines.extend(fields.iter().map(String::as_str));
    ok(&lines, "hello")
}

// ---------------------------------------------------------------------------
// The vectors
// ---------------------------------------------------------------------------

/// Each entry becomes `#[test] fn v::NAME` running [`run`]; [`all_vectors`]
/// lists them all (for the count).
macro_rules! vectors {
    ($($(#[doc = $doc:literal])* $name:ident => $vector:expr,)*) => {
        mod v {
            use super::*;
            $(
                $(#[doc = $doc])*
                #[test]
                fn $name() {
                    run(stringify!($name), $vector);
                }
            )*
        }

        fn all_vectors() -> Vec<(&'static str, Vector)> {
            vec![$((stringify!($name), $vector)),*]
        }
    };
}

use Check::*;

vectors! {
    // --- Transfer-Encoding in requests (RFC 9112 §6.1, §6.3) ----------------
    // Chunked uploads go to pingora on both runs today (the fast path hands
    // them over).

    /// A plain chunked upload arrives once, with its body, framed cleanly.
    te_chunked_request_is_forwarded => post_chunked("5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), Arrived("/v", 1), UpBody(b"hello"), UpCleanFraming])
        .then_next(),
    /// Empty list elements are ignored (RFC 9110 §5.6.1): `, chunked` is chunked.
    te_leading_empty_element_is_chunked => post(&["Transfer-Encoding: , chunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), Arrived("/v", 1), UpBody(b"hello"), UpCleanFraming])
        .then_next(),
    /// `chunked, ` is chunked too, and never forwarded as `chunked, `.
    te_trailing_empty_element_is_chunked => post(&["Transfer-Encoding: chunked, "], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), Arrived("/v", 1), UpBody(b"hello"), UpCleanFraming])
        .then_next(),
    /// A coding River does not implement: 501, as nginx.
    te_gzip_chunked_request_is_501 => post(&["Transfer-Encoding: gzip, chunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[501]), NotForwarded, Closed]),
    te_identity_request_is_501 => post(&["Transfer-Encoding: identity"], "")
        .expect([Status(&[501]), NotForwarded, Closed]),
    te_unknown_coding_request_is_501 => post(&["Transfer-Encoding: xchunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[501]), NotForwarded, Closed]),
    te_quoted_chunked_request_is_501 => post(&["Transfer-Encoding: \"chunked\""], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[501]), NotForwarded, Closed]),
    /// The list spans all lines: `gzip` then `chunked` is `gzip, chunked`.
    te_list_across_lines_request_is_501 => post(&["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[501]), NotForwarded, Closed]),
    /// Chunked not last in a request: 400 (RFC 9112 §6.3), or 501 for gzip.
    te_chunked_not_last_request_is_refused => post(&["Transfer-Encoding: chunked, gzip"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[400, 501]), NotForwarded, Closed]),
    /// Chunked applied twice (RFC 9112 §6.1 forbids it).
    te_chunked_twice_request_is_refused => post(&["Transfer-Encoding: chunked, chunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[400, 501]), NotForwarded, Closed]),
    /// Transfer-Encoding in HTTP/1.0 is faulty framing (RFC 9112 §6.1): 400.
    te_in_http10_request_is_400 => request("POST /v HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[400]), NotForwarded, Closed]),
    /// Both framings: 400, as nginx (RFC 9112 §6.3 allows no less).
    te_with_content_length_request_is_400 => post(&["Transfer-Encoding: chunked", "Content-Length: 5"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[400]), NotForwarded, Closed]),
    te_uppercase_chunked_request_is_chunked => post(&["Transfer-Encoding: CHUNKED"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), UpBody(b"hello"), UpCleanFraming]),
    te_tab_before_value_request_is_chunked => post(&["Transfer-Encoding:\tchunked"], "5\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), UpBody(b"hello"), UpCleanFraming]),

    // --- Chunked request bodies (RFC 9112 §7.1) ----------------------------

    chunked_request_extension_is_accepted => post_chunked("5;name=value\r\nhello\r\n0\r\n\r\n")
        .expect([Status(&[200]), UpBody(b"hello")])
        .then_next(),
    chunked_request_trailer_is_consumed => post_chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")
        .expect([Status(&[200]), UpBody(b"hello")])
        .then_next(),
    /// A size that overflows 64 bits: refused, and the bytes after it are
    /// never a request upstream.
    chunked_request_size_overflow_is_refused => post_chunked("fffffffffffffffff1\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), UpNever(b"/smuggled"), Closed]),
    /// 2^64 + 5 read modulo 2^64 would be 5.
    chunked_request_size_wrapping_u64_is_refused => post_chunked("10000000000000005\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), UpNever(b"/smuggled"), Closed]),
    chunked_request_bare_lf_is_refused => post_chunked("5\nhello\n0\n\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), UpNever(b"/smuggled"), Closed]),
    chunked_request_junk_after_size_is_refused => post_chunked("5xyz\r\nhello\r\n0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), Closed]),
    chunked_request_bare_cr_in_extension_is_refused => post_chunked("5;a\rb\r\nhello\r\n0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), UpNever(b"a\rb"), Closed]),
    chunked_request_data_without_crlf_is_refused => post_chunked("5\r\nhelloXX0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), Closed]),
    /// An invalid trailer line: refused, or dropped with the trailer section.
    chunked_request_colonless_trailer_is_refused_or_dropped => post_chunked("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n")
        .expect([RefusedOrDropped(b"bad trailer")]),
    chunked_request_0x_size_is_refused => post_chunked("0x5\r\nhello\r\n0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), Closed]),
    chunked_request_negative_size_is_refused => post_chunked("-5\r\nhello\r\n0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), Closed]),
    chunked_request_space_before_size_is_refused => post_chunked(" 5\r\nhello\r\n0\r\n\r\n")
        .expect([StatusOrClose(&[400]), Arrived("/v", 0), Closed]),

    // --- Content-Length in requests (RFC 9110 §8.6, RFC 9112 §6.3) ---------

    /// A list of one value: forwarded as one line.
    cl_list_of_equal_values_is_normalized => post(&["Content-Length: 5,5"], "hello")
        .expect([Status(&[200]), UpLines("content-length", &["5"]), UpBody(b"hello")])
        .then_next(),
    cl_equal_lines_are_normalized => post(&["Content-Length: 5", "Content-Length: 5"], "hello")
        .expect([Status(&[200]), UpLines("content-length", &["5"]), UpBody(b"hello")])
        .then_next(),
    cl_list_of_different_values_is_400 => post(&["Content-Length: 5,6"], "hello!")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_different_lines_is_400 => post(&["Content-Length: 5", "Content-Length: 6"], "hello!")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_plus_sign_is_400 => post(&["Content-Length: +5"], "hello")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_negative_is_400 => post(&["Content-Length: -5"], "hello")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_hex_is_400 => post(&["Content-Length: 0x5"], "hello")
        .expect([Status(&[400]), NotForwarded, Closed]),
    /// 2^64 + 5.
    cl_overflow_is_refused => post(&["Content-Length: 18446744073709551621"], "hello")
        .expect([Status(&[400, 413]), NotForwarded, Closed]),
    cl_empty_is_400 => post(&["Content-Length: "], "hello")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_space_inside_is_400 => post(&["Content-Length: 5 5"], "hello")
        .expect([Status(&[400]), NotForwarded, Closed]),
    cl_leading_zeros_are_a_length => post(&["Content-Length: 005"], "hello")
        .expect([Status(&[200]), UpBody(b"hello")])
        .then_next(),
    /// A body that looks like a request is a body.
    cl_body_looking_like_a_request_is_a_body => request(head(&["GET /v HTTP/1.1", HOST, "Content-Length: 43"]) + "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([Status(&[200]), Arrived("/v", 1), Arrived("/smuggled", 0), UpBody(b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")])
        .then_next(),
    /// Pipelined requests after a body stay requests of their own: answered
    /// in order, or the connection closes after the first answer (RFC 9112
    /// §9.3.2 lets a server close; the client retries).
    cl_pipelined_requests_stay_in_order => {
        let mut v = request(head(&["POST /v HTTP/1.1", HOST, "Content-Length: 5"]) + "hello" + &head(&["GET /second HTTP/1.1", HOST]));
        v.exchanges[0].reads = 2;
        v.expect([Status(&[200]), Arrived("/v", 1), Custom("answers in order, or a close after the first", |run| {
            let bodies: Vec<String> = run.got[0].iter().filter_map(Got::response).map(Response::text).collect();
            let closed = matches!(run.got[0].get(1), Some(Got::Http(Read::Closed(rest))) if rest.is_empty());
            match (bodies.as_slice(), run.arrived("/second")) {
                ([first, second], 1) if first == "path=/v" && second == "path=/second" => Ok(()),
                ([first], 0) if first == "path=/v" && closed => Ok(()),
                _ => Err(format!("bodies {bodies:?}, /second upstream {} times", run.arrived("/second"))),
            }
        })])
    },

    // --- Host (RFC 9112 §3.2) -------------------------------------------------

    host_two_lines_is_400 => request(head(&["GET /v HTTP/1.1", HOST, "Host: other.example"]))
        .expect([Status(&[400]), NotForwarded]),
    host_two_equal_lines_is_400 => request(head(&["GET /v HTTP/1.1", HOST, HOST]))
        .expect([Status(&[400]), NotForwarded]),
    host_list_is_400 => request(head(&["GET /v HTTP/1.1", "Host: a.example, b.example"]))
        .expect([Status(&[400]), NotForwarded]),
    host_with_space_is_400 => request(head(&["GET /v HTTP/1.1", "Host: exa mple.com"]))
        .expect([Status(&[400]), NotForwarded]),
    host_with_path_is_400 => request(head(&["GET /v HTTP/1.1", "Host: example.com/evil"]))
        .expect([Status(&[400]), NotForwarded]),
    host_with_userinfo_is_400 => request(head(&["GET /v HTTP/1.1", "Host: user@example.com"]))
        .expect([Status(&[400]), NotForwarded]),
    host_bad_port_is_400 => request(head(&["GET /v HTTP/1.1", "Host: example.com:8x"]))
        .expect([Status(&[400]), NotForwarded]),
    host_unclosed_ip_literal_is_400 => request(head(&["GET /v HTTP/1.1", "Host: [::1"]))
        .expect([Status(&[400]), NotForwarded]),
    host_ip_literal_with_port_is_kept => request(head(&["GET /v HTTP/1.1", "Host: [::1]:8080"]))
        .expect([Status(&[200]), UpLines("host", &["[::1]:8080"])]),
    host_name_with_port_is_kept => request(head(&["GET /v HTTP/1.1", "Host: example.com:8080"]))
        .expect([Status(&[200]), UpLines("host", &["example.com:8080"])]),
    http11_without_host_is_400 => request(head(&["GET /v HTTP/1.1"]))
        .expect([Status(&[400]), NotForwarded]),
    /// HTTP/1.0 without Host keeps working (goes to pingora on both runs).
    http10_without_host_is_served => request(head(&["GET /v HTTP/1.0"]))
        .expect([Status(&[200]), Arrived("/v", 1), Body(b"path=/v")]),

    // --- Hop-by-hop fields, request side (RFC 9110 §7.6.1) -------------------
    // A request with a `Connection` token other than close/keep-alive goes to
    // pingora on both runs today.

    req_field_named_in_connection_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Connection: x-secret", "X-Secret: 1", "X-Kept: 1"]))
        .expect([Status(&[200]), UpAbsent("x-secret"), UpAbsent("x-river-pingora"), UpLines("x-kept", &["1"])]),
    req_several_fields_named_in_connection_are_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Connection: keep-alive, X-A", "Connection: X-B", "X-A: 1", "X-B: 2", "X-C: 3"]))
        .expect([Status(&[200]), UpAbsent("x-a"), UpAbsent("x-b"), UpLines("x-c", &["3"])]),
    req_keep_alive_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Keep-Alive: timeout=5"]))
        .expect([Status(&[200]), UpAbsent("keep-alive")]),
    req_proxy_connection_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Proxy-Connection: keep-alive"]))
        .expect([Status(&[200]), UpAbsent("proxy-connection")]),
    req_te_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "TE: trailers"]))
        .expect([Status(&[200]), UpAbsent("te")]),
    req_trailer_is_stripped => post(&["Content-Length: 5", "Trailer: X-T"], "hello")
        .expect([Status(&[200]), UpAbsent("trailer"), UpBody(b"hello")]),
    /// `Upgrade` without `Connection: upgrade` is no upgrade.
    req_upgrade_without_connection_upgrade_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Upgrade: websocket"]))
        .expect([Status(&[200]), UpAbsent("upgrade"), Body(b"path=/v")]),
    req_proxy_authorization_is_stripped => request(head(&["GET /v HTTP/1.1", HOST, "Proxy-Authorization: Basic dXNlcjpwYXNz"]))
        .expect([Status(&[200]), UpAbsent("proxy-authorization")]),
    /// Naming X-Forwarded-For in Connection cannot strip the one River adds:
    /// refused (pingora answers 400: "protected header cannot be nominated
    /// by the Connection header"), or River's own value reaches the upstream.
    req_connection_naming_forwarded_for_is_refused_or_harmless => request(head(&["GET /v HTTP/1.1", HOST, "Connection: x-forwarded-for", "X-Forwarded-For: 203.0.113.9"]))
        .expect([Status(&[200, 400]), Custom("a forwarded x-forwarded-for ends with the client's address", |run| {
            if run.first_response().is_some_and(|r| r.status == 400) {
                return Ok(());
            }
            let request = run.first_request().ok_or("no request upstream")?;
            let xff = request.fields.all("x-forwarded-for").join(", ");
            if xff.ends_with("127.0.0.1") { Ok(()) } else { Err(format!("x-forwarded-for: {xff:?}")) }
        })]),
    /// The pingora run forces its path with filler fields, not a second
    /// `Connection` line (see the next vector for that).
    req_connection_close_closes => request(head(&["GET /v HTTP/1.1", HOST, "Connection: close"]))
        .force(Force::ManyFields)
        .expect([Status(&[200]), Body(b"path=/v"), Closed]),
    /// `Connection` is a list over all its lines (RFC 9110 §5.3).
    req_connection_close_on_a_second_line_closes => request(head(&["GET /v HTTP/1.1", HOST, "Connection: keep-alive", "Connection: close"]))
        .force(Force::ManyFields)
        .expect([Status(&[200]), Body(b"path=/v"), Closed]),

    // --- Hop-by-hop fields, response side -------------------------------------

    resp_field_named_in_connection_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Connection: x-up", "X-Up: 1", "X-Kept: 1"], "hello"))
        .expect([Status(&[200]), Absent("x-up"), Lines("x-kept", &["1"]), Body(b"hello")]),
    resp_keep_alive_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Keep-Alive: timeout=5, max=100"], "hello"))
        .expect([Status(&[200]), Absent("keep-alive"), Body(b"hello")]),
    resp_proxy_connection_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Proxy-Connection: keep-alive"], "hello"))
        .expect([Status(&[200]), Absent("proxy-connection"), Body(b"hello")]),
    resp_te_field_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "TE: trailers"], "hello"))
        .expect([Status(&[200]), Absent("te"), Body(b"hello")]),
    resp_trailer_field_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Trailer: X-T"], "hello"))
        .expect([Status(&[200]), Absent("trailer"), Body(b"hello")]),
    resp_upgrade_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Upgrade: h2c"], "hello"))
        .expect([Status(&[200]), Absent("upgrade"), Body(b"hello")]),
    resp_proxy_authenticate_is_stripped => get()
        .answer(ok(&["Content-Length: 5", "Proxy-Authenticate: Basic realm=\"x\""], "hello"))
        .expect([Status(&[200]), Absent("proxy-authenticate"), Body(b"hello")]),

    // --- 1xx (RFC 9110 §15.2) ---------------------------------------------------

    /// `Expect` uploads go to pingora on both runs.
    resp_100_continue_is_relayed => pieces(vec![bytes(&head(&["POST /v HTTP/1.1", HOST, "Content-Length: 5", "Expect: 100-continue"])), pause(300), bytes("hello")])
        .upstream(Script::first_then(
            vec![Step::Head, Step::Send(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()), Step::Bytes(5), Step::Send(ok(&["Content-Length: 7"], "created")), Step::Serve],
            vec![Step::Serve],
        ))
        .expect([Status(&[200]), Interim(100), Body(b"created"), UpBody(b"hello")]),
    resp_103_early_hints_is_relayed => get()
        .answer([&b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"[..], &ok(&["Content-Length: 5"], "hello")].concat())
        .expect([Status(&[200]), Interim(103), Body(b"hello"), Custom("the 103 keeps its Link field", |run| {
            let response = run.first_response().ok_or("no response")?;
            let hints = response.interim.iter().find(|i| i.status == 103).ok_or("no 103")?;
            if hints.fields.get("link") == Some("</style.css>; rel=preload") { Ok(()) } else { Err(format!("103 fields {:?}", hints.fields)) }
        })])
        .then_next(),
    resp_102_processing_is_dropped => get()
        .answer([&b"HTTP/1.1 102 Processing\r\n\r\n"[..], &ok(&["Content-Length: 5"], "hello")].concat())
        .expect([Status(&[200]), NoInterim(102), Body(b"hello")])
        .then_next(),
    resp_unknown_1xx_is_dropped => get()
        .answer([&b"HTTP/1.1 150 Odd\r\n\r\n"[..], &ok(&["Content-Length: 5"], "hello")].concat())
        .expect([Status(&[200]), NoInterim(150), Body(b"hello")])
        .then_next(),
    /// A 1xx has no body; a length field on it is dropped, not obeyed.
    resp_1xx_content_length_is_stripped => get()
        .answer([&b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n"[..], &ok(&["Content-Length: 5"], "hello")].concat())
        .expect([Status(&[200]), Body(b"hello"), Custom("no 1xx carries a Content-Length", |run| {
            let response = run.first_response().ok_or("no response")?;
            match response.interim.iter().find(|i| i.fields.has("content-length")) {
                Some(interim) => Err(format!("{} with {:?}", interim.status, interim.fields)),
                None => Ok(()),
            }
        })])
        .then_next(),
    /// A 101 the client did not ask for: 502, and the bytes after it never
    /// reach the client.
    resp_101_without_upgrade_request_is_502 => get()
        .answer_close(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\ntunnel bytes".to_vec())
        .expect([Status(&[502]), Never(b"tunnel bytes"), Never(b"101 Switching")]),
    /// An upgrade the client asked for: the 101 and a tunnel both ways, with
    /// Upgrade kept (upgrades go to pingora on both runs).
    upgrade_request_gets_101_and_a_tunnel => {
        let mut tunnel = Exchange::new(vec![bytes("ping")]);
        tunnel.reads = 0;
        tunnel.raw = 4;
        request(head(&["GET /ws HTTP/1.1", HOST, "Connection: Upgrade", "Upgrade: websocket"]))
            .upstream(Script::first_then(
                vec![Step::Request, Step::Send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec()), Step::Bytes(4), Step::Send(b"pong".to_vec()), Step::Hang],
                vec![Step::Serve],
            ))
            .and(tunnel)
            .expect([Status(&[101]), UpLines("upgrade", &["websocket"]), Custom("pong through the tunnel", |run| {
                match run.got.get(1).and_then(|g| g.first()) {
                    Some(Got::Raw(raw)) if raw == b"pong" => Ok(()),
                    other => Err(format!("tunnel read {other:?}")),
                }
            })])
    },

    // --- Responses without a body (RFC 9110 §6.4.1, RFC 9112 §6.3) -----------

    head_response_has_no_body => get_head()
        .answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec())
        .expect([Status(&[200]), Body(b"")])
        .then_next(),
    head_response_with_chunked_has_no_transfer_encoding => get_head()
        .answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec())
        .expect([Status(&[200]), Absent("transfer-encoding"), Body(b"")])
        .then_next(),
    /// A 204 whose upstream sent a body anyway: no length, no body; the bytes
    /// never become the next response.
    resp_204_with_body_has_none => get()
        .answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello".to_vec())
        .expect([Status(&[204]), Absent("content-length"), Never(b"hello")])
        .then_next(),
    resp_204_with_chunked_has_no_transfer_encoding => get()
        .answer(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec())
        .expect([Status(&[204]), Absent("transfer-encoding")])
        .then_next(),
    resp_304_has_no_body => get()
        .answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\n".to_vec())
        .expect([Status(&[304]), Body(b"")])
        .then_next(),
    resp_304_with_chunked_has_no_transfer_encoding => get()
        .answer(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: \"v1\"\r\n\r\n".to_vec())
        .expect([Status(&[304]), Absent("transfer-encoding")])
        .then_next(),

    // --- Transfer-Encoding in responses -------------------------------------

    /// Issue 11's forged response: `chunked, ` read as "until close" by River
    /// and as chunked by the client makes the upstream's next bytes the
    /// answer to the client's next request.
    resp_te_trailing_empty_element_forges_nothing => get()
        .answer_close(chunked_then_forged("5\r\nhello\r\n0\r\n\r\n").replace_te("chunked, "))
        .expect([Status(&[200]), Body(b"hello"), Never(b"forged")])
        .then_next(),
    resp_te_leading_empty_element_is_chunked => get()
        .answer_close(chunked_then_forged("5\r\nhello\r\n0\r\n\r\n").replace_te(", chunked"))
        .expect([Status(&[200]), Body(b"hello"), Never(b"forged")])
        .then_next(),
    resp_te_gzip_chunked_is_502 => get()
        .answer_close(ok(&["Transfer-Encoding: gzip, chunked"], "5\r\nhello\r\n0\r\n\r\n"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_te_identity_is_502 => get()
        .answer_close(ok(&["Transfer-Encoding: identity"], "hello"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_te_unknown_coding_is_502 => get()
        .answer_close(ok(&["Transfer-Encoding: xchunked"], "5\r\nhello\r\n0\r\n\r\n"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_te_list_across_lines_is_502 => get()
        .answer_close(ok(&["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"], "5\r\nhello\r\n0\r\n\r\n"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_te_in_http10_is_502 => get()
        .answer_close(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec())
        .expect([Status(&[502]), Never(b"hello")]),
    /// Both framings in a response: Transfer-Encoding wins and Content-Length
    /// is dropped (RFC 9112 §6.3), or 502; never both to the client.
    resp_te_with_content_length_keeps_one_framing => get()
        .answer_close(chunked_then_forged("5\r\nhello\r\n0\r\n\r\n").replace_te("chunked\r\nContent-Length: 100"))
        .expect([Status(&[200, 502]), Never(b"forged"), Custom("a 200 has the chunked body and no Content-Length", |run| {
            let response = run.first_response().ok_or("no response")?;
            if response.status != 200 { return Ok(()); }
            if response.fields.has("content-length") && response.fields.has("transfer-encoding") {
                return Err("both framings sent to the client".into());
            }
            if response.body == b"hello" { Ok(()) } else { Err(format!("body {:?}", response.text())) }
        })])
        .then_next(),

    // --- Content-Length in responses ------------------------------------------

    resp_cl_list_of_equal_values_is_normalized => get()
        .answer(ok(&["Content-Length: 5,5"], "hello"))
        .expect([Status(&[200]), Lines("content-length", &["5"]), Body(b"hello")])
        .then_next(),
    resp_cl_equal_lines_are_normalized => get()
        .answer(ok(&["Content-Length: 5", "Content-Length: 5"], "hello"))
        .expect([Status(&[200]), Lines("content-length", &["5"]), Body(b"hello")])
        .then_next(),
    resp_cl_list_of_different_values_is_502 => get()
        .answer_close(ok(&["Content-Length: 5,6"], "hello!"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_cl_different_lines_is_502 => get()
        .answer_close(ok(&["Content-Length: 5", "Content-Length: 6"], "hello!"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_cl_plus_sign_is_502 => get()
        .answer_close(ok(&["Content-Length: +5"], "hello"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_cl_overflow_is_502 => get()
        .answer_close(ok(&["Content-Length: 18446744073709551621"], "hello"))
        .expect([Status(&[502]), Never(b"hello")]),
    resp_cl_not_a_number_is_502 => get()
        .answer_close(ok(&["Content-Length: five"], "hello"))
        .expect([Status(&[502]), Never(b"hello")]),

    // --- Chunked responses: strict, re-framed, never relayed broken ----------

    resp_chunk_bare_cr_in_extension_is_not_relayed => get()
        .answer_close(chunked_then_forged("5;a\rb\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"a\rb"), Never(b"forged")])
        .then_next(),
    resp_chunk_bare_lf_after_size_is_not_relayed => get()
        .answer_close(chunked_then_forged("5\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"5\nhello"), Never(b"forged")])
        .then_next(),
    resp_chunk_bare_lf_after_data_is_not_relayed => get()
        .answer_close(chunked_then_forged("5\r\nhello\n0\r\n\r\n"))
        .expect([BrokenBody(b"hello\n0"), Never(b"forged")])
        .then_next(),
    resp_chunk_junk_after_size_is_not_relayed => get()
        .answer_close(chunked_then_forged("5xyz\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"5xyz"), Never(b"forged")])
        .then_next(),
    resp_chunk_colonless_trailer_is_not_relayed => get()
        .answer_close(chunked_then_forged("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"))
        .expect([BrokenOrDropped(b"bad trailer"), Never(b"forged")])
        .then_next(),
    resp_chunk_size_overflow_is_not_relayed => get()
        .answer_close(chunked_then_forged("fffffffffffffffff\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"fffffffffffffffff"), Never(b"forged")])
        .then_next(),
    /// 2^64 + 5 read modulo 2^64 would be 5, and the forged response next.
    resp_chunk_size_wrapping_u64_is_not_relayed => get()
        .answer_close(chunked_then_forged("10000000000000005\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"10000000000000005"), Never(b"forged")])
        .then_next(),
    resp_chunk_data_without_crlf_is_not_relayed => get()
        .answer_close(chunked_then_forged("5\r\nhelloXX\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"helloXX"), Never(b"forged")])
        .then_next(),
    resp_chunk_0x_size_is_not_relayed => get()
        .answer_close(chunked_then_forged("0x5\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenBody(b"0x5"), Never(b"forged")])
        .then_next(),
    resp_chunk_extension_without_name_is_not_relayed => get()
        .answer_close(chunked_then_forged("5;=x\r\nhello\r\n0\r\n\r\n"))
        .expect([BrokenOrDropped(b";=x"), Never(b"forged")])
        .then_next(),
    /// Valid extensions (quoted values too) and a trailer: a complete body.
    resp_chunk_valid_extensions_and_trailer_pass => get()
        .answer(ok(&["Transfer-Encoding: chunked"], "5;a=b;c=\"d e\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"))
        .expect([Status(&[200]), Body(b"hello world")])
        .then_next(),

    // --- Retries (RFC 9110 §9.2.2, RFC 9112 §9.3.1) --------------------------
    // The upstream answers GET /one, then reads the next request on that
    // connection and closes without answering.

    post_is_not_replayed_when_a_pooled_connection_closes => after_one(head(&["POST /two HTTP/1.1", HOST, "Content-Length: 5"]) + "hello")
        .expect([StatusAt(1, &[502]), Arrived("/two", 1)]),
    patch_is_not_replayed_when_a_pooled_connection_closes => after_one(head(&["PATCH /two HTTP/1.1", HOST, "Content-Length: 5"]) + "hello")
        .expect([StatusAt(1, &[502]), Arrived("/two", 1)]),
    post_without_body_is_not_replayed_when_a_pooled_connection_closes => after_one(head(&["POST /two HTTP/1.1", HOST, "Content-Length: 0"]))
        .expect([StatusAt(1, &[502]), Arrived("/two", 1)]),
    /// GET is idempotent: it may go again on a fresh connection, once.
    get_is_retried_when_a_pooled_connection_closes => after_one(head(&["GET /two HTTP/1.1", HOST]))
        .expect([StatusAt(1, &[200]), Arrived("/two", 2), Custom("the retry's answer", |run| {
            match run.got.get(1).and_then(|g| g.first()).and_then(Got::response) {
                Some(r) if r.body == b"path=/two" => Ok(()),
                other => Err(format!("{:?}", other.map(Response::text))),
            }
        })]),
    /// PUT is idempotent too: answered (maybe after one retry), never sent more than twice.
    put_is_sent_at_most_twice_when_a_pooled_connection_closes => after_one(head(&["PUT /two HTTP/1.1", HOST, "Content-Length: 5"]) + "hello")
        .expect([StatusAt(1, &[200, 502]), Custom("PUT /two upstream once or twice", |run| {
            match run.arrived("/two") { 1 | 2 => Ok(()), n => Err(format!("{n} times")) }
        })]),
    /// A fresh connection closed after reading a POST: 502, sent once.
    post_is_sent_once_when_a_fresh_connection_closes => post(&["Content-Length: 5"], "hello")
        .upstream(Script::each(vec![Step::Request, Step::Close]))
        .expect([Status(&[502]), Arrived("/v", 1)]),

    // --- Limits -----------------------------------------------------------------

    /// More than 128 field lines in a response head: forwarded, as nginx.
    resp_head_with_200_fields_is_forwarded => get()
        .answer(ok_many_fields(200, 10))
        .expect([Status(&[200]), Body(b"hello"), Custom("all 200 fields", |run| all_fields(run, 200))])
        .then_next(),
    /// A 60 KiB response head.
    resp_head_of_60_kib_is_forwarded => get()
        .answer(ok_many_fields(30, 2000))
        .expect([Status(&[200]), Body(b"hello"), Custom("all 30 fields", |run| all_fields(run, 30))])
        .then_next(),
    /// 200 request field lines reach the upstream (pingora takes them on both runs).
    req_head_with_200_fields_is_forwarded => {
        let fields = many_fields(200, 10);
        let mut lines = vec!["GET /v HTTP/1.1", HOST];
        lines.extend(fields.iter().map(String::as_str));
        request(head(&lines))
            .expect([Status(&[200]), Custom("all 200 fields upstream", |run| {
                let request = run.first_request().ok_or("no request upstream")?;
                let missing = (0..200).filter(|i| !request.fields.has(&format!("x-f-{i}"))).count();
                if missing == 0 { Ok(()) } else { Err(format!("{missing} fields missing")) }
            })])
    },

    // --- Timeouts (issue 11 item 4: `timeouts { }` per service) --------------

    /// A client that stops in the middle of a body: 408 or a close.
    timeout_client_body_stall_is_408_or_close => pieces(vec![bytes(&(head(&["POST /v HTTP/1.1", HOST, "Content-Length: 100"]) + "0123456789")), pause(8000), bytes(&"x".repeat(90))])
        .timeouts(&[("client-body-secs", 1)])
        .expect([StatusOrClose(&[408]), Within(Duration::from_secs(5))]),
    timeout_client_chunked_body_stall_is_408_or_close => pieces(vec![bytes(&(head(&["POST /v HTTP/1.1", HOST, "Transfer-Encoding: chunked"]) + "5\r\nhello\r\n")), pause(8000), bytes("0\r\n\r\n")])
        .timeouts(&[("client-body-secs", 1)])
        .expect([StatusOrClose(&[408]), Within(Duration::from_secs(5))]),
    /// An upstream that reads the request and never answers: 504.
    timeout_upstream_never_answers_is_504 => get()
        .upstream(Script::each(vec![Step::Request, Step::Hang]))
        .timeouts(&[("upstream-read-secs", 1)])
        .expect([Status(&[504]), Within(Duration::from_secs(5))]),
    /// An upstream that stops in the middle of a body: the client connection
    /// closes, and the response does not look complete.
    timeout_upstream_body_stall_closes => get()
        .upstream(Script::each(vec![Step::Request, Step::Send(ok(&["Content-Length: 100"], "0123456789")), Step::Hang]))
        .timeouts(&[("upstream-read-secs", 1)])
        .expect([BrokenBody(b""), Within(Duration::from_secs(5))]),
    /// A slow upstream within the timeout is fine: it is per read, not per
    /// response (three 1 s gaps, 3 s in all, against 2 s).
    timeout_upstream_read_is_between_reads => get()
        .upstream(Script::each(vec![
            Step::Request,
            Step::Pause(Duration::from_secs(1)), Step::Send(ok(&["Content-Length: 10"], "012")),
            Step::Pause(Duration::from_secs(1)), Step::Send(b"3456".to_vec()),
            Step::Pause(Duration::from_secs(1)), Step::Send(b"789".to_vec()),
            Step::Serve,
        ]))
        .timeouts(&[("upstream-read-secs", 2)])
        .expect([Status(&[200]), Body(b"0123456789")]),
    /// An upstream that does not complete the TCP handshake: 504 after
    /// upstream-connect-secs (nginx: 504 on a connect timeout).
    timeout_upstream_connect_is_504 => get()
        .unanswered()
        .timeouts(&[("upstream-connect-secs", 1)])
        .expect([Status(&[504]), Within(Duration::from_secs(5))]),
    /// Slowloris: a head trickled a byte at a time; the whole head must come
    /// within client-header-secs. The pingora run sends 130 field lines first
    /// so that pingora has the connection while the head is still arriving.
    timeout_slow_request_head_is_cut_off => pieces(slowloris())
        .force(Force::ManyFields)
        .timeouts(&[("client-header-secs", 1)])
        .expect([StatusOrClose(&[408]), Within(Duration::from_secs(5)), NotForwarded]),
    /// An idle upgraded connection closes after tunnel-idle-secs.
    timeout_idle_tunnel_closes => {
        let mut tunnel = Exchange::new(vec![bytes("ping")]);
        tunnel.reads = 0;
        tunnel.raw = 4;
        request(head(&["GET /ws HTTP/1.1", HOST, "Connection: Upgrade", "Upgrade: websocket"]))
            .upstream(Script::first_then(
                vec![Step::Request, Step::Send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec()), Step::Bytes(4), Step::Send(b"pong".to_vec()), Step::Hang],
                vec![Step::Serve],
            ))
            .timeouts(&[("tunnel-idle-secs", 1)])
            .and(tunnel)
            .expect([Status(&[101]), Closed])
    },

    // --- Smuggling: what holds today and must keep holding -------------------

    /// CL.TE: never a smuggled request (holds today), and 400 (issue 11).
    smuggle_cl_te_is_refused => post(&["Content-Length: 4", "Transfer-Encoding: chunked"], "3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([UpNever(b"/smuggled"), Status(&[400]), NotForwarded, Closed]),
    /// TE.CL: never a smuggled request (holds today), and 400 (issue 11).
    smuggle_te_cl_is_refused => post(&["Transfer-Encoding: chunked", "Content-Length: 3"], "2b\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n\r\n0\r\n\r\n")
        .expect([Arrived("/smuggled", 0), Status(&[400]), NotForwarded, Closed]),
    /// Transfer-Encoding hidden by obs-fold (RFC 9112 §5.2: 400, or read as one line).
    smuggle_te_in_obs_fold_is_refused => request("POST /v HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), NotForwarded, Closed]),
    /// Whitespace between a field name and the colon: 400 (RFC 9112 §5.1).
    smuggle_te_space_before_colon_is_refused => post(&["Content-Length: 5", "Transfer-Encoding : chunked"], "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), NotForwarded, Closed]),
    smuggle_te_vertical_tab_is_refused => post(&["Content-Length: 5", "Transfer-Encoding:\x0bchunked"], "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400, 501]), NotForwarded, Closed]),
    smuggle_bare_cr_in_field_is_refused => post(&["Content-Length: 5", "X-A: a\rTransfer-Encoding: chunked"], "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect([StatusOrClose(&[400]), NotForwarded, Closed]),
    smuggle_nul_in_field_is_refused => request(head(&["GET /v HTTP/1.1", HOST, "X-A: a\0b"]))
        .expect([StatusOrClose(&[400]), NotForwarded]),
    smuggle_space_in_field_name_is_refused => post(&["Content-Length: 5", "Transfer Encoding: chunked"], "hello")
        .expect([StatusOrClose(&[400]), NotForwarded]),

    // --- Pooled upstream connections: no bytes to the wrong client -----------

    /// Bytes after a complete response: the upstream connection is not reused.
    pool_bytes_after_a_response_reach_no_client => get()
        .answer([&ok(&["Content-Length: 5"], "hello")[..], FORGED].concat())
        .expect([Status(&[200]), Body(b"hello"), Never(b"forged")])
        .then_next_fresh(),
    /// Bytes arriving on an idle pooled connection: it is not reused.
    pool_bytes_on_an_idle_connection_reach_no_client => {
        let mut next = Exchange::new(vec![pause(600), Piece::Bytes(get_next())]);
        next.fresh = true;
        get()
            .upstream(Script::first_then(
                vec![Step::Request, Step::Send(ok(&["Content-Length: 5"], "hello")), Step::Pause(Duration::from_millis(200)), Step::Send(FORGED.to_vec()), Step::Serve],
                vec![Step::Serve],
            ))
            .and(next)
            .expect([Status(&[200]), Body(b"hello"), Never(b"forged"), NextServed])
    },
    /// A close-delimited response is complete at the close, and its
    /// connection is not reused.
    pool_close_delimited_response_is_complete => get()
        .answer_close(ok(&[], "until the close"))
        .expect([Status(&[200]), Body(b"until the close")])
        .then_next_fresh(),
    /// An HTTP/1.0 response without keep-alive ends its upstream connection.
    pool_http10_upstream_response_is_served => get()
        .answer_close(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec())
        .expect([Status(&[200]), Body(b"hello")])
        .then_next(),

    // --- Request lines ----------------------------------------------------------

    req_http09_is_refused => request("GET /v\r\n\r\n")
        .expect([StatusOrClose(&[400]), NotForwarded]),
    req_unknown_version_is_refused => request(head(&["GET /v HTTP/1.x", HOST]))
        .expect([StatusOrClose(&[400, 505]), NotForwarded]),
    req_space_in_target_is_refused => request(head(&["GET /a b HTTP/1.1", HOST]))
        .expect([StatusOrClose(&[400]), NotForwarded]),
    /// Bare LF line ends in a head (RFC 9112 §2.2 lets a server accept them):
    /// either way the upstream gets a clean request.
    req_bare_lf_head_is_served_cleanly_or_refused => request("GET /v HTTP/1.1\nHost: localhost\n\n")
        .expect([StatusOrClose(&[200, 400]), Custom("a forwarded request is clean", |run| {
            if run.upstream.iter().all(Vec::is_empty) { return Ok(()); }
            match run.first_request() {
                Some(r) if r.path() == "/v" => Ok(()),
                _ => Err("unparsable bytes upstream".into()),
            }
        })]),
}

/// `HEAD /v`.
fn get_head() -> Vector {
    request(head(&["HEAD /v HTTP/1.1", HOST])).answering_head()
}

/// A head sent a byte every 250 ms for about 10 s (if River keeps reading).
fn slowloris() -> Vec<Piece> {
    let mut pieces = vec![bytes("GET /v HTTP/1.1\r\n")];
    for b in "Host: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".bytes() {
        pieces.push(Piece::Bytes(vec![b]));
        pieces.push(pause(250));
    }
    pieces
}

fn all_fields(run: &Run, count: usize) -> Result<(), String> {
    let response = run.first_response().ok_or("no response")?;
    let missing: Vec<usize> = (0..count)
        .filter(|i| !response.fields.has(&format!("x-f-{i}")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} fields missing, e.g. x-f-{}",
            missing.len(),
            missing[0]
        ))
    }
}

/// Put `te` as the Transfer-Encoding value of a response made by
/// [`chunked_then_forged`] (whose value is `chunked`).
trait ReplaceTe {
    fn replace_te(self, te: &str) -> Vec<u8>;
}

impl ReplaceTe for Vec<u8> {
    fn replace_te(self, te: &str) -> Vec<u8> {
        let from = b"Transfer-Encoding: chunked\r\n";
        let at = self
            .windows(from.len())
            .position(|w| w == from)
            .expect("a Transfer-Encoding: chunked line");
        [
            &self[..at],
            format!("Transfer-Encoding: {te}\r\n").as_bytes(),
            &self[at + from.len()..],
        ]
        .concat()
    }
}

// ---------------------------------------------------------------------------
// Running a vector
// ---------------------------------------------------------------------------

/// What one read of an exchange got.
#[derive(Debug)]
enum Got {
    Http(Read),
    Raw(Vec<u8>),
}

impl Got {
    fn response(&self) -> Option<&Response> {
        match self {
            Got::Http(Read::Response(response)) => Some(response),
            _ => None,
        }
    }
}

/// What happened on one path.
#[derive(Debug)]
struct Run {
    path: Path,
    /// Per exchange, what each read got.
    got: Vec<Vec<Got>>,
    /// Per exchange, from its first byte sent to the end of its first read.
    took: Vec<Duration>,
    /// Per exchange, whether all its bytes could be written.
    sent: Vec<Result<(), String>>,
    /// Whether the first connection closed at the end (when a check asks).
    closed: Option<Result<Vec<u8>, Vec<u8>>>,
    /// Everything the client received, all connections.
    client_bytes: Vec<u8>,
    /// Every byte each upstream connection received.
    upstream: Vec<Vec<u8>>,
    /// The complete requests in them, with their connection's index.
    requests: Vec<(usize, Request)>,
}

impl Run {
    fn first_response(&self) -> Option<&Response> {
        self.got.first()?.first()?.response()
    }

    fn first_request(&self) -> Option<&Request> {
        self.requests.first().map(|(_, r)| r)
    }

    fn arrived(&self, path: &str) -> usize {
        self.requests
            .iter()
            .filter(|(_, r)| r.path() == path)
            .count()
    }
}

/// KDL for one proxy service.
fn service(name: &str, port: u16, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "    {name} {{\n        listeners {{\n            \"127.0.0.1:{port}\"\n        }}\n        connectors {{\n            \"{upstream}\"\n        }}\n{extra}    }}\n"
    )
}

/// A River with two identical services, `Fast` and `Pingora`, each in front
/// of its own upstream running `script`: their listening addresses.
struct Pair {
    _river: River,
    fast: (SocketAddr, ScriptedUpstream),
    pingora: (SocketAddr, ScriptedUpstream),
    _unanswered: Option<Unanswered>,
}

impl Pair {
    fn start(script: &Script, service_lines: &str) -> Pair {
        Pair::start_with(script, service_lines, false)
    }

    /// As [`Pair::start`]; with `unanswered`, both services' connector is an
    /// address that never completes a connection.
    fn start_with(script: &Script, service_lines: &str, unanswered: bool) -> Pair {
        let fast_up = ScriptedUpstream::start(script.clone()).expect("bind an upstream");
        let pingora_up = ScriptedUpstream::start(script.clone()).expect("bind an upstream");
        let unanswered =
            unanswered.then(|| Unanswered::start().expect("a listener that never accepts"));
        let connector = |scripted: &ScriptedUpstream| match &unanswered {
            Some(unanswered) => unanswered.addr,
            None => scripted.addr,
        };
        let (fast_port, pingora_port) = (free_port(), free_port());
        let services = service("Fast", fast_port, connector(&fast_up), service_lines)
            + &service(
                "Pingora",
                pingora_port,
                connector(&pingora_up),
                service_lines,
            );
        let river = River::start("    workers 1", &services);
        Pair {
            _river: river,
            fast: (river_tests::local(fast_port), fast_up),
            pingora: (river_tests::local(pingora_port), pingora_up),
            _unanswered: unanswered,
        }
    }
}

/// Run `vector` on both paths at once and check both; panic with a report
/// naming the path, the failed checks and what was seen.
fn run(name: &str, vector: Vector) {
    let pair = Pair::start_with(&vector.script, &vector.service, vector.unanswered);
    let (fast, pingora) = std::thread::scope(|s| {
        let fast = s.spawn(|| run_path(Path::Fast, pair.fast.0, &vector, &pair.fast.1));
        let pingora = s.spawn(|| run_path(Path::Pingora, pair.pingora.0, &vector, &pair.pingora.1));
        (
            fast.join().expect("the fast run"),
            pingora.join().expect("the pingora run"),
        )
    });
    let mut report = String::new();
    for run in [&fast, &pingora] {
        let failures: Vec<String> = vector
            .checks
            .iter()
            .filter_map(|c| {
                check(c, run)
                    .err()
                    .map(|err| format!("{}: {err}", label(c)))
            })
            .collect();
        if failures.is_empty() {
            continue;
        }
        let _ = writeln!(
            report,
            "=== {:?} path: {} check(s) failed",
            run.path,
            failures.len()
        );
        for failure in &failures {
            let _ = writeln!(report, "  FAIL {failure}");
        }
        report.push_str(&describe(run));
    }
    if !report.is_empty() {
        let log = pair._river.log();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let _ = writeln!(report, "--- river's log, last lines:");
        for line in tail.iter().rev() {
            let _ = writeln!(report, "  {line}");
        }
    }
    assert!(report.is_empty(), "vector {name}:\n{report}");
}

/// The pingora run's bytes: `send` with the forcing fields after the first
/// request line.
fn force(send: &[Piece], how: Force) -> Vec<Piece> {
    let mut send = send.to_vec();
    let Some(Piece::Bytes(first)) = send.iter_mut().find(|p| matches!(p, Piece::Bytes(_))) else {
        return send;
    };
    let Some(end) = first.iter().position(|&b| b == b'\n') else {
        return send;
    };
    let eol = if end > 0 && first[end - 1] == b'\r' {
        "\r\n"
    } else {
        "\n"
    };
    let fields: String = match how {
        Force::ConnectionToken => {
            format!("Connection: x-river-pingora{eol}X-River-Pingora: 1{eol}")
        }
        Force::ManyFields => (0..130).map(|i| format!("X-Pad-{i}: {i}{eol}")).collect(),
    };
    first.splice(end + 1..end + 1, fields.into_bytes());
    send
}

fn run_path(path: Path, addr: SocketAddr, vector: &Vector, upstream: &ScriptedUpstream) -> Run {
    let mut clients: Vec<RawClient> = Vec::new();
    let mut run = Run {
        path,
        got: Vec::new(),
        took: Vec::new(),
        sent: Vec::new(),
        closed: None,
        client_bytes: Vec::new(),
        upstream: Vec::new(),
        requests: Vec::new(),
    };
    for exchange in &vector.exchanges {
        if exchange.fresh || clients.is_empty() {
            clients.push(RawClient::connect(addr).expect("connect to river"));
        }
        let client = clients.last_mut().expect("a client");
        let send = match path {
            Path::Fast => exchange.send.clone(),
            Path::Pingora => force(&exchange.send, vector.force),
        };
        let started = Instant::now();
        let sending = client
            .send_in_background(send)
            .expect("clone the client socket");
        let mut got = Vec::new();
        let mut took = None;
        for _ in 0..exchange.reads {
            let read = client.read_response(exchange.to_head, exchange.within);
            took.get_or_insert(started.elapsed());
            let done = !matches!(read, Read::Response(_));
            got.push(Got::Http(read));
            if done {
                break;
            }
        }
        if exchange.raw > 0 {
            got.push(Got::Raw(client.read_raw(exchange.raw, exchange.within)));
            took.get_or_insert(started.elapsed());
        }
        run.took.push(took.unwrap_or_default());
        run.sent.push(sending.finish().map_err(|e| e.to_string()));
        run.got.push(got);
    }
    if vector
        .checks
        .iter()
        .any(|c| matches!(c, Check::Closed | Check::RefusedOrDropped(_)))
    {
        run.closed = Some(clients[0].wait_closed(CLOSE_WITHIN));
    }
    std::thread::sleep(SETTLE);
    run.client_bytes = clients
        .iter()
        .flat_map(|c| c.received.iter().copied())
        .collect();
    run.upstream = upstream.received();
    run.requests = upstream.requests().0;
    run
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes for a report: escaped, cut at `max`.
fn show(bytes: &[u8], max: usize) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(max)])
        .escape_debug()
        .to_string();
    if bytes.len() > max {
        format!("\"{shown}\"... ({} bytes)", bytes.len())
    } else {
        format!("\"{shown}\"")
    }
}

fn show_got(got: Option<&Got>) -> String {
    match got {
        None => "nothing read".into(),
        Some(Got::Http(Read::Response(r))) => {
            // No scripted upstream sends a Date; pingora adds one to what
            // it serves (not to what it relays raw, such as a 101).
            let date = if r.fields.has("date") {
                " (with pingora's Date)"
            } else {
                ""
            };
            format!("{}{date} {}", r.status, show(&r.raw, 300))
        }
        Some(Got::Http(Read::Closed(rest))) => format!("closed after {}", show(rest, 300)),
        Some(Got::Http(Read::TimedOut(rest))) => {
            format!(
                "no complete response in time, still open, after {}",
                show(rest, 300)
            )
        }
        Some(Got::Http(Read::Malformed(err, rest))) => {
            format!("malformed ({err}): {}", show(rest, 300))
        }
        Some(Got::Raw(raw)) => format!("raw {}", show(raw, 300)),
    }
}

/// What the client and the upstream saw, for a failure report.
fn describe(run: &Run) -> String {
    let mut out = String::new();
    for (i, got) in run.got.iter().enumerate() {
        let _ = writeln!(
            out,
            "  client exchange {i} ({:?}, sent: {:?}):",
            run.took.get(i).copied().unwrap_or_default(),
            run.sent.get(i)
        );
        for g in got {
            let _ = writeln!(out, "    {}", show_got(Some(g)));
        }
    }
    if let Some(closed) = &run.closed {
        let _ = writeln!(out, "  close at the end: {closed:?}");
    }
    if run.upstream.is_empty() {
        out.push_str("  upstream: no connection\n");
    }
    for (i, bytes) in run.upstream.iter().enumerate() {
        let _ = writeln!(out, "  upstream connection {i}: {}", show(bytes, 800));
    }
    out
}

fn expect_status(got: Option<&Got>, allowed: &[u16], or_close: bool) -> Result<(), String> {
    match got {
        Some(Got::Http(Read::Response(r))) if allowed.contains(&r.status) => Ok(()),
        Some(Got::Http(Read::Closed(rest))) if or_close && rest.is_empty() => Ok(()),
        other => Err(format!("wanted {allowed:?}, got {}", show_got(other))),
    }
}

fn check(check: &Check, run: &Run) -> Result<(), String> {
    let first = run.got.first().and_then(|g| g.first());
    let response = run.first_response();
    let request = run.first_request();
    let no_response = || format!("no response: {}", show_got(first));
    match check {
        Check::Status(allowed) => expect_status(first, allowed, false),
        Check::StatusOrClose(allowed) => expect_status(first, allowed, true),
        Check::StatusAt(at, allowed) => {
            expect_status(run.got.get(*at).and_then(|g| g.first()), allowed, false)
        }
        Check::BrokenBody(bad) => {
            if contains(&run.client_bytes, bad) {
                return Err(format!("the client received {}", show(bad, 50)));
            }
            match first {
                Some(Got::Http(Read::Response(r))) if r.status == 502 => Ok(()),
                Some(Got::Http(Read::Response(r))) => Err(format!(
                    "a complete {} response for a broken one: {}",
                    r.status,
                    show(&r.raw, 300)
                )),
                Some(Got::Http(Read::Closed(_))) => Ok(()),
                other => Err(format!(
                    "wanted a 502 or a close mid-response, got {}",
                    show_got(other)
                )),
            }
        }
        Check::BrokenOrDropped(bad) => match response {
            Some(r)
                if r.status == 200 && r.body == b"hello" && !contains(&run.client_bytes, bad) =>
            {
                Ok(())
            }
            _ => self::check(&Check::BrokenBody(bad), run),
        },
        Check::RefusedOrDropped(bad) => {
            if let Some(b) = run.upstream.iter().find(|b| contains(b, bad)) {
                return Err(format!("the upstream received {}", show(b, 400)));
            }
            match first {
                Some(Got::Http(Read::Response(r))) if r.status == 200 => {
                    match (run.arrived("/v"), request) {
                        (1, Some(request)) if request.body == b"hello" => Ok(()),
                        (n, _) => Err(format!("forwarded {n} times, or with another body")),
                    }
                }
                _ => {
                    expect_status(first, &[400], true)?;
                    if run.arrived("/v") > 0 {
                        return Err("refused, yet forwarded whole".into());
                    }
                    match &run.closed {
                        Some(Ok(rest)) if rest.is_empty() => Ok(()),
                        other => Err(format!("not closed after the refusal: {other:?}")),
                    }
                }
            }
        }
        Check::Closed => match &run.closed {
            Some(Ok(rest)) if rest.is_empty() => Ok(()),
            Some(Ok(rest)) => Err(format!("more bytes before the close: {}", show(rest, 300))),
            Some(Err(_)) => Err(format!("still open {CLOSE_WITHIN:?} later")),
            None => Err("not observed".into()),
        },
        Check::NotForwarded => {
            let total: usize = run.upstream.iter().map(Vec::len).sum();
            if total == 0 {
                Ok(())
            } else {
                Err(format!("{total} bytes reached the upstream"))
            }
        }
        Check::Arrived(path, count) => match run.arrived(path) {
            n if n == *count => Ok(()),
            n => Err(format!("{path} arrived {n} times")),
        },
        Check::UpNever(bytes) => match run.upstream.iter().find(|b| contains(b, bytes)) {
            None => Ok(()),
            Some(b) => Err(format!("the upstream received {}", show(b, 400))),
        },
        Check::UpAbsent(name) => {
            if run.requests.is_empty() {
                return Err("no request reached the upstream".into());
            }
            match run.requests.iter().find(|(_, r)| r.fields.has(name)) {
                None => Ok(()),
                Some((_, r)) => Err(format!("upstream got {name}: {:?}", r.fields.all(name))),
            }
        }
        Check::UpLines(name, lines) => {
            let request = request.ok_or("no request reached the upstream")?;
            let got = request.fields.all(name);
            if got == *lines {
                Ok(())
            } else {
                Err(format!("upstream {name} lines: {got:?}"))
            }
        }
        Check::UpBody(body) => {
            let request = request.ok_or("no request reached the upstream")?;
            if request.body == *body {
                Ok(())
            } else {
                Err(format!("upstream body {}", show(&request.body, 200)))
            }
        }
        Check::UpCleanFraming => {
            for (_, request) in &run.requests {
                let te = request.fields.all("transfer-encoding");
                if !(te.is_empty() || te.len() == 1 && te[0].eq_ignore_ascii_case("chunked")) {
                    return Err(format!("upstream transfer-encoding lines {te:?}"));
                }
                if !te.is_empty() && request.fields.has("content-length") {
                    return Err("both framings upstream".into());
                }
            }
            Ok(())
        }
        Check::Lines(name, lines) => {
            let response = response.ok_or_else(no_response)?;
            let got = response.fields.all(name);
            if got == *lines {
                Ok(())
            } else {
                Err(format!("{name} lines: {got:?}"))
            }
        }
        Check::Absent(name) => {
            let response = response.ok_or_else(no_response)?;
            match response.fields.all(name) {
                values if values.is_empty() => Ok(()),
                values => Err(format!("{name}: {values:?}")),
            }
        }
        Check::Body(body) => {
            let response = response.ok_or_else(no_response)?;
            if response.body == *body {
                Ok(())
            } else {
                Err(format!("body {}", show(&response.body, 200)))
            }
        }
        Check::Never(bytes) => {
            if contains(&run.client_bytes, bytes) {
                Err(format!(
                    "the client received {}",
                    show(&run.client_bytes, 600)
                ))
            } else {
                Ok(())
            }
        }
        Check::Interim(status) => {
            let response = response.ok_or_else(no_response)?;
            if response.interim.iter().any(|i| i.status == *status) {
                Ok(())
            } else {
                Err(format!(
                    "interim responses: {:?}",
                    interim_statuses(response)
                ))
            }
        }
        Check::NoInterim(status) => {
            let response = response.ok_or_else(no_response)?;
            if response.interim.iter().any(|i| i.status == *status) {
                Err(format!(
                    "interim responses: {:?}",
                    interim_statuses(response)
                ))
            } else {
                Ok(())
            }
        }
        Check::NextClean | Check::NextServed => {
            let last = run.got.last().and_then(|g| g.first());
            match last {
                Some(Got::Http(Read::Response(r)))
                    if r.status == 200 && r.body == b"path=/next" =>
                {
                    Ok(())
                }
                Some(Got::Http(Read::Closed(rest)))
                    if rest.is_empty() && matches!(check, Check::NextClean) =>
                {
                    Ok(())
                }
                other => Err(format!("GET /next got {}", show_got(other))),
            }
        }
        Check::Within(limit) => match run.took.first() {
            Some(took) if took <= limit => Ok(()),
            took => Err(format!("took {took:?}")),
        },
        Check::Custom(_, check) => check(run),
    }
}

/// A check as a failure report names it.
fn label(check: &Check) -> String {
    let bytes = |b: &[u8]| show(b, 60);
    match check {
        Check::Custom(what, _) => format!("Custom({what})"),
        Check::BrokenBody(b) => format!("BrokenBody({})", bytes(b)),
        Check::BrokenOrDropped(b) => format!("BrokenOrDropped({})", bytes(b)),
        Check::RefusedOrDropped(b) => format!("RefusedOrDropped({})", bytes(b)),
        Check::UpNever(b) => format!("UpNever({})", bytes(b)),
        Check::UpBody(b) => format!("UpBody({})", bytes(b)),
        Check::Body(b) => format!("Body({})", bytes(b)),
        Check::Never(b) => format!("Never({})", bytes(b)),
        other => format!("{other:?}"),
    }
}

fn interim_statuses(response: &Response) -> Vec<u16> {
    response.interim.iter().map(|i| i.status).collect()
}

#[test]
fn the_suite_has_at_least_80_vectors() {
    let all = all_vectors();
    assert!(all.len() >= 80, "{} vectors", all.len());
    for (name, vector) in &all {
        assert!(!vector.checks.is_empty(), "{name} checks nothing");
    }
}

/// The forced runs really take pingora's path: pingora adds a `Date` the
/// upstream never sent, the fast path does not. If the fast path starts
/// taking `Connection: x-river-pingora` or 130 field lines itself (or adds
/// a `Date`), this fails: then [`force`] needs another way to reach pingora.
#[test]
fn forcing_works() {
    let pair = Pair::start(&serve(), "");
    let get = vec![Piece::Bytes(get_next())];
    let date_on = |addr: SocketAddr, send: Vec<Piece>| -> bool {
        let mut client = RawClient::connect(addr).expect("connect to river");
        client.send(&send).expect("send a request");
        match client.read_response(false, READ_WITHIN) {
            Read::Response(r) if r.status == 200 => r.fields.has("date"),
            other => panic!("no 200 response: {other:?}"),
        }
    };
    assert!(
        !date_on(pair.fast.0, get.clone()),
        "the fast path adds a Date now: find another marker of pingora's path"
    );
    for how in [Force::ConnectionToken, Force::ManyFields] {
        assert!(
            date_on(pair.pingora.0, force(&get, how)),
            "{how:?} no longer reaches pingora's path"
        );
    }
}

// ---------------------------------------------------------------------------
// The differential test
// ---------------------------------------------------------------------------

/// Generated requests.
const DIFFERENTIAL_CASES: usize = 300;
const DIFFERENTIAL_SEED: u64 = 0x5EED_0011_C0FF_EE00;
/// A generated request whose response takes longer counts as "timed out".
const DIFFERENTIAL_WITHIN: Duration = Duration::from_secs(3);

/// xorshift64*: small, deterministic, good enough to mix test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self) -> usize {
        self.below(100)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn body(&mut self, len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| *self.pick(ALPHABET)).collect()
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    id: usize,
    /// What was chosen, for reports and the allow-list.
    traits: Vec<String>,
    bytes: Vec<u8>,
    head: bool,
}

/// Field lines a request may carry, besides Host and framing.
const EXTRA_FIELDS: &[&str] = &[
    "Accept: */*",
    "User-Agent: gen/1.0",
    "X-Custom: value",
    "Cookie: a=b; c=d",
    "Accept-Encoding: gzip, br",
    "Cache-Control: no-cache",
    "X-Forwarded-For: 203.0.113.9",
    "X-Forwarded-Proto: https",
    "Via: 1.1 other",
    "Forwarded: for=198.51.100.1",
    "Connection: keep-alive",
    "Connection: close",
    "Keep-Alive: timeout=5",
    "TE: trailers",
    "Proxy-Authorization: Basic Zm9vOmJhcg==",
    "Proxy-Connection: keep-alive",
    "Trailer: X-T",
    "Upgrade: h2c",
    "X-Empty:",
    "X-Spaces:    padded   ",
    "x-lower-case: v",
    "X-UPPER-CASE: V",
    "X-Dup: 1",
    "Content-Type: text/plain",
    "Range: bytes=0-1",
    "If-None-Match: \"x\"",
    "Authorization: Bearer t0k3n",
    "Connection: x-hop",
    "X-Hop: dropped",
];

fn generate(id: usize, rng: &mut Rng) -> Case {
    let mut traits = Vec::new();
    let method = *rng.pick(&[
        "GET", "GET", "GET", "HEAD", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
    ]);
    let suffix = *rng.pick(&[
        "",
        "/a/b",
        "?x=1&y=2",
        "/%7Euser",
        "//double",
        "/a/./b/../c",
        "?q=a%20b",
        "/caf%C3%A9",
        ";p=1",
        "/x?",
    ]);
    let version = if rng.percent() < 10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    traits.push(format!("{method} {version}"));
    let mut lines = vec![format!("{method} /d/{id}{suffix} {version}")];
    let host: &[&str] = match rng.percent() {
        0..=79 => &["Host: localhost"],
        80..=84 => &["Host: localhost:8080"],
        85..=89 => &[],
        90..=92 => &["Host: localhost", "Host: localhost"],
        93..=95 => &["Host: exa mple"],
        96..=97 => &["Host: a.example, b.example"],
        _ => &["Host: user@localhost"],
    };
    traits.push(format!("host {host:?}"));
    lines.extend(host.iter().map(|h| (*h).to_owned()));
    lines.push(format!("X-Case: {id}"));
    for _ in 0..rng.below(5) {
        let field = *rng.pick(EXTRA_FIELDS);
        traits.push(format!("field {field}"));
        lines.push(field.to_owned());
    }
    let body = {
        let len = 1 + rng.below(20);
        rng.body(len)
    };
    let chunked_body = |body: &[u8], ext: &str, trailer: &str| -> Vec<u8> {
        let (a, b) = body.split_at(body.len() / 2);
        let mut out = Vec::new();
        for part in [a, b] {
            if !part.is_empty() {
                out.extend_from_slice(format!("{:x}{ext}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
        out
    };
    let n = body.len();
    let (framing, fields, payload): (&str, Vec<String>, Vec<u8>) = match rng.percent() {
        0..=39 => ("none", vec![], vec![]),
        40..=64 => (
            "content-length",
            vec![format!("Content-Length: {n}")],
            body.clone(),
        ),
        65..=67 => (
            "content-length list",
            vec![format!("Content-Length: {n},{n}")],
            body.clone(),
        ),
        68..=70 => (
            "content-length twice",
            vec![
                format!("Content-Length: {n}"),
                format!("Content-Length: {n}"),
            ],
            body.clone(),
        ),
        71..=72 => (
            "content-length differing",
            vec![
                format!("Content-Length: {n}"),
                format!("Content-Length: {}", n + 1),
            ],
            [&body[..], b"x"].concat(),
        ),
        73..=74 => (
            "content-length plus",
            vec![format!("Content-Length: +{n}")],
            body.clone(),
        ),
        75..=86 => (
            "chunked",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, "", ""),
        ),
        87..=89 => (
            "chunked extension",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, ";e=1", ""),
        ),
        90..=91 => (
            "chunked trailer",
            vec!["Transfer-Encoding: chunked".into()],
            chunked_body(&body, "", "X-T: 1\r\n"),
        ),
        92..=93 => (
            "gzip, chunked",
            vec!["Transfer-Encoding: gzip, chunked".into()],
            chunked_body(&body, "", ""),
        ),
        94..=96 => (
            "chunked and content-length",
            vec![
                "Transfer-Encoding: chunked".into(),
                format!("Content-Length: {n}"),
            ],
            chunked_body(&body, "", ""),
        ),
        97..=98 => (
            "chunked, (empty element)",
            vec!["Transfer-Encoding: chunked, ".into()],
            chunked_body(&body, "", ""),
        ),
        _ => (
            "identity",
            vec!["Transfer-Encoding: identity".into()],
            vec![],
        ),
    };
    traits.push(format!("framing {framing}"));
    lines.extend(fields);
    if framing != "none" && rng.percent() < 10 {
        traits.push("field Expect: 100-continue".into());
        lines.push("Expect: 100-continue".into());
    }
    let mut bytes = lines.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes.extend_from_slice(&payload);
    Case {
        id,
        traits,
        bytes,
        head: method == "HEAD",
    }
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Status(u16),
    Closed,
    TimedOut,
    Malformed,
}

/// A request as it reached the upstream, normalized: field names lowercased
/// and sorted (their order is not compared), values kept but for the
/// upstream's own address (each path has its own upstream; River names it in
/// the Host it adds to a request without one), which reads `UPSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Forwarded {
    request_line: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Forwarded {
    fn of(request: &Request, upstream: SocketAddr) -> Forwarded {
        let upstream = upstream.to_string();
        let mut fields: Vec<(String, String)> = request
            .fields
            .0
            .iter()
            .map(|f| {
                (
                    f.name.to_ascii_lowercase(),
                    f.value.replace(&upstream, "UPSTREAM"),
                )
            })
            .collect();
        fields.sort();
        Forwarded {
            request_line: format!("{} {} {}", request.method, request.target, request.version),
            fields,
            body: request.body.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    seen: Seen,
    forwarded: Vec<Forwarded>,
}

/// A difference between the paths River accepts, and why.
struct Allowed {
    reason: &'static str,
    /// Whether it explains the difference for this case (see `Case::traits`
    /// for what was generated, e.g. `"field TE: trailers"`).
    applies: fn(&Case, &Outcome, &Outcome) -> bool,
}

/// Differences between the paths that are not defects. Empty: both paths
/// apply one message model (DESIGN.md), so any difference is a bug to fix
/// or an entry here with its reason.
const ALLOWED: &[Allowed] = &[];

fn send_case(addr: SocketAddr, bytes: Vec<u8>, head: bool) -> Seen {
    let Ok(mut client) = RawClient::connect(addr) else {
        return Seen::Closed;
    };
    let Ok(sending) = client.send_in_background(vec![Piece::Bytes(bytes)]) else {
        return Seen::Closed;
    };
    let seen = match client.read_response(head, DIFFERENTIAL_WITHIN) {
        Read::Response(r) => Seen::Status(r.status),
        Read::Closed(_) => Seen::Closed,
        Read::TimedOut(_) => Seen::TimedOut,
        Read::Malformed(..) => Seen::Malformed,
    };
    let _ = sending.finish();
    seen
}

/// The requests an upstream received, by the case named in `X-Case`; and the
/// bytes it could not parse as requests.
fn forwarded_by_case(upstream: &ScriptedUpstream) -> (Vec<Vec<Forwarded>>, Vec<Vec<u8>>) {
    let (requests, rests) = upstream.requests();
    let mut by_case = vec![Vec::new(); DIFFERENTIAL_CASES];
    for (_, request) in &requests {
        let case = request
            .fields
            .get("x-case")
            .and_then(|id| id.parse::<usize>().ok())
            .filter(|id| *id < DIFFERENTIAL_CASES);
        if let Some(case) = case {
            by_case[case].push(Forwarded::of(request, upstream.addr));
        }
    }
    (
        by_case,
        rests.into_iter().filter(|r| !r.is_empty()).collect(),
    )
}

/// A corpus of generated requests, valid and invalid, through both paths of
/// one River: what reached the upstream and the status the client saw must
/// agree, or the difference is in [`ALLOWED`].
#[test]
fn differential() {
    let mut rng = Rng(DIFFERENTIAL_SEED);
    let cases: Vec<Case> = (0..DIFFERENTIAL_CASES)
        .map(|id| generate(id, &mut rng))
        .collect();
    let pair = Pair::start(&serve(), "");
    let (fast_addr, pingora_addr) = (pair.fast.0, pair.pingora.0);
    let threads = 4;
    let seen: Vec<(usize, Seen, Seen)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let cases = &cases;
                s.spawn(move || {
                    cases
                        .iter()
                        .skip(k)
                        .step_by(threads)
                        .map(|case| {
                            let fast = send_case(fast_addr, case.bytes.clone(), case.head);
                            let forced =
                                force(&[Piece::Bytes(case.bytes.clone())], Force::ConnectionToken);
                            let Some(Piece::Bytes(forced)) = forced.into_iter().next() else {
                                unreachable!("force keeps one piece one piece")
                            };
                            let pingora = send_case(pingora_addr, forced, case.head);
                            (case.id, fast, pingora)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a differential worker"))
            .collect()
    });
    std::thread::sleep(SETTLE);
    let (fast_up, fast_rest) = forwarded_by_case(&pair.fast.1);
    let (pingora_up, pingora_rest) = forwarded_by_case(&pair.pingora.1);

    let mut report = String::new();
    let mut kinds: Vec<(String, usize)> = Vec::new();
    let mut differences = 0;
    let mut allowed = 0;
    for (id, fast_seen, pingora_seen) in seen {
        let case = &cases[id];
        let fast = Outcome {
            seen: fast_seen,
            forwarded: fast_up[id].clone(),
        };
        let pingora = Outcome {
            seen: pingora_seen,
            forwarded: pingora_up[id].clone(),
        };
        if fast == pingora {
            continue;
        }
        if let Some(allow) = ALLOWED.iter().find(|a| (a.applies)(case, &fast, &pingora)) {
            allowed += 1;
            note_allowed(allow.reason, id);
            continue;
        }
        differences += 1;
        let kind = difference_kind(&fast, &pingora);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => kinds.push((kind, 1)),
        }
        let _ = writeln!(report, "--- case {id}: {:?}", case.traits);
        let _ = writeln!(report, "  request: {}", show(&case.bytes, 400));
        let _ = writeln!(report, "  fast:    {:?}", fast.seen);
        let _ = writeln!(report, "  pingora: {:?}", pingora.seen);
        describe_forwarded_difference(&mut report, &fast.forwarded, &pingora.forwarded);
    }
    for (path, rest) in [("fast", &fast_rest), ("pingora", &pingora_rest)] {
        for bytes in rest.iter() {
            let _ = writeln!(
                report,
                "--- unparsable bytes reached the {path} upstream: {}",
                show(bytes, 400)
            );
        }
    }
    let mut summary = String::new();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    for (kind, count) in &kinds {
        let _ = writeln!(summary, "  {count:3} x {kind}");
    }
    assert!(
        report.is_empty(),
        "{differences} of {DIFFERENTIAL_CASES} generated requests differ between the paths \
         ({allowed} allowed differences). By kind:\n{summary}\n{report}"
    );
}

/// An allowed difference, on stderr (shown with `--nocapture`).
fn note_allowed(reason: &str, id: usize) {
    eprintln!("case {id}: allowed difference: {reason}");
}

/// A short name for how two outcomes differ, to count differences by kind.
fn difference_kind(fast: &Outcome, pingora: &Outcome) -> String {
    if fast.seen != pingora.seen {
        return format!(
            "client sees {:?} on the fast path, {:?} on pingora's",
            fast.seen, pingora.seen
        );
    }
    if fast.forwarded.len() != pingora.forwarded.len() {
        return format!(
            "{} request(s) upstream on the fast path, {} on pingora's",
            fast.forwarded.len(),
            pingora.forwarded.len()
        );
    }
    let mut parts = Vec::new();
    for (f, p) in fast.forwarded.iter().zip(&pingora.forwarded) {
        if f.request_line != p.request_line {
            parts.push("request line".to_owned());
        }
        let names = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
            let mut names: Vec<String> = a
                .iter()
                .filter(|x| !b.contains(x))
                .map(|(n, _)| n.clone())
                .collect();
            names.dedup();
            names
        };
        let (only_fast, only_pingora) = (names(&f.fields, &p.fields), names(&p.fields, &f.fields));
        if !only_fast.is_empty() {
            parts.push(format!(
                "upstream gets {only_fast:?} only from the fast path"
            ));
        }
        if !only_pingora.is_empty() {
            parts.push(format!(
                "upstream gets {only_pingora:?} only from pingora's"
            ));
        }
        if f.body != p.body {
            parts.push("body".to_owned());
        }
    }
    parts.join(", ")
}

fn describe_forwarded_difference(report: &mut String, fast: &[Forwarded], pingora: &[Forwarded]) {
    if fast.len() != pingora.len() {
        let _ = writeln!(
            report,
            "  upstream got {} request(s) on the fast path, {} on pingora's",
            fast.len(),
            pingora.len()
        );
    }
    for (f, p) in fast.iter().zip(pingora) {
        if f.request_line != p.request_line {
            let _ = writeln!(
                report,
                "  request line: fast {:?}, pingora {:?}",
                f.request_line, p.request_line
            );
        }
        let only = |a: &[(String, String)], b: &[(String, String)]| -> Vec<String> {
            a.iter()
                .filter(|x| !b.contains(x))
                .map(|(n, v)| format!("{n}: {v}"))
                .collect()
        };
        let (only_fast, only_pingora) = (only(&f.fields, &p.fields), only(&p.fields, &f.fields));
        if !only_fast.is_empty() || !only_pingora.is_empty() {
            let _ = writeln!(
                report,
                "  fields only on the fast path {only_fast:?}, only on pingora's {only_pingora:?}"
            );
        }
        if f.body != p.body {
            let _ = writeln!(
                report,
                "  body: fast {}, pingora {}",
                show(&f.body, 100),
                show(&p.body, 100)
            );
        }
    }
}

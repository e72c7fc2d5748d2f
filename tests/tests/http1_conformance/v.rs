//! The vectors: one `#[test]` each, named `v::NAME`, all run by
//! [`run`](crate::harness::run) on both paths.
//!
//! Which path a vector's fast run takes: the fast path, unless the request
//! is one it hands to pingora (then both runs take pingora's path): chunked
//! or `Expect` uploads, HTTP/1.0, `Upgrade`, a `Connection` token other than
//! close and keep-alive, no Host, duplicate Content-Length lines or a list,
//! more than 128 field lines, a head httparse refuses (obs-fold, a space
//! before a colon, a bare CR, NUL, an invalid name, a bad request line).
//! Sections below say so where it matters.

use std::time::Duration;

use river_tests::wire::{Piece, Response, Script, Step};

use super::*;
use crate::harness::{Got, Run};

/// Each entry becomes `#[test] fn v::NAME` running
/// [`run`](crate::harness::run); [`all_vectors`] lists them all (for the
/// count).
macro_rules! vectors {
    ($($(#[doc = $doc:literal])* $name:ident => $vector:expr,)*) => {
        $(
            $(#[doc = $doc])*
            #[test]
            fn $name() {
                crate::harness::run(stringify!($name), $vector);
            }
        )*

        /// Every vector, by name.
        pub(crate) fn all_vectors() -> Vec<(&'static str, Vector)> {
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
    req_connection_close_closes => request(head(&["GET /v HTTP/1.1", HOST, "Connection: close"]))
        .expect([Status(&[200]), Body(b"path=/v"), Closed]),
    /// `Connection` is a list over all its lines (RFC 9110 §5.3).
    req_connection_close_on_a_second_line_closes => request(head(&["GET /v HTTP/1.1", HOST, "Connection: keep-alive", "Connection: close"]))
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
    /// The forged response. `chunked, ` is chunked (empty list
    /// elements are ignored): re-framed on the fast path. pingora would read
    /// it as "until close" and relay the forged bytes, so on its path River
    /// refuses the response (502): safe either way, never forged.
    resp_te_trailing_empty_element_forges_nothing => get()
        .answer_close(chunked_then_forged("5\r\nhello\r\n0\r\n\r\n").replace_te("chunked, "))
        .expect([Status(&[200, 502]), Never(b"forged"), Custom("a 200 carries exactly the chunked body", |run| {
            let response = run.first_response().ok_or("no response")?;
            if response.status == 200 && response.body != b"hello" {
                return Err(format!("body {:?}", String::from_utf8_lossy(&response.body)));
            }
            Ok(())
        })])
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
    /// within client-header-secs, on both paths.
    timeout_slow_request_head_is_cut_off => pieces(slowloris())
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
        let mut next = Exchange::new(vec![pause(1000), Piece::Bytes(get_next())]);
        next.fresh = true;
        get()
            .upstream(Script::first_then(
                vec![Step::Request, Step::Send(ok(&["Content-Length: 5"], "hello")), Step::Pause(Duration::from_millis(100)), Step::Send(FORGED.to_vec()), Step::Serve],
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

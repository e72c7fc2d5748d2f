//! HTTP/1.1 proxying edge cases, seen from the outside: a raw client socket on
//! one side of a proxy service and a raw upstream socket on the other, both
//! written byte by byte so that each test controls the exact framing (chunked,
//! close-delimited, truncated, HEAD/204/304, pipelined, stale keep-alive).
//!
//! These tests pin down behaviour a client or an upstream can observe, not how
//! the worker implements it.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use river_tests::raw::*;
use river_tests::river::River;
use river_tests::{free_port, local};

// ---------------------------------------------------------------------------
// River
// ---------------------------------------------------------------------------

/// One worker, so that every request shares one upstream connection pool.
fn start_proxy(upstream: SocketAddr) -> (River, SocketAddr) {
    let port = free_port();
    let services = format!(
        r#"    Proxy {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            "{upstream}"
        }}
    }}"#
    );
    let river = River::start("    workers 1", &services);
    (river, local(port))
}

/// The usual setup: the standard upstream, River in front of it, and a client
/// connected to River.
fn standard_proxy() -> (RawUpstream, River, Client) {
    let upstream = RawUpstream::start(standard);
    let (river, addr) = start_proxy(upstream.addr);
    let client = Client::connect(addr);
    (upstream, river, client)
}

/// The body of a chunked response from `/chunked`.
const CHUNKED_BODY: &str = "hello, chunked worldabcdefghijklmnopqrstuvwxyz";

/// The length of the `/big-chunked` body.
const BIG_CHUNKED: usize = 512 * 1024;

/// A 1000-byte body for GET requests to `/head`.
fn thousand_bytes() -> Vec<u8> {
    (0..1000).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A 6000-character cookie value for `/big-cookie`.
fn big_cookie() -> String {
    (0..6000)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect()
}

/// Keep-alive upstream. By path:
/// - `/chunked`: a chunked body (with a chunk extension and a trailer), written in pieces;
/// - `/big-chunked`: [`BIG_CHUNKED`] bytes of [`pattern`], chunked unevenly;
/// - `/close-delimited`: no Content-Length nor Transfer-Encoding, body then close;
/// - any HEAD request: `content-length: 1000` and no body (a GET to `/head` gets the 1000 bytes);
/// - `/status/204`, `/status/304`: those statuses, without a body;
/// - `/status/304-length`: a 304 with `content-length: 1234` (the length of the
///   representation, RFC 9110 §8.6) and no body;
/// - `/echo`: the request body back;
/// - `/truncated`: `content-length: 1000`, 10 bytes, then close;
/// - `/big-cookie`: a 6000-byte `set-cookie`;
/// - anything else: `path=PATH`.
fn standard(mut c: UpConn) {
    while let Some(request) = c.request() {
        let path = request.path.as_str();
        let ok = if request.method == "HEAD" {
            c.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncontent-type: text/plain\r\n\r\n")
        } else if path == "/chunked" {
            c.send_piece(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n")
                && c.send_piece(b"5\r\nhello\r\n")
                && c.send_piece(b"F;name=value\r\n, chunked world\r\n")
                && c.send_piece(b"1")
                && c.send_piece(b"a\r\nabcdefghijklm")
                && c.send_piece(b"nopqrstuvwxyz\r")
                && c.send_piece(b"\n0\r\nx-trailer: yes\r\n\r\n")
        } else if path == "/big-chunked" {
            let mut ok = c.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            for piece in
                chunked(&pattern(BIG_CHUNKED), &[1, 8192, 65_539, 100_000]).chunks(32 * 1024)
            {
                ok = ok && c.send(piece);
            }
            ok
        } else if path == "/close-delimited" {
            c.send_piece(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
            c.send_piece(b"first piece, ");
            c.send_piece(b"second piece, ");
            c.send(b"last piece");
            let _ = c.writer.shutdown(Shutdown::Both);
            return;
        } else if path == "/head" {
            c.respond("200 OK", &[], &thousand_bytes())
        } else if path == "/status/204" {
            c.send(b"HTTP/1.1 204 No Content\r\nx-status: 204\r\n\r\n")
        } else if path == "/status/304" {
            c.send(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\nx-status: 304\r\n\r\n")
        } else if path == "/status/304-length" {
            c.send(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 1234\r\n\r\n")
        } else if path == "/echo" {
            c.respond("200 OK", &[], &request.body)
        } else if path == "/truncated" {
            c.send_piece(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n");
            c.send(b"0123456789");
            std::thread::sleep(Duration::from_millis(50));
            let _ = c.writer.shutdown(Shutdown::Both);
            return;
        } else if path == "/big-cookie" {
            let cookie = format!("big={}; Path=/", big_cookie());
            c.respond("200 OK", &[("set-cookie", &cookie)], b"cookie")
        } else {
            c.respond("200 OK", &[], format!("path={path}").as_bytes())
        };
        if !ok {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Case 1: a chunked upstream body (chunk extension, size line split across
/// segments, trailer) arrives whole, and the keep-alive connection is reusable.
#[test]
fn chunked_response_arrives_whole_and_the_connection_stays_usable() {
    let (_upstream, _river, mut client) = standard_proxy();
    for round in 0..2 {
        let response = client.get("/chunked");
        assert_eq!(response.status, 200, "round {round}");
        assert_eq!(response.text(), CHUNKED_BODY, "round {round}");
        assert_ne!(
            response.framing,
            Framing::Close,
            "a keep-alive response must be delimited"
        );
    }
    let response = client.get("/after");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "path=/after");
}

/// Case 2: a close-delimited upstream body arrives whole and correctly
/// delimited. River may then keep the client connection or close it.
#[test]
fn close_delimited_response_arrives_whole() {
    let (_upstream, _river, mut client) = standard_proxy();
    let response = client.get("/close-delimited");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "first piece, second piece, last piece");
    if response.framing == Framing::Close {
        return; // the connection is closed by definition
    }
    // Keep-alive (chunked or with a length): the next request either works or
    // finds the connection closed, with nothing in between.
    client.send("GET /next HTTP/1.1\r\nhost: localhost\r\n\r\n");
    match client.try_response(false) {
        Ok(next) => {
            assert_eq!(next.status, 200);
            assert_eq!(next.text(), "path=/next");
        }
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "after a complete close-delimited response: {err}"
        ),
    }
}

/// Case 3: a HEAD response announcing `content-length: 1000` has no body, and
/// the next response on the connection starts right after its head.
#[test]
fn head_response_has_no_body_and_the_connection_stays_usable() {
    let (upstream, _river, mut client) = standard_proxy();
    client.send("HEAD /head HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let head = client.response(true);
    assert_eq!(head.status, 200);
    if let Some(length) = head.header("content-length") {
        assert_eq!(length, "1000", "a HEAD response keeps the GET's length");
    }
    let get = client.get("/head");
    assert_eq!(get.status, 200, "the byte after the HEAD response's head");
    assert_eq!(get.body, thousand_bytes());
    assert_eq!(client.get("/third").text(), "path=/third");
    let methods: Vec<String> = upstream
        .requests()
        .into_iter()
        .filter(|(_, r)| r.path == "/head")
        .map(|(_, r)| r.method)
        .collect();
    assert_eq!(methods, ["HEAD", "GET"], "HEAD is forwarded as HEAD");
}

/// Case 4: 204 and 304 responses have no body and leave the connection usable.
#[test]
fn no_content_and_not_modified_have_no_body() {
    let (_upstream, _river, mut client) = standard_proxy();
    for _ in 0..2 {
        let response = client.get("/status/204");
        assert_eq!(response.status, 204);
        assert_eq!(response.header("x-status"), Some("204"));
        assert_eq!(
            response.header("transfer-encoding"),
            None,
            "no body framing on a 204"
        );
        assert_eq!(client.get("/after-204").text(), "path=/after-204");

        client.send("GET /status/304 HTTP/1.1\r\nhost: localhost\r\nif-none-match: \"v1\"\r\n\r\n");
        let response = client.response(false);
        assert_eq!(response.status, 304);
        assert_eq!(response.header("etag"), Some("\"v1\""));
        assert_eq!(client.get("/after-304").text(), "path=/after-304");

        let response = client.get("/status/304-length");
        assert_eq!(response.status, 304);
        assert_eq!(
            client.get("/after-304-length").text(),
            "path=/after-304-length",
            "a 304's content-length announces no body"
        );
    }
}

/// Case 5a: Content-Length request bodies, small and 1 MiB written in pieces,
/// reach the upstream byte-exact (and come back through the echo).
#[test]
fn content_length_request_bodies_arrive_byte_exact() {
    let (upstream, _river, mut client) = standard_proxy();

    client.send("POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 11\r\n\r\nhello world");
    let response = client.response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world");

    let big = pattern(1 << 20);
    client.send(format!(
        "POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        big.len()
    ));
    for piece in big.chunks(64 * 1024 + 7) {
        client.send(piece);
    }
    let response = client.response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), big.len());
    assert!(response.body == big, "the 1 MiB echo differs");

    assert_echoed_upstream(&upstream, &big);
    assert_eq!(client.get("/after").text(), "path=/after");
}

/// Case 5b: chunked request bodies (small, and 300 KB in uneven chunks) reach
/// the upstream with the right decoded content.
#[test]
fn chunked_request_bodies_arrive_decoded() {
    let (upstream, _river, mut client) = standard_proxy();

    client.send(
        "POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n1;ext=x\r\n \r\n5\r\nworld\r\n0\r\n\r\n",
    );
    let response = client.response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "hello world");

    let big = pattern(300_000);
    client.send("POST /echo HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n");
    for piece in chunked(&big, &[1, 4096, 65_536, 17, 100_000]).chunks(50_001) {
        client.send(piece);
    }
    let response = client.response(false);
    assert_eq!(response.status, 200);
    assert!(response.body == big, "the chunked echo differs");

    assert_echoed_upstream(&upstream, &big);
    assert_eq!(client.get("/after").text(), "path=/after");
}

/// The upstream received exactly two `/echo` bodies: `hello world`, then `big`.
fn assert_echoed_upstream(upstream: &RawUpstream, big: &[u8]) {
    let received: Vec<Vec<u8>> = upstream
        .requests()
        .into_iter()
        .filter(|(_, r)| r.path == "/echo")
        .map(|(_, r)| r.body)
        .collect();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], b"hello world");
    assert!(received[1] == big, "the body upstream differs");
}

/// Case 6 (what River must do at the least): requests pipelined in one
/// write never get a wrong, mixed or partial answer. The first is answered;
/// each later one is either answered in order or the connection closes
/// cleanly before its response (the client then retries, RFC 9112 §9.3.2).
#[test]
fn pipelined_requests_get_in_order_answers_or_a_clean_close() {
    let upstream = RawUpstream::start(standard);
    let (_river, addr) = start_proxy(upstream.addr);
    let cases: [(&str, &[&str]); 2] = [
        (
            "GET /first HTTP/1.1\r\nhost: localhost\r\n\r\n\
             GET /second HTTP/1.1\r\nhost: localhost\r\n\r\n",
            &["path=/first", "path=/second"],
        ),
        (
            "GET /third HTTP/1.1\r\nhost: localhost\r\n\r\n\
             POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\nxyz\
             GET /fifth HTTP/1.1\r\nhost: localhost\r\n\r\n",
            &["path=/third", "xyz", "path=/fifth"],
        ),
    ];
    for (requests, bodies) in cases {
        let mut client = Client::connect(addr);
        client.send(requests);
        for (i, body) in bodies.iter().enumerate() {
            match client.try_response(false) {
                Ok(response) => {
                    assert_eq!(response.status, 200, "pipelined response {i}");
                    assert_eq!(response.text(), *body, "pipelined response {i}");
                }
                Err(err) if i > 0 => {
                    assert!(
                        matches!(
                            err.kind(),
                            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                        ),
                        "pipelined response {i}: neither a response nor a clean close: {err}"
                    );
                    break;
                }
                Err(err) => panic!("no response to the first pipelined request: {err}"),
            }
        }
    }
}

/// Case 6 (RFC 9112 §9.3.2): requests pipelined in one write, one of them
/// with a body, are all answered, in order. (pingora's own HTTP/1 path, which
/// River used for every request before the h1_proxy fast path, answered the
/// first and closed the connection.)
#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let (_upstream, _river, mut client) = standard_proxy();
    client.send(
        "GET /first HTTP/1.1\r\nhost: localhost\r\n\r\n\
         GET /second HTTP/1.1\r\nhost: localhost\r\n\r\n",
    );
    assert_eq!(client.response(false).text(), "path=/first");
    assert_eq!(client.response(false).text(), "path=/second");

    client.send(
        "GET /third HTTP/1.1\r\nhost: localhost\r\n\r\n\
         POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\nxyz\
         GET /fifth HTTP/1.1\r\nhost: localhost\r\n\r\n",
    );
    assert_eq!(client.response(false).text(), "path=/third");
    assert_eq!(client.response(false).text(), "xyz");
    assert_eq!(client.response(false).text(), "path=/fifth");
}

/// Case 7a: the upstream closes an idle keep-alive connection (100 ms after
/// answering); a request 500 ms later still gets 200, not 502.
#[test]
fn upstream_closing_an_idle_pooled_connection_is_not_an_error() {
    let upstream = RawUpstream::start(|mut c| {
        if let Some(request) = c.request() {
            c.respond("200 OK", &[], format!("path={}", request.path).as_bytes());
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.writer.shutdown(Shutdown::Both);
    });
    let (_river, addr) = start_proxy(upstream.addr);
    let mut client = Client::connect(addr);
    assert_eq!(client.get("/one").text(), "path=/one");
    std::thread::sleep(Duration::from_millis(500));
    let response = client.get("/two");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "path=/two");
    // A new client connection, too.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(Client::connect(addr).get("/three").text(), "path=/three");
}

/// Case 7b: the upstream's close crosses River's next request on a pooled
/// connection (it reads the request and closes without answering). A GET
/// without a body is safe to retry on a new connection: the client gets 200.
#[test]
fn a_get_on_a_pooled_connection_closed_by_the_upstream_is_retried() {
    let upstream = RawUpstream::start(|mut c| {
        let first_connection = c.index == 0;
        while let Some(request) = c.request() {
            if first_connection && request.path != "/one" {
                break; // the close that crossed the request
            }
            if !c.respond("200 OK", &[], format!("path={}", request.path).as_bytes()) {
                break;
            }
        }
        let _ = c.writer.shutdown(Shutdown::Both);
    });
    let (_river, addr) = start_proxy(upstream.addr);
    let mut client = Client::connect(addr);
    assert_eq!(client.get("/one").text(), "path=/one");
    let response = client.get("/two");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "path=/two");
    let requests = upstream.requests();
    eprintln!(
        "upstream saw: {:?}",
        requests
            .iter()
            .map(|(conn, r)| (conn, r.path.as_str()))
            .collect::<Vec<_>>()
    );
}

/// Case 8: nothing listens on the upstream's port: a short 502 response, not a
/// dropped connection.
#[test]
fn dead_upstream_gets_a_short_502() {
    let dead = local(free_port());
    let (_river, addr) = start_proxy(dead);
    let mut client = Client::connect(addr);
    client.send("GET / HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let response = client.response(false);
    assert_eq!(response.status, 502, "{}", response.text());
    assert!(
        response.body.len() < 1024,
        "a short body: {} bytes",
        response.body.len()
    );
    // And again on a fresh connection: River keeps answering.
    let mut client = Client::connect(addr);
    client.send("GET /again HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    assert_eq!(client.response(false).status, 502);
}

/// Case 9: the upstream announces 1000 bytes, sends 10 and closes. The client
/// must not see a complete response: River either answers with a 5xx, or
/// closes the connection before the 1000th byte (or the final chunk), possibly
/// before any byte at all.
#[test]
fn upstream_closing_mid_body_does_not_look_complete() {
    let (_upstream, _river, mut client) = standard_proxy();
    client.send("GET /truncated HTTP/1.1\r\nhost: localhost\r\n\r\n");
    let head = match client.head() {
        Ok(head) => head,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return; // closed before any response: nothing looks complete
        }
        Err(err) => panic!("neither a response head nor a close: {err}"),
    };
    if head.status >= 500 {
        return; // River noticed before sending a head: an error is not a complete 200
    }
    assert_eq!(head.status, 200);
    let rest = client.rest(); // panics if River keeps the connection open
    if is_chunked(&head.headers) {
        match read_chunked(&mut &rest[..]) {
            Ok(body) => panic!(
                "a complete chunked body of {} bytes after a truncated upstream body",
                body.len()
            ),
            Err(err) => assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}"),
        }
        return;
    }
    let length = content_length(&head.headers)
        .unwrap()
        .expect("a length or chunked framing for a length-delimited upstream body");
    assert_eq!(length, 1000, "the upstream's length is kept");
    assert!(
        rest.len() < length,
        "{} body bytes for a truncated 10-byte upstream body",
        rest.len()
    );
    assert!(b"0123456789".starts_with(&rest[..rest.len().min(10)]));
}

/// Case 10: `connection: close` from the client: River says `connection:
/// close` too and closes after the response.
#[test]
fn client_connection_close_is_honoured() {
    let (_upstream, _river, mut client) = standard_proxy();
    client.send("GET /bye HTTP/1.1\r\nhost: localhost\r\nConnection: Close\r\n\r\n");
    let response = client.response(false);
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "path=/bye");
    assert!(
        response.says_close(),
        "connection header: {:?}",
        response.header("connection")
    );
    client.assert_closed("a `connection: close` response");
}

/// Case 11: X-Forwarded-For gets the client address appended;
/// X-Forwarded-Proto is `http`.
#[test]
fn forwarded_headers_reach_the_upstream() {
    let (upstream, _river, mut client) = standard_proxy();
    client.send("GET /xff HTTP/1.1\r\nhost: localhost\r\nx-forwarded-for: 203.0.113.7\r\n\r\n");
    assert_eq!(client.response(false).status, 200);
    client.send("GET /no-xff HTTP/1.1\r\nhost: localhost\r\n\r\n");
    assert_eq!(client.response(false).status, 200);

    let request = upstream.request_to("/xff");
    let xff = request.header("x-forwarded-for").expect("x-forwarded-for");
    assert!(xff.starts_with("203.0.113.7"), "x-forwarded-for: {xff}");
    assert!(xff.ends_with("127.0.0.1"), "x-forwarded-for: {xff}");
    assert_eq!(request.header("x-forwarded-proto").as_deref(), Some("http"));

    let request = upstream.request_to("/no-xff");
    assert_eq!(
        request.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(request.header("x-forwarded-proto").as_deref(), Some("http"));
}

/// Case 12: an HTTP/1.0 request without Host gets a complete 200, and the
/// connection is closed after it (HTTP/1.0 without keep-alive).
#[test]
fn http10_request_without_host_is_answered_and_closed() {
    let (upstream, _river, mut client) = standard_proxy();
    client.send("GET /old HTTP/1.0\r\n\r\n");
    let response = client.response(false);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "path=/old");
    assert_ne!(
        response.framing,
        Framing::Chunked,
        "an HTTP/1.0 client cannot read chunked framing"
    );
    if response.framing != Framing::Close {
        client.assert_closed("an HTTP/1.0 response");
    }
    assert_eq!(upstream.request_to("/old").method, "GET");
}

/// Case 12, upstream side: River sends an HTTP/1.0 request without Host on
/// to the upstream as a valid request. An HTTP/1.1 request must carry a Host
/// header (RFC 9112 §3.2: servers answer 400 without one), so River either
/// keeps HTTP/1.0 toward the upstream or adds a Host.
/// River adds `Host: ADDR:PORT` of the upstream, as nginx's `$proxy_host`.
#[test]
fn http10_request_without_host_goes_upstream_as_a_valid_request() {
    let (upstream, _river, mut client) = standard_proxy();
    client.send("GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(client.response(false).status, 200);
    let request = upstream.request_to("/old");
    assert!(
        request.version == "HTTP/1.0" || request.header("host").is_some(),
        "an HTTP/1.1 request without Host upstream:\n{}",
        request.raw_head
    );
}

/// Case 13: a 6 KB response header arrives intact.
#[test]
fn large_response_header_arrives_intact() {
    let (_upstream, _river, mut client) = standard_proxy();
    let response = client.get("/big-cookie");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("set-cookie"),
        Some(format!("big={}; Path=/", big_cookie()).as_str())
    );
    assert_eq!(response.text(), "cookie");
    assert_eq!(client.get("/after").text(), "path=/after");
}

/// Case 14: a request with 100 extra headers reaches the upstream with all of them.
#[test]
fn request_with_a_hundred_headers_arrives_whole() {
    let (upstream, _river, mut client) = standard_proxy();
    let mut request = String::from("GET /many HTTP/1.1\r\nhost: localhost\r\n");
    for i in 0..100 {
        request += &format!("x-h-{i}: value-{i}\r\n");
    }
    request += "\r\n";
    client.send(request);
    let response = client.response(false);
    assert_eq!(response.status, 200);

    let received = upstream.request_to("/many");
    for i in 0..100 {
        assert_eq!(
            received.header(&format!("x-h-{i}")),
            Some(format!("value-{i}")),
            "header x-h-{i} upstream; head:\n{}",
            received.raw_head
        );
    }
    assert_eq!(client.get("/after").text(), "path=/after");
}

/// Case 15: a malformed request gets a 400 or a closed connection, never
/// reaches the upstream, and River keeps serving other clients.
#[test]
fn malformed_request_is_refused_and_river_keeps_serving() {
    let upstream = RawUpstream::start(standard);
    let (_river, addr) = start_proxy(upstream.addr);
    let mut client = Client::connect(addr);
    client.send("GARBAGE\r\n\r\n");
    match client.try_response(false) {
        Ok(response) => assert_eq!(response.status, 400, "{}", response.text()),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "neither a response nor a close: {err}"
        ),
    }
    let mut client = Client::connect(addr);
    assert_eq!(client.get("/fine").text(), "path=/fine");
    let paths: Vec<String> = upstream
        .requests()
        .into_iter()
        .map(|(_, r)| r.path)
        .collect();
    assert_eq!(paths, ["/fine"]);
}

/// Many keep-alive requests of mixed framings on one connection stay in step
/// (a framing slip in any of them shows up as a wrong body later).
#[test]
fn mixed_framings_on_one_connection_stay_in_step() {
    let (upstream, _river, mut client) = standard_proxy();
    for round in 0..3 {
        assert_eq!(client.get("/chunked").text(), CHUNKED_BODY, "round {round}");
        client.send("HEAD /x HTTP/1.1\r\nhost: localhost\r\n\r\n");
        assert_eq!(client.response(true).status, 200, "round {round}");
        assert_eq!(client.get("/status/204").status, 204, "round {round}");
        client.send("POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 4\r\n\r\nbody");
        assert_eq!(client.response(false).text(), "body", "round {round}");
        assert_eq!(client.get("/head").body, thousand_bytes(), "round {round}");
        assert_eq!(client.get("/status/304").status, 304, "round {round}");
        assert_eq!(client.get("/plain").text(), "path=/plain", "round {round}");
    }
    assert_eq!(
        upstream.requests().len(),
        21,
        "every request reached the upstream exactly once"
    );
}

/// A 512 KiB chunked upstream body in uneven chunks arrives byte-exact, and the
/// connection stays usable.
#[test]
fn large_chunked_response_arrives_byte_exact() {
    let (_upstream, _river, mut client) = standard_proxy();
    for round in 0..2 {
        let response = client.get("/big-chunked");
        assert_eq!(response.status, 200, "round {round}");
        assert_eq!(response.body.len(), BIG_CHUNKED, "round {round}");
        assert!(
            response.body == pattern(BIG_CHUNKED),
            "round {round}: the body differs"
        );
    }
    assert_eq!(client.get("/after").text(), "path=/after");
}

/// Ambiguous request framing (RFC 9112 §6.3) is never passed on ambiguously:
/// with both Transfer-Encoding and Content-Length, River either refuses the
/// request or reads the body as chunked and then closes the connection; with
/// two different Content-Lengths it refuses. Either way the bytes after the
/// chunked body never reach the upstream as a request of their own, and the
/// upstream never gets a request with both framings.
#[test]
fn ambiguous_request_framing_is_not_smuggled() {
    let upstream = RawUpstream::start(standard);
    let (_river, addr) = start_proxy(upstream.addr);

    let mut client = Client::connect(addr);
    client.send(
        "POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 4\r\n\
         transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nhost: localhost\r\n\r\n",
    );
    match client.try_response(false) {
        Ok(response) if response.status == 200 => {
            assert_eq!(response.text(), "abc", "the body is read as chunked");
            assert!(
                client.rest().is_empty(),
                "after a request with both framings, River answers nothing more"
            );
        }
        Ok(response) => assert_eq!(response.status, 400, "{}", response.text()),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "neither a response nor a close: {err}"
        ),
    }

    let mut client = Client::connect(addr);
    client.send(
        "POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\
         content-length: 5\r\n\r\nabcde",
    );
    match client.try_response(false) {
        Ok(response) => assert_eq!(response.status, 400, "{}", response.text()),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "neither a response nor a close: {err}"
        ),
    }

    // The next client is served normally, and is the last request upstream.
    assert_eq!(Client::connect(addr).get("/fine").text(), "path=/fine");
    let requests = upstream.requests();
    assert_eq!(requests.last().map(|(_, r)| r.path.as_str()), Some("/fine"));
    for (_, request) in &requests {
        assert_ne!(request.path, "/smuggled", "a smuggled request upstream");
        assert!(
            request.header("content-length").is_none()
                || request.header("transfer-encoding").is_none(),
            "both framings upstream:\n{}",
            request.raw_head
        );
        if request.path == "/echo" {
            assert_eq!(request.body, b"abc", "the chunked body, nothing else");
        }
    }
}

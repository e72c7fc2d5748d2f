//! Issue 11: the HTTP/1 defects found with a raw-socket client and a
//! scripted upstream, each run through both of River's paths: its own fast
//! path, and pingora's (forced with `RIVER_TEST_NO_FAST_PATH`). Each test
//! failed before the fix on at least one path.

use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use river_tests::raw::*;
use river_tests::river::River;
use river_tests::{free_port, local, wait_for};

/// River's two request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Fast,
    Pingora,
}

const PATHS: [Path; 2] = [Path::Fast, Path::Pingora];

/// River in front of `upstream` on one path, `extra` in the service (e.g. a
/// `timeouts { }` block), with an access log.
struct Proxy {
    _river: River,
    addr: SocketAddr,
    log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Proxy {
    fn start(path: Path, upstream: SocketAddr, extra: &str) -> Proxy {
        let port = free_port();
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("access.log");
        let services = format!(
            "    Proxy {{\n        listeners {{ \"127.0.0.1:{port}\" }}\n        connectors {{ \"{upstream}\" }}\n{extra}\n    }}"
        );
        let system = format!("    workers 1\n    access-log \"{}\"", log.display());
        let env: &[(&str, &OsStr)] = match path {
            Path::Fast => &[],
            Path::Pingora => &[("RIVER_TEST_NO_FAST_PATH", OsStr::new("1"))],
        };
        let river = River::start_with_env(&system, &services, env);
        Proxy {
            _river: river,
            addr: local(port),
            log,
            _logs: logs,
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The access log line of the request to `target`, once written.
    fn log_line(&self, target: &str) -> String {
        let needle = format!(" {target} ");
        wait_for(
            &format!("`{target}` in the access log"),
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.contains(&needle))
                    .map(str::to_owned)
            },
        )
    }
}

/// An upstream answering each request by its path with `script(path)`
/// (raw bytes, written as one piece); `"close"` reads the request and
/// closes; `"hang"` never answers.
fn scripted(script: fn(&str) -> Vec<u8>) -> RawUpstream {
    RawUpstream::start(move |mut c| {
        while let Some(request) = c.request() {
            let answer = script(&request.path);
            if answer == b"close" {
                break;
            }
            if answer == b"hang" {
                std::thread::sleep(Duration::from_secs(30));
                break;
            }
            if !c.send(&answer) {
                return;
            }
        }
        let _ = c.writer.shutdown(Shutdown::Both);
    })
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// The client reads no complete response: a 5xx, or a close (possibly
/// after a head), never a body it would take as whole.
fn assert_no_complete_response(client: &mut Client, what: &str) {
    match client.try_response(false) {
        Ok(response) => assert!(
            response.status >= 500,
            "{what}: a complete {} response: {:?}",
            response.status,
            response.text()
        ),
        Err(err) => assert!(
            matches!(
                err.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::InvalidData
            ),
            "{what}: {err}"
        ),
    }
}

/// Issue 11, first finding: `Transfer-Encoding: chunked,` (an empty last
/// element) was read by River as "until close" and by the client as
/// chunked, so the upstream's bytes after the chunked body became a forged
/// answer to the client's next request. Now the fast path reads the list
/// (chunked) and re-frames; pingora's path, which reads the last token,
/// refuses it (502). The forged response never reaches the client.
#[test]
fn an_empty_transfer_coding_element_forges_no_response() {
    let upstream = scripted(|path| {
        match path {
        "/te" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged".to_vec(),
        _ => OK.to_vec(),
    }
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        let first = client.get("/te");
        if first.status == 200 {
            assert_eq!(first.text(), "hello", "{path:?}");
        } else {
            assert_eq!(first.status, 502, "{path:?}");
            continue;
        }
        client.send("GET /next HTTP/1.1\r\nhost: localhost\r\n\r\n");
        match client.try_response(false) {
            Ok(next) => assert_eq!(next.text(), "ok", "{path:?}: a forged response"),
            Err(err) => assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{path:?}"),
        }
    }
}

/// Issue 11: a pooled upstream connection that reads a POST and closes
/// made River send the POST again on a new connection. A POST is not
/// idempotent: 502, and the upstream saw it once. A GET in the same spot is
/// retried (RFC 9110 §9.2.2).
#[test]
fn a_post_is_never_sent_twice() {
    let upstream = RawUpstream::start(|mut c| {
        let mut served = 0;
        while let Some(request) = c.request() {
            // The first request of each connection is answered; the next
            // one is read and the connection closes: the close crossed it.
            if served == 1 {
                break;
            }
            served += 1;
            if !c.respond("200 OK", &[], format!("path={}", request.path).as_bytes()) {
                return;
            }
        }
        let _ = c.writer.shutdown(Shutdown::Both);
    });
    for path in PATHS {
        let before = upstream.requests().len();
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        assert_eq!(client.get("/warm").text(), "path=/warm", "{path:?}");
        client.send("POST /pay HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\r\nabc");
        let response = client.response(false);
        assert_eq!(response.status, 502, "{path:?}: {}", response.text());
        let payments = upstream.requests()[before..]
            .iter()
            .filter(|(_, r)| r.path == "/pay")
            .count();
        assert_eq!(
            payments, 1,
            "{path:?}: the POST reached the upstream {payments} times"
        );

        // A GET that meets the same close is sent again: 200.
        let mut client = proxy.client();
        assert_eq!(client.get("/warm-again").text(), "path=/warm-again");
        let response = client.get("/read");
        assert_eq!(response.status, 200, "{path:?}: {}", response.text());
        assert_eq!(response.text(), "path=/read", "{path:?}");
    }
}

/// Issue 11: two Host lines, an invalid Host, or an HTTP/1.1 request
/// without Host get 400 (RFC 9112 §3.2) and reach no upstream; the fast path
/// forwarded the first two and pingora's path accepted an invalid Host.
#[test]
fn host_must_be_exactly_one_and_valid() {
    let upstream = scripted(|_| OK.to_vec());
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        for request in [
            "GET /h HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET /h HTTP/1.1\r\nhost: a b\r\n\r\n",
            "GET /h HTTP/1.1\r\nhost: a/b\r\n\r\n",
            "GET /h HTTP/1.1\r\nhost: \r\n\r\n",
            "GET /h HTTP/1.1\r\n\r\n",
        ] {
            let mut client = proxy.client();
            client.send(request);
            let response = client.response(false);
            assert_eq!(response.status, 400, "{path:?} {request:?}");
            client.assert_closed("a 400 for a bad Host");
        }
        assert!(
            upstream.requests().iter().all(|(_, r)| r.path != "/h"),
            "{path:?}: a bad Host reached the upstream"
        );
        assert!(proxy.log_line("/h").contains(" 400 "));
    }
}

/// Issue 11: `Content-Length: 5,5` and two `Content-Length: 5` lines went
/// on raw (request side on pingora's path, response side on both). Now the
/// upstream and the client each see exactly one `content-length: 5`;
/// disagreeing values are 400 (request) and 502 (response).
#[test]
fn content_length_lists_are_normalized_or_refused() {
    let upstream = RawUpstream::start(|mut c| {
        while let Some(request) = c.request() {
            let ok = match request.path.as_str() {
                "/list" => c.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5,5\r\n\r\nhello"),
                "/lines" => c.send(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
                ),
                "/differ" => c.send(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
                ),
                _ => c.respond("200 OK", &[], &request.body),
            };
            if !ok {
                return;
            }
        }
    });
    let one_length = |headers: &[(String, String)], what: &str| {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values, ["5"], "{what}");
    };
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        for response_path in ["/list", "/lines"] {
            let response = client.get(response_path);
            assert_eq!(response.text(), "hello", "{path:?} {response_path}");
            one_length(
                &response.headers,
                &format!("{path:?} response {response_path}"),
            );
        }
        let mut client = proxy.client();
        let response = client.get("/differ");
        assert_eq!(response.status, 502, "{path:?}");

        for (target, fields) in [
            ("/req-list", "content-length: 5,5\r\n"),
            ("/req-lines", "content-length: 5\r\ncontent-length: 5\r\n"),
        ] {
            let mut client = proxy.client();
            client.send(format!(
                "POST {target} HTTP/1.1\r\nhost: localhost\r\n{fields}\r\nhello"
            ));
            assert_eq!(client.response(false).text(), "hello", "{path:?} {target}");
            let received = upstream.requests();
            let (_, request) = received
                .iter()
                .rev()
                .find(|(_, r)| r.path == target)
                .expect("the request upstream");
            one_length(&request.headers, &format!("{path:?} request {target}"));
        }
        let mut client = proxy.client();
        client.send(
            "POST /req-differ HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5, 6\r\n\r\nhello",
        );
        assert_eq!(client.response(false).status, 400, "{path:?}");
    }
}

/// Issue 11: a chunked response's framing was relayed verbatim, so a bare
/// CR in an extension, bare LF line ends, junk after the size and a
/// colon-less trailer reached the client. Now such a body stops where the
/// framing breaks: the client never reads a complete response, and the
/// upstream connection is not used again. Valid extensions are dropped.
#[test]
fn chunked_framing_is_checked_and_re_framed() {
    let upstream = scripted(|path| {
        let body: &[u8] = match path {
            "/bare-cr" => b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            "/bare-lf" => b"5\nhello\n0\n\n",
            "/junk" => b"5x\r\nhello\r\n0\r\n\r\n",
            "/trailer" => b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n",
            "/overflow" => b"10000000000000005\r\nhello\r\n0\r\n\r\n",
            "/extensions" => b"5;name=value;q=\"x y\"\r\nhello\r\n0\r\nx-trailer: 1\r\n\r\n",
            _ => return OK.to_vec(),
        };
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        answer.extend_from_slice(body);
        answer
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        for bad in ["/bare-cr", "/bare-lf", "/junk", "/trailer", "/overflow"] {
            let mut client = proxy.client();
            client.send(format!("GET {bad} HTTP/1.1\r\nhost: localhost\r\n\r\n"));
            if path == Path::Pingora && bad == "/trailer" {
                // pingora's decoder skips trailers unread and re-frames: the
                // client gets the body, cleanly framed, without them.
                assert_eq!(client.response(false).text(), "hello");
                continue;
            }
            assert_no_complete_response(&mut client, &format!("{path:?} {bad}"));
            // The next request goes on another upstream connection.
            let after = format!("/after{bad}");
            assert_eq!(proxy.client().get(&after).text(), "ok");
            let received = upstream.requests();
            let connection = |target: &str| {
                received
                    .iter()
                    .rev()
                    .find(|(_, r)| r.path == target)
                    .map(|(index, _)| *index)
            };
            assert_ne!(
                connection(bad),
                connection(&after),
                "{path:?} {bad}: the upstream connection was reused"
            );
        }
        let mut client = proxy.client();
        client.send("GET /extensions HTTP/1.1\r\nhost: localhost\r\n\r\n");
        let head = client.head().unwrap();
        assert_eq!(head.status, 200);
        let mut framed = Vec::new();
        let _ = client
            .reader
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(500)));
        let _ = client.reader.read_to_end(&mut framed);
        let framed = String::from_utf8_lossy(&framed);
        assert!(
            framed.starts_with("5\r\nhello\r\n0\r\n\r\n"),
            "{path:?}: {framed:?}"
        );
    }
    // The access log says why.
    for (path, why) in [
        (Path::Fast, "bad-chunk-size"),
        (Path::Pingora, "bad-chunked-body"),
    ] {
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        client.send("GET /junk HTTP/1.1\r\nhost: localhost\r\n\r\n");
        assert_no_complete_response(&mut client, &format!("{path:?} /junk"));
        let line = proxy.log_line("/junk");
        assert!(line.ends_with(why), "{path:?}: {line}");
    }
}

/// Issue 11: pingora's path relayed a `101 Switching Protocols` the client
/// never asked for, and the bytes after it. Now 502 on both paths; 103
/// Early Hints is relayed, 102 dropped, and 1xx lose their length fields.
#[test]
fn interim_responses() {
    let upstream = RawUpstream::start(|mut c| {
        while let Some(request) = c.request() {
            let ok = match request.path.as_str() {
                "/101" => c.send(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\nRAW BYTES"),
                "/103" => {
                    c.send_piece(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\ncontent-length: 0\r\n\r\n");
                    c.send(OK)
                }
                "/102" => {
                    c.send_piece(b"HTTP/1.1 102 Processing\r\n\r\n");
                    c.send(OK)
                }
                _ => c.send(OK),
            };
            if !ok {
                return;
            }
        }
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        client.send("GET /101 HTTP/1.1\r\nhost: localhost\r\n\r\n");
        let response = client.response(false);
        assert_eq!(response.status, 502, "{path:?}");
        assert!(!response.text().contains("RAW"), "{path:?}");

        let mut client = proxy.client();
        client.send("GET /103 HTTP/1.1\r\nhost: localhost\r\n\r\n");
        let hints = client.head().unwrap();
        assert_eq!(hints.status, 103, "{path:?}");
        assert!(hints
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("link")));
        assert!(!hints
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length")));
        assert_eq!(client.response(false).text(), "ok", "{path:?}");

        let mut client = proxy.client();
        client.send("GET /102 HTTP/1.1\r\nhost: localhost\r\n\r\n");
        let next = client.head().unwrap();
        assert_eq!(next.status, 200, "{path:?}: the 102 was relayed");
    }
}

/// Issue 11: hop-by-hop fields of a response, and those its `Connection`
/// names, reached the client on both paths.
#[test]
fn response_hop_by_hop_fields_stay_behind() {
    let upstream = scripted(|_| {
        b"HTTP/1.1 200 OK\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic\r\nupgrade: h2c\r\ntrailer: x\r\nx-kept: 1\r\ncontent-length: 2\r\n\r\nok".to_vec()
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let response = proxy.client().get("/hop");
        assert_eq!(response.text(), "ok");
        for gone in [
            "x-secret",
            "keep-alive",
            "proxy-authenticate",
            "upgrade",
            "trailer",
        ] {
            assert!(
                response.header(gone).is_none(),
                "{path:?}: {gone} reached the client"
            );
        }
        assert_eq!(response.header("x-kept"), Some("1"));
    }
}

/// Issue 11: the fast path answered 502 to a response with more than 128
/// header lines, which pingora's path and nginx forward.
#[test]
fn a_response_with_200_header_lines_is_forwarded() {
    let upstream = scripted(|_| {
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..200 {
            answer.extend_from_slice(format!("x-h-{i}: {i}\r\n").as_bytes());
        }
        answer.extend_from_slice(b"content-length: 2\r\n\r\nok");
        answer
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let response = proxy.client().get("/many");
        assert_eq!(response.status, 200, "{path:?}");
        assert_eq!(response.header("x-h-199"), Some("199"), "{path:?}");
    }
}

const SHORT: &str = "        timeouts {\n            client-header-secs 2\n            client-body-secs 1\n            upstream-read-secs 3\n            upstream-send-secs 1\n        }";

/// Issue 11: a client stalling in the middle of its request body kept the
/// connection open forever on the fast path. Now 408 after
/// `client-body-secs`, logged. (The upstream waits for the body too: its
/// read timeout is longer, so the client's runs out first.)
#[test]
fn a_stalled_request_body_gets_408() {
    let upstream = scripted(|_| OK.to_vec());
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, SHORT);
        let mut client = proxy.client();
        let started = Instant::now();
        client.send("POST /stall HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nabc");
        let response = client.response(false);
        assert_eq!(response.status, 408, "{path:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path:?}");
        assert!(proxy.log_line("/stall").contains(" 408 "), "{path:?}");
    }
}

/// Issue 11: an upstream that accepted a request and never answered was
/// waited for forever on both paths. Now 504 after `upstream-read-secs`;
/// an upstream stalling mid-body gets the client connection closed.
#[test]
fn a_silent_upstream_gets_504() {
    let upstream = RawUpstream::start(|mut c| {
        while let Some(request) = c.request() {
            match request.path.as_str() {
                "/silent" => std::thread::sleep(Duration::from_secs(10)),
                "/stall-body" => {
                    c.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst");
                    std::thread::sleep(Duration::from_secs(10));
                }
                _ => {
                    c.send(OK);
                }
            }
        }
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, SHORT);
        let started = Instant::now();
        let response = proxy.client().get("/silent");
        assert_eq!(response.status, 504, "{path:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{path:?}");
        let line = proxy.log_line("/silent");
        assert!(
            line.contains(" 504 ") && line.ends_with("upstream-read-timeout"),
            "{path:?}: {line}"
        );

        // The head may or may not have left (pingora buffers it with the
        // body); either way no complete response, and a prompt close.
        let mut client = proxy.client();
        client.send("GET /stall-body HTTP/1.1\r\nhost: localhost\r\n\r\n");
        let started = Instant::now();
        assert_no_complete_response(&mut client, &format!("{path:?} /stall-body"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path:?}: not closed"
        );
    }
}

/// Issue 11: a head trickled a byte at a time was timed per read on the
/// pingora path (a slowloris kept a connection forever). The whole head
/// must arrive within `client-header-secs`, on both paths: 408.
#[test]
fn a_trickled_head_gets_408_on_both_paths() {
    let upstream = scripted(|_| OK.to_vec());
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, SHORT);
        let mut client = proxy.client();
        let started = Instant::now();
        let head = b"GET /slow HTTP/1.0\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        for byte in head {
            if client.writer.write_all(&[*byte]).is_err()
                || started.elapsed() > Duration::from_secs(4)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let answer = client.response(false);
        assert_eq!(answer.status, 408, "{path:?}");
        assert!(started.elapsed() < Duration::from_secs(8), "{path:?}");
    }
}

/// An idle keep-alive connection closes at `client-header-secs` (nginx's
/// `keepalive_timeout`), without a word, on both paths, and not before. Its
/// wait shares one wake-up with the head deadline (`http1/alarm.rs`).
#[test]
fn an_idle_keep_alive_connection_closes_at_the_head_deadline() {
    let upstream = scripted(|_| OK.to_vec());
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, SHORT);
        let mut client = proxy.client();
        assert_eq!(client.get("/first").status, 200, "{path:?}");
        let idle_from = Instant::now();
        let rest = client.rest();
        let idle = idle_from.elapsed();
        assert!(
            rest.is_empty(),
            "{path:?}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert!(
            idle >= Duration::from_millis(1500) && idle < Duration::from_secs(5),
            "{path:?}: closed after {idle:?}"
        );
    }
}

/// A WebSocket is a tunnel: silent for longer than `upstream-read-secs`, it
/// stays open (`tunnel-idle-secs`, default 3600).
#[test]
fn websockets_outlive_the_read_timeout() {
    let echo = river_tests::features::WsEcho::start();
    let proxy = Proxy::start(Path::Fast, echo.addr, SHORT);
    let stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut ws, response) =
        tungstenite::client(format!("ws://{}/chat", proxy.addr), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    for round in 0..2 {
        ws.send(tungstenite::Message::text("ping")).unwrap();
        let echo = ws.read().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), "ping", "round {round}");
        std::thread::sleep(Duration::from_millis(3500));
    }
}

/// Transfer codings River does not implement: 501 for a request (as
/// nginx), 502 for a response; TE with Content-Length in a request is 400.
/// (Requests: the fast path handed them to pingora, which read the last
/// coding; responses: both paths relayed `gzip, chunked` as it came.)
#[test]
fn unknown_transfer_codings_are_refused() {
    let upstream = scripted(|path| match path {
        "/gzip" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec()
        }
        _ => OK.to_vec(),
    });
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        assert_eq!(proxy.client().get("/gzip").status, 502, "{path:?}");
        for (request, status) in [
            ("POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
            ("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
        ] {
            let mut client = proxy.client();
            client.send(request);
            assert_eq!(client.response(false).status, status, "{path:?} {request:?}");
        }
        assert!(upstream.requests().iter().all(|(_, r)| r.path != "/up"));
    }
}

/// The client's `Connection` keeps naming fields that must not reach the
/// upstream, and `Proxy-Authorization`, `TE` and `Trailer` never do.
#[test]
fn request_hop_by_hop_fields_stay_behind() {
    let upstream = scripted(|_| OK.to_vec());
    for path in PATHS {
        let proxy = Proxy::start(path, upstream.addr, "");
        let mut client = proxy.client();
        client.send("GET /hop HTTP/1.1\r\nhost: a\r\nproxy-authorization: Basic x\r\nte: trailers\r\ntrailer: x\r\nkeep-alive: 5\r\nconnection: keep-alive\r\nx-kept: 1\r\n\r\n");
        assert_eq!(client.response(false).text(), "ok");
        let mut client = proxy.client();
        client.send(
            "GET /named HTTP/1.1\r\nhost: a\r\nconnection: x-private\r\nx-private: 1\r\n\r\n",
        );
        assert_eq!(client.response(false).text(), "ok");
        let received = upstream.requests();
        for target in ["/hop", "/named"] {
            let (_, request) = received
                .iter()
                .rev()
                .find(|(_, r)| r.path == target)
                .unwrap();
            for gone in [
                "proxy-authorization",
                "te",
                "trailer",
                "keep-alive",
                "connection",
                "x-private",
            ] {
                assert!(
                    request.header(gone).is_none(),
                    "{path:?} {target}: {gone} upstream"
                );
            }
        }
        let (_, hop) = received
            .iter()
            .rev()
            .find(|(_, r)| r.path == "/hop")
            .unwrap();
        assert_eq!(hop.header("x-kept").as_deref(), Some("1"));
    }
}

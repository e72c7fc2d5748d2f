//! Raw HTTP/1.1 on both sides of a proxy, for tests that control every
//! byte: a scripted upstream that records what it receives, and a client
//! that reads exactly what River sends (status, fields, framing).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Read timeout on every socket: a hang fails the test instead of blocking it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Upstream side: a raw HTTP/1.1 server, one thread per connection
// ---------------------------------------------------------------------------

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/1.0`, from the request line.
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// The head as sent, request line and header lines.
    pub raw_head: String,
    /// Decoded body (from Content-Length or chunked framing).
    pub body: Vec<u8>,
}

impl Request {
    /// All values of header `name`, joined with ", " (RFC 9110 §5.3).
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// One accepted upstream connection.
pub struct UpConn {
    /// 0 for the first connection the upstream accepted, 1 for the second...
    pub index: usize,
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    pub log: Arc<Mutex<Vec<(usize, Request)>>>,
}

impl UpConn {
    /// The next request on this connection; None once River closed it (or on
    /// a framing error).
    pub fn request(&mut self) -> Option<Request> {
        let request = read_request(&mut self.reader).ok()??;
        self.log.lock().unwrap().push((self.index, request.clone()));
        Some(request)
    }

    /// Write `bytes` as one write; false if the peer is gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).is_ok() && self.writer.flush().is_ok()
    }

    /// Write `bytes` as a separate TCP segment (nodelay, then a short pause),
    /// so that River reads the response in pieces.
    pub fn send_piece(&mut self, bytes: &[u8]) -> bool {
        let ok = self.send(bytes);
        std::thread::sleep(Duration::from_millis(5));
        ok
    }

    pub fn respond(&mut self, status: &str, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes)
    }
}

pub type Log = Arc<Mutex<Vec<(usize, Request)>>>;

pub struct RawUpstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub log: Log,
    pub stop: Arc<AtomicBool>,
}

impl RawUpstream {
    /// Serve every accepted connection with `handler` on its own thread.
    pub fn start(handler: impl Fn(UpConn) + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let upstream = RawUpstream {
            addr: listener.local_addr().expect("upstream addr"),
            connections: Arc::default(),
            log: Arc::default(),
            stop: Arc::default(),
        };
        let (connections, log, stop) = (
            upstream.connections.clone(),
            upstream.log.clone(),
            upstream.stop.clone(),
        );
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let index = connections.fetch_add(1, Ordering::AcqRel);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                let connection = UpConn {
                    index,
                    reader: BufReader::new(reader),
                    writer: stream,
                    log: log.clone(),
                };
                let handler = handler.clone();
                std::thread::spawn(move || handler(connection));
            }
        });
        upstream
    }

    /// Requests received so far, with the index of the connection each came on.
    pub fn requests(&self) -> Vec<(usize, Request)> {
        self.log.lock().unwrap().clone()
    }

    /// The only request received whose path is `path`.
    pub fn request_to(&self, path: &str) -> Request {
        let matching: Vec<Request> = self
            .requests()
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.path == path)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "requests upstream to {path}: {matching:#?}"
        );
        matching.into_iter().next().unwrap()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 message parsing, shared by both sides
// ---------------------------------------------------------------------------

pub fn invalid(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what.into())
}

/// One CRLF-terminated line (without the CRLF); None at a clean EOF.
pub fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("non-UTF-8 line"))
}

/// Header lines up to the empty line, and the raw text of those lines.
pub fn read_headers(reader: &mut impl BufRead) -> std::io::Result<(Vec<(String, String)>, String)> {
    let mut headers = Vec::new();
    let mut raw = String::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("EOF in the header section"))?;
        if line.is_empty() {
            return Ok((headers, raw));
        }
        raw += &line;
        raw += "\r\n";
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| {
        v.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

pub fn content_length(headers: &[(String, String)]) -> std::io::Result<Option<usize>> {
    header(headers, "content-length")
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| invalid(format!("bad content-length {v:?}")))
        })
        .transpose()
}

/// A chunked body, decoded (its trailer section is read and dropped).
pub fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("EOF before the last chunk"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            read_headers(reader)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid("chunk data not followed by CRLF"));
        }
    }
}

/// The next request on an upstream connection; None at a clean EOF.
pub fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let Some(request_line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    let (headers, raw) = read_headers(reader)?;
    let body = if is_chunked(&headers) {
        read_chunked(reader)?
    } else {
        let mut body = vec![0; content_length(&headers)?.unwrap_or(0)];
        reader.read_exact(&mut body)?;
        body
    };
    Ok(Some(Request {
        method,
        path,
        version,
        headers,
        raw_head: format!("{request_line}\r\n{raw}"),
        body,
    }))
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// How River delimited a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    Length(usize),
    Chunked,
    /// Read until the connection closed.
    Close,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `connection` header holds the `close` option.
    pub fn says_close(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|option| option.trim().eq_ignore_ascii_case("close"))
    }
}

pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to river");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.writer
            .write_all(bytes.as_ref())
            .expect("write to river");
    }

    /// GET `path` (HTTP/1.1, keep-alive) and read the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n"));
        self.response(false)
    }

    pub fn head(&mut self) -> std::io::Result<Head> {
        let status_line = read_line(&mut self.reader)?.ok_or_else(|| {
            std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(invalid(format!("bad status line {status_line:?}")));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let (headers, _) = read_headers(&mut self.reader)?;
        Ok(Head { status, headers })
    }

    /// The next complete response (to a HEAD request if `to_head`), or why not.
    pub fn try_response(&mut self, to_head: bool) -> std::io::Result<Response> {
        let mut head = self.head()?;
        while (100..200).contains(&head.status) {
            head = self.head()?;
        }
        let Head { status, headers } = head;
        let (body, framing) = if to_head || status == 204 || status == 304 {
            (Vec::new(), Framing::None)
        } else if is_chunked(&headers) {
            (read_chunked(&mut self.reader)?, Framing::Chunked)
        } else if let Some(length) = content_length(&headers)? {
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body)?;
            (body, Framing::Length(length))
        } else {
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            (body, Framing::Close)
        };
        Ok(Response {
            status,
            headers,
            body,
            framing,
        })
    }

    pub fn response(&mut self, to_head: bool) -> Response {
        self.try_response(to_head)
            .unwrap_or_else(|err| panic!("no complete response from river: {err}"))
    }

    /// Everything River sends until it closes the connection. Panics if it
    /// keeps the connection open past the read timeout.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let mut buf = [0; 16 * 1024];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return rest,
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == ErrorKind::ConnectionReset => return rest,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => panic!(
                    "river did not close the connection ({err}); received so far: {:?}",
                    String::from_utf8_lossy(&rest)
                ),
            }
        }
    }

    /// River closes the connection without sending anything more.
    pub fn assert_closed(&mut self, after: &str) {
        let rest = self.rest();
        assert!(
            rest.is_empty(),
            "after {after}, river sent {:?} instead of closing",
            String::from_utf8_lossy(&rest)
        );
    }
}

/// Bytes 0..=250 repeated (a prime period), so that any dropped, duplicated or
/// reordered byte shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A body as a chunked request body, in chunks of `sizes` (cycled).
pub fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*size).min(rest.len()));
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = tail;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

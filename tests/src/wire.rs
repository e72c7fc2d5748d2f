//! Raw HTTP/1 on both sides of River, for the conformance suite: a client that
//! writes exact bytes and reads what comes back against a deadline, and a
//! scripted upstream that records every byte it receives and answers with
//! scripted bytes (malformed ones, delays, partial answers, silence).
//!
//! Neither side trusts River. The parsers here are strict where a careful
//! peer is (CRLF line ends, one valid Content-Length, strict chunked framing),
//! so that framing River got wrong shows up as [`Read::Malformed`] instead of
//! being read one way or another; and every read has a deadline, so that a
//! hang is a result ([`Read::TimedOut`]) rather than a stuck test.
//!
//! This module does not know about River's configuration or its two paths:
//! that is the conformance suite's (`tests/tests/http1_conformance/`).

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long an upstream script waits for River at most (for a request, or in
/// [`Step::Hang`]) before it gives up and closes the connection.
const SCRIPT_WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Chunk sizes above this are refused by the parsers here (no test sends more).
const MAX_CHUNK: u64 = 1 << 40;

// ---------------------------------------------------------------------------
// Messages: pure functions on bytes
// ---------------------------------------------------------------------------

/// One field line, name as sent, value without surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// The fields of one head, with lookups by name (case-insensitive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(pub Vec<Field>);

impl Fields {
    /// The values of every `name` line, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.as_str())
            .collect()
    }

    /// The first `name` line's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The elements of the list field `name` over all its lines, empty
    /// elements left out (RFC 9110 §5.6.1), lowercased.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// How a message body was delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body by definition (HEAD, 1xx, 101, 204, 304), or a request without
    /// Content-Length and Transfer-Encoding.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closed.
    Close,
}

/// An interim (1xx) response as the client received it.
#[derive(Debug, Clone)]
pub struct Interim {
    pub status: u16,
    pub fields: Fields,
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub fields: Fields,
    /// 1xx responses before this one, in order.
    pub interim: Vec<Interim>,
    /// The decoded body.
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Chunked trailer fields.
    pub trailers: Fields,
    /// The response's bytes exactly as received, interim responses included.
    pub raw: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A complete request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: String,
    pub fields: Fields,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Fields,
    /// The request's bytes exactly as received.
    pub raw: Vec<u8>,
}

impl Request {
    /// The path part of the target (before any `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// The result of parsing from the start of a buffer.
#[derive(Debug)]
pub enum Parse<T> {
    /// A whole message, and how many bytes it took.
    Complete(T, usize),
    /// More bytes are needed.
    Partial,
    /// The bytes are not a valid message (and more bytes will not help).
    Invalid(String),
}

/// The length of the head at the start of `buf` (up to and including the
/// empty line), if it is all there.
fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The CRLF-separated lines of a head (its final empty line excluded). A bare
/// CR or LF inside a line is an error.
fn head_lines(head: &[u8]) -> Result<Vec<&[u8]>, String> {
    let head = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let mut lines = Vec::new();
    let mut rest = head;
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(rest.len());
        let line = &rest[..end];
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(format!(
                "bare CR or LF in line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        lines.push(line);
        if end == rest.len() {
            return Ok(lines);
        }
        rest = &rest[end + 2..];
    }
}

/// Field lines, strictly: a token name directly followed by a colon, no
/// obs-fold, no NUL or other control bytes but HTAB in the value.
fn parse_fields(lines: &[&[u8]]) -> Result<Fields, String> {
    let mut fields = Vec::with_capacity(lines.len());
    for line in lines {
        let text = String::from_utf8_lossy(line);
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(format!("obs-fold line {text:?}"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("field line without a colon: {text:?}"))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return Err(format!("invalid field name in {text:?}"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("control byte in field value {text:?}"));
        }
        fields.push(Field {
            name: String::from_utf8_lossy(name).into_owned(),
            value: String::from_utf8_lossy(value)
                .trim_matches([' ', '\t'])
                .to_owned(),
        });
    }
    Ok(Fields(fields))
}

/// Content-Length: every line and list element the same decimal, or an error.
fn content_length(fields: &Fields) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in fields.all("content-length") {
        for element in value.split(',') {
            let element = element.trim();
            if element.is_empty() || !element.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("invalid content-length {value:?}"));
            }
            let n: u64 = element
                .parse()
                .map_err(|_| format!("content-length overflows: {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err(format!("conflicting content-length {value:?}"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A chunk extension list (`*( BWS ";" BWS name [ BWS "=" BWS value ] )`).
fn valid_chunk_ext(ext: &[u8]) -> bool {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < ext.len() && (ext[*i] == b' ' || ext[*i] == b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < ext.len() && is_tchar(ext[*i]) {
            *i += 1;
        }
        *i > start
    };
    loop {
        skip_ws(&mut i);
        if i == ext.len() {
            return true;
        }
        if ext[i] != b';' {
            return false;
        }
        i += 1;
        skip_ws(&mut i);
        if !token(&mut i) {
            return false;
        }
        skip_ws(&mut i);
        if i < ext.len() && ext[i] == b'=' {
            i += 1;
            skip_ws(&mut i);
            if i < ext.len() && ext[i] == b'"' {
                i += 1;
                loop {
                    match ext.get(i) {
                        None => return false,
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => i += 2,
                        Some(&b) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => i += 1,
                        Some(_) => return false,
                    }
                }
            } else if !token(&mut i) {
                return false;
            }
        }
    }
}

/// A chunked body, strictly (RFC 9112 §7.1): the decoded body, the trailer
/// fields, and the bytes it took.
fn parse_chunked(buf: &[u8]) -> Parse<(Vec<u8>, Fields)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return match buf[at..].iter().position(|&b| b == b'\n') {
                Some(_) => Parse::Invalid("chunk size line not ended by CRLF".into()),
                None => Parse::Partial,
            };
        };
        let line = &buf[at..at + end];
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Parse::Invalid(format!(
                "bare CR or LF in chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Parse::Invalid(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        if !valid_chunk_ext(&line[digits..]) {
            return Parse::Invalid(format!(
                "bad chunk extension in {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = match u64::from_str_radix(&String::from_utf8_lossy(&line[..digits]), 16) {
            Ok(size) if size <= MAX_CHUNK => size,
            _ => return Parse::Invalid("chunk size too large".into()),
        };
        at += end + 2;
        if size == 0 {
            // The trailer section, up to an empty line.
            let mut lines = Vec::new();
            loop {
                let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Parse::Partial;
                };
                let line = &buf[at..at + end];
                at += end + 2;
                if line.is_empty() {
                    break;
                }
                if line.iter().any(|&b| b == b'\r' || b == b'\n') {
                    return Parse::Invalid("bare CR or LF in a trailer line".into());
                }
                lines.push(line);
            }
            return match parse_fields(&lines) {
                Ok(trailers) => Parse::Complete((body, trailers), at),
                Err(err) => Parse::Invalid(format!("trailer: {err}")),
            };
        }
        let size = size as usize;
        if buf.len() < at + size + 2 {
            return Parse::Partial;
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Parse::Invalid("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// The body after a head, by `framing`; `eof` says the peer closed.
fn parse_body(buf: &[u8], framing: Framing, eof: bool) -> Parse<(Vec<u8>, Fields)> {
    match framing {
        Framing::None => Parse::Complete((Vec::new(), Fields::default()), 0),
        Framing::Length(n) => match usize::try_from(n) {
            Ok(n) if buf.len() >= n => Parse::Complete((buf[..n].to_vec(), Fields::default()), n),
            _ => Parse::Partial,
        },
        Framing::Chunked => parse_chunked(buf),
        Framing::Close if eof => Parse::Complete((buf.to_vec(), Fields::default()), buf.len()),
        Framing::Close => Parse::Partial,
    }
}

/// A start line and its fields.
fn parse_head(buf: &[u8]) -> Parse<(String, Fields)> {
    let Some(len) = head_len(buf) else {
        if buf.len() > 1 << 20 {
            return Parse::Invalid("head larger than 1 MiB".into());
        }
        return Parse::Partial;
    };
    let lines = match head_lines(&buf[..len]) {
        Ok(lines) => lines,
        Err(err) => return Parse::Invalid(err),
    };
    let start = String::from_utf8_lossy(lines[0]).into_owned();
    match parse_fields(&lines[1..]) {
        Ok(fields) => Parse::Complete((start, fields), len),
        Err(err) => Parse::Invalid(err),
    }
}

/// The response at the start of `buf`, interim responses included, as a
/// strict HTTP/1.1 client reads it. `to_head`: it answers a HEAD request.
/// `eof`: the server closed after `buf`.
pub fn parse_response(buf: &[u8], to_head: bool, eof: bool) -> Parse<Response> {
    let mut at = 0;
    let mut interim = Vec::new();
    loop {
        let (start, fields, len) = match parse_head(&buf[at..]) {
            Parse::Complete((start, fields), len) => (start, fields, len),
            Parse::Partial => return Parse::Partial,
            Parse::Invalid(err) => return Parse::Invalid(err),
        };
        let mut parts = start.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().to_owned();
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Parse::Invalid(format!("bad status line {start:?}"));
        }
        let status: u16 = match status.parse() {
            Ok(s) if status.len() == 3 && (100..600).contains(&s) => s,
            _ => return Parse::Invalid(format!("bad status line {start:?}")),
        };
        at += len;
        if (100..200).contains(&status) && status != 101 {
            interim.push(Interim { status, fields });
            continue;
        }
        let framing = if to_head || status == 101 || status == 204 || status == 304 {
            Framing::None
        } else if fields.has("transfer-encoding") {
            if fields.list("transfer-encoding").last().map(String::as_str) == Some("chunked") {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else {
            match content_length(&fields) {
                Ok(Some(n)) => Framing::Length(n),
                Ok(None) => Framing::Close,
                Err(err) => return Parse::Invalid(err),
            }
        };
        return match parse_body(&buf[at..], framing, eof) {
            Parse::Complete((body, trailers), n) => Parse::Complete(
                Response {
                    version,
                    status,
                    reason,
                    fields,
                    interim,
                    body,
                    framing,
                    trailers,
                    raw: buf[..at + n].to_vec(),
                },
                at + n,
            ),
            Parse::Partial => Parse::Partial,
            Parse::Invalid(err) => Parse::Invalid(err),
        };
    }
}

/// The request at the start of `buf`, as a strict HTTP/1.1 server reads it.
pub fn parse_request(buf: &[u8]) -> Parse<Request> {
    let (start, fields, len) = match parse_head(buf) {
        Parse::Complete((start, fields), len) => (start, fields, len),
        Parse::Partial => return Parse::Partial,
        Parse::Invalid(err) => return Parse::Invalid(err),
    };
    let parts: Vec<&str> = start.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Parse::Invalid(format!("bad request line {start:?}"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Parse::Invalid(format!("bad request line {start:?}"));
    }
    let framing = if fields.has("transfer-encoding") {
        if fields.list("transfer-encoding") == ["chunked"] {
            Framing::Chunked
        } else {
            return Parse::Invalid(format!(
                "request transfer-encoding {:?}",
                fields.all("transfer-encoding")
            ));
        }
    } else {
        match content_length(&fields) {
            Ok(Some(n)) => Framing::Length(n),
            Ok(None) => Framing::None,
            Err(err) => return Parse::Invalid(err),
        }
    };
    match parse_body(&buf[len..], framing, false) {
        Parse::Complete((body, trailers), n) => Parse::Complete(
            Request {
                method: method.to_owned(),
                target: target.to_owned(),
                version: version.to_owned(),
                fields,
                body,
                framing,
                trailers,
                raw: buf[..len + n].to_vec(),
            },
            len + n,
        ),
        Parse::Partial => Parse::Partial,
        Parse::Invalid(err) => Parse::Invalid(err),
    }
}

/// Every complete request in `buf`, in order; parsing stops at the first
/// incomplete or invalid one, whose bytes are returned as the rest.
pub fn parse_requests(buf: &[u8]) -> (Vec<Request>, Vec<u8>) {
    let mut requests = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse_request(&buf[at..]) {
            Parse::Complete(request, n) => {
                requests.push(request);
                at += n;
            }
            Parse::Partial | Parse::Invalid(_) => break,
        }
    }
    (requests, buf[at..].to_vec())
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// A part of what a client or upstream sends.
#[derive(Debug, Clone)]
pub enum Piece {
    Bytes(Vec<u8>),
    /// Wait before sending the next piece.
    Pause(Duration),
}

/// What one attempt to read a response got.
#[derive(Debug, Clone)]
pub enum Read {
    Response(Response),
    /// River closed the connection before a complete response; what came
    /// after the last complete response.
    Closed(Vec<u8>),
    /// No complete response by the deadline, and the connection still open.
    TimedOut(Vec<u8>),
    /// Bytes no correct HTTP/1.1 response starts with.
    Malformed(String, Vec<u8>),
}

/// A client connection that writes exact bytes.
pub struct RawClient {
    stream: TcpStream,
    /// Received and not yet parsed as a response.
    pending: Vec<u8>,
    /// Everything received on this connection.
    pub received: Vec<u8>,
    eof: bool,
    opened: Instant,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(RawClient {
            stream,
            pending: Vec::new(),
            received: Vec::new(),
            eof: false,
            opened: Instant::now(),
        })
    }

    /// Time since the connection was opened.
    pub fn elapsed(&self) -> Duration {
        self.opened.elapsed()
    }

    /// Write `pieces` in order; an error means River closed or reset the
    /// connection meanwhile.
    pub fn send(&mut self, pieces: &[Piece]) -> std::io::Result<()> {
        for piece in pieces {
            match piece {
                Piece::Bytes(bytes) => {
                    self.stream.write_all(bytes)?;
                    self.stream.flush()?;
                }
                Piece::Pause(pause) => std::thread::sleep(*pause),
            }
        }
        Ok(())
    }

    /// Read more within `deadline`; false if nothing more can come (EOF) or
    /// the deadline passed.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // A zero timeout means "block forever" to the socket: keep one ms.
        let wait = (deadline - now).max(Duration::from_millis(1));
        if self.stream.set_read_timeout(Some(wait)).is_err() {
            self.eof = true;
            return false;
        }
        let mut buf = [0; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.received.extend_from_slice(&buf[..n]);
                true
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Instant::now() < deadline
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                // Reset: as closed.
                self.eof = true;
                false
            }
        }
    }

    /// The next response (to a HEAD request if `to_head`) within `within`.
    pub fn read_response(&mut self, to_head: bool, within: Duration) -> Read {
        let deadline = Instant::now() + within;
        loop {
            match parse_response(&self.pending, to_head, self.eof) {
                Parse::Complete(response, n) => {
                    self.pending.drain(..n);
                    return Read::Response(response);
                }
                Parse::Invalid(err) => {
                    return Read::Malformed(err, std::mem::take(&mut self.pending));
                }
                Parse::Partial => {}
            }
            if !self.fill(deadline) {
                if self.eof {
                    // One more parse: a close-delimited body is complete now.
                    if let Parse::Complete(response, n) =
                        parse_response(&self.pending, to_head, true)
                    {
                        self.pending.drain(..n);
                        return Read::Response(response);
                    }
                    return Read::Closed(std::mem::take(&mut self.pending));
                }
                if Instant::now() >= deadline {
                    return Read::TimedOut(std::mem::take(&mut self.pending));
                }
            }
        }
    }

    /// Wait up to `within` for River to close the connection: Ok with any
    /// bytes that came first, or Err with them if it is still open.
    pub fn wait_closed(&mut self, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let deadline = Instant::now() + within;
        while self.fill(deadline) {}
        let rest = std::mem::take(&mut self.pending);
        if self.eof {
            Ok(rest)
        } else {
            Err(rest)
        }
    }

    /// Whether River closed the connection (as far as read so far).
    pub fn is_closed(&self) -> bool {
        self.eof
    }

    /// Stop sending (half-close), as a client that is done.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Up to `n` raw bytes (after any response read so far) within `within`.
    pub fn read_raw(&mut self, n: usize, within: Duration) -> Vec<u8> {
        let deadline = Instant::now() + within;
        while self.pending.len() < n && self.fill(deadline) {}
        let take = self.pending.len().min(n);
        self.pending.drain(..take).collect()
    }

    /// Write `pieces` on a thread of their own, so that reading can go on
    /// meanwhile (a response may come before the request is all sent).
    pub fn send_in_background(&self, pieces: Vec<Piece>) -> std::io::Result<Sending> {
        let mut stream = self.stream.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || -> std::io::Result<()> {
            for piece in pieces {
                match piece {
                    Piece::Bytes(bytes) => {
                        stream.write_all(&bytes)?;
                        stream.flush()?;
                    }
                    Piece::Pause(pause) => {
                        let until = Instant::now() + pause;
                        while Instant::now() < until {
                            if stopped.load(Ordering::Acquire) {
                                return Ok(());
                            }
                            std::thread::sleep(Duration::from_millis(10).min(pause));
                        }
                    }
                }
            }
            Ok(())
        });
        Ok(Sending { stop, handle })
    }
}

/// Pieces being written by [`RawClient::send_in_background`].
pub struct Sending {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Sending {
    /// Skip the remaining pauses, wait for the writes; an error means River
    /// closed or reset the connection meanwhile.
    pub fn finish(self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Release);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the sending thread panicked")))
    }
}

// ---------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------

/// One step of what the upstream does on a connection.
#[derive(Debug, Clone)]
pub enum Step {
    /// Wait for one whole request (or give up: the script ends if River
    /// closes the connection first).
    Request,
    /// Wait for a request head (not its body).
    Head,
    /// Wait for this many more bytes (say, a body after [`Step::Head`]).
    Bytes(usize),
    Send(Vec<u8>),
    Pause(Duration),
    /// Close the connection (both directions).
    Close,
    /// Answer nothing, keep the connection open until River closes it.
    Hang,
    /// From here on, answer every request with `200 OK` and the body
    /// `path=TARGET`, keep-alive, until River closes the connection.
    Serve,
}

/// What the upstream does on each connection it accepts.
#[derive(Debug, Clone)]
pub struct Script {
    /// Steps for connection 0, 1, ...; the last entry serves every later
    /// connection too. A script that runs out closes the connection.
    pub connections: Vec<Vec<Step>>,
}

impl Script {
    /// The same steps on every connection.
    pub fn each(steps: Vec<Step>) -> Script {
        Script {
            connections: vec![steps],
        }
    }

    /// `first` on the first connection, `rest` on every later one.
    pub fn first_then(first: Vec<Step>, rest: Vec<Step>) -> Script {
        Script {
            connections: vec![first, rest],
        }
    }

    fn steps(&self, connection: usize) -> &[Step] {
        let last = self.connections.len().saturating_sub(1);
        self.connections
            .get(connection.min(last))
            .map_or(&[], Vec::as_slice)
    }
}

/// What one upstream connection received.
#[derive(Debug, Default)]
struct Record {
    bytes: Vec<u8>,
    /// River closed (or reset) its side.
    eof: bool,
}

#[derive(Default)]
struct Recording {
    record: Mutex<Record>,
    changed: Condvar,
}

impl Recording {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A raw upstream on 127.0.0.1:0 that runs a [`Script`] per connection and
/// records every byte it receives.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    recordings: Arc<Mutex<Vec<Arc<Recording>>>>,
    stop: Arc<AtomicBool>,
}

impl ScriptedUpstream {
    pub fn start(script: Script) -> std::io::Result<ScriptedUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let recordings: Arc<Mutex<Vec<Arc<Recording>>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (all, stopped) = (recordings.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let recording = Arc::new(Recording::default());
                let index = {
                    let mut all = all.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(recording.clone());
                    all.len() - 1
                };
                let _ = stream.set_nodelay(true);
                let Ok(reader) = stream.try_clone() else {
                    continue;
                };
                let recorder = recording.clone();
                std::thread::spawn(move || record(reader, &recorder));
                let steps = script.steps(index).to_vec();
                let stopped = stopped.clone();
                std::thread::spawn(move || run_script(stream, &recording, &steps, &stopped));
            }
        });
        Ok(ScriptedUpstream {
            addr,
            recordings,
            stop,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The bytes received on each connection, in the order they were accepted.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|r| r.lock().bytes.clone())
            .collect()
    }

    /// The complete requests received, with the index of their connection;
    /// and per connection, the bytes after its last complete request.
    pub fn requests(&self) -> (Vec<(usize, Request)>, Vec<Vec<u8>>) {
        let mut requests = Vec::new();
        let mut rests = Vec::new();
        for (index, bytes) in self.received().iter().enumerate() {
            let (parsed, rest) = parse_requests(bytes);
            requests.extend(parsed.into_iter().map(|r| (index, r)));
            rests.push(rest);
        }
        (requests, rests)
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for recording in self
            .recordings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            recording.changed.notify_all();
        }
    }
}

/// Read everything River sends on one connection into `recording`.
fn record(mut stream: TcpStream, recording: &Recording) {
    let mut buf = [0; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let mut record = recording.lock();
        if n == 0 {
            record.eof = true;
            recording.changed.notify_all();
            return;
        }
        record.bytes.extend_from_slice(&buf[..n]);
        recording.changed.notify_all();
    }
}

/// Wait until `ready` says the bytes from `cursor` on hold what a step waits
/// for (Some(bytes taken)), River closed, or the wait limit passed.
fn wait_for_bytes(
    recording: &Recording,
    cursor: usize,
    stop: &AtomicBool,
    ready: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let deadline = Instant::now() + SCRIPT_WAIT_LIMIT;
    let mut record = recording.lock();
    loop {
        if let Some(n) = ready(&record.bytes[cursor.min(record.bytes.len())..]) {
            return Some(n);
        }
        let now = Instant::now();
        if record.eof || now >= deadline || stop.load(Ordering::Acquire) {
            return None;
        }
        let wait = (deadline - now).min(Duration::from_millis(200));
        record = recording
            .changed
            .wait_timeout(record, wait)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// The next whole request from `cursor`: its size, and the request when it
/// parsed (an invalid one takes every byte received so far).
fn next_request(
    recording: &Recording,
    cursor: usize,
    stop: &AtomicBool,
) -> Option<(usize, Option<Request>)> {
    let taken = wait_for_bytes(recording, cursor, stop, |bytes| {
        match parse_request(bytes) {
            Parse::Complete(_, n) => Some(n),
            Parse::Invalid(_) => Some(bytes.len()),
            Parse::Partial => None,
        }
    })?;
    let record = recording.lock();
    let end = (cursor + taken).min(record.bytes.len());
    let request = match parse_request(&record.bytes[cursor..end]) {
        Parse::Complete(request, _) => Some(request),
        _ => None,
    };
    Some((taken, request))
}

fn run_script(mut stream: TcpStream, recording: &Recording, steps: &[Step], stop: &AtomicBool) {
    let mut cursor = 0;
    for step in steps {
        match step {
            Step::Request => match next_request(recording, cursor, stop) {
                Some((n, _)) => cursor += n,
                None => break,
            },
            Step::Head => match wait_for_bytes(recording, cursor, stop, head_len) {
                Some(n) => cursor += n,
                None => break,
            },
            Step::Bytes(want) => {
                let want = *want;
                match wait_for_bytes(recording, cursor, stop, |b| {
                    (b.len() >= want).then_some(want)
                }) {
                    Some(n) => cursor += n,
                    None => break,
                }
            }
            Step::Send(bytes) => {
                if stream.write_all(bytes).is_err() {
                    break;
                }
            }
            Step::Pause(pause) => std::thread::sleep(*pause),
            Step::Close => break,
            Step::Hang => {
                wait_for_bytes(recording, cursor, stop, |_| None);
                break;
            }
            Step::Serve => {
                while let Some((n, request)) = next_request(recording, cursor, stop) {
                    cursor += n;
                    let Some(request) = request else {
                        let _ = stream.write_all(
                            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                        break;
                    };
                    let body = format!("path={}", request.target);
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    if request.method != "HEAD" {
                        response.extend_from_slice(body.as_bytes());
                    }
                    if stream.write_all(&response).is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// A listening address that never completes a connection: its accept queue
/// is full and nobody accepts, so the kernel drops further SYNs and a
/// connect to it hangs until the connector's own timeout.
pub struct Unanswered {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Unanswered {
    pub fn start() -> std::io::Result<Unanswered> {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // SAFETY: listen(2) on a socket this function owns; calling it again
        // on a listening socket only changes the backlog.
        if unsafe { libc::listen(listener.as_raw_fd(), 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = listener.local_addr()?;
        let mut queued = Vec::new();
        // Fill the queue: connects succeed until it is full, then hang.
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => queued.push(stream),
                Err(_) => {
                    return Ok(Unanswered {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    })
                }
            }
        }
        Err(std::io::Error::other(
            "the accept queue never filled: connects to it would not hang",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_strictly() {
        let ok = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=\"b c\"\r\nhello\r\n0\r\nx-t: 1\r\n\r\nrest";
        match parse_response(ok, false, false) {
            Parse::Complete(r, n) => {
                assert_eq!(r.status, 200);
                assert_eq!(r.interim.len(), 1);
                assert_eq!(r.body, b"hello");
                assert_eq!(r.trailers.get("x-t"), Some("1"));
                assert_eq!(&ok[n..], b"rest");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nbad\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5,6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
        ] {
            assert!(
                matches!(parse_response(bad, false, true), Parse::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\nuntil close", false, false),
            Parse::Partial
        ));
    }

    #[test]
    fn requests_split_in_order() {
        let two = b"POST /a HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c";
        let (requests, rest) = parse_requests(two);
        let paths: Vec<&str> = requests.iter().map(|r| r.path()).collect();
        assert_eq!(paths, ["/a", "/b"]);
        assert_eq!(requests[0].body, b"abc");
        assert_eq!(rest, b"GET /c");
    }

    #[test]
    fn unanswered_connects_hang() {
        let unanswered = Unanswered::start().expect("an unanswered listener");
        let started = Instant::now();
        let result = TcpStream::connect_timeout(&unanswered.addr, Duration::from_millis(300));
        assert!(result.is_err(), "a connect completed");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[test]
    fn chunk_extensions() {
        for good in [&b""[..], b";a", b";a=b", b" ; a = \"x;y\"", b";a;b=c"] {
            assert!(valid_chunk_ext(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [&b"x"[..], b";", b";=b", b";a=", b";a=\"x", b" junk"] {
            assert!(!valid_chunk_ext(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

//! The HTTP/1 message model: a parsed request or response head turned into a
//! framing decision and the facts a proxy acts on (RFC 9112 §6, RFC 9110
//! §5.6.1, §7.6.1), or refused with the status that says why.
//!
//! Pure functions on borrowed bytes: no socket, no allocation. Both request
//! paths use it: the HTTP/1 session (`session.rs`) for every request head it
//! reads and every response head on the fast path, and pingora's app
//! (`proxy/app.rs`) for what pingora would otherwise frame or forward
//! differently. Writing heads is the session's; body framing is `body.rs`.
//!
//! The rules, in one place:
//! - `Transfer-Encoding` is a list across every line; empty elements are
//!   ignored; `chunked` is the only coding River implements, applied once.
//!   Any other coding: 501 (request) or 502 (response). TE in HTTP/1.0: 400
//!   or 502. A request with both TE and `Content-Length`: 400.
//! - `Content-Length` may be a list or repeated only if every value is the
//!   same decimal; it is then forwarded once. Otherwise 400 or 502.
//! - `Host`: exactly one in HTTP/1.1 (at most one in HTTP/1.0), a valid
//!   RFC 3986 `host[:port]`; otherwise 400.
//! - Hop-by-hop fields (see [`is_hop_by_hop`]) and every field named in
//!   `Connection` are not forwarded, in either direction.
//! - 1xx: 100 and 103 are relayed, other 1xx dropped, a 101 only when the
//!   client asked for that upgrade (else 502).
//! - Responses to HEAD, 204 and 304 have no body.

use crate::body::Framing;

/// A request or response head larger than this is refused (431, 502).
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines parsed on the stack; heads with more take a slower path.
pub const FAST_HEADERS: usize = 128;
/// The most header lines a head may have: pingora's own limit, so that both
/// paths accept the same heads.
pub const MAX_HEADERS: usize = 256;

/// Why a request head is refused. Each maps to the status River answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head")]
    Malformed,
    #[error("request head larger than 64 KiB")]
    TooLarge,
    #[error("more than 256 header lines")]
    TooManyHeaders,
    #[error("HTTP/1.1 request without Host")]
    MissingHost,
    #[error("more than one Host")]
    DuplicateHost,
    #[error("invalid Host")]
    InvalidHost,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    TransferEncodingWithLength,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("a transfer coding River does not implement")]
    UnknownCoding,
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
}

impl RequestError {
    /// The status River answers (as nginx: 501 for an unknown coding).
    pub fn status(self) -> u16 {
        match self {
            RequestError::TooLarge | RequestError::TooManyHeaders => 431,
            RequestError::UnknownCoding => 501,
            _ => 400,
        }
    }

    /// A short name for the access log.
    pub fn code(self) -> &'static str {
        match self {
            RequestError::Malformed => "bad-request-head",
            RequestError::TooLarge => "request-head-too-large",
            RequestError::TooManyHeaders => "too-many-request-headers",
            RequestError::MissingHost => "missing-host",
            RequestError::DuplicateHost => "duplicate-host",
            RequestError::InvalidHost => "invalid-host",
            RequestError::InvalidContentLength => "invalid-request-content-length",
            RequestError::TransferEncodingWithLength => "transfer-encoding-with-content-length",
            RequestError::TransferEncodingInHttp10 => "transfer-encoding-in-http-1.0",
            RequestError::UnknownCoding => "unknown-request-transfer-coding",
            RequestError::InvalidTransferEncoding => "invalid-request-transfer-encoding",
        }
    }
}

/// Why an upstream's response head is refused: always a 502 to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head larger than 64 KiB")]
    TooLarge,
    #[error("more than 256 header lines")]
    TooManyHeaders,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("a transfer coding River does not implement")]
    UnknownCoding,
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
    #[error("101 Switching Protocols to a request that did not ask for it")]
    UnexpectedSwitch,
}

impl ResponseError {
    /// A short name for the access log.
    pub fn code(self) -> &'static str {
        match self {
            ResponseError::Malformed => "bad-response-head",
            ResponseError::TooLarge => "response-head-too-large",
            ResponseError::TooManyHeaders => "too-many-response-headers",
            ResponseError::InvalidContentLength => "invalid-response-content-length",
            ResponseError::TransferEncodingInHttp10 => "transfer-encoding-in-http-1.0-response",
            ResponseError::UnknownCoding => "unknown-response-transfer-coding",
            ResponseError::InvalidTransferEncoding => "invalid-response-transfer-encoding",
            ResponseError::UnexpectedSwitch => "unexpected-101",
        }
    }
}

/// `Connection` options of a message (RFC 9110 §7.6.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Any other option: it names a field that is not to be forwarded.
    pub names_fields: bool,
}

/// The facts of a request head that River acts on. Borrowed from the buffer
/// the head was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct Request<'b> {
    /// Length of the head in bytes, empty line included.
    pub len: usize,
    pub method: &'b str,
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub framing: Framing,
    /// The one `Content-Length` value, if any, to forward once.
    pub content_length: Option<u64>,
    /// The one `Host` value, if any (already validated).
    pub host: Option<&'b [u8]>,
    pub connection: ConnectionOptions,
    /// An `Upgrade` field is present.
    pub upgrade: bool,
    /// An `Expect` field is present.
    pub expect: bool,
}

impl Request<'_> {
    /// HEAD: the response has no body, whatever its fields say.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// RFC 9110 §9.2.2: a request that may be sent twice with the effect of
    /// once.
    pub fn is_idempotent(&self) -> bool {
        is_idempotent(self.method)
    }
}

/// RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT and DELETE.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The facts of a response head.
#[derive(Debug, Clone, Copy)]
pub struct Response<'b> {
    pub len: usize,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub status: u16,
    pub reason: &'b str,
    /// How the body is delimited; [`Framing::Empty`] for 1xx, 204, 304 and
    /// responses to HEAD.
    pub framing: Framing,
    /// The one `Content-Length` value, if any, to forward where it applies.
    pub content_length: Option<u64>,
    pub connection: ConnectionOptions,
    /// The upstream will not take another request on this connection (or
    /// must not be given one: both TE and Content-Length were present).
    pub close: bool,
}

impl Response<'_> {
    /// An interim (1xx) response that is not a protocol switch.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// An interim response the client gets to see: 100 Continue and 103
    /// Early Hints. Other 1xx are dropped, as nginx does.
    pub fn relays_interim(&self) -> bool {
        self.status == 100 || self.status == 103
    }
}

/// What the request a response answers said, for the response rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asked<'b> {
    /// The request was a HEAD.
    pub head: bool,
    /// The protocols of the request's `Upgrade`, when it asked to upgrade.
    pub upgrade: Option<&'b [u8]>,
}

/// Outcome of parsing a head that may not have fully arrived.
#[derive(Debug)]
pub enum Parsed<T> {
    Partial,
    Complete(T),
}

/// Parse and check the request head at the start of `buf`, with `headers`
/// to hold its header lines. `Err(TooManyHeaders)` when `headers` is too
/// small: the caller may try again with up to [`MAX_HEADERS`].
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Parsed<(Request<'b>, &'h [httparse::Header<'b>])>, RequestError> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(RequestError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(_) => return Err(RequestError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(RequestError::TooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed);
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let fields = Fields::scan(headers, version).map_err(|e| match e {
        FieldError::ContentLength => RequestError::InvalidContentLength,
        FieldError::UnknownCoding => RequestError::UnknownCoding,
        FieldError::TransferEncoding => RequestError::InvalidTransferEncoding,
        FieldError::TransferEncodingInHttp10 => RequestError::TransferEncodingInHttp10,
    })?;
    if fields.chunked && fields.content_length.is_some() {
        return Err(RequestError::TransferEncodingWithLength);
    }
    let host = match (fields.hosts, fields.host) {
        (0, _) if version == 1 => return Err(RequestError::MissingHost),
        (0, _) => None,
        (1, Some(host)) if valid_host(host) => Some(host),
        (1, _) => return Err(RequestError::InvalidHost),
        _ => return Err(RequestError::DuplicateHost),
    };
    let framing = if fields.chunked {
        Framing::Chunked
    } else {
        match fields.content_length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    Ok(Parsed::Complete((
        Request {
            len,
            method,
            target,
            version,
            framing,
            content_length: fields.content_length,
            host,
            connection: fields.connection,
            upgrade: fields.upgrade.is_some(),
            expect: fields.expect,
        },
        headers,
    )))
}

/// Parse and check the response head at the start of `buf`, answering a
/// request that said `asked`. `Err(TooManyHeaders)` as for
/// [`parse_request`].
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    asked: Asked<'_>,
) -> Result<Parsed<(Response<'b>, &'h [httparse::Header<'b>])>, ResponseError> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(ResponseError::TooLarge);
    }
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(ResponseError::Malformed);
    };
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    let fields = Fields::scan(headers, version).map_err(|e| match e {
        FieldError::ContentLength => ResponseError::InvalidContentLength,
        FieldError::UnknownCoding => ResponseError::UnknownCoding,
        FieldError::TransferEncoding => ResponseError::InvalidTransferEncoding,
        FieldError::TransferEncodingInHttp10 => ResponseError::TransferEncodingInHttp10,
    })?;
    if status == 101 && !switch_was_asked(asked.upgrade, fields.upgrade) {
        return Err(ResponseError::UnexpectedSwitch);
    }
    let no_body = asked.head || status < 200 || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Empty
    } else if fields.chunked {
        Framing::Chunked
    } else {
        match fields.content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let close = fields.connection.close
        || (version == 0 && !fields.connection.keep_alive)
        || framing == Framing::UntilClose
        // RFC 9112 §6.3: both framings may be a smuggling attempt; the
        // connection is not trusted with another request.
        || (fields.chunked && fields.content_length.is_some());
    Ok(Parsed::Complete((
        Response {
            len,
            version,
            status,
            reason,
            framing,
            content_length: fields.content_length,
            connection: fields.connection,
            close,
        },
        headers,
    )))
}

/// Whether a 101's `Upgrade` names a protocol the request asked for.
fn switch_was_asked(asked: Option<&[u8]>, answered: Option<&[u8]>) -> bool {
    let (Some(asked), Some(answered)) = (asked, answered) else {
        return false;
    };
    let Some(chosen) = list(answered).next() else {
        return false;
    };
    list(asked).any(|offered| offered.eq_ignore_ascii_case(chosen))
}

/// The non-empty elements of a comma-separated list (RFC 9110 §5.6.1),
/// trimmed of optional whitespace.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty())
}

/// Header fields River acts on, read in one pass.
#[derive(Default)]
struct Fields<'b> {
    hosts: usize,
    host: Option<&'b [u8]>,
    content_length: Option<u64>,
    chunked: bool,
    connection: ConnectionOptions,
    upgrade: Option<&'b [u8]>,
    expect: bool,
}

enum FieldError {
    ContentLength,
    UnknownCoding,
    TransferEncoding,
    TransferEncodingInHttp10,
}

impl<'b> Fields<'b> {
    fn scan(headers: &[httparse::Header<'b>], version: u8) -> Result<Self, FieldError> {
        let mut fields = Fields::default();
        let mut transfer_encoding = false;
        let mut codings = 0usize;
        for header in headers {
            match Known::of(header.name.as_bytes()) {
                Known::Host => {
                    fields.hosts += 1;
                    fields.host = Some(header.value);
                }
                Known::ContentLength => {
                    let mut any = false;
                    for value in header.value.split(|&b| b == b',') {
                        let n =
                            parse_length(value.trim_ascii()).ok_or(FieldError::ContentLength)?;
                        if fields.content_length.is_some_and(|m| m != n) {
                            return Err(FieldError::ContentLength);
                        }
                        fields.content_length = Some(n);
                        any = true;
                    }
                    if !any {
                        return Err(FieldError::ContentLength);
                    }
                }
                Known::TransferEncoding => {
                    transfer_encoding = true;
                    for coding in list(header.value) {
                        if !coding.eq_ignore_ascii_case(b"chunked") {
                            return Err(FieldError::UnknownCoding);
                        }
                        codings += 1;
                    }
                }
                Known::Connection => {
                    for option in list(header.value) {
                        if option.eq_ignore_ascii_case(b"close") {
                            fields.connection.close = true;
                        } else if option.eq_ignore_ascii_case(b"keep-alive") {
                            fields.connection.keep_alive = true;
                        } else if option.eq_ignore_ascii_case(b"upgrade") {
                            fields.connection.upgrade = true;
                        } else {
                            fields.connection.names_fields = true;
                        }
                    }
                }
                Known::Upgrade => fields.upgrade = Some(header.value),
                Known::Expect => fields.expect = true,
                _ => {}
            }
        }
        if transfer_encoding {
            if version == 0 {
                // RFC 9112 §6.1: faulty framing, whatever else is present.
                return Err(FieldError::TransferEncodingInHttp10);
            }
            // Exactly one coding, `chunked` (others were refused above):
            // none at all, or chunked twice, is not a framing.
            if codings != 1 {
                return Err(FieldError::TransferEncoding);
            }
            fields.chunked = true;
        }
        Ok(fields)
    }
}

/// Content-Length: digits only, no sign, no list, fits in 64 bits.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// RFC 3986 `host [ ":" port ]` (RFC 9110 §7.2), not empty. `host` is an
/// IP-literal in brackets (IPv6; IPvFuture is refused) or a reg-name, which
/// also covers IPv4 addresses; `port` is up to five digits.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        let ok = std::str::from_utf8(literal)
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .is_some();
        if !ok {
            return false;
        }
        (&b"x"[..], &rest[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && !host.is_empty() && reg_name(host)
}

/// RFC 3986 reg-name: unreserved, pct-encoded and sub-delims.
fn reg_name(host: &[u8]) -> bool {
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = |j: usize| host.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// A hop-by-hop field (RFC 9110 §7.6.1), never forwarded as received:
/// `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`,
/// `Proxy-Authenticate`. (`Upgrade` and `Connection` travel on only in an
/// upgrade, which pingora handles.)
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    Known::of(name).is_hop_by_hop()
}

/// Whether a `Connection` field among `headers` names the field `name`.
pub fn named_in_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| Known::of(h.name.as_bytes()) == Known::Connection)
        .flat_map(|h| list(h.value))
        .any(|option| option.eq_ignore_ascii_case(name))
}

/// The header names River treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    ProxyAuthorization,
    ProxyAuthenticate,
    Expect,
    XForwardedFor,
    XForwardedProto,
    Other,
}

impl Known {
    pub fn of(name: &[u8]) -> Known {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => Known::Te,
            4 if is("host") => Known::Host,
            6 if is("expect") => Known::Expect,
            7 if is("upgrade") => Known::Upgrade,
            7 if is("trailer") => Known::Trailer,
            10 if is("connection") => Known::Connection,
            10 if is("keep-alive") => Known::KeepAlive,
            14 if is("content-length") => Known::ContentLength,
            15 if is("x-forwarded-for") => Known::XForwardedFor,
            16 if is("proxy-connection") => Known::ProxyConnection,
            17 if is("transfer-encoding") => Known::TransferEncoding,
            17 if is("x-forwarded-proto") => Known::XForwardedProto,
            18 if is("proxy-authenticate") => Known::ProxyAuthenticate,
            19 if is("proxy-authorization") => Known::ProxyAuthorization,
            _ => Known::Other,
        }
    }

    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::Te
                | Known::Trailer
                | Known::TransferEncoding
                | Known::Upgrade
                | Known::ProxyAuthorization
                | Known::ProxyAuthenticate
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<Request<'_>, RequestError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(head.as_bytes(), &mut headers)? {
            Parsed::Complete((req, _)) => Ok(req),
            Parsed::Partial => panic!("partial: {head:?}"),
        }
    }

    fn response<'a>(head: &'a str, asked: Asked<'_>) -> Result<Response<'a>, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_response(head.as_bytes(), &mut headers, asked)? {
            Parsed::Complete((resp, _)) => Ok(resp),
            Parsed::Partial => panic!("partial: {head:?}"),
        }
    }

    fn req(fields: &str) -> String {
        format!("POST / HTTP/1.1\r\n{fields}\r\n")
    }

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
        assert_eq!(Known::of(b"Proxy-Authorization"), Known::ProxyAuthorization);
        assert_eq!(Known::of(b"te"), Known::Te);
        assert_eq!(Known::of(b"content-type"), Known::Other);
    }

    #[test]
    fn transfer_encoding_is_a_list_across_lines() {
        for ok in [
            "host: a\r\ntransfer-encoding: chunked\r\n",
            "host: a\r\ntransfer-encoding: chunked,\r\n",
            "host: a\r\ntransfer-encoding: , chunked ,,\r\n",
            "host: a\r\ntransfer-encoding:\r\ntransfer-encoding: Chunked\r\n",
        ] {
            assert_eq!(request(&req(ok)).unwrap().framing, Framing::Chunked, "{ok}");
        }
        let cases = [
            (
                "transfer-encoding: gzip, chunked",
                RequestError::UnknownCoding,
            ),
            ("transfer-encoding: identity", RequestError::UnknownCoding),
            (
                "transfer-encoding: chunked;q=1",
                RequestError::UnknownCoding,
            ),
            (
                "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
                RequestError::InvalidTransferEncoding,
            ),
            (
                "transfer-encoding: ,",
                RequestError::InvalidTransferEncoding,
            ),
            (
                "transfer-encoding: chunked\r\ncontent-length: 3",
                RequestError::TransferEncodingWithLength,
            ),
        ];
        for (fields, error) in cases {
            let head = req(&format!("host: a\r\n{fields}\r\n"));
            assert_eq!(request(&head).unwrap_err(), error, "{fields}");
        }
        let old = "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            request(old).unwrap_err(),
            RequestError::TransferEncodingInHttp10
        );
        assert_eq!(RequestError::UnknownCoding.status(), 501);
        assert_eq!(RequestError::TransferEncodingWithLength.status(), 400);
    }

    #[test]
    fn content_length_lists_must_agree() {
        for ok in [
            "content-length: 5",
            "content-length: 5,5",
            "content-length: 5 , 5",
            "content-length: 5\r\ncontent-length: 5",
        ] {
            let head = req(&format!("host: a\r\n{ok}\r\n"));
            assert_eq!(request(&head).unwrap().framing, Framing::Length(5), "{ok}");
        }
        for bad in [
            "content-length: 5,6",
            "content-length: 5\r\ncontent-length: 6",
            "content-length: 5,",
            "content-length: ",
            "content-length: -5",
            "content-length: 0x5",
            "content-length: 99999999999999999999",
        ] {
            let head = req(&format!("host: a\r\n{bad}\r\n"));
            assert_eq!(
                request(&head).unwrap_err(),
                RequestError::InvalidContentLength,
                "{bad}"
            );
        }
        let resp = "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n";
        let r = response(resp, Asked::default()).unwrap();
        assert_eq!((r.framing, r.content_length), (Framing::Length(5), Some(5)));
        let resp = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\n";
        assert_eq!(
            response(resp, Asked::default()).unwrap_err(),
            ResponseError::InvalidContentLength
        );
    }

    #[test]
    fn host_exactly_one_and_valid() {
        for ok in [
            "a",
            "example.com",
            "example.com:8080",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "xn--bcher-kva.example",
            "a%20b",
            "a:",
        ] {
            let head = format!("GET / HTTP/1.1\r\nhost: {ok}\r\n\r\n");
            assert!(request(&head).is_ok(), "{ok}");
        }
        for bad in [
            "", "a b", "a/b", "a@b", "[::1", "[zz]", "a:b", "a:123456", "a%2", ":80", "a\\b",
        ] {
            let head = format!("GET / HTTP/1.1\r\nhost: {bad}\r\n\r\n");
            assert_eq!(
                request(&head).unwrap_err(),
                RequestError::InvalidHost,
                "{bad:?}"
            );
        }
        let two = "GET / HTTP/1.1\r\nhost: a\r\nhost: a\r\n\r\n";
        assert_eq!(request(two).unwrap_err(), RequestError::DuplicateHost);
        let none = "GET / HTTP/1.1\r\n\r\n";
        assert_eq!(request(none).unwrap_err(), RequestError::MissingHost);
        let old = request("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(old.host, None);
    }

    #[test]
    fn responses_without_a_body() {
        let head = Asked {
            head: true,
            upgrade: None,
        };
        let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(response(chunked, head).unwrap().framing, Framing::Empty);
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n");
            let r = response(&resp, Asked::default()).unwrap();
            assert_eq!(r.framing, Framing::Empty, "{status}");
        }
        let close = "HTTP/1.1 200 OK\r\n\r\n";
        let r = response(close, Asked::default()).unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(r.close);
    }

    #[test]
    fn response_codings() {
        let resp = |te: &str| format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n");
        assert_eq!(
            response(&resp("chunked,"), Asked::default())
                .unwrap()
                .framing,
            Framing::Chunked
        );
        assert_eq!(
            response(&resp("gzip, chunked"), Asked::default()).unwrap_err(),
            ResponseError::UnknownCoding
        );
        let old = "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            response(old, Asked::default()).unwrap_err(),
            ResponseError::TransferEncodingInHttp10
        );
        let both = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n";
        let r = response(both, Asked::default()).unwrap();
        assert_eq!(r.framing, Framing::Chunked);
        assert!(r.close, "not reused after both framings");
    }

    #[test]
    fn switching_protocols_only_when_asked() {
        let switch = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        assert_eq!(
            response(switch, Asked::default()).unwrap_err(),
            ResponseError::UnexpectedSwitch
        );
        let other = Asked {
            head: false,
            upgrade: Some(b"h2c"),
        };
        assert_eq!(
            response(switch, other).unwrap_err(),
            ResponseError::UnexpectedSwitch
        );
        let asked = Asked {
            head: false,
            upgrade: Some(b"foo, WebSocket"),
        };
        assert_eq!(response(switch, asked).unwrap().status, 101);
    }

    #[test]
    fn interim_responses() {
        let r = response("HTTP/1.1 103 Early Hints\r\n\r\n", Asked::default()).unwrap();
        assert!(r.is_interim() && r.relays_interim());
        let r = response("HTTP/1.1 102 Processing\r\n\r\n", Asked::default()).unwrap();
        assert!(r.is_interim() && !r.relays_interim());
    }

    #[test]
    fn connection_options_and_named_fields() {
        let head = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close, X-Foo\r\nx-foo: 1\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let Ok(Parsed::Complete((r, headers))) = parse_request(head.as_bytes(), &mut headers)
        else {
            panic!("parses");
        };
        assert!(r.connection.close && r.connection.names_fields);
        assert!(named_in_connection(headers, b"x-foo"));
        assert!(!named_in_connection(headers, b"x-bar"));
        assert!(is_hop_by_hop(b"Proxy-Authenticate"));
        assert!(!is_hop_by_hop(b"x-foo"));
    }

    #[test]
    fn limits() {
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let head = "GET / HTTP/1.1\r\nhost: a\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(
            parse_request(head.as_bytes(), &mut headers).unwrap_err(),
            RequestError::TooManyHeaders
        );
        let big = format!("GET / HTTP/1.1\r\nhost: a\r\nx: {}", "a".repeat(MAX_HEAD));
        let mut headers = [httparse::EMPTY_HEADER; 4];
        assert_eq!(
            parse_request(big.as_bytes(), &mut headers).unwrap_err(),
            RequestError::TooLarge
        );
    }
}

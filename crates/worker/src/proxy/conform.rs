//! The HTTP/1 message model (`http1/head.rs`) applied to pingora's header
//! maps, where pingora would frame or forward a message differently from
//! River's fast path: a request head it parsed itself, a request it sends
//! upstream, a response head before it goes to the client.
//!
//! pingora reads `Transfer-Encoding` by its last raw token (`chunked,` is
//! then not chunked), forwards `Content-Length: 5,5` as received, relays a
//! `101` nobody asked for and every 1xx, and leaves response hop-by-hop
//! fields in place. These functions refuse or rewrite what would differ, so
//! both paths answer the same. They decide; `app.rs` answers.

use http::header::{self, HeaderName};
use http::Version;
use pingora_http::{RequestHeader, ResponseHeader};

use crate::http1::head::{self, list, parse_length, Known, ResponseError};

/// What `Transfer-Encoding` and `Content-Length` of a message say.
struct Framing {
    chunked: bool,
    length: Option<u64>,
}

/// Read `Transfer-Encoding` and `Content-Length` as the model does, and
/// refuse a `Transfer-Encoding` pingora would read differently.
fn framing(headers: &http::HeaderMap, version: Version) -> Result<Framing, ResponseError> {
    let mut chunked = false;
    let te: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !te.is_empty() {
        if version == Version::HTTP_10 {
            return Err(ResponseError::TransferEncodingInHttp10);
        }
        let mut codings = 0;
        for coding in te.iter().flat_map(|v| list(v)) {
            if !coding.eq_ignore_ascii_case(b"chunked") {
                return Err(ResponseError::UnknownCoding);
            }
            codings += 1;
        }
        // pingora frames by the last raw token of the last line; when that
        // is not `chunked`, it would read the body another way.
        let last_token = te
            .last()
            .and_then(|v| v.rsplit(|&b| b == b',').next())
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        if codings != 1 || !last_token.eq_ignore_ascii_case(b"chunked") {
            return Err(ResponseError::InvalidTransferEncoding);
        }
        chunked = true;
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let mut any = false;
        for element in value.as_bytes().split(|&b| b == b',') {
            let n =
                parse_length(element.trim_ascii()).ok_or(ResponseError::InvalidContentLength)?;
            if length.is_some_and(|m| m != n) {
                return Err(ResponseError::InvalidContentLength);
            }
            length = Some(n);
            any = true;
        }
        if !any {
            return Err(ResponseError::InvalidContentLength);
        }
    }
    Ok(Framing { chunked, length })
}

/// The request `req` as it goes upstream on pingora's path: one
/// `Content-Length` line. (pingora strips the hop-by-hop fields and frames
/// a chunked body itself.)
pub fn upstream_request(req: &mut RequestHeader) {
    if let Ok(Framing {
        chunked: false,
        length: Some(n),
    }) = framing(&req.headers, req.version)
    {
        let many = req.headers.get_all(header::CONTENT_LENGTH).iter().count() > 1
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes().contains(&b','));
        if many {
            // Infallible: a number is a valid header value.
            let _ = req.insert_header(header::CONTENT_LENGTH, n.to_string());
        }
    }
}

/// What the client asked that a response must agree with.
pub struct Asked<'a> {
    pub head: bool,
    /// The request's `Upgrade` protocols when it asked to upgrade.
    pub upgrade: Option<&'a [u8]>,
}

impl<'a> Asked<'a> {
    pub fn of(req: &'a RequestHeader) -> Self {
        let connection_upgrade = req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| list(v.as_bytes()))
            .any(|o| o.eq_ignore_ascii_case(b"upgrade"));
        let upgrade = (req.version == Version::HTTP_11 && connection_upgrade)
            .then(|| req.headers.get(header::UPGRADE).map(|v| v.as_bytes()))
            .flatten();
        Asked {
            head: req.method == http::Method::HEAD,
            upgrade,
        }
    }
}

/// Check and clean a response head from an upstream before pingora sends it
/// to the client: refused framing or an unasked `101` is an error (502);
/// hop-by-hop fields and fields named in `Connection` are removed; framing
/// fields are left as exactly one `Content-Length` or `Transfer-Encoding:
/// chunked` where the response has a body, none where it cannot.
pub fn response(resp: &mut ResponseHeader, asked: &Asked<'_>) -> Result<(), ResponseError> {
    let status = resp.status.as_u16();
    let framing = framing(&resp.headers, resp.version)?;
    if status == 101 {
        let answered = resp.headers.get(header::UPGRADE).map(|v| v.as_bytes());
        let chosen = answered.and_then(|v| list(v).next());
        let asked_for = asked.upgrade.is_some_and(|offered| {
            list(offered).any(|o| chosen.is_some_and(|c| o.eq_ignore_ascii_case(c)))
        });
        if !asked_for {
            return Err(ResponseError::UnexpectedSwitch);
        }
        // The switch keeps its Connection and Upgrade; pingora tunnels.
        return Ok(());
    }
    let named: Vec<HeaderName> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| list(v.as_bytes()))
        .filter_map(|option| HeaderName::from_bytes(option).ok())
        .collect();
    for name in named {
        resp.remove_header(&name);
    }
    let hop_by_hop: Vec<HeaderName> = resp
        .headers
        .keys()
        .filter(|name| {
            let known = Known::of(name.as_str().as_bytes());
            known.is_hop_by_hop() && known != Known::TransferEncoding
        })
        .cloned()
        .collect();
    for name in hop_by_hop {
        resp.remove_header(&name);
    }
    let no_body = asked.head || status < 200 || status == 204 || status == 304;
    if no_body {
        resp.remove_header(&header::TRANSFER_ENCODING);
        if status < 200 || status == 204 {
            resp.remove_header(&header::CONTENT_LENGTH);
        } else if let Some(n) = framing.length {
            let _ = resp.insert_header(header::CONTENT_LENGTH, n.to_string());
        }
    } else if framing.chunked {
        // Exactly the one coding River frames; a length beside it is not
        // the framing and must not reach the client (RFC 9112 §6.3).
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
        resp.remove_header(&header::CONTENT_LENGTH);
    } else if let Some(n) = framing.length {
        let _ = resp.insert_header(header::CONTENT_LENGTH, n.to_string());
    }
    Ok(())
}

/// Whether pingora should keep an interim response from an HTTP/1.`minor`
/// client: only 100 and 103 are relayed, and none to HTTP/1.0 clients
/// (RFC 9110 §15.2).
pub fn drops_interim(status: u16, client: Version) -> bool {
    client == Version::HTTP_10 || !(status == 100 || status == 103)
}

/// Check the head of a request pingora parsed itself (`raw`, as received
/// or with its target escaped): the model's verdict.
pub fn request(raw: &[u8]) -> Result<(), head::RequestError> {
    crate::http1::session::with_request_head(raw, |parsed| match parsed {
        Ok(_) => Ok(()),
        Err(err) => Err(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (name, value) in fields {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    const GET: Asked<'static> = Asked {
        head: false,
        upgrade: None,
    };

    #[test]
    fn transfer_encoding_pingora_would_misread_is_refused() {
        let mut r = resp(200, &[("transfer-encoding", "chunked,")]);
        assert_eq!(
            response(&mut r, &GET),
            Err(ResponseError::InvalidTransferEncoding)
        );
        let mut r = resp(200, &[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(response(&mut r, &GET), Err(ResponseError::UnknownCoding));
        let mut r = resp(200, &[("transfer-encoding", "Chunked")]);
        assert_eq!(response(&mut r, &GET), Ok(()));
        assert_eq!(r.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn content_length_goes_once() {
        let mut r = resp(200, &[("content-length", "5,5"), ("content-length", "5")]);
        assert_eq!(response(&mut r, &GET), Ok(()));
        let values: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(values, ["5"]);
        let mut r = resp(200, &[("content-length", "5,6")]);
        assert_eq!(
            response(&mut r, &GET),
            Err(ResponseError::InvalidContentLength)
        );
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.append_header("content-length", "3, 3").unwrap();
        upstream_request(&mut req);
        assert_eq!(req.headers["content-length"], "3");
    }

    #[test]
    fn hop_by_hop_and_named_fields_are_removed() {
        let mut r = resp(
            200,
            &[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authenticate", "Basic"),
                ("upgrade", "h2c"),
                ("trailer", "x"),
                ("content-length", "2"),
                ("x-kept", "1"),
            ],
        );
        response(&mut r, &GET).unwrap();
        let names: Vec<_> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept"]);
    }

    #[test]
    fn bodiless_responses_and_switches() {
        let mut r = resp(
            204,
            &[("transfer-encoding", "chunked"), ("content-length", "0")],
        );
        response(&mut r, &GET).unwrap();
        assert!(r.headers.is_empty());
        let head = Asked {
            head: true,
            upgrade: None,
        };
        let mut r = resp(200, &[("transfer-encoding", "chunked")]);
        response(&mut r, &head).unwrap();
        assert!(r.headers.get("transfer-encoding").is_none());
        let mut r = resp(101, &[("upgrade", "websocket"), ("connection", "upgrade")]);
        assert_eq!(response(&mut r, &GET), Err(ResponseError::UnexpectedSwitch));
        let ws = Asked {
            head: false,
            upgrade: Some(b"websocket"),
        };
        assert_eq!(response(&mut r, &ws), Ok(()));
        assert!(drops_interim(102, Version::HTTP_11));
        assert!(!drops_interim(103, Version::HTTP_11));
        assert!(drops_interim(103, Version::HTTP_10));
    }
}

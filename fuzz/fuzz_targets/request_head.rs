//! A request head through River's HTTP/1 model (`http1/head.rs`): never a
//! panic, and what it accepts is consistent (a length within the input and
//! the limits, one framing, a valid Host), whatever room the header array
//! has.
#![no_main]

use libfuzzer_sys::fuzz_target;
use river_http1::body::Framing;
use river_http1::head::{parse_request, valid_host, Parsed, RequestError, MAX_HEAD, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let full = match parse_request(data, &mut headers) {
        Ok(Parsed::Complete((req, fields))) => {
            assert!(req.len <= data.len() && req.len <= MAX_HEAD);
            assert!(fields.len() <= MAX_HEADERS);
            if req.framing == Framing::Chunked {
                assert!(req.content_length.is_none(), "both framings accepted");
                assert_eq!(req.version, 1, "chunked in HTTP/1.0 accepted");
            }
            if let Framing::Length(n) = req.framing {
                assert_eq!(req.content_length, Some(n));
            }
            match req.host {
                Some(host) => assert!(valid_host(host)),
                None => assert_eq!(req.version, 0, "HTTP/1.1 without Host accepted"),
            }
            Ok(Some((req.len, req.framing)))
        }
        Ok(Parsed::Partial) => Ok(None),
        Err(err) => {
            assert!(matches!(err.status(), 400 | 431 | 501));
            Err(err)
        }
    };
    // With room for fewer lines: the same verdict, or "too many headers".
    let mut few = [httparse::EMPTY_HEADER; 4];
    let small = match parse_request(data, &mut few) {
        Ok(Parsed::Complete((req, _))) => Ok(Some((req.len, req.framing))),
        Ok(Parsed::Partial) => Ok(None),
        Err(err) => Err(err),
    };
    if small != Err(RequestError::TooManyHeaders) {
        assert_eq!(small, full);
    }
});

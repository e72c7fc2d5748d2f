//! A response head through River's HTTP/1 model, answering a GET, a HEAD or
//! an upgrade request (chosen by the first byte): never a panic; no body
//! where none may be; a 101 only when an upgrade was asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use river_http1::body::Framing;
use river_http1::head::{parse_response, Asked, Parsed, MAX_HEAD, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some((&choice, head)) = data.split_first() else {
        return;
    };
    let asked = Asked {
        head: choice & 1 == 1,
        upgrade: (choice & 2 == 2).then_some(&b"websocket"[..]),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Ok(Parsed::Complete((resp, _))) = parse_response(head, &mut headers, asked) {
        assert!(resp.len <= head.len() && resp.len <= MAX_HEAD);
        if asked.head || resp.status < 200 || resp.status == 204 || resp.status == 304 {
            assert_eq!(resp.framing, Framing::Empty);
        }
        if resp.status == 101 {
            assert!(asked.upgrade.is_some(), "an unasked 101 accepted");
        }
        if resp.framing == Framing::UntilClose {
            assert!(resp.close);
        }
    }
});

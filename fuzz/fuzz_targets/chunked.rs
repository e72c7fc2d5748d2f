//! A chunked body through River's strict decoder, fed in pieces (sizes
//! from the first byte): never a panic; what it writes is canonical chunked
//! framing that decodes again, in one piece, to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use river_http1::chunked::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 17) + 1;
    let mut decoder = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut taken = 0;
    for bytes in body.chunks(piece) {
        match decoder.decode(bytes, &mut out) {
            Ok(n) => {
                assert!(n <= bytes.len());
                taken += n;
                if decoder.is_done() {
                    break;
                }
                assert_eq!(n, bytes.len(), "stopped early without being done");
            }
            Err(_) => return,
        }
    }
    assert!(taken <= body.len());
    // The re-encoded body decodes in one piece to the same data, and ends
    // exactly where the original did.
    let mut again = ChunkedDecoder::default();
    let mut reencoded = Vec::new();
    let n = again.decode(&out, &mut reencoded).expect("River's own framing decodes");
    assert_eq!(n, out.len());
    assert_eq!(again.is_done(), decoder.is_done());
    assert_eq!(reencoded, out, "canonical framing is stable");
});

//! Bytes from a peer through the IPC frame decoder, in pieces (sizes from
//! the first byte), and every complete frame through each message type:
//! errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use river_ipc::{ControlRequest, ControlResponse, FrameDecoder, FromWorker, ToWorker};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, bytes)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 64) + 1;
    let mut decoder = FrameDecoder::new();
    for chunk in bytes.chunks(piece) {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = frame.decode::<ToWorker>();
                    let _ = frame.decode::<FromWorker>();
                    let _ = frame.decode::<ControlRequest>();
                    let _ = frame.decode::<ControlResponse>();
                }
                Ok(None) => break,
                // A bad frame closes the channel: nothing more is decoded.
                Err(_) => return,
            }
        }
    }
});

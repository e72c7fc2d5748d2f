//! The wire format, pure (no I/O).
//!
//! ```text
//! +----------------+-----------------+-------------+------------------------+
//! | payload len    | protocol version| fd count    | payload                |
//! | u32 big-endian | u16 big-endian  | u16 BE      | serde_json of message  |
//! +----------------+-----------------+-------------+------------------------+
//!   4 bytes          2 bytes           2 bytes       `payload len` bytes
//! ```
//!
//! The file descriptors themselves travel out of band, as one SCM_RIGHTS control
//! message attached to the first byte of the frame (see [`Channel`](crate::Channel)).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::IpcError;

/// Version written in every frame header; a frame with another version is refused.
pub const PROTOCOL_VERSION: u16 = 2;
/// Size of the frame header.
pub const HEADER_LEN: usize = 8;
/// Largest accepted payload (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// Largest number of file descriptors one frame may carry.
pub const MAX_FDS_PER_FRAME: usize = 64;

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: usize,
    pub nfds: usize,
}

impl FrameHeader {
    /// Parse and validate a header. Checks the version, then the payload length,
    /// then the fd count, from the 8 header bytes alone.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, IpcError> {
        FrameHeader::parse_limited(bytes, MAX_FRAME_LEN)
    }

    /// As [`FrameHeader::parse`], refusing payloads over `max_len` (at most
    /// [`MAX_FRAME_LEN`]).
    pub fn parse_limited(
        bytes: &[u8; HEADER_LEN],
        max_len: usize,
    ) -> Result<FrameHeader, IpcError> {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        let nfds = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
        if version != PROTOCOL_VERSION {
            return Err(IpcError::VersionMismatch { got: version });
        }
        if len > max_len.min(MAX_FRAME_LEN) {
            return Err(IpcError::FrameTooLarge { len });
        }
        if nfds > MAX_FDS_PER_FRAME {
            return Err(IpcError::TooManyFds { count: nfds });
        }
        Ok(FrameHeader { len, nfds })
    }
}

/// Serialize `msg` into one complete frame (header + payload) announcing `nfds`
/// file descriptors.
pub fn encode<M: Serialize>(msg: &M, nfds: usize) -> Result<Vec<u8>, IpcError> {
    if nfds > MAX_FDS_PER_FRAME {
        return Err(IpcError::TooManyFds { count: nfds });
    }
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg).map_err(IpcError::Encode)?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(IpcError::FrameTooLarge { len });
    }
    // Both conversions are in range: checked against the limits above.
    buf[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    buf[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    buf[6..8].copy_from_slice(&(nfds as u16).to_be_bytes());
    Ok(buf)
}

/// One complete frame whose header was valid; the payload is not decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// File descriptors announced by the header.
    pub nfds: usize,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Deserialize the payload. An error here is [`IpcError::Malformed`]; the
    /// stream itself is still in step.
    pub fn decode<M: DeserializeOwned>(&self) -> Result<M, IpcError> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// Incremental frame parser: push bytes as they arrive, pull complete frames.
///
/// A header error (version, size, fd count) is sticky: the stream cannot be
/// resynchronized, so every later [`next_frame`](FrameDecoder::next_frame)
/// returns the same error and further pushed bytes are discarded.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    failed: bool,
    /// Largest payload accepted.
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_max_len(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// A decoder that refuses frames over `max_len` bytes as soon as their
    /// header arrives, before buffering their payload: for peers that only
    /// ever send small messages (riverctl's requests).
    pub fn with_max_len(max_len: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            failed: false,
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    /// Append bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed || bytes.is_empty() {
            return;
        }
        // Reclaim consumed space before growing.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// True when no partial frame is buffered (a clean place for EOF).
    pub fn is_at_boundary(&self) -> bool {
        self.buffered() == 0
    }

    /// Header of the frame at the front of the buffer, if its 8 bytes are there.
    fn peek_header(&self) -> Result<Option<FrameHeader>, IpcError> {
        let pending = &self.buf[self.start..];
        match pending.first_chunk::<HEADER_LEN>() {
            Some(header) => FrameHeader::parse_limited(header, self.max_len).map(Some),
            None => Ok(None),
        }
    }

    /// Number of fds the next frame announces, once its header is buffered and valid.
    pub fn pending_nfds(&self) -> Option<usize> {
        self.peek_header().ok().flatten().map(|h| h.nfds)
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, IpcError> {
        let header = match self.peek_header() {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        let pending = &self.buf[self.start..];
        let Some(payload) = pending.get(HEADER_LEN..HEADER_LEN + header.len) else {
            return Ok(None);
        };
        let frame = RawFrame {
            nfds: header.nfds,
            payload: payload.to_vec(),
        };
        self.start += HEADER_LEN + header.len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControlRequest, FromWorker, ToWorker};

    fn header(len: u32, version: u16, nfds: u16) -> Vec<u8> {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&nfds.to_be_bytes());
        h
    }

    #[test]
    fn encode_layout() {
        let frame = encode(&ControlRequest::Status, 3).unwrap();
        let payload = br#""Status""#;
        assert_eq!(
            &frame[..8],
            &header(payload.len() as u32, PROTOCOL_VERSION, 3)[..]
        );
        assert_eq!(&frame[8..], payload);
    }

    #[test]
    fn encode_limits() {
        assert!(matches!(
            encode(&ControlRequest::Status, MAX_FDS_PER_FRAME + 1),
            Err(IpcError::TooManyFds { count: 65 })
        ));
        let big = FromWorker::Failed {
            error: "x".repeat(MAX_FRAME_LEN),
        };
        assert!(matches!(
            encode(&big, 0),
            Err(IpcError::FrameTooLarge { len }) if len > MAX_FRAME_LEN
        ));
    }

    #[test]
    fn byte_by_byte() {
        let msgs = [
            ToWorker::ReopenLogs,
            ToWorker::Drain { deadline_secs: 30 },
            ToWorker::ReopenLogs,
        ];
        let mut wire = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            wire.extend(encode(m, i).unwrap());
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(f) = dec.next_frame().unwrap() {
                got.push((f.nfds, f.decode::<ToWorker>().unwrap()));
            }
        }
        assert!(dec.is_at_boundary());
        let expected: Vec<_> = msgs.iter().cloned().enumerate().collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn several_frames_in_one_push() {
        let mut wire = encode(&ControlRequest::Status, 0).unwrap();
        wire.extend(encode(&ControlRequest::Reload { wait: true }, 0).unwrap());
        let mut dec = FrameDecoder::new();
        dec.push(&wire[..wire.len() - 1]);
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!(
            f.decode::<ControlRequest>().unwrap(),
            ControlRequest::Status
        );
        assert!(dec.next_frame().unwrap().is_none());
        dec.push(&wire[wire.len() - 1..]);
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!(
            f.decode::<ControlRequest>().unwrap(),
            ControlRequest::Reload { wait: true }
        );
        assert!(dec.next_frame().unwrap().is_none());
    }

    #[test]
    fn oversized_header_is_refused_from_the_header_alone() {
        let mut dec = FrameDecoder::new();
        dec.push(&header(u32::MAX, PROTOCOL_VERSION, 0));
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::FrameTooLarge { len }) if len == u32::MAX as usize
        ));
        // Sticky, and nothing more is buffered.
        dec.push(&[0u8; 4096]);
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::FrameTooLarge { .. })
        ));
        assert_eq!(dec.buffered(), HEADER_LEN);

        let mut dec = FrameDecoder::new();
        dec.push(&header(MAX_FRAME_LEN as u32 + 1, PROTOCOL_VERSION, 0));
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn exactly_max_len_header_waits_for_payload() {
        let mut dec = FrameDecoder::new();
        dec.push(&header(
            MAX_FRAME_LEN as u32,
            PROTOCOL_VERSION,
            MAX_FDS_PER_FRAME as u16,
        ));
        assert!(dec.next_frame().unwrap().is_none());
        assert_eq!(dec.pending_nfds(), Some(MAX_FDS_PER_FRAME));
    }

    #[test]
    fn too_many_fds_header() {
        let mut dec = FrameDecoder::new();
        dec.push(&header(2, PROTOCOL_VERSION, 65));
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::TooManyFds { count: 65 })
        ));
    }

    #[test]
    fn wrong_version() {
        let mut dec = FrameDecoder::new();
        let mut wire = header(2, PROTOCOL_VERSION + 1, 0);
        wire.extend_from_slice(b"{}");
        dec.push(&wire);
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::VersionMismatch { got }) if got == PROTOCOL_VERSION + 1
        ));
    }

    #[test]
    fn garbage_bytes() {
        // Plain text: "GET " is read as a length, "/ " as a version.
        let mut dec = FrameDecoder::new();
        dec.push(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::VersionMismatch { .. })
        ));

        // A valid header around a garbage payload: Malformed, and the stream stays in step.
        let mut wire = header(5, PROTOCOL_VERSION, 0);
        wire.extend_from_slice(b"\xff{]\x00!");
        wire.extend(encode(&ControlRequest::Status, 0).unwrap());
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        let f = dec.next_frame().unwrap().unwrap();
        assert!(matches!(
            f.decode::<ControlRequest>(),
            Err(IpcError::Malformed(_))
        ));
        let f = dec.next_frame().unwrap().unwrap();
        assert_eq!(
            f.decode::<ControlRequest>().unwrap(),
            ControlRequest::Status
        );

        // Valid JSON of the wrong type.
        let f = RawFrame {
            nfds: 0,
            payload: br#"{"Ready":{"pid":"x"}}"#.to_vec(),
        };
        assert!(matches!(
            f.decode::<FromWorker>(),
            Err(IpcError::Malformed(_))
        ));
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The decoder never panics, whatever it is fed and however it is chunked.
    #[test]
    fn fuzz_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let valid = encode(&ToWorker::Drain { deadline_secs: 7 }, 1).unwrap();
        for _ in 0..20_000 {
            let mut input = Vec::new();
            // A mix of pure noise, plausible headers, and mutated valid frames.
            for _ in 0..rng.below(4) + 1 {
                match rng.below(3) {
                    0 => input.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                    1 => {
                        let len = rng.below(40) as u32;
                        let ver = if rng.below(4) == 0 {
                            rng.next() as u16
                        } else {
                            1
                        };
                        let nfds = rng.below(70) as u16;
                        input.extend(header(len, ver, nfds));
                        input.extend((0..rng.below(48)).map(|_| rng.next() as u8));
                    }
                    _ => {
                        let mut v = valid.clone();
                        let i = rng.below(v.len() as u64) as usize;
                        v[i] ^= rng.next() as u8;
                        v.truncate(rng.below(v.len() as u64 + 1) as usize);
                        input.extend(v);
                    }
                }
            }
            let mut dec = FrameDecoder::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = (rng.below(16) as usize + 1).min(rest.len());
                dec.push(&rest[..n]);
                rest = &rest[n..];
                while let Ok(Some(f)) = dec.next_frame() {
                    assert!(f.nfds <= MAX_FDS_PER_FRAME);
                    let _ = f.decode::<ToWorker>();
                    let _ = f.decode::<serde_json::Value>();
                }
            }
        }
    }
}

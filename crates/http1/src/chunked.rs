//! The chunked transfer coding (RFC 9112 §7.1): a strict decoder that
//! re-encodes as it goes.
//!
//! A chunked body is never relayed as the upstream wrote it: every byte of
//! framing is checked (hex sizes without junk, extensions as
//! `token[=token|quoted-string]`, CRLF line ends only, trailer fields as
//! `token: value`), and what goes on is the data in canonical chunks, without
//! extensions or trailers, ending in `0\r\n\r\n`. So the client reads the
//! body exactly as River did, whatever the upstream's framing looked like,
//! and framing River cannot read stops the body instead of reaching the
//! client. Sockets are `session.rs`'s; this only transforms bytes.

/// Error in the chunked framing: the connection cannot be trusted further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size")]
    Size,
    #[error("invalid chunk extension")]
    Extension,
    #[error("line not ended by CRLF")]
    LineEnd,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("invalid trailer field")]
    Trailer,
    #[error("chunk-size line or trailer section too long")]
    TooLong,
}

impl ChunkedError {
    /// A short name for the access log.
    pub fn code(self) -> &'static str {
        match self {
            ChunkedError::Size => "bad-chunk-size",
            ChunkedError::Extension => "bad-chunk-extension",
            ChunkedError::LineEnd => "bad-chunk-line-end",
            ChunkedError::DataEnd => "bad-chunk-data-end",
            ChunkedError::Trailer => "bad-chunk-trailer",
            ChunkedError::TooLong => "chunk-line-too-long",
        }
    }
}

/// A chunk-size line (with extensions) longer than this is an attack.
const MAX_LINE: usize = 4096;
/// The most trailer bytes accepted (they are checked, then dropped).
const MAX_TRAILERS: usize = 16 * 1024;
/// Hex digits of a chunk size: 16 fill 64 bits.
const MAX_DIGITS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Digits of the chunk size (`digits` so far).
    Size {
        digits: u32,
    },
    /// Whitespace after the size or an extension: `;` must follow.
    SpaceBeforeSemicolon,
    /// After `;` (and optional whitespace): an extension name starts.
    NameStart,
    Name,
    /// Whitespace after a name: `=` or `;` must follow.
    SpaceAfterName,
    /// After `=` (and optional whitespace): a value starts.
    ValueStart,
    Token,
    Quoted,
    QuotedEscape,
    /// After a complete extension.
    AfterValue,
    /// CR seen: LF must follow.
    Cr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chunk-size line.
    SizeLine {
        line: Line,
        size: u64,
    },
    /// `left` more bytes of chunk data.
    Data {
        left: u64,
    },
    /// The CRLF after chunk data; `cr` once the CR was seen.
    DataEnd {
        cr: bool,
    },
    /// A trailer line (or the final empty line).
    Trailer {
        at: TrailerAt,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerAt {
    /// Start of a line: an empty line ends the body.
    LineStart,
    /// CR at the start of a line.
    EmptyCr,
    Name,
    Value,
    Cr,
}

/// Decodes a chunked body fed in pieces and writes it re-encoded.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line, or of the trailer section.
    seen: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::SizeLine {
                line: Line::Size { digits: 0 },
                size: 0,
            },
            seen: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Consume `input`, the next bytes of the body, and append the body
    /// re-encoded to `out`. Returns how many bytes of `input` belong to the
    /// body: all of them while it goes on, fewer (or all) once it ends, and
    /// then [`is_done`](Self::is_done) says so and `out` ends with the last
    /// chunk.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Data { left } => {
                    let take = left.min((input.len() - i) as u64) as usize;
                    push_chunk(out, &input[i..i + take]);
                    i += take;
                    self.state = if take as u64 == left {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data {
                            left: left - take as u64,
                        }
                    };
                }
                State::Done => return Ok(i),
                State::SizeLine { line, size } => {
                    self.seen += 1;
                    if self.seen > MAX_LINE {
                        return Err(ChunkedError::TooLong);
                    }
                    self.state = size_line(line, size, input[i])?;
                    i += 1;
                    if let State::Data { .. } | State::Trailer { .. } = self.state {
                        self.seen = 0;
                    }
                }
                State::DataEnd { cr } => {
                    self.state = match (cr, input[i]) {
                        (false, b'\r') => State::DataEnd { cr: true },
                        (true, b'\n') => {
                            self.seen = 0;
                            State::SizeLine {
                                line: Line::Size { digits: 0 },
                                size: 0,
                            }
                        }
                        _ => return Err(ChunkedError::DataEnd),
                    };
                    i += 1;
                }
                State::Trailer { at } => {
                    self.seen += 1;
                    if self.seen > MAX_TRAILERS {
                        return Err(ChunkedError::TooLong);
                    }
                    self.state = trailer(at, input[i])?;
                    i += 1;
                    if self.state == State::Done {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                }
            }
        }
        Ok(i)
    }

    /// The whole body, last chunk and trailers included, has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// Append `data` as one chunk.
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut at = hex.len();
    while {
        at -= 1;
        hex[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        n > 0
    } {}
    out.extend_from_slice(&hex[at..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// One byte of a chunk-size line:
/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF`.
fn size_line(line: Line, size: u64, byte: u8) -> Result<State, ChunkedError> {
    let next = |line| Ok(State::SizeLine { line, size });
    let space = byte == b' ' || byte == b'\t';
    match line {
        Line::Size { digits } => match (byte as char).to_digit(16) {
            Some(_) if digits >= MAX_DIGITS => Err(ChunkedError::Size),
            Some(d) => Ok(State::SizeLine {
                line: Line::Size { digits: digits + 1 },
                size: size << 4 | u64::from(d),
            }),
            None if digits == 0 => Err(ChunkedError::Size),
            None => after_part(size, byte, Line::SpaceBeforeSemicolon, ChunkedError::Size),
        },
        Line::SpaceBeforeSemicolon => match byte {
            b';' => next(Line::NameStart),
            _ if space => next(line),
            _ => Err(ChunkedError::Extension),
        },
        Line::NameStart => match byte {
            _ if space => next(line),
            _ if is_tchar(byte) => next(Line::Name),
            _ => Err(ChunkedError::Extension),
        },
        Line::Name => match byte {
            _ if is_tchar(byte) => next(line),
            b'=' => next(Line::ValueStart),
            _ if space => next(Line::SpaceAfterName),
            _ => after_part(
                size,
                byte,
                Line::SpaceBeforeSemicolon,
                ChunkedError::Extension,
            ),
        },
        Line::SpaceAfterName => match byte {
            b'=' => next(Line::ValueStart),
            b';' => next(Line::NameStart),
            _ if space => next(line),
            _ => Err(ChunkedError::Extension),
        },
        Line::ValueStart => match byte {
            _ if space => next(line),
            b'"' => next(Line::Quoted),
            _ if is_tchar(byte) => next(Line::Token),
            _ => Err(ChunkedError::Extension),
        },
        Line::Token => match byte {
            _ if is_tchar(byte) => next(line),
            _ => after_part(
                size,
                byte,
                Line::SpaceBeforeSemicolon,
                ChunkedError::Extension,
            ),
        },
        Line::Quoted => match byte {
            b'"' => next(Line::AfterValue),
            b'\\' => next(Line::QuotedEscape),
            // qdtext: HTAB, SP, VCHAR except `"` and `\`, obs-text.
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => next(line),
            _ => Err(ChunkedError::Extension),
        },
        Line::QuotedEscape => match byte {
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => next(Line::Quoted),
            _ => Err(ChunkedError::Extension),
        },
        Line::AfterValue => after_part(
            size,
            byte,
            Line::SpaceBeforeSemicolon,
            ChunkedError::Extension,
        ),
        Line::Cr => match byte {
            b'\n' if size == 0 => Ok(State::Trailer {
                at: TrailerAt::LineStart,
            }),
            b'\n' => Ok(State::Data { left: size }),
            _ => Err(ChunkedError::LineEnd),
        },
    }
}

/// The byte after a size, a name without value, or a value: `;`, whitespace
/// (then `;`), or the CR ending the line.
fn after_part(
    size: u64,
    byte: u8,
    space: Line,
    error: ChunkedError,
) -> Result<State, ChunkedError> {
    let line = match byte {
        b';' => Line::NameStart,
        b' ' | b'\t' => space,
        b'\r' => Line::Cr,
        // A bare LF is not a line end here.
        b'\n' => return Err(ChunkedError::LineEnd),
        _ => return Err(error),
    };
    Ok(State::SizeLine { line, size })
}

/// One byte of the trailer section: `*( field-name ":" OWS field-value OWS
/// CRLF ) CRLF`, no obs-fold.
fn trailer(at: TrailerAt, byte: u8) -> Result<State, ChunkedError> {
    let at = match (at, byte) {
        (TrailerAt::LineStart, b'\r') => TrailerAt::EmptyCr,
        (TrailerAt::EmptyCr, b'\n') => return Ok(State::Done),
        (TrailerAt::EmptyCr, _) => return Err(ChunkedError::LineEnd),
        (TrailerAt::LineStart | TrailerAt::Name, b) if is_tchar(b) => TrailerAt::Name,
        (TrailerAt::Name, b':') => TrailerAt::Value,
        (TrailerAt::LineStart | TrailerAt::Name, _) => return Err(ChunkedError::Trailer),
        (TrailerAt::Value, b'\r') => TrailerAt::Cr,
        (TrailerAt::Value, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => TrailerAt::Value,
        (TrailerAt::Value, _) => return Err(ChunkedError::Trailer),
        (TrailerAt::Cr, b'\n') => TrailerAt::LineStart,
        (TrailerAt::Cr, _) => return Err(ChunkedError::LineEnd),
    };
    Ok(State::Trailer { at })
}

/// RFC 9110 §5.6.2 tchar: a byte of a token (a field name, a method, a
/// chunk extension's name).
pub fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n7;ext=1;q=\"a \\\"b\\\"\" ; x\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";

    /// Decode `body` in one piece: (bytes taken, re-encoded output).
    fn decode(body: &[u8]) -> Result<(usize, Vec<u8>, bool), ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        let taken = decoder.decode(body, &mut out)?;
        Ok((taken, out, decoder.is_done()))
    }

    #[test]
    fn decodes_and_re_encodes_and_leaves_what_follows() {
        let mut data = BODY.to_vec();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (taken, out, done) = decode(&data).unwrap();
        assert_eq!(taken, BODY.len());
        assert!(done);
        assert_eq!(out, b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n");
    }

    #[test]
    fn the_same_body_whatever_the_pieces() {
        for split in 1..BODY.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut taken = 0;
            for piece in BODY.chunks(split) {
                assert!(!decoder.is_done());
                taken += decoder.decode(piece, &mut out).unwrap();
            }
            assert_eq!(taken, BODY.len(), "pieces of {split}");
            assert!(decoder.is_done(), "pieces of {split}");
            // Re-decoding the output gives the same data.
            let (_, again, done) = decode(&out).unwrap();
            assert!(done);
            let data = |encoded: &[u8]| {
                let mut d = ChunkedDecoder::default();
                let mut sink = Vec::new();
                d.decode(encoded, &mut sink).unwrap();
                sink
            };
            assert_eq!(data(&again), data(&out));
            assert!(out.ends_with(b"0\r\n\r\n"));
        }
    }

    #[test]
    fn a_body_without_trailers_ends_at_the_empty_line() {
        assert_eq!(decode(b"0\r\n\r\nrest").unwrap().0, 5);
        assert_eq!(decode(b"000\r\n\r\n").unwrap().0, 7);
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (taken, out, done) = decode(b"a\r\n0123").unwrap();
        assert_eq!((taken, done), (7, false));
        assert_eq!(out, b"4\r\n0123\r\n");
    }

    #[test]
    fn framing_that_is_not_strictly_chunked_is_an_error() {
        let cases: &[(&[u8], ChunkedError)] = &[
            (b"zz\r\n", ChunkedError::Size),
            (b"\r\n", ChunkedError::Size),
            (b" 5\r\nhello\r\n", ChunkedError::Size),
            (b"+5\r\nhello\r\n", ChunkedError::Size),
            (b"0x5\r\nhello\r\n", ChunkedError::Size),
            (b"5x\r\nhello\r\n", ChunkedError::Size),
            (b"5 \r\nhello\r\n", ChunkedError::Extension),
            (b"11111111111111111\r\n", ChunkedError::Size),
            (b"5\r\nhelloXX", ChunkedError::DataEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkedError::DataEnd),
            (b"5\nhello\r\n", ChunkedError::LineEnd),
            (b"5\rhello\r\n", ChunkedError::LineEnd),
            (b"5;a\rb\r\nhello\r\n", ChunkedError::LineEnd),
            (b"5;\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=\"x\r\nhello\r\n", ChunkedError::Extension),
            (b"5;a=b c\r\n", ChunkedError::Extension),
            (b"5;a@b\r\n", ChunkedError::Extension),
            (b"0\r\nbad trailer\r\n\r\n", ChunkedError::Trailer),
            (b"0\r\n: v\r\n\r\n", ChunkedError::Trailer),
            (b"0\r\nx: v\n\r\n", ChunkedError::Trailer),
            (b"0\r\nx: v\r\n folded\r\n\r\n", ChunkedError::Trailer),
            (b"0\r\n\n", ChunkedError::Trailer),
            (b"0\r\n\rx", ChunkedError::LineEnd),
        ];
        for (bad, error) in cases {
            assert_eq!(
                decode(bad).map(|_| ()),
                Err(*error),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"1;a=", &mut out), Ok(4));
        let endless = vec![b'a'; MAX_LINE + 10];
        assert_eq!(
            decoder.decode(&endless, &mut out),
            Err(ChunkedError::TooLong)
        );
    }

    #[test]
    fn sizes_up_to_64_bits() {
        let mut decoder = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(decoder.decode(b"ffffffffffffffff\r\nab", &mut out), Ok(20));
        assert_eq!(out, b"2\r\nab\r\n");
    }
}

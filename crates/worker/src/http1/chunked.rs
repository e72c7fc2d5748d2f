//! Finding the end of a chunked message body without decoding it.
//!
//! The HTTP/1 forwarder passes a chunked response through as the upstream
//! wrote it; it only needs to know where the body ends, so the next response
//! on the same upstream connection is not mistaken for more body, and a body
//! cut short is noticed.

/// Error in the chunked framing: the connection cannot be trusted any further.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkedError;

/// A chunk-size line longer than this is an attack, not an extension.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size.
    Size {
        size: u64,
        digits: usize,
    },
    /// After the size: extensions up to CR LF.
    SizeLine {
        size: u64,
    },
    /// `left` more bytes of chunk data.
    Data {
        left: u64,
    },
    /// The CR LF after chunk data; `cr` when the CR was seen.
    DataEnd {
        cr: bool,
    },
    /// A trailer line (or the final empty line); `empty` while nothing but CR
    /// has been seen on this line.
    Trailer {
        empty: bool,
    },
    Done,
}

/// Follows a chunked body through the bytes fed to it.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: State,
    line: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
        }
    }
}

impl ChunkedScanner {
    /// Consume `data`, the next bytes of the body. Returns how many of them
    /// belong to the body: all of them while it goes on, fewer (or all) once it
    /// ends; `is_done` then says so.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Data { left } => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data { left: left - take }
                    };
                    continue;
                }
                State::Done => return Ok(i),
                _ => {}
            }
            let byte = data[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkedError);
            }
            self.state = match self.state {
                State::Size { size, digits } => match (byte as char).to_digit(16) {
                    Some(d) if digits < 16 => State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return Err(ChunkedError),
                    None if digits == 0 => return Err(ChunkedError),
                    None => self.after_size(size, byte)?,
                },
                State::SizeLine { size } => self.after_size(size, byte)?,
                State::DataEnd { cr: false } if byte == b'\r' => State::DataEnd { cr: true },
                // A bare LF is taken too, as lenient parsers do.
                State::DataEnd { .. } if byte == b'\n' => {
                    self.next_line(State::Size { size: 0, digits: 0 })
                }
                State::DataEnd { .. } => return Err(ChunkedError),
                State::Trailer { empty } => match byte {
                    b'\n' if empty => self.next_line(State::Done),
                    b'\n' => self.next_line(State::Trailer { empty: true }),
                    b'\r' => State::Trailer { empty },
                    _ => State::Trailer { empty: false },
                },
                State::Data { .. } | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A byte after the size digits: extensions until LF, which starts the
    /// chunk's data (or the trailers after the last, empty chunk).
    fn after_size(&mut self, size: u64, byte: u8) -> Result<State, ChunkedError> {
        Ok(match byte {
            b'\n' if size == 0 => self.next_line(State::Trailer { empty: true }),
            b'\n' => self.next_line(State::Data { left: size }),
            // Extensions (`;name=value`), whitespace and the CR are passed over.
            b'\r' | b';' | b' ' | b'\t' => State::SizeLine { size },
            _ if matches!(self.state, State::SizeLine { .. }) => State::SizeLine { size },
            _ => return Err(ChunkedError),
        })
    }

    fn next_line(&mut self, state: State) -> State {
        self.line = 0;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn finds_the_end_in_one_piece_and_leaves_what_follows() {
        let mut scanner = ChunkedScanner::default();
        let mut data = BODY.to_vec();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(scanner.feed(&data), Ok(BODY.len()));
        assert!(scanner.is_done());
    }

    #[test]
    fn finds_the_end_whatever_the_pieces() {
        for split in 1..BODY.len() {
            let mut scanner = ChunkedScanner::default();
            let mut taken = 0;
            for piece in BODY.chunks(split) {
                assert!(!scanner.is_done());
                taken += scanner.feed(piece).unwrap();
            }
            assert_eq!(taken, BODY.len(), "pieces of {split}");
            assert!(scanner.is_done(), "pieces of {split}");
        }
    }

    #[test]
    fn a_body_without_trailers_ends_at_the_empty_line() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(b"0\r\n\r\nrest"), Ok(5));
        assert!(scanner.is_done());
    }

    #[test]
    fn bare_line_feeds_are_taken() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(b"2\nab\n0\n\nrest"), Ok(8));
        assert!(scanner.is_done());
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(b"a\r\n0123"), Ok(7));
        assert!(!scanner.is_done());
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(
                ChunkedScanner::default().feed(bad),
                Err(ChunkedError),
                "{bad:?}"
            );
        }
        let endless = vec![b'a'; MAX_LINE + 10];
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.feed(b"1;"), Ok(2));
        assert_eq!(scanner.feed(&endless), Err(ChunkedError));
    }
}

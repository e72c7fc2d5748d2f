//! Message body framing (RFC 9112 §6.3): how a body is delimited, decided by
//! `head.rs`, and the length bookkeeping of a body in transit. The chunked
//! codec is `chunked.rs`; moving bytes between sockets is `session.rs`.

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a request without one, a response to HEAD, 1xx, 204, 304,
    /// or `Content-Length: 0`.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding, ending with the last chunk and trailers.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

impl Framing {
    /// The body's length when it is known from the head alone.
    pub fn known_length(self) -> Option<u64> {
        match self {
            Framing::Empty => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::UntilClose => None,
        }
    }
}

/// The bytes of a `Content-Length` body still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining(pub u64);

impl Remaining {
    /// Of `available` bytes, how many belong to the body; counts them as
    /// passed on.
    pub fn take(&mut self, available: usize) -> usize {
        let n = (available as u64).min(self.0) as usize;
        self.0 -= n as u64;
        n
    }

    pub fn is_done(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_to_the_end_of_the_body() {
        let mut left = Remaining(10);
        assert_eq!(left.take(4), 4);
        assert!(!left.is_done());
        assert_eq!(left.take(100), 6);
        assert!(left.is_done());
        assert_eq!(left.take(5), 0);
        assert_eq!(Framing::Length(3).known_length(), Some(3));
        assert_eq!(Framing::Chunked.known_length(), None);
    }
}

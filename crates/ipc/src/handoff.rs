//! Connection handoff (issue 12): what a draining worker's connections look
//! like on the wire when they move, through the master, to a worker of the
//! serving generation.
//!
//! The exchange, each step a frame on the worker channels:
//!
//! ```text
//! draining worker            master                         serving worker
//!   Handoff{batch, conns} ->  (validates, picks the least
//!   + 1 fd per idle conn,      loaded serving worker)
//!   2 per tunnel               Adopt{batch', conns} + fds ->  wraps the fds, checks
//!                                                             the service exists
//!                          <- Adopted{batch', accepted} ----  (holds them, serves none)
//!   HandoffResult{batch,   <- decides: commit ->              AdoptOutcome{batch', commit}
//!     accepted} (closes its                                   (serves the accepted ones,
//!     accepted copies)                                         or closes its copies)
//! ```
//!
//! The master decides once, on its single loop: a batch is committed when
//! `Adopted` arrives in time, and aborted when the receiver dies, cannot be
//! sent to, or does not answer within the master's limit. Both workers obey
//! that decision, so a connection is never served by two processes (the
//! sender stopped reading before offering it and reads again only if it
//! stays) and never by none (the sender closes its copy only once the
//! receiver holds one and was told to serve it).
//!
//! This module holds the types and the pure rules on them (fd counts, limits,
//! batching); the worker's collector and adopter and the master's routing use
//! them. Nothing here touches a socket.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::frame::MAX_FDS_PER_FRAME;

/// Bytes a paused tunnel may carry along per direction: what River had read
/// but could not write before the pause (normally none; see `tunnel/pipe.rs`).
pub const MAX_CARRIED_BYTES: usize = 64 * 1024;
/// Longest service name, method or path a handed connection may name.
pub const MAX_HANDED_TEXT: usize = 8 * 1024;

/// One connection on its way to another worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandedConn {
    /// An HTTP/1 keep-alive connection between two requests: nothing read of
    /// the next request, no response pending. One fd: the client socket.
    Idle(HandedIdle),
    /// An upgraded connection (WebSocket) River copies both ways. Two fds:
    /// the client socket, then the upstream socket.
    Tunnel(Box<HandedTunnel>),
}

/// An idle keep-alive connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedIdle {
    /// The service whose listener accepted it; the receiver serves it as a
    /// connection accepted by its service of that name.
    pub service: String,
    /// The client's address (TCP), for logs; the receiver reads it from the
    /// socket too.
    pub client: Option<SocketAddr>,
    /// Always false today: a TLS session's state lives in rustls, in the
    /// sender's memory, and cannot move without kernel TLS. A receiver
    /// refuses a connection that says true.
    pub tls: bool,
}

/// An upgraded connection and what its access-log line needs when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedTunnel {
    pub service: String,
    pub client: Option<SocketAddr>,
    /// The upstream the tunnel goes to (the second fd's peer).
    pub upstream: SocketAddr,
    /// Of the upgrade request, for the access log.
    pub method: String,
    pub path: String,
    /// When the upgrade request's head was read: microseconds since the Unix
    /// epoch (wall clock, which both processes share).
    pub started_unix_micros: u64,
    /// Bytes copied so far from the upstream to the client, and from the
    /// client to the upstream (after the 101).
    pub to_client_bytes: u64,
    pub to_upstream_bytes: u64,
    /// The client ended its side (River read its EOF and shut down the
    /// upstream's write side): nothing more to read from the client.
    pub client_done: bool,
    /// The upstream ended its side, likewise.
    pub upstream_done: bool,
    /// Read from the upstream, not yet written to the client.
    #[serde(with = "hex_bytes", default)]
    pub to_client: Vec<u8>,
    /// Read from the client, not yet written to the upstream.
    #[serde(with = "hex_bytes", default)]
    pub to_upstream: Vec<u8>,
}

impl HandedConn {
    /// The descriptors this connection takes in a frame.
    pub fn fds(&self) -> usize {
        match self {
            HandedConn::Idle(_) => 1,
            HandedConn::Tunnel(_) => 2,
        }
    }

    pub fn service(&self) -> &str {
        match self {
            HandedConn::Idle(idle) => &idle.service,
            HandedConn::Tunnel(tunnel) => &tunnel.service,
        }
    }

    /// `idle` or `tunnel`, as the `kind` label of
    /// `river_connections_handed_over_total`.
    pub fn kind(&self) -> HandedKind {
        match self {
            HandedConn::Idle(_) => HandedKind::Idle,
            HandedConn::Tunnel(_) => HandedKind::Tunnel,
        }
    }
}

/// The kinds of handed connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandedKind {
    Idle,
    Tunnel,
}

impl HandedKind {
    pub const ALL: [HandedKind; 2] = [HandedKind::Idle, HandedKind::Tunnel];

    pub fn as_str(self) -> &'static str {
        match self {
            HandedKind::Idle => "idle",
            HandedKind::Tunnel => "tunnel",
        }
    }
}

/// Why a batch cannot be a `Handoff` or `Adopt` frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("an empty handoff batch")]
    Empty,
    #[error("the connections need {needed} descriptors but the frame carries {carried}")]
    FdCount { needed: usize, carried: usize },
    #[error("{0} descriptors do not fit in one frame")]
    TooManyFds(usize),
    #[error("a handed connection names a text over {MAX_HANDED_TEXT} bytes")]
    TextTooLong,
    #[error("a handed tunnel carries more than {MAX_CARRIED_BYTES} pending bytes")]
    TooManyBytes,
}

/// Check a received batch against the descriptors its frame carried: what
/// the master does with every `Handoff` (a worker that fails it is replaced,
/// as for any bad frame) and a worker with every `Adopt`.
pub fn check_batch(conns: &[HandedConn], carried: usize) -> Result<(), BatchError> {
    if conns.is_empty() {
        return Err(BatchError::Empty);
    }
    let needed: usize = conns.iter().map(HandedConn::fds).sum();
    if needed > MAX_FDS_PER_FRAME {
        return Err(BatchError::TooManyFds(needed));
    }
    if needed != carried {
        return Err(BatchError::FdCount { needed, carried });
    }
    for conn in conns {
        if conn.service().len() > MAX_HANDED_TEXT {
            return Err(BatchError::TextTooLong);
        }
        if let HandedConn::Tunnel(t) = conn {
            if t.method.len() > MAX_HANDED_TEXT || t.path.len() > MAX_HANDED_TEXT {
                return Err(BatchError::TextTooLong);
            }
            if t.to_client.len() > MAX_CARRIED_BYTES || t.to_upstream.len() > MAX_CARRIED_BYTES {
                return Err(BatchError::TooManyBytes);
            }
        }
    }
    Ok(())
}

/// Split connections, in order, into batches that each fit in one frame
/// (at most [`MAX_FDS_PER_FRAME`] descriptors): the ranges of `fds`, each
/// entry the descriptor count of one connection.
pub fn batches(fds: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, n) in fds.iter().enumerate() {
        if used + n > MAX_FDS_PER_FRAME && i > start {
            out.push(start..i);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < fds.len() {
        out.push(start..fds.len());
    }
    out
}

/// `Vec<u8>` as a hex string: a JSON array of numbers would take up to four
/// bytes per byte.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            text.push(DIGITS[usize::from(b >> 4)] as char);
            text.push(DIGITS[usize::from(b & 15)] as char);
        }
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let text = text.as_bytes();
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex"));
        }
        text.chunks(2)
            .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| serde::de::Error::custom("not lowercase hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> HandedConn {
        HandedConn::Idle(HandedIdle {
            service: "S".into(),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            tls: false,
        })
    }

    fn tunnel(pending: usize) -> HandedConn {
        HandedConn::Tunnel(Box::new(HandedTunnel {
            service: "S".into(),
            client: None,
            upstream: "127.0.0.1:9".parse().unwrap(),
            method: "GET".into(),
            path: "/ws".into(),
            started_unix_micros: 1,
            to_client_bytes: 2,
            to_upstream_bytes: 3,
            client_done: false,
            upstream_done: true,
            to_client: (0..=255u8).cycle().take(pending).collect(),
            to_upstream: vec![0xff; pending],
        }))
    }

    #[test]
    fn batches_never_exceed_64_descriptors_and_keep_order() {
        // 100 idle connections: 64 + 36.
        assert_eq!(batches(&[1; 100]), vec![0..64, 64..100]);
        // Tunnels take two: 32 per frame.
        assert_eq!(batches(&[2; 33]), vec![0..32, 32..33]);
        // Mixed: a tunnel that would make 65 starts the next batch.
        let mut mixed = vec![1; 63];
        mixed.push(2);
        mixed.push(1);
        assert_eq!(batches(&mixed), vec![0..63, 63..65]);
        assert!(batches(&[]).is_empty());
        for fds in [
            vec![1; 1000],
            vec![2; 999],
            (0..777).map(|i| 1 + i % 2).collect(),
        ] {
            let ranges = batches(&fds);
            let covered: usize = ranges.iter().map(|r| r.len()).sum();
            assert_eq!(covered, fds.len());
            for r in &ranges {
                assert!(fds[r.clone()].iter().sum::<usize>() <= MAX_FDS_PER_FRAME);
            }
        }
    }

    #[test]
    fn a_batch_must_carry_exactly_its_descriptors() {
        let conns = vec![idle(), tunnel(0), idle()];
        assert_eq!(check_batch(&conns, 4), Ok(()));
        assert_eq!(
            check_batch(&conns, 3),
            Err(BatchError::FdCount {
                needed: 4,
                carried: 3
            })
        );
        assert_eq!(check_batch(&[], 0), Err(BatchError::Empty));
        assert_eq!(
            check_batch(&vec![tunnel(0); 33], 66),
            Err(BatchError::TooManyFds(66))
        );
        let mut long = idle();
        if let HandedConn::Idle(i) = &mut long {
            i.service = "x".repeat(MAX_HANDED_TEXT + 1);
        }
        assert_eq!(check_batch(&[long], 1), Err(BatchError::TextTooLong));
        assert_eq!(
            check_batch(&[tunnel(MAX_CARRIED_BYTES + 1)], 2),
            Err(BatchError::TooManyBytes)
        );
    }

    #[test]
    fn carried_bytes_travel_as_hex_and_come_back_intact() {
        let conn = tunnel(1000);
        let json = serde_json::to_string(&conn).unwrap();
        assert!(json.contains("\"to_upstream\":\"ffff"), "{}", &json[..200]);
        let back: HandedConn = serde_json::from_str(&json).unwrap();
        assert_eq!(back, conn);
        for bad in [
            serde_json::json!("f"),
            serde_json::json!("zz"),
            serde_json::json!("FF"),
            serde_json::json!([1, 2]),
        ] {
            let mut value = serde_json::to_value(&conn).unwrap();
            value["Tunnel"]["to_client"] = bad.clone();
            assert!(
                serde_json::from_value::<HandedConn>(value).is_err(),
                "{bad}"
            );
        }
    }
}

//! The one error type of the protocol layer.

use std::io;

/// Everything that can go wrong while framing, sending or receiving a message.
///
/// A bad frame from the peer is always one of these values, never a panic.
/// After any error other than [`IpcError::Malformed`] (whose frame was fully
/// consumed, so the stream is still in step) the channel should be dropped:
/// a [`Channel`](crate::Channel) refuses further use with [`IpcError::Poisoned`].
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("ipc i/o error: {0}")]
    Io(#[from] io::Error),

    /// A frame header announced (or a message would need) a payload larger than
    /// [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN).
    #[error(
        "frame payload of {len} bytes exceeds the limit of {} bytes",
        crate::MAX_FRAME_LEN
    )]
    FrameTooLarge { len: usize },

    /// A frame announced (or a sender tried to attach) more than
    /// [`MAX_FDS_PER_FRAME`](crate::MAX_FDS_PER_FRAME) file descriptors.
    #[error(
        "frame carries {count} file descriptors, more than the limit of {}",
        crate::MAX_FDS_PER_FRAME
    )]
    TooManyFds { count: usize },

    /// The peer speaks another protocol version (or is not speaking this protocol at all).
    #[error(
        "protocol version mismatch: got {got}, expected {}",
        crate::PROTOCOL_VERSION
    )]
    VersionMismatch { got: u16 },

    /// The payload of a complete frame is not the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),

    /// A message could not be serialized (should not happen with River's own types).
    #[error("could not encode message: {0}")]
    Encode(serde_json::Error),

    /// A frame announced `expected` file descriptors but only `got` were received with it.
    #[error("frame announced {expected} file descriptors, received {got}")]
    MissingFds { expected: usize, got: usize },

    /// The kernel truncated the ancillary data of a recvmsg (MSG_CTRUNC): the peer
    /// sent more descriptors than fit, or this process ran out of descriptors.
    #[error("file descriptors were truncated in transit (MSG_CTRUNC)")]
    FdsTruncated,

    /// The peer closed the connection in the middle of a frame (or, for
    /// [`request_blocking`](crate::request_blocking), before answering).
    #[error("peer closed the connection mid-frame")]
    Closed,

    /// [`request_blocking`](crate::request_blocking) ran out of time.
    #[error("timed out waiting for the peer")]
    Timeout,

    /// An earlier fatal error, or a cancelled `send`, left the stream in an
    /// unknown state; drop the channel.
    #[error("channel unusable after an earlier error or a cancelled send")]
    Poisoned,
}

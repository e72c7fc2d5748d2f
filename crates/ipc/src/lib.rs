//! River's process protocol: the messages ([`messages`]), their wire format
//! ([`frame`]), the transport over Unix sockets with SCM_RIGHTS ([`channel`]),
//! and the shared-memory stats board ([`stats`]).

pub mod channel;
mod error;
pub mod frame;
pub mod messages;
pub mod stats;

pub use channel::{request_blocking, socketpair, Channel};
pub use error::IpcError;
pub use frame::{
    encode, FrameDecoder, FrameHeader, RawFrame, HEADER_LEN, MAX_FDS_PER_FRAME, MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
pub use messages::*;

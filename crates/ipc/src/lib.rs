//! River's process protocol: the messages ([`messages`]), their wire format
//! ([`frame`]), the transport over Unix sockets with SCM_RIGHTS ([`channel`]),
//! and the shared-memory stats board ([`stats`]).

pub mod channel;
pub mod civil;
mod error;
pub mod frame;
pub mod handoff;
pub mod messages;
pub mod stats;

pub use channel::{request_blocking, socketpair, Channel};
pub use error::IpcError;
pub use frame::{
    encode, FrameDecoder, FrameHeader, RawFrame, HEADER_LEN, MAX_FDS_PER_FRAME, MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
pub use handoff::{HandedConn, HandedIdle, HandedKind, HandedTunnel};
pub use messages::*;

/// River's version as the binaries report it: Cargo's, unless the build set
/// `RIVER_BUILD_VERSION` (packaging/build-deb.sh does, to build a package of
/// another version from the same tree, e.g. for the upgrade test).
pub const VERSION: &str = match option_env!("RIVER_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

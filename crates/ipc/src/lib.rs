//! River's process protocol.

pub mod messages;
pub use messages::*;

//! HTTP/1: the message model both request paths apply (the `river-http1`
//! crate: `head`, `body`, `chunked`), the client connection loop (`session.rs`),
//! River's own forwarder for plain HTTP/1.1 proxying (`forward.rs`) with its
//! upstream pool, the hand-over of a request to pingora (`rewind.rs`), and
//! the one wake-up an idle connection holds (`alarm.rs`).

pub use river_http1::{body, chunked, head};

pub mod alarm;
pub mod forward;
pub mod pool;
pub mod rewind;
pub mod session;

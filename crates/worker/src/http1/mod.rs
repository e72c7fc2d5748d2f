//! HTTP/1: River's own forwarder for plain HTTP/1.1 proxying (`session.rs`),
//! with its chunked scanner, upstream pool, and the hand-over of a
//! connection to pingora (`rewind.rs`).

pub mod chunked;
pub mod pool;
pub mod rewind;
pub mod session;

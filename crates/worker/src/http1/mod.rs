//! HTTP/1: the message model both request paths apply (`head.rs`,
//! `body.rs`, `chunked.rs`), the client connection loop (`session.rs`),
//! River's own forwarder for plain HTTP/1.1 proxying (`forward.rs`) with its
//! upstream pool, and the hand-over of a request to pingora (`rewind.rs`).

pub mod body;
pub mod chunked;
pub mod forward;
pub mod head;
pub mod pool;
pub mod rewind;
pub mod session;

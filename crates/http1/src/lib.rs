//! River's HTTP/1 message model, the one both of the worker's request paths
//! apply: a parsed head becomes a framing decision and a clean set of fields
//! (RFC 9112 §6, RFC 9110 §5.6.1), refusals become statuses, and chunked
//! bodies are decoded strictly and re-encoded.
//!
//! A crate of its own because it is pure: functions on byte slices, no
//! sockets, no pingora. The worker's HTTP/1 session and its pingora
//! application call it (`river_worker`'s `http1/` and `proxy/conform.rs`),
//! and the fuzz targets (`fuzz/`) build it without pingora.

pub mod body;
pub mod chunked;
pub mod head;

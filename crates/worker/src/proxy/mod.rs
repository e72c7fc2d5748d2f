//! pingora's proxy: the app of every service for h2, TLS or h2 upstreams,
//! file servers and the HTTP/1 requests River's fast path does not take,
//! with the HTTP/1 model (`http1/head.rs`) applied where pingora would frame
//! or forward differently (`conform.rs`).

pub mod app;
pub mod conform;

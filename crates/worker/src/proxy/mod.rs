//! pingora's proxy: the app of every service (h2, TLS or h2 upstreams, file
//! servers and the odd HTTP/1 cases), and upstream selection and health
//! checks, which the HTTP/1 fast path uses too.

pub mod app;
pub mod upstreams;

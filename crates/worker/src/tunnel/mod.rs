//! Upgraded connections (WebSocket, any `Upgrade` River relays) on plaintext
//! client connections to plain HTTP/1.1 upstreams: after the `101`, River
//! copies bytes itself (`pipe.rs`), so that a draining worker can pause a
//! tunnel and hand both sockets to the serving generation (`handoff.rs`).
//! TLS clients, TLS or h2 upstreams and the odd cases stay on pingora's path.

pub mod pipe;

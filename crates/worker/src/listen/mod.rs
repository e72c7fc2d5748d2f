//! Where connections come from: accept loops on the sockets the master sent,
//! TLS handshakes, the balance board shared with sibling workers, and the
//! lean socket and write buffer under every accepted stream. No HTTP here.

pub mod accept;
pub mod balance;
pub mod buffered;
pub mod socket;
pub mod tls;

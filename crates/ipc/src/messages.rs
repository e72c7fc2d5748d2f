//! What the master, the workers and riverctl say to each other.

use std::net::SocketAddr;

use river_config::{Config, ListenAddress};
use serde::{Deserialize, Serialize};

/// Master -> worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first message on a worker's channel. The frame carries one listening
    /// fd per entry of `listeners`, in the same order.
    Hello(Box<Hello>),
    /// Start accepting. Sent to every worker of a generation once all of them
    /// are Ready (and to a replacement worker of a serving generation once it
    /// is Ready): a generation that is rolled back never answered a request.
    Serve,
    /// Stop accepting, finish what is in flight, exit when idle. The master
    /// enforces the deadline itself (TERM, then KILL); this is for logging.
    Drain { deadline_secs: u64 },
    /// Graceful shutdown (SIGQUIT): as `Drain`, but idle keep-alive connections
    /// are closed at once, since no generation takes over.
    Quit,
    /// Reopen the access log (SIGUSR1): the frame carries the freshly opened
    /// access-log file when the config has one.
    ReopenLogs,
    /// Service discovery: a discovered name's current backends, to apply to
    /// the service's selector in place. Relayed by the master from the
    /// generation's resolver; every worker of the generation gets the same.
    Discovered(DiscoveredSet),
}

/// The backends one DNS name of one service stands for now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredSet {
    pub service: String,
    /// As written in the config (`DnsName`'s display): `api.internal:8080`,
    /// `_http._tcp.api.service.consul`.
    pub name: String,
    /// Grows with every change of any set of the generation: a worker ignores
    /// a set older than the one it applied.
    pub version: u64,
    /// Sorted by address, no duplicates, at most [`MAX_DISCOVERED_BACKENDS`].
    pub backends: Vec<DiscoveredBackend>,
}

/// One discovered backend. `weight` is the SRV weight, reduced (see the
/// resolver) to `1..=MAX_DISCOVERED_WEIGHT`; 1 for A/AAAA records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DiscoveredBackend {
    pub address: SocketAddr,
    pub weight: u16,
}

/// The most backends one name may stand for; a resolver's answer with more
/// is refused by the master.
pub const MAX_DISCOVERED_BACKENDS: usize = 1024;
/// Weights are reduced to at most this (selection tables grow with weights).
pub const MAX_DISCOVERED_WEIGHT: u16 = 256;

/// Master -> resolver (`river resolver`, one unprivileged process per
/// generation whose config has `discovery "Dns"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToResolver {
    /// The first and only message: what to resolve is every `discovery` of
    /// `config`; `config.system.user`/`group` is who to become.
    Hello(Box<ResolverHello>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolverHello {
    pub generation: u64,
    pub config: Config,
}

/// Resolver -> master. The master never reads DNS: it checks these typed
/// answers (known service and name, bounded lists, valid weights) and relays
/// changed sets to the generation's workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromResolver {
    /// A lookup succeeded: the name's backends, valid for `ttl_ms` (already
    /// clamped to the service's [min-ttl-ms, max-ttl-ms]). Sent after every
    /// successful lookup, changed or not.
    Resolved {
        service: String,
        name: String,
        backends: Vec<DiscoveredBackend>,
        ttl_ms: u64,
    },
    /// A lookup failed (timeout, SERVFAIL, NXDOMAIN, no address): the last
    /// good set stays; the next try is in `retry_ms`.
    Failed {
        service: String,
        name: String,
        error: String,
        retry_ms: u64,
    },
    /// Every name has been tried once: the generation's readiness waits for this.
    FirstPassDone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub generation: u64,
    pub worker_index: usize,
    pub config: Config,
    pub listeners: Vec<ListenAddress>,
    /// Certificates and keys of the TLS listeners, read by the (privileged)
    /// master so that workers never need access to key files.
    pub tls: Vec<TlsMaterial>,
    /// True when the frame carries, after the listeners' fds, one more: the
    /// access log, opened for appending by the master.
    pub access_log: bool,
    /// True when the frame carries, last, the generation's balance board: a
    /// memfd of `workers × BALANCE_SLOT_BYTES` bytes, one open-connection
    /// counter per worker slot, which workers use to spread accepts.
    pub balance: bool,
}

/// Bytes per worker slot of a balance board: a cache line, so that workers'
/// counters never share one.
pub const BALANCE_SLOT_BYTES: usize = 64;

/// A new balance board for `workers` slots, all zero: what the master sends
/// with `Hello { balance: true, .. }`.
pub fn balance_board(workers: usize) -> std::io::Result<std::os::fd::OwnedFd> {
    let bytes = workers
        .checked_mul(BALANCE_SLOT_BYTES)
        .ok_or(std::io::ErrorKind::InvalidInput)?;
    let fd =
        nix::sys::memfd::memfd_create("river-balance", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let file = std::fs::File::from(fd);
    file.set_len(bytes as u64)?;
    Ok(file.into())
}

/// The PEM contents of one TLS listener's `cert-path` and `key-path`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    pub address: ListenAddress,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print private keys into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("address", &self.address)
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Worker -> master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// Every service is built and its sockets adopted; the worker accepts
    /// once told to `Serve`.
    Ready { pid: u32 },
    /// The worker could not start; it exits after sending this.
    Failed { error: String },
    /// After `Drain`: this worker no longer accepts, so every new connection
    /// goes to the newer generation.
    Draining,
    /// Periodic: open downstream connections.
    Load { connections: u64 },
}

/// riverctl -> master, on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// `wait`: answer only once the reload succeeded or was rolled back.
    Reload {
        wait: bool,
    },
    Status,
    Stop {
        graceful: bool,
    },
    ReopenLogs,
}

/// master -> riverctl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Reloaded {
        generation: u64,
        workers: usize,
        millis: u64,
    },
    /// Validation, bind or worker start-up failed; the serving generation is unchanged.
    ReloadFailed {
        error: String,
    },
    /// A request that needs no more answer than "done" (stop, reopen-logs, reload without wait).
    Accepted,
    Status(StatusReport),
    /// The request could not be served (refused peer, malformed request).
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub master_pid: u32,
    pub generations: Vec<GenerationStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub generation: u64,
    pub state: GenerationState,
    pub workers: Vec<WorkerStatus>,
    /// Seconds left before a draining generation is killed.
    pub drain_deadline_secs: Option<u64>,
    /// Each DNS name of each service (`discovery "Dns"`), as the master knows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<DiscoveryStatus>,
}

/// One discovered name of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    pub service: String,
    pub name: String,
    /// The set the workers use: the last good one.
    pub backends: Vec<DiscoveredBackend>,
    /// Milliseconds until the set is looked up again (None before any answer).
    pub ttl_left_ms: Option<u64>,
    /// The last lookup's error, while lookups fail.
    pub last_error: Option<String>,
    /// True when the set was carried over from the previous generation
    /// (the name did not resolve when this one started).
    pub inherited: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerationState {
    Starting,
    Serving,
    Draining,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub pid: u32,
    pub rss_bytes: u64,
    pub connections: u64,
}

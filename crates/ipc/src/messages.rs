//! What the master, the workers and riverctl say to each other.

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
    /// Binary upgrade: start `binary` (default: the master's own path at
    /// start-up) as the new master on the same sockets, then retire.
    Upgrade {
        binary: Option<std::path::PathBuf>,
    },
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
    /// The new master serves; this one retires (its generations drain).
    Upgraded {
        new: MasterIdentity,
        generation: u64,
        workers: usize,
        millis: u64,
        old: MasterIdentity,
    },
    /// The new binary could not take over; this master serves on, untouched.
    UpgradeFailed {
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
    /// This master's version and binary.
    #[serde(default)]
    pub master: MasterIdentity,
    pub generations: Vec<GenerationStatus>,
    /// Masters retiring after a binary upgrade, with their draining
    /// generations, as they last reported themselves.
    #[serde(default)]
    pub retiring: Vec<MasterStatus>,
}

/// Which River a master is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterIdentity {
    pub pid: u32,
    pub version: String,
    pub binary: String,
}

impl MasterIdentity {
    /// This process.
    pub fn this(binary: &std::path::Path) -> MasterIdentity {
        MasterIdentity {
            pid: std::process::id(),
            version: crate::VERSION.to_owned(),
            binary: binary.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterStatus {
    pub master: MasterIdentity,
    pub generations: Vec<GenerationStatus>,
}

/// Between an old master and the new one it started for a binary upgrade,
/// as JSON lines on a socketpair (no frame version: two different River
/// versions must understand each other here; unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpgradeNote {
    /// new -> old: generation `generation` serves; retire.
    Ready {
        master: MasterIdentity,
        generation: u64,
        workers: usize,
        millis: u64,
    },
    /// new -> old: the new master gives up (config invalid, workers failed).
    Failed { error: String },
    /// old -> new, while retiring: what it still runs.
    Status(MasterStatus),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationStatus {
    pub generation: u64,
    pub state: GenerationState,
    pub workers: Vec<WorkerStatus>,
    /// Seconds left before a draining generation is killed.
    pub drain_deadline_secs: Option<u64>,
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

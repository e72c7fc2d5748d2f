//! What the master, the workers and riverctl say to each other.

use std::net::SocketAddr;

use river_config::{Config, ListenAddress};
use serde::{Deserialize, Serialize};

use crate::handoff::HandedConn;

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
    /// Connection handoff (see [`crate::handoff`]): connections of a
    /// draining worker for this serving worker. The frame carries their
    /// descriptors in order ([`HandedConn::fds`] each). The worker answers
    /// `Adopted` and serves none of them before `AdoptOutcome`.
    Adopt { batch: u64, conns: Vec<HandedConn> },
    /// The master's decision on an `Adopt` batch: `commit` serve the
    /// connections this worker accepted, else close its copies (the sender
    /// keeps them).
    AdoptOutcome { batch: u64, commit: bool },
    /// The answer to this worker's `Handoff` batch: `accepted[i]` says the
    /// i-th connection moved (close this copy, without shutting the socket
    /// down); the others stay and drain here.
    HandoffResult { batch: u64, accepted: Vec<bool> },
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
    /// True when the frame carries, after the balance board if any, the
    /// generation's stats board (see [`crate::stats`]): a memfd laid out as
    /// `StatsLayout::of(&config)`, where the worker counts its requests.
    #[serde(default)]
    pub stats: bool,
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
    /// Connection handoff, from a draining worker: take these connections
    /// to the serving generation. The frame carries their descriptors in
    /// order ([`HandedConn::fds`] each, at most 64 in all). Answered by
    /// `HandoffResult`; until then the worker does not touch them.
    Handoff { batch: u64, conns: Vec<HandedConn> },
    /// The answer to `Adopt`: which connections this worker can serve
    /// (false: no such service, a socket it could not use, a TLS one).
    Adopted { batch: u64, accepted: Vec<bool> },
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
    /// The reload history (`riverctl history`).
    History,
}

/// master -> riverctl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Reloaded {
        generation: u64,
        workers: usize,
        millis: u64,
        /// With connection handoff: connections the retired generations had
        /// handed to the new one when this answer left (more may follow).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handed_over: Option<u64>,
        /// With connection handoff: connections still open in draining
        /// generations then (requests in flight, TLS, h2, tunnels to TLS
        /// upstreams, and whatever the serving generation refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        draining: Option<u64>,
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
    /// The last reloads, oldest first.
    History(Vec<ReloadRecord>),
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
    /// The last few reloads, oldest first (`riverctl history` has them all).
    #[serde(default)]
    pub reloads: Vec<ReloadRecord>,
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
    /// Each DNS name of each service (`discovery "Dns"`), as the master knows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<DiscoveryStatus>,
    /// Connections this generation's workers adopted from draining ones
    /// (connection handoff).
    #[serde(default)]
    pub handed_over_in: u64,
    /// Connections this generation's workers handed to a newer one.
    #[serde(default)]
    pub handed_over_out: u64,
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

/// One reload as the master remembers it (the last 50 are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    /// Counts reloads since the master started, from 1.
    pub number: u64,
    pub trigger: ReloadTrigger,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix_secs: f64,
    pub outcome: ReloadOutcome,
    /// The generation it started, if it got that far.
    pub generation: Option<u64>,
    /// The generation it retired (the one serving before), on success.
    pub retired: Option<u64>,
    pub phases: ReloadPhases,
    /// From the request to the outcome.
    pub duration_ms: Option<f64>,
    /// Why it was rejected or rolled back.
    pub error: Option<String>,
    /// How the retired generation's drain ended, once it has.
    pub drain: Option<DrainResult>,
}

/// What asked for a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum ReloadTrigger {
    /// SIGHUP to the master.
    Sighup,
    /// `riverctl reload`, from a process of this uid and pid.
    Riverctl { uid: u32, pid: u32 },
    /// `riverctl reload` started by systemd (`ExecReload`, its parent is pid 1).
    Systemd { uid: u32, pid: u32 },
}

impl std::fmt::Display for ReloadTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadTrigger::Sighup => write!(f, "SIGHUP"),
            ReloadTrigger::Riverctl { uid, pid } => write!(f, "riverctl (uid {uid}, pid {pid})"),
            ReloadTrigger::Systemd { uid, .. } => write!(f, "systemd (uid {uid})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadOutcome {
    InProgress,
    /// The new generation serves.
    Ok,
    /// Refused before any worker started: invalid config, or a listener,
    /// certificate or log file that could not be opened.
    Rejected,
    /// Workers started but failed or were not ready in time; the serving
    /// generation is unchanged.
    RolledBack,
}

impl ReloadOutcome {
    /// As in the `outcome` label of `river_reloads_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::InProgress => "in_progress",
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Rejected => "rejected",
            ReloadOutcome::RolledBack => "rolled_back",
        }
    }
}

/// How long each phase of a reload took, in milliseconds; None if the reload
/// did not reach it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadPhases {
    /// Reading and validating the config, binding new listeners, reading TLS files.
    pub validate_ms: Option<f64>,
    /// Waiting for draining generations killed by `max-draining-generations`
    /// to exit before starting (0 when none had to be).
    pub room_ms: Option<f64>,
    /// Starting the workers and handing them their sockets.
    pub spawn_ms: Option<f64>,
    /// Until every new worker said it was ready.
    pub ready_ms: Option<f64>,
    /// Until the retired generation's workers stopped accepting.
    pub drain_start_ms: Option<f64>,
}

/// How a retired generation's drain ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainResult {
    /// From the start of its drain until its last worker exited.
    pub seconds: f64,
    /// Connections open when it was killed (0 if it drained by itself).
    pub connections_cut: u64,
    /// The rule that killed it, if one did.
    pub killed_by: Option<KillReason>,
}

/// Why the master killed a draining generation: the `reason` label of
/// `river_draining_connections_cut_total` and `river_draining_workers_killed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// `drain-timeout-secs` reached (also a graceful shutdown's deadline).
    Deadline,
    /// `max-draining-generations`: making room for a new generation.
    GenerationCap,
    /// `draining-memory-limit-mb` exceeded.
    Memory,
}

impl KillReason {
    pub const ALL: [KillReason; 3] = [
        KillReason::Deadline,
        KillReason::GenerationCap,
        KillReason::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KillReason::Deadline => "deadline",
            KillReason::GenerationCap => "generation_cap",
            KillReason::Memory => "memory",
        }
    }
}

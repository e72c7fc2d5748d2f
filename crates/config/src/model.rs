//! The validated configuration. Everything here has already passed validation:
//! addresses parse, regexes compile, referenced files exist. The worker and the
//! master consume these types and never see KDL.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A complete, validated River configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub system: System,
    pub services: Vec<Service>,
}

/// The `system { ... }` block: River's own keys plus the supervisor's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    /// Worker processes; default: the number of CPUs.
    pub workers: usize,
    /// Threads of each worker's runtime; default 8 (River's default).
    pub threads_per_service: usize,
    pub daemonize: bool,
    pub pid_file: Option<PathBuf>,
    /// River's pingora-style takeover socket; accepted and currently unused.
    pub upgrade_socket: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// Workers drop to this user (and its primary group unless `group` is set).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Default 60.
    pub drain_timeout_secs: u64,
    /// Default 2.
    pub max_draining_generations: usize,
    /// Default: unset (no limit).
    pub draining_memory_limit_mb: Option<u64>,
    /// Default 10.
    pub worker_startup_timeout_secs: u64,
    /// listen(2) backlog for every listener; default 4096.
    pub listen_backlog: u32,
    /// One line per request; reopened on SIGUSR1. Default: none.
    pub access_log: Option<PathBuf>,
    /// Where the master serves `GET /metrics` (Prometheus text format): a TCP
    /// address or an absolute Unix socket path. Default: none (no listener).
    /// Read at start, like `control-socket`.
    #[serde(default)]
    pub metrics: Option<ListenAddress>,
    /// Connection handoff: a draining generation hands its idle plaintext
    /// HTTP/1 keep-alive connections and the upgraded connections River
    /// copies (WebSocket) to the serving generation instead of waiting for
    /// them to end. Default true; false is drain-only, as before.
    #[serde(default = "yes")]
    pub connection_handoff: bool,
}

fn yes() -> bool {
    true
}

/// One entry of `services { NAME { ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// At least one.
    pub listeners: Vec<Listener>,
    pub kind: ServiceKind,
    /// `timeouts { }`; nginx's defaults when absent.
    pub timeouts: Timeouts,
}

/// A service's `timeouts { }` block, in seconds. Each is a limit on waiting,
/// not on a whole exchange, except the request head's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// A whole request head, the wait for it on a keep-alive connection
    /// included (nginx's `client_header_timeout`). Default 60.
    pub client_header_secs: u64,
    /// Between two reads of a request body (`client_body_timeout`). Default 60.
    pub client_body_secs: u64,
    /// Connecting to an upstream (`proxy_connect_timeout`, 60 in nginx).
    /// Default 10: local upstreams that do not answer a SYN are down.
    pub upstream_connect_secs: u64,
    /// Between two reads of a response (`proxy_read_timeout`). Default 60.
    pub upstream_read_secs: u64,
    /// Between two writes of a request to an upstream (`proxy_send_timeout`).
    /// Default 60.
    pub upstream_send_secs: u64,
    /// Silence on an upgraded connection (WebSocket), in either direction.
    /// Default 3600, so WebSockets are not cut at 60 s.
    pub tunnel_idle_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            client_header_secs: 60,
            client_body_secs: 60,
            upstream_connect_secs: 10,
            upstream_read_secs: 60,
            upstream_send_secs: 60,
            tunnel_idle_secs: 3600,
        }
    }
}

/// What a service does with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceKind {
    /// `connectors { ... }` with optional `path-control` and `rate-limiting`.
    Proxy(ProxyService),
    /// `file-server { base-path "..." }`.
    FileServer(FileServer),
    /// `welcome-page` (River extension): the built-in page of the embedded default config.
    WelcomePage,
}

/// Where a listener accepts connections. Also the identity of a listening socket
/// across reloads: the same address means the same socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    /// A path: a Unix domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "{addr}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub address: ListenAddress,
    pub tls: Option<TlsListener>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsListener {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Default true.
    pub offer_h2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyService {
    pub load_balance: LoadBalance,
    /// At least one.
    pub upstreams: Vec<Upstream>,
    pub path_control: PathControl,
    pub rate_limiting: RateLimiting,
    /// `discovery "Dns"`: upstreams named in DNS, followed while running.
    /// None with `discovery "Static"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Box<Discovery>>,
}

/// `load-balance { discovery "Dns" ... }` and the names among the connectors.
/// With it, `upstreams` holds only the literal addresses and may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The DNS server to ask; None: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// A record's TTL is clamped to `[min_ttl_ms, max_ttl_ms]`. Default 1000.
    pub min_ttl_ms: u64,
    /// Default 60000.
    pub max_ttl_ms: u64,
    /// How long one resolution may take; a reload whose new names do not
    /// resolve within it is rejected. Default 2000.
    pub resolve_timeout_ms: u64,
    /// At least one.
    pub names: Vec<DiscoveredName>,
}

impl Discovery {
    pub const DEFAULT_MIN_TTL_MS: u64 = 1000;
    pub const DEFAULT_MAX_TTL_MS: u64 = 60_000;
    pub const DEFAULT_RESOLVE_TIMEOUT_MS: u64 = 2000;
}

/// A connector named in DNS, with the settings of its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredName {
    pub name: DnsName,
    pub tls_sni: Option<String>,
    pub proto: UpstreamProto,
}

/// What is looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DnsName {
    /// `"HOST:PORT"`: every A and AAAA address of HOST, on PORT.
    Host { host: String, port: u16 },
    /// `"_service._proto.name"`: the SRV records' targets, ports and weights
    /// (lowest priority only).
    Srv { name: String },
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsName::Host { host, port } => write!(f, "{host}:{port}"),
            DnsName::Srv { name } => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub address: SocketAddr,
    /// Set: connect with TLS and send this SNI.
    pub tls_sni: Option<String>,
    pub proto: UpstreamProto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpstreamProto {
    H1Only,
    H2Only,
    H2OrH1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalance {
    pub selection: Selection,
    pub health_check: HealthCheck,
}

impl Default for LoadBalance {
    fn default() -> Self {
        LoadBalance {
            selection: Selection::RoundRobin,
            health_check: HealthCheck::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    RoundRobin,
    Random,
    Fnv { key: SelectionKey },
    Ketama { key: SelectionKey },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectionKey {
    UriPath,
    SourceAddrAndUriPath,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheck {
    None,
    /// A TCP connect every `interval_ms`.
    Tcp {
        interval_ms: u64,
    },
    /// `GET path` every `interval_ms`; healthy on 2xx.
    Http {
        path: String,
        interval_ms: u64,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathControl {
    pub request_filters: Vec<RequestFilter>,
    pub upstream_request: Vec<HeaderFilter>,
    pub upstream_response: Vec<HeaderFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestFilter {
    /// Answer 403 to clients inside any of these networks (a bare address is a /32 or /128).
    BlockCidrRange { addrs: Vec<IpNet> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderFilter {
    /// Remove every header whose name matches `pattern` (an already-validated regex).
    RemoveHeaderKeyRegex { pattern: String },
    /// Set `key` to `value`, replacing any existing values.
    UpsertHeader { key: String, value: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiting {
    /// River's `timeout millis=N`: how long a request may wait for a token (unused by leaky buckets that reject).
    pub timeout_millis: Option<u64>,
    pub rules: Vec<RateRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    pub kind: RateRuleKind,
    pub max_buckets: usize,
    pub tokens_per_bucket: u64,
    pub refill_qty: u64,
    pub refill_rate_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateRuleKind {
    /// One bucket per client IP.
    SourceIp,
    /// One bucket per distinct URI path matching `pattern` (River's `specific-uri`, older `uri`).
    SpecificUri { pattern: String },
    /// One bucket shared by every URI path matching `pattern`.
    AnyMatchingUri { pattern: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileServer {
    pub base_path: PathBuf,
}

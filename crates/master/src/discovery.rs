//! Service discovery, the master's part: one resolver process per generation
//! whose config has `discovery "Dns"`, the last good set of each name, and
//! what to relay to the generation's workers.
//!
//! The master never reads DNS: the resolver (`river resolver`, unprivileged,
//! crate `river-discovery`) does, and sends typed answers that are checked
//! here (known service and name, bounded list, sorted unique addresses, valid
//! weights) before they are kept and relayed. A resolver that breaks the
//! protocol is killed and, like one that crashes, restarted with backoff; the
//! sets it gave stay. How a generation waits for the first pass and how sets
//! reach workers is in `supervisor/discovery.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use river_config::Config;
use river_ipc::{
    Channel, DiscoveredBackend, DiscoveredSet, DiscoveryStatus, FromResolver, IpcError,
    ResolverHello, ToResolver, MAX_DISCOVERED_BACKENDS, MAX_DISCOVERED_WEIGHT,
};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use crate::process::WorkerEvent;

/// The largest frame taken from a resolver: a full set is ~60 KiB of JSON.
const MAX_RESOLVER_FRAME: usize = 256 * 1024;
/// The longest error text kept from a resolver.
const MAX_ERROR_LEN: usize = 512;
/// A TTL or retry longer than this (a day) is a protocol violation.
const MAX_WAIT_MS: u64 = 86_400_000;
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// What a resolver's watcher reports to the master's loop.
#[derive(Debug)]
pub enum DiscoveryEvent {
    Message {
        generation: u64,
        pid: u32,
        message: FromResolver,
    },
    Exited {
        generation: u64,
        pid: u32,
        status: String,
    },
}

/// A running resolver; dropping this kills it.
struct ResolverProcess {
    pid: u32,
    _kill: oneshot::Sender<()>,
}

/// The last good set of one name, and what the resolver said last.
#[derive(Debug, Default)]
struct NameState {
    backends: Option<Vec<DiscoveredBackend>>,
    /// The generation-wide version this set was given when it changed.
    version: u64,
    next_lookup: Option<Instant>,
    last_error: Option<String>,
    /// Carried over from the previous generation (did not resolve at start).
    inherited: bool,
}

/// A generation's discovery state.
pub struct GenerationDiscovery {
    generation: u64,
    config: Arc<Config>,
    /// Every (service, name) of the config, in config order.
    names: BTreeMap<(String, String), NameState>,
    order: Vec<(String, String)>,
    /// The resolver address of each name's service: a set is inherited only
    /// by the same name asked of the same server.
    servers: BTreeMap<String, Option<std::net::SocketAddr>>,
    resolver: Option<ResolverProcess>,
    first_pass_done: bool,
    failures: u32,
    restart_at: Option<Instant>,
    /// Stopped for good (the generation drains).
    stopped: bool,
    version: u64,
}

/// What a resolver's message means for the generation.
pub enum Outcome {
    Nothing,
    /// This name's set changed: relay it.
    Changed(DiscoveredSet),
    FirstPassDone,
    /// The resolver broke the protocol and was killed.
    Invalid,
}

impl GenerationDiscovery {
    /// No name yet, no resolver started.
    fn empty(generation: u64, config: Arc<Config>) -> GenerationDiscovery {
        GenerationDiscovery {
            generation,
            config,
            names: BTreeMap::new(),
            order: Vec::new(),
            servers: BTreeMap::new(),
            resolver: None,
            first_pass_done: false,
            failures: 0,
            restart_at: None,
            stopped: false,
            version: 0,
        }
    }

    /// The discovery of a generation of `config`, or None if it has no name
    /// to discover. Starts its resolver.
    pub fn start(
        generation: u64,
        config: &Config,
        events: &UnboundedSender<WorkerEvent>,
    ) -> Option<GenerationDiscovery> {
        let tasks = river_discovery::tasks(config);
        if tasks.is_empty() {
            return None;
        }
        let mut discovery = GenerationDiscovery::empty(generation, Arc::new(config.clone()));
        for task in tasks {
            let key = (task.service.clone(), task.name.to_string());
            discovery
                .servers
                .insert(task.service.clone(), task.settings.resolver);
            discovery.order.push(key.clone());
            discovery.names.insert(key, NameState::default());
        }
        discovery.spawn(events);
        Some(discovery)
    }

    pub fn first_pass_done(&self) -> bool {
        self.first_pass_done
    }

    fn pid(&self) -> Option<u32> {
        self.resolver.as_ref().map(|r| r.pid)
    }

    fn spawn(&mut self, events: &UnboundedSender<WorkerEvent>) {
        match spawn_resolver(self.generation, &self.config, events.clone()) {
            Ok(process) => {
                tracing::info!(
                    generation = self.generation,
                    pid = process.pid,
                    "resolver started"
                );
                self.resolver = Some(process);
            }
            Err(err) => {
                tracing::error!(
                    generation = self.generation,
                    "cannot start the resolver: {err}"
                );
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        let delay = crate::process::restart_delay(self.failures, MAX_RESTART_DELAY);
        self.failures += 1;
        self.restart_at = Some(Instant::now() + delay);
    }

    /// Restart a resolver that died, when its backoff is over.
    pub fn restart_if_due(&mut self, now: Instant, events: &UnboundedSender<WorkerEvent>) {
        if self.stopped || self.resolver.is_some() || self.restart_at.is_none_or(|at| now < at) {
            return;
        }
        self.restart_at = None;
        self.spawn(events);
    }

    /// The generation drains: its workers keep the sets they have.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.restart_at = None;
        if let Some(resolver) = self.resolver.take() {
            tracing::info!(
                generation = self.generation,
                pid = resolver.pid,
                "stopping the resolver"
            );
        }
    }

    /// The resolver `pid` exited.
    pub fn on_exit(&mut self, pid: u32, status: &str) {
        if self.pid() != Some(pid) {
            return;
        }
        self.resolver = None;
        if self.stopped {
            return;
        }
        tracing::warn!(
            generation = self.generation,
            pid,
            status,
            "resolver died: restarting it"
        );
        self.schedule_restart();
    }

    /// A message from resolver `pid`.
    pub fn on_message(&mut self, pid: u32, message: FromResolver) -> Outcome {
        if self.pid() != Some(pid) {
            return Outcome::Nothing;
        }
        match self.check(message) {
            Ok(outcome) => outcome,
            Err(why) => {
                tracing::error!(
                    generation = self.generation,
                    pid,
                    "resolver broke the protocol ({why}): killing it"
                );
                self.resolver = None;
                self.schedule_restart();
                Outcome::Invalid
            }
        }
    }

    fn check(&mut self, message: FromResolver) -> Result<Outcome, String> {
        let now = Instant::now();
        match message {
            FromResolver::FirstPassDone => {
                if self.first_pass_done {
                    return Ok(Outcome::Nothing);
                }
                self.first_pass_done = true;
                Ok(Outcome::FirstPassDone)
            }
            FromResolver::Failed {
                service,
                name,
                error,
                retry_ms,
            } => {
                let state = self
                    .names
                    .get_mut(&(service.clone(), name.clone()))
                    .ok_or_else(|| format!("unknown name `{name}` of service `{service}`"))?;
                if retry_ms > MAX_WAIT_MS {
                    return Err(format!("retry in {retry_ms} ms"));
                }
                let mut error = error;
                if error.len() > MAX_ERROR_LEN {
                    let mut cut = MAX_ERROR_LEN;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                }
                state.last_error = Some(error);
                state.next_lookup = Some(now + Duration::from_millis(retry_ms));
                Ok(Outcome::Nothing)
            }
            FromResolver::Resolved {
                service,
                name,
                backends,
                ttl_ms,
            } => {
                let key = (service.clone(), name.clone());
                if !self.names.contains_key(&key) {
                    return Err(format!("unknown name `{name}` of service `{service}`"));
                }
                check_set(&backends)?;
                if ttl_ms > MAX_WAIT_MS {
                    return Err(format!("TTL of {ttl_ms} ms"));
                }
                let changed = {
                    let state = &self.names[&key];
                    state.backends.as_ref() != Some(&backends)
                };
                if changed {
                    self.version += 1;
                }
                let version = self.version;
                let state = self.names.get_mut(&key).expect("checked above");
                state.last_error = None;
                state.next_lookup = Some(now + Duration::from_millis(ttl_ms));
                if !changed {
                    return Ok(Outcome::Nothing);
                }
                state.backends = Some(backends.clone());
                state.version = version;
                state.inherited = false;
                Ok(Outcome::Changed(DiscoveredSet {
                    service,
                    name,
                    version,
                    backends,
                }))
            }
        }
    }

    /// After the first pass: names still without a set take the serving
    /// generation's (`previous`) set of the same name, if it has one.
    pub fn inherit(&mut self, previous: Option<&GenerationDiscovery>) {
        let Some(previous) = previous else {
            return;
        };
        for (key, state) in &mut self.names {
            if state.backends.is_some() {
                continue;
            }
            let same_server = previous.servers.get(&key.0) == self.servers.get(&key.0);
            let Some(old) = previous.names.get(key) else {
                continue;
            };
            if let (true, Some(backends)) = (same_server, &old.backends) {
                self.version += 1;
                state.backends = Some(backends.clone());
                state.version = self.version;
                state.inherited = true;
            }
        }
    }

    /// Names with no set at all, and why: `(service, name, last error)`.
    pub fn unresolved(&self) -> Vec<(String, String, String)> {
        self.order
            .iter()
            .filter_map(|key| {
                let state = &self.names[key];
                state.backends.is_none().then(|| {
                    (
                        key.0.clone(),
                        key.1.clone(),
                        state
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "no answer".into()),
                    )
                })
            })
            .collect()
    }

    /// Every known set, in config order: what a worker that starts serving
    /// is sent first.
    /// (service, name, backends now) for every name (metrics).
    pub fn backend_counts(&self) -> Vec<(String, String, u64)> {
        self.names
            .iter()
            .map(|((service, name), state)| {
                let n = state.backends.as_ref().map_or(0, |b| b.len() as u64);
                (service.clone(), name.clone(), n)
            })
            .collect()
    }

    pub fn sets(&self) -> Vec<DiscoveredSet> {
        self.order
            .iter()
            .filter_map(|key| {
                let state = &self.names[key];
                state.backends.as_ref().map(|backends| DiscoveredSet {
                    service: key.0.clone(),
                    name: key.1.clone(),
                    version: state.version,
                    backends: backends.clone(),
                })
            })
            .collect()
    }

    pub fn status(&self) -> Vec<DiscoveryStatus> {
        let now = Instant::now();
        self.order
            .iter()
            .map(|key| {
                let state = &self.names[key];
                DiscoveryStatus {
                    service: key.0.clone(),
                    name: key.1.clone(),
                    backends: state.backends.clone().unwrap_or_default(),
                    ttl_left_ms: state
                        .next_lookup
                        .map(|at| at.saturating_duration_since(now).as_millis() as u64),
                    last_error: state.last_error.clone(),
                    inherited: state.inherited,
                }
            })
            .collect()
    }
}

/// A set as the workers expect it: at most MAX_DISCOVERED_BACKENDS, sorted
/// by address without duplicates, ports not 0, weights in 1..=MAX.
fn check_set(backends: &[DiscoveredBackend]) -> Result<(), String> {
    if backends.len() > MAX_DISCOVERED_BACKENDS {
        return Err(format!("{} backends", backends.len()));
    }
    if backends.windows(2).any(|w| w[0].address >= w[1].address) {
        return Err("backends not sorted or duplicated".into());
    }
    for backend in backends {
        if backend.address.port() == 0 {
            return Err(format!("backend {} has port 0", backend.address));
        }
        if backend.weight == 0 || backend.weight > MAX_DISCOVERED_WEIGHT {
            return Err(format!("weight {}", backend.weight));
        }
    }
    Ok(())
}

/// Start `river resolver` for `generation`, as a worker is started: this
/// binary re-executed with one inherited descriptor, its end of a socketpair.
fn spawn_resolver(
    generation: u64,
    config: &Arc<Config>,
    events: UnboundedSender<WorkerEvent>,
) -> std::io::Result<ResolverProcess> {
    // The master's exit must not leave a resolver behind: kill on drop.
    let (child, master_end) = crate::process::spawn_with_ipc(
        "resolver",
        format!("river: resolver (generation {generation})"),
        true,
    )?;
    let pid = child.id().unwrap_or(0);
    let channel = Channel::with_max_frame_len(master_end, MAX_RESOLVER_FRAME)?;
    let (kill, killed) = oneshot::channel();
    let hello = ToResolver::Hello(Box::new(ResolverHello {
        generation,
        config: Config::clone(config),
    }));
    tokio::spawn(watch(
        generation, pid, child, channel, hello, killed, events,
    ));
    Ok(ResolverProcess { pid, _kill: kill })
}

/// A resolver's life: its Hello goes out, its messages and its exit are
/// reported; it is killed when its `ResolverProcess` is dropped.
async fn watch(
    generation: u64,
    pid: u32,
    mut child: tokio::process::Child,
    channel: Channel,
    hello: ToResolver,
    mut killed: oneshot::Receiver<()>,
    events: UnboundedSender<WorkerEvent>,
) {
    let report = |message| {
        let _ = events.send(WorkerEvent::Discovery(DiscoveryEvent::Message {
            generation,
            pid,
            message,
        }));
    };
    let mut listening = true;
    let mut kill_sent = false;
    if let Err(err) = channel.send(&hello, &[]).await {
        tracing::warn!(pid, error = %err, "cannot send the resolver its configuration: killing it");
        let _ = child.start_kill();
        kill_sent = true;
    }
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = crate::process::exit_text(status);
                let _ = events.send(WorkerEvent::Discovery(DiscoveryEvent::Exited { generation, pid, status }));
                return;
            }
            _ = &mut killed, if !kill_sent => {
                kill_sent = true;
                let _ = child.start_kill();
            }
            message = channel.recv::<FromResolver>(), if listening => match message {
                Ok(Some((message, _))) => report(message),
                Ok(None) | Err(IpcError::Io(_)) => listening = false,
                Err(err) => {
                    tracing::error!(pid, error = %err, "bad frame from the resolver: killing it");
                    listening = false;
                    kill_sent = true;
                    let _ = child.start_kill();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str, weight: u16) -> DiscoveredBackend {
        DiscoveredBackend {
            address: s.parse().unwrap(),
            weight,
        }
    }

    fn discovery() -> GenerationDiscovery {
        let mut d = GenerationDiscovery::empty(2, Arc::new(river_config::embedded_default()));
        for name in ["a.test:80", "b.test:80"] {
            let key = ("S".to_string(), name.to_string());
            d.order.push(key.clone());
            d.names.insert(key, NameState::default());
        }
        d.servers.insert("S".into(), None);
        d
    }

    fn resolved(name: &str, backends: Vec<DiscoveredBackend>) -> FromResolver {
        FromResolver::Resolved {
            service: "S".into(),
            name: name.into(),
            backends,
            ttl_ms: 1000,
        }
    }

    #[test]
    fn sets_are_checked_kept_and_versioned() {
        let mut d = discovery();
        let set = vec![b("127.0.0.2:80", 1), b("127.0.0.3:80", 3)];
        let Ok(Outcome::Changed(first)) = d.check(resolved("a.test:80", set.clone())) else {
            panic!("a new set is relayed");
        };
        assert_eq!(first.version, 1);
        // The same again: nothing to relay.
        assert!(matches!(
            d.check(resolved("a.test:80", set)),
            Ok(Outcome::Nothing)
        ));
        // A failure keeps the set.
        let failed = FromResolver::Failed {
            service: "S".into(),
            name: "a.test:80".into(),
            error: "x".repeat(5000),
            retry_ms: 500,
        };
        assert!(matches!(d.check(failed), Ok(Outcome::Nothing)));
        assert_eq!(d.sets().len(), 1);
        let status = d.status();
        assert_eq!(status[0].backends.len(), 2);
        assert_eq!(status[0].last_error.as_ref().unwrap().len(), MAX_ERROR_LEN);
        assert_eq!(d.unresolved().len(), 1);
        assert_eq!(d.unresolved()[0].1, "b.test:80");
        // Invalid answers.
        for bad in [
            resolved("c.test:80", vec![b("127.0.0.2:80", 1)]),
            resolved(
                "a.test:80",
                vec![b("127.0.0.3:80", 1), b("127.0.0.2:80", 1)],
            ),
            resolved(
                "a.test:80",
                vec![b("127.0.0.2:80", 1), b("127.0.0.2:80", 1)],
            ),
            resolved("a.test:80", vec![b("127.0.0.2:0", 1)]),
            resolved("a.test:80", vec![b("127.0.0.2:80", 0)]),
            resolved(
                "a.test:80",
                vec![b("127.0.0.2:80", MAX_DISCOVERED_WEIGHT + 1)],
            ),
        ] {
            assert!(d.check(bad).is_err());
        }
    }

    #[test]
    fn unresolved_names_inherit_the_serving_generation_s_set() {
        let mut old = discovery();
        assert!(old
            .check(resolved("b.test:80", vec![b("127.0.0.9:80", 1)]))
            .is_ok());
        let mut new = discovery();
        assert!(new
            .check(resolved("a.test:80", vec![b("127.0.0.2:80", 1)]))
            .is_ok());
        new.inherit(Some(&old));
        assert!(new.unresolved().is_empty());
        let status = new.status();
        assert!(!status[0].inherited && status[1].inherited);
        // A different resolver: nothing inherited.
        let mut other = discovery();
        other
            .servers
            .insert("S".into(), Some("127.0.0.1:5353".parse().unwrap()));
        other.inherit(Some(&old));
        assert_eq!(other.unresolved().len(), 2);
    }
}

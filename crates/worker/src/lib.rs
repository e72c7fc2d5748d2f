//! River's worker process: receives its generation's config and listening
//! sockets from the master, drops privileges, serves them with pingora, and
//! drains on request or when the master goes away.

/// pingora's per-connection traits (`UniqueID` and the digests) for a wrapper
/// around a stream in its field `$field`, passed straight through.
macro_rules! delegate_connection_info {
    ($wrapper:ty, $field:ident) => {
        delegate_connection_info!($wrapper, $field, without socket digest);

        impl pingora_core::protocols::GetSocketDigest for $wrapper {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::SocketDigest>> {
                self.$field.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora_core::protocols::SocketDigest) {
                self.$field.set_socket_digest(digest)
            }
        }
    };
    ($wrapper:ty, $field:ident, without socket digest) => {
        impl pingora_core::protocols::UniqueID for $wrapper {
            fn id(&self) -> pingora_core::protocols::UniqueIDType {
                self.$field.id()
            }
        }

        impl pingora_core::protocols::GetTimingDigest for $wrapper {
            fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
                self.$field.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.$field.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.$field.get_write_pending_time()
            }
        }

        impl pingora_core::protocols::GetProxyDigest for $wrapper {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
                self.$field.get_proxy_digest()
            }

            fn set_proxy_digest(
                &mut self,
                digest: pingora_core::protocols::raw_connect::ProxyDigest,
            ) {
                self.$field.set_proxy_digest(digest)
            }
        }
    };
}

mod access_log;
mod adopt;
mod content;
mod discovery;
mod front;
mod handoff;
mod http1;
mod listen;
mod policy;
mod privileges;
mod proxy;
mod service;
mod stats;
mod tunnel;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::server::configuration::ServerConf;
use river_config::ListenAddress;
use river_ipc::{Channel, FromWorker, Hello, IpcError, ToWorker};
use tokio::sync::watch;

use front::Front;
use listen::balance::Board;
use listen::{accept, tls};
use service::Service;

pub use privileges::{drop_privileges, Outcome as PrivilegeOutcome, PrivilegeError};
pub use service::BuildError;

/// How often a worker tells the master how many connections it holds.
const LOAD_REPORT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("master channel: {0}")]
    Ipc(#[from] IpcError),
    #[error("the master closed the channel before saying hello")]
    NoHello,
    #[error("expected Hello as the first message, got {0}")]
    UnexpectedFirstMessage(String),
    #[error("hello needs {expected} descriptors but carries {fds}")]
    FdMismatch { expected: usize, fds: usize },
    #[error("no socket was sent for listener {0}")]
    MissingListener(ListenAddress),
    #[error("dropping privileges: {0}")]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("connection counter: {0}")]
    Board(#[from] listen::balance::BoardError),
    #[error("start-up failure injected by the test hook ({0} exists)")]
    FaultInjected(String),
}

/// Run a worker on `ipc`, its end of the master's socketpair. Returns when the
/// worker has drained; the caller exits the process.
pub fn run(ipc: OwnedFd) -> Result<(), WorkerError> {
    // The Hello decides how many threads to run, so read it on a throwaway
    // runtime, keeping a duplicate of the channel's descriptor for the real one.
    // Nothing follows the Hello until we say Ready, so no buffered bytes are lost.
    let keep = ipc.try_clone()?;
    let hello_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (hello, fds) = hello_runtime.block_on(receive_hello(ipc))?;
    drop(hello_runtime);

    let threads = hello.config.system.threads_per_service.max(1);
    // One thread: a current-thread runtime, as an nginx worker is one event
    // loop. A work-stealing runtime of one thread pays for cross-thread
    // wake-ups that never help.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .thread_name(format!(
            "river-g{}w{}",
            hello.generation, hello.worker_index
        ))
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(hello, fds, keep));
    // Tasks still parked on idle keep-alive reads are abandoned with the process.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn receive_hello(ipc: OwnedFd) -> Result<(Hello, Vec<OwnedFd>), WorkerError> {
    let channel = Channel::new(ipc)?;
    match channel.recv::<ToWorker>().await? {
        None => Err(WorkerError::NoHello),
        Some((ToWorker::Hello(hello), fds)) => Ok((*hello, fds)),
        Some((other, _)) => Err(WorkerError::UnexpectedFirstMessage(format!("{other:?}"))),
    }
}

async fn serve(hello: Hello, fds: Vec<OwnedFd>, ipc: OwnedFd) -> Result<(), WorkerError> {
    let channel = Arc::new(Channel::new(ipc)?);
    slow_start_injected().await;
    let started = match fault_injected() {
        Some(err) => Err(err),
        None => start(&hello, fds).await,
    };
    match started {
        Ok(running) => {
            stop_if_asked(hello.worker_index);
            channel
                .send(
                    &FromWorker::Ready {
                        pid: std::process::id(),
                    },
                    &[],
                )
                .await?;
            tracing::info!(
                generation = hello.generation,
                worker = hello.worker_index,
                "worker ready"
            );
            supervise(running, &channel).await
        }
        Err(err) => {
            // Best effort: the master also notices the exit.
            let _ = channel
                .send(
                    &FromWorker::Failed {
                        error: err.to_string(),
                    },
                    &[],
                )
                .await;
            Err(err)
        }
    }
}

/// Fault injection for the rollback tests: when $RIVER_TEST_FAIL_WORKER_START
/// names a file that exists, workers fail start-up. Nothing else reads it.
fn fault_injected() -> Option<WorkerError> {
    let path = std::env::var_os("RIVER_TEST_FAIL_WORKER_START")?;
    std::path::Path::new(&path)
        .exists()
        .then(|| WorkerError::FaultInjected(path.to_string_lossy().into_owned()))
}

/// Fault injection for the two-phase start tests: when
/// $RIVER_TEST_STOP_WORKER_START names a file that holds this worker's index,
/// the worker stops itself (SIGSTOP) before saying Ready, as an operator's
/// `kill -STOP` or a machine under swap would. Nothing else reads it.
fn stop_if_asked(worker_index: usize) {
    let Some(path) = std::env::var_os("RIVER_TEST_STOP_WORKER_START") else {
        return;
    };
    let asked = std::fs::read_to_string(path)
        .ok()
        .and_then(|index| index.trim().parse::<usize>().ok());
    if asked == Some(worker_index) {
        tracing::warn!(worker_index, "stopping before Ready (test hook)");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// A listener and the service that answers on it, waiting for `Serve`.
type PendingListener = (
    accept::Inherited,
    Arc<tls::Endpoint<Front>>,
    stats::ServiceStats,
);

/// Slow start for the metrics tests: while $RIVER_TEST_SLOW_WORKER_START
/// names a file that exists, workers wait before starting (so no generation
/// serves yet). Nothing else reads it.
async fn slow_start_injected() {
    let Some(path) = std::env::var_os("RIVER_TEST_SLOW_WORKER_START") else {
        return;
    };
    while std::path::Path::new(&path).exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fault injection for the handoff tests: while $RIVER_TEST_HOLD_ADOPT
/// names a file that exists, a worker told to adopt connections holds them
/// without answering (so that a test can kill it mid-handoff, or let the
/// master's deadline pass). Nothing else reads it.
async fn adopt_held_by_test() {
    let Some(path) = std::env::var_os("RIVER_TEST_HOLD_ADOPT") else {
        return;
    };
    let path = std::path::Path::new(&path);
    if path.exists() {
        tracing::warn!(
            pid = std::process::id(),
            "holding a handoff batch (test hook)"
        );
    }
    while path.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a started worker holds: the switches that stop it.
struct Running {
    /// Adopted listeners, accepted on once the master says `Serve`.
    pending: Vec<PendingListener>,
    /// Finish once their listener copies are closed.
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
    stop_rx: watch::Receiver<bool>,
    shutdown_rx: watch::Receiver<bool>,
    /// Stops the accept loops (their listener copies close).
    stop_accepting: watch::Sender<bool>,
    /// pingora's shutdown flag: next responses carry `Connection: close`.
    shutdown: watch::Sender<bool>,
    connections: accept::ConnectionCount,
    apps: Vec<Arc<Front>>,
    /// Services with `discovery "Dns"`: where relayed sets are applied.
    discovery: discovery::Registry,
    /// Connection handoff (`connection-handoff true`): the hub connections
    /// offer themselves to while draining, and the collector batching them.
    handoff: Option<(Arc<handoff::Handoff>, handoff::Collector)>,
    /// Connections other workers hand to this one.
    adopter: adopt::Adopter,
}

async fn start(hello: &Hello, mut fds: Vec<OwnedFd>) -> Result<Running, WorkerError> {
    let expected = hello.listeners.len()
        + usize::from(hello.access_log)
        + usize::from(hello.balance)
        + usize::from(hello.stats);
    if fds.len() != expected {
        return Err(WorkerError::FdMismatch {
            expected,
            fds: fds.len(),
        });
    }
    // The stats board, when there is one, travels last (metrics).
    let stats_fd = hello.stats.then(|| fds.pop()).flatten();
    let stats = stats::Stats::map(stats_fd, &hello.config, hello.worker_index)?;
    // The balance board, when there is one, comes before it. Without it, the
    // worker still serves; connections may just spread less evenly.
    let board = match hello.balance.then(|| fds.pop()).flatten() {
        Some(fd) => {
            Board::map(fd, hello.config.system.workers, hello.worker_index).or_else(|err| {
                tracing::warn!("accepting without the balance board: {err}");
                Board::alone()
            })
        }
        None => Board::alone(),
    }?;
    // The access log, when there is one, travels after the listeners.
    let access_log = match hello.access_log.then(|| fds.pop()).flatten() {
        Some(fd) => Some(access_log::AccessLog::install(std::fs::File::from(fd))?),
        None => None,
    };
    let mut sockets: HashMap<&ListenAddress, OwnedFd> = hello.listeners.iter().zip(fds).collect();

    let system = &hello.config.system;
    match drop_privileges(system.user.as_deref(), system.group.as_deref())? {
        PrivilegeOutcome::Dropped { uid, gid } => tracing::info!(uid, gid, "dropped privileges"),
        PrivilegeOutcome::NotRoot => tracing::debug!("not root: `user` has no effect"),
        PrivilegeOutcome::NotRequested => {}
    }

    let server_conf = Arc::new(ServerConf {
        threads: system.threads_per_service,
        ..ServerConf::default()
    });

    let (stop_accepting, stop_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let connections = accept::ConnectionCount::new(board);
    let mut apps = Vec::new();
    let mut loops = Vec::new();
    let mut discovered = discovery::Registry::default();
    let handoff = system.connection_handoff.then(handoff::Handoff::new);
    let hub = handoff.as_ref().map(|(hub, _)| hub.clone());
    let mut adopter = adopt::Adopter::new(connections.clone(), shutdown_rx.clone());
    for (index, service) in hello.config.services.iter().enumerate() {
        let service_stats = stats.service(index, service);
        let compiled = Arc::new(Service::build(
            service,
            access_log.clone(),
            service_stats.clone(),
        )?);
        tracing::debug!(service = %compiled.name, "service built");
        let upstreams = compiled.upstreams();
        let app = Arc::new(Front::new(compiled, &server_conf, hub.clone()));
        discovered.register(service, upstreams, app.clone());
        if hub.is_some() {
            adopter.add_service(
                &service.name,
                adopt::Target {
                    front: app.clone(),
                    stats: service_stats.clone(),
                    plain: service
                        .listeners
                        .iter()
                        .filter(|l| l.tls.is_none())
                        .map(|l| l.address.clone())
                        .collect(),
                },
            );
        }
        for listener in &service.listeners {
            let fd = sockets
                .remove(&listener.address)
                .ok_or_else(|| WorkerError::MissingListener(listener.address.clone()))?;
            // An unusable certificate fails start-up, naming the listener.
            let acceptor = match &listener.tls {
                Some(settings) => Some(
                    tls::acceptor(&listener.address, &hello.tls, settings.offer_h2)
                        .map_err(BuildError::from)?,
                ),
                None => None,
            };
            let endpoint = Arc::new(tls::Endpoint::new(app.clone(), acceptor));
            loops.push((
                accept::Inherited::adopt(&listener.address, fd)?,
                endpoint,
                service_stats.clone(),
            ));
        }
        apps.push(app);
    }
    Ok(Running {
        pending: loops,
        accept_loops: Vec::new(),
        stop_rx,
        shutdown_rx,
        stop_accepting,
        shutdown,
        connections,
        apps,
        discovery: discovered,
        handoff: handoff.map(|(hub, offers)| (hub, handoff::Collector::new(offers))),
        adopter,
    })
}

/// Serve until told to drain (or the master disappears), then wait for the
/// last connection to finish. The channel is read throughout, so a graceful
/// shutdown reaches a worker that is already draining.
async fn supervise(mut running: Running, channel: &Channel) -> Result<(), WorkerError> {
    let mut report = tokio::time::interval(LOAD_REPORT_INTERVAL);
    let mut idle_check = tokio::time::interval(Duration::from_millis(20));
    let mut draining = false;
    let mut master_alive = true;
    // With handoff, `Draining` waits for the first round of offers (so the
    // reload's answer can say how many moved): since when.
    let mut draining_unsaid: Option<tokio::time::Instant> = None;
    loop {
        let gather = running.handoff.as_ref().and_then(|(_, c)| c.due());
        tokio::select! {
            message = channel.recv::<ToWorker>(), if master_alive => match message {
                Ok(Some((ToWorker::Drain { deadline_secs }, _))) => {
                    tracing::info!(deadline_secs, "draining");
                    running.begin_drain();
                    draining = true;
                    running.begin_handoff();
                    // The master answers the reload once every old worker says
                    // this: from then on, fresh connections see the new config.
                    running.stopped_accepting().await;
                    if running.handoff.is_some() {
                        draining_unsaid = Some(tokio::time::Instant::now());
                    } else if channel.send(&FromWorker::Draining, &[]).await.is_err() {
                        master_alive = false;
                        running.master_gone().await;
                    }
                }
                Ok(Some((ToWorker::Quit, _))) => {
                    tracing::info!("graceful shutdown");
                    running.begin_drain();
                    running.no_more_handoff(false);
                    running.close_idle().await;
                    draining = true;
                }
                Ok(Some((ToWorker::ReopenLogs, fds))) => {
                    // The master opened the file anew (it may be root-only).
                    if let Some(fd) = fds.into_iter().next() {
                        access_log::reopen(std::fs::File::from(fd)).await;
                    }
                }
                Ok(Some((ToWorker::Serve, _))) => {
                    if !draining {
                        running.start_accepting();
                    }
                }
                Ok(Some((ToWorker::Hello(_), _))) => tracing::warn!("ignoring a second Hello"),
                Ok(Some((ToWorker::Discovered(set), _))) => running.discovery.apply(set),
                Ok(Some((ToWorker::Adopt { batch, conns }, fds))) => {
                    adopt_held_by_test().await;
                    let accepted = if running.can_adopt() {
                        running.adopter.adopt(batch, conns, fds)
                    } else {
                        vec![false; conns.len()]
                    };
                    let adopted = FromWorker::Adopted { batch, accepted };
                    if channel.send(&adopted, &[]).await.is_err() {
                        master_alive = false;
                        running.master_gone().await;
                        draining = true;
                    }
                }
                Ok(Some((ToWorker::AdoptOutcome { batch, commit }, _))) => {
                    running.adopter.settle(batch, commit);
                }
                Ok(Some((ToWorker::HandoffResult { batch, accepted }, _))) => {
                    if let Some((_, collector)) = &mut running.handoff {
                        collector.answered(batch, &accepted);
                    }
                }
                Ok(None) | Err(_) => {
                    // Nobody will take over these connections: close idle ones now.
                    tracing::warn!("master went away: draining");
                    master_alive = false;
                    running.master_gone().await;
                    draining = true;
                }
            },
            Some(offer) = next_offer(&mut running.handoff) => {
                if let Some((_, collector)) = &mut running.handoff {
                    collector.queue(offer);
                }
                if !running.send_batches(channel, false).await {
                    master_alive = false;
                    running.master_gone().await;
                    draining = true;
                }
            }
            _ = sleep_until(gather), if gather.is_some() => {
                if !running.send_batches(channel, true).await {
                    master_alive = false;
                    running.master_gone().await;
                    draining = true;
                }
            }
            _ = tokio::time::sleep(FIRST_ROUND_CHECK), if draining_unsaid.is_some() && master_alive => {
                let since = draining_unsaid.unwrap_or_else(tokio::time::Instant::now);
                if running.first_round_done(since.elapsed()) {
                    draining_unsaid = None;
                    // Where the connections stand after the first round,
                    // then the acknowledgement the reload's answer waits for.
                    let load = FromWorker::Load { connections: running.connections.get() };
                    if channel.send(&load, &[]).await.is_err()
                        || channel.send(&FromWorker::Draining, &[]).await.is_err()
                    {
                        master_alive = false;
                        running.master_gone().await;
                    }
                }
            }
            _ = report.tick(), if master_alive => {
                let load = FromWorker::Load { connections: running.connections.get() };
                if channel.send(&load, &[]).await.is_err() {
                    tracing::warn!("master went away: draining");
                    master_alive = false;
                    running.master_gone().await;
                    draining = true;
                }
            }
            _ = idle_check.tick(), if draining => {
                if running.connections.get() == 0 && running.handoff_idle() {
                    tracing::info!("drained");
                    return Ok(());
                }
            }
        }
    }
}

/// How often a draining worker checks whether its first handoff round is over.
const FIRST_ROUND_CHECK: Duration = Duration::from_millis(5);
/// The first round is over once no offer is out and this long has passed
/// (every idle connection was woken at once)...
const FIRST_ROUND_MIN: Duration = Duration::from_millis(10);
/// ... or, at the latest, after this long (the master's answer to the
/// reload does not wait longer than a second anyway).
const FIRST_ROUND_MAX: Duration = Duration::from_millis(800);

/// The next connection offered for handoff (never, without handoff).
async fn next_offer(
    handoff: &mut Option<(Arc<handoff::Handoff>, handoff::Collector)>,
) -> Option<handoff::Offer> {
    match handoff {
        Some((_, collector)) => collector.next_offer().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Running {
    /// The whole generation is ready: accept on every listener.
    fn start_accepting(&mut self) {
        for (listener, app, service_stats) in self.pending.drain(..) {
            self.accept_loops.push(tokio::spawn(accept::accept_loop(
                listener,
                app,
                self.stop_rx.clone(),
                self.shutdown_rx.clone(),
                self.connections.clone(),
                service_stats,
            )));
        }
        tracing::info!("serving");
    }

    /// Stop accepting (this worker's listener copies close; the master's keep
    /// the queue for the next generation) and answer the next request on each
    /// keep-alive connection with `Connection: close`. Idle connections stay
    /// until their client's next request or their idle timeout: closing them now
    /// would race with a request the client is sending.
    fn begin_drain(&mut self) {
        // Listeners never served on close here.
        self.pending.clear();
        let _ = self.stop_accepting.send(true);
        let _ = self.shutdown.send(true);
        for app in &self.apps {
            app.begin_drain();
        }
    }

    /// Wait until no accept loop runs any more.
    async fn stopped_accepting(&mut self) {
        for accept_loop in self.accept_loops.drain(..) {
            let _ = accept_loop.await;
        }
    }

    /// Close connections parked between keep-alive requests, for when no
    /// generation takes over (shutdown, master gone).
    async fn close_idle(&self) {
        for app in &self.apps {
            app.cleanup().await;
        }
    }

    /// Draining with handoff: idle connections and tunnels offer themselves.
    fn begin_handoff(&self) {
        if let Some((hub, _)) = &self.handoff {
            hub.activate();
            for app in &self.apps {
                app.wake_idle();
            }
        }
    }

    /// The master is gone: nothing can move, nothing held can be committed.
    async fn master_gone(&mut self) {
        self.begin_drain();
        self.no_more_handoff(true);
        self.adopter.drop_held();
        self.close_idle().await;
    }

    /// No generation will take connections over from now on (graceful
    /// shutdown; `master_gone`: not even batches already sent).
    fn no_more_handoff(&mut self, master_gone: bool) {
        if let Some((hub, collector)) = &mut self.handoff {
            hub.close();
            collector.refuse_all(master_gone);
        }
    }

    /// Whether connections may be adopted: handoff is on and possible.
    fn can_adopt(&self) -> bool {
        self.handoff.as_ref().is_some_and(|(hub, _)| hub.possible())
    }

    /// Send every batch that is due (all queued ones with `now`); false if
    /// the master is gone.
    async fn send_batches(&mut self, channel: &Channel, now: bool) -> bool {
        let Some((_, collector)) = &mut self.handoff else {
            return true;
        };
        while let Some(batch) = collector.take_batch(now) {
            let fds: Vec<std::os::fd::BorrowedFd<'_>> =
                batch.fds.iter().map(std::os::fd::AsFd::as_fd).collect();
            let message = FromWorker::Handoff {
                batch: batch.batch,
                conns: batch.conns,
            };
            if let Err(err) = channel.send(&message, &fds).await {
                tracing::warn!(error = %err, "cannot send a handoff batch");
                collector.unsent(batch.batch);
                return false;
            }
            // Our duplicates close here; the connections' own stay open.
        }
        true
    }

    /// The first handoff round after `Drain` is over (`since` ago).
    fn first_round_done(&self, since: Duration) -> bool {
        let quiet = self
            .handoff
            .as_ref()
            .is_none_or(|(hub, collector)| hub.in_progress() == 0 && collector.is_idle());
        (quiet && since >= FIRST_ROUND_MIN) || since >= FIRST_ROUND_MAX
    }

    /// No offer or adoption waits for the master.
    fn handoff_idle(&self) -> bool {
        self.adopter.is_idle()
            && self
                .handoff
                .as_ref()
                .is_none_or(|(hub, collector)| hub.in_progress() == 0 && collector.is_idle())
    }
}

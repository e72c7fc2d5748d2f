//! River's worker process: receives its generation's config and listening
//! sockets from the master, drops privileges, serves them with pingora, and
//! drains on request or when the master goes away.

mod app;
mod filters;
mod privileges;
mod serve;
mod welcome;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::server::configuration::ServerConf;
use river_config::ListenAddress;
use river_ipc::{Channel, FromWorker, Hello, IpcError, ToWorker};
use tokio::sync::watch;

pub use app::{BuildError, RiverApp};
pub use privileges::{drop_privileges, Outcome as PrivilegeOutcome, PrivilegeError};

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
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
    match start(&hello, fds).await {
        Ok(running) => {
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

/// What a started worker holds: the switches that stop it.
struct Running {
    /// Stops the accept loops (their listener copies close).
    stop_accepting: watch::Sender<bool>,
    /// pingora's shutdown flag: next responses carry `Connection: close`.
    shutdown: watch::Sender<bool>,
    connections: serve::ConnectionCount,
    apps: Vec<Arc<pingora_proxy::HttpProxy<RiverApp>>>,
}

async fn start(hello: &Hello, mut fds: Vec<OwnedFd>) -> Result<Running, WorkerError> {
    let expected = hello.listeners.len() + usize::from(hello.access_log);
    if fds.len() != expected {
        return Err(WorkerError::FdMismatch {
            expected,
            fds: fds.len(),
        });
    }
    // The access log, when there is one, travels after the listeners.
    let _access_log = if hello.access_log {
        fds.pop().map(std::fs::File::from)
    } else {
        None
    };
    let mut sockets: HashMap<&ListenAddress, OwnedFd> = hello.listeners.iter().zip(fds).collect();

    let system = &hello.config.system;
    match drop_privileges(system.user.as_deref(), system.group.as_deref())? {
        PrivilegeOutcome::Dropped { uid, gid } => tracing::info!(uid, gid, "dropped privileges"),
        PrivilegeOutcome::NotRoot => tracing::debug!("not root: `user` has no effect"),
        PrivilegeOutcome::NotRequested => {}
    }

    let mut server_conf = ServerConf::default();
    server_conf.threads = system.threads_per_service;
    let server_conf = Arc::new(server_conf);

    let (stop_accepting, stop_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let connections = serve::ConnectionCount::default();
    let mut apps = Vec::new();
    let mut loops = Vec::new();
    for service in &hello.config.services {
        let app = Arc::new(pingora_proxy::http_proxy(
            &server_conf,
            RiverApp::build(service)?,
        ));
        for listener in &service.listeners {
            let fd = sockets
                .remove(&listener.address)
                .ok_or_else(|| WorkerError::MissingListener(listener.address.clone()))?;
            loops.push((serve::Inherited::adopt(&listener.address, fd)?, app.clone()));
        }
        apps.push(app);
    }
    for (listener, app) in loops {
        tokio::spawn(serve::accept_loop(
            listener,
            app,
            stop_rx.clone(),
            shutdown_rx.clone(),
            connections.clone(),
        ));
    }
    Ok(Running {
        stop_accepting,
        shutdown,
        connections,
        apps,
    })
}

/// Serve until told to drain (or the master disappears), then wait for the
/// last connection to finish.
async fn supervise(running: Running, channel: &Channel) -> Result<(), WorkerError> {
    let mut report = tokio::time::interval(LOAD_REPORT_INTERVAL);
    let close_idle = loop {
        tokio::select! {
            message = channel.recv::<ToWorker>() => match message {
                Ok(Some((ToWorker::Drain { deadline_secs }, _))) => {
                    tracing::info!(deadline_secs, "draining");
                    break false;
                }
                Ok(Some((ToWorker::Quit, _))) => {
                    tracing::info!("graceful shutdown");
                    break true;
                }
                Ok(Some((ToWorker::ReopenLogs, _))) => {}
                Ok(Some((ToWorker::Hello(_), _))) => {
                    tracing::warn!("ignoring a second Hello");
                }
                Ok(None) => {
                    tracing::warn!("master went away: draining");
                    break false;
                }
                Err(err) => {
                    tracing::error!(error = %err, "bad message from master: draining");
                    break false;
                }
            },
            _ = report.tick() => {
                let load = FromWorker::Load { connections: running.connections.get() };
                if channel.send(&load, &[]).await.is_err() {
                    tracing::warn!("master went away: draining");
                    break false;
                }
            }
        }
    };
    let _ = running.stop_accepting.send(true);
    let _ = running.shutdown.send(true);
    if close_idle {
        // Wakes connections parked between keep-alive requests so they close now.
        for app in &running.apps {
            app.cleanup().await;
        }
    }
    while running.connections.get() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("drained");
    Ok(())
}

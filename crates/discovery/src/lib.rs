//! River's resolver process (`river resolver`, started by the master only):
//! one per generation whose config has `discovery "Dns"`, unprivileged (it
//! becomes `system.user`, or `nobody` if River runs as root without one,
//! before its first query), the only River process that reads DNS answers.
//!
//! It follows every name of every service: looks it up (hickory-resolver),
//! tells the master the backend set and its TTL (clamped to the service's
//! `[min-ttl-ms, max-ttl-ms]`), and asks again when the TTL runs out; a failed
//! lookup is retried with backoff and reported, never turned into an empty
//! set. Once every name was tried once it says `FirstPassDone`, which the
//! generation's readiness waits for. It exits when the master's end of its
//! channel closes.
//!
//! It does not decide what the workers use: the master keeps the last good
//! set of each name and relays changes to every worker of the generation
//! (`crates/master/src/discovery.rs`); workers apply them
//! (`crates/worker/src/discovery.rs`).

pub mod answer;
mod resolve;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use river_config::{Config, Discovery, DnsName, ServiceKind};
use river_ipc::{Channel, FromResolver, IpcError, ToResolver};
use tokio::sync::mpsc;

pub use resolve::{LookupError, Resolver};

/// The largest frame the master may send (one Hello with the config).
const MAX_HELLO_BYTES: usize = river_ipc::MAX_FRAME_LEN;

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("master channel: {0}")]
    Ipc(#[from] IpcError),
    #[error("dropping privileges: {0}")]
    Privileges(#[from] river_worker::PrivilegeError),
}

/// One name of one service, and that service's settings.
#[derive(Debug, Clone)]
pub struct Task {
    pub service: String,
    pub name: DnsName,
    pub settings: Discovery,
}

/// Every name to follow in `config`, in config order.
pub fn tasks(config: &Config) -> Vec<Task> {
    let mut tasks = Vec::new();
    for service in &config.services {
        let ServiceKind::Proxy(proxy) = &service.kind else {
            continue;
        };
        let Some(discovery) = &proxy.discovery else {
            continue;
        };
        for name in &discovery.names {
            if tasks
                .iter()
                .any(|t: &Task| t.service == service.name && t.name == name.name)
            {
                continue;
            }
            tasks.push(Task {
                service: service.name.clone(),
                name: name.name.clone(),
                settings: Discovery {
                    names: Vec::new(),
                    ..Discovery::clone(discovery)
                },
            });
        }
    }
    tasks
}

/// Run the resolver on `ipc`, its end of the master's socketpair, until the
/// master closes it.
pub fn run(ipc: OwnedFd) -> Result<(), ResolverError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(ipc));
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

async fn serve(ipc: OwnedFd) -> Result<(), ResolverError> {
    let channel = Arc::new(Channel::with_max_frame_len(ipc, MAX_HELLO_BYTES)?);
    let hello = match channel.recv::<ToResolver>().await? {
        None => return Ok(()),
        Some((ToResolver::Hello(hello), _)) => *hello,
    };
    become_unprivileged(&hello.config.system)?;
    let tasks = tasks(&hello.config);
    tracing::info!(
        generation = hello.generation,
        names = tasks.len(),
        "resolver started"
    );
    let (tried_tx, mut tried_rx) = mpsc::channel(tasks.len().max(1));
    let total = tasks.len();
    for task in tasks {
        tokio::spawn(follow(task, channel.clone(), tried_tx.clone()));
    }
    drop(tried_tx);
    let mut tried = 0;
    let mut first_pass_done = false;
    if total == 0 {
        channel.send(&FromResolver::FirstPassDone, &[]).await?;
        first_pass_done = true;
    }
    loop {
        tokio::select! {
            Some(()) = tried_rx.recv(), if !first_pass_done => {
                tried += 1;
                if tried == total {
                    first_pass_done = true;
                    channel.send(&FromResolver::FirstPassDone, &[]).await?;
                }
            }
            message = channel.recv::<ToResolver>() => match message {
                Ok(Some(_)) => tracing::warn!("resolver: ignoring a second Hello"),
                Ok(None) | Err(_) => return Ok(()),
            },
        }
    }
}

/// Become `system.user` (and `group`), as workers do; when River runs as root
/// without a `user`, become `nobody`: the resolver needs no privilege, and it
/// reads what the network sends.
fn become_unprivileged(system: &river_config::System) -> Result<(), ResolverError> {
    use river_worker::{PrivilegeError, PrivilegeOutcome};
    let (user, group) = match system.user.as_deref() {
        Some(user) => (user, system.group.as_deref()),
        None => ("nobody", None),
    };
    match river_worker::drop_privileges(Some(user), group) {
        Ok(PrivilegeOutcome::Dropped { uid, gid }) => {
            tracing::debug!(uid, gid, "resolver dropped privileges");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(PrivilegeError::NoSuchUser(_)) if system.user.is_none() => {
            tracing::warn!("no user `nobody`: the resolver keeps the master's user");
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Follow one name for as long as the process lives: look it up, report,
/// wait for the TTL (or the backoff), again. `tried` hears once, after the
/// first try.
async fn follow(task: Task, channel: Arc<Channel>, tried: mpsc::Sender<()>) {
    let min = Duration::from_millis(task.settings.min_ttl_ms);
    let max = Duration::from_millis(task.settings.max_ttl_ms);
    let timeout = Duration::from_millis(task.settings.resolve_timeout_ms);
    let name = task.name.to_string();
    let mut resolver: Option<Resolver> = None;
    let mut failures: u32 = 0;
    let mut last_error: Option<String> = None;
    let mut last_set = None;
    let mut tried = Some(tried);
    loop {
        let outcome = match &resolver {
            Some(r) => lookup(r, &task.name, timeout).await,
            None => match Resolver::new(&task.settings) {
                Ok(r) => {
                    let outcome = lookup(&r, &task.name, timeout).await;
                    resolver = Some(r);
                    outcome
                }
                Err(err) => Err(err.to_string()),
            },
        };
        let (message, wait) = match outcome {
            Ok((backends, ttl)) => {
                let ttl = answer::clamp_ttl(ttl, min, max);
                if last_error.take().is_some() {
                    tracing::info!(service = task.service, name, "resolving again");
                }
                if last_set.as_ref() != Some(&backends) {
                    tracing::info!(
                        service = task.service,
                        name,
                        backends = backends.len(),
                        "discovered set changed"
                    );
                    last_set = Some(backends.clone());
                }
                failures = 0;
                let message = FromResolver::Resolved {
                    service: task.service.clone(),
                    name: name.clone(),
                    backends,
                    ttl_ms: ttl.as_millis() as u64,
                };
                (message, ttl)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = answer::backoff(failures, min, max);
                if last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(
                        service = task.service,
                        name,
                        retry_ms = wait.as_millis() as u64,
                        "lookup failed, keeping the last good set: {error}"
                    );
                    last_error = Some(error.clone());
                }
                let message = FromResolver::Failed {
                    service: task.service.clone(),
                    name: name.clone(),
                    error,
                    retry_ms: wait.as_millis() as u64,
                };
                (message, wait)
            }
        };
        if channel.send(&message, &[]).await.is_err() {
            return; // the master is gone; the process exits with it
        }
        if let Some(tried) = tried.take() {
            let _ = tried.send(()).await;
        }
        tokio::time::sleep(wait).await;
    }
}

async fn lookup(
    resolver: &Resolver,
    name: &DnsName,
    timeout: Duration,
) -> Result<(Vec<river_ipc::DiscoveredBackend>, Duration), String> {
    match tokio::time::timeout(timeout, resolver.lookup(name)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

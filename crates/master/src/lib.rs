//! River's master process as a library: the `river` binary is a thin wrapper
//! over [`run`]. The master never accepts a connection: it validates config,
//! binds sockets, and supervises generations of workers. `river worker`
//! (started by the master only) runs a worker instead.

pub mod cli;
mod config_source;
mod control;
mod discovery;
mod inputs;
mod listeners;
pub mod metrics;
mod notify;
mod pidfile;
mod process;
mod signals;
mod supervisor;
mod upgrade;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use cli::{Cli, Internal};
use config_source::ConfigSource;
use supervisor::Supervisor;

/// Run what `cli` asks for: the master, a validation, or a worker.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging();
    match cli.command {
        Some(Internal::Worker { ipc_fd }) => run_worker(ipc_fd),
        Some(Internal::LoadConfig { path }) => config_source::load_config_child(&path),
        Some(Internal::Resolver { ipc_fd }) => run_resolver(ipc_fd),
        None => run_master(cli),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RIVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run_worker(ipc_fd: RawFd) -> anyhow::Result<()> {
    // Named for ps/top; the kernel truncates to 15 bytes.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"river-worker".as_ptr()) };
    let stat = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(ipc_fd) })
        .context("the worker's IPC descriptor is not open (workers are started by the master)")?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("descriptor {ipc_fd} is not a socket (workers are started by the master)");
    }
    // SAFETY: checked above that the descriptor is open; the master gave it to us
    // and nothing else in this process owns it.
    let ipc = unsafe { OwnedFd::from_raw_fd(ipc_fd) };
    river_worker::run(ipc).context("worker")
}

/// `river resolver`: a generation's DNS resolver (service discovery).
fn run_resolver(ipc_fd: RawFd) -> anyhow::Result<()> {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string we own.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"river-resolver".as_ptr()) };
    let stat = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(ipc_fd) })
        .context(
            "the resolver's IPC descriptor is not open (resolvers are started by the master)",
        )?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("descriptor {ipc_fd} is not a socket (resolvers are started by the master)");
    }
    // SAFETY: checked above that the descriptor is open; the master gave it
    // to us and nothing else in this process owns it.
    let ipc = unsafe { OwnedFd::from_raw_fd(ipc_fd) };
    river_discovery::run(ipc).context("resolver")
}

fn run_master(cli: Cli) -> anyhow::Result<()> {
    // Before anything else: a master started by a binary upgrade inherits
    // its sockets, and must tell the old master if it cannot take over.
    let inheritance = upgrade::Inheritance::from_env().context("binary upgrade")?;
    let invocation = upgrade::Invocation {
        binary: upgrade::Invocation::binary_at_start(),
        config: cli
            .config
            .as_ref()
            .map(|path| std::path::absolute(path).unwrap_or_else(|_| path.clone())),
        pid_file: cli.pidfile.clone(),
        threads_per_service: cli.threads_per_service,
    };
    let source = match &invocation.config {
        Some(path) => ConfigSource::File(path.clone()),
        None => ConfigSource::Embedded,
    }
    .with_overrides(cli.threads_per_service);
    match inheritance {
        Some(inheritance) => {
            let link = inheritance.link.try_clone().ok();
            run_new_master(cli, invocation, source, inheritance).inspect_err(|err| {
                // Nothing served yet: the old master serves on.
                if let Some(link) = link {
                    upgrade::tell_failed_blocking(link, &format!("{err:#}"));
                }
            })
        }
        None => run_first_master(cli, invocation, source),
    }
}

/// A master started by an operator (or an init system).
fn run_first_master(
    cli: Cli,
    invocation: upgrade::Invocation,
    source: config_source::LoadConfig,
) -> anyhow::Result<()> {
    let config = source.load().map_err(|err| anyhow::anyhow!("{err}"))?;
    if cli.validate {
        let name = match &cli.config {
            Some(path) => path.display().to_string(),
            None => "embedded default".into(),
        };
        println!("river: configuration {name} is valid");
        return Ok(());
    }
    let system = config.system.clone();
    // One master per pid file and control socket: claim both before binding
    // anything, so a second master fails without touching the first's.
    let pid_path = cli.pidfile.clone().or_else(|| system.pid_file.clone());
    let pid_lock = pid_path
        .as_deref()
        .map(pidfile::PidFile::lock)
        .transpose()?;
    let control = system
        .control_socket
        .as_deref()
        .map(control::ControlSocket::bind)
        .transpose()?;
    // Bind, read keys and open logs now: their errors go to the caller's terminal.
    let listeners = listeners::ListenerSet::default();
    let first = inputs::GenerationInputs::prepare(config, &listeners)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let metrics = system
        .metrics
        .as_ref()
        .map(|address| {
            metrics::http::MetricsListener::bind(address)
                .with_context(|| format!("cannot bind the metrics listener {address}"))
        })
        .transpose()?;
    if cli.daemonize || system.daemonize {
        // Before any runtime or thread exists. Paths are absolute by now.
        nix::unistd::daemon(true, false).context("daemonize")?;
    }
    let pid_file = pid_lock.map(pidfile::PidLock::write).transpose()?;
    serve(source, listeners, first, |commands| supervisor::Setup {
        invocation,
        metrics: metrics
            .map(|listener| metrics::http::MetricsService::new(listener, commands.clone())),
        control: control.map(|socket| control::Control::new(socket, commands)),
        pid_file,
        takeover: None,
    })
}

/// A master started by a binary upgrade: the old master's sockets, no
/// daemonizing (it runs where the old one did), no lock on the pid file
/// (the old master holds it until it exits; this one writes its own file
/// once it serves).
fn run_new_master(
    cli: Cli,
    invocation: upgrade::Invocation,
    source: config_source::LoadConfig,
    inheritance: upgrade::Inheritance,
) -> anyhow::Result<()> {
    let config = source.load().map_err(|err| anyhow::anyhow!("{err}"))?;
    let system = config.system.clone();
    let pid_path = cli.pidfile.clone().or_else(|| system.pid_file.clone());
    let control = match (&system.control_socket, inheritance.control) {
        (Some(path), Some(fd)) => Some(control::ControlSocket::inherited(path, fd)),
        (Some(path), None) => Some(control::ControlSocket::bind(path)?),
        (None, _) => None,
    };
    // The old master's metrics socket, if the address is still the same.
    let metrics = match (&system.metrics, inheritance.metrics) {
        (Some(address), Some((inherited, fd))) if *address == inherited => {
            Some(metrics::http::MetricsListener::inherited(address, fd)?)
        }
        (Some(address), _) => Some(
            metrics::http::MetricsListener::bind(address)
                .with_context(|| format!("cannot bind the metrics listener {address}"))?,
        ),
        (None, _) => None,
    };
    let listeners = listeners::ListenerSet::inherited(inheritance.listeners);
    let first = inputs::GenerationInputs::prepare(config, &listeners)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    tracing::info!(
        old_pid = inheritance.old_pid,
        "binary upgrade: taking over from the running master"
    );
    let link = inheritance.link;
    let next_generation = inheritance.next_generation;
    serve(source, listeners, first, move |commands| {
        supervisor::Setup {
            invocation,
            metrics: metrics
                .map(|listener| metrics::http::MetricsService::new(listener, commands.clone())),
            control: control.map(|socket| control::Control::new(socket, commands)),
            pid_file: None,
            takeover: Some(supervisor::Takeover {
                link: upgrade::Link::inherited(link).expect("the inherited link is a socket"),
                next_generation,
                pid_file: pid_path,
            }),
        }
    })
}

/// Run the master's event loop until it exits.
fn serve(
    source: config_source::LoadConfig,
    listeners: listeners::ListenerSet,
    first: inputs::GenerationInputs,
    setup: impl FnOnce(mpsc::UnboundedSender<supervisor::Command>) -> supervisor::Setup,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the master's event loop")?;
    runtime.block_on(async move {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        tracing::info!(
            pid = std::process::id(),
            version = river_ipc::VERSION,
            "master starting"
        );
        Supervisor::new(source, listeners, setup(commands_tx.clone()))
            .run(first, commands_rx)
            .await?;
        drop(commands_tx);
        Ok(())
    })
}

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
mod notify;
mod pidfile;
mod process;
mod signals;
mod supervisor;

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
    let source = match &cli.config {
        Some(path) => {
            ConfigSource::File(std::path::absolute(path).unwrap_or_else(|_| path.clone()))
        }
        None => ConfigSource::Embedded,
    }
    .with_overrides(cli.threads_per_service);
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
    if cli.daemonize || system.daemonize {
        // Before any runtime or thread exists. Paths are absolute by now.
        nix::unistd::daemon(true, false).context("daemonize")?;
    }
    let _pid_file = pid_lock.map(pidfile::PidLock::write).transpose()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the master's event loop")?;
    runtime.block_on(async move {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        if let Some(control) = control {
            tokio::spawn(control.serve(commands_tx.clone()));
        }
        tracing::info!(
            pid = std::process::id(),
            version = env!("CARGO_PKG_VERSION"),
            "master starting"
        );
        Supervisor::new(source, listeners)
            .run(first, commands_rx)
            .await?;
        drop(commands_tx);
        Ok(())
    })
}

//! River's master process as a library: the `river` binary is a thin wrapper
//! over [`run`]. The master never accepts a connection: it validates config,
//! binds sockets, and supervises generations of workers. `river worker`
//! (started by the master only) runs a worker instead.

pub mod cli;
mod control;
mod inputs;
mod listeners;
pub mod metrics;
mod notify;
mod pidfile;
mod process;
mod supervisor;

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use cli::{Cli, Internal};
use supervisor::{ConfigSource, Supervisor};

/// Run what `cli` asks for: the master, a validation, or a worker.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging();
    match cli.command {
        Some(Internal::Worker { ipc_fd }) => run_worker(ipc_fd),
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
    // Bind, read keys and open logs now: their errors go to the caller's terminal.
    let listeners = listeners::ListenerSet::default();
    let first = inputs::GenerationInputs::prepare(config, &listeners)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let system = first.config.system.clone();
    let metrics_listener = match &system.metrics {
        Some(address) => Some(
            metrics::http::MetricsListener::bind(address)
                .with_context(|| format!("cannot bind the metrics listener {address}"))?,
        ),
        None => None,
    };
    if cli.daemonize || system.daemonize {
        // Before any runtime or thread exists. Paths are absolute by now.
        nix::unistd::daemon(true, false).context("daemonize")?;
    }
    let pid_path = cli.pidfile.clone().or_else(|| system.pid_file.clone());
    let _pid_file = match &pid_path {
        Some(path) => Some(
            pidfile::PidFile::create(path)
                .with_context(|| format!("cannot write pid file {}", path.display()))?,
        ),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the master's event loop")?;
    runtime.block_on(async move {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        if let Some(path) = &system.control_socket {
            let control = control::ControlSocket::bind(path)
                .with_context(|| format!("cannot bind control socket {}", path.display()))?;
            tokio::spawn(control.serve(commands_tx.clone()));
        }
        if let Some(listener) = metrics_listener {
            tracing::info!(address = %listener.local_address(), "metrics listening");
            tokio::spawn(listener.serve(commands_tx.clone()));
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

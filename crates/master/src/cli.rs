//! `river`'s command line. River's own flags (`--config-kdl`, `--validate-configs`,
//! `--daemonize`, `--pidfile`, `--threads-per-service`) are accepted unchanged.

use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "river",
    version = river_ipc::VERSION,
    about = "River: a reverse proxy on pingora with hot reload done right",
    long_about = "River runs as a privileged master process that owns the listening sockets and the \
configuration, and unprivileged worker processes that serve traffic on sockets the master hands them. \
Without -c, River runs on its embedded default configuration (a welcome page on 127.0.0.1:8080).\n\n\
Signals to the master: HUP reload, QUIT graceful shutdown, TERM/INT fast shutdown, USR1 reopen logs; \
USR2 binary upgrade (the binary on disk becomes the new master on the same sockets); WINCH, PIPE, ALRM and \
the other signals that would end the process are logged and ignored."
)]
pub struct Cli {
    /// Configuration file in River's KDL schema
    #[arg(
        short = 'c',
        long = "config-kdl",
        visible_alias = "config",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Check the configuration and exit: 0 if valid, 1 with file:line:column if not
    #[arg(short = 't', long = "validate", visible_alias = "validate-configs")]
    pub validate: bool,

    /// Run in the background (also `system { daemonize true }`)
    #[arg(long)]
    pub daemonize: bool,

    /// Pid file (overrides `system { pid-file }`)
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Threads per worker process (overrides `system { threads-per-service }`)
    #[arg(long, value_name = "N")]
    pub threads_per_service: Option<usize>,

    #[command(subcommand)]
    pub command: Option<Internal>,
}

#[derive(Debug, Subcommand)]
pub enum Internal {
    /// Run as a worker on an inherited IPC descriptor (started by the master only)
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        ipc_fd: RawFd,
    },
    /// Load and validate a configuration file, printing the result as JSON
    /// (the master runs this for every reload)
    #[command(hide = true)]
    LoadConfig { path: PathBuf },
    /// Run a generation's DNS resolver on an inherited IPC descriptor
    /// (started by the master only)
    #[command(hide = true)]
    Resolver {
        #[arg(long)]
        ipc_fd: RawFd,
    },
}

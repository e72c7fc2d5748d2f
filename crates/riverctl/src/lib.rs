//! `riverctl` as a library: one request to the master's control socket, its
//! answer printed, exit code 0 or 1. The binary is a thin wrapper over [`main`].

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use river_ipc::{ControlRequest, ControlResponse, GenerationState, StatusReport};

const DEFAULT_CONFIG: &str = "/etc/river/river.kdl";
const DEFAULT_SOCKET: &str = "/run/river/river.sock";

#[derive(Debug, Parser)]
#[command(name = "riverctl", version, about = "Control a running River master")]
pub struct Cli {
    /// The master's control socket (default: `system { control-socket }` of the
    /// config, else /run/river/river.sock; also $RIVER_CONTROL_SOCKET)
    #[arg(short = 's', long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Configuration file, to find the control socket or to check
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, start a new generation, retire the old one; waits for the outcome
    Reload {
        /// Send the request and return without waiting for the outcome
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Show the master, its generations and their workers
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Validate a configuration file offline (does not talk to the master)
    Check,
    /// Stop the master: fast by default, or drain first with --graceful
    Stop {
        #[arg(long)]
        graceful: bool,
    },
    /// Reopen log files (as SIGUSR1)
    ReopenLogs,
}

/// Parse the command line, run it, and say how it went.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("riverctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let request = match cli.command {
        Command::Check => return Ok(check(cli.config.as_deref())),
        Command::Reload { no_wait, .. } => ControlRequest::Reload { wait: !no_wait },
        Command::Status { .. } => ControlRequest::Status,
        Command::Stop { graceful } => ControlRequest::Stop { graceful },
        Command::ReopenLogs => ControlRequest::ReopenLogs,
    };
    let timeout = match cli.command {
        Command::Reload { timeout, .. } => Duration::from_secs(timeout),
        _ => Duration::from_secs(10),
    };
    let socket = socket_path(cli.socket, cli.config.as_deref());
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot connect to the master's control socket {}",
            socket.display()
        )
    })?;
    let response: ControlResponse =
        river_ipc::request_blocking(&mut stream, &request, Some(timeout))
            .with_context(|| format!("no answer on {}", socket.display()))?;
    Ok(match response {
        ControlResponse::Reloaded {
            generation,
            workers,
            millis,
        } => {
            println!(
                "reloaded: generation {generation} serving ({}, {millis} ms)",
                plural(workers, "worker")
            );
            ExitCode::SUCCESS
        }
        ControlResponse::ReloadFailed { error } => {
            eprintln!("reload failed, the serving generation is unchanged:\n{error}");
            ExitCode::FAILURE
        }
        ControlResponse::Accepted => ExitCode::SUCCESS,
        ControlResponse::Status(report) => {
            match cli.command {
                Command::Status { json: true } => {
                    println!("{}", serde_json::to_string_pretty(&report)?)
                }
                _ => print!("{}", render_status(&report)),
            }
            ExitCode::SUCCESS
        }
        ControlResponse::Error { message } => return Err(anyhow!(message)),
    })
}

/// `1 worker`, `2 workers`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn check(config: Option<&Path>) -> ExitCode {
    let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    match river_config::load(path) {
        Ok(_) => {
            println!("riverctl: configuration {} is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// --socket, then $RIVER_CONTROL_SOCKET, then the config's control-socket, then the default.
fn socket_path(flag: Option<PathBuf>, config: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path;
    }
    if let Some(path) = std::env::var_os("RIVER_CONTROL_SOCKET") {
        return PathBuf::from(path);
    }
    let config = config.unwrap_or(Path::new(DEFAULT_CONFIG));
    river_config::load(config)
        .ok()
        .and_then(|c| c.system.control_socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

fn render_status(report: &StatusReport) -> String {
    let mut out = format!("master pid {}\n", report.master_pid);
    for generation in &report.generations {
        let state = match generation.state {
            GenerationState::Starting => "starting",
            GenerationState::Serving => "serving",
            GenerationState::Draining => "draining",
        };
        out += &format!("generation {} {state}", generation.generation);
        if let Some(secs) = generation.drain_deadline_secs {
            out += &format!(" (killed in {secs} s)");
        }
        out += "\n";
        for worker in &generation.workers {
            out += &format!(
                "  worker pid {:<8} rss {:>8.1} MiB  connections {}\n",
                worker.pid,
                worker.rss_bytes as f64 / (1024.0 * 1024.0),
                worker.connections
            );
        }
        for name in &generation.discovery {
            let backends: Vec<String> = name
                .backends
                .iter()
                .map(|b| match b.weight {
                    1 => b.address.to_string(),
                    w => format!("{} (weight {w})", b.address),
                })
                .collect();
            out += &format!(
                "  service {} discovers {}: {}",
                name.service,
                name.name,
                if backends.is_empty() {
                    "no upstream yet (answering 503)".to_string()
                } else {
                    backends.join(", ")
                }
            );
            if name.inherited {
                out += " (kept from the previous generation)";
            }
            if let Some(ms) = name.ttl_left_ms {
                out += &format!("; next lookup in {:.1} s", ms as f64 / 1000.0);
            }
            if let Some(error) = &name.last_error {
                out += &format!("; last lookup failed: {error}");
            }
            out += "\n";
        }
    }
    out
}

//! `riverctl` as a library: one request to the master's control socket, its
//! answer printed, exit code 0 or 1. The binary is a thin wrapper over [`main`].

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use river_ipc::{
    ControlRequest, ControlResponse, GenerationState, ReloadOutcome, ReloadRecord, StatusReport,
};

const DEFAULT_CONFIG: &str = "/etc/river/river.kdl";
const DEFAULT_SOCKET: &str = "/run/river/river.sock";

#[derive(Debug, Parser)]
#[command(name = "riverctl", version = river_ipc::VERSION, about = "Control a running River master")]
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
    /// Show the master, its generations and their workers, and the last 5 reloads
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Show the last 50 reloads: trigger, outcome, phase durations, error, drain result
    History {
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
    /// Binary upgrade (as SIGUSR2): start the binary on disk as a new master on
    /// the same sockets; the running master retires once the new one serves
    Upgrade {
        /// The binary to start (default: the running master's own path)
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Give up waiting after this many seconds
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
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
        Command::History { .. } => ControlRequest::History,
        Command::Stop { graceful } => ControlRequest::Stop { graceful },
        Command::ReopenLogs => ControlRequest::ReopenLogs,
        Command::Upgrade { ref binary, .. } => ControlRequest::Upgrade {
            binary: binary
                .as_ref()
                .map(|path| std::path::absolute(path).unwrap_or_else(|_| path.clone())),
        },
    };
    let timeout = match cli.command {
        Command::Reload { timeout, .. } | Command::Upgrade { timeout, .. } => {
            Duration::from_secs(timeout)
        }
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
            handed_over,
            draining,
        } => {
            println!(
                "{}",
                reloaded_line(generation, workers, millis, handed_over, draining)
            );
            ExitCode::SUCCESS
        }
        ControlResponse::ReloadFailed { error } => {
            eprintln!("reload failed, the serving generation is unchanged:\n{error}");
            ExitCode::FAILURE
        }
        ControlResponse::Upgraded {
            new,
            generation,
            workers,
            millis,
            old,
        } => {
            println!(
                "upgraded: river {} (pid {}) serving generation {generation} ({}, {millis} ms); river {} (pid {}) draining",
                new.version,
                new.pid,
                plural(workers, "worker"),
                old.version,
                old.pid
            );
            ExitCode::SUCCESS
        }
        ControlResponse::UpgradeFailed { error } => {
            eprintln!("upgrade failed, the running master serves on:\n{error}");
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
        ControlResponse::History(records) => {
            match cli.command {
                Command::History { json: true } => {
                    println!("{}", serde_json::to_string_pretty(&records)?)
                }
                _ => print!("{}", render_history(&records)),
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
    let mut out = format!("master pid {}", report.master_pid);
    if !report.master.version.is_empty() {
        out += &format!(
            " (river {}, {})",
            report.master.version, report.master.binary
        );
    }
    out += "\n";
    render_generations(&mut out, &report.generations);
    for retiring in &report.retiring {
        out += &format!(
            "retiring master pid {} (river {}, {})\n",
            retiring.master.pid, retiring.master.version, retiring.master.binary
        );
        render_generations(&mut out, &retiring.generations);
    }
    if !report.reloads.is_empty() {
        out += "last reloads:\n";
        out += &render_history(&report.reloads);
    }
    out
}

/// `reloaded: generation 7 serving (2 workers, 14 ms; 312 connections
/// handed over, 3 draining)`; without connection handoff, no `;` part.
fn reloaded_line(
    generation: u64,
    workers: usize,
    millis: u64,
    handed_over: Option<u64>,
    draining: Option<u64>,
) -> String {
    let mut line = format!(
        "reloaded: generation {generation} serving ({}, {millis} ms",
        plural(workers, "worker")
    );
    if let Some(handed) = handed_over {
        line += &format!(
            "; {} handed over, {} draining",
            plural(handed as usize, "connection"),
            draining.unwrap_or(0)
        );
    }
    line += ")";
    line
}

fn render_generations(out: &mut String, generations: &[river_ipc::GenerationStatus]) {
    for generation in generations {
        let state = match generation.state {
            GenerationState::Starting => "starting",
            GenerationState::Serving => "serving",
            GenerationState::Draining => "draining",
        };
        *out += &format!("generation {} {state}", generation.generation);
        if let Some(secs) = generation.drain_deadline_secs {
            *out += &format!(" (killed in {secs} s)");
        }
        *out += "\n";
        // On a line of its own: the state stays the generation line's third
        // word, which scripts read (`awk '$3 == "serving"'`).
        if generation.handed_over_in > 0 || generation.handed_over_out > 0 {
            *out += &format!(
                "  connections handed over: {} in, {} out\n",
                generation.handed_over_in, generation.handed_over_out
            );
        }
        for worker in &generation.workers {
            *out += &format!(
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
            *out += &format!(
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
                *out += " (kept from the previous generation)";
            }
            if let Some(ms) = name.ttl_left_ms {
                *out += &format!("; next lookup in {:.1} s", ms as f64 / 1000.0);
            }
            if let Some(error) = &name.last_error {
                *out += &format!("; last lookup failed: {error}");
            }
            *out += "\n";
        }
    }
}

/// One line per reload, then its error or drain result, indented.
fn render_history(records: &[ReloadRecord]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let mut out = String::new();
    for r in records {
        let outcome = match r.outcome {
            ReloadOutcome::InProgress => "in progress",
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Rejected => "rejected",
            ReloadOutcome::RolledBack => "rolled back",
        };
        out += &format!(
            "  #{:<3} {} {outcome:<11} by {}",
            r.number,
            utc(r.started_unix_secs),
            r.trigger
        );
        if let Some(generation) = r.generation {
            out += &format!(", generation {generation}");
        }
        if let Some(retired) = r.retired {
            out += &format!(" (retired {retired})");
        }
        let p = &r.phases;
        out += &format!(
            "; {} ms (validate {}, room {}, spawn {}, ready {}, drain start {})\n",
            ms(r.duration_ms),
            ms(p.validate_ms),
            ms(p.room_ms),
            ms(p.spawn_ms),
            ms(p.ready_ms),
            ms(p.drain_start_ms),
        );
        if let Some(error) = &r.error {
            let first = error.lines().next().unwrap_or_default();
            out += &format!("       error: {first}\n");
        }
        if let Some(drain) = &r.drain {
            out += &format!("       drained in {:.1} s", drain.seconds);
            match drain.killed_by {
                Some(reason) => {
                    out += &format!(
                        ", killed by {}: {} connections cut\n",
                        reason.as_str(),
                        drain.connections_cut
                    )
                }
                None => out += "\n",
            }
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC of a Unix time.
fn utc(unix_secs: f64) -> String {
    let secs = unix_secs.max(0.0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = river_ipc::civil::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::{DrainResult, KillReason, ReloadPhases, ReloadTrigger};

    #[test]
    fn the_reload_line_says_what_was_handed_over() {
        assert_eq!(
            reloaded_line(7, 2, 14, Some(312), Some(3)),
            "reloaded: generation 7 serving (2 workers, 14 ms; 312 connections handed over, 3 draining)"
        );
        assert_eq!(
            reloaded_line(2, 1, 9, Some(1), None),
            "reloaded: generation 2 serving (1 worker, 9 ms; 1 connection handed over, 0 draining)"
        );
        // connection-handoff false: the line as before.
        assert_eq!(
            reloaded_line(3, 2, 11, None, None),
            "reloaded: generation 3 serving (2 workers, 11 ms)"
        );
    }

    #[test]
    fn a_generation_line_keeps_its_state_as_the_third_word() {
        let generation = |state, handed_over_in, drain_deadline_secs| river_ipc::GenerationStatus {
            generation: 2,
            state,
            workers: vec![river_ipc::WorkerStatus {
                pid: 41,
                rss_bytes: 1 << 20,
                connections: 3,
            }],
            drain_deadline_secs,
            discovery: Vec::new(),
            handed_over_in,
            handed_over_out: 0,
        };
        let mut out = String::new();
        render_generations(
            &mut out,
            &[
                generation(GenerationState::Serving, 1, None),
                generation(GenerationState::Draining, 0, Some(9)),
            ],
        );
        let states: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("generation "))
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert_eq!(states, ["serving", "draining"], "{out}");
        assert!(
            out.contains("\n  connections handed over: 1 in, 0 out\n"),
            "{out}"
        );
        assert_eq!(out.matches("  worker pid 41 ").count(), 2, "{out}");
    }

    #[test]
    fn history_lines() {
        assert_eq!(utc(0.0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_772_582_400.5), "2026-03-04 00:00:00");
        let record = ReloadRecord {
            number: 2,
            trigger: ReloadTrigger::Riverctl { uid: 0, pid: 42 },
            started_unix_secs: 0.0,
            outcome: ReloadOutcome::Ok,
            generation: Some(3),
            retired: Some(2),
            phases: ReloadPhases {
                validate_ms: Some(1.25),
                room_ms: Some(0.0),
                spawn_ms: Some(2.0),
                ready_ms: Some(30.0),
                drain_start_ms: Some(3.0),
            },
            duration_ms: Some(33.3),
            error: None,
            drain: Some(DrainResult {
                seconds: 1.0,
                connections_cut: 4,
                killed_by: Some(KillReason::Deadline),
            }),
        };
        let rejected = ReloadRecord {
            number: 3,
            trigger: ReloadTrigger::Sighup,
            outcome: ReloadOutcome::Rejected,
            generation: None,
            retired: None,
            error: Some("error: bad\nmore".into()),
            drain: None,
            ..record.clone()
        };
        let text = render_history(&[record, rejected]);
        assert!(text.contains("#2   1970-01-01 00:00:00 ok          by riverctl (uid 0, pid 42), generation 3 (retired 2); 33.3 ms (validate 1.2, room 0.0, spawn 2.0, ready 30.0, drain start 3.0)"), "{text}");
        assert!(
            text.contains("drained in 1.0 s, killed by deadline: 4 connections cut"),
            "{text}"
        );
        assert!(
            text.contains("#3   1970-01-01 00:00:00 rejected    by SIGHUP;"),
            "{text}"
        );
        assert!(text.contains("error: error: bad\n"), "{text}");
    }
}

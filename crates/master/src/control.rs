//! The control socket riverctl talks to: one request, one answer per connection.
//! Only root and the master's own uid may use it (SO_PEERCRED), on top of the
//! socket file's 0600 mode.

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use river_ipc::{Channel, ControlRequest, ControlResponse, ReloadTrigger};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::supervisor::Command;

/// A client that connects must say what it wants within this time.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Bind `path` with mode 0600. A stale socket file is replaced.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        if std::fs::symlink_metadata(path).is_ok() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener,
        })
    }

    /// Serve requests until the master's loop goes away.
    pub async fn serve(self, commands: mpsc::UnboundedSender<Command>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let commands = commands.clone();
                    tokio::spawn(async move {
                        if let Err(err) = handle(stream, commands).await {
                            tracing::debug!(error = %err, "control connection failed");
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|err| format!("cannot read peer credentials: {err}"))?;
    let own = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == own {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not control this master (only root and uid {own})",
            cred.uid()
        ))
    }
}

async fn handle(
    stream: UnixStream,
    commands: mpsc::UnboundedSender<Command>,
) -> Result<(), river_ipc::IpcError> {
    let allowed = peer_allowed(&stream);
    let trigger = trigger(&stream);
    let channel = Channel::new(OwnedFd::from(stream.into_std()?))?;
    // Read the request before answering, even a refusal: a client still
    // writing when we close would see EPIPE instead of our answer.
    let request =
        match tokio::time::timeout(REQUEST_TIMEOUT, channel.recv::<ControlRequest>()).await {
            Ok(Ok(Some((request, _)))) => request,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(err)) => {
                let message = format!("malformed request: {err}");
                return channel.send(&ControlResponse::Error { message }, &[]).await;
            }
            Err(_) => {
                let message = "no request within 10 s".to_owned();
                return channel.send(&ControlResponse::Error { message }, &[]).await;
            }
        };
    if let Err(message) = allowed {
        tracing::warn!("{message}");
        return channel.send(&ControlResponse::Error { message }, &[]).await;
    }
    let gone = || ControlResponse::Error {
        message: "the master is shutting down".into(),
    };
    let response = match request {
        ControlRequest::Reload { wait: true } => {
            let (reply, answer) = oneshot::channel();
            let sent = commands.send(Command::Reload {
                reply: Some(reply),
                trigger,
            });
            match sent {
                Ok(()) => answer.await.unwrap_or_else(|_| gone()),
                Err(_) => gone(),
            }
        }
        ControlRequest::Reload { wait: false } => ack(commands.send(Command::Reload {
            reply: None,
            trigger,
        })),
        ControlRequest::Status => {
            let (reply, answer) = oneshot::channel();
            match commands.send(Command::Status { reply }) {
                Ok(()) => answer.await.unwrap_or_else(|_| gone()),
                Err(_) => gone(),
            }
        }
        ControlRequest::History => {
            let (reply, answer) = oneshot::channel();
            match commands.send(Command::History { reply }) {
                Ok(()) => answer.await.unwrap_or_else(|_| gone()),
                Err(_) => gone(),
            }
        }
        ControlRequest::Stop { graceful } => ack(commands.send(Command::Stop { graceful })),
        ControlRequest::ReopenLogs => ack(commands.send(Command::ReopenLogs)),
    };
    channel.send(&response, &[]).await
}

/// Who asks, for the reload history: riverctl's uid and pid, and whether
/// systemd started it (`ExecReload`: its parent is pid 1).
fn trigger(stream: &UnixStream) -> ReloadTrigger {
    let Ok(cred) = stream.peer_cred() else {
        return ReloadTrigger::Riverctl { uid: 0, pid: 0 };
    };
    let uid = cred.uid();
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    if pid != 0 && parent_of(pid) == Some(1) {
        ReloadTrigger::Systemd { uid, pid }
    } else {
        ReloadTrigger::Riverctl { uid, pid }
    }
}

/// The parent pid of `pid`, from /proc/PID/stat.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    stat.get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ack<T>(sent: Result<(), mpsc::error::SendError<T>>) -> ControlResponse {
    match sent {
        Ok(()) => ControlResponse::Accepted,
        Err(_) => ControlResponse::Error {
            message: "the master is shutting down".into(),
        },
    }
}

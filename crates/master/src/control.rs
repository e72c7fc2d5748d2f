//! The control socket riverctl talks to: one request, one answer per connection.
//! Only root and the master's own uid may use it (SO_PEERCRED), on top of the
//! socket file's 0600 mode.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::path::{Path, PathBuf};

use river_ipc::{Channel, ControlRequest, ControlResponse, ReloadTrigger};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::supervisor::Command;

/// A client that connects must say what it wants within this time.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// riverctl's requests are a few dozen bytes; a frame announcing more is
/// refused before its payload is buffered.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Control connections served at once; more wait in the socket's backlog.
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    #[error("another River master (pid {pid}) is running with the control socket {}", path.display())]
    InUse { pid: String, path: PathBuf },
    #[error("{} exists and is not a socket: not removing it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot use the control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound control socket, before the master's event loop runs.
pub struct ControlSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
    /// The socket file this master made (device, inode): removed on exit
    /// only if the path still names it. None once handed to a new master.
    identity: Option<(u64, u64)>,
}

impl ControlSocket {
    /// Bind `path` with mode 0600. When a master answers there, it is refused;
    /// a socket nobody answers on (a master that was killed) is replaced;
    /// anything else at the path is left alone and refused.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlSocketError> {
        let io = |source| ControlSocketError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(live) => {
                        let pid = getsockopt(&live, PeerCredentials)
                            .map(|cred| cred.pid().to_string())
                            .unwrap_or_else(|_| "unknown".into());
                        return Err(ControlSocketError::InUse {
                            pid,
                            path: path.to_owned(),
                        });
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::fs::remove_file(path).map_err(io)?;
                    }
                    Err(err) => return Err(io(err)),
                }
            }
            Ok(_) => {
                return Err(ControlSocketError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io(err)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener,
            identity: Some((meta.dev(), meta.ino())),
        })
    }

    /// The control socket a new master inherited from the old one (binary
    /// upgrade): the same listening socket and file, never bound again.
    pub fn inherited(path: &Path, fd: OwnedFd) -> ControlSocket {
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        ControlSocket {
            path: path.to_owned(),
            listener: std::os::unix::net::UnixListener::from(fd),
            identity,
        }
    }

    /// Serve requests until the master's loop goes away (within its runtime),
    /// or until `handed_over` turns true: a new master answers from then on,
    /// and the socket file is its own.
    async fn serve(
        mut self,
        commands: mpsc::UnboundedSender<Command>,
        mut handed_over: watch::Receiver<bool>,
    ) {
        let listener = match self
            .listener
            .set_nonblocking(true)
            .and_then(|()| self.listener.try_clone())
            .and_then(UnixListener::from_std)
        {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(error = %err, "control socket unusable: riverctl cannot reach this master");
                return;
            }
        };
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let handed_over = async move {
            let _ = handed_over.wait_for(|over| *over).await;
        };
        tokio::pin!(handed_over);
        loop {
            let next = async {
                let slot = slots.clone().acquire_owned().await.ok()?;
                Some((listener.accept().await, slot))
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut handed_over => {
                    self.identity = None;
                    return;
                }
                next = next => match next {
                    Some((accepted, slot)) => accepted.map(|(stream, _)| (stream, slot)),
                    None => return,
                },
            };
            match accepted {
                Ok((stream, slot)) => {
                    let commands = commands.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
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

/// The control socket as the supervisor holds it: serving starts when the
/// master is in charge, and ends when a new master takes over.
pub struct Control {
    socket: Option<ControlSocket>,
    raw_fd: RawFd,
    commands: mpsc::UnboundedSender<Command>,
    handed_over: watch::Sender<bool>,
}

impl Control {
    pub fn new(socket: ControlSocket, commands: mpsc::UnboundedSender<Command>) -> Control {
        Control {
            raw_fd: socket.listener.as_raw_fd(),
            socket: Some(socket),
            commands,
            handed_over: watch::channel(false).0,
        }
    }

    /// Start answering riverctl (within the runtime); once only.
    pub fn start(&mut self) {
        if let Some(socket) = self.socket.take() {
            tokio::spawn(socket.serve(self.commands.clone(), self.handed_over.subscribe()));
        }
    }

    /// The listening socket, for a new master to inherit.
    pub fn raw_fd(&self) -> RawFd {
        self.raw_fd
    }

    /// A new master answers from now on: stop accepting, close our copy,
    /// leave the socket file alone.
    pub fn hand_over(&mut self) {
        if let Some(socket) = &mut self.socket {
            socket.identity = None;
        }
        self.socket = None;
        let _ = self.handed_over.send(true);
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| Some((meta.dev(), meta.ino())) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
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
    let channel =
        Channel::with_max_frame_len(OwnedFd::from(stream.into_std()?), MAX_REQUEST_BYTES)?;
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
    if gave_up(&channel) {
        // A master that was stopped or busy reads requests late; one whose
        // client already gave up (and told its caller so) is not acted on.
        tracing::warn!(
            ?request,
            "the client gave up before its request was read: ignored"
        );
        return Ok(());
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
        ControlRequest::Upgrade { binary } => {
            let (reply, answer) = oneshot::channel();
            match commands.send(Command::Upgrade { binary, reply }) {
                Ok(()) => answer.await.unwrap_or_else(|_| gone()),
                Err(_) => gone(),
            }
        }
    };
    channel.send(&response, &[]).await
}

/// True when the client has closed its end: nothing will read our answer.
fn gave_up(channel: &Channel) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::{AsFd, AsRawFd};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            channel.as_fd().as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Ok(0)
    )
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

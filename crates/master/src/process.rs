//! Starting a worker: re-execute this binary with one inherited descriptor, its
//! end of a socketpair, then send it the generation's config and sockets.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::socket;
use nix::unistd::Pid;
use river_config::Config;
use river_ipc::{Channel, FromWorker, Hello, IpcError, ToWorker};
use tokio::sync::mpsc::UnboundedSender;

use crate::inputs::GenerationInputs;

/// The descriptor number of the IPC channel in a worker (or resolver).
pub const WORKER_IPC_FD: RawFd = 3;

/// What a worker's watcher task reports to the master's loop.
#[derive(Debug)]
pub enum WorkerEvent {
    Message {
        generation: u64,
        index: usize,
        pid: u32,
        message: FromWorker,
    },
    Exited {
        generation: u64,
        index: usize,
        pid: u32,
        status: String,
    },
    /// From a generation's resolver (service discovery).
    Discovery(crate::discovery::DiscoveryEvent),
    /// Connection handoff: a draining worker's batch, checked against the
    /// descriptors its frame carried (which the master holds in transit).
    Handoff {
        generation: u64,
        index: usize,
        pid: u32,
        batch: u64,
        conns: Vec<river_ipc::HandedConn>,
        fds: Vec<OwnedFd>,
    },
    /// An `Adopt` frame (master batch `batch`) could not be sent.
    AdoptUnsent { batch: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start worker process: {0}")]
    Io(#[from] std::io::Error),
}

/// The master's handle on a running worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub pid: u32,
    channel: Arc<Channel>,
}

impl WorkerHandle {
    /// Send without blocking the master's loop on a slow worker.
    pub fn send(&self, message: ToWorker) {
        let channel = self.channel.clone();
        let pid = self.pid;
        tokio::spawn(async move {
            if let Err(err) = channel.send(&message, &[]).await {
                tracing::debug!(pid, error = %err, "could not message worker");
            }
        });
    }

    /// Send `messages` in this order, without blocking (separate `send`s
    /// may overtake each other).
    pub fn send_many(&self, messages: Vec<ToWorker>) {
        let channel = self.channel.clone();
        let pid = self.pid;
        tokio::spawn(async move {
            for message in messages {
                if let Err(err) = channel.send(&message, &[]).await {
                    tracing::debug!(pid, error = %err, "could not message worker");
                    return;
                }
            }
        });
    }

    /// Send `message` with `fds` (connections in transit: the master's
    /// copies close once sent), without blocking; a failure is reported on
    /// `events` as [`WorkerEvent::AdoptUnsent`] for `batch`.
    pub fn send_adopt(
        &self,
        message: ToWorker,
        fds: Vec<OwnedFd>,
        batch: u64,
        events: UnboundedSender<WorkerEvent>,
    ) {
        let channel = self.channel.clone();
        let pid = self.pid;
        tokio::spawn(async move {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            if let Err(err) = channel.send(&message, &borrowed).await {
                tracing::debug!(pid, error = %err, "could not hand connections to worker");
                let _ = events.send(WorkerEvent::AdoptUnsent { batch });
            }
        });
    }

    /// Send with one descriptor attached (a reopened log), without blocking.
    pub fn send_with_file(&self, message: ToWorker, file: Arc<std::fs::File>) {
        let channel = self.channel.clone();
        let pid = self.pid;
        tokio::spawn(async move {
            if let Err(err) = channel.send(&message, &[file.as_fd()]).await {
                tracing::debug!(pid, error = %err, "could not message worker");
            }
        });
    }

    /// Signal the worker. When that is refused (a master without CAP_KILL over
    /// workers that run as another user), close the worker's channel instead:
    /// a worker whose master's end closes drains and exits by itself, so a
    /// stop or a drain deadline still ends, if later than asked.
    pub fn signal(&self, signal: Signal) {
        let Ok(pid) = i32::try_from(self.pid) else {
            return;
        };
        match signal::kill(Pid::from_raw(pid), signal) {
            // ESRCH: it is already gone and its exit event is on its way.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(err) => {
                tracing::error!(
                    pid = self.pid,
                    %signal,
                    error = %err,
                    "cannot signal worker (does the master lack CAP_KILL?): closing its channel so that it drains and exits"
                );
                if let Err(err) = socket::shutdown(self.channel.as_raw_fd(), socket::Shutdown::Both)
                {
                    tracing::error!(pid = self.pid, error = %err, "cannot close the worker's channel");
                }
            }
        }
    }
}

/// Start this binary again as `river SUBCOMMAND --ipc-fd 3` (a worker, a
/// resolver), named `title` in ps, with one inherited descriptor: its end of a
/// socketpair. Returns the child and the master's end.
pub fn spawn_with_ipc(
    subcommand: &str,
    title: String,
    kill_on_drop: bool,
) -> std::io::Result<(tokio::process::Child, OwnedFd)> {
    let (master_end, child_end) = river_ipc::socketpair()?;
    let child_fd = child_end.as_raw_fd();
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0(title)
        .arg(subcommand)
        .arg("--ipc-fd")
        .arg(WORKER_IPC_FD.to_string())
        .env_remove("NOTIFY_SOCKET") // only the master speaks to systemd
        .stdin(Stdio::null())
        .kill_on_drop(kill_on_drop);
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            if child_fd == WORKER_IPC_FD {
                if libc::fcntl(child_fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, WORKER_IPC_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(child_end);
    Ok((child, master_end))
}

/// A child's exit as the master logs and reports it.
pub fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("unknown ({err})"),
    }
}

/// 0 for the first failure, then 100 ms doubling up to `max`: how long a
/// master waits before it starts a child that keeps dying again.
pub fn restart_delay(failures: u32, max: std::time::Duration) -> std::time::Duration {
    if failures == 0 {
        return std::time::Duration::ZERO;
    }
    let exponent = (failures - 1).min(16);
    (std::time::Duration::from_millis(100) * 2u32.pow(exponent)).min(max)
}

/// Start worker `index` of `generation`. Its watcher task hands it its inputs
/// (the Hello, which may be large, so never on the master's loop: a worker
/// stopped right after exec must not stall it), then reports its messages and
/// its exit on `events`.
pub fn spawn_worker(
    generation: u64,
    index: usize,
    inputs: &GenerationInputs,
    events: UnboundedSender<WorkerEvent>,
) -> Result<WorkerHandle, SpawnError> {
    let (child, master_end) = spawn_with_ipc(
        "worker",
        format!("river: worker process (generation {generation})"),
        false,
    )?;
    let pid = child.id().unwrap_or(0);
    let channel = Arc::new(Channel::new(master_end)?);
    let hello = Hello {
        generation,
        worker_index: index,
        config: Config::clone(&inputs.config),
        listeners: inputs
            .sockets
            .iter()
            .map(|(address, _)| address.clone())
            .collect(),
        tls: inputs.tls.clone(),
        access_log: inputs.access_log.is_some(),
        balance: inputs.balance.is_some(),
        stats: true,
    };
    let mut files: Vec<Arc<OwnedFd>> = inputs
        .sockets
        .iter()
        .map(|(_, socket)| socket.clone())
        .collect();
    if let Some(log) = &inputs.access_log {
        files.push(Arc::new(OwnedFd::from(log.try_clone()?)));
    }
    // The order Hello documents: listeners, access log, balance board, stats board.
    files.extend(inputs.balance.clone());
    files.push(inputs.stats_fd.clone());
    tokio::spawn(watch(
        WorkerIdentity {
            generation,
            index,
            pid,
        },
        child,
        channel.clone(),
        hello,
        files,
        events,
    ));
    Ok(WorkerHandle { pid, channel })
}

struct WorkerIdentity {
    generation: u64,
    index: usize,
    pid: u32,
}

/// A worker's life as the master sees it: its Hello goes out, then every
/// message it sends and finally its exit are reported on `events`.
async fn watch(
    who: WorkerIdentity,
    mut child: tokio::process::Child,
    channel: Arc<Channel>,
    hello: Hello,
    files: Vec<Arc<OwnedFd>>,
    events: UnboundedSender<WorkerEvent>,
) {
    let WorkerIdentity {
        generation,
        index,
        pid,
    } = who;
    let hello_channel = channel.clone();
    let send_hello = async move {
        let hello = ToWorker::Hello(Box::new(hello));
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|fd| fd.as_fd()).collect();
        let sent = hello_channel.send(&hello, &fds).await;
        // The worker has its copies now: this task must not keep a listener
        // open that a reload removes.
        drop(fds);
        drop(files);
        sent
    };
    tokio::pin!(send_hello);
    let mut greeted = false;
    let mut listening = true;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = exit_text(status);
                let _ = events.send(WorkerEvent::Exited { generation, index, pid, status });
                return;
            }
            sent = &mut send_hello, if !greeted => {
                greeted = true;
                if let Err(err) = sent {
                    tracing::warn!(pid, error = %err, "cannot send the worker its configuration: killing it");
                    let _ = child.start_kill();
                }
            }
            message = channel.recv::<FromWorker>(), if listening && greeted => match message {
                Ok(Some((FromWorker::Handoff { batch, conns }, fds))) => {
                    match river_ipc::handoff::check_batch(&conns, fds.len()) {
                        Ok(()) => {
                            let _ = events.send(WorkerEvent::Handoff { generation, index, pid, batch, conns, fds });
                        }
                        Err(err) => {
                            // As any bad frame: the worker is replaced; the
                            // descriptors close here.
                            tracing::error!(pid, error = %err, "bad handoff frame from worker: killing it");
                            listening = false;
                            let _ = child.start_kill();
                        }
                    }
                }
                // Descriptors with any other message are unexpected: closed.
                Ok(Some((message, _))) => {
                    let _ = events.send(WorkerEvent::Message { generation, index, pid, message });
                }
                Ok(None) => listening = false,
                // A worker killed (or dying) mid-frame: its exit follows.
                Err(IpcError::Io(err)) => {
                    tracing::debug!(pid, error = %err, "worker channel closed");
                    listening = false;
                }
                Err(err) => {
                    // A worker that speaks garbage cannot be trusted to drain: replace it.
                    tracing::error!(pid, error = %err, "bad frame from worker: killing it");
                    listening = false;
                    let _ = child.start_kill();
                }
            },
        }
    }
}

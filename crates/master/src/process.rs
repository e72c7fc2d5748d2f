//! Starting a worker: re-execute this binary with one inherited descriptor, its
//! end of a socketpair, then send it the generation's config and sockets.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
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

/// The descriptor number of the IPC channel in a worker.
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
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start worker process: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot send the worker its configuration: {0}")]
    Ipc(#[from] IpcError),
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

/// Start worker `index` of `generation` and hand it its inputs. The watcher task
/// reports its messages and its exit on `events`.
pub async fn spawn_worker(
    generation: u64,
    index: usize,
    inputs: &GenerationInputs,
    events: UnboundedSender<WorkerEvent>,
) -> Result<WorkerHandle, SpawnError> {
    let (master_end, worker_end) = river_ipc::socketpair()?;
    let child_fd = worker_end.as_raw_fd();

    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0(format!("river: worker process (generation {generation})"))
        .arg("worker")
        .arg("--ipc-fd")
        .arg(WORKER_IPC_FD.to_string())
        .env_remove("NOTIFY_SOCKET") // only the master speaks to systemd
        .stdin(Stdio::null())
        .kill_on_drop(false);
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
    let mut child = command.spawn()?;
    drop(worker_end);
    let pid = child.id().unwrap_or(0);

    let channel = Arc::new(Channel::new(master_end)?);
    let hello = ToWorker::Hello(Box::new(Hello {
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
    }));
    let mut fds: Vec<BorrowedFd<'_>> = inputs
        .sockets
        .iter()
        .map(|(_, socket)| socket.as_fd())
        .collect();
    fds.extend(inputs.access_log.as_ref().map(|file| file.as_fd()));
    fds.extend(inputs.balance.as_ref().map(|board| board.as_fd()));
    fds.push(inputs.stats_fd.as_fd());
    if let Err(err) = channel.send(&hello, &fds).await {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(err.into());
    }

    let watcher_channel = channel.clone();
    tokio::spawn(async move {
        let mut listening = true;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = match status {
                        Ok(status) => status.to_string(),
                        Err(err) => format!("unknown ({err})"),
                    };
                    let _ = events.send(WorkerEvent::Exited { generation, index, pid, status });
                    return;
                }
                message = watcher_channel.recv::<FromWorker>(), if listening => match message {
                    Ok(Some((message, _))) => {
                        let _ = events.send(WorkerEvent::Message { generation, index, pid, message });
                    }
                    Ok(None) => listening = false,
                    Err(err) => {
                        // A worker that speaks garbage cannot be trusted to drain: replace it.
                        tracing::error!(pid, error = %err, "bad frame from worker: killing it");
                        listening = false;
                        let _ = child.start_kill();
                    }
                },
            }
        }
    });
    Ok(WorkerHandle { pid, channel })
}

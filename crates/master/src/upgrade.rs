//! Binary upgrade, nginx's way: the running (old) master starts the binary on
//! disk as a new master that inherits the listening sockets and the control
//! socket, and retires only once the new master's first generation serves.
//!
//! Why a new process and not a re-exec in place (HAProxy's way): a re-exec
//! cannot be undone. If the new binary crashes while starting, rejects the
//! configuration or never gets its workers ready, a re-executed master is
//! already gone and its workers with it; here the old master simply keeps
//! serving and kills the failed newcomer.
//!
//! What the new master inherits is described in `$RIVER_UPGRADE` (JSON, as
//! nginx's `NGINX=` variable): which descriptors are which listener, the
//! control socket, the first generation number to use, and one end of a
//! socketpair on which the two masters talk in JSON lines ([`UpgradeNote`]).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use river_config::ListenAddress;
use river_ipc::UpgradeNote;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::listeners::SharedSocket;

/// The environment variable that makes `river` a new master taking over.
pub const ENV: &str = "RIVER_UPGRADE";
/// The longest line accepted on the link between the masters.
const MAX_NOTE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("${ENV} is not a valid description: {0}")]
    Description(String),
    #[error("inherited descriptor {fd} ({what}) is unusable: {reason}")]
    Descriptor {
        fd: RawFd,
        what: String,
        reason: String,
    },
    #[error("cannot start {}: {source}", binary.display())]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("I/O on the link between the masters: {0}")]
    Io(#[from] io::Error),
}

/// What the old master hands the new one (the JSON of `$RIVER_UPGRADE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Description {
    /// The socketpair end to talk to the old master on.
    link: RawFd,
    /// The listening control socket, if there is one.
    control: Option<RawFd>,
    /// Listening sockets by address.
    listeners: Vec<(ListenAddress, RawFd)>,
    /// The metrics listener and its address, if there is one.
    #[serde(default)]
    metrics: Option<(ListenAddress, RawFd)>,
    /// Number for the new master's first generation (numbers continue, so
    /// logs never show two generations with one number).
    next_generation: u64,
    /// The old master.
    old_pid: u32,
}

/// What a new master took over, parsed and checked.
pub struct Inheritance {
    pub link: OwnedFd,
    pub control: Option<OwnedFd>,
    pub metrics: Option<(ListenAddress, OwnedFd)>,
    pub listeners: BTreeMap<ListenAddress, SharedSocket>,
    pub next_generation: u64,
    pub old_pid: u32,
}

impl Inheritance {
    /// The inheritance of a master started by [`spawn_new_master`], or None
    /// for a master started by an operator. The variable is removed, so that
    /// nothing this master starts sees it.
    pub fn from_env() -> Result<Option<Inheritance>, UpgradeError> {
        let Some(text) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        // SAFETY (edition 2021: safe): called before any thread exists.
        std::env::remove_var(ENV);
        let text = text
            .into_string()
            .map_err(|_| UpgradeError::Description("not UTF-8".into()))?;
        let description: Description = serde_json::from_str(&text)
            .map_err(|err| UpgradeError::Description(err.to_string()))?;
        let link = adopt(description.link, "link to the old master", false)?;
        let control = description
            .control
            .map(|fd| adopt(fd, "control socket", true))
            .transpose()?;
        let metrics = description
            .metrics
            .map(|(address, fd)| adopt(fd, "metrics listener", true).map(|fd| (address, fd)))
            .transpose()?;
        let mut listeners = BTreeMap::new();
        for (address, fd) in description.listeners {
            let socket = adopt(fd, &format!("listener {address}"), true)?;
            listeners.insert(address, std::sync::Arc::new(socket));
        }
        Ok(Some(Inheritance {
            link,
            control,
            metrics,
            listeners,
            next_generation: description.next_generation.max(1),
            old_pid: description.old_pid,
        }))
    }
}

/// Take ownership of inherited `fd` after checking that it is a socket (and a
/// listening one when `listening`), and make it close-on-exec again.
fn adopt(fd: RawFd, what: &str, listening: bool) -> Result<OwnedFd, UpgradeError> {
    let bad = |reason: String| UpgradeError::Descriptor {
        fd,
        what: what.to_owned(),
        reason,
    };
    if fd < 3 {
        return Err(bad("not a descriptor River hands over".into()));
    }
    // SAFETY: fstat on any number is harmless; an unopened one fails.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(borrowed).map_err(|err| bad(err.to_string()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    if listening {
        let accepting =
            nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::AcceptConn)
                .map_err(|err| bad(err.to_string()))?;
        if !accepting {
            return Err(bad("not listening".into()));
        }
    }
    nix::fcntl::fcntl(
        borrowed,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|err| bad(err.to_string()))?;
    // SAFETY: checked open above; the old master handed it to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How the running master was started, to start its successor the same way.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The binary's path at start-up (e.g. /usr/sbin/river): the file a
    /// package upgrade replaces, unlike /proc/self/exe, which stays the old one.
    pub binary: PathBuf,
    pub config: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub threads_per_service: Option<usize>,
}

impl Invocation {
    /// This process's binary path, resolved now (before any upgrade replaces it).
    pub fn binary_at_start() -> PathBuf {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
    }
}

/// What the old master gives the new one.
pub struct Handover<'a> {
    pub binary: &'a Path,
    pub invocation: &'a Invocation,
    pub control: Option<RawFd>,
    pub metrics: Option<(ListenAddress, RawFd)>,
    pub listeners: Vec<(ListenAddress, SharedSocket)>,
    pub next_generation: u64,
}

/// Start the new master. Returns the child and the old master's end of the
/// link; the child holds copies of every socket from here on.
pub fn spawn_new_master(
    handover: Handover<'_>,
) -> Result<(tokio::process::Child, Link), UpgradeError> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let description = Description {
        link: theirs.as_raw_fd(),
        control: handover.control,
        listeners: handover
            .listeners
            .iter()
            .map(|(address, socket)| (address.clone(), socket.as_raw_fd()))
            .collect(),
        metrics: handover.metrics,
        next_generation: handover.next_generation,
        old_pid: std::process::id(),
    };
    let json = serde_json::to_string(&description)
        .map_err(|err| UpgradeError::Description(err.to_string()))?;
    let mut inherited: Vec<RawFd> = vec![description.link];
    inherited.extend(description.control);
    inherited.extend(description.metrics.as_ref().map(|(_, fd)| *fd));
    inherited.extend(description.listeners.iter().map(|(_, fd)| *fd));

    let invocation = handover.invocation;
    let mut command = tokio::process::Command::new(handover.binary);
    if let Some(config) = &invocation.config {
        command.arg("-c").arg(config);
    }
    if let Some(pid_file) = &invocation.pid_file {
        command.arg("--pidfile").arg(pid_file);
    }
    if let Some(threads) = invocation.threads_per_service {
        command
            .arg("--threads-per-service")
            .arg(threads.to_string());
    }
    command
        .env(ENV, json)
        .stdin(Stdio::null())
        .kill_on_drop(false);
    // SAFETY: between fork and exec, only fcntl (async-signal-safe) on
    // descriptors this process owns.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| UpgradeError::Spawn {
        binary: handover.binary.to_owned(),
        source,
    })?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    Ok((child, Link::new(UnixStream::from_std(ours)?)))
}

/// Tell the old master this new one failed, before any runtime exists (or
/// after it is gone), then let the link close.
pub fn tell_failed_blocking(link: OwnedFd, error: &str) {
    use std::io::Write;
    let note = UpgradeNote::Failed {
        error: error.to_owned(),
    };
    let Ok(mut line) = serde_json::to_vec(&note) else {
        return;
    };
    line.push(b'\n');
    let mut stream = std::os::unix::net::UnixStream::from(link);
    let _ = stream.set_nonblocking(false);
    let _ = stream.write_all(&line);
}

/// One master's end of the link between the two (JSON lines).
pub struct Link {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Link {
    fn new(stream: UnixStream) -> Link {
        let (read, write) = stream.into_split();
        Link {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    /// The new master's end, from its inheritance (within the runtime).
    pub fn inherited(fd: OwnedFd) -> io::Result<Link> {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(Link::new(UnixStream::from_std(stream)?))
    }

    pub fn split(self) -> (LinkReader, LinkWriter) {
        (LinkReader(self.reader), LinkWriter(self.writer))
    }
}

pub struct LinkReader(BufReader<OwnedReadHalf>);
pub struct LinkWriter(OwnedWriteHalf);

impl LinkReader {
    /// The next note; None when the other master closed the link (exited).
    /// A line that is not a note, or too long, is an error.
    pub async fn next(&mut self) -> Result<Option<UpgradeNote>, UpgradeError> {
        let mut line = Vec::new();
        let read = (&mut self.0)
            .take(MAX_NOTE_BYTES)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|err| UpgradeError::Description(format!("bad note: {err}")))
    }
}

impl LinkWriter {
    pub async fn send(&mut self, note: &UpgradeNote) -> Result<(), UpgradeError> {
        let mut line =
            serde_json::to_vec(note).map_err(|err| UpgradeError::Description(err.to_string()))?;
        line.push(b'\n');
        self.0.write_all(&line).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_that_are_not_listening_sockets_are_refused() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = adopt(file.as_raw_fd(), "listener", true).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = adopt(a.as_raw_fd(), "listener", true).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
        assert!(adopt(1, "listener", true).is_err());
        // The link itself is a connected socket: accepted.
        let owned = adopt(a.as_raw_fd(), "link", false).unwrap();
        std::mem::forget(a);
        drop(owned);
    }

    #[tokio::test]
    async fn notes_travel_as_lines_and_garbage_is_an_error() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_, mut writer) = Link::new(a).split();
        let (mut reader, _) = Link::new(b).split();
        let note = UpgradeNote::Failed { error: "no".into() };
        writer.send(&note).await.unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(note));
        writer.0.write_all(b"{not json}\n").await.unwrap();
        assert!(reader.next().await.is_err());
        drop(writer);
        assert_eq!(reader.next().await.unwrap(), None);
    }
}

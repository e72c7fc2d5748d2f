//! The transport: frames over a Unix SOCK_STREAM socket, with file descriptors
//! passed as SCM_RIGHTS.
//!
//! [`Channel`] is the async side (tokio) used by the master, the workers and the
//! control-socket server; [`request_blocking`] is the one-shot client used by riverctl.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::unix::AsyncFd;

use crate::frame::{encode, FrameDecoder, MAX_FDS_PER_FRAME};
use crate::IpcError;

/// Size of one read from the socket.
const READ_CHUNK: usize = 64 * 1024;
/// Received descriptors not yet claimed by a complete frame. A well-behaved peer
/// never has more than two frames' worth in flight (the tail of one frame and the
/// head of the next can arrive in one recvmsg); more is a protocol violation.
const MAX_QUEUED_FDS: usize = 2 * MAX_FDS_PER_FRAME;

/// A connected `AF_UNIX`, `SOCK_STREAM` pair, both ends `SOCK_CLOEXEC`.
///
/// The master clears `FD_CLOEXEC` on the child's end itself when spawning a worker.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::Stream,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?)
}

/// What [`Channel::recv`] keeps between calls, so that a cancelled `recv` loses nothing.
struct RecvState {
    decoder: FrameDecoder,
    /// Descriptors received, in order, not yet handed out with a frame.
    fds: VecDeque<OwnedFd>,
    scratch: Box<[u8]>,
    /// Control-message buffer; `u64` elements for `cmsghdr` alignment.
    cmsg: Vec<u64>,
    eof: bool,
    poisoned: bool,
}

/// One end of a framed, fd-passing Unix stream socket.
///
/// `send` and `recv` take `&self`: one task can `select!` on [`recv`](Channel::recv)
/// while another path [`send`](Channel::send)s (share it with an `Arc` across tasks).
/// Concurrent `send`s are serialized, frames never interleave.
///
/// Errors are fatal for the channel except [`IpcError::Malformed`] (a complete frame
/// whose payload was not the expected message: it is consumed, and its fds closed,
/// and the next `recv` continues with the next frame). After a fatal receive error,
/// `recv` returns [`IpcError::Poisoned`]; after a failed or cancelled partial send,
/// `send` does.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
    recv: Mutex<RecvState>,
    send_lock: tokio::sync::Mutex<()>,
    send_poisoned: AtomicBool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Wrap a connected Unix stream socket (for instance an end of [`socketpair`], or
    /// the inherited fd of a worker). Sets `O_NONBLOCK`. Must be called inside a
    /// tokio runtime (with I/O enabled).
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        Channel::with_max_frame_len(fd, crate::MAX_FRAME_LEN)
    }

    /// As [`Channel::new`], refusing received frames over `max_len` bytes as
    /// soon as their header arrives: a peer that should only send small
    /// messages cannot make this side buffer megabytes.
    pub fn with_max_frame_len(fd: OwnedFd, max_len: usize) -> io::Result<Channel> {
        set_nonblocking(fd.as_fd())?;
        let cmsg_len = unsafe {
            // SAFETY: CMSG_SPACE is pure arithmetic.
            libc::CMSG_SPACE((MAX_FDS_PER_FRAME * mem::size_of::<RawFd>()) as libc::c_uint)
        } as usize;
        Ok(Channel {
            // SAFETY: an OwnedFd is open and its as_raw_fd never changes while the
            // AsyncFd owns it.
            fd: unsafe { AsyncFd::register(fd) }?,
            recv: Mutex::new(RecvState {
                decoder: FrameDecoder::with_max_len(max_len),
                fds: VecDeque::new(),
                scratch: vec![0u8; READ_CHUNK].into_boxed_slice(),
                cmsg: vec![0u64; cmsg_len.div_ceil(mem::size_of::<u64>())],
                eof: false,
                poisoned: false,
            }),
            send_lock: tokio::sync::Mutex::new(()),
            send_poisoned: AtomicBool::new(false),
        })
    }

    /// A channel over an accepted (or connected) tokio Unix stream, e.g. a
    /// connection on the control socket.
    pub fn from_unix_stream(stream: tokio::net::UnixStream) -> io::Result<Channel> {
        Channel::new(stream.into_std()?.into())
    }

    /// A channel over a std Unix stream.
    pub fn from_std_unix_stream(stream: StdUnixStream) -> io::Result<Channel> {
        Channel::new(stream.into())
    }

    /// Give back the socket. Buffered bytes and queued descriptors are lost; the
    /// socket stays non-blocking.
    pub fn into_inner(self) -> OwnedFd {
        self.fd.into_inner()
    }

    fn recv_state(&self) -> MutexGuard<'_, RecvState> {
        // Nothing panics while holding the lock; tolerate poisoning anyway.
        self.recv.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send `msg` with `fds` attached (at most [`MAX_FDS_PER_FRAME`]). The
    /// descriptors are duplicated into the peer; the caller keeps its own.
    ///
    /// Writes the whole frame, waiting for writability as needed. The descriptors
    /// go as one SCM_RIGHTS control message with the first bytes of the frame.
    ///
    /// **Not cancel-safe**: dropping the future after part of the frame was written
    /// leaves the stream mid-frame; the channel is then poisoned and later sends
    /// fail with [`IpcError::Poisoned`]. A cancel before any byte was written is harmless.
    pub async fn send<M: Serialize>(
        &self,
        msg: &M,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), IpcError> {
        let frame = encode(msg, fds.len())?;
        let raw_fds: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();

        let _serialized = self.send_lock.lock().await;
        if self.send_poisoned.load(Ordering::Acquire) {
            return Err(IpcError::Poisoned);
        }
        let mut progress = SendProgress {
            poisoned: &self.send_poisoned,
            started: false,
            finished: false,
        };
        let mut written = 0;
        while written < frame.len() {
            let mut guard = self.fd.writable().await?;
            let attempt = guard.try_io(|inner| {
                let rights = [ControlMessage::ScmRights(&raw_fds)];
                // The descriptors ride with the first bytes actually accepted.
                let cmsgs: &[ControlMessage] = if written == 0 && !raw_fds.is_empty() {
                    &rights
                } else {
                    &[]
                };
                let iov = [io::IoSlice::new(&frame[written..])];
                loop {
                    match socket::sendmsg::<()>(
                        inner.get_ref().as_raw_fd(),
                        &iov,
                        cmsgs,
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    ) {
                        Err(Errno::EINTR) => continue,
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                        result => return result.map_err(io::Error::from),
                    }
                }
            });
            match attempt {
                Ok(Ok(n)) => {
                    written += n;
                    progress.started = true;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
        progress.finished = true;
        Ok(())
    }

    /// Receive the next message and the descriptors its frame carried (owned,
    /// close-on-exec). `Ok(None)` on a clean end of stream (peer closed between frames);
    /// [`IpcError::Closed`] if it closed mid-frame.
    ///
    /// **Cancel-safe**: every byte and descriptor read lives in the channel, never in
    /// the future, so a `recv` dropped in a `select!` loses nothing and the next
    /// `recv` carries on.
    pub async fn recv<M: DeserializeOwned>(&self) -> Result<Option<(M, Vec<OwnedFd>)>, IpcError> {
        loop {
            if let Some(outcome) = self.take_frame()? {
                return Ok(outcome);
            }
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| self.read_some(inner.get_ref().as_fd())) {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// A frame from what is already buffered: `Some(Some(..))` a message,
    /// `Some(None)` clean EOF, `None` need more bytes.
    #[allow(clippy::type_complexity)]
    fn take_frame<M: DeserializeOwned>(
        &self,
    ) -> Result<Option<Option<(M, Vec<OwnedFd>)>>, IpcError> {
        let mut state = self.recv_state();
        if state.poisoned {
            return Err(IpcError::Poisoned);
        }
        let frame = match state.decoder.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) if state.eof => {
                return if state.decoder.is_at_boundary() {
                    Ok(Some(None))
                } else {
                    state.poisoned = true;
                    Err(IpcError::Closed)
                };
            }
            Ok(None) => return Ok(None),
            Err(e) => {
                state.poisoned = true;
                return Err(e);
            }
        };
        if state.fds.len() < frame.nfds {
            let got = state.fds.len();
            state.fds.clear();
            state.poisoned = true;
            return Err(IpcError::MissingFds {
                expected: frame.nfds,
                got,
            });
        }
        let fds: Vec<OwnedFd> = state.fds.drain(..frame.nfds).collect();
        drop(state);
        // On Malformed, `fds` are dropped (closed) here; the stream stays in step.
        let msg = frame.decode()?;
        Ok(Some(Some((msg, fds))))
    }

    /// One recvmsg into the receive state. The outer `io::Result` carries socket
    /// errors (including WouldBlock, for the readiness guard); the inner one
    /// protocol errors.
    fn read_some(&self, fd: BorrowedFd<'_>) -> io::Result<Result<(), IpcError>> {
        let mut guard = self.recv_state();
        let state = &mut *guard;
        let mut iov = libc::iovec {
            iov_base: state.scratch.as_mut_ptr().cast(),
            iov_len: state.scratch.len(),
        };
        // SAFETY: an all-zero msghdr is valid (null name, no iov, no control).
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = state.cmsg.as_mut_ptr().cast();
        hdr.msg_controllen = (state.cmsg.len() * mem::size_of::<u64>()) as _;
        let n = loop {
            // SAFETY: hdr points at live buffers (scratch, cmsg) of the stated lengths.
            let ret = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
            if ret >= 0 {
                break ret as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };

        // Take ownership of every descriptor the kernel installed, even when the
        // control data was truncated, so that none leaks.
        // SAFETY: hdr was filled by a successful recvmsg; the CMSG_* macros walk the
        // control buffer within msg_controllen, and each SCM_RIGHTS payload holds
        // (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors that are now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                let c = &*cmsg;
                if c.cmsg_level == libc::SOL_SOCKET && c.cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let bytes = (c.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    for i in 0..bytes / mem::size_of::<RawFd>() {
                        let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                        state.fds.push_back(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }

        if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            state.fds.clear();
            state.poisoned = true;
            return Ok(Err(IpcError::FdsTruncated));
        }
        if state.fds.len() > MAX_QUEUED_FDS {
            let count = state.fds.len();
            state.fds.clear();
            state.poisoned = true;
            return Ok(Err(IpcError::TooManyFds { count }));
        }
        if n == 0 {
            state.eof = true;
        } else {
            state.decoder.push(&state.scratch[..n]);
        }
        Ok(Ok(()))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

/// Poisons the send side if a frame was started and not finished (error or cancel).
struct SendProgress<'a> {
    poisoned: &'a AtomicBool,
    started: bool,
    finished: bool,
}

impl Drop for SendProgress<'_> {
    fn drop(&mut self) {
        if self.started && !self.finished {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid, borrowed descriptor.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One request, one answer, blocking: riverctl's side of the control socket.
///
/// Writes `req` as a frame without descriptors and reads exactly one frame back.
/// `timeout` bounds the whole exchange ([`IpcError::Timeout`]); it is enforced with
/// the socket's send/receive timeouts, which are left set afterwards. The stream is
/// switched to blocking mode. The peer closing before a full answer is
/// [`IpcError::Closed`]; an answer announcing descriptors is
/// [`IpcError::MissingFds`] (descriptors are not received here).
pub fn request_blocking<Req: Serialize, Resp: DeserializeOwned>(
    stream: &mut StdUnixStream,
    req: &Req,
    timeout: Option<Duration>,
) -> Result<Resp, IpcError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let remaining = || -> Result<Option<Duration>, IpcError> {
        match deadline {
            None => Ok(None),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(IpcError::Timeout),
            },
        }
    };
    let is_timeout = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };

    stream.set_nonblocking(false)?;
    let frame = encode(req, 0)?;
    let mut written = 0;
    while written < frame.len() {
        stream.set_write_timeout(remaining()?)?;
        // send(MSG_NOSIGNAL) rather than write: no SIGPIPE if the master is gone.
        match socket::send(
            stream.as_raw_fd(),
            &frame[written..],
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(0) => return Err(IpcError::Closed),
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(e) => {
                let e = io::Error::from(e);
                return Err(if is_timeout(&e) {
                    IpcError::Timeout
                } else {
                    e.into()
                });
            }
        }
    }

    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 8192];
    loop {
        if let Some(frame) = decoder.next_frame()? {
            if frame.nfds != 0 {
                return Err(IpcError::MissingFds {
                    expected: frame.nfds,
                    got: 0,
                });
            }
            return frame.decode();
        }
        stream.set_read_timeout(remaining()?)?;
        match stream.read(&mut buf) {
            Ok(0) => return Err(IpcError::Closed),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(IpcError::Timeout),
            Err(e) => return Err(e.into()),
        }
    }
}

//! Connection handoff, this worker's side (issue 12): the hub that
//! connections offer themselves to while the worker drains, the collector
//! that batches those offers into `Handoff` frames to the master and routes
//! its answers back, and the plain sockets a moved connection is rebuilt on.
//!
//! Who does what:
//! - the HTTP/1 session (`http1/session.rs`) offers a keep-alive connection
//!   when it is idle between two requests (nothing read, nothing to write);
//! - a tunnel (`tunnel/`) pauses its pipe and offers both sockets;
//! - the worker's loop (`lib.rs`) activates the hub on `Drain`, drives the
//!   [`Collector`] over the master channel, and adopts connections sent to
//!   it (`Adopt`), serving them once the master commits.
//!
//! An offer sends a *duplicate* of the connection's descriptor: the offering
//! task keeps its own, does not read from it while the offer is out, and
//! drops it (a close, never a shutdown: the socket lives on in the receiver)
//! only when the answer says the connection moved. Otherwise it carries on
//! here, draining as before. The master's rules (`river_ipc::handoff`) make
//! sure an answer always comes, and never both ways.
//!
//! This module sits below `http1/` and `tunnel/` (they use it) and knows no
//! HTTP.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use river_ipc::handoff::batches;
use river_ipc::HandedConn;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// After the first offer of a burst, how long the collector waits for more
/// before it sends a batch (a drain wakes every idle connection at once, and
/// a thousand of them go in 16 frames, not a thousand).
pub const GATHER: Duration = Duration::from_millis(2);

const SERVING: u8 = 0;
const ACTIVE: u8 = 1;
const CLOSED: u8 = 2;

/// The worker's handoff hub, shared by every connection. Exists only with
/// `connection-handoff true`.
pub struct Handoff {
    state: AtomicU8,
    wake: Notify,
    offers: mpsc::UnboundedSender<Offer>,
    /// Offers made and not yet answered, for the first round's report.
    in_progress: AtomicUsize,
    /// Never true: the keep-alive decision of a connection that may still
    /// move (it keeps its connection open even while the worker drains).
    never: watch::Receiver<bool>,
    _never: watch::Sender<bool>,
    /// Always true: the keep-alive decision of a connection that stays.
    always: watch::Receiver<bool>,
    _always: watch::Sender<bool>,
}

/// One connection offered to the serving generation.
pub struct Offer {
    pub conn: HandedConn,
    /// Duplicates of its descriptors, in the order [`HandedConn`] documents.
    pub fds: Vec<OwnedFd>,
    /// Whether it moved.
    pub answer: oneshot::Sender<bool>,
}

impl Handoff {
    /// A hub, and where its offers arrive (for the [`Collector`]).
    pub fn new() -> (Arc<Handoff>, mpsc::UnboundedReceiver<Offer>) {
        let (offers, rx) = mpsc::unbounded_channel();
        let (never_tx, never) = watch::channel(false);
        let (always_tx, always) = watch::channel(true);
        let hub = Handoff {
            state: AtomicU8::new(SERVING),
            wake: Notify::new(),
            offers,
            in_progress: AtomicUsize::new(0),
            never,
            _never: never_tx,
            always,
            _always: always_tx,
        };
        (Arc::new(hub), rx)
    }

    /// The worker drains and a generation serves: every idle connection and
    /// tunnel offers itself now, and every one that becomes idle later.
    pub fn activate(&self) {
        if self
            .state
            .compare_exchange(SERVING, ACTIVE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_waiters();
        }
    }

    /// Nobody will take connections over (graceful shutdown, the master is
    /// gone): from now on they drain as without handoff.
    pub fn close(&self) {
        self.state.store(CLOSED, Ordering::Release);
        self.wake.notify_waiters();
    }

    pub fn is_active(&self) -> bool {
        self.state.load(Ordering::Acquire) == ACTIVE
    }

    /// The connection may still move (the worker serves, or drains with
    /// handoff): keep it open after its response.
    pub fn possible(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// Completes once the hub is active (at once if it is).
    pub async fn wanted(&self) {
        loop {
            // Created before the check: a wake-up in between is not lost.
            let woken = self.wake.notified();
            if self.is_active() {
                return;
            }
            woken.await;
        }
    }

    /// The shutdown flag a movable connection's requests see: never set
    /// while it may move; set once it stays (`refused`) or nothing can take
    /// it (`None`: use the worker's own flag).
    pub fn keep_alive_flag(&self, refused: bool) -> Option<&watch::Receiver<bool>> {
        if refused {
            Some(&self.always)
        } else if self.possible() {
            Some(&self.never)
        } else {
            None
        }
    }

    /// Offer `conn` (with duplicates of its descriptors); whether it moved.
    /// The caller must not read from the connection until this returns.
    pub async fn offer(&self, conn: HandedConn, fds: Vec<OwnedFd>) -> bool {
        if !self.is_active() {
            return false;
        }
        let (answer, moved) = oneshot::channel();
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        let _done = InProgress(&self.in_progress);
        if self.offers.send(Offer { conn, fds, answer }).is_err() {
            return false;
        }
        moved.await.unwrap_or(false)
    }

    /// Offers made and not answered yet.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Acquire)
    }
}

struct InProgress<'a>(&'a AtomicUsize);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A batch ready for a `Handoff` frame.
pub struct Batch {
    pub batch: u64,
    pub conns: Vec<HandedConn>,
    pub fds: Vec<OwnedFd>,
}

/// Batches offers into frames and routes the master's answers back. Driven
/// by the worker's loop, which owns the channel.
pub struct Collector {
    offers: mpsc::UnboundedReceiver<Offer>,
    queue: Vec<Offer>,
    /// When the oldest queued offer arrived.
    since: Option<Instant>,
    out: HashMap<u64, Vec<oneshot::Sender<bool>>>,
    next_batch: u64,
    /// Connections moved and kept so far, for the log.
    pub moved: u64,
    pub kept: u64,
}

impl Collector {
    pub fn new(offers: mpsc::UnboundedReceiver<Offer>) -> Collector {
        Collector {
            offers,
            queue: Vec::new(),
            since: None,
            out: HashMap::new(),
            next_batch: 1,
            moved: 0,
            kept: 0,
        }
    }

    /// The next offer (cancel-safe, for `select!`).
    pub async fn next_offer(&mut self) -> Option<Offer> {
        self.offers.recv().await
    }

    /// Queue `offer`, and any that arrived with it.
    pub fn queue(&mut self, offer: Offer) {
        self.since.get_or_insert_with(Instant::now);
        self.queue.push(offer);
        while let Ok(more) = self.offers.try_recv() {
            self.queue.push(more);
        }
    }

    /// When the queue must go out even if not full.
    pub fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + GATHER)
    }

    /// The next batch to send: a full frame, or whatever is queued once
    /// [`Collector::due`] passed (or `now`).
    pub fn take_batch(&mut self, now: bool) -> Option<Batch> {
        if self.queue.is_empty() {
            self.since = None;
            return None;
        }
        let fds: Vec<usize> = self.queue.iter().map(|o| o.conn.fds()).collect();
        let first = batches(&fds).into_iter().next()?;
        let full = first.end < self.queue.len();
        let due = self.due().is_some_and(|at| Instant::now() >= at);
        if !(full || due || now) {
            return None;
        }
        let taken: Vec<Offer> = self.queue.drain(first).collect();
        if self.queue.is_empty() {
            self.since = None;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let mut conns = Vec::with_capacity(taken.len());
        let mut all_fds = Vec::new();
        let mut answers = Vec::with_capacity(taken.len());
        for offer in taken {
            conns.push(offer.conn);
            all_fds.extend(offer.fds);
            answers.push(offer.answer);
        }
        self.out.insert(batch, answers);
        Some(Batch {
            batch,
            conns,
            fds: all_fds,
        })
    }

    /// The master's answer to `batch`. A missing entry counts as kept.
    pub fn answered(&mut self, batch: u64, accepted: &[bool]) {
        let Some(answers) = self.out.remove(&batch) else {
            tracing::warn!(
                batch,
                "an answer to a handoff batch this worker did not send"
            );
            return;
        };
        if accepted.len() != answers.len() {
            tracing::error!(
                batch,
                sent = answers.len(),
                answered = accepted.len(),
                "the master answered a handoff batch with the wrong length"
            );
        }
        let (mut moved, mut kept) = (0, 0);
        for (i, answer) in answers.into_iter().enumerate() {
            let yes = accepted.get(i).copied().unwrap_or(false);
            if yes {
                moved += 1;
            } else {
                kept += 1;
            }
            let _ = answer.send(yes);
        }
        self.moved += moved;
        self.kept += kept;
        tracing::info!(batch, moved, kept, "handoff batch answered");
    }

    /// A batch could not be sent: its connections stay.
    pub fn unsent(&mut self, batch: u64) {
        self.answered(batch, &[]);
    }

    /// Nothing will be taken over any more (no master): every queued offer
    /// stays. Batches already sent wait for the master's answer, unless
    /// `master_gone`: then no answer can come and they stay too.
    pub fn refuse_all(&mut self, master_gone: bool) {
        for offer in self.queue.drain(..) {
            let _ = offer.answer.send(false);
        }
        self.since = None;
        if master_gone {
            for (_, answers) in self.out.drain() {
                for answer in answers {
                    let _ = answer.send(false);
                }
            }
        }
    }

    /// Nothing queued or waiting for an answer.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.out.is_empty()
    }
}

/// A duplicate of descriptor `fd`, for an offer (the caller keeps `fd`).
pub fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is open for the duration of this call (the caller owns
    // the socket it belongs to).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// A plaintext client socket rebuilt from a descriptor another process
/// accepted (a moved tunnel's client side), or from a duplicate of one.
#[derive(Debug)]
pub enum Plain {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Plain {
    /// Wrap `fd`, a connected stream socket, in this runtime.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Plain> {
        use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
        let family = getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .map_err(io::Error::from)?
            .family();
        Ok(match family {
            Some(AddressFamily::Inet | AddressFamily::Inet6) => {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                let stream = TcpStream::from_std(std)?;
                let _ = stream.set_nodelay(true);
                Plain::Tcp(stream)
            }
            Some(AddressFamily::Unix) => {
                let std = std::os::unix::net::UnixStream::from(fd);
                std.set_nonblocking(true)?;
                Plain::Unix(UnixStream::from_std(std)?)
            }
            _ => return Err(io::Error::other("not a TCP or Unix socket")),
        })
    }

    /// The peer's address (TCP only).
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Plain::Tcp(s) => s.peer_addr().ok(),
            Plain::Unix(_) => None,
        }
    }
}

impl AsRawFd for Plain {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Plain::Tcp(s) => s.as_raw_fd(),
            Plain::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsFd for Plain {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Plain::Tcp(s) => s.as_fd(),
            Plain::Unix(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Plain::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Plain::Unix(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_flush(cx),
            Plain::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plain::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Plain::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use river_ipc::HandedIdle;

    fn idle() -> HandedConn {
        HandedConn::Idle(HandedIdle {
            service: "S".into(),
            client: None,
            tls: false,
        })
    }

    fn offer(conn: HandedConn) -> (Offer, oneshot::Receiver<bool>) {
        let fds = (0..conn.fds())
            .map(|_| duplicate(std::io::stdin().as_raw_fd()).unwrap())
            .collect();
        let (answer, rx) = oneshot::channel();
        (Offer { conn, fds, answer }, rx)
    }

    #[tokio::test]
    async fn a_hub_wakes_waiters_only_when_activated() {
        let (hub, _rx) = Handoff::new();
        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wanted().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // Nothing is offered while serving.
        assert!(!hub.offer(idle(), Vec::new()).await);
        hub.activate();
        waiter.await.unwrap();
        // Once active, wanted() is ready at once.
        hub.wanted().await;
        assert_eq!(hub.keep_alive_flag(false).map(|f| *f.borrow()), Some(false));
        assert_eq!(hub.keep_alive_flag(true).map(|f| *f.borrow()), Some(true));
        hub.close();
        assert!(hub.keep_alive_flag(false).is_none());
        assert!(!hub.offer(idle(), Vec::new()).await);
    }

    // Paused time: the gather window is 2 ms, shorter than a stall of a loaded CI machine.
    #[tokio::test(start_paused = true)]
    async fn offers_are_batched_by_frame_and_answered_in_order() {
        let (_hub, rx) = Handoff::new();
        let mut collector = Collector::new(rx);
        let mut answers = Vec::new();
        for _ in 0..100 {
            let (o, a) = offer(idle());
            collector.queue(o);
            answers.push(a);
        }
        // A full frame goes at once, the rest waits for the gather window.
        let first = collector.take_batch(false).expect("a full frame");
        assert_eq!((first.conns.len(), first.fds.len()), (64, 64));
        assert!(collector.take_batch(false).is_none());
        let second = collector.take_batch(true).expect("the rest, when asked");
        assert_eq!(second.conns.len(), 36);
        assert!(collector.take_batch(true).is_none());
        let mut accepted = vec![true; 64];
        accepted[3] = false;
        collector.answered(first.batch, &accepted);
        // A short answer: the missing ones stay.
        collector.answered(second.batch, &[true; 10]);
        assert!(collector.is_idle());
        let got: Vec<bool> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap())
            .collect();
        assert!(!got[3] && got[..64].iter().filter(|a| **a).count() == 63);
        assert_eq!(got[64..].iter().filter(|a| **a).count(), 10);
        assert_eq!((collector.moved, collector.kept), (73, 27));
    }

    #[tokio::test]
    async fn without_a_master_every_offer_stays() {
        let (_hub, rx) = Handoff::new();
        let mut collector = Collector::new(rx);
        let (o1, a1) = offer(idle());
        let (o2, a2) = offer(idle());
        collector.queue(o1);
        let sent = collector.take_batch(true).unwrap();
        collector.queue(o2);
        // Graceful shutdown: queued ones stay, sent ones wait for the master.
        collector.refuse_all(false);
        assert_eq!(a2.await, Ok(false));
        assert!(!collector.is_idle());
        collector.refuse_all(true);
        assert_eq!(a1.await, Ok(false));
        assert!(collector.is_idle());
        // A late answer to a forgotten batch changes nothing.
        collector.answered(sent.batch, &[true]);
    }

    #[tokio::test]
    async fn a_plain_socket_is_rebuilt_from_a_duplicate() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        let copy = duplicate(accepted.as_raw_fd()).unwrap();
        drop(accepted); // a close, not a shutdown: the copy keeps the socket
        let mut plain = Plain::from_fd(copy).unwrap();
        assert_eq!(plain.peer(), Some(peer));
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        plain.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(Plain::from_fd(a.into()), Ok(Plain::Unix(_))));
        let file = tempfile::tempfile().unwrap();
        assert!(Plain::from_fd(file.into()).is_err());
    }
}

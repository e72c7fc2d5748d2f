//! Accept loops on inherited sockets. A worker never binds: every listener here
//! is a descriptor the master sent. Stopping the loop closes only this worker's
//! copy; the master's copy keeps the queue for the next generation.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use river_config::ListenAddress;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::listen::balance::{Board, DEFER_TICK, MAX_DEFER};
use crate::listen::buffered::WriteBuffered;
use crate::listen::socket::Socket;
use crate::listen::tls::Endpoint;
use crate::stats::ServiceStats;

/// A listening socket received from the master, registered with this runtime.
pub enum Inherited {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Inherited {
    /// Adopt `fd`, which the master bound to `address` and already put in listen state.
    pub fn adopt(address: &ListenAddress, fd: OwnedFd) -> std::io::Result<Self> {
        Ok(match address {
            ListenAddress::Tcp(_) => {
                let std_listener = std::net::TcpListener::from(fd);
                std_listener.set_nonblocking(true)?;
                Inherited::Tcp(TcpListener::from_std(std_listener)?)
            }
            ListenAddress::Unix(_) => {
                let std_listener = std::os::unix::net::UnixListener::from(fd);
                std_listener.set_nonblocking(true)?;
                Inherited::Unix(UnixListener::from_std(std_listener)?)
            }
        })
    }

    /// The next connection, with its write buffer and its peer's address
    /// (X-Forwarded-For, CIDR filters, logs; TCP only). pingora's own
    /// `Listener` would give each connection an L4 stream and a socket
    /// digest, ~800 bytes for as long as it lives; the buffer makes a digest
    /// when asked.
    async fn accept(&self) -> std::io::Result<Box<WriteBuffered>> {
        match self {
            Inherited::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                // Best effort, as pingora's own listeners.
                let _ = stream.set_nodelay(true);
                Ok(Box::new(WriteBuffered::new(Socket::Tcp(stream))))
            }
            Inherited::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok(Box::new(WriteBuffered::new(Socket::Unix(stream))))
            }
        }
    }
}

/// Open downstream connections of this worker; the worker exits when draining
/// and this reaches zero. Kept on the balance board, where siblings see it.
#[derive(Clone)]
pub struct ConnectionCount(Arc<Board>);

impl ConnectionCount {
    pub fn new(board: Board) -> Self {
        ConnectionCount(Arc::new(board))
    }

    pub fn get(&self) -> u64 {
        self.0.open_connections()
    }

    /// Count one more open connection until the guard is dropped.
    pub fn open(&self) -> ConnectionGuard {
        self.0.opened();
        ConnectionGuard(self.0.clone())
    }

    /// Hold back the next accept while a sibling has fewer connections, for
    /// at most MAX_DEFER ticks; false if `stop` turned true meanwhile.
    async fn make_way(&self, stop: &mut watch::Receiver<bool>) -> bool {
        for _ in 0..MAX_DEFER {
            if !self.0.should_defer() {
                break;
            }
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return false,
                _ = tokio::time::sleep(DEFER_TICK) => {}
            }
        }
        true
    }
}

pub struct ConnectionGuard(Arc<Board>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// Accept on `listener` until `stop` turns true, handing each connection to
/// `endpoint`. `shutdown` is pingora's signal: once true, responses say
/// `Connection: close`.
pub async fn accept_loop<A>(
    listener: Inherited,
    endpoint: Arc<Endpoint<A>>,
    mut stop: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    connections: ConnectionCount,
    stats: ServiceStats,
) where
    A: ServerApp + Send + Sync + 'static,
{
    let mut failures = FailureLog::default();
    loop {
        if !connections.make_way(&mut stop).await {
            break;
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                let guard = connections.open();
                // metrics: river_connections_active{service}
                let counted = stats.connection_opened();
                let endpoint = endpoint.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let _guard = (guard, counted);
                    endpoint.serve(stream, &shutdown).await;
                });
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning; the queue waits.
                failures.failed(&err, std::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How often a run of failed accepts is logged: under fd exhaustion every
/// accept fails, 20 times a second per listener, and an operator needs one
/// line that says so, not a flood.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs the first failed accept at once, then at most one line per
/// [`FAILURE_LOG_EVERY`], with how many failed meanwhile.
#[derive(Default)]
struct FailureLog {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl FailureLog {
    /// Whether this failure was logged (false: counted for the next line).
    fn failed(&mut self, err: &std::io::Error, now: std::time::Instant) -> bool {
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= FAILURE_LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return false;
        }
        if self.unlogged > 0 {
            tracing::warn!(
                error = %err,
                failed_since_last_line = self.unlogged,
                "accept failed (again)"
            );
        } else {
            tracing::warn!(error = %err, "accept failed");
        }
        self.last_logged = Some(now);
        self.unlogged = 0;
        true
    }
}

#[cfg(test)]
mod failure_log_tests {
    use super::*;

    #[test]
    fn a_storm_of_failed_accepts_logs_a_line_per_period() {
        let mut log = FailureLog::default();
        let err = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = std::time::Instant::now();
        // 20 a second for 25 s: lines at 0, 10 and 20 s only.
        let logged = (0..500)
            .filter(|i| log.failed(&err, start + Duration::from_millis(50 * i)))
            .count();
        assert_eq!(logged, 3);
        assert_eq!(log.unlogged, 99);
    }
}

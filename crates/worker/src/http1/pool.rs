//! Idle upstream connections of the HTTP/1 fast path, per upstream address,
//! newest first out. Whether a connection may be reused is decided by the
//! forwarder (`forward.rs`); this only keeps, hands out and closes them.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle upstream connections kept per upstream, and for how long.
const POOL_PER_UPSTREAM: usize = 128;
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Idle upstream connections, newest first out.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(SocketAddr, Vec<Idle>)>>,
    /// Set when the worker drains: connections are closed, not kept.
    closed: std::sync::atomic::AtomicBool,
}

struct Idle {
    stream: TcpStream,
    since: Instant,
}

impl Pool {
    pub fn take(&self, address: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let (_, streams) = idle.iter_mut().find(|(a, _)| *a == address)?;
        while let Some(idle) = streams.pop() {
            if idle.since.elapsed() < POOL_IDLE && still_idle(&idle.stream) {
                return Some(idle.stream);
            }
        }
        None
    }

    pub fn put(&self, address: SocketAddr, stream: TcpStream) {
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let streams = match idle.iter().position(|(a, _)| *a == address) {
            Some(i) => &mut idle[i].1,
            None => {
                idle.push((address, Vec::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        if streams.len() < POOL_PER_UPSTREAM {
            streams.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }
}

impl Pool {
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.iter().map(|(_, streams)| streams.len()).sum()
    }

    /// Close the idle connections to `addresses` (service discovery removed
    /// them; requests in flight to them finish, and do not pool theirs).
    pub fn forget(&self, addresses: &[SocketAddr]) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(address, _)| !addresses.contains(address));
    }

    /// Close every idle connection and keep none from now on.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// An idle upstream connection has nothing to read; if it has (its close,
/// most likely), it is not reused. The runtime's readiness tells without a
/// syscall.
fn still_idle(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    matches!(stream.poll_read_ready(&mut cx), Poll::Pending)
}

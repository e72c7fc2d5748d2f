//! The metrics listener: `GET /metrics` answered by the master itself, on its
//! event loop, so metrics stay up while generations come and go.
//!
//! A deliberately small HTTP/1 responder for one path: one request per
//! connection, a head of at most [`MAX_HEAD`] bytes within [`READ_TIMEOUT`],
//! parsed by httparse, an answer, then close. Anything else gets 404, 405,
//! 400 or 431; at most [`MAX_CONNECTIONS`] at a time, beyond that a connection
//! is closed at once. Nothing here blocks the loop or panics on garbage: the
//! scrape itself is rendered by the supervisor (`Command::Metrics`), where the
//! state lives.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use river_config::ListenAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::encode::CONTENT_TYPE;
use crate::supervisor::Command;

/// The whole request head must fit in this.
pub const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request head, and take the answer, within this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The bound metrics socket.
pub enum MetricsListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl MetricsListener {
    /// Bind `address` (before daemonizing, so that errors reach the terminal).
    /// A stale Unix socket file is replaced; the socket is mode 0666, since
    /// the scraper usually runs as another user and metrics are read-only.
    pub fn bind(address: &ListenAddress) -> std::io::Result<MetricsListener> {
        match address {
            ListenAddress::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(MetricsListener::Tcp(listener))
            }
            ListenAddress::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                let listener = std::os::unix::net::UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
                listener.set_nonblocking(true)?;
                Ok(MetricsListener::Unix(listener, path.clone()))
            }
        }
    }

    /// The listener a new master inherited from the old one (binary upgrade).
    pub fn inherited(address: &ListenAddress, fd: OwnedFd) -> std::io::Result<MetricsListener> {
        Ok(match address {
            ListenAddress::Tcp(_) => {
                let listener = std::net::TcpListener::from(fd);
                listener.set_nonblocking(true)?;
                MetricsListener::Tcp(listener)
            }
            ListenAddress::Unix(path) => {
                let listener = std::os::unix::net::UnixListener::from(fd);
                listener.set_nonblocking(true)?;
                MetricsListener::Unix(listener, path.clone())
            }
        })
    }

    /// The listening socket, for a new master to inherit.
    pub fn raw_fd(&self) -> RawFd {
        match self {
            MetricsListener::Tcp(l) => l.as_raw_fd(),
            MetricsListener::Unix(l, _) => l.as_raw_fd(),
        }
    }

    /// Where it listens, for the log (the real port when 0 was asked for).
    pub fn local_address(&self) -> String {
        match self {
            MetricsListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            MetricsListener::Unix(_, path) => path.display().to_string(),
        }
    }

    /// Serve until the master's loop goes away, or until `handed_over`
    /// turns true: a new master (binary upgrade) answers from then on, and
    /// a Unix socket file is its own.
    async fn serve(
        self,
        commands: mpsc::UnboundedSender<Command>,
        mut handed_over: watch::Receiver<bool>,
    ) {
        let busy = Arc::new(AtomicUsize::new(0));
        let handed_over = async move {
            let _ = handed_over.wait_for(|over| *over).await;
        };
        tokio::pin!(handed_over);
        match self {
            MetricsListener::Tcp(std) => {
                let listener = match tokio::net::TcpListener::from_std(std) {
                    Ok(listener) => listener,
                    Err(err) => return tracing::error!(error = %err, "metrics listener"),
                };
                loop {
                    tokio::select! {
                        _ = &mut handed_over => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => spawn(stream, &commands, &busy),
                            Err(err) => accept_failed(err).await,
                        },
                    }
                }
            }
            MetricsListener::Unix(std, path) => {
                let mut remove = RemoveOnDrop(Some(path));
                let listener = match tokio::net::UnixListener::from_std(std) {
                    Ok(listener) => listener,
                    Err(err) => return tracing::error!(error = %err, "metrics listener"),
                };
                loop {
                    tokio::select! {
                        _ = &mut handed_over => {
                            remove.0 = None;
                            return;
                        }
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => spawn(stream, &commands, &busy),
                            Err(err) => accept_failed(err).await,
                        },
                    }
                }
            }
        }
    }
}

/// The metrics listener as the supervisor holds it: served from start-up
/// (a new master's from its take-over), handed to the next master on upgrade.
pub struct MetricsService {
    listener: Option<MetricsListener>,
    raw_fd: RawFd,
    commands: mpsc::UnboundedSender<Command>,
    handed_over: watch::Sender<bool>,
}

impl MetricsService {
    pub fn new(listener: MetricsListener, commands: mpsc::UnboundedSender<Command>) -> Self {
        MetricsService {
            raw_fd: listener.raw_fd(),
            listener: Some(listener),
            commands,
            handed_over: watch::channel(false).0,
        }
    }

    /// Start answering scrapes (within the runtime); once only.
    pub fn start(&mut self) {
        if let Some(listener) = self.listener.take() {
            tracing::info!(address = %listener.local_address(), "metrics listening");
            tokio::spawn(listener.serve(self.commands.clone(), self.handed_over.subscribe()));
        }
    }

    /// The listening socket, for a new master to inherit.
    pub fn raw_fd(&self) -> RawFd {
        self.raw_fd
    }

    /// A new master answers scrapes from now on.
    pub fn hand_over(&mut self) {
        if let Some(MetricsListener::Unix(listener, _)) = self.listener.take() {
            // Not served yet: close without removing the file.
            drop(listener);
        }
        let _ = self.handed_over.send(true);
    }
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn accept_failed(err: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!(error = %err, "metrics listener: accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn<S>(stream: S, commands: &mpsc::UnboundedSender<Command>, busy: &Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        busy.fetch_sub(1, Ordering::AcqRel);
        return; // dropped: closed
    }
    let commands = commands.clone();
    let busy = busy.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(WRITE_TIMEOUT + READ_TIMEOUT, handle(stream, &commands)).await;
        busy.fetch_sub(1, Ordering::AcqRel);
    });
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET (or HEAD, without a body) /metrics.
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
    /// Not complete yet.
    Partial,
}

/// Route a request head (possibly incomplete) read so far.
pub fn route(buf: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Route::TooLarge,
        Ok(httparse::Status::Partial) => return Route::Partial,
        Err(httparse::Error::TooManyHeaders) => return Route::TooLarge,
        Err(_) => return Route::BadRequest,
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Route::BadRequest;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

async fn handle<S>(mut stream: S, commands: &mpsc::UnboundedSender<Command>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            match route(&buf) {
                Route::Partial => {}
                done => return Some(done),
            }
            let mut chunk = [0u8; 1024];
            let want = chunk.len().min(MAX_HEAD - buf.len());
            match stream.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let route = match read {
        Ok(Some(route)) => route,
        // Closed or silent: nothing to answer.
        Ok(None) | Err(_) => return,
    };
    let response = match route {
        Route::Metrics { head } => {
            let (reply, answer) = oneshot::channel();
            let body = match commands.send(Command::Metrics { reply }) {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            match body {
                Some(body) => response("200 OK", CONTENT_TYPE, &body, head, ""),
                None => plain("503 Service Unavailable", "the master is shutting down\n"),
            }
        }
        Route::NotFound => plain("404 Not Found", "only /metrics is served here\n"),
        Route::MethodNotAllowed => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET or HEAD\n",
            false,
            "allow: GET, HEAD\r\n",
        ),
        Route::TooLarge => plain(
            "431 Request Header Fields Too Large",
            "request head too large\n",
        ),
        Route::BadRequest | Route::Partial => plain("400 Bad Request", "not an HTTP/1 request\n"),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false, "")
}

fn response(status: &str, content_type: &str, body: &str, head: bool, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics?name[]=x HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nhost: x\r\n"),
            Route::Partial
        );
        assert_eq!(route(b""), Route::Partial);
        assert_eq!(route(b"\x00\x01\x02 garbage\r\n\r\n"), Route::BadRequest);
        let long = format!("GET /metrics HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD));
        assert_eq!(route(long.as_bytes()), Route::TooLarge);
        let many: String = (0..100).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            route(format!("GET /metrics HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Route::TooLarge
        );
    }

    #[test]
    fn routing_never_panics_on_garbage() {
        // A deterministic xorshift stream of mutated requests.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let base = b"GET /metrics HTTP/1.1\r\nhost: localhost\r\naccept: */*\r\n\r\n".to_vec();
        for _ in 0..20_000 {
            let mut input = base.clone();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => input.insert(at, next() as u8),
                    _ => {
                        input.remove(at);
                        if input.is_empty() {
                            input.push(b'G');
                        }
                    }
                }
            }
            let _ = route(&input);
        }
    }

    #[tokio::test]
    async fn answers_404_and_metrics_and_closes() {
        let (commands, mut requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(command) = requests.recv().await {
                if let Command::Metrics { reply } = command {
                    let _ = reply.send("river_generation 1\n".to_owned());
                }
            }
        });
        let ask = |request: &'static [u8]| {
            let commands = commands.clone();
            async move {
                let (mut client, server) = tokio::io::duplex(64 * 1024);
                let serving = tokio::spawn(async move { handle(server, &commands).await });
                client.write_all(request).await.unwrap();
                let mut answer = String::new();
                client.read_to_string(&mut answer).await.unwrap();
                serving.await.unwrap();
                answer
            }
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nriver_generation 1\n"), "{ok}");
        let head = ask(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            head.contains("content-length: 19\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = ask(b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = ask(b"POST /metrics HTTP/1.1\r\ncontent-length: 0\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("allow: GET, HEAD"));
        let garbage = ask(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        let (commands, _requests) = mpsc::unbounded_channel();
        let (mut client, server) = tokio::io::duplex(1024);
        let serving = tokio::spawn(async move { handle(server, &commands).await });
        client.write_all(b"GET /metr").await.unwrap();
        tokio::time::sleep(READ_TIMEOUT + Duration::from_secs(1)).await;
        serving.await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty(), "no answer to an unfinished request");
    }
}

//! A small real HTTP/1.1 upstream: keep-alive, one thread per connection.
//!
//! Paths: `/slow/MS` answers after MS milliseconds; `/hold` answers once
//! [`Upstream::release_held`] is called; `/headers` returns the request headers
//! as the body; `/status/NNN` answers status NNN with body `status NNN`;
//! `/close` closes the connection without answering; anything else returns
//! `hello from NAME`. Every response carries `x-upstream: NAME`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    requests: Arc<AtomicUsize>,
    held: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Upstream::serve_on(name, listener)
    }

    /// As [`Upstream::start`], on a chosen address (to bring a stopped
    /// upstream back on its port). Retries while the old socket lingers.
    pub fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(addr) {
                Ok(listener) => break listener,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("bind upstream {addr}: {err}"),
            }
        };
        Upstream::serve_on(name, listener)
    }

    fn serve_on(name: &str, listener: TcpListener) -> Upstream {
        let upstream = Upstream {
            addr: listener.local_addr().expect("upstream addr"),
            name: name.to_owned(),
            requests: Arc::default(),
            held: Arc::new((Mutex::new(false), Condvar::new())),
            stop: Arc::default(),
        };
        let (name, requests, held, stop) = (
            upstream.name.clone(),
            upstream.requests.clone(),
            upstream.held.clone(),
            upstream.stop.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (name, requests, held) = (name.clone(), requests.clone(), held.clone());
                std::thread::spawn(move || serve(stream, &name, &requests, &held));
            }
        });
        upstream
    }

    /// Requests answered (or being answered) so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Let every `/hold` request (now and later) answer.
    pub fn release_held(&self) {
        let (lock, cvar) = &*self.held;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.release_held();
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn serve(stream: TcpStream, name: &str, requests: &AtomicUsize, held: &(Mutex<bool>, Condvar)) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let mut headers = String::new();
        let mut content_length = 0usize;
        let mut close = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            headers.push_str(&line);
        }
        let mut body = vec![0; content_length];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::AcqRel);
        if path == "/close" {
            return;
        }
        let mut status = "200 OK".to_owned();
        let response_body = if let Some(code) = path.strip_prefix("/status/") {
            status = format!("{code} Status");
            format!("status {code}")
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
            format!("slow hello from {name}")
        } else if path == "/hold" {
            let (lock, cvar) = held;
            let mut released = lock.lock().unwrap();
            while !*released {
                released = cvar.wait(released).unwrap();
            }
            format!("held hello from {name}")
        } else if path == "/headers" {
            headers
        } else {
            format!("hello from {name}")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nx-upstream: {name}\r\nx-upstream-secret: s3cr3t\r\n\r\n{response_body}",
            response_body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

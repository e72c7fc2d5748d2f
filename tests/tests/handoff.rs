//! Issue 12: on reload, idle keep-alive connections and tunnels (WebSocket,
//! any upgrade) move to the new generation instead of draining with the old
//! one, so that a reload cuts nothing and leaves no old process behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use river_tests::client::Connection;
use river_tests::features::WsEcho;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, tagged_proxy, wait_for};

const SYSTEM: &str = "    workers 2\n    drain-timeout-secs 60";

/// A proxy service to `upstream` whose responses carry `x-gen: TAG`.
fn proxy(port: u16, upstream: SocketAddr, tag: &str) -> String {
    tagged_proxy("Handoff", &[port], upstream, tag)
}

/// Reload to a config tagged `tag`; the reload's answer.
fn reload_to(river: &River, system: &str, port: u16, upstream: SocketAddr, tag: &str) -> String {
    river.rewrite_config(system, &proxy(port, upstream, tag));
    let output = river.riverctl(&["reload"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "reload to {tag} failed: {stdout}{}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        river.log()
    );
    stdout
}

/// Connections a reload's answer says were handed over (`312 connections
/// handed over`, `1 connection handed over`).
fn handed_over(answer: &str) -> Option<u64> {
    let at = answer.find(" handed over")?;
    answer[..at].split_whitespace().rev().nth(1)?.parse().ok()
}

/// Wait until the master has exactly `n` children (one generation).
#[allow(dead_code)]
fn wait_one_generation(river: &River, n: usize, timeout: Duration) {
    wait_for("only the serving generation", timeout, || {
        (river.workers().len() == n).then_some(())
    });
}

/// A WebSocket client exchanging numbered messages until told to stop:
/// every echo must be the message just sent. Returns messages exchanged.
fn ws_client(
    addr: SocketAddr,
    id: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("client {id}: connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws/{id}"), stream)
            .map_err(|e| format!("client {id}: handshake: {e}"))?;
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let message = format!("client {id} message {n}");
            ws.send(tungstenite::Message::text(message.clone()))
                .map_err(|e| format!("client {id}: send {n}: {e}"))?;
            let echo = ws
                .read()
                .map_err(|e| format!("client {id}: read {n}: {e}"))?;
            let echo = echo.into_text().map_err(|e| e.to_string())?;
            if echo.as_str() != message {
                return Err(format!("client {id}: sent {message:?}, got {echo:?}"));
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ws.close(None);
        Ok(n)
    })
}

#[test]
fn websockets_stay_connected_through_30_reloads() {
    let echo = WsEcho::start();
    let port = free_port();
    let river = River::start(SYSTEM, &proxy(port, echo.addr, "gen0"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..50)
        .map(|id| ws_client(local(port), id, stop.clone()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    let mut handed = 0;
    for n in 1..=30 {
        let answer = reload_to(&river, SYSTEM, port, echo.addr, &format!("gen{n}"));
        handed += handed_over(&answer).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every old generation handed its tunnels over and left.
    wait_one_generation(&river, 2, Duration::from_secs(2));

    stop.store(true, Ordering::Release);
    for (id, client) in clients.into_iter().enumerate() {
        let exchanged = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", river.log()));
        assert!(
            exchanged > 20,
            "client {id} exchanged only {exchanged} messages"
        );
    }
    // 50 tunnels moved at every reload (some answers are sent before the
    // last batch is counted, hence not 1500 exactly).
    assert!(
        handed >= 50 * 20,
        "only {handed} handed over\n{}",
        river.log()
    );
    let log = river.log();
    assert!(!log.contains("tunnel-idle-timeout"), "{log}");
}

#[test]
fn idle_keep_alive_connections_move_to_the_newest_generation() {
    let upstream = Upstream::start("a");
    let port = free_port();
    let river = River::start(SYSTEM, &proxy(port, upstream.addr, "gen0"));
    let mut conns: Vec<Connection> = (0..200)
        .map(|i| {
            let mut c = Connection::open(local(port)).expect("connect");
            let r = c
                .get("/", &[])
                .unwrap_or_else(|e| panic!("first request {i}: {e}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-gen"), Some("gen0"));
            c
        })
        .collect();

    let mut handed = 0;
    for n in 1..=10 {
        let answer = reload_to(&river, SYSTEM, port, upstream.addr, &format!("gen{n}"));
        handed += handed_over(&answer).unwrap_or(0);
    }
    wait_one_generation(&river, 2, Duration::from_secs(5));

    for (i, c) in conns.iter_mut().enumerate() {
        let r = c
            .get("/", &[])
            .unwrap_or_else(|e| panic!("connection {i} after 10 reloads: {e}\n{}", river.log()));
        assert_eq!(r.status, 200, "connection {i}");
        assert_eq!(r.header("x-gen"), Some("gen10"), "connection {i}");
        assert!(!r.closes(), "connection {i} told to close");
    }
    assert!(
        handed >= 200 * 9,
        "only {handed} handed over\n{}",
        river.log()
    );
    let status = river.riverctl(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let serving = json["generations"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["state"] == "serving"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(serving["handed_over_in"], 200, "{json}");
}

#[test]
fn a_receiver_killed_mid_handoff_loses_no_connection() {
    let echo = WsEcho::start();
    let upstream = Upstream::start("a");
    let ws_port = free_port();
    let http_port = free_port();
    let services = |tag: &str| {
        format!(
            "{}\n{}",
            tagged_proxy("Ws", &[ws_port], echo.addr, tag),
            tagged_proxy("Http", &[http_port], upstream.addr, tag)
        )
    };
    let river = River::start(SYSTEM, &services("gen0"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..20)
        .map(|id| ws_client(local(ws_port), id, stop.clone()))
        .collect();
    let mut idle: Vec<Connection> = (0..50)
        .map(|_| {
            let mut c = Connection::open(local(http_port)).expect("connect");
            assert_eq!(c.get("/", &[]).expect("first request").status, 200);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // The new workers hold what they are handed until this file goes.
    let hold = river.dir.path().join("hold-adopt");
    std::fs::write(&hold, "").expect("hold file");
    river.rewrite_config(SYSTEM, &services("gen1"));
    let reload = {
        let control = river.control_socket();
        std::thread::spawn(move || {
            std::process::Command::new(river_tests::river::binary("riverctl"))
                .arg("-s")
                .arg(control)
                .arg("reload")
                .output()
                .expect("riverctl")
        })
    };
    let t0 = Instant::now();
    while !river.log().contains("holding a handoff batch") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no receiver held a batch\n{}",
            river.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = river.log();
    let line = log
        .lines()
        .find(|l| l.contains("holding a handoff batch"))
        .expect("hook line");
    let pid: i32 = line
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the receiver");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&hold).expect("release");
    let answer = reload.join().expect("reload thread");
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );

    // Every tunnel still echoes (with whichever worker holds it)...
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Release);
    for client in clients {
        client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", river.log()));
    }
    // ... and every idle connection gets its next response: from the new
    // generation, or from the old one, which then closes it (drain).
    for (i, c) in idle.iter_mut().enumerate() {
        let r = c
            .get("/", &[])
            .unwrap_or_else(|e| panic!("idle connection {i} lost: {e}\n{}", river.log()));
        assert_eq!(r.status, 200, "idle connection {i}");
    }
    let log = river.log();
    assert!(log.contains("handoff batch aborted"), "{log}");
}

/// An upstream that answers any `Upgrade: echo` request with 101 and then
/// echoes every byte back, half-closing when the client does.
fn start_byte_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let mut writer = stream;
                let head = "HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n";
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = writer.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// Byte `i` of a tunnel's stream: not periodic over any frame size.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

#[test]
fn a_tunnel_moved_with_bytes_in_flight_both_ways_loses_and_duplicates_nothing() {
    let echo = start_byte_echo();
    let port = free_port();
    let river = River::start(SYSTEM, &proxy(port, echo, "gen0"));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tunnels = Vec::new();
    for id in 0..4 {
        let mut stream = TcpStream::connect(local(port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "GET /tunnel/{id} HTTP/1.1\r\nhost: x\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
        )
        .expect("upgrade request");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.contains(" 101 "), "tunnel {id}: {status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("head");
            if line == "\r\n" {
                break;
            }
        }
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, written) = (stop.clone(), written.clone());
            let mut stream = stream.try_clone().expect("clone");
            std::thread::spawn(move || {
                let mut offset = 0u64;
                // Frames of odd sizes, fast enough to keep both directions busy.
                let mut size = 40_000usize;
                while !stop.load(Ordering::Acquire) {
                    let frame: Vec<u8> = (offset..offset + size as u64).map(pattern).collect();
                    if stream.write_all(&frame).is_err() {
                        break;
                    }
                    offset += size as u64;
                    written.store(offset, Ordering::Release);
                    size = 40_000 + (size * 7919) % 90_001;
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            })
        };
        let reader_thread = {
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut offset = 0u64;
                let mut buf = vec![0u8; 100_000];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return offset,
                        Ok(n) => {
                            for (k, byte) in buf[..n].iter().enumerate() {
                                if *byte != pattern(offset + k as u64) {
                                    failures.lock().unwrap().push(format!(
                                        "tunnel {id}: wrong byte at {}",
                                        offset + k as u64
                                    ));
                                    return offset;
                                }
                            }
                            offset += n as u64;
                        }
                        Err(err) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("tunnel {id}: read at {offset}: {err}"));
                            return offset;
                        }
                    }
                }
            })
        };
        tunnels.push((written, writer, reader_thread));
    }

    let started = Instant::now();
    let mut handed = 0;
    for n in 1..=6 {
        std::thread::sleep(Duration::from_millis(300));
        let answer = reload_to(&river, SYSTEM, port, echo, &format!("gen{n}"));
        handed += handed_over(&answer).unwrap_or(0);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    for (id, (written, writer, reader)) in tunnels.into_iter().enumerate() {
        writer.join().expect("writer");
        let read = reader.join().expect("reader");
        let written = written.load(Ordering::Acquire);
        assert!(
            written > 1_000_000,
            "tunnel {id}: only {written} bytes in {:?}",
            started.elapsed()
        );
        assert_eq!(
            read, written,
            "tunnel {id}: echoed {read} of {written} bytes"
        );
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:?}\n{}", river.log());
    assert!(
        handed >= 4 * 5,
        "only {handed} handed over\n{}",
        river.log()
    );
}

#[test]
fn with_handoff_off_idle_connections_drain_as_before() {
    let upstream = Upstream::start("a");
    let port = free_port();
    let system = format!("{SYSTEM}\n    connection-handoff false");
    let river = River::start(&system, &proxy(port, upstream.addr, "gen0"));
    let mut c = Connection::open(local(port)).expect("connect");
    assert_eq!(
        c.get("/", &[]).expect("first").header("x-gen"),
        Some("gen0")
    );
    let old = river.workers();
    let answer = reload_to(&river, &system, port, upstream.addr, "gen1");
    assert!(!answer.contains("handed over"), "{answer}");
    // The old generation answers the next request and closes.
    let r = c.get("/", &[]).expect("second request");
    assert_eq!(r.header("x-gen"), Some("gen0"));
    assert!(r.closes(), "{:?}", r.headers);
    river_tests::wait_gone("the old generation", &old, Duration::from_secs(10));
}

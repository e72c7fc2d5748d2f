//! Issue 2: one master, N workers on the master's sockets, proxying with pingora.

use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use river_tests::client::{self, Connection};
use river_tests::river::{alive, listening_inodes, socket_inodes, River};
use river_tests::upstream::Upstream;
use river_tests::{free_port, wait_for, wait_gone};

fn proxy_service(port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"    Example {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            "{upstream}"
        }}
        path-control {{
            upstream-request {{
                filter kind="remove-header-key-regex" pattern=".*(secret|SECRET).*"
                filter kind="upsert-header" key="x-proxy-friend" value="river"
            }}
            upstream-response {{
                filter kind="upsert-header" key="x-with-love-from" value="river"
            }}
        }}
    }}"#
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn two_workers_proxy_with_header_filters() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let _river = River::start("    workers 2", &proxy_service(port, upstream.addr));

    for _ in 0..100 {
        let response = client::get(local(port), "/").expect("request through river");
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hello from alpha");
        assert_eq!(response.header("x-with-love-from"), Some("river"));
    }
    // Keep-alive: 100 more on one connection.
    let mut connection = Connection::open(local(port)).unwrap();
    for _ in 0..100 {
        let response = connection.get("/", &[]).expect("keep-alive request");
        assert_eq!(response.text(), "hello from alpha");
        assert!(!response.closes());
    }
    assert_eq!(upstream.requests(), 200);

    let echoed = connection
        .get(
            "/headers",
            &[("x-my-secret", "hunter2"), ("x-proxy-friend", "mallory")],
        )
        .unwrap()
        .text()
        .to_ascii_lowercase();
    assert!(echoed.contains("x-proxy-friend: river"), "{echoed}");
    assert!(!echoed.contains("mallory"), "{echoed}");
    assert!(!echoed.contains("hunter2"), "{echoed}");
    assert!(echoed.contains("x-forwarded-for: 127.0.0.1"), "{echoed}");
}

#[test]
fn workers_share_the_masters_listening_socket() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start("    workers 3", &proxy_service(port, upstream.addr));
    let workers = wait_for("3 workers", Duration::from_secs(10), || {
        let workers = river.workers();
        (workers.len() == 3).then_some(workers)
    });

    // Exactly one listening socket on the port: no worker bound its own.
    let listening = listening_inodes(port);
    assert_eq!(
        listening.len(),
        1,
        "listening sockets on {port}: {listening:?}"
    );
    let inode = listening[0];
    assert!(
        socket_inodes(river.pid).contains(&inode),
        "the master holds the socket"
    );
    for worker in workers {
        assert!(
            socket_inodes(worker).contains(&inode),
            "worker {worker} serves the master's socket {inode}"
        );
    }
}

#[test]
fn a_killed_worker_is_replaced_and_the_other_keeps_serving() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start("    workers 2", &proxy_service(port, upstream.addr));
    let workers = wait_for("2 workers", Duration::from_secs(10), || {
        let workers = river.workers();
        (workers.len() == 2).then_some(workers)
    });
    let (victim, survivor) = (workers[0], workers[1]);

    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    // Requests go on while the replacement starts: the survivor serves them.
    for _ in 0..20 {
        let response = client::get(local(port), "/").expect("request during replacement");
        assert_eq!(response.status, 200);
    }
    let replacement = wait_for("a replacement worker", Duration::from_secs(1), || {
        let now = river.workers();
        now.iter()
            .find(|pid| **pid != victim && **pid != survivor)
            .copied()
    });
    assert!(alive(survivor), "the other worker kept running");
    assert!(!river.workers().contains(&victim));
    river.wait_log("worker died: replacing it", 1);
    // And the new worker serves too: all requests keep succeeding.
    for _ in 0..50 {
        assert_eq!(client::get(local(port), "/").unwrap().status, 200);
    }
    assert!(alive(replacement));
}

#[test]
fn sigquit_finishes_the_request_in_flight_then_exits() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let mut river = River::start("    workers 2", &proxy_service(port, upstream.addr));
    let workers = river.workers();
    assert!(river.pid_file().exists());

    let slow = std::thread::spawn(move || client::get(local(port), "/slow/2000"));
    wait_for(
        "the slow request to reach the upstream",
        Duration::from_secs(5),
        || (upstream.requests() == 1).then_some(()),
    );
    river.signal(Signal::SIGQUIT);

    let response = slow
        .join()
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow hello from alpha");

    let status = river.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "master exit status {status}");
    assert!(!river.pid_file().exists(), "pid file removed");
    wait_gone("workers to exit", &workers, Duration::from_secs(5));
}

/// Graceful shutdown closes idle keep-alive connections at once (their
/// head deadline is 60 s away): the wake-up reaches connections waiting
/// for their next request, and the workers do not wait for them.
#[test]
fn sigquit_closes_idle_keep_alive_connections_at_once() {
    let upstream = Upstream::start("alpha");
    for handoff in ["true", "false"] {
        let port = free_port();
        let system = format!("    workers 1\n    connection-handoff {handoff}");
        let mut river = River::start(&system, &proxy_service(port, upstream.addr));
        let mut idle: Vec<_> = (0..3)
            .map(|_| {
                let mut client = river_tests::raw::Client::connect(local(port));
                assert_eq!(client.get("/").status, 200);
                client
            })
            .collect();
        let started = std::time::Instant::now();
        river.signal(Signal::SIGQUIT);
        for client in &mut idle {
            assert!(
                client.rest().is_empty(),
                "handoff {handoff}: bytes after the response"
            );
        }
        let status = river.wait_exit(Duration::from_secs(15));
        assert!(
            status.success(),
            "handoff {handoff}: master exit status {status}"
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "handoff {handoff}: shut down after {took:?}"
        );
    }
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let mut river = River::start("    workers 2", &proxy_service(port, upstream.addr));
    let workers = river.workers();
    assert_eq!(workers.len(), 2);

    river.signal(Signal::SIGKILL);
    river.wait_exit(Duration::from_secs(5));
    wait_gone("orphaned workers to exit", &workers, Duration::from_secs(5));
}

/// Each bad config: `river --validate` and `river -c` both fail with file:line:column.
#[test]
fn invalid_configs_are_refused_with_their_position() {
    let upstream = "127.0.0.1:9";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (
            "syntax error",
            "system {\n    workers 2\n\nservices {\n".to_owned(),
            None,
        ),
        (
            "unknown key",
            format!("system {{\n    wrokers 2\n}}\nservices {{\n    S {{\n        listeners {{\n            \"127.0.0.1:8080\"\n        }}\n        connectors {{\n            \"{upstream}\"\n        }}\n    }}\n}}\n"),
            Some(":2:5"),
        ),
        (
            "unparsable listener",
            format!("services {{\n    S {{\n        listeners {{\n            \"127.0.0.1:http\"\n        }}\n        connectors {{\n            \"{upstream}\"\n        }}\n    }}\n}}\n"),
            Some(":4:13"),
        ),
        (
            "no listener",
            format!("services {{\n    S {{\n        connectors {{\n            \"{upstream}\"\n        }}\n    }}\n}}\n"),
            Some(":2:5"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, text, position) in cases {
        let path = dir.path().join(format!("{}.kdl", what.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let shown = path.display().to_string();

        let validate = std::process::Command::new(river_tests::river::binary("river"))
            .args(["--validate", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&validate.stderr).into_owned();
        assert_eq!(validate.status.code(), Some(1), "{what}: {stderr}");
        let located = regex_like_position(&stderr, &shown);
        assert!(
            located.is_some(),
            "{what}: no {shown}:LINE:COL in\n{stderr}"
        );
        if let Some(position) = position {
            assert!(
                stderr.contains(&format!("{shown}{position}")),
                "{what}: expected {shown}{position} in\n{stderr}"
            );
        }

        let run = std::process::Command::new(river_tests::river::binary("river"))
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let run_stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert_eq!(
            run.status.code(),
            Some(1),
            "{what}: river -c must refuse to start"
        );
        assert_eq!(
            regex_like_position(&run_stderr, &shown),
            located,
            "{what}: same position from river -c:\n{run_stderr}"
        );
    }
}

/// The first `PATH:LINE:COL` in `text`.
fn regex_like_position(text: &str, path: &str) -> Option<String> {
    let start = text.find(&format!("{path}:"))? + path.len() + 1;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':'))
        .unwrap_or(rest.len());
    let position = &rest[..end];
    let mut parts = position.split(':');
    let line_ok = parts.next().is_some_and(|p| !p.is_empty());
    let column_ok = parts.next().is_some_and(|p| !p.is_empty());
    (line_ok && column_ok).then(|| position.to_owned())
}

#[test]
fn daemonize_detaches_and_the_pid_file_names_the_master() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("river.pid");
    let config = dir.path().join("river.kdl");
    std::fs::write(
        &config,
        format!(
            "system {{\n    workers 1\n    daemonize true\n    pid-file \"{}\"\n}}\nservices {{\n{}\n}}\n",
            pid_file.display(),
            proxy_service(port, upstream.addr)
        ),
    )
    .unwrap();
    let status = std::process::Command::new(river_tests::river::binary("river"))
        .arg("-c")
        .arg(&config)
        .status()
        .unwrap();
    assert!(status.success(), "the launching process exits 0");
    let pid: u32 = wait_for("the pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    let response = wait_for("the daemon to serve", Duration::from_secs(10), || {
        client::get(local(port), "/").ok()
    });
    assert_eq!(response.text(), "hello from alpha");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    wait_for("the daemon to exit", Duration::from_secs(10), || {
        (!alive(pid)).then_some(())
    });
    assert!(!pid_file.exists());
}

#[test]
fn a_busy_port_is_reported_before_daemonizing() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("river.kdl");
    std::fs::write(
        &config,
        format!(
            "system {{\n    daemonize true\n    pid-file \"{}/river.pid\"\n}}\nservices {{\n{}\n}}\n",
            dir.path().display(),
            proxy_service(port, "127.0.0.1:9".parse().unwrap())
        ),
    )
    .unwrap();
    let output = std::process::Command::new(river_tests::river::binary("river"))
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// `river` with no arguments serves the embedded default: a welcome page on
/// 127.0.0.1:8080. The one test on a fixed port, since that port is the point.
#[test]
fn without_a_config_river_serves_its_welcome_page() {
    let port = 8080;
    if std::net::TcpListener::bind(local(port)).is_err() {
        eprintln!("skipped: 127.0.0.1:{port} is in use, and the embedded default needs it");
        return;
    }
    /// Kills the master if the test fails before it exits.
    struct Master(std::process::Child);
    impl Drop for Master {
        fn drop(&mut self) {
            for worker in river_tests::river::children(self.0.id()) {
                let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut master = Master(
        std::process::Command::new(river_tests::river::binary("river"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn river"),
    );
    let page = wait_for("the welcome page", Duration::from_secs(10), || {
        client::get(local(port), "/").ok()
    });
    let workers = river_tests::river::children(master.0.id());
    let _ = kill(Pid::from_raw(master.0.id() as i32), Signal::SIGTERM);
    let status = wait_for("river to exit", Duration::from_secs(10), || {
        master.0.try_wait().ok().flatten()
    });
    wait_gone("workers to exit", &workers, Duration::from_secs(5));

    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let text = page.text();
    assert!(text.contains("Welcome to River"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(status.success(), "fast shutdown exits 0: {status}");
}

/// A master that may not signal its workers (no CAP_KILL, workers under another
/// uid) still stops: it closes their channels and they drain and exit.
#[test]
fn a_master_without_cap_kill_still_stops_its_workers() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to run workers as another user");
        return;
    }
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let mut river = River::spawn_under(
        &[
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all,+setuid,+setgid",
        ],
        "    workers 2\n    user \"nobody\"\n    group \"nogroup\"",
        &proxy_service(port, upstream.addr),
    );
    river.wait_log("generation serving", 1);
    assert_eq!(client::get(local(port), "/").unwrap().status, 200);
    let workers = river.workers();
    assert_eq!(workers.len(), 2);

    river.signal(Signal::SIGTERM);
    let status = river.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "master exit status {status}");
    wait_gone("workers to exit", &workers, Duration::from_secs(5));
    assert!(
        river.log().contains("cannot signal worker"),
        "{}",
        river.log()
    );
}

/// Per-worker open connections from `riverctl status` once they add up to `total`.
fn connections_per_worker(river: &River, total: u64) -> Vec<u64> {
    wait_for(
        "status to count every connection",
        Duration::from_secs(10),
        || {
            let text = String::from_utf8_lossy(&river.riverctl(&["status"]).stdout).into_owned();
            let counts: Vec<u64> = text
                .lines()
                .filter(|line| line.contains("worker pid"))
                .filter_map(|line| line.split("connections").nth(1)?.trim().parse().ok())
                .collect();
            (counts.iter().sum::<u64>() == total).then_some(counts)
        },
    )
}

#[test]
fn a_burst_of_connections_is_spread_over_the_workers() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start("    workers 2", &proxy_service(port, upstream.addr));
    // Without the balance board, one worker often takes (nearly) the whole
    // burst; three bursts in a row all splitting evenly would be luck.
    for round in 0..3 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(32));
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut connection = Connection::open(local(port)).expect("connect");
                    let response = connection.get("/", &[]).expect("request");
                    assert_eq!(response.status, 200);
                    connection
                })
            })
            .collect();
        let open: Vec<Connection> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let counts = connections_per_worker(&river, 32);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert!(
            counts.iter().all(|&n| (12..=20).contains(&n)),
            "round {round}: connections per worker {counts:?}"
        );
        drop(open);
        connections_per_worker(&river, 0);
    }
}

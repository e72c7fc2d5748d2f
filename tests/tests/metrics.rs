//! Issue 14: the metrics endpoint served by the master, fed by the workers'
//! stats boards, and the reload history.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use river_tests::client;
use river_tests::metrics::{get, scrape, Exposition};
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, hold_request, local, tagged_proxy, wait_for, wait_gone};

const METRICS: &str = "    metrics \"$DIR/metrics.sock\"";

fn system(lines: &str) -> String {
    format!("{METRICS}\n{lines}")
}

fn proxy(name: &str, port: u16, upstream: SocketAddr) -> String {
    tagged_proxy(name, &[port], upstream, "1")
}

fn reload(river: &River) {
    let output = river.riverctl(&["reload"]);
    assert!(
        output.status.success(),
        "riverctl reload: {}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        river.log()
    );
}

/// Send `count` GETs of `path` to `port` on keep-alive connections (a new one
/// after each close); returns the response body bytes received.
fn send(port: u16, path: &str, count: usize, status: u16) -> usize {
    let mut bytes = 0;
    let mut connection: Option<client::Connection> = None;
    for _ in 0..count {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => connection.insert(client::Connection::open(local(port)).expect("connect")),
        };
        let response = conn.get(path, &[]).expect("a response");
        assert_eq!(response.status, status, "{path}");
        bytes += response.body.len();
        if response.closes() {
            connection = None;
        }
    }
    bytes
}

fn requests(m: &Exposition, service: &str, class: &str) -> f64 {
    m.get(
        "river_requests_total",
        &[("service", service), ("code_class", class)],
    )
    .unwrap_or_else(|| panic!("no river_requests_total for {service} {class}"))
}

/// Wait until the requests of every service add up to `total` (a worker
/// counts a request just after writing its response).
fn scrape_when_counted(address: &str, total: f64) -> Exposition {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(address);
        let counted = m.sum("river_requests_total", &[]);
        if counted == total {
            return m;
        }
        assert!(
            counted < total && std::time::Instant::now() < deadline,
            "counted {counted} requests, sent {total}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of the serving generation's workers.
fn serving_workers(river: &River) -> Vec<u32> {
    let output = river.riverctl(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["state"] == "serving")
        .flat_map(|g| g["workers"].as_array().unwrap().clone())
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn counters_equal_what_was_sent_by_service_and_code_class() {
    let (alpha, beta) = (Upstream::start("alpha"), Upstream::start("beta"));
    let (a, b) = (free_port(), free_port());
    let river = River::start(
        &system("    workers 2"),
        &format!(
            "{}\n{}",
            proxy("A", a, alpha.addr),
            proxy("B", b, beta.addr)
        ),
    );
    let address = river.metrics_socket();
    // 1,000 requests over two services, from four clients at once.
    let plan: [(u16, &str, usize, u16); 5] = [
        (a, "/", 450, 200),
        (a, "/status/404", 50, 404),
        (b, "/", 350, 200),
        (b, "/status/404", 100, 404),
        (b, "/close", 50, 502),
    ];
    let clients: Vec<_> = plan
        .iter()
        .map(|&(port, path, count, status)| {
            std::thread::spawn(move || (port, send(port, path, count, status)))
        })
        .collect();
    let mut body_bytes: HashMap<u16, usize> = HashMap::new();
    for client in clients {
        let (port, bytes) = client.join().unwrap();
        *body_bytes.entry(port).or_default() += bytes;
    }

    let m = scrape_when_counted(&address, 1000.0);
    assert_eq!(requests(&m, "A", "2xx"), 450.0);
    assert_eq!(requests(&m, "A", "4xx"), 50.0);
    assert_eq!(requests(&m, "A", "5xx"), 0.0);
    assert_eq!(requests(&m, "B", "2xx"), 350.0);
    assert_eq!(requests(&m, "B", "4xx"), 100.0);
    assert_eq!(requests(&m, "B", "5xx"), 50.0);
    for (service, total) in [("A", 500.0), ("B", 500.0)] {
        let labels = [("service", service)];
        assert_eq!(
            m.get("river_request_duration_seconds_count", &labels),
            Some(total),
            "histogram count of {service}"
        );
        assert_eq!(
            m.get(
                "river_request_duration_seconds_bucket",
                &[("service", service), ("le", "+Inf")]
            ),
            Some(total)
        );
    }
    // Every 502 is an upstream that hung up without answering.
    assert_eq!(
        m.get(
            "river_upstream_errors_total",
            &[("service", "B"), ("kind", "reset")]
        ),
        Some(50.0)
    );
    assert_eq!(
        m.sum("river_upstream_errors_total", &[("service", "A")]),
        0.0
    );
    // Body bytes: what the clients received.
    assert_eq!(
        m.get("river_bytes_sent_total", &[("service", "A")]),
        Some(body_bytes[&a] as f64)
    );
    assert_eq!(
        m.get("river_bytes_sent_total", &[("service", "B")]),
        Some(body_bytes[&b] as f64)
    );
    assert_eq!(m.get("river_generation", &[]), Some(1.0));
    assert_eq!(m.get("river_workers", &[("state", "serving")]), Some(2.0));
    assert_eq!(
        m.get(
            "river_upstream_healthy",
            &[("service", "A"), ("upstream", &alpha.addr.to_string())]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "river_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

/// Scrape after each step; no counter (nor histogram sample) may decrease.
struct Monotonic {
    address: String,
    previous: HashMap<String, f64>,
    steps: usize,
}

impl Monotonic {
    fn step(&mut self, what: &str, sent: f64) -> Exposition {
        let m = scrape_when_counted(&self.address, sent);
        let now = m.monotonic();
        for (series, before) in &self.previous {
            let after = now
                .get(series)
                .unwrap_or_else(|| panic!("{series} disappeared after {what}"));
            assert!(
                after >= before,
                "{series} went from {before} to {after} after {what}"
            );
        }
        self.previous = now;
        self.steps += 1;
        m
    }
}

#[test]
fn counters_are_monotonic_across_reloads_a_kill_and_a_rollback() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    // A generous start-up timeout: the machine may be busy with other builds.
    let sys =
        system("    workers 2\n    threads-per-service 1\n    worker-startup-timeout-secs 60");
    let river = River::start(&sys, &proxy("S", port, upstream.addr));
    let mut check = Monotonic {
        address: river.metrics_socket(),
        previous: HashMap::new(),
        steps: 0,
    };
    let mut sent = 0.0;
    let traffic = |sent: &mut f64| {
        send(port, "/", 20, 200);
        send(port, "/status/404", 5, 404);
        *sent += 25.0;
    };
    traffic(&mut sent);
    check.step("the first requests", sent);

    for reload_number in 1..=20 {
        reload(&river);
        traffic(&mut sent);
        check.step(&format!("reload {reload_number}"), sent);
    }

    // A worker killed with SIGKILL: what it counted stays counted.
    let victim = serving_workers(&river)[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    wait_for("the worker's replacement", Duration::from_secs(10), || {
        let m = scrape(&river.metrics_socket());
        (m.get("river_worker_restarts_total", &[]) == Some(1.0)
            && m.get("river_workers", &[("state", "serving")]) == Some(2.0))
        .then_some(())
    });
    check.step("kill -9 of a worker", sent);
    traffic(&mut sent);
    check.step("traffic after the kill", sent);

    // A reload whose workers fail to start is rolled back.
    let hook = river.dir.path().join("fail-worker-start");
    std::fs::write(&hook, "").unwrap();
    let output = river.riverctl(&["reload"]);
    assert_eq!(output.status.code(), Some(1));
    std::fs::remove_file(&hook).unwrap();
    traffic(&mut sent);
    let m = check.step("a rollback", sent);
    assert_eq!(
        m.get("river_reloads_total", &[("outcome", "rolled_back")]),
        Some(1.0)
    );
    assert_eq!(
        m.get("river_reloads_total", &[("outcome", "ok")]),
        Some(20.0)
    );
    assert_eq!(
        m.get("river_request_duration_seconds_count", &[("service", "S")]),
        Some(sent)
    );
    assert_eq!(requests(&m, "S", "4xx"), sent / 5.0);
    assert_eq!(
        check.steps, 24,
        "first + 20 reloads + kill + traffic + rollback"
    );
}

#[test]
fn rejected_reloads_and_the_history_of_three_reloads() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let sys = system("    workers 1");
    let river = River::start(&sys, &proxy("S", port, upstream.addr));

    reload(&river);
    let good = std::fs::read_to_string(&river.config_path).unwrap();
    std::fs::write(&river.config_path, "system {\n    wrokers 2\n}\n").unwrap();
    assert_eq!(river.riverctl(&["reload"]).status.code(), Some(1));
    std::fs::write(&river.config_path, good).unwrap();
    river.signal(Signal::SIGHUP);
    river.wait_log("generation serving", 3);

    let m = wait_for("the third reload", Duration::from_secs(10), || {
        let m = scrape(&river.metrics_socket());
        (m.get("river_reloads_total", &[("outcome", "ok")]) == Some(2.0)).then_some(m)
    });
    assert_eq!(
        m.get("river_reloads_total", &[("outcome", "rejected")]),
        Some(1.0)
    );
    assert_eq!(m.get("river_reload_duration_seconds_count", &[]), Some(3.0));
    assert_eq!(m.get("river_generation", &[]), Some(3.0));
    assert!(
        m.get("river_last_reload_success_timestamp_seconds", &[])
            .unwrap()
            > 1.7e9
    );

    let output = river.riverctl(&["history", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let history: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let records = history.as_array().unwrap();
    assert_eq!(records.len(), 3, "{history:#}");
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "rejected", "ok"]);
    assert_eq!(records[0]["trigger"]["by"], "riverctl");
    assert_eq!(records[1]["trigger"]["by"], "riverctl");
    assert_eq!(records[2]["trigger"]["by"], "sighup");
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["number"], i as u64 + 1);
        assert!(record["phases"]["validate_ms"].as_f64().unwrap() >= 0.0);
        assert!(record["duration_ms"].as_f64().unwrap() > 0.0);
    }
    for ok in [&records[0], &records[2]] {
        for phase in ["room_ms", "spawn_ms", "ready_ms"] {
            assert!(ok["phases"][phase].as_f64().is_some(), "{phase}: {ok:#}");
        }
        assert!(ok["error"].is_null());
    }
    assert_eq!(records[0]["generation"], 2);
    assert_eq!(records[0]["retired"], 1);
    assert!(records[1]["phases"]["spawn_ms"].is_null());
    assert!(records[1]["generation"].is_null());
    let error = records[1]["error"].as_str().unwrap();
    assert!(error.contains("unknown key `wrokers`"), "{error}");
    // The generation the first reload retired drained by itself.
    wait_for("the drain result", Duration::from_secs(10), || {
        let output = river.riverctl(&["history", "--json"]);
        let history: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        let drain = &history[0]["drain"];
        (drain["connections_cut"] == 0 && drain["killed_by"].is_null()).then_some(())
    });

    let text = String::from_utf8_lossy(&river.riverctl(&["history"]).stdout).into_owned();
    assert!(text.contains("rejected    by riverctl"), "{text}");
    let status = String::from_utf8_lossy(&river.riverctl(&["status"]).stdout).into_owned();
    assert!(status.contains("last reloads:"), "{status}");
    assert!(status.contains("ok          by SIGHUP"), "{status}");
}

#[test]
fn a_long_request_cut_at_the_drain_deadline_is_counted() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let sys = system("    workers 1\n    drain-timeout-secs 1");
    let river = River::start(&sys, &proxy("S", port, upstream.addr));
    let old_workers = river.workers();
    let held = hold_request(&upstream, port);
    let m = scrape(&river.metrics_socket());
    assert_eq!(
        m.get("river_connections_active", &[("service", "S")]),
        Some(1.0)
    );

    reload(&river);
    wait_gone(
        "the old worker, killed at its deadline",
        &old_workers,
        Duration::from_secs(10),
    );
    assert!(held.join().unwrap().is_err(), "the held request was cut");
    // The master folds the killed worker's slot when it reaps it, which may
    // come a moment after the process is gone.
    let m = wait_for("the killed worker folded", Duration::from_secs(10), || {
        let m = scrape(&river.metrics_socket());
        (m.get("river_connections_active", &[("service", "S")]) == Some(0.0)).then_some(m)
    });
    assert_eq!(
        m.get(
            "river_draining_connections_cut_total",
            &[("reason", "deadline")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "river_draining_workers_killed_total",
            &[("reason", "deadline")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "river_draining_connections_cut_total",
            &[("reason", "generation_cap")]
        ),
        Some(0.0)
    );
    assert_eq!(
        m.get("river_connections_active", &[("service", "S")]),
        Some(0.0)
    );
    let history = wait_for("the drain result", Duration::from_secs(10), || {
        let output = river.riverctl(&["history", "--json"]);
        let history: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (!history[0]["drain"].is_null()).then_some(history)
    });
    let drain = &history[0]["drain"];
    assert_eq!(drain["killed_by"], "deadline", "{history:#}");
    assert_eq!(drain["connections_cut"], 1);
    assert!(drain["seconds"].as_f64().unwrap() >= 1.0);
}

#[test]
fn the_listener_answers_during_a_slow_start_and_after_a_worker_crash() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let hooks = tempfile::tempdir().unwrap();
    let slow = hooks.path().join("slow-worker-start");
    std::fs::write(&slow, "").unwrap();
    let river = River::spawn_with_env(
        &system("    workers 2\n    worker-startup-timeout-secs 60"),
        &proxy("S", port, upstream.addr),
        &[("RIVER_TEST_SLOW_WORKER_START", slow.as_os_str())],
    );
    river.wait_log("metrics listening", 1);
    let m = wait_for("two starting workers", Duration::from_secs(10), || {
        let m = scrape(&river.metrics_socket());
        (m.get("river_workers", &[("state", "starting")]) == Some(2.0)).then_some(m)
    });
    assert_eq!(
        m.get("river_generation", &[]),
        Some(0.0),
        "nothing serves yet"
    );
    assert_eq!(m.get("river_workers", &[("state", "serving")]), Some(0.0));
    assert_eq!(requests(&m, "S", "2xx"), 0.0);

    std::fs::remove_file(&slow).unwrap();
    river.wait_log("generation serving", 1);
    send(port, "/", 10, 200);
    scrape_when_counted(&river.metrics_socket(), 10.0);

    // Both workers crash at once: the master still answers, counts kept.
    for worker in serving_workers(&river) {
        kill(Pid::from_raw(worker as i32), Signal::SIGKILL).unwrap();
    }
    let m = scrape(&river.metrics_socket());
    assert_eq!(requests(&m, "S", "2xx"), 10.0);
    wait_for("both replacements", Duration::from_secs(10), || {
        let m = scrape(&river.metrics_socket());
        (m.get("river_worker_restarts_total", &[]) == Some(2.0)
            && m.get("river_workers", &[("state", "serving")]) == Some(2.0))
        .then_some(())
    });
    send(port, "/", 5, 200);
    scrape_when_counted(&river.metrics_socket(), 15.0);
}

#[test]
fn garbage_on_the_metrics_listener_harms_nothing() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    // TCP this time, on a port the kernel picks: the log names it.
    let river = River::start(
        "    workers 1\n    metrics \"127.0.0.1:0\"",
        &proxy("S", port, upstream.addr),
    );
    let log = river.log();
    let address = log
        .lines()
        .find(|l| l.contains("metrics listening"))
        .and_then(|l| l.split("address=").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the metrics address in the log");

    let answer = |bytes: &[u8]| {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    };
    let status = |text: &str| text.split_whitespace().nth(1).unwrap_or("").to_owned();
    assert_eq!(status(&answer(b"GET / HTTP/1.1\r\n\r\n")), "404");
    assert_eq!(status(&answer(b"GET /metrics/x HTTP/1.1\r\n\r\n")), "404");
    assert_eq!(status(&answer(b"DELETE /metrics HTTP/1.1\r\n\r\n")), "405");
    assert_eq!(
        status(&answer(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")),
        "400"
    );
    assert_eq!(
        status(&answer(b"GET /metrics HTTP/1.1\r\n\0\0\0\r\n\r\n")),
        "400"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(status(&answer(huge.as_bytes())), "431");
    assert_eq!(
        answer(b"GET /metr"),
        "",
        "half a request, then EOF: no answer"
    );
    // Idle connections beyond the limit are refused, not queued forever, and
    // the listener keeps answering once they go.
    let idle: Vec<_> = (0..80)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    drop(idle);
    let (code, _, body) = wait_for("the listener", Duration::from_secs(10), || {
        get(&address, "/metrics")
            .ok()
            .filter(|(code, _, _)| *code == 200)
    });
    assert_eq!(code, 200);
    assert!(body.contains("river_generation 1"), "{body}");
    // The master and its workers are fine.
    assert!(river_tests::river::alive(river.pid));
    assert_eq!(client::get(local(port), "/").unwrap().status, 200);
    scrape(&address);
}

/// Every metric the shipped Grafana dashboard queries is exported.
#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/river-dashboard.json"),
    )
    .expect("packaging/river-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 10, "{} queries", exprs.len());

    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(&system("    workers 1"), &proxy("S", port, upstream.addr));
    let m = scrape(&river.metrics_socket());
    let mut queried = Vec::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("river_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let exported = m.samples.iter().any(|s| s.name == name);
            assert!(
                exported,
                "the dashboard queries {name}, which is not exported: {expr}"
            );
            queried.push(name);
        }
    }
    for needed in [
        "river_requests_total",
        "river_request_duration_seconds_bucket",
        "river_reloads_total",
        "river_workers",
        "river_draining_connections_cut_total",
    ] {
        assert!(
            queried.iter().any(|q| q == needed),
            "no panel uses {needed}"
        );
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr" | "query", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

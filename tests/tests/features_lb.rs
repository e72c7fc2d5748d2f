//! Issue 4: load balancing (selection, health checks, retries) and what a
//! client sees when no upstream is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use river_tests::client::{self, Connection};
use river_tests::features::{reload_ok, TlsHelloRecorder};
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, wait_for};

fn lb_service(port: u16, load_balance: &str, upstreams: &[SocketAddr]) -> String {
    let connectors: String = upstreams
        .iter()
        .map(|addr| format!("            \"{addr}\"\n"))
        .collect();
    format!(
        r#"    Balanced {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            load-balance {{
                {load_balance}
            }}
{connectors}        }}
    }}"#
    )
}

fn tally(port: u16, paths: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for path in paths {
        let response = client::get(local(port), &path).expect("request");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let name = response.header("x-upstream").unwrap_or("?").to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Upstreams "a", "b" and "c", and their addresses.
fn three_upstreams() -> ([Upstream; 3], Vec<SocketAddr>) {
    let ups = [
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    ];
    let addrs = ups.iter().map(|u| u.addr).collect();
    (ups, addrs)
}

#[test]
fn round_robin_spreads_evenly_and_reload_changes_the_set() {
    let (_ups, addrs) = three_upstreams();
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &lb_service(port, r#"selection "RoundRobin""#, &addrs),
    );
    let counts = tally(port, (0..100).map(|_| "/".to_owned()));
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, count) in &counts {
        assert!(
            (33..=34).contains(count),
            "{name}: {count} of 100 ({counts:?})"
        );
    }

    river.rewrite_config(
        "    workers 1",
        &lb_service(port, r#"selection "RoundRobin""#, &addrs[..1]),
    );
    reload_ok(&river);
    let counts = tally(port, (0..20).map(|_| "/".to_owned()));
    assert_eq!(counts, HashMap::from([("a".to_owned(), 20)]));
}

#[test]
fn ketama_sends_a_path_to_the_same_upstream() {
    let (_ups, addrs) = three_upstreams();
    let port = free_port();
    let _river = River::start(
        "    workers 2",
        &lb_service(port, r#"selection "Ketama" key="UriPath""#, &addrs),
    );
    let mut used = std::collections::HashSet::new();
    for i in 0..12 {
        let path = format!("/item/{i}");
        let counts = tally(port, (0..6).map(|_| path.clone()));
        assert_eq!(counts.len(), 1, "{path} went to {counts:?}");
        used.extend(counts.into_keys());
    }
    assert!(used.len() >= 2, "12 paths all hashed to {used:?}");
}

#[test]
fn a_dead_upstream_leaves_rotation_and_comes_back() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let c = Upstream::start("c");
    let c_addr = c.addr;
    let port = free_port();
    let interval_ms = 200;
    let _river = River::start(
        "    workers 1",
        &lb_service(
            port,
            &format!(
                r#"selection "RoundRobin"
                health-check "Tcp" interval-ms={interval_ms}"#
            ),
            &[a.addr, b.addr, c.addr],
        ),
    );
    assert_eq!(tally(port, (0..30).map(|_| "/".to_owned())).len(), 3);

    drop(c);
    // Wake c's accept loop so its socket closes, then allow two intervals.
    std::thread::sleep(Duration::from_millis(2 * interval_ms + 100));
    let mut connection = Connection::open(local(port)).unwrap();
    for i in 0..60 {
        let response = connection.get("/", &[]).expect("request after c died");
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        assert_ne!(
            response.header("x-upstream"),
            Some("c"),
            "request {i} went to c"
        );
    }

    // Back on its port: back in rotation once a probe succeeds.
    let _c = Upstream::start_on("c", c_addr);
    wait_for("c back in rotation", Duration::from_secs(10), || {
        tally(port, (0..6).map(|_| "/".to_owned()))
            .contains_key("c")
            .then_some(())
    });
}

#[test]
fn connect_failures_retry_elsewhere_and_no_upstream_is_a_502_with_a_body() {
    // A port nothing listens on.
    let dead = local(free_port());
    let live = Upstream::start("live");
    let port = free_port();
    let other = free_port();
    let services = format!(
        "{}\n{}",
        lb_service(port, r#"selection "RoundRobin""#, &[dead, live.addr]),
        lb_service(other, r#"selection "RoundRobin""#, &[dead]).replace("Balanced", "Dead"),
    );
    let _river = River::start("    workers 1", &services);
    // No health check: every other pick is the dead one, and is retried.
    let counts = tally(port, (0..20).map(|_| "/".to_owned()));
    assert_eq!(counts, HashMap::from([("live".to_owned(), 20)]));

    let response = client::get(local(other), "/").expect("a response, not a dropped connection");
    assert_eq!(response.status, 502);
    assert!(
        response.text().contains("Bad Gateway"),
        "{}",
        response.text()
    );
}

#[test]
fn tls_connectors_send_sni_and_alpn_and_reload_changes_them() {
    let tls = TlsHelloRecorder::start();
    let port = free_port();
    let service = |sni: &str, proto: &str| {
        format!(
            r#"    Secure {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            "{}" tls-sni="{sni}" proto="{proto}"
        }}
    }}"#,
            tls.addr
        )
    };
    let river = River::start("    workers 1", &service("one.example", "h2-or-h1"));
    // The recorder hangs up after the hello: the client gets a 502, not a hang.
    let response = client::get(local(port), "/").unwrap();
    assert_eq!(response.status, 502);
    let hello = tls
        .hellos()
        .last()
        .cloned()
        .expect("a ClientHello upstream");
    assert_eq!(hello.sni.as_deref(), Some("one.example"));
    assert_eq!(hello.alpn, ["h2", "http/1.1"]);

    river.rewrite_config("    workers 1", &service("two.example", "h1-only"));
    reload_ok(&river);
    assert_eq!(client::get(local(port), "/").unwrap().status, 502);
    let hello = tls.hellos().last().cloned().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("two.example"));
    assert_eq!(hello.alpn, ["http/1.1"]);

    river.rewrite_config("    workers 1", &service("three.example", "h2-only"));
    reload_ok(&river);
    assert_eq!(client::get(local(port), "/").unwrap().status, 502);
    let hello = tls.hellos().last().cloned().unwrap();
    assert_eq!(hello.sni.as_deref(), Some("three.example"));
    assert_eq!(hello.alpn, ["h2"]);
}

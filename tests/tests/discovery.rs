//! Issue 15: upstreams discovered from DNS (A/AAAA and SRV) with a real DNS
//! server (dnsmasq on a loopback port), applied in place: no reload, no new
//! process, the same set on every worker. Upstreams listen on 127.0.0.2 and
//! 127.0.0.3 (loopback aliases).
//!
//! Timings: names have a TTL of 1 s (dnsmasq's `--local-ttl`), River's
//! max-ttl-ms is 1000, so a change must show within TTL + 1 s = 2 s; the
//! waits below allow a few seconds more for a busy 2-core machine.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use river_tests::client::{self, Connection};
use river_tests::dns::{serving, status_json, upstreams_on_one_port, Dns, Srv};
use river_tests::features::{reload_fails, reload_ok};
use river_tests::load::Load;
use river_tests::metrics::scrape;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, wait_for};

const TWO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const THREE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// TTL + 1 s, plus slack for a loaded machine.
const FOLLOW: Duration = Duration::from_secs(2 + 4);

fn discovered_service(port: u16, dns: &Dns, selection: &str, connectors: &[String]) -> String {
    let connectors: String = connectors
        .iter()
        .map(|c| format!("            \"{c}\"\n"))
        .collect();
    format!(
        r#"    Api {{
        listeners {{
            "127.0.0.1:{port}"
        }}
        connectors {{
            load-balance {{
                selection {selection}
                discovery "Dns" resolver="{resolver}" min-ttl-ms=300 max-ttl-ms=1000 resolve-timeout-ms=1000
            }}
{connectors}        }}
    }}"#,
        resolver = dns.addr()
    )
}

/// Wait until `upstream` answers requests again and again (the load is on).
fn receives_traffic(upstream: &Upstream, within: Duration) {
    let before = upstream.requests();
    wait_for(&format!("traffic to {}", upstream.name), within, || {
        (upstream.requests() >= before + 10).then_some(())
    });
}

/// Wait until `upstream` gets no more requests for a whole second; panics if
/// it still does after `within`. Returns how long that took.
fn receives_none(upstream: &Upstream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = upstream.requests();
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = upstream.requests();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            return quiet_since - started;
        }
        assert!(
            started.elapsed() < within + Duration::from_secs(1),
            "{} still receives requests after {within:?}",
            upstream.name
        );
    }
}

#[test]
fn a_backend_added_and_removed_under_load_without_reload_or_new_process() {
    let (ups, port) = upstreams_on_one_port(&["two", "three"], &[TWO, THREE]);
    let dns = Dns::start(&[("api.test", &[TWO])], &[]);
    let proxy = free_port();
    let river = River::start(
        "    workers 2",
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &[format!("api.test:{port}")]),
    );
    let before = serving(&river);
    assert_eq!(before.1.len(), 2);
    let load = Load::keep_alive(local(proxy), 4, "/");
    receives_traffic(&ups[0], FOLLOW);
    assert_eq!(ups[1].requests(), 0);

    dns.set("api.test", &[TWO, THREE]);
    receives_traffic(&ups[1], FOLLOW);
    receives_traffic(&ups[0], FOLLOW);

    dns.set("api.test", &[THREE]);
    receives_none(&ups[0], FOLLOW);
    receives_traffic(&ups[1], FOLLOW);

    load.finish().assert_clean(200);
    assert_eq!(serving(&river), before, "a reload or a new worker happened");
    assert!(!river.log().contains("generation started generation=2"));
}

#[test]
fn dns_down_for_10_s_keeps_the_last_set_then_follows_a_change() {
    let (ups, port) = upstreams_on_one_port(&["two", "three"], &[TWO, THREE]);
    let mut dns = Dns::start(&[("api.test", &[TWO])], &[]);
    let proxy = free_port();
    let river = River::start(
        "    workers 2\n    metrics \"$DIR/metrics.sock\"",
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &[format!("api.test:{port}")]),
    );
    let before = serving(&river);
    let load = Load::keep_alive(local(proxy), 4, "/");
    receives_traffic(&ups[0], FOLLOW);
    let name = format!("api.test:{port}");
    let labels = [("service", "Api"), ("name", name.as_str())];
    let m = scrape(&river.metrics_socket());
    assert_eq!(m.get("river_upstream_discovered", &labels), Some(1.0));
    assert_eq!(m.get("river_discovery_errors_total", &labels), None);

    dns.stop();
    let outage = Instant::now();
    // The failures show in the status, with the set still there.
    let error = wait_for("a lookup error in the status", FOLLOW, || {
        let status = status_json(&river);
        let name = &status["generations"][0]["discovery"][0];
        name["last_error"].as_str().map(|e| {
            assert_eq!(name["backends"].as_array().map(Vec::len), Some(1));
            e.to_owned()
        })
    });
    assert!(!error.is_empty());
    let m = scrape(&river.metrics_socket());
    assert!(m.get("river_discovery_errors_total", &labels) >= Some(1.0));
    assert_eq!(m.get("river_upstream_discovered", &labels), Some(1.0));
    while outage.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    receives_traffic(&ups[0], FOLLOW);
    assert_eq!(ups[1].requests(), 0);

    dns.set("api.test", &[THREE]);
    dns.restart();
    // Backoff is capped at max-ttl-ms (1 s) here.
    receives_traffic(&ups[1], FOLLOW);
    receives_none(&ups[0], FOLLOW);
    load.finish().assert_clean(200);
    assert_eq!(serving(&river), before);
    let status = status_json(&river);
    assert!(status["generations"][0]["discovery"][0]["last_error"].is_null());
}

#[test]
fn srv_weights_1_to_3_split_traffic_1_to_3() {
    let light = Upstream::start_on("light", (TWO, 0).into());
    let heavy = Upstream::start_on("heavy", (TWO, 0).into());
    let fallback = Upstream::start_on("fallback", (THREE, 0).into());
    let srv = |target, port, priority, weight| Srv {
        name: "_http._tcp.api.test",
        target,
        port,
        priority,
        weight,
    };
    let dns = Dns::start(
        &[("two.test", &[TWO]), ("three.test", &[THREE])],
        &[
            srv("two.test", light.addr.port(), 10, 10),
            srv("two.test", heavy.addr.port(), 10, 30),
            // A lower priority tier: used only if the first were empty.
            srv("three.test", fallback.addr.port(), 20, 100),
        ],
    );
    let proxy = free_port();
    let river = River::start(
        "    workers 2",
        &discovered_service(
            proxy,
            &dns,
            "\"RoundRobin\"",
            &["_http._tcp.api.test".to_owned()],
        ),
    );
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut connections: Vec<Connection> = (0..4)
        .map(|_| Connection::open(local(proxy)).expect("connect"))
        .collect();
    for i in 0..2000 {
        let response = connections[i % 4].get("/", &[]).expect("request");
        assert_eq!(response.status, 200);
        let name = response.header("x-upstream").unwrap_or("?").to_owned();
        *counts.entry(name).or_default() += 1;
    }
    let heavy_share = counts.get("heavy").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (0.675..=0.825).contains(&heavy_share),
        "heavy got {heavy_share:.3} of 2000, wanted 0.75 ± 10 %: {counts:?}"
    );
    assert_eq!(counts.get("fallback"), None, "{counts:?}");
    let text = river.riverctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("(weight 3)"), "{text}");
}

#[test]
fn ketama_sends_a_key_to_the_same_backend_from_every_worker() {
    let (_ups, port) = upstreams_on_one_port(&["two", "three"], &[TWO, THREE]);
    let dns = Dns::start(&[("api.test", &[TWO])], &[]);
    let proxy = free_port();
    let river = River::start(
        "    workers 2",
        &discovered_service(
            proxy,
            &dns,
            "\"Ketama\" key=\"UriPath\"",
            &[format!("api.test:{port}")],
        ),
    );
    // Both workers reach the two-backend set in place.
    dns.set("api.test", &[TWO, THREE]);
    wait_for("both workers to apply the new set", FOLLOW, || {
        (river.log().matches("upstreams=2").count() >= 2).then_some(())
    });
    // Connections held open at once are spread over both workers.
    let mut connections: Vec<Connection> = (0..8)
        .map(|_| Connection::open(local(proxy)).expect("connect"))
        .collect();
    for connection in &mut connections {
        assert_eq!(connection.get("/warm", &[]).expect("request").status, 200);
    }
    // Both workers hold some of them (load reports come every 0.5 s).
    wait_for("both workers to hold connections", FOLLOW, || {
        let status = status_json(&river);
        let workers = status["generations"][0]["workers"].as_array()?.clone();
        workers
            .iter()
            .all(|w| w["connections"].as_u64() > Some(0))
            .then_some(())
    });
    let mut used = BTreeSet::new();
    for key in 0..40 {
        let path = format!("/user/{key}");
        let seen: BTreeSet<String> = connections
            .iter_mut()
            .map(|c| {
                let response = c.get(&path, &[]).expect("request");
                response.header("x-upstream").unwrap_or("?").to_owned()
            })
            .collect();
        assert_eq!(seen.len(), 1, "{path} went to {seen:?}");
        used.extend(seen);
    }
    assert_eq!(used.len(), 2, "both backends get keys: {used:?}");
}

#[test]
fn a_reload_with_dns_down_and_a_new_name_is_rejected_naming_the_name() {
    let (ups, port) = upstreams_on_one_port(&["two", "three"], &[TWO, THREE]);
    let mut dns = Dns::start(&[("api.test", &[TWO]), ("new.test", &[THREE])], &[]);
    let proxy = free_port();
    let system = "    workers 2";
    let known = [format!("api.test:{port}")];
    let river = River::start(
        system,
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &known),
    );
    let before = serving(&river);
    dns.stop();

    let with_new = [known[0].clone(), format!("new.test:{port}")];
    river.rewrite_config(
        system,
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &with_new),
    );
    let error = reload_fails(&river);
    assert!(error.contains(&format!("`new.test:{port}`")), "{error}");
    assert!(!error.contains(&format!("`api.test:{port}`")), "{error}");
    assert_eq!(serving(&river), before);
    let response = client::get(local(proxy), "/").expect("request");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream"), Some("two"));

    // Known names alone: the new generation keeps the serving one's set.
    river.rewrite_config(
        system,
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &known),
    );
    reload_ok(&river);
    let (generation, _) = serving(&river);
    assert!(generation > before.0);
    let status = status_json(&river);
    let serving_status = status["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["state"] == "serving")
        .unwrap()
        .clone();
    assert_eq!(serving_status["discovery"][0]["inherited"], true);
    let response = client::get(local(proxy), "/").expect("request");
    assert_eq!(response.header("x-upstream"), Some("two"));
    assert!(ups[0].requests() >= 2);
}

#[test]
fn a_cold_start_with_the_resolver_down_answers_503_then_follows() {
    let (_ups, port) = upstreams_on_one_port(&["two", "three"], &[TWO, THREE]);
    let mut dns = Dns::start(&[("api.test", &[TWO])], &[]);
    dns.stop();
    let proxy = free_port();
    let river = River::start(
        "    workers 2",
        &discovered_service(proxy, &dns, "\"RoundRobin\"", &[format!("api.test:{port}")]),
    );
    assert!(river.log().contains("answering 503 while retrying"));
    let response = client::get(local(proxy), "/").expect("request");
    assert_eq!(response.status, 503);
    let text = river.riverctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("no upstream yet"), "{text}");

    dns.restart();
    wait_for("the first answer to be applied", FOLLOW, || {
        let response = client::get(local(proxy), "/").ok()?;
        (response.status == 200).then_some(())
    });
    assert_eq!(
        client::get(local(proxy), "/")
            .expect("request")
            .header("x-upstream"),
        Some("two")
    );
}

//! Issue 4: path control (CIDR blocks, header filters both ways) and rate
//! limiting, each changed by a reload.

use std::time::Duration;

use river_tests::client::{self, Connection};
use river_tests::features::reload_ok;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, wait_for};

fn service(listen: &str, upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"    Filtered {{
        listeners {{
            "{listen}"
        }}
        connectors {{
            "{upstream}"
        }}
{extra}
    }}"#
    )
}

fn block(cidrs: &str) -> String {
    format!(
        r#"        path-control {{
            request-filters {{
                filter kind="block-cidr-range" addrs="{cidrs}"
            }}
        }}"#
    )
}

fn status(addr: std::net::SocketAddr, path: &str) -> u16 {
    client::get(addr, path).expect("request").status
}

#[test]
fn blocked_cidr_gets_403_and_reload_changes_the_list() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let river = River::start(
        "    workers 2",
        &service(&listen, upstream.addr, &block("10.0.0.0/8, 127.0.0.0/8")),
    );
    let response = client::get(local(port), "/").unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(
        upstream.requests(),
        0,
        "blocked requests never reach upstream"
    );

    river.rewrite_config(
        "    workers 2",
        &service(&listen, upstream.addr, &block("10.0.0.0/8, 192.168.0.0/16")),
    );
    reload_ok(&river);
    for _ in 0..10 {
        assert_eq!(status(local(port), "/"), 200);
    }

    river.rewrite_config(
        "    workers 2",
        &service(&listen, upstream.addr, &block("127.0.0.1")),
    );
    reload_ok(&river);
    assert_eq!(status(local(port), "/"), 403, "a bare address is a /32");
}

#[test]
fn blocked_ipv6_client_gets_403() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine: skipping");
        return;
    }
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let _river = River::start(
        "    workers 1",
        &service(
            &format!("[::1]:{port}"),
            upstream.addr,
            &block("127.0.0.0/8, ::1/128"),
        ),
    );
    assert_eq!(status(v6, "/"), 403);
}

fn header_filters(friend: &str) -> String {
    format!(
        r#"        path-control {{
            upstream-request {{
                filter kind="remove-header-key-regex" pattern=".*(secret|SECRET).*"
                filter kind="upsert-header" key="x-proxy-friend" value="{friend}"
            }}
            upstream-response {{
                filter kind="remove-header-key-regex" pattern="x-upstream-secret"
                filter kind="upsert-header" key="x-with-love-from" value="{friend}"
            }}
        }}"#
    )
}

#[test]
fn headers_are_added_and_removed_both_ways() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let river = River::start(
        "    workers 2",
        &service(&listen, upstream.addr, &header_filters("river")),
    );
    let check = |friend: &str| {
        let mut connection = Connection::open(local(port)).unwrap();
        let response = connection
            .get(
                "/headers",
                &[
                    ("x-my-secret", "hunter2"),
                    ("x-proxy-friend", "mallory"),
                    ("connection", "close"),
                ],
            )
            .unwrap();
        let echoed = response.text().to_ascii_lowercase();
        assert!(
            echoed.contains(&format!("x-proxy-friend: {friend}")),
            "{echoed}"
        );
        assert!(
            !echoed.contains("mallory") && !echoed.contains("hunter2"),
            "{echoed}"
        );
        assert!(echoed.contains("x-forwarded-for: 127.0.0.1"), "{echoed}");
        assert!(echoed.contains("x-forwarded-proto: http"), "{echoed}");
        assert_eq!(response.header("x-with-love-from"), Some(friend));
        assert_eq!(
            response.header("x-upstream-secret"),
            None,
            "removed from the response"
        );
        assert_eq!(
            response.header("x-upstream"),
            Some("alpha"),
            "others untouched"
        );
    };
    check("river");

    river.rewrite_config(
        "    workers 2",
        &service(&listen, upstream.addr, &header_filters("delta")),
    );
    reload_ok(&river);
    check("delta");
}

fn rate_limit(rules: &str) -> String {
    format!("        rate-limiting {{\n{rules}\n        }}")
}

#[test]
fn the_eleventh_request_in_a_burst_gets_429_and_reload_changes_the_limit() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let rule = |tokens: u32| {
        rate_limit(&format!(
            r#"            rule kind="source-ip" max-buckets=100 tokens-per-bucket={tokens} refill-qty=1 refill-rate-ms=60000"#
        ))
    };
    // One worker: buckets are per worker process.
    let river = River::start("    workers 1", &service(&listen, upstream.addr, &rule(10)));
    let mut connection = Connection::open(local(port)).unwrap();
    for i in 0..10 {
        assert_eq!(
            connection.get("/", &[]).unwrap().status,
            200,
            "request {}",
            i + 1
        );
    }
    let eleventh = connection.get("/", &[]).unwrap();
    assert_eq!(eleventh.status, 429);
    assert_eq!(upstream.requests(), 10);

    river.rewrite_config("    workers 1", &service(&listen, upstream.addr, &rule(20)));
    reload_ok(&river);
    let statuses: Vec<u16> = (0..21).map(|_| status(local(port), "/")).collect();
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[20], 429);
}

#[test]
fn uri_rules_limit_matching_paths_only_and_buckets_refill() {
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let rules = rate_limit(
        r#"            rule kind="specific-uri" pattern="^/limited/" max-buckets=100 tokens-per-bucket=2 refill-qty=2 refill-rate-ms=400
            rule kind="any-matching-uri" pattern="^/shared/" max-buckets=1 tokens-per-bucket=1 refill-qty=1 refill-rate-ms=60000"#,
    );
    let _river = River::start(
        "    workers 1",
        &service(&format!("127.0.0.1:{port}"), upstream.addr, &rules),
    );
    let addr = local(port);
    assert_eq!(status(addr, "/limited/a"), 200);
    assert_eq!(status(addr, "/limited/a"), 200);
    assert_eq!(status(addr, "/limited/a"), 429);
    assert_eq!(
        status(addr, "/limited/b"),
        200,
        "another path, another bucket"
    );
    for _ in 0..5 {
        assert_eq!(status(addr, "/free"), 200);
    }
    assert_eq!(status(addr, "/shared/x"), 200);
    assert_eq!(
        status(addr, "/shared/y"),
        429,
        "one bucket for all matching paths"
    );
    wait_for("the bucket refilled", Duration::from_secs(5), || {
        (status(addr, "/limited/a") == 200).then_some(())
    });
}

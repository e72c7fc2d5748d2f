use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::*;

mod discovery;

const ORIGIN: &str = "/etc/river/river.kdl";

fn ok(src: &str) -> Config {
    match parse(src, ORIGIN) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn err(src: &str) -> ConfigError {
    match parse(src, ORIGIN) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(e) => e,
    }
}

/// 1-based line and column (in chars) of the first occurrence of `needle`.
fn pos(src: &str, needle: &str) -> (usize, usize) {
    let at = src
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in source"));
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// Asserts that parsing fails with a diagnostic at the first occurrence of
/// `at` whose message contains `msg`, and that the report shows `origin:line:col`.
fn assert_error_at(src: &str, at: &str, msg: &str) -> ConfigError {
    let (line, col) = pos(src, at);
    assert_error_at_pos(src, line, col, msg)
}

fn assert_error_at_pos(src: &str, line: usize, col: usize, msg: &str) -> ConfigError {
    let e = err(src);
    let report = e.to_string();
    let found = e
        .diagnostics()
        .iter()
        .any(|d| d.line == line && d.column == col && d.message.contains(msg));
    assert!(
        found,
        "no diagnostic at {line}:{col} containing {msg:?} in:\n{report}\n{:#?}",
        e.diagnostics()
    );
    assert!(
        report.contains(&format!("{ORIGIN}:{line}:{col}")),
        "report lacks {ORIGIN}:{line}:{col}:\n{report}"
    );
    e
}

/// A proxy service around `body` (inserted on line 4 onwards).
fn service(body: &str) -> String {
    format!(
        "services {{\n    S {{\n        listeners {{ \"127.0.0.1:8080\" }}\n{body}\n    }}\n}}\n"
    )
}

fn proxy(extra: &str) -> String {
    service(&format!(
        "        connectors {{\n            \"127.0.0.1:8000\"\n        }}\n{extra}"
    ))
}

fn only_proxy(c: &Config) -> &ProxyService {
    match &c.services[0].kind {
        ServiceKind::Proxy(p) => p,
        other => panic!("not a proxy: {other:?}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    www: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let www = dir.path().join("www");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::create_dir(&www).unwrap();
    Files {
        _dir: dir,
        cert,
        key,
        www,
    }
}

const DESIGN_EXAMPLE: &str = r#"system {
    workers 2                       // worker processes; default: number of CPUs
    threads-per-service 2
    pid-file "/run/river/river.pid"
    control-socket "/run/river/river.sock"
    user "river"                    // workers drop to this user and group
    group "river"
    drain-timeout-secs 60
    max-draining-generations 2
    draining-memory-limit-mb 512
}
services {
    Example {
        listeners {
            "0.0.0.0:8080"
            "0.0.0.0:4443" cert-path="/etc/river/cert.pem" key-path="/etc/river/key.pem" offer-h2=true
        }
        connectors {
            load-balance {
                selection "Ketama" key="UriPath"
                health-check "None"
            }
            "10.0.0.5:8000"
            "10.0.0.6:8000"
        }
        path-control {
            request-filters {
                filter kind="block-cidr-range" addrs="192.168.0.0/16, 10.0.0.0/8"
            }
            upstream-request {
                filter kind="remove-header-key-regex" pattern=".*(secret|SECRET).*"
                filter kind="upsert-header" key="x-proxy-friend" value="river"
            }
            upstream-response {
                filter kind="upsert-header" key="x-with-love-from" value="river"
            }
        }
        rate-limiting {
            rule kind="source-ip" max-buckets=4000 tokens-per-bucket=10 refill-qty=1 refill-rate-ms=10
        }
    }
    Files {
        listeners { "0.0.0.0:9000" }
        file-server { base-path "/srv/www" }
    }
}
"#;

fn design_example(f: &Files) -> String {
    DESIGN_EXAMPLE
        .replace("/etc/river/cert.pem", &f.cert.display().to_string())
        .replace("/etc/river/key.pem", &f.key.display().to_string())
        .replace("/srv/www", &f.www.display().to_string())
}

// ------------------------------------------------------------------ valid configs

#[test]
fn design_example_parses() {
    let f = files();
    let c = ok(&design_example(&f));
    let s = &c.system;
    assert_eq!(s.workers, 2);
    assert_eq!(s.threads_per_service, 2);
    assert_eq!(
        s.pid_file.as_deref(),
        Some(Path::new("/run/river/river.pid"))
    );
    assert_eq!(
        s.control_socket.as_deref(),
        Some(Path::new("/run/river/river.sock"))
    );
    assert_eq!(s.user.as_deref(), Some("river"));
    assert_eq!(s.group.as_deref(), Some("river"));
    assert_eq!(s.drain_timeout_secs, 60);
    assert_eq!(s.max_draining_generations, 2);
    assert_eq!(s.draining_memory_limit_mb, Some(512));
    assert_eq!(s.worker_startup_timeout_secs, 10);
    assert_eq!(s.listen_backlog, 4096);
    assert!(!s.daemonize);

    assert_eq!(c.services.len(), 2);
    let ex = &c.services[0];
    assert_eq!(ex.name, "Example");
    assert_eq!(
        ex.listeners,
        vec![
            Listener {
                address: ListenAddress::Tcp(addr("0.0.0.0:8080")),
                tls: None
            },
            Listener {
                address: ListenAddress::Tcp(addr("0.0.0.0:4443")),
                tls: Some(TlsListener {
                    cert_path: f.cert.clone(),
                    key_path: f.key.clone(),
                    offer_h2: true
                })
            },
        ]
    );
    let p = only_proxy(&c);
    assert_eq!(
        p.load_balance,
        LoadBalance {
            selection: Selection::Ketama {
                key: SelectionKey::UriPath
            },
            health_check: HealthCheck::None
        }
    );
    assert_eq!(
        p.upstreams,
        vec![
            Upstream {
                address: addr("10.0.0.5:8000"),
                tls_sni: None,
                proto: UpstreamProto::H1Only
            },
            Upstream {
                address: addr("10.0.0.6:8000"),
                tls_sni: None,
                proto: UpstreamProto::H1Only
            },
        ]
    );
    assert_eq!(
        p.path_control,
        PathControl {
            request_filters: vec![RequestFilter::BlockCidrRange {
                addrs: vec![
                    "192.168.0.0/16".parse().unwrap(),
                    "10.0.0.0/8".parse().unwrap()
                ]
            }],
            upstream_request: vec![
                HeaderFilter::RemoveHeaderKeyRegex {
                    pattern: ".*(secret|SECRET).*".into()
                },
                HeaderFilter::UpsertHeader {
                    key: "x-proxy-friend".into(),
                    value: "river".into()
                },
            ],
            upstream_response: vec![HeaderFilter::UpsertHeader {
                key: "x-with-love-from".into(),
                value: "river".into()
            }],
        }
    );
    assert_eq!(
        p.rate_limiting,
        RateLimiting {
            timeout_millis: None,
            rules: vec![RateRule {
                kind: RateRuleKind::SourceIp,
                max_buckets: 4000,
                tokens_per_bucket: 10,
                refill_qty: 1,
                refill_rate_ms: 10
            }]
        }
    );
    let files = &c.services[1];
    assert_eq!(files.name, "Files");
    assert_eq!(
        files.listeners[0].address,
        ListenAddress::Tcp(addr("0.0.0.0:9000"))
    );
    assert_eq!(
        files.kind,
        ServiceKind::FileServer(FileServer {
            base_path: f.www.clone()
        })
    );
    // The model round-trips through serde (the master sends it to workers).
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
}

#[test]
fn design_example_loads_from_file() {
    let f = files();
    let path = f.www.join("river.kdl");
    std::fs::write(&path, design_example(&f)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.services.len(), 2);

    std::fs::write(&path, "system { wrokers 2 }\n").unwrap();
    let e = load(&path).unwrap_err();
    let shown = format!("{}:1:10", path.display());
    assert!(e.to_string().contains(&shown), "{e}");
}

#[test]
fn missing_file_is_io_error() {
    let e = load(Path::new("/nonexistent/river.kdl")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/river.kdl"), "{e}");
    assert!(e.diagnostics().is_empty());
}

#[test]
fn embedded_default_parses() {
    let c = parse(EMBEDDED_DEFAULT_KDL, "default").unwrap();
    assert_eq!(c, embedded_default());
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.services[0].name, "Welcome");
    assert_eq!(c.services[0].kind, ServiceKind::WelcomePage);
    assert_eq!(
        c.services[0].listeners,
        vec![Listener {
            address: ListenAddress::Tcp(addr("127.0.0.1:8080")),
            tls: None
        }]
    );
}

#[test]
fn defaults() {
    let c = ok(&proxy(""));
    let s = &c.system;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert_eq!(s.workers, cpus);
    assert_eq!(s.threads_per_service, 8);
    assert!(!s.daemonize);
    assert_eq!(s.pid_file, None);
    assert_eq!(s.upgrade_socket, None);
    assert_eq!(s.control_socket, None);
    assert_eq!(s.user, None);
    assert_eq!(s.group, None);
    assert_eq!(s.drain_timeout_secs, 60);
    assert_eq!(s.max_draining_generations, 2);
    assert_eq!(s.draining_memory_limit_mb, None);
    assert_eq!(s.worker_startup_timeout_secs, 10);
    assert_eq!(s.listen_backlog, 4096);
    assert_eq!(s.access_log, None);
    assert!(s.connection_handoff);
    let p = only_proxy(&c);
    assert_eq!(p.load_balance, LoadBalance::default());
    assert_eq!(p.path_control, PathControl::default());
    assert_eq!(p.rate_limiting, RateLimiting::default());
    let t = c.services[0].timeouts;
    assert_eq!(
        (
            t.client_header_secs,
            t.client_body_secs,
            t.upstream_connect_secs,
            t.upstream_read_secs,
            t.upstream_send_secs,
            t.tunnel_idle_secs
        ),
        (60, 60, 10, 60, 60, 3600)
    );
}

#[test]
fn timeouts_block() {
    let c = ok(&proxy(
        "        timeouts {\n            client-header-secs 5\n            client-body-secs 6\n            upstream-connect-secs 7\n            upstream-read-secs 8\n            upstream-send-secs 9\n            tunnel-idle-secs 86400\n        }",
    ));
    assert_eq!(
        c.services[0].timeouts,
        Timeouts {
            client_header_secs: 5,
            client_body_secs: 6,
            upstream_connect_secs: 7,
            upstream_read_secs: 8,
            upstream_send_secs: 9,
            tunnel_idle_secs: 86400,
        }
    );
    // Partial: the others keep their defaults.
    let c = ok(&proxy("        timeouts { upstream-read-secs 300; }"));
    assert_eq!(c.services[0].timeouts.upstream_read_secs, 300);
    assert_eq!(c.services[0].timeouts.client_header_secs, 60);
    // Client timeouts apply to file servers too.
    let f = files();
    let src = service(&format!(
        "        file-server {{ base-path \"{}\" }}\n        timeouts {{ client-header-secs 10; }}",
        f.www.display()
    ));
    assert_eq!(ok(&src).services[0].timeouts.client_header_secs, 10);
}

#[test]
fn timeouts_errors() {
    let with = |t: &str| proxy(&format!("        timeouts {{\n            {t}\n        }}"));
    let cases: &[(&str, &str, &str)] = &[
        ("client-header-secs 0", "0", "must be at least 1"),
        (
            "upstream-read-secs 999999999",
            "999999999",
            "must be at most 604800",
        ),
        (
            "client-body-secs \"60\"",
            "\"60\"",
            "must be a positive integer",
        ),
        ("upstream-read-secs", "upstream-read-secs", "needs a value"),
        (
            "read-secs 5",
            "read-secs",
            "unknown key `read-secs` in `timeouts`",
        ),
        (
            "tunnel-idle-secs 5\n            tunnel-idle-secs 6",
            "tunnel-idle-secs 6",
            "duplicate key `tunnel-idle-secs`",
        ),
    ];
    for (t, at, msg) in cases {
        let src = with(t);
        let start = src.find(t).unwrap();
        let off = start + t.find(at).unwrap();
        let (line, col) = pos(&src, &src[off..]);
        assert_error_at_pos(&src, line, col, msg);
    }
    // Anywhere but in a service, `timeouts` is an unknown key.
    let src = format!(
        "system {{\n    timeouts {{ client-header-secs 5; }}\n}}\n{}",
        proxy("")
    );
    assert_error_at(&src, "timeouts", "unknown key `timeouts` in `system`");
    let src = format!("timeouts {{ client-header-secs 5; }}\n{}", proxy(""));
    assert_error_at(&src, "timeouts", "unknown key `timeouts`");
    let src = proxy("        path-control {\n            timeouts { }\n        }");
    assert_error_at(&src, "timeouts", "unknown key `timeouts`");
    // Upstream timeouts mean nothing to a file server.
    let f = files();
    let src = service(&format!(
        "        file-server {{ base-path \"{}\" }}\n        timeouts {{ upstream-read-secs 10; }}",
        f.www.display()
    ));
    assert_error_at(
        &src,
        "upstream-read-secs",
        "does not apply to a service with `file-server`",
    );
}

#[test]
fn all_system_keys() {
    let c = ok(&format!(
        r#"system {{
    workers 3
    threads-per-service 4
    daemonize true
    pid-file "/run/river.pid"
    upgrade-socket "/run/river-upgrade.sock"
    control-socket "/run/river.sock"
    user "www-data"
    group "www-data"
    drain-timeout-secs 0
    max-draining-generations 0
    draining-memory-limit-mb 256
    worker-startup-timeout-secs 5
    listen-backlog 128
    access-log "/var/log/river/access.log"
    metrics "127.0.0.1:9091"
    connection-handoff false
}}
{}"#,
        proxy("")
    ));
    let s = c.system;
    assert_eq!(s.workers, 3);
    assert_eq!(s.threads_per_service, 4);
    assert!(s.daemonize);
    assert_eq!(s.pid_file, Some(PathBuf::from("/run/river.pid")));
    assert_eq!(
        s.upgrade_socket,
        Some(PathBuf::from("/run/river-upgrade.sock"))
    );
    assert_eq!(s.control_socket, Some(PathBuf::from("/run/river.sock")));
    assert_eq!(s.user.as_deref(), Some("www-data"));
    assert_eq!(s.group.as_deref(), Some("www-data"));
    assert_eq!(s.drain_timeout_secs, 0);
    assert_eq!(s.max_draining_generations, 0);
    assert_eq!(s.draining_memory_limit_mb, Some(256));
    assert_eq!(s.worker_startup_timeout_secs, 5);
    assert_eq!(s.listen_backlog, 128);
    assert_eq!(
        s.access_log,
        Some(PathBuf::from("/var/log/river/access.log"))
    );
    assert_eq!(
        s.metrics,
        Some(ListenAddress::Tcp("127.0.0.1:9091".parse().unwrap()))
    );
    assert!(!s.connection_handoff);
}

/// Issue 12: `connection-handoff` is a boolean (v1 or v2 syntax), default true.
#[test]
fn connection_handoff_switch() {
    for (word, expect) in [
        ("true", true),
        ("false", false),
        ("#true", true),
        ("#false", false),
    ] {
        let src = format!(
            "system {{\n    connection-handoff {word}\n}}\n{}",
            proxy("")
        );
        assert_eq!(ok(&src).system.connection_handoff, expect, "{word}");
    }
    let src = format!("system {{\n    connection-handoff 1\n}}\n{}", proxy(""));
    assert_error_at(&src, "1\n}", "`connection-handoff` must be a boolean");
    let src = format!("system {{\n    connection-handoff\n}}\n{}", proxy(""));
    err(&src);
    // A config serialized before the switch existed (the master's JSON to a
    // worker of the same binary never lacks it, but old test fixtures may).
    let mut json = serde_json::to_value(ok(&proxy(""))).unwrap();
    json["system"]
        .as_object_mut()
        .unwrap()
        .remove("connection_handoff");
    let back: Config = serde_json::from_value(json).unwrap();
    assert!(back.system.connection_handoff);
}

#[test]
fn metrics_listener_addresses() {
    let metrics = |value: &str| {
        ok(&format!(
            "system {{\n    metrics \"{value}\"\n}}\n{}",
            proxy("")
        ))
        .system
        .metrics
    };
    assert_eq!(
        ok(&proxy("")).system.metrics,
        None,
        "no listener by default"
    );
    assert_eq!(
        metrics("[::1]:9091"),
        Some(ListenAddress::Tcp("[::1]:9091".parse().unwrap()))
    );
    assert_eq!(
        metrics("/run/river/metrics.sock"),
        Some(ListenAddress::Unix(PathBuf::from(
            "/run/river/metrics.sock"
        )))
    );
}

#[test]
fn metrics_listener_errors() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "metrics \"localhost:9091\"",
            "\"localhost:9091\"",
            "invalid `metrics` address",
        ),
        ("metrics \"9091\"", "\"9091\"", "invalid `metrics` address"),
        (
            "metrics \"metrics.sock\"",
            "\"metrics.sock\"",
            "invalid `metrics` address",
        ),
        ("metrics 9091", "9091", "must be a string"),
        ("metrics \"\"", "\"\"", "must not be empty"),
    ];
    for (line, at, msg) in cases {
        let src = format!("system {{\n    {line}\n}}\n{}", proxy(""));
        let (l, c) = pos(&src[9..], at);
        assert_error_at_pos(&src, l + 1, c, msg);
    }
    // The metrics listener may not share a service's address.
    let src = "system {\n    metrics \"0.0.0.0:8080\"\n}\nservices {\n    S {\n        listeners { \"127.0.0.1:8080\" }\n        connectors { \"127.0.0.1:8000\" }\n    }\n}\n";
    let e = assert_error_at_pos(src, 2, 13, "clashes with listener `127.0.0.1:8080`");
    let report = e.to_string();
    assert!(report.contains("service `S` listens there"), "{report}");
}

#[test]
fn kdl_v1_and_v2_booleans() {
    let f = files();
    for (word, expect) in [
        ("true", true),
        ("false", false),
        ("#true", true),
        ("#false", false),
    ] {
        let src = format!(
            "system {{\n    daemonize {word}\n    pid-file \"/run/r.pid\"\n}}\nservices {{\n    S {{\n        listeners {{\n            \"127.0.0.1:8443\" cert-path=\"{}\" key-path=\"{}\" offer-h2={word}\n        }}\n        connectors {{\n            \"127.0.0.1:8000\"\n        }}\n    }}\n}}\n",
            f.cert.display(),
            f.key.display()
        );
        let c = ok(&src);
        assert_eq!(c.system.daemonize, expect, "{word}");
        assert_eq!(
            c.services[0].listeners[0].tls.as_ref().unwrap().offer_h2,
            expect,
            "{word}"
        );
    }
}

#[test]
fn kdl_v1_mixed_with_one_line_blocks() {
    // `offer-h2=true` is KDL v1; `{ "..." }` on one line is only valid in v2.
    let f = files();
    let src = format!(
        "services {{\n    S {{\n        listeners {{ \"127.0.0.1:8443\" cert-path=\"{}\" key-path=\"{}\" offer-h2=false }}\n        connectors {{ \"127.0.0.1:8000\" }}\n    }}\n    \"T\" {{ listeners {{ \"127.0.0.1:1\" }}; connectors {{ \"127.0.0.1:2\" }}; }}\n}}\n",
        f.cert.display(),
        f.key.display()
    );
    let c = ok(&src);
    assert!(!c.services[0].listeners[0].tls.as_ref().unwrap().offer_h2);
    // Positions stay those of the original text although `#` was inserted.
    let bad = src.replace("\"127.0.0.1:2\"", "\"127.0.0.1:2\" oops=1");
    assert_error_at(&bad, "oops", "unknown property `oops`");
}

#[test]
fn kdl_v1_raw_strings_and_escapes() {
    let src = proxy(
        "        path-control {\n            upstream-request {\n                filter kind=\"remove-header-key-regex\" pattern=r\"^x-\\d+$\"\n            }\n        }\n        rate-limiting {\n            rule kind=\"uri\" pattern=r#\"^/a\"b\"# max-buckets=1 tokens-per-bucket=1 refill-qty=1 refill-rate-ms=1\n        }",
    );
    let c = ok(&src);
    let p = only_proxy(&c);
    assert_eq!(
        p.path_control.upstream_request,
        vec![HeaderFilter::RemoveHeaderKeyRegex {
            pattern: r"^x-\d+$".into()
        }]
    );
    assert_eq!(
        p.rate_limiting.rules[0].kind,
        RateRuleKind::SpecificUri {
            pattern: "^/a\"b".into()
        }
    );
}

#[test]
fn line_continuation_and_comments() {
    let f = files();
    let src = format!(
        "// leading comment\nservices {{ // trailing\n    S {{\n        listeners {{\n            \"127.0.0.1:8443\" \\\n                cert-path=\"{}\" \\ // why not\n                key-path=\"{}\"\n        }}\n        /* block /* nested */ comment */\n        connectors {{\n            /-\"127.0.0.1:1\"\n            \"127.0.0.1:8000\" \\\n                tls-sni=\"example.com\"\n        }}\n    }}\n}}\n",
        f.cert.display(),
        f.key.display()
    );
    let c = ok(&src);
    let l = &c.services[0].listeners[0];
    assert_eq!(l.tls.as_ref().unwrap().key_path, f.key);
    assert!(
        l.tls.as_ref().unwrap().offer_h2,
        "offer-h2 defaults to true with TLS"
    );
    let p = only_proxy(&c);
    assert_eq!(p.upstreams.len(), 1);
    assert_eq!(p.upstreams[0].tls_sni.as_deref(), Some("example.com"));
    assert_eq!(p.upstreams[0].proto, UpstreamProto::H2OrH1);
}

#[test]
fn quoted_service_names_ipv6_and_unix() {
    let src = "services {\n    \"Server One\" {\n        listeners {\n            \"[::1]:8080\"\n            \"/run/river/one.sock\"\n        }\n        connectors { \"[::1]:8000\"; }\n    }\n    Two {\n        listeners { \"0.0.0.0:8081\"; }\n        connectors { \"localhost:9000\"; }\n    }\n}\n";
    let c = ok(src);
    assert_eq!(c.services[0].name, "Server One");
    assert_eq!(
        c.services[0].listeners[0].address,
        ListenAddress::Tcp(addr("[::1]:8080"))
    );
    assert_eq!(
        c.services[0].listeners[1].address,
        ListenAddress::Unix(PathBuf::from("/run/river/one.sock"))
    );
    assert_eq!(only_proxy(&c).upstreams[0].address, addr("[::1]:8000"));
    match &c.services[1].kind {
        ServiceKind::Proxy(p) => {
            assert_eq!(p.upstreams[0].address.port(), 9000);
            assert!(p.upstreams[0].address.ip().is_loopback());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn load_balance_variants() {
    let cases = [
        ("selection \"RoundRobin\"", Selection::RoundRobin, HealthCheck::None),
        ("selection \"Random\"", Selection::Random, HealthCheck::None),
        (
            "selection \"FNV\" key=\"SourceAddrAndUriPath\"",
            Selection::Fnv {
                key: SelectionKey::SourceAddrAndUriPath,
            },
            HealthCheck::None,
        ),
        (
            "selection \"Ketama\"\n                health-check \"Tcp\"",
            Selection::Ketama {
                key: SelectionKey::UriPath,
            },
            HealthCheck::Tcp { interval_ms: 1000 },
        ),
        (
            "discovery \"Static\"\n                health-check \"Http\" path=\"/healthz\" interval-ms=250",
            Selection::RoundRobin,
            HealthCheck::Http {
                path: "/healthz".into(),
                interval_ms: 250,
            },
        ),
        (
            "health-check \"Http\"",
            Selection::RoundRobin,
            HealthCheck::Http {
                path: "/".into(),
                interval_ms: 1000,
            },
        ),
    ];
    for (body, selection, health_check) in cases {
        let src = service(&format!(
            "        connectors {{\n            load-balance {{\n                {body}\n            }}\n            \"127.0.0.1:8000\"\n        }}"
        ));
        let c = ok(&src);
        assert_eq!(
            only_proxy(&c).load_balance,
            LoadBalance {
                selection,
                health_check
            },
            "{body}"
        );
    }
}

#[test]
fn upstream_protos() {
    let src = service(
        "        connectors {\n            \"127.0.0.1:1\" tls-sni=\"a.example\" proto=\"h2-only\"\n            \"127.0.0.1:2\" tls-sni=\"a.example\" proto=\"h1-only\"\n            \"127.0.0.1:3\" proto=\"h1-only\"\n        }",
    );
    let c = ok(&src);
    let protos: Vec<_> = only_proxy(&c).upstreams.iter().map(|u| u.proto).collect();
    assert_eq!(
        protos,
        vec![
            UpstreamProto::H2Only,
            UpstreamProto::H1Only,
            UpstreamProto::H1Only
        ]
    );
}

#[test]
fn rate_limiting_variants() {
    let src = proxy(
        "        rate-limiting {\n            timeout millis=100\n            rule kind=\"specific-uri\" pattern=\"^/api\" max-buckets=10 tokens-per-bucket=2 refill-qty=3 refill-rate-ms=4\n            rule kind=\"any-matching-uri\" pattern=\".*\\\\.mp4\" max-buckets=1 tokens-per-bucket=1 refill-qty=1 refill-rate-ms=1\n        }",
    );
    let c = ok(&src);
    let rl = &only_proxy(&c).rate_limiting;
    assert_eq!(rl.timeout_millis, Some(100));
    assert_eq!(
        rl.rules[0],
        RateRule {
            kind: RateRuleKind::SpecificUri {
                pattern: "^/api".into()
            },
            max_buckets: 10,
            tokens_per_bucket: 2,
            refill_qty: 3,
            refill_rate_ms: 4
        }
    );
    assert_eq!(
        rl.rules[1].kind,
        RateRuleKind::AnyMatchingUri {
            pattern: r".*\.mp4".into()
        }
    );
}

#[test]
fn cidr_bare_addresses() {
    let src = proxy(
        "        path-control {\n            request-filters {\n                filter kind=\"block-cidr-range\" addrs=\"10.1.2.3, ::1, 192.168.1.7/16\"\n            }\n        }",
    );
    let c = ok(&src);
    assert_eq!(
        only_proxy(&c).path_control.request_filters,
        vec![RequestFilter::BlockCidrRange {
            addrs: vec![
                "10.1.2.3/32".parse().unwrap(),
                "::1/128".parse().unwrap(),
                "192.168.0.0/16".parse().unwrap()
            ]
        }]
    );
}

// ------------------------------------------------------------------ error reports

#[test]
fn report_format_is_rustc_like() {
    let src = format!("system {{\n    workers 2\n    wrokers 2\n}}\n{}", proxy(""));
    let e = err(&src);
    let report = e.to_string();
    let expected = "error: unknown key `wrokers` in `system`\n --> /etc/river/river.kdl:3:5\n  |\n3 |     wrokers 2\n  |     ^^^^^^^\n  = help: did you mean `workers`? expected one of: workers, threads-per-service,";
    assert!(report.starts_with(expected), "{report}");
    assert_eq!(e.diagnostics().len(), 1);
    let d = &e.diagnostics()[0];
    assert_eq!((d.line, d.column, d.length), (3, 5, 7));
    assert_eq!(d.origin, ORIGIN);
    assert!(d.help.as_deref().unwrap().contains("listen-backlog"));
}

#[test]
fn all_errors_are_reported() {
    let src = "system {\n    wrokers 2\n    threads-per-service 0\n    pid-file \"relative.pid\"\n}\nservices {\n    S {\n        listeners { \"127.0.0.1:99999\" }\n        connectors { \"127.0.0.1:8000\" bogus=1 }\n    }\n}\n";
    let e = err(src);
    let got: Vec<(usize, usize)> = e.diagnostics().iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        got,
        vec![
            pos(src, "wrokers"),
            pos(src, "0\n"),
            pos(src, "\"relative.pid\""),
            pos(src, "\"127.0.0.1:99999\""),
            pos(src, "bogus"),
        ],
        "{e}"
    );
    let report = e.to_string();
    assert!(
        report.contains("the configuration has 5 errors"),
        "{report}"
    );
    for d in e.diagnostics() {
        assert!(report.contains(&d.location()));
    }
}

#[test]
fn kdl_syntax_error_positions() {
    // Unterminated string on line 3.
    let src = "system {\n    workers 2\n    user \"river\n}\n";
    let e = err(src);
    let d = &e.diagnostics()[0];
    assert!(d.message.contains("KDL syntax error"), "{e}");
    assert_eq!(d.line, 3, "{e}");
    assert!(e.to_string().contains(&format!("{ORIGIN}:3:")), "{e}");

    // A stray `=` on line 2, column 13.
    let src = "system {\n    workers 2 = 3\n}\n";
    let e = err(src);
    let d = &e.diagnostics()[0];
    assert_eq!((d.line, d.column), (2, 15), "{e}");

    let d = &e.diagnostics()[0];
    assert_eq!(d.message, "KDL syntax error: unexpected `=`");

    // Unclosed block: the block that is not closed.
    let e = err("system {\n    workers 2 {\n}\n");
    let d = &e.diagnostics()[0];
    assert_eq!((d.line, d.column), (1, 8), "{e}");
    assert!(d.message.contains("never closed"), "{e}");

    // A stray closing brace.
    assert_error_at_pos("system {\n    workers 2\n}\n}\n", 4, 1, "unexpected `}`");

    // Two nodes on one line need a `;`.
    let e = assert_error_at_pos(
        "services { S { listeners { \"127.0.0.1:1\" } connectors { \"127.0.0.1:2\" } } }",
        1,
        44,
        "unexpected `c`",
    );
    assert!(e.diagnostics()[0].help.as_deref().unwrap().contains("`;`"));

    // A value that needs quotes.
    assert_error_at_pos(
        "system {\n    pid-file /run/x.pid\n}\n",
        2,
        14,
        "KDL syntax error",
    );

    // Positions after a v1 keyword rewritten to v2 (`true` -> `#true`) are
    // those of the original text.
    let src = "system {\n    daemonize true; workers 2 = 3\n}\n";
    assert_error_at_pos(src, 2, 31, "unexpected `=`");

    // Multibyte characters count as one column.
    assert_error_at_pos(
        "system {\n    user \"é\" 1.2.3\n}\n",
        2,
        14,
        "KDL syntax error",
    );
}

#[test]
fn system_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("workers 0", "0", "`workers` must be at least 1"),
        (
            "workers \"2\"",
            "\"2\"",
            "must be a positive integer, found a string",
        ),
        ("workers 1.5", "1.5", "must be a positive integer"),
        ("workers", "workers", "needs a value"),
        ("workers 2 3", "3", "too many arguments"),
        ("workers x=1 2", "x", "unknown property `x`"),
        ("threads-per-service -1", "-1", "must be at least 1"),
        ("worker-startup-timeout-secs 0", "0", "must be at least 1"),
        ("listen-backlog 0", "0", "must be at least 1"),
        ("listen-backlog 9999999999", "9999999999", "must be at most"),
        ("draining-memory-limit-mb 0", "0", "must be at least 1"),
        ("max-draining-generations -1", "-1", "must be at least 0"),
        ("daemonize \"yes\"", "\"yes\"", "must be a boolean"),
        (
            "pid-file \"run/river.pid\"",
            "\"run/river.pid\"",
            "absolute path",
        ),
        (
            "control-socket \"river.sock\"",
            "\"river.sock\"",
            "absolute path",
        ),
        ("upgrade-socket \"u.sock\"", "\"u.sock\"", "absolute path"),
        ("access-log \"a.log\"", "\"a.log\"", "absolute path"),
        ("pid-file 5", "5", "must be a string"),
        ("user \"\"", "\"\"", "must not be empty"),
        ("group 1", "1", "must be a string"),
        ("daemonize true", "true", "needs a `pid-file`"),
        (
            "workers 2 {\n        x 1\n    }",
            "x 1",
            "does not take a block",
        ),
    ];
    for (line, at, msg) in cases {
        let src = format!("system {{\n    {line}\n}}\n{}", proxy(""));
        let (l, c) = pos(&src[9..], at);
        // `pos` is relative to line 2, where the slice starts.
        let l = l + 1;
        assert_error_at_pos(&src, l, c, msg);
    }
}

#[test]
fn duplicate_keys() {
    let src = format!("system {{\n    workers 2\n    workers 3\n}}\n{}", proxy(""));
    let e = assert_error_at_pos(&src, 3, 5, "duplicate key `workers` in `system`");
    assert!(e.diagnostics()[0]
        .help
        .as_deref()
        .unwrap()
        .contains("line 2"));

    let src = format!(
        "system {{ workers 1; }}\nsystem {{ workers 2; }}\n{}",
        proxy("")
    );
    assert_error_at_pos(&src, 2, 1, "duplicate key `system`");

    let src = proxy("        connectors { \"127.0.0.1:2\"; }");
    let (l, c) = {
        let at = src.rfind("connectors").unwrap();
        pos(&src[..], &src[at..at + 30])
    };
    assert_error_at_pos(&src, l, c, "duplicate key `connectors`");

    let src = proxy("").replace(
        "\"127.0.0.1:8080\" }",
        "\"127.0.0.1:8080\" cert-path=\"/a\" cert-path=\"/b\" }",
    );
    assert_error_at(&src, "cert-path=\"/b\"", "duplicate property `cert-path`");
}

#[test]
fn top_level_errors() {
    assert_error_at_pos("", 1, 1, "no `services` block");
    assert_error_at("system { workers 2; }\n", "system", "no `services` block");
    let src = format!("sytem {{ }}\n{}", proxy(""));
    let e = assert_error_at_pos(&src, 1, 1, "unknown key `sytem`");
    assert!(e.diagnostics()[0]
        .help
        .as_deref()
        .unwrap()
        .contains("did you mean `system`"));
    assert_error_at_pos("services {\n}\n", 1, 1, "has no service");
    assert_error_at_pos(
        "services \"x\" {\n    S { }\n}\n",
        1,
        10,
        "takes no arguments",
    );
    assert_error_at_pos("services\n", 1, 1, "needs a block");
}

#[test]
fn service_errors() {
    // Duplicate service names, quoted or not.
    let src = "services {\n    A {\n        listeners { \"127.0.0.1:1\"; }\n        connectors { \"127.0.0.1:2\"; }\n    }\n    \"A\" {\n        listeners { \"127.0.0.1:3\"; }\n        connectors { \"127.0.0.1:2\"; }\n    }\n}\n";
    assert_error_at_pos(src, 6, 5, "duplicate service name `A`");

    // Unknown key in a service.
    let src = proxy("        conectors { }");
    assert_error_at(&src, "conectors", "unknown key `conectors` in `S`");

    // No listeners.
    let src = "services {\n    S {\n        connectors { \"127.0.0.1:2\"; }\n    }\n}\n";
    assert_error_at_pos(src, 2, 5, "has no `listeners`");

    // Empty listeners.
    let src = "services {\n    S {\n        listeners {\n        }\n        connectors { \"127.0.0.1:2\"; }\n    }\n}\n";
    assert_error_at_pos(src, 3, 9, "`listeners` is empty");

    // Nothing to serve.
    let src = service("");
    assert_error_at_pos(&src, 2, 5, "has nothing to serve");

    // Two bodies.
    let f = files();
    let src = proxy(&format!(
        "        file-server {{ base-path \"{}\"; }}",
        f.www.display()
    ));
    assert_error_at(&src, "file-server", "cannot be combined with `connectors`");
    let src = proxy("        welcome-page");
    assert_error_at(&src, "welcome-page", "cannot be combined");

    // file-server with path-control / rate-limiting.
    let src = service(&format!(
        "        file-server {{ base-path \"{}\"; }}\n        path-control {{ }}\n        rate-limiting {{ }}",
        f.www.display()
    ));
    let e = assert_error_at(&src, "path-control", "cannot be used with `file-server`");
    assert_error_at(&src, "rate-limiting", "cannot be used with `file-server`");
    assert_eq!(e.diagnostics().len(), 2);

    // welcome-page takes nothing.
    let src = service("        welcome-page \"hi\"");
    assert_error_at(&src, "\"hi\"", "takes no arguments");
}

#[test]
fn listener_errors() {
    let f = files();
    let cert = f.cert.display().to_string();
    let key = f.key.display().to_string();
    let with = |l: &str| {
        format!(
            "services {{\n    S {{\n        listeners {{\n            {l}\n        }}\n        connectors {{ \"127.0.0.1:9\"; }}\n    }}\n}}\n"
        )
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "\"127.0.0.1\"".into(),
            "\"127.0.0.1\"",
            "invalid listen address",
        ),
        (
            "\"localhost:80\"".into(),
            "\"localhost:80\"",
            "invalid listen address",
        ),
        (
            "\"::1:8080\"".into(),
            "\"::1:8080\"",
            "invalid listen address",
        ),
        (
            format!("\"127.0.0.1:443\" cert-path=\"{cert}\""),
            "cert-path",
            "`cert-path` without `key-path`",
        ),
        (
            format!("\"127.0.0.1:443\" key-path=\"{key}\""),
            "key-path",
            "`key-path` without `cert-path`",
        ),
        (
            "\"127.0.0.1:443\" offer-h2=true".into(),
            "offer-h2",
            "`offer-h2` needs TLS",
        ),
        (
            format!("\"127.0.0.1:443\" cert-path=\"/nonexistent/c.pem\" key-path=\"{key}\""),
            "cert-path",
            "cannot read TLS certificate `/nonexistent/c.pem`",
        ),
        (
            format!("\"127.0.0.1:443\" cert-path=\"{cert}\" key-path=\"/nonexistent/k.pem\""),
            "key-path",
            "cannot read TLS key `/nonexistent/k.pem`",
        ),
        (
            format!(
                "\"127.0.0.1:443\" cert-path=\"{cert}\" key-path=\"{}\"",
                f.www.display()
            ),
            "key-path",
            "is a directory",
        ),
        (
            format!("\"127.0.0.1:443\" cert-path=\"{cert}\" key-path=\"{key}\" offer-h2=\"no\""),
            "offer-h2",
            "must be a boolean",
        ),
        (
            "\"127.0.0.1:443\" tls=true".into(),
            "tls",
            "unknown property `tls`",
        ),
        (
            "\"127.0.0.1:443\" \"extra\"".into(),
            "\"extra\"",
            "takes no arguments",
        ),
        (
            "\"127.0.0.1:80\"\n            \"127.0.0.1:80\"".into(),
            "\"127.0.0.1:80\"\n            ",
            "",
        ),
    ];
    for (l, at, msg) in &cases[..cases.len() - 1] {
        let src = with(l);
        let (line, col) = pos(&src, at);
        assert_error_at_pos(&src, line, col, msg);
    }
    // The same address twice in one service: the second one is reported.
    let src = with("\"127.0.0.1:80\"\n            \"127.0.0.1:80\"");
    assert_error_at_pos(&src, 5, 13, "listen address `127.0.0.1:80` is used twice");
    let src = with("\"/run/a.sock\"\n            \"/run/a.sock\"");
    assert_error_at_pos(&src, 5, 13, "is used twice");
    let src = with("\"0.0.0.0:80\"\n            \"127.0.0.1:80\"");
    assert_error_at_pos(&src, 5, 13, "overlaps `0.0.0.0:80`");
    // Different families and port 0 do not clash.
    ok(&with("\"0.0.0.0:80\"\n            \"[::]:80\"\n            \"127.0.0.1:0\"\n            \"127.0.0.1:0\""));
}

#[test]
fn same_listener_in_two_services() {
    let src = "services {\n    A {\n        listeners { \"127.0.0.1:80\"; }\n        connectors { \"127.0.0.1:2\"; }\n    }\n    B {\n        listeners { \"127.0.0.1:80\"; }\n        connectors { \"127.0.0.1:2\"; }\n    }\n}\n";
    let e = assert_error_at_pos(src, 7, 21, "is used twice");
    assert!(e.diagnostics()[0]
        .help
        .as_deref()
        .unwrap()
        .contains("service `A` on line 3"));
}

#[test]
fn connector_errors() {
    let with = |c: &str| {
        service(&format!(
            "        connectors {{\n            {c}\n        }}"
        ))
    };
    let cases: &[(&str, &str, &str)] = &[
        ("\"10.0.0.5\"", "\"10.0.0.5\"", "invalid upstream"),
        ("\"10.0.0.5:0\"", "\"10.0.0.5:0\"", "port 0"),
        ("\"10.0.0.5:99999\"", "\"10.0.0.5:99999\"", "invalid port"),
        (
            "\"10.0.0.:80\"",
            "\"10.0.0.:80\"",
            "invalid IP address or host name",
        ),
        (
            "\"10.0.0.5:80\" proto=\"h2-only\"",
            "proto",
            "proto `h2-only` needs TLS",
        ),
        (
            "\"10.0.0.5:80\" proto=\"h2-or-h1\"",
            "proto",
            "proto `h2-or-h1` needs TLS",
        ),
        (
            "\"10.0.0.5:80\" tls-sni=\"a\" proto=\"h3\"",
            "proto",
            "unknown proto `h3`",
        ),
        (
            "\"10.0.0.5:80\" tls-sni=\"\"",
            "tls-sni",
            "must not be empty",
        ),
        ("\"10.0.0.5:80\" sni=\"a\"", "sni", "unknown property `sni`"),
        ("\"10.0.0.5:80\" { x; }", "x;", "does not take a block"),
        (
            "loadbalance { }",
            "loadbalance",
            "invalid upstream `loadbalance`",
        ),
        (
            "load-balance { selection \"Fastest\"; }\n            \"10.0.0.5:80\"",
            "\"Fastest\"",
            "unknown selection `Fastest`",
        ),
        (
            "load-balance { selection \"FNV\" key=\"Host\"; }\n            \"10.0.0.5:80\"",
            "key=",
            "unknown selection key `Host`",
        ),
        (
            "load-balance { selection; }\n            \"10.0.0.5:80\"",
            "selection",
            "`selection` needs a value",
        ),
        (
            "load-balance { discovery \"Consul\"; }\n            \"10.0.0.5:80\"",
            "\"Consul\"",
            "unknown discovery `Consul`",
        ),
        (
            "load-balance { health-check \"Ping\"; }\n            \"10.0.0.5:80\"",
            "\"Ping\"",
            "unknown health-check `Ping`",
        ),
        (
            "load-balance { health-check \"None\" interval-ms=5; }\n            \"10.0.0.5:80\"",
            "interval-ms",
            "does not apply to health-check `None`",
        ),
        (
            "load-balance { health-check \"Tcp\" interval-ms=0; }\n            \"10.0.0.5:80\"",
            "interval-ms",
            "must be at least 1",
        ),
        (
            "load-balance { health-check \"Http\" path=\"healthz\"; }\n            \"10.0.0.5:80\"",
            "path=",
            "invalid health-check path",
        ),
        (
            "load-balance { selction \"Random\"; }\n            \"10.0.0.5:80\"",
            "selction",
            "unknown key `selction` in `load-balance`",
        ),
        (
            "load-balance { }\n            load-balance { }\n            \"10.0.0.5:80\"",
            "load-balance { }\n            \"",
            "duplicate key `load-balance`",
        ),
    ];
    for (c, at, msg) in cases {
        let src = with(c);
        assert_error_at(&src, at, msg);
    }
    // No upstream at all.
    let src = with("load-balance { selection \"Random\"; }");
    assert_error_at(&src, "connectors", "has no upstream");
}

#[test]
fn path_control_errors() {
    let with = |section: &str, filter: &str| {
        proxy(&format!(
            "        path-control {{\n            {section} {{\n                {filter}\n            }}\n        }}"
        ))
    };
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "request-filters",
            "filter kind=\"block-cidr-range\" addrs=\"10.0.0.0/8, 300.1.1.1\"",
            "addrs",
            "invalid address or CIDR range `300.1.1.1`",
        ),
        (
            "request-filters",
            "filter kind=\"block-cidr-range\" addrs=\"10.0.0.0/8,,\"",
            "addrs",
            "invalid address or CIDR range `(empty)`",
        ),
        (
            "request-filters",
            "filter kind=\"block-cidr-range\"",
            "filter",
            "`filter` is missing `addrs`",
        ),
        (
            "request-filters",
            "filter addrs=\"10.0.0.0/8\"",
            "filter",
            "`filter` is missing `kind`",
        ),
        (
            "request-filters",
            "filter kind=\"upsert-header\" key=\"a\" value=\"b\"",
            "kind",
            "unknown filter kind `upsert-header` in `request-filters`",
        ),
        (
            "upstream-request",
            "filter kind=\"block-cidr-range\" addrs=\"10.0.0.0/8\"",
            "kind",
            "unknown filter kind `block-cidr-range` in `upstream-request`",
        ),
        (
            "upstream-request",
            "filter kind=\"remove-header-key-regex\" pattern=\"(unclosed\"",
            "pattern",
            "invalid regular expression",
        ),
        (
            "upstream-response",
            "filter kind=\"upsert-header\" key=\"bad key\" value=\"v\"",
            "key=",
            "invalid header name `bad key`",
        ),
        (
            "upstream-response",
            "filter kind=\"upsert-header\" key=\"k\" value=\"a\\nb\"",
            "value",
            "invalid header value",
        ),
        (
            "upstream-response",
            "filter kind=\"upsert-header\" key=\"k\"",
            "filter",
            "`filter` is missing `value`",
        ),
        (
            "upstream-response",
            "filter kind=\"upsert-header\" key=\"k\" value=\"v\" pattern=\"x\"",
            "pattern",
            "unknown property `pattern` on `filter`",
        ),
        (
            "upstream-response",
            "filtre kind=\"upsert-header\" key=\"k\" value=\"v\"",
            "filtre",
            "unknown key `filtre` in `upstream-response`",
        ),
        (
            "upstream-responses",
            "filter kind=\"upsert-header\" key=\"k\" value=\"v\"",
            "upstream-responses",
            "unknown key `upstream-responses` in `path-control`",
        ),
    ];
    for (section, filter, at, msg) in cases {
        let src = with(section, filter);
        let start = src.find(filter).unwrap();
        let (line, col) = if *at == *section {
            pos(&src, at)
        } else {
            let off = start + filter.find(at).unwrap();
            pos(&src, &src[off..])
        };
        assert_error_at_pos(&src, line, col, msg);
    }
}

#[test]
fn rate_limiting_errors() {
    let with = |r: &str| {
        proxy(&format!(
            "        rate-limiting {{\n            {r}\n        }}"
        ))
    };
    let nums = "max-buckets=1 tokens-per-bucket=1 refill-qty=1 refill-rate-ms=1";
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("rule kind=\"uri\" {nums}"), "rule", "`rule` is missing `pattern`"),
        (
            format!("rule kind=\"source-ip\" pattern=\"x\" {nums}"),
            "pattern",
            "does not apply to rule kind `source-ip`",
        ),
        (
            format!("rule kind=\"client-ip\" {nums}"),
            "kind",
            "unknown rule kind `client-ip`",
        ),
        (
            format!("rule kind=\"specific-uri\" pattern=\"[\" {nums}"),
            "pattern",
            "invalid regular expression",
        ),
        (
            "rule kind=\"source-ip\" max-buckets=1 tokens-per-bucket=1 refill-qty=1".into(),
            "rule",
            "`rule` is missing `refill-rate-ms`",
        ),
        (
            "rule kind=\"source-ip\" max-buckets=0 tokens-per-bucket=1 refill-qty=1 refill-rate-ms=1"
                .into(),
            "max-buckets",
            "must be at least 1",
        ),
        (format!("rule {nums}"), "rule", "`rule` is missing `kind`"),
        (
            format!("rule kind=\"source-ip\" burst=3 {nums}"),
            "burst",
            "unknown property `burst`",
        ),
        ("timeout".into(), "timeout", "`timeout` is missing `millis`"),
        (
            "timeout millis=1\n            timeout millis=2".into(),
            "timeout millis=2",
            "duplicate key `timeout`",
        ),
        ("rules { }".into(), "rules", "unknown key `rules` in `rate-limiting`"),
    ];
    for (r, at, msg) in &cases {
        let src = with(r);
        let start = src.find(r.as_str()).unwrap();
        let off = start + r.find(at).unwrap();
        let (line, col) = pos(&src, &src[off..]);
        assert_error_at_pos(&src, line, col, msg);
    }
}

#[test]
fn file_server_errors() {
    let f = files();
    let with = |b: &str| {
        service(&format!(
            "        file-server {{\n            {b}\n        }}"
        ))
    };
    let src = with("base-path \"/nonexistent/www\"");
    assert_error_at(&src, "\"/nonexistent/www\"", "cannot use base-path");
    let src = with(&format!("base-path \"{}\"", f.cert.display()));
    assert_error_at(&src, "\"/", "is not a directory");
    let src = with("root \"/\"");
    assert_error_at(&src, "root", "unknown key `root` in `file-server`");
    let src = with("");
    assert_error_at(&src, "file-server", "missing `base-path`");
    let src = with("base-path");
    assert_error_at(&src, "base-path", "needs a value");
}

// ------------------------------------------------------------------ robustness

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn never_panics_on_garbage() {
    let f = files();
    let valid = design_example(&f);
    let pieces = [
        "{",
        "}",
        "\"",
        "=",
        ";",
        "\\",
        "\n",
        " ",
        "//",
        "/*",
        "*/",
        "/-",
        "#",
        "r#\"",
        "\"#",
        "true",
        "#true",
        "null",
        "0",
        "-1",
        "1.5e9",
        "0x",
        "(u8)",
        "é",
        "\u{feff}",
        "\t",
        "\r\n",
        "system",
        "services",
        "listeners",
        "connectors",
        "\"0.0.0.0:80\"",
        "[::1]:",
        "/",
        "cert-path=",
        "offer-h2=",
        "filter",
        "kind=",
        "\"uri\"",
        "rule",
        "\"\"\"",
        "r\"",
        "99999999999999999999999999999999999999999",
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut inputs: Vec<String> = Vec::new();
    for _ in 0..300 {
        let mut s = String::new();
        for _ in 0..rng.below(40) {
            s.push_str(pieces[rng.below(pieces.len())]);
        }
        inputs.push(s);
    }
    let chars: Vec<char> = valid.chars().collect();
    for _ in 0..400 {
        let mut c = chars.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(4) {
                0 if !c.is_empty() => {
                    let at = rng.below(c.len());
                    let len = rng.below(20).min(c.len() - at);
                    c.drain(at..at + len);
                }
                1 => {
                    let at = rng.below(c.len() + 1);
                    let p: Vec<char> = pieces[rng.below(pieces.len())].chars().collect();
                    c.splice(at..at, p);
                }
                2 if !c.is_empty() => {
                    let at = rng.below(c.len());
                    c[at] = pieces[rng.below(pieces.len())]
                        .chars()
                        .next()
                        .unwrap_or('x');
                }
                _ if c.len() > 2 => {
                    let a = rng.below(c.len());
                    let b = rng.below(c.len());
                    c.swap(a, b);
                }
                _ => {}
            }
        }
        inputs.push(c.into_iter().collect());
    }
    for input in &inputs {
        match parse(input, "fuzz.kdl") {
            Ok(_) => {}
            Err(e) => {
                // Every report names positions inside the input.
                let report = e.to_string();
                assert!(!e.diagnostics().is_empty());
                for d in e.diagnostics() {
                    assert!(d.line >= 1 && d.column >= 1);
                    assert!(
                        d.line <= input.split('\n').count().max(1),
                        "{input:?}\n{report}"
                    );
                    assert!(report.contains(&d.location()));
                }
            }
        }
    }
}

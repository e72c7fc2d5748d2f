//! Issue 4: TLS listeners (certificates from the master), h2 by ALPN, Unix
//! socket listeners, and reloads that change certificates.

use std::time::Duration;

use river_tests::client;
use river_tests::features::{
    h2_get, https_get, reload_fails, reload_ok, unix_get, write_test_cert,
};
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, wait_for};

fn tls_service(
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
    offer_h2: bool,
    upstream: std::net::SocketAddr,
) -> String {
    format!(
        r#"    Secure {{
        listeners {{
            "127.0.0.1:{port}" cert-path="{cert}" key-path="{key}" offer-h2={offer_h2}
        }}
        connectors {{
            "{upstream}"
        }}
    }}"#,
        cert = cert.display(),
        key = key.display(),
    )
}

#[test]
fn tls_listener_serves_the_masters_certificate_and_reload_swaps_it() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_test_cert(certs.path(), "first");
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 2",
        &tls_service(port, &cert, &key, true, upstream.addr),
    );

    for _ in 0..5 {
        let seen = https_get(local(port), "/headers").expect("https request");
        assert_eq!(seen.response.status, 200);
        assert_eq!(seen.cert, der, "the configured certificate is served");
        assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
        let echoed = seen.response.text().to_ascii_lowercase();
        assert!(echoed.contains("x-forwarded-proto: https"), "{echoed}");
    }

    // A client that fails its handshake costs only its own connection.
    {
        use std::io::{Read, Write};
        let mut junk = std::net::TcpStream::connect(local(port)).unwrap();
        junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = junk.read_to_end(&mut buf);
    }
    assert_eq!(https_get(local(port), "/").unwrap().response.status, 200);

    // Reload with a new certificate at a new path: new connections get it.
    let (cert2, key2, der2) = write_test_cert(certs.path(), "second");
    river.rewrite_config(
        "    workers 2",
        &tls_service(port, &cert2, &key2, true, upstream.addr),
    );
    reload_ok(&river);
    wait_for("the new certificate", Duration::from_secs(10), || {
        (https_get(local(port), "/").ok()?.cert == der2).then_some(())
    });
    for _ in 0..5 {
        assert_eq!(https_get(local(port), "/").unwrap().cert, der2);
    }

    // An unusable certificate fails the reload, naming the listener; the
    // serving generation keeps its certificate.
    std::fs::write(
        &cert2,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let stderr = reload_fails(&river);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert_eq!(https_get(local(port), "/").unwrap().cert, der2);
}

#[test]
fn h2_is_negotiated_by_alpn_when_offered() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, _) = write_test_cert(certs.path(), "h2");
    let upstream = Upstream::start("alpha");
    let port = free_port();
    let river = River::start(
        "    workers 1",
        &tls_service(port, &cert, &key, true, upstream.addr),
    );

    let response = h2_get(local(port), "/").expect("h2 request");
    assert_eq!(response.alpn.as_deref(), Some("h2"));
    assert_eq!(response.status, 200);
    assert_eq!(String::from_utf8_lossy(&response.body), "hello from alpha");
    assert_eq!(
        response
            .headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap()),
        Some("alpha")
    );
    // HTTP/1.1 clients still work on the same listener.
    assert_eq!(
        https_get(local(port), "/").unwrap().alpn.as_deref(),
        Some("http/1.1")
    );

    // Reload with offer-h2=false: h2-only clients are refused, h1 goes on.
    river.rewrite_config(
        "    workers 1",
        &tls_service(port, &cert, &key, false, upstream.addr),
    );
    reload_ok(&river);
    wait_for("h2 no longer offered", Duration::from_secs(10), || {
        h2_get(local(port), "/").is_err().then_some(())
    });
    let seen = https_get(local(port), "/").unwrap();
    assert_eq!(seen.response.status, 200);
    assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
}

#[test]
fn unix_socket_listener_proxies_and_moves_on_reload() {
    let upstream = Upstream::start("alpha");
    let sockets = tempfile::tempdir().unwrap();
    let first = sockets.path().join("river-a.sock");
    let second = sockets.path().join("river-b.sock");
    let service = |path: &std::path::Path| {
        format!(
            r#"    Local {{
        listeners {{
            "{}"
        }}
        connectors {{
            "{}"
        }}
    }}"#,
            path.display(),
            upstream.addr
        )
    };
    let river = River::start("    workers 1", &service(&first));
    let response = unix_get(&first, "/headers").expect("request over the unix socket");
    assert_eq!(response.status, 200);
    // No client address on a Unix socket: nothing to forward, nothing invented.
    assert!(!response
        .text()
        .to_ascii_lowercase()
        .contains("x-forwarded-for"));

    river.rewrite_config("    workers 1", &service(&second));
    reload_ok(&river);
    let response = unix_get(&second, "/").expect("request on the new socket");
    assert_eq!(response.text(), "hello from alpha");
    // Plain TCP listeners are unaffected by all this (sanity of the helpers).
    let _ = client::get;
}

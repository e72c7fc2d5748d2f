//! Issue 4: every feature's setting changed by a reload takes effect, and not
//! one request fails meanwhile: upstream set, health checks, CIDR list, header
//! filters both ways, rate limits, file-server base-path and TLS certificate,
//! all under continuous load.

use std::path::Path;
use std::time::Duration;

use river_tests::features::{https_get, reload_ok, write_test_cert, TlsResponse};
use river_tests::load::Load;
use river_tests::river::River;
use river_tests::upstream::Upstream;
use river_tests::{free_port, local, wait_for};

struct Ports {
    proxy: u16,
    files: u16,
    tls: u16,
}

/// Generation `n` of the config: every setting depends on `n`.
fn services(
    n: usize,
    ports: &Ports,
    upstreams: [&Upstream; 2],
    sites: &Path,
    certs: &Path,
) -> String {
    let upstream = upstreams[n % 2].addr;
    let blocked = if n.is_multiple_of(2) {
        "10.0.0.0/8"
    } else {
        "192.168.0.0/16, 2001:db8::/32"
    };
    let site = sites.join(format!("site{}", n % 2));
    let cert = certs.join(format!("c{}.crt", n % 2));
    let key = certs.join(format!("c{}.key", n % 2));
    format!(
        r#"    Proxy {{
        listeners {{
            "127.0.0.1:{proxy}"
        }}
        connectors {{
            load-balance {{
                selection "RoundRobin"
                health-check "Tcp" interval-ms={interval}
            }}
            "{upstream}"
        }}
        path-control {{
            request-filters {{
                filter kind="block-cidr-range" addrs="{blocked}"
            }}
            upstream-request {{
                filter kind="upsert-header" key="x-proxy-friend" value="gen{n}"
            }}
            upstream-response {{
                filter kind="remove-header-key-regex" pattern="x-upstream-secret"
                filter kind="upsert-header" key="x-gen" value="{n}"
            }}
        }}
        rate-limiting {{
            rule kind="source-ip" max-buckets={buckets} tokens-per-bucket=1000000 refill-qty=1000000 refill-rate-ms=10
        }}
    }}
    Files {{
        listeners {{
            "127.0.0.1:{files}"
        }}
        file-server {{
            base-path "{site}"
        }}
    }}
    Secure {{
        listeners {{
            "127.0.0.1:{tls}" cert-path="{cert}" key-path="{key}" offer-h2=true
        }}
        connectors {{
            "{upstream}"
        }}
    }}"#,
        proxy = ports.proxy,
        files = ports.files,
        tls = ports.tls,
        interval = 100 + n * 10,
        buckets = 100 + n,
        site = site.display(),
        cert = cert.display(),
        key = key.display(),
    )
}

#[test]
fn every_feature_changes_by_reload_without_a_failed_request() {
    let upstreams = [&Upstream::start("alpha"), &Upstream::start("beta")];
    let sites = tempfile::tempdir().unwrap();
    for site in 0..2 {
        let dir = sites.path().join(format!("site{site}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("page.html"), format!("site {site}")).unwrap();
    }
    let certs = tempfile::tempdir().unwrap();
    let ders: Vec<Vec<u8>> = (0..2)
        .map(|i| write_test_cert(certs.path(), &format!("c{i}")).2)
        .collect();
    let ports = Ports {
        proxy: free_port(),
        files: free_port(),
        tls: free_port(),
    };
    let config = |n| services(n, &ports, upstreams, sites.path(), certs.path());
    let river = River::start("    workers 2", &config(0));

    let proxied = Load::keep_alive(local(ports.proxy), 6, "/headers");
    let files = Load::keep_alive(local(ports.files), 3, "/page.html");
    let tls_port = ports.tls;
    let secure = Load::repeat(2, move || {
        https_get(local(tls_port), "/").map(|TlsResponse { response, cert, .. }| {
            let mut response = response;
            // Carry the certificate along, for the check after the last reload.
            response
                .headers
                .push(("x-test-cert".into(), format!("{:?}", cert)));
            response
        })
    });

    let reloads = 8;
    for n in 1..=reloads {
        river.rewrite_config("    workers 2", &config(n));
        reload_ok(&river);
        std::thread::sleep(Duration::from_millis(150));
    }

    // Every setting of the last generation is what new requests see.
    let expected_upstream = upstreams[reloads % 2].name.clone();
    wait_for(
        "the proxy on the last config",
        Duration::from_secs(10),
        || {
            let last = proxied.last_response()?;
            (last.header("x-gen") == Some(&*reloads.to_string())
                && last.header("x-upstream") == Some(&*expected_upstream))
            .then_some(last)
        },
    );
    let last = proxied.last_response().unwrap();
    assert!(
        last.header("x-upstream-secret").is_none(),
        "{:?}",
        last.headers
    );
    let echoed = last.text().to_ascii_lowercase();
    assert!(
        echoed.contains(&format!("x-proxy-friend: gen{reloads}")),
        "{echoed}"
    );
    wait_for("the last base-path", Duration::from_secs(10), || {
        (files.last_response()?.text() == format!("site {}", reloads % 2)).then_some(())
    });
    let expected_cert = format!("{:?}", ders[reloads % 2]);
    wait_for("the last certificate", Duration::from_secs(10), || {
        (secure.last_response()?.header("x-test-cert") == Some(&*expected_cert)).then_some(())
    });

    proxied.finish().assert_clean(200);
    files.finish().assert_clean(100);
    secure.finish().assert_clean(20);
}

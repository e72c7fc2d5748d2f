//! `discovery "Dns"` and the names among the connectors.

use super::*;

fn dns(lb: &str, connectors: &str) -> String {
    service(&format!(
        "        connectors {{\n            load-balance {{ {lb} }}\n{connectors}\n        }}"
    ))
}

fn discovery(c: &Config) -> &Discovery {
    only_proxy(c).discovery.as_ref().expect("discovery")
}

#[test]
fn names_literals_and_settings() {
    let c = ok(&dns(
        "selection \"Ketama\" key=\"UriPath\"; discovery \"Dns\" resolver=\"127.0.0.1:5353\" min-ttl-ms=500 max-ttl-ms=30000 resolve-timeout-ms=1500",
        "            \"API.internal:8080\"\n            \"_http._tcp.api.service.consul\" tls-sni=\"api\"\n            \"10.0.0.9:8080\"",
    ));
    let p = only_proxy(&c);
    assert_eq!(p.upstreams.len(), 1);
    assert_eq!(p.upstreams[0].address, addr("10.0.0.9:8080"));
    let d = discovery(&c);
    assert_eq!(d.resolver, Some(addr("127.0.0.1:5353")));
    assert_eq!(
        (d.min_ttl_ms, d.max_ttl_ms, d.resolve_timeout_ms),
        (500, 30000, 1500)
    );
    assert_eq!(
        d.names[0].name,
        DnsName::Host {
            host: "api.internal".into(),
            port: 8080
        }
    );
    assert_eq!(d.names[0].name.to_string(), "api.internal:8080");
    assert_eq!(
        d.names[1].name,
        DnsName::Srv {
            name: "_http._tcp.api.service.consul".into()
        }
    );
    assert_eq!(d.names[1].tls_sni.as_deref(), Some("api"));
    assert_eq!(d.names[1].proto, UpstreamProto::H2OrH1);
}

#[test]
fn defaults_and_load_balance_after_the_names() {
    // `load-balance` may follow the upstreams; a bare IP resolver means port 53.
    let src = service(
        "        connectors {\n            \"api.internal:80\"\n            load-balance { discovery \"Dns\" resolver=\"::1\"; }\n        }",
    );
    let c = ok(&src);
    let d = discovery(&c);
    assert_eq!(d.resolver, Some(addr("[::1]:53")));
    assert_eq!(d.min_ttl_ms, Discovery::DEFAULT_MIN_TTL_MS);
    assert_eq!(d.max_ttl_ms, Discovery::DEFAULT_MAX_TTL_MS);
    assert_eq!(d.resolve_timeout_ms, Discovery::DEFAULT_RESOLVE_TIMEOUT_MS);
    assert!(only_proxy(&c).upstreams.is_empty());
    // No resolver: the system's.
    let c = ok(&dns("discovery \"Dns\"", "            \"api.internal:80\""));
    assert_eq!(discovery(&c).resolver, None);
}

#[test]
fn static_configs_are_unchanged() {
    let c = ok(&dns("discovery \"Static\"", "            \"10.0.0.5:80\""));
    assert_eq!(only_proxy(&c).discovery, None);
    // Without discovery, HOST:PORT is still resolved once at load.
    let c = ok(&dns(
        "selection \"RoundRobin\"",
        "            \"localhost:80\"",
    ));
    assert!(only_proxy(&c).upstreams[0].address.ip().is_loopback());
    assert_eq!(only_proxy(&c).discovery, None);
}

#[test]
fn errors_name_their_place() {
    // discovery "Dns" with no name.
    let src = dns("discovery \"Dns\"", "            \"10.0.0.5:80\"");
    assert_error_at(&src, "\"Dns\"", "needs a name to look up");
    // An SRV name without discovery "Dns".
    let src = dns("discovery \"Static\"", "            \"_http._tcp.api\"");
    assert_error_at(&src, "\"_http._tcp.api\"", "needs `discovery \"Dns\"`");
    let src = proxy("").replace("\"127.0.0.1:8000\"", "\"_http._tcp.api\"");
    assert_error_at(&src, "\"_http._tcp.api\"", "needs `discovery \"Dns\"`");
    // Malformed names.
    for (name, msg) in [
        ("\"_http.api\"", "an SRV name is"),
        ("\"_http._tcp..api\"", "empty or over-long label"),
        ("\"api..internal:80\"", "empty or over-long label"),
        ("\"api.internal:0\"", "port 0"),
        ("\"api.internal:99999\"", "invalid port"),
        ("\"-api.internal:80\"", "may not start or end"),
    ] {
        let src = dns("discovery \"Dns\"", &format!("            {name}"));
        assert_error_at(&src, name, msg);
    }
    // Settings.
    for (lb, at, msg) in [
        (
            "discovery \"Dns\" resolver=\"dns.example\"",
            "resolver=",
            "invalid resolver",
        ),
        (
            "discovery \"Dns\" min-ttl-ms=5000 max-ttl-ms=1000",
            "min-ttl-ms",
            "is above max-ttl-ms",
        ),
        (
            "discovery \"Dns\" resolve-timeout-ms=0",
            "resolve-timeout-ms",
            "must be at least 1",
        ),
        (
            "discovery \"Static\" resolver=\"127.0.0.1\"",
            "resolver=",
            "does not apply to discovery `Static`",
        ),
        ("discovery \"Dns\" ttl=5", "ttl=", "ttl"),
    ] {
        let src = dns(lb, "            \"api.internal:80\"");
        assert_error_at(&src, at, msg);
    }
}

//! `connectors { }`: upstreams, load balancing, health checks.

use std::net::{SocketAddr, ToSocketAddrs};

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::{args, name, one_of_help, prop, Builder, Shape};
use crate::model::*;

const LB_KEYS: &[&str] = &["selection", "discovery", "health-check"];
const DNS_KEYS: &[&str] = &["resolver", "min-ttl-ms", "max-ttl-ms", "resolve-timeout-ms"];
/// A day: longer TTLs and timeouts are typos.
const MAX_DNS_MS: u64 = 86_400_000;

/// What one entry of `connectors` (other than `load-balance`) stands for.
pub(super) enum Connector {
    Literal(Upstream),
    Named(DiscoveredName),
}

/// `discovery "Dns" ...` as read, before its names are known.
pub(super) struct DnsChoice {
    settings: Discovery,
    /// The `"Dns"` value, where "no name to discover" is reported.
    span: SourceSpan,
}

impl Builder<'_> {
    pub(super) fn connectors(
        &mut self,
        node: &KdlNode,
    ) -> Option<(LoadBalance, Vec<Upstream>, Option<Box<Discovery>>)> {
        self.check_shape(
            node,
            "connectors",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let doc = self.block(node, "connectors")?;
        // `load-balance` first, wherever it stands: its `discovery` decides
        // how a host name among the upstreams is read.
        let mut lb: Option<(LoadBalance, Option<DnsChoice>, SourceSpan)> = None;
        for n in doc.nodes().iter().filter(|n| name(n) == "load-balance") {
            if let Some((_, _, first)) = &lb {
                let line = self.line_of(*first);
                self.error(
                    Self::name_span(n),
                    "duplicate key `load-balance` in `connectors`",
                    Some(format!("first defined on line {line}")),
                );
                continue;
            }
            let (l, dns) = self.load_balance(n);
            lb = Some((l, dns, Self::name_span(n)));
        }
        let (load_balance, dns) = match lb {
            Some((l, dns, _)) => (l, dns),
            None => (LoadBalance::default(), None),
        };
        let mut upstreams = Vec::new();
        let mut names = Vec::new();
        let mut failed = false;
        for n in doc.nodes().iter().filter(|n| name(n) != "load-balance") {
            match self.upstream(n, dns.is_some()) {
                Some(Connector::Literal(u)) => upstreams.push(u),
                Some(Connector::Named(d)) => names.push(d),
                None => failed = true,
            }
        }
        if upstreams.is_empty() && names.is_empty() && !failed {
            self.error(
                Self::name_span(node),
                "`connectors` has no upstream",
                Some("add an address: `connectors { \"127.0.0.1:8000\" }`".into()),
            );
        }
        let discovery = match dns {
            Some(choice) if names.is_empty() => {
                if !failed {
                    self.error(
                        choice.span,
                        "`discovery \"Dns\"` needs a name to look up among the connectors",
                        Some(
                            "add \"HOST:PORT\" (A/AAAA) or \"_service._proto.name\" (SRV), or use discovery \"Static\""
                                .into(),
                        ),
                    );
                }
                None
            }
            Some(choice) => Some(Box::new(Discovery {
                names,
                ..choice.settings
            })),
            None => None,
        };
        Some((load_balance, upstreams, discovery))
    }

    /// One upstream entry: a literal address, or with `dns` a name to look
    /// up. Without `dns`, `HOST:PORT` is resolved once, now, as before.
    pub(super) fn upstream(&mut self, n: &KdlNode, dns: bool) -> Option<Connector> {
        let text = name(n);
        self.check_shape(
            n,
            "an upstream",
            &Shape {
                args: 0,
                props: &["tls-sni", "proto"],
                children: false,
            },
        );
        let target = match dns_name(text) {
            Some(Ok(name)) if dns => Some(Err(name)),
            Some(Ok(DnsName::Srv { name })) => {
                self.error(
                    Self::name_span(n),
                    format!("the SRV name `{name}` needs `discovery \"Dns\"`"),
                    Some("add `load-balance { discovery \"Dns\" }` to this `connectors`".into()),
                );
                None
            }
            Some(Err(why)) if dns || text.starts_with('_') => {
                self.error(
                    Self::name_span(n),
                    format!("invalid upstream `{text}`: {why}"),
                    Some(
                        "expected IP:PORT, HOST:PORT or an SRV name such as \"_http._tcp.api.example\""
                            .into(),
                    ),
                );
                None
            }
            _ => match resolve_upstream(text) {
                Ok(a) => Some(Ok(a)),
                Err(why) => {
                    let help = if text.contains(':') {
                        Some("expected IP:PORT or HOST:PORT, e.g. \"10.0.0.5:8000\"".into())
                    } else {
                        let mut known = vec!["load-balance"];
                        known.push("an upstream address \"IP:PORT\"");
                        one_of_help(text, &known)
                    };
                    self.error(
                        Self::name_span(n),
                        format!("invalid upstream `{text}`: {why}"),
                        help,
                    );
                    None
                }
            },
        };
        let tls_sni = match prop(n, "tls-sni") {
            Some(e) => Some(self.nonempty_string_of(e, "tls-sni")?),
            None => None,
        };
        let proto = match prop(n, "proto") {
            None if tls_sni.is_some() => UpstreamProto::H2OrH1,
            None => UpstreamProto::H1Only,
            Some(e) => {
                let s = self.string_of(e, "proto")?;
                let p = match s {
                    "h1-only" => UpstreamProto::H1Only,
                    "h2-only" => UpstreamProto::H2Only,
                    "h2-or-h1" => UpstreamProto::H2OrH1,
                    other => {
                        self.error(
                            e.span(),
                            format!("unknown proto `{other}`"),
                            one_of_help(other, &["h1-only", "h2-only", "h2-or-h1"]),
                        );
                        return None;
                    }
                };
                if p != UpstreamProto::H1Only && tls_sni.is_none() {
                    self.error(
                        e.span(),
                        format!("proto `{s}` needs TLS to the upstream"),
                        Some("add tls-sni=\"DOMAIN\", or use proto=\"h1-only\"".into()),
                    );
                    return None;
                }
                p
            }
        };
        Some(match target? {
            Ok(address) => Connector::Literal(Upstream {
                address,
                tls_sni,
                proto,
            }),
            Err(name) => Connector::Named(DiscoveredName {
                name,
                tls_sni,
                proto,
            }),
        })
    }

    pub(super) fn load_balance(&mut self, node: &KdlNode) -> (LoadBalance, Option<DnsChoice>) {
        let mut lb = LoadBalance::default();
        let mut dns = None;
        self.check_shape(
            node,
            "load-balance",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "load-balance") else {
            return (lb, dns);
        };
        for (key, n) in self.unique_keys(doc, "load-balance", LB_KEYS) {
            match key {
                "selection" => {
                    self.check_shape(
                        n,
                        "selection",
                        &Shape {
                            args: 1,
                            props: &["key"],
                            children: false,
                        },
                    );
                    let Some(e) = args(n).next() else {
                        self.error(
                            Self::name_span(n),
                            "`selection` needs a value",
                            Some("expected one of: RoundRobin, Random, FNV, Ketama".into()),
                        );
                        continue;
                    };
                    let Some(s) = self.string_of(e, "selection") else {
                        continue;
                    };
                    let key = match prop(n, "key") {
                        None => Some(SelectionKey::UriPath),
                        Some(k) => match self.string_of(k, "key") {
                            Some("UriPath") => Some(SelectionKey::UriPath),
                            Some("SourceAddrAndUriPath") => {
                                Some(SelectionKey::SourceAddrAndUriPath)
                            }
                            Some(other) => {
                                self.error(
                                    k.span(),
                                    format!("unknown selection key `{other}`"),
                                    one_of_help(other, &["UriPath", "SourceAddrAndUriPath"]),
                                );
                                None
                            }
                            None => None,
                        },
                    };
                    let sel = match s {
                        "RoundRobin" => Selection::RoundRobin,
                        "Random" => Selection::Random,
                        "FNV" => match key {
                            Some(key) => Selection::Fnv { key },
                            None => continue,
                        },
                        "Ketama" => match key {
                            Some(key) => Selection::Ketama { key },
                            None => continue,
                        },
                        other => {
                            self.error(
                                e.span(),
                                format!("unknown selection `{other}`"),
                                one_of_help(other, &["RoundRobin", "Random", "FNV", "Ketama"]),
                            );
                            continue;
                        }
                    };
                    lb.selection = sel;
                }
                "discovery" => dns = self.discovery(n),
                _ => {
                    if let Some(hc) = self.health_check(n) {
                        lb.health_check = hc;
                    }
                }
            }
        }
        (lb, dns)
    }

    /// `discovery "Static"` (None) or `discovery "Dns" resolver=.. min-ttl-ms=..
    /// max-ttl-ms=.. resolve-timeout-ms=..`.
    fn discovery(&mut self, n: &KdlNode) -> Option<DnsChoice> {
        self.check_shape(
            n,
            "discovery",
            &Shape {
                args: 1,
                props: DNS_KEYS,
                children: false,
            },
        );
        let Some(e) = args(n).next() else {
            self.error(
                Self::name_span(n),
                "`discovery` needs a value: \"Static\" or \"Dns\"",
                None,
            );
            return None;
        };
        match self.string_of(e, "discovery")? {
            "Static" => {
                for key in DNS_KEYS {
                    if let Some(p) = prop(n, key) {
                        self.error(
                            p.span(),
                            format!("`{key}` does not apply to discovery `Static`"),
                            Some("use discovery \"Dns\" to look upstreams up in DNS".into()),
                        );
                    }
                }
                None
            }
            "Dns" => {
                let resolver = match prop(n, "resolver") {
                    None => None,
                    Some(p) => {
                        let text = self.string_of(p, "resolver")?;
                        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                            text.parse::<std::net::IpAddr>()
                                .ok()
                                .map(|ip| SocketAddr::new(ip, 53))
                        });
                        match parsed {
                            Some(a) if a.port() != 0 => Some(a),
                            _ => {
                                self.error(
                                    p.span(),
                                    format!("invalid resolver `{text}`"),
                                    Some(
                                        "expected IP or IP:PORT, e.g. \"127.0.0.1:53\"; leave it out for the system's resolver"
                                            .into(),
                                    ),
                                );
                                return None;
                            }
                        }
                    }
                };
                let ms = |this: &mut Self, key: &str, default: u64| match prop(n, key) {
                    None => Some(default),
                    Some(p) => this.int_of(p, key, 1, MAX_DNS_MS),
                };
                let min_ttl_ms = ms(self, "min-ttl-ms", Discovery::DEFAULT_MIN_TTL_MS);
                let max_ttl_ms = ms(self, "max-ttl-ms", Discovery::DEFAULT_MAX_TTL_MS);
                let resolve_timeout_ms = ms(
                    self,
                    "resolve-timeout-ms",
                    Discovery::DEFAULT_RESOLVE_TIMEOUT_MS,
                );
                let (min_ttl_ms, max_ttl_ms, resolve_timeout_ms) =
                    (min_ttl_ms?, max_ttl_ms?, resolve_timeout_ms?);
                if min_ttl_ms > max_ttl_ms {
                    let span = prop(n, "min-ttl-ms")
                        .or_else(|| prop(n, "max-ttl-ms"))
                        .map_or(e.span(), |p| p.span());
                    self.error(
                        span,
                        format!("min-ttl-ms ({min_ttl_ms}) is above max-ttl-ms ({max_ttl_ms})"),
                        None,
                    );
                    return None;
                }
                Some(DnsChoice {
                    settings: Discovery {
                        resolver,
                        min_ttl_ms,
                        max_ttl_ms,
                        resolve_timeout_ms,
                        names: Vec::new(),
                    },
                    span: e.span(),
                })
            }
            other => {
                self.error(
                    e.span(),
                    format!("unknown discovery `{other}`"),
                    one_of_help(other, &["Static", "Dns"]),
                );
                None
            }
        }
    }

    pub(super) fn health_check(&mut self, n: &KdlNode) -> Option<HealthCheck> {
        self.check_shape(
            n,
            "health-check",
            &Shape {
                args: 1,
                props: &["interval-ms", "path"],
                children: false,
            },
        );
        let Some(e) = args(n).next() else {
            self.error(
                Self::name_span(n),
                "`health-check` needs a value",
                Some("expected one of: None, Tcp, Http".into()),
            );
            return None;
        };
        let kind = self.string_of(e, "health-check")?;
        let interval = prop(n, "interval-ms");
        let path = prop(n, "path");
        let interval_ms = match interval {
            Some(i) => self.int_of(i, "interval-ms", 1, u32::MAX.into())?,
            None => 1000,
        };
        let not_for = |this: &mut Self, entry: Option<&KdlEntry>, key: &str, kind: &str| {
            if let Some(entry) = entry {
                this.error(
                    entry.span(),
                    format!("`{key}` does not apply to health-check `{kind}`"),
                    None,
                );
            }
        };
        match kind {
            "None" => {
                not_for(self, interval, "interval-ms", kind);
                not_for(self, path, "path", kind);
                Some(HealthCheck::None)
            }
            "Tcp" => {
                not_for(self, path, "path", kind);
                Some(HealthCheck::Tcp { interval_ms })
            }
            "Http" => {
                let path = match path {
                    Some(p) => {
                        let s = self.string_of(p, "path")?;
                        if !s.starts_with('/')
                            || s.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            self.error(
                                p.span(),
                                format!("invalid health-check path `{s}`"),
                                Some("expected an absolute URI path such as \"/healthz\"".into()),
                            );
                            return None;
                        }
                        s.to_string()
                    }
                    None => "/".to_string(),
                };
                Some(HealthCheck::Http { path, interval_ms })
            }
            other => {
                self.error(
                    e.span(),
                    format!("unknown health-check `{other}`"),
                    one_of_help(other, &["None", "Tcp", "Http"]),
                );
                None
            }
        }
    }
}

pub(super) fn looks_like_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `IP:PORT`, or `HOST:PORT` resolved now (the first address).
pub(super) fn resolve_upstream(text: &str) -> Result<SocketAddr, String> {
    let addr = match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let Some((host, port)) = text.rsplit_once(':') else {
                return Err("expected IP:PORT".into());
            };
            let port: u16 = port.parse().map_err(|_| format!("invalid port `{port}`"))?;
            if !looks_like_hostname(host) {
                return Err(format!("invalid IP address or host name `{host}`"));
            }
            match (host, port).to_socket_addrs() {
                Ok(mut addrs) => addrs
                    .next()
                    .ok_or_else(|| format!("`{host}` resolves to no address"))?,
                Err(e) => return Err(format!("cannot resolve `{host}`: {e}")),
            }
        }
    };
    if addr.port() == 0 {
        return Err("port 0 is not a valid upstream port".into());
    }
    Ok(addr)
}

/// `text` read as a name to look up: None for a literal `IP:PORT` or for
/// what is not name-like at all (the caller reports it as before); an error
/// says what is wrong with a name.
pub(super) fn dns_name(text: &str) -> Option<Result<DnsName, String>> {
    if text.parse::<SocketAddr>().is_ok() {
        return None;
    }
    if text.starts_with('_') {
        return Some(srv_name(text).map(|name| DnsName::Srv { name }));
    }
    let (host, port) = text.rsplit_once(':')?;
    if host.contains(':') || !looks_like_hostname(host) {
        return None;
    }
    let port: u16 = match port.parse() {
        Ok(0) => return Some(Err("port 0 is not a valid upstream port".into())),
        Ok(p) => p,
        Err(_) => return Some(Err(format!("invalid port `{port}`"))),
    };
    Some(check_labels(host).map(|()| DnsName::Host {
        host: host.to_ascii_lowercase(),
        port,
    }))
}

/// `_service._proto.name`: at least three labels, the first two starting
/// with `_` (RFC 2782).
fn srv_name(text: &str) -> Result<String, String> {
    check_labels(text)?;
    let labels: Vec<&str> = text.trim_end_matches('.').split('.').collect();
    if labels.len() < 3 || !labels[0].starts_with('_') || !labels[1].starts_with('_') {
        return Err("an SRV name is `_service._proto.name`, e.g. `_http._tcp.api.example`".into());
    }
    Ok(text.to_ascii_lowercase())
}

/// Letters, digits, `-` and `_`, 1 to 63 bytes a label, at most 253 in all,
/// a trailing dot allowed.
fn check_labels(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err("a DNS name is 1 to 253 characters long".into());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "empty or over-long label in `{name}` (1 to 63 characters between dots)"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`{label}` is not a valid DNS label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{label}` may not start or end with `-`"));
        }
    }
    Ok(())
}

//! `connectors { }`: upstreams, load balancing, health checks.

use std::net::{SocketAddr, ToSocketAddrs};

use kdl::{KdlEntry, KdlNode};
use miette::SourceSpan;

use super::{args, name, one_of_help, prop, Builder, Shape};
use crate::model::*;

const LB_KEYS: &[&str] = &["selection", "discovery", "health-check"];

impl Builder<'_> {
    pub(super) fn connectors(&mut self, node: &KdlNode) -> Option<(LoadBalance, Vec<Upstream>)> {
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
        let mut lb: Option<(LoadBalance, SourceSpan)> = None;
        let mut upstreams = Vec::new();
        let mut failed = false;
        for n in doc.nodes() {
            if name(n) == "load-balance" {
                if let Some((_, first)) = &lb {
                    let line = self.line_of(*first);
                    self.error(
                        Self::name_span(n),
                        "duplicate key `load-balance` in `connectors`",
                        Some(format!("first defined on line {line}")),
                    );
                    continue;
                }
                let l = self.load_balance(n);
                lb = Some((l, Self::name_span(n)));
                continue;
            }
            match self.upstream(n) {
                Some(u) => upstreams.push(u),
                None => failed = true,
            }
        }
        if upstreams.is_empty() && !failed {
            self.error(
                Self::name_span(node),
                "`connectors` has no upstream",
                Some("add an address: `connectors { \"127.0.0.1:8000\" }`".into()),
            );
        }
        Some((lb.map(|(l, _)| l).unwrap_or_default(), upstreams))
    }

    pub(super) fn upstream(&mut self, n: &KdlNode) -> Option<Upstream> {
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
        let address = match resolve_upstream(text) {
            Ok(a) => Some(a),
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
        Some(Upstream {
            address: address?,
            tls_sni,
            proto,
        })
    }

    pub(super) fn load_balance(&mut self, node: &KdlNode) -> LoadBalance {
        let mut lb = LoadBalance::default();
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
            return lb;
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
                "discovery" => {
                    let Some(e) = self.single_arg(n, "\"Static\"") else {
                        continue;
                    };
                    match self.string_of(e, "discovery") {
                        Some("Static") | None => {}
                        Some(other) => self.error(
                            e.span(),
                            format!("unknown discovery `{other}`"),
                            Some("expected one of: Static".into()),
                        ),
                    }
                }
                _ => {
                    if let Some(hc) = self.health_check(n) {
                        lb.health_check = hc;
                    }
                }
            }
        }
        lb
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

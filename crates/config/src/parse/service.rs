//! `services { NAME { } }`: a service, its listeners and TLS, the file server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use kdl::KdlNode;
use miette::SourceSpan;

use super::{name, prop, Builder, Shape};
use crate::model::*;

const SERVICE_KEYS: &[&str] = &[
    "listeners",
    "connectors",
    "file-server",
    "welcome-page",
    "path-control",
    "rate-limiting",
    "timeouts",
];

impl Builder<'_> {
    pub(super) fn services(&mut self, node: &KdlNode) -> Vec<Service> {
        self.check_shape(
            node,
            "services",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "services") else {
            return Vec::new();
        };
        if doc.nodes().is_empty() {
            self.error(
                Self::name_span(node),
                "`services` has no service",
                Some(
                    "add one: `services { NAME { listeners { ... } connectors { ... } } }`".into(),
                ),
            );
        }
        let mut out = Vec::new();
        let mut names: HashMap<&str, SourceSpan> = HashMap::new();
        // Every listen address, with the service and span that first used it.
        let mut addresses: Vec<(ListenAddress, String, SourceSpan)> = Vec::new();
        for svc in doc.nodes() {
            let svc_name = name(svc);
            if let Some(first) = names.get(svc_name).copied() {
                let line = self.line_of(first);
                self.error(
                    Self::name_span(svc),
                    format!("duplicate service name `{svc_name}`"),
                    Some(format!("first defined on line {line}")),
                );
            } else {
                names.insert(svc_name, Self::name_span(svc));
            }
            if let Some(service) = self.service(svc, &mut addresses) {
                out.push(service);
            }
        }
        out
    }

    pub(super) fn service(
        &mut self,
        node: &KdlNode,
        addresses: &mut Vec<(ListenAddress, String, SourceSpan)>,
    ) -> Option<Service> {
        let svc_name = name(node).to_string();
        let what = format!("service `{svc_name}`");
        self.check_shape(
            node,
            &what,
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let doc = self.block(node, &what)?;
        let keys = self.unique_keys(doc, &svc_name, SERVICE_KEYS);
        let find = |k: &str| keys.iter().find(|(n, _)| *n == k).map(|(_, n)| *n);

        let listeners = match find("listeners") {
            Some(n) => self.listeners(n, &svc_name, addresses),
            None => {
                self.error(
                    Self::name_span(node),
                    format!("{what} has no `listeners`"),
                    Some("add `listeners { \"0.0.0.0:8080\" }`".into()),
                );
                Vec::new()
            }
        };

        // Exactly one of connectors / file-server / welcome-page.
        let bodies: Vec<(&str, &KdlNode)> = keys
            .iter()
            .filter(|(k, _)| matches!(*k, "connectors" | "file-server" | "welcome-page"))
            .copied()
            .collect();
        let Some(&(body_key, body)) = bodies.first() else {
            self.error(
                Self::name_span(node),
                format!("{what} has nothing to serve"),
                Some("add one of: connectors { ... }, file-server { ... }, welcome-page".into()),
            );
            return None;
        };
        for &(k, n) in &bodies[1..] {
            let line = self.line_of(Self::name_span(body));
            self.error(
                Self::name_span(n),
                format!("`{k}` cannot be combined with `{body_key}` in one service"),
                Some(format!(
                    "a service has exactly one of connectors, file-server, welcome-page; `{body_key}` is on line {line}"
                )),
            );
        }
        if body_key != "connectors" {
            for extra in ["path-control", "rate-limiting"] {
                if let Some(n) = find(extra) {
                    self.error(
                        Self::name_span(n),
                        format!("`{extra}` cannot be used with `{body_key}`"),
                        Some(format!(
                            "`{extra}` only applies to services with `connectors`"
                        )),
                    );
                }
            }
        }

        let kind = match body_key {
            "connectors" => {
                let (load_balance, upstreams, discovery) = self.connectors(body)?;
                let path_control = match find("path-control") {
                    Some(n) => self.path_control(n),
                    None => PathControl::default(),
                };
                let rate_limiting = match find("rate-limiting") {
                    Some(n) => self.rate_limiting(n),
                    None => RateLimiting::default(),
                };
                ServiceKind::Proxy(ProxyService {
                    load_balance,
                    upstreams,
                    path_control,
                    rate_limiting,
                    discovery,
                })
            }
            "file-server" => ServiceKind::FileServer(self.file_server(body)?),
            _ => {
                self.check_shape(
                    body,
                    "welcome-page",
                    &Shape {
                        args: 0,
                        props: &[],
                        children: false,
                    },
                );
                ServiceKind::WelcomePage
            }
        };
        let timeouts = match find("timeouts") {
            Some(n) => self.timeouts(n, matches!(kind, ServiceKind::Proxy(_)), body_key),
            None => Timeouts::default(),
        };
        Some(Service {
            name: svc_name,
            listeners,
            kind,
            timeouts,
        })
    }

    pub(super) fn listeners(
        &mut self,
        node: &KdlNode,
        svc_name: &str,
        addresses: &mut Vec<(ListenAddress, String, SourceSpan)>,
    ) -> Vec<Listener> {
        self.check_shape(
            node,
            "listeners",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "listeners") else {
            return Vec::new();
        };
        if doc.nodes().is_empty() {
            self.error(
                Self::name_span(node),
                "`listeners` is empty: a service needs at least one listener",
                Some("add an address: `listeners { \"0.0.0.0:8080\" }`".into()),
            );
        }
        let mut out = Vec::new();
        for n in doc.nodes() {
            let addr_text = name(n);
            self.check_shape(
                n,
                "a listener",
                &Shape {
                    args: 0,
                    props: &["cert-path", "key-path", "offer-h2"],
                    children: false,
                },
            );
            let address = if addr_text.starts_with('/') {
                Some(ListenAddress::Unix(PathBuf::from(addr_text)))
            } else {
                match addr_text.parse::<SocketAddr>() {
                    Ok(a) => Some(ListenAddress::Tcp(a)),
                    Err(_) => {
                        self.error(
                            Self::name_span(n),
                            format!("invalid listen address `{addr_text}`"),
                            Some(
                                "expected IP:PORT (e.g. \"0.0.0.0:8080\" or \"[::1]:8080\") or an absolute Unix socket path"
                                    .into(),
                            ),
                        );
                        None
                    }
                }
            };
            let tls = self.listener_tls(n);
            let Some(address) = address else { continue };
            let clash = addresses
                .iter()
                .find(|(a, _, _)| listen_conflict(a, &address));
            if let Some((other, other_svc, span)) = clash.cloned() {
                let line = self.line_of(span);
                let same = if other == address {
                    format!("listen address `{address}` is used twice")
                } else {
                    format!("listen address `{address}` overlaps `{other}`")
                };
                self.error(
                    Self::name_span(n),
                    same,
                    Some(format!(
                        "already used by service `{other_svc}` on line {line}"
                    )),
                );
            } else {
                addresses.push((address.clone(), svc_name.to_string(), Self::name_span(n)));
            }
            if let Some(tls) = tls {
                out.push(Listener { address, tls });
            }
        }
        out
    }

    /// The TLS settings of a listener: `Some(None)` without TLS, `None` on error.
    pub(super) fn listener_tls(&mut self, n: &KdlNode) -> Option<Option<TlsListener>> {
        let cert = prop(n, "cert-path");
        let key = prop(n, "key-path");
        let h2 = prop(n, "offer-h2");
        let mut ok = true;
        let offer_h2 = match h2 {
            Some(e) => match self.bool_of(e, "offer-h2") {
                Some(b) => Some(b),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        match (cert, key) {
            (None, None) => {
                if let Some(e) = h2 {
                    self.error(
                        e.span(),
                        "`offer-h2` needs TLS",
                        Some("add cert-path=\"...\" key-path=\"...\", or remove offer-h2".into()),
                    );
                    return None;
                }
                ok.then_some(None)
            }
            (Some(e), None) | (None, Some(e)) => {
                let (have, missing) = if cert.is_some() {
                    ("cert-path", "key-path")
                } else {
                    ("key-path", "cert-path")
                };
                self.error(
                    e.span(),
                    format!("`{have}` without `{missing}`"),
                    Some("a TLS listener needs both cert-path and key-path".into()),
                );
                None
            }
            (Some(c), Some(k)) => {
                let cert_path = self.nonempty_string_of(c, "cert-path").map(PathBuf::from);
                let key_path = self.nonempty_string_of(k, "key-path").map(PathBuf::from);
                if let Some(p) = &cert_path {
                    self.readable_file(c, p, "TLS certificate");
                }
                if let Some(p) = &key_path {
                    self.readable_file(k, p, "TLS key");
                }
                match (ok, cert_path, key_path) {
                    (true, Some(cert_path), Some(key_path)) => Some(Some(TlsListener {
                        cert_path,
                        key_path,
                        offer_h2: offer_h2.unwrap_or(true),
                    })),
                    _ => None,
                }
            }
        }
    }

    pub(super) fn file_server(&mut self, node: &KdlNode) -> Option<FileServer> {
        self.check_shape(
            node,
            "file-server",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let doc = self.block(node, "file-server")?;
        let keys = self.unique_keys(doc, "file-server", &["base-path"]);
        let Some((_, n)) = keys.first() else {
            self.error(
                Self::name_span(node),
                "`file-server` is missing `base-path`",
                Some("add `base-path \"/srv/www\"`".into()),
            );
            return None;
        };
        let e = self.single_arg(n, "a directory")?;
        let s = self.nonempty_string_of(e, "base-path")?;
        let base_path = PathBuf::from(s);
        match std::fs::metadata(&base_path) {
            Ok(m) if m.is_dir() => Some(FileServer { base_path }),
            Ok(_) => {
                self.error(
                    e.span(),
                    format!("base-path `{}` is not a directory", base_path.display()),
                    None,
                );
                None
            }
            Err(err) => {
                self.error(
                    e.span(),
                    format!("cannot use base-path `{}`: {err}", base_path.display()),
                    None,
                );
                None
            }
        }
    }
}

/// Whether two listen addresses cannot both be bound: the same address, or the
/// same port where one side is the wildcard address of the same family.
pub(super) fn listen_conflict(a: &ListenAddress, b: &ListenAddress) -> bool {
    match (a, b) {
        (ListenAddress::Unix(x), ListenAddress::Unix(y)) => x == y,
        (ListenAddress::Tcp(x), ListenAddress::Tcp(y)) => {
            if x.port() == 0 || y.port() == 0 {
                // Port 0: the kernel picks a free port each time.
                return false;
            }
            x == y
                || (x.port() == y.port()
                    && x.is_ipv4() == y.is_ipv4()
                    && (x.ip().is_unspecified() || y.ip().is_unspecified()))
        }
        _ => false,
    }
}

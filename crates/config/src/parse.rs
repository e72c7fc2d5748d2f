//! The KDL document to the typed [`Config`], validating as it goes and collecting
//! every problem with its position.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::error::{Diagnostic, SourceText};
use crate::model::*;
use crate::syntax::Parsed;

const SYSTEM_KEYS: &[&str] = &[
    "workers",
    "threads-per-service",
    "daemonize",
    "pid-file",
    "upgrade-socket",
    "control-socket",
    "user",
    "group",
    "drain-timeout-secs",
    "max-draining-generations",
    "draining-memory-limit-mb",
    "worker-startup-timeout-secs",
    "listen-backlog",
    "access-log",
];
const SERVICE_KEYS: &[&str] = &[
    "listeners",
    "connectors",
    "file-server",
    "welcome-page",
    "path-control",
    "rate-limiting",
];
const LB_KEYS: &[&str] = &["selection", "discovery", "health-check"];
const PATH_CONTROL_KEYS: &[&str] = &["request-filters", "upstream-request", "upstream-response"];
const RATE_KEYS: &[&str] = &["timeout", "rule"];

/// Walks a parsed document, collecting diagnostics.
pub(crate) struct Builder<'a> {
    src: &'a SourceText<'a>,
    parsed: &'a Parsed,
    pub(crate) diags: Vec<Diagnostic>,
}

/// What a node may carry besides its name.
struct Shape<'s> {
    /// Most positional arguments accepted.
    args: usize,
    /// Properties accepted.
    props: &'s [&'s str],
    /// Whether a `{ ... }` block is accepted.
    children: bool,
}

fn value_type(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "null",
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let v = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `did you mean `x`? expected one of: ...`
fn one_of_help(found: &str, expected: &[&str]) -> Option<String> {
    if expected.is_empty() {
        return None;
    }
    let list = expected.join(", ");
    let best = expected
        .iter()
        .map(|e| (edit_distance(found, e), *e))
        .min()
        .filter(|(d, e)| *d <= 2.max(e.len() / 3));
    Some(match best {
        Some((_, e)) => format!("did you mean `{e}`? expected one of: {list}"),
        None => format!("expected one of: {list}"),
    })
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

fn prop<'n>(node: &'n KdlNode, key: &str) -> Option<&'n KdlEntry> {
    // The last one, as KDL says; duplicates are reported by `check_shape`.
    node.entries()
        .iter()
        .rev()
        .find(|e| e.name().map(|n| n.value()) == Some(key))
}

fn name(node: &KdlNode) -> &str {
    node.name().value()
}

fn is_valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl<'a> Builder<'a> {
    pub(crate) fn new(src: &'a SourceText<'a>, parsed: &'a Parsed) -> Self {
        Builder {
            src,
            parsed,
            diags: Vec::new(),
        }
    }

    fn range(&self, span: SourceSpan) -> (usize, usize) {
        let start = self.parsed.original_offset(span.offset());
        let end = self
            .parsed
            .original_offset(span.offset().saturating_add(span.len()));
        (start, end.max(start))
    }

    fn error(&mut self, span: SourceSpan, message: impl Into<String>, help: Option<String>) {
        let (start, end) = self.range(span);
        let d = self.src.diagnostic(start, end, message.into(), help);
        if !self.diags.contains(&d) {
            self.diags.push(d);
        }
    }

    fn line_of(&self, span: SourceSpan) -> usize {
        let (start, _) = self.range(span);
        self.src.line_of(start)
    }

    fn name_span(node: &KdlNode) -> SourceSpan {
        node.name().span()
    }

    /// Reports extra arguments, unknown or repeated properties and unwanted blocks.
    fn check_shape(&mut self, node: &KdlNode, what: &str, shape: &Shape<'_>) {
        let mut nargs = 0;
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for e in node.entries() {
            match e.name() {
                None => {
                    nargs += 1;
                    if nargs > shape.args {
                        let msg = if shape.args == 0 {
                            format!("`{what}` takes no arguments")
                        } else {
                            format!("too many arguments to `{what}`")
                        };
                        let help = if shape.args == 0 && shape.children {
                            Some(format!("`{what}` takes a block: `{what} {{ ... }}`"))
                        } else {
                            None
                        };
                        self.error(e.span(), msg, help);
                    }
                }
                Some(key) => {
                    let k = key.value();
                    if !shape.props.contains(&k) {
                        let help = if shape.props.is_empty() {
                            Some(format!("`{what}` takes no properties"))
                        } else {
                            one_of_help(k, shape.props)
                        };
                        self.error(
                            key.span(),
                            format!("unknown property `{k}` on `{what}`"),
                            help,
                        );
                    } else if let Some(first) = seen.get(k).copied() {
                        let line = self.line_of(first);
                        self.error(
                            e.span(),
                            format!("duplicate property `{k}` on `{what}`"),
                            Some(format!("first set on line {line}")),
                        );
                    } else {
                        seen.insert(k, e.span());
                    }
                }
            }
        }
        if !shape.children {
            if let Some(children) = node.children() {
                let span = children
                    .nodes()
                    .first()
                    .map(|n| n.name().span())
                    .unwrap_or_else(|| Self::name_span(node));
                self.error(span, format!("`{what}` does not take a block"), None);
            }
        }
    }

    /// The children of a block node, with an error if there is no block.
    fn block<'n>(&mut self, node: &'n KdlNode, what: &str) -> Option<&'n KdlDocument> {
        match node.children() {
            Some(c) => Some(c),
            None => {
                self.error(
                    Self::name_span(node),
                    format!("`{what}` needs a block: `{what} {{ ... }}`"),
                    None,
                );
                None
            }
        }
    }

    /// Iterates a block of unique keys: reports unknown and duplicate ones and
    /// returns the known nodes by name.
    fn unique_keys<'n>(
        &mut self,
        doc: &'n KdlDocument,
        what: &str,
        keys: &[&str],
    ) -> Vec<(&'n str, &'n KdlNode)> {
        let mut out: Vec<(&'n str, &'n KdlNode)> = Vec::new();
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for node in doc.nodes() {
            let k = name(node);
            if !keys.contains(&k) {
                self.error(
                    Self::name_span(node),
                    format!("unknown key `{k}` in `{what}`"),
                    one_of_help(k, keys),
                );
            } else if let Some(first) = seen.get(k).copied() {
                let line = self.line_of(first);
                self.error(
                    Self::name_span(node),
                    format!("duplicate key `{k}` in `{what}`"),
                    Some(format!("first defined on line {line}")),
                );
            } else {
                seen.insert(k, Self::name_span(node));
                out.push((k, node));
            }
        }
        out
    }

    /// The single argument of a `key VALUE` node.
    fn single_arg<'n>(&mut self, node: &'n KdlNode, expected: &str) -> Option<&'n KdlEntry> {
        let what = name(node).to_string();
        self.check_shape(
            node,
            &what,
            &Shape {
                args: 1,
                props: &[],
                children: false,
            },
        );
        let arg = args(node).next();
        if arg.is_none() {
            self.error(
                Self::name_span(node),
                format!("`{what}` needs a value: {expected}"),
                None,
            );
        }
        arg
    }

    fn string_of<'n>(&mut self, entry: &'n KdlEntry, what: &str) -> Option<&'n str> {
        match entry.value() {
            KdlValue::String(s) => Some(s.as_str()),
            other => {
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be a string, found {} `{other}`",
                        value_type(other)
                    ),
                    Some("quote it: \"...\"".into()),
                );
                None
            }
        }
    }

    fn nonempty_string_of(&mut self, entry: &KdlEntry, what: &str) -> Option<String> {
        let s = self.string_of(entry, what)?;
        if s.is_empty() {
            self.error(entry.span(), format!("`{what}` must not be empty"), None);
            return None;
        }
        Some(s.to_string())
    }

    /// An integer in `min..=max`.
    fn int_of(&mut self, entry: &KdlEntry, what: &str, min: u64, max: u64) -> Option<u64> {
        let expected = if min == 0 {
            "a non-negative integer"
        } else {
            "a positive integer"
        };
        match entry.value() {
            KdlValue::Integer(i) => {
                if *i < i128::from(min) || *i > i128::from(max) {
                    let why = if *i < i128::from(min) {
                        format!("must be at least {min}")
                    } else {
                        format!("must be at most {max}")
                    };
                    self.error(entry.span(), format!("`{what}` {why}, found {i}"), None);
                    None
                } else {
                    u64::try_from(*i).ok()
                }
            }
            other => {
                let help = match other {
                    KdlValue::String(s) if s.trim().parse::<i128>().is_ok() => {
                        Some(format!("remove the quotes: {}", s.trim()))
                    }
                    _ => None,
                };
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be {expected}, found {} `{other}`",
                        value_type(other)
                    ),
                    help,
                );
                None
            }
        }
    }

    fn bool_of(&mut self, entry: &KdlEntry, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.error(
                    entry.span(),
                    format!(
                        "`{what}` must be a boolean, found {} `{other}`",
                        value_type(other)
                    ),
                    Some("write true or false (#true or #false in KDL v2)".into()),
                );
                None
            }
        }
    }

    fn absolute_path_of(&mut self, entry: &KdlEntry, what: &str) -> Option<PathBuf> {
        let s = self.nonempty_string_of(entry, what)?;
        let p = PathBuf::from(s);
        if !p.is_absolute() {
            self.error(
                entry.span(),
                format!("`{what}` must be an absolute path, found `{}`", p.display()),
                None,
            );
            return None;
        }
        Some(p)
    }

    /// A required property, with an error on the node if it is missing.
    fn required_prop<'n>(
        &mut self,
        node: &'n KdlNode,
        key: &str,
        what: &str,
        expected: &str,
    ) -> Option<&'n KdlEntry> {
        let e = prop(node, key);
        if e.is_none() {
            self.error(
                Self::name_span(node),
                format!("`{what}` is missing `{key}`"),
                Some(format!("add {key}={expected}")),
            );
        }
        e
    }

    fn readable_file(&mut self, entry: &KdlEntry, path: &Path, what: &str) {
        match std::fs::File::open(path).and_then(|f| f.metadata()) {
            Ok(m) if m.is_dir() => self.error(
                entry.span(),
                format!("{what} `{}` is a directory, not a file", path.display()),
                None,
            ),
            Ok(_) => {}
            Err(e) => self.error(
                entry.span(),
                format!("cannot read {what} `{}`: {e}", path.display()),
                None,
            ),
        }
    }

    // ---------------------------------------------------------------- document

    pub(crate) fn config(&mut self, doc: &KdlDocument) -> Option<Config> {
        let mut system = None;
        let mut services = Vec::new();
        let mut services_seen = false;
        for (key, node) in self.unique_keys(doc, "the configuration", &["system", "services"]) {
            match key {
                "system" => system = Some(self.system(node)),
                _ => {
                    services_seen = true;
                    services = self.services(node);
                }
            }
        }
        if !services_seen {
            let span: SourceSpan = doc
                .nodes()
                .first()
                .map(|n| n.name().span())
                .unwrap_or_else(|| (0usize..0usize).into());
            self.error(
                span,
                "the configuration has no `services` block",
                Some("add `services { NAME { listeners { ... } connectors { ... } } }`".into()),
            );
        }
        let system = system.unwrap_or_else(default_system);
        if self.diags.is_empty() {
            Some(Config { system, services })
        } else {
            None
        }
    }

    fn system(&mut self, node: &KdlNode) -> System {
        let mut sys = default_system();
        self.check_shape(
            node,
            "system",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "system") else {
            return sys;
        };
        let mut daemonize_span = None;
        for (key, n) in self.unique_keys(doc, "system", SYSTEM_KEYS) {
            match key {
                "workers" | "threads-per-service" | "worker-startup-timeout-secs" => {
                    let Some(e) = self.single_arg(n, "a positive integer") else {
                        continue;
                    };
                    let Some(v) = self.int_of(e, key, 1, u32::MAX.into()) else {
                        continue;
                    };
                    match key {
                        "workers" => sys.workers = v as usize,
                        "threads-per-service" => sys.threads_per_service = v as usize,
                        _ => sys.worker_startup_timeout_secs = v,
                    }
                }
                "listen-backlog" => {
                    if let Some(e) = self.single_arg(n, "a positive integer") {
                        if let Some(v) = self.int_of(e, key, 1, i32::MAX as u64) {
                            sys.listen_backlog = v as u32;
                        }
                    }
                }
                "drain-timeout-secs" => {
                    if let Some(e) = self.single_arg(n, "a number of seconds") {
                        if let Some(v) = self.int_of(e, key, 0, u32::MAX.into()) {
                            sys.drain_timeout_secs = v;
                        }
                    }
                }
                "max-draining-generations" => {
                    if let Some(e) = self.single_arg(n, "a non-negative integer") {
                        if let Some(v) = self.int_of(e, key, 0, u32::MAX.into()) {
                            sys.max_draining_generations = v as usize;
                        }
                    }
                }
                "draining-memory-limit-mb" => {
                    if let Some(e) = self.single_arg(n, "a positive integer") {
                        if let Some(v) = self.int_of(e, key, 1, u32::MAX.into()) {
                            sys.draining_memory_limit_mb = Some(v);
                        }
                    }
                }
                "daemonize" => {
                    if let Some(e) = self.single_arg(n, "true or false") {
                        if let Some(v) = self.bool_of(e, key) {
                            sys.daemonize = v;
                            daemonize_span = Some(e.span());
                        }
                    }
                }
                "pid-file" | "upgrade-socket" | "control-socket" | "access-log" => {
                    let Some(e) = self.single_arg(n, "an absolute path") else {
                        continue;
                    };
                    let Some(p) = self.absolute_path_of(e, key) else {
                        continue;
                    };
                    match key {
                        "pid-file" => sys.pid_file = Some(p),
                        "upgrade-socket" => sys.upgrade_socket = Some(p),
                        "control-socket" => sys.control_socket = Some(p),
                        _ => sys.access_log = Some(p),
                    }
                }
                "user" | "group" => {
                    let Some(e) = self.single_arg(n, "a name") else {
                        continue;
                    };
                    let Some(s) = self.nonempty_string_of(e, key) else {
                        continue;
                    };
                    if key == "user" {
                        sys.user = Some(s);
                    } else {
                        sys.group = Some(s);
                    }
                }
                _ => {}
            }
        }
        if let (true, None, Some(span)) = (sys.daemonize, &sys.pid_file, daemonize_span) {
            self.error(
                span,
                "`daemonize true` needs a `pid-file`",
                Some("add `pid-file \"/run/river/river.pid\"` to `system`".into()),
            );
        }
        sys
    }

    // ---------------------------------------------------------------- services

    fn services(&mut self, node: &KdlNode) -> Vec<Service> {
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

    fn service(
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
                let (load_balance, upstreams) = self.connectors(body)?;
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
        Some(Service {
            name: svc_name,
            listeners,
            kind,
        })
    }

    fn listeners(
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
    fn listener_tls(&mut self, n: &KdlNode) -> Option<Option<TlsListener>> {
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

    // ---------------------------------------------------------------- connectors

    fn connectors(&mut self, node: &KdlNode) -> Option<(LoadBalance, Vec<Upstream>)> {
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

    fn upstream(&mut self, n: &KdlNode) -> Option<Upstream> {
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

    fn load_balance(&mut self, node: &KdlNode) -> LoadBalance {
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

    fn health_check(&mut self, n: &KdlNode) -> Option<HealthCheck> {
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

    // ---------------------------------------------------------------- path-control

    fn path_control(&mut self, node: &KdlNode) -> PathControl {
        let mut pc = PathControl::default();
        self.check_shape(
            node,
            "path-control",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "path-control") else {
            return pc;
        };
        for (key, n) in self.unique_keys(doc, "path-control", PATH_CONTROL_KEYS) {
            self.check_shape(
                n,
                key,
                &Shape {
                    args: 0,
                    props: &[],
                    children: true,
                },
            );
            let Some(filters) = self.block(n, key) else {
                continue;
            };
            for f in filters.nodes() {
                if name(f) != "filter" {
                    self.error(
                        Self::name_span(f),
                        format!("unknown key `{}` in `{key}`", name(f)),
                        one_of_help(name(f), &["filter"]),
                    );
                    continue;
                }
                if key == "request-filters" {
                    if let Some(r) = self.request_filter(f) {
                        pc.request_filters.push(r);
                    }
                } else if let Some(h) = self.header_filter(f, key) {
                    if key == "upstream-request" {
                        pc.upstream_request.push(h);
                    } else {
                        pc.upstream_response.push(h);
                    }
                }
            }
        }
        pc
    }

    /// The `kind` of a filter, checked against the kinds valid in `section`.
    fn filter_kind<'n>(
        &mut self,
        f: &'n KdlNode,
        section: &str,
        kinds: &[&str],
    ) -> Option<&'n str> {
        let e = self.required_prop(f, "kind", "filter", "\"...\"")?;
        let kind = self.string_of(e, "kind")?;
        if !kinds.contains(&kind) {
            self.error(
                e.span(),
                format!("unknown filter kind `{kind}` in `{section}`"),
                one_of_help(kind, kinds),
            );
            return None;
        }
        Some(kind)
    }

    fn request_filter(&mut self, f: &KdlNode) -> Option<RequestFilter> {
        self.check_shape(
            f,
            "filter",
            &Shape {
                args: 0,
                props: &["kind", "addrs"],
                children: false,
            },
        );
        self.filter_kind(f, "request-filters", &["block-cidr-range"])?;
        let e = self.required_prop(f, "addrs", "filter", "\"CIDR, CIDR, ...\"")?;
        let s = self.string_of(e, "addrs")?;
        let mut addrs = Vec::new();
        let mut ok = true;
        for item in s.split(',').map(str::trim) {
            if let Ok(net) = item.parse::<IpNet>() {
                addrs.push(net.trunc());
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                addrs.push(IpNet::from(ip));
            } else {
                let shown = if item.is_empty() { "(empty)" } else { item };
                self.error(
                    e.span(),
                    format!("invalid address or CIDR range `{shown}` in `addrs`"),
                    Some(
                        "expected a comma-separated list such as \"10.0.0.0/8, 192.168.1.7, ::1\""
                            .into(),
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(RequestFilter::BlockCidrRange { addrs })
    }

    fn header_filter(&mut self, f: &KdlNode, section: &str) -> Option<HeaderFilter> {
        let kind = prop(f, "kind").and_then(|e| e.value().as_string());
        let props: &[&str] = match kind {
            Some("remove-header-key-regex") => &["kind", "pattern"],
            Some("upsert-header") => &["kind", "key", "value"],
            _ => &["kind", "pattern", "key", "value"],
        };
        self.check_shape(
            f,
            "filter",
            &Shape {
                args: 0,
                props,
                children: false,
            },
        );
        let kind = self.filter_kind(f, section, &["remove-header-key-regex", "upsert-header"])?;
        if kind == "remove-header-key-regex" {
            let e = self.required_prop(f, "pattern", "filter", "\"REGEX\"")?;
            let pattern = self.regex_of(e, "pattern")?;
            return Some(HeaderFilter::RemoveHeaderKeyRegex { pattern });
        }
        let k = self.required_prop(f, "key", "filter", "\"HEADER-NAME\"");
        let v = self.required_prop(f, "value", "filter", "\"VALUE\"");
        let (k, v) = (k?, v?);
        let key = self.string_of(k, "key");
        let value = self.string_of(v, "value");
        let (key, value) = (key?, value?);
        let mut ok = true;
        if !is_valid_header_name(key) {
            self.error(
                k.span(),
                format!("invalid header name `{key}`"),
                Some(
                    "a header name is a non-empty token: letters, digits and !#$%&'*+-.^_`|~"
                        .into(),
                ),
            );
            ok = false;
        }
        if !is_valid_header_value(value) {
            self.error(
                v.span(),
                "invalid header value",
                Some(
                    "a header value cannot contain control characters such as CR, LF or NUL".into(),
                ),
            );
            ok = false;
        }
        ok.then(|| HeaderFilter::UpsertHeader {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    fn regex_of(&mut self, e: &KdlEntry, what: &str) -> Option<String> {
        let s = self.string_of(e, what)?;
        match regex::Regex::new(s) {
            Ok(_) => Some(s.to_string()),
            Err(err) => {
                let detail = err.to_string();
                let last = detail.lines().last().unwrap_or("").trim();
                let last = last.strip_prefix("error: ").unwrap_or(last);
                self.error(
                    e.span(),
                    format!("invalid regular expression in `{what}`: {last}"),
                    Some("the syntax is that of Rust's regex crate: https://docs.rs/regex".into()),
                );
                None
            }
        }
    }

    // ---------------------------------------------------------------- rate-limiting

    fn rate_limiting(&mut self, node: &KdlNode) -> RateLimiting {
        let mut rl = RateLimiting::default();
        self.check_shape(
            node,
            "rate-limiting",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "rate-limiting") else {
            return rl;
        };
        let mut timeout_seen: Option<SourceSpan> = None;
        for n in doc.nodes() {
            match name(n) {
                "timeout" => {
                    if let Some(first) = timeout_seen {
                        let line = self.line_of(first);
                        self.error(
                            Self::name_span(n),
                            "duplicate key `timeout` in `rate-limiting`",
                            Some(format!("first defined on line {line}")),
                        );
                        continue;
                    }
                    timeout_seen = Some(Self::name_span(n));
                    self.check_shape(
                        n,
                        "timeout",
                        &Shape {
                            args: 0,
                            props: &["millis"],
                            children: false,
                        },
                    );
                    if let Some(e) = self.required_prop(n, "millis", "timeout", "N") {
                        rl.timeout_millis = self.int_of(e, "millis", 0, u32::MAX.into());
                    }
                }
                "rule" => {
                    if let Some(r) = self.rate_rule(n) {
                        rl.rules.push(r);
                    }
                }
                other => self.error(
                    Self::name_span(n),
                    format!("unknown key `{other}` in `rate-limiting`"),
                    one_of_help(other, RATE_KEYS),
                ),
            }
        }
        rl
    }

    fn rate_rule(&mut self, n: &KdlNode) -> Option<RateRule> {
        self.check_shape(
            n,
            "rule",
            &Shape {
                args: 0,
                props: &[
                    "kind",
                    "pattern",
                    "max-buckets",
                    "tokens-per-bucket",
                    "refill-qty",
                    "refill-rate-ms",
                ],
                children: false,
            },
        );
        let kinds = ["source-ip", "specific-uri", "uri", "any-matching-uri"];
        let kind_entry = self.required_prop(n, "kind", "rule", "\"source-ip\"");
        let mut nums = [0u64; 4];
        let mut ok = true;
        for (i, key) in [
            "max-buckets",
            "tokens-per-bucket",
            "refill-qty",
            "refill-rate-ms",
        ]
        .iter()
        .enumerate()
        {
            match self.required_prop(n, key, "rule", "N") {
                Some(e) => match self.int_of(e, key, 1, u32::MAX.into()) {
                    Some(v) => nums[i] = v,
                    None => ok = false,
                },
                None => ok = false,
            }
        }
        let kind_entry = kind_entry?;
        let kind_s = self.string_of(kind_entry, "kind")?;
        let pattern = prop(n, "pattern");
        let kind = match kind_s {
            "source-ip" => {
                if let Some(p) = pattern {
                    self.error(
                        p.span(),
                        "`pattern` does not apply to rule kind `source-ip`",
                        None,
                    );
                    return None;
                }
                RateRuleKind::SourceIp
            }
            "specific-uri" | "uri" | "any-matching-uri" => {
                let e = self.required_prop(n, "pattern", "rule", "\"REGEX\"")?;
                let pattern = self.regex_of(e, "pattern")?;
                if kind_s == "any-matching-uri" {
                    RateRuleKind::AnyMatchingUri { pattern }
                } else {
                    RateRuleKind::SpecificUri { pattern }
                }
            }
            other => {
                self.error(
                    kind_entry.span(),
                    format!("unknown rule kind `{other}`"),
                    one_of_help(other, &kinds),
                );
                return None;
            }
        };
        ok.then_some(RateRule {
            kind,
            max_buckets: nums[0] as usize,
            tokens_per_bucket: nums[1],
            refill_qty: nums[2],
            refill_rate_ms: nums[3],
        })
    }

    // ---------------------------------------------------------------- file-server

    fn file_server(&mut self, node: &KdlNode) -> Option<FileServer> {
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

pub(crate) fn default_system() -> System {
    System {
        workers: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        threads_per_service: 8,
        daemonize: false,
        pid_file: None,
        upgrade_socket: None,
        control_socket: None,
        user: None,
        group: None,
        drain_timeout_secs: 60,
        max_draining_generations: 2,
        draining_memory_limit_mb: None,
        worker_startup_timeout_secs: 10,
        listen_backlog: 4096,
        access_log: None,
    }
}

/// Whether two listen addresses cannot both be bound: the same address, or the
/// same port where one side is the wildcard address of the same family.
fn listen_conflict(a: &ListenAddress, b: &ListenAddress) -> bool {
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

fn looks_like_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && host.bytes().any(|b| b.is_ascii_alphabetic())
}

/// `IP:PORT`, or `HOST:PORT` resolved now (the first address).
fn resolve_upstream(text: &str) -> Result<SocketAddr, String> {
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

//! `system { }`: process model, paths, limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use kdl::KdlNode;

use super::Builder;
use super::Shape;
use crate::model::*;

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
    "metrics",
    "connection-handoff",
];

impl Builder<'_> {
    pub(super) fn system(&mut self, node: &KdlNode) -> System {
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
                "connection-handoff" => {
                    if let Some(e) = self.single_arg(n, "true or false") {
                        if let Some(v) = self.bool_of(e, key) {
                            sys.connection_handoff = v;
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
                "metrics" => {
                    let Some(e) = self.single_arg(n, "an address") else {
                        continue;
                    };
                    let Some(text) = self.nonempty_string_of(e, key) else {
                        continue;
                    };
                    match metrics_address(&text) {
                        Some(address) => {
                            sys.metrics = Some(address);
                            self.metrics_span = Some(e.span());
                        }
                        None => self.error(
                            e.span(),
                            format!("invalid `metrics` address `{text}`"),
                            Some(
                                "expected IP:PORT (e.g. \"127.0.0.1:9091\" or \"[::1]:9091\") or an absolute Unix socket path"
                                    .into(),
                            ),
                        ),
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
}

/// `metrics "IP:PORT"` or `metrics "/abs/path.sock"`; None if neither.
fn metrics_address(text: &str) -> Option<ListenAddress> {
    if text.starts_with('/') {
        return Some(ListenAddress::Unix(PathBuf::from(text)));
    }
    text.parse::<SocketAddr>().ok().map(ListenAddress::Tcp)
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
        metrics: None,
        connection_handoff: true,
    }
}

//! `timeouts { }` of a service: how long River waits for clients and
//! upstreams. Only valid inside a service; anywhere else it is an unknown key.

use kdl::KdlNode;

use super::{Builder, Shape};
use crate::model::Timeouts;

const TIMEOUT_KEYS: &[&str] = &[
    "client-header-secs",
    "client-body-secs",
    "upstream-connect-secs",
    "upstream-read-secs",
    "upstream-send-secs",
    "tunnel-idle-secs",
];

/// A timeout longer than a week is a typo, or a wish for none: refused.
const MAX_SECS: u64 = 7 * 24 * 3600;

impl Builder<'_> {
    /// `timeouts { KEY SECS ... }`. `proxy` says whether the service has
    /// upstreams: the upstream and tunnel keys mean nothing without them.
    pub(super) fn timeouts(&mut self, node: &KdlNode, proxy: bool, body_key: &str) -> Timeouts {
        let mut timeouts = Timeouts::default();
        self.check_shape(
            node,
            "timeouts",
            &Shape {
                args: 0,
                props: &[],
                children: true,
            },
        );
        let Some(doc) = self.block(node, "timeouts") else {
            return timeouts;
        };
        for (key, n) in self.unique_keys(doc, "timeouts", TIMEOUT_KEYS) {
            let Some(e) = self.single_arg(n, "a number of seconds") else {
                continue;
            };
            let Some(secs) = self.int_of(e, key, 1, MAX_SECS) else {
                continue;
            };
            if !proxy && !key.starts_with("client-") {
                self.error(
                    Self::name_span(n),
                    format!("`{key}` does not apply to a service with `{body_key}`"),
                    Some(
                        "upstream and tunnel timeouts only apply to services with `connectors`"
                            .into(),
                    ),
                );
                continue;
            }
            let slot = match key {
                "client-header-secs" => &mut timeouts.client_header_secs,
                "client-body-secs" => &mut timeouts.client_body_secs,
                "upstream-connect-secs" => &mut timeouts.upstream_connect_secs,
                "upstream-read-secs" => &mut timeouts.upstream_read_secs,
                "upstream-send-secs" => &mut timeouts.upstream_send_secs,
                _ => &mut timeouts.tunnel_idle_secs,
            };
            *slot = secs;
        }
        timeouts
    }
}

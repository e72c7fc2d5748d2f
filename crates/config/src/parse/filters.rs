//! `path-control { }`: request filters and header filters, regexes.

use std::net::IpAddr;

use ipnet::IpNet;
use kdl::{KdlEntry, KdlNode};

use super::{name, one_of_help, prop, Builder, Shape};
use crate::model::*;

const PATH_CONTROL_KEYS: &[&str] = &["request-filters", "upstream-request", "upstream-response"];

pub(super) fn is_valid_header_name(s: &str) -> bool {
    // A field name is a token (RFC 9110 §5.1), as River's HTTP/1 model reads it.
    !s.is_empty() && s.bytes().all(river_http1::chunked::is_tchar)
}

pub(super) fn is_valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl Builder<'_> {
    pub(super) fn path_control(&mut self, node: &KdlNode) -> PathControl {
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
    pub(super) fn filter_kind<'n>(
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

    pub(super) fn request_filter(&mut self, f: &KdlNode) -> Option<RequestFilter> {
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

    pub(super) fn header_filter(&mut self, f: &KdlNode, section: &str) -> Option<HeaderFilter> {
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

    pub(super) fn regex_of(&mut self, e: &KdlEntry, what: &str) -> Option<String> {
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
}

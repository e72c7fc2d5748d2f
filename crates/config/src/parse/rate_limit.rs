//! `rate-limiting { }`: rules and their buckets.

use kdl::KdlNode;
use miette::SourceSpan;

use super::{name, one_of_help, prop, Builder, Shape};
use crate::model::*;

const RATE_KEYS: &[&str] = &["timeout", "rule"];

impl Builder<'_> {
    pub(super) fn rate_limiting(&mut self, node: &KdlNode) -> RateLimiting {
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

    pub(super) fn rate_rule(&mut self, n: &KdlNode) -> Option<RateRule> {
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
}

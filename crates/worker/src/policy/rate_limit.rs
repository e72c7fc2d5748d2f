//! `rate-limiting` rules as token buckets.
//!
//! Each rule holds buckets of `tokens-per-bucket` tokens, refilled with
//! `refill-qty` tokens every `refill-rate-ms`. A request must take a token from
//! every rule that matches it, or it is answered 429 (and takes none).
//! Buckets live in this worker process: with N workers a client may get up to
//! N times the configured rate, as with River's per-process limiter. River's
//! `timeout millis` (waiting for a token) is accepted but requests never wait:
//! a proxy that queues requests under load only makes the overload worse.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

use lru::LruCache;
use regex::Regex;
use river_config::{RateLimiting, RateRule, RateRuleKind};

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("rate-limiting rule: invalid regex `{pattern}`: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
}

/// A token bucket. Time is in milliseconds on the limiter's own clock, so
/// tests can drive it without sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    tokens: u64,
    /// When tokens were last added (a whole number of periods after creation).
    refilled_at: u64,
}

/// A rule's bucket shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    capacity: u64,
    refill_qty: u64,
    refill_every_ms: u64,
}

impl Shape {
    fn full(&self, now: u64) -> Bucket {
        Bucket {
            tokens: self.capacity,
            refilled_at: now,
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: u64) {
        let periods = now.saturating_sub(bucket.refilled_at) / self.refill_every_ms;
        if periods > 0 {
            bucket.tokens = bucket
                .tokens
                .saturating_add(periods.saturating_mul(self.refill_qty))
                .min(self.capacity);
            bucket.refilled_at += periods * self.refill_every_ms;
        }
    }
}

/// Which bucket of a rule a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    /// Per client address; clients without one (Unix sockets) share a bucket.
    Source(Option<IpAddr>),
    /// Per URI path (`specific-uri`).
    Path(String),
    /// One for all matching paths (`any-matching-uri`).
    Shared,
}

enum Matcher {
    SourceIp,
    SpecificUri(Regex),
    AnyMatchingUri(Regex),
}

struct Rule {
    matcher: Matcher,
    shape: Shape,
    /// Bounded by `max-buckets`: the least recently used bucket goes first.
    buckets: Mutex<LruCache<BucketKey, Bucket>>,
}

impl Rule {
    fn build(rule: &RateRule) -> Result<Self, RateLimitError> {
        let regex = |pattern: &String| {
            Regex::new(pattern).map_err(|source| RateLimitError::Regex {
                pattern: pattern.clone(),
                source,
            })
        };
        let matcher = match &rule.kind {
            RateRuleKind::SourceIp => Matcher::SourceIp,
            RateRuleKind::SpecificUri { pattern } => Matcher::SpecificUri(regex(pattern)?),
            RateRuleKind::AnyMatchingUri { pattern } => Matcher::AnyMatchingUri(regex(pattern)?),
        };
        let capacity = NonZeroUsize::new(rule.max_buckets).unwrap_or(NonZeroUsize::MIN);
        Ok(Rule {
            matcher,
            shape: Shape {
                capacity: rule.tokens_per_bucket,
                refill_qty: rule.refill_qty,
                refill_every_ms: rule.refill_rate_ms.max(1),
            },
            buckets: Mutex::new(LruCache::new(capacity)),
        })
    }

    fn key(&self, client: Option<IpAddr>, path: &str) -> Option<BucketKey> {
        match &self.matcher {
            Matcher::SourceIp => Some(BucketKey::Source(client.map(|ip| ip.to_canonical()))),
            Matcher::SpecificUri(re) => re.is_match(path).then(|| BucketKey::Path(path.to_owned())),
            Matcher::AnyMatchingUri(re) => re.is_match(path).then_some(BucketKey::Shared),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<BucketKey, Bucket>> {
        // A panic while holding the lock cannot leave a bucket half-updated.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, key: &BucketKey, now: u64) -> bool {
        let mut buckets = self.lock();
        let bucket = buckets.get_or_insert_mut(key.clone(), || self.shape.full(now));
        self.shape.refill(bucket, now);
        if bucket.tokens == 0 {
            return false;
        }
        bucket.tokens -= 1;
        true
    }

    fn give_back(&self, key: &BucketKey) {
        if let Some(bucket) = self.lock().peek_mut(key) {
            bucket.tokens = (bucket.tokens + 1).min(self.shape.capacity);
        }
    }
}

/// A service's rate-limiting rules.
pub struct RateLimiter {
    rules: Vec<Rule>,
    epoch: Instant,
}

impl RateLimiter {
    pub fn build(config: &RateLimiting) -> Result<Self, RateLimitError> {
        Ok(RateLimiter {
            rules: config
                .rules
                .iter()
                .map(Rule::build)
                .collect::<Result<_, _>>()?,
            epoch: Instant::now(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May this request go on? Takes one token from every matching rule.
    pub fn admit(&self, client: Option<IpAddr>, path: &str) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.admit_at(client, path, now)
    }

    fn admit_at(&self, client: Option<IpAddr>, path: &str, now_ms: u64) -> bool {
        let mut taken: Vec<(&Rule, BucketKey)> = Vec::new();
        for rule in &self.rules {
            let Some(key) = rule.key(client, path) else {
                continue;
            };
            if !rule.take(&key, now_ms) {
                // All or nothing: a rejected request costs no rule a token.
                for (rule, key) in &taken {
                    rule.give_back(key);
                }
                return false;
            }
            taken.push((rule, key));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RateRuleKind, max_buckets: usize, tokens: u64, qty: u64, ms: u64) -> RateRule {
        RateRule {
            kind,
            max_buckets,
            tokens_per_bucket: tokens,
            refill_qty: qty,
            refill_rate_ms: ms,
        }
    }

    fn limiter(rules: Vec<RateRule>) -> RateLimiter {
        RateLimiter::build(&RateLimiting {
            timeout_millis: None,
            rules,
        })
        .unwrap()
    }

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn burst_then_refill_on_a_fake_clock() {
        let l = limiter(vec![rule(RateRuleKind::SourceIp, 100, 10, 2, 100)]);
        for i in 0..10 {
            assert!(l.admit_at(A, "/", 0), "request {i}");
        }
        assert!(!l.admit_at(A, "/", 0), "the 11th request in a burst");
        assert!(!l.admit_at(A, "/", 99), "no refill before a full period");
        assert!(l.admit_at(A, "/", 100));
        assert!(l.admit_at(A, "/", 100));
        assert!(!l.admit_at(A, "/", 150));
        // A long pause refills up to the capacity, not beyond.
        for _ in 0..10 {
            assert!(l.admit_at(A, "/", 100_000));
        }
        assert!(!l.admit_at(A, "/", 100_000));
    }

    #[test]
    fn partial_periods_are_not_lost() {
        let l = limiter(vec![rule(RateRuleKind::SourceIp, 100, 1, 1, 100)]);
        assert!(l.admit_at(A, "/", 0));
        assert!(!l.admit_at(A, "/", 50));
        // 50 ms later a period has passed since the last refill point (0), not since 50.
        assert!(l.admit_at(A, "/", 100));
    }

    #[test]
    fn source_ip_buckets_are_per_client() {
        let l = limiter(vec![rule(RateRuleKind::SourceIp, 100, 1, 1, 1000)]);
        assert!(l.admit_at(A, "/", 0));
        assert!(!l.admit_at(A, "/", 0));
        assert!(l.admit_at(B, "/", 0));
    }

    #[test]
    fn specific_uri_is_per_path_and_any_matching_is_shared() {
        let specific = limiter(vec![rule(
            RateRuleKind::SpecificUri {
                pattern: "^/api/".into(),
            },
            100,
            1,
            1,
            1000,
        )]);
        assert!(specific.admit_at(A, "/api/a", 0));
        assert!(specific.admit_at(A, "/api/b", 0));
        assert!(!specific.admit_at(B, "/api/a", 0));
        assert!(
            specific.admit_at(A, "/static/x", 0),
            "unmatched paths are free"
        );

        let shared = limiter(vec![rule(
            RateRuleKind::AnyMatchingUri {
                pattern: "^/api/".into(),
            },
            100,
            1,
            1,
            1000,
        )]);
        assert!(shared.admit_at(A, "/api/a", 0));
        assert!(!shared.admit_at(B, "/api/b", 0));
        assert!(shared.admit_at(A, "/other", 0));
    }

    #[test]
    fn every_matching_rule_must_have_a_token_and_rejection_costs_nothing() {
        let l = limiter(vec![
            rule(RateRuleKind::SourceIp, 100, 5, 1, 1000),
            rule(
                RateRuleKind::AnyMatchingUri {
                    pattern: "^/scarce".into(),
                },
                100,
                1,
                1,
                1000,
            ),
        ]);
        assert!(l.admit_at(A, "/scarce", 0));
        // The shared bucket is empty: rejected, and A's own bucket keeps its tokens.
        for _ in 0..3 {
            assert!(!l.admit_at(A, "/scarce", 0));
        }
        for i in 0..4 {
            assert!(l.admit_at(A, "/plenty", 0), "token {i} of the remaining 4");
        }
        assert!(!l.admit_at(A, "/plenty", 0));
    }

    #[test]
    fn max_buckets_evicts_the_least_recently_used() {
        let l = limiter(vec![rule(RateRuleKind::SourceIp, 2, 1, 1, 1000)]);
        let c = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3)));
        assert!(l.admit_at(A, "/", 0));
        assert!(l.admit_at(B, "/", 0));
        assert!(!l.admit_at(A, "/", 0)); // A is now the most recently used
        assert!(l.admit_at(c, "/", 0)); // evicts B
        assert_eq!(l.rules[0].lock().len(), 2);
        assert!(
            l.admit_at(B, "/", 0),
            "B's bucket was evicted and starts full"
        );
        assert!(!l.admit_at(B, "/", 0));
    }

    #[test]
    fn bad_regex_is_an_error() {
        let err = RateLimiter::build(&RateLimiting {
            timeout_millis: None,
            rules: vec![rule(
                RateRuleKind::SpecificUri {
                    pattern: "(".into(),
                },
                1,
                1,
                1,
                1,
            )],
        });
        assert!(matches!(err, Err(RateLimitError::Regex { .. })));
    }
}

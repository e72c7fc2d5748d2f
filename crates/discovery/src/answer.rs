//! From DNS records to a backend set, and when to ask again: pure functions,
//! no I/O. SRV priority tiers, weight reduction, TTL clamping, backoff.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use river_ipc::{DiscoveredBackend, MAX_DISCOVERED_BACKENDS, MAX_DISCOVERED_WEIGHT};

/// Failed lookups are retried after the service's min-ttl-ms, doubling, at
/// most this long (or max-ttl-ms if shorter, or min-ttl-ms if longer): a DNS
/// server that comes back is followed within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One SRV record, as far as selection cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target's name, lower case, to find its addresses.
    pub target: String,
}

/// The records of the lowest priority value (RFC 2782: the most preferred
/// tier; the others are fallbacks, used only when it is empty).
pub fn lowest_priority(records: &[SrvRecord]) -> Vec<&SrvRecord> {
    let Some(lowest) = records.iter().map(|r| r.priority).min() else {
        return Vec::new();
    };
    records.iter().filter(|r| r.priority == lowest).collect()
}

/// Whether an address can be a backend: not 0.0.0.0/::, multicast or broadcast.
pub fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// A backend set from `(address, raw weight)` pairs: unusable addresses and
/// port 0 dropped, the weights of an address given twice added, weights
/// reduced to `1..=MAX_DISCOVERED_WEIGHT` keeping their ratios (divided by
/// their greatest common divisor, then scaled down if still larger), sorted by
/// address, at most `MAX_DISCOVERED_BACKENDS` (the lowest addresses: the same
/// cut on every run). An SRV weight of 0 counts as the smallest weight, 1.
pub fn backend_set(entries: impl IntoIterator<Item = (SocketAddr, u32)>) -> Vec<DiscoveredBackend> {
    let mut summed: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for (address, weight) in entries {
        if address.port() == 0 || !usable(address.ip()) {
            continue;
        }
        *summed.entry(address).or_default() += u64::from(weight);
    }
    let mut entries: Vec<(SocketAddr, u64)> = summed.into_iter().collect();
    entries.truncate(MAX_DISCOVERED_BACKENDS);
    let divisor = entries
        .iter()
        .map(|(_, w)| *w)
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let largest = entries.iter().map(|(_, w)| *w / divisor).max().unwrap_or(1);
    let cap = u64::from(MAX_DISCOVERED_WEIGHT);
    entries
        .into_iter()
        .map(|(address, weight)| {
            let mut weight = weight / divisor;
            if largest > cap {
                weight = (weight * cap + largest / 2) / largest;
            }
            DiscoveredBackend {
                address,
                weight: weight.clamp(1, cap) as u16,
            }
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A record's TTL clamped to the service's `[min, max]`.
pub fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.clamp(min, max.max(min))
}

/// The wait before the next try after `failures` failed lookups in a row
/// (1 or more): min-ttl-ms, doubling, capped at
/// `max(min, min(max, MAX_BACKOFF))`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let cap = max.min(MAX_BACKOFF).max(min);
    let exponent = failures.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << exponent).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn weights(set: &[DiscoveredBackend]) -> Vec<u16> {
        set.iter().map(|b| b.weight).collect()
    }

    #[test]
    fn sets_are_sorted_deduplicated_and_filtered() {
        let set = backend_set([
            (a("127.0.0.3:80"), 1),
            (a("127.0.0.2:80"), 1),
            (a("127.0.0.2:80"), 1),
            (a("0.0.0.0:80"), 1),
            (a("224.0.0.1:80"), 1),
            (a("127.0.0.4:0"), 1),
            (a("[::]:80"), 1),
        ]);
        let addresses: Vec<_> = set.iter().map(|b| b.address).collect();
        assert_eq!(addresses, [a("127.0.0.2:80"), a("127.0.0.3:80")]);
        assert_eq!(weights(&set), [2, 1]);
    }

    #[test]
    fn weights_keep_their_ratio_within_bounds() {
        let w = |raw: &[u32]| {
            let entries = raw
                .iter()
                .enumerate()
                .map(|(i, w)| (SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)), *w));
            weights(&backend_set(entries))
        };
        assert_eq!(w(&[10, 30]), [1, 3]);
        assert_eq!(w(&[1, 3]), [1, 3]);
        assert_eq!(w(&[0, 0]), [1, 1]);
        assert_eq!(w(&[0, 5]), [1, 1]);
        assert_eq!(w(&[0, 60]), [1, 1]);
        assert_eq!(w(&[1, 65535]), [1, 256]);
        assert_eq!(w(&[20000, 60000]), [1, 3]);
        assert_eq!(w(&[1000, 1001]), [256, 256]);
        assert_eq!(w(&[7]), [1]);
    }

    #[test]
    fn no_more_than_the_limit() {
        let entries = (0..2000u32).map(|i| {
            (
                SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8 + 1], 80)),
                1,
            )
        });
        assert_eq!(backend_set(entries).len(), MAX_DISCOVERED_BACKENDS);
    }

    #[test]
    fn the_lowest_priority_tier_only() {
        let r = |priority, weight| SrvRecord {
            priority,
            weight,
            port: 80,
            target: "t".into(),
        };
        let records = [r(20, 1), r(10, 1), r(10, 3)];
        let tier = lowest_priority(&records);
        assert_eq!(tier.len(), 2);
        assert!(tier.iter().all(|r| r.priority == 10));
        assert!(lowest_priority(&[]).is_empty());
    }

    #[test]
    fn ttl_and_backoff() {
        let ms = Duration::from_millis;
        assert_eq!(clamp_ttl(ms(0), ms(1000), ms(60000)), ms(1000));
        assert_eq!(clamp_ttl(ms(5000), ms(1000), ms(60000)), ms(5000));
        assert_eq!(clamp_ttl(ms(3_600_000), ms(1000), ms(60000)), ms(60000));
        assert_eq!(backoff(1, ms(1000), ms(60000)), ms(1000));
        assert_eq!(backoff(2, ms(1000), ms(60000)), ms(2000));
        assert_eq!(backoff(5, ms(1000), ms(60000)), ms(16000));
        assert_eq!(backoff(9, ms(1000), ms(60000)), MAX_BACKOFF);
        assert_eq!(backoff(9, ms(1000), ms(2000)), ms(2000));
        assert_eq!(backoff(u32::MAX, ms(100_000), ms(200_000)), ms(100_000));
    }
}

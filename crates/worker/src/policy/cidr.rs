//! `block-cidr-range` request filters: client networks that get 403.

use std::net::IpAddr;

use ipnet::IpNet;

/// The networks of every `block-cidr-range` filter of a service, merged.
#[derive(Debug, Clone, Default)]
pub struct CidrBlocklist(Vec<IpNet>);

impl CidrBlocklist {
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        // Merging overlapping ranges keeps the per-request scan short.
        CidrBlocklist(IpNet::aggregate(&networks.into_iter().collect()))
    }

    /// True when `client` falls inside a blocked network. An IPv4 client seen
    /// on an IPv6 socket (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn blocks(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.0.iter().any(|net| net.contains(&client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> CidrBlocklist {
        CidrBlocklist::new(nets.iter().map(|n| n.parse::<IpNet>().unwrap()))
    }

    #[test]
    fn ipv4_ranges_and_single_addresses() {
        let blocked = list(&["192.168.0.0/16", "10.0.0.0/8", "203.0.113.7/32"]);
        assert!(blocked.blocks("192.168.44.1".parse().unwrap()));
        assert!(blocked.blocks("10.255.255.255".parse().unwrap()));
        assert!(blocked.blocks("203.0.113.7".parse().unwrap()));
        assert!(!blocked.blocks("203.0.113.8".parse().unwrap()));
        assert!(!blocked.blocks("192.169.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_ranges() {
        let blocked = list(&["2001:db8::/32", "::1/128"]);
        assert!(blocked.blocks("2001:db8:1::5".parse().unwrap()));
        assert!(blocked.blocks("::1".parse().unwrap()));
        assert!(!blocked.blocks("2001:db9::1".parse().unwrap()));
        assert!(!blocked.blocks("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_ranges() {
        let blocked = list(&["127.0.0.0/8"]);
        assert!(blocked.blocks("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!blocked.blocks("::ffff:128.0.0.1".parse().unwrap()));
    }

    #[test]
    fn empty_blocks_nothing() {
        let blocked = list(&[]);
        assert!(!blocked.blocks("127.0.0.1".parse().unwrap()));
    }
}

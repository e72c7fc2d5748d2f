//! DNS lookups with hickory-resolver: a name to its backends and TTL. No
//! timing policy here (see `follow` in lib.rs), no hand-written DNS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{ResolveError, TokioResolver};
use river_config::{Discovery, DnsName};
use river_ipc::DiscoveredBackend;

use crate::answer::{backend_set, lowest_priority, SrvRecord};

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("NXDOMAIN: `{0}` does not exist")]
    NxDomain(String),
    #[error("no {1} record for `{0}`")]
    NoRecords(String, &'static str),
    #[error("{0}")]
    Dns(ResolveError),
    #[error("the answer has no usable address")]
    Empty,
    #[error("reading the system's resolver configuration: {0}")]
    SystemConfig(ResolveError),
}

/// A resolver for one service's `discovery "Dns"` settings.
pub struct Resolver {
    inner: TokioResolver,
    /// An explicit resolver gets absolute names (no search domains); the
    /// system's applies its resolv.conf rules.
    absolute: bool,
}

impl Resolver {
    pub fn new(settings: &Discovery) -> Result<Resolver, LookupError> {
        let (config, mut options) = match settings.resolver {
            Some(server) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
                let mut options = ResolverOpts::default();
                options.use_hosts_file = ResolveHosts::Never;
                (ResolverConfig::from_parts(None, vec![], servers), options)
            }
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(LookupError::SystemConfig)?,
        };
        let timeout = Duration::from_millis(settings.resolve_timeout_ms);
        // Each try within the resolve timeout; the caller enforces the total.
        options.timeout = (timeout / 2).max(Duration::from_millis(100));
        options.attempts = 2;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Every lookup asks the server: the TTL policy is River's (min/max).
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::from_millis(settings.max_ttl_ms));
        let inner = TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build();
        Ok(Resolver {
            inner,
            absolute: settings.resolver.is_some(),
        })
    }

    fn query_name(&self, name: &str) -> String {
        if self.absolute && !name.ends_with('.') {
            format!("{name}.")
        } else {
            name.to_string()
        }
    }

    /// The backends `name` stands for now, and the smallest TTL of the
    /// records that said so.
    pub async fn lookup(
        &self,
        name: &DnsName,
    ) -> Result<(Vec<DiscoveredBackend>, Duration), LookupError> {
        let (set, ttl) = match name {
            DnsName::Host { host, port } => {
                let (ips, ttl) = self.addresses(host).await?;
                let set = backend_set(ips.into_iter().map(|ip| (SocketAddr::new(ip, *port), 1)));
                (set, ttl)
            }
            DnsName::Srv { name } => self.srv(name).await?,
        };
        if set.is_empty() {
            return Err(LookupError::Empty);
        }
        Ok((set, ttl))
    }

    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), LookupError> {
        let lookup = self
            .inner
            .lookup_ip(self.query_name(host))
            .await
            .map_err(|e| explain(e, host, "A or AAAA"))?;
        let ttl = min_ttl(lookup.as_lookup().records().iter().map(|r| r.ttl()));
        Ok((lookup.iter().collect(), ttl))
    }

    /// SRV: the lowest priority tier's targets, each on its record's port with
    /// its record's weight. Target addresses come from the answer's
    /// additional records when there, else from a lookup of their own.
    async fn srv(&self, name: &str) -> Result<(Vec<DiscoveredBackend>, Duration), LookupError> {
        let lookup = self
            .inner
            .srv_lookup(self.query_name(name))
            .await
            .map_err(|e| explain(e, name, "SRV"))?;
        let records: Vec<SrvRecord> = lookup
            .iter()
            .map(|srv| SrvRecord {
                priority: srv.priority(),
                weight: srv.weight(),
                port: srv.port(),
                target: srv.target().to_lowercase().to_ascii(),
            })
            .collect();
        let mut ttl = min_ttl(lookup.as_lookup().records().iter().map(|r| r.ttl()));
        let mut known: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for record in lookup.as_lookup().records() {
            let ip = match record.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            known
                .entry(record.name().to_lowercase().to_ascii())
                .or_default()
                .push(ip);
        }
        let mut entries = Vec::new();
        for record in lowest_priority(&records) {
            let ips = match known.get(&record.target) {
                Some(ips) => ips.clone(),
                None => {
                    let (ips, target_ttl) = self.addresses(&record.target).await?;
                    ttl = ttl.min(target_ttl);
                    known.insert(record.target.clone(), ips.clone());
                    ips
                }
            };
            for ip in ips {
                entries.push((SocketAddr::new(ip, record.port), u32::from(record.weight)));
            }
        }
        Ok((backend_set(entries), ttl))
    }
}

/// hickory's error, said for an operator: the two common answers plainly.
fn explain(err: ResolveError, name: &str, kind: &'static str) -> LookupError {
    if err.is_nx_domain() {
        LookupError::NxDomain(name.to_string())
    } else if err.is_no_records_found() {
        LookupError::NoRecords(name.to_string(), kind)
    } else {
        LookupError::Dns(err)
    }
}

fn min_ttl(ttls: impl Iterator<Item = u32>) -> Duration {
    Duration::from_secs(u64::from(ttls.min().unwrap_or(0)))
}

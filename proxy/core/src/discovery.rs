//! Upstream discovery (SPEC §13): which names the config asks to resolve, how often, and the answers in force.
//!
//! The lookups themselves are the proxy's (in the background, never on the request path); what an answer
//! means is decided here: a good answer replaces the one in force, a failed or empty one keeps it (a name
//! that vanishes is far more often a resolver's trouble than a fleet scaled to nothing), and the addresses
//! of an answer are kept sorted, so neither the resolver's order nor a map's can move traffic.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{Config, ServerEntry};
use crate::upstream::ServerAddr;

/// How often a name is resolved when its entry does not say (and plain `host:port` hostnames always).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Most addresses taken from one answer.
pub const MAX_ANSWER: usize = 256;

/// A name the config asks to resolve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Name {
    /// `dns: "host:port"`: every A/AAAA address of `host` is a server on `port`.
    Dns {
        /// The name.
        host: String,
        /// The servers' port.
        port: u16,
    },
    /// `srv: "_service._proto.name"`: every target of the SRV records, on its own port.
    Srv(String),
    /// A plain `host:port` server whose host is a name: one server, its address resolved in the background.
    Host(String),
}

impl Name {
    /// The host its servers are known by (SNI, the checks' `Host`): the name itself.
    pub fn host(&self) -> &str {
        match self {
            Name::Dns { host, .. } | Name::Host(host) => host,
            Name::Srv(name) => name,
        }
    }

    /// Whether its answer is a list of servers, so that a change rebuilds the groups; a plain hostname's is
    /// one server's address, read where it is used.
    pub fn lists_servers(&self) -> bool {
        !matches!(self, Name::Host(_))
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Name::Dns { host, port } => write!(f, "dns:{host}:{port}"),
            Name::Srv(name) => write!(f, "srv:{name}"),
            Name::Host(host) => f.write_str(host),
        }
    }
}

/// One name to resolve, how often, and the groups that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The name.
    pub name: Name,
    /// Time between lookups (the shortest any entry of it asks for).
    pub refresh: Duration,
    /// The upstream groups it gives servers to (for the error counter's label), in config order.
    pub upstreams: Vec<String>,
}

/// Every name `config` asks to resolve, each once, in a fixed order.
pub fn wanted(config: &Config) -> Vec<Wanted> {
    let mut out: BTreeMap<Name, Wanted> = BTreeMap::new();
    for (group, u) in &config.upstreams {
        for entry in &u.servers {
            let (name, refresh) = match entry {
                ServerEntry::Discovered(d) => match d.name() {
                    Some(name) => (name, d.refresh_secs.map_or(DEFAULT_REFRESH, Duration::from_secs)),
                    None => continue,
                },
                other => match ServerAddr::parse(other.address()) {
                    Ok(addr) if addr.ip.is_none() => (Name::Host(addr.host), DEFAULT_REFRESH),
                    _ => continue,
                },
            };
            let w = out.entry(name.clone()).or_insert_with(|| Wanted { name, refresh, upstreams: Vec::new() });
            w.refresh = w.refresh.min(refresh).max(Duration::from_secs(1));
            if !w.upstreams.contains(group) {
                w.upstreams.push(group.clone());
            }
        }
    }
    out.into_values().collect()
}

/// What a lookup's outcome did to the answers in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A good answer that differs from the one in force: the servers change.
    Changed,
    /// A good answer equal to the one in force.
    Same,
    /// A failed or empty lookup: the answer in force (`kept` addresses) stays.
    Failed {
        /// How many addresses the kept answer has (0: the name never resolved).
        kept: usize,
    },
}

/// The answers in force, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers(BTreeMap<Name, Vec<SocketAddr>>);

impl Answers {
    /// Records a lookup of `name`: a good answer replaces the one in force, a failure or an empty answer keeps
    /// it. For [`Name::Host`] the addresses' ports are not used.
    pub fn record(&mut self, name: &Name, result: Result<Vec<SocketAddr>, String>) -> Outcome {
        match result {
            Ok(mut addrs) if !addrs.is_empty() => {
                addrs.sort_unstable();
                addrs.dedup();
                addrs.truncate(MAX_ANSWER);
                match self.0.get(name) {
                    Some(old) if *old == addrs => Outcome::Same,
                    _ => {
                        self.0.insert(name.clone(), addrs);
                        Outcome::Changed
                    }
                }
            }
            _ => Outcome::Failed { kept: self.0.get(name).map_or(0, Vec::len) },
        }
    }

    /// Forgets the names `wanted` no longer lists (a reload removed their entries); returns whether any went.
    pub fn retain(&mut self, wanted: &[Wanted]) -> bool {
        let before = self.0.len();
        self.0.retain(|name, _| wanted.iter().any(|w| w.name == *name));
        self.0.len() != before
    }

    /// The address in force for a plain hostname.
    pub fn host(&self, host: &str) -> Option<IpAddr> {
        self.0.get(&Name::Host(host.to_owned())).and_then(|a| a.first()).map(SocketAddr::ip)
    }

    /// Writes the answers into every `dns`/`srv` entry of `config` (what compiling it expands them to).
    pub fn fill(&self, config: &mut Config) {
        for u in config.upstreams.values_mut() {
            for entry in &mut u.servers {
                if let ServerEntry::Discovered(d) = entry {
                    d.resolved = d.name().and_then(|n| self.0.get(&n)).cloned().unwrap_or_default();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

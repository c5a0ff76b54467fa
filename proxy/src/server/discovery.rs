//! Upstream discovery (SPEC §13): the names of `dns`/`srv` entries and plain hostnames are resolved in the
//! background, each at its `refresh_secs`; an answer that changes the servers is applied as the config in
//! force with the new answer (health and counters of every server that stays are carried over, new ones are
//! checked, vanished ones drain with the runtime their requests hold). What an answer means is the core's
//! ([`locci_core::discovery`]); the lookups go through the [`Resolver`] seam, so the simulator can answer them.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use locci_core::discovery::{Name, Outcome, Wanted, wanted};

use crate::app::Shared;

/// How often the loop looks for names that are due.
pub const TICK: Duration = Duration::from_secs(1);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);

/// How names are resolved.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    /// The A and AAAA addresses of `host`, asking `server` (or the system's configuration).
    async fn ips(&self, server: Option<SocketAddr>, host: &str) -> io::Result<Vec<IpAddr>>;
    /// The targets and ports of `name`'s SRV records.
    async fn srv(&self, server: Option<SocketAddr>, name: &str) -> io::Result<Vec<(String, u16)>>;
}

/// The production resolver: hickory, with no cache of its own (each refresh asks), against `server.resolver`
/// or `/etc/resolv.conf` (and `/etc/hosts`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

impl DnsResolver {
    fn build(server: Option<SocketAddr>) -> io::Result<TokioResolver> {
        let mut builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                Hickory::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(io::Error::other)?,
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(2);
        options.attempts = 1;
        builder.build().map_err(io::Error::other)
    }
}

#[async_trait]
impl Resolver for DnsResolver {
    async fn ips(&self, server: Option<SocketAddr>, host: &str) -> io::Result<Vec<IpAddr>> {
        let answer = Self::build(server)?.lookup_ip(host).await.map_err(io::Error::other)?;
        Ok(answer.iter().collect())
    }

    async fn srv(&self, server: Option<SocketAddr>, name: &str) -> io::Result<Vec<(String, u16)>> {
        let answer = Self::build(server)?.srv_lookup(name).await.map_err(io::Error::other)?;
        Ok(answer
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((srv.target.to_utf8().trim_end_matches('.').to_owned(), srv.port)),
                _ => None,
            })
            .collect())
    }
}

/// Resolves `name` into the addresses its servers are.
async fn lookup(resolver: &dyn Resolver, server: Option<SocketAddr>, name: &Name) -> Result<Vec<SocketAddr>, String> {
    let found = match name {
        Name::Dns { host, port } => {
            resolver.ips(server, host).await.map(|ips| ips.into_iter().map(|ip| SocketAddr::new(ip, *port)).collect())
        }
        Name::Host(host) => {
            resolver.ips(server, host).await.map(|ips| ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
        }
        Name::Srv(srv) => match resolver.srv(server, srv).await {
            Ok(targets) => {
                let mut out = Vec::new();
                for (target, port) in targets {
                    // A target that does not resolve is left out; the others still serve.
                    if let Ok(ips) = resolver.ips(server, &target).await {
                        out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)));
                    }
                }
                Ok(out)
            }
            Err(e) => Err(e),
        },
    };
    found.map_err(|e| e.to_string())
}

/// Resolves every name the config in force asks for, each when it is due, until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let mut next: BTreeMap<Name, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let runtime = shared.runtime();
        let names = wanted(runtime.config());
        shared.forget_answers(&names);
        next.retain(|name, _| names.iter().any(|w| w.name == *name));
        let server = runtime.config().server.resolver.as_deref().and_then(|r| r.parse().ok());
        let mut changed = false;
        for w in &names {
            let now = shared.env.clock.now();
            if next.get(&w.name).is_some_and(|at| now < *at) {
                continue;
            }
            let result =
                match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&*shared.env.resolver, server, &w.name)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
                };
            let failed = result.as_ref().err().cloned();
            let outcome = shared.record_answer(&w.name, result);
            next.insert(w.name.clone(), shared.env.clock.now() + w.refresh);
            changed |= report(&shared, w, outcome, failed.as_deref());
        }
        if changed {
            shared.rediscover();
        }
    }
}

/// Logs and counts a lookup's outcome; returns whether the servers change.
fn report(shared: &Shared, w: &Wanted, outcome: Outcome, error: Option<&str>) -> bool {
    let name = w.name.to_string();
    match outcome {
        Outcome::Changed => {
            tracing::info!(name = %name, upstreams = ?w.upstreams, "discovered servers changed");
            w.name.lists_servers()
        }
        Outcome::Same => false,
        Outcome::Failed { kept } => {
            for upstream in &w.upstreams {
                shared.metrics.discovery_error(upstream);
            }
            let error = error.unwrap_or("no addresses in the answer");
            if kept > 0 {
                tracing::warn!(name = %name, error, kept, "DNS refresh failed; the last good answer is kept");
            } else {
                tracing::warn!(name = %name, error, "name does not resolve; it gives no servers until it does");
            }
            false
        }
    }
}

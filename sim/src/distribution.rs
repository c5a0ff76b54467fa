//! `locci-sim distribution`: the share of requests each server of each group would get, with every server up
//! and with each one down in turn: the load-balancing what-if (SPEC §11).
//!
//! The shares come from the group's own selection code (`Pool::select`, the function the proxy calls per
//! request) over a fixed stream of synthetic requests, not from a formula: weights, the turn of round robin,
//! ketama's ring, slow start and panic mode all act as they do in the proxy. A server is taken down the way
//! failed active checks take it down (`Pool::mark_down`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use locci_core::Runtime;
use locci_core::clock::{ManualClock, SeededEntropy};
use locci_core::config::Strategy;
use locci_core::profile::TrafficProfile;
use locci_core::request::{HeaderPairs, RequestInfo};
use locci_core::upstream::{GroupSpec, HashKey, InFlight, Pool};
use serde::Serialize;

/// Requests drawn per case.
pub const REQUESTS: usize = 10_000;
/// Requests held in flight at once, released oldest first (what `least_request` balances on).
pub const IN_FLIGHT: usize = 4;

/// Every strategy, in the order the config reference lists them.
pub const STRATEGIES: [Strategy; 5] =
    [Strategy::RoundRobin, Strategy::Weighted, Strategy::Random, Strategy::LeastRequest, Strategy::Consistent];

/// The shares of one group under one strategy.
#[derive(Debug, Clone, Serialize)]
pub struct GroupShares {
    /// The group.
    pub group: String,
    /// The strategy.
    pub strategy: Strategy,
    /// Whether this is the strategy the config sets.
    pub configured: bool,
    /// The group's requests per minute over the profile's last hour (with `--profile`).
    pub per_minute: Option<f64>,
    /// The servers, in config order.
    pub servers: Vec<String>,
    /// One case per column: everything up, then each server down.
    pub cases: Vec<Case>,
}

/// One what-if.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// The server taken down, or `None` with all up.
    pub down: Option<String>,
    /// Share of each server (config order), 0 to 1.
    pub shares: Vec<f64>,
    /// Share of requests no server could take (503).
    pub unserved: f64,
}

/// The shares of every group of `runtime` (its own strategy, or every strategy).
pub fn shares(runtime: &Runtime, all_strategies: bool, profile: Option<&TrafficProfile>) -> Vec<GroupShares> {
    let mut out = Vec::new();
    for pool in runtime.pools() {
        let spec = pool.spec();
        let per_minute = profile.map(|p| group_rate(runtime, p, pool.name()));
        let strategies: Vec<Strategy> = if all_strategies { STRATEGIES.to_vec() } else { vec![spec.strategy] };
        for strategy in strategies {
            let spec = GroupSpec { strategy, ..spec.clone() };
            let mut cases = vec![case(&spec, None)];
            if spec.servers.len() > 1 {
                cases.extend((0..spec.servers.len()).map(|down| case(&spec, Some(down))));
            }
            out.push(GroupShares {
                group: spec.name.clone(),
                strategy,
                configured: strategy == pool.spec().strategy,
                per_minute,
                servers: spec.servers.iter().map(|(a, _)| a.text.clone()).collect(),
                cases,
            });
        }
    }
    out
}

/// The group's requests per minute, averaged over the profile's hour, from the routes that send to it.
fn group_rate(runtime: &Runtime, profile: &TrafficProfile, group: &str) -> f64 {
    let routes: Vec<&str> = runtime.routes().iter().filter(|r| &*r.upstream == group).map(|r| &*r.name).collect();
    let total: u64 = profile
        .routes
        .iter()
        .filter(|r| routes.contains(&r.route.as_str()))
        .map(|r| r.per_minute.iter().sum::<u64>())
        .sum();
    total as f64 / profile.window_minutes.max(1) as f64
}

/// Runs the synthetic requests through a fresh pool of `spec` with server `down` (if any) down.
fn case(spec: &GroupSpec, down: Option<usize>) -> Case {
    let now: Instant = locci_core::clock::Clock::now(&ManualClock::default());
    let pool = Arc::new(Pool::new(spec.clone(), None, None));
    if let Some(down) = down {
        pool.mark_down(down, now);
    }
    let entropy = SeededEntropy::new(1);
    let mut counts = vec![0u64; spec.servers.len()];
    let mut unserved = 0u64;
    let mut held: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
    let header = match &spec.hash_key {
        HashKey::Header(name) => Some(name.clone()),
        _ => None,
    };
    for i in 0..REQUESTS {
        // Distinct clients, paths and header values, so a consistent hash sees a spread of keys.
        let value = format!("k{i}");
        let path = format!("/{value}");
        let pairs: Vec<(&str, &str)> = header.iter().map(|h| (h.as_str(), value.as_str())).collect();
        let headers = HeaderPairs(&pairs);
        let ip = IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8));
        let req = RequestInfo { method: "GET", path: &path, query: None, client_ip: ip, headers: &headers };
        match pool.select(&req, &[], &entropy, now) {
            Some(idx) => {
                counts[idx] += 1;
                held.push_back(pool.begin(idx));
                if held.len() > IN_FLIGHT {
                    held.pop_front();
                }
            }
            None => unserved += 1,
        }
    }
    let n = REQUESTS as f64;
    Case {
        down: down.and_then(|d| spec.servers.get(d)).map(|(a, _)| a.text.clone()),
        shares: counts.iter().map(|c| *c as f64 / n).collect(),
        unserved: unserved as f64 / n,
    }
}

/// The shares as tables, one per group and strategy.
pub fn text(groups: &[GroupShares]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for g in groups {
        let strategy = serde_json::to_value(g.strategy).ok().and_then(|v| v.as_str().map(String::from));
        let _ = write!(
            out,
            "group {} ({}{})",
            g.group,
            strategy.unwrap_or_default(),
            if g.configured { ", configured" } else { "" }
        );
        if let Some(rate) = g.per_minute {
            let _ = write!(out, ", {rate:.1} req/min in the profile");
        }
        out.push('\n');
        let width = g.servers.iter().map(String::len).max().unwrap_or(6).max(6);
        let _ = write!(out, "  {:width$}", "server");
        for c in &g.cases {
            let head = c.down.as_ref().map_or("all up".to_string(), |d| format!("{d} down"));
            let _ = write!(out, "  {head:>w$}", w = head.len().max(8));
        }
        out.push('\n');
        let cell = |share: f64| -> String {
            let pct = format!("{:.1}%", share * 100.0);
            match g.per_minute {
                Some(rate) => format!("{pct} ({:.0}/min)", share * rate),
                None => pct,
            }
        };
        for (i, server) in g.servers.iter().enumerate() {
            let _ = write!(out, "  {server:width$}");
            for c in &g.cases {
                let head = c.down.as_ref().map_or("all up".len(), |d| d.len() + 5).max(8);
                let value = if c.down.as_deref() == Some(server) { "down".to_string() } else { cell(c.shares[i]) };
                let _ = write!(out, "  {value:>head$}");
            }
            out.push('\n');
        }
        if g.cases.iter().any(|c| c.unserved > 0.0) {
            let _ = write!(out, "  {:width$}", "(503)");
            for c in &g.cases {
                let head = c.down.as_ref().map_or("all up".len(), |d| d.len() + 5).max(8);
                let _ = write!(out, "  {:>head$}", cell(c.unserved));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The same, keyed for tools: `{group: [shares per strategy]}`.
pub fn json(groups: &[GroupShares]) -> serde_json::Value {
    let mut by_group: BTreeMap<&str, Vec<&GroupShares>> = BTreeMap::new();
    for g in groups {
        by_group.entry(&g.group).or_default().push(g);
    }
    serde_json::to_value(by_group).unwrap_or_default()
}

//! One upstream group at run time: its servers with health and in-flight counts, and its selector.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServerAddr;
use super::health::{HealthState, Passive, Thresholds, Transition};
use super::select::Selector;
use crate::config::Strategy;
use crate::request::RequestInfo;

/// Most servers one group may have (ketama indexes nodes with 16 bits; this keeps selection cheap).
pub const MAX_SERVERS: usize = 1024;
/// Most extra attempts a request may make after connect failures.
pub const MAX_RETRIES: u32 = 10;
/// Largest server weight (bounds the weighted schedule to MAX_SERVERS x MAX_WEIGHT entries).
pub const MAX_WEIGHT: u32 = 100;

/// What a consistent-hashing group hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A header's value (lower-case name); the client IP when the header is absent.
    Header(String),
    /// The client IP.
    ClientIp,
    /// The request path.
    Path,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCheck {
    /// Time between checks of a server.
    pub interval: Duration,
    /// Time before a check counts as failed.
    pub timeout: Duration,
    /// HTTP path; `None` = TCP connect.
    pub path: Option<String>,
    /// Thresholds.
    pub thresholds: Thresholds,
}

impl ActiveCheck {
    /// The HTTP path to probe, or `None` for a TCP connect check. Groups with TLS to their servers are
    /// checked by TCP connect: the prober speaks plain HTTP only.
    pub fn http_path(&self, tls: bool) -> Option<&str> {
        if tls { None } else { self.path.as_deref() }
    }
}

/// A group's compiled settings; two equal specs describe the same group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Servers and weights, in config order.
    pub servers: Vec<(ServerAddr, u32)>,
    /// Selection strategy.
    pub strategy: Strategy,
    /// Hash input for consistent.
    pub hash_key: HashKey,
    /// Extra attempts after a connect failure.
    pub retries: u32,
    /// TLS to the servers.
    pub tls: bool,
    /// SNI name.
    pub sni: Option<String>,
    /// CA bundle for verifying the servers.
    pub ca_path: Option<String>,
    /// Active checks.
    pub active: Option<ActiveCheck>,
    /// Passive detection.
    pub passive: Option<Passive>,
}

/// One server of a group at run time.
#[derive(Debug)]
pub struct ServerState {
    /// Its address.
    pub addr: ServerAddr,
    /// Its weight.
    pub weight: u32,
    health: Mutex<HealthState>,
    up: AtomicBool,
    inflight: AtomicU32,
}

impl ServerState {
    /// Whether selection may choose it (the last verdict of its health state).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Requests in flight to it.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    fn update(&self, now: Instant, f: impl FnOnce(&mut HealthState) -> Option<Transition>) -> Option<Transition> {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let transition = f(&mut health);
        self.up.store(health.is_up(now), Ordering::Release);
        transition
    }
}

/// A group of servers with their health, shared by every request and the health driver.
#[derive(Debug)]
pub struct Pool {
    spec: GroupSpec,
    servers: Vec<ServerState>,
    selector: Selector,
}

impl Pool {
    /// Builds a pool; servers also present in `previous` keep their health state.
    pub fn new(spec: GroupSpec, previous: Option<&Pool>) -> Pool {
        let servers = spec
            .servers
            .iter()
            .map(|(addr, weight)| {
                let health = previous
                    .and_then(|p| p.servers.iter().find(|s| s.addr == *addr))
                    .map(|s| s.health.lock().unwrap_or_else(|e| e.into_inner()).clone())
                    .unwrap_or_default();
                let up = previous.and_then(|p| p.servers.iter().find(|s| s.addr == *addr)).is_none_or(|s| s.is_up());
                ServerState {
                    addr: addr.clone(),
                    weight: *weight,
                    health: Mutex::new(health),
                    up: AtomicBool::new(up),
                    inflight: AtomicU32::new(0),
                }
            })
            .collect();
        let selector = Selector::new(spec.strategy, &spec.servers);
        Pool { spec, servers, selector }
    }

    /// The group's settings.
    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    /// The group name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The servers, in config order.
    pub fn servers(&self) -> &[ServerState] {
        &self.servers
    }

    /// Requests in flight to the group.
    pub fn inflight(&self) -> u32 {
        self.servers.iter().map(ServerState::inflight).sum()
    }

    /// Chooses a server that is up and not in `tried`; `None` when there is none.
    pub fn select(&self, req: &RequestInfo<'_>, tried: &[usize], entropy: &dyn crate::clock::Entropy) -> Option<usize> {
        let key = match self.spec.strategy {
            Strategy::Consistent => self.hash_input(req),
            _ => Cow::Borrowed(&[][..]),
        };
        self.selector.select(&self.servers, &key, tried, entropy)
    }

    /// Whether a request that has made `attempts` connect attempts may try another server.
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts <= self.spec.retries
    }

    /// Counts a request in flight to server `idx` until the guard is dropped.
    pub fn begin(self: &Arc<Self>, idx: usize) -> InFlight {
        if let Some(s) = self.servers.get(idx) {
            s.inflight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { pool: Arc::clone(self), idx }
    }

    /// Records an active check of server `idx`.
    pub fn probe(&self, idx: usize, ok: bool, now: Instant) -> Option<Transition> {
        let thresholds = self.spec.active.as_ref()?.thresholds;
        self.servers.get(idx)?.update(now, |h| h.probe(ok, thresholds, now))
    }

    /// Records a live outcome for server `idx` (ok = response below 500).
    pub fn report(&self, idx: usize, ok: bool, now: Instant) -> Option<Transition> {
        let passive = self.spec.passive;
        passive?;
        self.servers.get(idx)?.update(now, |h| h.live(ok, passive, now))
    }

    /// Ends passive ejections whose cooldown is over; returns the servers that came back.
    pub fn tick(&self, now: Instant) -> Vec<(usize, Transition)> {
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_up())
            .filter_map(|(i, s)| s.update(now, |h| h.tick(now)).map(|t| (i, t)))
            .collect()
    }

    fn hash_input<'r>(&self, req: &RequestInfo<'r>) -> Cow<'r, [u8]> {
        match &self.spec.hash_key {
            HashKey::Path => Cow::Borrowed(req.path.as_bytes()),
            HashKey::Header(name) => match req.headers.get(name) {
                Some(v) => Cow::Borrowed(v.as_bytes()),
                None => Cow::Owned(req.client_ip.to_string().into_bytes()),
            },
            HashKey::ClientIp => Cow::Owned(req.client_ip.to_string().into_bytes()),
        }
    }
}

/// A request in flight to one server; dropping it ends the count.
#[derive(Debug)]
pub struct InFlight {
    pool: Arc<Pool>,
    idx: usize,
}

impl InFlight {
    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The server index.
    pub fn server(&self) -> usize {
        self.idx
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = self.pool.servers.get(self.idx) {
            s.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;

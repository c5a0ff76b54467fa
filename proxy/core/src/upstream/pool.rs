//! One upstream group at run time: its servers with health and in-flight counts, and its selector.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ServerAddr;
use super::health::{HealthState, Live, Outlier, Thresholds, Transition};
use super::policy::{CircuitBreaker, Overflow, RetryPolicy};
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
    /// Extra attempts after a connect failure (`retries`; 0 when `retry` is given, which covers it).
    pub retries: u32,
    /// The `retry` policy.
    pub retry: Option<RetryPolicy>,
    /// TLS to the servers.
    pub tls: bool,
    /// SNI name.
    pub sni: Option<String>,
    /// CA bundle for verifying the servers.
    pub ca_path: Option<String>,
    /// Active checks.
    pub active: Option<ActiveCheck>,
    /// Outlier detection (`outlier`, or `passive` as its subset).
    pub outlier: Option<Outlier>,
    /// Below this share of servers up, in percent, balance over all of them (0: off).
    pub panic_threshold_percent: u32,
    /// The circuit breaker.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// A returning server's share ramps up over this window.
    pub slow_start: Option<Duration>,
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
    /// Times `up` changed (kept over a reload): two changes inside one look are not lost on an observer.
    changes: AtomicU64,
    ejected: AtomicBool,
    inflight: AtomicU32,
    /// When its slow start began; `ramping` says, without the lock, whether there is one.
    ramp_from: Mutex<Option<Instant>>,
    ramping: AtomicBool,
}

impl ServerState {
    /// Whether selection may choose it (the last verdict of its health state).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How many times it has changed between up and down.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Requests in flight to it.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Times it was ejected, as its next ejection's length counts them.
    pub fn ejections(&self) -> u32 {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).ejections()
    }

    /// Whether outlier detection holds it out (as of its last change).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Its share of traffic at `now` while a slow start of `window` ramps it, from 0.1 to 1; `None` when
    /// it is not ramping.
    pub fn ramp_share(&self, window: Duration, now: Instant) -> Option<f64> {
        if !self.ramping.load(Ordering::Acquire) {
            return None;
        }
        let from = (*self.ramp_from.lock().unwrap_or_else(|e| e.into_inner()))?;
        let elapsed = now.saturating_duration_since(from);
        if elapsed >= window {
            self.ramping.store(false, Ordering::Release);
            return None;
        }
        Some(0.1 + 0.9 * elapsed.as_secs_f64() / window.as_secs_f64())
    }

    fn start_ramp(&self, now: Instant) {
        *self.ramp_from.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        self.ramping.store(true, Ordering::Release);
    }

    fn update(
        &self,
        now: Instant,
        slow_start: bool,
        f: impl FnOnce(&mut HealthState) -> Option<Transition>,
    ) -> Option<Transition> {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let transition = f(&mut health);
        let up = health.is_up(now);
        // Written only here, under the health lock: a plain load tells whether it changes, and a request
        // whose outcome changes nothing pays no atomic read-modify-write.
        if self.up.load(Ordering::Acquire) != up {
            self.up.store(up, Ordering::Release);
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        self.ejected.store(health.is_ejected(now), Ordering::Release);
        if slow_start && transition == Some(Transition::Up) {
            self.start_ramp(now);
        }
        transition
    }
}

/// A group of servers with their health, shared by every request and the health driver.
#[derive(Debug)]
pub struct Pool {
    spec: GroupSpec,
    servers: Vec<ServerState>,
    selector: Selector,
    /// Requests admitted to the group and not finished.
    requests: AtomicU32,
    /// Of those, the ones that are on a retry.
    retrying: AtomicU32,
}

impl Pool {
    /// Builds a pool; servers also present in `previous` keep their health state (and their slow start).
    /// `reload` is the time of the reload that builds it (`None` at start-up): servers it adds start slow when
    /// the group has `slow_start_secs`.
    pub fn new(spec: GroupSpec, previous: Option<&Pool>, reload: Option<Instant>) -> Pool {
        let servers = spec
            .servers
            .iter()
            .map(|(addr, weight)| {
                let old = previous.and_then(|p| p.servers.iter().find(|s| s.addr == *addr));
                let health =
                    old.map(|s| s.health.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default();
                let ramp_from = match old {
                    Some(s) if s.ramping.load(Ordering::Acquire) => {
                        *s.ramp_from.lock().unwrap_or_else(|e| e.into_inner())
                    }
                    Some(_) => None,
                    None => reload.filter(|_| spec.slow_start.is_some()),
                };
                ServerState {
                    addr: addr.clone(),
                    weight: *weight,
                    up: AtomicBool::new(old.is_none_or(|s| s.is_up())),
                    changes: AtomicU64::new(old.map_or(0, ServerState::changes)),
                    ejected: AtomicBool::new(old.is_some_and(|s| s.is_ejected())),
                    health: Mutex::new(health),
                    inflight: AtomicU32::new(0),
                    ramping: AtomicBool::new(ramp_from.is_some()),
                    ramp_from: Mutex::new(ramp_from),
                }
            })
            .collect();
        let selector = Selector::new(spec.strategy, &spec.servers);
        Pool { spec, servers, selector, requests: AtomicU32::new(0), retrying: AtomicU32::new(0) }
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

    /// Chooses a server that is up and not in `tried`; `None` when there is none. In panic (fewer servers up
    /// than `panic_threshold_percent`) every server not tried may be chosen; a server in its slow start keeps
    /// a choice with the probability of its share, else the choice passes to another server.
    pub fn select(
        &self,
        req: &RequestInfo<'_>,
        tried: &[usize],
        entropy: &dyn crate::clock::Entropy,
        now: Instant,
    ) -> Option<usize> {
        self.choose(req, tried, entropy, now, true)
    }

    /// The servers a request would be sent to now, in order: the first choice, then the one chosen when it
    /// fails, and so on (explain). Chosen by [`Pool::select`]'s own code, without taking a turn; the draws of
    /// the random strategies come from `entropy`.
    pub fn fallback_order(
        &self,
        req: &RequestInfo<'_>,
        entropy: &dyn crate::clock::Entropy,
        now: Instant,
    ) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.servers.len());
        while order.len() < self.servers.len() {
            match self.choose(req, &order, entropy, now, false) {
                Some(pick) if !order.contains(&pick) => order.push(pick),
                _ => break,
            }
        }
        order
    }

    fn choose(
        &self,
        req: &RequestInfo<'_>,
        tried: &[usize],
        entropy: &dyn crate::clock::Entropy,
        now: Instant,
        advance: bool,
    ) -> Option<usize> {
        let key = match self.spec.strategy {
            Strategy::Consistent => self.hash_input(req),
            _ => Cow::Borrowed(&[][..]),
        };
        let panic = self.in_panic();
        let pick = self.selector.select(&self.servers, &key, tried, panic, entropy, advance)?;
        // A consistent-hashing group keeps its affinity: slow start would move keys away and back.
        if let Some(window) = self.spec.slow_start
            && self.spec.strategy != Strategy::Consistent
            && let Some(share) = self.servers[pick].ramp_share(window, now)
            && (entropy.next_u64() % 1_000_000) as f64 >= share * 1_000_000.0
        {
            let mut others = tried.to_vec();
            others.push(pick);
            return self.selector.select(&self.servers, &key, &others, panic, entropy, advance).or(Some(pick));
        }
        Some(pick)
    }

    /// Whether fewer of the group's servers are up than `panic_threshold_percent` (then balancing ignores
    /// health: the `locci_upstream_panic` gauge).
    pub fn in_panic(&self) -> bool {
        let threshold = self.spec.panic_threshold_percent as usize;
        threshold > 0 && self.servers.iter().filter(|s| s.is_up()).count() * 100 < threshold * self.servers.len()
    }

    /// Whether a request that has made `attempts` connect attempts may try another server (`retries`).
    pub fn may_retry(&self, attempts: u32) -> bool {
        attempts <= self.spec.retries
    }

    /// Admits a request to the group, or refuses it when `circuit_breaker.max_requests` are in flight. Only
    /// a group whose `max_requests` or retry budget reads the count keeps it (`None`: nothing to hold).
    pub fn admit(self: &Arc<Self>) -> Result<Option<Slot>, Overflow> {
        let max = self.spec.circuit_breaker.and_then(|c| c.max_requests);
        if max.is_none() && self.spec.retry.as_ref().is_none_or(|r| r.budget.is_none()) {
            return Ok(None);
        }
        let (slot, n) = Slot::take(self, Count::Requests);
        if over(n, max) { Err(Overflow::Requests) } else { Ok(Some(slot)) }
    }

    /// Whether [`Pool::admit`] would refuse a request now, without admitting one (explain).
    pub fn full(&self) -> bool {
        let max = self.spec.circuit_breaker.and_then(|c| c.max_requests);
        over(self.requests.load(Ordering::Acquire) + 1, max)
    }

    fn counter(&self, count: Count) -> &AtomicU32 {
        match count {
            Count::Requests => &self.requests,
            Count::Retries => &self.retrying,
        }
    }

    /// Requests admitted and not finished, and how many of them are on a retry.
    pub fn admitted(&self) -> (u32, u32) {
        (self.requests.load(Ordering::Acquire), self.retrying.load(Ordering::Acquire))
    }

    /// Lets one admitted request go on to retries, or says which limit refuses it: `circuit_breaker.max_retries`
    /// or the budget (retries in flight <= max(min_concurrent, percent x first attempts in flight)).
    pub fn begin_retry(self: &Arc<Self>) -> Result<Slot, Overflow> {
        let (slot, retrying) = Slot::take(self, Count::Retries);
        if self.spec.circuit_breaker.and_then(|c| c.max_retries).is_some_and(|max| retrying > max) {
            return Err(Overflow::Retries);
        }
        let budget = self.spec.retry.as_ref().and_then(|r| r.budget);
        let first_attempts = self.requests.load(Ordering::Acquire).saturating_sub(retrying);
        if budget.is_some_and(|b| retrying > b.allowed(first_attempts)) {
            return Err(Overflow::Budget);
        }
        Ok(slot)
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
        let slow = self.spec.slow_start.is_some();
        self.servers.get(idx)?.update(now, slow, |h| h.probe(ok, thresholds, now))
    }

    /// Takes server `idx` down as failed active checks would (the what-if of `locci-sim distribution`).
    pub fn mark_down(&self, idx: usize, now: Instant) -> Option<Transition> {
        let once = Thresholds { healthy: 1, unhealthy: 1 };
        let slow = self.spec.slow_start.is_some();
        self.servers.get(idx)?.update(now, slow, |h| h.probe(false, once, now))
    }

    /// Records a live outcome for server `idx`; a `Down` answer is an ejection.
    pub fn report(&self, idx: usize, outcome: Live, now: Instant) -> Option<Transition> {
        let outlier = self.spec.outlier?;
        // Only a failure can eject. The others are read from their flags, not their locks, so that two reports
        // never wait on each other.
        let may_eject = outcome != Live::Success
            && self.servers.iter().enumerate().filter(|(i, s)| *i != idx && s.is_ejected()).count()
                < outlier.max_ejected(self.servers.len());
        let slow = self.spec.slow_start.is_some();
        self.servers.get(idx)?.update(now, slow, |h| h.live(outcome, Some(outlier), may_eject, now))
    }

    /// Ends ejections whose time is over; returns the servers that came back.
    pub fn tick(&self, now: Instant) -> Vec<(usize, Transition)> {
        let slow = self.spec.slow_start.is_some();
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_ejected())
            .filter_map(|(i, s)| s.update(now, slow, |h| h.tick(now)).map(|t| (i, t)))
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

/// Which in-flight count of a group a [`Slot`] holds.
#[derive(Debug, Clone, Copy)]
enum Count {
    /// Requests admitted ([`Pool::admit`]).
    Requests,
    /// Requests on their retries ([`Pool::begin_retry`]).
    Retries,
}

/// A request counted in one of its group's in-flight counts; dropping it ends the count.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    count: Count,
}

impl Slot {
    /// Counts one more; returns the slot and the count with it.
    fn take(pool: &Arc<Pool>, count: Count) -> (Slot, u32) {
        let n = pool.counter(count).fetch_add(1, Ordering::AcqRel) + 1;
        (Slot { pool: Arc::clone(pool), count }, n)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.counter(self.count).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the `n`th request in flight is over the circuit breaker's `max_requests`.
fn over(n: u32, max: Option<u32>) -> bool {
    max.is_some_and(|max| n > max)
}

#[cfg(test)]
mod tests;

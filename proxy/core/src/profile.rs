//! The traffic profile (SPEC §11): a bounded summary of what the proxy has seen, kept while it serves and
//! rebuilt from JSON access logs, in one shape, so a preflight can replay an operator's real traffic.
//!
//! Per route: requests per minute over the last hour, the method mix, the status mix, and the rate-limit keys
//! (the top [`TOP_KEYS`] by volume and an estimate of how many there are). Per server: the requests it
//! answered, how many were errors, and a histogram of its latency to the response head. Keys are kept and
//! shown only as hashes: a key can be an API key or a token, and the profile is served over the API.
//!
//! Memory is fixed per route and per server ([`ROUTE_BYTES`], [`SERVER_BYTES`]) whatever the traffic. The
//! counters are atomics; only the key table takes a lock, and only on routes with a rate limit.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::method::METHODS;

/// Minutes of request rate kept per route.
pub const WINDOW_MINUTES: usize = 60;
/// Rate-limit keys listed per route.
pub const TOP_KEYS: usize = 100;
/// Upper bounds of the latency buckets, in microseconds (a last bucket holds everything slower).
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000, 30_000_000,
];
/// Statuses counted one by one; anything else (and "no answer", 0) is counted as 0.
const STATUSES: usize = 600;
/// log2 of the distinct-key estimator's registers: 1024 registers, about 3 % standard error.
const HLL_BITS: u32 = 10;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

/// The memory one route's statistics take, in bytes (stated in the profile itself).
pub const ROUTE_BYTES: usize =
    std::mem::size_of::<RouteStats>() + STATUSES * 8 + TOP_KEYS * 2 * std::mem::size_of::<u64>() + HLL_REGISTERS;
/// The memory one server's statistics take, in bytes.
pub const SERVER_BYTES: usize = std::mem::size_of::<ServerStats>();

/// One route's statistics, shared by every request of the route and carried over reloads by route name.
pub struct RouteStats {
    /// Per minute slot: the minute (unix minutes) in the high 32 bits, its count in the low 32, so a slot
    /// moves to a new minute and counts in one atomic step.
    minutes: [AtomicU64; WINDOW_MINUTES],
    methods: [AtomicU64; METHODS.len() + 1],
    statuses: Box<[AtomicU64]>,
    keys: Mutex<KeyCounts>,
}

impl std::fmt::Debug for RouteStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteStats")
    }
}

impl Default for RouteStats {
    fn default() -> RouteStats {
        RouteStats::new()
    }
}

impl RouteStats {
    /// Empty statistics.
    pub fn new() -> RouteStats {
        RouteStats {
            minutes: std::array::from_fn(|_| AtomicU64::new(0)),
            methods: std::array::from_fn(|_| AtomicU64::new(0)),
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            keys: Mutex::new(KeyCounts::new()),
        }
    }

    /// Counts one request: its method, the status answered (0 = none), when it ended, and the hash of its
    /// rate-limit key when the route has a rate limit.
    pub fn record(&self, method: &str, status: u16, unix_secs: u64, key: Option<u64>) {
        let minute = unix_secs / 60;
        let slot = &self.minutes[(minute % WINDOW_MINUTES as u64) as usize];
        let mut seen = slot.load(Ordering::Relaxed);
        loop {
            let at = seen >> 32;
            if at == minute {
                slot.fetch_add(1, Ordering::Relaxed);
                break;
            }
            if at > minute {
                // A request from a minute this slot has already moved past (the clock stepped back).
                break;
            }
            match slot.compare_exchange_weak(seen, (minute << 32) | 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(METHODS.len());
        self.methods[m].fetch_add(1, Ordering::Relaxed);
        let s = usize::from(status);
        self.statuses[if s < STATUSES { s } else { 0 }].fetch_add(1, Ordering::Relaxed);
        if let Some(key) = key {
            self.keys.lock().unwrap_or_else(PoisonError::into_inner).add(key);
        }
    }

    /// The route's profile, with the last hour ending at `until_unix`.
    pub fn report(&self, route: &str, until_unix: u64) -> RouteProfile {
        let last = until_unix / 60;
        let per_minute: Vec<u64> = (0..WINDOW_MINUTES as u64)
            .rev()
            .map(|back| {
                let minute = last.saturating_sub(back);
                let v = self.minutes[(minute % WINDOW_MINUTES as u64) as usize].load(Ordering::Relaxed);
                if back <= last && v >> 32 == minute { v & 0xffff_ffff } else { 0 }
            })
            .collect();
        let methods: BTreeMap<String, u64> = self
            .methods
            .iter()
            .enumerate()
            .map(|(i, n)| (METHODS.get(i).copied().unwrap_or("other").to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let statuses: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .enumerate()
            .map(|(s, n)| (s.to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        RouteProfile {
            route: route.to_string(),
            requests: methods.values().sum(),
            per_minute,
            methods,
            statuses,
            rate_limit_keys: keys.report(),
        }
    }
}

/// The rate-limit keys of a route: the heaviest by the Space-Saving algorithm (exact while there are at
/// most [`TOP_KEYS`]; past that a count may be over by the smallest count in the table, never under), and a
/// HyperLogLog estimate of how many distinct keys there were.
struct KeyCounts {
    /// The keys and their counts, side by side (a scan of one is a scan of contiguous words).
    keys: Vec<u64>,
    counts: Vec<u64>,
    /// No count in the table is below this (counts only grow, so neither does it), and where the search
    /// for the next key to push out starts: in a flood most counts equal the minimum and the search is short.
    min: u64,
    cursor: usize,
    /// Whether a key was ever pushed out of the table (until then it holds every key, counts exact).
    evicted: bool,
    registers: Box<[u8]>,
}

impl KeyCounts {
    fn new() -> KeyCounts {
        KeyCounts {
            keys: Vec::with_capacity(TOP_KEYS),
            counts: Vec::with_capacity(TOP_KEYS),
            min: 0,
            cursor: 0,
            evicted: false,
            registers: vec![0; HLL_REGISTERS].into_boxed_slice(),
        }
    }

    fn add(&mut self, key: u64) {
        if let Some(i) = self.keys.iter().position(|k| *k == key) {
            self.counts[i] += 1;
        } else if self.keys.len() < TOP_KEYS {
            self.keys.push(key);
            self.counts.push(1);
        } else {
            let i = self.smallest();
            self.keys[i] = key;
            self.counts[i] += 1;
            self.evicted = true;
        }
        // The key is an FNV hash, whose high bits are poorly mixed: the estimator needs uniform bits.
        let h = mix(key);
        let register = (h >> (64 - HLL_BITS)) as usize;
        let rank = ((h << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
        if let Some(r) = self.registers.get_mut(register) {
            *r = (*r).max(rank);
        }
    }

    /// An entry with the smallest count (the table is full).
    fn smallest(&mut self) -> usize {
        let n = self.counts.len();
        for _ in 0..2 {
            for step in 0..n {
                let i = (self.cursor + step) % n;
                if self.counts[i] <= self.min {
                    self.cursor = (i + 1) % n;
                    return i;
                }
            }
            self.min = self.counts.iter().copied().min().unwrap_or(0);
        }
        0
    }

    fn distinct(&self) -> u64 {
        if !self.evicted {
            return self.keys.len() as u64;
        }
        let m = HLL_REGISTERS as f64;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
        // A key was pushed out, so there were more than the table holds.
        (estimate.round() as u64).max(TOP_KEYS as u64 + 1)
    }

    fn report(&self) -> Option<KeyProfile> {
        if self.keys.is_empty() {
            return None;
        }
        let mut top: Vec<KeyCount> = self
            .keys
            .iter()
            .zip(&self.counts)
            .map(|(k, n)| KeyCount { key: format!("{k:016x}"), requests: *n })
            .collect();
        top.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        Some(KeyProfile { distinct: self.distinct(), top })
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// One server's statistics, carried over reloads by group name and address.
#[derive(Default)]
pub struct ServerStats {
    requests: AtomicU64,
    errors: AtomicU64,
    latency_sum_us: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
}

impl std::fmt::Debug for ServerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerStats")
    }
}

/// Whether an answer counts against its server in the profile: a 5xx, the proxy's own 502/503/504 included.
pub fn is_error(status: u16) -> bool {
    status >= 500
}

impl ServerStats {
    /// Counts one request the server answered last: its status and its latency to the response head (none
    /// when no head came).
    pub fn record(&self, status: u16, latency: Option<Duration>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if is_error(status) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(latency) = latency {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
            let bucket = LATENCY_BOUNDS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BOUNDS_US.len());
            self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The server's profile.
    pub fn report(&self, upstream: &str, server: &str) -> ServerProfile {
        let requests = self.requests.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        ServerProfile {
            upstream: upstream.to_string(),
            server: server.to_string(),
            requests,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
            latency_us: LatencyProfile::of(&counts, self.latency_sum_us.load(Ordering::Relaxed)),
        }
    }
}

/// The traffic profile, as `GET /api/v1/traffic-profile` and `locci-sim profile --from-log` give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficProfile {
    /// The end of the window, in unix seconds: now for a running proxy, the last line for a log.
    pub until_unix: u64,
    /// Minutes in `per_minute`.
    pub window_minutes: usize,
    /// The memory the running proxy's statistics take, in bytes (0 from a log).
    #[serde(default)]
    pub memory_bytes: usize,
    /// Per route, by name.
    pub routes: Vec<RouteProfile>,
    /// Per server, by group then address.
    pub servers: Vec<ServerProfile>,
}

/// One route's part of the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteProfile {
    /// The route's name.
    pub route: String,
    /// Requests counted (since the proxy started, or in the log).
    pub requests: u64,
    /// Requests per minute, oldest first; the last is the minute `until_unix` falls in.
    pub per_minute: Vec<u64>,
    /// Requests by method ("other" for a method outside the known ones).
    pub methods: BTreeMap<String, u64>,
    /// Requests by status ("0": no answer was sent).
    pub statuses: BTreeMap<String, u64>,
    /// The rate-limit keys, on a route with a rate limit.
    #[serde(default)]
    pub rate_limit_keys: Option<KeyProfile>,
}

/// The rate-limit keys of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyProfile {
    /// The distinct keys: exact up to [`TOP_KEYS`], past that an estimate (about 3 % error).
    pub distinct: u64,
    /// The heaviest keys, heaviest first, by hash.
    pub top: Vec<KeyCount>,
}

/// One key and its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCount {
    /// The key's hash, as the access log's `rate_key` shows it.
    pub key: String,
    /// Its requests.
    pub requests: u64,
}

/// One server's part of the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerProfile {
    /// The group's name.
    pub upstream: String,
    /// The server's address as configured.
    pub server: String,
    /// Requests it answered last (after any retries).
    pub requests: u64,
    /// Of those, the ones answered with a 5xx.
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// Latency to the response head.
    pub latency_us: LatencyProfile,
}

/// A latency histogram and the quantiles read from it (each the upper bound of its bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyProfile {
    /// Requests timed.
    pub count: u64,
    /// Their mean, in microseconds.
    pub mean: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// The buckets that hold requests: upper bound (`None`: slower than the last bound) and count.
    pub buckets: Vec<LatencyBucket>,
}

/// One bucket of a latency histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    /// Upper bound in microseconds; `None` above the last bound.
    pub le: Option<u64>,
    /// Requests in it.
    pub count: u64,
}

impl LatencyProfile {
    fn of(counts: &[u64], sum_us: u64) -> LatencyProfile {
        let count: u64 = counts.iter().sum();
        let bound = |i: usize| LATENCY_BOUNDS_US.get(i).copied();
        let quantile = |q: f64| -> u64 {
            let rank = (q * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bound(i).unwrap_or(u64::MAX);
                }
            }
            0
        };
        LatencyProfile {
            count,
            mean: sum_us.checked_div(count).unwrap_or(0),
            p50: if count == 0 { 0 } else { quantile(0.5) },
            p90: if count == 0 { 0 } else { quantile(0.9) },
            p99: if count == 0 { 0 } else { quantile(0.99) },
            buckets: counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| LatencyBucket { le: bound(i), count: *c })
                .collect(),
        }
    }
}

/// A profile being built from named routes and servers (a log has no runtime to index them by).
#[derive(Default)]
pub struct ProfileBuilder {
    routes: BTreeMap<String, RouteStats>,
    servers: BTreeMap<(String, String), ServerStats>,
    until_unix: u64,
}

/// One request, as an access log line tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen<'a> {
    /// When it ended, in unix seconds.
    pub unix_secs: u64,
    /// Its route (`None`: it matched none).
    pub route: Option<&'a str>,
    /// Its method.
    pub method: &'a str,
    /// The status answered (0: none).
    pub status: u16,
    /// The hash of its rate-limit key.
    pub rate_key: Option<u64>,
    /// The group and server that answered it last.
    pub server: Option<(&'a str, &'a str)>,
    /// The server's latency to the response head.
    pub upstream_latency: Option<Duration>,
}

impl ProfileBuilder {
    /// Counts one request.
    pub fn add(&mut self, seen: &Seen<'_>) {
        self.until_unix = self.until_unix.max(seen.unix_secs);
        if let Some(route) = seen.route {
            let stats = self.routes.entry(route.to_string()).or_default();
            stats.record(seen.method, seen.status, seen.unix_secs, seen.rate_key);
        }
        if let Some((group, server)) = seen.server {
            let stats = self.servers.entry((group.to_string(), server.to_string())).or_default();
            stats.record(seen.status, seen.upstream_latency);
        }
    }

    /// The profile, with the window ending at the latest request.
    pub fn finish(&self) -> TrafficProfile {
        TrafficProfile {
            until_unix: self.until_unix,
            window_minutes: WINDOW_MINUTES,
            memory_bytes: 0,
            routes: self.routes.iter().map(|(name, s)| s.report(name, self.until_unix)).collect(),
            servers: self.servers.iter().map(|((g, s), stats)| stats.report(g, s)).collect(),
        }
    }
}

/// Why an access log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading failed.
    #[error("reading the log: {0}")]
    Io(#[from] std::io::Error),
    /// A request line lacks a field or has one of the wrong kind.
    #[error("line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// Builds the profile from a JSON access log (`logging.format: json`): the `request` lines of target
/// `locci::request`; other lines (and lines that are not JSON, such as a panic message) are skipped.
pub fn from_log(reader: impl BufRead) -> Result<(TrafficProfile, usize), LogError> {
    let mut builder = ProfileBuilder::default();
    let mut requests = 0;
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value.get("target").and_then(|t| t.as_str()) != Some("locci::request") {
            continue;
        }
        let bad = |why: &str| LogError::Line { line: n + 1, why: why.to_string() };
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).filter(|v| *v != "-");
        let number = |key: &str| match value.get(key) {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        };
        let stamp = text("timestamp").ok_or_else(|| bad("no timestamp"))?;
        let unix_secs = humantime::parse_rfc3339_weak(stamp)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .ok_or_else(|| bad("timestamp is not RFC 3339"))?
            .as_secs();
        let status = number("status").and_then(|s| u16::try_from(s).ok()).ok_or_else(|| bad("no status"))?;
        let rate_key = match text("rate_key") {
            Some(k) => Some(u64::from_str_radix(k, 16).map_err(|_| bad("rate_key is not a hex hash"))?),
            None => None,
        };
        let server = text("upstream").zip(text("server"));
        builder.add(&Seen {
            unix_secs,
            route: text("route"),
            method: text("method").ok_or_else(|| bad("no method"))?,
            status,
            rate_key,
            server,
            upstream_latency: number("upstream_us").map(Duration::from_micros),
        });
        requests += 1;
    }
    Ok((builder.finish(), requests))
}

#[cfg(test)]
mod tests;

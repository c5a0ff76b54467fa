//! Token-bucket rate limiting per key, as GCRA: one integer "theoretical arrival time" per key, so the
//! arithmetic is exact (no float drift) and a bucket is a single number.
//!
//! A bucket of capacity `burst` refilled at `rate` per second admits a request at `now` when its
//! theoretical arrival time `tat` is at most `(burst - 1) * T` ahead of `now` (T = 1 / rate); each admission
//! moves `tat` on by T. Memory is bounded: at most [`MAX_KEYS`] keys per route, keys of at most
//! [`MAX_KEY_LEN`] bytes; buckets that have refilled completely are swept out (they are equal to a new one),
//! and when the table is full of active keys, new keys share one overflow bucket.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::{OnError, RateBackend, RateLimitConfig, SecretUrl};
use crate::request::RequestInfo;

/// Most keys tracked per route.
pub const MAX_KEYS: usize = 100_000;
/// Longest key kept as is; longer keys are hashed.
pub const MAX_KEY_LEN: usize = 256;

/// Compiled rate-limit settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSettings {
    /// Refill per minute.
    pub requests_per_minute: u32,
    /// Capacity.
    pub burst: u32,
    /// Lower-case header that keys the bucket.
    pub key_header: Option<String>,
    /// Time to earn one token.
    pub interval: Duration,
    /// Shared buckets in Redis instead of this process's memory.
    pub remote: Option<RemoteSettings>,
}

/// Where and how shared buckets are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// Redis URL.
    pub url: SecretUrl,
    /// Bucket key prefix.
    pub key_prefix: String,
    /// Longest wait for an answer.
    pub timeout: Duration,
    /// Fallback when the store cannot answer in time.
    pub on_error: OnError,
}

/// Checks a Redis URL without echoing it (it may hold a password): scheme, a host, a port in range, an
/// optional database number.
fn check_redis_url(text: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::InvalidPort => "invalid port",
        url::ParseError::EmptyHost => "no host",
        _ => "not a URL",
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err("unknown scheme");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if url.port() == Some(0) {
        return Err("invalid port");
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err("the path must be a database number");
    }
    Ok(())
}

/// The shared store's answer for one request: admitted or not, and how far the bucket's theoretical
/// arrival time is ahead of now after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreAnswer {
    /// Admitted.
    pub allowed: bool,
    /// Nanoseconds the theoretical arrival time is ahead of now.
    pub ahead_ns: u64,
}

impl RateSettings {
    /// Checks and compiles the section.
    pub fn compile(c: &RateLimitConfig, path: &str, problem: &mut dyn FnMut(String, String)) -> Option<RateSettings> {
        let mut ok = true;
        if c.requests_per_minute == 0 {
            problem(format!("{path}.requests_per_minute"), "must be at least 1".into());
            ok = false;
        }
        if c.burst_size == Some(0) {
            problem(format!("{path}.burst_size"), "must be at least 1".into());
            ok = false;
        }
        if c.key_header.as_deref().is_some_and(str::is_empty) {
            problem(format!("{path}.key_header"), "must not be empty".into());
            ok = false;
        }
        let remote = match (c.backend, &c.redis) {
            (RateBackend::Memory, None) => None,
            (RateBackend::Memory, Some(_)) => {
                problem(format!("{path}.redis"), "is set but backend is memory (set backend: redis)".into());
                ok = false;
                None
            }
            (RateBackend::Redis, None) => {
                problem(format!("{path}.redis"), "backend redis needs a redis section with a url".into());
                ok = false;
                None
            }
            (RateBackend::Redis, Some(r)) => {
                if let Err(why) = check_redis_url(r.url.expose()) {
                    problem(
                        format!("{path}.redis.url"),
                        format!("{why}: must be redis://host:port[/db] or rediss://…"),
                    );
                    ok = false;
                }
                if !(1..=10_000).contains(&r.timeout_ms) {
                    problem(format!("{path}.redis.timeout_ms"), "must be 1 to 10000".into());
                    ok = false;
                }
                Some(RemoteSettings {
                    url: r.url.clone(),
                    key_prefix: r.key_prefix.clone(),
                    timeout: Duration::from_millis(r.timeout_ms),
                    on_error: r.on_error,
                })
            }
        };
        ok.then(|| RateSettings {
            requests_per_minute: c.requests_per_minute,
            burst: c.burst_size.unwrap_or((c.requests_per_minute / 60).max(1)),
            key_header: c.key_header.as_ref().map(|h| h.to_ascii_lowercase()),
            interval: Duration::from_secs(60) / c.requests_per_minute.max(1),
            remote,
        })
    }

    /// The bucket key of a request: the key header's value, else the client IP (long values hashed).
    pub fn bucket_key(&self, req: &RequestInfo<'_>) -> String {
        let value = self.key_header.as_deref().and_then(|h| req.headers.get(h));
        match value {
            Some(v) if v.len() <= MAX_KEY_LEN => format!("h:{v}"),
            Some(v) => format!("h#{:016x}", fnv1a(v.as_bytes())),
            None => format!("ip:{}", req.client_ip),
        }
    }

    /// The hash of [`RateSettings::bucket_key`], made without building the key: how the traffic profile and
    /// the access log name a key without showing it.
    pub fn key_hash(&self, req: &RequestInfo<'_>) -> u64 {
        use std::fmt::Write;
        let value = self.key_header.as_deref().and_then(|h| req.headers.get(h));
        let mut h = Fnv(FNV_OFFSET);
        // Writing to a hasher cannot fail. A key header's value is hashed as bytes, without formatting.
        let _ = match value {
            Some(v) if v.len() <= MAX_KEY_LEN => return fnv_more(fnv_more(FNV_OFFSET, b"h:"), v.as_bytes()),
            Some(v) => write!(h, "h#{:016x}", fnv1a(v.as_bytes())),
            None => write!(h, "ip:{}", req.client_ip),
        };
        h.0
    }

    /// Bucket capacity in nanoseconds (burst x interval).
    pub fn capacity_ns(&self) -> u64 {
        self.interval.as_nanos() as u64 * u64::from(self.burst)
    }

    /// The verdict for an answer, with the same arithmetic whether the bucket is local or shared.
    pub fn decision(&self, answer: StoreAnswer) -> Decision {
        let t = self.interval.as_nanos() as u64;
        let capacity = self.capacity_ns();
        let ahead = answer.ahead_ns;
        if answer.allowed {
            Decision {
                allowed: true,
                remaining: (capacity.saturating_sub(ahead) / t.max(1)) as u32,
                reset_secs: ceil_secs(ahead),
                retry_after_secs: 0,
            }
        } else {
            let tolerance = capacity - t;
            Decision {
                allowed: false,
                remaining: 0,
                reset_secs: ceil_secs(ahead),
                retry_after_secs: ceil_secs(ahead.saturating_sub(tolerance)).max(1),
            }
        }
    }

    /// The verdict when the shared store could not answer in time.
    pub fn fallback(&self) -> Decision {
        let allowed = self.remote.as_ref().is_none_or(|r| r.on_error == OnError::Allow);
        Decision { allowed, remaining: 0, reset_secs: 1, retry_after_secs: if allowed { 0 } else { 1 } }
    }
}

/// One GCRA step as the shared store's script takes it (`server::rate_store`'s Lua), in microseconds on the
/// store's clock; the simulated Redis runs this, and an end-to-end test holds it to the script's verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStep {
    /// The request may pass.
    pub allowed: bool,
    /// How far the bucket's theoretical arrival time is ahead of now, in microseconds.
    pub ahead_us: u64,
    /// What the key holds afterwards and for how many milliseconds (`None`: left as it was).
    pub store: Option<(u64, u64)>,
}

/// The step: `stored` is the key's value (`None` when absent or expired), `now_us` the store's clock.
pub fn remote_step(stored: Option<u64>, now_us: u64, interval_us: u64, capacity_us: u64) -> RemoteStep {
    let start = stored.unwrap_or(now_us).max(now_us);
    // Signed, as Lua's numbers are: a capacity below one interval refuses everything.
    if i128::from(start - now_us) > i128::from(capacity_us) - i128::from(interval_us) {
        return RemoteStep { allowed: false, ahead_us: start - now_us, store: None };
    }
    let new = start + interval_us;
    RemoteStep { allowed: true, ahead_us: new - now_us, store: Some((new, (new - now_us).div_ceil(1000) + 1)) }
}

/// The verdict on one request, with what the RateLimit headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until a request would be admitted (0 when admitted).
    pub retry_after_secs: u64,
}

impl Decision {
    /// `RateLimit-*` headers, and `Retry-After` when refused.
    pub fn headers(&self, s: &RateSettings) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("ratelimit-limit", s.burst.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ];
        if !self.allowed {
            h.push(("retry-after", self.retry_after_secs.to_string()));
        }
        h
    }
}

/// One route's buckets.
#[derive(Debug)]
pub struct RateLimiter {
    settings: RateSettings,
    epoch: Instant,
    /// Theoretical arrival time per key, in nanoseconds since `epoch`.
    buckets: DashMap<String, u64>,
    overflow: Mutex<u64>,
    last_sweep: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Empty buckets, with time measured from `epoch`.
    pub fn new(settings: RateSettings, epoch: Instant) -> RateLimiter {
        RateLimiter { settings, epoch, buckets: DashMap::new(), overflow: Mutex::new(0), last_sweep: Mutex::new(None) }
    }

    /// The settings.
    pub fn settings(&self) -> &RateSettings {
        &self.settings
    }

    /// Keys tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.buckets.len()
    }

    /// Takes a token for the request's key at `now`.
    pub fn check(&self, req: &RequestInfo<'_>, now: Instant) -> Decision {
        self.check_key(&self.settings.bucket_key(req), now)
    }

    /// Takes a token for `key` at `now`.
    pub fn check_key(&self, key: &str, now: Instant) -> Decision {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        if let Some(mut tat) = self.buckets.get_mut(key) {
            return self.gcra(&mut tat, now_ns);
        }
        if self.buckets.len() >= MAX_KEYS && !self.sweep(now, now_ns) {
            let mut tat = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
            return self.gcra(&mut tat, now_ns);
        }
        let mut tat = self.buckets.entry(key.to_string()).or_insert(0);
        self.gcra(&mut tat, now_ns)
    }

    /// What [`RateLimiter::check`] would decide now, without drawing from the bucket (explain).
    pub fn peek(&self, req: &RequestInfo<'_>, now: Instant) -> Decision {
        let key = self.settings.bucket_key(req);
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut tat = match self.buckets.get(&key) {
            Some(tat) => *tat,
            None if self.buckets.len() >= MAX_KEYS => *self.overflow.lock().unwrap_or_else(|e| e.into_inner()),
            None => 0,
        };
        self.gcra(&mut tat, now_ns)
    }

    fn gcra(&self, tat: &mut u64, now_ns: u64) -> Decision {
        let t = self.settings.interval.as_nanos() as u64;
        let tolerance = self.settings.capacity_ns() - t;
        let start = (*tat).max(now_ns);
        if start - now_ns > tolerance {
            return self.settings.decision(StoreAnswer { allowed: false, ahead_ns: start - now_ns });
        }
        *tat = start + t;
        self.settings.decision(StoreAnswer { allowed: true, ahead_ns: *tat - now_ns })
    }

    /// Removes buckets that have refilled completely (at most once a second); true when room was made.
    fn sweep(&self, now: Instant, now_ns: u64) -> bool {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(1)) {
                return false;
            }
            *last = Some(now);
        }
        self.buckets.retain(|_, tat| *tat > now_ns);
        self.buckets.len() < MAX_KEYS
    }
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

const FNV_OFFSET: u64 = 0xcbf29ce484222325;

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv_more(FNV_OFFSET, bytes)
}

fn fnv_more(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// FNV-1a over what is written to it.
struct Fnv(u64);

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 = fnv_more(self.0, s.as_bytes());
        Ok(())
    }
}

//! The shared rate-limit store seam, and its Redis implementation.
//!
//! The core decides (the verdict, the headers, the fallback); this only carries one atomic GCRA step to
//! Redis and back, bounded by the limit's timeout. The simulator can put its own store behind the same trait.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use locci_core::middleware::{RateSettings, StoreAnswer, StoreReply};
use redis::aio::ConnectionManager;

/// One GCRA step, atomic in Redis. KEYS[1] the bucket; ARGV[1] the emission interval and ARGV[2] the
/// capacity, both in microseconds; `now` (microseconds) is set by the line before it ([`NOW_FROM_REDIS`] in
/// production). Returns {admitted (1/0), microseconds the theoretical arrival time is ahead of now}. The key
/// expires when the bucket would be full again, so idle keys disappear. `locci_core::middleware::remote_step`
/// is the same step in Rust (the simulated Redis runs it; an end-to-end test holds the two to each other).
pub const GCRA_STEP: &str = r"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local start = math.max(tat, now)
if start - now > capacity - interval then
  return {0, start - now}
end
local new = start + interval
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1)
return {1, new - now}
";

/// Production's `now`: Redis's own clock, so that every proxy of a fleet agrees on time.
pub const NOW_FROM_REDIS: &str = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000000 + tonumber(t[2])";

/// The script with `now` set by `now_line` (Lua that defines the local `now`).
pub fn gcra_script(now_line: &str) -> String {
    format!("{now_line}\n{GCRA_STEP}")
}

/// The script's ARGV for a bucket: the emission interval and the capacity, in microseconds.
pub fn script_args(settings: &RateSettings) -> (u64, u64) {
    (settings.interval.as_micros().max(1) as u64, settings.capacity_ns() / 1000)
}

/// Where shared buckets are kept.
#[async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// Takes a token from bucket `key` under `settings`, within the settings' timeout.
    async fn take(&self, key: &str, settings: &RateSettings) -> StoreReply;

    /// Starts connecting, if the store needs a connection and has none (called at start-up, so the first
    /// request already finds one).
    fn warm(&self) {}
}

/// Stores by URL (a config may only name one, but a reload may change it).
pub trait RateStores: Send + Sync + 'static {
    /// The store at `url`.
    fn store(&self, url: &str) -> Arc<dyn RateStore>;
}

/// Production stores: one Redis connection manager per URL, created on first use.
#[derive(Default)]
pub struct RedisStores(Mutex<BTreeMap<String, Arc<RedisStore>>>);

impl RateStores for RedisStores {
    fn store(&self, url: &str) -> Arc<dyn RateStore> {
        let mut stores = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let store = stores.entry(url.to_string()).or_insert_with(|| Arc::new(RedisStore::new(url)));
        Arc::clone(store) as Arc<dyn RateStore>
    }
}

/// One Redis server. Connecting happens in the background: a request never waits for a connect, it
/// falls back at once while there is no connection.
pub struct RedisStore {
    client: Option<redis::Client>,
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    connecting: Arc<AtomicBool>,
    /// Woken when a connect succeeds, so a request that came while it was under way can use it.
    connected: Arc<tokio::sync::Notify>,
    script: redis::Script,
}

/// How long a failed background connect waits before the next one may start.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

impl RedisStore {
    fn new(url: &str) -> RedisStore {
        let client = match redis::Client::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                // The error text may echo the URL, which can hold a password: only its kind is logged.
                tracing::error!(error_kind = ?e.kind(), "rate-limit store URL is not usable; every request falls back");
                None
            }
        };
        RedisStore {
            client,
            conn: Arc::new(ArcSwapOption::empty()),
            connecting: Arc::new(AtomicBool::new(false)),
            connected: Arc::new(tokio::sync::Notify::new()),
            script: redis::Script::new(&gcra_script(NOW_FROM_REDIS)),
        }
    }

    fn connect_in_background(&self) {
        let Some(client) = self.client.clone() else { return };
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (conn, connecting, connected) =
            (Arc::clone(&self.conn), Arc::clone(&self.connecting), Arc::clone(&self.connected));
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)));
            match ConnectionManager::new_with_config(client, config).await {
                Ok(manager) => {
                    tracing::info!("connected to the rate-limit store");
                    conn.store(Some(Arc::new(manager)));
                    connected.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(error_kind = ?e.kind(), "cannot connect to the rate-limit store");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
            }
            connecting.store(false, Ordering::Release);
        });
    }
}

impl RedisStore {
    async fn wait_connected(&self) -> Arc<ConnectionManager> {
        loop {
            let notified = self.connected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(manager) = self.conn.load_full() {
                return manager;
            }
            self.connect_in_background();
            notified.await;
        }
    }
}

#[async_trait]
impl RateStore for RedisStore {
    fn warm(&self) {
        self.connect_in_background();
    }

    async fn take(&self, key: &str, settings: &RateSettings) -> StoreReply {
        let Some(remote) = &settings.remote else { return StoreReply::Unavailable };
        let started = tokio::time::Instant::now();
        let manager = match self.conn.load_full() {
            Some(manager) => manager,
            // No connection yet: one is started (or already under way) and this request waits for it, within
            // the same timeout as any answer from the store; only then does the fallback apply.
            None => match tokio::time::timeout(remote.timeout, self.wait_connected()).await {
                Ok(manager) => manager,
                Err(_) => return StoreReply::Unavailable,
            },
        };
        let remaining = remote.timeout.saturating_sub(started.elapsed());
        let mut conn = (*manager).clone();
        let (interval_us, capacity_us) = script_args(settings);
        let mut invocation = self.script.key(key);
        invocation.arg(interval_us).arg(capacity_us);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        match tokio::time::timeout(remaining, call).await {
            Ok(Ok((admitted, ahead_us))) => {
                StoreReply::Answer(StoreAnswer { allowed: admitted == 1, ahead_ns: ahead_us.max(0) as u64 * 1000 })
            }
            _ => StoreReply::Unavailable,
        }
    }
}

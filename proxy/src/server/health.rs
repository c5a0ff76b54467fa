//! The health driver: active checks on tokio time, and the end of passive ejections.
//!
//! Not pingora-load-balancing's `LoadBalancer::run`, which schedules with the system clock: this loop uses
//! tokio time, so the simulator can run it at simulated speed. Each group with active checks gets its own
//! task, which ends when a reload drops the group; unchanged groups keep their task and their state.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use locci_core::upstream::{Pool, Transition};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::task::JoinSet;

use crate::app::Shared;

/// How often the driver looks for new groups and ended ejections.
pub const SUPERVISOR_TICK: Duration = Duration::from_secs(1);

/// Logs a server's change of state (the health gauge follows the same events).
pub fn log_transition(pool: &Pool, idx: usize, t: Transition, cause: &str) {
    let server = pool.servers().get(idx).map_or("?", |s| s.addr.text.as_str());
    match t {
        Transition::Down => {
            tracing::warn!(upstream = pool.name(), server, cause, "server marked down")
        }
        Transition::Up => tracing::info!(upstream = pool.name(), server, cause, "server marked up"),
    }
}

/// The background service that drives health checks.
pub struct HealthDriver {
    shared: Arc<Shared>,
}

impl HealthDriver {
    /// A driver over shared state.
    pub fn new(shared: Arc<Shared>) -> HealthDriver {
        HealthDriver { shared }
    }

    /// Runs until `shutdown` fires (or forever when it never does). It is the first background task of a
    /// running proxy, so it also starts the connections to shared rate-limit stores.
    pub async fn run(&self, mut shutdown: Option<ShutdownWatch>) {
        self.shared.warm_rate_stores();
        // Names resolve in the background from the start, beside the checks of the servers they give.
        let discovery = tokio::spawn(super::discovery::run(Arc::clone(&self.shared)));
        // Keyed by the pool's address: BTreeMap, so nothing here depends on hash order.
        let mut running: BTreeMap<usize, Weak<Pool>> = BTreeMap::new();
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(SUPERVISOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &mut shutdown {
                Some(watch) => tokio::select! {
                    _ = tick.tick() => {}
                    _ = watch.changed() => break,
                },
                None => {
                    tick.tick().await;
                }
            }
            running.retain(|_, weak| weak.strong_count() > 0);
            let runtime = self.shared.runtime();
            let now = self.shared.env.clock.now();
            for pool in runtime.pools() {
                for (idx, t) in pool.tick(now) {
                    log_transition(pool, idx, t, "cooldown over");
                }
                let key = Arc::as_ptr(pool) as usize;
                if pool.spec().active.is_some() && !running.contains_key(&key) {
                    running.insert(key, Arc::downgrade(pool));
                    tasks.spawn(check_loop(Arc::downgrade(pool), Arc::clone(&self.shared)));
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        tasks.abort_all();
        discovery.abort();
    }
}

#[async_trait]
impl BackgroundService for HealthDriver {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(Some(shutdown)).await;
    }
}

/// Checks every server of one group each interval, from start-up, until the group is dropped.
async fn check_loop(pool: Weak<Pool>, shared: Arc<Shared>) {
    let Some(interval) = pool.upgrade().and_then(|p| p.spec().active.as_ref().map(|a| a.interval)) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let Some(check) = pool.spec().active.clone() else {
            return;
        };
        let mut probes = JoinSet::new();
        for (idx, server) in pool.servers().iter().enumerate() {
            let prober = Arc::clone(&shared.env.prober);
            // A hostname is probed at its background answer, as requests reach it (before the first answer,
            // the prober resolves it itself).
            let addr = shared.server_socket(&server.addr).map_or_else(|| server.addr.text.clone(), |a| a.to_string());
            let host = server.addr.host.clone();
            let path = check.http_path(pool.spec().tls).map(str::to_owned);
            let timeout = check.timeout;
            probes.spawn(async move {
                let ok = match path {
                    Some(path) => matches!(prober.http(&addr, &host, &path, timeout).await, Ok(200..=299)),
                    None => prober.tcp(&addr, timeout).await.is_ok(),
                };
                (idx, ok)
            });
        }
        let mut results = Vec::with_capacity(pool.servers().len());
        while let Some(done) = probes.join_next().await {
            if let Ok(r) = done {
                results.push(r);
            }
        }
        // Apply in server order, whatever order the probes finished in.
        results.sort_unstable();
        let now = shared.env.clock.now();
        for (idx, ok) in results {
            if let Some(t) = pool.probe(idx, ok, now) {
                log_transition(&pool, idx, t, "health check");
            }
        }
    }
}

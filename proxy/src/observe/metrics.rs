//! The metrics of SPEC.md section 5. Label values come from the config (route and upstream names, server
//! addresses), from status codes and from small fixed sets, never from raw request data, so a client cannot
//! grow the number of series.

use locci_core::Runtime;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// The label value used when a request had no route or no upstream.
pub const NO_LABEL: &str = "none";

/// Request duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The status codes 100 to 599 as label text, made once: not a `to_string` per request.
static STATUS_TEXT: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (100..600u16).map(|s| s.to_string()).collect());

/// Every metric locci exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    health: IntGaugeVec,
    active: IntGaugeVec,
    errors: IntCounterVec,
    ratelimit_rejected: IntCounterVec,
    auth_rejected: IntCounterVec,
    reloads: IntCounterVec,
    preflights: IntCounterVec,
    fallbacks: IntCounterVec,
    client_rejected: IntCounterVec,
    upgraded: prometheus::IntGauge,
    connections: prometheus::IntGauge,
    retries: IntCounterVec,
    ejections: IntCounterVec,
    overflow: IntCounterVec,
    panic: IntGaugeVec,
    spans: SpanCounts,
    jwks: JwksCounts,
    discovery_errors: IntCounterVec,
}

/// The JWKS fetches by result (success, failure), shared with the fetcher's thread.
#[derive(Clone)]
pub struct JwksCounts(IntCounterVec);

impl JwksCounts {
    /// Counts one fetch that ended with `result`.
    pub fn add(&self, result: &str) {
        self.0.with_label_values(&[result]).inc();
    }
}

/// The span export's counts by result (exported, failed, dropped), shared with the exporter's thread.
#[derive(Clone)]
pub struct SpanCounts(IntCounterVec);

impl SpanCounts {
    /// Counts `n` spans that ended with `result`.
    pub fn add(&self, result: &str, n: u64) {
        self.0.with_label_values(&[result]).inc_by(n);
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let requests = counter("locci_requests_total", "Requests answered.", &["mode", "route", "upstream", "status"])?;
        let errors =
            counter("locci_errors_total", "Requests the proxy failed or refused itself.", &["mode", "error_type"])?;
        let ratelimit_rejected =
            counter("locci_ratelimit_rejected_total", "Requests refused by rate limits.", &["route"])?;
        let auth_rejected =
            counter("locci_auth_rejected_total", "Requests refused by authentication.", &["route", "reason"])?;
        let reloads = counter("locci_config_reloads_total", "Config reloads by result.", &["result"])?;
        let preflights = counter(
            "locci_reload_preflight_total",
            "Reload preflights by mode and outcome (within_budget, over_budget, error).",
            &["mode", "outcome"],
        )?;
        let fallbacks = counter(
            "locci_ratelimit_fallback_total",
            "Rate-limit decisions made by on_error because the shared store did not answer in time.",
            &["route", "on_error"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("locci_request_duration_seconds", "Request duration, from request to response end.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["mode", "route", "upstream"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let health = IntGaugeVec::new(
            Opts::new("locci_upstream_health", "1 when the server receives traffic, 0 when it is down."),
            &["upstream", "server"],
        )?;
        registry.register(Box::new(health.clone()))?;
        let active =
            IntGaugeVec::new(Opts::new("locci_active_connections", "Requests in flight to the group."), &["upstream"])?;
        registry.register(Box::new(active.clone()))?;
        let client_rejected = counter(
            "locci_client_rejected_total",
            "Client requests or connections refused at the edge (SPEC §10), by reason.",
            &["reason"],
        )?;
        for reason in locci_core::edge::ClientError::REASONS {
            client_rejected.with_label_values(&[reason]);
        }
        let upgraded =
            prometheus::IntGauge::new("locci_upgraded_connections", "Upgraded (WebSocket) connections open now.")?;
        registry.register(Box::new(upgraded.clone()))?;
        let connections = prometheus::IntGauge::new(
            "locci_client_connections",
            "Client connections open now (server.client.max_connections bounds it; the control API's are not counted).",
        )?;
        registry.register(Box::new(connections.clone()))?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let retries = counter(
            "locci_upstream_retries_total",
            "Attempts made again on a group's servers, by reason (SPEC §9).",
            &["upstream", "reason"],
        )?;
        let ejections = counter(
            "locci_upstream_ejections_total",
            "Servers ejected by outlier detection.",
            &["upstream", "server"],
        )?;
        let overflow = counter(
            "locci_upstream_overflow_total",
            "Requests (503) and retries (not made) refused by the circuit breaker or the retry budget.",
            &["upstream", "kind"],
        )?;
        let panic = IntGaugeVec::new(
            Opts::new("locci_upstream_panic", "1 while the group balances over all its servers (panic threshold)."),
            &["upstream"],
        )?;
        registry.register(Box::new(panic.clone()))?;
        let spans = counter(
            "locci_trace_spans_total",
            "Request spans by export result: exported, failed (the collector refused or did not answer), dropped (queue full).",
            &["result"],
        )?;
        for result in ["exported", "failed", "dropped"] {
            spans.with_label_values(&[result]);
        }
        let jwks = counter(
            "locci_jwks_refresh_total",
            "JWKS key set fetches by result: success (the set in force replaced), failure (the last good set kept).",
            &["result"],
        )?;
        let discovery_errors = counter(
            "locci_discovery_errors_total",
            "Failed or empty DNS lookups of an upstream's names (the last good answer is kept).",
            &["upstream"],
        )?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            health,
            active,
            errors,
            ratelimit_rejected,
            auth_rejected,
            reloads,
            preflights,
            fallbacks,
            client_rejected,
            upgraded,
            connections,
            retries,
            ejections,
            overflow,
            panic,
            spans: SpanCounts(spans),
            jwks: JwksCounts(jwks),
            discovery_errors,
        })
    }

    /// Counts one answered request and its duration.
    pub fn request(&self, mode: &str, route: &str, upstream: &str, status: u16, seconds: f64) {
        let owned;
        let status = match STATUS_TEXT.get(usize::from(status).wrapping_sub(100)) {
            Some(text) => text.as_str(),
            None => {
                owned = status.to_string();
                owned.as_str()
            }
        };
        self.requests.with_label_values(&[mode, route, upstream, status]).inc();
        self.duration.with_label_values(&[mode, route, upstream]).observe(seconds);
    }

    /// Counts a failure the proxy answered itself (`error_type` from a fixed set).
    pub fn error(&self, mode: &str, error_type: &str) {
        self.errors.with_label_values(&[mode, error_type]).inc();
    }

    /// Counts a rate-limit refusal.
    pub fn rate_limited(&self, route: &str) {
        self.ratelimit_rejected.with_label_values(&[route]).inc();
    }

    /// Counts an authentication refusal.
    pub fn auth_rejected(&self, route: &str, reason: &str) {
        self.auth_rejected.with_label_values(&[route, reason]).inc();
    }

    /// Counts a decision made by `on_error` because the shared store did not answer.
    pub fn ratelimit_fallback(&self, route: &str, on_error: &str) {
        self.fallbacks.with_label_values(&[route, on_error]).inc();
    }

    /// Counts a client refused at the edge (`reason` from a fixed set).
    pub fn client_rejected(&self, reason: &str) {
        self.client_rejected.with_label_values(&[reason]).inc();
    }

    /// One more (`+1`) or one fewer (`-1`) upgraded connection.
    pub fn upgraded(&self, delta: i64) {
        self.upgraded.add(delta);
    }

    /// Counts a retry of an attempt on `upstream` (`reason` from a fixed set).
    pub fn retry(&self, upstream: &str, reason: &str) {
        self.retries.with_label_values(&[upstream, reason]).inc();
    }

    /// Counts an ejection of `server`.
    pub fn ejection(&self, upstream: &str, server: &str) {
        self.ejections.with_label_values(&[upstream, server]).inc();
    }

    /// Counts a request or retry refused by a limit (`kind`: requests | retries | budget).
    pub fn overflow(&self, upstream: &str, kind: &str) {
        self.overflow.with_label_values(&[upstream, kind]).inc();
    }

    /// The span export's counters.
    pub fn span_counts(&self) -> SpanCounts {
        self.spans.clone()
    }

    /// Counts a failed lookup of a name `upstream` uses.
    pub fn discovery_error(&self, upstream: &str) {
        self.discovery_errors.with_label_values(&[upstream]).inc();
    }

    /// The JWKS fetcher's counters.
    pub fn jwks_counts(&self) -> JwksCounts {
        self.jwks.clone()
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "success" } else { "failure" }]).inc();
    }

    /// Counts a reload preflight (`mode`: report, enforce, or dry_run).
    pub fn preflight(&self, mode: &str, outcome: &str) {
        self.preflights.with_label_values(&[mode, outcome]).inc();
    }

    /// The exposition text, with health and in-flight gauges read from `runtime` at this moment (so the
    /// gauges follow every change and servers that are gone disappear), and the open client connections.
    pub fn render(&self, runtime: &Runtime, connections: usize) -> String {
        self.connections.set(i64::try_from(connections).unwrap_or(i64::MAX));
        self.health.reset();
        self.active.reset();
        self.panic.reset();
        for pool in runtime.pools() {
            self.panic.with_label_values(&[pool.name()]).set(i64::from(pool.in_panic()));
            for server in pool.servers() {
                self.health.with_label_values(&[pool.name(), &server.addr.text]).set(i64::from(server.is_up()));
            }
            self.active.with_label_values(&[pool.name()]).set(i64::from(pool.inflight()));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

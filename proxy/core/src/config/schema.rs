//! The configuration file's shape (SPEC.md section 2), exactly as written by the operator.
//!
//! Every struct rejects unknown keys. Maps are `IndexMap`s so that upstream groups and routes keep the
//! order of the file: nothing downstream depends on hash order.

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which section drives the proxy.
    pub mode: Mode,
    /// Listener, timeouts and pooling.
    #[serde(default)]
    pub server: ServerConfig,
    /// Log level and format.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Upstream groups by name, in file order.
    #[serde(default)]
    pub upstreams: IndexMap<String, UpstreamConfig>,
    /// The load_balancer section (mode load_balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerConfig>,
    /// The api_gateway section (mode api_gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_gateway: Option<ApiGatewayConfig>,
    /// The control API.
    #[serde(default)]
    pub control_api: ControlApiConfig,
    /// What a reload checks before it applies (the preflight gate).
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Trace context and span export (SPEC §14).
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// The `tracing` section: sampling of new traces and the optional OTLP/HTTP export of one span per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's base URL (spans are POSTed to `/v1/traces`); no export when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<SecretUrl>,
    /// The share of new traces sampled, 0 to 1; an incoming `traceparent`'s flag wins.
    pub sample_ratio: f64,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TracingConfig {
    fn default() -> Self {
        // OpenTelemetry's default sampler, parent-based over always-on, samples every new trace too.
        Self { otlp_endpoint: None, sample_ratio: 1.0, service_name: "locci".into() }
    }
}

/// The `reload` section: a preflight simulation of each reload against budgets (SPEC §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Whether a reload is simulated first, and what a verdict over budget does.
    pub preflight: PreflightMode,
    /// How long the preflight may run before it counts as failed.
    pub timeout_secs: u64,
    /// Seeds per simulated world.
    pub seeds: u64,
    /// What the change may cost.
    pub budget: ReloadBudget,
    /// The `locci-sim` binary; default: the one beside `locci-proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulator: Option<String>,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            preflight: PreflightMode::Off,
            timeout_secs: 120,
            seeds: 4,
            budget: ReloadBudget::default(),
            simulator: None,
        }
    }
}

/// What a reload does with the preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreflightMode {
    /// No preflight.
    Off,
    /// Run it, log and return the verdict, apply whatever it says.
    Report,
    /// Run it and refuse a reload over budget (or whose preflight could not run).
    Enforce,
}

/// The budgets of the reload gate (`locci-sim preflight`'s `--max-availability-drop`, `--max-p99-increase`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadBudget {
    /// Largest availability drop allowed, in percentage points.
    pub max_availability_drop: f64,
    /// Largest p99 increase allowed, in percent.
    pub max_p99_increase: f64,
}

impl Default for ReloadBudget {
    fn default() -> Self {
        Self { max_availability_drop: 0.1, max_p99_increase: 25.0 }
    }
}

/// What the proxy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every request goes to one upstream group.
    #[serde(alias = "lb")]
    LoadBalancer,
    /// Requests are routed by path and method, through middlewares.
    #[serde(alias = "gateway")]
    ApiGateway,
}

impl Mode {
    /// The short name used in metrics and on the command line (`lb` or `gateway`).
    pub fn short(self) -> &'static str {
        match self {
            Mode::LoadBalancer => "lb",
            Mode::ApiGateway => "gateway",
        }
    }
}

/// The `server` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where the proxy listens (`ip:port`).
    pub bind_address: String,
    /// Pingora worker threads; default the number of cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Read timeout for routes without their own, and for load_balancer mode.
    pub upstream_timeout_secs: u64,
    /// How long in-flight requests may run on after SIGTERM.
    pub graceful_shutdown_timeout_secs: u64,
    /// Peers whose X-Forwarded-For is believed (CIDR or single address).
    pub trusted_proxies: Vec<String>,
    /// TLS on the listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Upstream connection reuse.
    pub connection_pool: PoolConfig,
    /// How request paths are normalised before any decision reads them.
    pub path: PathConfig,
    /// What a client may send, and for how long (slowloris, oversized requests, connection floods).
    pub client: ClientConfig,
    /// The DNS server upstream names are resolved with (`ip:port`); default: the system's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0:8484".into(),
            workers: None,
            upstream_timeout_secs: 30,
            graceful_shutdown_timeout_secs: 10,
            trusted_proxies: Vec::new(),
            tls: None,
            connection_pool: PoolConfig::default(),
            path: PathConfig::default(),
            client: ClientConfig::default(),
            resolver: None,
        }
    }
}

/// Certificate and key for TLS termination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
}

/// The `server.connection_pool` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle keep-alive connections kept per worker.
    pub max_idle: usize,
    /// An idle pooled connection is closed after this.
    pub idle_timeout_secs: u64,
    /// TCP (and TLS) connect timeout to an upstream server.
    pub connect_timeout_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_idle: 128, idle_timeout_secs: 60, connect_timeout_secs: 10 }
    }
}

/// The `server.client` section: limits on what a client may send (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// A request head not complete this long after its first byte (or the accept): 408 and close.
    pub header_timeout_secs: u64,
    /// No body byte for this long: 408 and close.
    pub body_timeout_secs: u64,
    /// An idle client connection is closed after this; 0 turns keep-alive off.
    pub keepalive_timeout_secs: u64,
    /// Request line and headers; over: 431.
    pub max_header_bytes: usize,
    /// Request body; over: 413 (routes may set their own); 0 = no limit.
    pub max_body_bytes: u64,
    /// Client connections at once; over: closed at accept.
    pub max_connections: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            keepalive_timeout_secs: 60,
            max_header_bytes: 32 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 10_000,
        }
    }
}

/// The `server.path` section: how a request path is normalised before routing (SPEC §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    /// RFC 3986 dot-segment removal, decoding of escaped unreserved characters, `\` as `/`.
    pub normalize: bool,
    /// Runs of `/` become one.
    pub merge_slashes: bool,
    /// What `%2F` and `%5C` in a path do.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self { normalize: true, merge_slashes: false, escaped_slashes: EscapedSlashes::Reject }
    }
}

/// What an escaped slash (`%2F`, or `%5C` for a backslash) in a path does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400: upstreams disagree on whether it separates segments.
    #[default]
    Reject,
    /// Forwarded as written (upper-case hex); not a separator for routing.
    Keep,
    /// Decoded to `/` before normalisation, so routing sees the segments an unescaping upstream sees.
    Unescape,
}

/// The `logging` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// trace | debug | info | warn | error (RUST_LOG wins when set).
    pub level: String,
    /// text | json.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One upstream group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The servers, in order.
    pub servers: Vec<ServerEntry>,
    /// How a server is chosen.
    #[serde(default)]
    pub strategy: Strategy,
    /// For consistent: `header:NAME`, `client_ip` or `path` (default client_ip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Extra attempts on another server when connecting fails (default 1; not with `retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Retries after the request reached a server (SPEC §9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// TLS to the servers.
    #[serde(default)]
    pub tls: bool,
    /// SNI and certificate name when `tls` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle that verifies the servers' certificates (default: the system roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<String>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Outlier detection from live traffic (the older form; not with `outlier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveConfig>,
    /// Outlier detection from live traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
    /// Below this share of servers up, in percent, balance over all of them (0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub panic_threshold_percent: u32,
    /// Limits on what is in flight to the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// A returning server's share ramps up over this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_secs: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `retry` policy of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first.
    #[serde(default = "one")]
    pub attempts: u32,
    /// What is retried: connect_failure, reset, timeout, gateway_error, 5xx, retriable_status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
    /// Statuses retried under `retriable_status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status: Vec<u16>,
    /// Methods that may be sent again once they may have reached a server (default: the idempotent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Each attempt's read timeout in seconds, fractions allowed (default: the route's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_secs: Option<f64>,
    /// The wait before each retry (full jitter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffConfig>,
    /// Retries in flight stay within this share of first attempts in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
    /// Largest request body kept for resending.
    #[serde(default = "retry_body")]
    pub max_body_bytes: u64,
}

fn retry_body() -> u64 {
    65536
}

/// Retry backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// The window before the first retry, in milliseconds.
    #[serde(default = "backoff_base")]
    pub base_ms: u64,
    /// The largest window, in milliseconds.
    #[serde(default = "backoff_max")]
    pub max_ms: u64,
}

fn backoff_base() -> u64 {
    25
}
fn backoff_max() -> u64 {
    250
}

/// The retry budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Percent of first attempts in flight.
    pub percent: u32,
    /// Retries allowed whatever the share.
    #[serde(default = "three")]
    pub min_concurrent: u32,
}

fn three() -> u32 {
    3
}

/// Outlier detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// 5xx answers in a row that eject a server (default 5 when neither streak is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 answers and connect failures in a row that eject a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    /// The first ejection's length in seconds; later ones are this times the number of ejections.
    #[serde(default = "thirty")]
    pub base_ejection_secs: u64,
    /// The longest ejection, in seconds.
    #[serde(default = "three_hundred")]
    pub max_ejection_secs: u64,
    /// Most of the group ejected at once, in percent (one server always may be).
    #[serde(default = "fifty_percent")]
    pub max_ejection_percent: u32,
}

fn three_hundred() -> u64 {
    300
}
fn fifty_percent() -> u32 {
    50
}

/// The circuit breaker of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Requests in flight to the group; over it: 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight to the group; over it: no retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

fn one() -> u32 {
    1
}

/// A server: `"host:port"`, `{address, weight}`, or a name whose DNS answer gives servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerEntry {
    /// Just the address; weight 1.
    Address(String),
    /// Address and weight.
    Weighted(WeightedServer),
    /// `{dns: "name:port"}` or `{srv: "_service._proto.name"}` (SPEC §13).
    Discovered(DiscoveredServer),
}

/// Servers found by DNS: every address of a name, or every target of its SRV records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveredServer {
    /// `name:port`: every A/AAAA address of the name is a server on that port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// An SRV name: every target is a server on the port its record gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// Seconds between lookups (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_secs: Option<u64>,
    /// The weight of each server found.
    #[serde(default = "one")]
    pub weight: u32,
    /// The answer in force, written by the proxy before the config is compiled; never read from or written
    /// to a file.
    #[serde(skip)]
    pub resolved: Vec<std::net::SocketAddr>,
}

impl DiscoveredServer {
    /// The name it asks to resolve, when it is well-formed (`dns` read as [`ServerAddr::parse`] reads a server,
    /// and must name a host, not an address).
    pub fn name(&self) -> Option<crate::discovery::Name> {
        match (&self.dns, &self.srv) {
            (Some(dns), None) => {
                let addr = crate::upstream::ServerAddr::parse(dns).ok().filter(|a| a.ip.is_none())?;
                Some(crate::discovery::Name::Dns { host: addr.host, port: addr.port })
            }
            (None, Some(srv)) => {
                crate::upstream::valid_host_name(srv).then(|| crate::discovery::Name::Srv(srv.clone()))
            }
            _ => None,
        }
    }
}

impl ServerEntry {
    /// The `host:port` address (for a discovered entry, the name it resolves).
    pub fn address(&self) -> &str {
        match self {
            ServerEntry::Address(a) => a,
            ServerEntry::Weighted(w) => &w.address,
            ServerEntry::Discovered(d) => d.dns.as_deref().or(d.srv.as_deref()).unwrap_or(""),
        }
    }

    /// The weight (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            ServerEntry::Address(_) => 1,
            ServerEntry::Weighted(w) => w.weight,
            ServerEntry::Discovered(d) => d.weight,
        }
    }
}

/// A server with an explicit weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedServer {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic for weighted strategies.
    #[serde(default = "one")]
    pub weight: u32,
}

/// How a server is chosen within a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// In turn, in proportion to weights.
    Weighted,
    /// At random, in proportion to weights.
    Random,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Ketama hashing on `hash_key`.
    Consistent,
}

/// Active health checking of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Seconds between checks of a server.
    #[serde(default = "ten")]
    pub interval_secs: u64,
    /// Seconds before a check counts as failed.
    #[serde(default = "two")]
    pub timeout_secs: u64,
    /// HTTP GET path (2xx = healthy); absent = TCP connect check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Consecutive successes to come back.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    /// Consecutive failures to go down.
    #[serde(default = "one")]
    pub unhealthy_threshold: u32,
}

fn ten() -> u64 {
    10
}
fn two() -> u64 {
    2
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Connect errors or 5xx in a row that take a server out.
    pub consecutive_failures: u32,
    /// Seconds before an ejected server is tried again.
    #[serde(default = "thirty")]
    pub cooldown_secs: u64,
}

fn thirty() -> u64 {
    30
}

/// The `load_balancer` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// The one upstream group.
    pub upstream: String,
}

/// The `api_gateway` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiGatewayConfig {
    /// Routes by name, in file order.
    #[serde(default)]
    pub routes: IndexMap<String, RouteConfig>,
    /// Middleware settings shared by the routes that list them.
    #[serde(default)]
    pub middlewares: MiddlewaresConfig,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex on the path.
    pub path_pattern: String,
    /// Accepted methods; empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The upstream group.
    pub upstream: String,
    /// Remove the matched part of the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Upstream read timeout for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Middlewares, run in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub middlewares: Vec<String>,
    /// Request body limit for this route (overrides `server.client.max_body_bytes`; 0 = no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Whether HTTP/1.1 upgrades (WebSocket) are proxied; false answers them 400.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub websocket: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The `api_gateway.middlewares` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiddlewaresConfig {
    /// Token-bucket rate limiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiting: Option<RateLimitConfig>,
    /// JWT authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<AuthConfig>,
    /// CORS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
}

/// Rate limiting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Refill rate.
    pub requests_per_minute: u32,
    /// Bucket capacity (default requests_per_minute / 60, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_size: Option<u32>,
    /// Header whose value keys the bucket; the client IP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_header: Option<String>,
    /// Where buckets live: this process's memory, or Redis shared by a fleet.
    #[serde(default)]
    pub backend: RateBackend,
    /// Redis settings (backend redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
}

/// Where rate-limit buckets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateBackend {
    /// In this process.
    #[default]
    Memory,
    /// In Redis, shared by every proxy that uses it.
    Redis,
}

/// Redis settings for shared rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`); the credentials never appear in any output.
    pub url: SecretUrl,
    /// Prefix of every bucket key.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Longest a request waits for Redis before the fallback applies.
    #[serde(default = "fifty")]
    pub timeout_ms: u64,
    /// What happens when Redis is slow or down.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_prefix() -> String {
    "locci:rl:".into()
}
fn fifty() -> u64 {
    50
}

/// The fallback when the shared store cannot answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the request through.
    #[default]
    Allow,
    /// Refuse it (429).
    Deny,
}

/// JWT authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret (HS256/384/512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<Secret>,
    /// PEM public key (RS*/ES*/EdDSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_public_key_path: Option<String>,
    /// An identity provider's JWKS document: the keys for RS*/PS*/ES*/EdDSA, fetched in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<SecretUrl>,
    /// Seconds between JWKS fetches.
    #[serde(default = "five_minutes")]
    pub jwks_refresh_secs: u64,
    /// A PEM bundle that verifies the JWKS endpoint's certificate (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_path: Option<String>,
    /// Accepted algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Allowed clock skew for exp/nbf.
    #[serde(default = "thirty")]
    pub leeway_secs: u64,
    /// Paths that skip the check: exact, or a regex when it starts with `^`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<String>,
}

fn five_minutes() -> u64 {
    300
}

fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}

/// CORS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins, or `["*"]`.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allowed_methods: Vec<String>,
    /// Headers a preflight may ask for.
    pub allowed_headers: Vec<String>,
    /// Response headers the browser may read.
    pub expose_headers: Vec<String>,
    /// Send Access-Control-Allow-Credentials.
    pub allow_credentials: bool,
    /// Preflight cache lifetime.
    pub max_age_secs: u64,
}

/// The `control_api` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlApiConfig {
    /// Serve the control API.
    pub enabled: bool,
    /// Where it listens.
    pub bind_address: String,
    /// Bearer key; absent = no auth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
}

impl Default for ControlApiConfig {
    fn default() -> Self {
        Self { enabled: true, bind_address: "127.0.0.1:8485".into(), api_key: None }
    }
}

/// A secret string. It renders as `"[redacted]"` in every output it can reach — `Serialize` (the control
/// API, any JSON or YAML dump), `Debug` (logs) and `Display` (errors) — so no list of secret key names is
/// needed and none can miss one; [`Secret::expose`] is the only way to the value.
///
/// It accepts a number or boolean too, because `${API_KEY}` with a numeric value is retyped by
/// interpolation and must still be taken as the string it spells.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A URL that may carry credentials (`redis://user:password@host:6379/0`): it renders with its userinfo
/// (and any query) replaced by `[redacted]` (`redis://[redacted]@host:6379/0`) in every output, as
/// [`Secret`] does for a whole value; [`SecretUrl::expose`] is the only way to the full text.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

/// What a secret is replaced with in any output.
pub const REDACTED: &str = "[redacted]";

/// Reads a secret scalar: a string, or a number or boolean taken as the text it spells.
fn secret_text<'de, D: serde::Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(i64),
        Uint(u64),
        Float(f64),
        Flag(bool),
    }
    Ok(match Raw::deserialize(de)? {
        Raw::Text(s) => s,
        Raw::Int(n) => n.to_string(),
        Raw::Uint(n) => n.to_string(),
        Raw::Float(n) => n.to_string(),
        Raw::Flag(b) => b.to_string(),
    })
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        secret_text(de).map(Secret)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must compare or use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        secret_text(de).map(SecretUrl)
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The full URL, credentials included, for the one place that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is an `http://` or `https://` URL with a host (what an outbound HTTP call can use).
    pub fn is_http(&self) -> bool {
        url::Url::parse(&self.0).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    }
}

impl fmt::Display for SecretUrl {
    /// `scheme://[redacted]@host:port/path`: the userinfo and the query are replaced, the rest is kept so
    /// an operator can still see where it points. Text that is not `scheme://…` is replaced whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return f.write_str(REDACTED);
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        write!(f, "{scheme}://")?;
        match authority.rfind('@') {
            Some(at) => write!(f, "{REDACTED}{}", &authority[at..])?,
            None => f.write_str(authority)?,
        }
        let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
        f.write_str(&tail[..path_end])?;
        if path_end < tail.len() {
            write!(f, "?{REDACTED}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

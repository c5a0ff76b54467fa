//! Validation: every rule of SPEC.md section 2, each problem named by its field path, all collected.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::{
    Config, ConfigError, ConfigErrors, DiscoveredServer, Mode, OutlierConfig, RetryConfig, ServerEntry, UpstreamConfig,
};
use crate::edge::ClientLimits;
use crate::method::MethodSet;
use crate::middleware::{self, Kind, Middlewares};
use crate::route::{RouteSpec, RouteTable};
use crate::upstream::{
    ActiveCheck, Backoff, Budget, CircuitBreaker, GroupSpec, HashKey, MAX_RETRIES, MAX_SERVERS, MAX_WEIGHT, Outlier,
    RetryOn, RetryPolicy, RetryReason, ServerAddr, Thresholds,
};

/// The name of the one route in load_balancer mode.
pub const LB_ROUTE: &str = "default";

/// A configuration that passed validation, with everything compiled from it.
#[derive(Debug)]
pub struct ValidConfig {
    /// The config as written (after interpolation).
    pub config: Config,
    pub(crate) groups: Vec<GroupSpec>,
    pub(crate) routes: RouteTable,
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) middlewares: Middlewares,
    pub(crate) client: ClientLimits,
}

impl ValidConfig {
    /// One line for `locci-proxy check`.
    pub fn summary(&self) -> String {
        let discovered = self
            .config
            .upstreams
            .values()
            .flat_map(|u| &u.servers)
            .filter(|s| matches!(s, ServerEntry::Discovered(_)))
            .count();
        let found = if discovered > 0 {
            format!(" and {discovered} DNS entr(ies) resolved at run time")
        } else {
            String::new()
        };
        format!(
            "config ok: mode {}, {} upstream group(s), {} server(s){found}, {} route(s)",
            self.config.mode.short(),
            self.groups.len(),
            self.groups.iter().map(|g| g.servers.len()).sum::<usize>(),
            self.routes.routes().len()
        )
    }
}

/// Checks a parsed config and compiles it; returns every problem found.
pub fn validate(mut config: Config) -> Result<ValidConfig, ConfigErrors> {
    // `api_key: "${LOCCI_API_KEY:-}"` with the variable unset means "no key", not "the empty key".
    if config.control_api.api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
        config.control_api.api_key = None;
    }
    let mut p = Problems::default();
    check_server(&config, &mut p);
    let client = ClientLimits::compile(&config.server.client, &mut |path, msg| p.add(path, msg));
    check_logging(&config, &mut p);
    check_reload(&config, &mut p);
    check_tracing(&config, &mut p);
    let groups: Vec<GroupSpec> = config.upstreams.iter().filter_map(|(name, u)| group_spec(name, u, &mut p)).collect();
    let group_index = |name: &str| config.upstreams.get_index_of(name);
    let middlewares = match &config.api_gateway {
        Some(gw) => middleware::compile(&gw.middlewares, &mut |path, msg| p.add(path, msg)),
        None => Middlewares::default(),
    };
    let mut specs = Vec::new();
    match config.mode {
        Mode::LoadBalancer => match &config.load_balancer {
            None => p.add("load_balancer", "mode load_balancer needs a load_balancer section"),
            Some(lb) => match group_index(&lb.upstream) {
                None => p.add("load_balancer.upstream", format!("unknown upstream {:?}", lb.upstream)),
                Some(group) => specs.push(RouteSpec {
                    name: LB_ROUTE.into(),
                    pattern: String::new(),
                    methods: MethodSet::ANY,
                    group,
                    upstream: lb.upstream.clone(),
                    strip_prefix: false,
                    timeout: None,
                    middlewares: Vec::new(),
                    max_body_bytes: client.max_body_bytes,
                    websocket: true,
                }),
            },
        },
        Mode::ApiGateway => match &config.api_gateway {
            None => p.add("api_gateway", "mode api_gateway needs an api_gateway section"),
            Some(gw) if gw.routes.is_empty() => p.add("api_gateway.routes", "no routes"),
            Some(gw) => {
                for (name, route) in &gw.routes {
                    let path = format!("api_gateway.routes.{name}");
                    let methods = match MethodSet::parse(route.methods.iter().map(String::as_str)) {
                        Ok(m) => m,
                        Err(bad) => {
                            p.add(format!("{path}.methods"), format!("unknown method(s): {}", bad.join(", ")));
                            MethodSet::ANY
                        }
                    };
                    if route.timeout_secs == Some(0) {
                        p.add(format!("{path}.timeout_secs"), "must be at least 1");
                    }
                    let mut kinds = Vec::new();
                    for (i, m) in route.middlewares.iter().enumerate() {
                        match Kind::parse(m) {
                            None => p.add(
                                format!("{path}.middlewares[{i}]"),
                                format!("unknown middleware {m:?} (known: rate_limit, auth, cors)"),
                            ),
                            Some(k) if !middlewares.configured(k) => p.add(
                                format!("{path}.middlewares[{i}]"),
                                format!(
                                    "middleware {m:?} is not configured in api_gateway.middlewares.{}",
                                    k.section()
                                ),
                            ),
                            Some(k) => kinds.push(k),
                        }
                    }
                    let group = group_index(&route.upstream).unwrap_or_else(|| {
                        p.add(format!("{path}.upstream"), format!("unknown upstream {:?}", route.upstream));
                        // Still compiled, so its pattern is checked too; the table is dropped with the error.
                        usize::MAX
                    });
                    specs.push(RouteSpec {
                        name: name.clone(),
                        pattern: route.path_pattern.clone(),
                        methods,
                        group,
                        upstream: route.upstream.clone(),
                        strip_prefix: route.strip_prefix,
                        timeout: route.timeout_secs.map(Duration::from_secs),
                        middlewares: kinds,
                        max_body_bytes: match route.max_body_bytes {
                            Some(0) => None,
                            Some(n) => Some(n),
                            None => client.max_body_bytes,
                        },
                        websocket: route.websocket,
                    });
                }
            }
        },
    }
    let routes = match RouteTable::compile(specs) {
        Ok(t) => Some(t),
        Err(errors) => {
            for (route, e) in errors {
                p.add(format!("api_gateway.routes.{route}.path_pattern"), format!("invalid regex: {e}"));
            }
            None
        }
    };
    let trusted = trusted_proxies(&config, &mut p);
    match (p.0.is_empty(), routes) {
        (true, Some(routes)) => Ok(ValidConfig { config, groups, routes, trusted, middlewares, client }),
        _ => Err(ConfigErrors(p.0)),
    }
}

#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::at(path, message));
    }
}

fn check_server(config: &Config, p: &mut Problems) {
    let s = &config.server;
    if s.bind_address.parse::<SocketAddr>().is_err() {
        p.add("server.bind_address", format!("{:?} is not ip:port", s.bind_address));
    }
    if s.workers == Some(0) {
        p.add("server.workers", "must be at least 1");
    }
    if s.upstream_timeout_secs == 0 {
        p.add("server.upstream_timeout_secs", "must be at least 1");
    }
    if s.connection_pool.connect_timeout_secs == 0 {
        p.add("server.connection_pool.connect_timeout_secs", "must be at least 1");
    }
    if s.connection_pool.idle_timeout_secs == 0 {
        p.add("server.connection_pool.idle_timeout_secs", "must be at least 1");
    }
    if let Some(tls) = &s.tls {
        for (field, file) in [("cert_path", &tls.cert_path), ("key_path", &tls.key_path)] {
            if !Path::new(file).is_file() {
                p.add(format!("server.tls.{field}"), format!("file {file:?} does not exist"));
            }
        }
    }
    if let Some(resolver) = &s.resolver
        && resolver.parse::<SocketAddr>().is_err()
    {
        p.add("server.resolver", format!("{resolver:?} is not ip:port"));
    }
    let c = &config.control_api;
    if c.enabled && c.bind_address.parse::<SocketAddr>().is_err() {
        p.add("control_api.bind_address", format!("{:?} is not ip:port", c.bind_address));
    }
}

fn check_reload(config: &Config, p: &mut Problems) {
    let r = &config.reload;
    if !(1..=3600).contains(&r.timeout_secs) {
        p.add("reload.timeout_secs", "must be between 1 and 3600");
    }
    if !(1..=64).contains(&r.seeds) {
        p.add("reload.seeds", "must be between 1 and 64");
    }
    let b = &r.budget;
    if !(b.max_availability_drop.is_finite() && (0.0..=100.0).contains(&b.max_availability_drop)) {
        p.add("reload.budget.max_availability_drop", "must be between 0 and 100 (percentage points)");
    }
    if !(b.max_p99_increase.is_finite() && b.max_p99_increase >= 0.0) {
        p.add("reload.budget.max_p99_increase", "must be 0 or more (percent)");
    }
    if r.simulator.as_deref().is_some_and(|s| s.trim().is_empty()) {
        p.add("reload.simulator", "must be a path to locci-sim (or left out: the one beside locci-proxy)");
    }
}

fn check_logging(config: &Config, p: &mut Problems) {
    let level = config.logging.level.to_ascii_lowercase();
    if !["trace", "debug", "info", "warn", "error"].contains(&level.as_str()) {
        p.add("logging.level", format!("{:?} is not one of trace, debug, info, warn, error", config.logging.level));
    }
}

fn check_tracing(config: &Config, p: &mut Problems) {
    let t = &config.tracing;
    if !(t.sample_ratio.is_finite() && (0.0..=1.0).contains(&t.sample_ratio)) {
        p.add("tracing.sample_ratio", "must be between 0 and 1");
    }
    if t.service_name.trim().is_empty() {
        p.add("tracing.service_name", "must not be empty");
    }
    // The value is shown redacted: a collector URL may carry credentials.
    if let Some(endpoint) = t.otlp_endpoint.as_ref().filter(|e| !e.is_http()) {
        p.add("tracing.otlp_endpoint", format!("{endpoint} is not an http:// or https:// URL"));
    }
}

fn trusted_proxies(config: &Config, p: &mut Problems) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, text) in config.server.trusted_proxies.iter().enumerate() {
        match text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)) {
            Ok(net) => nets.push(net),
            Err(_) => p.add(format!("server.trusted_proxies[{i}]"), format!("{text:?} is not an address or CIDR")),
        }
    }
    nets
}

/// A `dns`/`srv` entry: checked, and expanded to the servers of its answer in force (none before the first).
fn discovered_servers(
    d: &DiscoveredServer,
    (path, i): (&str, usize),
    servers: &mut Vec<(ServerAddr, u32)>,
    p: &mut Problems,
) {
    let field = format!("{path}.servers[{i}]");
    match (&d.dns, &d.srv) {
        (Some(_), Some(_)) | (None, None) => {
            p.add(&field, "give one of dns: \"name:port\" or srv: \"_service._proto.name\"")
        }
        (Some(dns), None) if d.name().is_none() => p.add(format!("{field}.dns"), format!("{dns:?} is not name:port")),
        (None, Some(srv)) if d.name().is_none() => p.add(format!("{field}.srv"), format!("{srv:?} is not a DNS name")),
        _ => {}
    }
    if d.refresh_secs == Some(0) {
        p.add(format!("{field}.refresh_secs"), "must be at least 1");
    }
    if !(1..=MAX_WEIGHT).contains(&d.weight) {
        p.add(format!("{field}.weight"), format!("must be 1 to {MAX_WEIGHT}"));
    }
    let host = d.name().map(|n| n.host().to_owned()).unwrap_or_default();
    for addr in &d.resolved {
        let text = addr.to_string();
        // An address another entry lists already is that entry's server.
        if servers.len() < MAX_SERVERS && !servers.iter().any(|(a, _)| a.text == text) {
            let server = ServerAddr { text, host: host.clone(), port: addr.port(), ip: Some(*addr) };
            servers.push((server, d.weight));
        }
    }
}

fn group_spec(name: &str, u: &UpstreamConfig, p: &mut Problems) -> Option<GroupSpec> {
    let path = format!("upstreams.{name}");
    let before = p.0.len();
    if u.servers.is_empty() {
        p.add(format!("{path}.servers"), "no servers");
    }
    if u.servers.len() > MAX_SERVERS {
        p.add(format!("{path}.servers"), format!("more than {MAX_SERVERS} servers"));
    }
    let mut servers: Vec<(ServerAddr, u32)> = Vec::new();
    for (i, entry) in u.servers.iter().enumerate() {
        if let ServerEntry::Discovered(d) = entry {
            discovered_servers(d, (&path, i), &mut servers, p);
            continue;
        }
        match ServerAddr::parse(entry.address()) {
            Ok(addr) if servers.iter().any(|(a, _)| a.text == addr.text) => {
                p.add(format!("{path}.servers[{i}]"), format!("{:?} is listed twice", addr.text))
            }
            Ok(addr) => servers.push((addr, entry.weight())),
            Err(e) => p.add(format!("{path}.servers[{i}]"), e),
        }
        if !(1..=MAX_WEIGHT).contains(&entry.weight()) {
            p.add(format!("{path}.servers[{i}].weight"), format!("must be 1 to {MAX_WEIGHT}"));
        }
    }
    let hash_key = match u.hash_key.as_deref() {
        None | Some("client_ip") => HashKey::ClientIp,
        Some("path") => HashKey::Path,
        Some(h) => match h.strip_prefix("header:") {
            Some(name) if !name.is_empty() => HashKey::Header(name.to_ascii_lowercase()),
            _ => {
                p.add(format!("{path}.hash_key"), format!("{h:?} is not header:NAME, client_ip or path"));
                HashKey::ClientIp
            }
        },
    };
    if u.retries.is_some_and(|r| r > MAX_RETRIES) {
        p.add(format!("{path}.retries"), format!("must be at most {MAX_RETRIES}"));
    }
    if u.retries.is_some() && u.retry.is_some() {
        p.add(format!("{path}.retries"), "not with retry (retry.on: [connect_failure] covers it)");
    }
    let retry = u.retry.as_ref().map(|r| retry_policy(&format!("{path}.retry"), r, p));
    if let Some(ca) = &u.ca_path {
        if !u.tls {
            p.add(format!("{path}.ca_path"), "only applies with tls: true");
        } else if !Path::new(ca).is_file() {
            p.add(format!("{path}.ca_path"), format!("file {ca:?} does not exist"));
        }
    }
    if u.tls && u.sni.as_deref().is_some_and(str::is_empty) {
        p.add(format!("{path}.sni"), "must not be empty");
    }
    let active = u.health_check.as_ref().map(|h| {
        if h.interval_secs == 0 {
            p.add(format!("{path}.health_check.interval_secs"), "must be at least 1");
        }
        if h.timeout_secs == 0 {
            p.add(format!("{path}.health_check.timeout_secs"), "must be at least 1");
        }
        if h.healthy_threshold == 0 {
            p.add(format!("{path}.health_check.healthy_threshold"), "must be at least 1");
        }
        if h.unhealthy_threshold == 0 {
            p.add(format!("{path}.health_check.unhealthy_threshold"), "must be at least 1");
        }
        if h.path.as_deref().is_some_and(|x| !x.starts_with('/')) {
            p.add(format!("{path}.health_check.path"), "must start with /");
        }
        ActiveCheck {
            interval: Duration::from_secs(h.interval_secs),
            timeout: Duration::from_secs(h.timeout_secs),
            path: h.path.clone(),
            thresholds: Thresholds { healthy: h.healthy_threshold, unhealthy: h.unhealthy_threshold },
        }
    });
    let passive = u.passive.as_ref().map(|x| {
        if x.consecutive_failures == 0 {
            p.add(format!("{path}.passive.consecutive_failures"), "must be at least 1");
        }
        if x.cooldown_secs == 0 {
            p.add(format!("{path}.passive.cooldown_secs"), "must be at least 1");
        }
        Outlier::passive(x.consecutive_failures, Duration::from_secs(x.cooldown_secs))
    });
    if u.passive.is_some() && u.outlier.is_some() {
        p.add(format!("{path}.passive"), "not with outlier (outlier replaces it)");
    }
    let outlier = u.outlier.as_ref().map(|o| outlier(&format!("{path}.outlier"), o, p)).or(passive);
    if u.panic_threshold_percent > 100 {
        p.add(format!("{path}.panic_threshold_percent"), "must be 0 to 100");
    }
    let circuit_breaker = u.circuit_breaker.as_ref().map(|c| {
        let at_least_one = |field: &str, v: Option<u32>, p: &mut Problems| {
            if v == Some(0) {
                p.add(format!("{path}.circuit_breaker.{field}"), "must be at least 1");
            }
        };
        at_least_one("max_requests", c.max_requests, p);
        at_least_one("max_retries", c.max_retries, p);
        if c.max_requests.is_none() && c.max_retries.is_none() {
            p.add(format!("{path}.circuit_breaker"), "needs max_requests or max_retries");
        }
        CircuitBreaker { max_requests: c.max_requests, max_retries: c.max_retries }
    });
    if u.slow_start_secs == Some(0) {
        p.add(format!("{path}.slow_start_secs"), "must be at least 1");
    }
    (p.0.len() == before).then(|| GroupSpec {
        name: name.into(),
        servers,
        strategy: u.strategy,
        hash_key,
        retries: if retry.is_some() { 0 } else { u.retries.unwrap_or(1) },
        retry,
        tls: u.tls,
        sni: u.sni.clone(),
        ca_path: u.ca_path.clone(),
        active,
        outlier,
        panic_threshold_percent: u.panic_threshold_percent,
        circuit_breaker,
        slow_start: u.slow_start_secs.map(Duration::from_secs),
    })
}

/// The most of a request body the HTTP layer keeps for sending again (Pingora's retry buffer).
pub const MAX_RETRY_BODY: u64 = 64 * 1024;
/// The shortest per-try timeout accepted, in seconds (1 ms).
const MIN_PER_TRY_SECS: f64 = 0.001;
/// The longest per-try timeout accepted, in seconds (a day).
const MAX_PER_TRY_SECS: f64 = 86_400.0;

fn retry_policy(path: &str, r: &RetryConfig, p: &mut Problems) -> RetryPolicy {
    if r.attempts == 0 || r.attempts > MAX_RETRIES {
        p.add(format!("{path}.attempts"), format!("must be 1 to {MAX_RETRIES}"));
    }
    let on = match &r.on {
        None => RetryOn::of(RetryPolicy::DEFAULT_ON),
        Some(list) => {
            let mut reasons = Vec::new();
            for (i, name) in list.iter().enumerate() {
                match RetryReason::parse(name) {
                    Some(reason) => reasons.push(reason),
                    None => p.add(
                        format!("{path}.on[{i}]"),
                        format!("{name:?} is not one of {}", RetryReason::ALL.map(RetryReason::as_str).join(", ")),
                    ),
                }
            }
            if list.is_empty() {
                p.add(format!("{path}.on"), "must name at least one reason");
            }
            RetryOn::of(reasons)
        }
    };
    for (i, status) in r.retriable_status.iter().enumerate() {
        if !(100..=599).contains(status) {
            p.add(format!("{path}.retriable_status[{i}]"), "must be an HTTP status (100 to 599)");
        }
    }
    if !r.retriable_status.is_empty() && !on.has(RetryReason::RetriableStatus) {
        p.add(format!("{path}.retriable_status"), "has no effect unless on lists retriable_status");
    }
    let names: Vec<&str> = match &r.methods {
        None => RetryPolicy::DEFAULT_METHODS.to_vec(),
        Some(list) => list.iter().map(String::as_str).collect(),
    };
    if names.is_empty() {
        p.add(format!("{path}.methods"), "must list at least one method");
    }
    let methods = match MethodSet::parse(names) {
        Ok(set) => set,
        Err(unknown) => {
            p.add(format!("{path}.methods"), format!("not HTTP methods: {}", unknown.join(", ")));
            MethodSet::default()
        }
    };
    // Fractions, as Envoy's per_try_timeout and nginx's proxy_read_timeout 100ms allow: a policy that calls a
    // 200 ms answer too slow needs a timeout under a second. Checked here because from_secs_f64 panics on
    // what is out of range.
    let per_try_timeout = r.per_try_timeout_secs.and_then(|secs| {
        let valid = (MIN_PER_TRY_SECS..=MAX_PER_TRY_SECS).contains(&secs);
        if !valid {
            p.add(format!("{path}.per_try_timeout_secs"), "must be from 0.001 to 86400 seconds (0.1 is 100 ms)");
        }
        valid.then(|| Duration::from_secs_f64(secs))
    });
    let backoff =
        r.backoff.as_ref().map_or(Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) }, |b| {
            if b.max_ms < b.base_ms {
                p.add(format!("{path}.backoff.max_ms"), "must be at least base_ms");
            }
            Backoff { base: Duration::from_millis(b.base_ms), max: Duration::from_millis(b.max_ms) }
        });
    let budget = r.budget.as_ref().map(|b| {
        if b.percent == 0 || b.percent > 100 {
            p.add(format!("{path}.budget.percent"), "must be 1 to 100");
        }
        Budget { percent: b.percent, min_concurrent: b.min_concurrent }
    });
    if r.max_body_bytes > MAX_RETRY_BODY {
        p.add(
            format!("{path}.max_body_bytes"),
            format!("must be at most {MAX_RETRY_BODY} (the most of a body the HTTP layer keeps for resending)"),
        );
    }
    RetryPolicy {
        attempts: r.attempts,
        on,
        retriable_status: r.retriable_status.clone(),
        methods,
        per_try_timeout,
        backoff,
        budget,
        max_body_bytes: r.max_body_bytes,
    }
}

fn outlier(path: &str, o: &OutlierConfig, p: &mut Problems) -> Outlier {
    for (field, v) in
        [("consecutive_5xx", o.consecutive_5xx), ("consecutive_gateway_failure", o.consecutive_gateway_failure)]
    {
        if v == Some(0) {
            p.add(format!("{path}.{field}"), "must be at least 1");
        }
    }
    if o.base_ejection_secs == 0 {
        p.add(format!("{path}.base_ejection_secs"), "must be at least 1");
    }
    if o.max_ejection_secs < o.base_ejection_secs {
        p.add(format!("{path}.max_ejection_secs"), "must be at least base_ejection_secs");
    }
    if o.max_ejection_percent > 100 {
        p.add(format!("{path}.max_ejection_percent"), "must be 0 to 100");
    }
    let neither = o.consecutive_5xx.is_none() && o.consecutive_gateway_failure.is_none();
    Outlier {
        consecutive_5xx: if neither { Some(5) } else { o.consecutive_5xx },
        consecutive_gateway_failure: o.consecutive_gateway_failure,
        base_ejection: Duration::from_secs(o.base_ejection_secs),
        max_ejection: Duration::from_secs(o.max_ejection_secs),
        max_ejection_percent: o.max_ejection_percent,
    }
}

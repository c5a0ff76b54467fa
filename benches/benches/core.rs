//! Criterion benches of the core's hot paths: route matching (10 and 1000 routes), server selection per
//! strategy, the rate-limit check (one hot key, 100k keys), JWT verification, a whole plan, and what the
//! traffic profile adds to a request, and the trace context every request gets.
//! Run: `just bench` (or `cargo bench -p locci-benches`).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use locci_core::Runtime;
use locci_core::clock::{Clock, ManualClock, SeededEntropy};
use locci_core::config;
use locci_core::method::MethodSet;
use locci_core::middleware::{Now, RateLimiter, RateSettings};
use locci_core::request::{HeaderPairs, RequestInfo};
use locci_core::route::{RouteSpec, RouteTable};

const NO_HEADERS: [(&str, &str); 0] = [];

fn table(n: usize) -> RouteTable {
    let specs = (0..n)
        .map(|i| RouteSpec {
            name: format!("r{i}"),
            pattern: format!("^/api/v1/service{i}/"),
            methods: MethodSet::ANY,
            group: 0,
            upstream: "u".into(),
            strip_prefix: false,
            timeout: None,
            middlewares: Vec::new(),
            max_body_bytes: None,
            websocket: true,
        })
        .collect();
    RouteTable::compile(specs).unwrap()
}

fn route_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    for n in [10usize, 1000] {
        let t = table(n);
        let path = format!("/api/v1/service{}/items/42", n / 2);
        g.bench_with_input(BenchmarkId::from_parameter(n), &path, |b, path| {
            b.iter(|| black_box(t.find("GET", black_box(path), false)).is_found())
        });
    }
    g.finish();
}

trait Found {
    fn is_found(&self) -> bool;
}
impl Found for locci_core::route::RouteMatch<'_> {
    fn is_found(&self) -> bool {
        matches!(self, locci_core::route::RouteMatch::Found(_))
    }
}

fn runtime(strategy: &str, middlewares: &str, mw_config: &str) -> Runtime {
    runtime_with(strategy, "", middlewares, mw_config)
}

/// A gateway runtime whose group `u` also has the YAML lines `group` (each indented by four spaces).
fn runtime_with(strategy: &str, group: &str, middlewares: &str, mw_config: &str) -> Runtime {
    let yaml = format!(
        "mode: api_gateway\nupstreams:\n  u:\n{group}    strategy: {strategy}\n    servers: [\"10.0.0.1:80\", \"10.0.0.2:80\", \
         {{ address: \"10.0.0.3:80\", weight: 3 }}, \"10.0.0.4:80\", \"10.0.0.5:80\"]\n\
         api_gateway:\n  routes:\n    r: {{ path_pattern: \"^/\", upstream: u, middlewares: [{middlewares}] }}\n  middlewares:\n{mw_config}"
    );
    let valid = config::load(&yaml, &|_| None).unwrap();
    Runtime::build(valid, None, 1, ManualClock::default().now())
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    let entropy = SeededEntropy::new(1);
    let headers = [("x-user-id", "user-42")];
    let req = RequestInfo {
        method: "GET",
        path: "/items",
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        headers: &HeaderPairs(&headers),
    };
    for strategy in ["round_robin", "weighted", "random", "least_request", "consistent"] {
        let rt = runtime(strategy, "", "    {}\n");
        let pool = &rt.pools()[0];
        let now = ManualClock::default().now();
        g.bench_function(strategy, |b| b.iter(|| black_box(pool.select(&req, &[], &entropy, now))));
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit");
    let cfg = config::RateLimitConfig {
        requests_per_minute: u32::MAX,
        burst_size: Some(u32::MAX),
        key_header: None,
        backend: Default::default(),
        redis: None,
    };
    let settings = RateSettings::compile(&cfg, "", &mut |_, _| {}).unwrap();
    let epoch = ManualClock::default().now();
    let limiter = RateLimiter::new(settings.clone(), epoch);
    let mut t = epoch;
    g.bench_function("one_hot_key", |b| {
        b.iter(|| {
            t += Duration::from_nanos(10);
            black_box(limiter.check_key("tenant-a", t))
        })
    });
    let many = RateLimiter::new(settings, epoch);
    let keys: Vec<String> = (0..100_000).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        many.check_key(k, epoch);
    }
    let mut i = 0usize;
    g.bench_function("100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(many.check_key(&keys[i], epoch))
        })
    });
    g.finish();
}

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    exp: u64,
}

fn jwt(c: &mut Criterion) {
    let secret = "bench-secret-bench-secret-bench-secret";
    let rt = runtime("round_robin", "auth", &format!("    authentication: {{ jwt_secret: \"{secret}\" }}\n"));
    let clock = ManualClock::default();
    let claims = Claims { sub: "u".into(), exp: clock.unix_now().as_secs() + 3600 };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    let req = RequestInfo {
        method: "GET",
        path: "/x",
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        headers: &HeaderPairs(&headers),
    };
    let entropy = SeededEntropy::new(1);
    let now = Now { mono: clock.now(), unix: clock.unix_now() };
    c.bench_function("plan_with_jwt_hs256", |b| b.iter(|| black_box(rt.plan(&req, now, &entropy)).is_forward()));
    let plain = runtime("round_robin", "", "    {}\n");
    let req = RequestInfo {
        method: "GET",
        path: "/x",
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        headers: &HeaderPairs(&NO_HEADERS),
    };
    c.bench_function("plan_no_middlewares", |b| b.iter(|| black_box(plain.plan(&req, now, &entropy)).is_forward()));
    // Every resilience policy of SPEC §9 configured, none of them acting (the idle-cost target).
    let policies = runtime_with(
        "round_robin",
        "    retry: { attempts: 2, budget: { percent: 20, min_concurrent: 3 } }\n    outlier: { consecutive_5xx: 5 }\n\
         \x20   panic_threshold_percent: 50\n    circuit_breaker: { max_requests: 1024, max_retries: 3 }\n\
         \x20   slow_start_secs: 30\n",
        "",
        "    {}\n",
    );
    c.bench_function("plan_with_idle_policies", |b| {
        b.iter(|| black_box(policies.plan(&req, now, &entropy)).is_forward())
    });
}

trait Forward {
    fn is_forward(&self) -> bool;
}
impl Forward for locci_core::Plan<'_> {
    fn is_forward(&self) -> bool {
        matches!(self, locci_core::Plan::Forward { .. })
    }
}

/// What the traffic profile adds to a request (SPEC §11; target under 100 ns): the rate-limit key's hash,
/// the clock read at the response head that ends the upstream's latency (the proxy's tokio clock; the start
/// reuses a read the attempt makes anyway), and the count itself.
fn profile(c: &mut Criterion) {
    let mut g = c.benchmark_group("profile");
    let plain = runtime("round_robin", "", "    {}\n");
    let limited =
        runtime("round_robin", "rate_limit", "    rate_limiting: { requests_per_minute: 60, key_header: X-Key }\n");
    let clock = locci_core::clock::TokioClock::new();
    let unix = clock.unix_now().as_secs();
    let served = |route: &locci_core::route::Route, rate_key| locci_core::runtime::Served {
        route: Some(route.index()),
        method: "GET",
        status: 200,
        unix_secs: unix,
        rate_key,
        server: Some((0, 2)),
        upstream_latency: Some(Duration::from_micros(1234)),
    };
    let route = &plain.routes()[0];
    g.bench_function("observe", |b| b.iter(|| plain.observe(black_box(&served(route, None)))));
    let keys: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();
    let route = &limited.routes()[0];
    let start = clock.now();
    let mut i = 0usize;
    // What the proxy does per request on a rate-limited route: the key's hash, the clock read at the response
    // head, and the count.
    let request_path = |key: &str| {
        let headers = [("x-key", key)];
        let req = RequestInfo {
            method: "GET",
            path: "/x",
            query: None,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            headers: &HeaderPairs(&headers),
        };
        let mut s = served(route, route.rate_key(&req));
        s.upstream_latency = Some(clock.now().saturating_duration_since(start));
        limited.observe(black_box(&s))
    };
    // Ten keys: each is in the table, the common case of a few heavy tenants.
    g.bench_function("request_path_10_keys", |b| {
        b.iter(|| {
            i = (i + 1) % 10;
            request_path(&keys[i])
        })
    });
    // A thousand keys through a table of a hundred: every request evicts (the worst case, a key flood).
    g.bench_function("request_path_key_flood", |b| {
        b.iter(|| {
            i = (i + 7) % keys.len();
            request_path(&keys[i])
        })
    });
    g.finish();
}

/// What W3C trace context costs a request: continuing the client's trace, or starting one, and writing the
/// upstream's `traceparent`.
fn trace(c: &mut Criterion) {
    use locci_core::trace::TraceContext;
    let mut g = c.benchmark_group("trace");
    let entropy = SeededEntropy::new(7);
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    g.bench_function("continue_and_write", |b| {
        b.iter(|| TraceContext::start(black_box(Some(sent)), 1.0, &entropy).traceparent())
    });
    g.bench_function("new_and_write", |b| b.iter(|| TraceContext::start(black_box(None), 0.1, &entropy).traceparent()));
    g.finish();
}

criterion_group!(benches, route_matching, selection, rate_limit, jwt, profile, trace);
criterion_main!(benches);

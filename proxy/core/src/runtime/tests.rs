use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::clock::{Clock, ManualClock, SeededEntropy};
use crate::config::load;
use crate::request::HeaderPairs;

fn runtime(text: &str, previous: Option<&Runtime>) -> Runtime {
    let valid = load(text, &|_| None).unwrap();
    Runtime::build(valid, previous, previous.map_or(1, |p| p.generation() + 1), ManualClock::default().now())
}

const GW: &str = "mode: api_gateway\nupstreams:\n  u: { servers: [\"10.0.0.1:80\", \"10.0.0.2:80\"] }\n  v: { servers: [\"10.0.0.3:80\"] }\n\
                  api_gateway:\n  routes:\n    users: { path_pattern: \"^/users\", upstream: u, methods: [GET], middlewares: [cors, rate_limit] }\n\
                  \x20   other: { path_pattern: \"^/other\", upstream: v }\n  middlewares:\n    rate_limiting: { requests_per_minute: 60, burst_size: 1 }\n\
                  \x20   cors: { allowed_origins: [\"https://a\"], allowed_methods: [GET, POST] }\n";

fn plan<'a>(rt: &'a Runtime, method: &'a str, path: &'a str, headers: &'a HeaderPairs<'a>) -> Plan<'a> {
    let clock = ManualClock::default();
    let req = RequestInfo { method, path, query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers };
    rt.plan(&req, Now { mono: clock.now(), unix: clock.unix_now() }, &SeededEntropy::new(1))
}

fn status(p: &Plan<'_>) -> u16 {
    match p {
        Plan::Respond { failure, .. } => failure.reply().status,
        Plan::Forward { .. } | Plan::Remote { .. } => 0,
    }
}

#[test]
fn plan_routes_filters_and_limits() {
    let rt = runtime(GW, None);
    let none = HeaderPairs(&[]);
    assert!(matches!(plan(&rt, "GET", "/users/1", &none), Plan::Forward { group: 0, .. }));
    assert_eq!(status(&plan(&rt, "GET", "/nope", &none)), 404);
    assert_eq!(status(&plan(&rt, "POST", "/users", &none)), 405);
    assert_eq!(status(&plan(&rt, "GET", "/users/1", &none)), 429, "burst of one is spent");
    let pre = [("origin", "https://a"), ("access-control-request-method", "POST")];
    assert_eq!(status(&plan(&rt, "OPTIONS", "/users", &HeaderPairs(&pre))), 204, "preflight ignores route methods");
}

#[test]
fn all_servers_down_is_503() {
    let rt = runtime(GW, None);
    let now = ManualClock::default().now();
    let v = &rt.pools()[1];
    assert!(v.probe(0, false, now).is_none(), "no active checks configured: probes are ignored");
    v.report(0, crate::upstream::Live::GatewayFailure, now);
    let rt2 = runtime(
        &GW.replace(
            "v: { servers: [\"10.0.0.3:80\"] }",
            "v: { servers: [\"10.0.0.3:80\"], passive: { consecutive_failures: 1 } }",
        ),
        None,
    );
    rt2.pools()[1].report(0, crate::upstream::Live::GatewayFailure, now);
    assert_eq!(status(&plan(&rt2, "GET", "/other", &HeaderPairs(&[]))), 503);
}

#[test]
fn reload_keeps_unchanged_groups_and_route_buckets_and_replaces_changed_ones() {
    let old = runtime(GW, None);
    let none = HeaderPairs(&[]);
    assert!(matches!(plan(&old, "GET", "/users", &none), Plan::Forward { .. }));
    let changed = GW.replace("v: { servers: [\"10.0.0.3:80\"] }", "v: { servers: [\"10.0.0.4:80\"] }");
    let new = runtime(&changed, Some(&old));
    assert_eq!(new.generation(), 2);
    assert!(Arc::ptr_eq(&old.pools()[0], &new.pools()[0]), "unchanged group carried over");
    assert!(!Arc::ptr_eq(&old.pools()[1], &new.pools()[1]), "changed group rebuilt");
    assert_eq!(status(&plan(&new, "GET", "/users", &none)), 429, "the route's bucket survived the reload");
}

fn redis_runtime(on_error: &str) -> Runtime {
    let text = format!(
        "mode: api_gateway\nupstreams: {{ u: {{ servers: [\"10.0.0.1:80\"] }} }}\n\
         api_gateway:\n  routes: {{ api: {{ path_pattern: \"^/\", upstream: u, middlewares: [rate_limit] }} }}\n\
         \x20 middlewares:\n    rate_limiting: {{ requests_per_minute: 60, burst_size: 5, key_header: X-Key, backend: redis, \
         redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"p:\", on_error: {on_error} }} }}\n"
    );
    runtime(&text, None)
}

#[test]
fn a_shared_store_limit_pauses_the_plan_and_the_reply_decides() {
    use crate::middleware::{StoreAnswer, StoreReply};
    let clock = ManualClock::default();
    let now = Now { mono: clock.now(), unix: clock.unix_now() };
    let e = SeededEntropy::new(1);
    let h = [("x-key", "tenant")];
    let h = HeaderPairs(&h);
    let req =
        RequestInfo { method: "GET", path: "/x", query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers: &h };
    for (on_error, reply, expect) in [
        ("allow", StoreReply::Answer(StoreAnswer { allowed: true, ahead_ns: 1_000_000_000 }), 0),
        ("allow", StoreReply::Answer(StoreAnswer { allowed: false, ahead_ns: 6_000_000_000 }), 429),
        ("allow", StoreReply::Unavailable, 0),
        ("deny", StoreReply::Unavailable, 429),
    ] {
        let rt = redis_runtime(on_error);
        let Plan::Remote { route, pending } = rt.plan(&req, now, &e) else { panic!("expected a pause") };
        assert_eq!(pending.key, "p:api:h:tenant", "prefix, route and bucket key");
        let plan = rt.resume(route, pending, reply, &req, now, &e);
        assert_eq!(status(&plan), expect, "{on_error} {reply:?}");
        if let Plan::Respond { failure, .. } = &plan {
            let headers = failure.reply().headers;
            assert!(headers.iter().any(|(n, _)| *n == "retry-after"), "{headers:?}");
        }
    }
}

const EDGE: &str = "mode: api_gateway\nserver: { client: { max_body_bytes: 100 } }\nupstreams:\n  u: { servers: [\"10.0.0.1:80\"] }\n\
                    api_gateway:\n  routes:\n    small: { path_pattern: \"^/small\", upstream: u }\n\
                    \x20   big: { path_pattern: \"^/big\", upstream: u, max_body_bytes: 1000 }\n\
                    \x20   free: { path_pattern: \"^/free\", upstream: u, max_body_bytes: 0 }\n\
                    \x20   nows: { path_pattern: \"^/nows\", upstream: u, websocket: false }\n";

#[test]
fn declared_bodies_over_the_route_limit_and_refused_upgrades_are_answered_before_the_middlewares() {
    let rt = runtime(EDGE, None);
    let length = |n: &'static str| [("content-length", n)];
    let (l101, l1001) = (length("101"), length("1001"));
    assert_eq!(status(&plan(&rt, "POST", "/small", &HeaderPairs(&length("100")))), 0, "at the limit is fine");
    assert_eq!(status(&plan(&rt, "POST", "/small", &HeaderPairs(&l101))), 413, "the server default");
    assert_eq!(status(&plan(&rt, "POST", "/big", &HeaderPairs(&l101))), 0, "the route's own limit");
    assert_eq!(status(&plan(&rt, "POST", "/big", &HeaderPairs(&l1001))), 413);
    assert_eq!(status(&plan(&rt, "POST", "/free", &HeaderPairs(&length("99999999")))), 0, "0 = no limit");
    let upgrade = [("upgrade", "websocket"), ("connection", "upgrade")];
    assert_eq!(status(&plan(&rt, "GET", "/nows", &HeaderPairs(&upgrade))), 400);
    assert_eq!(status(&plan(&rt, "GET", "/small", &HeaderPairs(&upgrade))), 0, "upgrades are on by default");
}

proptest::proptest! {
    // Whatever a client sends — any method, path and headers, through normalisation, the framing verdict and
    // the whole plan with every middleware — the core answers and never panics.
    #[test]
    fn arbitrary_request_heads_are_answered_without_a_panic(
        method in "[A-Z]{1,8}|\\PC{0,8}",
        path in "/\\PC{0,48}|\\PC{0,16}",
        headers in proptest::collection::vec(("[a-zA-Z-]{1,16}|content-length|transfer-encoding|host|authorization|origin|upgrade", "\\PC{0,32}"), 0..8),
    ) {
        const FULL: &str = "mode: api_gateway\nupstreams:\n  u: { servers: [\"10.0.0.1:80\"], strategy: consistent, hash_key: path }\n\
            api_gateway:\n  routes:\n    all: { path_pattern: \"^/\", upstream: u, strip_prefix: true, middlewares: [cors, rate_limit, auth] }\n\
            \x20 middlewares:\n    rate_limiting: { requests_per_minute: 60, key_header: X-Key }\n\
            \x20   authentication: { jwt_secret: a-long-enough-test-secret-value, excluded_paths: [\"^/public/\"] }\n\
            \x20   cors: { allowed_origins: [\"*\"] }\n";
        let rt = runtime(FULL, None);
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _ = crate::edge::check_framing(1, &path, pairs.iter().map(|(k, v)| (*k, v.as_bytes())));
        if let Ok(normalized) = rt.normalize_path(&path) {
            let headers = HeaderPairs(&pairs);
            let p = plan(&rt, &method, &normalized, &headers);
            if let Plan::Forward { route, .. } = p {
                let _ = route.upstream_path(&normalized, None);
            }
        }
    }
}

#[test]
fn the_traffic_profile_survives_a_reload_for_the_routes_and_servers_that_keep_their_names() {
    let old = runtime(GW, None);
    let users = old.routes().iter().find(|r| &*r.name == "users").map(Route::index);
    let other = old.routes().iter().find(|r| &*r.name == "other").map(Route::index);
    let t = 1_800_000_000;
    let served = |route, status, server| Served {
        route,
        method: "GET",
        status,
        unix_secs: t,
        rate_key: Some(7),
        server,
        upstream_latency: Some(Duration::from_millis(3)),
    };
    old.observe(&served(users, 200, Some((0, 1))));
    old.observe(&served(users, 503, Some((0, 1))));
    old.observe(&served(other, 200, Some((1, 0))));
    old.observe(&served(None, 404, None));
    // `other` is renamed `misc`; group v's server changes; group u keeps 10.0.0.2 and gains a server.
    let changed = GW
        .replace("other: {", "misc: {")
        .replace("[\"10.0.0.3:80\"]", "[\"10.0.0.4:80\"]")
        .replace("[\"10.0.0.1:80\", \"10.0.0.2:80\"]", "[\"10.0.0.2:80\", \"10.0.0.5:80\"]");
    let new = runtime(&changed, Some(&old));
    let profile = new.traffic_profile(t);
    let routes: Vec<(&str, u64)> = profile.routes.iter().map(|r| (r.route.as_str(), r.requests)).collect();
    assert_eq!(routes, vec![("misc", 0), ("users", 2)]);
    let users = &profile.routes[1];
    assert_eq!(users.per_minute.last(), Some(&2));
    assert_eq!(users.rate_limit_keys.as_ref().map(|k| (k.distinct, k.top[0].requests)), Some((1, 2)));
    let servers: Vec<(&str, &str, u64, u64)> =
        profile.servers.iter().map(|s| (s.upstream.as_str(), s.server.as_str(), s.requests, s.errors)).collect();
    assert_eq!(
        servers,
        vec![("u", "10.0.0.2:80", 2, 1), ("u", "10.0.0.5:80", 0, 0), ("v", "10.0.0.4:80", 0, 0)],
        "10.0.0.2 keeps its counts at its new position; new servers start at zero"
    );
    assert_eq!(profile.memory_bytes, 2 * crate::profile::ROUTE_BYTES + 3 * crate::profile::SERVER_BYTES);
}

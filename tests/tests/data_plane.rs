//! The data plane against real loopback servers: balancing, failover, health, timeouts, routing.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use locci_e2e::*;

fn gateway(servers: &str, upstream_extra: &str, routes: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\", upstream_timeout_secs: 5 }}\ncontrol_api: {{ enabled: false }}\n\
         upstreams:\n  pool:\n    servers: {servers}\n{upstream_extra}\napi_gateway:\n  routes:\n{routes}"
    )
}

const CATCH_ALL: &str = "    all: { path_pattern: \"^/\", upstream: pool }\n";

fn count(proxy: &Proxy, n: usize, path: &str) -> BTreeMap<String, usize> {
    let http = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = http.get(proxy.url(path)).send().unwrap();
        assert_eq!(resp.status(), 200);
        *seen.entry(served_by(resp)).or_insert(0) += 1;
    }
    seen
}

#[test]
fn round_robin_spreads_300_requests_evenly_over_three_servers() {
    let b = backends(3);
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), "    strategy: round_robin", CATCH_ALL));
    let seen = count(&proxy, 300, "/x");
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), vec![100, 100, 100], "{seen:?}");
}

#[test]
fn weights_one_to_three_give_a_quarter_and_three_quarters() {
    let b = backends(2);
    let servers = format!("[{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 3 }}]", b[0].addr, b[1].addr);
    let proxy = Proxy::start(&gateway(&servers, "    strategy: weighted", CATCH_ALL));
    let seen = count(&proxy, 400, "/x");
    let s0 = seen.get("s0").copied().unwrap_or(0) as f64 / 400.0;
    assert!((0.22..=0.28).contains(&s0), "s0 share {s0} in {seen:?}");
}

#[test]
fn consistent_hashing_keeps_keys_and_moves_about_a_third_when_a_server_goes() {
    let b = backends(3);
    let extra = "    strategy: consistent\n    hash_key: header:X-User-Id";
    let full = Proxy::start(&gateway(&servers_yaml(&b), extra, CATCH_ALL));
    let fewer = Proxy::start(&gateway(&servers_yaml(&b[..2]), extra, CATCH_ALL));
    let http = client();
    let key_to = |proxy: &Proxy, key: usize| {
        served_by(http.get(proxy.url("/k")).header("X-User-Id", format!("user-{key}")).send().unwrap())
    };
    let mut moved = 0;
    for key in 0..300 {
        let first = key_to(&full, key);
        assert_eq!(first, key_to(&full, key), "key {key} changed server without any change");
        let after = key_to(&fewer, key);
        if first != "s2" {
            assert_eq!(first, after, "key {key} moved although its server stayed");
        } else {
            moved += 1;
        }
    }
    let share = f64::from(moved) / 300.0;
    assert!((0.2..=0.47).contains(&share), "{moved} of 300 keys were on the removed server");
}

#[test]
fn killing_one_of_three_under_steady_traffic_loses_no_request_and_it_comes_back() {
    // Goal: failover hides a dead server from clients, health checks take it out within
    // unhealthy_threshold x interval + timeout, and bring it back once it recovers.
    let mut b = backends(3);
    let extra = "    retries: 2\n    health_check: { interval_secs: 1, timeout_secs: 1, path: /health, unhealthy_threshold: 2, healthy_threshold: 1 }";
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), extra, CATCH_ALL));
    let http = client();
    let dead_addr = b[1].addr;
    let killed_at = Instant::now();
    drop(b.remove(1));
    let mut marked_down_after = None;
    for _ in 0..200 {
        let resp = http.get(proxy.url("/steady")).send().unwrap();
        assert_eq!(resp.status(), 200, "a request failed while a server died");
        if marked_down_after.is_none() && proxy.logs().contains("server marked down") {
            marked_down_after = Some(killed_at.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let detected = marked_down_after.expect("server never marked down");
    // Bound from the spec: 2 failures x 1 s interval + 1 s timeout, plus one interval of phase.
    assert!(detected <= Duration::from_secs(4), "marked down after {detected:?}");
    let back = Backend::start("s1-again", dead_addr).unwrap();
    assert!(wait_until(WAIT, || proxy.logs().contains("server marked up")), "never marked up:\n{}", proxy.logs());
    let seen = count(&proxy, 30, "/after");
    assert!(seen.contains_key("s1-again"), "recovered server gets no traffic: {seen:?}");
    drop(back);
}

#[test]
fn a_server_slower_than_the_route_timeout_gives_504_within_the_timeout() {
    let b = backends(1);
    let routes = "    slow: { path_pattern: \"^/slow\", upstream: pool, timeout_secs: 2 }\n";
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), "", routes));
    let started = Instant::now();
    let resp = client().get(proxy.url("/slow?ms=6000")).send().unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 504);
    assert!(took >= Duration::from_secs(2) && took <= Duration::from_millis(2400), "504 after {took:?}");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "upstream timeout");
}

#[test]
fn all_servers_down_gives_a_quick_502_then_503_not_a_hang() {
    let dead: Vec<String> = (0..2).map(|_| format!("\"{}\"", free_addr())).collect();
    let extra = "    retries: 1\n    health_check: { interval_secs: 1, timeout_secs: 1 }";
    let proxy = Proxy::start(&gateway(&format!("[{}]", dead.join(", ")), extra, CATCH_ALL));
    let http = client();
    let started = Instant::now();
    let first = http.get(proxy.url("/")).send().unwrap().status().as_u16();
    assert!(first == 502 || first == 503, "got {first}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        wait_until(WAIT, || http.get(proxy.url("/")).send().unwrap().status() == 503),
        "never answered 503 once every server was marked down"
    );
}

#[test]
fn strip_prefix_removes_the_prefix_keeps_the_query_and_never_sends_an_empty_path() {
    let b = backends(1);
    let routes = "    api: { path_pattern: \"^/api\", upstream: pool, strip_prefix: true }\n";
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), "", routes));
    let http = client();
    for (sent, path, query) in
        [("/api/users/7", "/users/7", None), ("/api", "/", None), ("/api/x?a=1&b=2", "/x", Some("a=1&b=2"))]
    {
        let body: serde_json::Value = http.get(proxy.url(sent)).send().unwrap().json().unwrap();
        assert_eq!(body["path"], path, "{sent}");
        assert_eq!(body["query"].as_str(), query, "{sent}");
    }
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let b = backends(1);
    let routes = "    read: { path_pattern: \"^/users\", upstream: pool, methods: [GET] }\n    write: { path_pattern: \"^/users/\", upstream: pool, methods: [POST, PUT] }\n";
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), "", routes));
    let http = client();
    let resp = http.get(proxy.url("/orders")).send().unwrap();
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "no route");
    assert_eq!(body["request_id"], id);
    let resp = http.delete(proxy.url("/users/1")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, POST, PUT");
    assert_eq!(http.get(proxy.url("/users/1")).send().unwrap().status(), 200);
}

#[test]
fn the_longest_pattern_beats_a_catch_all_listed_first() {
    let b = backends(2);
    let cfg = format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\ncontrol_api: {{ enabled: false }}\n\
         upstreams:\n  a: {{ servers: [\"{}\"] }}\n  b: {{ servers: [\"{}\"] }}\n\
         api_gateway:\n  routes:\n    all: {{ path_pattern: \"^/\", upstream: a }}\n    users: {{ path_pattern: \"^/users\", upstream: b }}\n",
        b[0].addr, b[1].addr
    );
    let proxy = Proxy::start(&cfg);
    let http = client();
    assert_eq!(served_by(http.get(proxy.url("/users/1")).send().unwrap()), "s1");
    assert_eq!(served_by(http.get(proxy.url("/other")).send().unwrap()), "s0");
}

#[test]
fn load_balancer_mode_forwards_every_path_and_method_to_its_group() {
    let b = backends(2);
    let cfg = format!(
        "mode: load_balancer\nserver: {{ bind_address: \"{{BIND}}\" }}\ncontrol_api: {{ enabled: false }}\n\
         upstreams:\n  web: {{ servers: {} }}\nload_balancer: {{ upstream: web }}\n",
        servers_yaml(&b)
    );
    let proxy = Proxy::start(&cfg);
    let http = client();
    let a = served_by(http.post(proxy.url("/any/path")).body("x").send().unwrap());
    let c = served_by(http.delete(proxy.url("/else")).send().unwrap());
    assert_ne!(a, c, "round robin alternates");
}

#[test]
fn forwarding_headers_and_request_ids_reach_the_upstream_and_come_back() {
    let b = backends(1);
    let proxy = Proxy::start(&gateway(&servers_yaml(&b), "", CATCH_ALL));
    let http = client();
    let resp = http
        .get(proxy.url("/h"))
        .header("X-Request-Id", "client-id-1")
        .header("Keep-Alive", "timeout=5")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id-1");
    let body: serde_json::Value = resp.json().unwrap();
    let h = &body["headers"];
    assert_eq!(h["x-request-id"], "client-id-1");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
    assert!(h.get("keep-alive").is_none(), "hop-by-hop header forwarded");
    let resp = http.get(proxy.url("/h")).header("X-Request-Id", "bad id;").send().unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "invalid id replaced by a UUID, got {id}");
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["headers"]["x-request-id"], id.as_str());
}

#[test]
fn upstream_connections_are_reused_and_max_idle_zero_turns_reuse_off() {
    // Goal: keep-alive to upstreams is on, and connection_pool.max_idle reaches Pingora's pool.
    // Method: 20 sequential requests through one worker; count the distinct client ports the server saw.
    let b = backends(1);
    let peers = |pool: &str| {
        let cfg = format!(
            "mode: load_balancer\nserver:\n  bind_address: \"{{BIND}}\"\n  workers: 1\n  connection_pool: {pool}\n\
             control_api: {{ enabled: false }}\nupstreams:\n  u: {{ servers: {} }}\nload_balancer: {{ upstream: u }}\n",
            servers_yaml(&b)
        );
        let proxy = Proxy::start(&cfg);
        let http = client();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let body: serde_json::Value = http.get(proxy.url("/p")).send().unwrap().json().unwrap();
            seen.insert(body["peer"].as_str().unwrap().to_string());
        }
        seen.len()
    };
    assert_eq!(peers("{ max_idle: 16, idle_timeout_secs: 60 }"), 1, "one pooled connection serves every request");
    assert_eq!(peers("{ max_idle: 0 }"), 20, "with no pool every request opens a connection");
}

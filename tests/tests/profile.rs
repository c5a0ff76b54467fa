//! The traffic profile of a running proxy (`GET /api/v1/traffic-profile`) after a known request mix: exact
//! counts per route and server, rate-limit keys shown only as hashes, and the same profile rebuilt from the
//! proxy's own JSON access log.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use locci_e2e::*;
use serde_json::{Value, json};

const KEY: &str = "ctl-key-profile";

fn config(api: &[Backend], web: &[Backend]) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\nlogging: {{ format: json }}\n\
         upstreams:\n  app: {{ servers: {}, strategy: round_robin }}\n  site: {{ servers: {} }}\n\
         api_gateway:\n  routes:\n\
         \x20   api: {{ path_pattern: \"^/api\", upstream: app, strip_prefix: true, methods: [GET, POST], middlewares: [rate_limit] }}\n\
         \x20   web: {{ path_pattern: \"^/web\", upstream: site }}\n\
         \x20 middlewares:\n    rate_limiting: {{ requests_per_minute: 6000, burst_size: 1000, key_header: X-Key }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\", api_key: \"{KEY}\" }}\n",
        servers_yaml(api),
        servers_yaml(web)
    )
}

/// The FNV-1a hash the profile names a key by, of the bucket key `h:VALUE`.
fn key_hash(value: &str) -> String {
    let h =
        format!("h:{value}").bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{h:016x}")
}

#[test]
fn the_profile_counts_a_known_mix_exactly_and_the_access_log_gives_the_same() {
    let api = backends(2);
    let web = backends(1);
    api[1].delay_ms(40);
    let proxy = Proxy::start(&config(&api, &web));
    let http = client();
    let send = |method: reqwest::Method, path: &str, key: Option<&str>| {
        let mut req = http.request(method, proxy.url(path));
        if let Some(key) = key {
            req = req.header("X-Key", key);
        }
        req.send().unwrap().status().as_u16()
    };
    for _ in 0..5 {
        assert_eq!(send(reqwest::Method::GET, "/api/a", Some("alice")), 200);
    }
    for _ in 0..3 {
        assert_eq!(send(reqwest::Method::POST, "/api/b", Some("bob-secret-key")), 200);
    }
    for _ in 0..2 {
        assert_eq!(send(reqwest::Method::GET, "/api/status/500", Some("alice")), 500);
    }
    for _ in 0..4 {
        assert_eq!(send(reqwest::Method::GET, "/web/page", None), 200);
    }
    assert_eq!(send(reqwest::Method::GET, "/nowhere", None), 404);
    assert_eq!(send(reqwest::Method::DELETE, "/api/a", Some("alice")), 405);

    let fetch = || -> Value {
        let resp = http.get(proxy.control_url("/api/v1/traffic-profile")).bearer_auth(KEY).send().unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    };
    // The profile is counted when a request's log line is written, just after its answer: wait for the last.
    assert!(wait_until(WAIT, || fetch()["routes"][1]["requests"] == 4), "web never reached 4: {}", fetch());
    let live = fetch();
    let routes = live["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["route"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "web"], "no route for the 404 and the 405");
    let api_route = &routes[0];
    assert_eq!(api_route["requests"], 10);
    assert_eq!(api_route["methods"], json!({"GET": 7, "POST": 3}));
    assert_eq!(api_route["statuses"], json!({"200": 8, "500": 2}));
    let minutes: u64 = api_route["per_minute"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(minutes, 10, "every request falls in the last hour");
    assert_eq!(
        api_route["rate_limit_keys"],
        json!({"distinct": 2, "top": [{"key": key_hash("alice"), "requests": 7}, {"key": key_hash("bob-secret-key"), "requests": 3}]})
    );
    assert_eq!(routes[1]["rate_limit_keys"], Value::Null, "web has no rate limit");
    let text = live.to_string();
    assert!(!text.contains("alice") && !text.contains("bob-secret-key"), "a key value leaked: {text}");

    let servers = live["servers"].as_array().unwrap();
    let row = |addr: &str| servers.iter().find(|s| s["server"] == addr).unwrap_or_else(|| panic!("{addr}: {live}"));
    let (a0, a1, w0) = (row(&api[0].addr.to_string()), row(&api[1].addr.to_string()), row(&web[0].addr.to_string()));
    assert_eq!((a0["upstream"].as_str(), w0["upstream"].as_str()), (Some("app"), Some("site")));
    assert_eq!(a0["requests"].as_u64().unwrap() + a1["requests"].as_u64().unwrap(), 10);
    assert_eq!(a0["requests"], 5, "round robin over two servers");
    assert_eq!(a0["errors"].as_u64().unwrap() + a1["errors"].as_u64().unwrap(), 2);
    assert_eq!((w0["requests"].as_u64(), w0["errors"].as_u64()), (Some(4), Some(0)));
    assert_eq!(a1["latency_us"]["count"], 5, "every answered request is timed");
    assert!(a1["latency_us"]["p50"].as_u64().unwrap() >= 40_000, "the slow server's latency: {a1}");
    assert!(a0["latency_us"]["mean"].as_u64().unwrap() < a1["latency_us"]["mean"].as_u64().unwrap());
    assert!(live["memory_bytes"].as_u64().unwrap() > 0);

    // The JSON access log tells the same story: `locci-sim profile --from-log` builds the same profile.
    let (logged, requests) = locci_core::profile::from_log(std::io::Cursor::new(proxy.logs())).unwrap();
    assert_eq!(requests, 16, "one request line per request, the 404 and 405 included");
    let without_window = |p: &Value| -> Vec<Value> {
        p["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["per_minute"] = Value::Null;
                r
            })
            .collect()
    };
    let logged = serde_json::to_value(logged).unwrap();
    assert_eq!(without_window(&logged), without_window(&live));
    assert_eq!(logged["servers"], live["servers"]);

    assert_eq!(http.get(proxy.control_url("/api/v1/traffic-profile")).send().unwrap().status(), 401);
}

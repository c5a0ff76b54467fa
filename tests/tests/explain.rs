//! `locci-proxy explain` on the shipped example configs, and `GET /api/v1/explain` on a running proxy with
//! live health: the route chosen and why, 404/405, strip_prefix, middleware order and a real token's verdict,
//! and that explaining takes no turn of the balancer.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use locci_e2e::*;
use serde_json::Value;

const GATEWAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/gateway.yaml");
const LB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/load-balancer.yaml");
/// The example's secret, given the way an operator would (its `${LOCCI_JWT_SECRET:-…}`).
const SECRET: &str = "explain-test-secret-0123456789abcdef";
const KEY: &str = "ctl-key-explain";

fn explain(config: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(["explain", "--config", config])
        .args(args)
        .env("LOCCI_JWT_SECRET", SECRET)
        .output()
        .unwrap()
}

fn json(config: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = explain(config, &all);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A token the example's authentication accepts: its issuer, its audience, an hour to live.
fn token(secret: &str) -> String {
    #[derive(serde::Serialize)]
    struct Claims {
        iss: &'static str,
        aud: &'static str,
        sub: &'static str,
        exp: u64,
    }
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = Claims { iss: "https://auth.example.com", aud: "my-api", sub: "u1", exp };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v[key].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn the_example_gateway_routes_strips_the_prefix_and_runs_its_middlewares_in_order() {
    let e = json(GATEWAY, &["GET", "/users/42?page=2"]);
    assert_eq!(names(&e["routes"], "name"), ["users_api"]);
    assert_eq!(e["routes"][0]["chosen"], true);
    assert_eq!(e["upstream_path"], "/42?page=2", "strip_prefix removes ^/users; the query is kept");
    assert_eq!(names(&e["middlewares"], "name"), ["cors", "rate_limit", "auth"]);
    assert_eq!(e["middlewares"][2]["verdict"], "no bearer token: would answer 401");
    assert_eq!(e["answer"], 401);
    assert_eq!(e["upstream"]["group"], "users");
    assert_eq!(e["timeouts"]["read_secs"], 5.0, "the route's own timeout_secs");
    // The same request with a token signed with the configured secret, issuer and audience is forwarded.
    let bearer = format!("Authorization: Bearer {}", token(SECRET));
    let e = json(GATEWAY, &["-H", &bearer, "GET", "/users/42"]);
    assert_eq!(e["middlewares"][2]["verdict"], "the bearer token verifies");
    assert_eq!(e["answer"], Value::Null, "{e}");
    let first = &e["servers"][0];
    assert_eq!((first["address"].as_str(), first["pick"].as_u64()), (Some("127.0.0.1:3002"), Some(1)), "{e}");
    // One signed with another secret is really checked, and refused; the token is never printed.
    let forged = token("not-the-configured-secret-at-all-xyz");
    let out = explain(GATEWAY, &["-H", &format!("Authorization: Bearer {forged}"), "GET", "/users/42"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auth: the token is refused (bad_signature): would answer 401"), "{text}");
    assert!(text.contains("answer: 401"), "{text}");
    assert!(!text.contains(&forged), "the token was printed");
}

#[test]
fn the_longer_pattern_wins_and_the_loser_says_why() {
    let e = json(GATEWAY, &["POST", "/users/login"]);
    assert_eq!(names(&e["routes"], "name"), ["login", "users_api"]);
    assert_eq!(e["routes"][0]["chosen"], true);
    let loser = e["routes"][1]["reason"].as_str().unwrap();
    assert!(loser.contains("route \"login\" comes first"), "{loser}");
    assert_eq!(names(&e["middlewares"], "name"), ["cors", "rate_limit"], "login has no auth");
    // A method login does not accept falls to users_api, and login says why it lost.
    let e = json(GATEWAY, &["DELETE", "/users/login"]);
    assert_eq!(e["routes"][0]["reason"], "does not accept DELETE (accepts POST)");
    assert_eq!(e["routes"][1]["chosen"], true);
}

#[test]
fn no_route_is_404_a_method_none_accepts_is_405_and_exit_codes_say_what_failed() {
    let e = json(GATEWAY, &["GET", "/nowhere"]);
    assert_eq!((e["answer"].as_u64(), e["routes"].as_array().map(Vec::len)), (Some(404), Some(0)));
    let e = json(GATEWAY, &["PATCH", "/users/1"]);
    assert_eq!(e["answer"], 405);
    assert!(e["answer_reason"].as_str().unwrap().contains("Allow: GET, POST, PUT, DELETE"), "{e}");
    let text = explain(GATEWAY, &["GET", "/nowhere"]);
    assert_eq!(text.status.code(), Some(0), "an explanation was printed, whatever the answer");
    assert!(String::from_utf8_lossy(&text.stdout).contains("answer: 404 from the proxy"));
    let bad = explain(GATEWAY, &["GET", "no-slash"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a path or an absolute URL"));
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "mode: api_gateway\nupstreams: {}\n").unwrap();
    let out = explain(broken.to_str().unwrap(), &["GET", "/"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // An absolute URL's host becomes the Host header; the load balancer's one route takes every path.
    let e = json(LB, &["GET", "http://shop.example:8080/any/path?q=1"]);
    assert_eq!(e["upstream_path"], "/any/path?q=1");
    assert_eq!(e["answer"], Value::Null);
}

fn live_config(servers: &str) -> String {
    format!(
        "mode: load_balancer\nserver: {{ bind_address: \"{{BIND}}\" }}\n\
         upstreams:\n  app:\n    servers: {servers}\n    strategy: round_robin\n\
         \x20   health_check: {{ interval_secs: 1, timeout_secs: 1, path: /health, unhealthy_threshold: 1 }}\n\
         load_balancer: {{ upstream: app }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\", api_key: \"{KEY}\" }}\n"
    )
}

#[test]
fn the_api_explains_with_live_health_and_explaining_takes_no_turn() {
    let b = backends(2);
    let dead = free_addr();
    let servers = format!("[\"{}\", \"{}\", \"{dead}\"]", b[0].addr, b[1].addr);
    let proxy = Proxy::start(&live_config(&servers));
    let http = client();
    let ask = |query: &str| -> Value {
        let resp = http.get(proxy.control_url(&format!("/api/v1/explain?{query}"))).bearer_auth(KEY).send().unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().unwrap()
    };
    // Live health: the server nobody listens on goes down at its first failed check, and explain shows it.
    let state = |e: &Value, addr: &str| {
        e["servers"].as_array().unwrap().iter().find(|s| s["address"] == addr).map(|s| s["state"].clone())
    };
    assert!(
        wait_until(WAIT, || state(&ask("path=/x"), &dead.to_string()) == Some("down".into())),
        "the dead server never showed as down"
    );
    for _ in 0..4 {
        let e = ask("method=GET&path=/x&header=X-Trace:1");
        assert_eq!(e, ask("method=GET&path=/x&header=X-Trace:1"), "explaining changed the answer");
        assert_eq!(e["servers"][2]["pick"], Value::Null, "a down server is not in the order: {e}");
        let predicted = e["servers"][0]["address"].as_str().unwrap().to_string();
        let server = served_by(http.get(proxy.url("/x")).send().unwrap());
        let index = b.iter().position(|s| s.addr.to_string() == predicted).unwrap();
        assert_eq!(server, format!("s{index}"), "explain predicted {predicted}: {e}");
    }
    let bad = http.get(proxy.control_url("/api/v1/explain?path=/&bogus=1")).bearer_auth(KEY).send().unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().unwrap();
    assert_eq!(body["error"], "unknown parameter \"bogus\"");
    let missing = http.get(proxy.control_url("/api/v1/explain?method=GET")).bearer_auth(KEY).send().unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(http.get(proxy.control_url("/api/v1/explain?path=/")).send().unwrap().status(), 401);
}

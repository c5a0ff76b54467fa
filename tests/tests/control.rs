//! The control API and hot reload against the real binary: keys, secrets, live route changes, SIGHUP,
//! reloads under load, graceful upgrade and graceful shutdown.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use locci_e2e::*;

const KEY: &str = "ctl-key-5ecret";
const JWT: &str = "jwt-5ecret-value-for-tests";

fn config(upstream_a: &str, upstream_b: &str, route_to: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\", graceful_shutdown_timeout_secs: 10 }}\n\
         upstreams:\n  a: {{ servers: {upstream_a} }}\n  b: {{ servers: {upstream_b} }}\n\
         api_gateway:\n  routes:\n    main: {{ path_pattern: \"^/\", upstream: {route_to} }}\n\
         \x20 middlewares:\n    authentication: {{ jwt_secret: \"{JWT}\" }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\", api_key: \"{KEY}\" }}\n"
    )
}

fn authed(http: &reqwest::blocking::Client, method: reqwest::Method, url: String) -> reqwest::blocking::RequestBuilder {
    http.request(method, url).bearer_auth(KEY)
}

#[test]
fn every_endpoint_needs_the_key_except_healthz_and_secrets_never_show() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&servers_yaml(&b), &servers_yaml(&b), "a"));
    let http = client();
    assert_eq!(http.get(proxy.control_url("/healthz")).send().unwrap().text().unwrap(), "ok");
    for path in [
        "/api/v1/status",
        "/api/v1/config",
        "/api/v1/routes",
        "/api/v1/upstreams",
        "/api/v1/metrics",
        "/metrics",
        "/api/v1/explain?path=/",
        "/api/v1/traffic-profile",
    ] {
        let none = http.get(proxy.control_url(path)).send().unwrap();
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        assert_eq!(http.get(proxy.control_url(path)).bearer_auth("wrong").send().unwrap().status(), 401, "{path}");
        let ok = authed(&http, reqwest::Method::GET, proxy.control_url(path)).send().unwrap();
        assert_eq!(ok.status(), 200, "{path}");
        let body = ok.text().unwrap();
        assert!(!body.contains(KEY) && !body.contains(JWT), "{path} leaks a secret: {body}");
    }
    for (method, path) in [("POST", "/api/v1/routes"), ("DELETE", "/api/v1/routes/main"), ("POST", "/api/v1/reload")] {
        let resp = http.request(method.parse().unwrap(), proxy.control_url(path)).send().unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
    let status: serde_json::Value =
        authed(&http, reqwest::Method::GET, proxy.control_url("/api/v1/status")).send().unwrap().json().unwrap();
    assert_eq!(status["mode"], "api_gateway");
    assert_eq!(status["generation"], 1);
    assert!(!proxy.logs().contains(KEY) && !proxy.logs().contains(JWT), "secret in the logs");
}

#[test]
fn routes_added_through_the_api_route_at_once_and_deleted_ones_404() {
    let b = backends(2);
    let proxy = Proxy::start(&config(&servers_yaml(&b[..1]), &servers_yaml(&b[1..]), "a"));
    let http = client();
    let add = authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/routes"))
        .json(&serde_json::json!({ "name": "to_b", "path_pattern": "^/b/", "upstream": "b", "strip_prefix": true }))
        .send()
        .unwrap();
    assert_eq!(add.status(), 201);
    let resp = http.get(proxy.url("/b/x")).send().unwrap();
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!((body["server"].as_str(), body["path"].as_str()), (Some("s1"), Some("/x")));
    let bad = authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/routes"))
        .json(&serde_json::json!({ "name": "broken", "path_pattern": "^/(", "upstream": "b" }))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("api_gateway.routes.broken.path_pattern: invalid regex"));
    let del = authed(&http, reqwest::Method::DELETE, proxy.control_url("/api/v1/routes/main")).send().unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(http.get(proxy.url("/other")).send().unwrap().status(), 404);
    assert_eq!(served_by(http.get(proxy.url("/b/again")).send().unwrap()), "s1");
}

#[test]
fn sighup_applies_a_new_upstream_and_a_broken_file_keeps_the_old_config() {
    let b = backends(2);
    let (a_yaml, b_yaml) = (servers_yaml(&b[..1]), servers_yaml(&b[1..]));
    let proxy = Proxy::start(&config(&a_yaml, &b_yaml, "a"));
    let http = client();
    assert_eq!(served_by(http.get(proxy.url("/")).send().unwrap()), "s0");
    proxy.write_config(&config(&a_yaml, &b_yaml, "b"));
    proxy.signal("HUP");
    assert!(wait_until(WAIT, || served_by(http.get(proxy.url("/")).send().unwrap()) == "s1"), "traffic never moved");
    proxy.write_config("mode: api_gateway\nupstreams: [this is: broken\n");
    proxy.signal("HUP");
    let failures = || {
        let text = authed(&http, reqwest::Method::GET, proxy.control_url("/metrics")).send().unwrap().text().unwrap();
        text.contains(r#"locci_config_reloads_total{result="failure"} 1"#)
    };
    assert!(wait_until(WAIT, failures), "failed reload not counted");
    assert!(proxy.logs().contains("config reload refused, old config kept"), "{}", proxy.logs());
    assert_eq!(served_by(http.get(proxy.url("/")).send().unwrap()), "s1", "the old config still serves");
    let api = authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/reload")).send().unwrap();
    assert_eq!(api.status(), 422);
    assert!(api.text().unwrap().contains("invalid YAML"));
    proxy.write_config(
        &config(&a_yaml, &b_yaml, "a").replace("bind_address: \"{BIND}\"", "bind_address: \"127.0.0.1:1\""),
    );
    let restart = authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/reload")).send().unwrap();
    assert_eq!(restart.status(), 422);
    assert!(restart.text().unwrap().contains("server.bind_address: changed: this needs a restart"));
    proxy.write_config(&config(&a_yaml, &b_yaml, "a"));
    let ok: serde_json::Value =
        authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/reload")).send().unwrap().json().unwrap();
    assert_eq!(ok["generation"], 3);
    assert_eq!(served_by(http.get(proxy.url("/")).send().unwrap()), "s0");
}

/// Runs `threads` clients in a loop until `stop`; returns (ok, failed) counts and the first failure.
fn load(url: String, threads: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, usize, Option<String>)> {
    std::thread::spawn(move || {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let first = Arc::new(std::sync::Mutex::new(None));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (url, stop, ok, failed, first) =
                    (url.clone(), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&first));
                std::thread::spawn(move || {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).send() {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                            other => {
                                first.lock().unwrap().get_or_insert(format!("{other:?}"));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let first = first.lock().unwrap().take();
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), first)
    })
}

#[test]
fn a_reload_every_100ms_under_steady_load_fails_no_request() {
    let b = backends(3);
    let (one, two) = (servers_yaml(&b[..2]), servers_yaml(&b[1..]));
    let proxy = Proxy::start(&config(&one, &two, "a"));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(proxy.url("/steady"), 4, Arc::clone(&stop));
    let http = client();
    for i in 0..30 {
        proxy.write_config(&config(&one, &two, if i % 2 == 0 { "b" } else { "a" }));
        let resp = authed(&http, reqwest::Method::POST, proxy.control_url("/api/v1/reload")).send().unwrap();
        assert_eq!(resp.status(), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = traffic.join().unwrap();
    assert_eq!(failed, 0, "{failed} failed requests, first: {first:?}");
    assert!(ok > 300, "only {ok} requests in 3 s");
    let status: serde_json::Value =
        authed(&http, reqwest::Method::GET, proxy.control_url("/api/v1/status")).send().unwrap().json().unwrap();
    assert_eq!(status["generation"], 31);
}

#[test]
fn a_graceful_binary_upgrade_under_load_fails_no_request() {
    let b = backends(2);
    let mut old = Proxy::start(&config(&servers_yaml(&b), &servers_yaml(&b), "a"));
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(old.url("/upgrade"), 2, Arc::clone(&stop));
    let mut new = old.spawn_upgrade();
    // The new process waits for the sockets on the upgrade socket; hand them over once it listens there.
    let sock = std::env::temp_dir().join(format!(
        "locci-proxy-{}.upgrade.sock",
        old.addr.to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>()
    ));
    assert!(wait_until(WAIT, || sock.exists()), "new process never waited for the sockets");
    old.signal("QUIT");
    assert_eq!(old.wait_exit(Duration::from_secs(30)), Some(0), "old process did not drain and exit");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = traffic.join().unwrap();
    assert_eq!(failed, 0, "{failed} failed requests, first: {first:?}");
    assert!(ok > 100, "only {ok} requests");
    let http = client();
    assert_eq!(http.get(old.url("/after")).send().unwrap().status(), 200, "the new process serves");
    assert!(wait_until(WAIT, || http.get(old.control_url("/healthz")).send().is_ok_and(|r| r.status() == 200)));
    new.kill().unwrap();
    new.wait().unwrap();
}

#[test]
fn sigterm_lets_in_flight_slow_requests_finish_then_exits() {
    let b = backends(1);
    let mut proxy = Proxy::start(&config(&servers_yaml(&b), &servers_yaml(&b), "a"));
    let url = proxy.url("/slow?ms=1500");
    let slow = std::thread::spawn(move || client().get(url).send().map(|r| r.status().as_u16()));
    assert!(wait_until(WAIT, || b[0].requests() == 1), "the slow request never reached the upstream");
    proxy.signal("TERM");
    assert_eq!(slow.join().unwrap().unwrap(), 200, "the in-flight request was cut");
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(std::net::TcpStream::connect(proxy.addr).is_err(), "still listening after exit");
}

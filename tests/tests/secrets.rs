//! Secrets by type: a config that holds a distinct secret in every secret-bearing field (the JWT secret, the
//! control API key, the password in the Redis URL) is run through every output an operator or an attacker
//! can read — `check` on a good and a bad file, every control API endpoint, a refused reload, the data plane's
//! answers and the proxy's whole log at debug level — and none of them may contain any secret.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use locci_e2e::*;

const JWT: &str = "jwt-S3CRET-0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const KEY: &str = "api-K3Y-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d";
const PASSWORD: &str = "redis-PASSW0RD-1234abcd5678efgh";
const ALL: [&str; 3] = [JWT, KEY, PASSWORD];

fn config(b: &[Backend], redis_port: u16, route_upstream: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\", api_key: \"{KEY}\" }}\n\
         upstreams: {{ u: {{ servers: {} }} }}\n\
         api_gateway:\n  routes:\n    api: {{ path_pattern: \"^/\", upstream: {route_upstream}, middlewares: [rate_limit, auth] }}\n\
         \x20 middlewares:\n    authentication: {{ jwt_secret: \"{JWT}\" }}\n\
         \x20   rate_limiting:\n      requests_per_minute: 600\n      backend: redis\n\
         \x20     redis: {{ url: \"redis://admin:{PASSWORD}@127.0.0.1:{redis_port}/0\", timeout_ms: 20 }}\n",
        servers_yaml(b)
    )
}

fn assert_clean(what: &str, text: &str) {
    for secret in ALL {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

#[test]
fn no_output_of_a_config_shows_any_of_its_secrets() {
    let b = backends(1);
    let redis_port = free_addr().port(); // nothing listens: the store falls back and logs why
    let good = config(&b, redis_port, "u");
    let bad = config(&b, redis_port, "missing");

    // `check`, on a good file and on one with an error.
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in [("good.yaml", &good), ("bad.yaml", &bad)] {
        let yaml = yaml.replace("{BIND}", "127.0.0.1:1").replace("{CONTROL}", "127.0.0.1:2");
        std::fs::write(dir.path().join(name), yaml).unwrap();
        let out = run_cli(&["check", "--config", name], dir.path());
        assert_eq!(out.status.success(), name == "good.yaml", "check {name}: {out:?}");
        assert_clean(
            &format!("check {name}"),
            &format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        );
    }

    let proxy = Proxy::start_with_env(&good, &[("RUST_LOG", "debug")]);
    let http = client();
    let api = |path: &str| {
        let resp = http.get(proxy.control_url(path)).bearer_auth(KEY).send().unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.text().unwrap()
    };
    for path in ["/healthz", "/api/v1/status", "/api/v1/routes", "/api/v1/upstreams", "/api/v1/metrics", "/metrics"] {
        assert_clean(&format!("GET {path}"), &api(path));
    }
    // The config is shown, with every secret replaced and the rest (where Redis is) still readable.
    let shown = api("/api/v1/config");
    assert_clean("GET /api/v1/config", &shown);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let middlewares = &shown["api_gateway"]["middlewares"];
    assert_eq!(middlewares["authentication"]["jwt_secret"], "[redacted]");
    assert_eq!(shown["control_api"]["api_key"], "[redacted]");
    assert_eq!(middlewares["rate_limiting"]["redis"]["url"], format!("redis://[redacted]@127.0.0.1:{redis_port}/0"));

    // The data plane: a request with a bad token, one with the secret itself as a token, one without.
    for auth in [None, Some("Bearer not.a.jwt"), Some(&*format!("Bearer {JWT}"))] {
        let mut req = http.get(proxy.url("/x"));
        if let Some(value) = auth {
            req = req.header("Authorization", value);
        }
        let resp = req.send().unwrap();
        assert_eq!(resp.status(), 401);
        let headers = format!("{:?}", resp.headers());
        assert_clean("a data-plane answer", &format!("{headers}{}", resp.text().unwrap()));
    }

    // A refused reload answers with the problems, and logs them.
    proxy.write_config(&bad);
    let resp = http.post(proxy.control_url("/api/v1/reload")).bearer_auth(KEY).send().unwrap();
    assert_eq!(resp.status(), 422);
    assert_clean("a refused reload", &resp.text().unwrap());

    assert!(proxy.logs().contains("unknown upstream"), "the refused reload was not logged:\n{}", proxy.logs());
    // Authorization headers are secrets too: the one that carried the JWT secret as its token is not logged.
    assert_clean("the proxy's log", &proxy.logs());
}

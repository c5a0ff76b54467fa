//! Metrics, logs and the monitoring files against the real binary.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use locci_e2e::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn scrape(proxy: &Proxy) -> String {
    client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap()
}

fn mixed_config(b: &[Backend], extra: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\n{extra}\
         upstreams:\n  pool:\n    servers: {}\n    health_check: {{ interval_secs: 1, timeout_secs: 1, path: /health }}\n\
         \x20 dead: {{ servers: [\"{}\"], retries: 0 }}\n\
         api_gateway:\n  routes:\n    ok: {{ path_pattern: \"^/ok\", upstream: pool }}\n\
         \x20   limited: {{ path_pattern: \"^/limited\", upstream: pool, middlewares: [rate_limit] }}\n\
         \x20   dead: {{ path_pattern: \"^/dead\", upstream: dead }}\n\
         \x20 middlewares:\n    rate_limiting: {{ requests_per_minute: 60, burst_size: 2 }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n",
        servers_yaml(b),
        free_addr()
    )
}

#[test]
fn scraped_counters_equal_a_known_mix_of_requests() {
    let b = backends(1);
    let proxy = Proxy::start(&mixed_config(&b, ""));
    let http = client();
    let expect = |path: &str, n: usize, status: u16| {
        for _ in 0..n {
            assert_eq!(http.get(proxy.url(path)).send().unwrap().status(), status, "{path}");
        }
    };
    expect("/ok", 5, 200);
    expect("/nothing-here", 3, 404);
    expect("/limited", 2, 200);
    expect("/limited", 2, 429);
    expect("/dead", 2, 502);
    let samples = parse_metrics(&scrape(&proxy));
    let requests = |route: &str, upstream: &str, status: &str| {
        metric(
            &samples,
            "locci_requests_total",
            &[("mode", "gateway"), ("route", route), ("upstream", upstream), ("status", status)],
        )
    };
    assert_eq!(requests("ok", "pool", "200"), 5.0);
    assert_eq!(requests("none", "none", "404"), 3.0);
    assert_eq!(requests("limited", "pool", "200"), 2.0);
    assert_eq!(requests("limited", "none", "429"), 2.0);
    assert_eq!(requests("dead", "dead", "502"), 2.0);
    let total: f64 = samples.iter().filter(|s| s.name == "locci_requests_total").map(|s| s.value).sum();
    assert_eq!(total, 14.0, "no other request was counted");
    assert_eq!(metric(&samples, "locci_ratelimit_rejected_total", &[("route", "limited")]), 2.0);
    assert_eq!(metric(&samples, "locci_errors_total", &[("error_type", "no_route")]), 3.0);
    assert_eq!(metric(&samples, "locci_errors_total", &[("error_type", "upstream_connect")]), 2.0);
    assert_eq!(metric(&samples, "locci_request_duration_seconds_count", &[("route", "ok")]), 5.0);
    let buckets: BTreeSet<String> = samples
        .iter()
        .filter(|s| s.name == "locci_request_duration_seconds_bucket" && s.labels["route"] == "ok")
        .map(|s| s.labels["le"].clone())
        .collect();
    let spec: BTreeSet<String> = ["0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "5", "+Inf"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(buckets, spec);
    assert_eq!(metric(&samples, "locci_active_connections", &[("upstream", "pool")]), 0.0);
}

#[test]
fn promtool_accepts_the_metrics_output_and_the_prometheus_config() {
    let b = backends(1);
    let proxy = Proxy::start(&mixed_config(&b, ""));
    let http = client();
    for path in ["/ok", "/limited", "/limited", "/limited", "/dead", "/nope"] {
        http.get(proxy.url(path)).send().unwrap();
    }
    let text = scrape(&proxy);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: scripts/setup installs Debian's prometheus package");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = repo().join("monitoring/prometheus.yml");
    let out = Command::new("promtool").args(["check", "config", "--syntax-only"]).arg(config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn killing_a_server_flips_its_health_gauge() {
    let mut b = backends(2);
    let proxy = Proxy::start(&mixed_config(&b, ""));
    let gauge = |addr: &str| {
        metric(&parse_metrics(&scrape(&proxy)), "locci_upstream_health", &[("upstream", "pool"), ("server", addr)])
    };
    let victim = b[1].addr.to_string();
    assert_eq!(gauge(&victim), 1.0);
    drop(b.remove(1));
    assert!(wait_until(WAIT, || gauge(&victim) == 0.0), "gauge never went to 0");
    assert_eq!(gauge(&b[0].addr.to_string()), 1.0);
}

#[test]
fn json_logs_parse_and_carry_the_request_fields_and_ids() {
    let b = backends(1);
    let proxy = Proxy::start(&mixed_config(&b, "logging: { format: json }\n"));
    let http = client();
    let resp = http.get(proxy.url("/ok/x")).header("X-Request-Id", "trace-me-42").send().unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    http.get(proxy.url("/dead")).header("X-Request-Id", "dead-one-7").send().unwrap();
    let line = |id: &str, message: &str| {
        let mut found = None;
        wait_until(WAIT, || {
            found = proxy
                .logs()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["request_id"] == id && v["message"] == message);
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no {message} line for {id}:\n{}", proxy.logs()))
    };
    let ok = line("trace-me-42", "request");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/ok/x");
    assert_eq!(ok["route"], "ok");
    assert_eq!(ok["upstream"], "pool");
    assert_eq!(ok["server"], b[0].addr.to_string());
    assert_eq!(ok["status"], 200);
    assert!(ok["duration_ms"].is_u64());
    let failed = line("dead-one-7", "upstream connect failed");
    assert_eq!(failed["level"], "WARN");
    assert!(failed["error_type"].as_str().unwrap().starts_with("Connect"), "{failed}");
    for l in proxy.logs().lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

#[test]
fn every_dashboard_query_names_a_metric_the_proxy_exports() {
    // Every metric family only appears once it has a series, so the requests below touch each of them.
    let b = backends(1);
    let extra = "";
    let cfg = mixed_config(&b, extra)
        .replace("    rate_limiting:", "    authentication: { jwt_secret: dashboard-test-secret }\n    rate_limiting:")
        .replace(
            "    dead: {",
            "    secure: { path_pattern: \"^/secure\", upstream: pool, middlewares: [auth] }\n    \
             flaky: { path_pattern: \"^/flaky\", upstream: flaky }\n    dead: {",
        )
        // One closed port beside a live server: round robin sends one of two requests to it, which is retried
        // (locci_upstream_retries_total) and ejects it (locci_upstream_ejections_total).
        .replace(
            "\n  dead: {",
            &format!(
                // Port 1 (tcpmux) is privileged and unused on a test machine: refused for certain, where a port
                // bound and released could be handed to the proxy itself a moment later.
                "\n  flaky: {{ servers: [\"127.0.0.1:1\", \"{}\"], outlier: {{ consecutive_gateway_failure: 1 }} }}\n  dead: {{",
                b[0].addr
            ),
        );
    let proxy = Proxy::start(&cfg);
    let http = client();
    for path in ["/ok", "/limited", "/limited", "/limited", "/secure", "/dead", "/nope", "/flaky", "/flaky"] {
        http.get(proxy.url(path)).send().unwrap();
    }
    http.post(proxy.control_url("/api/v1/reload")).send().unwrap();
    let exported: BTreeSet<String> = scrape(&proxy)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect();
    // SPEC §5 names 8; SPEC §10 adds locci_client_rejected_total, and the edge's two gauges (open client
    // connections, upgraded connections); SPEC §9 the panic gauge (one series per group) and the retry and
    // ejection counters the flaky group made count. The overflow counter has series only once a circuit
    // breaker refuses (tests/tests/resilience.rs reads it) and has no panel. SPEC §14 adds the span export's
    // counter (its three results exist from the start); the JWKS and discovery counters appear with their
    // first fetch or failed lookup (tests/tests/jwks.rs and discovery.rs read them).
    assert_eq!(exported.len(), 15, "every metric family of the spec: {exported:?}");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("monitoring/grafana/dashboards/locci.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("locci_"))
                .collect();
            assert!(!names.is_empty(), "query names no locci metric: {expr}");
            for name in names {
                let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(exported.contains(base), "{expr}: {name} is not exported ({exported:?})");
            }
            queries += 1;
        }
    }
    assert!(queries >= 8, "dashboard has only {queries} queries");
}

//! The reload gate (SPEC §11): `reload.preflight` runs `locci-sim preflight` on the live config, the file's
//! new one and the live traffic profile before a reload applies; `enforce` refuses a change over budget (422,
//! old config kept, counted as a failed reload), `report` applies it with the verdict, `dry_run` applies
//! nothing. Each test runs the real proxy and the real seeded simulator (`just sim-build`).
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::time::Duration;

use locci_e2e::*;
use serde_json::Value;

/// How long a test waits for a preflight of two seeds (about ten seconds here).
const PREFLIGHT_WAIT: Duration = Duration::from_secs(180);

/// A gateway with one route over two servers, gated by `gate` (a YAML flow mapping's inside).
fn config(servers: &str, route: &str, methods: &str, gate: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\n\
         upstreams:\n  app: {{ servers: {servers}, health_check: {{ interval_secs: 1, path: /health }} }}\n\
         api_gateway:\n  routes:\n    {route}: {{ path_pattern: \"^/api/\", upstream: app{methods} }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n\
         reload: {{ {gate} }}\n"
    )
}

fn gate(mode: &str) -> String {
    format!("preflight: {mode}, seeds: 2, timeout_secs: 170, simulator: \"{}\"", simulator().display())
}

/// A change that locks every client out: the route now takes only POST, so the GETs it serves get 405.
const POST_ONLY: &str = ", methods: [POST]";

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(PREFLIGHT_WAIT).no_proxy().build().unwrap()
}

fn get_status(proxy: &Proxy) -> u16 {
    client().get(proxy.url("/api/items")).send().unwrap().status().as_u16()
}

fn reload(proxy: &Proxy, query: &str) -> (u16, Value) {
    let resp = http().post(proxy.control_url(&format!("/api/v1/reload{query}"))).send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap())
}

fn counted(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), name, labels)
}

/// Starts the proxy and gives it some traffic, so the gate has a live profile to replay.
fn started(yaml: &str) -> Proxy {
    let proxy = Proxy::start(yaml);
    for _ in 0..20 {
        assert_eq!(get_status(&proxy), 200);
    }
    proxy
}

#[test]
fn enforce_refuses_a_change_over_budget_over_sighup_and_the_api_and_keeps_the_old_config() {
    let b = backends(2);
    let s = servers_yaml(&b);
    let proxy = started(&config(&s, "api", "", &gate("enforce")));
    proxy.write_config(&config(&s, "api", POST_ONLY, &gate("enforce")));

    proxy.signal("HUP");
    let refused = wait_until(PREFLIGHT_WAIT, || proxy.logs().contains("config reload refused by the preflight"));
    assert!(refused, "no refusal logged:\n{}", proxy.logs());
    assert!(proxy.logs().contains("the usual answer is 405 instead of 200"), "{}", proxy.logs());
    assert_eq!(get_status(&proxy), 200, "the old config still serves");
    assert_eq!(counted(&proxy, "locci_config_reloads_total", &[("result", "failure")]), 1.0);
    assert_eq!(
        counted(&proxy, "locci_reload_preflight_total", &[("mode", "enforce"), ("outcome", "over_budget")]),
        1.0
    );

    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "reload refused by the preflight, old config kept");
    assert_eq!(body["preflight"]["within_budget"], false);
    let problems = body["preflight"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("api GET / none: new: the usual answer is 405 instead of 200")),
        "{body}"
    );
    assert!(body["preflight"]["report"]["rows"].is_array(), "the whole report comes with the verdict");
    assert_eq!(get_status(&proxy), 200);
    assert_eq!(counted(&proxy, "locci_config_reloads_total", &[("result", "failure")]), 2.0);
    let status: Value = client().get(proxy.control_url("/api/v1/status")).send().unwrap().json().unwrap();
    assert_eq!(status["generation"], 1, "{status}");
}

#[test]
fn enforce_applies_a_change_that_changes_nothing() {
    let b = backends(2);
    let s = servers_yaml(&b);
    let proxy = started(&config(&s, "api", "", &gate("enforce")));
    proxy.write_config(&config(&s, "items", "", &gate("enforce")));
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true);
    assert_eq!(body["generation"], 2);
    assert_eq!(body["preflight"]["within_budget"], true, "{body}");
    assert_eq!(body["preflight"]["outcome"], "within_budget");
    let routes: Value = client().get(proxy.control_url("/api/v1/routes")).send().unwrap().json().unwrap();
    assert_eq!(routes[0]["name"], "items", "{routes}");
    assert_eq!(counted(&proxy, "locci_config_reloads_total", &[("result", "success")]), 1.0);
}

#[test]
fn report_applies_a_change_over_budget_and_returns_the_verdict() {
    let b = backends(2);
    let s = servers_yaml(&b);
    let proxy = started(&config(&s, "api", "", &gate("report")));
    proxy.write_config(&config(&s, "api", POST_ONLY, &gate("report")));
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true);
    assert_eq!(body["preflight"]["mode"], "report");
    assert_eq!(body["preflight"]["within_budget"], false, "{body}");
    assert_eq!(get_status(&proxy), 405, "report applies whatever the verdict");
    assert!(proxy.logs().contains("preflight: over budget"), "{}", proxy.logs());
}

#[test]
fn a_dry_run_returns_the_verdict_and_applies_and_counts_nothing_even_with_the_gate_off() {
    let b = backends(2);
    let s = servers_yaml(&b);
    let proxy = started(&config(&s, "api", "", &gate("off")));
    proxy.write_config(&config(&s, "api", POST_ONLY, &gate("off")));
    let (status, body) = reload(&proxy, "?dry_run=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], false);
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["generation"], 1);
    assert_eq!(body["preflight"]["within_budget"], false, "{body}");
    assert_eq!(get_status(&proxy), 200, "nothing applied");
    for result in ["success", "failure"] {
        assert_eq!(counted(&proxy, "locci_config_reloads_total", &[("result", result)]), 0.0);
    }
    let (status, body) = reload(&proxy, "?dry_run=maybe");
    assert_eq!(status, 400, "{body}");

    // With the gate off an ordinary reload applies at once, with no verdict.
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["preflight"], Value::Null);
    assert_eq!(get_status(&proxy), 405);
}

#[test]
fn a_preflight_that_cannot_run_refuses_under_enforce_and_applies_under_report() {
    let b = backends(2);
    let s = servers_yaml(&b);
    let dir = tempfile::tempdir().unwrap();
    // A simulator that never finishes: the gate's time limit must end it.
    let stuck = dir.path().join("stuck-sim");
    std::fs::write(&stuck, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&stuck).status().unwrap();
    let stuck_gate = |mode: &str| format!("preflight: {mode}, timeout_secs: 1, simulator: \"{}\"", stuck.display());

    let proxy = started(&config(&s, "api", "", &stuck_gate("enforce")));
    proxy.write_config(&config(&s, "items", "", &stuck_gate("enforce")));
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["preflight"]["outcome"], "error");
    assert!(
        body["preflight"]["error"].as_str().unwrap().contains("did not finish within reload.timeout_secs (1 s)"),
        "{body}"
    );
    assert_eq!(get_status(&proxy), 200);

    let missing = "preflight: enforce, simulator: /nonexistent/locci-sim";
    let proxy = started(&config(&s, "api", "", missing));
    proxy.write_config(&config(&s, "items", "", missing));
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 422, "{body}");
    assert!(
        body["problems"][0].as_str().unwrap().contains("cannot start the preflight simulator /nonexistent/locci-sim"),
        "{body}"
    );

    let proxy = started(&config(&s, "api", "", &stuck_gate("report")));
    proxy.write_config(&config(&s, "api", POST_ONLY, &stuck_gate("report")));
    let (status, body) = reload(&proxy, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], true);
    assert_eq!(body["preflight"]["outcome"], "error");
    assert_eq!(get_status(&proxy), 405, "report applies when the preflight cannot say");
    assert_eq!(counted(&proxy, "locci_reload_preflight_total", &[("mode", "report"), ("outcome", "error")]), 1.0);
}

#[test]
fn a_bad_reload_section_is_refused_with_its_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let yaml = config(
        "[\"127.0.0.1:1\"]",
        "api",
        "",
        "preflight: enforce, seeds: 0, timeout_secs: 0, budget: { max_p99_increase: -1 }",
    )
    .replace("{BIND}", "127.0.0.1:1")
    .replace("{CONTROL}", "127.0.0.1:2");
    std::fs::write(&file, yaml).unwrap();
    let out = run_cli(&["check", "--config", file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for path in ["reload.seeds", "reload.timeout_secs", "reload.budget.max_p99_increase"] {
        assert!(text.contains(path), "{path} not named:\n{text}");
    }
    std::fs::write(&file, "mode: lb\nload_balancer: { upstream: u }\nupstreams: { u: { servers: [\"127.0.0.1:1\"] } }\nreload: { preflight: always }\n").unwrap();
    let out = run_cli(&["check", "--config", file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("reload.preflight"), "{text}");
}

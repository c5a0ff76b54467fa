//! The resilience policies of SPEC §9 against the real binary and real loopback servers: retries (on an
//! answer, on a timeout, never a POST that reached a server), the budget, outlier ejection and its growth,
//! max ejection, panic, the circuit breaker and slow start.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use locci_e2e::*;

/// A load balancer over `b` with `group` (YAML lines, four spaces in) on its group, and an open control API.
fn config(b: &[Backend], group: &str) -> String {
    format!(
        "mode: load_balancer\nserver: {{ bind_address: \"{{BIND}}\", upstream_timeout_secs: 10 }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n\
         upstreams:\n  pool:\n    servers: {}\n{group}load_balancer: {{ upstream: pool }}\n",
        servers_yaml(b)
    )
}

fn samples(proxy: &Proxy) -> Vec<Sample> {
    parse_metrics(&client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap())
}

fn upstream_metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("upstream", "pool")];
    all.extend_from_slice(labels);
    metric(&samples(proxy), name, &all)
}

/// Who answered each of `n` GETs of `path`, with its status.
fn tally(proxy: &Proxy, n: usize, path: &str) -> BTreeMap<(u16, String), usize> {
    let http = client();
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = http.get(proxy.url(path)).send().unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        let who = body["server"].as_str().or(body["error"].as_str()).unwrap_or("?").to_string();
        *seen.entry((status, who)).or_insert(0) += 1;
    }
    seen
}

#[test]
fn an_answer_a_policy_retries_goes_to_another_server_with_the_same_request_id() {
    let b = backends(2);
    b[0].fail_with(503);
    let proxy = Proxy::start(&config(
        &b,
        "    retry: { attempts: 1, on: [gateway_error], backoff: { base_ms: 1, max_ms: 5 } }\n",
    ));
    let seen = tally(&proxy, 20, "/x");
    assert_eq!(seen, BTreeMap::from([((200, "s1".to_string()), 20)]), "every 503 of s0 was retried on s1");
    let (failed, served) = (b[0].request_ids(), b[1].request_ids());
    // A retry takes the next round-robin turn, so every first attempt lands on s0 and every retry on s1.
    assert_eq!(failed.len(), 20);
    assert!(failed.iter().all(|id| served.contains(id)), "each retry carries its request's X-Request-Id");
    assert_eq!(upstream_metric(&proxy, "locci_upstream_retries_total", &[("reason", "gateway_error")]), 20.0);
}

#[test]
fn a_post_that_reached_a_server_is_never_sent_again() {
    let b = backends(2);
    b[0].fail_with(503);
    let proxy = Proxy::start(&config(&b, "    retry: { attempts: 3, on: [gateway_error, 5xx, reset, timeout] }\n"));
    let http = client();
    let mut statuses = BTreeMap::new();
    for i in 0..10 {
        let resp = http.post(proxy.url("/orders")).body(format!("order {i}")).send().unwrap();
        *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 5), (503, 5)]), "the server's 503 stands for a POST");
    let (failed, served) = (b[0].request_ids(), b[1].request_ids());
    assert!(failed.iter().all(|id| !served.contains(id)), "no POST reached a second server");
    assert_eq!(failed.len() + served.len(), 10, "each POST was delivered exactly once");
}

#[test]
fn a_slow_attempt_hits_its_per_try_timeout_and_goes_to_another_server() {
    let b = backends(2);
    // 600 ms is under any whole-second timeout, so only a fractional per-try timeout moves these to s1.
    b[0].delay_ms(600);
    let proxy = Proxy::start(&config(&b, "    retry: { attempts: 1, on: [timeout], per_try_timeout_secs: 0.2 }\n"));
    let seen = tally(&proxy, 4, "/x");
    assert_eq!(seen, BTreeMap::from([((200, "s1".to_string()), 4)]), "{seen:?}");
    assert_eq!(b[0].requests(), 4, "each first attempt took s0's round-robin turn and timed out there");
    assert_eq!(upstream_metric(&proxy, "locci_upstream_retries_total", &[("reason", "timeout")]), 4.0);
}

#[test]
fn a_budget_that_allows_no_retry_leaves_the_first_answer_and_counts_the_refusal() {
    let b = backends(2);
    b[0].fail_with(503);
    let group = "    retry: { attempts: 1, on: [gateway_error], budget: { percent: 1, min_concurrent: 0 } }\n";
    let proxy = Proxy::start(&config(&b, group));
    let seen = tally(&proxy, 10, "/x");
    let expected = BTreeMap::from([((200, "s1".to_string()), 5), ((503, "s0".to_string()), 5)]);
    assert_eq!(seen, expected, "s0's own 503 stands, no retry reached s1");
    assert_eq!(b[1].requests(), 5);
    assert_eq!(upstream_metric(&proxy, "locci_upstream_overflow_total", &[("kind", "budget")]), 5.0);
}

#[test]
fn outlier_ejections_grow_and_are_counted() {
    let b = backends(2);
    b[0].fail_with(502);
    let group = "    retries: 0\n    outlier: { consecutive_gateway_failure: 2, base_ejection_secs: 1, max_ejection_secs: 10, \
                 max_ejection_percent: 50 }\n";
    let proxy = Proxy::start(&config(&b, group));
    let health = || upstream_metric(&proxy, "locci_upstream_health", &[("server", &b[0].addr.to_string())]);
    let ejections = || upstream_metric(&proxy, "locci_upstream_ejections_total", &[("server", &b[0].addr.to_string())]);
    tally(&proxy, 4, "/x");
    assert_eq!((health(), ejections()), (0.0, 1.0), "two 502s in a row eject s0");
    let first = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || health() == 1.0), "s0 returns after its first ejection");
    tally(&proxy, 4, "/x");
    let second = Instant::now();
    assert_eq!(ejections(), 2.0);
    assert!(first.elapsed() >= Duration::from_secs(1));
    assert!(wait_until(Duration::from_secs(8), || health() == 1.0), "s0 returns after its second ejection");
    assert!(second.elapsed() >= Duration::from_secs(2), "the second ejection lasts twice the base");
    let servers: serde_json::Value =
        client().get(proxy.control_url("/api/v1/upstreams")).send().unwrap().json().unwrap();
    assert_eq!(servers[0]["servers"][0]["ejections"], 2, "{servers}");
}

#[test]
fn max_ejection_percent_keeps_half_of_a_failing_group_in() {
    let b = backends(2);
    b[0].fail_with(500);
    b[1].fail_with(500);
    let group =
        "    retries: 0\n    outlier: { consecutive_5xx: 1, base_ejection_secs: 30, max_ejection_percent: 50 }\n";
    let proxy = Proxy::start(&config(&b, group));
    let seen = tally(&proxy, 10, "/x");
    assert_eq!(seen.values().sum::<usize>(), 10);
    assert!(seen.keys().all(|(status, _)| *status == 500), "the servers' own 500s, never a 503 of the proxy: {seen:?}");
    let up = b
        .iter()
        .filter(|s| upstream_metric(&proxy, "locci_upstream_health", &[("server", &s.addr.to_string())]) == 1.0);
    assert_eq!(up.count(), 1, "one of two may be ejected");
}

#[test]
fn below_the_panic_threshold_traffic_spreads_over_every_server() {
    let b = backends(4);
    for s in &b[..3] {
        s.set_healthy(false);
    }
    let group =
        "    health_check: { interval_secs: 1, timeout_secs: 1, path: /health }\n    panic_threshold_percent: 50\n";
    let proxy = Proxy::start(&config(&b, group));
    assert!(wait_until(Duration::from_secs(5), || upstream_metric(&proxy, "locci_upstream_panic", &[]) == 1.0));
    let seen = tally(&proxy, 40, "/x");
    assert_eq!(seen.len(), 4, "all four servers answer, the three down ones too: {seen:?}");
    assert!(seen.keys().all(|(status, _)| *status == 200));
    b[0].set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || upstream_metric(&proxy, "locci_upstream_panic", &[]) == 0.0));
    let seen = tally(&proxy, 20, "/x");
    assert_eq!(seen.keys().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["s0", "s3"], "2 of 4 up: no panic");
}

#[test]
fn over_max_requests_the_proxy_answers_503_at_once_and_sends_nothing() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "    circuit_breaker: { max_requests: 1 }\n"));
    let slow = {
        let url = proxy.url("/slow?ms=1500");
        std::thread::spawn(move || client().get(url).send().unwrap().status().as_u16())
    };
    assert!(wait_until(Duration::from_secs(5), || b[0].requests() == 1), "the slow request is in flight");
    let resp = client().get(proxy.url("/x")).send().unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"], "upstream overloaded");
    assert_eq!(b[0].requests(), 1, "the refused request was not sent");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(upstream_metric(&proxy, "locci_upstream_overflow_total", &[("kind", "requests")]), 1.0);
    assert_eq!(client().get(proxy.url("/x")).send().unwrap().status(), 200, "room again once it finished");
}

#[test]
fn a_server_back_from_down_gets_a_small_share_during_slow_start() {
    let b = backends(2);
    b[0].set_healthy(false);
    let group = "    health_check: { interval_secs: 1, timeout_secs: 1, path: /health }\n    slow_start_secs: 60\n";
    let proxy = Proxy::start(&config(&b, group));
    let s0 = b[0].addr.to_string();
    assert!(wait_until(Duration::from_secs(5), || upstream_metric(
        &proxy,
        "locci_upstream_health",
        &[("server", &s0)]
    ) == 0.0));
    b[0].set_healthy(true);
    assert!(wait_until(Duration::from_secs(5), || upstream_metric(
        &proxy,
        "locci_upstream_health",
        &[("server", &s0)]
    ) == 1.0));
    let seen = tally(&proxy, 300, "/x");
    let share = *seen.get(&(200, "s0".to_string())).unwrap_or(&0) as f64 / 300.0;
    // Its weight starts at a tenth of s1's and grows by 1.5 % a second: its share stays near 0.1 / 1.1.
    assert!(share > 0.0 && share < 0.25, "s0's share right after its return: {share} ({seen:?})");
}

//! A real Prometheus (Debian's `prometheus` package: the server, not only promtool) scraping a running locci
//! through `monitoring/prometheus.yml`, with `monitoring/alerts.yml` loaded: every query of the Grafana
//! dashboard returns data, and the alerts whose conditions the traffic makes true fire.
// The end-to-end tier runs real processes in wall-clock time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use locci_e2e::*;
use serde_json::Value;

const KEY: &str = "prometheus-test-key-0123456789";
const SECRET: &str = "prometheus-test-secret-0123456789abcdef";

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A Prometheus server on a loopback port, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on the repository's own prometheus.yml, changed only where it must be to run here:
    /// the target is the proxy's control API, the key file and the rules are where this test put them, and
    /// it scrapes and evaluates every second.
    fn start(control: std::net::SocketAddr, key: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("locci_api_key");
        std::fs::write(&key_file, key).unwrap();
        std::fs::copy(repo().join("monitoring/alerts.yml"), dir.path().join("alerts.yml")).unwrap();
        let shipped = std::fs::read_to_string(repo().join("monitoring/prometheus.yml")).unwrap();
        assert!(shipped.contains("credentials_file: /etc/prometheus/locci_api_key"), "{shipped}");
        assert!(shipped.contains("\"127.0.0.1:8485\"") && shipped.contains("rule_files: [alerts.yml]"), "{shipped}");
        let config = shipped
            .replace("/etc/prometheus/locci_api_key", &key_file.to_string_lossy())
            .replace("127.0.0.1:8485", &control.to_string())
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let listen = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("prometheus is missing: scripts/setup installs Debian's prometheus package");
        let p = Prometheus { child, url: format!("http://{listen}"), _dir: dir };
        let ready = wait_until(Duration::from_secs(30), || {
            client().get(format!("{}/-/ready", p.url)).send().is_ok_and(|r| r.status().is_success())
        });
        assert!(ready, "prometheus never became ready: {}", p.log());
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let resp = client().get(format!("{}/api/v1/{path}", self.url)).query(query).send().unwrap();
        let body: Value = resp.json().unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        body["data"].clone()
    }

    /// The instant vector `expr` evaluates to now.
    fn query(&self, expr: &str) -> Vec<Value> {
        self.api("query", &[("query", expr)])["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Every `expr` of the shipped Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo().join("monitoring/grafana/dashboards/locci.json")).unwrap();
    let mut out = Vec::new();
    walk(&serde_json::from_str(&text).unwrap(), &mut out);
    out
}

fn config(b: &[Backend], dead: &[std::net::SocketAddr]) -> String {
    let dead: Vec<String> = dead.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\", api_key: \"{KEY}\" }}\n\
         upstreams:\n  pool:\n    servers: {}\n    health_check: {{ interval_secs: 1, timeout_secs: 1, path: /health }}\n\
         \x20 dead:\n    servers: [{}]\n    retries: 1\n    passive: {{ consecutive_failures: 1, cooldown_secs: 60 }}\n\
         api_gateway:\n  routes:\n    ok: {{ path_pattern: \"^/ok\", upstream: pool }}\n\
         \x20   limited: {{ path_pattern: \"^/limited\", upstream: pool, middlewares: [rate_limit] }}\n\
         \x20   private: {{ path_pattern: \"^/private\", upstream: pool, middlewares: [auth] }}\n\
         \x20   dead: {{ path_pattern: \"^/dead\", upstream: dead }}\n\
         \x20 middlewares:\n    rate_limiting: {{ requests_per_minute: 60, burst_size: 2 }}\n\
         \x20   authentication: {{ jwt_secret: \"{SECRET}\" }}\n",
        servers_yaml(b),
        dead.join(", ")
    )
}

/// Sends raw bytes and reads the answer's status.
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_real_prometheus_answers_every_dashboard_query_and_fires_the_alerts_the_traffic_makes_true() {
    let b = backends(2);
    let dead = [free_addr(), free_addr()];
    let proxy = Proxy::start(&config(&b, &dead));
    let prom = Prometheus::start(proxy.control, KEY);
    // The first scrape succeeds with the key from the file (up is 1, not 0 for a 401).
    assert!(
        wait_until(Duration::from_secs(20), || prom.query("up{job=\"locci\"} == 1").len() == 1),
        "locci was never scraped: {:?}\n{}",
        prom.query("up"),
        prom.log()
    );
    let http = client();
    let status = |path: &str| http.get(proxy.url(path)).send().unwrap().status().as_u16();
    let scrapes = || {
        prom.query("count_over_time(up{job=\"locci\"}[1h])")
            .first()
            .map_or(0.0, |r| r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0))
    };
    let good =
        config(&b, &dead).replace("{BIND}", &proxy.addr.to_string()).replace("{CONTROL}", &proxy.control.to_string());
    // Two rounds with a scrape between, so every series the traffic makes has grown between two samples and
    // every rate() has something to show.
    for round in 0..2 {
        for _ in 0..5 {
            assert_eq!(status("/ok"), 200);
        }
        assert_eq!(status("/nothing-here"), 404);
        let limited = [status("/limited"), status("/limited"), status("/limited")];
        assert!(limited.contains(&429), "{limited:?}");
        assert_eq!(status("/private"), 401);
        // Both dead servers refuse: the retry is counted, each is ejected, and every answer is a 5xx.
        for _ in 0..4 {
            assert!(matches!(status("/dead"), 502 | 503));
        }
        let ambiguous = b"GET /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(raw(proxy.addr, ambiguous), 400);
        // A reload that applies, and one that is refused (the file does not parse).
        let (applied, refused) =
            (proxy.logs().matches("config reloaded").count(), proxy.logs().matches("config reload refused").count());
        proxy.write_config(&good);
        proxy.signal("HUP");
        assert!(wait_until(WAIT, || proxy.logs().matches("config reloaded").count() > applied), "{}", proxy.logs());
        proxy.write_config("mode: [not, a, mode");
        proxy.signal("HUP");
        assert!(
            wait_until(WAIT, || proxy.logs().matches("config reload refused").count() > refused),
            "{}",
            proxy.logs()
        );
        let seen = scrapes();
        let wanted = seen + if round == 0 { 1.0 } else { 2.0 };
        assert!(wait_until(Duration::from_secs(20), || scrapes() >= wanted), "the scrapes stopped at {seen}");
    }

    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    let empty: Vec<&String> = queries.iter().filter(|q| prom.query(q).is_empty()).collect();
    assert!(empty.is_empty(), "dashboard queries with no data: {empty:?}");

    // Every rule loaded and evaluated without error.
    let groups = prom.api("rules", &[]);
    let rules: Vec<&Value> =
        groups["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(rules.len(), alert_count(), "every rule of alerts.yml is loaded: {groups}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // The ones the traffic made true: the refused reloads (firing: the rule has no `for`), the dead servers
    // and their upstream, the 5xx ratio (pending: their `for` is longer than this test).
    let rule_state = |name: &str| -> String {
        let groups = prom.api("rules", &[]);
        let rule = groups["groups"][0]["rules"].as_array().and_then(|r| r.iter().find(|r| r["name"] == name).cloned());
        rule.map(|r| r["state"].as_str().unwrap_or("").to_string()).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || rule_state("LocciReloadFailed") == "firing"),
        "{}",
        rule_state("LocciReloadFailed")
    );
    let alerts = prom.api("alerts", &[]);
    let active: Vec<(String, String)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let label = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
            (label("alertname"), label("server"))
        })
        .collect();
    for server in &dead {
        assert!(active.contains(&("LocciUpstreamServerDown".into(), server.to_string())), "{active:?}");
    }
    for name in ["LocciUpstreamAllDown", "LocciHighErrorRatio"] {
        assert!(active.iter().any(|(n, _)| n == name), "{name} is not active: {active:?}");
    }
    // And the key never reaches Prometheus's own pages.
    let targets = client().get(format!("{}/api/v1/targets", prom.url)).send().unwrap().text().unwrap();
    assert!(!targets.contains(KEY), "the API key shows in Prometheus's targets");
}

/// The alerts `monitoring/alerts.yml` defines, counted in the file itself.
fn alert_count() -> usize {
    let text = std::fs::read_to_string(repo().join("monitoring/alerts.yml")).unwrap();
    text.lines().filter(|l| l.trim_start().starts_with("- alert:")).count()
}

#[test]
fn every_alert_rule_checks_and_passes_its_unit_tests() {
    let check =
        Command::new("promtool").args(["check", "rules"]).arg(repo().join("monitoring/alerts.yml")).output().unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let found = format!("SUCCESS: {} rules found", alert_count());
    assert!(String::from_utf8_lossy(&check.stdout).contains(&found), "{}", String::from_utf8_lossy(&check.stdout));
    let test = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(repo().join("monitoring"))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every rule has a unit test that expects it to fire.
    let rules = std::fs::read_to_string(repo().join("monitoring/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo().join("monitoring/alerts.test.yml")).unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts:\n          - exp_labels")),
            "{name} has no firing test"
        );
    }
}

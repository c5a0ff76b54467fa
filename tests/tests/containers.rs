//! The container tier: the real image, real containers on a private Docker network, faults done to real
//! processes and networks (kill, pause, disconnect, SIGHUP with a changed mounted config, restart), under
//! steady load from locci-loadgen. The Docker engine is driven through its own CLI, because these faults
//! (pause, network disconnect, signals) are engine operations; each test skips with a message only where
//! no Docker engine answers.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use locci_e2e::*;

const IMAGE: &str = "locci:test";

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker CLI")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the runtime image from the binary the tests use (once per test run); false when no engine answers.
fn image() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        if Command::new("docker").arg("info").output().map(|o| !o.status.success()).unwrap_or(true) {
            eprintln!("SKIPPED: no Docker engine answers here; the container tier needs one");
            return false;
        }
        let base = Command::new("bash").arg(repo().join("scripts/base-image")).status().unwrap();
        assert!(base.success(), "scripts/base-image failed");
        let ctx = tempfile::tempdir().unwrap();
        std::fs::copy(binary(), ctx.path().join("locci-proxy")).unwrap();
        // The image ships the seeded simulator beside the proxy, for the reload gate.
        std::fs::copy(simulator(), ctx.path().join("locci-sim")).unwrap();
        std::fs::copy(repo().join("docker/config.yaml"), ctx.path().join("config.yaml")).unwrap();
        let file = repo().join("docker/Dockerfile.runtime");
        docker_ok(&["build", "-q", "-t", IMAGE, "-f", file.to_str().unwrap(), ctx.path().to_str().unwrap()]);
        true
    })
}

/// A private network with three upstream containers and the proxy; everything is removed on drop.
struct Stack {
    id: String,
    dir: tempfile::TempDir,
    proxy_port: u16,
    control_port: u16,
}

impl Stack {
    fn start(tag: &str, config: &str) -> Stack {
        let id = format!("locci-{tag}-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut stack = Stack { id: id.clone(), dir, proxy_port: 0, control_port: 0 };
        docker_ok(&["network", "create", &id]);
        for i in 1..=3 {
            let name = stack.upstream(i);
            docker_ok(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &id,
                "--network-alias",
                &format!("upstream{i}"),
                IMAGE,
                "upstream",
                "--name",
                &format!("upstream{i}"),
                "--listen",
                "0.0.0.0:8080",
            ]);
        }
        stack.write_config(config);
        let mount = format!("{}:/etc/locci/custom:ro", stack.dir.path().display());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &stack.proxy(),
            "--network",
            &id,
            "-p",
            "127.0.0.1::8484",
            "-p",
            "127.0.0.1::8485",
            "-v",
            &mount,
            IMAGE,
            "--config",
            "/etc/locci/custom/config.yaml",
        ]);
        stack.read_ports();
        assert!(
            wait_until(WAIT, || client().get(stack.url("/")).send().is_ok_and(|r| r.status() == 200)),
            "proxy container never served:\n{}",
            stack.logs()
        );
        stack
    }

    fn read_ports(&mut self) {
        let proxy = self.proxy();
        let port = |p: &str| -> u16 {
            docker_ok(&["port", &proxy, p]).lines().next().unwrap().rsplit(':').next().unwrap().parse().unwrap()
        };
        self.proxy_port = port("8484");
        self.control_port = port("8485");
    }

    fn upstream(&self, i: usize) -> String {
        format!("{}-up{i}", self.id)
    }

    fn proxy(&self) -> String {
        format!("{}-proxy", self.id)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy_port)
    }

    fn write_config(&self, yaml: &str) {
        let file = self.dir.path().join("config.yaml");
        std::fs::write(&file, yaml).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.proxy()]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Whether the proxy currently sees upstream `i` as healthy.
    fn healthy(&self, i: usize) -> Option<bool> {
        let url = format!("http://127.0.0.1:{}/api/v1/upstreams", self.control_port);
        let groups: serde_json::Value = client().get(url).send().ok()?.json().ok()?;
        let address = format!("upstream{i}:8080");
        groups[0]["servers"].as_array()?.iter().find(|s| s["address"] == address.as_str())?["healthy"].as_bool()
    }

    /// Runs locci-loadgen against the proxy (open loop, 40/s) for `secs`, in the background.
    fn load(&self, secs: u64) -> std::thread::JoinHandle<serde_json::Value> {
        let (url, json) = (self.url("/"), self.dir.path().join(format!("load-{secs}.json")));
        std::thread::spawn(move || {
            let loadgen = binary().with_file_name("locci-loadgen");
            assert!(loadgen.exists(), "{} is missing (cargo build -p locci-loadgen)", loadgen.display());
            let out = Command::new(loadgen)
                .args([
                    url.as_str(),
                    "--rate",
                    "40",
                    "--connections",
                    "8",
                    "--timeout",
                    "10s",
                    "--duration",
                    &format!("{secs}s"),
                    "--json",
                ])
                .arg(&json)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let mut names = vec![self.proxy()];
        names.extend((1..=3).map(|i| self.upstream(i)));
        for n in &names {
            let _ = docker(&["rm", "-f", n]);
        }
        let _ = docker(&["network", "rm", &self.id]);
    }
}

fn config(servers: &[usize]) -> String {
    let list: Vec<String> = servers.iter().map(|i| format!("\"upstream{i}:8080\"")).collect();
    format!(
        "mode: load_balancer\nserver: {{ bind_address: \"0.0.0.0:8484\", upstream_timeout_secs: 3, connection_pool: {{ connect_timeout_secs: 1 }} }}\n\
         upstreams:\n  app:\n    servers: [{}]\n    retries: 2\n    health_check: {{ interval_secs: 1, timeout_secs: 1, path: /health, unhealthy_threshold: 2 }}\n\
         load_balancer: {{ upstream: app }}\ncontrol_api: {{ bind_address: \"0.0.0.0:8485\" }}\n",
        list.join(", ")
    )
}

fn non_200(report: &serde_json::Value) -> Vec<String> {
    let mut bad: Vec<String> = report["status"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "200")
        .map(|(k, v)| format!("{k}x{v}"))
        .collect();
    bad.extend(report["errors"].as_object().unwrap().iter().map(|(k, v)| format!("{k}x{v}")));
    bad
}

#[test]
fn killing_an_upstream_container_fails_no_request_and_it_is_marked_down() {
    if !image() {
        return;
    }
    let stack = Stack::start("kill", &config(&[1, 2, 3]));
    let load = stack.load(8);
    std::thread::sleep(Duration::from_secs(2));
    docker_ok(&["kill", &stack.upstream(2)]);
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(false)), "never marked down:\n{}", stack.logs());
    let report = load.join().unwrap();
    assert!(non_200(&report).is_empty(), "failed requests: {:?}", non_200(&report));
}

#[test]
fn a_paused_upstream_gives_504s_within_the_timeout_then_is_marked_down_and_comes_back() {
    if !image() {
        return;
    }
    let stack = Stack::start("pause", &config(&[1, 2, 3]));
    let load = stack.load(10);
    std::thread::sleep(Duration::from_secs(2));
    docker_ok(&["pause", &stack.upstream(2)]);
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(false)), "never marked down:\n{}", stack.logs());
    let report = load.join().unwrap();
    // Requests already sent to the frozen server time out; nothing else fails.
    let bad = non_200(&report);
    assert!(bad.iter().all(|b| b.starts_with("504x")), "unexpected failures: {bad:?}");
    assert!(
        report["latency_us"]["max"].as_u64().unwrap() < 3_000_000 + 1_500_000,
        "a request waited past the timeout: {report}"
    );
    docker_ok(&["unpause", &stack.upstream(2)]);
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(true)), "never came back");
}

#[test]
fn a_disconnected_upstream_goes_down_and_comes_back_when_reconnected() {
    if !image() {
        return;
    }
    let stack = Stack::start("net", &config(&[1, 2, 3]));
    docker_ok(&["network", "disconnect", &stack.id, &stack.upstream(3)]);
    assert!(wait_until(WAIT, || stack.healthy(3) == Some(false)), "never marked down");
    docker_ok(&["network", "connect", "--alias", "upstream3", &stack.id, &stack.upstream(3)]);
    assert!(wait_until(WAIT, || stack.healthy(3) == Some(true)), "never came back");
}

#[test]
fn sighup_with_a_changed_mounted_config_moves_traffic_and_fails_nothing() {
    if !image() {
        return;
    }
    let stack = Stack::start("hup", &config(&[1, 2, 3]));
    let load = stack.load(6);
    std::thread::sleep(Duration::from_secs(2));
    stack.write_config(&config(&[1, 2]));
    docker_ok(&["kill", "-s", "HUP", &stack.proxy()]);
    assert!(wait_until(WAIT, || stack.healthy(3).is_none()), "upstream3 still in the config:\n{}", stack.logs());
    let http = client();
    for _ in 0..30 {
        assert_ne!(
            served_by(http.get(stack.url("/")).send().unwrap()),
            "upstream3",
            "traffic still reaches the removed server"
        );
    }
    let report = load.join().unwrap();
    assert!(non_200(&report).is_empty(), "failed requests: {:?}", non_200(&report));
}

#[test]
fn a_restarted_proxy_container_comes_back_and_serves() {
    if !image() {
        return;
    }
    let mut stack = Stack::start("restart", &config(&[1, 2, 3]));
    docker_ok(&["restart", "-t", "10", &stack.proxy()]);
    stack.read_ports();
    assert!(
        wait_until(WAIT, || client().get(stack.url("/")).send().is_ok_and(|r| r.status() == 200)),
        "did not come back:\n{}",
        stack.logs()
    );
}

#[test]
fn the_reload_gate_runs_the_simulator_shipped_in_the_image() {
    if !image() {
        return;
    }
    // No `reload.simulator`: the gate finds /usr/local/bin/locci-sim beside the proxy.
    let gated = |servers: &[usize]| config(servers) + "reload: { preflight: enforce, seeds: 1, timeout_secs: 120 }\n";
    let stack = Stack::start("gate", &gated(&[1, 2, 3]));
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(150)).no_proxy().build().unwrap();
    let reload = |query: &str| {
        let url = format!("http://127.0.0.1:{}/api/v1/reload{query}", stack.control_port);
        let resp = http.post(url).send().unwrap();
        (resp.status().as_u16(), resp.json::<serde_json::Value>().unwrap())
    };
    // Down to one server: when it dies, nothing serves.
    stack.write_config(&gated(&[3]));
    let (status, body) = reload("");
    assert_eq!(status, 422, "{body}\n{}", stack.logs());
    assert_eq!(body["preflight"]["within_budget"], false, "{body}");
    let problems = body["preflight"]["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p.as_str().unwrap().contains("/ one server dies: new: availability")), "{body}");
    assert_eq!(stack.healthy(1), Some(true), "the old config is kept");

    stack.write_config(&gated(&[1, 2, 3]));
    let (status, body) = reload("?dry_run=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["preflight"]["within_budget"], true, "{body}");
}

//! The container tier: the real image, real containers on a private Docker network, faults done to real
//! processes and networks (kill, pause, disconnect, SIGHUP with a changed mounted config, restart), under
//! steady load from locci-loadgen. The lifecycle goes through testcontainers (the image build, start and
//! readiness, ports, logs, kill, pause and unpause, `exec` for the signal, removal on drop even when a test
//! fails); the engine CLI only disconnects and reconnects a container's network, which testcontainers has no
//! call for. Where no engine answers, each test says so in the summary and passes as skipped; with
//! `LOCCI_REQUIRE_DOCKER=1` (as CI sets) a missing engine fails it instead.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use locci_e2e::*;
use testcontainers::core::{AccessMode, CmdWaitFor, ExecCommand, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::{SyncBuilder, SyncRunner};
use testcontainers::{Container, GenericBuildableImage, GenericImage, ImageExt};

const IMAGE: (&str, &str) = ("locci", "test");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether a Docker engine answers; without one a test is skipped, and says so on the real stderr (libtest
/// shows it in the summary, not only under --nocapture), unless LOCCI_REQUIRE_DOCKER=1 makes it a failure.
fn engine(test: &str) -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    let answers =
        *ANSWERS.get_or_init(|| Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()));
    if !answers {
        assert!(
            std::env::var("LOCCI_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "LOCCI_REQUIRE_DOCKER=1 and no Docker engine answers"
        );
        let _ =
            writeln!(std::io::stderr(), "SKIPPED {test}: no Docker engine answers here; the container tier needs one");
    }
    answers
}

/// Builds the runtime image from the binaries the tests use (once per test run).
fn image() -> GenericImage {
    static BUILT: OnceLock<GenericImage> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let base = Command::new("bash").arg(repo().join("scripts/base-image")).status().unwrap();
            assert!(base.success(), "scripts/base-image failed");
            GenericBuildableImage::new(IMAGE.0, IMAGE.1)
                .with_dockerfile(repo().join("docker/Dockerfile.runtime"))
                .with_file(binary(), "locci-proxy")
                // The image ships the seeded simulator beside the proxy, for the reload gate.
                .with_file(simulator(), "locci-sim")
                .with_file(repo().join("docker/config.yaml"), "config.yaml")
                .build_image()
                .expect("the runtime image builds")
        })
        .clone()
}

/// Runs an operation testcontainers 0.27 declares `async` on its blocking container although it blocks
/// (`Container::pause`/`unpause` call `block_on` inside): it is done by its first poll.
fn done<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a blocking container operation did not finish at once"),
    }
}

/// A private network with three upstream containers and the proxy; testcontainers removes them all (and the
/// network) when it is dropped, also when a test fails.
struct Stack {
    network: String,
    proxy: Option<Container<GenericImage>>,
    upstreams: Vec<Container<GenericImage>>,
    dir: tempfile::TempDir,
    proxy_port: u16,
    control_port: u16,
}

impl Stack {
    fn start(tag: &str, config: &str) -> Stack {
        let network = format!("locci-{tag}-{}", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let upstreams = (1..=3)
            .map(|i| {
                image()
                    .with_wait_for(WaitFor::message_on_stdout("listening on"))
                    .with_network(&network)
                    .with_container_name(upstream_name(&network, i))
                    .with_cmd(["upstream", "--name", &format!("upstream{i}"), "--listen", "0.0.0.0:8080"])
                    .start()
                    .expect("an upstream container starts")
            })
            .collect();
        let mut stack = Stack { network, proxy: None, upstreams, dir, proxy_port: 0, control_port: 0 };
        stack.write_config(config);
        let mount = Mount::bind_mount(stack.dir.path().to_string_lossy(), "/etc/locci/custom")
            .with_access_mode(AccessMode::ReadOnly);
        let proxy = image()
            .with_exposed_port(8484.tcp())
            .with_exposed_port(8485.tcp())
            .with_wait_for(WaitFor::message_on_stdout("locci-proxy started"))
            .with_network(&stack.network)
            .with_container_name(format!("{}-proxy", stack.network))
            .with_mount(mount)
            .with_cmd(["--config", "/etc/locci/custom/config.yaml"])
            .start()
            .expect("the proxy container starts");
        stack.proxy = Some(proxy);
        stack.read_ports();
        assert!(
            wait_until(WAIT, || client().get(stack.url("/")).send().is_ok_and(|r| r.status() == 200)),
            "proxy container never served:\n{}",
            stack.logs()
        );
        stack
    }

    fn proxy(&self) -> &Container<GenericImage> {
        self.proxy.as_ref().expect("started")
    }

    fn read_ports(&mut self) {
        self.proxy_port = self.proxy().get_host_port_ipv4(8484.tcp()).unwrap();
        self.control_port = self.proxy().get_host_port_ipv4(8485.tcp()).unwrap();
    }

    fn upstream(&self, i: usize) -> &Container<GenericImage> {
        &self.upstreams[i - 1]
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy_port)
    }

    fn write_config(&self, yaml: &str) {
        let file = self.dir.path().join("config.yaml");
        std::fs::write(&file, yaml.replace("{NET}", &self.network)).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }

    fn logs(&self) -> String {
        let out = self.proxy().stdout_to_vec().unwrap_or_default();
        let err = self.proxy().stderr_to_vec().unwrap_or_default();
        format!("{}{}", String::from_utf8_lossy(&out), String::from_utf8_lossy(&err))
    }

    /// Sends the proxy SIGHUP from inside its container (PID 1 is the proxy; the shell's kill builtin sends it).
    fn sighup(&self) {
        let cmd = ExecCommand::new(["sh", "-c", "kill -HUP 1"]).with_cmd_ready_condition(CmdWaitFor::exit());
        let mut exec = self.proxy().exec(cmd).unwrap();
        assert_eq!(exec.exit_code().unwrap(), Some(0), "{}", String::from_utf8_lossy(&exec.stderr_to_vec().unwrap()));
    }

    /// Whether the proxy currently sees upstream `i` as healthy.
    fn healthy(&self, i: usize) -> Option<bool> {
        let url = format!("http://127.0.0.1:{}/api/v1/upstreams", self.control_port);
        let groups: serde_json::Value = client().get(url).send().ok()?.json().ok()?;
        let address = format!("{}:8080", upstream_name(&self.network, i));
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

    /// Cuts upstream `i` off the network, or puts it back under its name. The engine CLI: testcontainers
    /// has no call to disconnect or connect a running container.
    fn network(&self, i: usize, connect: bool) {
        let verb = if connect { "connect" } else { "disconnect" };
        let out =
            Command::new("docker").args(["network", verb, &self.network, self.upstream(i).id()]).output().unwrap();
        assert!(out.status.success(), "docker network {verb}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn upstream_name(network: &str, i: usize) -> String {
    format!("{network}-up{i}")
}

fn config(servers: &[usize]) -> String {
    let list: Vec<String> = servers.iter().map(|i| format!("\"{{NET}}-up{i}:8080\"")).collect();
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
    if !engine("killing_an_upstream_container_fails_no_request_and_it_is_marked_down") {
        return;
    }
    let stack = Stack::start("kill", &config(&[1, 2, 3]));
    let load = stack.load(8);
    std::thread::sleep(Duration::from_secs(2));
    // SIGKILL, as `docker kill` sends: the process dies at once, its connections with it.
    stack.upstream(2).stop_with_timeout(Some(0)).unwrap();
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(false)), "never marked down:\n{}", stack.logs());
    let report = load.join().unwrap();
    assert!(non_200(&report).is_empty(), "failed requests: {:?}", non_200(&report));
}

#[test]
fn a_paused_upstream_gives_504s_within_the_timeout_then_is_marked_down_and_comes_back() {
    if !engine("a_paused_upstream_gives_504s_within_the_timeout_then_is_marked_down_and_comes_back") {
        return;
    }
    let stack = Stack::start("pause", &config(&[1, 2, 3]));
    let load = stack.load(10);
    std::thread::sleep(Duration::from_secs(2));
    done(stack.upstream(2).pause()).unwrap();
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(false)), "never marked down:\n{}", stack.logs());
    let report = load.join().unwrap();
    // Requests already sent to the frozen server time out; nothing else fails.
    let bad = non_200(&report);
    assert!(bad.iter().all(|b| b.starts_with("504x")), "unexpected failures: {bad:?}");
    assert!(
        report["latency_us"]["max"].as_u64().unwrap() < 3_000_000 + 1_500_000,
        "a request waited past the timeout: {report}"
    );
    done(stack.upstream(2).unpause()).unwrap();
    assert!(wait_until(WAIT, || stack.healthy(2) == Some(true)), "never came back");
}

#[test]
fn a_disconnected_upstream_goes_down_and_comes_back_when_reconnected() {
    if !engine("a_disconnected_upstream_goes_down_and_comes_back_when_reconnected") {
        return;
    }
    let stack = Stack::start("net", &config(&[1, 2, 3]));
    stack.network(3, false);
    assert!(wait_until(WAIT, || stack.healthy(3) == Some(false)), "never marked down");
    stack.network(3, true);
    assert!(wait_until(WAIT, || stack.healthy(3) == Some(true)), "never came back");
}

#[test]
fn sighup_with_a_changed_mounted_config_moves_traffic_and_fails_nothing() {
    if !engine("sighup_with_a_changed_mounted_config_moves_traffic_and_fails_nothing") {
        return;
    }
    let stack = Stack::start("hup", &config(&[1, 2, 3]));
    let load = stack.load(6);
    std::thread::sleep(Duration::from_secs(2));
    stack.write_config(&config(&[1, 2]));
    stack.sighup();
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
    if !engine("a_restarted_proxy_container_comes_back_and_serves") {
        return;
    }
    let mut stack = Stack::start("restart", &config(&[1, 2, 3]));
    stack.proxy().stop_with_timeout(Some(10)).unwrap();
    stack.proxy().start().unwrap();
    stack.read_ports();
    assert!(
        wait_until(WAIT, || client().get(stack.url("/")).send().is_ok_and(|r| r.status() == 200)),
        "did not come back:\n{}",
        stack.logs()
    );
}

#[test]
fn the_reload_gate_runs_the_simulator_shipped_in_the_image() {
    if !engine("the_reload_gate_runs_the_simulator_shipped_in_the_image") {
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

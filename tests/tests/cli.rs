//! The command line: check, bad configs, start-up errors.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::path::Path;

use locci_e2e::*;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn check_accepts_every_example_config() {
    let examples = repo().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = run_cli(&["check", "--config", path.to_str().unwrap()], repo());
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stdout).contains("config ok"));
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected example configs in examples/");
}

#[test]
fn check_rejects_every_bad_config_with_the_expected_message() {
    // Each file in tests/fixtures/bad starts with "# expect: <text>" naming the field and problem.
    let dir = repo().join("tests/fixtures/bad");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expect.is_empty(), "{} has no # expect: line", path.display());
        let out = run_cli(&["check", "--config", path.to_str().unwrap()], &dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{} was accepted", path.display());
        for e in expect {
            assert!(stderr.contains(e), "{}: expected {e:?} in:\n{stderr}", path.display());
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} bad configs");
}

#[test]
fn run_with_a_bad_config_or_a_busy_port_exits_1_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), "mode: nonsense\n").unwrap();
    let out = run_cli(&["--config", "config.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode"), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = run_cli(&["--config", "nope.yaml"], dir.path());
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let cfg = format!(
        "mode: load_balancer\nupstreams: {{ u: {{ servers: [\"127.0.0.1:1\"] }} }}\nload_balancer: {{ upstream: u }}\ncontrol_api: {{ enabled: false }}\nserver: {{ bind_address: \"{addr}\" }}\n"
    );
    std::fs::write(dir.path().join("busy.yaml"), cfg).unwrap();
    let out = run_cli(&["--config", "busy.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn env_interpolation_and_dotenv_and_cli_overrides_apply() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".env"), "LOCCI_TEST_SERVER=127.0.0.1:9\n").unwrap();
    let cfg = "mode: ${LOCCI_TEST_MODE:-load_balancer}\nupstreams: { u: { servers: [\"${LOCCI_TEST_SERVER}\"] } }\nload_balancer: { upstream: u }\n";
    std::fs::write(dir.path().join("config.yaml"), cfg).unwrap();
    let out = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mode lb"));
    let out = run_cli(&["check", "--config", "config.yaml", "--mode", "gateway"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("api_gateway: mode api_gateway needs an api_gateway section")
    );
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    let out = run_cli(&["check", "--config", "config.yaml"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCCI_TEST_SERVER is not set"));
}

#[test]
fn version_and_help_work() {
    let out = run_cli(&["--version"], repo());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("locci-proxy "));
    let out = run_cli(&["--help"], repo());
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

//! Harness for the end-to-end tests: the real `locci-proxy` binary, started on a free loopback port
//! with a config the test writes, in front of demo backends the test starts; everything stops on drop.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub use locci_proxy::demo::Backend;

/// Upper bound for any wait in these tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// The proxy binary built next to the test executables (`cargo build -p locci-proxy` first).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("locci-proxy");
    assert!(bin.exists(), "{} is missing: run `cargo build -p locci-proxy` (just test does) first", bin.display());
    bin
}

/// The seeded `locci-sim` (`just sim-build`): `$LOCCI_SIM`, else the simulator's target folder beside this
/// build's (`<target>/sim/sim/locci-sim`).
pub fn simulator() -> PathBuf {
    let bin = match std::env::var_os("LOCCI_SIM") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("test exe path");
            let target = exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target dir");
            target.join("sim").join("sim").join("locci-sim")
        }
    };
    assert!(bin.exists(), "{} is missing: run `just sim-build` (just test does) first", bin.display());
    bin
}

/// A free loopback address (bound and released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Starts `n` demo backends named s0, s1, ...
pub fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(&format!("s{i}"), "127.0.0.1:0".parse().unwrap()).unwrap()).collect()
}

/// The YAML list of the backends' addresses.
pub fn servers_yaml(backends: &[Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Runs the binary with `args` and waits for it.
pub fn run_cli(args: &[&str], dir: &Path) -> Output {
    Command::new(binary()).args(args).current_dir(dir).output().unwrap()
}

/// A running proxy.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    /// The address `{CONTROL}` stood for in the config.
    pub control: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Writes `yaml` (where `{BIND}` stands for the listen address) and starts the proxy on it.
    pub fn start(yaml: &str) -> Proxy {
        Self::start_with_env(yaml, &[])
    }

    /// Same, with extra environment variables.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_with(yaml, env, &[])
    }

    /// Same, with files (name, content) written beside the config first.
    pub fn start_with(yaml: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> Proxy {
        let addr = free_addr();
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let control = free_addr();
        let yaml = yaml.replace("{BIND}", &addr.to_string()).replace("{CONTROL}", &control.to_string());
        std::fs::write(dir.path().join("config.yaml"), yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(binary())
            .args(["--config", "config.yaml"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut proxy = Proxy { child, addr, control, dir };
        let up = wait_until(WAIT, || {
            assert!(proxy.child.try_wait().unwrap().is_none(), "proxy exited:\n{}", proxy.logs());
            TcpStream::connect(addr).is_ok()
        });
        assert!(up, "proxy did not listen on {addr}:\n{}", proxy.logs());
        proxy
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything the proxy has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://control{path}`.
    pub fn control_url(&self, path: &str) -> String {
        format!("http://{}{}", self.control, path)
    }

    /// Sends a signal (`HUP`, `TERM`, `QUIT`, …) to the proxy.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Replaces the config file atomically (write then rename, as an operator's deploy would), with the
    /// same placeholders as `start`.
    pub fn write_config(&self, yaml: &str) {
        let yaml = yaml.replace("{BIND}", &self.addr.to_string()).replace("{CONTROL}", &self.control.to_string());
        let tmp = self.dir.path().join("config.yaml.new");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.dir.path().join("config.yaml")).unwrap();
    }

    /// Waits up to `limit` for the process to exit; returns its exit code when it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut code = None;
        wait_until(limit, || match self.child.try_wait().unwrap() {
            Some(status) => {
                code = Some(status.code().unwrap_or(-1));
                true
            }
            None => false,
        });
        code
    }

    /// Starts a second process with `--upgrade` on the same config, logging to `upgrade.log`.
    pub fn spawn_upgrade(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("upgrade.log")).unwrap();
        Command::new(binary())
            .args(["--config", "config.yaml", "--upgrade"])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }
}

/// Sends signal `name` to process `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{name} {pid} failed");
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client with a bounded timeout and no proxy from the environment.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).no_proxy().build().unwrap()
}

/// The `server` field of a demo backend's JSON answer.
pub fn served_by(resp: reqwest::blocking::Response) -> String {
    let status = resp.status();
    let text = resp.text().unwrap_or_else(|e| panic!("status {status}: body unreadable: {e}"));
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {text:?}"));
    body["server"].as_str().unwrap_or("").to_string()
}

/// A test certificate authority and a server certificate for `localhost` and 127.0.0.1 that it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a fresh CA and server certificate (rcgen; nothing leaves the test).
pub fn pki() -> TestPki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "locci test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    TestPki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// A blocking HTTPS client that trusts `ca_pem` only.
pub fn tls_client(ca_pem: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

/// One sample of Prometheus text output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (the subset the prometheus crate writes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once("=\"").map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string())))
                .collect();
            Some(Sample { name: name.to_string(), labels, value: value.parse().ok()? })
        })
        .collect()
}

/// The value of the sample `name` whose labels include all of `labels`, or 0 when there is none.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

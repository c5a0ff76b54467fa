//! The reload gate (SPEC §11): before a reload applies, `locci-sim preflight` simulates the live config, the
//! new one and the reload between them under the live traffic profile, as a bounded child process (the
//! production binary does not link the simulator), and its verdict decides under `reload.preflight: enforce`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use locci_core::clock::Clock;
use locci_core::config::{Config, PreflightMode, ReloadConfig};
use locci_core::profile::TrafficProfile;
use serde_json::{Value, json};

/// How often the gate looks whether the child has finished.
const POLL: Duration = Duration::from_millis(20);

/// The most problem lines a verdict carries (the full report has them all).
const MAX_PROBLEMS: usize = 50;

/// What the preflight said about one reload.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `Some(true)` within budget, `Some(false)` over it, `None` when the preflight could not say.
    pub within_budget: Option<bool>,
    /// Each route and fault over budget, as `route METHOD / fault: problem`.
    pub problems: Vec<String>,
    /// Why the preflight could not say (it could not start, timed out, failed).
    pub error: Option<String>,
    /// How long it ran.
    pub elapsed: Duration,
    /// `locci-sim preflight --json`'s whole report, when it produced one.
    pub report: Option<Value>,
}

impl Verdict {
    fn failed(error: String, elapsed: Duration) -> Verdict {
        Verdict { within_budget: None, problems: Vec::new(), error: Some(error), elapsed, report: None }
    }

    /// Whether `mode` refuses the reload on this verdict: under `enforce`, over budget or no verdict.
    pub fn refuses(&self, mode: PreflightMode) -> bool {
        mode == PreflightMode::Enforce && self.within_budget != Some(true)
    }

    /// `within_budget`, `over_budget` or `error`: the metric label and the log's word for it.
    pub fn outcome(&self) -> &'static str {
        match self.within_budget {
            Some(true) => "within_budget",
            Some(false) => "over_budget",
            None => "error",
        }
    }

    /// The verdict as the control API returns it.
    pub fn to_json(&self, mode: PreflightMode) -> Value {
        json!({
            "mode": mode,
            "outcome": self.outcome(),
            "within_budget": self.within_budget,
            "problems": self.problems,
            "error": self.error,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "report": self.report,
        })
    }
}

/// The `locci-sim` the gate runs: `reload.simulator`, else the one beside this executable.
pub fn simulator(cfg: &ReloadConfig) -> PathBuf {
    if let Some(path) = &cfg.simulator {
        return PathBuf::from(path);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("locci-sim")));
    beside.unwrap_or_else(|| PathBuf::from("locci-sim"))
}

/// Runs the preflight of a change from `current` to `next` with `cfg`'s seeds, budgets and time limit.
/// The configs go to the child as YAML with every secret redacted by its type, so no secret leaves the
/// process (the simulated clients send no credentials, so the simulation does not need them).
pub fn run(
    cfg: &ReloadConfig,
    current: &Config,
    next: &Config,
    profile: &TrafficProfile,
    clock: &dyn Clock,
) -> Verdict {
    let started = clock.now();
    let elapsed = || clock.now().saturating_duration_since(started);
    let dir = match tempfile::Builder::new().prefix("locci-preflight-").tempdir() {
        Ok(d) => d,
        Err(e) => return Verdict::failed(format!("cannot make a temporary directory: {e}"), elapsed()),
    };
    let write = |name: &str, text: Result<String, String>| -> Result<PathBuf, String> {
        let path = dir.path().join(name);
        let text = text?;
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    let yaml = |c: &Config| serde_yaml_ng::to_string(c).map_err(|e| format!("cannot write the config: {e}"));
    let files = (|| {
        Ok::<_, String>((
            write("current.yaml", yaml(current))?,
            write("new.yaml", yaml(next))?,
            write("profile.json", serde_json::to_string(profile).map_err(|e| e.to_string()))?,
        ))
    })();
    let (current_file, new_file, profile_file) = match files {
        Ok(f) => f,
        Err(e) => return Verdict::failed(e, elapsed()),
    };
    let report_file = dir.path().join("report.json");
    let stderr_file = dir.path().join("stderr.txt");
    let sim = simulator(cfg);
    let stderr = match std::fs::File::create(&stderr_file) {
        Ok(f) => f,
        Err(e) => return Verdict::failed(format!("cannot write {}: {e}", stderr_file.display()), elapsed()),
    };
    let mut command = Command::new(&sim);
    command
        .arg("preflight")
        .arg("--current")
        .arg(&current_file)
        .arg("--new")
        .arg(&new_file)
        .arg("--profile")
        .arg(&profile_file)
        .arg("--json")
        .arg(&report_file)
        .args(["--seeds", &cfg.seeds.to_string()])
        .args(["--max-availability-drop", &cfg.budget.max_availability_drop.to_string()])
        .args(["--max-p99-increase", &cfg.budget.max_p99_increase.to_string()])
        // One core: the proxy beside it is serving traffic.
        .args(["--jobs", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Verdict::failed(
                format!("cannot start the preflight simulator {}: {e} (set reload.simulator)", sim.display()),
                elapsed(),
            );
        }
    };
    let limit = Duration::from_secs(cfg.timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if elapsed() >= limit => {
                // A child that outlives the gate would hold a core for nothing.
                let _ = child.kill();
                let _ = child.wait();
                return Verdict::failed(
                    format!("the preflight did not finish within reload.timeout_secs ({} s)", cfg.timeout_secs),
                    elapsed(),
                );
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Verdict::failed(format!("cannot wait for the preflight: {e}"), elapsed()),
        }
    };
    let said = || last_lines(&stderr_file);
    let within = match status.code() {
        Some(0) => true,
        Some(1) => false,
        Some(code) => {
            return Verdict::failed(format!("the preflight failed (exit {code}): {}", said()), elapsed());
        }
        None => return Verdict::failed(format!("the preflight was killed: {}", said()), elapsed()),
    };
    let report: Option<Value> = std::fs::read(&report_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(report) = report else {
        return Verdict::failed(format!("the preflight wrote no report: {}", said()), elapsed());
    };
    Verdict {
        within_budget: Some(within),
        problems: problems(&report),
        error: None,
        elapsed: elapsed(),
        report: Some(report),
    }
}

/// The report's problems as one line each.
fn problems(report: &Value) -> Vec<String> {
    let rows = report.get("rows").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let text = |row: &Value, key: &str| row.get(key).and_then(Value::as_str).unwrap_or("?").to_string();
    rows.iter()
        .flat_map(|row| {
            let head = format!("{} {} / {}", text(row, "route"), text(row, "method"), text(row, "fault"));
            let list = row.get("problems").and_then(Value::as_array).cloned().unwrap_or_default();
            list.into_iter().filter_map(move |p| p.as_str().map(|p| format!("{head}: {p}")))
        })
        .take(MAX_PROBLEMS)
        .collect()
}

/// The end of what the child wrote to stderr, on one line.
fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() { "(it said nothing)".into() } else { tail.chars().take(1000).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_file::{Overrides, load_file, load_text};
    use locci_core::config::{REDACTED, redacted_json};

    /// The gate hands the simulator the configs as YAML written from the parsed config: every example must
    /// come back as the same config, and no secret may be in the text.
    #[test]
    fn a_config_written_for_the_simulator_reads_back_as_the_same_config_without_its_secrets() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.push(root.join("config.yaml"));
        files.sort();
        assert!(files.len() >= 3, "{files:?}");
        let mut read = 0;
        for file in &files {
            // An example that needs a secret from the environment is skipped; the rest must all read back.
            let Ok(valid) = load_file(file, &Overrides::default()) else { continue };
            read += 1;
            let text = serde_yaml_ng::to_string(&valid.config).unwrap();
            let again = load_text(&text, &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {:?}\n{text}", file.display(), e.lines()));
            assert_eq!(redacted_json(&again.config), redacted_json(&valid.config), "{}", file.display());
        }
        assert!(read >= 3, "only {read} of {} configs loaded", files.len());
        let secret = "mode: api_gateway\nupstreams: { u: { servers: [\"127.0.0.1:1\"] } }\n\
            api_gateway:\n  routes: { r: { path_pattern: \"^/\", upstream: u, middlewares: [auth] } }\n\
            \x20 middlewares: { authentication: { jwt_secret: s3cr3t-jwt-value } }\ncontrol_api: { api_key: k3y-s3cr3t }\n";
        let valid = load_text(secret, &Overrides::default()).unwrap();
        let text = serde_yaml_ng::to_string(&valid.config).unwrap();
        assert!(!text.contains("s3cr3t") && text.contains(REDACTED), "{text}");
        assert!(load_text(&text, &Overrides::default()).is_ok(), "the redacted config still loads:\n{text}");
    }

    #[test]
    fn only_enforce_refuses_and_only_a_verdict_within_budget_passes_it() {
        let v = |within| Verdict {
            within_budget: within,
            problems: vec![],
            error: None,
            elapsed: Duration::ZERO,
            report: None,
        };
        assert!(!v(Some(true)).refuses(PreflightMode::Enforce));
        assert!(v(Some(false)).refuses(PreflightMode::Enforce));
        assert!(v(None).refuses(PreflightMode::Enforce), "no verdict is no pass");
        for within in [Some(true), Some(false), None] {
            assert!(!v(within).refuses(PreflightMode::Report));
            assert!(!v(within).refuses(PreflightMode::Off));
        }
        assert_eq!(
            [v(Some(true)).outcome(), v(Some(false)).outcome(), v(None).outcome()],
            ["within_budget", "over_budget", "error"]
        );
    }

    #[test]
    fn a_report_s_problems_become_one_line_each_named_by_route_and_fault() {
        let report = json!({"rows": [
            {"route": "api", "method": "GET", "fault": "none", "problems": []},
            {"route": "api", "method": "GET", "fault": "one server dies", "problems": ["new: availability 97%", "reload: x"]},
        ]});
        assert_eq!(
            problems(&report),
            ["api GET / one server dies: new: availability 97%", "api GET / one server dies: reload: x"]
        );
        assert!(problems(&json!({})).is_empty());
    }
}

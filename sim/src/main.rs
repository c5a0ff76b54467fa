//! `locci-sim`: run simulated scenarios against the real proxy.
//!
//! `locci-sim run SCENARIO [--seed N] [--trace FILE] [--plot FILE.svg] [--swarm]` runs one; `locci-sim
//! sweep [SCENARIO...] --seeds N` runs many seeds in parallel processes; `locci-sim check SCENARIO --seed N`
//! runs one seed twice in separate processes and compares the trace hashes; `locci-sim explain SCENARIO`
//! prints the expanded timeline; `locci-sim profile --from-log ACCESS.jsonl` builds the traffic profile from
//! a JSON access log; `locci-sim shrink SCENARIO --seed N [--swarm]` reduces a failing run to a minimal
//! scenario and keeps it in scenarios/regressions.yaml. Exit codes: 0 pass, 1 invariant violated, 2 non-determinism, 3 bad
//! scenario, 4 the simulation itself failed.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use locci_sim::scenario::Scenario;
use locci_sim::{oracle, plot, report, trace, world};

const VIOLATION: u8 = 1;
const NONDETERMINISM: u8 = 2;
const BAD_SCENARIO: u8 = 3;
const SIM_ERROR: u8 = 4;

#[derive(Parser)]
#[command(name = "locci-sim", version, about = "Deterministic simulation of the locci proxy")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario with one seed.
    Run {
        /// Scenario file.
        scenario: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Draw fault families and intensities from the seed, then heal and demand convergence.
        #[arg(long)]
        swarm: bool,
        /// Write the trace as JSON lines.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Write an SVG timeline.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Print only the result line.
        #[arg(long)]
        quiet: bool,
        /// Proxy and simulator logs to stderr (e.g. info, debug).
        #[arg(long)]
        log: Option<String>,
    },
    /// Run scenarios over many seeds, in parallel processes.
    Sweep {
        /// Scenario files (default: every scenario in scenarios/ plus scenarios/regressions.yaml).
        scenarios: Vec<PathBuf>,
        /// Seeds per scenario.
        #[arg(long, default_value_t = 32)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Parallel processes (default: cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Swarm mode for every run.
        #[arg(long)]
        swarm: bool,
    },
    /// Run one seed twice in separate processes; fail when the trace hashes differ.
    Check {
        /// Scenario file.
        scenario: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Swarm mode.
        #[arg(long)]
        swarm: bool,
    },
    /// Build the traffic profile (the one GET /api/v1/traffic-profile serves) from a JSON access log.
    Profile {
        /// The proxy's log with `logging.format: json`; other lines are skipped.
        #[arg(long = "from-log")]
        from_log: PathBuf,
    },
    /// Simulate a config change before making it: the current config, the new one and the reload between
    /// them, under the standard fault set, compared per route against budgets.
    Preflight {
        /// The config running now.
        #[arg(long)]
        current: PathBuf,
        /// The config to change to.
        #[arg(long)]
        new: PathBuf,
        /// A traffic profile (GET /api/v1/traffic-profile or `profile --from-log`): the load and the servers.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Seeds per world.
        #[arg(long, default_value_t = 16)]
        seeds: u64,
        /// Largest availability drop allowed, in percentage points.
        #[arg(long, default_value_t = 0.1)]
        max_availability_drop: f64,
        /// Largest p99 increase allowed, in percent.
        #[arg(long, default_value_t = 25.0)]
        max_p99_increase: f64,
        /// Requests each simulated server serves at once (four times as many wait; more are shed with 503).
        #[arg(long)]
        capacity: Option<usize>,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an SVG of old and new side by side.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Worlds run at once (default: cores).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// The share each server of each group would get, with all up and with each one down.
    Distribution {
        /// The proxy config.
        #[arg(long)]
        config: PathBuf,
        /// A traffic profile (GET /api/v1/traffic-profile or `profile --from-log`): show requests per minute.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Every strategy, not only the configured one.
        #[arg(long)]
        all_strategies: bool,
        /// JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Reduce a failing run (drop events and request classes, shorten the run and its faults, lower the rate)
    /// while the same invariant keeps failing; write the minimal scenario and add it to the regressions.
    Shrink {
        /// Scenario file.
        scenario: PathBuf,
        /// The failing seed.
        #[arg(long)]
        seed: u64,
        /// The failing run is a swarm run (it is written down as the plain scenario it drew first).
        #[arg(long)]
        swarm: bool,
        /// The invariant that must keep failing (default: the first the run fails).
        #[arg(long)]
        invariant: Option<String>,
        /// Where to write the minimal scenario (default: scenarios/regressions/NAME-SEED.yaml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The regressions list to add it to.
        #[arg(long, default_value = "scenarios/regressions.yaml")]
        regressions: PathBuf,
        /// Most runs to try.
        #[arg(long, default_value_t = 200)]
        budget: usize,
    },
    /// Print the expanded timeline, the load plan size and the swarm draws.
    Explain {
        /// Scenario file.
        scenario: PathBuf,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Swarm mode.
        #[arg(long)]
        swarm: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Reading a log and asking the balancer simulate nothing: they need no seeded build.
    match &cli.command {
        Cmd::Profile { from_log } => return profile(from_log),
        Cmd::Distribution { config, profile, all_strategies, json } => {
            return distribution(config, profile.as_deref(), *all_strategies, *json);
        }
        _ => {}
    }
    // Without tokio_unstable, tokio's select! picks its branches from a thread-local RNG the seed does not
    // reach, so a seed would not replay: refuse rather than print a trace hash that means nothing.
    if !cfg!(tokio_unstable) {
        eprintln!(
            "locci-sim: built without --cfg tokio_unstable, so runs are not deterministic and seeds do not replay.\n\
             Build and run it with `just sim` or `just sim-one SCENARIO SEED` (they set RUSTFLAGS=\"--cfg tokio_unstable\")."
        );
        return ExitCode::from(SIM_ERROR);
    }
    match cli.command {
        Cmd::Run { scenario, seed, swarm, trace, plot, quiet, log } => {
            run(&scenario, seed, swarm, trace.as_deref(), plot.as_deref(), quiet, log)
        }
        Cmd::Sweep { scenarios, seeds, from, jobs, swarm } => sweep(scenarios, from, seeds, jobs, swarm),
        Cmd::Check { scenario, seed, swarm } => check(&scenario, seed, swarm),
        Cmd::Explain { scenario, seed, swarm } => explain(&scenario, seed, swarm),
        Cmd::Shrink { scenario, seed, swarm, invariant, out, regressions, budget } => {
            shrink(&scenario, seed, swarm, invariant, out, &regressions, budget)
        }
        Cmd::Profile { from_log } => profile(&from_log),
        Cmd::Distribution { config, profile, all_strategies, json } => {
            distribution(&config, profile.as_deref(), all_strategies, json)
        }
        Cmd::Preflight {
            current,
            new,
            profile,
            seeds,
            max_availability_drop,
            max_p99_increase,
            capacity,
            json,
            svg,
            jobs,
        } => {
            let profile = match profile.as_deref().map(read_profile).transpose() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("locci-sim: {e}");
                    return ExitCode::from(BAD_SCENARIO);
                }
            };
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let opts = locci_sim::preflight::Options {
                seeds: seeds.clamp(1, 1000),
                profile,
                max_availability_drop,
                max_p99_increase,
                capacity,
                jobs,
            };
            preflight(&current, &new, &opts, json.as_deref(), svg.as_deref())
        }
    }
}

/// `locci-sim preflight`: exit 0 within budget, 1 over it, 3 for a bad input, 4 when the simulation failed.
fn preflight(
    current: &Path,
    new: &Path,
    opts: &locci_sim::preflight::Options,
    json: Option<&Path>,
    svg: Option<&Path>,
) -> ExitCode {
    use locci_sim::preflight;
    let setup = match preflight::setup(current, new, opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            return ExitCode::from(BAD_SCENARIO);
        }
    };
    let runs = match preflight::run_all(&setup, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            return ExitCode::from(SIM_ERROR);
        }
    };
    let rows = preflight::compare(&setup, &runs, opts);
    print!("{}", preflight::text(&setup, &rows, opts));
    if let Some(file) = json
        && let Err(e) = std::fs::write(file, preflight::json_report(&setup, &rows, opts).to_string())
    {
        eprintln!("locci-sim: cannot write {}: {e}", file.display());
    }
    if let Some(file) = svg
        && let Err(e) = std::fs::write(file, preflight::svg(&rows))
    {
        eprintln!("locci-sim: cannot write {}: {e}", file.display());
    }
    if rows.iter().all(|r| r.problems.is_empty()) { ExitCode::SUCCESS } else { ExitCode::from(VIOLATION) }
}

/// Reads a traffic profile file (the API's JSON or `profile --from-log`'s).
fn read_profile(path: &Path) -> Result<locci_core::profile::TrafficProfile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a traffic profile: {e}", path.display()))
}

/// Loads and validates a proxy config as the proxy would (environment substituted), or says why not.
fn read_config(path: &Path) -> Result<locci_core::Runtime, String> {
    let valid = locci_proxy::config_file::load_file(path, &Default::default()).map_err(|errors| {
        let lines: Vec<String> = errors.0.iter().map(|e| format!("  {e}")).collect();
        format!("{}: invalid config:\n{}", path.display(), lines.join("\n"))
    })?;
    Ok(locci_core::Runtime::build(
        valid,
        None,
        1,
        locci_core::clock::Clock::now(&locci_core::clock::ManualClock::default()),
    ))
}

/// `locci-sim distribution`: the shares, as tables or JSON.
fn distribution(config: &Path, profile: Option<&Path>, all: bool, json: bool) -> ExitCode {
    let runtime = match read_config(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            return ExitCode::from(BAD_SCENARIO);
        }
    };
    let profile = match profile.map(read_profile).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            return ExitCode::from(BAD_SCENARIO);
        }
    };
    let groups = locci_sim::distribution::shares(&runtime, all, profile.as_ref());
    if json {
        println!("{}", locci_sim::distribution::json(&groups));
    } else {
        print!("{}", locci_sim::distribution::text(&groups));
        println!(
            "(shares of {} synthetic requests per case through the group's own selection, {} in flight at a time)",
            locci_sim::distribution::REQUESTS,
            locci_sim::distribution::IN_FLIGHT
        );
    }
    ExitCode::SUCCESS
}

/// `locci-sim profile --from-log FILE`: the profile as JSON on stdout, what was read on stderr.
fn profile(log: &Path) -> ExitCode {
    let file = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("locci-sim: cannot read {}: {e}", log.display());
            return ExitCode::from(BAD_SCENARIO);
        }
    };
    match locci_core::profile::from_log(std::io::BufReader::new(file)) {
        Ok((profile, requests)) => match serde_json::to_string_pretty(&profile) {
            Ok(json) => {
                println!("{json}");
                eprintln!(
                    "locci-sim: {requests} requests, {} routes, {} servers from {}",
                    profile.routes.len(),
                    profile.servers.len(),
                    log.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("locci-sim: {e}");
                ExitCode::from(SIM_ERROR)
            }
        },
        Err(e) => {
            eprintln!("locci-sim: {}: {e}", log.display());
            ExitCode::from(BAD_SCENARIO)
        }
    }
}

fn load(path: &Path) -> Result<Scenario, ExitCode> {
    Scenario::read(path).map_err(|problems| {
        eprintln!("locci-sim: bad scenario {}:", path.display());
        for p in problems {
            eprintln!("  {p}");
        }
        ExitCode::from(BAD_SCENARIO)
    })
}

fn run(
    path: &Path,
    seed: u64,
    swarm: bool,
    trace_file: Option<&Path>,
    plot_file: Option<&Path>,
    quiet: bool,
    log: Option<String>,
) -> ExitCode {
    if let Some(level) = log {
        let _ = tracing_subscriber_init(&level);
    }
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match world::run(&scenario, seed, swarm) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            println!("RESULT error seed={seed}");
            return ExitCode::from(SIM_ERROR);
        }
    };
    let hash = trace::hash(&result.events);
    let verdicts = oracle::check(&scenario, &result.events, result.end, swarm);
    if let Some(file) = trace_file
        && let Err(e) = std::fs::write(file, trace::jsonl(&result.events))
    {
        eprintln!("locci-sim: cannot write {}: {e}", file.display());
    }
    if let Some(file) = plot_file
        && let Err(e) = std::fs::write(file, plot::svg(&scenario.name, seed, &result))
    {
        eprintln!("locci-sim: cannot write {}: {e}", file.display());
    }
    if !quiet {
        print!("{}", report::summary(&scenario.name, seed, &result, &verdicts, hash));
    }
    let failed: Vec<&oracle::Verdict> = verdicts.iter().filter(|v| !v.ok).collect();
    let first = failed.iter().filter_map(|v| v.first_violation_us).min();
    let names: Vec<&str> = failed.iter().map(|v| v.name.as_str()).collect();
    println!(
        "RESULT {} hash={hash:016x} seed={seed} invariants={} first_violation={}",
        if failed.is_empty() { "ok" } else { "fail" },
        if names.is_empty() { "-".to_string() } else { names.join(",") },
        first.map_or("-".to_string(), oracle::fmt_us)
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        if !quiet {
            println!("replay: {}", replay(path, seed, swarm));
        }
        ExitCode::from(VIOLATION)
    }
}

fn tracing_subscriber_init(level: &str) -> Result<(), String> {
    let _ = level;
    // The proxy's own logging set-up, so the simulated proxy logs exactly as the real one does.
    locci_proxy::logging::init(&locci_core::config::LoggingConfig { level: level.into(), ..Default::default() });
    Ok(())
}

/// The command that replays a run, as it can be pasted from the repository root.
fn replay(path: &Path, seed: u64, swarm: bool) -> String {
    format!("just sim-one {} {seed}{}", path.display(), if swarm { " --swarm" } else { "" })
}

/// Where a failing sweep run's trace and plot are kept.
const FAILURES_DIR: &str = "target/sim-failures";

/// Runs a failed (scenario, seed) once more, deterministically, writing its trace and plot under
/// [`FAILURES_DIR`]; returns the paths written.
fn keep_failure(path: &Path, seed: u64, swarm: bool) -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(FAILURES_DIR);
    std::fs::create_dir_all(dir).ok()?;
    let stem = path.file_stem().map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
    let base = format!("{stem}-{seed}{}", if swarm { "-swarm" } else { "" });
    let (trace, plot) = (dir.join(format!("{base}.jsonl")), dir.join(format!("{base}.svg")));
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Process::new(exe);
    cmd.arg("run").arg(path).arg("--seed").arg(seed.to_string()).arg("--quiet");
    cmd.arg("--trace").arg(&trace).arg("--plot").arg(&plot);
    if swarm {
        cmd.arg("--swarm");
    }
    cmd.output().ok()?;
    (trace.exists() && plot.exists()).then_some((trace, plot))
}

/// One child run: its exit code and result line.
struct Outcome {
    code: i32,
    line: String,
}

fn child(path: &Path, seed: u64, swarm: bool) -> Outcome {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("locci-sim"));
    let mut cmd = Process::new(exe);
    cmd.arg("run").arg(path).arg("--seed").arg(seed.to_string()).arg("--quiet");
    if swarm {
        cmd.arg("--swarm");
    }
    match cmd.output() {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().rev().find(|l| l.starts_with("RESULT")).unwrap_or("RESULT error").to_string();
            let line = if out.status.code() == Some(i32::from(BAD_SCENARIO)) {
                format!("{line} {}", String::from_utf8_lossy(&out.stderr).trim())
            } else {
                line
            };
            Outcome { code: out.status.code().unwrap_or(-1), line }
        }
        Err(e) => Outcome { code: -1, line: format!("RESULT error cannot start: {e}") },
    }
}

/// The invariants a child run's result line names as failed (`None`: it did not run to a verdict).
fn failing(out: &Outcome) -> Option<Vec<String>> {
    if out.code != 0 && out.code != i32::from(VIOLATION) {
        return None;
    }
    let names = out.line.split(' ').find_map(|w| w.strip_prefix("invariants="))?;
    Some(names.split(',').filter(|n| *n != "-").map(String::from).collect())
}

/// Runs shrink candidates as child processes of the same binary.
struct ChildRunner {
    dir: tempfile::TempDir,
    seed: u64,
}

impl locci_sim::shrink::Runner for ChildRunner {
    fn failing(&mut self, yaml: &str) -> Option<Vec<String>> {
        let path = self.dir.path().join("candidate.yaml");
        std::fs::write(&path, yaml).ok()?;
        failing(&child(&path, self.seed, false))
    }
}

fn shrink(
    path: &Path,
    seed: u64,
    swarm: bool,
    invariant: Option<String>,
    out: Option<PathBuf>,
    regressions: &Path,
    budget: usize,
) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("locci-sim: cannot read {}: {e}", path.display());
            return ExitCode::from(BAD_SCENARIO);
        }
    };
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let invariant = match invariant {
        Some(i) => i,
        None => match failing(&child(path, seed, swarm)).and_then(|names| names.into_iter().next()) {
            Some(i) => i,
            None => {
                eprintln!("locci-sim: {} seed {seed} fails no invariant; nothing to shrink", path.display());
                return ExitCode::from(VIOLATION);
            }
        },
    };
    let mut runner = match tempfile::tempdir() {
        Ok(dir) => ChildRunner { dir, seed },
        Err(e) => {
            eprintln!("locci-sim: cannot make a scratch directory: {e}");
            return ExitCode::from(SIM_ERROR);
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let flag = if swarm { " --swarm" } else { "" };
    let name = format!("{}-{seed}{}", scenario.name, if swarm { "-swarm" } else { "" });
    eprintln!("shrink: {} seed {seed}{flag} while {invariant} fails (at most {budget} runs)", path.display());
    let job = locci_sim::shrink::Job { original: &text, dir, seed, swarm, invariant: &invariant, budget, name: &name };
    let shrunk = match locci_sim::shrink::shrink(&job, &mut runner) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("locci-sim: {e}");
            return ExitCode::from(VIOLATION);
        }
    };
    let out = out.unwrap_or_else(|| PathBuf::from(format!("scenarios/regressions/{name}.yaml")));
    let header = format!(
        "# Shrunk by `locci-sim shrink {} --seed {seed}{flag}`: {invariant} fails on seed {seed}.\n# Reductions kept: {}.\n",
        path.display(),
        if shrunk.kept.is_empty() { "none".to_string() } else { shrunk.kept.join("; ") }
    );
    let written = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&out, format!("{header}{}", shrunk.yaml)));
    if let Err(e) = written {
        eprintln!("locci-sim: cannot write {}: {e}", out.display());
        return ExitCode::from(SIM_ERROR);
    }
    let list = std::fs::read_to_string(regressions).unwrap_or_default();
    let note = format!("shrunk from {} seed {seed}{flag}: {invariant}", path.display());
    if let Err(e) = std::fs::write(regressions, locci_sim::shrink::append_regression(&list, &out, seed, &note)) {
        eprintln!("locci-sim: cannot write {}: {e}", regressions.display());
        return ExitCode::from(SIM_ERROR);
    }
    println!(
        "shrunk in {} runs, {} reductions kept: {} (added to {})",
        shrunk.runs,
        shrunk.kept.len(),
        out.display(),
        regressions.display()
    );
    println!("replay: {}", replay(&out, seed, false));
    ExitCode::SUCCESS
}

fn hash_of(line: &str) -> Option<&str> {
    line.split(' ').find_map(|w| w.strip_prefix("hash="))
}

fn check(path: &Path, seed: u64, swarm: bool) -> ExitCode {
    if let Err(code) = load(path) {
        return code;
    }
    let (a, b) = (child(path, seed, swarm), child(path, seed, swarm));
    println!("first:  {}", a.line);
    println!("second: {}", b.line);
    match (hash_of(&a.line), hash_of(&b.line)) {
        (Some(x), Some(y)) if x == y => {
            println!("deterministic: the same trace hash {x} twice");
            ExitCode::SUCCESS
        }
        _ => {
            println!("NON-DETERMINISTIC: {}", replay(path, seed, swarm));
            ExitCode::from(NONDETERMINISM)
        }
    }
}

/// Scenario files, and the (scenario, seed, swarm) runs kept in scenarios/regressions.yaml.
fn default_runs(from: u64, seeds: u64, swarm: bool) -> Vec<(PathBuf, u64, bool)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("scenarios")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("regressions.yaml"));
    files.sort();
    let mut runs: Vec<(PathBuf, u64, bool)> =
        files.iter().flat_map(|f| (from..from + seeds).map(move |s| (f.clone(), s, swarm))).collect();
    runs.extend(regressions(Path::new("scenarios/regressions.yaml")));
    runs
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Regression {
    scenario: PathBuf,
    seed: u64,
    #[serde(default)]
    swarm: bool,
    #[allow(dead_code)]
    #[serde(default)]
    note: String,
}

fn regressions(path: &Path) -> Vec<(PathBuf, u64, bool)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    match serde_yaml_ng::from_str::<Option<Vec<Regression>>>(&text) {
        Ok(list) => list.unwrap_or_default().into_iter().map(|r| (r.scenario, r.seed, r.swarm)).collect(),
        Err(e) => {
            eprintln!("locci-sim: ignoring {}: {e}", path.display());
            Vec::new()
        }
    }
}

fn sweep(scenarios: Vec<PathBuf>, from: u64, seeds: u64, jobs: Option<usize>, swarm: bool) -> ExitCode {
    let runs: Vec<(PathBuf, u64, bool)> = if scenarios.is_empty() {
        default_runs(from, seeds, swarm)
    } else {
        scenarios.iter().flat_map(|f| (from..from + seeds).map(move |s| (f.clone(), s, swarm))).collect()
    };
    for path in runs.iter().map(|(p, _, _)| p).collect::<std::collections::BTreeSet<_>>() {
        if let Err(code) = load(path) {
            return code;
        }
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let bar = indicatif::ProgressBar::new(runs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} runs  {elapsed} elapsed  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let runs = Arc::new(runs);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, seed, swarm)) = runs.get(i) else { break };
                    let out = child(path, *seed, *swarm);
                    if out.code != 0 {
                        let kept = keep_failure(path, *seed, *swarm).map_or_else(String::new, |(t, p)| {
                            format!("\n  kept: {} and {}", t.display(), p.display())
                        });
                        let msg = format!(
                            "FAILED scenario={} seed={seed} {}\n  replay: {}{kept}",
                            path.display(),
                            out.line.trim_start_matches("RESULT "),
                            replay(path, *seed, *swarm)
                        );
                        // Printed whether or not a terminal shows the bar (CI logs must have it).
                        bar.suspend(|| println!("{msg}"));
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
                    }
                    bar.inc(1);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    bar.finish_with_message(format!("{} failed", failures.len()));
    println!("{} runs, {} failed", runs.len(), failures.len());
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(VIOLATION) }
}

fn explain(path: &Path, seed: u64, swarm: bool) -> ExitCode {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let expanded = world::expand(&scenario, seed, swarm);
    let plan = world::plan(&scenario, &expanded, seed);
    println!("scenario {} (seed {seed}{})", scenario.name, if swarm { ", swarm" } else { "" });
    println!("hosts: {}", scenario.hosts().join(", "));
    println!("load: {} requests planned over {}", plan.len(), humantime::format_duration(scenario.sim.duration));
    for knob in &expanded.knobs {
        println!("swarm: {knob}");
    }
    println!("timeline:");
    for (t, action) in &expanded.actions {
        println!("  {:>10}  {action:?}", humantime::format_duration(*t).to_string());
    }
    for storm in &expanded.storms {
        println!(
            "  storm {} ({}) on {} at {}/s from {} to {}",
            storm.key,
            storm.header,
            storm.path,
            storm.rate,
            humantime::format_duration(storm.from),
            humantime::format_duration(storm.to)
        );
    }
    ExitCode::SUCCESS
}

//! `locci-sim shrink`: reduces a failing run to a smaller scenario that fails the same invariant, for a
//! regression that reads at a glance. A swarm run is first written down as the plain scenario it drew (events
//! left out, durations and intensities scaled, the load's rate scaled, the heal and its convergence spelled
//! out); then, greedily, one reduction at a time is kept while the invariant still fails: drop a timeline
//! event, drop a request class, shorten the run, lower the rate, shorten an event. Each try is one run of the
//! same seed in a child process, as a sweep runs them.

use std::path::Path;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use crate::scenario::Scenario;

/// What a shrink found.
pub struct Shrunk {
    /// The minimal scenario, as YAML.
    pub yaml: String,
    /// The invariant it fails.
    pub invariant: String,
    /// The reductions kept, in order.
    pub kept: Vec<String>,
    /// Runs made.
    pub runs: usize,
}

/// Runs a scenario text with the seed (not in swarm mode) and names the invariants it fails; `None` when it
/// does not run (a reduction that made the scenario invalid).
pub trait Runner {
    /// The failing invariants of `yaml` run with the shrink's seed.
    fn failing(&mut self, yaml: &str) -> Option<Vec<String>>;
}

/// What to shrink.
pub struct Job<'a> {
    /// The scenario file's text.
    pub original: &'a str,
    /// Its directory (`body_file`s are read from there).
    pub dir: &'a Path,
    /// The failing seed.
    pub seed: u64,
    /// Whether the failing run is a swarm run.
    pub swarm: bool,
    /// The invariant that must keep failing.
    pub invariant: &'a str,
    /// Most runs to make.
    pub budget: usize,
    /// The minimal scenario's name.
    pub name: &'a str,
}

/// Shrinks the job's scenario while its invariant keeps failing, within its budget of runs. With `swarm`, the
/// run to shrink is the swarm run of `seed`, written down first.
pub fn shrink(job: &Job<'_>, runner: &mut dyn Runner) -> Result<Shrunk, String> {
    let Job { original, dir, seed, swarm, invariant, budget, name } = *job;
    let scenario = Scenario::parse(original).map_err(|e| e.join("\n"))?;
    let mut value: Value = serde_yaml_ng::from_str(original).map_err(|e| e.to_string())?;
    inline_bodies(&mut value, dir)?;
    if swarm {
        freeze(&mut value, &scenario, seed)?;
    }
    let mut runs = 0;
    let mut fails = |v: &Value, runs: &mut usize| -> bool {
        *runs += 1;
        let Ok(text) = serde_yaml_ng::to_string(v) else { return false };
        runner.failing(&text).is_some_and(|names| names.iter().any(|n| n == invariant))
    };
    if !fails(&value, &mut runs) {
        return Err(if swarm {
            format!("the swarm run written down as a plain scenario does not fail {invariant}; nothing to shrink")
        } else {
            format!("seed {seed} does not fail {invariant}; nothing to shrink")
        });
    }
    let mut kept = Vec::new();
    'outer: while runs < budget {
        for (what, candidate) in reductions(&value, invariant) {
            if runs >= budget {
                break 'outer;
            }
            if fails(&candidate, &mut runs) {
                eprintln!("shrink: kept {what}");
                kept.push(what);
                value = candidate;
                continue 'outer;
            }
        }
        break;
    }
    if let Some(root) = value.as_mapping_mut() {
        root.insert("name".into(), Value::from(name));
    }
    let yaml = serde_yaml_ng::to_string(&value).map_err(|e| e.to_string())?;
    Ok(Shrunk { yaml, invariant: invariant.to_string(), kept, runs })
}

/// Every one-step reduction of a scenario, the biggest first.
fn reductions(v: &Value, invariant: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    // The other invariants change nothing in the run, but the times they name hold the run's length up.
    let invariants = v.get("invariants").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let kept: Vec<Value> = invariants.iter().filter(|i| invariant_name(i) == Some(invariant)).cloned().collect();
    if kept.len() < invariants.len() {
        let mut c = v.clone();
        set(&mut c, &[], "invariants", Value::Sequence(kept));
        out.push((format!("every invariant but {invariant} dropped"), c));
    }
    let timeline = v.get("timeline").and_then(Value::as_sequence).cloned().unwrap_or_default();
    for i in (0..timeline.len()).rev() {
        let mut c = v.clone();
        if let Some(t) = c.get_mut("timeline").and_then(Value::as_sequence_mut) {
            t.remove(i);
        }
        out.push((format!("timeline[{i}] dropped ({})", fault_name(&timeline[i])), c));
    }
    let classes = v.get("load").and_then(|l| l.get("requests")).and_then(Value::as_sequence).map_or(0, Vec::len);
    if classes > 1 {
        for i in (0..classes).rev() {
            let mut c = v.clone();
            if let Some(r) = c.get_mut("load").and_then(|l| l.get_mut("requests")).and_then(Value::as_sequence_mut) {
                r.remove(i);
            }
            out.push((format!("load.requests[{i}] dropped"), c));
        }
    }
    let duration =
        v.get("sim").and_then(|s| s.get("duration")).and_then(as_duration).unwrap_or(Duration::from_secs(60));
    // Never shorter than a time an invariant or the timeline names: a window cut off by the end of the run
    // fails for want of requests, not for the reason being shrunk.
    let floor = named_times(v).max(Duration::from_secs(1));
    for f in [0.5, 0.75] {
        let shorter = Duration::from_secs(duration.mul_f64(f).as_secs());
        if shorter >= floor && shorter < duration {
            let mut c = v.clone();
            set(&mut c, &["sim"], "duration", duration_value(shorter));
            out.push((format!("sim.duration {} -> {}", show(duration), show(shorter)), c));
        }
    }
    if let Some(rate) = v.get("load").and_then(|l| l.get("rate")).and_then(Value::as_f64)
        && v.get("load").and_then(|l| l.get("stages")).is_none()
    {
        for f in [0.5, 0.75] {
            let lower = (rate * f).floor();
            if lower >= 1.0 && lower < rate {
                let mut c = v.clone();
                set(&mut c, &["load"], "rate", Value::from(lower));
                out.push((format!("load.rate {rate} -> {lower}"), c));
            }
        }
    }
    for (i, event) in timeline.iter().enumerate() {
        let Some((name, fault)) = fault_of(event) else { continue };
        let Some(length) = fault.get("for").and_then(as_duration) else { continue };
        let half = Duration::from_millis((length.as_millis() / 2) as u64);
        if half >= Duration::from_millis(100) {
            let mut c = v.clone();
            if let Some(f) = c
                .get_mut("timeline")
                .and_then(|t| t.get_mut(i))
                .and_then(|e| e.get_mut(name.as_str()))
                .and_then(Value::as_mapping_mut)
            {
                f.insert("for".into(), duration_value(half));
            }
            out.push((format!("timeline[{i}] {name} for {} -> {}", show(length), show(half)), c));
        }
    }
    out
}

/// The latest time the timeline or an invariant names (`at`, `from`, `to`, `after` plus `within`).
fn named_times(v: &Value) -> Duration {
    let mut latest = Duration::ZERO;
    for event in v.get("timeline").and_then(Value::as_sequence).into_iter().flatten() {
        latest = latest.max(event.get("at").and_then(as_duration).unwrap_or_default());
    }
    for inv in v.get("invariants").and_then(Value::as_sequence).into_iter().flatten() {
        let Some((_, settings)) = inv.as_mapping().and_then(|m| m.iter().next()) else { continue };
        let get = |k: &str| settings.get(k).and_then(as_duration);
        for t in [get("at"), get("from"), get("to"), get("after").map(|a| a + get("within").unwrap_or_default())] {
            latest = latest.max(t.unwrap_or_default());
        }
    }
    latest
}

/// Writes the swarm run of `seed` down as a plain scenario: what `world::expand` drew, applied to the text.
fn freeze(v: &mut Value, s: &Scenario, seed: u64) -> Result<(), String> {
    let expanded = crate::world::expand(s, seed, true);
    let timeline = v.get("timeline").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let mut frozen = Vec::new();
    for (event, draw) in timeline.into_iter().zip(&expanded.draws) {
        let Some((scale, intensity)) = *draw else { continue };
        let mut event = event;
        let at = event.get("at").and_then(as_duration).unwrap_or_default();
        if let Some((name, _)) = fault_of(&event)
            && let Some(fault) = event.get_mut(name.as_str()).and_then(Value::as_mapping_mut)
        {
            scale_duration(fault, "for", |d| d.mul_f64(scale));
            if name == "flap" {
                scale_duration(fault, "until", |u| at + u.saturating_sub(at).mul_f64(scale));
            }
            if name == "slow" {
                scale_duration(fault, "latency", |d| d.mul_f64(intensity));
            }
            if name == "storm"
                && let Some(rate) = fault.get("rate").and_then(Value::as_f64)
            {
                fault.insert("rate".into(), Value::from(rate * intensity));
            }
        }
        frozen.push(event);
    }
    if let Some(heal) = s.swarm.heal_at {
        let mut event = Mapping::new();
        event.insert("at".into(), duration_value(heal));
        event.insert("heal".into(), Value::Mapping(Mapping::new()));
        frozen.push(Value::Mapping(event));
        let mut converge = Mapping::new();
        converge.insert("after".into(), duration_value(heal));
        converge.insert("within".into(), duration_value(s.swarm.converge_within));
        let mut inv = Mapping::new();
        inv.insert("converge".into(), Value::Mapping(converge));
        let root = v.as_mapping_mut().ok_or("a scenario is a mapping")?;
        let invariants = root.entry("invariants".into()).or_insert_with(|| Value::Sequence(Vec::new()));
        if let Some(list) = invariants.as_sequence_mut() {
            list.push(Value::Mapping(inv));
        }
    }
    let root = v.as_mapping_mut().ok_or("a scenario is a mapping")?;
    root.insert("timeline".into(), Value::Sequence(frozen));
    root.remove("swarm");
    // The drawn parameters become the defaults a plain run uses.
    if !expanded.params.is_empty() {
        let mut params = Mapping::new();
        for (name, value) in &expanded.params {
            let mut p = Mapping::new();
            for key in ["min", "max", "default"] {
                p.insert(key.into(), Value::from(*value));
            }
            params.insert(name.as_str().into(), Value::Mapping(p));
        }
        let mut swarm = Mapping::new();
        swarm.insert("params".into(), Value::Mapping(params));
        root.insert("swarm".into(), Value::Mapping(swarm));
    }
    if let Some(load) = root.get_mut("load").and_then(Value::as_mapping_mut) {
        if let Some(rate) = load.get("rate").and_then(Value::as_f64) {
            load.insert("rate".into(), Value::from(rate * expanded.rate_scale));
        }
        if let Some(stages) = load.get_mut("stages").and_then(Value::as_sequence_mut) {
            for stage in stages.iter_mut().filter_map(Value::as_mapping_mut) {
                if let Some(rate) = stage.get("rate").and_then(Value::as_f64) {
                    stage.insert("rate".into(), Value::from(rate * expanded.rate_scale));
                }
            }
        }
    }
    Ok(())
}

/// Replaces each request class's `body_file` by the body it names, so the shrunk scenario stands anywhere.
fn inline_bodies(v: &mut Value, dir: &Path) -> Result<(), String> {
    let Some(classes) = v.get_mut("load").and_then(|l| l.get_mut("requests")).and_then(Value::as_sequence_mut) else {
        return Ok(());
    };
    for class in classes.iter_mut().filter_map(Value::as_mapping_mut) {
        if let Some(file) = class.remove("body_file") {
            let file = file.as_str().ok_or("body_file is a path")?;
            let body = std::fs::read_to_string(dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
            class.insert("body".into(), Value::from(body));
        }
    }
    Ok(())
}

fn invariant_name(inv: &Value) -> Option<&str> {
    inv.as_mapping()?.keys().next()?.as_str()
}

/// The fault's name and settings of a timeline event (`{at: 5s, slow: {...}}`).
fn fault_of(event: &Value) -> Option<(String, &Value)> {
    event
        .as_mapping()?
        .iter()
        .find(|(k, _)| k.as_str() != Some("at"))
        .and_then(|(k, v)| Some((k.as_str()?.to_string(), v)))
}

fn fault_name(event: &Value) -> String {
    fault_of(event).map_or_else(|| "?".into(), |(n, _)| n)
}

fn scale_duration(m: &mut Mapping, key: &str, f: impl Fn(Duration) -> Duration) {
    if let Some(d) = m.get(key).and_then(as_duration) {
        m.insert(key.into(), duration_value(f(d)));
    }
}

fn set(v: &mut Value, path: &[&str], key: &str, to: Value) {
    let mut at = v;
    for p in path {
        let Some(m) = at.as_mapping_mut() else { return };
        at = m.entry((*p).into()).or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if let Some(m) = at.as_mapping_mut() {
        m.insert(key.into(), to);
    }
}

fn as_duration(v: &Value) -> Option<Duration> {
    humantime::parse_duration(v.as_str()?).ok()
}

/// A duration as the scenario format writes it, exact to the nanosecond.
fn duration_value(d: Duration) -> Value {
    Value::from(show(d))
}

fn show(d: Duration) -> String {
    if d.is_zero() { "0s".into() } else { humantime::format_duration(d).to_string() }
}

/// Adds a run to the regressions file (a YAML list, possibly the empty `[]`).
pub fn append_regression(list: &str, scenario: &Path, seed: u64, note: &str) -> String {
    let entry = format!(
        "- {{ scenario: {}, seed: {seed}, swarm: false, note: {} }}\n",
        scenario.display(),
        serde_json::to_string(note).unwrap_or_else(|_| "\"\"".into())
    );
    let mut out = String::new();
    let mut placed = false;
    for line in list.lines() {
        if !placed && line.trim() == "[]" {
            out.push_str(&entry);
            placed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !placed {
        out.push_str(&entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_goes_into_an_empty_regressions_list_and_after_the_others() {
        let empty = "# kept runs\n[]\n";
        let one = append_regression(empty, Path::new("scenarios/regressions/a.yaml"), 7, "why \"quoted\"");
        assert_eq!(
            one,
            "# kept runs\n- { scenario: scenarios/regressions/a.yaml, seed: 7, swarm: false, note: \"why \\\"quoted\\\"\" }\n"
        );
        let two = append_regression(&one, Path::new("b.yaml"), 8, "n");
        assert!(two.ends_with("- { scenario: b.yaml, seed: 8, swarm: false, note: \"n\" }\n"));
        #[derive(serde::Deserialize)]
        struct R {
            seed: u64,
        }
        let parsed: Vec<R> = serde_yaml_ng::from_str(&two).unwrap();
        assert_eq!(parsed.iter().map(|r| r.seed).collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn durations_are_written_exactly() {
        let d = Duration::from_millis(13_700) + Duration::from_nanos(5);
        assert_eq!(as_duration(&duration_value(d)), Some(d));
    }
}

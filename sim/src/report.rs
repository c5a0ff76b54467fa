//! The run summary: requests, statuses, latency per phase, per-upstream share, invariants, trace hash.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::oracle::{Verdict, fmt_us, percentile, requests};
use crate::trace::{Event, us};
use crate::world::Run;

/// The text summary of a run.
pub fn summary(scenario: &str, seed: u64, run: &Run, verdicts: &[Verdict], hash: u64) -> String {
    let reqs = requests(&run.events);
    let mut out = String::new();
    let _ = writeln!(out, "scenario {scenario}  seed {seed}  simulated {}", fmt_us(us(run.end)));
    for knob in &run.knobs {
        let _ = writeln!(out, "  swarm: {knob}");
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for e in &run.events {
        match e {
            Event::Answered { status, .. } => *statuses.entry(status.to_string()).or_default() += 1,
            Event::Failed { kind, .. } => *statuses.entry(kind.clone()).or_default() += 1,
            Event::Truncated { .. } => *statuses.entry("truncated".into()).or_default() += 1,
            _ => {}
        }
    }
    let _ = writeln!(out, "requests {}  outcomes {statuses:?}", reqs.len());
    let opened = run.events.iter().filter(|e| matches!(e, Event::Connected { .. })).count();
    if opened > 0 {
        let _ = writeln!(out, "client connections opened {opened} (keep-alive)");
    }
    let mut bounds: Vec<u64> = run.fault_times.iter().map(|t| us(*t)).collect();
    bounds.push(0);
    bounds.push(us(run.end));
    bounds.sort_unstable();
    bounds.dedup();
    let _ = writeln!(out, "latency by phase (issued in):");
    for w in bounds.windows(2) {
        let mut lat: Vec<u64> = reqs
            .values()
            .filter(|r| r.t_us >= w[0] && r.t_us < w[1] && r.status.is_some())
            .map(|r| r.latency_us)
            .collect();
        if lat.is_empty() {
            continue;
        }
        let n = lat.len();
        let (p50, p99, max) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0), percentile(&mut lat, 100.0));
        let bad = reqs.values().filter(|r| r.t_us >= w[0] && r.t_us < w[1] && !r.good()).count();
        let _ = writeln!(
            out,
            "  [{:>8}, {:>8})  n={n:<6} p50={:<8} p99={:<8} max={:<8} failed={bad}",
            fmt_us(w[0]),
            fmt_us(w[1]),
            fmt_us(p50),
            fmt_us(p99),
            fmt_us(max)
        );
    }
    let mut share: BTreeMap<&str, usize> = run.hosts.iter().map(|h| (h.as_str(), 0)).collect();
    for e in &run.events {
        if let Event::Received { host, .. } = e {
            *share.entry(host.as_str()).or_default() += 1;
        }
    }
    let total: usize = share.values().sum();
    let shares: Vec<String> = share
        .iter()
        .map(|(h, n)| format!("{h}={n} ({:.1}%)", if total == 0 { 0.0 } else { 100.0 * *n as f64 / total as f64 }))
        .collect();
    let _ = writeln!(out, "upstream share: {}", shares.join("  "));
    for v in verdicts {
        let at = v.first_violation_us.map(|t| format!(" (first violation at {})", fmt_us(t))).unwrap_or_default();
        let _ = writeln!(out, "  [{}] {}: {}{at}", if v.ok { "ok" } else { "FAIL" }, v.name, v.detail);
    }
    let _ = writeln!(out, "trace hash {hash:016x}");
    out
}

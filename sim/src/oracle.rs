//! Invariants: each one a check over the trace, with the time of its first violation.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::scenario::{Invariant, Scenario};
use crate::trace::{Event, us};

/// The verdict on one invariant.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Which invariant.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// What was measured, or what broke.
    pub detail: String,
    /// Simulated time of the first violation.
    pub first_violation_us: Option<u64>,
}

/// One request as the client saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Issued at.
    pub t_us: u64,
    /// Key, if any.
    pub key: Option<String>,
    /// Status, or `None` when it failed without a response.
    pub status: Option<u16>,
    /// Client-side latency.
    pub latency_us: u64,
    /// Answered at.
    pub done_us: u64,
    /// Method.
    pub method: String,
    /// The statuses its class may get.
    pub expect: Vec<u16>,
    /// Where the upstream must receive it, when its class says.
    pub upstream_path: Option<String>,
}

impl Request {
    /// An answer its class expects (a 429 for a polite key, or a 404 for a path that should route, is not).
    pub fn good(&self) -> bool {
        self.status.is_some_and(|s| self.expect.contains(&s))
    }
}

/// Requests by id, from the trace.
pub fn requests(events: &[Event]) -> BTreeMap<u64, Request> {
    let mut out = BTreeMap::new();
    for e in events {
        match e {
            Event::Issued { t_us, id, key, method, expect, upstream_path, .. } => {
                out.insert(
                    *id,
                    Request {
                        t_us: *t_us,
                        key: key.clone(),
                        status: None,
                        latency_us: 0,
                        done_us: u64::MAX,
                        method: method.clone(),
                        expect: expect.clone(),
                        upstream_path: upstream_path.clone(),
                    },
                );
            }
            Event::Answered { t_us, id, status, latency_us } => {
                if let Some(r) = out.get_mut(id) {
                    (r.status, r.latency_us, r.done_us) = (Some(*status), *latency_us, *t_us);
                }
            }
            Event::Failed { t_us, id, latency_us, .. } => {
                if let Some(r) = out.get_mut(id) {
                    (r.latency_us, r.done_us) = (*latency_us, *t_us);
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks every invariant of the scenario (plus convergence in swarm mode).
pub fn check(s: &Scenario, events: &[Event], end: Duration, swarm: bool) -> Vec<Verdict> {
    let reqs = requests(events);
    let mut invariants = s.invariants.clone();
    if swarm && let Some(heal) = s.swarm.heal_at {
        invariants
            .push(Invariant::Converge(crate::scenario::Converge { after: heal, within: s.swarm.converge_within }));
    }
    let load_end = us(s.sim.duration);
    invariants
        .iter()
        .map(|inv| match inv {
            Invariant::NoTrafficToDown(g) => no_traffic_to_down(events, us(g.grace)),
            Invariant::Detection(d) => detection(events, &d.target, us(d.at), (us(d.not_before), us(d.within))),
            Invariant::Availability(a) => {
                let window = (us(a.from), a.to.map_or(load_end, us));
                availability(&reqs, window, a.min)
            }
            Invariant::RateLimit(r) => rate_limit(&reqs, &r.key, r.rpm / 60.0, r.burst, r.others_unlimited, s),
            Invariant::NoFailures(w) => no_failures(&reqs, (us(w.from), w.to.map_or(load_end, us))),
            Invariant::Converge(c) => converge(events, &reqs, us(c.after + c.within), load_end),
            Invariant::AllAnswered(_) => all_answered(&reqs, us(end)),
            Invariant::Latency(l) => latency(&reqs, (us(l.from), l.to.map_or(load_end, us)), l.percentile, us(l.max)),
            Invariant::Traffic(t) => {
                traffic(events, &reqs, &t.target, (us(t.from), t.to.map_or(load_end, us)), t.min, t.max)
            }
            Invariant::MaxTransitions(m) => max_transitions(events, &m.target, m.max),
            Invariant::AttackersCutOff(c) => attackers_cut_off(events, us(c.within)),
            Invariant::AtMostOnce(_) => at_most_once(events, &reqs),
            Invariant::UpstreamPaths(_) => upstream_paths(events, &reqs),
            Invariant::Statuses(st) => statuses(&reqs, (us(st.from), st.to.map_or(load_end, us)), &st.allowed),
        })
        .collect()
}

fn verdict(name: &str, ok: bool, detail: String, first: Option<u64>) -> Verdict {
    Verdict { name: name.into(), ok, detail, first_violation_us: if ok { None } else { first } }
}

/// Down intervals per host, from the health events: `(from, until)`.
pub fn down_intervals(events: &[Event]) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for e in events {
        if let Event::Health { t_us, host, up } = e {
            match (up, open.remove(host)) {
                (false, None) => {
                    open.insert(host.clone(), *t_us);
                }
                (false, Some(from)) => {
                    open.insert(host.clone(), from);
                }
                (true, Some(from)) => out.entry(host.clone()).or_default().push((from, *t_us)),
                (true, None) => {}
            }
        }
    }
    for (host, from) in open {
        out.entry(host).or_default().push((from, u64::MAX));
    }
    out
}

fn no_traffic_to_down(events: &[Event], grace: u64) -> Verdict {
    let down = down_intervals(events);
    let mut violations = 0;
    let mut first = None;
    for e in events {
        if let Event::Received { t_us, host, .. } = e
            && down.get(host).is_some_and(|iv| iv.iter().any(|(from, until)| *t_us > from + grace && t_us < until))
        {
            violations += 1;
            first.get_or_insert(*t_us);
        }
    }
    let intervals: usize = down.values().map(Vec::len).sum();
    verdict(
        "no_traffic_to_down",
        violations == 0,
        format!("{violations} request(s) reached a server marked down ({intervals} down interval(s))"),
        first,
    )
}

fn detection(events: &[Event], target: &str, at: u64, (not_before, within): (u64, u64)) -> Verdict {
    let marked = events.iter().find_map(|e| match e {
        Event::Health { t_us, host, up: false } if host == target && *t_us >= at => Some(*t_us),
        _ => None,
    });
    match marked {
        Some(t) => verdict(
            "detection",
            t - at <= within && t - at >= not_before,
            format!(
                "{target} marked down {} after the fault (allowed {} to {})",
                fmt_us(t - at),
                fmt_us(not_before),
                fmt_us(within)
            ),
            Some(if t - at < not_before { t } else { at + within }),
        ),
        None => verdict("detection", false, format!("{target} was never marked down"), Some(at + within)),
    }
}

fn availability(reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64), min: f64) -> Verdict {
    let window: Vec<&Request> = reqs.values().filter(|r| r.t_us >= from && r.t_us < to).collect();
    let good = window.iter().filter(|r| r.good()).count();
    let share = if window.is_empty() { 1.0 } else { good as f64 / window.len() as f64 };
    let first = window.iter().find(|r| !r.good()).map(|r| r.t_us);
    verdict(
        "availability",
        share >= min,
        format!("{good}/{} good ({:.4}) in [{}, {}), need {min}", window.len(), share, fmt_us(from), fmt_us(to)),
        first,
    )
}

fn rate_limit(
    reqs: &BTreeMap<u64, Request>,
    key: &str,
    rate: f64,
    burst: f64,
    others_unlimited: bool,
    s: &Scenario,
) -> Verdict {
    // Admissions are timed at the client's send; the proxy decides up to one link-latency spread later,
    // so the window is widened by that spread.
    let slack = (s.sim.link_latency.max - s.sim.link_latency.min).as_secs_f64();
    let admitted: Vec<f64> = reqs
        .values()
        .filter(|r| r.key.as_deref() == Some(key) && r.status.is_some_and(|st| st != 429))
        .map(|r| r.t_us as f64 / 1e6)
        .collect();
    // (j - i + 1) <= rate * (a_j - a_i + slack) + burst for all i <= j, checked in O(n) through
    // max over i <= j of (rate * a_i - i).
    let mut best = f64::NEG_INFINITY;
    let mut worst_excess = f64::NEG_INFINITY;
    let mut first = None;
    for (j, a) in admitted.iter().enumerate() {
        best = best.max(rate * a - j as f64);
        let excess = (j as f64 + 1.0) - rate * (a + slack) - burst + best;
        if excess > 1e-9 && first.is_none() {
            first = Some((a * 1e6) as u64);
        }
        worst_excess = worst_excess.max(excess);
    }
    let refused_others = reqs.values().filter(|r| r.key.as_deref() != Some(key) && r.status == Some(429)).count();
    // The lower bound: over the key's whole demand, the bucket admits its burst and then its refill, so a
    // limiter that refills too slowly (or refuses too early) falls short of it.
    let demand: Vec<f64> =
        reqs.values().filter(|r| r.key.as_deref() == Some(key)).map(|r| r.t_us as f64 / 1e6).collect();
    let span = match (demand.first(), demand.last()) {
        (Some(a), Some(b)) => (b - a - slack).max(0.0),
        _ => 0.0,
    };
    let floor = ((burst + rate * span).floor() - 1.0).min(demand.len() as f64).max(0.0);
    let short = (admitted.len() as f64) < floor;
    let ok = first.is_none() && !short && (!others_unlimited || refused_others == 0);
    verdict(
        "rate_limit",
        ok,
        format!(
            "{} admitted for {key} (at least {floor} expected); worst window excess {:.2}; other keys refused {refused_others}",
            admitted.len(),
            worst_excess.max(0.0)
        ),
        first.or(short.then(|| demand.last().map_or(0, |t| (t * 1e6) as u64))),
    )
}

fn no_failures(reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64)) -> Verdict {
    let bad: Vec<&Request> = reqs.values().filter(|r| r.t_us >= from && r.t_us < to && !r.good()).collect();
    verdict(
        "no_failures",
        bad.is_empty(),
        format!("{} failed request(s) in [{}, {})", bad.len(), fmt_us(from), fmt_us(to)),
        bad.first().map(|r| r.t_us),
    )
}

fn converge(events: &[Event], reqs: &BTreeMap<u64, Request>, by: u64, load_end: u64) -> Verdict {
    let down = down_intervals(events);
    let still_down: Vec<&String> =
        down.iter().filter(|(_, iv)| iv.iter().any(|(_, until)| *until > by)).map(|(h, _)| h).collect();
    let failed = reqs.values().filter(|r| r.t_us >= by && r.t_us < load_end && !r.good()).count();
    verdict(
        "converge",
        still_down.is_empty() && failed == 0,
        format!("by {}: servers still down {still_down:?}, failed requests after {failed}", fmt_us(by)),
        Some(by),
    )
}

fn all_answered(reqs: &BTreeMap<u64, Request>, end: u64) -> Verdict {
    let missing: Vec<&Request> = reqs.values().filter(|r| r.status.is_none() || r.done_us > end).collect();
    verdict(
        "all_answered",
        missing.is_empty(),
        format!("{} of {} request(s) without an HTTP response", missing.len(), reqs.len()),
        missing.first().map(|r| r.t_us),
    )
}

/// The `p`th percentile (nearest rank) of `values`, sorted in place.
pub fn percentile(values: &mut [u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

fn latency(reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64), p: f64, max: u64) -> Verdict {
    let mut lat: Vec<u64> =
        reqs.values().filter(|r| r.t_us >= from && r.t_us < to && r.status.is_some()).map(|r| r.latency_us).collect();
    let got = percentile(&mut lat, p);
    verdict(
        "latency",
        got <= max,
        format!("p{p} = {} over {} answers, bound {}", fmt_us(got), lat.len(), fmt_us(max)),
        Some(from),
    )
}

fn traffic(
    events: &[Event],
    reqs: &BTreeMap<u64, Request>,
    target: &str,
    (from, to): (u64, u64),
    min: u64,
    max: u64,
) -> Verdict {
    let n = events
        .iter()
        .filter(|e| matches!(e, Event::Received { host, id, .. } if host == target && reqs.get(id).is_some_and(|r| r.t_us >= from && r.t_us < to)))
        .count() as u64;
    let bound = if max == u64::MAX { format!("at least {min}") } else { format!("{min} to {max}") };
    verdict(
        "traffic",
        n >= min && n <= max,
        format!("{target} got {n} request(s) in [{}, {}), want {bound}", fmt_us(from), fmt_us(to)),
        Some(from),
    )
}

/// Microseconds as a short human duration.
pub fn fmt_us(t: u64) -> String {
    if t == u64::MAX {
        return "end".into();
    }
    let ms = t / 1000;
    if ms >= 1000 { format!("{:.3}s", t as f64 / 1e6) } else { format!("{ms}ms") }
}

fn attackers_cut_off(events: &[Event], within_us: u64) -> Verdict {
    let mut count = 0;
    let mut late = None;
    let mut longest = 0;
    for e in events {
        if let Event::Attacker { t_us, lasted_us, cut_off, .. } = e {
            count += 1;
            longest = longest.max(*lasted_us);
            if (!cut_off || *lasted_us > within_us) && late.is_none() {
                late = Some(*t_us);
            }
        }
    }
    verdict(
        "attackers_cut_off",
        count > 0 && late.is_none(),
        format!(
            "{count} attacker connection(s), the longest open {} ms (at most {} ms)",
            longest / 1000,
            within_us / 1000
        ),
        late,
    )
}

fn at_most_once(events: &[Event], reqs: &BTreeMap<u64, Request>) -> Verdict {
    let mut received: BTreeMap<u64, usize> = BTreeMap::new();
    let mut first = None;
    for e in events {
        if let Event::Received { t_us, id, .. } = e
            && reqs.get(id).is_some_and(|r| !crate::scenario::idempotent(&r.method))
        {
            let n = received.entry(*id).or_insert(0);
            *n += 1;
            if *n > 1 {
                first.get_or_insert(*t_us);
            }
        }
    }
    let twice = received.values().filter(|n| **n > 1).count();
    verdict(
        "at_most_once",
        twice == 0,
        format!("{} non-idempotent request(s) delivered, {twice} of them more than once", received.len()),
        first,
    )
}

fn upstream_paths(events: &[Event], reqs: &BTreeMap<u64, Request>) -> Verdict {
    let (mut checked, mut wrong, mut first, mut example) = (0, 0, None, String::new());
    for e in events {
        if let Event::Received { t_us, id, path, .. } = e
            && let Some(want) = reqs.get(id).and_then(|r| r.upstream_path.as_ref())
        {
            checked += 1;
            if path != want {
                wrong += 1;
                if first.is_none() {
                    first = Some(*t_us);
                    example = format!(": {path:?} where {want:?} was due");
                }
            }
        }
    }
    verdict(
        "upstream_paths",
        checked > 0 && wrong == 0,
        format!("{checked} request(s) checked, {wrong} at the wrong path{example}"),
        first,
    )
}

fn statuses(reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64), allowed: &[u16]) -> Verdict {
    let window: Vec<&Request> = reqs.values().filter(|r| r.t_us >= from && r.t_us < to).collect();
    let off: Vec<&Request> =
        window.iter().copied().filter(|r| !r.status.is_some_and(|s| allowed.contains(&s))).collect();
    verdict(
        "statuses",
        !window.is_empty() && off.is_empty(),
        format!(
            "{} of {} answer(s) in [{}, {}) outside {allowed:?}{}",
            off.len(),
            window.len(),
            fmt_us(from),
            fmt_us(to),
            off.first().map_or(String::new(), |r| format!(" (first: {:?})", r.status))
        ),
        off.first().map(|r| r.t_us),
    )
}

fn max_transitions(events: &[Event], target: &str, max: usize) -> Verdict {
    let changes: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Health { t_us, host, .. } if host == target => Some(*t_us),
            _ => None,
        })
        .collect();
    verdict(
        "max_transitions",
        changes.len() <= max,
        format!("{target} changed state {} time(s), at most {max}", changes.len()),
        changes.get(max).copied(),
    )
}

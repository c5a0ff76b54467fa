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
    /// Path, as the client sent it.
    pub path: String,
    /// The statuses its class may get.
    pub expect: Vec<u16>,
    /// Where the upstream must receive it, when its class says.
    pub upstream_path: Option<String>,
    /// The trace context the client sent.
    pub traceparent: Option<String>,
    /// Its `tracestate`.
    pub tracestate: Option<String>,
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
            Event::Issued { t_us, id, key, method, path, expect, upstream_path, traceparent, tracestate } => {
                out.insert(
                    *id,
                    Request {
                        t_us: *t_us,
                        key: key.clone(),
                        status: None,
                        latency_us: 0,
                        done_us: u64::MAX,
                        method: method.clone(),
                        path: path.clone(),
                        expect: expect.clone(),
                        upstream_path: upstream_path.clone(),
                        traceparent: traceparent.clone(),
                        tracestate: tracestate.clone(),
                    },
                );
            }
            Event::Answered { t_us, id, status, latency_us } => {
                if let Some(r) = out.get_mut(id) {
                    (r.status, r.latency_us, r.done_us) = (Some(*status), *latency_us, *t_us);
                }
            }
            Event::Failed { t_us, id, latency_us, .. } | Event::Truncated { t_us, id, latency_us, .. } => {
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
            Invariant::NoTrafficToDown(g) => no_traffic_to_down(events, &reqs, us(g.grace)),
            Invariant::Detection(d) => detection(events, &d.target, us(d.at), (us(d.not_before), us(d.within))),
            Invariant::Availability(a) => {
                let window = (us(a.from), a.to.map_or(load_end, us));
                availability(&reqs, window, a.min)
            }
            Invariant::RateLimit(r) => rate_limit(&reqs, r, s),
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
            Invariant::Statuses(st) => {
                statuses(&reqs, (us(st.from), st.to.map_or(load_end, us)), &st.allowed, st.path.as_deref())
            }
            Invariant::UpstreamInFlight(b) => {
                let hosts = if s.hosts().contains(&b.target) { vec![b.target.clone()] } else { s.group_of(&b.target) };
                upstream_in_flight(events, &hosts, b.max)
            }
            Invariant::RetryBudget(b) => {
                // A request's answer reaches the client at most a link latency and a tick after the proxy
                // let go of it.
                let settle = us(s.sim.link_latency.max + s.sim.tick);
                retry_budget(events, &reqs, (b.percent, b.min_concurrent), (us(b.lag), settle))
            }
            Invariant::Amplification(a) => amplification(events, &reqs, (us(a.from), a.to.map_or(load_end, us)), a.max),
            Invariant::SlowStart(st) => slow_start(events, &s.group_of(&st.target), st),
            Invariant::MetricsMatch(_) => metrics_match(events, &reqs),
            Invariant::Generations(_) => generations(s, events, &reqs),
            Invariant::ClientReuse(r) => client_reuse(events, &reqs, r.min),
            Invariant::TraceContext(_) => trace_context(events, &reqs),
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

/// A request issued before the server was marked down may have been sent to it before, and a black hole can
/// hold it for longer than any grace: only requests the clients issued after the mark count against it.
fn no_traffic_to_down(events: &[Event], reqs: &BTreeMap<u64, Request>, grace: u64) -> Verdict {
    let down = down_intervals(events);
    let mut violations = 0;
    let mut first = None;
    for e in events {
        if let Event::Received { t_us, host, id, .. } = e
            && let issued = reqs.get(id).map_or(0, |r| r.t_us)
            && down.get(host).is_some_and(|iv| {
                iv.iter().any(|(from, until)| *t_us > from + grace && t_us < until && issued >= *from)
            })
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

fn rate_limit(all: &BTreeMap<u64, Request>, bound: &crate::scenario::RateLimitBound, s: &Scenario) -> Verdict {
    let (key, rate, burst, others_unlimited) =
        (bound.key.as_str(), bound.rpm / 60.0, bound.burst, bound.others_unlimited);
    let (from, to) = (us(bound.from), bound.to.map_or(u64::MAX, us));
    let reqs: BTreeMap<u64, &Request> =
        all.iter().filter(|(_, r)| (from..to).contains(&r.t_us)).map(|(id, r)| (*id, r)).collect();
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
        // A client that aborts goes away by itself; there is nothing for the proxy to cut off.
        if let Event::Attacker { t_us, lasted_us, cut_off, kind, .. } = e
            && kind != "abort"
        {
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

/// The simulated hosts a config names (`${host}`).
fn named_hosts(s: &Scenario, config: &str) -> Vec<String> {
    s.hosts().into_iter().filter(|h| config.contains(&format!("${{{h}}}"))).collect()
}

/// Reloads against the timeline, and each delivery against the configs in force while its request was open:
/// a request issued before a reload may be served by either side of it, one issued after only by the new.
fn generations(s: &Scenario, events: &[Event], reqs: &BTreeMap<u64, Request>) -> Verdict {
    // (from, servers of the config in force from then)
    let mut periods: Vec<(u64, Vec<String>)> = vec![(0, named_hosts(s, &s.proxy.config))];
    let (mut generation, mut reloads, mut misrouted) = (1u64, 0, 0);
    // (time, what) of each problem, reloads first: the first one is the verdict's first violation.
    let mut problems: Vec<(u64, String)> = Vec::new();
    for e in events {
        let Event::Reload { t_us, step, generation: now, error } = e else { continue };
        reloads += 1;
        let Some(crate::scenario::Fault::Reload(r)) = s.timeline.get(*step).map(|e| &e.fault) else {
            problems.push((*t_us, format!("a reload at {} the timeline does not have", fmt_us(*t_us))));
            continue;
        };
        match (error, r.refused) {
            (None, false) => {
                if *now != generation + 1 {
                    let what = format!("timeline[{step}] applied as generation {now}, after {generation}");
                    problems.push((*t_us, what));
                }
                periods.push((*t_us, named_hosts(s, &r.config)));
            }
            (Some(_), true) => {
                if *now != generation {
                    let what = format!("timeline[{step}] refused, yet generation {generation} became {now}");
                    problems.push((*t_us, what));
                }
            }
            (None, true) => problems.push((*t_us, format!("timeline[{step}] should be refused, was applied"))),
            (Some(e), false) => problems.push((*t_us, format!("timeline[{step}] refused: {e}"))),
        }
        generation = *now;
    }
    for e in events {
        let Event::Received { t_us, host, id, .. } = e else { continue };
        let Some(issued) = reqs.get(id).map(|r| r.t_us) else { continue };
        // The periods that overlap [issued, received].
        let allowed = periods.iter().enumerate().any(|(i, (from, hosts))| {
            let until = periods.get(i + 1).map_or(u64::MAX, |p| p.0);
            *from <= *t_us && issued < until && hosts.contains(host)
        });
        if !allowed {
            misrouted += 1;
            if misrouted == 1 {
                let what = format!("request {id} issued at {} reached {host}, in no config in force", fmt_us(issued));
                problems.push((*t_us, what));
            }
        }
    }
    let detail = if problems.is_empty() {
        format!(
            "{reloads} reload(s) as the timeline says; every delivery by a config in force (generation {generation})"
        )
    } else {
        let what: Vec<&str> = problems.iter().map(|(_, w)| w.as_str()).collect();
        format!("{} ({misrouted} delivery(ies) misrouted)", what.join("; "))
    };
    let first = problems.first().map(|(t, _)| *t);
    verdict("generations", problems.is_empty(), detail, first)
}

/// The share of requests sent on a connection the client already had open.
fn client_reuse(events: &[Event], reqs: &BTreeMap<u64, Request>, min: f64) -> Verdict {
    let opened = events.iter().filter(|e| matches!(e, Event::Connected { .. })).count();
    let share = if reqs.is_empty() { 0.0 } else { 1.0 - opened as f64 / reqs.len() as f64 };
    verdict(
        "client_reuse",
        share >= min,
        format!("{} requests on {opened} new connections: {:.3} reused (at least {min})", reqs.len(), share),
        None,
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

fn statuses(reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64), allowed: &[u16], path: Option<&str>) -> Verdict {
    let window: Vec<&Request> =
        reqs.values().filter(|r| r.t_us >= from && r.t_us < to && path.is_none_or(|p| r.path == p)).collect();
    let off: Vec<&Request> =
        window.iter().copied().filter(|r| !r.status.is_some_and(|s| allowed.contains(&s))).collect();
    verdict(
        "statuses",
        !window.is_empty() && off.is_empty(),
        format!(
            "{} of {} answer(s){} in [{}, {}) outside {allowed:?}{}",
            off.len(),
            window.len(),
            path.map_or(String::new(), |p| format!(" to {p}")),
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

fn upstream_in_flight(events: &[Event], hosts: &[String], max: usize) -> Verdict {
    let (mut held, mut peak, mut first) = (0usize, 0usize, None);
    for e in events {
        match e {
            Event::Received { t_us, host, .. } if hosts.contains(host) => {
                held += 1;
                peak = peak.max(held);
                if held > max {
                    first.get_or_insert(*t_us);
                }
            }
            Event::Served { host, .. } if hosts.contains(host) => held = held.saturating_sub(1),
            _ => {}
        }
    }
    verdict(
        "upstream_in_flight",
        peak <= max,
        format!("{} held at most {peak} request(s) at once, bound {max}", hosts.join("+")),
        first,
    )
}

/// The budget judged from outside: when request x reaches a server for the second time at r, the requests
/// surely still on a retry (second delivery by r, answered more than `settle` after it) number R; the proxy
/// held at least R retry slots when it last admitted one of them (at some b in [r_latest - lag, r]), and the
/// first attempts then were at most the requests the client had open, C, so R <= max(min, percent x max C
/// over that window). Loose only in the safe direction: it can miss an overdraft, never invent one.
fn retry_budget(
    events: &[Event],
    reqs: &BTreeMap<u64, Request>,
    (percent, min): (u32, u32),
    (lag, settle): (u64, u64),
) -> Verdict {
    let mut deliveries: BTreeMap<u64, u32> = BTreeMap::new();
    let mut retries: Vec<(u64, u64)> = Vec::new();
    for e in events {
        if let Event::Received { t_us, id, .. } = e
            && reqs.contains_key(id)
        {
            let n = deliveries.entry(*id).or_insert(0);
            *n += 1;
            if *n == 2 {
                retries.push((*t_us, *id));
            }
        }
    }
    let mut starts: Vec<u64> = reqs.values().map(|r| r.t_us).collect();
    let mut ends: Vec<u64> = reqs.values().map(|r| r.done_us).collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let open_at = |t: u64| starts.partition_point(|s| *s <= t) - ends.partition_point(|e| *e <= t).min(starts.len());
    // The most requests open at any time in [from, to]: the count only rises at a start.
    let most_open = |from: u64, to: u64| {
        let (a, b) = (starts.partition_point(|s| *s < from), starts.partition_point(|s| *s <= to));
        starts[a..b].iter().map(|t| open_at(*t)).max().unwrap_or(0).max(open_at(from))
    };
    // (second delivery, answered) of each request still on a retry; the most of them at once, with its allowance.
    let mut on_retry: Vec<(u64, u64)> = Vec::new();
    let (mut worst, mut first) = ((0usize, 0u64), None);
    for (r, id) in &retries {
        let done = reqs.get(id).map_or(u64::MAX, |q| q.done_us);
        on_retry.push((*r, done));
        on_retry.retain(|(_, d)| *d > r.saturating_add(settle));
        let Some(latest) = on_retry.iter().map(|(at, _)| *at).max() else { continue };
        let open = most_open(latest.saturating_sub(lag), *r) as u64;
        let allowed = (open * u64::from(percent) / 100).max(u64::from(min));
        if on_retry.len() as u64 > allowed {
            first.get_or_insert(*r);
        }
        if on_retry.len() > worst.0 {
            worst = (on_retry.len(), allowed);
        }
    }
    verdict(
        "retry_budget",
        first.is_none(),
        format!(
            "{} request(s) retried; at most {} on a retry at once (allowed then {})",
            retries.len(),
            worst.0,
            worst.1
        ),
        first,
    )
}

fn amplification(events: &[Event], reqs: &BTreeMap<u64, Request>, (from, to): (u64, u64), max: f64) -> Verdict {
    let issued = reqs.values().filter(|r| r.t_us >= from && r.t_us < to).count();
    let delivered = events
        .iter()
        .filter(
            |e| matches!(e, Event::Received { id, .. } if reqs.get(id).is_some_and(|r| r.t_us >= from && r.t_us < to)),
        )
        .count();
    let ratio = if issued == 0 { 0.0 } else { delivered as f64 / issued as f64 };
    verdict(
        "amplification",
        issued > 0 && ratio <= max,
        format!(
            "{delivered} deliveries upstream for {issued} request(s) in [{}, {}): {ratio:.3} each, at most {max}",
            fmt_us(from),
            fmt_us(to)
        ),
        Some(from),
    )
}

/// Second by second from the proxy marking the target up, its share of the group's deliveries lies between
/// the ramp's share spread evenly (random) and the ramp's weight against the others' (round robin, whose
/// passed-over turn goes to the next server): share(t) = 0.1 + 0.9 x t / window. The second after the
/// window it has its full share again.
fn slow_start(events: &[Event], group: &[String], st: &crate::scenario::SlowStart) -> Verdict {
    let Some(t0) = events.iter().find_map(|e| match e {
        Event::Health { t_us, host, up: true } if *host == st.target && *t_us >= us(st.after) => Some(*t_us),
        _ => None,
    }) else {
        return verdict("slow_start", false, format!("{} was never marked up", st.target), Some(us(st.after)));
    };
    let n = group.len().max(1) as f64;
    let window = us(st.window);
    let ramp = |t: u64| if t >= window { 1.0 } else { 0.1 + 0.9 * t as f64 / window as f64 };
    let (mut shares, mut first) = (Vec::new(), None);
    let mut a = 0;
    while a <= window {
        let b = if a < window { (a + 1_000_000).min(window) } else { a + 1_000_000 };
        let (mut all, mut mine) = (0u64, 0u64);
        for e in events {
            if let Event::Received { t_us, host, .. } = e
                && (t0 + a..t0 + b).contains(t_us)
                && group.contains(host)
            {
                all += 1;
                mine += u64::from(*host == st.target);
            }
        }
        let share = if all == 0 { -1.0 } else { mine as f64 / all as f64 };
        let (lo, hi) = (ramp(a) / n - st.slack, ramp(b) / (n - 1.0 + ramp(b)) + st.slack);
        if !(lo..=hi).contains(&share) {
            first.get_or_insert(t0 + a);
        }
        shares.push(format!("{share:.2}"));
        a = b;
    }
    verdict(
        "slow_start",
        first.is_none(),
        format!("{} marked up at {}; share each second: {}", st.target, fmt_us(t0), shares.join(" ")),
        first,
    )
}

/// The [`Event::Counted`] of a Prometheus text exposition of the proxy's metrics.
pub fn counted(text: &str, t_us: u64) -> Event {
    let (mut statuses, mut retries, mut rejected) = (BTreeMap::new(), 0, 0);
    for line in text.lines() {
        let value = || line.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        if line.starts_with("locci_requests_total{") {
            let status = line.split("status=\"").nth(1).and_then(|r| r.split('"').next()?.parse::<u16>().ok());
            if let Some(status) = status {
                *statuses.entry(status).or_insert(0) += value();
            }
        } else if line.starts_with("locci_upstream_retries_total{") {
            retries += value();
        } else if line.starts_with("locci_client_rejected_total{") {
            rejected += value();
        }
    }
    Event::Counted { t_us, statuses, retries, rejected }
}

/// What the proxy counted against what the trace shows: every answer a client got, by status, in
/// `locci_requests_total`; every attacker connection the proxy cut off in `locci_client_rejected_total`; and
/// at least one retry per second (or later) delivery of a request. Retries that never reached a server (a
/// connect that failed) are the difference the last count allows.
fn metrics_match(events: &[Event], reqs: &BTreeMap<u64, Request>) -> Verdict {
    let Some((t, counted, retries, rejected)) = events.iter().rev().find_map(|e| match e {
        Event::Counted { t_us, statuses, retries, rejected } => Some((*t_us, statuses, *retries, *rejected)),
        _ => None,
    }) else {
        return verdict("metrics_match", false, "no metrics were read at the end of the run".into(), Some(0));
    };
    let (mut answered, mut cut_off) = (BTreeMap::<u16, u64>::new(), 0u64);
    let mut deliveries: BTreeMap<u64, u64> = BTreeMap::new();
    for e in events {
        match e {
            // The proxy counts a request by the status it sent, whether or not the body got through whole.
            Event::Answered { status, .. } | Event::Truncated { status, .. } => {
                *answered.entry(*status).or_insert(0) += 1
            }
            Event::Attacker { cut_off: true, .. } => cut_off += 1,
            // Only the clients' requests carry an id (an aborting attacker's do not).
            Event::Received { id, .. } if reqs.contains_key(id) => *deliveries.entry(*id).or_insert(0) += 1,
            _ => {}
        }
    }
    let again: u64 = deliveries.values().map(|n| n - 1).sum();
    let ok = answered == *counted && cut_off == rejected && retries >= again;
    verdict(
        "metrics_match",
        ok,
        format!(
            "answers by status: trace {answered:?}, metrics {counted:?}; attackers cut off {cut_off}, rejected \
             {rejected}; retries counted {retries}, second deliveries {again}"
        ),
        Some(t),
    )
}

/// Every delivery carries a valid `traceparent`. A request that came with a valid one keeps its trace ID and
/// sampled flag under a span of the proxy's (not the caller's), and its `tracestate` unchanged; one without
/// (or with an invalid one) gets a trace of its own, different from every other request's, and no
/// `tracestate`. Every delivery of one request (retries included) carries the same trace and span.
fn trace_context(events: &[Event], reqs: &BTreeMap<u64, Request>) -> Verdict {
    use locci_core::trace::parse;
    let mut problems: Vec<String> = Vec::new();
    let mut first = None;
    let mut seen: BTreeMap<u64, (u128, u64)> = BTreeMap::new();
    let mut new_traces: BTreeMap<u128, u64> = BTreeMap::new();
    let mut checked = 0;
    for e in events {
        let Event::Received { t_us, id, traceparent, tracestate, .. } = e else { continue };
        let Some(req) = reqs.get(id) else { continue };
        checked += 1;
        let mut wrong = |what: String| {
            first.get_or_insert(*t_us);
            if problems.len() < 5 {
                problems.push(format!("request {id}: {what}"));
            }
        };
        let Some(got) = traceparent.as_deref().and_then(parse) else {
            wrong(format!("reached upstream with traceparent {traceparent:?}"));
            continue;
        };
        match req.traceparent.as_deref().and_then(parse) {
            Some(sent) => {
                if got.trace_id != sent.trace_id || got.flags != sent.flags & 1 {
                    wrong(format!("sent {:?}, upstream got {traceparent:?}", req.traceparent));
                }
                if got.span_id == sent.span_id {
                    wrong("the upstream's parent is the caller's span, not the proxy's".into());
                }
                if *tracestate != req.tracestate {
                    wrong(format!("tracestate {:?} arrived as {tracestate:?}", req.tracestate));
                }
            }
            None => {
                if tracestate.is_some() {
                    wrong(format!("a new trace carries the client's tracestate {tracestate:?}"));
                }
                if let Some(other) = new_traces.insert(got.trace_id, *id).filter(|other| other != id) {
                    wrong(format!("shares its new trace with request {other}"));
                }
            }
        }
        if let Some(before) = seen.insert(*id, (got.trace_id, got.span_id))
            && before != (got.trace_id, got.span_id)
        {
            wrong("a second delivery carries another trace or span".into());
        }
    }
    let ok = problems.is_empty() && checked > 0;
    let detail = if checked == 0 {
        "no request reached an upstream".to_string()
    } else if ok {
        format!("{checked} deliveries of {} requests carried the right trace context", seen.len())
    } else {
        problems.join("; ")
    };
    verdict("trace_context", ok, detail, first)
}

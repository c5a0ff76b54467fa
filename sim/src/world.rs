//! One simulated run: the turmoil world, the load plan, the fault timeline, and the driver loop that
//! steps the world and applies faults between steps.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use crate::hosts::{self, Behaviour, Command, Live, Planned, ProxyHost};
use crate::scenario::{Fault, PartitionMode, Scenario, WireKind};
use crate::trace::{Event, Trace, us};

/// Extra simulated time after the load ends, for in-flight requests to finish or time out.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Something the driver does at a time.
#[derive(Debug, Clone)]
pub enum Action {
    /// Crash a host.
    Crash(String),
    /// Restart a host.
    Bounce(String),
    /// Set a host's service time (`None`: back to its normal range).
    Latency(String, Option<Duration>),
    /// Set a host's status (200 = normal).
    Status(String, u16),
    /// Make a host hang or not.
    Hang(String, bool),
    /// Set how a host's answers go wrong on the wire (`None`: back to normal).
    Wire(String, Option<(WireKind, Duration)>),
    /// Cut (`true`) or repair the proxy's link to a host.
    Link(String, PartitionMode, bool),
    /// Reload the proxy with this config (host names not yet replaced), the timeline's event `.0`.
    Reload(usize, String),
    /// Step the proxy's wall clock by this many milliseconds.
    ClockJump(i64),
    /// Heal everything (swarm liveness phase).
    HealAll,
    /// Set a name of the simulated DNS to these hosts' addresses (`None`: its lookups fail).
    Dns(String, Option<Vec<String>>),
}

/// One key's storm, as the timeline planned it.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// The header carrying the key.
    pub header: String,
    /// The key.
    pub key: String,
    /// The path requested.
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// Start.
    pub from: Duration,
    /// End.
    pub to: Duration,
    /// The statuses a storm request may get.
    pub expect: Vec<u16>,
}

/// The timeline, expanded into timed actions, after swarm selection.
#[derive(Debug, Clone, Default)]
pub struct Expanded {
    /// Actions in time order.
    pub actions: Vec<(Duration, Action)>,
    /// Storms (kept after swarm selection).
    pub storms: Vec<StormPlan>,
    /// What swarm mode drew, for `explain` and reports.
    pub knobs: Vec<String>,
    /// Client attacks (kept after swarm selection).
    pub attacks: Vec<hosts::AttackPlan>,
    /// The factor swarm mode drew for the load's rates (1 otherwise).
    pub rate_scale: f64,
    /// Per timeline event, what swarm mode drew: `None` when it left the event out, else its duration scale
    /// and intensity factor (1 and 1 outside swarm mode).
    pub draws: Vec<Option<(f64, f64)>>,
    /// The value of each `swarm.params` entry: drawn in swarm mode, its default otherwise.
    pub params: BTreeMap<String, i64>,
}

/// Expands the timeline; with `swarm`, keeps each event with the scenario's probability and scales
/// durations, all drawn from `seed`.
pub fn expand(s: &Scenario, seed: u64, swarm: bool) -> Expanded {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5741_524d);
    let mut out = Expanded { rate_scale: 1.0, ..Expanded::default() };
    for (i, e) in s.timeline.iter().enumerate() {
        let (keep, scale) = if swarm {
            let keep = rng.random_bool(s.swarm.p_enable.clamp(0.0, 1.0));
            let scale = rng.random_range(s.swarm.min_scale..=s.swarm.max_scale.max(s.swarm.min_scale));
            out.knobs.push(format!(
                "timeline[{i}] {}: {}, durations x{scale:.2}",
                name(&e.fault),
                if keep { "on" } else { "off" }
            ));
            (keep, scale)
        } else {
            (true, 1.0)
        };
        if !keep {
            out.draws.push(None);
            continue;
        }
        // Drawn only when the scenario asks, after the older draws: scenarios without it keep their traces.
        let intensity = match s.swarm.intensity_scale.filter(|_| swarm) {
            Some(r) => {
                let f = rng.random_range(r.min..=r.max);
                out.knobs.push(format!("timeline[{i}] intensity x{f:.2}"));
                f
            }
            None => 1.0,
        };
        out.draws.push(Some((scale, intensity)));
        let d = |x: Duration| x.mul_f64(scale);
        let at = e.at;
        let mut add = |t: Duration, a: Action| out.actions.push((t, a));
        match &e.fault {
            Fault::Kill(h) => add(at, Action::Crash(h.clone())),
            Fault::Restart(h) => add(at, Action::Bounce(h.clone())),
            Fault::Slow(x) => {
                add(at, Action::Latency(x.target.clone(), Some(x.latency.mul_f64(intensity))));
                add(at + d(x.duration), Action::Latency(x.target.clone(), None));
            }
            Fault::Errors(x) => {
                add(at, Action::Status(x.target.clone(), x.status));
                add(at + d(x.duration), Action::Status(x.target.clone(), 200));
            }
            Fault::Hang(x) => {
                add(at, Action::Hang(x.target.clone(), true));
                add(at + d(x.duration), Action::Hang(x.target.clone(), false));
            }
            Fault::Partition(x) => {
                add(at, Action::Link(x.target.clone(), x.mode, true));
                add(at + d(x.duration), Action::Link(x.target.clone(), x.mode, false));
            }
            Fault::Flap(x) => {
                let mut t = at;
                let until = at + d(x.until.saturating_sub(at));
                while t < until {
                    add(t, Action::Crash(x.target.clone()));
                    add((t + x.down).min(until), Action::Bounce(x.target.clone()));
                    t += x.period;
                }
            }
            Fault::Reload(r) => add(at, Action::Reload(i, r.config.clone())),
            Fault::ClockJump(j) => add(at, Action::ClockJump(j.by)),
            Fault::Heal(_) => add(at, Action::HealAll),
            Fault::Dns(x) => add(at, Action::Dns(x.name.clone(), (!x.fail).then(|| x.hosts.clone()))),
            Fault::Wire(w) => {
                add(at, Action::Wire(w.target.clone(), Some((w.kind, w.interval))));
                add(at + d(w.duration), Action::Wire(w.target.clone(), None));
            }
            Fault::Storm(x) => out.storms.push(StormPlan {
                header: x.key_header.clone(),
                key: x.key.clone(),
                path: x.path.clone(),
                rate: x.rate * intensity,
                from: at,
                to: at + d(x.duration),
                expect: x.expect.clone(),
            }),
            Fault::Abort(x) => out.attacks.push(hosts::AttackPlan {
                kind: hosts::AttackKind::Abort,
                path: x.path.clone(),
                connections: (x.rate * d(x.duration).as_secs_f64()).round().max(1.0) as usize,
                from: at,
                to: at + d(x.duration),
                interval: x.after,
            }),
            Fault::Slowloris(x) | Fault::Flood(x) => out.attacks.push(hosts::AttackPlan {
                kind: if matches!(e.fault, Fault::Slowloris(_)) {
                    hosts::AttackKind::Slowloris
                } else {
                    hosts::AttackKind::Flood
                },
                path: "/slow".into(),
                connections: x.connections,
                from: at,
                to: at + d(x.duration),
                interval: x.interval,
            }),
        }
    }
    if swarm && let Some(r) = s.swarm.rate_scale {
        out.rate_scale = rng.random_range(r.min..=r.max);
        out.knobs.push(format!("load rate x{:.2}", out.rate_scale));
    }
    // Drawn after every older draw, so scenarios without params keep their traces.
    for (name, p) in &s.swarm.params {
        let value = if swarm { rng.random_range(p.min..=p.max) } else { p.default };
        if swarm {
            out.knobs.push(format!("param {name} = {value}"));
        }
        out.params.insert(name.clone(), value);
    }
    if swarm && let Some(heal) = s.swarm.heal_at {
        out.actions.push((heal, Action::HealAll));
        out.knobs.push(format!("heal all at {}", humantime::format_duration(heal)));
    }
    out.actions.sort_by_key(|(t, _)| *t);
    out
}

fn name(f: &Fault) -> &'static str {
    match f {
        Fault::Kill(_) => "kill",
        Fault::Restart(_) => "restart",
        Fault::Slow(_) => "slow",
        Fault::Errors(_) => "errors",
        Fault::Hang(_) => "hang",
        Fault::Partition(_) => "partition",
        Fault::Flap(_) => "flap",
        Fault::Reload(_) => "reload",
        Fault::Storm(_) => "storm",
        Fault::Slowloris(_) => "slowloris",
        Fault::Flood(_) => "flood",
        Fault::Abort(_) => "abort",
        Fault::ClockJump(_) => "clock_jump",
        Fault::Heal(_) => "heal",
        Fault::Wire(_) => "wire",
        Fault::Dns(_) => "dns",
    }
}

/// The requests the client will send, in time order, drawn from `seed`.
pub fn plan(s: &Scenario, expanded: &Expanded, seed: u64) -> Vec<Planned> {
    let mut load = s.load.clone();
    load.rate *= expanded.rate_scale;
    for stage in &mut load.stages {
        stage.rate *= expanded.rate_scale;
    }
    let mut out: Vec<Planned> = locci_scenario::plan::arrivals(&load, s.sim.duration, seed)
        .into_iter()
        .map(|slot| {
            let spec = &s.load.requests[slot.class];
            let key = spec.key_header.as_ref().zip(slot.key).map(|(h, n)| (h.clone(), format!("key-{n}")));
            Planned {
                at: slot.at,
                id: 0,
                method: spec.method.clone(),
                path: spec.path.clone(),
                key,
                headers: spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                expect: spec.expect.clone(),
                body: spec.body.clone(),
                upstream_path: spec.upstream_path.clone(),
            }
        })
        .collect();
    for StormPlan { header, key, path, rate, from, to, expect } in &expanded.storms {
        let mut t = *from;
        while t < *to && t < s.sim.duration {
            out.push(Planned {
                at: t,
                id: 0,
                method: "GET".into(),
                path: path.clone(),
                key: Some((header.clone(), key.clone())),
                headers: Vec::new(),
                expect: expect.clone(),
                body: None,
                upstream_path: None,
            });
            t += Duration::from_secs_f64(1.0 / rate);
        }
    }
    out.sort_by_key(|p| p.at);
    for (i, p) in out.iter_mut().enumerate() {
        p.id = i as u64;
    }
    out
}

/// What a run produced.
pub struct Run {
    /// The trace, in the order things happened.
    pub events: Vec<Event>,
    /// Upstream host names.
    pub hosts: Vec<String>,
    /// Simulated time covered.
    pub end: Duration,
    /// Timed actions applied (for phases in the report).
    pub fault_times: Vec<Duration>,
    /// Swarm draws.
    pub knobs: Vec<String>,
}

/// Runs one scenario with one seed.
pub fn run(s: &Scenario, seed: u64, swarm: bool) -> anyhow::Result<Run> {
    // Pingora's fast timeouts run on a real OS thread; every timeout of a second or more goes to tokio
    // (simulated) time instead. locci's timeouts are whole seconds, so all of them do.
    pingora_timeout::fast_timeout::set_fast_timeout_to_tokio_threshold(Some(Duration::ZERO));
    let expanded = expand(s, seed, swarm);
    let plan = plan(s, &expanded, seed);
    let end = s.sim.duration + s.load.timeout + DRAIN;
    let mut builder = turmoil::Builder::new();
    if s.sim.random_order {
        builder.enable_random_order();
    }
    let mut sim = builder
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(s.sim.epoch_unix_secs))
        .simulation_duration(end + Duration::from_secs(60))
        .tick_duration(s.sim.tick)
        .min_message_latency(s.sim.link_latency.min)
        .max_message_latency(s.sim.link_latency.max)
        // Room in each host's TCP buffer for a connection flood (turmoil's default of 64 panics under one);
        // only a scenario that exceeds the default sees a difference.
        .tcp_capacity(4096)
        .build();
    let trace = Trace::default();
    let mut behaviours: BTreeMap<String, (Live<Behaviour>, Behaviour)> = BTreeMap::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for u in &s.upstreams {
        for host in u.hosts() {
            let normal = Behaviour {
                latency: (u.latency.min, u.latency.max),
                status: 200,
                hang: false,
                error_rate: u.error_rate,
                wire: None,
            };
            let live = Rc::new(RefCell::new(normal.clone()));
            let (name, port, b, t) = (host.clone(), u.port, Rc::clone(&live), trace.clone());
            let host_seed = seed ^ fnv(&host);
            let capacity = u.capacity;
            sim.host(host.as_str(), move || {
                hosts::upstream(name.clone(), port, (Rc::clone(&b), capacity), t.clone(), host_seed)
            });
            names.insert(format!("{}:{}", sim.lookup(host.as_str()), u.port), host.clone());
            behaviours.insert(host, (live, normal));
        }
    }
    if let Some(redis) = s.redis {
        let (port, latency, redis_seed) = (redis.port, (redis.latency.min, redis.latency.max), seed ^ fnv("redis"));
        sim.host("redis", move || hosts::redis(port, latency, redis_seed));
        names.insert(format!("{}:{}", sim.lookup("redis"), redis.port), "redis".into());
    }
    let substitute = |text: &str| {
        let mut out = text.to_string();
        for (addr, host) in &names {
            let ip = addr.rsplit_once(':').map_or(addr.as_str(), |(ip, _)| ip);
            out = out.replace(&format!("${{{host}}}"), ip);
        }
        for (name, value) in &expanded.params {
            out = out.replace(&format!("${{swarm.{name}}}"), &value.to_string());
        }
        out
    };
    let dir = tempfile::tempdir()?;
    let (commands, rx) = mpsc::unbounded_channel();
    let shared_slot = Rc::new(RefCell::new(None));
    let clock_offset_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let dns = crate::net::DnsTable::default();
    let proxy_host = Rc::new(ProxyHost {
        config: substitute(&s.proxy.config),
        config_path: dir.path().join("locci.yaml"),
        seed: seed ^ 0x5052_4f58,
        epoch: Duration::from_secs(s.sim.epoch_unix_secs),
        commands: Rc::new(RefCell::new(Some(rx))),
        shared: Rc::clone(&shared_slot),
        trace: trace.clone(),
        clock_offset_ms: Arc::clone(&clock_offset_ms),
        redis: s.redis.is_some(),
        dns: Arc::clone(&dns),
    });
    sim.host("proxy", move || hosts::proxy(Rc::clone(&proxy_host)));
    sim.client("client", hosts::client(plan, s.load.timeout, s.sim.keep_alive, trace.clone()));
    // Only scenarios with attacks get the attacker host, so every other scenario's world is unchanged.
    if !expanded.attacks.is_empty() {
        sim.client("attacker", hosts::attacker(expanded.attacks.clone(), trace.clone()));
    }

    let mut pending = expanded.actions.clone().into_iter().peekable();
    let mut health: BTreeMap<String, (bool, u64)> = BTreeMap::new();
    let mut crashed: std::collections::BTreeSet<String> = Default::default();
    let mut cut: Vec<(String, PartitionMode)> = Vec::new();
    loop {
        let now = sim.elapsed();
        while let Some((_, action)) = pending.next_if(|(t, _)| *t <= now) {
            trace.push(Event::Fault { t_us: us(now), what: describe(&action) });
            match action {
                Action::Crash(h) => {
                    sim.crash(h.as_str());
                    crashed.insert(h);
                }
                Action::Bounce(h) => {
                    sim.bounce(h.as_str());
                    crashed.remove(&h);
                }
                Action::Latency(h, l) => {
                    set(&behaviours, &h, |b, normal| b.latency = l.map_or(normal.latency, |l| (l, l)))
                }
                Action::Status(h, st) => set(&behaviours, &h, |b, _| b.status = st),
                Action::Hang(h, on) => set(&behaviours, &h, |b, _| b.hang = on),
                Action::Wire(h, wire) => set(&behaviours, &h, |b, _| b.wire = wire),
                Action::Link(h, mode, true) => {
                    match mode {
                        PartitionMode::Refuse => sim.partition("proxy", h.as_str()),
                        PartitionMode::Blackhole => sim.hold("proxy", h.as_str()),
                    }
                    cut.push((h, mode));
                }
                Action::Link(h, mode, false) => {
                    repair(&sim, &h, mode);
                    cut.retain(|(c, _)| *c != h);
                }
                Action::Reload(step, text) => {
                    let _ = commands.send(Command::Reload(step, substitute(&text)));
                }
                Action::ClockJump(ms) => {
                    clock_offset_ms.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
                }
                Action::Dns(name, hosts) => {
                    let ips = hosts.map(|hosts| hosts.iter().map(|h| sim.lookup(h.as_str())).collect());
                    dns.lock().unwrap_or_else(|e| e.into_inner()).insert(name, ips);
                }
                Action::HealAll => {
                    for h in std::mem::take(&mut crashed) {
                        sim.bounce(h.as_str());
                    }
                    for (h, mode) in std::mem::take(&mut cut) {
                        repair(&sim, &h, mode);
                    }
                    for (live, normal) in behaviours.values() {
                        *live.borrow_mut() = normal.clone();
                    }
                }
            }
        }
        if let Some(shared) = shared_slot.borrow().as_ref() {
            observe_health(shared, &names, &mut health, &trace, us(now));
        }
        if now >= end {
            break;
        }
        sim.step().map_err(|e| anyhow::anyhow!("simulation failed at {}: {e}", humantime::format_duration(now)))?;
    }
    if let Some(shared) = shared_slot.borrow().as_ref() {
        let text = shared.metrics.render(&shared.runtime(), shared.connections());
        trace.push(crate::oracle::counted(&text, us(sim.elapsed())));
    }
    Ok(Run {
        events: trace.events(),
        hosts: s.hosts(),
        end,
        fault_times: expanded.actions.iter().map(|(t, _)| *t).collect(),
        knobs: expanded.knobs,
    })
}

fn set(
    behaviours: &BTreeMap<String, (Live<Behaviour>, Behaviour)>,
    host: &str,
    f: impl FnOnce(&mut Behaviour, &Behaviour),
) {
    if let Some((live, normal)) = behaviours.get(host) {
        f(&mut live.borrow_mut(), normal);
    }
}

fn repair(sim: &turmoil::Sim<'_>, host: &str, mode: PartitionMode) {
    match mode {
        PartitionMode::Refuse => sim.repair("proxy", host),
        PartitionMode::Blackhole => sim.release("proxy", host),
    }
}

/// Records every change of a server's state as the proxy sees it: also a change and its reversal inside one
/// step (a passive ejection ending in the same millisecond an active check takes the server down), which a
/// look at the state alone would miss. Both are stamped with the step's time.
fn observe_health(
    shared: &Arc<locci_proxy::Shared>,
    names: &BTreeMap<String, String>,
    last: &mut BTreeMap<String, (bool, u64)>,
    trace: &Trace,
    t_us: u64,
) {
    let runtime = shared.runtime();
    for pool in runtime.pools() {
        for server in pool.servers() {
            let host = names.get(&server.addr.text).cloned().unwrap_or_else(|| server.addr.text.clone());
            let (changes, up) = (server.changes(), server.is_up());
            match last.insert(host.clone(), (up, changes)) {
                // Servers start up; only changes are events.
                None if up => {}
                None => trace.push(Event::Health { t_us, host, up }),
                Some((prev, seen)) => {
                    let flips = changes.saturating_sub(seen);
                    // Each flip toggles the state, ending at `up`; a count that disagrees with the states
                    // (a server a reload replaced) is taken as one change when they differ.
                    let flips = if (flips % 2 == 1) == (prev != up) { flips } else { u64::from(prev != up) };
                    let mut state = prev;
                    for _ in 0..flips {
                        state = !state;
                        trace.push(Event::Health { t_us, host: host.clone(), up: state });
                    }
                }
            }
        }
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Crash(h) => format!("kill {h}"),
        Action::Bounce(h) => format!("restart {h}"),
        Action::Latency(h, Some(l)) => format!("slow {h} {}", humantime::format_duration(*l)),
        Action::Latency(h, None) => format!("slow {h} over"),
        Action::Status(h, 200) => format!("errors {h} over"),
        Action::Status(h, s) => format!("errors {h} {s}"),
        Action::Hang(h, on) => format!("hang {h} {}", if *on { "on" } else { "over" }),
        Action::Link(h, m, on) => format!("partition proxy-{h} {m:?} {}", if *on { "on" } else { "repaired" }),
        Action::Wire(h, Some((kind, _))) => format!("wire {h} {kind:?}"),
        Action::Wire(h, None) => format!("wire {h} over"),
        Action::Reload(..) => "reload".into(),
        Action::ClockJump(ms) => format!("clock jump {ms:+} ms"),
        Action::HealAll => "heal all".into(),
        Action::Dns(name, Some(hosts)) => format!("dns {name} {}", hosts.join(",")),
        Action::Dns(name, None) => format!("dns {name} failing"),
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

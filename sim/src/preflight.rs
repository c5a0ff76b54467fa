//! `locci-sim preflight --current OLD --new NEW`: an operator's change, simulated before it is made (SPEC §11).
//!
//! Both configs are turned into simulation worlds: every server address of every group becomes a simulated
//! host (the same address in both configs is the same host), with the latency and error rate the traffic
//! profile measured for it, or defaults. The load is the profile's (each route's rate over its last hour, its
//! method mix, its rate-limit key count), or 50 requests/s spread over the routes. Each world runs without a
//! fault and under each fault of the standard set, for the old config, the new one, and the old one reloaded
//! to the new one mid-run (through the proxy's own reload code), over several seeds. What a route's requests
//! got — availability, statuses, latency, 429s, which server answered, how fast a dead server was taken out —
//! is compared old against new, with the spread between seeds as the noise floor.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use locci_core::Runtime;
use locci_core::clock::{Clock, ManualClock};
use locci_core::explain::Question;
use locci_core::middleware::Now;
use locci_core::profile::TrafficProfile;
use locci_core::request::HeaderPairs;
use serde::Serialize;
use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;

use crate::scenario::Scenario;
use crate::trace::Event;

/// Simulated length of one world.
pub const DURATION: Duration = Duration::from_secs(30);
/// When the fault starts, and how long it lasts.
pub const FAULT_AT: Duration = Duration::from_secs(10);
/// How long the fault lasts.
pub const FAULT_FOR: Duration = Duration::from_secs(10);
/// When the reload arm reloads (before the fault, so the fault meets the new config).
pub const RELOAD_AT: Duration = Duration::from_secs(5);
/// The load without a profile, requests per second over all routes.
pub const DEFAULT_RATE: f64 = 50.0;

/// What the operator asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seeds per world.
    pub seeds: u64,
    /// The traffic profile.
    pub profile: Option<TrafficProfile>,
    /// Largest availability drop allowed, in percentage points.
    pub max_availability_drop: f64,
    /// Largest p99 increase allowed, in percent.
    pub max_p99_increase: f64,
    /// Requests each simulated server serves at once (more wait, then are shed with 503); `None`: no limit.
    pub capacity: Option<usize>,
    /// Parallel worlds.
    pub jobs: usize,
}

/// One kind of request of the load: a route of the current config.
#[derive(Debug, Clone, Serialize)]
pub struct Class {
    /// The route it exercises (its name in the current config).
    pub route: String,
    /// Method.
    pub method: String,
    /// Path sent.
    pub path: String,
    /// Requests per second.
    pub rate: f64,
    /// The key header and the number of keys, on a rate-limited route.
    pub keys: Option<(String, u32)>,
}

/// The simulation set-up both configs share.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The load.
    pub classes: Vec<Class>,
    /// The simulated hosts: name, the address it stands for, latency range, error rate.
    pub hosts: Vec<Host>,
    /// The two configs with addresses replaced by host names.
    pub old: String,
    /// The new one.
    pub new: String,
    /// Faults: name and, per config, its timeline entries.
    pub faults: Vec<Fault>,
    /// What the simulation does not reproduce of these configs.
    pub notes: Vec<String>,
}

/// A simulated server.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Its simulated name.
    pub name: String,
    /// The configured address it stands for.
    pub address: String,
    /// Service time range, ms.
    pub latency_ms: (f64, f64),
    /// Share answered 500.
    pub error_rate: f64,
}

/// A fault of the standard set, as timeline entries for each arm.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Its name in the report.
    pub name: String,
    /// The timeline under the old config (and the reload arm before the reload).
    pub old: Vec<Value>,
    /// Under the new config (and the reload arm after it).
    pub new: Vec<Value>,
    /// Hosts it targets, under each config (for detection time).
    pub targets: (Vec<String>, Vec<String>),
}

/// The three arms of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The current config.
    Old,
    /// The new config.
    New,
    /// The current config reloaded to the new one.
    Reload,
}

/// Reads both configs (validated as the proxy would) and builds the shared set-up.
pub fn setup(current: &Path, new: &Path, opts: &Options) -> Result<Setup, String> {
    let read = |p: &Path| -> Result<(String, Runtime), String> {
        let valid = locci_proxy::config_file::load_file(p, &Default::default()).map_err(|errors| {
            let lines: Vec<String> = errors.0.iter().map(|e| format!("  {e}")).collect();
            format!("{}: invalid config:\n{}", p.display(), lines.join("\n"))
        })?;
        let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        Ok((text, Runtime::build(valid, None, 1, ManualClock::default().now())))
    };
    let (old_text, old_rt) = read(current)?;
    let (new_text, new_rt) = read(new)?;
    let mut notes = Vec::new();
    // Every configured address, in order of first appearance, is one simulated host.
    let mut addresses: Vec<String> = Vec::new();
    for rt in [&old_rt, &new_rt] {
        for pool in rt.pools() {
            for s in pool.servers() {
                if !addresses.contains(&s.addr.text) {
                    addresses.push(s.addr.text.clone());
                }
            }
        }
    }
    let hosts: Vec<Host> =
        addresses.iter().enumerate().map(|(i, address)| host(i, address, opts.profile.as_ref())).collect();
    let old = world_config(&old_text, &hosts, &mut notes)?;
    let new_cfg = world_config(&new_text, &hosts, &mut notes)?;
    let classes = classes(&old_rt, opts.profile.as_ref(), &mut notes);
    if classes.is_empty() {
        return Err(format!("{}: no route could be given a request to simulate", current.display()));
    }
    let faults = faults(&old_rt, &new_rt, &hosts, &classes);
    notes.sort();
    notes.dedup();
    Ok(Setup { classes, hosts, old, new: new_cfg, faults, notes })
}

fn host(i: usize, address: &str, profile: Option<&TrafficProfile>) -> Host {
    let measured = profile.and_then(|p| p.servers.iter().find(|s| s.server == address && s.latency_us.count > 0));
    let (latency_ms, error_rate) = match measured {
        // Uniform between half the median and the 90th percentile: the profile keeps buckets, not samples.
        Some(s) => {
            let p50 = s.latency_us.p50 as f64 / 1000.0;
            let p90 = (s.latency_us.p90 as f64 / 1000.0).max(p50);
            ((p50 / 2.0, p90), s.error_rate.clamp(0.0, 1.0))
        }
        None => ((2.0, 10.0), 0.0),
    };
    Host { name: format!("srv{i}"), address: address.to_string(), latency_ms, error_rate }
}

/// The config as the simulated proxy runs it: servers replaced by simulated hosts, the listener and the
/// control API the simulator's, what cannot be simulated turned off (and said so).
fn world_config(text: &str, hosts: &[Host], notes: &mut Vec<String>) -> Result<String, String> {
    let mut tree: Yaml = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let map = tree.as_mapping_mut().ok_or("the config is not a mapping")?;
    let host_of = |addr: &str| hosts.iter().find(|h| h.address == addr).map(|h| format!("${{{}}}:80", h.name));
    if let Some(Yaml::Mapping(groups)) = map.get_mut("upstreams") {
        for (_, group) in groups.iter_mut() {
            let Some(group) = group.as_mapping_mut() else { continue };
            if group.get("tls").and_then(Yaml::as_bool) == Some(true) {
                notes.push("upstream TLS is simulated as plain TCP".into());
                group.insert("tls".into(), false.into());
                group.remove("sni");
                group.remove("ca_path");
            }
            if let Some(Yaml::Sequence(servers)) = group.get_mut("servers") {
                for server in servers.iter_mut() {
                    match server {
                        Yaml::String(addr) => {
                            if let Some(h) = host_of(addr) {
                                *addr = h;
                            }
                        }
                        Yaml::Mapping(m) => {
                            let addr = m.get("address").and_then(Yaml::as_str).and_then(host_of);
                            if let Some(h) = addr {
                                m.insert("address".into(), h.into());
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let server = map.entry("server".into()).or_insert_with(|| Yaml::Mapping(Default::default()));
    if let Some(server) = server.as_mapping_mut() {
        server.insert("bind_address".into(), "0.0.0.0:8484".into());
        if server.remove("tls").is_some() {
            notes.push("the client side is simulated as plain HTTP (server.tls is not simulated)".into());
        }
    }
    map.insert("control_api".into(), serde_yaml_ng::from_str("{ enabled: false }").unwrap_or_default());
    // The simulated proxy's reloads are not gated: a preflight inside a preflight would start a child process.
    map.remove("reload");
    if let Some(Yaml::Mapping(gw)) = map.get_mut("api_gateway")
        && let Some(Yaml::Mapping(mw)) = gw.get_mut("middlewares")
        && let Some(Yaml::Mapping(rl)) = mw.get_mut("rate_limiting")
        && rl.get("backend").and_then(Yaml::as_str) == Some("redis")
    {
        // The shared limit runs on the simulated Redis (the production script's step); its URL, and any
        // password in it, is replaced by the simulated host's.
        notes.push("a shared (Redis) rate limit runs on the simulated Redis".into());
        if let Some(Yaml::Mapping(redis)) = rl.get_mut("redis") {
            redis.insert("url".into(), "redis://${redis}:6379".into());
        }
    }
    serde_yaml_ng::to_string(&tree).map_err(|e| e.to_string())
}

/// The literal start of a route pattern: the path a request for it is sent with.
fn literal_prefix(pattern: &str) -> String {
    let body = pattern.strip_prefix('^').unwrap_or(pattern);
    let mut out = String::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if !n.is_ascii_alphanumeric() => out.push(n),
                _ => break,
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '$' | '^' => {
                // A quantifier applies to the last character: it may be absent.
                if matches!(c, '*' | '?' | '{') {
                    out.pop();
                }
                break;
            }
            c => out.push(c),
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

/// The load: a class per route of the current config, with a path its pattern takes and the route's share.
fn classes(rt: &Runtime, profile: Option<&TrafficProfile>, notes: &mut Vec<String>) -> Vec<Class> {
    let clock = ManualClock::default();
    let now = Now { mono: clock.now(), unix: clock.unix_now() };
    let rate_of = |route: &str| -> Option<(f64, BTreeMap<String, u64>, u64)> {
        let r = profile?.routes.iter().find(|r| r.route == route)?;
        // The mean over the minutes since the first request: a proxy up for five minutes has not seen an
        // hour, and its rate is not a twelfth of what it serves.
        let first = r.per_minute.iter().position(|n| *n > 0).unwrap_or(0);
        let minutes = (r.per_minute.len() - first).max(1);
        let per_sec = r.per_minute.iter().sum::<u64>() as f64 / (60.0 * minutes as f64);
        Some((per_sec, r.methods.clone(), r.rate_limit_keys.as_ref().map_or(0, |k| k.distinct)))
    };
    let profiled = profile.is_some_and(|p| p.routes.iter().any(|r| r.per_minute.iter().any(|n| *n > 0)));
    let mut routes: Vec<_> = rt.routes().iter().collect();
    // File order is lost in the table (longest first); names give a stable order for the report.
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    let mut found = Vec::new();
    for route in &routes {
        let path = literal_prefix(route.pattern());
        let method = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
            .into_iter()
            .find(|m| route.accepts(m))
            .unwrap_or("GET");
        let headers = HeaderPairs(&[]);
        let q = Question {
            method,
            path: &path,
            query: None,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            headers: &headers,
        };
        let e = rt.explain(&q, now);
        if !e.routes.iter().any(|r| r.chosen && r.name == *route.name) {
            notes.push(format!(
                "route {} is not simulated: no request could be made from its pattern {:?}",
                route.name,
                route.pattern()
            ));
            continue;
        }
        if e.middlewares.iter().any(|m| m.name == "auth") {
            notes.push(format!("route {} is sent without a token: its requests are answered 401", route.name));
        }
        let keys = route.steps().iter().find_map(|s| match s {
            locci_core::middleware::Step::RateLimit(l) => Some(l.settings().key_header.clone()),
            locci_core::middleware::Step::RemoteRateLimit(l) => Some(l.settings.key_header.clone()),
            _ => None,
        });
        found.push((route, path, method, keys));
    }
    let n = found.len().max(1) as f64;
    for (route, path, method, key_header) in found {
        let (rate, methods, distinct) = match rate_of(&route.name) {
            Some(measured) if profiled => measured,
            _ if profiled => (0.0, BTreeMap::new(), 0),
            _ => (DEFAULT_RATE / n, BTreeMap::new(), 0),
        };
        if rate <= 0.0 {
            continue;
        }
        let keys = key_header.map(|h| (h.unwrap_or_else(|| "x-api-key".into()), distinct.clamp(1, 1000) as u32));
        let total: u64 = methods.values().filter(|_| true).sum();
        // The profile's method mix where the route takes the method; else the route's first method.
        let mix: Vec<(String, f64)> = methods
            .iter()
            .filter(|(m, _)| route.accepts(m))
            .map(|(m, c)| (m.clone(), *c as f64 / total.max(1) as f64))
            .collect();
        if mix.is_empty() {
            out.push(Class { route: route.name.to_string(), method: method.into(), path, rate, keys });
        } else {
            for (m, share) in mix {
                out.push(Class {
                    route: route.name.to_string(),
                    method: m,
                    path: path.clone(),
                    rate: rate * share,
                    keys: keys.clone(),
                });
            }
        }
    }
    out
}

/// The standard fault set: one server of each group dies and returns; one slows to 10x its latency; one
/// answers 500s; a storm on the top rate-limit key (when a route has a rate limit). Each config meets the
/// fault on its own first server of each group: the worst single failure it faces.
fn faults(old: &Runtime, new: &Runtime, hosts: &[Host], classes: &[Class]) -> Vec<Fault> {
    let firsts = |rt: &Runtime| -> Vec<String> {
        rt.pools()
            .iter()
            .filter_map(|p| p.servers().first())
            .filter_map(|s| hosts.iter().find(|h| h.address == s.addr.text))
            .map(|h| h.name.clone())
            .collect()
    };
    let (o, n) = (firsts(old), firsts(new));
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let at = ms(FAULT_AT);
    let back = ms(FAULT_AT + FAULT_FOR);
    let each = |targets: &[String], f: &dyn Fn(&str) -> Vec<Value>| -> Vec<Value> {
        targets.iter().flat_map(|t| f(t)).collect()
    };
    let kill = |t: &str| vec![json!({"at": at, "kill": t}), json!({"at": back, "restart": t})];
    let slow = |t: &str| {
        let base = hosts.iter().find(|h| h.name == t).map_or(10.0, |h| h.latency_ms.1);
        vec![
            json!({"at": at, "slow": {"target": t, "latency": format!("{}ms", (base * 10.0).ceil() as u64), "for": ms(FAULT_FOR)}}),
        ]
    };
    let errors = |t: &str| vec![json!({"at": at, "errors": {"target": t, "status": 500, "for": ms(FAULT_FOR)}})];
    let mut out = vec![
        Fault { name: "none".into(), old: vec![], new: vec![], targets: (vec![], vec![]) },
        Fault {
            name: "one server dies".into(),
            old: each(&o, &kill),
            new: each(&n, &kill),
            targets: (o.clone(), n.clone()),
        },
        Fault {
            name: "one server 10x slower".into(),
            old: each(&o, &slow),
            new: each(&n, &slow),
            targets: (o.clone(), n.clone()),
        },
        Fault {
            name: "one server answers 500".into(),
            old: each(&o, &errors),
            new: each(&n, &errors),
            targets: (o.clone(), n.clone()),
        },
    ];
    if let Some(c) = classes.iter().filter(|c| c.keys.is_some()).max_by(|a, b| a.rate.total_cmp(&b.rate)) {
        let header = c.keys.as_ref().map_or("x-api-key".to_string(), |k| k.0.clone());
        let total: f64 = classes.iter().map(|c| c.rate).sum();
        let storm = vec![json!({"at": at, "storm": {"key_header": header, "key": "key-0", "path": c.path,
            "rate": (total * 2.0).max(20.0), "for": ms(FAULT_FOR), "expect": [200, 429]}})];
        out.push(Fault {
            name: "storm on the top key".into(),
            old: storm.clone(),
            new: storm,
            targets: (vec![], vec![]),
        });
    }
    out
}

/// The scenario of one world, in the simulator's own format (and parsed by its one parser).
pub fn scenario(setup: &Setup, fault: &Fault, arm: Arm, capacity: Option<usize>) -> Result<Scenario, String> {
    let total: f64 = setup.classes.iter().map(|c| c.rate).sum();
    let requests: Vec<Value> = setup
        .classes
        .iter()
        .map(|c| {
            let mut r = json!({"weight": ((c.rate / total) * 10_000.0).round().max(1.0) as u64, "method": c.method,
                "path": c.path, "expect": [200]});
            if let Some((header, keys)) = &c.keys {
                r["key_header"] = json!(header);
                r["keys"] = json!(keys);
            }
            r
        })
        .collect();
    let upstreams: Vec<Value> = setup
        .hosts
        .iter()
        .map(|h| {
            let mut u = json!({"name": h.name, "latency": {"min": format!("{}us", (h.latency_ms.0 * 1000.0) as u64),
                "max": format!("{}us", (h.latency_ms.1 * 1000.0) as u64)}, "error_rate": h.error_rate});
            if let Some(c) = capacity {
                u["capacity"] = json!({"concurrent": c, "queue": c * 4});
            }
            u
        })
        .collect();
    let (config, mut timeline) = match arm {
        Arm::Old => (setup.old.clone(), fault.old.clone()),
        Arm::New => (setup.new.clone(), fault.new.clone()),
        Arm::Reload => (setup.old.clone(), fault.new.clone()),
    };
    if arm == Arm::Reload {
        timeline.push(json!({"at": format!("{}ms", RELOAD_AT.as_millis()), "reload": {"config": setup.new}}));
    }
    let mut s = json!({
        "name": format!("preflight {} {:?}", fault.name, arm),
        "sim": {"duration": format!("{}s", DURATION.as_secs()), "tick": "1ms", "link_latency": {"min": "1ms", "max": "2ms"}},
        "proxy": {"config": config},
        "upstreams": upstreams,
        "load": {"rate": total.clamp(1.0, crate::scenario::MAX_SIM_RATE), "arrival": "poisson", "timeout": "10s", "requests": requests},
        "timeline": timeline,
    });
    if [&setup.old, &setup.new].iter().any(|c| c.contains("${redis}")) {
        s["redis"] = json!({});
    }
    let text = serde_yaml_ng::to_string(&s).map_err(|e| e.to_string())?;
    Scenario::parse(&text)
        .map_err(|p| format!("internal: the preflight world is not a valid scenario: {}", p.join("; ")))
}

/// What one class got in one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Got {
    /// Requests issued.
    pub requests: u64,
    /// Answered with a status below 500.
    pub good: u64,
    /// Answers by status ("failed": no answer).
    pub statuses: BTreeMap<String, u64>,
    /// Client latency of the answered, µs.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Requests received per simulated host.
    pub servers: BTreeMap<String, u64>,
}

/// One run's outcome: per class (index), and the detection time of the fault's target (µs after the fault).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// Per class.
    pub classes: Vec<Got>,
    /// How long after the fault its target was taken out of rotation.
    pub detection_us: Option<u64>,
}

/// Reads a run's trace into what each class got.
pub fn measure(setup: &Setup, events: &[Event], targets: &[String]) -> Measured {
    let class_of: BTreeMap<(&str, &str), usize> =
        setup.classes.iter().enumerate().map(|(i, c)| ((c.method.as_str(), c.path.as_str()), i)).collect();
    let mut of_id: BTreeMap<u64, usize> = BTreeMap::new();
    let mut got = vec![Got::default(); setup.classes.len()];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); setup.classes.len()];
    let mut seen: std::collections::BTreeSet<u64> = Default::default();
    let fault_us = FAULT_AT.as_micros() as u64;
    let mut detection = None;
    for e in events {
        match e {
            Event::Issued { id, method, path, .. } => {
                if let Some(c) = class_of.get(&(method.as_str(), path.as_str())) {
                    of_id.insert(*id, *c);
                    got[*c].requests += 1;
                }
            }
            Event::Answered { id, status, latency_us, .. } => {
                if let Some(c) = of_id.get(id) {
                    *got[*c].statuses.entry(status.to_string()).or_default() += 1;
                    if *status < 500 {
                        got[*c].good += 1;
                    }
                    latencies[*c].push(*latency_us);
                }
            }
            Event::Failed { id, .. } | Event::Truncated { id, .. } => {
                if let Some(c) = of_id.get(id) {
                    *got[*c].statuses.entry("failed".into()).or_default() += 1;
                }
            }
            Event::Received { id, host, .. } => {
                if let Some(c) = of_id.get(id)
                    && seen.insert(*id)
                {
                    *got[*c].servers.entry(host.clone()).or_default() += 1;
                }
            }
            Event::Health { t_us, host, up: false } if *t_us >= fault_us && targets.contains(host) => {
                detection.get_or_insert(t_us - fault_us);
            }
            _ => {}
        }
    }
    for (g, mut l) in got.iter_mut().zip(latencies) {
        g.p50_us = crate::oracle::percentile(&mut l, 50.0);
        g.p99_us = crate::oracle::percentile(&mut l, 99.0);
    }
    Measured { classes: got, detection_us: detection }
}

/// Runs every world over every seed, `jobs` at a time; per (fault, arm), the runs in seed order.
pub fn run_all(setup: &Setup, opts: &Options) -> Result<BTreeMap<(usize, Arm), Vec<Measured>>, String> {
    let mut work = Vec::new();
    for (f, fault) in setup.faults.iter().enumerate() {
        for arm in [Arm::Old, Arm::New, Arm::Reload] {
            let scenario = scenario(setup, fault, arm, opts.capacity)?;
            let targets = if arm == Arm::Old { fault.targets.0.clone() } else { fault.targets.1.clone() };
            for seed in 1..=opts.seeds {
                work.push((f, arm, seed, scenario.clone(), targets.clone()));
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let failure = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((f, arm, seed, scenario, targets)) = work.get(i) else { break };
                    match crate::world::run(scenario, *seed, false) {
                        Ok(run) => {
                            let m = measure(setup, &run.events, targets);
                            results.lock().unwrap_or_else(|e| e.into_inner()).push(((*f, *arm, *seed), m));
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("{}: {e}", scenario.name));
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("the simulation failed: {e}"));
    }
    let mut all = results.into_inner().unwrap_or_else(|e| e.into_inner());
    all.sort_by_key(|(k, _)| *k);
    let mut out: BTreeMap<(usize, Arm), Vec<Measured>> = BTreeMap::new();
    for ((f, arm, _), m) in all {
        out.entry((f, arm)).or_default().push(m);
    }
    Ok(out)
}

/// Mean and spread (the largest distance of a seed from the mean) of a metric over the seeds.
fn stats(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let spread = values.iter().map(|v| (v - mean).abs()).fold(0.0, f64::max);
    (mean, spread)
}

/// One row of the report: a route under a fault, old against new (and the reload).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The route.
    pub route: String,
    /// The method.
    pub method: String,
    /// The fault.
    pub fault: String,
    /// Availability in percent, per arm (mean over seeds).
    pub availability: BTreeMap<Arm, f64>,
    /// The seed-to-seed spread of availability (percentage points), the noise floor.
    pub availability_noise: f64,
    /// p50 and p99 client latency, ms, per arm.
    pub p50_ms: BTreeMap<Arm, f64>,
    /// p99.
    pub p99_ms: BTreeMap<Arm, f64>,
    /// The noise floor of p99, ms.
    pub p99_noise: f64,
    /// 429s in percent, per arm.
    pub limited: BTreeMap<Arm, f64>,
    /// The most common answer, per arm.
    pub answer: BTreeMap<Arm, String>,
    /// Share of requests per simulated server address, per arm (percent).
    pub shares: BTreeMap<Arm, BTreeMap<String, f64>>,
    /// Time until the fault's target was out of rotation, ms, per arm (mean over the seeds that saw it).
    pub detection_ms: BTreeMap<Arm, Option<f64>>,
    /// What is wrong, against the budgets; empty when within them.
    pub problems: Vec<String>,
    /// "no change", "better", "worse" or "changed".
    pub verdict: String,
}

/// Compares the arms into rows, each judged against the budgets beyond the noise floor.
pub fn compare(setup: &Setup, runs: &BTreeMap<(usize, Arm), Vec<Measured>>, opts: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    let address =
        |host: &str| setup.hosts.iter().find(|h| h.name == host).map_or(host.to_string(), |h| h.address.clone());
    for (f, fault) in setup.faults.iter().enumerate() {
        for (c, class) in setup.classes.iter().enumerate() {
            let mut row = Row {
                route: class.route.clone(),
                method: class.method.clone(),
                fault: fault.name.clone(),
                availability: BTreeMap::new(),
                availability_noise: 0.0,
                p50_ms: BTreeMap::new(),
                p99_ms: BTreeMap::new(),
                p99_noise: 0.0,
                limited: BTreeMap::new(),
                answer: BTreeMap::new(),
                shares: BTreeMap::new(),
                detection_ms: BTreeMap::new(),
                problems: Vec::new(),
                verdict: String::new(),
            };
            let mut avail_stats = BTreeMap::new();
            let mut p99_stats = BTreeMap::new();
            for arm in [Arm::Old, Arm::New, Arm::Reload] {
                let seeds = runs.get(&(f, arm)).map_or(&[][..], Vec::as_slice);
                let got: Vec<&Got> = seeds.iter().filter_map(|m| m.classes.get(c)).collect();
                let pct = |g: &Got, n: u64| if g.requests == 0 { 100.0 } else { n as f64 * 100.0 / g.requests as f64 };
                let avail = stats(&got.iter().map(|g| pct(g, g.good)).collect::<Vec<_>>());
                let p99 = stats(&got.iter().map(|g| g.p99_us as f64 / 1000.0).collect::<Vec<_>>());
                avail_stats.insert(arm, avail);
                p99_stats.insert(arm, p99);
                row.availability.insert(arm, avail.0);
                row.p99_ms.insert(arm, p99.0);
                row.p50_ms.insert(arm, stats(&got.iter().map(|g| g.p50_us as f64 / 1000.0).collect::<Vec<_>>()).0);
                let limited = |g: &Got| pct(g, g.statuses.get("429").copied().unwrap_or(0));
                row.limited.insert(arm, stats(&got.iter().map(|g| limited(g)).collect::<Vec<_>>()).0);
                let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
                let mut servers: BTreeMap<String, u64> = BTreeMap::new();
                for g in &got {
                    for (s, n) in &g.statuses {
                        *statuses.entry(s.clone()).or_default() += n;
                    }
                    for (h, n) in &g.servers {
                        *servers.entry(address(h)).or_default() += n;
                    }
                }
                let top = statuses.iter().max_by_key(|(s, n)| (**n, std::cmp::Reverse((*s).clone())));
                row.answer.insert(arm, top.map_or("-".into(), |(s, _)| s.clone()));
                let received: u64 = servers.values().sum();
                row.shares.insert(
                    arm,
                    servers.into_iter().map(|(a, n)| (a, n as f64 * 100.0 / received.max(1) as f64)).collect(),
                );
                let detections: Vec<f64> =
                    seeds.iter().filter_map(|m| m.detection_us).map(|u| u as f64 / 1000.0).collect();
                row.detection_ms.insert(arm, (!detections.is_empty()).then(|| stats(&detections).0));
            }
            let (old_a, old_an) = avail_stats[&Arm::Old];
            let (old_p, old_pn) = p99_stats[&Arm::Old];
            row.availability_noise = avail_stats.values().map(|s| s.1).fold(0.0, f64::max);
            row.p99_noise = p99_stats.values().map(|s| s.1).fold(0.0, f64::max);
            let mut worse = false;
            let mut better = false;
            for arm in [Arm::New, Arm::Reload] {
                let (a, an) = avail_stats[&arm];
                let (p, pn) = p99_stats[&arm];
                let label = if arm == Arm::New { "new" } else { "reload" };
                let drop = old_a - a;
                if drop > opts.max_availability_drop && drop > old_an.max(an) {
                    row.problems.push(format!(
                        "{label}: availability {a:.2}% vs {old_a:.2}% (a drop of {drop:.2} points, budget {}, noise {:.2})",
                        opts.max_availability_drop,
                        old_an.max(an)
                    ));
                    worse = true;
                } else if -drop > old_an.max(an) && -drop > opts.max_availability_drop {
                    better = true;
                }
                let rise = if old_p > 0.0 { (p - old_p) * 100.0 / old_p } else { 0.0 };
                if rise > opts.max_p99_increase && p - old_p > old_pn.max(pn) {
                    row.problems.push(format!(
                        "{label}: p99 {p:.1} ms vs {old_p:.1} ms (+{rise:.0}%, budget {}%, noise {:.1} ms)",
                        opts.max_p99_increase,
                        old_pn.max(pn)
                    ));
                    worse = true;
                }
                if row.answer[&arm] != row.answer[&Arm::Old] {
                    row.problems.push(format!(
                        "{label}: the usual answer is {} instead of {}",
                        row.answer[&arm],
                        row.answer[&Arm::Old]
                    ));
                    worse = true;
                }
            }
            row.verdict = match (worse, better) {
                (true, _) => "worse",
                (false, true) => "better",
                (false, false) => "no change",
            }
            .into();
            rows.push(row);
        }
    }
    rows
}

/// The report as text: set-up, one table per fault, the verdict.
pub fn text(setup: &Setup, rows: &[Row], opts: &Options) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "preflight: {} route(s) at {:.1} req/s{}, {} simulated server(s), {} seed(s), {} s per world",
        setup.classes.iter().map(|c| c.route.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
        setup.classes.iter().map(|c| c.rate).sum::<f64>(),
        if opts.profile.is_some() { " from the profile" } else { " (default load)" },
        setup.hosts.len(),
        opts.seeds,
        DURATION.as_secs()
    );
    for note in &setup.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let mut fault = "";
    for r in rows {
        if r.fault != fault {
            fault = &r.fault;
            let _ = writeln!(out, "\nfault: {fault}");
            let _ = writeln!(
                out,
                "  {:<20} {:>22} {:>26} {:>14} {:>16}  verdict",
                "route", "availability old/new", "p50/p99 ms old -> new", "429% old/new", "detect ms o/n"
            );
        }
        let det = |a: Arm| r.detection_ms[&a].map_or("-".to_string(), |d| format!("{d:.0}"));
        let _ = writeln!(
            out,
            "  {:<20} {:>22} {:>26} {:>14} {:>16}  {}",
            format!("{} {}", r.route, r.method),
            format!("{:.2}% / {:.2}%", r.availability[&Arm::Old], r.availability[&Arm::New]),
            format!(
                "{:.1}/{:.1} -> {:.1}/{:.1}",
                r.p50_ms[&Arm::Old],
                r.p99_ms[&Arm::Old],
                r.p50_ms[&Arm::New],
                r.p99_ms[&Arm::New]
            ),
            format!("{:.1} / {:.1}", r.limited[&Arm::Old], r.limited[&Arm::New]),
            format!("{} / {}", det(Arm::Old), det(Arm::New)),
            r.verdict
        );
        for p in &r.problems {
            let _ = writeln!(out, "      ! {p}");
        }
    }
    let broken: Vec<&Row> = rows.iter().filter(|r| !r.problems.is_empty()).collect();
    let _ = writeln!(out);
    if broken.is_empty() {
        let _ = writeln!(
            out,
            "verdict: within budget (availability drop <= {} points, p99 increase <= {}%, beyond the seed-to-seed noise)",
            opts.max_availability_drop, opts.max_p99_increase
        );
    } else {
        let _ = writeln!(out, "verdict: OVER BUDGET in {} of {} route/fault pair(s)", broken.len(), rows.len());
    }
    out
}

/// The whole report for tools.
pub fn json_report(setup: &Setup, rows: &[Row], opts: &Options) -> Value {
    json!({
        "within_budget": rows.iter().all(|r| r.problems.is_empty()),
        "budgets": {"max_availability_drop": opts.max_availability_drop, "max_p99_increase": opts.max_p99_increase},
        "seeds": opts.seeds,
        "load": setup.classes,
        "servers": setup.hosts,
        "notes": setup.notes,
        "rows": rows,
    })
}

/// Availability and p99 per route and fault, old beside new, as an SVG bar chart.
pub fn svg(rows: &[Row]) -> String {
    let (w, row_h) = (900.0, 22.0);
    let h = 60.0 + row_h * rows.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">preflight: availability (bars, 90-100 %) and p99, old (grey) vs new (blue)</text>\n"
    );
    let max_p99 = rows.iter().flat_map(|r| r.p99_ms.values()).copied().fold(1.0, f64::max);
    for (i, r) in rows.iter().enumerate() {
        let y = 40.0 + row_h * i as f64;
        let label = format!("{} / {} / {}", r.fault, r.route, r.method);
        let _ = writeln!(out, "<text x=\"10\" y=\"{}\">{}</text>", y + 12.0, xml(&label));
        let bar = |a: f64| ((a - 90.0).clamp(0.0, 10.0) / 10.0) * 220.0;
        for (k, (arm, color)) in [(Arm::Old, "#999"), (Arm::New, "#36c")].into_iter().enumerate() {
            let yy = y + k as f64 * 9.0;
            let a = r.availability[&arm];
            let p = r.p99_ms[&arm];
            let _ = writeln!(out, "<rect x=\"300\" y=\"{yy}\" width=\"{:.1}\" height=\"8\" fill=\"{color}\"/>", bar(a));
            let _ = writeln!(out, "<text x=\"525\" y=\"{}\">{a:.2}%</text>", yy + 8.0);
            let _ = writeln!(
                out,
                "<rect x=\"590\" y=\"{yy}\" width=\"{:.1}\" height=\"8\" fill=\"{color}\"/>",
                p / max_p99 * 200.0
            );
            let _ = writeln!(out, "<text x=\"795\" y=\"{}\">{p:.1} ms</text>", yy + 8.0);
        }
        if !r.problems.is_empty() {
            let _ = writeln!(out, "<text x=\"860\" y=\"{}\" fill=\"#c00\">!</text>", y + 12.0);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

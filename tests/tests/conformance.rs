//! The conformance arm: scenarios the simulator runs are also played in real time against the real
//! `locci-proxy` binary and real servers, and judged by the same invariants, so simulation and reality
//! cannot drift apart. Faults: kill = stop the server process's listener, restart = start it again on the
//! same port, reload = rewrite the config and send SIGHUP.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use locci_e2e::*;
use locci_sim::oracle;
use locci_sim::scenario::Scenario;
use locci_sim::trace::Event;
use locci_sim::world::{self, Action};

const CLIENTS: usize = 8;

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Replaces the simulated host names and listen addresses of a scenario config with real ones.
fn real_config(text: &str, addrs: &BTreeMap<String, std::net::SocketAddr>) -> String {
    let mut out = text.replace("\"0.0.0.0:8484\"", "\"{BIND}\"");
    for (name, addr) in addrs {
        out = out.replace(&format!("${{{name}}}:80"), &addr.to_string());
    }
    out = out.replace("control_api: { enabled: false }", "control_api: { bind_address: \"{CONTROL}\" }");
    assert!(!out.contains("${") && out.contains("{CONTROL}"), "scenario config not translatable:\n{out}");
    out
}

fn play(path: &str) -> Vec<oracle::Verdict> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap();
    let mut scenario = Scenario::parse(&text).unwrap();
    // A signal gives no instant at which the real proxy swapped its config, so `generations` (which judges
    // each delivery by the config in force when it was made) is the simulator's alone; the `traffic` bounds
    // around the reload are judged here.
    scenario.invariants.retain(|i| !matches!(i, locci_sim::scenario::Invariant::Generations(_)));
    let mut hosts: BTreeMap<String, Backend> = scenario
        .hosts()
        .into_iter()
        .map(|h| (h.clone(), Backend::start(&h, "127.0.0.1:0".parse().unwrap()).unwrap()))
        .collect();
    let addrs: BTreeMap<String, std::net::SocketAddr> = hosts.iter().map(|(h, b)| (h.clone(), b.addr)).collect();
    let proxy = Proxy::start(&real_config(&scenario.proxy.config, &addrs));
    let expanded = world::expand(&scenario, 1, false);
    let plan = world::plan(&scenario, &expanded, 1);
    let events = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let t0_tokio = tokio::time::Instant::from_std(t0);
    // Health as the proxy sees it, from its control API.
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (events, done, url) = (Arc::clone(&events), Arc::clone(&done), proxy.control_url("/api/v1/upstreams"));
        let names: BTreeMap<String, String> = addrs.iter().map(|(h, a)| (a.to_string(), h.clone())).collect();
        std::thread::spawn(move || {
            let http = client();
            let mut last: BTreeMap<String, bool> = BTreeMap::new();
            // When the last poll that saw each server down was sent.
            let mut down_seen: BTreeMap<String, u64> = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                let sent = us(t0.elapsed());
                if let Ok(resp) = http.get(&url).send() {
                    let groups: serde_json::Value = resp.json().unwrap_or_default();
                    for s in groups
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|g| g["servers"].as_array().cloned().unwrap_or_default())
                    {
                        let host = names.get(s["address"].as_str().unwrap_or("")).cloned().unwrap_or_default();
                        let up = s["healthy"].as_bool().unwrap_or(true);
                        let changed = match last.insert(host.clone(), up) {
                            None => !up,
                            Some(prev) => prev != up,
                        };
                        // Stamped so the recorded down interval is one the proxy surely spent down: from the
                        // answer of the first poll that saw it down to the sending of the last one, since a
                        // poll's state is read somewhere between the two (under load, far apart).
                        if changed {
                            let t_us =
                                if up { down_seen.get(&host).copied().unwrap_or(sent) } else { us(t0.elapsed()) };
                            events.lock().unwrap().push(Event::Health { t_us, host: host.clone(), up });
                        }
                        if !up {
                            down_seen.insert(host, sent);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // The planned load, on a few client threads, each request at its time.
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (plan, next, events, url) = (Arc::clone(&plan), Arc::clone(&next), Arc::clone(&events), proxy.url(""));
            let timeout = scenario.load.timeout;
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder().timeout(timeout).no_proxy().build().unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = plan.get(i) else { break };
                    if let Some(wait) = req.at.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let key = req.key.as_ref().map(|(_, v)| v.clone());
                    events.lock().unwrap().push(Event::Issued {
                        t_us: us(sent - t0),
                        id: req.id,
                        method: req.method.clone(),
                        path: req.path.clone(),
                        key,
                        expect: req.expect.clone(),
                        upstream_path: req.upstream_path.clone(),
                        traceparent: req.class_header("traceparent"),
                        tracestate: req.class_header("tracestate"),
                    });
                    let mut builder = http
                        .request(req.method.parse().unwrap(), format!("{url}{}", req.path))
                        .header("x-sim-id", req.id);
                    if let Some((h, v)) = &req.key {
                        builder = builder.header(h.as_str(), v.as_str());
                    }
                    for (name, value) in &req.headers {
                        builder = builder.header(name.as_str(), value.as_str());
                    }
                    if let Some(body) = &req.body {
                        builder = builder.body(body.clone());
                    }
                    let event = match builder.send() {
                        Ok(r) => Event::Answered {
                            t_us: us(t0.elapsed()),
                            id: req.id,
                            status: r.status().as_u16(),
                            latency_us: us(sent.elapsed()),
                        },
                        Err(e) => Event::Failed {
                            t_us: us(t0.elapsed()),
                            id: req.id,
                            kind: format!("{e}"),
                            latency_us: us(sent.elapsed()),
                        },
                    };
                    events.lock().unwrap().push(event);
                }
            })
        })
        .collect();
    // The fault timeline, applied by this thread at its times.
    for (at, action) in &expanded.actions {
        if let Some(wait) = at.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        events.lock().unwrap().push(Event::Fault { t_us: us(t0.elapsed()), what: format!("{action:?}") });
        match action {
            Action::Crash(h) => {
                let b = hosts.remove(h).expect("known host");
                collect_received(&b, h, t0_tokio, &events);
                drop(b); // stops its listener: connections are refused from now on
            }
            Action::Bounce(h) => {
                hosts.insert(h.clone(), Backend::start(h, addrs[h]).unwrap());
            }
            // As the simulated server does: the status for every request, its health check included.
            Action::Status(h, status) => {
                let b = &hosts[h];
                b.fail_with(if *status == 200 { 0 } else { *status });
                b.set_healthy(*status < 500);
            }
            Action::Reload(_, text) => {
                proxy.write_config(&real_config(text, &addrs));
                proxy.signal("HUP");
            }
            other => panic!("{other:?} is not played by the real arm"),
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    for (h, b) in &hosts {
        collect_received(b, h, t0_tokio, &events);
    }
    let mut events = events.lock().unwrap().clone();
    events.sort_by_key(Event::t_us);
    // What the proxy counted, read from its own /metrics as the simulator reads its registry.
    let text = client().get(proxy.control_url("/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    events.push(oracle::counted(&text, us(t0.elapsed())));
    oracle::check(&scenario, &events, t0.elapsed(), false)
}

fn collect_received(b: &Backend, host: &str, t0: tokio::time::Instant, events: &Mutex<Vec<Event>>) {
    let mut events = events.lock().unwrap();
    for r in b.received() {
        if let Some(id) = r.id {
            events.push(Event::Received {
                t_us: us(r.at.duration_since(t0)),
                host: host.to_string(),
                id,
                path: r.path,
                traceparent: r.traceparent,
                tracestate: r.tracestate,
            });
        }
    }
}

fn assert_all_hold(verdicts: &[oracle::Verdict]) {
    let failed: Vec<String> = verdicts.iter().filter(|v| !v.ok).map(|v| format!("{}: {}", v.name, v.detail)).collect();
    assert!(failed.is_empty(), "invariants failed against the real binary:\n{}", failed.join("\n"));
    assert!(verdicts.len() >= 5);
}

#[test]
fn kill_and_return_holds_the_same_invariants_against_the_real_binary() {
    assert_all_hold(&play("scenarios/kill-and-return.yaml"));
}

#[test]
fn reload_swap_holds_the_same_invariants_against_the_real_binary() {
    assert_all_hold(&play("scenarios/reload-swap.yaml"));
}

/// The preflight's simulated world of an operator's config gives each server the share the real proxy gives
/// it: the config is written once with real addresses, simulated by `locci-sim preflight`'s own set-up, and
/// run for real in front of real servers.
#[test]
fn the_preflight_world_of_a_config_reproduces_the_real_proxy_s_shares() {
    use locci_sim::preflight::{self, Arm, Options};
    let b = backends(3);
    let servers = format!(
        "[{{ address: \"{}\", weight: 1 }}, {{ address: \"{}\", weight: 2 }}, {{ address: \"{}\", weight: 3 }}]",
        b[0].addr, b[1].addr, b[2].addr
    );
    let config = |bind: &str| {
        format!(
            "mode: api_gateway\nserver: {{ bind_address: \"{bind}\" }}\n\
             upstreams:\n  app: {{ servers: {servers}, strategy: weighted }}\n\
             api_gateway:\n  routes:\n    api: {{ path_pattern: \"^/api/\", upstream: app }}\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config("127.0.0.1:1")).unwrap();
    let opts = Options {
        seeds: 1,
        profile: None,
        max_availability_drop: 0.1,
        max_p99_increase: 25.0,
        capacity: None,
        jobs: 1,
    };
    let setup = preflight::setup(&file, &file, &opts).unwrap();
    let path = setup.classes[0].path.clone();
    assert_eq!(path, "/api/", "the request made from the route's pattern");
    let scenario = preflight::scenario(&setup, &setup.faults[0], Arm::Old, None).unwrap();
    let run = world::run(&scenario, 1, false).unwrap();
    let got = &preflight::measure(&setup, &run.events, &[]).classes[0];
    let simulated: u64 = got.servers.values().sum();
    let sim_share = |addr: &str| {
        let host = setup.hosts.iter().find(|h| h.address == addr).map(|h| h.name.clone()).unwrap();
        got.servers.get(&host).copied().unwrap_or(0) as f64 / simulated as f64
    };

    let proxy = Proxy::start(&config("{BIND}"));
    let http = client();
    let n = 600;
    for _ in 0..n {
        assert_eq!(http.get(proxy.url(&path)).send().unwrap().status(), 200);
    }
    for (backend, weight) in b.iter().zip([1.0, 2.0, 3.0]) {
        let real = backend.requests() as f64 / n as f64;
        let sim = sim_share(&backend.addr.to_string());
        assert!((real - sim).abs() < 0.03, "{}: real {real:.3}, simulated {sim:.3}", backend.addr);
        assert!((real - weight / 6.0).abs() < 0.03, "{}: real {real:.3}", backend.addr);
    }
}

#[test]
fn trace_context_holds_the_same_invariants_against_the_real_binary() {
    assert_all_hold(&play("scenarios/trace-context.yaml"));
}

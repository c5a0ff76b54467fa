//! Cluster-wide rate limits on a real redis-server (Debian's, started by the test on a free loopback port):
//! two proxies share one bucket, keys are independent, a dead Redis applies `on_error` at once and recovery
//! resumes shared limiting, bad URLs are refused at load; and the production Lua script, the Rust step the
//! simulated Redis takes and the proxy's own bucket decide alike on one arrival sequence.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use locci_e2e::*;

struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    fn start_on(addr: SocketAddr) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: scripts/setup installs Debian's redis-server");
        assert!(wait_until(WAIT, || TcpStream::connect(addr).is_ok()), "redis-server did not start");
        Redis { child, addr }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(b: &[Backend], redis: &str, on_error: &str, rpm: u32, burst: u32) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\ncontrol_api: {{ bind_address: \"{{CONTROL}}\" }}\n\
         upstreams: {{ u: {{ servers: {} }} }}\n\
         api_gateway:\n  routes:\n    api: {{ path_pattern: \"^/\", upstream: u, middlewares: [rate_limit] }}\n  middlewares:\n\
         \x20   rate_limiting:\n      requests_per_minute: {rpm}\n      burst_size: {burst}\n      key_header: X-Api-Key\n\
         \x20     backend: redis\n      redis: {{ url: \"{redis}\", timeout_ms: 50, on_error: {on_error} }}\n",
        servers_yaml(b)
    )
}

fn status(proxy: &Proxy, key: &str) -> u16 {
    client().get(proxy.url("/")).header("X-Api-Key", key).send().unwrap().status().as_u16()
}

fn wait_connected(proxy: &Proxy, key: &str) {
    // The proxy connects to Redis in the background; until then requests fall back (allowed).
    assert!(wait_until(WAIT, || proxy.logs().contains("connected to the rate-limit store") || {
        status(proxy, key);
        false
    }));
}

#[test]
fn two_proxies_sharing_redis_admit_together_no_more_than_burst_plus_rate_for_a_key() {
    let redis = Redis::start_on(free_addr());
    let b = backends(1);
    let url = format!("redis://{}", redis.addr);
    let (a, c) = (Proxy::start(&config(&b, &url, "deny", 60, 10)), Proxy::start(&config(&b, &url, "deny", 60, 10)));
    wait_connected(&a, "warm-a");
    wait_connected(&c, "warm-c");
    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..40 {
        let proxy = if i % 2 == 0 { &a } else { &c };
        if status(proxy, "shared") == 200 {
            admitted += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 10 + (elapsed * 1.0).ceil() as usize;
    assert!(admitted >= 10, "the burst must be available: {admitted}");
    assert!(admitted <= bound, "{admitted} admitted across both proxies in {elapsed:.2}s, bound {bound}");
    assert_eq!(status(&a, "other-key"), 200, "keys are independent");
    assert_eq!(status(&c, "other-key"), 200);
}

#[test]
fn the_first_requests_of_two_fresh_proxies_already_share_the_bucket() {
    // The case: with on_error allow and no warm-up, each proxy's first request used to fall back
    // (12 admitted for a burst of 10). The store now connects at start-up, and a request that comes while the
    // connect is under way waits for it (within timeout_ms) instead of falling back.
    let redis = Redis::start_on(free_addr());
    let b = backends(1);
    let url = format!("redis://{}", redis.addr);
    let (a, c) = (Proxy::start(&config(&b, &url, "allow", 60, 10)), Proxy::start(&config(&b, &url, "allow", 60, 10)));
    let started = Instant::now();
    let admitted = (0..30).filter(|i| status(if i % 2 == 0 { &a } else { &c }, "fresh") == 200).count();
    let bound = 10 + started.elapsed().as_secs_f64().ceil() as usize;
    assert!(admitted >= 10, "the burst must be available: {admitted}");
    assert!(admitted <= bound, "{admitted} admitted across two fresh proxies, bound {bound}:\n{}", a.logs());
    assert!(!a.logs().contains("falling back") && !c.logs().contains("falling back"), "a request fell back");
}

#[test]
fn a_dead_redis_applies_on_error_at_once_and_recovery_resumes_shared_limiting() {
    let addr = free_addr();
    let redis = Redis::start_on(addr);
    let b = backends(1);
    let url = format!("redis://{addr}");
    let allow = Proxy::start(&config(&b, &url, "allow", 60, 2));
    let deny = Proxy::start(&config(&b, &url, "deny", 60, 2));
    wait_connected(&allow, "warm");
    wait_connected(&deny, "warm");
    let statuses: Vec<u16> = (0..4).map(|_| status(&allow, "k")).collect();
    assert_eq!(statuses, vec![200, 200, 429, 429], "shared limiting works before the fault");
    drop(redis);
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(status(&allow, "k"), 200, "on_error: allow lets requests through");
        assert_eq!(status(&deny, "k2"), 429, "on_error: deny refuses them");
        assert!(started.elapsed() < Duration::from_secs(1), "the request path waited {:?}", started.elapsed());
    }
    let metrics = client().get(allow.control_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("locci_ratelimit_fallback_total{on_error=\"allow\",route=\"api\"}"), "{metrics}");
    assert!(allow.logs().contains("rate-limit store unavailable, falling back"));
    let _back = Redis::start_on(addr);
    // A fresh Redis has a fresh bucket: once reconnected, the third request in a row is refused again.
    let limited_again = wait_until(WAIT, || (0..3).map(|_| status(&allow, "after")).collect::<Vec<_>>()[2] == 429);
    assert!(limited_again, "shared limiting did not resume after Redis came back");
}

#[test]
fn a_malformed_url_is_a_config_error_and_an_unreachable_one_falls_back() {
    let b = backends(1);
    let dir = tempfile::tempdir().unwrap();
    let bad = config(&b, "http://127.0.0.1:6379", "allow", 60, 2)
        .replace("{BIND}", "127.0.0.1:1")
        .replace("{CONTROL}", "127.0.0.1:2");
    std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
    let out = run_cli(&["check", "--config", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api_gateway.middlewares.rate_limiting.redis.url: unknown scheme: must be redis://"), "{err}");
    let missing =
        config(&b, "", "allow", 60, 2).replace("      redis: { url: \"\", timeout_ms: 50, on_error: allow }\n", "");
    std::fs::write(
        dir.path().join("missing.yaml"),
        missing.replace("{BIND}", "127.0.0.1:1").replace("{CONTROL}", "127.0.0.1:2"),
    )
    .unwrap();
    let out = run_cli(&["check", "--config", "missing.yaml"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend redis needs a redis section"));
    // Nothing listens there: the proxy starts, and requests fall back as configured.
    let nowhere = format!("redis://{}", free_addr());
    let proxy = Proxy::start(&config(&b, &nowhere, "allow", 60, 1));
    for _ in 0..3 {
        assert_eq!(status(&proxy, "k"), 200);
    }
    assert!(!proxy.logs().contains("panicked"));
}

#[test]
fn the_lua_script_the_simulated_redis_step_and_the_local_bucket_decide_alike() {
    use locci_core::config::RateLimitConfig;
    use locci_core::middleware::{RateLimiter, RateSettings, StoreAnswer, remote_step};
    use locci_proxy::server::rate_store::{gcra_script, script_args};

    let redis = Redis::start_on(free_addr());
    let mut conn = redis::Client::open(format!("redis://{}", redis.addr)).unwrap().get_connection().unwrap();
    // The production script with only its clock line changed: `now` comes from ARGV[3], so one arrival
    // sequence in microseconds can be fed to it. Everything after that line is the production text.
    let script = redis::Script::new(&gcra_script("local now = tonumber(ARGV[3])"));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    // Intervals of 100 ms and more: Redis expires a key on its real clock after at least one interval, and this
    // test moves its own clock much faster than that, so a key never expires while the sequence still needs it.
    for (rpm, burst) in [(60u32, 1u32), (600, 10), (120, 5), (300, 20)] {
        let c = RateLimitConfig {
            requests_per_minute: rpm,
            burst_size: Some(burst),
            key_header: Some("X-Api-Key".into()),
            backend: Default::default(),
            redis: None,
        };
        let settings = RateSettings::compile(&c, "rl", &mut |p, m| panic!("{p}: {m}")).unwrap();
        let (interval_us, capacity_us) = script_args(&settings);
        let epoch = Instant::now();
        let bucket = RateLimiter::new(settings.clone(), epoch);
        let key = format!("equivalence:{rpm}:{burst}");
        let (mut stored, mut now_us, mut seen) = (None::<(u64, u64)>, 1_700_000_000_000_000u64, [0usize; 2]);
        let start_us = now_us;
        for i in 0..400 {
            // Mostly bursts (gaps well under an interval), sometimes long pauses that refill the bucket.
            let gap = if random(20) > 0 { random(interval_us / 10) } else { random(3 * capacity_us) };
            now_us += gap;
            let (admitted, ahead_us): (i64, i64) =
                script.key(&key).arg(interval_us).arg(capacity_us).arg(now_us).invoke(&mut conn).unwrap();
            let live = stored.filter(|(_, expires)| *expires > now_us).map(|(tat, _)| tat);
            let step = remote_step(live, now_us, interval_us, capacity_us);
            if let Some((tat, ttl_ms)) = step.store {
                stored = Some((tat, now_us + ttl_ms * 1000));
            }
            assert_eq!((admitted == 1, ahead_us as u64), (step.allowed, step.ahead_us), "{key}, arrival {i}");
            let lua = settings.decision(StoreAnswer { allowed: admitted == 1, ahead_ns: ahead_us as u64 * 1000 });
            let local = bucket.check_key(&key, epoch + Duration::from_micros(now_us - start_us));
            assert_eq!(lua, local, "{key}, arrival {i}: the Lua verdict and the local bucket's differ");
            seen[usize::from(lua.allowed)] += 1;
        }
        assert!(seen[0] > 20 && seen[1] > 20, "{key}: the sequence must admit and refuse (admitted/refused {seen:?})");
    }
}

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::rate_limit::fnv1a;
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::{AuthConfig, CorsConfig, RateLimitConfig, Secret};
use crate::request::HeaderPairs;

fn settings(rpm: u32, burst: u32) -> RateSettings {
    let c = RateLimitConfig {
        requests_per_minute: rpm,
        burst_size: Some(burst),
        key_header: Some("X-Key".into()),
        backend: Default::default(),
        redis: None,
    };
    RateSettings::compile(&c, "rl", &mut |p, m| panic!("{p}: {m}")).unwrap()
}

#[test]
fn exactly_the_burst_is_admitted_at_once() {
    let clock = ManualClock::default();
    let rl = RateLimiter::new(settings(60, 5), clock.now());
    let admitted = (0..20).filter(|_| rl.check_key("k", clock.now()).allowed).count();
    assert_eq!(admitted, 5);
    let refused = rl.check_key("k", clock.now());
    assert_eq!((refused.allowed, refused.remaining, refused.retry_after_secs), (false, 0, 1));
}

proptest! {
    /// The shared store's step (what the Redis script and the simulated Redis take) decides as the proxy's own
    /// bucket does, on any arrival sequence, with the key's expiry honoured.
    #[test]
    fn the_store_step_decides_as_the_local_bucket(
        // Rates whose interval is whole microseconds, the store's unit (others are truncated to it).
        rpm in proptest::sample::select(vec![1u32, 3, 16, 60, 64, 75, 120, 600, 960, 1000, 2400, 6000]),
        burst in 1u32..=50,
        gaps_us in proptest::collection::vec(0u64..3_000_000, 1..200),
    ) {
        let s = settings(rpm, burst);
        let (interval_us, capacity_us) = (s.interval.as_micros() as u64, s.capacity_ns() / 1000);
        prop_assert_eq!(s.interval.as_nanos() % 1000, 0);
        let clock = ManualClock::default();
        let rl = RateLimiter::new(s.clone(), clock.now());
        let (mut stored, mut now_us) = (None::<(u64, u64)>, 0u64);
        for gap in gaps_us {
            now_us += gap;
            clock.advance(Duration::from_micros(gap));
            let live = stored.filter(|(_, expires)| *expires > now_us).map(|(tat, _)| tat);
            let step = remote_step(live, now_us, interval_us, capacity_us);
            if let Some((tat, ttl_ms)) = step.store {
                stored = Some((tat, now_us + ttl_ms * 1000));
            }
            let remote = s.decision(StoreAnswer { allowed: step.allowed, ahead_ns: step.ahead_us * 1000 });
            prop_assert_eq!(remote, rl.check_key("k", clock.now()), "at {} us", now_us);
        }
    }
}

#[test]
fn refill_is_exact_over_a_simulated_minute() {
    // 120 per minute with burst 1: one token every 500 ms, so 120 admissions in 60 s of 100 ms steps.
    let clock = ManualClock::default();
    let rl = RateLimiter::new(settings(120, 1), clock.now());
    let mut admitted = 0;
    for _ in 0..600 {
        if rl.check_key("k", clock.now()).allowed {
            admitted += 1;
        }
        clock.advance(Duration::from_millis(100));
    }
    assert_eq!(admitted, 120);
}

#[test]
fn headers_report_limit_remaining_and_reset() {
    let clock = ManualClock::default();
    let s = settings(60, 3);
    let rl = RateLimiter::new(s.clone(), clock.now());
    let d = rl.check_key("k", clock.now());
    assert_eq!(
        d.headers(&s),
        vec![
            ("ratelimit-limit", "3".to_string()),
            ("ratelimit-remaining", "2".to_string()),
            ("ratelimit-reset", "1".to_string())
        ]
    );
}

#[test]
fn zero_rate_and_zero_burst_are_config_errors() {
    let mut problems = Vec::new();
    let c = RateLimitConfig {
        requests_per_minute: 0,
        burst_size: Some(0),
        key_header: None,
        backend: Default::default(),
        redis: None,
    };
    assert!(RateSettings::compile(&c, "rl", &mut |p, _| problems.push(p)).is_none());
    assert_eq!(problems, vec!["rl.requests_per_minute", "rl.burst_size"]);
}

#[test]
fn default_burst_is_a_second_of_traffic_and_at_least_one() {
    let c = RateLimitConfig {
        requests_per_minute: 600,
        burst_size: None,
        key_header: None,
        backend: Default::default(),
        redis: None,
    };
    assert_eq!(RateSettings::compile(&c, "", &mut |_, _| {}).unwrap().burst, 10);
    let c = RateLimitConfig {
        requests_per_minute: 30,
        burst_size: None,
        key_header: None,
        backend: Default::default(),
        redis: None,
    };
    assert_eq!(RateSettings::compile(&c, "", &mut |_, _| {}).unwrap().burst, 1);
}

#[test]
fn a_flood_of_distinct_keys_stays_bounded() {
    let clock = ManualClock::default();
    let rl = RateLimiter::new(settings(60, 1), clock.now());
    for i in 0..(MAX_KEYS + 500) {
        rl.check_key(&format!("k{i}"), clock.now());
    }
    assert!(rl.tracked_keys() <= MAX_KEYS);
    // Once the buckets have refilled, a sweep makes room and new keys are tracked again.
    clock.advance(Duration::from_secs(2));
    assert!(rl.check_key("fresh", clock.now()).allowed);
    assert!(rl.tracked_keys() < MAX_KEYS);
}

proptest! {
    // Over any arrival sequence, admissions in every window [a_i, a_j] are at most burst + rate x elapsed.
    #[test]
    fn admissions_never_exceed_burst_plus_rate_times_elapsed(
        rpm in 1u32..6000, burst in 1u32..50, gaps in prop::collection::vec(0u64..2000, 1..300)
    ) {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let rl = RateLimiter::new(settings(rpm, burst), t0);
        let mut admitted: Vec<f64> = Vec::new();
        for gap in gaps {
            clock.advance(Duration::from_millis(gap));
            if rl.check_key("k", clock.now()).allowed {
                admitted.push((clock.now() - t0).as_secs_f64());
            }
        }
        let rate = f64::from(rpm) / 60.0;
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let count = (j - i + 1) as f64;
                prop_assert!(count <= f64::from(burst) + rate * (admitted[j] - admitted[i]) + 1e-6);
            }
        }
    }
}

fn cors(origins: &[&str], credentials: bool) -> Cors {
    let c = CorsConfig {
        allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
        allowed_methods: vec!["GET".into(), "POST".into()],
        allowed_headers: vec!["Authorization".into()],
        expose_headers: vec![],
        allow_credentials: credentials,
        max_age_secs: 60,
    };
    Cors::compile(&c, "cors", &mut |p, m| panic!("{p}: {m}")).unwrap()
}

fn info<'a>(method: &'a str, headers: &'a HeaderPairs<'a>) -> RequestInfo<'a> {
    RequestInfo { method, path: "/", query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers }
}

#[test]
fn cors_decisions_table() {
    let c = cors(&["https://a.example"], true);
    let pre = [("origin", "https://a.example"), ("access-control-request-method", "POST")];
    match c.decide(&info("OPTIONS", &HeaderPairs(&pre))) {
        CorsDecision::Preflight(h) => {
            assert!(h.contains(&("access-control-allow-origin", "https://a.example".into())));
            assert!(h.contains(&("access-control-allow-credentials", "true".into())));
            assert!(h.contains(&("vary", "Origin".into())));
        }
        other => panic!("{other:?}"),
    }
    let evil = [("origin", "https://evil.example"), ("access-control-request-method", "POST")];
    assert_eq!(c.decide(&info("OPTIONS", &HeaderPairs(&evil))), CorsDecision::PreflightRejected);
    let bad_method = [("origin", "https://a.example"), ("access-control-request-method", "DELETE")];
    assert_eq!(c.decide(&info("OPTIONS", &HeaderPairs(&bad_method))), CorsDecision::PreflightRejected);
    assert_eq!(c.decide(&info("GET", &HeaderPairs(&[]))), CorsDecision::NotCors);
    assert_eq!(c.decide(&info("GET", &HeaderPairs(&[("origin", "https://evil.example")]))), CorsDecision::NotCors);
    let star = cors(&["*"], false);
    match star.decide(&info("GET", &HeaderPairs(&[("origin", "https://x")]))) {
        CorsDecision::Actual(h) => assert_eq!(h[0], ("access-control-allow-origin", "*".to_string())),
        other => panic!("{other:?}"),
    }
}

#[test]
fn credentials_with_any_origin_is_refused() {
    let c = CorsConfig { allowed_origins: vec!["*".into()], allow_credentials: true, ..CorsConfig::default() };
    let mut problems = Vec::new();
    assert!(Cors::compile(&c, "cors", &mut |p, _| problems.push(p)).is_none());
    assert_eq!(problems, vec!["cors.allow_credentials"]);
}

fn auth() -> Authenticator {
    let c = AuthConfig {
        jwt_secret: Some(Secret::new("s3cret-s3cret-s3cret-s3cret-s3cret")),
        jwt_public_key_path: None,
        jwks_url: None,
        jwks_refresh_secs: 300,
        jwks_ca_path: None,
        algorithms: vec!["HS256".into()],
        issuer: None,
        audience: None,
        leeway_secs: 5,
        excluded_paths: vec!["/open".into(), "^/pub/".into()],
    };
    Authenticator::compile(&c, "auth", &mut |p, m| panic!("{p}: {m}")).unwrap()
}

fn token(exp: u64) -> String {
    // header {"alg":"HS256","typ":"JWT"}; payload {"exp":N}; signed with the test secret via jsonwebtoken.
    #[derive(serde::Serialize)]
    struct C {
        exp: u64,
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &C { exp },
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret-s3cret-s3cret-s3cret-s3cret"),
    )
    .unwrap()
}

#[test]
fn jwt_expiry_is_checked_against_the_clock_with_leeway() {
    let a = auth();
    let now = Duration::from_secs(1_800_000_000);
    assert_eq!(a.verify(&token(1_800_000_100), now), Ok(()));
    assert_eq!(a.verify(&token(1_799_999_997), now), Ok(()), "within leeway");
    assert_eq!(a.verify(&token(1_799_999_990), now), Err(AuthReject::Expired));
    assert_eq!(a.verify("garbage", now), Err(AuthReject::Malformed));
    assert_eq!(a.verify(&"a".repeat(20_000), now), Err(AuthReject::Malformed));
}

#[test]
fn excluded_paths_are_exact_or_anchored_regex() {
    let a = auth();
    assert!(a.is_excluded("/open"));
    assert!(!a.is_excluded("/open/more"));
    assert!(a.is_excluded("/pub/x"));
    assert!(!a.is_excluded("/private"));
}

#[test]
fn rs_algorithms_need_a_readable_key() {
    let c = AuthConfig {
        jwt_secret: None,
        jwt_public_key_path: Some("/nonexistent/key.pem".into()),
        jwks_url: None,
        jwks_refresh_secs: 300,
        jwks_ca_path: None,
        algorithms: vec!["RS256".into(), "XX999".into()],
        issuer: None,
        audience: None,
        leeway_secs: 0,
        excluded_paths: vec![],
    };
    let mut problems = Vec::new();
    assert!(Authenticator::compile(&c, "auth", &mut |p, _| problems.push(p)).is_none());
    assert_eq!(problems, vec!["auth.jwt_public_key_path", "auth.algorithms[1]"]);
}

#[test]
fn the_chain_stops_at_the_first_answer_and_keeps_earlier_headers() {
    let clock = ManualClock::default();
    let rl = Arc::new(RateLimiter::new(settings(60, 1), clock.now()));
    let steps = vec![Step::RateLimit(Arc::clone(&rl)), Step::Auth(Arc::new(auth()))];
    let now = Now { mono: clock.now(), unix: clock.unix_now() };
    let h = HeaderPairs(&[]);
    let first = run(&steps, &info("GET", &h), now).unwrap();
    assert_eq!(first.reply.as_ref().map(|r| r.reply().status), Some(401));
    assert!(first.reply.unwrap().reply().headers.iter().any(|(n, _)| *n == "ratelimit-limit"));
    let second = run(&steps, &info("GET", &h), now).unwrap();
    assert_eq!(second.reply.map(|r| r.reply().status), Some(429));
    assert_eq!(second.rejection, Some(Rejection::RateLimited));
    assert!(run(&[], &info("GET", &h), now).unwrap().reply.is_none());
}

#[test]
fn malformed_redis_urls_are_config_errors_that_do_not_echo_the_url() {
    let compile = |url: &str| {
        let c = RateLimitConfig {
            requests_per_minute: 60,
            burst_size: None,
            key_header: None,
            backend: crate::config::RateBackend::Redis,
            redis: Some(crate::config::RedisConfig {
                url: crate::config::SecretUrl::new(url),
                key_prefix: "p:".into(),
                timeout_ms: 50,
                on_error: Default::default(),
            }),
        };
        let mut problems = Vec::new();
        RateSettings::compile(&c, "rl", &mut |p, m| problems.push(format!("{p}: {m}")));
        problems
    };
    for good in
        ["redis://127.0.0.1:6379", "redis://:pw@cache:6379/2", "rediss://user:pw@cache.internal", "redis://[::1]:6379"]
    {
        assert_eq!(compile(good), Vec::<String>::new(), "{good}");
    }
    for (bad, why) in [
        ("redis://:notaport", "no host"),
        ("redis://host:notaport", "invalid port"),
        ("redis://host:70000", "invalid port"),
        ("redis://host:0", "invalid port"),
        ("redis://", "no host"),
        ("redis:///0", "no host"),
        ("http://host:6379", "unknown scheme"),
        ("redis://host:6379/notadb", "the path must be a database number"),
        ("cache:6379", "unknown scheme"),
    ] {
        let problems = compile(bad);
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert!(problems[0].starts_with(&format!("rl.redis.url: {why}: must be redis://")), "{bad}: {problems:?}");
    }
    // With a password in it, the message still names only the field.
    let problems = compile("redis://admin:hunter2-s3cret@host:99999");
    assert!(!problems[0].contains("hunter2"), "{problems:?}");
}

#[test]
fn a_secret_url_shows_where_it_points_but_never_its_credentials() {
    use crate::config::SecretUrl;
    let cases = [
        ("redis://admin:pw@10.0.0.5:6379/0", "redis://[redacted]@10.0.0.5:6379/0"),
        ("rediss://:pw@cache", "rediss://[redacted]@cache"),
        ("redis://cache:6379", "redis://cache:6379"),
        ("redis://u:p@h/0?password=x", "redis://[redacted]@h/0?[redacted]"),
        ("not a url with a secret", "[redacted]"),
    ];
    for (url, shown) in cases {
        let secret = SecretUrl::new(url);
        assert_eq!(secret.to_string(), shown, "{url}");
        assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
        assert_eq!(serde_json::to_value(&secret).unwrap(), shown);
    }
    assert_eq!(serde_json::to_value(Secret::new("s3cret")).unwrap(), "[redacted]");
    assert_eq!(format!("{} {:?}", Secret::new("s3cret"), Secret::new("s3cret")), "[redacted] [redacted]");
}

#[test]
fn the_key_hash_is_the_hash_of_the_bucket_key_for_every_kind_of_key() {
    let s = settings(60, 1);
    let long = "k".repeat(MAX_KEY_LEN + 1);
    let cases: [&[(&str, &str)]; 3] = [&[("x-key", "alice")], &[("x-key", long.as_str())], &[]];
    let mut hashes = Vec::new();
    for pairs in cases {
        let h = HeaderPairs(pairs);
        let req = info("GET", &h);
        assert_eq!(s.key_hash(&req), fnv1a(s.bucket_key(&req).as_bytes()), "{:?}", s.bucket_key(&req));
        hashes.push(s.key_hash(&req));
    }
    hashes.dedup();
    assert_eq!(hashes.len(), 3, "different keys, different hashes");
}

use std::io::Cursor;
use std::time::Duration;

use super::*;

/// A whole minute (1.8e9 s is divisible by 60).
const T0: u64 = 1_800_000_000;

#[test]
fn the_rate_is_kept_per_minute_for_the_last_hour() {
    let stats = RouteStats::new();
    for _ in 0..3 {
        stats.record("GET", 200, T0 + 5, None);
    }
    stats.record("GET", 200, T0 + 59 * 60, None);
    stats.record("GET", 200, T0 + 59 * 60 + 30, None);
    let report = stats.report("r", T0 + 59 * 60 + 40);
    assert_eq!(report.per_minute.len(), WINDOW_MINUTES);
    assert_eq!(report.per_minute[0], 3, "the oldest minute of the hour");
    assert_eq!(report.per_minute[WINDOW_MINUTES - 1], 2, "the current minute");
    assert_eq!(report.per_minute.iter().sum::<u64>(), 5);
    // An hour on, the first minute's slot is reused: its old count is gone from the window, not added.
    stats.record("GET", 200, T0 + 60 * 60 + 1, None);
    let later = stats.report("r", T0 + 60 * 60 + 1);
    assert_eq!(later.per_minute[WINDOW_MINUTES - 1], 1);
    assert_eq!(later.per_minute[WINDOW_MINUTES - 2], 2);
    assert_eq!(later.per_minute.iter().sum::<u64>(), 3);
    assert_eq!(later.requests, 6, "the mixes count every request");
    // Two hours later nothing of the window is left.
    assert_eq!(stats.report("r", T0 + 3 * 3600).per_minute.iter().sum::<u64>(), 0);
}

#[test]
fn a_request_from_before_the_slot_s_minute_is_not_counted_in_the_window() {
    let stats = RouteStats::new();
    stats.record("GET", 200, T0 + 3600, None);
    // The clock stepped back an hour: the same slot, an older minute.
    stats.record("GET", 200, T0, None);
    let report = stats.report("r", T0 + 3600);
    assert_eq!(report.per_minute[WINDOW_MINUTES - 1], 1);
    assert_eq!(report.per_minute.iter().sum::<u64>(), 1);
    assert_eq!(report.requests, 2);
}

#[test]
fn methods_and_statuses_are_counted_exactly() {
    let stats = RouteStats::new();
    for (method, status) in [("GET", 200), ("GET", 200), ("POST", 201), ("PROPFIND", 405), ("GET", 0), ("GET", 999)] {
        stats.record(method, status, T0, None);
    }
    let report = stats.report("api", T0);
    let map = |pairs: &[(&str, u64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
    assert_eq!(report.methods, map(&[("GET", 4), ("POST", 1), ("other", 1)]));
    assert_eq!(report.statuses, map(&[("0", 2), ("200", 2), ("201", 1), ("405", 1)]));
    assert_eq!(report.requests, 6);
    assert_eq!(report.rate_limit_keys, None, "no key was seen");
}

#[test]
fn up_to_a_hundred_keys_are_counted_exactly_heaviest_first() {
    let stats = RouteStats::new();
    for key in 0..TOP_KEYS as u64 {
        for _ in 0..=key % 7 {
            stats.record("GET", 200, T0, Some(key));
        }
    }
    let keys = stats.report("r", T0).rate_limit_keys.expect("keys were seen");
    assert_eq!(keys.distinct, TOP_KEYS as u64);
    assert_eq!(keys.top.len(), TOP_KEYS);
    assert_eq!(keys.top[0].requests, 7);
    assert!(keys.top.windows(2).all(|w| w[0].requests >= w[1].requests), "heaviest first");
    let six = format!("{:016x}", 6u64);
    assert_eq!(keys.top.iter().find(|k| k.key == six).map(|k| k.requests), Some(7));
    assert_eq!(keys.top.iter().map(|k| k.requests).sum::<u64>(), (0..100u64).map(|k| k % 7 + 1).sum::<u64>());
}

#[test]
fn a_flood_of_keys_keeps_the_heavy_ones_and_estimates_the_count() {
    let stats = RouteStats::new();
    let heavy: Vec<u64> = (0..10).map(|i| 0xdead_0000 + i).collect();
    let mut light = 1u64;
    for round in 0..1000 {
        for key in &heavy {
            stats.record("GET", 200, T0, Some(*key));
        }
        for _ in 0..5 {
            stats.record("GET", 200, T0, Some(light.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            light += 1;
        }
        let _ = round;
    }
    let keys = stats.report("r", T0).rate_limit_keys.expect("keys were seen");
    assert_eq!(keys.top.len(), TOP_KEYS, "the table stays bounded");
    for key in &heavy {
        let shown = format!("{key:016x}");
        let count = keys.top.iter().find(|k| k.key == shown).map(|k| k.requests);
        // Space-Saving never under-counts; its excess is at most the table's smallest count.
        assert!(count.is_some_and(|c| (1000..1100).contains(&c)), "heavy key {shown}: {count:?}");
    }
    let truth = 5000 + 10;
    let error = keys.distinct.abs_diff(truth) as f64 / truth as f64;
    assert!(error < 0.1, "distinct estimate {} for {truth}", keys.distinct);
}

#[test]
fn many_threads_count_every_request() {
    let stats = RouteStats::new();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let stats = &stats;
            s.spawn(move || {
                for i in 0..2500 {
                    stats.record("GET", 200, T0 + i % 2 * 60, Some(t));
                }
            });
        }
    });
    let report = stats.report("r", T0 + 60);
    assert_eq!(report.requests, 10_000);
    assert_eq!(report.per_minute[WINDOW_MINUTES - 1], 5000);
    assert_eq!(report.per_minute[WINDOW_MINUTES - 2], 5000);
    assert_eq!(report.rate_limit_keys.map(|k| (k.distinct, k.top.len())), Some((4, 4)));
}

#[test]
fn a_server_s_errors_and_latency_quantiles() {
    let stats = ServerStats::default();
    for ms in 1..=100u64 {
        stats.record(if ms % 10 == 0 { 503 } else { 200 }, Some(Duration::from_millis(ms)));
    }
    stats.record(502, None);
    let report = stats.report("g", "127.0.0.1:1");
    assert_eq!((report.requests, report.errors), (101, 11));
    assert!((report.error_rate - 11.0 / 101.0).abs() < 1e-9);
    let l = &report.latency_us;
    assert_eq!(l.count, 100, "only answered requests are timed");
    assert_eq!(l.mean, 50_500);
    // Each quantile is the upper bound of the bucket it falls in: 50 ms is within the 50 ms bucket.
    assert_eq!((l.p50, l.p90, l.p99), (50_000, 100_000, 100_000));
    assert_eq!(l.buckets.iter().map(|b| b.count).sum::<u64>(), 100);
    assert_eq!(l.buckets.first().map(|b| (b.le, b.count)), Some((Some(1_000), 1)));
}

#[test]
fn a_log_gives_the_profile_that_recording_the_same_requests_gives() {
    let log = [
        r#"{"timestamp":"2027-01-15T08:00:05.123456Z","level":"INFO","message":"listening","target":"locci"}"#,
        r#"{"timestamp":"2027-01-15T08:00:06.000001Z","level":"INFO","message":"request","target":"locci::request","request_id":"a","method":"GET","path":"/api/x","route":"api","upstream":"g","server":"127.0.0.1:1","status":200,"duration_ms":3,"rate_key":"00000000000000ff","upstream_us":"2500"}"#,
        r#"{"timestamp":"2027-01-15T08:01:00Z","level":"INFO","message":"request","target":"locci::request","request_id":"b","method":"POST","path":"/api/y","route":"api","upstream":"g","server":"127.0.0.1:2","status":503,"duration_ms":1,"rate_key":"-","upstream_us":"-"}"#,
        r#"{"timestamp":"2027-01-15T08:01:30Z","level":"INFO","message":"request","target":"locci::request","request_id":"c","method":"GET","path":"/nope","route":"-","upstream":"-","server":"-","status":404,"duration_ms":0,"rate_key":"-","upstream_us":"-"}"#,
        "thread 'main' panicked at nothing in particular",
    ]
    .join("\n");
    let (profile, requests) = from_log(Cursor::new(log)).expect("the log reads");
    assert_eq!(requests, 3);
    // 2027-01-15T08:01:30Z.
    assert_eq!(profile.until_unix, 1_800_000_090);
    let route = RouteStats::new();
    route.record("GET", 200, profile.until_unix - 84, Some(0xff));
    route.record("POST", 503, profile.until_unix - 30, None);
    assert_eq!(profile.routes, vec![route.report("api", profile.until_unix)]);
    let (one, two) = (ServerStats::default(), ServerStats::default());
    one.record(200, Some(Duration::from_micros(2500)));
    two.record(503, None);
    assert_eq!(profile.servers, vec![one.report("g", "127.0.0.1:1"), two.report("g", "127.0.0.1:2")]);
    // The profile's JSON reads back as the same profile (a preflight reads it).
    let json = serde_json::to_string(&profile).expect("serialises");
    assert_eq!(serde_json::from_str::<TrafficProfile>(&json).ok(), Some(profile));
}

#[test]
fn a_request_line_without_its_fields_is_an_error_naming_the_line() {
    let log = "{\"target\":\"locci::request\",\"timestamp\":\"2027-01-15T08:00:00Z\",\"method\":\"GET\",\"status\":200}\n\
               {\"target\":\"locci::request\",\"timestamp\":\"yesterday\",\"method\":\"GET\",\"status\":200}\n";
    match from_log(Cursor::new(log)) {
        Err(LogError::Line { line, why }) => {
            assert_eq!(line, 2);
            assert!(why.contains("RFC 3339"), "{why}");
        }
        other => panic!("expected a line error, got {other:?}"),
    }
    let bad_key = "{\"target\":\"locci::request\",\"timestamp\":\"2027-01-15T08:00:00Z\",\"method\":\"GET\",\"status\":200,\"rate_key\":\"zz\"}";
    assert!(matches!(from_log(Cursor::new(bad_key)), Err(LogError::Line { line: 1, .. })));
}

#[test]
fn the_memory_stated_in_the_guide_holds() {
    // GUIDE §7 says about 8 KB per route and 170 B per server, whatever the traffic.
    // Checked when the tests compile, so a layout change that breaks the promise fails the build.
    const { assert!(ROUTE_BYTES <= 8 * 1024) };
    const { assert!(SERVER_BYTES <= 192) };
}

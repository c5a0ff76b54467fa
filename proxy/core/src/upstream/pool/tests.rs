use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::clock::{Clock, ManualClock, SeededEntropy};
use crate::config::Strategy;
use crate::request::HeaderPairs;

fn spec(strategy: Strategy, weights: &[u32]) -> GroupSpec {
    GroupSpec {
        name: "g".into(),
        servers: weights
            .iter()
            .enumerate()
            .map(|(i, w)| (ServerAddr::parse(&format!("10.0.0.{}:80", i + 1)).unwrap(), *w))
            .collect(),
        strategy,
        hash_key: HashKey::Header("x-user".into()),
        retries: 1,
        retry: None,
        tls: false,
        sni: None,
        ca_path: None,
        active: Some(ActiveCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            path: None,
            thresholds: crate::upstream::Thresholds { healthy: 1, unhealthy: 1 },
        }),
        outlier: Some(Outlier::passive(2, Duration::from_secs(10))),
        panic_threshold_percent: 0,
        circuit_breaker: None,
        slow_start: None,
    }
}

fn req<'a>(headers: &'a HeaderPairs<'a>) -> RequestInfo<'a> {
    RequestInfo { method: "GET", path: "/", query: None, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), headers }
}

fn shares(pool: &Pool, n: usize) -> BTreeMap<usize, usize> {
    let e = SeededEntropy::new(3);
    let h = HeaderPairs(&[]);
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(pool.select(&req(&h), &[], &e, ManualClock::default().now()).unwrap()).or_insert(0) += 1;
    }
    out
}

#[test]
fn round_robin_is_exactly_even() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None, None);
    assert_eq!(shares(&pool, 300).values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
}

#[test]
fn a_down_servers_share_is_spread_evenly_over_the_others() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1, 1]), None, None);
    pool.probe(1, false, ManualClock::default().now());
    let s = shares(&pool, 1200);
    assert_eq!(s.get(&1), None);
    for i in [0, 2, 3] {
        assert!((380..=420).contains(&s[&i]), "{s:?}");
    }
    let weighted = Pool::new(spec(Strategy::Weighted, &[1, 1, 2]), None, None);
    weighted.probe(0, false, ManualClock::default().now());
    let s = shares(&weighted, 900);
    assert!((280..=320).contains(&s[&1]) && (580..=620).contains(&s[&2]), "weights kept among the rest: {s:?}");
}

#[test]
fn weighted_follows_the_weights_exactly_per_cycle() {
    let pool = Pool::new(spec(Strategy::Weighted, &[1, 3]), None, None);
    assert_eq!(shares(&pool, 400).values().copied().collect::<Vec<_>>(), vec![100, 300]);
}

#[test]
fn random_follows_the_weights_roughly() {
    let pool = Pool::new(spec(Strategy::Random, &[1, 3]), None, None);
    let s = shares(&pool, 4000);
    let first = s[&0] as f64 / 4000.0;
    assert!((0.2..0.3).contains(&first), "{s:?}");
}

#[test]
fn least_request_prefers_the_less_loaded_server() {
    let pool = Arc::new(Pool::new(spec(Strategy::LeastRequest, &[1, 1]), None, None));
    let _busy: Vec<InFlight> = (0..5).map(|_| pool.begin(0)).collect();
    let s = shares(&pool, 100);
    assert_eq!(s.get(&1), Some(&100), "{s:?}");
    drop(_busy);
    assert_eq!(pool.inflight(), 0);
}

#[test]
fn consistent_hashing_is_stable_per_key_and_fails_over_when_down() {
    let pool = Pool::new(spec(Strategy::Consistent, &[1, 1, 1]), None, None);
    let e = SeededEntropy::new(1);
    let h = [("x-user", "alice")];
    let h = HeaderPairs(&h);
    let first = pool.select(&req(&h), &[], &e, ManualClock::default().now()).unwrap();
    for _ in 0..10 {
        assert_eq!(pool.select(&req(&h), &[], &e, ManualClock::default().now()), Some(first));
    }
    let now = ManualClock::default().now();
    pool.probe(first, false, now);
    let other = pool.select(&req(&h), &[], &e, ManualClock::default().now()).unwrap();
    assert_ne!(other, first);
}

#[test]
fn selection_skips_down_and_tried_servers_and_none_is_left_when_all_are_out() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None, None);
    let e = SeededEntropy::new(1);
    let h = HeaderPairs(&[]);
    let now = ManualClock::default().now();
    assert_eq!(pool.probe(1, false, now), Some(Transition::Down));
    for _ in 0..10 {
        let pick = pool.select(&req(&h), &[0], &e, ManualClock::default().now());
        assert_eq!(pick, Some(2));
    }
    pool.probe(2, false, now);
    assert_eq!(pool.select(&req(&h), &[0], &e, ManualClock::default().now()), None);
}

#[test]
fn passive_failures_eject_and_the_cooldown_brings_the_server_back() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), None, None);
    let clock = ManualClock::default();
    assert_eq!(pool.report(0, Live::GatewayFailure, clock.now()), None);
    assert_eq!(pool.report(0, Live::GatewayFailure, clock.now()), Some(Transition::Down));
    assert!(!pool.servers()[0].is_up());
    clock.advance(Duration::from_secs(10));
    assert_eq!(pool.tick(clock.now()), vec![(0, Transition::Up)]);
    assert!(pool.servers()[0].is_up());
}

#[test]
fn a_rebuilt_pool_keeps_the_health_of_servers_it_still_has() {
    let old = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None, None);
    old.probe(1, false, ManualClock::default().now());
    // The new group drops the third server; the second (down) one is still there.
    let new = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), Some(&old), None);
    assert!(new.servers()[0].is_up());
    assert!(!new.servers()[1].is_up(), "down server stays down across the rebuild");
}

#[test]
fn every_change_of_state_is_counted_and_a_rebuild_keeps_the_count() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), None, None);
    let clock = ManualClock::default();
    pool.report(0, Live::GatewayFailure, clock.now());
    assert_eq!(pool.servers()[0].changes(), 0, "a failure that changes nothing is not a change");
    pool.report(0, Live::GatewayFailure, clock.now());
    clock.advance(Duration::from_secs(10));
    pool.tick(clock.now());
    down(&pool, 0, clock.now());
    // Down, up, down at the same instant: an observer that looks only at the state sees "down" twice.
    assert_eq!((pool.servers()[0].changes(), pool.servers()[0].is_up()), (3, false));
    assert_eq!(pool.servers()[1].changes(), 0);
    let rebuilt = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), Some(&pool), None);
    assert_eq!(rebuilt.servers()[0].changes(), 3);
}

#[test]
fn retries_are_bounded_by_the_setting() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), None, None);
    assert!(pool.may_retry(1));
    assert!(!pool.may_retry(2));
}

proptest! {
    // Whatever servers are down or tried, a pick is always up and untried, and there is a pick whenever
    // one such server exists.
    #[test]
    fn picks_are_always_usable(
        strategy in prop::sample::select(vec![Strategy::RoundRobin, Strategy::Weighted, Strategy::Random, Strategy::LeastRequest, Strategy::Consistent]),
        weights in prop::collection::vec(1u32..5, 1..8),
        down in prop::collection::vec(any::<bool>(), 8),
        tried in prop::collection::vec(0usize..8, 0..4),
        seed in any::<u64>(),
    ) {
        let pool = Pool::new(spec(strategy, &weights), None, None);
        let now = ManualClock::default().now();
        for (i, d) in down.iter().enumerate().take(weights.len()) {
            if *d { pool.probe(i, false, now); }
        }
        let e = SeededEntropy::new(seed);
        let h = [("x-user", "k")];
        let h = HeaderPairs(&h);
        let usable: Vec<usize> = (0..weights.len()).filter(|i| !down[*i] && !tried.contains(i)).collect();
        match pool.select(&req(&h), &tried, &e, ManualClock::default().now()) {
            Some(i) => prop_assert!(usable.contains(&i)),
            None => prop_assert!(usable.is_empty()),
        }
    }
}

fn down(pool: &Pool, idx: usize, now: Instant) {
    pool.report(idx, Live::GatewayFailure, now);
    pool.report(idx, Live::GatewayFailure, now);
}

#[test]
fn below_the_panic_threshold_balancing_spreads_over_every_server() {
    let mut s = spec(Strategy::RoundRobin, &[1, 1, 1, 1]);
    s.panic_threshold_percent = 50;
    let pool = Pool::new(s, None, None);
    let now = ManualClock::default().now();
    down(&pool, 0, now);
    assert!(!pool.in_panic(), "3 of 4 up: 75 % >= 50 %");
    assert_eq!(shares(&pool, 300).get(&0), None, "an ejected server gets nothing outside panic");
    down(&pool, 1, now);
    assert!(!pool.in_panic(), "2 of 4 up: exactly 50 % is not below it");
    down(&pool, 2, now);
    assert!(pool.in_panic(), "1 of 4 up");
    let s = shares(&pool, 400);
    assert_eq!(s.values().copied().collect::<Vec<_>>(), [100, 100, 100, 100], "panic ignores health: {s:?}");
    let mut off = spec(Strategy::RoundRobin, &[1, 1]);
    off.panic_threshold_percent = 0;
    let pool = Pool::new(off, None, None);
    down(&pool, 0, now);
    down(&pool, 1, now);
    assert!(!pool.in_panic());
    assert_eq!(pool.select(&req(&HeaderPairs(&[])), &[], &SeededEntropy::new(1), now), None, "off: 503 stands");
}

#[test]
fn a_returning_server_ramps_from_a_tenth_to_its_full_share_over_the_slow_start_window() {
    let mut s = spec(Strategy::RoundRobin, &[1, 1]);
    s.slow_start = Some(Duration::from_secs(100));
    let pool = Pool::new(s, None, None);
    let clock = ManualClock::default();
    let t0 = clock.now();
    assert_eq!(pool.servers()[0].ramp_share(Duration::from_secs(100), t0), None, "no slow start at start-up");
    down(&pool, 0, t0);
    let back = t0 + Duration::from_secs(10);
    assert_eq!(pool.tick(back), vec![(0, Transition::Up)]);
    let e = SeededEntropy::new(9);
    let h = HeaderPairs(&[]);
    let share_at = |secs: u64| {
        let now = back + Duration::from_secs(secs);
        let picks = (0..4000).filter(|_| pool.select(&req(&h), &[], &e, now) == Some(0)).count();
        picks as f64 / 4000.0
    };
    // Its weight is the ramp share f of the other's, so its share of the two is f / (1 + f).
    for (secs, f) in [(0, 0.1), (50, 0.55), (99, 0.991)] {
        let expected = f / (1.0 + f);
        let got = share_at(secs);
        assert!((got - expected).abs() < 0.03, "at {secs} s: share {got}, expected about {expected}");
    }
    assert_eq!(share_at(100), 0.5, "the window is over: round robin's exact half");
}

#[test]
fn a_server_a_reload_adds_starts_slow_and_carried_servers_do_not() {
    let mut s = spec(Strategy::RoundRobin, &[1, 1]);
    s.slow_start = Some(Duration::from_secs(30));
    let now = ManualClock::default().now();
    let old = Pool::new(s.clone(), None, None);
    let mut grown = spec(Strategy::RoundRobin, &[1, 1, 1]);
    grown.slow_start = Some(Duration::from_secs(30));
    let new = Pool::new(grown, Some(&old), Some(now));
    let window = Duration::from_secs(30);
    assert_eq!(new.servers()[0].ramp_share(window, now), None);
    assert_eq!(new.servers()[2].ramp_share(window, now), Some(0.1));
}

#[test]
fn max_ejection_percent_keeps_the_rest_of_the_group_in() {
    let mut s = spec(Strategy::RoundRobin, &[1, 1, 1, 1]);
    s.outlier = Some(Outlier { max_ejection_percent: 50, ..Outlier::passive(1, Duration::from_secs(10)) });
    let pool = Pool::new(s, None, None);
    let now = ManualClock::default().now();
    for idx in 0..4 {
        pool.report(idx, Live::GatewayFailure, now);
    }
    let up: Vec<bool> = pool.servers().iter().map(ServerState::is_up).collect();
    assert_eq!(up, [false, false, true, true], "half of four may go");
    assert_eq!(pool.tick(now + Duration::from_secs(10)).len(), 2);
    assert_eq!(pool.report(2, Live::GatewayFailure, now + Duration::from_secs(10)), Some(Transition::Down));
}

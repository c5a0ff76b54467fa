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
        tls: false,
        sni: None,
        ca_path: None,
        active: Some(ActiveCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            path: None,
            thresholds: crate::upstream::Thresholds { healthy: 1, unhealthy: 1 },
        }),
        passive: Some(Passive { consecutive_failures: 2, cooldown: Duration::from_secs(10) }),
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
        *out.entry(pool.select(&req(&h), &[], &e).unwrap()).or_insert(0) += 1;
    }
    out
}

#[test]
fn round_robin_is_exactly_even() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None);
    assert_eq!(shares(&pool, 300).values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
}

#[test]
fn a_down_servers_share_is_spread_evenly_over_the_others() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1, 1]), None);
    pool.probe(1, false, ManualClock::default().now());
    let s = shares(&pool, 1200);
    assert_eq!(s.get(&1), None);
    for i in [0, 2, 3] {
        assert!((380..=420).contains(&s[&i]), "{s:?}");
    }
    let weighted = Pool::new(spec(Strategy::Weighted, &[1, 1, 2]), None);
    weighted.probe(0, false, ManualClock::default().now());
    let s = shares(&weighted, 900);
    assert!((280..=320).contains(&s[&1]) && (580..=620).contains(&s[&2]), "weights kept among the rest: {s:?}");
}

#[test]
fn weighted_follows_the_weights_exactly_per_cycle() {
    let pool = Pool::new(spec(Strategy::Weighted, &[1, 3]), None);
    assert_eq!(shares(&pool, 400).values().copied().collect::<Vec<_>>(), vec![100, 300]);
}

#[test]
fn random_follows_the_weights_roughly() {
    let pool = Pool::new(spec(Strategy::Random, &[1, 3]), None);
    let s = shares(&pool, 4000);
    let first = s[&0] as f64 / 4000.0;
    assert!((0.2..0.3).contains(&first), "{s:?}");
}

#[test]
fn least_request_prefers_the_less_loaded_server() {
    let pool = Arc::new(Pool::new(spec(Strategy::LeastRequest, &[1, 1]), None));
    let _busy: Vec<InFlight> = (0..5).map(|_| pool.begin(0)).collect();
    let s = shares(&pool, 100);
    assert_eq!(s.get(&1), Some(&100), "{s:?}");
    drop(_busy);
    assert_eq!(pool.inflight(), 0);
}

#[test]
fn consistent_hashing_is_stable_per_key_and_fails_over_when_down() {
    let pool = Pool::new(spec(Strategy::Consistent, &[1, 1, 1]), None);
    let e = SeededEntropy::new(1);
    let h = [("x-user", "alice")];
    let h = HeaderPairs(&h);
    let first = pool.select(&req(&h), &[], &e).unwrap();
    for _ in 0..10 {
        assert_eq!(pool.select(&req(&h), &[], &e), Some(first));
    }
    let now = ManualClock::default().now();
    pool.probe(first, false, now);
    let other = pool.select(&req(&h), &[], &e).unwrap();
    assert_ne!(other, first);
}

#[test]
fn selection_skips_down_and_tried_servers_and_none_is_left_when_all_are_out() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None);
    let e = SeededEntropy::new(1);
    let h = HeaderPairs(&[]);
    let now = ManualClock::default().now();
    assert_eq!(pool.probe(1, false, now), Some(Transition::Down));
    for _ in 0..10 {
        let pick = pool.select(&req(&h), &[0], &e);
        assert_eq!(pick, Some(2));
    }
    pool.probe(2, false, now);
    assert_eq!(pool.select(&req(&h), &[0], &e), None);
}

#[test]
fn passive_failures_eject_and_the_cooldown_brings_the_server_back() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), None);
    let clock = ManualClock::default();
    assert_eq!(pool.report(0, false, clock.now()), None);
    assert_eq!(pool.report(0, false, clock.now()), Some(Transition::Down));
    assert!(!pool.servers()[0].is_up());
    clock.advance(Duration::from_secs(10));
    assert_eq!(pool.tick(clock.now()), vec![(0, Transition::Up)]);
    assert!(pool.servers()[0].is_up());
}

#[test]
fn a_rebuilt_pool_keeps_the_health_of_servers_it_still_has() {
    let old = Pool::new(spec(Strategy::RoundRobin, &[1, 1, 1]), None);
    old.probe(1, false, ManualClock::default().now());
    // The new group drops the third server; the second (down) one is still there.
    let new = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), Some(&old));
    assert!(new.servers()[0].is_up());
    assert!(!new.servers()[1].is_up(), "down server stays down across the rebuild");
}

#[test]
fn retries_are_bounded_by_the_setting() {
    let pool = Pool::new(spec(Strategy::RoundRobin, &[1, 1]), None);
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
        let pool = Pool::new(spec(strategy, &weights), None);
        let now = ManualClock::default().now();
        for (i, d) in down.iter().enumerate().take(weights.len()) {
            if *d { pool.probe(i, false, now); }
        }
        let e = SeededEntropy::new(seed);
        let h = [("x-user", "k")];
        let h = HeaderPairs(&h);
        let usable: Vec<usize> = (0..weights.len()).filter(|i| !down[*i] && !tried.contains(i)).collect();
        match pool.select(&req(&h), &tried, &e) {
            Some(i) => prop_assert!(usable.contains(&i)),
            None => prop_assert!(usable.is_empty()),
        }
    }
}

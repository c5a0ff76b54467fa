use proptest::prelude::*;

use super::*;

const T: Thresholds = Thresholds { healthy: 2, unhealthy: 3 };

fn now() -> Instant {
    crate::clock::ManualClock::default().now()
}

use crate::clock::Clock;

#[test]
fn goes_down_only_after_unhealthy_threshold_failures() {
    let t0 = now();
    let mut h = HealthState::default();
    assert!(h.is_up(t0));
    assert_eq!(h.probe(false, T, t0), None);
    assert_eq!(h.probe(false, T, t0), None);
    assert_eq!(h.probe(false, T, t0), Some(Transition::Down));
    assert!(!h.is_up(t0));
    assert_eq!(h.probe(false, T, t0), None, "a down server does not go down twice");
}

#[test]
fn a_success_resets_the_failure_streak() {
    let t0 = now();
    let mut h = HealthState::default();
    h.probe(false, T, t0);
    h.probe(false, T, t0);
    h.probe(true, T, t0);
    h.probe(false, T, t0);
    h.probe(false, T, t0);
    assert!(h.is_up(t0));
}

#[test]
fn comes_back_after_healthy_threshold_successes() {
    let t0 = now();
    let mut h = HealthState::default();
    for _ in 0..3 {
        h.probe(false, T, t0);
    }
    assert_eq!(h.probe(true, T, t0), None);
    assert_eq!(h.probe(true, T, t0), Some(Transition::Up));
    assert!(h.is_up(t0));
}

#[test]
fn passive_ejection_lasts_the_cooldown_then_the_server_returns() {
    let t0 = now();
    let p = Some(Outlier::passive(2, Duration::from_secs(30)));
    let mut h = HealthState::default();
    assert_eq!(h.live(Live::Error5xx, p, true, t0), None);
    assert_eq!(h.live(Live::GatewayFailure, p, true, t0), Some(Transition::Down));
    assert!(!h.is_up(t0 + Duration::from_secs(29)));
    assert_eq!(h.tick(t0 + Duration::from_secs(29)), None);
    assert!(h.is_up(t0 + Duration::from_secs(30)));
    assert_eq!(h.tick(t0 + Duration::from_secs(30)), Some(Transition::Up));
    assert_eq!(h.tick(t0 + Duration::from_secs(31)), None, "the return is reported once");
}

#[test]
fn without_passive_settings_live_failures_change_nothing() {
    let t0 = now();
    let mut h = HealthState::default();
    for _ in 0..100 {
        assert_eq!(h.live(Live::GatewayFailure, None, true, t0), None);
    }
    assert!(h.is_up(t0));
}

fn outlier() -> Outlier {
    Outlier {
        consecutive_5xx: Some(5),
        consecutive_gateway_failure: Some(3),
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejection_percent: 50,
    }
}

#[test]
fn gateway_failures_eject_after_their_own_streak_and_other_5xx_after_theirs() {
    let t0 = now();
    let o = Some(outlier());
    let mut h = HealthState::default();
    for _ in 0..2 {
        assert_eq!(h.live(Live::GatewayFailure, o, true, t0), None);
    }
    assert_eq!(h.live(Live::GatewayFailure, o, true, t0), Some(Transition::Down), "3 gateway failures in a row");
    let mut h = HealthState::default();
    for _ in 0..4 {
        assert_eq!(h.live(Live::Error5xx, o, true, t0), None);
    }
    assert_eq!(h.live(Live::Error5xx, o, true, t0), Some(Transition::Down), "5 x 5xx in a row");
    let mut h = HealthState::default();
    h.live(Live::GatewayFailure, o, true, t0);
    h.live(Live::GatewayFailure, o, true, t0);
    h.live(Live::Error5xx, o, true, t0);
    assert_eq!(h.live(Live::GatewayFailure, o, true, t0), None, "a 500 breaks the gateway streak");
    assert_eq!(h.live(Live::Success, o, true, t0), None);
    assert!(h.is_up(t0));
}

#[test]
fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
    let o = outlier();
    let times: Vec<u64> = (1..=12).map(|n| ejection_time(&o, n).as_secs()).collect();
    assert_eq!(times, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]);
}

#[test]
fn each_ejection_lasts_longer_and_time_up_wears_the_count_off() {
    let o = Some(outlier());
    let mut t = now();
    let mut h = HealthState::default();
    let eject = |h: &mut HealthState, t: Instant| {
        for _ in 0..3 {
            h.live(Live::GatewayFailure, o, true, t);
        }
        h.ejected_until().map(|u| u.duration_since(t).as_secs())
    };
    assert_eq!(eject(&mut h, t), Some(30));
    t += Duration::from_secs(30);
    assert_eq!(h.tick(t), Some(Transition::Up));
    assert_eq!(eject(&mut h, t), Some(60), "the second ejection is twice as long");
    t += Duration::from_secs(60);
    h.tick(t);
    // Up for 30 s: one base period, so the count drops from 2 to 1 and the next ejection is the second again.
    t += Duration::from_secs(30);
    assert_eq!(eject(&mut h, t), Some(60));
    t += Duration::from_secs(60);
    h.tick(t);
    t += Duration::from_secs(3000);
    assert_eq!(eject(&mut h, t), Some(30), "a long time up forgets every ejection");
}

#[test]
fn a_refused_ejection_leaves_the_server_up_and_the_next_failure_asks_again() {
    let t0 = now();
    let o = Some(outlier());
    let mut h = HealthState::default();
    for _ in 0..5 {
        assert_eq!(h.live(Live::GatewayFailure, o, false, t0), None);
    }
    assert!(h.is_up(t0));
    assert_eq!(h.live(Live::GatewayFailure, o, true, t0), Some(Transition::Down));
}

#[test]
fn max_ejection_percent_rounds_down_but_one_server_may_always_go() {
    let o = outlier();
    assert_eq!(o.max_ejected(1), 1);
    assert_eq!(o.max_ejected(3), 1);
    assert_eq!(o.max_ejected(4), 2);
    assert_eq!(Outlier { max_ejection_percent: 0, ..o }.max_ejected(10), 1);
    assert_eq!(Outlier::passive(1, Duration::from_secs(1)).max_ejected(7), 7);
}

#[test]
fn a_status_is_judged_by_its_class() {
    assert_eq!(Live::of(200, false), Live::Success);
    assert_eq!(Live::of(499, false), Live::Success);
    assert_eq!(Live::of(500, false), Live::Error5xx);
    assert_eq!(Live::of(502, false), Live::GatewayFailure);
    assert_eq!(Live::of(504, false), Live::GatewayFailure);
    assert_eq!(Live::of(505, false), Live::Error5xx);
    assert_eq!(Live::of(200, true), Live::GatewayFailure, "an exchange that broke after its head");
}

proptest! {
    // Whatever the sequence of probes, the state only goes down after `unhealthy` failures in a row and only
    // comes back after `healthy` successes in a row, and transitions alternate.
    #[test]
    fn transitions_follow_the_thresholds(probes in proptest::collection::vec(any::<bool>(), 0..200),
                                         healthy in 1u32..5, unhealthy in 1u32..5) {
        let t = Thresholds { healthy, unhealthy };
        let t0 = now();
        let mut h = HealthState::default();
        let (mut oks, mut fails) = (0u32, 0u32);
        let mut last = Transition::Up;
        for ok in probes {
            if ok { oks += 1; fails = 0; } else { fails += 1; oks = 0; }
            match h.probe(ok, t, t0) {
                Some(Transition::Down) => { prop_assert!(fails >= unhealthy); prop_assert_eq!(last, Transition::Up); last = Transition::Down; }
                Some(Transition::Up) => { prop_assert!(oks >= healthy); prop_assert_eq!(last, Transition::Down); last = Transition::Up; }
                None => {}
            }
            prop_assert_eq!(h.is_up(t0), last == Transition::Up);
        }
    }
}

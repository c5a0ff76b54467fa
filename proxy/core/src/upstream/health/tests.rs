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
    let p = Some(Passive { consecutive_failures: 2, cooldown: Duration::from_secs(30) });
    let mut h = HealthState::default();
    assert_eq!(h.live(false, p, t0), None);
    assert_eq!(h.live(false, p, t0), Some(Transition::Down));
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
        assert_eq!(h.live(false, None, t0), None);
    }
    assert!(h.is_up(t0));
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

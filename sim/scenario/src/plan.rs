//! The arrivals a `load:` section describes, drawn from a seed: when each request is due and which class it
//! is (with its key). The simulator plays them against the simulated proxy; the load generator against a real
//! target. One planner, so a scenario's mix and ramp are the same in both.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Arrival, LoadSpec};

/// One planned request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// When it is due, from the start of the run.
    pub at: Duration,
    /// Its class: an index into `load.requests`.
    pub class: usize,
    /// Its key number (`key-N`) when the class has a key header.
    pub key: Option<u32>,
}

/// Most arrivals one plan holds (at 4 bytes of time and a class each, bounded memory for a bounded run).
pub const MAX_SLOTS: usize = 50_000_000;

/// The arrivals of `load` from its start until `until` (or the end of its stages, if sooner), drawn from
/// `seed`.
pub fn arrivals(load: &LoadSpec, until: Duration, seed: u64) -> Vec<Slot> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4c4f_4144);
    let total_weight: u32 = load.requests.iter().map(|r| r.weight).sum();
    let end = load.staged_length().map_or(until, |len| until.min(load.start + len));
    let mut out = Vec::new();
    let mut t = load.start;
    while t < end && out.len() < MAX_SLOTS {
        // The order of draws (class, key, gap) is part of every trace's identity: keep it.
        let mut pick = rng.random_range(0..total_weight.max(1));
        let class = load
            .requests
            .iter()
            .position(|r| {
                if pick < r.weight {
                    true
                } else {
                    pick -= r.weight;
                    false
                }
            })
            .unwrap_or(0);
        let key = load
            .requests
            .get(class)
            .and_then(|spec| spec.key_header.as_ref().map(|_| rng.random_range(0..spec.keys.max(1))));
        out.push(Slot { at: t, class, key });
        let rate = rate_at(load, t - load.start).max(1e-9);
        let gap = match load.arrival {
            Arrival::Uniform => 1.0 / rate,
            Arrival::Poisson => -(1.0 - rng.random::<f64>()).ln() / rate,
        };
        t += Duration::from_secs_f64(gap);
    }
    out
}

/// The rate `since` into the load: `load.rate`, or the stages' ramp.
pub fn rate_at(load: &LoadSpec, since: Duration) -> f64 {
    let mut from = Duration::ZERO;
    for (i, stage) in load.stages.iter().enumerate() {
        if since < from + stage.duration {
            let next = load.stages.get(i + 1).map_or(stage.rate, |n| n.rate);
            let frac = (since - from).as_secs_f64() / stage.duration.as_secs_f64();
            return stage.rate + (next - stage.rate) * frac;
        }
        from += stage.duration;
    }
    load.stages.last().map_or(load.rate, |s| s.rate)
}

/// Which stage `since` falls in (`None` without stages).
pub fn stage_at(load: &LoadSpec, since: Duration) -> Option<usize> {
    let mut from = Duration::ZERO;
    for (i, stage) in load.stages.iter().enumerate() {
        from += stage.duration;
        if since < from {
            return Some(i);
        }
    }
    (!load.stages.is_empty()).then(|| load.stages.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stage;

    fn load(yaml: &str) -> LoadSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn the_mix_follows_the_weights_and_the_same_seed_gives_the_same_plan() {
        let l = load("rate: 1000\nrequests:\n  - { weight: 3, path: /a }\n  - { weight: 1, path: /b }\n");
        let plan = arrivals(&l, Duration::from_secs(10), 7);
        assert_eq!(plan.len(), 10_000);
        let a = plan.iter().filter(|s| s.class == 0).count() as f64 / plan.len() as f64;
        assert!((a - 0.75).abs() < 0.02, "{a}");
        assert_eq!(plan, arrivals(&l, Duration::from_secs(10), 7));
        assert_ne!(plan, arrivals(&l, Duration::from_secs(10), 8));
    }

    #[test]
    fn stages_ramp_linearly_and_set_the_length() {
        let l = LoadSpec {
            stages: vec![
                Stage { duration: Duration::from_secs(10), rate: 100.0 },
                Stage { duration: Duration::from_secs(10), rate: 300.0 },
            ],
            ..load("requests: [{ path: / }]\n")
        };
        assert_eq!(rate_at(&l, Duration::from_secs(0)), 100.0);
        assert_eq!(rate_at(&l, Duration::from_secs(5)), 200.0);
        assert_eq!(rate_at(&l, Duration::from_secs(15)), 300.0, "the last stage holds");
        assert_eq!(stage_at(&l, Duration::from_secs(12)), Some(1));
        let plan = arrivals(&l, Duration::from_secs(3600), 1);
        assert!(plan.last().unwrap().at < Duration::from_secs(20), "the stages end the load");
        // 10 s ramping 100 -> 300 (2,000) then 10 s at 300 (3,000).
        assert!((plan.len() as i64 - 5000).abs() < 10, "{}", plan.len());
    }
}

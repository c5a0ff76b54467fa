//! The health state machine of one server: active-check thresholds and outlier ejection (SPEC §3, §9).
//!
//! Pure: it is told each probe result and each live outcome with the time, and answers whether the server
//! changed state. The pool mirrors its verdict into atomics for the request path.

use std::time::{Duration, Instant};

/// A change of a server's state, to log and to show in the health gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server stops receiving traffic.
    Down,
    /// The server receives traffic again.
    Up,
}

/// Active-check thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Consecutive successes to come back.
    pub healthy: u32,
    /// Consecutive failures to go down.
    pub unhealthy: u32,
}

/// Outlier detection from live traffic (`outlier`, or the older `passive` as its subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// 5xx answers (and gateway failures) in a row that eject the server.
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 answers and failures to reach or hear from the server, in a row, that eject it.
    pub consecutive_gateway_failure: Option<u32>,
    /// The first ejection's length; each further one lasts this times the number of ejections.
    pub base_ejection: Duration,
    /// The longest an ejection lasts.
    pub max_ejection: Duration,
    /// Most of the group that may be ejected at once, in percent (one server always may).
    pub max_ejection_percent: u32,
}

impl Outlier {
    /// The `passive` settings of SPEC §3 as outlier settings: every failure counts, a fixed cooldown, and any
    /// share of the group may go.
    pub fn passive(consecutive_failures: u32, cooldown: Duration) -> Outlier {
        Outlier {
            consecutive_5xx: Some(consecutive_failures),
            consecutive_gateway_failure: None,
            base_ejection: cooldown,
            max_ejection: cooldown,
            max_ejection_percent: 100,
        }
    }

    /// How many of a group of `servers` may be ejected at once.
    pub fn max_ejected(&self, servers: usize) -> usize {
        (servers * self.max_ejection_percent as usize / 100).max(1)
    }
}

/// What one live exchange says about the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// An answer below 500.
    Success,
    /// A 5xx answer other than 502/503/504.
    Error5xx,
    /// A 502/503/504 answer, or the server could not be reached or broke the exchange.
    GatewayFailure,
}

impl Live {
    /// The outcome of an exchange that ended with `status`; `failed` when it broke after the head.
    pub fn of(status: u16, failed: bool) -> Live {
        match status {
            _ if failed => Live::GatewayFailure,
            502..=504 => Live::GatewayFailure,
            500..=599 => Live::Error5xx,
            _ => Live::Success,
        }
    }
}

/// One server's health; a server is up from start-up until told otherwise.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    active_down: bool,
    ok_streak: u32,
    fail_streak: u32,
    streak_5xx: u32,
    streak_gateway: u32,
    ejected_until: Option<Instant>,
    /// Ejections so far, less one for every base ejection time spent up since the last return.
    ejections: u32,
    returned_at: Option<Instant>,
}

impl HealthState {
    /// Whether the server may be chosen at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        !self.active_down && !self.is_ejected(now)
    }

    /// Whether outlier detection holds the server out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Whether active checks have taken the server down.
    pub fn active_down(&self) -> bool {
        self.active_down
    }

    /// The end of the current ejection, if any.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Times ejected, as the next ejection's length counts them.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records an active check result.
    pub fn probe(&mut self, ok: bool, t: Thresholds, now: Instant) -> Option<Transition> {
        let was_up = self.is_up(now);
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.active_down && self.ok_streak >= t.healthy {
                self.active_down = false;
                // A server that passes its checks again starts with a clean live record.
                self.ejected_until = None;
                self.returned(now);
            }
        } else {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if !self.active_down && self.fail_streak >= t.unhealthy {
                self.active_down = true;
            }
        }
        self.change(was_up, now)
    }

    /// Records the outcome of a live request. `may_eject` is the group's word that one more ejection stays
    /// within `max_ejection_percent`; `None` settings disable outlier detection.
    pub fn live(
        &mut self,
        outcome: Live,
        outlier: Option<Outlier>,
        may_eject: bool,
        now: Instant,
    ) -> Option<Transition> {
        let outlier = outlier?;
        let was_up = self.is_up(now);
        if outcome == Live::Success {
            self.streak_5xx = 0;
            self.streak_gateway = 0;
            return None;
        }
        self.streak_5xx = self.streak_5xx.saturating_add(1);
        if outcome == Live::GatewayFailure {
            self.streak_gateway = self.streak_gateway.saturating_add(1);
        } else {
            self.streak_gateway = 0;
        }
        let over = |streak: u32, limit: Option<u32>| limit.is_some_and(|n| streak >= n);
        let tripped = over(self.streak_5xx, outlier.consecutive_5xx)
            || over(self.streak_gateway, outlier.consecutive_gateway_failure);
        if tripped && was_up && may_eject {
            self.ejections = self.decayed_ejections(outlier.base_ejection, now).saturating_add(1);
            self.ejected_until = Some(now + ejection_time(&outlier, self.ejections));
            self.streak_5xx = 0;
            self.streak_gateway = 0;
        }
        self.change(was_up, now)
    }

    /// Clears an ejection whose time is over; reports the return once.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                self.returned(now);
                (!self.active_down).then_some(Transition::Up)
            }
            _ => None,
        }
    }

    /// A server comes back: its streaks start afresh, and its time up starts to wear its ejections off.
    fn returned(&mut self, now: Instant) {
        self.streak_5xx = 0;
        self.streak_gateway = 0;
        self.returned_at = Some(now);
    }

    fn decayed_ejections(&self, base: Duration, now: Instant) -> u32 {
        let up_for = self.returned_at.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let periods = if base.is_zero() { 0 } else { (up_for.as_nanos() / base.as_nanos()).min(u128::from(u32::MAX)) };
        self.ejections.saturating_sub(periods as u32)
    }

    fn change(&self, was_up: bool, now: Instant) -> Option<Transition> {
        match (was_up, self.is_up(now)) {
            (true, false) => Some(Transition::Down),
            (false, true) => Some(Transition::Up),
            _ => None,
        }
    }
}

/// The length of the `n`th ejection (counted from 1): the base times n, capped.
pub fn ejection_time(outlier: &Outlier, n: u32) -> Duration {
    outlier.base_ejection.saturating_mul(n.max(1)).min(outlier.max_ejection)
}

#[cfg(test)]
mod tests;

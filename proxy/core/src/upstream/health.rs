//! The health state machine of one server: active-check thresholds and passive ejection.
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

/// Passive-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Live failures in a row that eject the server.
    pub consecutive_failures: u32,
    /// How long an ejection lasts.
    pub cooldown: Duration,
}

/// One server's health; a server is up from start-up until told otherwise.
#[derive(Debug, Clone, Default)]
pub struct HealthState {
    active_down: bool,
    ok_streak: u32,
    fail_streak: u32,
    live_fail_streak: u32,
    ejected_until: Option<Instant>,
}

impl HealthState {
    /// Whether the server may be chosen at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        !self.active_down && self.ejected_until.is_none_or(|until| now >= until)
    }

    /// Whether active checks have taken the server down.
    pub fn active_down(&self) -> bool {
        self.active_down
    }

    /// The end of the current passive ejection, if any.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Records an active check result.
    pub fn probe(&mut self, ok: bool, t: Thresholds, now: Instant) -> Option<Transition> {
        let was_up = self.is_up(now);
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if self.active_down && self.ok_streak >= t.healthy {
                self.active_down = false;
                // A server that passes its checks again starts with a clean passive record.
                self.ejected_until = None;
                self.live_fail_streak = 0;
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

    /// Records the outcome of a live request; `None` settings disable passive detection.
    pub fn live(&mut self, ok: bool, passive: Option<Passive>, now: Instant) -> Option<Transition> {
        let passive = passive?;
        let was_up = self.is_up(now);
        if ok {
            self.live_fail_streak = 0;
            return None;
        }
        self.live_fail_streak = self.live_fail_streak.saturating_add(1);
        if self.live_fail_streak >= passive.consecutive_failures && was_up {
            self.ejected_until = Some(now + passive.cooldown);
            self.live_fail_streak = 0;
        }
        self.change(was_up, now)
    }

    /// Clears an ejection whose cooldown is over; reports the return once.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        match self.ejected_until {
            Some(until) if now >= until => {
                self.ejected_until = None;
                (!self.active_down).then_some(Transition::Up)
            }
            _ => None,
        }
    }

    fn change(&self, was_up: bool, now: Instant) -> Option<Transition> {
        match (was_up, self.is_up(now)) {
            (true, false) => Some(Transition::Down),
            (false, true) => Some(Transition::Up),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;

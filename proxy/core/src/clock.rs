//! Time and randomness: the only sources the core may read.
//!
//! Everything in the core takes `now` from a [`Clock`] and random numbers from an [`Entropy`]. Production
//! passes [`TokioClock`] and [`OsEntropy`]; tests pass [`ManualClock`] and [`SeededEntropy`]; the simulator
//! passes its own simulated clock and a seeded source. This file is the one place allowed to read a clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A source of monotonic and wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic now, for intervals, deadlines and token buckets.
    fn now(&self) -> Instant;
    /// Wall-clock time since the Unix epoch, for JWT `exp`/`nbf`.
    fn unix_now(&self) -> Duration;
}

/// A source of random 64-bit numbers.
pub trait Entropy: Send + Sync + 'static {
    /// The next random number.
    fn next_u64(&self) -> u64;
}

/// Production clock on tokio time, so that a paused or simulated runtime moves it too.
///
/// Wall time is the wall time at construction plus the monotonic time elapsed since, which keeps the two
/// consistent and lets a simulated runtime advance both.
#[derive(Debug, Clone)]
pub struct TokioClock {
    mono_anchor: tokio::time::Instant,
    wall_anchor: Duration,
}

impl TokioClock {
    /// A clock anchored at the current wall time.
    pub fn new() -> Self {
        let wall_anchor = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self::with_epoch(wall_anchor)
    }

    /// A clock whose wall time starts at `wall_anchor` (the simulator passes its fixed epoch).
    pub fn with_epoch(wall_anchor: Duration) -> Self {
        Self { mono_anchor: tokio::time::Instant::now(), wall_anchor }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn unix_now(&self) -> Duration {
        self.wall_anchor + self.mono_anchor.elapsed()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    wall_base: Duration,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock at an arbitrary monotonic instant and at `wall` seconds after the Unix epoch.
    pub fn new(wall: Duration) -> Self {
        Self { base: Instant::now(), wall_base: wall, offset: Mutex::new(Duration::ZERO) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by;
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Duration::from_secs(1_800_000_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.offset()
    }

    fn unix_now(&self) -> Duration {
        self.wall_base + self.offset()
    }
}

/// A deterministic random source from a seed (ChaCha8: the same stream on every platform).
#[derive(Debug)]
pub struct SeededEntropy(Mutex<ChaCha8Rng>);

impl SeededEntropy {
    /// A source that yields the same numbers for the same seed.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).next_u64()
    }
}

/// Production randomness: a ChaCha8 stream seeded once from the operating system.
#[derive(Debug)]
pub struct OsEntropy(SeededEntropy);

impl OsEntropy {
    /// A source seeded from the OS.
    pub fn new() -> Self {
        Self(SeededEntropy::new(rand::random()))
    }
}

impl Default for OsEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl Entropy for OsEntropy {
    fn next_u64(&self) -> u64 {
        self.0.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::default();
        let t0 = clock.now();
        let w0 = clock.unix_now();
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.now() - t0, Duration::from_secs(5));
        assert_eq!(clock.unix_now() - w0, Duration::from_secs(5));
    }

    #[test]
    fn same_seed_gives_same_stream_and_other_seed_differs() {
        let a = SeededEntropy::new(7);
        let b = SeededEntropy::new(7);
        let c = SeededEntropy::new(8);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }
}

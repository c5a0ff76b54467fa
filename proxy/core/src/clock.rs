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
/// Monotonic time is tokio's. Wall time in production is the system's own, read each time, so a clock the
/// system steps after start-up (NTP correcting a machine that booted with the wrong time) is followed: JWT
/// `exp`/`nbf` are judged against the time the issuer uses, never against the start-up time plus uptime. The
/// simulator anchors wall time at its epoch instead and advances it with simulated time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    mono_anchor: tokio::time::Instant,
    wall: Wall,
}

/// Where a [`TokioClock`] reads wall time.
#[derive(Debug, Clone, Copy)]
enum Wall {
    /// The epoch given at construction plus the monotonic time since.
    Anchored(Duration),
    /// A function (the system clock in production; a steppable one in tests).
    Source(fn() -> Duration),
}

fn system_wall() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl TokioClock {
    /// A clock on the system's wall time.
    pub fn new() -> Self {
        Self::with_wall_source(system_wall)
    }

    /// A clock whose wall time starts at `wall_anchor` and moves with tokio time (the simulator passes its
    /// fixed epoch).
    pub fn with_epoch(wall_anchor: Duration) -> Self {
        Self { mono_anchor: tokio::time::Instant::now(), wall: Wall::Anchored(wall_anchor) }
    }

    /// A clock whose wall time is read from `source` each time.
    pub fn with_wall_source(source: fn() -> Duration) -> Self {
        Self { mono_anchor: tokio::time::Instant::now(), wall: Wall::Source(source) }
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
        match self.wall {
            Wall::Anchored(anchor) => anchor + self.mono_anchor.elapsed(),
            Wall::Source(read) => read(),
        }
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

    static WALL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_800_000_000);

    fn stepped_wall() -> Duration {
        Duration::from_secs(WALL.load(std::sync::atomic::Ordering::Relaxed))
    }

    #[test]
    fn the_production_clock_follows_a_stepped_wall_clock_and_its_monotonic_time_does_not() {
        let clock = TokioClock::with_wall_source(stepped_wall);
        let (t0, w0) = (clock.now(), clock.unix_now());
        assert_eq!(w0, Duration::from_secs(1_800_000_000));
        // NTP steps the system clock two hours forward, then five minutes back.
        WALL.fetch_add(7200, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(clock.unix_now() - w0, Duration::from_secs(7200));
        WALL.fetch_sub(300, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(clock.unix_now() - w0, Duration::from_secs(6900));
        assert!(clock.now() - t0 < Duration::from_secs(60), "monotonic time did not jump");
        let system = TokioClock::new().unix_now();
        let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(real.abs_diff(system) < Duration::from_secs(5), "the default reads the system clock");
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

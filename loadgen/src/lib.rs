//! locci-loadgen: an HTTP/1.1 keep-alive load generator.
//!
//! Closed loop (`--concurrency C`: C connections, each sends its next request when the last answer is in) or
//! open loop (`--rate R`: requests are due at fixed intended times; latency is measured from the intended
//! time, so a stalled server shows up in the percentiles instead of quietly slowing the sender — the
//! coordinated-omission correction). Latencies go into an HDR histogram (microseconds, 3 significant digits).

mod client;
mod report;
pub mod threshold;
pub mod timeline;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

pub use report::{Latency, Report};

/// Largest latency the histogram tracks (longer ones are recorded as this), in microseconds.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Highest open-loop rate, per second (far beyond what one machine can send; it bounds the slot arithmetic).
pub const MAX_RATE: f64 = 1e9;

/// Longest `--duration` or `--warmup`.
pub const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many connections, each sending as soon as its previous answer is in.
    Closed {
        /// Connections.
        concurrency: usize,
    },
    /// Requests due at a fixed rate, sent over up to this many connections.
    Open {
        /// Requests per second.
        rate: f64,
        /// Connections.
        connections: usize,
    },
}

impl Pace {
    /// The connections this pacing uses.
    pub fn connections(&self) -> usize {
        match *self {
            Pace::Closed { concurrency } => concurrency,
            Pace::Open { connections, .. } => connections,
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target URL (http only).
    pub url: http::Uri,
    /// Pacing.
    pub pace: Pace,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
    /// Method.
    pub method: http::Method,
    /// Extra headers.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request body.
    pub body: Bytes,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// TLS settings for https:// targets (roots, or none verified with --insecure).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/2: h2 by ALPN over TLS, h2c with prior knowledge on plain TCP.
    pub http2: bool,
    /// Keep the per-second series (for `--report`).
    pub timeline: bool,
    /// A scenario's load: its request classes, and the arrivals planned from it (open loop on that schedule).
    pub scenario: Option<Arc<Scenario>>,
}

/// A scenario's `load:` section, planned.
#[derive(Debug)]
pub struct Scenario {
    /// The section, as written.
    pub load: locci_scenario::LoadSpec,
    /// When each request is due, its class and key.
    pub slots: Vec<locci_scenario::plan::Slot>,
}

impl Options {
    /// Refuses values outside what a run can honour, instead of adjusting them.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.duration > MAX_SPAN || self.warmup > MAX_SPAN {
            anyhow::bail!("--duration and --warmup are at most 366 days each");
        }
        if let Pace::Open { rate, .. } = self.pace
            && !(rate > 0.0 && rate <= MAX_RATE)
        {
            anyhow::bail!("--rate must be above 0 and at most {MAX_RATE:e} per second");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.pace.connections()) {
            anyhow::bail!("--concurrency and --connections must be from 1 to {MAX_CONNECTIONS}");
        }
        Ok(())
    }
}

/// What one connection recorded.
struct Tally {
    histogram: Histogram<u64>,
    /// Answers by status code, indexed by the code (hyper only yields 100 to 999): a counter bump per
    /// answer, where a map would search.
    status: Vec<u64>,
    errors: BTreeMap<&'static str, u64>,
    /// Second by second, when a report is asked for.
    seconds: Option<timeline::Seconds>,
}

impl Tally {
    fn new(timeline: bool) -> anyhow::Result<Tally> {
        // 1 µs to 1 hour at 3 significant digits: fixed bounds, so recording never resizes (or clamps early).
        Ok(Tally {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            status: vec![0; 1000],
            errors: BTreeMap::new(),
            seconds: timeline.then(timeline::Seconds::default),
        })
    }

    /// Counts `n` failures of one kind, here and in the run-wide count the progress line shows.
    fn fail(&mut self, kind: &'static str, n: u64, failed: &AtomicU64) {
        if n > 0 {
            failed.fetch_add(n, Ordering::Relaxed);
            *self.errors.entry(kind).or_default() += n;
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.histogram.add(other.histogram)?;
        for (mine, theirs) in self.status.iter_mut().zip(other.status) {
            *mine += theirs;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if let (Some(mine), Some(theirs)) = (self.seconds.as_mut(), other.seconds) {
            mine.merge(theirs);
        }
        Ok(())
    }
}

/// Waits for an open-loop request's slot and returns the instant its latency counts from.
///
/// A slot that came due while this connection was still busy counts from when it was due: that wait is the
/// server's doing, and charging it is what makes the open loop coordinated-omission correct. A slot this
/// connection was idle for counts from when the timer woke it: tokio's timer rounds up to the next
/// millisecond, and that lateness is the generator's, not the server's.
async fn open_loop_start(due: Instant) -> Instant {
    if Instant::now() >= due {
        return due;
    }
    tokio::time::sleep_until(due).await;
    Instant::now()
}

/// When open-loop slot `i` is due.
fn slot_due(start: Instant, i: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(i as f64 / rate)
}

/// The first open-loop slot due at or after `t` (`rate` and the span are bounded by [`MAX_RATE`] and
/// [`MAX_SPAN`], so the index fits easily).
fn first_slot_at(start: Instant, t: Instant, rate: f64) -> u64 {
    let mut i = (t.saturating_duration_since(start).as_secs_f64() * rate).ceil() as u64;
    // The float product can land a slot either side of what `slot_due` says; agree with it exactly.
    while i > 0 && slot_due(start, i - 1, rate) >= t {
        i -= 1;
    }
    while slot_due(start, i, rate) < t {
        i += 1;
    }
    i
}

/// Runs the load and returns the report.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    opts.check()?;
    let target = client::Target::resolve(&opts).await?;
    let connections = opts.pace.connections();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    // Open loop: slots [0, measured) fall in the warm-up, [measured, slots_end) in the measured window.
    let (measured, slots_end) = match (&opts.scenario, opts.pace) {
        (Some(s), _) => (0, s.slots.len() as u64),
        (None, Pace::Open { rate, .. }) => (first_slot_at(start, measure_from, rate), first_slot_at(start, end, rate)),
        (None, Pace::Closed { .. }) => (0, 0),
    };
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = opts.progress.then(|| {
        let (done, failed, scenario) = (Arc::clone(&done), Arc::clone(&failed), opts.scenario.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                let secs = Instant::now().saturating_duration_since(start).as_secs();
                // With stages: which one the run is in, and the rate it asks for now.
                let stage = scenario.as_ref().and_then(|s| {
                    let since = Duration::from_secs(secs);
                    locci_scenario::plan::stage_at(&s.load, since)
                        .map(|i| format!("  stage {} at {:.0}/s", i + 1, locci_scenario::plan::rate_at(&s.load, since)))
                });
                eprint!(
                    "\r[{secs:>4}s] {now:>10} requests  {:>8}/s  errors {:<6}{}",
                    now - last,
                    failed.load(Ordering::Relaxed),
                    stage.unwrap_or_default()
                );
                last = now;
            }
        })
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (target, next, done, failed) =
            (Arc::clone(&target), Arc::clone(&next), Arc::clone(&done), Arc::clone(&failed));
        let opts = opts.clone();
        workers.spawn(async move {
            let mut tally = Tally::new(opts.timeline)?;
            let mut conn: Option<client::Connection> = None;
            let mut timer = client::Timer::new(opts.timeout);
            tokio::time::sleep_until(start).await;
            loop {
                let mut class = (0, None);
                let (due, sent) = match opts.pace {
                    // No timer per request in a closed loop: the next one goes as soon as the last is in.
                    Pace::Closed { .. } => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        (now, now)
                    }
                    Pace::Open { rate, .. } => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= slots_end {
                            break;
                        }
                        if Instant::now() >= end {
                            // The run is over and slots due inside it were never sent (every connection was
                            // busy, or the rate is beyond reach): count them, so the report shows the shortfall
                            // instead of omitting it, and stop on time instead of sending them afterwards.
                            let rest = next.swap(slots_end, Ordering::Relaxed).max(i + 1);
                            let unsent = u64::from(i >= measured) + slots_end.saturating_sub(rest.max(measured));
                            tally.fail("unsent", unsent, &failed);
                            break;
                        }
                        let due = match &opts.scenario {
                            Some(s) => {
                                let slot = s.slots[i as usize];
                                class = (slot.class, slot.key);
                                start + slot.at
                            }
                            None => slot_due(start, i, rate),
                        };
                        (due, open_loop_start(due).await)
                    }
                };
                let outcome = client::send(&target, &mut conn, &mut timer, &opts, class).await;
                let latency = Instant::now().saturating_duration_since(sent);
                done.fetch_add(1, Ordering::Relaxed);
                if due < measure_from {
                    continue;
                }
                if outcome == Err(client::TLS_FAILED) {
                    // Reported once by the connection; it stops rather than retry the handshake in a loop.
                    tally.fail(client::TLS_FAILED, 1, &failed);
                    break;
                }
                let second = due.saturating_duration_since(measure_from).as_secs() as usize;
                match outcome {
                    Ok(status) => {
                        if let Some(count) = tally.status.get_mut(usize::from(status)) {
                            *count += 1;
                        }
                        let us = latency.as_micros().max(1) as u64;
                        tally.histogram.saturating_record(us);
                        if let Some(seconds) = tally.seconds.as_mut() {
                            seconds.answer(second, us);
                        }
                    }
                    Err(kind) => {
                        tally.fail(kind, 1, &failed);
                        if let Some(seconds) = tally.seconds.as_mut() {
                            seconds.error(second);
                        }
                    }
                }
            }
            anyhow::Ok(tally)
        });
    }
    let mut total = Tally::new(opts.timeline)?;
    while let Some(joined) = workers.join_next().await {
        total.merge(joined??)?;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let status = (0u16..).zip(total.status).filter(|&(_, n)| n > 0).collect();
    let mut report = Report::new(&opts, connections, total.histogram, status, total.errors);
    report.timeline = total.seconds.map(timeline::Seconds::series).unwrap_or_default();
    Ok(report)
}

//! The end-of-run report, as text and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Options, Pace};

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target.
    pub url: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Connections used.
    pub connections: usize,
    /// Requested rate (open loop).
    pub rate: Option<f64>,
    /// Measured seconds.
    pub duration_secs: f64,
    /// Requests measured (answered or failed).
    pub requests: u64,
    /// Answered requests per second.
    pub throughput_rps: f64,
    /// Answers by status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures by kind: connect, io, timeout, unsent (open loop: due inside the run, never sent).
    pub errors: BTreeMap<&'static str, u64>,
    /// Latency of answered requests (open loop: from the intended send time).
    pub latency_us: Latency,
    /// The `--threshold` verdicts, in the order given.
    pub thresholds: Vec<crate::threshold::Outcome>,
    /// Second by second (with `--report`; empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<crate::timeline::Second>,
}

impl Report {
    /// Builds the report.
    pub fn new(
        opts: &Options,
        connections: usize,
        h: Histogram<u64>,
        status: BTreeMap<u16, u64>,
        errors: BTreeMap<&'static str, u64>,
    ) -> Report {
        let answered: u64 = status.values().sum();
        let failed: u64 = errors.values().sum();
        let secs = opts.duration.as_secs_f64();
        let (mode, rate) = match opts.pace {
            Pace::Closed { .. } => ("closed", None),
            Pace::Open { rate, .. } => ("open", Some(rate)),
        };
        Report {
            url: opts.url.to_string(),
            mode,
            connections,
            rate,
            duration_secs: secs,
            requests: answered + failed,
            throughput_rps: if secs > 0.0 { answered as f64 / secs } else { 0.0 },
            status,
            errors,
            latency_us: Latency {
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p99_9: h.value_at_quantile(0.999),
                max: h.max(),
                mean: h.mean(),
            },
            thresholds: Vec::new(),
            timeline: Vec::new(),
        }
    }

    /// The human summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let pace = match self.rate {
            Some(r) => format!("open loop at {r}/s over {} connections", self.connections),
            None => format!("closed loop, {} connections", self.connections),
        };
        let _ = writeln!(out, "{}  {pace}  {:.1}s", self.url, self.duration_secs);
        let _ = writeln!(out, "requests    {}  ({:.1}/s answered)", self.requests, self.throughput_rps);
        let _ = writeln!(out, "status      {:?}", self.status);
        let _ = writeln!(out, "errors      {:?}", self.errors);
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p99_9),
            ms(l.max),
            ms(l.mean as u64)
        );
        for t in &self.thresholds {
            let _ = writeln!(
                out,
                "threshold   {:<4}  {}  (measured {})",
                if t.pass { "PASS" } else { "FAIL" },
                t.expression,
                t.measured
            );
        }
        out
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

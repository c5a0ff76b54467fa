//! `--threshold` expressions (SPEC §12): a pass/fail judgement on a finished run, so a staging run can gate a
//! deploy as k6's thresholds do.
//!
//! `METRIC OP VALUE`, no spaces needed: METRIC is `p50`, `p90`, `p99`, `p99.9`, `max` (latency, VALUE with a
//! unit `us`, `ms` or `s`), `errors` (transport failures — connect, io, timeout, unsent — plus 5xx answers),
//! `rps` (answered requests per second) or `status:NNN` (answers with that status); OP is `<`, `<=`, `>`,
//! `>=`. `errors` and `status:NNN` are shares of all requests when VALUE ends in `%`, else counts.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::report::Report;

/// One parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    text: String,
    metric: Metric,
    op: Op,
    value: f64,
    share: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    /// Latency at a quantile (1.0 = max), compared in microseconds.
    Latency(f64),
    Errors,
    Rps,
    Status(u16),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A threshold judged against a report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    /// The expression as given.
    pub expression: String,
    /// What was measured, in the expression's unit.
    pub measured: String,
    /// Whether it held.
    pub pass: bool,
}

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadThreshold(String);

impl fmt::Display for BadThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadThreshold {}

impl FromStr for Threshold {
    type Err = BadThreshold;

    fn from_str(text: &str) -> Result<Threshold, BadThreshold> {
        let bad = |why: &str| BadThreshold(format!("threshold {text:?}: {why}"));
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at = compact.find(['<', '>']).ok_or_else(|| bad("no comparison (<, <=, >, >=)"))?;
        let (name, rest) = compact.split_at(at);
        let (op, value) = match rest.as_bytes() {
            [b'<', b'=', ..] => (Op::Le, &rest[2..]),
            [b'>', b'=', ..] => (Op::Ge, &rest[2..]),
            [b'<', ..] => (Op::Lt, &rest[1..]),
            _ => (Op::Gt, &rest[1..]),
        };
        let metric = match name {
            "p50" => Metric::Latency(0.5),
            "p90" => Metric::Latency(0.9),
            "p99" => Metric::Latency(0.99),
            "p99.9" => Metric::Latency(0.999),
            "max" => Metric::Latency(1.0),
            "errors" => Metric::Errors,
            "rps" => Metric::Rps,
            _ => match name.strip_prefix("status:").map(str::parse::<u16>) {
                Some(Ok(code)) if (100..=599).contains(&code) => Metric::Status(code),
                Some(_) => return Err(bad("status:NNN needs a status code from 100 to 599")),
                None => return Err(bad("unknown metric (p50, p90, p99, p99.9, max, errors, rps, status:NNN)")),
            },
        };
        let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        let (value, share) = match metric {
            Metric::Latency(_) => {
                let (digits, scale) = if let Some(v) = value.strip_suffix("us") {
                    (v, 1.0)
                } else if let Some(v) = value.strip_suffix("ms") {
                    (v, 1e3)
                } else if let Some(v) = value.strip_suffix('s') {
                    (v, 1e6)
                } else {
                    return Err(bad("a latency needs a unit: us, ms or s"));
                };
                (number(digits).ok_or_else(|| bad("not a number"))? * scale, false)
            }
            Metric::Rps => (number(value).ok_or_else(|| bad("not a number"))?, false),
            Metric::Errors | Metric::Status(_) => match value.strip_suffix('%') {
                Some(p) => {
                    (number(p).filter(|p| *p <= 100.0).ok_or_else(|| bad("a share is 0% to 100%"))? / 100.0, true)
                }
                None => (number(value).ok_or_else(|| bad("not a number"))?, false),
            },
        };
        Ok(Threshold { text: text.to_string(), metric, op, value, share })
    }
}

impl Threshold {
    /// Judges the expression against a finished run.
    pub fn judge(&self, r: &Report) -> Outcome {
        let requests = r.requests.max(1) as f64;
        let (measured, shown) = match self.metric {
            Metric::Latency(q) => {
                let l = &r.latency_us;
                let us = match q {
                    x if x >= 1.0 => l.max,
                    x if x >= 0.999 => l.p99_9,
                    x if x >= 0.99 => l.p99,
                    x if x >= 0.9 => l.p90,
                    _ => l.p50,
                } as f64;
                (us, format!("{:.3}ms", us / 1e3))
            }
            Metric::Rps => (r.throughput_rps, format!("{:.1}/s", r.throughput_rps)),
            Metric::Errors | Metric::Status(_) => {
                let count = match self.metric {
                    Metric::Errors => {
                        r.errors.values().sum::<u64>() + r.status.range(500..600).map(|(_, n)| n).sum::<u64>()
                    }
                    Metric::Status(code) => r.status.get(&code).copied().unwrap_or(0),
                    _ => 0,
                } as f64;
                if self.share {
                    (count / requests, format!("{:.3}% ({count} of {})", 100.0 * count / requests, r.requests))
                } else {
                    (count, format!("{count}"))
                }
            }
        };
        let pass = match self.op {
            Op::Lt => measured < self.value,
            Op::Le => measured <= self.value,
            Op::Gt => measured > self.value,
            Op::Ge => measured >= self.value,
        };
        Outcome { expression: self.text.clone(), measured: shown, pass }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_and_bad_ones_say_why() {
        for ok in [
            "p50<1ms",
            "p90 <= 250us",
            "p99<2s",
            "p99.9<1.5ms",
            "max<10s",
            "errors<0.1%",
            "errors<=3",
            "rps>500",
            "status:503<1%",
            "status:200>=99%",
        ] {
            assert!(ok.parse::<Threshold>().is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("p98<1ms", "unknown metric"),
            ("p99<200", "needs a unit"),
            ("rps", "no comparison"),
            ("errors<150%", "0% to 100%"),
            ("status:99<1", "status code"),
            ("rps>fast", "not a number"),
            ("p99<-1ms", "not a number"),
        ] {
            let err = bad.parse::<Threshold>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}

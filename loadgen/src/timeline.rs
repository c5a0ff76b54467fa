//! The run second by second, for `--report FILE.svg|.html` (SPEC §12): requests answered, errors, and the
//! p50/p99 latency of each second of the measured window, drawn as a picture.
//!
//! Recorded only when a report is asked for: each connection keeps the latencies of its answers per second
//! (at most [`MAX_SAMPLES`] in all, beyond which later answers are counted but their latency is not kept), and
//! the seconds are merged once, after the run.

use std::fmt::Write as _;

/// Most latencies kept for the report, over all connections (4 bytes each: 64 MiB at most).
pub const MAX_SAMPLES: usize = 16 << 20;

/// One connection's per-second record.
#[derive(Debug, Default)]
pub struct Seconds {
    answered: Vec<u64>,
    errors: Vec<u64>,
    latencies_us: Vec<Vec<u32>>,
    kept: usize,
}

impl Seconds {
    /// An answer `latency_us` long, in second `s` of the measured window.
    pub fn answer(&mut self, s: usize, latency_us: u64) {
        self.grow(s);
        self.answered[s] += 1;
        if self.kept < MAX_SAMPLES / 64 {
            self.latencies_us[s].push(u32::try_from(latency_us).unwrap_or(u32::MAX));
            self.kept += 1;
        }
    }

    /// A failure in second `s`.
    pub fn error(&mut self, s: usize) {
        self.grow(s);
        self.errors[s] += 1;
    }

    fn grow(&mut self, s: usize) {
        if self.answered.len() <= s {
            self.answered.resize(s + 1, 0);
            self.errors.resize(s + 1, 0);
            self.latencies_us.resize_with(s + 1, Vec::new);
        }
    }

    /// Adds another connection's record to this one.
    pub fn merge(&mut self, other: Seconds) {
        let n = other.answered.len();
        if n > 0 {
            self.grow(n - 1);
        }
        for (s, (a, e)) in other.answered.into_iter().zip(other.errors).enumerate() {
            self.answered[s] += a;
            self.errors[s] += e;
        }
        for (s, mut l) in other.latencies_us.into_iter().enumerate() {
            self.latencies_us[s].append(&mut l);
        }
    }

    /// The finished series, one point per second.
    pub fn series(mut self) -> Vec<Second> {
        (0..self.answered.len())
            .map(|s| {
                let l = &mut self.latencies_us[s];
                l.sort_unstable();
                let at = |q: f64| l.get(((l.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
                Second { answered: self.answered[s], errors: self.errors[s], p50_us: at(0.5), p99_us: at(0.99) }
            })
            .collect()
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Second {
    /// Answers in that second.
    pub answered: u64,
    /// Failures in that second.
    pub errors: u64,
    /// Median latency of its answers, in microseconds.
    pub p50_us: u32,
    /// 99th percentile, in microseconds.
    pub p99_us: u32,
}

const W: f64 = 900.0;
const PANEL: f64 = 160.0;
const LEFT: f64 = 70.0;

/// The picture: three panels sharing the time axis (answers/s, errors/s, p50 and p99 in ms).
pub fn svg(title: &str, series: &[Second]) -> String {
    let mut out = String::new();
    let height = 40.0 + 3.0 * (PANEL + 30.0);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#, escape(title));
    let answered: Vec<f64> = series.iter().map(|s| s.answered as f64).collect();
    let errors: Vec<f64> = series.iter().map(|s| s.errors as f64).collect();
    let p50: Vec<f64> = series.iter().map(|s| f64::from(s.p50_us) / 1e3).collect();
    let p99: Vec<f64> = series.iter().map(|s| f64::from(s.p99_us) / 1e3).collect();
    panel(&mut out, 0, "requests/s", &[("answered", "#2563eb", &answered)]);
    panel(&mut out, 1, "errors/s", &[("errors", "#dc2626", &errors)]);
    panel(&mut out, 2, "latency (ms)", &[("p50", "#16a34a", &p50), ("p99", "#9333ea", &p99)]);
    out.push_str("</svg>\n");
    out
}

/// The same picture in a page, with the numbers under it.
pub fn html(title: &str, series: &[Second]) -> String {
    let mut rows = String::new();
    for (s, p) in series.iter().enumerate() {
        let _ = writeln!(
            rows,
            "<tr><td>{s}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            p.answered,
            p.errors,
            f64::from(p.p50_us) / 1e3,
            f64::from(p.p99_us) / 1e3
        );
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head><body>\n{svg}\
         <table><tr><th>second</th><th>answered</th><th>errors</th><th>p50 ms</th><th>p99 ms</th></tr>\n{rows}</table>\n</body></html>\n",
        t = escape(title),
        svg = svg(title, series)
    )
}

fn panel(out: &mut String, i: usize, label: &str, lines: &[(&str, &str, &[f64])]) {
    let top = 40.0 + i as f64 * (PANEL + 30.0);
    let width = W - LEFT - 20.0;
    let max = lines.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0f64, f64::max).max(1e-9);
    let n = lines.first().map_or(0, |(_, _, v)| v.len()).max(2) - 1;
    let _ =
        writeln!(out, r##"<rect x="{LEFT}" y="{top}" width="{width}" height="{PANEL}" fill="none" stroke="#999"/>"##);
    let _ = writeln!(out, r#"<text x="5" y="{}">{label}</text>"#, top + 14.0);
    let _ = writeln!(out, r#"<text x="5" y="{}">{}</text>"#, top + 30.0, number(max));
    let _ = writeln!(out, r#"<text x="5" y="{}">0</text>"#, top + PANEL);
    for (k, (name, colour, values)) in lines.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(s, v)| format!("{:.1},{:.1}", LEFT + width * s as f64 / n as f64, top + PANEL - PANEL * v / max))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            LEFT + 10.0 + 60.0 * k as f64,
            top + 14.0
        );
    }
    let _ = writeln!(out, r#"<text x="{}" y="{}">{}s</text>"#, LEFT + width - 20.0, top + PANEL + 14.0, n + 1);
}

fn number(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_merge_and_give_percentiles_per_second() {
        let mut a = Seconds::default();
        let mut b = Seconds::default();
        for l in 1..=100 {
            a.answer(0, l);
        }
        b.answer(2, 7);
        b.error(2);
        a.merge(b);
        let s = a.series();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].answered, s[0].p50_us, s[0].p99_us), (100, 50, 99));
        assert_eq!(s[1], Second { answered: 0, errors: 0, p50_us: 0, p99_us: 0 });
        assert_eq!((s[2].answered, s[2].errors, s[2].p50_us), (1, 1, 7));
        let picture = svg("a <run>", &s);
        assert_eq!(picture.matches("<polyline").count(), 4);
        assert!(picture.contains("a &lt;run&gt;"));
    }
}

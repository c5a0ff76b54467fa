//! An SVG timeline of a run: requests per server, server health, p99 latency and failures over simulated
//! time, with fault times marked. Hand-written SVG: four panels of lines and bands, no plotting library.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::oracle::{down_intervals, percentile, requests};
use crate::trace::{Event, us};
use crate::world::Run;

const WIDTH: f64 = 1000.0;
const PANEL: f64 = 140.0;
const LEFT: f64 = 90.0;
const BUCKETS: usize = 200;
const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// The SVG document for a run.
pub fn svg(scenario: &str, seed: u64, run: &Run) -> String {
    let end = us(run.end).max(1);
    let bucket = |t: u64| ((t as f64 / end as f64) * BUCKETS as f64).min(BUCKETS as f64 - 1.0) as usize;
    let x = |t: u64| LEFT + (t as f64 / end as f64) * (WIDTH - LEFT - 10.0);
    let mut per_host: BTreeMap<&str, Vec<f64>> = run.hosts.iter().map(|h| (h.as_str(), vec![0.0; BUCKETS])).collect();
    for e in &run.events {
        if let Event::Received { t_us, host, .. } = e
            && let Some(v) = per_host.get_mut(host.as_str())
        {
            v[bucket(*t_us)] += 1.0;
        }
    }
    let reqs = requests(&run.events);
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); BUCKETS];
    let mut failed = vec![0.0; BUCKETS];
    for r in reqs.values() {
        if r.status.is_some() {
            lat[bucket(r.t_us)].push(r.latency_us);
        }
        if !r.good() {
            failed[bucket(r.t_us)] += 1.0;
        }
    }
    let p99: Vec<f64> = lat.iter_mut().map(|v| percentile(v, 99.0) as f64 / 1000.0).collect();
    let height = 40.0 + 4.0 * (PANEL + 30.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="20" font-size="14">{scenario} — seed {seed}</text>"#);
    let top = |i: usize| 40.0 + i as f64 * (PANEL + 30.0);
    let series: Vec<(&str, &str, Vec<f64>)> =
        per_host.iter().enumerate().map(|(i, (h, v))| (*h, COLOURS[i % COLOURS.len()], v.clone())).collect();
    panel(&mut s, top(0), "requests per server", &series, &x, end);
    // Health: one band per host, red while down.
    let y0 = top(1);
    let _ = writeln!(s, r#"<text x="10" y="{}">server health</text>"#, y0 - 4.0);
    let down = down_intervals(&run.events);
    let rows = run.hosts.len().max(1) as f64;
    for (i, h) in run.hosts.iter().enumerate() {
        let y = y0 + i as f64 * PANEL / rows;
        let hgt = PANEL / rows - 2.0;
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{y}" width="{}" height="{hgt}" fill="#cfe8cf"/>"##,
            WIDTH - LEFT - 10.0
        );
        let _ = writeln!(s, r#"<text x="10" y="{}">{h}</text>"#, y + hgt / 2.0 + 4.0);
        for (from, until) in down.get(h).into_iter().flatten() {
            let (a, b) = (x(*from), x((*until).min(end)));
            let _ =
                writeln!(s, r##"<rect x="{a}" y="{y}" width="{}" height="{hgt}" fill="#e57373"/>"##, (b - a).max(1.0));
        }
    }
    panel(&mut s, top(2), "p99 latency (ms)", &[("p99", "#444", p99)], &x, end);
    panel(&mut s, top(3), "failed requests", &[("failed", "#d62728", failed)], &x, end);
    for t in &run.fault_times {
        let xf = x(us(*t));
        let _ =
            writeln!(s, r##"<line x1="{xf}" y1="30" x2="{xf}" y2="{height}" stroke="#999" stroke-dasharray="3,3"/>"##);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, y0: f64, title: &str, series: &[(&str, &str, Vec<f64>)], x: &dyn Fn(u64) -> f64, end: u64) {
    let max = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(1.0_f64, f64::max);
    let _ = writeln!(s, r#"<text x="10" y="{}">{title} (max {max:.0})</text>"#, y0 - 4.0);
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{y0}" width="{}" height="{PANEL}" fill="none" stroke="#ccc"/>"##,
        WIDTH - LEFT - 10.0
    );
    for (i, (name, colour, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(b, v)| {
                let t = (b as f64 + 0.5) / BUCKETS as f64 * end as f64;
                format!("{:.1},{:.1}", x(t as u64), y0 + PANEL - v / max * (PANEL - 4.0))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            WIDTH - 60.0,
            y0 + 12.0 + i as f64 * 12.0
        );
    }
}

//! locci-loadgen against a real loopback server: closed and open loop, headers, JSON report, and the
//! coordinated-omission correction.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

use locci_proxy::demo::Backend;

mod common;

/// Runs locci-loadgen with `args` and `--json`: the exit status, stdout and the JSON report.
fn loadgen(args: &[&str]) -> (std::process::ExitStatus, String, serde_json::Value) {
    let run = common::run(args);
    (run.status, run.stdout, run.report)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "locci-loadgen-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn closed_loop_reports_throughput_statuses_and_percentiles() {
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/hello", b.addr);
    let (status, text, r) =
        loadgen(&[&url, "--concurrency", "4", "--duration", "1s", "--warmup", "200ms", "-H", "X-Test: yes"]);
    assert!(status.success(), "{text}");
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests > 50, "{r}");
    assert_eq!(r["status"]["200"].as_u64(), Some(requests), "every request answered 200: {r}");
    assert_eq!(r["mode"], "closed");
    let l = &r["latency_us"];
    assert!(l["p50"].as_u64().unwrap() <= l["p99"].as_u64().unwrap());
    assert!(l["p99"].as_u64().unwrap() <= l["max"].as_u64().unwrap());
    assert!(text.contains("latency     p50"), "{text}");
    assert!(b.requests() >= requests, "warm-up requests are sent but not measured");
}

#[test]
fn open_loop_sends_exactly_the_scheduled_requests() {
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/", b.addr);
    let (status, _, r) = loadgen(&[&url, "--rate", "200", "--duration", "1s"]);
    assert!(status.success());
    assert_eq!(r["requests"].as_u64(), Some(200), "{r}");
    assert_eq!(r["mode"], "open");
}

#[test]
fn open_loop_latency_counts_the_time_a_stalled_server_made_requests_wait() {
    // One connection, 20 requests due per second, each answered after 100 ms: the schedule falls further
    // behind with every request. Measured from the intended send time (coordinated omission corrected),
    // the tail is several times the 100 ms service time; a closed-loop view would report ~100 ms. The run
    // ends on time, and the slots it never reached are counted as unsent, not left out.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/slow?ms=100", b.addr);
    let (status, _, r) = loadgen(&[&url, "--rate", "20", "--connections", "1", "--duration", "2s"]);
    assert!(status.success());
    let p99 = r["latency_us"]["p99"].as_u64().unwrap();
    assert!(p99 > 500_000, "p99 {p99} us hides the queueing: {r}");
    assert_eq!(r["requests"].as_u64(), Some(40), "every scheduled slot is accounted for: {r}");
    let answered = r["status"]["200"].as_u64().unwrap();
    assert!((5..=21).contains(&answered), "about one answer per 100 ms of the run: {r}");
    assert_eq!(r["errors"]["unsent"].as_u64(), Some(40 - answered), "{r}");
}

#[test]
fn a_rate_beyond_reach_ends_on_time_and_counts_what_was_not_sent() {
    // A billion requests due in one second over one connection: the run must still end after about a
    // second (not after sending every slot late), with the slots it never reached counted as unsent.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/", b.addr);
    let (status, _, r) = loadgen(&[&url, "--rate", "1e9", "--connections", "2", "--duration", "1s"]);
    assert!(status.success());
    assert_eq!(r["requests"].as_u64(), Some(1_000_000_000), "{r}");
    let answered = r["status"]["200"].as_u64().unwrap();
    assert!(answered > 0, "{r}");
    assert_eq!(r["errors"]["unsent"].as_u64(), Some(1_000_000_000 - answered), "{r}");
}

#[test]
fn a_request_past_its_timeout_is_counted_as_a_timeout_and_the_run_goes_on() {
    // Every answer takes 1 s and the timeout is 150 ms: each request is given up and counted as a timeout,
    // on a fresh connection each time, and the run still sends all that were scheduled.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/slow?ms=1000", b.addr);
    let (status, _, r) =
        loadgen(&[&url, "--rate", "10", "--connections", "2", "--duration", "1s", "--timeout", "150ms"]);
    assert!(status.success());
    assert_eq!(r["requests"].as_u64(), Some(10), "{r}");
    assert_eq!(r["errors"]["timeout"].as_u64(), Some(10), "{r}");
}

#[test]
fn a_fast_request_after_a_long_quiet_spell_is_not_timed_out() {
    // The timer is moved on only when it fires; a request that starts long after the previous one must get
    // its whole timeout, not what was left of an older deadline. Two requests per connection, 1.5 s apart,
    // with a 1 s timeout: both answered.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/slow?ms=300", b.addr);
    let (status, _, r) =
        loadgen(&[&url, "--rate", "0.66", "--connections", "1", "--duration", "3s", "--timeout", "1s"]);
    assert!(status.success());
    assert_eq!(r["errors"].as_object().map(|e| e.len()), Some(0), "{r}");
    assert_eq!(r["status"]["200"].as_u64(), r["requests"].as_u64(), "{r}");
    assert!(r["requests"].as_u64().unwrap() >= 2, "{r}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_locci-loadgen"))
        .args(["ftp://example.invalid/", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http:// and https:// URLs are supported"));
    let out = Command::new(env!("CARGO_BIN_EXE_locci-loadgen"))
        .args(["http://127.0.0.1:1/", "-H", "broken"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not 'Name: value'"));
    for (args, message) in [
        (&["--rate", "1e300"][..], "--rate must be above 0 and at most"),
        (&["--rate", "0"][..], "--rate must be above 0"),
        (&["--duration", "1000years"][..], "at most 366 days"),
        (&["--concurrency", "0"][..], "must be from 1 to 10000"),
        (&["--rate", "5", "--connections", "20000"][..], "must be from 1 to 10000"),
        (&["--threads", "0"][..], "--threads must be at least 1"),
    ] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_locci-loadgen")).arg("http://127.0.0.1:1/").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unreachable_server_is_counted_as_connect_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/");
    let (status, _, r) = loadgen(&[&url, "--rate", "50", "--duration", "500ms", "--connections", "2"]);
    assert!(status.success());
    assert_eq!(r["errors"]["connect"].as_u64(), r["requests"].as_u64(), "{r}");
}

/// A server that answers each connection's first request with `Connection: close` and hangs up, counting
/// the connections it served; stops when dropped.
struct ClosingServer {
    addr: std::net::SocketAddr,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClosingServer {
    fn start() -> ClosingServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (served.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").is_ok() {
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        ClosingServer { addr, served, stop, thread: Some(thread) }
    }
}

impl Drop for ClosingServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_server_that_closes_after_each_answer_is_reconnected_to_without_errors() {
    // `Connection: close` on every answer: each request is answered on its own connection, and none is
    // sent on a connection the server has already closed (which would show as an io error).
    let server = ClosingServer::start();
    let url = format!("http://{}/", server.addr);
    let (status, _, r) = loadgen(&[&url, "--concurrency", "2", "--duration", "1s"]);
    assert!(status.success());
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests >= 20, "{r}");
    assert_eq!(r["errors"].as_object().map(|e| e.len()), Some(0), "{r}");
    assert_eq!(r["status"]["200"].as_u64(), Some(requests), "{r}");
    assert!(server.served.load(std::sync::atomic::Ordering::Relaxed) >= requests, "one connection per answer");
}

#[test]
fn each_threshold_kind_passes_and_fails_with_the_right_exit_code() {
    // Goal: a staging run can gate a deploy. Method: short closed-loop runs against a real server, once with
    // thresholds the run meets (exit 0) and once with each kind set out of reach (exit 1), then bad
    // expressions (exit 2, before any request).
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let ok = format!("http://{}/fine", b.addr);
    let run = |url: &str, thresholds: &[&str]| {
        let mut args = vec![url, "--concurrency", "2", "--duration", "500ms"];
        for t in thresholds {
            args.extend(["--threshold", t]);
        }
        loadgen(&args)
    };
    let meets = [
        "p50<10s",
        "p90<10s",
        "p99<10s",
        "p99.9<10s",
        "max<10s",
        "errors<1%",
        "errors<=0",
        "rps>1",
        "status:200>=99%",
        "status:500<1",
    ];
    let (status, text, r) = run(&ok, &meets);
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(text.matches("PASS").count(), meets.len(), "{text}");
    assert_eq!(r["thresholds"].as_array().map(Vec::len), Some(meets.len()), "{r}");
    assert_eq!(r["thresholds"][0]["pass"], true);
    for out_of_reach in ["p50<1us", "p99.9<1us", "max<1us", "rps>100000000", "status:200<1%", "status:200<5"] {
        let (status, text, r) = run(&ok, &["p99<10s", out_of_reach]);
        assert_eq!(status.code(), Some(1), "{out_of_reach}: {text}");
        assert!(text.contains(&format!("FAIL  {out_of_reach}")), "{text}");
        assert_eq!(r["thresholds"][1]["pass"], false, "{r}");
    }
    // errors counts 5xx answers as well as transport failures.
    let failing = format!("http://{}/status/503", b.addr);
    let (status, text, _) = run(&failing, &["errors<1%"]);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("measured 100.000%"), "{text}");
    for bad in ["p98<1ms", "p99<200", "errors<150%", "rps"] {
        let (status, _, _) = run(&ok, &[bad]);
        assert_eq!(status.code(), Some(2), "{bad}");
    }
}

#[test]
fn a_report_draws_every_second_of_the_run_in_svg_and_html() {
    // Goal: the picture a staging run leaves behind. Method: a 2 s open-loop run with --report, then the SVG is
    // read back: three panels, each line with one point per second of the JSON timeline, every point numeric.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/x", b.addr);
    let dir = tempfile_dir();
    let svg = dir.join("run.svg");
    let (status, text, r) = loadgen(&[&url, "--rate", "200", "--duration", "2s", "--report", svg.to_str().unwrap()]);
    assert!(status.success(), "{text}");
    let seconds = r["timeline"].as_array().unwrap();
    assert_eq!(seconds.len(), 2, "{r}");
    let answered: u64 = seconds.iter().map(|s| s["answered"].as_u64().unwrap()).sum();
    assert_eq!(answered, r["status"]["200"].as_u64().unwrap(), "the seconds add up to the run");
    assert!(seconds.iter().all(|s| s["p99_us"].as_u64().unwrap() >= s["p50_us"].as_u64().unwrap()));
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"), "{picture}");
    let lines: Vec<&str> = picture.lines().filter(|l| l.starts_with("<polyline")).collect();
    assert_eq!(lines.len(), 4, "answered, errors, p50, p99");
    for line in lines {
        let points = line.split("points=\"").nth(1).unwrap().trim_end_matches("\"/>");
        let parsed: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(parsed.len(), seconds.len(), "{line}");
    }
    let html = dir.join("run.html");
    let (status, _, _) = loadgen(&[&url, "--rate", "100", "--duration", "1s", "--report", html.to_str().unwrap()]);
    assert!(status.success());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("<table>"), "{page}");
    let (status, _, _) = loadgen(&[&url, "--duration", "1s", "--report", "run.png"]);
    assert_eq!(status.code(), Some(2), "an unknown report format is refused before the run");
}

#[test]
fn a_scenario_mix_and_its_stages_are_played_against_a_real_target() {
    // Goal: the load: section of a scenario means the same against staging as in the simulator. Method: a
    // two-class mix (3:1) over two ramping stages against a real server, which records every path; the mix is
    // checked within 3 standard deviations and each second's rate within 15 % of what the stages ask.
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = tempfile_dir();
    let file = dir.join("staging.yaml");
    std::fs::write(
        &file,
        "load:\n  arrival: poisson\n  stages: [{ for: 1s, rate: 200 }, { for: 1s, rate: 400 }]\n  requests:\n\
         \x20   - { weight: 3, path: /a, headers: { X-Class: a }, key_header: X-Api-Key, keys: 5 }\n\
         \x20   - { weight: 1, method: POST, path: /b, body: '{\"n\":1}' }\n",
    )
    .unwrap();
    let target = format!("http://{}", b.addr);
    let (status, text, r) = loadgen(&[
        "--scenario",
        file.to_str().unwrap(),
        "--target",
        &target,
        "--seed",
        "3",
        "--report",
        dir.join("s.svg").to_str().unwrap(),
    ]);
    assert!(status.success(), "{text}");
    let received = b.received();
    let a = received.iter().filter(|r| r.path == "/a").count() as f64;
    let n = received.len() as f64;
    // 1 s ramping 200 -> 400 (300) then 1 s at 400: about 700 requests.
    assert!((n - 700.0).abs() < 100.0, "{n} requests: {r}");
    let sigma = (0.75 * 0.25 / n).sqrt();
    assert!((a / n - 0.75).abs() < 3.0 * sigma, "class a got {a} of {n}");
    let seconds: Vec<u64> = r["timeline"].as_array().unwrap().iter().map(|s| s["answered"].as_u64().unwrap()).collect();
    assert_eq!(seconds.len(), 2, "{r}");
    assert!((seconds[0] as f64 - 300.0).abs() < 45.0, "the ramp's second: {seconds:?}");
    assert!((seconds[1] as f64 - 400.0).abs() < 60.0, "the last stage's second: {seconds:?}");
    assert_eq!(r["status"]["200"].as_u64(), Some(n as u64), "{r}");
}

#[test]
fn a_simulator_scenario_file_drives_a_staging_run_and_a_bad_one_is_refused() {
    let b = Backend::start("lg", "127.0.0.1:0".parse().unwrap()).unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/one-of-three-dies.yaml");
    let target = format!("http://{}", b.addr);
    let (status, text, r) = loadgen(&["--scenario", scenario, "--target", &target, "--duration", "1s"]);
    assert!(status.success(), "{text}");
    // 50/s for 1 s, of which a fifth are orders (POST with a body).
    assert_eq!(r["requests"].as_u64(), Some(50), "{r}");
    let orders = b.received().iter().filter(|r| r.path == "/orders").count();
    assert!((3..=20).contains(&orders), "{orders} orders");
    let dir = tempfile_dir();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "load:\n  stages: [{ for: 0s, rate: -1 }]\n  requests: []\n").unwrap();
    let (status, _, _) = loadgen(&["--scenario", bad.to_str().unwrap(), "--target", &target]);
    assert_eq!(status.code(), Some(2));
}

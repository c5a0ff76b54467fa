//! Minimal reproductions of what Pingora's own request path costs where nginx pays nothing, each small
//! enough to put in a Pingora issue (the performance issue's upstream note; GUIDE §10 has the figures):
//! - `headers`: the case-preserving header map. A request head as Pingora's HTTP/1 parser builds it (sized
//!   to its headers), cloned for the upstream as Pingora does, then the five headers every proxy adds; beside
//!   it the same without the case map, and a plain `http::HeaderMap` with room reserved and names pre-parsed.
//! - `timeout`: a read that waits once, bare, under Pingora's timer wheel (`pingora_timeout::timeout`, what
//!   every upstream read and write with a timeout gets) and under tokio's.
//! - `idle_watch`: a task spawned and ended per upstream connection release, as `release_stream` does to
//!   watch the idle connection, against none.
//! - `getpeername`: the system call Pingora makes per request on a reused connection (`strace -c`).
//!
//! Run: `cargo bench -p locci-benches --bench pingora_path`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
// criterion's own clock cannot time work inside one async runtime; these measure it with Instant, as
// criterion's iter_custom expects.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::RequestHeader;

/// The headers of a typical client request, as Pingora's parser fills a head it sized for them.
const CLIENT: [(&str, &str); 6] = [
    ("Host", "api.example.com"),
    ("User-Agent", "curl/8.5.0"),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip"),
    ("Cookie", "session=0123456789abcdef"),
    ("X-Client", "bench"),
];

/// What locci (and nginx and HAProxy in `just bench-peers`) add to every upstream request.
const ADDED: [&str; 5] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent"];

fn head(case: bool) -> RequestHeader {
    let mut h = if case {
        RequestHeader::build("GET", b"/items?page=2", Some(CLIENT.len()))
    } else {
        RequestHeader::build_no_case("GET", b"/items?page=2", Some(CLIENT.len()))
    }
    .unwrap();
    for (name, value) in CLIENT {
        h.append_header(name, value).unwrap();
    }
    h
}

fn headers(c: &mut Criterion) {
    let values: Vec<HeaderValue> =
        ADDED.iter().map(|n| HeaderValue::from_str(&format!("value of {n}")).unwrap()).collect();
    let mut g = c.benchmark_group("pingora/headers");
    for (label, case) in [("case_map", true), ("no_case_map", false)] {
        let original = head(case);
        g.bench_function(format!("{label}/clone"), |b| b.iter(|| black_box(original.clone())));
        g.bench_function(format!("{label}/clone_and_add_5"), |b| {
            b.iter(|| {
                let mut upstream = original.clone();
                for (name, value) in ADDED.iter().zip(&values) {
                    upstream.insert_header(*name, value.clone()).unwrap();
                }
                black_box(upstream)
            })
        });
    }
    let mut plain = HeaderMap::with_capacity(CLIENT.len());
    for (name, value) in CLIENT {
        plain.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
    }
    let names: Vec<HeaderName> = ADDED.iter().map(|n| HeaderName::from_static(n)).collect();
    g.bench_function("http_headermap/clone", |b| b.iter(|| black_box(plain.clone())));
    g.bench_function("http_headermap/clone_reserve_and_add_5", |b| {
        b.iter(|| {
            let mut upstream = plain.clone();
            upstream.reserve(ADDED.len());
            for (name, value) in names.iter().zip(&values) {
                upstream.insert(name.clone(), value.clone());
            }
            black_box(upstream)
        })
    });
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn timeout(c: &mut Criterion) {
    let rt = runtime();
    let limit = Duration::from_secs(60);
    let mut g = c.benchmark_group("pingora/timeout");
    g.bench_function("none", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::task::yield_now().await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("pingora_timeout", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = pingora_timeout::timeout(limit, tokio::task::yield_now()).await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("tokio_timeout", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let _ = tokio::time::timeout(limit, tokio::task::yield_now()).await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn idle_watch(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("pingora/idle_watch");
    g.bench_function("none", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::task::yield_now().await;
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("spawned_per_release", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    // Released: a task watches the idle connection. Reused: it is told so and ends.
                    let (reuse, watched) = tokio::sync::oneshot::channel::<()>();
                    let watcher = tokio::spawn(async move {
                        let _ = watched.await;
                    });
                    tokio::task::yield_now().await;
                    let _ = reuse.send(());
                    let _ = watcher.await;
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn getpeername(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    c.bench_function("pingora/getpeername", |b| b.iter(|| black_box(client.peer_addr().unwrap())));
}

criterion_group!(benches, headers, timeout, idle_watch, getpeername);
criterion_main!(benches);

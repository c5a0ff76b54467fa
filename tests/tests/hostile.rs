//! Hostile clients against the real binary over raw sockets (SPEC §10): slow heads, oversized heads and bodies,
//! ambiguous framing, smuggling attempts and connection floods. Each case says what the client gets and proves
//! the upstream saw nothing it should not; a polite request beside it is still answered.
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use locci_e2e::*;

fn config(b: &[Backend], client: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\", client: {client} }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n\
         upstreams: {{ u: {{ servers: {} }} }}\n\
         api_gateway:\n  routes:\n\
         \x20   big: {{ path_pattern: \"^/big\", upstream: u, max_body_bytes: 100000 }}\n\
         \x20   all: {{ path_pattern: \"^/\", upstream: u }}\n",
        servers_yaml(b)
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads until the server closes (or 10 s pass); returns the status and the body.
fn read_all(mut stream: TcpStream) -> (u16, String, bool) {
    let mut bytes = Vec::new();
    let closed = stream.read_to_end(&mut bytes).is_ok();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    body.truncate(400); // enough to read an error; an echo of a huge request would drown the report
    (status, body, closed)
}

/// Sends raw bytes on a fresh connection and reads the whole answer.
fn send(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut stream = connect(addr);
    stream.write_all(bytes).unwrap();
    let (status, body, _) = read_all(stream);
    (status, body)
}

fn polite(addr: SocketAddr) -> u16 {
    send(addr, b"GET /polite HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").0
}

fn assert_json_error(body: &str, error: &str) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert_eq!(json["error"], error, "{body}");
    assert!(json["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
}

fn rejected(proxy: &Proxy, reason: &str) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), "locci_client_rejected_total", &[("reason", reason)])
}

#[test]
fn a_head_trickled_one_line_a_second_gets_408_at_the_header_deadline() {
    // Slowloris: each line arrives well inside any per-read timeout, but the head as a whole is late.
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ header_timeout_secs: 1 }"));
    let stream = connect(proxy.addr);
    let mut writer = stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        writer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        for i in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            if writer.write_all(format!("X-Slow-{i}: x\r\n").as_bytes()).is_err() {
                return i;
            }
        }
        40
    });
    let (status, body, closed) = read_all(stream);
    assert_eq!(status, 408, "{body}");
    assert_json_error(&body, "request header timeout");
    assert!(closed, "the connection stays open after the 408");
    assert!(trickle.join().unwrap() < 40, "the proxy kept reading the trickled head");
    assert_eq!(polite(proxy.addr), 200);
    assert_eq!(b[0].requests(), 1, "only the polite request reached the upstream");
    assert!(rejected(&proxy, "header_timeout") >= 1.0);
}

#[test]
fn a_partial_request_line_then_silence_gets_408_and_a_silent_connection_is_closed() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ header_timeout_secs: 1 }"));
    let mut stream = connect(proxy.addr);
    stream.write_all(b"GET /slo").unwrap();
    let (status, body, closed) = read_all(stream);
    assert_eq!((status, closed), (408, true), "{body}");
    // A connection that never sends a byte is closed at the same deadline, without an answer, and counted.
    let (status, body, closed) = read_all(connect(proxy.addr));
    assert_eq!((status, body.as_str(), closed), (0, "", true));
    assert_eq!(polite(proxy.addr), 200);
    assert_eq!(rejected(&proxy, "header_timeout"), 2.0, "the 408 and the silent connection");
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ keepalive_timeout_secs: 1 }"));
    let mut stream = connect(proxy.addr);
    stream.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    // The first answer arrives and the connection stays open for a second request...
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // ...then, idle, it is closed (read returns 0) long before this read's own 10 s timeout.
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
    assert_eq!(b[0].requests(), 2);
}

#[test]
fn keepalive_timeout_zero_answers_with_connection_close_and_closes() {
    // An HTTP/1.1 client keeps its connection by default; with keep-alive off the answer must say
    // `Connection: close` (so the client does not send a second request into a closing socket) and close.
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ keepalive_timeout_secs: 0 }"));
    let mut stream = connect(proxy.addr);
    stream.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("the proxy closes the connection after the answer");
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200") && text.contains("connection: close"), "{text}");
    // With the default, the same request is answered without it and the connection stays for another.
    let proxy = Proxy::start(&config(&b, "{}"));
    let mut stream = connect(proxy.addr);
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        stream.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let n = stream.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200") && !text.contains("connection: close"), "{text}");
    }
}

#[test]
fn a_client_that_goes_away_before_its_answer_is_not_counted_as_refused() {
    // nginx logs such a request as 499; it is neither a bad request nor the server's failure.
    let b = backends(1);
    b[0].delay_ms(300);
    let proxy = Proxy::start(&config(&b, "{}"));
    let mut stream = connect(proxy.addr);
    stream.write_all(b"GET /slow-one HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    drop(stream);
    let errors = |kind: &str| {
        let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
        metric(&parse_metrics(&text), "locci_errors_total", &[("error_type", kind)])
    };
    assert!(wait_until(Duration::from_secs(5), || errors("client_closed") >= 1.0), "the abandoned request is counted");
    assert_eq!(rejected(&proxy, "bad_request"), 0.0);
    assert_eq!(errors("bad_request"), 0.0);
    b[0].delay_ms(0);
    assert_eq!(polite(proxy.addr), 200);
}

#[test]
fn a_client_still_writing_a_huge_head_gets_its_431_not_a_reset() {
    // The proxy refuses after reading past max_header_bytes while the client is still sending; closing then
    // with unread bytes would reset the connection and lose the 431 (the proxy lingers, reading, instead).
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ max_header_bytes: 4096 }"));
    for round in 0..10 {
        let stream = connect(proxy.addr);
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n");
            let line = format!("X-Pad: {}\r\n", "x".repeat(1000));
            // About 300 KB, most of it after the proxy has refused; a write refused after a close is fine.
            for _ in 0..300 {
                if writer.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        });
        sender.join().unwrap();
        // Read only once everything was sent: a reset by then would have discarded the answer.
        let (status, body, _) = read_all(stream);
        assert_eq!(status, 431, "round {round}: {body:?}");
    }
    assert_eq!(polite(proxy.addr), 200);
}

#[test]
fn heads_over_max_header_bytes_or_with_too_many_headers_get_431() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ max_header_bytes: 4096 }"));
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "x".repeat(8000));
    let (status, body) = send(proxy.addr, big.as_bytes());
    assert_eq!(status, 431, "{body}");
    assert_json_error(&body, "request header too large");
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1 << 20));
    assert_eq!(send(proxy.addr, long_line.as_bytes()).0, 431, "a 1 MB request line");
    let many: String = (0..300).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(send(proxy.addr, format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes()).0, 431, "300 headers");
    let flood: String = (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        send(proxy.addr, format!("GET / HTTP/1.1\r\nHost: a\r\n{flood}\r\n").as_bytes()).0,
        431,
        "10,000 headers"
    );
    assert_eq!(polite(proxy.addr), 200);
    assert_eq!(b[0].requests(), 1);
    assert!(rejected(&proxy, "header_too_large") >= 4.0);
}

#[test]
fn bodies_over_max_body_bytes_get_413_and_a_route_may_allow_more() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ max_body_bytes: 1000 }"));
    // Declared too large: refused before anything is forwarded, without reading the body.
    let (status, body) =
        send(proxy.addr, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 413, "{body}");
    assert_json_error(&body, "request body too large");
    assert_eq!(b[0].requests(), 0, "a declared oversized body reached the upstream");
    // Chunked: cut off as it crosses the limit.
    let chunk = "x".repeat(600);
    let chunked = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let (status, body) = send(proxy.addr, chunked.as_bytes());
    assert_eq!(status, 413, "{body}");
    // Under the limit, and a route with its own larger limit.
    let small =
        format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{}", "y".repeat(500));
    assert_eq!(send(proxy.addr, small.as_bytes()).0, 200);
    let large = format!(
        "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n{}",
        "z".repeat(5000)
    );
    assert_eq!(send(proxy.addr, large.as_bytes()).0, 200);
    assert!(rejected(&proxy, "body_too_large") >= 2.0);
}

#[test]
fn a_body_that_stops_arriving_gets_408_at_body_timeout() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ body_timeout_secs: 1 }"));
    let mut stream = connect(proxy.addr);
    // The upstream takes 5 s to answer, so the proxy is still reading the body when the client stops.
    stream.write_all(b"POST /slow?ms=5000 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789").unwrap();
    let (status, body, closed) = read_all(stream);
    assert_eq!((status, closed), (408, true), "{body}");
    assert_json_error(&body, "request body timeout");
    assert!(rejected(&proxy, "body_timeout") >= 1.0);
    assert_eq!(polite(proxy.addr), 200);
}

#[test]
fn connections_over_max_connections_are_closed_at_accept_and_counted() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{ max_connections: 3, header_timeout_secs: 60 }"));
    let open = || {
        let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
        metric(&parse_metrics(&text), "locci_client_connections", &[])
    };
    // The harness's readiness probe (a connect and a close) may still sit in the backlog, to be taken after the
    // held connections and refused as a second over-limit connection. A request served first means the accept
    // loop has dequeued it (the backlog is first in, first out); the gauge at 0 means it has been let go.
    assert_eq!(polite(proxy.addr), 200);
    assert!(wait_until(WAIT, || open() == 0.0), "the probe connections were not let go");
    assert_eq!(rejected(&proxy, "max_connections"), 0.0, "a connection was refused before the limit was reached");
    // Three connections that send nothing hold every slot, once the proxy has taken them from its backlog
    // (its accept tasks may take them in any order, so the gauge says when).
    let held: Vec<TcpStream> = (0..3).map(|_| connect(proxy.addr)).collect();
    assert!(wait_until(WAIT, || open() == 3.0), "the held connections were not counted");
    let mut extra = connect(proxy.addr);
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(read_all(extra).0, 0, "a connection over the limit was served");
    // Counted before the close, but read from another listener: give the scrape a moment.
    let once = wait_until(WAIT, || rejected(&proxy, "max_connections") == 1.0);
    assert!(once, "the refusal was counted {} time(s), not once", rejected(&proxy, "max_connections"));
    assert_eq!(open(), 3.0, "the refused connection is not counted");
    drop(held);
    assert!(wait_until(WAIT, || polite(proxy.addr) == 200), "slots were not given back");
}

#[test]
fn ambiguous_framing_and_malformed_heads_get_400_and_reach_no_upstream() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{}"));
    let started = std::time::Instant::now();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "CL and TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "both content-length and transfer-encoding",
        ),
        (
            "differing CLs",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "more than one content-length",
        ),
        ("a CL list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", "invalid content-length"),
        ("a signed CL", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", "invalid content-length"),
        (
            "TE not chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "unsupported transfer-encoding",
        ),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one host"),
        (
            "Host against the target",
            b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "host differs from the request target",
        ),
        (
            "TE on HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "transfer-encoding on HTTP/1.0",
        ),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n", "missing host"),
        ("a NUL in a value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", "malformed request head"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n  folded\r\n\r\n", "malformed request head"),
        ("a space before the colon", b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n", "malformed request head"),
        ("no version", b"GET /\r\nHost: a\r\n\r\n", "malformed request line"),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n", "malformed request line"),
    ];
    for (what, bytes, error) in cases {
        let (status, body) = send(proxy.addr, bytes);
        assert_eq!(status, 400, "{what}: {body}");
        assert_json_error(&body, error);
    }
    // Pingora's own refusal of CONNECT has an empty body; locci answers it first, as every other refusal.
    let (status, body) = send(proxy.addr, b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n");
    assert_eq!(status, 405, "{body}");
    assert_json_error(&body, "CONNECT is not proxied");
    assert_eq!(b[0].requests(), 0, "a refused request reached the upstream");
    assert!(rejected(&proxy, "bad_request") >= cases.len() as f64 + 1.0);
    // Every refusal is counted, but the log gets at most one line a second per reason: no log flood.
    let lines = proxy.logs().matches("client refused at the edge").count();
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!((1..=seconds).contains(&lines), "{lines} log lines for {} refusals in {seconds} s", cases.len() + 1);
}

#[test]
fn a_request_smuggled_behind_contradictory_framing_is_never_forwarded() {
    // The classic CL.TE desync: a proxy that trusts one header and an upstream that trusts the other read
    // the tail as a second request. The whole connection is refused instead.
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{}"));
    let attack = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                   GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let (status, body) = send(proxy.addr, attack);
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("smuggled"), "{body}");
    assert_eq!(b[0].requests(), 0, "the upstream saw the smuggled request");
}

#[test]
fn tolerated_spellings_are_forwarded_as_the_proxy_read_them() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "{}"));
    // Bare LF line endings (RFC 9112 §2.2 lets a recipient accept them): forwarded with CRLF.
    assert_eq!(send(proxy.addr, b"GET /lf HTTP/1.1\nHost: a\nConnection: close\n\n").0, 200);
    // Absolute-form target: its path is routed and sent upstream.
    let (status, body) = send(proxy.addr, b"GET http://a/abs?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["path"], "/abs");
    // Bytes httparse refuses in a target are percent-encoded (as Pingora does), not refused.
    assert_eq!(send(proxy.addr, b"GET /a{b} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").0, 200);
    // HTTP/1.0 without Host.
    assert_eq!(send(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").0, 200);
    assert_eq!(b[0].requests(), 4);
}

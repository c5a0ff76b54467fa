//! W3C trace context and the OTLP/HTTP span export (SPEC §14) against the real binary, a demo backend that
//! echoes the headers it got, and an OTLP collector the test runs (it decodes what arrives with the
//! protocol's own types).
// The end-to-end tier runs the real binary in wall-clock time, so it may read the real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use locci_e2e::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn config(b: &[Backend], tracing: &str, format: &str) -> String {
    format!(
        "mode: api_gateway\nserver: {{ bind_address: \"{{BIND}}\" }}\nlogging: {{ format: {format} }}\n{tracing}\
         upstreams:\n  pool: {{ servers: {} }}\n\
         api_gateway:\n  routes:\n    ok: {{ path_pattern: \"^/\", upstream: pool }}\n\
         control_api: {{ bind_address: \"{{CONTROL}}\" }}\n",
        servers_yaml(b)
    )
}

/// The headers the backend received, as it echoed them.
fn received(resp: reqwest::blocking::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200);
    resp.json::<serde_json::Value>().unwrap()["headers"].clone()
}

/// The four fields of a version-00 traceparent, checked for shape.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    assert_eq!(parts[1].len(), 32, "{traceparent}");
    assert_eq!(parts[2].len(), 16, "{traceparent}");
    assert!(parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())));
    assert_ne!(parts[1], "0".repeat(32));
    assert_ne!(parts[2], "0".repeat(16));
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

#[test]
fn a_valid_traceparent_is_continued_with_the_proxys_span_and_its_tracestate_is_forwarded() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "", "text"));
    let sent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let h = received(
        client()
            .get(proxy.url("/a"))
            .header("traceparent", &sent)
            .header("tracestate", "vendor=abc,other=1")
            .send()
            .unwrap(),
    );
    let (trace, parent, flags) = fields(h["traceparent"].as_str().unwrap());
    assert_eq!(trace, TRACE, "the client's trace goes on");
    assert_ne!(parent, CALLER_SPAN, "the upstream's parent is the proxy's span");
    assert_eq!(flags, "01", "the caller's sampled flag is followed");
    assert_eq!(h["tracestate"], "vendor=abc,other=1", "tracestate is forwarded unchanged");
    // Not sampled by the caller: stays unsampled (parent-based), whatever the ratio (1 by default).
    let h = received(
        client().get(proxy.url("/b")).header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-00")).send().unwrap(),
    );
    assert_eq!(fields(h["traceparent"].as_str().unwrap()).2, "00");
    assert!(
        wait_until(WAIT, || proxy.logs().matches(&format!("trace_id={TRACE}")).count() == 2),
        "the request log lines carry the trace ID:\n{}",
        proxy.logs()
    );
}

#[test]
fn an_absent_invalid_or_doubled_traceparent_starts_a_new_trace_and_drops_the_tracestate() {
    let b = backends(1);
    let proxy = Proxy::start(&config(&b, "", "json"));
    let http = client();
    let fresh = received(http.get(proxy.url("/a")).send().unwrap());
    let (first, _, flags) = fields(fresh["traceparent"].as_str().unwrap());
    assert_eq!(flags, "01", "a new trace is sampled at the default ratio of 1");
    let second = fields(received(http.get(proxy.url("/a")).send().unwrap())["traceparent"].as_str().unwrap()).0;
    assert_ne!(first, second, "every request without one gets its own trace");
    let upper = format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase());
    for bad in [upper.as_str(), "00-zz-yy-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] {
        let h = received(
            http.get(proxy.url("/a")).header("traceparent", bad).header("tracestate", "vendor=abc").send().unwrap(),
        );
        let (trace, _, _) = fields(h["traceparent"].as_str().unwrap());
        assert_ne!(trace, TRACE.to_lowercase(), "{bad} is not continued");
        assert!(h.get("tracestate").is_none(), "the tracestate of a trace that was not continued is dropped: {h}");
    }
    let doubled = http
        .get(proxy.url("/a"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .unwrap();
    assert_ne!(fields(received(doubled)["traceparent"].as_str().unwrap()).0, TRACE, "two traceparents are invalid");
    assert!(
        wait_until(WAIT, || proxy.logs().contains(&format!("\"trace_id\":\"{first}\""))),
        "the JSON log line carries the new trace's ID:\n{}",
        proxy.logs()
    );
}

/// A minimal OTLP/HTTP collector: keeps every `ExportTraceServiceRequest` POSTed to `/v1/traces`, answers
/// 200, or holds every request unanswered while `hang` is set.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    fn start(hang: bool) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (g, s) = (Arc::clone(&g), Arc::clone(&s));
                        std::thread::spawn(move || serve(stream, &g, &s, hang));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Collector { addr, got, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, opentelemetry_proto::tonic::trace::v1::Span)> {
        let mut out = Vec::new();
        for req in self.got.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let resource = rs.resource.as_ref().map(|r| r.attributes.clone()).unwrap_or_default();
                for ss in &rs.scope_spans {
                    assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("locci"));
                    out.extend(ss.spans.iter().map(|s| (resource.clone(), s.clone())));
                }
            }
        }
        out
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(stream: TcpStream, got: &Mutex<Vec<ExportTraceServiceRequest>>, stop: &AtomicBool, hang: bool) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while !stop.load(Ordering::Relaxed) {
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_ascii_lowercase()),
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => continue,
            }
        }
        assert!(head[0].starts_with("post /v1/traces "), "the exporter posts to /v1/traces: {head:?}");
        assert!(head.iter().any(|h| h == "content-type: application/x-protobuf"), "{head:?}");
        let length: usize = head
            .iter()
            .find_map(|h| h.strip_prefix("content-length: "))
            .expect("a length-delimited body")
            .parse()
            .unwrap();
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        if hang {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        got.lock().unwrap().push(ExportTraceServiceRequest::decode(body.as_slice()).unwrap());
        out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n").unwrap();
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(attrs: &[KeyValue], key: &str) -> String {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn spans_counted(proxy: &Proxy, result: &str) -> f64 {
    let text = client().get(proxy.control_url("/metrics")).send().unwrap().text().unwrap();
    metric(&parse_metrics(&text), "locci_trace_spans_total", &[("result", result)])
}

#[test]
fn sampled_requests_reach_an_otlp_collector_as_server_spans_with_their_fields() {
    let b = backends(1);
    let collector = Collector::start(false);
    let tracing =
        format!("tracing: {{ otlp_endpoint: \"{}\", sample_ratio: 0.0, service_name: edge-test }}\n", collector.url());
    let proxy = Proxy::start(&config(&b, &tracing, "text"));
    let http = client();
    let sampled = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let a = received(http.get(proxy.url("/a?token=secret")).header("traceparent", &sampled).send().unwrap());
    let proxy_span = fields(a["traceparent"].as_str().unwrap()).1;
    let failing = http.get(proxy.url("/status/503")).header("traceparent", &sampled).send().unwrap();
    assert_eq!(failing.status(), 503);
    // Neither of these is sampled: the caller said no, and new traces are sampled at ratio 0.
    received(http.get(proxy.url("/b")).header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-00")).send().unwrap());
    received(http.get(proxy.url("/c")).send().unwrap());
    assert!(wait_until(WAIT, || spans_counted(&proxy, "exported") == 2.0), "two spans exported:\n{}", proxy.logs());
    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "only the sampled requests: {spans:?}");
    let (resource, ok) = spans
        .iter()
        .find(|(_, s)| attr(&s.attributes, "url.path").is_some_and(|v| *v == Value::StringValue("/a".into())))
        .unwrap();
    assert_eq!(text(resource, "service.name"), "edge-test");
    assert_eq!(hex(&ok.trace_id), TRACE);
    assert_eq!(hex(&ok.parent_span_id), CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(hex(&ok.span_id), proxy_span, "the span's ID is the parent the upstream was told");
    assert_eq!(ok.kind, SpanKind::Server as i32);
    assert_eq!(ok.name, "GET ok");
    assert_eq!(text(&ok.attributes, "http.request.method"), "GET");
    assert_eq!(text(&ok.attributes, "http.route"), "ok");
    assert_eq!(text(&ok.attributes, "locci.upstream"), "pool");
    assert_eq!(text(&ok.attributes, "server.address"), b[0].addr.to_string());
    assert_eq!(attr(&ok.attributes, "http.response.status_code"), Some(&Value::IntValue(200)));
    assert!(ok.end_time_unix_nano > ok.start_time_unix_nano, "{ok:?}");
    assert_ne!(ok.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));
    let (_, bad) = spans
        .iter()
        .find(|(_, s)| attr(&s.attributes, "http.response.status_code") == Some(&Value::IntValue(503)))
        .unwrap();
    assert_eq!(bad.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32), "a 5xx is an error span");
    let everything = format!("{spans:?}");
    assert!(!everything.contains("secret"), "the query is not exported: {everything}");
    assert_eq!(spans_counted(&proxy, "dropped"), 0.0);
    assert_eq!(spans_counted(&proxy, "failed"), 0.0);
}

#[test]
fn a_collector_that_never_answers_costs_the_requests_nothing_and_what_it_cannot_take_is_counted() {
    let b = backends(1);
    let collector = Collector::start(true);
    let tracing = format!("tracing: {{ otlp_endpoint: \"{}\" }}\n", collector.url());
    let proxy = Proxy::start(&config(&b, &tracing, "text"));
    // More sampled requests than the queue (4096) and a batch in flight (512) hold while the export hangs.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = proxy.url("/a");
            std::thread::spawn(move || {
                let http = client();
                (0..1500).filter(|_| http.get(&url).send().is_ok_and(|r| r.status() == 200)).count()
            })
        })
        .collect();
    let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 6000, "every request is answered while the collector hangs");
    assert!(spans_counted(&proxy, "dropped") >= 1.0, "a full queue drops spans and counts them");
    assert_eq!(spans_counted(&proxy, "exported"), 0.0);
    drop(collector);
}
